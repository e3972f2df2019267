"""What stackforge records about a checkout: the state file in .git (`State`), and the git tree and
commit time a build or a lock takes from it (`SourceState`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stackforge.core.console import Failure
from stackforge.core.files import atomic_write
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


STATE_FILE = "stackforge.json"


@dataclass
class State:
    """What stackforge last did to a checkout (lives in .git/stackforge.json)."""

    url: str
    pin: str
    series: list[dict[str, str]] = field(default_factory=list)
    head: str = ""
    # "applying" while git am runs; "failed" after a patch did not apply; "exported" while an export
    # rebuilds the checkout from the series it just wrote
    phase: str = "done"
    failed_patch: str | None = None


def _state_path(dest: Path) -> Path:
    return dest / ".git" / STATE_FILE


def read_state(dest: Path) -> State | None:
    path = _state_path(dest)
    if not path.is_file():
        return None
    try:
        return State(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # unreadable: treated like a checkout stackforge did not make


def write_state(dest: Path, state: State) -> None:
    atomic_write(_state_path(dest), json.dumps(asdict(state), indent=2, sort_keys=True) + "\n")
