"""`stackforge lock`: stackforge.lock pins every input and output, in the spirit of flake.lock.

For each source: its URL, pinned commit, the sha256 of each patch of its series and the git tree
of the checkout after patching (a content hash of exactly what the build reads). For each GPU
environment: the binary inputs of its derived packages (stack.yaml `derive:`; the conda-forge
artifact and the native packages audited with it, each with URL and sha256, resolved once by a
solve and kept until stack.yaml asks for another or `--update-binaries`), and each package built
for the current inputs: the file name, its cache key and sha256.
JSON, keys sorted, no timestamps: the same state always writes the same bytes, and a diff of the
lock in review shows exactly what moved. `stackforge lock --check` recomputes all of it and fails,
naming each difference, when inputs or outputs no longer match the lock.
"""

from __future__ import annotations

import json
from pathlib import Path

from stackforge.build import methods
from stackforge.build import plan as plan_
from stackforge.build.inputs import DerivedPins, NoArtifact
from stackforge.build.inputs import resolve as resolve_pin
from stackforge.build.variant import variant_data
from stackforge.core.console import Failure, err, escape
from stackforge.core.files import atomic_write, sha256_file
from stackforge.core.git import redact_url
from stackforge.core.workspace import Workspace
from stackforge.sources.checkouts import series_digest, series_files
from stackforge.sources.state import source_state
from stackforge.spec.envs import GpuEnv, list_envs, load_env
from stackforge.spec.manifest import load_manifest
from stackforge.spec.stack import load_stack

LOCK_VERSION = 1


def lock_path(ws: Workspace) -> Path:
    return ws.lock_file


def _no_tree(ws: Workspace, src, problem: str | None) -> str:
    derived = set(methods.chosen(ws))
    if src.consumer in derived and not (ws.sources / src.name).exists():
        return f"not cloned: {src.consumer} is derived (stack.yaml derive:)"
    return f"unavailable: {problem}"


def binary_state(ws: Workspace, env: GpuEnv, *, resolve: bool, update: bool = False) -> dict:
    """The environment's binary pins: the lock's while they still answer stack.yaml, else resolved
    now (`resolve`), else a marker that says what is missing."""
    derive = methods.chosen(ws)
    if not derive:
        return {}
    versions = load_stack(ws).versions
    locked = methods.locked_pins(ws, env)
    python = variant_data(env).get("python")
    python = str(python[0] if isinstance(python, list) else python) if python else None
    found: dict = {}
    for name, d in derive.items():
        pin = locked.get(name)
        if pin is not None and methods.pin_matches(d, versions[name], pin) and not update:
            found[name] = pin.to_json()
        elif (
            (marker := methods.locked_unavailable(ws, env).get(name))
            and marker == d.spec(versions[name])
            and not update
        ):
            found[name] = {"unavailable": marker}
        elif resolve:
            try:
                found[name] = resolve_pin(env, d, versions[name], python).to_json()
            except NoArtifact as exc:  # the package then compiles from source, and says why
                err.print(f"[yellow]{name}[/yellow]: {escape(exc.message)}; it will be compiled from source")
                found[name] = {"unavailable": d.spec(versions[name])}
            except Failure as exc:  # no channel here: lock the rest; the derived package stays blocked
                err.print(
                    f"[yellow]not pinned[/yellow] {name} ({env.name}): {escape(exc.message)}\n  {escape(exc.hint or '')}"
                )
        else:
            found[name] = f"unresolved: {d.spec(versions[name])} (run `stackforge lock`)"
    return found


def current_state(ws: Workspace, *, resolve: bool = False, update: bool = False) -> dict:
    """Everything the lock records, computed from the workspace as it is now."""
    manifest = load_manifest(ws.manifest)
    sources = {}
    for src in manifest.sources:
        state = source_state(ws, src)
        sources[src.name] = {
            "url": redact_url(src.url),  # never a credential in a committed file
            # a '-' line: what `pins resolve` is to read (the lock never holds a commit not read)
            "pin": src.commit or f"unresolved: {src.how} (run `stackforge pins resolve {src.name}`)",
            **({"ref": src.ref} if src.ref else {}),
            "patches": series_digest(series_files(ws, src.name)),
            "patched_tree": state.tree or _no_tree(ws, src, state.problem),
        }
    packages: dict[str, dict] = {}
    binaries: dict[str, dict] = {}
    for env_name in list_envs(ws):
        env = load_env(ws, env_name)
        pins = binary_state(ws, env, resolve=resolve, update=update)
        if pins:
            binaries[env_name] = pins
        usable = {
            n: DerivedPins.from_json(p, n) for n, p in pins.items() if isinstance(p, dict) and "input" in p
        }
        plan = plan_.make_plan(ws, env, pins=usable)
        built = {
            i.name: {
                "file": f"{i.subdir}/{i.file_name}",
                "key": i.key,
                "sha256": sha256_file(ws.output / i.subdir / i.file_name),
            }
            for i in plan.items
            if i.status == "cached"
        }
        if built:
            packages[env_name] = built
    state = {"version": LOCK_VERSION, "tools": plan_.toolchain(), "sources": sources, "packages": packages}
    if binaries:
        state["binaries"] = binaries
    return state


def render(state: dict) -> str:
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


def write_lock(ws: Workspace, *, update_binaries: bool = False) -> tuple[Path, dict]:
    state = current_state(ws, resolve=True, update=update_binaries)
    unavailable = [n for n, s in state["sources"].items() if s["patched_tree"].startswith("unavailable")]
    if unavailable:
        raise Failure(
            f"cannot lock: checkouts not at pin + series: {', '.join(unavailable)}",
            hint="run `stackforge clone-all` first",
        )
    path = lock_path(ws)
    atomic_write(path, render(state))
    return path, state


def differences(locked: object, current: object, where: str = "") -> list[str]:
    """Human-readable differences between two lock states, one line each."""
    if isinstance(locked, dict) and isinstance(current, dict):
        lines: list[str] = []
        for key in sorted(set(locked) | set(current)):
            here = f"{where}.{key}" if where else str(key)
            if key not in current:
                gone = (
                    "not built for the current inputs"
                    if here.startswith("packages.")
                    else "not in the workspace"
                )
                lines.append(f"{here}: in the lock, {gone}")
            elif key not in locked:
                lines.append(f"{here}: not in the lock")
            else:
                lines.extend(differences(locked[key], current[key], here))
        return lines
    if isinstance(locked, list) and isinstance(current, list) and where.endswith(".patches"):
        return _patch_differences(locked, current, where)
    if locked != current:
        return [f"{where}: lock has {_short(locked)}, now {_short(current)}"]
    return []


def _patch_differences(locked: list, current: list, where: str) -> list[str]:
    old = {p["file"]: p["sha256"] for p in locked}
    new = {p["file"]: p["sha256"] for p in current}
    lines = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            lines.append(f"{where}: {name} removed")
        elif name not in old:
            lines.append(f"{where}: {name} added")
        elif old[name] != new[name]:
            lines.append(f"{where}: {name} changed (sha256 {old[name][:12]} -> {new[name][:12]})")
    if not lines and [p["file"] for p in locked] != [p["file"] for p in current]:
        lines.append(f"{where}: series order changed")
    return lines


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 72 else text[:69] + "..."


def check_lock(ws: Workspace) -> list[str]:
    path = lock_path(ws)
    if not path.is_file():
        raise Failure(f"{path} does not exist", hint="write it with `stackforge lock`")
    try:
        locked = json.loads(path.read_text())
    except ValueError as exc:
        raise Failure(f"{path}: not valid JSON ({exc})", hint="rewrite it with `stackforge lock`") from exc
    return differences(locked, current_state(ws))
