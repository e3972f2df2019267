"""The build plan: which packages an environment needs, in which order, and the cache key of each.

Cache key of a package = sha256 over: every file of its recipe folder and of recipes/common/,
the environment's variant data, the git tree of each patched source it consumes (git-repos.txt
`for=PKG` and the recipe's `path:` sources) and their `env=`/`subdir=`, the keys of the stack
packages among its build/host requirements, and the tools that shape the bytes (rattler-build,
zstd, stackforge's repacking). Its first 8 hex digits are in the build string,
`cuda129_sm60_61_h1a2b3c4d_0`; a package whose file is already in output/ is not rebuilt.
Run-only requirements order the build but do not enter the key, so a Triton patch rebuilds
triton only, a PyTorch patch rebuilds pytorch and vllm. A derived package (stack.yaml `derive:`,
stackforge.build.methods) is keyed by recipes/derived/, the variant, its binary pins from
stackforge.lock and its series instead of a checkout; the plan says per package how it is made."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from stackforge.build import channel, methods, recipes
from stackforge.build.methods import Method
from stackforge.build.recipes import Recipe
from stackforge.build.repack import (
    REPACK_VERSION,
    zstd_version,
)
from stackforge.build.variant import variant_data
from stackforge.core.console import UsageError, err
from stackforge.core.workspace import Workspace
from stackforge.sources.state import SourceState, source_state
from stackforge.sources.vendor import vendor_problem
from stackforge.spec.envs import GpuEnv
from stackforge.spec.manifest import Manifest, Source, load_manifest, resolve_command
from stackforge.spec.stack import load_stack, stack_context

KEY_FORMAT = "stackforge-key-2"  # 2: keys cover recipes/common/ and git-repos.txt env=/subdir=
DEFAULT_BUILD_ROOT = "/var/tmp/stackforge-build"


def build_root() -> Path:
    return Path(os.environ.get("STACKFORGE_BUILD_ROOT") or DEFAULT_BUILD_ROOT)


def rattler_build_version() -> str:
    import rattler_build

    return rattler_build.rattler_build_version()


def toolchain() -> dict[str, str]:
    return {"rattler-build": rattler_build_version(), "zstd": zstd_version(), "repack": REPACK_VERSION}


def expected_build_string(env: GpuEnv, key: str, number: int) -> str:
    return f"{env.build_tag}_h{key[:8]}_{number}"


def unpinned_sources(recipe: Recipe, manifest: Manifest) -> list[str]:
    """Checkouts the recipe copies in that git-repos.txt has no line for (a stack whose pin is
    not known yet): the package is blocked, not the whole plan."""
    known = {s.name for s in manifest.sources} | set(_vendored(manifest))
    return [n for n in recipe.sources if n not in known]


def _vendored(manifest: Manifest) -> dict[str, Source]:
    """sources/<name>.crates folders (git-repos.txt cargo=) by folder name: not checkouts, the
    crates of one (their bytes follow from its Cargo.lock, so its tree keys them)."""
    return {f"{s.name}.crates": s for s in manifest.sources if s.cargo}


def consumed_sources(recipe: Recipe, manifest: Manifest) -> list[Source]:
    """The sources a package's build reads: git-repos.txt `for=PKG` lines and the recipe's own
    `path: ../../sources/<name>` entries must name the same checkouts."""
    declared = {s.name for s in manifest.sources if s.consumer == recipe.name}
    vendored = _vendored(manifest)
    listed = set(recipe.sources) - set(vendored)
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
    for folder, src in vendored.items():
        if src.name in declared | listed and folder not in recipe.sources:
            raise UsageError(
                f"{manifest.path}:{src.line}: {src.name} has cargo={src.cargo}, but {recipe.file} does not "
                f"copy in its vendored crates",
                hint=f"add `- path: ../../sources/{folder}` with `target_directory: {folder}` to its "
                "source list (the build has no network for crates.io)",
            )
    return [manifest.get(n) for n in sorted(declared | listed)]


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
    source_env: str = ""  # recipes' stackforge_source_env
    components: dict = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    method: Method = field(default_factory=lambda: Method("source", ""))

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
            "method": self.method.kind,
            "method_reason": self.method.why,
            "file": f"{self.subdir}/{self.file_name}" if self.key else "",
        }


@dataclass
class Plan:
    env: GpuEnv
    items: list[PlanItem]
    recipes: dict[str, Recipe]
    stack: dict[str, str] = field(default_factory=dict)  # the recipes' stack_* variables

    def item(self, name: str) -> PlanItem:
        return next(i for i in self.items if i.name == name)

    def context(self) -> dict[str, str | int]:
        """Jinja context with every stack package's real version and build string."""
        ctx = recipes.placeholder_context(list(self.recipes), self.stack, self.env)
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
    if old.get("input") != components.get("input"):
        reasons.append("binary input changed (stackforge.lock)")
    if old.get("series") != components.get("series"):
        reasons.append("patch series changed")
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


def source_env(sources: list[Source]) -> str:
    """git-repos.txt `env=`/`subdir=` of a package's sources as `VAR=dir ...`, dirs relative to
    $SRC_DIR: each checkout is copied in under its name (`target_directory: <name>`). A source with
    cargo= adds CARGO_HOME=<name>.crates/.cargo: cargo then reads the [source] replacement that
    clone-all saved there and builds from the vendored crates only."""
    pairs = [f"{s.env}={'/'.join(p for p in (s.name, s.subdir) if p)}" for s in sources if s.env]
    return " ".join(pairs + [f"CARGO_HOME={s.name}.crates/.cargo" for s in sources if s.cargo])


def _reached(ws: Workspace, found: dict[str, Recipe]) -> set[str]:
    """The stack's packages and everything their requirements reach among the recipes: with
    triton derived, triton-llvm (needed only to compile triton) is not built."""
    roots = set(load_stack(ws).versions) & set(found) if ws.stack_file.is_file() else set(found)
    reached: set[str] = set()
    todo = list(roots or found)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            r = found[name]
            todo.extend(d for d in (*r.build, *r.host, *r.run) if d in found)
    return reached


def make_plan(
    ws: Workspace,
    env: GpuEnv,
    names: list[str] | None = None,
    *,
    from_source: tuple[str, ...] = (),
    pins: dict | None = None,
) -> Plan:
    """Keys and verdicts for the stack (or the named packages and what their keys need).
    `from_source` names derived packages to compile instead; `pins` replaces the lock's."""
    manifest = load_manifest(ws.manifest)
    found = recipes.discover(ws, env)
    how = methods.apply(ws, env, found, from_source, pins)
    if not found:
        raise UsageError(f"no recipes in {ws.recipes}", hint="each package needs recipes/<pkg>/recipe.yaml")
    reached = _reached(ws, found)
    found = {n: r for n, r in found.items() if n in reached}
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
        method = how[name]
        if method.kind == "derived":
            items[name] = _derived_item(
                ws,
                env,
                recipe,
                method,
                {"format": KEY_FORMAT, "package": name, "variant": variant, "tools": tools},
            )
            continue
        unpinned = unpinned_sources(recipe, manifest)
        if unpinned:
            items[name] = PlanItem(name, recipe.version, recipe.subdir, recipe, method=method)
            items[name].status = "blocked"
            items[name].reason = (
                f"{manifest.path.name} pins no {', '.join(unpinned)} (copied in by {recipe.file}): "
                "add the line with its full commit"
            )
            continue
        sources = consumed_sources(recipe, manifest)
        unresolved = [s for s in sources if not s.resolved]
        if unresolved:
            items[name] = PlanItem(name, recipe.version, recipe.subdir, recipe, method=method)
            items[name].status = "blocked"
            items[name].reason = (
                f"{manifest.path.name} has no commit yet for "
                f"{', '.join(f'{s.name} (line {s.line}, from {s.how})' for s in unresolved)}: run "
                f"`{resolve_command(*unresolved)}` "
                "where the remotes are reachable, and commit the file"
            )
            continue
        for src in sources:
            if src.name not in states:
                states[src.name] = source_state(ws, src)
        deps = recipes.key_deps(recipe, found)
        item = PlanItem(name, recipe.version, recipe.subdir, recipe, deps=deps, method=method)
        items[name] = item
        stale = [s.name for s in sources if states[s.name].problem]
        problems = [f"sources/{n} {states[n].problem}" for n in stale]
        crates = [
            (s.name, p) for s in sources if s.cargo and s.name not in stale if (p := vendor_problem(ws, s))
        ]
        problems += [f"sources/{n} {p}" for n, p in crates]
        stale += [n for n, _ in crates]
        if stale:
            problems.append(f"run `stackforge clone {' '.join(stale)}`")
        problems += [f"needs {d}, which is blocked" for d in deps if items[d].status == "blocked"]
        if problems:
            item.status, item.reason = "blocked", "; ".join(problems)
            continue
        item.components = {
            "format": KEY_FORMAT,
            "package": name,
            "recipe": recipes.recipe_files_digest(recipe.folder, ws.recipes / recipes.COMMON),
            "variant": variant,
            "sources": {s.name: states[s.name].tree for s in sources},
            "source_env": source_env(sources),
            "deps": {d: items[d].key for d in deps},
            "tools": tools,
        }
        item.key = _key(item.components)
        item.source_env = item.components["source_env"]
        item.epoch = max((states[s.name].epoch for s in sources), default=0)
        item.build_string = expected_build_string(env, item.key, recipe.build_number)
        _verdict(ws, env, item)
    return Plan(env, list(items.values()), found, stack_context(ws))


def _verdict(ws: Workspace, env: GpuEnv, item: PlanItem) -> None:
    existing = channel.find(ws.output, item.subdir, item.name, item.version, item.build_string)
    if existing:
        where = (
            "already in output/"
            if existing.parent.parent == ws.output
            else "in output/superseded/: made current again"
        )
        item.status, item.reason, item.file = "cached", where, existing.name
    else:
        item.status, item.reason = "build", _why(item.components, _last_record(ws, env, item.name), env)


def _derived_item(ws: Workspace, env: GpuEnv, recipe: Recipe, method: Method, base: dict) -> PlanItem:
    item = PlanItem(recipe.name, recipe.version, recipe.subdir, recipe, method=method)
    assert method.derive is not None
    native = methods.unshipped(ws, method.derive)
    if native:
        item.status = "blocked"
        item.reason = (
            f"patches/{method.derive.series} changes files the binary does not ship ({'; '.join(native)}): "
            f"build it from source (--from-source {recipe.name})"
        )
        return item
    if method.pins is None:
        item.status, item.reason = "blocked", methods.missing_pin_reason(ws, env, method, recipe.version)
        return item
    item.components = methods.components(ws, method, base)
    item.key = _key(item.components)
    # the input's own build time: reproducible, and older than anything built from it
    item.epoch = method.pins.input.timestamp
    item.build_string = expected_build_string(env, item.key, 0)
    _verdict(ws, env, item)
    return item


def print_plan(plan: Plan) -> None:
    from rich.table import Table

    table = Table(
        "package", "version", "how", "key", "status", "why", title=f"build plan for {plan.env.name}"
    )
    colours = {"cached": "green", "build": "cyan", "blocked": "red"}
    for i in plan.items:
        colour = colours.get(i.status, "white")
        table.add_row(
            i.name, i.version, i.method.kind, i.key[:12] or "-", f"[{colour}]{i.status}[/{colour}]", i.reason
        )
    err.print(table)
