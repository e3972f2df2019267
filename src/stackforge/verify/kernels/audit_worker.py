"""The kernel audit's compile worker: `python -m stackforge.verify.kernels.audit_worker --worker`,
run with the patched Triton first on PYTHONPATH, speaking `stackforge.verify.kernels.worker`'s protocol.

A request names one case and the archs of one major (e.g. sm_60 and sm_61) plus the vLLM tree,
head sizes, where to save records and the modules to load; the answer is one "result" message (a
`Result`) per arch. Triton and LLVM run once, for the lowest arch: the PTX of another arch of the
same major is the same apart from its `.target` line (checked on every default case:
docs/kernel-audit.md), so it is retargeted and only ptxas runs again, its cubin cached beside
Triton's. When the launch vLLM makes differs between the two archs, both are compiled in full.
The vLLM modules of an arch are loaded once per worker, all together, so compiles run with the
loader's stand-ins gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stackforge.core.files import atomic_write
from stackforge.cuda.caps import CAPABILITIES, sm
from stackforge.verify.kernels.cases import Case, all_cases
from stackforge.verify.kernels.launch import Pruned, fit
from stackforge.verify.kernels.report import Result
from stackforge.verify.kernels.sass import cubin_stats
from stackforge.verify.kernels.tuning import jit_function
from stackforge.verify.kernels.worker import serve
from stackforge.verify.numerics.compile import (
    SharedMemoryOver,
    compile_launch,
    guard_shared_memory,
    specialise,
)
from stackforge.verify.numerics.records import triton_record, write_record


def _ptxas_message(text: str) -> str:
    """ptxas' error lines without the temporary file names, each once."""
    errors = []
    for line in text.splitlines():
        m = re.search(r"ptxas \S+, line \d+; error\s*: (.*)$", line)
        if m and m[1].strip() not in errors:
            errors.append(m[1].strip())
    return "; ".join(errors) or (text.strip().splitlines() or ["ptxas failed"])[0]


def _safe(case_id: str) -> str:
    return case_id.replace("/", "__")


def _limit(arch: int) -> int:
    return CAPABILITIES[arch].smem_per_block_optin


def _result(case: Case, arch: int) -> Result:
    return Result(case.id, case.kernel, case.shape, arch, "ok", limit=_limit(arch), reached_by=case.reached_by,
                  reach=case.reach, config=case.config, configs=case.configs)  # fmt: skip


def _fail(res: Result, exc: Exception) -> None:
    from triton.runtime.errors import PTXASError

    if isinstance(exc, Pruned):
        res.status, res.message = "pruned", str(exc)
    elif isinstance(exc, SharedMemoryOver):
        res.status, res.shared, res.message = "shared-memory", exc.needed, f"needs {exc.needed} > {exc.limit}"
    elif isinstance(exc, PTXASError):
        res.status, res.message = "ptxas-error", _ptxas_message(str(exc))
    else:  # a Triton front-end error, a broken launch description, ...
        text = str(exc).strip() or type(exc).__name__
        res.status, res.message = "compile-error", f"{type(exc).__name__}: {text.splitlines()[-1][:300]}"
        print(traceback.format_exc(), file=sys.stderr)


def _save(save: Path | None, case: Case, arch: int, compiled: tuple, ptx: str | None = None) -> None:
    if save is None:  # a numerics record: `stackforge.verify.numerics.gpu` runs it where it has a reference
        return
    kernel, bound, signature, launch, case = compiled  # the case as compiled: the tree's kernel name
    record, ptxs = triton_record(
        case.kernel, case.kernel, case.shape, arch, [(case, kernel, bound, signature, launch)]
    )
    record["arch"] = arch
    write_record(save / sm(arch), _safe(case.id), record, [ptx] if ptx is not None else ptxs)


def _verdict_path(fn: Any, launch: Any, arch: int) -> Path:
    """Where a failed compile's verdict is kept: Triton caches only what compiles, and a kernel over
    the shared-memory limit would otherwise run Triton up to make_llir on every warm audit. Keyed
    by the kernel's source and callees (`JITFunction.cache_key`), the launch, the arch and Triton's
    own files (`triton_key`, the overlay's patched compiler.py included)."""
    from triton.runtime.cache import triton_key

    key = hashlib.sha256(f"{fn.cache_key}\0{launch!r}\0{arch}\0{triton_key()}".encode()).hexdigest()
    return Path(os.environ.get("TRITON_CACHE_DIR", "")) / "stackforge-verdicts" / f"{key}.json"


def run_case(case: Case, module: Any, arch: int, save: Path | None) -> tuple[Result, tuple | None]:
    """Compile `case` for `arch` with Triton: the result and (kernel, bound, signature, launch,
    case as compiled); the tree's kernel is found by name (`Case.find`) and its launch fitted to
    the kernel's parameters (`launch.fit`)."""
    res, start, compiled = _result(case, arch), time.monotonic(), None
    verdict: Path | None = None
    try:
        name, fn = case.find(module)
        fn = jit_function(fn)  # autotuned: the case names its config
        case = dataclasses.replace(case, function=name)  # the record names the tree's kernel
        built = case.build(module, arch, _limit(arch))
        launch = fit(fn, built)
        if dropped := sorted(set(built.kwargs) - set(launch.kwargs)):  # in the log: a misspelt name shows
            print(f"{case.id} sm_{arch}: {name} takes no {', '.join(dropped)}: left out", file=sys.stderr)
        verdict = _verdict_path(fn, launch, arch)
        if verdict.is_file():  # the same compile failed before: same verdict, no Triton
            known = json.loads(verdict.read_text())
            res.status, res.message, res.shared = known["status"], known["message"], known["shared"]
            return res, None
        kernel, bound, signature = compile_launch(fn, launch, arch)
        compiled = (kernel, bound, signature, launch, case)
        res.shared = kernel.metadata.shared
        if res.shared > res.limit:
            raise SharedMemoryOver(res.shared, res.limit)
        res.stats = cubin_stats(kernel.asm["cubin"], arch, kernel.metadata.num_warps, res.shared)
        _save(save, case, arch, compiled)
    except Exception as exc:
        _fail(res, exc)
        if verdict is not None and res.status in ("shared-memory", "ptxas-error"):
            atomic_write(
                verdict, json.dumps({"status": res.status, "message": res.message, "shared": res.shared})
            )
    res.seconds = round(time.monotonic() - start, 2)
    return res, compiled


def retarget(case: Case, compiled: tuple, arch: int, save: Path | None) -> Result:
    """ptxas alone for `arch`, on the PTX compiled for a lower arch of the same major."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    kernel = compiled[0]
    res, start = _result(case, arch), time.monotonic()
    ptx = re.sub(r"^\.target sm_\d+", f".target sm_{arch}", kernel.asm["ptx"], count=1, flags=re.M)
    res.shared = kernel.metadata.shared
    try:
        if res.shared > res.limit:
            raise SharedMemoryOver(res.shared, res.limit)
        cache = Path(os.environ.get("TRITON_CACHE_DIR", "")) / "stackforge-ptxas"
        key = hashlib.sha256(f"{arch}\0{kernel.stackforge_options}\0{ptx}".encode()).hexdigest()
        cubin_path = cache / f"{key}.cubin"
        if cubin_path.is_file():
            cubin = cubin_path.read_bytes()
        else:
            backend = make_backend(GPUTarget("cuda", arch, 32))
            opt = backend.parse_options(kernel.stackforge_options)
            cubin = backend.make_cubin(ptx, dict(kernel.metadata._asdict()), opt, arch)
            cache.mkdir(parents=True, exist_ok=True)
            atomic_write(cubin_path, cubin)
        res.stats = cubin_stats(cubin, arch, kernel.metadata.num_warps, res.shared)
        _save(save, case, arch, compiled, ptx)
    except Exception as exc:
        _fail(res, exc)
    res.seconds = round(time.monotonic() - start, 2)
    return res


def _launch(case: Case, module: Any, arch: int) -> Any:
    """The launch `run_case` compiles for `arch`, or None where there is none (pruned there, or a
    broken build: `run_case` reports either)."""
    try:
        return fit(jit_function(case.find(module)[1]), case.build(module, arch, _limit(arch)))
    except Exception:
        return None


def twin_key(case: Case, modules: dict[int, Any]) -> str | None:
    """Equal for cases that compile to the same code on every arch of `modules`: the same kernel
    with the same Triton signature, constexprs, attributes and options (what Triton's own cache
    keys a compile by), so that model rows sharing a launch with another case (Llama 3.1 8B's and
    the generic head-128 case's) or with each other compile once. Below sm_80 Triton 3.5's
    make_ttgir runs no pipeliner, its one use of num_stages, so configs that differ only in
    num_stages (chunk_o's 36 are 12 kernels) count as the same there. None where the launch
    cannot be built (the compile reports why)."""
    parts = []
    for arch, module in sorted(modules.items()):
        try:
            fn = jit_function(case.find(module)[1])
            launch = fit(fn, case.build(module, arch, _limit(arch)))
        except Pruned:  # nothing to compile: no twin needed, and none claimed
            parts.append(f"pruned {case.id}")
            continue
        except Exception:
            return None
        try:
            *_, signature, constexprs, attrs, options = specialise(fn, launch, arch)
        except Exception:
            return None
        opts = {k: v for k, v in sorted(options.__dict__.items()) if not (k == "num_stages" and arch < 80)}
        parts.append(repr((fn.__name__, signature, sorted(constexprs.items(), key=repr), sorted(attrs.items(), key=repr),
                           opts)))  # fmt: skip
    return repr((case.module, parts))


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
            self.modules[key] = KernelLoader(Path(vllm_src), arch).load_all(names)
        return self.modules[key]

    def __call__(self, req: dict) -> Iterator[dict]:
        if not self.cases:
            self.cases = {c.id: c for c in all_cases(tuple(req["head_sizes"]))}
        if "describe" in req:  # the twin keys of these cases (`twin_key`)
            keys = {}
            for case_id in req["describe"]:
                case = self.cases[case_id]
                loaded = {
                    a: self._modules(req["vllm_src"], a, req["modules"]).get(case.module)
                    for a in req["archs"]
                }
                ok = all(m is not None and not isinstance(m, Exception) for m in loaded.values())
                keys[case_id] = twin_key(case, loaded) if ok else None
            yield {"event": "keys", "keys": keys}
            return
        case = self.cases[req["case"]]
        save = Path(req["save"]) if req.get("save") else None
        first: tuple | None = None  # (kernel, bound, signature, launch, case) of the lowest arch
        first_res: Result | None = None
        first_res_launch: Any = None
        for arch in req["archs"]:
            module = self._modules(req["vllm_src"], arch, req["modules"]).get(case.module)
            if isinstance(module, Exception) or module is None:
                res = _result(case, arch)
                res.status, res.message = "load-error", f"{case.module}: {type(module).__name__}: {module}"
            elif first is not None and _launch(case, module, arch) == first[3]:
                res = retarget(case, first, arch, save)  # same launch: same PTX but for .target
            elif (
                first_res is not None
                and first_res.status == "shared-memory"
                and first_res.limit == _limit(arch)
                and first_res_launch is not None
                and _launch(case, module, arch) == first_res_launch
            ):
                res = dataclasses.replace(first_res, arch=arch, seconds=0.0)  # same launch, same limit
            else:
                res, compiled = run_case(case, module, arch, save)
                first = first or compiled
                if first_res is None and res.status == "shared-memory":
                    first_res, first_res_launch = res, _launch(case, module, arch)
            yield {"event": "result", **asdict(res)}


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    sys.exit(serve(Handler()))
