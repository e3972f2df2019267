"""`stackforge audit kernels -e ENV`: will vLLM's Triton kernels compile for the environment's GPUs?

Compiles the kernels listed in `stackforge.verify.kernels.cases` from a vLLM source tree (default sources/vllm, i.e.
v0.14.0 plus patches/vllm) for every arch of the environment with Triton's own compiler and the
ptxas inside the triton wheel (no GPU needed), with Triton patched by patches/triton (an overlay
of the installed package, see `stackforge.verify.kernels.overlay`). Each kernel x shape x arch is reported as
compiled, ptxas error (with ptxas' message), shared memory over the limit (bytes needed vs the
per-block limit Triton may use on that arch: 49152 on sm_60/61, 98304 on sm_70, which Triton
opts into), or a compile/load error. Compiles run in worker processes (one per core, `audit_worker`) and are
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

import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stackforge.core.console import EXIT_FAILED, EXIT_OK, Failure, UsageError, err, out
from stackforge.core.workspace import Workspace
from stackforge.verify.kernels.cases import HEAD_SIZES, Case, all_cases
from stackforge.verify.kernels.report import Report, Result, print_report
from stackforge.verify.kernels.worker import Worker, WorkerLost, overlay_env

__all__ = ["audit", "build_numerics", "no_gpu", "print_report", "run_audit", "run_numerics", "select_cases"]


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
    items = [(c, a) for c in cases for a in archs]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(items)))
    env = overlay_env(triton_path, state / "triton-cache")
    logs = state / "logs"
    modules = sorted({c.module for c in cases})
    results: dict[tuple[str, int], Result] = {}
    task = progress.add_task("compiling", total=len(items)) if progress else None
    lock = threading.Lock()

    def work(index: int, share: list[tuple[Case, int]]) -> None:
        log = logs / f"kernel-audit-worker-{index}.log"
        log.unlink(missing_ok=True)
        worker = Worker("stackforge.verify.kernels.audit_worker", env, log)
        try:
            for case, arch in share:
                if progress:
                    progress.update(task, description=f"sm_{arch} {case.id}")
                req = {"case": case.id, "arch": arch, "vllm_src": str(vllm_src), "head_sizes": list(head_sizes),
                       "save": str(save) if save else None, "modules": modules}  # fmt: skip
                for msg in worker.request(req):
                    msg.pop("event")
                    res = Result(**msg)
                    with lock:
                        results[(res.case, res.arch)] = res
                        if progress:
                            progress.advance(task)
        except WorkerLost:
            pass  # its cases get no result: reported below
        else:
            worker.close()

    shares = [items[i::jobs] for i in range(jobs)]
    threads = [threading.Thread(target=work, args=(i, s), daemon=True) for i, s in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    missing = [(c.id, a) for c, a in items if (c.id, a) not in results]
    if missing:
        raise Failure(
            f"{len(missing)} compile(s) got no result (first: {missing[0][0]} for sm_{missing[0][1]}): a worker died",
            hint=f"see the worker logs in {logs}",
        )
    return [results[(c.id, a)] for c, a in items]


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
