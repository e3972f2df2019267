"""Where things live in a stackforge workspace.

The workspace root is the folder holding `git-repos.txt`: `--root`, else `STACKFORGE_ROOT`,
else the nearest parent of the current directory that has one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stackforge.core.console import UsageError

MANIFEST = "git-repos.txt"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def stack_file(self) -> Path:
        """The versions of the stack (spec.stack)."""
        return self.root / "stack.yaml"

    @property
    def sources(self) -> Path:
        """Checkouts, one folder per upstream (git-ignored)."""
        return self.root / "sources"

    @property
    def patches(self) -> Path:
        return self.root / "patches"

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    @property
    def variants(self) -> Path:
        return self.root / "recipes" / "variants"

    @property
    def output(self) -> Path:
        """Built packages: the local conda channel (git-ignored)."""
        return self.root / "output"

    @property
    def logs(self) -> Path:
        return self.output / "logs"

    @property
    def state(self) -> Path:
        """Locks and scratch space of stackforge itself."""
        return self.root / ".stackforge"

    def checkout(self, name: str) -> Path:
        return self.sources / name

    def patch_dir(self, name: str) -> Path:
        return self.patches / name


def find_workspace(explicit: str | os.PathLike[str] | None = None) -> Workspace:
    """Locate the workspace root, or fail with what to do."""
    if explicit is None:
        explicit = os.environ.get("STACKFORGE_ROOT") or None
    if explicit is not None:
        root = Path(explicit).resolve()
        if not (root / MANIFEST).is_file():
            raise UsageError(f"{root}: no {MANIFEST} here", hint="point --root at a stackforge workspace")
        return Workspace(root)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / MANIFEST).is_file():
            return Workspace(folder)
    raise UsageError(
        f"no {MANIFEST} in {here} or any parent folder",
        hint="run inside a stackforge workspace, or pass --root DIR / set STACKFORGE_ROOT",
    )
