"""Reading the workspace's recipes: which package each makes, from which sources, needing what.

Every folder `recipes/<pkg>/` with a `recipe.yaml` (rattler-build v1, one output) is a package of
the stack. rattler-build itself renders each recipe with the environment's variant file, so
`if:` selectors and Jinja are evaluated exactly as in the build; stackforge reads from the result
the package name and version, its build/host/run requirements, the build string, and the
`sources/<name>` checkouts the recipe copies in (`source: - path: ../../sources/<name>`).

Context stackforge passes to every recipe (rattler-build `extra_context`):
  stack_<pkg>                    the stack's version of each package (stack.yaml; `-` -> `_`)
  stackforge_build_tag           the environment's build-string prefix, `cuda129_sm60_61` (pins)
  stackforge_build_string        the whole build string: `build: string: ${{ stackforge_build_string }}`
                                 (`cuda129_sm60_61_h1a2b3c4d_0`: GpuEnv.build_tag, key, build number)
  stackforge_source_env          `VAR=dir ...` from git-repos.txt env=/subdir= of the package's
                                 sources, dirs relative to $SRC_DIR; recipes/common/preamble.sh
                                 exports them
  stackforge_input_hash          first 8 hex digits of the package's cache key
  stackforge_source_date_epoch   commit time of the package's newest patched source
  <pkg>_version, <pkg>_build     version and build string of every stack package (`-` -> `_`),
                                 for exact pins: `torch[version="==${{ pytorch_version }}", ...]`

`recipes/common/` holds what every build script shares (sourced as $RECIPE_DIR/../common/...):
it is part of every package's key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stackforge.core.console import UsageError
from stackforge.core.workspace import Workspace
from stackforge.spec.envs import GpuEnv
from stackforge.spec.stack import stack_context

PLACEHOLDER_HASH = "00000000"
PLACEHOLDER_BUILD = "unknown"
_SPEC_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class Recipe:
    """One recipe as rendered for one environment."""

    folder: Path
    name: str
    version: str
    build_number: int
    build_string: str
    subdir: str  # linux-64 or noarch
    build: tuple[str, ...]  # package names in requirements.build
    host: tuple[str, ...]
    run: tuple[str, ...]
    sources: tuple[str, ...]  # names of the sources/<name> checkouts it copies in
    gib_per_job: float | None = None  # extra.stackforge.gib_per_job: memory one compile job needs
    context: dict = field(default_factory=dict, compare=False)
    specs: dict = field(default_factory=dict, compare=False)  # build/host/run: rendered requirement specs

    @property
    def file(self) -> Path:
        return self.folder / "recipe.yaml"


def ident(package: str) -> str:
    """A package name as a Jinja variable name: pytorch -> pytorch, mini-torch -> mini_torch."""
    return package.replace("-", "_").replace(".", "_")


COMMON = "common"  # recipes/common/: shared by every recipe, not a package
DERIVED = "derived"  # recipes/derived/: the template of every derived package (stackforge.build.derive)


def recipe_folders(ws: Workspace) -> list[Path]:
    """recipes/<pkg>/ of the workspace, each replaced by the chosen stack's own
    stacks/<name>/recipes/<pkg>/ where it has one."""
    skip = {"variants", DERIVED}
    found: dict[str, Path] = {}
    for root in (ws.recipes, ws.stack_recipes):
        if root is not None and root.is_dir():
            found.update(
                {p.parent.name: p.parent for p in root.glob("*/recipe.yaml") if p.parent.name not in skip}
            )
    return [found[name] for name in sorted(found)]


def recipe_files_digest(folder: Path, common: Path | None = None) -> dict[str, str]:
    """sha256 of every file of a recipe folder (recipe.yaml, build.sh, patches...) and of
    recipes/common/ (`common`, default the folder's sibling), which its build script sources, by
    path relative to recipes/ (a stack's own recipe folder hashes under the same names)."""
    common = common or folder.parent / COMMON
    files = [(p, p.relative_to(folder.parent)) for p in sorted(folder.rglob("*"))]
    files += [(p, Path(COMMON) / p.relative_to(common)) for p in sorted(common.rglob("*"))]
    return {
        rel.as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p, rel in files
        if p.is_file() and "__pycache__" not in p.parts
    }


def spec_name(spec: object) -> str | None:
    """The package a requirement names: 'python 3.12.*', 'torch[build=...]', {pin_compatible: ...}."""
    if isinstance(spec, dict):
        for kind in ("pin_subpackage", "pin_compatible"):
            if kind in spec:
                inner = spec[kind]
                return inner.get("name") if isinstance(inner, dict) else str(inner)
        return None
    match = _SPEC_NAME.match(str(spec).strip())
    return match.group(0) if match else None


def _names(specs: list) -> tuple[str, ...]:
    return tuple(n for n in (spec_name(s) for s in specs or []) if n)


def _source_names(ws: Workspace, folder: Path, raw: dict) -> tuple[str, ...]:
    """sources/<name> checkouts listed as `path:` sources (read from the YAML: paths are literal)."""
    entries = raw.get("source") or []
    if isinstance(entries, dict):
        entries = [entries]
    names = []
    for entry in entries:
        if not isinstance(entry, dict) or "path" not in entry:
            continue
        target = (folder / str(entry["path"])).resolve()
        if target.parent != ws.sources.resolve():
            raise UsageError(
                f"{folder / 'recipe.yaml'}: source path {entry['path']!r} is not a checkout under sources/",
                hint="build from the patched checkouts only: `path: ../../sources/<name>`",
            )
        names.append(target.name)
    return tuple(names)


def render(ws: Workspace, folder: Path, variant_file: Path, context: dict[str, str | int]) -> Recipe:
    """Render one recipe for one environment with rattler-build (no solving, no network)."""
    import rattler_build as rb

    path = folder / "recipe.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from exc
    if "outputs" in raw:
        raise UsageError(
            f"{path}: multi-output recipes are not supported", hint="one package per recipe folder"
        )
    try:
        stage0 = rb.Stage0Recipe.from_file(path)
        variants = stage0.render(
            rb.VariantConfig.from_file(variant_file), rb.RenderConfig(extra_context=context)
        )
    except Exception as exc:  # rattler-build's parse/render errors carry the line and column
        raise UsageError(f"{path}: rattler-build cannot render it for {variant_file.name}: {exc}") from exc
    if len(variants) != 1:
        raise UsageError(
            f"{path}: renders {len(variants)} variants with {variant_file}",
            hint="give every variant key exactly one value in the environment's variant file",
        )
    stage1 = variants[0].recipe
    reqs = stage1.requirements.to_dict() if stage1.requirements else {}
    noarch = stage1.build.noarch
    extra = (raw.get("extra") or {}).get("stackforge") or {}
    return Recipe(
        folder=folder,
        name=stage1.package.name,
        version=str(stage1.package.version),
        build_number=int(stage1.build.number or 0),
        build_string=str(stage1.build.string),
        subdir="noarch" if noarch else variants[0].variant.get("target_platform", "linux-64"),
        build=_names(reqs.get("build", [])),
        host=_names(reqs.get("host", [])),
        run=_names(reqs.get("run", [])),
        specs={k: tuple(reqs.get(k) or ()) for k in ("build", "host", "run")},
        sources=_source_names(ws, folder, raw),
        gib_per_job=float(extra["gib_per_job"]) if "gib_per_job" in extra else None,
        context=dict(stage1.context or {}),
    )


def placeholder_context(package_names: list[str], stack: dict[str, str], env: GpuEnv) -> dict[str, str | int]:
    """What recipes see before keys are known: enough to learn their names and requirements."""
    ctx: dict[str, str | int] = {
        **stack,
        "stackforge_build_tag": env.build_tag,
        "stackforge_input_hash": PLACEHOLDER_HASH,
        "stackforge_build_string": f"{env.build_tag}_h{PLACEHOLDER_HASH}_0",
        "stackforge_source_env": "",
        "stackforge_source_date_epoch": 0,
    }
    for name in package_names:
        ctx[f"{ident(name)}_version"] = "0"
        ctx[f"{ident(name)}_build"] = PLACEHOLDER_BUILD
    return ctx


def discover(ws: Workspace, env: GpuEnv) -> dict[str, Recipe]:
    """Every recipe of the workspace rendered for one environment, by package name (none is fine
    here: a stack may derive all its packages; the plan refuses an empty stack)."""
    folders = recipe_folders(ws)
    if not folders:
        return {}
    # Names first (with a context that covers every folder name), then the real render.
    stack = stack_context(ws)
    ctx = placeholder_context([f.name for f in folders], stack, env)
    found: dict[str, Recipe] = {}
    for folder in folders:
        recipe = render(ws, folder, env.variant_file, ctx)
        if recipe.name in found:
            raise UsageError(f"{folder}: package {recipe.name!r} is also made by {found[recipe.name].folder}")
        found[recipe.name] = recipe
    if any(name != r.folder.name for name, r in found.items()):
        ctx = placeholder_context(list(found), stack, env)
        found = {r.name: render(ws, r.folder, env.variant_file, ctx) for r in found.values()}
    return found


def build_order(recipes: dict[str, Recipe]) -> list[str]:
    """Packages in dependency order (build, host and run requirements inside the stack),
    ties broken by name so the order is stable; a cycle is an error naming its members."""
    deps = {
        n: {d for d in (*r.build, *r.host, *r.run) if d in recipes and d != n} for n, r in recipes.items()
    }
    order: list[str] = []
    done: set[str] = set()
    while len(done) < len(recipes):
        ready = sorted(n for n in recipes if n not in done and deps[n] <= done)
        if not ready:
            cycle = sorted(n for n in recipes if n not in done)
            raise UsageError(f"the recipes' requirements form a cycle among: {', '.join(cycle)}")
        order.extend(ready)
        done.update(ready)
    return order


def key_deps(recipe: Recipe, recipes: dict[str, Recipe]) -> tuple[str, ...]:
    """Stack packages whose *keys* enter this one's: build and host requirements only (a run
    requirement is resolved at install time, so e.g. vllm does not rebuild when triton changes)."""
    return tuple(sorted({d for d in (*recipe.build, *recipe.host) if d in recipes and d != recipe.name}))
