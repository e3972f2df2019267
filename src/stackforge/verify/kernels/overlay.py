"""Run Triton with our patch series applied, without building Triton.

Our Triton patches change only Python files that the triton wheel ships verbatim
(third_party/nvidia/backend/compiler.py is triton/backends/nvidia/compiler.py in the wheel), so
the installed triton package plus the series is the patched compiler: `overlay()` copies the
installed package's Python files into a scratch folder, links everything else (libtriton.so,
ptxas, libdevice) back to the installation, and applies patches/triton/*.patch there with the
repository paths mapped to wheel paths. A process that puts the overlay first on sys.path
imports the patched Triton. When the installed triton already carries the series (our own
build), no overlay is needed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from stackforge.core.console import Failure
from stackforge.spec.layout import repo_to_wheel

_PATH_LINE = re.compile(r"^(diff --git a/|--- a/|\+\+\+ b/)(\S+)(?: b/(\S+))?$")


def installed_triton() -> tuple[Path, str]:
    """The folder of the importable `triton` package and its version."""
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        raise Failure(
            "triton is not installed in this Python environment",
            hint="pip install 'stackforge[audit]' (the stack's triton, with ptxas 12.8 inside)",
        )
    return Path(next(iter(spec.submodule_search_locations))), importlib.metadata.version("triton")


def map_patch(text: str, patch: Path) -> str:
    """Rewrite a patch's repository paths (third_party/nvidia/backend/X) to the paths the wheel
    installs under site-packages (triton/backends/nvidia/X)."""

    def wheel(path: str) -> str:
        mapped = repo_to_wheel("triton", path)
        if mapped is None:
            raise Failure(
                f"{patch.name} changes {path}, which the triton wheel does not ship",
                hint="only patches to Python files can be overlaid; audit with a triton built with the series",
            )
        return mapped

    lines = []
    for line in text.splitlines(keepends=True):
        m = _PATH_LINE.match(line.rstrip("\n"))
        if m and m[1] == "diff --git a/":
            line = f"diff --git a/{wheel(m[2])} b/{wheel(m[3] or m[2])}\n"
        elif m:
            line = f"{m[1]}{wheel(m[2])}\n"
        lines.append(line)
    return "".join(lines)


def _git_apply(root: Path, patch: Path, *extra: str) -> subprocess.CompletedProcess:
    mapped = map_patch(patch.read_text(encoding="utf-8"), patch)
    # Inside a git work tree (the workspace is one) `git apply` silently skips paths outside the
    # current folder; the ceiling keeps git from finding any repository around `root`.
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    env["GIT_CEILING_DIRECTORIES"] = str(root.resolve().parent)
    return subprocess.run(
        ["git", "apply", "--whitespace=nowarn", *extra, "-"],
        input=mapped,
        text=True,
        cwd=root,
        capture_output=True,
        env=env,
    )


def already_patched(triton_dir: Path, patches: list[Path]) -> bool:
    """True when reverting the whole series (last patch first) succeeds on a copy of the
    installed files it touches: the installed triton is a build with our series."""
    if not patches:
        return False
    with tempfile.TemporaryDirectory(prefix="stackforge-triton-check-") as scratch:
        root = Path(scratch)
        touched = set()
        for patch in patches:
            touched |= set(re.findall(r"^\+\+\+ b/(\S+)$", map_patch(patch.read_text(), patch), re.M))
        for rel in touched:
            src = triton_dir.parent / rel
            if not src.is_file():
                return False
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
        return all(_git_apply(root, p, "-R").returncode == 0 for p in reversed(patches))


def _series_key(triton_dir: Path, version: str, patches: list[Path]) -> str:
    h = hashlib.sha256(f"{triton_dir}\0{version}\0".encode())
    for patch in patches:
        h.update(patch.name.encode() + b"\0" + patch.read_bytes())
    return h.hexdigest()[:16]


def _copy_package(src: Path, dest: Path) -> None:
    """Python files are copied (they get patched); everything else is a symlink to the install."""
    for folder, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = Path(folder).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".py"):
                shutil.copy2(Path(folder) / name, dest / rel / name)
            else:
                os.symlink(Path(folder) / name, dest / rel / name)


@dataclass(frozen=True)
class TritonSetup:
    """How audit workers get the patched Triton: `path` goes first on PYTHONPATH (None: as is)."""

    path: Path | None
    version: str
    patches: tuple[str, ...]
    how: str  # "overlay" | "installed build carries the series" | "no triton patches"


def prepare(state_dir: Path, patches: list[Path]) -> TritonSetup:
    """An overlay of the installed triton with `patches` applied, cached under `state_dir` by
    (installation, version, patch bytes); reused until one of them changes."""
    triton_dir, version = installed_triton()
    names = tuple(p.name for p in patches)
    if not patches:
        return TritonSetup(None, version, names, "no triton patches")
    if already_patched(triton_dir, patches):
        return TritonSetup(None, version, names, "installed build carries the series")
    root = state_dir / f"triton-overlay-{_series_key(triton_dir, version, patches)}"
    state_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(state_dir / "triton-overlay.lock")):  # parallel audits share one overlay
        if not (root / ".complete").is_file():
            _build(root, triton_dir, version, patches)
    return TritonSetup(root, version, names, "overlay")


def _build(root: Path, triton_dir: Path, version: str, patches: list[Path]) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=".triton-overlay-", dir=root.parent))
    try:
        _copy_package(triton_dir, scratch / "triton")
        for patch in patches:
            done = _git_apply(scratch, patch)
            if done.returncode == 0 and _git_apply(scratch, patch, "-R", "--check").returncode != 0:
                done.returncode, done.stderr = 1, "git apply reported success but the change is not there"
            if done.returncode != 0:
                raise Failure(
                    f"{patch} does not apply to the installed triton {version} ({triton_dir}):\n"
                    f"{done.stderr.strip()}",
                    hint="the series targets the stack's triton (stack.yaml): install it (pip install 'stackforge[audit]') "
                    "or fix the patch (`stackforge patches check triton`)",
                )
        (scratch / ".complete").write_text("\n".join(p.name for p in patches) + "\n")
        if root.exists():  # a half-built leftover (no .complete): never trust it
            shutil.rmtree(root)
        scratch.rename(root)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
