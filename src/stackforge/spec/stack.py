"""The stack as data: which releases of vLLM, PyTorch and Triton the workspace builds (`stack.yaml`).

Nothing in code names a version: recipes get them as `${{ stack_<pkg> }}`, and doctor, preflight
and the upstream proofs read them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stackforge.core.console import UsageError
from stackforge.core.workspace import Workspace

# conda package name -> the Python distribution it installs (importlib.metadata, PyPI)
DISTRIBUTIONS = {"pytorch": "torch", "triton": "triton", "vllm": "vllm"}
_VERSION = re.compile(r"\d+(\.\d+)*([a-z]+\d*)?(\.post\d+)?")


@dataclass(frozen=True)
class Derive:
    """A package made from a conda-forge artifact plus our patch series, instead of from source
    (stack.yaml `derive:`): what to resolve and which native dependencies carry its GPU code."""

    package: str  # our package, e.g. pytorch
    input: str  # the channel's package it repackages (default: the same name)
    build: str  # build-string glob the resolution must match, e.g. "cuda129*"
    audit: tuple[str, ...]  # packages of the solved environment whose CUDA code must cover the GPUs
    series: str  # patches/<series>/ is applied to its Python files (default: the package name)

    def spec(self, version: str) -> str:
        return f"{self.input} =={version} {self.build}"


_DERIVE_KEYS = {"input", "build", "audit", "series"}


@dataclass(frozen=True)
class Stack:
    name: str
    versions: dict[str, str]  # conda package name -> version
    path: Path
    derive: dict[str, Derive] = field(default_factory=dict)

    def version(self, package: str) -> str:
        try:
            return self.versions[package]
        except KeyError:
            raise UsageError(
                f"{self.path}: no version for {package!r}", hint=f'add `{package}: "X.Y.Z"` under packages:'
            ) from None

    def context(self) -> dict[str, str]:
        """What recipes see: `stack_vllm`, `stack_pytorch`, `stack_triton` ..."""
        return {f"stack_{name.replace('-', '_')}": version for name, version in self.versions.items()}

    def distributions(self) -> dict[str, str]:
        """Python distribution name -> version: what an installed environment should report."""
        return {DISTRIBUTIONS.get(n, n): v for n, v in self.versions.items()}


def load_stack(ws: Workspace) -> Stack:
    path = ws.stack_file
    if not path.is_file():
        raise UsageError(
            f"{path}: no stack file", hint="a workspace names its stack in stack.yaml (see README)"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    packages = data.get("packages") if isinstance(data, dict) else None
    if not isinstance(packages, dict) or not packages:
        raise UsageError(f"{path}: needs a `packages:` mapping of package name to version")
    versions = {}
    for name, version in packages.items():
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise UsageError(
                f"{path}: {name}: version {version!r} is not a quoted version string",
                hint='e.g. vllm: "1.2.3"',
            )
        versions[str(name)] = version
    derive = _derive(path, data.get("derive"), versions)
    return Stack(name=str(data.get("name") or path.parent.name), versions=versions, path=path, derive=derive)


def _derive(path: Path, block: object, versions: dict[str, str]) -> dict[str, Derive]:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise UsageError(f"{path}: `derive:` must map package names to settings", hint="see README, Stacks")
    found = {}
    for name, entry in block.items():
        where = f"{path}: derive: {name}"
        if name not in versions:
            raise UsageError(f"{where}: not a package of the stack", hint=f"packages: {', '.join(versions)}")
        entry = entry or {}
        if not isinstance(entry, dict) or set(entry) - _DERIVE_KEYS:
            unknown = (
                ", ".join(sorted(set(entry) - _DERIVE_KEYS)) if isinstance(entry, dict) else "not a mapping"
            )
            raise UsageError(f"{where}: {unknown}", hint=f"keys: {', '.join(sorted(_DERIVE_KEYS))}")
        audit = entry.get("audit") or []
        if not isinstance(audit, list) or not all(isinstance(a, str) for a in audit):
            raise UsageError(f"{where}: audit must be a list of package names")
        build = entry.get("build")
        if not isinstance(build, str) or not build:
            raise UsageError(
                f"{where}: needs `build:`, the build-string glob to resolve", hint='e.g. build: "cuda129*"'
            )
        found[name] = Derive(
            package=name,
            input=str(entry.get("input") or name),
            build=build,
            audit=tuple(audit),
            series=str(entry.get("series") or name),
        )
    return found


def stack_context(ws: Workspace) -> dict[str, str]:
    """The recipes' `stack_*` variables; none for a workspace without a stack file (the demo)."""
    return load_stack(ws).context() if ws.stack_file.is_file() else {}


def describe(ws: Workspace | None) -> str | None:
    """'NAME: vllm X.Y.Z, pytorch X.Y.Z, triton X.Y.Z' for the workspace's chosen stack."""
    if ws is None or not ws.stack_file.is_file():
        return None
    try:
        stack = load_stack(ws)
    except UsageError as exc:
        return f"unreadable ({exc.message})"
    return f"{stack.name}: " + ", ".join(f"{n} {v}" for n, v in stack.versions.items())
