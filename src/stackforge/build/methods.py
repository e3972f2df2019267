"""How each package of the stack is made: compiled from its recipe, or derived from a binary.

The choice is data: stack.yaml `derive:` names the packages made from a pinned conda-forge
artifact plus our Python-only patch series (stackforge.build.derive); every other package is
compiled from recipes/<pkg>/. `--from-source PKG` (or `all`) overrides the data for one build, and
the source path stays whole: its recipes, keys and tests are those of a stack without `derive:`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from stackforge.build import recipes
from stackforge.build.inputs import DerivedPins
from stackforge.build.recipes import Recipe
from stackforge.core.console import Failure, UsageError
from stackforge.core.workspace import Workspace
from stackforge.sources.series import series_digest, series_files
from stackforge.spec.envs import GpuEnv
from stackforge.spec.stack import Derive, load_stack

ALL = "all"


@dataclass(frozen=True)
class Method:
    """One package's way in: `derived` (with its pins, when the lock has them) or `source`."""

    kind: str  # derived | source
    why: str
    derive: Derive | None = None
    pins: DerivedPins | None = None


def chosen(ws: Workspace, from_source: tuple[str, ...] = ()) -> dict[str, Derive]:
    """The stack's derived packages, less those the user asked to build from source."""
    if not ws.stack_file.is_file():
        return {}
    derive = load_stack(ws).derive
    unknown = sorted(set(from_source) - set(derive) - {ALL})
    if unknown:
        raise UsageError(
            f"--from-source {', '.join(unknown)}: not derived in {ws.stack_file} (those packages are "
            "compiled anyway)",
            hint=f"derived packages: {', '.join(derive) or 'none'}; or `--from-source {ALL}`",
        )
    if ALL in from_source:
        return {}
    return {n: d for n, d in derive.items() if n not in from_source}


def _locked_block(ws: Workspace, env: GpuEnv) -> dict:
    path = ws.lock_file
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise Failure(
            f"{path}: not valid JSON ({exc})", hint="restore it from git, or rewrite it: `stackforge lock`"
        ) from exc
    return (data.get("binaries") or {}).get(env.name) or {}


def locked_pins(ws: Workspace, env: GpuEnv) -> dict[str, DerivedPins]:
    """The binary pins stackforge.lock holds for this environment."""
    return {
        n: DerivedPins.from_json(p, f"{ws.lock_file}: binaries.{env.name}.{n}")
        for n, p in _locked_block(ws, env).items()
        if not (isinstance(p, dict) and "unavailable" in p)
    }


def locked_unavailable(ws: Workspace, env: GpuEnv) -> dict[str, str]:
    """Requests the channels had no artifact for when the lock was written: package -> spec."""
    return {
        n: str(p["unavailable"])
        for n, p in _locked_block(ws, env).items()
        if isinstance(p, dict) and "unavailable" in p
    }


def pin_matches(derive: Derive, version: str, pins: DerivedPins) -> bool:
    """Whether a locked pin still answers stack.yaml's request (name, version, build glob)."""
    import fnmatch

    got = pins.input
    return (
        got.name == derive.input and got.version == version and fnmatch.fnmatchcase(got.build, derive.build)
    )


def derived_recipe(ws: Workspace, derive: Derive, version: str, pins: DerivedPins | None) -> Recipe:
    """What the plan needs to know of a derived package, from its pin (no download)."""
    depends = pins.input.depends if pins else ()
    return Recipe(
        folder=ws.recipes / recipes.DERIVED,
        name=derive.package,
        version=version,
        build_number=0,
        build_string="",
        subdir=pins.input.subdir if pins else "linux-64",
        build=(),
        host=(),
        run=tuple(n for n in (recipes.spec_name(d) for d in depends) if n),
        sources=(),
        specs={"build": (), "host": (), "run": tuple(depends)},
    )


def apply(
    ws: Workspace, env: GpuEnv, found: dict[str, Recipe], from_source: tuple[str, ...], pins: dict | None
) -> dict[str, Method]:
    """Swap the derived packages' recipes in `found` and say, per package, how it is made."""
    derive = chosen(ws, from_source)
    stack_derive = chosen(ws)
    uncompilable = sorted(n for n in set(stack_derive) - set(derive) if n not in found)
    if uncompilable:
        raise UsageError(
            f"--from-source {', '.join(uncompilable)}: no recipe to compile it (recipes/<pkg>/recipe.yaml)",
            hint="derive it from its binary (drop --from-source), or add its recipe",
        )
    locked = locked_pins(ws, env) if pins is None else pins
    versions = load_stack(ws).versions if ws.stack_file.is_file() else {}
    methods: dict[str, Method] = {}
    for name, spec in locked_unavailable(ws, env).items():
        d = derive.get(name)
        if d is not None and spec == d.spec(versions[name]) and name in found:
            del derive[name]  # the channels have no such artifact: compile it, and say so
            methods[name] = Method(
                "source",
                f"compiled from recipes/{found[name].folder.name} ({ws.lock_file.name}: the channels had no {spec})",
            )
    for name, recipe in list(found.items()):
        if name not in derive and name not in methods:
            asked = name in from_source or (ALL in from_source and name in stack_derive)
            why = "--from-source" if asked else "not derived in stack.yaml"
            methods[name] = Method("source", f"compiled from recipes/{recipe.folder.name} ({why})")
    for name, d in derive.items():
        version = versions[name]
        pin = locked.get(name)
        if pin is not None and not pin_matches(d, version, pin):
            pin = None
        found[name] = derived_recipe(ws, d, version, pin)
        why = (
            f"conda-forge's {pin.input.label()} + patches/{d.series}"
            if pin
            else f"{d.spec(version)} + patches/{d.series}"
        )
        methods[name] = Method("derived", why, d, pin)
    return methods


def components(ws: Workspace, method: Method, base: dict) -> dict:
    """A derived package's key: the template, the variant, the input's sha256 and the series."""
    assert method.derive is not None and method.pins is not None
    return {
        **base,
        "method": "derived",
        "recipe": recipes.recipe_files_digest(ws.recipes / recipes.DERIVED),
        "sources": {},
        "source_env": "",
        "input": method.pins.to_json(),
        "series": series_digest(series_files(ws, method.derive.series)),
        "deps": {},
    }


def unshipped(ws: Workspace, derive: Derive) -> list[str]:
    """`patch: path` for each file the series changes that the binary package has no copy of
    (C++, CMake: compiled into its libraries), so a derived package cannot carry the change."""
    import re

    from stackforge.spec.layout import repo_to_wheel

    found = []
    for patch in series_files(ws, derive.series):
        text = patch.read_text(encoding="utf-8", errors="replace")
        for path in dict.fromkeys(re.findall(r"^diff --git a/\S+ b/(\S+)$", text, re.M)):
            if repo_to_wheel(derive.series, path) is None:
                found.append(f"{patch.name}: {path}")
    return found


def missing_pin_reason(ws: Workspace, env: GpuEnv, method: Method, version: str) -> str:
    assert method.derive is not None
    return (
        f"{ws.lock_file.name} pins no artifact for {method.derive.spec(version)} ({env.name}): run "
        f"`stackforge lock` where the channel is reachable, or build it from source (--from-source {method.derive.package})"
    )
