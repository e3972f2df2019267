"""Where things live in a stackforge workspace.

The workspace root is the folder holding `git-repos.txt`: `--root`, else `STACKFORGE_ROOT`,
else the nearest parent of the current directory that has one.

A stack is a folder of data: `stack.yaml` (versions), `git-repos.txt` (pins), `patches/` (series)
and `stackforge.lock`. The workspace root holds the default stack; another one lives in
`stacks/<name>/` and is chosen with `--stack NAME` or `STACKFORGE_STACK=NAME`, which every
command honours. Recipes, variants, checkouts, the channel and stackforge's state are shared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stackforge.core.console import UsageError

MANIFEST = "git-repos.txt"


STACKS = "stacks"


@dataclass(frozen=True)
class Workspace:
    root: Path
    stack: str | None = None  # None: the default stack, at the root

    @property
    def stack_root(self) -> Path:
        """The folder of the chosen stack's data."""
        return self.root if self.stack is None else self.root / STACKS / self.stack

    @property
    def manifest(self) -> Path:
        return self.stack_root / MANIFEST

    @property
    def stack_file(self) -> Path:
        """The versions of the stack (spec.stack)."""
        return self.stack_root / "stack.yaml"

    @property
    def lock_file(self) -> Path:
        return self.stack_root / "stackforge.lock"

    def stacks(self) -> list[str]:
        """The other stacks of this workspace, by folder name (not `stack new`'s hidden staging)."""
        folder = self.root / STACKS
        if not folder.is_dir():
            return []
        return sorted(
            p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    @property
    def sources(self) -> Path:
        """Checkouts, one folder per upstream (git-ignored)."""
        return self.root / "sources"

    @property
    def patches(self) -> Path:
        return self.stack_root / "patches"

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    @property
    def stack_recipes(self) -> Path | None:
        """A stack's own recipes/<pkg>/ (its compilers, toolchains, external projects), which
        replace the shared recipe of the same name; None for the default stack."""
        return None if self.stack is None else self.stack_root / "recipes"

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
    """Locate the workspace root, and the stack STACKFORGE_STACK names, or fail with what to do."""
    if explicit is None:
        explicit = os.environ.get("STACKFORGE_ROOT") or None
    if explicit is not None:
        root = Path(explicit).resolve()
        if not (root / MANIFEST).is_file():
            raise UsageError(f"{root}: no {MANIFEST} here", hint="point --root at a stackforge workspace")
        return _with_stack(Workspace(root))
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / MANIFEST).is_file():
            return _with_stack(Workspace(folder))
    raise UsageError(
        f"no {MANIFEST} in {here} or any parent folder",
        hint="run inside a stackforge workspace, or pass --root DIR / set STACKFORGE_ROOT",
    )


def _with_stack(ws: Workspace) -> Workspace:
    name = os.environ.get("STACKFORGE_STACK") or None
    if name is None:
        return ws
    chosen = Workspace(ws.root, name)
    if "/" in name or name.startswith(".") or not chosen.manifest.is_file():
        raise UsageError(
            f"no stack {name!r}: {chosen.manifest} does not exist",
            hint=f"stacks here: the default (at the root){''.join(', ' + s for s in ws.stacks())}; "
            "unset STACKFORGE_STACK (or drop --stack) for the default",
        )
    return chosen
