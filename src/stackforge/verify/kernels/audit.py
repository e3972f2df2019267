"""`stackforge audit kernels -e ENV`: will vLLM's Triton kernels compile for the environment's GPUs?

Compiles the kernels listed in `kernel_cases` from a vLLM source tree (default sources/vllm, i.e.
v0.14.0 plus patches/vllm) for every arch of the environment with Triton's own compiler and the
ptxas inside the triton wheel (no GPU needed), with Triton patched by patches/triton (an overlay
of the installed package, see `triton_overlay`). Each kernel x shape x arch is reported as
compiled, ptxas error (with ptxas' message), shared memory over the limit (bytes needed vs the
per-block limit Triton may use on that arch: 49152 on sm_60/61, 98304 on sm_70, which Triton
opts into), or a compile/load error. Compiles run in worker processes (one per core) and are
cached by Triton under .stackforge/kernel-audit/triton-cache.

`--save-ptx DIR` writes, for every compiled kernel x shape x arch, DIR/sm_<arch>/<case>.ptx and a
launch record DIR/sm_<arch>/<case>.json in the one format `stackforge.verify.numerics.gpu` runs
("stackforge.numerics/1", documented there; `check` is the kernel's name): the .entry arguments
in order, the tensors they point to (dtype, shape, strides, role), grid, block, shared memory,
constexprs and the scenario. `python -m stackforge.verify.numerics.gpu DIR` runs the ones it has a reference
for (unified attention 2D, prefix prefill, encoder attention) on any NVIDIA GPU.

`--run` then builds the numerics suite (`stackforge.verify.numerics.suite`: the C++ half-atomic fallback,
Triton atomics, attention at more batches) into the same folder with the same patched Triton,
in a subprocess like the workers, and runs every record there that has a reference on this
machine's GPU. Without a GPU it fails after the report, saying so; with --save-ptx the records
are built first, so they can be carried to a machine that has one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stackforge.core.console import EXIT_FAILED, EXIT_OK, Failure, UsageError, err, out
from stackforge.core.workspace import Workspace
from stackforge.verify.kernels.cases import HEAD_SIZES, Case, all_cases
from stackforge.verify.numerics.suite import (
    SharedMemoryOver,
    compile_launch,
    guard_shared_memory,
    overlay_env,
    smem_limit,
    triton_record,
    write_record,
)

STATUSES = ("ok", "ptxas-error", "shared-memory", "compile-error", "load-error")


@dataclass
class Result:
    case: str
    kernel: str
    shape: str
    arch: int
    status: str
    message: str = ""
    shared: int | None = None
    limit: int = 0
    seconds: float = 0.0
    reached_by: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Report:
    env: str
    archs: list[int]
    vllm_src: str
    triton: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> dict[str, Any]:
        return {
            "kernels": len({r.kernel for r in self.results}),
            "cases": len({r.case for r in self.results}),
            "compiles": len(self.results),
            "failed": len(self.failures),
            "by_status": dict(Counter(r.status for r in self.results)),
            "seconds": round(self.seconds, 1),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "archs": self.archs,
            "vllm_src": self.vllm_src,
            "triton": self.triton,
            "summary": self.summary(),
            "results": [asdict(r) for r in self.results],
        }


# --- the worker: one process, Triton imported from the overlay ---------------------------------


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


def _run_case(case: Case, module: Any, arch: int, save: Path | None) -> Result:
    from triton.runtime.errors import PTXASError

    limit = smem_limit(arch)
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


def worker_main() -> int:
    """Read a job from stdin, write one JSON result per line to the original stdout; everything
    else (Triton's dumps, tracebacks) goes to stderr, which the parent keeps as a log."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.read())
    from stackforge.verify.kernels.loader import KernelLoader

    guard_shared_memory()
    cases = {c.id: c for c in all_cases(tuple(job["head_sizes"]))}
    save = Path(job["save"]) if job.get("save") else None
    by_arch: dict[int, list[str]] = {}
    for case_id, arch in job["items"]:
        by_arch.setdefault(arch, []).append(case_id)
    for arch, ids in sorted(by_arch.items()):
        loader = KernelLoader(Path(job["vllm_src"]), arch)
        modules: dict[str, Any] = {}
        with loader.active():  # import every module first: compiles run with the stand-ins gone
            for case_id in ids:
                name = cases[case_id].module
                if name not in modules:
                    try:
                        modules[name] = loader.load(name)
                    except Exception as exc:
                        modules[name] = exc
        for case_id in ids:
            case = cases[case_id]
            proto.write(json.dumps({"event": "start", "case": case_id, "arch": arch}) + "\n")
            module = modules[case.module]
            if isinstance(module, Exception):
                res = Result(case_id, case.kernel, case.shape, arch, "load-error", reached_by=case.reached_by,
                             message=f"{case.module}: {type(module).__name__}: {module}", limit=smem_limit(arch))  # fmt: skip
            else:
                res = _run_case(case, module, arch, save)
            proto.write(json.dumps({"event": "result", **asdict(res)}) + "\n")
    return 0


# --- the parent: plan, spawn workers, collect -------------------------------------------------


def select_cases(kernels: list[str] | None, head_sizes: tuple[int, ...]) -> list[Case]:
    cases = all_cases(head_sizes)
    if kernels:
        cases = [c for c in cases if any(c.kernel == k or c.id.startswith(k) for k in kernels)]
        if not cases:
            known = sorted({c.kernel for c in all_cases(head_sizes)})
            raise UsageError(
                f"no kernel matches {', '.join(kernels)}", hint=f"known kernels: {', '.join(known)}"
            )
    return cases


def run_audit(
    *,
    vllm_src: Path,
    archs: list[int],
    cases: list[Case],
    head_sizes: tuple[int, ...],
    triton_path: Path | None,
    state: Path,
    save: Path | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> list[Result]:
    """Compile every case for every arch in `jobs` worker processes; results in case order."""
    items = [(c.id, a) for c in cases for a in archs]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(items)))
    env = overlay_env(triton_path, state / "triton-cache")
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], Result] = {}
    task = progress.add_task("compiling", total=len(items)) if progress else None
    lock = threading.Lock()

    def work(index: int, share: list[tuple[str, int]]) -> None:
        job = {
            "vllm_src": str(vllm_src),
            "items": share,
            "head_sizes": list(head_sizes),
            "save": str(save) if save else None,
        }
        with (logs / f"kernel-audit-worker-{index}.log").open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stackforge.verify.kernels.audit", "--worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            )  # fmt: skip
            assert proc.stdin and proc.stdout
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            for line in proc.stdout:
                msg = json.loads(line)
                if msg.pop("event") == "start":
                    if progress:
                        progress.update(task, description=f"sm_{msg['arch']} {msg['case']}")
                    continue
                res = Result(**msg)
                with lock:
                    results[(res.case, res.arch)] = res
                    if progress:
                        progress.advance(task)
            proc.wait()

    shares = [items[i::jobs] for i in range(jobs)]
    threads = [threading.Thread(target=work, args=(i, s), daemon=True) for i, s in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    missing = [i for i in items if i not in results]
    if missing:
        raise Failure(
            f"{len(missing)} compile(s) got no result (first: {missing[0][0]} for sm_{missing[0][1]}): a worker died",
            hint=f"see the worker logs in {logs}",
        )
    return [results[i] for i in items]


def audit(
    ws: Workspace | None,
    env_name: str,
    archs: list[int],
    vllm_src: Path,
    triton_patches: list[Path],
    *,
    kernels: list[str] | None = None,
    head_sizes: tuple[int, ...] = HEAD_SIZES,
    state: Path,
    save: Path | None = None,
    jobs: int | None = None,
    show_progress: bool = True,
) -> Report:
    from stackforge.verify.kernels import overlay as triton_overlay

    if not (vllm_src / "vllm").is_dir():
        raise UsageError(
            f"{vllm_src} is not a vLLM source tree (no vllm/ folder)",
            hint="run `stackforge clone vllm` (v0.14.0 + patches/vllm) or pass --vllm-src DIR",
        )
    setup = triton_overlay.prepare(state, triton_patches)
    cases = select_cases(kernels, head_sizes)
    report = Report(
        env_name,
        archs,
        str(vllm_src),
        {"version": setup.version, "patches": list(setup.patches), "how": setup.how,
         "overlay": str(setup.path) if setup.path else None},
    )  # fmt: skip
    start = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not show_progress) as progress:
        report.results = run_audit(
            vllm_src=vllm_src, archs=archs, cases=cases, head_sizes=head_sizes, triton_path=setup.path,
            state=state, save=save, jobs=jobs, progress=progress,
        )  # fmt: skip
    report.seconds = time.monotonic() - start
    return report


# --- output --------------------------------------------------------------------------------------


def _cell(r: Result) -> str:
    if r.ok:
        return f"[green]ok[/green] {r.shared}"
    if r.status == "shared-memory":
        return f"[red]smem {r.shared}>{r.limit}[/red]"
    return f"[red]{r.status}[/red]"


def print_report(report: Report) -> None:
    table = Table(
        title=f"vLLM Triton kernels for {report.env} ({', '.join(f'sm_{a}' for a in report.archs)})"
    )
    table.add_column("kernel")
    table.add_column("shape")
    for arch in report.archs:
        table.add_column(f"sm_{arch}")
    rows: dict[str, dict[int, Result]] = {}
    for r in report.results:
        rows.setdefault(r.case, {})[r.arch] = r
    for case, by_arch in rows.items():
        first = next(iter(by_arch.values()))
        table.add_row(first.kernel, case.partition("/")[2], *[_cell(by_arch[a]) for a in report.archs])
    out.print(table)
    failures = report.failures
    if failures:
        out.print("[bold]failures:[/bold]")
        for r in failures:
            out.print(f"  {r.case} sm_{r.arch}: {r.status}: {r.message}")
    t = report.triton
    out.print(
        f"triton {t['version']} ({t['how']}{', ' + str(len(t['patches'])) + ' patches' if t['patches'] else ''}); "
        f"vLLM source {report.vllm_src}"
    )
    s = report.summary()
    verdict = "[green]all compiled[/green]" if not failures else f"[red]{s['failed']} failed[/red]"
    out.print(
        f"audited {s['kernels']} kernels at {s['cases']} shapes for {len(report.archs)} arch(s): "
        f"{s['compiles']} compiles in {s['seconds']:.1f} s, {verdict}"
    )


def build_numerics(folder: Path, vllm_src: Path, archs: list[int], report: Report, state: Path) -> list[Any]:
    """The numerics suite for `archs` into `folder`, compiled by the same patched Triton as the audit
    (the overlay first on PYTHONPATH of a `stackforge.verify.numerics.suite` subprocess)."""
    from stackforge.verify.numerics.suite import build_in_subprocess

    overlay = report.triton.get("overlay")
    with err.status("building the numerics suite (C++ half-atomic fallback, Triton atomics, attention)"):
        start = time.monotonic()
        built, log = build_in_subprocess(
            folder, vllm_src, tuple(archs), Path(overlay) if overlay else None, state
        )
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "logs" / "numerics-build.log").write_text(log)
    for b in built:
        if not b.ok:
            out.print(f"  numerics record {b.case}: {b.detail}", markup=False, highlight=False)
    out.print(
        f"numerics suite: {sum(b.ok for b in built)} of {len(built)} records compiled into {folder} "
        f"in {time.monotonic() - start:.1f} s",
        markup=False,
        highlight=False,
    )
    return built


def no_gpu(why: str, saved: Path | None) -> Failure:
    """`--run` on a machine without a GPU: what happened and what to do instead."""
    if saved is None:
        hint = (
            "add --save-ptx DIR to build the records here, then run `python -m stackforge.verify.numerics.gpu DIR` "
            "on a machine with an NVIDIA GPU and PyTorch (no Triton or CUDA toolkit needed there)"
        )
    else:
        hint = f"the records are in {saved}: run `python -m stackforge.verify.numerics.gpu {saved}` on a machine with an NVIDIA GPU and PyTorch"
    return Failure(f"no GPU: {why}, so --run cannot run the records", hint=hint)


def run_numerics(saved: Path, env: Any) -> tuple[int, dict]:
    """`--run`: every record under `saved` with a reference, for the env's archs, on this GPU."""
    from stackforge.verify.numerics import gpu as numerics

    why = numerics.gpu_present()
    if why:
        raise no_gpu(why, saved)
    results = numerics.run_checks(saved, env)
    skipped = numerics.unchecked(saved, tuple(env.archs))
    device = numerics.device_name()
    text = numerics.table(results, device) + "\n" + numerics.summary(results, skipped)
    out.print(text, markup=False, highlight=False, soft_wrap=True)
    failed = not results or any(not r.ok for r in results)
    data = {"device": device, "results": [asdict(r) for r in results], "no_reference": dict(skipped)}
    return (EXIT_FAILED if failed else EXIT_OK), data


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    sys.exit(worker_main())
