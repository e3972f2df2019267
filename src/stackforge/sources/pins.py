"""`stackforge pins resolve`: read the commit of each `-` line of git-repos.txt once, and write it.

Like `nix flake lock`: a line says where its commit comes from, `ref=TAG` (the tag's commit, peeled,
by `git ls-remote`) or `pin=SOURCE:PATH` (a file of another source, read at that source's pin: its
checkout when it has the commit, else that one commit fetched blobless into
.stackforge/pins/SOURCE.git); the full SHA read there is written into the line, and the file is
committed. Chains resolve in order (llvm-project's pin file is triton's, triton's is pytorch's).
Every git command is echoed before it runs, with any password in a URL taken out; each line is
written as soon as it is read (the file replaced whole, atomically), so an interrupted run keeps
what it had read and is finished by running it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stackforge.core.console import Failure, UsageError
from stackforge.core.files import atomic_write, waiting_lock
from stackforge.core.git import Git, redact_url
from stackforge.core.workspace import Workspace
from stackforge.spec.manifest import Manifest, Source, resolve_command, set_commit

_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass
class PinResult:
    name: str
    action: str  # resolved | would-resolve | updated | would-update | up-to-date | pinned
    commit: str
    line: int
    old: str = ""
    how: str = ""  # where the commit was read


class Resolver:
    """Resolves lines of one manifest; each line's commit is read at most once per run."""

    def __init__(self, ws: Workspace, manifest: Manifest, *, quiet: bool = False) -> None:
        self.ws, self.manifest = ws, manifest
        self.git = Git(ws.state / "logs" / "pins.log", quiet=quiet)
        self.read: dict[str, tuple[str, str]] = {}  # name -> (commit, how), this run

    def commit_of(self, src: Source) -> str:
        """The pin of `src`: its line's, else the one this run read (resolving it first)."""
        if src.resolved:
            return src.commit
        return self.resolve(src)[0]

    def resolve(self, src: Source) -> tuple[str, str]:
        """(commit, how it was read) from the line's ref= or pin=."""
        if src.name not in self.read:
            if src.pin_from:
                self.read[src.name] = self._from_file(src)
            elif src.ref:
                self.read[src.name] = self._from_tag(src)
            else:
                raise UsageError(
                    f"{src.where}: {src.name} has no ref= or pin= to resolve its commit from",
                    hint="add ref=TAG or pin=SOURCE:PATH to the line (or leave its commit as it is)",
                )
        return self.read[src.name]

    def _from_tag(self, src: Source) -> tuple[str, str]:
        tag = f"refs/tags/{src.ref}"
        answer = self._network(
            src,
            ["ls-remote", src.url, tag, f"{tag}^{{}}", f"refs/heads/{src.ref}"],
            None,
            f"reading tag {src.ref}",
        )
        refs = {ref: sha for sha, _, ref in (ln.partition("\t") for ln in answer.splitlines()) if ref}
        commit = refs.get(f"{tag}^{{}}") or refs.get(tag)  # an annotated tag peeled, else a lightweight one
        url = redact_url(src.url)
        if commit is None:
            branch = f"refs/heads/{src.ref}" in refs
            raise Failure(
                f"{src.where}: {url} has no tag {src.ref}"
                + (" (it is a branch: branches move, so they are not pinned)" if branch else ""),
                hint=f"check the tag (`git ls-remote --tags {url}` lists them) and fix ref= in the line",
            )
        kind = "annotated" if f"{tag}^{{}}" in refs else "lightweight"
        return commit, f"tag {src.ref} ({kind}) of {url}"

    def _from_file(self, src: Source) -> tuple[str, str]:
        dep = self.manifest.get(src.pin_source or "")
        path = src.pin_path or ""
        at = self.commit_of(dep)
        repo = self._repo_with(dep, at)
        shown = self.git.run(["show", f"{at}:{path}"], repo, check=False)
        where = f"{dep.name}:{path} at {at[:12]}"
        if not shown.ok:
            raise Failure(
                f"{src.where}: pin={src.pin_from}: {dep.name} has no file {path} at its pin {at[:12]}",
                hint=f"check the path (`git ls-tree -r --name-only {at} | grep ...` in a clone of "
                f"{redact_url(dep.url)}) and fix pin= in the line",
            )
        value = shown.stdout.strip()
        if not _SHA.fullmatch(value.lower()):
            text = value if len(value) <= 60 else value[:57] + "..."
            raise Failure(
                f"{src.where}: {where} holds {text!r}, not a 40-hex commit SHA",
                hint=f"read the file (`git show {at}:{path}` in a clone of {redact_url(dep.url)}): when it "
                "names the commit another way, pin it by hand with a comment saying where it was read",
            )
        return value.lower(), where

    def _repo_with(self, dep: Source, commit: str) -> Path:
        """A repository holding `commit` of `dep`: its checkout, else a blobless cache of that commit
        (git show then fetches the one file it reads)."""
        checkout = self.ws.checkout(dep.name)
        if (checkout / ".git").exists() and self._has(checkout, commit):
            return checkout
        cache = self.ws.state / "pins" / f"{dep.name}.git"
        if not (cache / "HEAD").is_file():
            self.git.run(["init", "--quiet", "--bare", str(cache)])
        remote = self.git.run(["remote", "get-url", "origin"], cache, check=False, echo=False)
        if not remote.ok:
            self.git.run(["remote", "add", "origin", dep.url], cache)
        elif remote.stdout.strip() != dep.url:
            self.git.run(["remote", "set-url", "origin", dep.url], cache)
        if not self._has(cache, commit):
            fetch = ["fetch", "--depth=1", "--filter=blob:none", "origin", commit]
            self._network(dep, fetch, cache, f"fetching {commit[:12]} (for its pin files)")
        if not self._has(cache, commit):
            raise Failure(
                f"{dep.where}: {dep.name}: commit {commit} is not in {redact_url(dep.url)}",
                hint="check that line's commit: `git ls-remote URL` lists what the remote has",
            )
        return cache

    def _network(self, src: Source, args: list[str], cwd: Path | None, what: str) -> str:
        """A git command that reads src's remote; its failure is an error of src's line."""
        try:
            return self.git.network(args, cwd, what=f"{what} of {src.name}")
        except Failure as exc:
            raise Failure(
                f"{src.where}: {exc.message}",
                hint=exc.hint
                or f"check the URL and the ref in the line: `git ls-remote {redact_url(src.url)}` "
                "lists what the remote has",
            ) from None

    def _has(self, repo: Path, commit: str) -> bool:
        return self.git.run(["cat-file", "-e", f"{commit}^{{commit}}"], repo, check=False, echo=False).ok


def resolve_pins(
    ws: Workspace,
    manifest: Manifest,
    names: list[str] | None = None,
    *,
    update: bool = False,
    dry_run: bool = False,
    quiet: bool = False,
):
    """Resolve the `-` lines (or the named ones), yielding a PinResult each, writing each as read.

    A named line that is pinned already is checked against its ref=/pin= and left as it is: a
    commit that differs is an error, unless `update` (then it is rewritten)."""
    if update and not names:
        raise UsageError(
            "--update rewrites pinned commits: name the lines to re-resolve",
            hint="a ref= on a pinned line may be documentation only (e.g. a wheel's commit that is "
            "not the tag's), so no line is re-resolved unless named",
        )
    resolver = Resolver(ws, manifest, quiet=quiet)
    for src in _with_chains(manifest, manifest.select(names)):
        if src.resolved and not (names and src.name in names):
            yield PinResult(src.name, "pinned", src.commit, src.line)
            continue
        commit, how = resolver.resolve(src)
        if src.abbrev and not commit.startswith(src.abbrev):
            raise Failure(
                f"{src.where}: {how} is {commit[:12]}, which does not start with abbrev={src.abbrev}",
                hint="the tag or file names another commit than the release was built from: check "
                "both before pinning anything",
            )
        if src.resolved and commit == src.commit:
            yield PinResult(src.name, "up-to-date", commit, src.line, src.commit, how)
            continue
        if src.resolved and not update:
            raise Failure(
                f"{src.where}: {src.name} pins {src.commit[:12]}, but {how} is {commit[:12]} now",
                hint=f"if it moved on purpose (a re-tagged release), review the change and take it with "
                f"`{resolve_command(src)} --update`; else leave the line as it is (a ref= may be "
                "documentation only)",
            )
        action = "updated" if src.resolved else "resolved"
        if dry_run:
            action = f"would-{action.removesuffix('d')}"
        else:
            write_commit(ws, manifest.path, src, commit)
        yield PinResult(src.name, action, commit, src.line, src.commit, how)


def _with_chains(manifest: Manifest, chosen: list[Source]) -> list[Source]:
    """`chosen`, each preceded by the unresolved lines its pin= chain reads (written too)."""
    order: dict[str, Source] = {}
    for src in chosen:
        chain, cur = [src], src
        while cur.pin_source is not None:
            cur = manifest.get(cur.pin_source)
            if not cur.resolved:
                chain.append(cur)
        for link in reversed(chain):
            order.setdefault(link.name, link)
    return list(order.values())


def write_commit(ws: Workspace, path: Path, src: Source, commit: str) -> None:
    """Put `commit` into src's line of `path`, keeping every other byte; the file is replaced whole."""
    with waiting_lock(ws.state / "locks" / "pins.lock", f"writing {path.name}"):
        data = path.read_bytes()
        lines = data.split(b"\n")
        raw = lines[src.line - 1].decode("utf-8") if src.line <= len(lines) else ""
        fields = raw.split("#", 1)[0].split()
        if fields[:3] != [src.name, src.url, src.commit or "-"]:
            raise Failure(
                f"{src.where}: the line changed while its commit was read",
                hint="run the same command again: it reads the file afresh",
            )
        cr = "\r" if raw.endswith("\r") else ""
        lines[src.line - 1] = (set_commit(raw.removesuffix("\r"), commit) + cr).encode("utf-8")
        atomic_write(path, b"\n".join(lines), mode=path.stat().st_mode & 0o7777)
