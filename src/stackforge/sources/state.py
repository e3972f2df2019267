"""The state of a patched checkout that a build or a lock records: its git tree and commit time."""

from __future__ import annotations

from dataclasses import dataclass

from stackforge.core.console import Failure
from stackforge.core.git import Git
from stackforge.core.workspace import Workspace
from stackforge.spec.manifest import Source


@dataclass
class SourceState:
    name: str
    tree: str | None  # git tree of the patched checkout; None when it is not there or not current
    epoch: int  # commit time of the patched HEAD
    problem: str = ""


def patched_tree(ws: Workspace, src: Source) -> str:
    """The git tree hash of the patched checkout, for cache keys; fails unless up to date."""
    status = _checkouts(ws, quiet=True).status(src)
    if not status.up_to_date or status.dirty:
        state = "has uncommitted changes" if status.dirty else status.state
        raise Failure(
            f"sources/{src.name} is not the pinned, patched tree ({state})",
            hint=f"run `stackforge clone {src.name}`",
        )
    return Git(quiet=True).out(["rev-parse", "HEAD^{tree}"], ws.checkout(src.name))


def _checkouts(ws: Workspace, **kw: bool):
    from stackforge.sources.checkouts import Checkouts

    return Checkouts(ws, **kw)


def source_state(ws: Workspace, src: Source) -> SourceState:
    status = _checkouts(ws, quiet=True).status(src)
    if not status.up_to_date or status.dirty:
        what = "has uncommitted changes" if status.dirty else status.state
        return SourceState(src.name, None, 0, what)
    tree = patched_tree(ws, src)
    # through the one git runner: same environment as every other git command
    epoch = Git(quiet=True).out(["log", "-1", "--format=%ct", "HEAD"], ws.checkout(src.name))
    return SourceState(src.name, tree, int(epoch))
