"""Patch series: `patches export` (commits above the pin -> patches/<name>/) and
`patches check` (apply a series to a scratch worktree as clone would and say how each patch fares).

Export uses fixed `git format-patch` options and no user git config, so the same commits give
the same files on every machine and diffs of patches/ stay small.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from stackforge.core.console import Failure, UsageError, info, warn
from stackforge.core.git import HERMETIC, Git, redact_url
from stackforge.core.workspace import Workspace
from stackforge.sources.am import PatchResult, apply_series
from stackforge.sources.checkouts import Checkouts, has_commit
from stackforge.sources.series import (
    clean_leftovers,
    describe_change,
    replace_series,
    series_digest,
    series_files,
)
from stackforge.sources.state import STATE_FILE, State, read_state, write_state
from stackforge.spec.manifest import Source, load_manifest, require_resolved

# --zero-commit and -N keep a patch's bytes independent of the commit SHA and of the series
# length; --full-index keeps index lines independent of how many objects a clone has.
FORMAT_PATCH = ["format-patch", "--zero-commit", "--no-signature", "-N", "--full-index"]


def check_series(repo: Path, base: str, patch_files: list[Path], git: Git | None = None) -> list[PatchResult]:
    """What `clone` would do with `patch_files` on `base`, patch by patch: the series is applied by
    clone's own engine (one `git am --3way`, stackforge.sources.am) in a scratch worktree of `repo`,
    whose own worktree is never touched. Like clone, it stops at the first patch that fails: the
    ones after it are `not-tried`, since clone never applies them (fix that one, then check again)."""
    git = git or Git(quiet=True)
    patch_files = [p.resolve() for p in patch_files]  # git am runs inside the scratch worktree
    scratch = Path(tempfile.mkdtemp(prefix="stackforge-check-"))
    work = scratch / "wt"
    git.run(["worktree", "add", "--detach", "--force", str(work), base], repo, echo=False)
    try:
        run = apply_series(work, patch_files, git, echo=False)
        head = run.stopped_at if run.failed else git.out(["rev-parse", "HEAD"], work)
        commits = git.out(["rev-list", "--reverse", f"{base}..{head}"], work).split() if head else []
        results = run.verdicts(commits)
    finally:
        git.run(["worktree", "remove", "--force", str(work)], repo, check=False, echo=False)
        shutil.rmtree(scratch, ignore_errors=True)
        git.run(["worktree", "prune"], repo, check=False, echo=False)
    return results


def export_series(ws: Workspace, name: str, *, dry_run: bool = False, force: bool = False) -> list[Path]:
    """Write the commits between the pin and HEAD of sources/<name> as patches/<name>/NNNN-*.patch,
    replacing the series atomically (the old one is kept under .stackforge/backups/), then rebuild
    the checkout from pin + new series so its HEAD is the canonical one.

    Refused, unless `force`, when the series on disk is not the one the checkout carries (edited
    since the checkout was made, or the checkout was left at the pin by a conflict): exporting
    would then shrink or revert the series."""
    src = require_resolved(load_manifest(ws.manifest).get(name))
    checkouts = Checkouts(ws)
    with checkouts.lock(name):
        return _export(ws, checkouts, src, dry_run=dry_run, force=force)


def _export(ws: Workspace, checkouts: Checkouts, src: Source, *, dry_run: bool, force: bool) -> list[Path]:
    name, dest = src.name, ws.checkout(src.name)
    git = Git(ws.state / "logs" / f"sources-{name}.log")
    if not (dest / ".git").exists():
        raise UsageError(f"sources/{name} is not cloned", hint=f"run `stackforge clone {name}` first")
    if checkouts.dirty(dest, git):
        raise Failure(
            f"sources/{name} has uncommitted changes", hint="commit them (they become patches) and run again"
        )
    if (
        not has_commit(dest, git, src.commit)
        or git.run(["merge-base", "--is-ancestor", src.commit, "HEAD"], dest, check=False).returncode
    ):
        raise Failure(
            f"HEAD of sources/{name} does not descend from the pin {src.short}",
            hint=f"rebase your commits onto {src.commit} first",
        )
    commits = git.out(["rev-list", "--reverse", f"{src.commit}..HEAD"], dest).split()
    if any(len(git.out(["rev-list", "--parents", "-n1", c], dest).split()) > 2 for c in commits):
        raise Failure(
            f"sources/{name}: merge commits above the pin cannot become a patch series",
            hint="rebase them linearly",
        )
    head = git.out(["rev-parse", "HEAD"], dest)
    clean_leftovers(ws, name)
    old = series_files(ws, name)
    staging = Path(tempfile.mkdtemp(prefix=f"stackforge-export-{name}-"))
    try:
        if commits:
            git.run([*FORMAT_PATCH, "-o", str(staging), f"{src.commit}..HEAD"], dest, env=HERMETIC)
        staged = sorted(staging.glob("*.patch"))
        unchanged = series_digest(staged) == series_digest(old)
        if not unchanged and not force:
            _refuse_uncarried(dest, git, name, head, old)
        dropped = sorted({p.name for p in old} - {p.name for p in staged})
        if dry_run:
            info(f"would write {len(staged)} patch(es) to patches/{name}/ from {src.short}..{head[:12]}")
            for f in dropped:
                warn(f"would drop patches/{name}/{f}")
            return []
        for f in dropped:
            warn(f"patches/{name}/{f} is not in the new series: dropped (it is in the backup)")
        if not unchanged:
            replace_series(ws, name, staged)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = series_files(ws, name)
    # Keep the user's commits reachable, then make HEAD the canonical pin + series.
    git.run(["update-ref", f"refs/stackforge/exported/{head}", head], dest)
    tree = git.out(["rev-parse", "HEAD^{tree}"], dest)
    state = read_state(dest) or State(url=redact_url(src.url), pin=src.commit)
    state.phase = "exported"  # forces the re-apply below; HEAD is the user's, saved and in the series
    state.head = head
    write_state(dest, state)
    result = checkouts._sync_locked(src, force=True, dry_run=False)
    new_tree = git.out(["rev-parse", "HEAD^{tree}"], dest)
    if new_tree != tree:
        raise Failure(
            f"re-applying the exported series to sources/{name} gave a different tree ({new_tree[:12]} != {tree[:12]})",
            hint=f"your commits are kept at refs/stackforge/exported/{head}",
        )
    info(
        f"exported {len(written)} patch(es) to patches/{name}/; sources/{name} HEAD is now {result.head[:12]}"
    )
    return written


def _refuse_uncarried(dest: Path, git: Git, name: str, head: str, old: list[Path]) -> None:
    """Fail, saying what differs, unless the checkout was built from exactly the series on disk."""
    state = read_state(dest)
    if state is None:
        problems = [f"sources/{name} has no record of the series it was built with (.git/{STATE_FILE})"]
    elif state.phase != "done":
        at = f" ({state.failed_patch} did not apply)" if state.failed_patch else ""
        problems = [f"sources/{name} does not carry the series: its last update stopped{at}"]
    else:
        problems = describe_change(state.series, series_digest(old))
        if not problems and state.head and not _is_ancestor(dest, git, state.head, head):
            problems = [f"HEAD of sources/{name} no longer contains the series it was built with"]
    if problems:
        raise Failure(
            f"patches/{name}/ is not what sources/{name} carries; exporting would rewrite its "
            f"{len(old)} patch(es) from a different base:\n  " + "\n  ".join(problems),
            hint=f"run `stackforge clone {name}` to rebuild the checkout from the series on disk, or "
            f"re-run with --force to replace the series anyway (the old one is backed up)",
        )


def _is_ancestor(dest: Path, git: Git, older: str, newer: str) -> bool:
    return git.run(["merge-base", "--is-ancestor", older, newer], dest, check=False, echo=False).ok


# --- CLI -------------------------------------------------------------------------------------
