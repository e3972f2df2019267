"""Checkouts: clone each pinned upstream into sources/<name> and apply patches/<name>/ on top.

A checkout is brought to exactly `pin + series` and nothing a user made is lost: uncommitted
edits or commits above the series stop the update (`--force` first saves them under
refs/stackforge/backup/...). Fresh clones are made in a `.partial` folder and renamed into
place, and `git am` is aborted on failure, so an interrupted or failed run is repaired by
running it again. What was applied is recorded in `.git/stackforge.json`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackforge.core.console import Failure, err, escape, info
from stackforge.core.files import waiting_lock
from stackforge.core.git import HERMETIC, Git, redact_url
from stackforge.core.workspace import Workspace
from stackforge.sources.am import abort_am, apply_series, touched
from stackforge.sources.conflict import conflict_message
from stackforge.sources.series import refuse_orphans, series_digest, series_files
from stackforge.sources.state import State, patched_tree, read_state, write_state
from stackforge.sources.untracked import colliding_untracked, save_untracked
from stackforge.sources.vendor import vendor_crates
from stackforge.spec.manifest import Manifest, Source, require_resolved, resolve_command
from stackforge.spec.stack import load_stack

__all__ = [
    "patched_tree",
    "series_digest",
    "series_files",
]  # re-exported: callers outside read the series here

BACKUP_PREFIX = "refs/stackforge/backup"


# --- recorded state --------------------------------------------------------------------------


# --- results ---------------------------------------------------------------------------------


@dataclass
class SyncResult:
    name: str
    action: str  # cloned | updated | up-to-date | would-clone | would-update | kept | skipped | unresolved
    head: str = ""
    detail: str = ""
    backup: list[str] = field(default_factory=list)


@dataclass
class SourceStatus:
    name: str
    pin: str
    head: str | None
    patches: int
    applied: int
    dirty: bool
    # up-to-date | not-cloned | pin-changed | patches-changed | extra-commits | failed | unknown | unresolved
    state: str

    @property
    def up_to_date(self) -> bool:
        return self.state == "up-to-date"


# --- the engine ------------------------------------------------------------------------------


class Checkouts:
    def __init__(self, ws: Workspace, *, mirror: str | None = None, quiet: bool = False) -> None:
        self.ws = ws
        self.mirror = Path(mirror).resolve() if mirror else None
        self.quiet = quiet

    def git(self, name: str) -> Git:
        return Git(self.ws.state / "logs" / f"sources-{name}.log", quiet=self.quiet)

    def url(self, src: Source) -> str:
        if self.mirror is None:
            return src.url
        repo = self.mirror / f"{src.name}.git"
        if not repo.is_dir():
            raise Failure(
                f"mirror {self.mirror} has no {src.name}.git (git-repos.txt:{src.line})",
                hint=f"create it with: git clone --mirror {src.url} {repo}",
            )
        return repo.as_uri()

    # -- inspection --

    def dirty(self, dest: Path, git: Git) -> bool:
        """Tracked files or submodules with changes; untracked files are never touched, so don't count."""
        return bool(git.out(["status", "--porcelain", "--untracked-files=no"], dest))

    def status(self, src: Source) -> SourceStatus:
        dest = self.ws.checkout(src.name)
        series = series_files(self.ws, src.name)
        cloned = (dest / ".git").exists()
        if not src.resolved or not cloned:
            state = "unresolved" if not src.resolved else "not-cloned"
            head = Git(quiet=True).out(["rev-parse", "HEAD"], dest, check=False) if cloned else None
            return SourceStatus(src.name, src.commit or "-", head or None, len(series), 0, False, state)
        git = Git(quiet=True)
        head = git.out(["rev-parse", "HEAD"], dest)
        dirty = self.dirty(dest, git)
        state = read_state(dest)
        applied = len(state.series) if state and state.phase == "done" else 0
        return SourceStatus(
            src.name, src.commit, head, len(series), applied, dirty, _verdict(src, state, head, series)
        )

    # -- sync --

    def lock(self, name: str):
        """The per-source lock every command that changes sources/<name> or patches/<name> holds."""
        return waiting_lock(self.ws.state / "locks" / f"{name}.lock", f"working on sources/{name}")

    def sync(self, src: Source, *, force: bool = False, dry_run: bool = False) -> SyncResult:
        require_resolved(src)
        self.ws.sources.mkdir(parents=True, exist_ok=True)
        with self.lock(src.name):
            result = self._sync_locked(src, force=force, dry_run=dry_run)
            if src.cargo and result.action in ("cloned", "updated", "up-to-date"):
                note = vendor_crates(self.ws, src, quiet=self.quiet, dry_run=dry_run)
                result.detail += f"; {note}" if note else ""
            return result

    def _sync_locked(self, src: Source, *, force: bool, dry_run: bool) -> SyncResult:
        dest = self.ws.checkout(src.name)
        git = self.git(src.name)
        series = series_files(self.ws, src.name)
        for partial in self.ws.sources.glob(f".{src.name}.partial-*"):
            if not dry_run:  # left by an interrupted clone: never a checkout anyone worked in
                info(f"{src.name}: removing {partial.name} left by an interrupted run")
                shutil.rmtree(partial, ignore_errors=True)
        if not dest.exists():
            if dry_run:
                return SyncResult(
                    src.name, "would-clone", detail=f"{src.url} @ {src.short} + {len(series)} patch(es)"
                )
            self._clone(src, dest, git)
            head = self._apply(src, dest, git, series)
            return SyncResult(src.name, "cloned", head, f"{src.short} + {len(series)} patch(es)")
        if not (dest / ".git").exists():
            raise Failure(
                f"{dest} exists but is not a git checkout",
                hint=f"move it away (it may hold your work) and run `stackforge clone {src.name}` again",
            )
        state = read_state(dest)
        if state and state.phase == "applying":
            abort_am(dest, git)  # an interrupted `git am` of ours: roll it back, then redo
            state.head, state.phase = git.out(["rev-parse", "HEAD"], dest), "failed"
            write_state(dest, state)
        head = git.out(["rev-parse", "HEAD"], dest)
        dirty = self.dirty(dest, git)
        verdict = _verdict(src, state, head, series)
        if verdict == "up-to-date":
            note = " (uncommitted changes present, left alone)" if dirty else ""
            return SyncResult(src.name, "up-to-date", head, f"{src.short} + {len(series)} patch(es){note}")
        expected = state.head if state else src.commit
        # after an export the series on disk holds the user's commits (kept under
        # refs/stackforge/exported/ too): the checkout is rebuilt from it, whatever HEAD is now
        extra = head != expected and not (state and state.phase == "exported")
        if verdict == "extra-commits" and not force:
            n = (
                git.out(["rev-list", "--count", f"{src.commit}..HEAD"], dest)
                if has_commit(dest, git, src.commit)
                else "?"
            )
            return SyncResult(
                src.name,
                "kept",
                head,
                f"HEAD has commits above the series ({n} above the pin): "
                f"keep them with `stackforge patches export {src.name}`",
            )
        if (dirty or extra) and not force:
            what = " and ".join(
                w
                for w, on in (
                    ("uncommitted changes", dirty),
                    ("commits that are not the patch series", extra),
                )
                if on
            )
            raise Failure(
                f"sources/{src.name} has {what}; it needs updating ({verdict}) but was left alone",
                hint=f"commit your work and run `stackforge patches export {src.name}` to keep it as patches, "
                f"or re-run with --force to save it under {BACKUP_PREFIX}/... and update",
            )
        if dry_run:
            return SyncResult(src.name, "would-update", head, verdict)
        backups = self._backup(dest, git, dirty=dirty, extra=extra) if force else []
        self._save_untracked(src, dest, git, series)
        self._checkout_pin(src, dest, git)
        new_head = self._apply(src, dest, git, series)
        return SyncResult(src.name, "updated", new_head, verdict, backups)

    def _clone(self, src: Source, dest: Path, git: Git) -> None:
        tmp = dest.with_name(f".{src.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            # Blobless: full history of commits and trees, file contents fetched on checkout only.
            git.network(
                ["clone", "--filter=blob:none", "--no-checkout", "--progress", self.url(src), str(tmp)],
                what=f"cloning {src.name}",
                cleanup=tmp,
            )
            self._checkout_pin(src, tmp, git)
            write_state(tmp, State(url=redact_url(src.url), pin=src.commit, head=src.commit, phase="failed"))
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _save_untracked(self, src: Source, dest: Path, git: Git, series: list[Path]) -> None:
        """Move aside untracked files the pin's tree or the series would overwrite (never lose them)."""
        if not has_commit(dest, git, src.commit):
            return  # fetched by _checkout_pin; then only the series' files can collide
        files = {f for p in series for f in touched(p)}
        save_untracked(dest, colliding_untracked(dest, git, src.commit, files), self.ws.state / "backups")

    def _checkout_pin(self, src: Source, dest: Path, git: Git) -> None:
        url = self.url(src)
        if git.out(["remote", "get-url", "origin"], dest) != url:
            git.run(["remote", "set-url", "origin", url], dest)
        if not has_commit(dest, git, src.commit):
            try:
                git.network(
                    ["fetch", "--filter=blob:none", "--progress", "origin", src.commit],
                    dest,
                    what=f"fetching {src.short}",
                )
            except Failure:
                if not git.run(["ls-remote", "--heads", "origin"], dest, check=False, echo=False).ok:
                    raise  # the remote itself is unreachable: that is the error to report
        if not has_commit(dest, git, src.commit):
            raise Failure(
                f"{src.name}: commit {src.commit} is not in {redact_url(url)} (git-repos.txt:{src.line})",
                hint="check the SHA: `git ls-remote URL` lists what the remote has",
            )
        git.run(["checkout", "--quiet", "--detach", "--force", src.commit], dest)
        head = git.out(["rev-parse", "HEAD"], dest)
        if head != src.commit:
            raise Failure(f"{src.name}: checked out {head}, expected the pin {src.commit}")
        if src.submodules and (dest / ".gitmodules").is_file():
            self._submodules(dest, git, src.name)

    def _submodules(self, repo: Path, git: Git, what: str) -> None:
        """Submodules at the commits the superproject records, recursively; with a mirror,
        each submodule URL is redirected to <mirror>/<basename>.git."""
        git.run(["submodule", "init"], repo)
        if self.mirror is not None:
            for line in git.out(
                ["config", "--get-regexp", r"^submodule\..*\.url$"], repo, check=False
            ).splitlines():
                key, url = line.split(" ", 1)
                local = self.mirror / (url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") + ".git")
                if local.is_dir():
                    git.run(["config", key, local.as_uri()], repo)
        allow = ["-c", "protocol.file.allow=always"] if self.mirror is not None else []
        git.network(
            [*allow, "submodule", "update", "--init", "--filter=blob:none", "--force", "--progress"],
            repo,
            what=f"submodules of {what}",
        )
        listing = git.out(["config", "--file", ".gitmodules", "--get-regexp", r"\.path$"], repo, check=False)
        for line in listing.splitlines():
            sub = repo / line.split(" ", 1)[1]
            if (sub / ".gitmodules").is_file():
                self._submodules(sub, git, f"{what}/{line.split(' ', 1)[1]}")

    def _apply(self, src: Source, dest: Path, git: Git, series: list[Path]) -> str:
        digest = series_digest(series)
        state = State(url=redact_url(src.url), pin=src.commit, series=digest, head="", phase="applying")
        write_state(dest, state)
        run = apply_series(dest, series, git)
        if run.failed is not None:
            state.series, state.phase, state.failed_patch = [], "failed", run.failed.name
            state.head = git.out(["rev-parse", "HEAD"], dest)
            write_state(dest, state)
            raise Failure(
                conflict_message(src, run.failed, series, run.report),
                hint=(
                    f"see every patch's state with `stackforge patches check {src.name}`; fix {run.failed}, "
                    f"then run `stackforge clone {src.name}` again (or apply the series by hand in "
                    f"sources/{src.name} with `git am --3way`, resolve, `git am --continue`, and run "
                    f"`stackforge patches export --force {src.name}`)"
                ),
            )
        state.head, state.phase = git.out(["rev-parse", "HEAD"], dest), "done"
        write_state(dest, state)
        return state.head

    def _backup(self, dest: Path, git: Git, *, dirty: bool, extra: bool) -> list[str]:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        refs = []
        if extra:
            ref = f"{BACKUP_PREFIX}/{stamp}/head"
            git.run(["update-ref", ref, "HEAD"], dest)
            refs.append(ref)
        if dirty:
            # `stash create` makes a commit of the index and worktree without touching either.
            stash = git.out(["stash", "create", "stackforge backup before update"], dest, env=HERMETIC)
            if stash:
                ref = f"{BACKUP_PREFIX}/{stamp}/worktree"
                git.run(["update-ref", ref, stash], dest)
                refs.append(ref)
        for ref in refs:
            err.print(
                f"[yellow]saved[/yellow] {escape(f'{dest.name}: {ref}  (see it: git -C {dest} show --stat {ref})')}"
            )
        return refs


def has_commit(dest: Path, git: Git, commit: str) -> bool:
    return git.run(["cat-file", "-e", f"{commit}^{{commit}}"], dest, check=False, echo=False).ok


def _verdict(src: Source, state: State | None, head: str, series: list[Path]) -> str:
    if state is None:
        return "up-to-date" if head == src.commit and not series else "unknown"
    if state.phase in ("failed", "exported"):
        return "failed"
    if state.pin != src.commit:
        return "pin-changed"
    if state.series != series_digest(series):
        return "patches-changed"
    if head != state.head:
        return "extra-commits"
    return "up-to-date"


def sync(
    ws: Workspace, manifest: Manifest, names: list[str] | None = None, **options: Any
) -> list[SyncResult]:
    """Bring the named checkouts (default: all) to pin + series; stops at the first failure.
    `options` are sync_each's (mirror, force, dry_run, quiet)."""
    return list(sync_each(ws, manifest, names, **options))


def sync_each(
    ws: Workspace,
    manifest: Manifest,
    names: list[str] | None = None,
    *,
    mirror: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    quiet: bool = False,
) -> Iterator[SyncResult]:
    """`sync`, one result at a time (so a caller can report the ones done before a failure).
    Without names, a source read only by a derived package (stack.yaml `derive:`: built from a
    conda-forge artifact, not from this checkout) is not cloned; naming it clones it."""
    refuse_orphans(ws, manifest)
    checkouts = Checkouts(ws, mirror=mirror, quiet=quiet)
    derived = set(load_stack(ws).derive) if ws.stack_file.is_file() and not names else set()
    for src in manifest.select(names) if names else ():
        require_resolved(src)  # a named source: refused before anything is done
    for src in manifest.select(names):
        if src.consumer in derived and not (ws.sources / src.name).exists():
            yield SyncResult(
                src.name,
                "skipped",
                detail=f"{src.consumer} is derived from a conda-forge build (stack.yaml derive:); "
                f"`stackforge clone {src.name}` fetches it for --from-source",
            )
            continue
        if not src.resolved:
            yield SyncResult(
                src.name,
                "unresolved",
                detail=f"{src.where}: no commit yet (from {src.how}): run `{resolve_command(src)}` "
                "where it is reachable, and commit the file",
            )
            continue
        yield checkouts.sync(src, force=force, dry_run=dry_run)


# --- CLI -------------------------------------------------------------------------------------
