"""The one way a patch series is applied: `git am --3way` over the whole series, as `clone` does.

`clone` runs it in the checkout and `patches check` in a scratch worktree, so the check's verdict
is clone's: `clean` (applied as it is, offsets included), `3way` (git fell back to the 3-way
merge), `conflict` (git am stopped here) or `not-tried` (after a conflict: git am stops at the
first failure, and so does clone). git am never reduces the context, so there is no "fuzz".
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from stackforge.core.git import HERMETIC, Git
from stackforge.sources.conflict import conflict_lines

AM = ["am", "--3way", "--committer-date-is-author-date", "--no-gpg-sign"]
# git's own messages are parsed (which patch needed the 3-way merge, what conflicted): not translated.
AM_ENV = {**HERMETIC, "LC_ALL": "C"}
APPLIED = ("clean", "3way")
_FALLBACK = "Falling back to patching base and 3-way merge..."
_MERGED = "applied by the 3-way merge (its context changed): re-export the series to refresh it"


@dataclass
class PatchResult:
    patch: str
    verdict: str  # clean | 3way | conflict | not-tried
    files: list[str] = field(default_factory=list)
    detail: str = ""
    commit: str = ""  # the commit it became (clone makes the very same one); "" if not applied

    @property
    def ok(self) -> bool:
        return self.verdict in APPLIED


@dataclass
class AmRun:
    """What `git am` did to a series: all applied (`failed` None), or stopped at `failed`."""

    series: list[Path]
    output: str  # git am's stdout, then its stderr
    failed: Path | None = None
    diagnosis: str = ""  # on failure: what `git apply --check` says of the failed patch alone
    stopped_at: str = ""  # HEAD when git am stopped: the patches before `failed`, committed

    @property
    def report(self) -> str:
        """Everything git said: what the conflict message is read from."""
        return f"{self.output}\n{self.diagnosis}"

    def verdicts(self, commits: list[str]) -> list[PatchResult]:
        """One result per patch, in order, given the commits git am made (base..stopped_at): a
        patch is applied only if it became one. `files`: those it changes; of a conflict, those
        git named."""
        stop = self.series.index(self.failed) if self.failed else len(self.series)
        # git am prints "Applying: <subject>" for each patch it starts, then its fallback notice.
        starts = re.split(r"^Applying: ", self.output, flags=re.M)[1:]
        results = []
        for i, patch in enumerate(self.series):
            if i == stop:
                files, lines = conflict_lines(patch, self.report)
                results.append(PatchResult(patch.name, "conflict", files or touched(patch), "\n".join(lines)))
            elif i >= len(commits):  # after the failed patch, or before one git am could not even read
                why = f"clone stops at {self.series[stop].name}"
                results.append(PatchResult(patch.name, "not-tried", touched(patch), why))
            elif i < len(starts) and _FALLBACK in starts[i]:
                results.append(PatchResult(patch.name, "3way", touched(patch), _MERGED, commits[i]))
            else:
                results.append(PatchResult(patch.name, "clean", touched(patch), "", commits[i]))
        return results


def apply_series(dest: Path, series: list[Path], git: Git, *, echo: bool = True) -> AmRun:
    """`git am --3way` the series onto dest's HEAD. On failure the failed patch is diagnosed (which
    hunks no longer match), git am is aborted and dest is back at the HEAD it started from."""
    if not series:
        return AmRun(series, "")
    # No --quiet: it hides the "Applying:" lines the verdicts and the conflict message are read from.
    result = git.run([*AM, *(str(p) for p in series)], dest, env=AM_ENV, check=False, echo=echo)
    run = AmRun(series, result.stdout + result.stderr)
    if result.ok:
        return run
    run.failed = failed_patch(dest, series, run.output)
    run.stopped_at = git.out(["rev-parse", "HEAD"], dest, check=False)
    # With --3way, git am silences the direct attempt's errors; re-run it alone to name the hunks.
    # read-tree, not `reset --hard`: reset moves ORIG_HEAD, which is where `am --abort` goes back to.
    git.run(["read-tree", "--reset", "-u", "HEAD"], dest, check=False, echo=False)
    diagnosis = git.run(
        ["apply", "--check", "--verbose", "--index", str(run.failed)],
        dest,
        env=AM_ENV,
        check=False,
        echo=False,
    )
    run.diagnosis = diagnosis.stderr
    abort_am(dest, git, echo=echo)
    return run


def abort_am(dest: Path, git: Git, *, echo: bool = True) -> None:
    """Roll back a `git am` stopped in dest (by a failure, or a kill), if one is."""
    rebase = git_dir(dest) / "rebase-apply"
    if rebase.exists():
        git.run(["am", "--abort"], dest, env=AM_ENV, check=False, echo=echo)
        shutil.rmtree(rebase, ignore_errors=True)


def failed_patch(dest: Path, series: list[Path], output: str) -> Path:
    """The patch `git am` stopped at: rebase-apply/next holds its 1-based number; a patch it could
    not even split is named in its error."""
    try:
        index = int((git_dir(dest) / "rebase-apply" / "next").read_text().strip())
        return series[index - 1]
    except (OSError, ValueError, IndexError):
        pass
    split = re.search(r"cannot split patches from (.+)", output)
    named = [p for p in series if split and str(p) == split.group(1).strip()]
    return named[0] if named else series[0]


def git_dir(dest: Path) -> Path:
    """dest's own git directory, without running git: `.git` itself, or where a linked worktree's
    `.git` file points (rebase-apply is kept per worktree)."""
    dot = dest / ".git"
    if dot.is_file():
        pointer = dot.read_text().strip().removeprefix("gitdir:").strip()
        return (dest / pointer).resolve()
    return dot


def touched(patch: Path) -> list[str]:
    """The files a patch changes, from its `diff --git` lines."""
    return sorted(set(re.findall(r"^diff --git a/(\S+) b/", patch.read_text(errors="replace"), re.M)))
