"""`stackforge build -e ENV`: the stack's packages in dependency order, each built only when its
inputs changed, into the local channel `output/`.

What is built, and why, is the plan's (stackforge.build.plan: cache keys and their reasons).

Each package is built in a fixed staging directory under the build root (STACKFORGE_BUILD_ROOT,
default /var/tmp/stackforge-build): the paths compilers and rattler-build embed are then the same
in every workspace. The finished package is repacked (stackforge.build.repack), moved into
output/ atomically and the channel re-indexed; a failed or interrupted build leaves output/
untouched and names its log, output/logs/<pkg>.log.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stackforge.build import channel
from stackforge.build import machine as buildenv
from stackforge.build.plan import (
    Plan,
    PlanItem,
    _records_dir,
    build_root,
)
from stackforge.build.repack import (
    normalize_package,
    path_replacements,
)
from stackforge.build.variant import exclude_newer, extra_channels
from stackforge.core.console import Failure, UsageError, err
from stackforge.core.files import atomic_write, sha256_file, waiting_lock
from stackforge.core.workspace import Workspace
from stackforge.spec.envs import GpuEnv

# --- what goes into a key --------------------------------------------------------------------


# --- the plan --------------------------------------------------------------------------------


# --- building one package --------------------------------------------------------------------


class _LogSink:
    """rattler-build's progress callback: every log line to output/logs/<pkg>.log and the last
    line to the progress display."""

    def __init__(self, log: Path, progress, task) -> None:
        self.fh = log.open("w", encoding="utf-8")
        self.tail: deque[str] = deque(maxlen=40)
        self.progress, self.task = progress, task

    def write(self, text: str) -> None:
        self.fh.write(text if text.endswith("\n") else text + "\n")
        self.fh.flush()

    def on_log(self, event) -> None:
        for line in str(event.message).splitlines() or [""]:
            self.write(line)
            if line.strip():
                self.tail.append(line)
                if self.progress is not None:
                    self.progress.update(self.task, status=line.strip()[:70])

    def script_tail(self, n: int) -> list[str]:
        """The last `n` lines the build script printed: rattler-build's own advice after a failure
        ("Script failed ... To run the script manually ...") is left out, since our hint says it,
        and the script's stderr may have overtaken its stdout by a few lines."""
        lines = list(self.tail)
        for i, line in enumerate(lines):
            if line.startswith("Script failed"):
                lines = lines[: i + 1]
                break
        return lines[-n:]

    def on_build_step(self, event) -> None:
        self.write(f"== {event.step_name}: {event.message}")

    def close(self) -> None:
        self.fh.close()


def _render_for_build(ws: Workspace, plan: Plan, item: PlanItem, staging: Path) -> object:
    import rattler_build as rb

    recipe_file = item.recipe.file
    ctx = plan.context()
    if item.method.kind == "derived":
        from stackforge.build.derive import prepare

        assert item.method.derive is not None and item.method.pins is not None
        prepared = prepare(ws, item.method.derive, item.method.pins, staging / "derive")
        recipe_file = prepared.recipe / "recipe.yaml"
        ctx["stackforge_derived_name"] = item.name
        ctx["stackforge_derived_version"] = item.version
        ctx["stackforge_derived_payload"] = str(prepared.payload)
    ctx["stackforge_input_hash"] = item.key[:8]
    ctx["stackforge_build_string"] = item.build_string
    ctx["stackforge_source_env"] = item.source_env
    ctx["stackforge_source_date_epoch"] = item.epoch
    stage0 = rb.Stage0Recipe.from_file(recipe_file)
    variant = stage0.render(
        rb.VariantConfig.from_file(plan.env.variant_file), rb.RenderConfig(extra_context=ctx)
    )[0]
    rendered = str(variant.recipe.build.string)
    if rendered != item.build_string:
        raise UsageError(
            f"{recipe_file}: renders build string {rendered!r}, stackforge expects {item.build_string!r}",
            hint="use `build: string: ${{ stackforge_build_string }}` (see docs/building.md)",
        )
    return variant


def build_package(
    ws: Workspace,
    plan: Plan,
    item: PlanItem,
    *,
    publish_to: Path | None,
    log_dir: Path | None = None,
    progress=None,
    task=None,
) -> Path:
    """Build one package in its staging directory; return the repacked .conda (published into
    `publish_to` when given). Raises Failure naming the log when the build fails."""
    env = plan.env
    log_dir = log_dir or ws.logs
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{item.name}.log"
    root = build_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".{item.name}.writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise Failure(
            f"cannot build in {root}: {exc.strerror}",
            hint="set STACKFORGE_BUILD_ROOT to a folder you can write (the same on every machine that "
            "must produce identical packages)",
        ) from exc
    staging = root / item.name
    jobs, jobs_why = buildenv.max_jobs(item.recipe.gib_per_job)
    cache, cache_env = buildenv.compiler_cache()
    sink = _LogSink(log, progress, task)
    sink.write(
        f"# stackforge build {item.name} {item.version} for {env.name}: key {item.key}\n"
        f"# build string {item.build_string}; staging {staging}\n"
        f"# MAX_JOBS={jobs} ({jobs_why}); compiler cache: {cache or 'none'}"
    )
    saved = {k: os.environ.get(k) for k in (buildenv.SECRET, "PATH")}
    try:
        with waiting_lock(root / f"{item.name}.lock", f"building {item.name} in {root}"):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            variant = _render_for_build(ws, plan, item, staging)
            os.environ[buildenv.SECRET] = buildenv.secret_value(jobs, cache_env)
            os.environ["PATH"] = buildenv.tool_path()
            channels = [channel.channel_url(ws.output), *extra_channels(env)]
            try:
                result = variant.run_build(
                    output_dir=staging,
                    channels=channels,
                    progress_callback=sink,
                    no_build_id=True,  # fixed paths: the work dir is <root>/<pkg>/bld/rattler-build_<pkg>
                    package_format="conda:1",  # repacked below anyway: compress fast here
                    exclude_newer=exclude_newer(env),
                )
            except Exception as exc:
                work = staging / "bld" / f"rattler-build_{item.name}" / "work"
                tail = "\n".join(f"    {line}" for line in sink.script_tail(15))
                raise Failure(
                    f"{item.name}: build failed ({exc}); output/ was left unchanged\n  last log lines:\n{tail}",
                    hint=f"read the full log: {log}; re-run the build script by hand: cd {work} && ./conda_build.sh",
                ) from exc
            built = Path(result.packages[0])
            normalize_package(built, epoch=item.epoch, replacements=path_replacements(ws.root))
            sink.write(f"# repacked {built.name}: sha256 {sha256_file(built)}")
            if publish_to is None:
                return built
            final = channel.publish(built, publish_to, item.subdir)
            _write_record(ws, env, item, final)
            shutil.rmtree(staging, ignore_errors=True)  # success: nothing to debug, free the disk
            return final
    finally:
        sink.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _write_record(ws: Workspace, env: GpuEnv, item: PlanItem, final: Path) -> None:
    folder = _records_dir(ws, env)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "package": item.name,
        "file": f"{item.subdir}/{final.name}",
        "sha256": sha256_file(final),
        "key": item.key,
        "components": item.components,
    }
    atomic_write(folder / f"{item.name}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")


# --- running the plan ------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    status: str  # built | cached
    file: str
    seconds: float


InputCheck = Callable[[PlanItem, list[tuple[str, Path]]], None]


def check_derived_inputs(item: PlanItem, check: InputCheck | None) -> None:
    """Fetch a derived package's input and audited natives (sha256-checked) and let `check` (the
    binary audit, from the command layer) refuse them before anything is built from them."""
    from stackforge.build.inputs import fetch

    pins = item.method.pins
    if check is None or pins is None:
        return
    check(item, [(p.label(), fetch(p)) for p in (pins.input, *pins.audit)])


def run_plan(
    ws: Workspace, plan: Plan, *, presolve: bool = True, check_inputs: InputCheck | None = None
) -> list[Outcome]:
    """Build what the plan says, in order; the channel is locked for the whole run. Unless
    `presolve` is off, every requirement is solved first (build.presolve), before any compile.
    A derived package's inputs go through `check_inputs` (the binary audit) before it is built."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    blocked = [i for i in plan.items if i.status == "blocked"]
    if blocked:
        raise Failure(
            "cannot build: " + "; ".join(f"{i.name}: {i.reason}" for i in blocked),
            hint="bring the checkouts up to date with `stackforge clone-all`",
        )
    if presolve and any(i.status == "build" for i in plan.items):
        from stackforge.build.presolve import require_solvable

        require_solvable(plan)
    ws.output.mkdir(parents=True, exist_ok=True)
    ws.state.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    with waiting_lock(ws.state / "output.lock", f"building into {ws.output}"):
        channel.clean_partials(ws.output)
        if channel.index_is_stale(ws.output):
            channel.index(ws.output)  # a run killed between publish and index, a truncated file: repair
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, console=err, transient=True) as progress:
            for item in plan.items:
                if item.status == "cached":
                    if channel.make_current(ws.output, item.subdir, item.file, plan.env.build_tag):
                        channel.index(ws.output)
                    outcomes.append(Outcome(item.name, "cached", f"{item.subdir}/{item.file}", 0.0))
                    continue
                if item.method.kind == "derived":
                    check_derived_inputs(item, check_inputs)
                task = progress.add_task(f"[cyan]{item.name}[/cyan] {item.build_string}", status="starting")
                started = time.perf_counter()
                final = build_package(ws, plan, item, publish_to=ws.output, progress=progress, task=task)
                seconds = time.perf_counter() - started
                progress.remove_task(task)
                err.print(
                    f"[green]built[/green]  {item.subdir}/{final.name}  ({seconds:.1f}s, log {ws.logs / (item.name + '.log')})"
                )
                if channel.make_current(ws.output, item.subdir, final.name, plan.env.build_tag):
                    channel.index(ws.output)
                item.status, item.file = "cached", final.name
                outcomes.append(Outcome(item.name, "built", f"{item.subdir}/{final.name}", seconds))
    return outcomes


# --- verify reproducible ---------------------------------------------------------------------


# --- CLI -------------------------------------------------------------------------------------
