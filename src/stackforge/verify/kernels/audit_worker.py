"""The kernel audit's compile worker: `python -m stackforge.verify.kernels.audit_worker --worker`,
run with the patched Triton first on PYTHONPATH, speaking `stackforge.verify.kernels.worker`'s protocol.

A request names one case and arch (plus the vLLM tree, head sizes, where to save records and the
modules to load); the answer is one "result" message (a `Result`). The vLLM modules of an arch are
loaded once per worker, all together, so compiles run with the loader's stand-ins gone.
"""

from __future__ import annotations

import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stackforge.cuda.caps import CAPABILITIES
from stackforge.verify.kernels.cases import Case, all_cases
from stackforge.verify.kernels.report import Result
from stackforge.verify.kernels.worker import serve
from stackforge.verify.numerics.compile import SharedMemoryOver, compile_launch, guard_shared_memory
from stackforge.verify.numerics.records import triton_record, write_record


def _ptxas_message(text: str) -> str:
    """ptxas' error lines without the temporary file names, each once."""
    errors = []
    for line in text.splitlines():
        m = re.search(r"ptxas \S+, line \d+; error\s*: (.*)$", line)
        if m and m[1].strip() not in errors:
            errors.append(m[1].strip())
    return "; ".join(errors) or text.strip().splitlines()[0]


def _safe(case_id: str) -> str:
    return case_id.replace("/", "__")


def run_case(case: Case, module: Any, arch: int, save: Path | None) -> Result:
    from triton.runtime.errors import PTXASError

    limit = _limit(arch)
    res = Result(case.id, case.kernel, case.shape, arch, "ok", limit=limit, reached_by=case.reached_by)
    start = time.monotonic()
    try:
        launch = case.build(module, arch, limit)
        kernel, bound, signature = compile_launch(getattr(module, case.function), launch, arch)
        res.shared = kernel.metadata.shared
        if res.shared > limit:
            raise SharedMemoryOver(res.shared, limit)
        if (
            save is not None
        ):  # a numerics record: `stackforge.verify.numerics.gpu` runs it where it has a reference
            record, ptxs = triton_record(
                case.kernel, case.kernel, case.shape, arch, [(case, kernel, bound, signature, launch)]
            )
            write_record(save / f"sm_{arch}", _safe(case.id), record, ptxs)
    except SharedMemoryOver as exc:
        res.status, res.shared, res.message = "shared-memory", exc.needed, f"needs {exc.needed} > {exc.limit}"
    except PTXASError as exc:
        res.status, res.message = "ptxas-error", _ptxas_message(str(exc))
    except Exception as exc:  # a Triton front-end error, a broken launch description, ...
        text = str(exc).strip() or type(exc).__name__
        res.status, res.message = "compile-error", f"{type(exc).__name__}: {text.splitlines()[-1][:300]}"
        print(traceback.format_exc(), file=sys.stderr)
    res.seconds = round(time.monotonic() - start, 2)
    return res


class Handler:
    """The worker's state: the cases, and the vLLM modules loaded per arch."""

    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}
        self.modules: dict[tuple[str, int], dict[str, Any]] = {}
        guard_shared_memory()

    def _modules(self, vllm_src: str, arch: int, names: list[str]) -> dict[str, Any]:
        from stackforge.verify.kernels.loader import KernelLoader

        key = (vllm_src, arch)
        if key not in self.modules:
            loaded: dict[str, Any] = {}
            loader = KernelLoader(Path(vllm_src), arch)
            with loader.active():  # import every module first: compiles run with the stand-ins gone
                for name in names:
                    try:
                        loaded[name] = loader.load(name)
                    except Exception as exc:
                        loaded[name] = exc
            self.modules[key] = loaded
        return self.modules[key]

    def __call__(self, req: dict) -> Iterator[dict]:
        if not self.cases:
            self.cases = {c.id: c for c in all_cases(tuple(req["head_sizes"]))}
        case, arch = self.cases[req["case"]], req["arch"]
        save = Path(req["save"]) if req.get("save") else None
        module = self._modules(req["vllm_src"], arch, req["modules"]).get(case.module)
        if isinstance(module, Exception) or module is None:
            res = Result(case.id, case.kernel, case.shape, arch, "load-error", reached_by=case.reached_by,
                         message=f"{case.module}: {type(module).__name__}: {module}", limit=_limit(arch))  # fmt: skip
        else:
            res = run_case(case, module, arch, save)
        yield {"event": "result", **asdict(res)}


def _limit(arch: int) -> int:
    return CAPABILITIES[arch].smem_per_block_optin


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    sys.exit(serve(Handler()))
