"""`stackforge audit kernels -e ENV`: will vLLM's Triton kernels compile for the environment's GPUs?

Compiles the kernels listed in `stackforge.verify.kernels.cases` from a vLLM source tree (default sources/vllm, i.e.
the stack's release plus patches/vllm) for every arch of the environment with Triton's own compiler and the
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

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stackforge.core.console import EXIT_FAILED, EXIT_OK, Failure, UsageError, err, out
from stackforge.core.workspace import Workspace
from stackforge.cuda.caps import CAPABILITIES
from stackforge.verify.kernels.cases import HEAD_SIZES, Case, all_cases
from stackforge.verify.kernels.models import case_models, reached_kernels, unfollowed
from stackforge.verify.kernels.models import models as model_rows
from stackforge.verify.kernels.report import Report, Result, print_report
from stackforge.verify.kernels.worker import Worker, WorkerLost, overlay_env

__all__ = ["audit", "build_numerics", "no_gpu", "print_report", "run_audit", "run_numerics", "select_cases"]


def _fp16(model_type: str) -> str:
    return "float16"


BACKENDS = ("rocm_attn",)  # opt-in groups of `--backends`
DEFAULT_TIMEOUT = 600.0  # seconds per compile (one case, all archs of a major)


def select_cases(
    kernels: list[str] | None,
    head_sizes: tuple[int, ...],
    backends: tuple[str, ...] = (),
    dtype_of: Callable[[str], str] | None = None,
    models: tuple[str, ...] = (),
    options: bool = False,
) -> tuple[list[Case], dict[str, str]]:
    """The cases to audit, and the kernels left out (kernel -> how to audit it).

    By default what a default configuration of any model reaches (`Case.reach` "default":
    TRITON_ATTN at the audit's head sizes), and the layers of model families outside the list
    (encoder attention, multimodal RoPE). `models` adds the launches and layers of those rows
    of the model list (`models.case_models`; "all": every kernel some model reaches), `options`
    the kernels of vLLM options (LoRA, speculative decoding, the V2 runner), `backends` the
    kernels of backends vLLM never picks on these GPUs (ROCM_ATTN); `kernels` names cases
    directly. A model's cases are kept in the dtype `dtype_of(model_type)` vLLM runs it in
    (default float16)."""
    cases = [c for c in all_cases(head_sizes) if not c.model or c.dtype == (dtype_of or _fp16)(c.model)]
    if kernels:
        cases = [c for c in cases if any(c.kernel == k or c.id.startswith(k) for k in kernels)]
        if not cases:
            known = sorted({c.kernel for c in all_cases(head_sizes)})
            raise UsageError(
                f"no kernel matches {', '.join(kernels)}", hint=f"known kernels: {', '.join(known)}"
            )
        return cases, {}
    rows = {m.key: m for m in model_rows()}
    if unknown := [k for k in models if k != "all" and k not in rows]:
        raise UsageError(
            f"no model {', '.join(unknown)} in the model list", hint=f"models: all, {', '.join(rows)}"
        )
    wanted = set(rows) if "all" in models else set(models)
    owners = {c.id: case_models(c, rows.values()) for c in cases}  # the rows each case belongs to

    def keep(c: Case) -> bool:
        if c.opt_in:
            return c.opt_in in backends
        if c.reach == "option":
            return options
        if c.reach == "model":  # kernels of families outside the list (encoder towers, mrope) stay in
            return "all" in models or not owners[c.id] or bool(owners[c.id] & wanted)
        return True

    chosen = [c for c in cases if keep(c)]
    audited = {c.kernel for c in chosen}
    by_kernel: dict[str, set[str]] = {}
    for c in cases:
        by_kernel.setdefault(c.kernel, set()).update(owners[c.id])
    skipped: dict[str, str] = {}
    for c in cases:
        if c.kernel in audited or c.kernel in skipped:
            continue
        if c.opt_in:
            skipped[c.kernel] = f"only {c.reached_by.split(' (')[0]} reaches it: --backends {c.opt_in}"
        elif c.reach == "option":
            skipped[c.kernel] = f"{c.reached_by}: --options (or --kernels {c.kernel})"
        else:
            skipped[c.kernel] = f"{c.reached_by}: --model {','.join(sorted(by_kernel[c.kernel])) or 'all'}"
    return chosen, skipped


def cache_root() -> Path:
    """Triton's cache for the audit: $STACKFORGE_CACHE/triton, else ~/.cache/stackforge/triton.
    Triton keys every entry by its own files (the overlay's patched compiler.py included), so
    patched and unpatched compiles never mix, and every clone and CI run of a user shares it."""
    env = os.environ.get("STACKFORGE_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "stackforge") / "triton"


def _groups(archs: list[int]) -> list[list[int]]:
    """Archs of one major together, lowest first: Triton runs once per group."""
    by_major: dict[int, list[int]] = {}
    for a in sorted(archs):
        by_major.setdefault(a // 10, []).append(a)
    return list(by_major.values())


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
    timeout: float | None = DEFAULT_TIMEOUT,
    cache: Path | None = None,
) -> list[Result]:
    """Compile every case for every arch in `jobs` worker processes that take the next item from
    one queue, most expensive first; results in case order. A worker that dies or overruns
    `timeout` costs its own item (status worker-died / timeout), and a fresh worker goes on."""
    groups = _groups(archs)
    env = overlay_env(triton_path, cache or cache_root())
    logs = state / "logs" / f"kernel-audit-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    modules = sorted({c.module for c in cases})
    common = {"vllm_src": str(vllm_src), "head_sizes": list(head_sizes), "modules": modules}
    initial: list[Worker] = []
    twins = _twins(cases, archs, common, env, logs, timeout, initial, save)
    skip = {t.id for group in twins.values() for t in group}
    items = sorted(
        ((c, g) for c in cases if c.id not in skip for g in groups), key=lambda item: -item[0].cost
    )
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(items)))
    results: dict[tuple[str, int], Result] = {}
    todo: queue.Queue[tuple[Case, list[int]]] = queue.Queue()
    for item in items:
        todo.put(item)
    task = progress.add_task("compiling", total=len(cases) * len(archs)) if progress else None
    lock = threading.Lock()

    def record(res: Result) -> None:
        with lock:
            for r in [res] + [_as_twin(res, t) for t in twins.get(res.case, ())]:
                results[(r.case, r.arch)] = r
                if progress:
                    progress.advance(task)

    def work(index: int) -> None:
        worker: Worker | None = initial.pop() if index == 0 and initial else None
        while True:
            try:
                case, group = todo.get_nowait()
            except queue.Empty:
                break
            if worker is None:
                worker = Worker("stackforge.verify.kernels.audit_worker", env, logs / f"worker-{index}.log")
            if progress:
                progress.update(task, description=f"{'/'.join(f'sm_{a}' for a in group)} {case.id}")
            req = {"case": case.id, "archs": group, "save": str(save) if save else None, **common}
            try:
                for msg in worker.request(req, timeout=timeout):
                    msg.pop("event")
                    record(Result(**msg))
            except WorkerLost as exc:
                worker = None
                status = "timeout" if "no answer" in exc.why else "worker-died"
                for arch in group:
                    if (case.id, arch) not in results:
                        record(Result(case.id, case.kernel, case.shape, arch, status, reach=case.reach,
                                      message=f"{exc.why}; log: {logs / f'worker-{index}.log'}",
                                      limit=CAPABILITIES[arch].smem_per_block_optin, reached_by=case.reached_by,
                                      config=case.config, configs=case.configs))  # fmt: skip
        if worker is not None:
            worker.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in initial:  # the describing worker, if work(0) never took it
        w.close()
    return [results[(c.id, a)] for c in cases for a in archs]


def _twins(cases: list[Case], archs: list[int], common: dict, env: dict[str, str], logs: Path,
           timeout: float | None, initial: list[Worker], save: Path | None = None) -> dict[str, list[Case]]:  # fmt: skip
    """Cases that compile to the same code as an earlier case (`audit_worker.twin_key`: the same
    kernel, signature, constexprs and options; below sm_80 num_stages aside): the earlier case's
    id -> its twins, which are not compiled but get its results. With `save`, only autotune
    configs are twinned (as before): a numerics record needs each shape's own launch. The worker
    that describes them is kept in `initial` for the compiles; a worker lost here means no twins."""
    candidates = [c for c in cases if save is None or c.config is not None]
    if len(candidates) < 2:
        return {}
    worker = Worker("stackforge.verify.kernels.audit_worker", env, logs / "worker-0.log")
    try:
        msgs = list(
            worker.request(
                {"describe": [c.id for c in candidates], "archs": archs, **common}, timeout=timeout
            )
        )
    except WorkerLost:
        return {}
    initial.append(worker)
    keys = next((m["keys"] for m in msgs if m.get("event") == "keys"), {})
    first: dict[str, Case] = {}
    twins: dict[str, list[Case]] = {}
    for c in candidates:
        key = keys.get(c.id)
        if key is None:
            continue
        if key in first:
            twins.setdefault(first[key].id, []).append(c)
        else:
            first[key] = c
    return twins


def _as_twin(res: Result, twin: Case) -> Result:
    if twin.config is not None and twin.id.rpartition("@")[0] == res.case.rpartition("@")[0]:
        note = f"compiled once with config {res.config}: only num_stages differs, unused below sm_80"
    else:
        note = f"compiled once as {res.case}: the same kernel, signature, constexprs and options"
    return dataclasses.replace(res, case=twin.id, kernel=twin.kernel, shape=twin.shape, config=twin.config,
                               configs=twin.configs, reach=twin.reach, reached_by=twin.reached_by, seconds=0.0,
                               message=f"{res.message}; {note}" if res.message else note)  # fmt: skip


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
    backends: tuple[str, ...] = (),
    timeout: float | None = DEFAULT_TIMEOUT,
    models: tuple[str, ...] = (),
    options: bool = False,
) -> Report:
    from stackforge.verify.kernels import overlay as triton_overlay

    if not (vllm_src / "vllm").is_dir():
        raise UsageError(
            f"{vllm_src} is not a vLLM source tree (no vllm/ folder)",
            hint="run `stackforge clone vllm` (the stack's release + patches/vllm) or pass --vllm-src DIR",
        )
    setup = triton_overlay.prepare(state, triton_patches)
    from stackforge.verify.kernels.dtypes import auto_dtype

    cases, skipped = select_cases(
        kernels, head_sizes, backends, lambda m: auto_dtype(vllm_src, min(archs), m), models, options
    )
    left_out = unfollowed(cases, vllm_src)
    cases = [c for c in cases if c.id not in left_out]
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
            state=state, save=save, jobs=jobs, progress=progress, timeout=timeout,
        )  # fmt: skip
    report.skipped = skipped
    report.unfollowed = left_out
    if not kernels and "all" not in models:  # the rows whose own launches this run left out
        report.models_left = {m.key: m.name for m in model_rows() if m.key not in models}
    report.model_kernels = sorted(reached_kernels(all_cases(head_sizes)))
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
