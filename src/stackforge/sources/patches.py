"""Patch series: `patches export` (commits above the pin -> patches/<name>/) and
`patches check` (apply a series to a scratch worktree and say how each patch fares).

Export uses fixed `git format-patch` options and no user git config, so the same commits give
the same files on every machine and diffs of patches/ stay small.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from stackforge.core.console import Failure, UsageError, info
from stackforge.core.git import HERMETIC, Git
from stackforge.core.workspace import Workspace
from stackforge.sources.checkouts import Checkouts, _has, read_state, series_files
from stackforge.spec.manifest import load_manifest

# --zero-commit and -N keep a patch's bytes independent of the commit SHA and of the series
# length; --full-index keeps index lines independent of how many objects a clone has.
FORMAT_PATCH = ["format-patch", "--zero-commit", "--no-signature", "-N", "--full-index"]


@dataclass
class PatchResult:
    patch: str
    verdict: str  # clean | offset | fuzz | 3way | conflict
    files: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict != "conflict"


def _touched(patch: Path) -> list[str]:
    return sorted(set(re.findall(r"^diff --git a/(\S+) b/", patch.read_text(errors="replace"), re.M)))


def check_series(repo: Path, base: str, patch_files: list[Path], git: Git | None = None) -> list[PatchResult]:
    """Apply `patch_files` in order on `base` in a scratch worktree of `repo`; never touches `repo`'s
    own worktree. Each patch is tried strictly, then with one line of context (like `patch`'s fuzz),
    then as a 3-way merge; it is committed so the next patch sees it."""
    git = git or Git(quiet=True)
    patch_files = [p.resolve() for p in patch_files]  # git apply runs inside the scratch worktree
    scratch = Path(tempfile.mkdtemp(prefix="stackforge-check-"))
    work = scratch / "wt"
    results: list[PatchResult] = []
    git.run(["worktree", "add", "--detach", "--force", str(work), base], repo, echo=False)
    try:
        for patch in patch_files:
            files = _touched(patch)
            strict = git.run(["apply", "--verbose", "--index", str(patch)], work, check=False, echo=False)
            if strict.ok:
                offsets = re.findall(r"Hunk #\d+ succeeded at \d+ \(offset (-?\d+) lines?\)", strict.stderr)
                verdict = "offset" if offsets else "clean"
                detail = f"offset {', '.join(offsets)} line(s)" if offsets else ""
            elif git.run(["apply", "-C1", "--index", str(patch)], work, check=False, echo=False).ok:
                verdict, detail = "fuzz", "applies only with reduced context (-C1)"
            elif git.run(["apply", "--3way", "--index", str(patch)], work, check=False, echo=False).ok:
                verdict, detail = "3way", "applies only as a 3-way merge"
            else:
                failing = sorted(set(re.findall(r"error: patch failed: (\S+):\d+", strict.stderr)))
                failing += sorted(set(re.findall(r"error: (\S+): does not exist in index", strict.stderr)))
                git.run(["reset", "--hard", "--quiet"], work, check=False, echo=False)
                results.append(PatchResult(patch.name, "conflict", failing or files, strict.stderr.strip()))
                continue  # later patches are still tried, on a tree without this one
            msg = f"stackforge check: {patch.name}"
            git.run(
                ["commit", "--quiet", "--allow-empty", "-m", msg], work, env=HERMETIC, check=False, echo=False
            )
            results.append(PatchResult(patch.name, verdict, files, detail))
    finally:
        git.run(["worktree", "remove", "--force", str(work)], repo, check=False, echo=False)
        shutil.rmtree(scratch, ignore_errors=True)
        git.run(["worktree", "prune"], repo, check=False, echo=False)
    return results


def export_series(ws: Workspace, name: str, *, dry_run: bool = False) -> list[Path]:
    """Write the commits between the pin and HEAD of sources/<name> as patches/<name>/NNNN-*.patch,
    replacing the series (the old one is kept under .stackforge/backups/), then rebuild the
    checkout from pin + new series so its HEAD is the canonical one."""
    src = load_manifest(ws.manifest).get(name)
    dest = ws.checkout(name)
    git = Git(ws.state / "logs" / f"sources-{name}.log")
    if not (dest / ".git").exists():
        raise UsageError(f"sources/{name} is not cloned", hint=f"run `stackforge clone {name}` first")
    checkouts = Checkouts(ws)
    if checkouts.dirty(dest, git):
        raise Failure(
            f"sources/{name} has uncommitted changes", hint="commit them (they become patches) and run again"
        )
    if (
        not _has(dest, git, src.commit)
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
    if dry_run:
        info(f"would write {len(commits)} patch(es) to patches/{name}/ from {src.short}..{head[:12]}")
        return []
    staging = Path(tempfile.mkdtemp(prefix=f"stackforge-export-{name}-"))
    try:
        if commits:
            git.run([*FORMAT_PATCH, "-o", str(staging), f"{src.commit}..HEAD"], dest, env=HERMETIC)
        target = ws.patch_dir(name)
        old = series_files(ws, name)
        if old:
            backup = ws.state / "backups" / f"patches-{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            backup.mkdir(parents=True, exist_ok=True)
            for f in old:
                shutil.copy2(f, backup / f.name)
            info(f"previous series saved in {backup}")
            for f in old:
                f.unlink()
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted(staging.glob("*.patch")):
            shutil.move(str(f), target / f.name)
            written.append(target / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Keep the user's commits reachable, then make HEAD the canonical pin + series.
    git.run(["update-ref", f"refs/stackforge/exported/{head}", head], dest)
    tree = git.out(["rev-parse", "HEAD^{tree}"], dest)
    state = read_state(dest)
    if state is not None:
        state.phase = "failed"  # forces the re-apply below; HEAD is the user's, already saved
        state.head = head
        from stackforge.sources.checkouts import write_state

        write_state(dest, state)
    result = checkouts.sync(src, force=True)
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


# --- CLI -------------------------------------------------------------------------------------
