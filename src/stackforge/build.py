"""`stackforge build -e ENV`: the stack's packages in dependency order, each built only when its
inputs changed, into the local channel `output/`.

Cache key of a package = sha256 over: every file of its recipe folder, the environment's variant
data, the git tree of each patched source it consumes (git-repos.txt `for=PKG` and the recipe's
`path:` sources), the keys of the stack packages among its build/host requirements, and the
tools that shape the bytes (rattler-build, zstd, stackforge's repacking). Its first 8 hex digits
are in the build string, `cuda129_sm60_61_h1a2b3c4d_0`; a package whose file is already in
output/ is not rebuilt. Run-only requirements order the build but do not enter the key, so a
Triton patch rebuilds triton only, a PyTorch patch rebuilds pytorch and vllm.

Each package is built in a fixed staging directory under the build root (STACKFORGE_BUILD_ROOT,
default /var/tmp/stackforge-build): the paths compilers and rattler-build embed are then the same
in every workspace. The finished package is repacked (stackforge.reproducible), moved into
output/ atomically and the channel re-indexed; a failed or interrupted build leaves output/
untouched and names its log, output/logs/<pkg>.log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from filelock import FileLock

from stackforge import buildenv, channel, recipes
from stackforge.console import Failure, UsageError, err, print_json
from stackforge.envs import GpuEnv, load_env
from stackforge.manifest import Manifest, Source, load_manifest
from stackforge.recipes import Recipe
from stackforge.reproducible import (
    REPACK_VERSION,
    compare_packages,
    normalize_package,
    path_replacements,
    sha256_file,
    zstd_version,
)
from stackforge.workspace import Workspace, find_workspace

KEY_FORMAT = "stackforge-key-1"
DEFAULT_BUILD_ROOT = "/var/tmp/stackforge-build"
DEFAULT_CHANNELS = ("conda-forge",)


# --- what goes into a key --------------------------------------------------------------------


def build_root() -> Path:
    return Path(os.environ.get("STACKFORGE_BUILD_ROOT") or DEFAULT_BUILD_ROOT)


def rattler_build_version() -> str:
    import rattler_build

    return rattler_build.rattler_build_version()


def toolchain() -> dict[str, str]:
    return {"rattler-build": rattler_build_version(), "zstd": zstd_version(), "repack": REPACK_VERSION}


def variant_data(env: GpuEnv) -> dict:
    """The variant file as data: comments and key order do not rebuild anything."""
    return yaml.safe_load(env.variant_file.read_text()) or {}


def _single(value: object) -> object:
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def extra_channels(env: GpuEnv) -> list[str]:
    """Channels after output/: the variant file's `channel_sources` (conda-forge's key, a
    comma-separated string), conda-forge when absent; an empty string means output/ only."""
    value = _single(variant_data(env).get("channel_sources"))
    if value is None:
        return list(DEFAULT_CHANNELS)
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(c).strip() for c in items if str(c).strip()]


def exclude_newer(env: GpuEnv) -> datetime | None:
    """`exclude_newer: "YYYY-MM-DD"` in the variant file: solve build/host environments as the
    channels were on that day, so a rebuild next year resolves the same compilers and libraries."""
    value = _single(variant_data(env).get("exclude_newer"))
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
    except ValueError as exc:
        raise UsageError(f"{env.variant_file}: exclude_newer={value!r} is not a date (YYYY-MM-DD)") from exc


def expected_build_string(env: GpuEnv, key: str, number: int) -> str:
    return f"{env.build_tag}_h{key[:8]}_{number}"


@dataclass
class SourceState:
    name: str
    tree: str | None  # git tree of the patched checkout; None when it is not there or not current
    epoch: int  # commit time of the patched HEAD
    problem: str = ""


def source_state(ws: Workspace, src: Source) -> SourceState:
    from stackforge.sources import Checkouts, patched_tree

    status = Checkouts(ws, quiet=True).status(src)
    if not status.up_to_date or status.dirty:
        what = "has uncommitted changes" if status.dirty else status.state
        return SourceState(src.name, None, 0, what)
    tree = patched_tree(ws, src)
    epoch = subprocess.run(
        ["git", "log", "-1", "--format=%ct", "HEAD"],
        cwd=ws.checkout(src.name),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return SourceState(src.name, tree, int(epoch))


def consumed_sources(recipe: Recipe, manifest: Manifest) -> list[Source]:
    """The sources a package's build reads: git-repos.txt `for=PKG` lines and the recipe's own
    `path: ../../sources/<name>` entries must name the same checkouts."""
    declared = {s.name for s in manifest.sources if s.consumer == recipe.name}
    listed = set(recipe.sources)
    for name in sorted(listed - declared):
        src = manifest.get(name)
        if src.consumer is not None:
            raise UsageError(
                f"{recipe.file}: copies sources/{name}, which {manifest.path}:{src.line} gives to for={src.consumer}",
                hint=f"a source has one consumer: change for= or drop it from {recipe.file.name}",
            )
    for name in sorted(declared - listed):
        src = manifest.get(name)
        raise UsageError(
            f"{manifest.path}:{src.line}: {name} is for={recipe.name}, but {recipe.file} does not copy it in",
            hint=f"add `- path: ../../sources/{name}` with `target_directory: {name}` to its source list",
        )
    return [manifest.get(n) for n in sorted(declared | listed)]


# --- the plan --------------------------------------------------------------------------------


@dataclass
class PlanItem:
    name: str
    version: str
    subdir: str
    recipe: Recipe
    key: str = ""
    build_string: str = ""
    status: str = ""  # cached | build | blocked
    reason: str = ""
    file: str = ""  # file name in output/<subdir>/
    epoch: int = 0
    components: dict = field(default_factory=dict)
    deps: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}-{self.build_string}.conda"

    def summary(self) -> dict:
        return {
            "package": self.name,
            "version": self.version,
            "key": self.key,
            "build_string": self.build_string,
            "status": self.status,
            "reason": self.reason,
            "file": f"{self.subdir}/{self.file_name}" if self.key else "",
        }


@dataclass
class Plan:
    env: GpuEnv
    items: list[PlanItem]
    recipes: dict[str, Recipe]

    def item(self, name: str) -> PlanItem:
        return next(i for i in self.items if i.name == name)

    def context(self) -> dict[str, str | int]:
        """Jinja context with every stack package's real version and build string."""
        ctx = recipes.placeholder_context(list(self.recipes))
        for i in self.items:
            if i.key:
                ctx[f"{recipes.ident(i.name)}_version"] = i.version
                ctx[f"{recipes.ident(i.name)}_build"] = i.build_string
        return ctx


def _key(components: dict) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _records_dir(ws: Workspace, env: GpuEnv) -> Path:
    return ws.output / ".keys" / env.name


def _last_record(ws: Workspace, env: GpuEnv, name: str) -> dict | None:
    path = _records_dir(ws, env) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _why(components: dict, record: dict | None, env: GpuEnv) -> str:
    """What changed since the last build of this package for this environment."""
    if record is None:
        return f"never built for {env.name}"
    old = record.get("components", {})
    reasons = []
    if old.get("recipe") != components["recipe"]:
        changed = sorted(
            f
            for f in set(old.get("recipe", {})) | set(components["recipe"])
            if old.get("recipe", {}).get(f) != components["recipe"].get(f)
        )
        reasons.append(f"recipe changed ({', '.join(changed)})")
    if old.get("variant") != components["variant"]:
        reasons.append(f"variant changed ({env.variant_file.name})")
    for name, tree in components["sources"].items():
        before = old.get("sources", {}).get(name)
        if before != tree:
            reasons.append(f"source {name} changed (tree {str(before)[:8]} -> {tree[:8]})")
    for name, key in components["deps"].items():
        if old.get("deps", {}).get(name) != key:
            reasons.append(f"dependency {name} changed (key h{key[:8]})")
    if old.get("tools") != components["tools"]:
        reasons.append("build tools changed")
    if not reasons:
        reasons.append("package missing from output/")
    return "; ".join(reasons)


def make_plan(ws: Workspace, env: GpuEnv, names: list[str] | None = None) -> Plan:
    """Keys and verdicts for the stack (or the named packages and what their keys need)."""
    manifest = load_manifest(ws.manifest)
    found = recipes.discover(ws, env.variant_file)
    order = recipes.build_order(found)
    wanted = set(order)
    if names:
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise UsageError(f"no recipe makes {', '.join(unknown)}", hint=f"packages: {', '.join(order)}")
        wanted = set()
        todo = list(names)
        while todo:  # a package needs the keys (and packages) of its build/host dependencies
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo.extend(recipes.key_deps(found[name], found))
    tools = toolchain()
    variant = variant_data(env)
    states: dict[str, SourceState] = {}
    items: dict[str, PlanItem] = {}
    for name in (n for n in order if n in wanted):
        recipe = found[name]
        sources = consumed_sources(recipe, manifest)
        for src in sources:
            if src.name not in states:
                states[src.name] = source_state(ws, src)
        deps = recipes.key_deps(recipe, found)
        item = PlanItem(name, recipe.version, recipe.subdir, recipe, deps=deps)
        items[name] = item
        stale = [s.name for s in sources if states[s.name].problem]
        problems = [f"sources/{n} {states[n].problem}" for n in stale]
        if stale:
            problems.append(f"run `stackforge clone {' '.join(stale)}`")
        problems += [f"needs {d}, which is blocked" for d in deps if items[d].status == "blocked"]
        if problems:
            item.status, item.reason = "blocked", "; ".join(problems)
            continue
        item.components = {
            "format": KEY_FORMAT,
            "package": name,
            "recipe": recipes.recipe_files_digest(recipe.folder),
            "variant": variant,
            "sources": {s.name: states[s.name].tree for s in sources},
            "deps": {d: items[d].key for d in deps},
            "tools": tools,
        }
        item.key = _key(item.components)
        item.epoch = max((states[s.name].epoch for s in sources), default=0)
        item.build_string = expected_build_string(env, item.key, recipe.build_number)
        existing = channel.find(ws.output, item.subdir, name, item.version, item.build_string)
        if existing:
            item.status, item.reason, item.file = "cached", "already in output/", existing.name
        else:
            item.status, item.reason = "build", _why(item.components, _last_record(ws, env, name), env)
    return Plan(env, list(items.values()), found)


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


def _render_for_build(ws: Workspace, plan: Plan, item: PlanItem) -> object:
    import rattler_build as rb

    ctx = plan.context()
    ctx["stackforge_input_hash"] = item.key[:8]
    ctx["stackforge_source_date_epoch"] = item.epoch
    stage0 = rb.Stage0Recipe.from_file(item.recipe.file)
    variant = stage0.render(
        rb.VariantConfig.from_file(plan.env.variant_file), rb.RenderConfig(extra_context=ctx)
    )[0]
    rendered = str(variant.recipe.build.string)
    if rendered != item.build_string:
        raise UsageError(
            f"{item.recipe.file}: renders build string {rendered!r}, stackforge expects {item.build_string!r}",
            hint="use `string: cuda${{ cuda_tag }}_sm${{ sm_tag }}_h${{ stackforge_input_hash }}_${{ build_number }}` "
            "(see docs/building.md)",
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
        with FileLock(str(root / f"{item.name}.lock")):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            variant = _render_for_build(ws, plan, item)
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
    tmp = folder / f".{item.name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / f"{item.name}.json")


# --- running the plan ------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    status: str  # built | cached
    file: str
    seconds: float


def print_plan(plan: Plan) -> None:
    from rich.table import Table

    table = Table("package", "version", "key", "status", "why", title=f"build plan for {plan.env.name}")
    colours = {"cached": "green", "build": "cyan", "blocked": "red"}
    for i in plan.items:
        colour = colours.get(i.status, "white")
        table.add_row(i.name, i.version, i.key[:12] or "-", f"[{colour}]{i.status}[/{colour}]", i.reason)
    err.print(table)


def run_plan(ws: Workspace, plan: Plan) -> list[Outcome]:
    """Build what the plan says, in order; the channel is locked for the whole run."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    blocked = [i for i in plan.items if i.status == "blocked"]
    if blocked:
        raise Failure(
            "cannot build: " + "; ".join(f"{i.name}: {i.reason}" for i in blocked),
            hint="bring the checkouts up to date with `stackforge clone-all`",
        )
    ws.output.mkdir(parents=True, exist_ok=True)
    ws.state.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    with FileLock(str(ws.state / "output.lock")):
        channel.clean_partials(ws.output)
        if {p.name for p in channel.packages(ws.output)} - channel.indexed_files(ws.output) or not (
            ws.output / "noarch" / "repodata.json"
        ).is_file():
            channel.index(ws.output)  # a run killed between publish and index: repair first
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, console=err, transient=True) as progress:
            for item in plan.items:
                if item.status == "cached":
                    outcomes.append(Outcome(item.name, "cached", f"{item.subdir}/{item.file}", 0.0))
                    continue
                task = progress.add_task(f"[cyan]{item.name}[/cyan] {item.build_string}", status="starting")
                started = time.perf_counter()
                final = build_package(ws, plan, item, publish_to=ws.output, progress=progress, task=task)
                seconds = time.perf_counter() - started
                progress.remove_task(task)
                err.print(
                    f"[green]built[/green]  {item.subdir}/{final.name}  ({seconds:.1f}s, log {ws.logs / (item.name + '.log')})"
                )
                item.status, item.file = "cached", final.name
                outcomes.append(Outcome(item.name, "built", f"{item.subdir}/{final.name}", seconds))
    return outcomes


def build(
    ws: Workspace, env: GpuEnv, names: list[str] | None = None, *, dry_run: bool = False
) -> tuple[Plan, list[Outcome]]:
    plan = make_plan(ws, env, names)
    if dry_run:
        return plan, []
    return plan, run_plan(ws, plan)


# --- verify reproducible ---------------------------------------------------------------------


@dataclass
class Comparison:
    name: str
    file_name: str
    sha256: str
    rebuilt_sha256: str
    differences: list = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.sha256 == self.rebuilt_sha256


def rebuild_and_compare(
    ws: Workspace, env: GpuEnv, names: list[str] | None, *, keep: bool = False
) -> list[Comparison]:
    """Rebuild packages that are in output/ into a scratch directory and compare sha256."""
    plan = make_plan(ws, env, names)
    targets = [i for i in plan.items if not names or i.name in names]
    missing = [i.name for i in targets if i.status != "cached"]
    if missing:
        raise Failure(
            f"not built yet for {env.name} with the current inputs: {', '.join(missing)}",
            hint=f"run `stackforge build -e {env.name}` first",
        )
    scratch = ws.state / "verify" / env.name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    results = []
    finished = False
    try:
        for item in targets:
            err.print(f"rebuilding {item.name} ({item.build_string}) ...")
            rebuilt = build_package(ws, plan, item, publish_to=None, log_dir=scratch / "logs")
            kept = scratch / item.file_name
            shutil.move(str(rebuilt), kept)
            shutil.rmtree(build_root() / item.name, ignore_errors=True)
            original = ws.output / item.subdir / item.file_name
            results.append(
                Comparison(
                    item.name,
                    item.file_name,
                    sha256_file(original),
                    sha256_file(kept),
                    compare_packages(original, kept),
                )
            )
        finished = True
    finally:
        if keep or not finished:  # a failed rebuild keeps its log (named in the error)
            err.print(f"rebuilt packages and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


# --- CLI -------------------------------------------------------------------------------------


def _cmd_build(args: argparse.Namespace) -> int:
    ws = find_workspace(args.root)
    env = load_env(ws, args.env)
    plan = make_plan(ws, env, args.packages or None)
    if args.json:
        print_json({"env": env.name, "dry_run": args.dry_run, "plan": [i.summary() for i in plan.items]})
    else:
        print_plan(plan)
    if args.dry_run:
        return 0
    outcomes = run_plan(ws, plan)
    built = [o for o in outcomes if o.status == "built"]
    err.print(
        f"{len(built)} built, {len(outcomes) - len(built)} up to date; channel: {ws.output} "
        f"(use it: -c {channel.channel_url(ws.output)})"
    )
    return 0


def env_arg(parser: argparse.ArgumentParser) -> None:
    """-e/--env, defaulting to $STACKFORGE_ENV (set by the pixi environments pascal and volta)."""
    default = os.environ.get("STACKFORGE_ENV") or None
    parser.add_argument(
        "-e",
        "--env",
        default=default,
        required=default is None,
        help="GPU environment: recipes/variants/<env>.yaml, e.g. pascal or volta (default: $STACKFORGE_ENV)",
    )


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser(
        "build",
        help="build the stack's conda packages for a GPU environment into output/",
        description="Build the packages of recipes/ for one GPU environment in dependency order, "
        "skipping each whose cache key is already in output/.",
    )
    env_arg(p)
    p.add_argument("packages", nargs="*", metavar="PKG", help="build only these (and what their keys need)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (package, key, built/cached, why); build nothing",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p.set_defaults(func=_cmd_build)
