"""Each patch of a series tried on a release rebuilt from PyPI's files, with the command
`stackforge clone` applies series with (`git am --3way`, hermetic), one patch at a time.

A patch that does not apply is aborted and skipped, so every later patch is still judged (on a
tree without it: a later conflict may only follow from the skipped one). So that `--3way` can
fall back to a merge as it would on a real clone, whose history holds the blobs a patch was made
against, those blobs are taken from the releases the series may have been written for and
written into the object store only (they never enter the tree the patches are tried on).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from stackforge.core.console import Failure
from stackforge.core.git import HERMETIC, Git
from stackforge.spec.layout import repo_to_wheel
from stackforge.verify.upstream import repos
from stackforge.verify.upstream.pypi import PYPI_PROJECT, vllm_sdist, wheel_member, wheel_members

_FAILED = (
    re.compile(r"^error: patch failed: (\S+):\d+", re.M),
    re.compile(r"^error: (\S+): does not exist in index", re.M),
    re.compile(r"^error: (\S+): already exists in index", re.M),
    re.compile(r"^CONFLICT \([^)]*\): (?:Merge conflict in )?(\S+)", re.M),
)


@dataclass
class Verdict:
    patch: str
    verdict: str  # clean | 3way | conflict | unchecked
    files: list[str] = field(default_factory=list)  # conflict: the files that failed
    detail: str = ""


@dataclass
class SeriesTrial:
    name: str
    base: str  # what the series was tried on
    verdicts: list[Verdict]
    three_way: str  # which blobs a --3way fallback could use


def _wheel_tree(name: str, version: str, paths: list[str], dest: Path) -> tuple[set[str], set[str]]:
    """Write the wheel files of `paths` at their repo paths under `dest`, commit them; return the
    paths the wheel ships no copy of (C++ sources) and those it lacks (gone in this release)."""
    project = PYPI_PROJECT[name]
    members = set(wheel_members(project, version))
    unshipped, missing = set(), set()
    dest.mkdir(parents=True)
    for path in paths:
        member = repo_to_wheel(name, path)
        if member is None:
            unshipped.add(path)
        elif member not in members:
            missing.add(path)
        else:
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            (dest / path).write_bytes(wheel_member(project, version, member))
    repos._git(dest, "init", "--quiet", "--initial-branch=main")
    repos._git(dest, "add", "--all", "--force")
    # --allow-empty: a series may touch only files it creates, or only files no wheel ships
    message = f"{name} {version}: files of the PyPI {project} {version} wheel, at their repo paths"
    repos._git(dest, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message)
    return unshipped, missing


_INDEX = re.compile(
    r"^diff --git a/(\S+) b/\S+\n(?:(?!diff --git).*\n)*?index ([0-9a-f]+)\.\.([0-9a-f]+)", re.M
)


def _preimages(patches: list[Path]) -> dict[str, str]:
    """blob -> repo path of each file version the series was written against (the old side of
    every `index A..B` line, unless an earlier patch of the series made it)."""
    wanted: dict[str, str] = {}
    made: set[str] = set()
    for patch in patches:
        for path, old, new in _INDEX.findall(patch.read_text(encoding="utf-8", errors="replace")):
            if old.strip("0") and old not in made:
                wanted.setdefault(old, path)
            made.add(new)
    return wanted


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _files(name: str, version: str, paths: set[str]) -> dict[str, bytes]:
    """repo path -> bytes of the `paths` that release `version` of `name` ships."""
    if name == "vllm":
        tree = vllm_sdist(version)
        return {p: (tree / p).read_bytes() for p in paths if (tree / p).is_file()}
    project, members = PYPI_PROJECT[name], set(wheel_members(PYPI_PROJECT[name], version))
    found = {p: repo_to_wheel(name, p) for p in paths}
    return {p: wheel_member(project, version, m) for p, m in found.items() if m in members}


def _add_bases(
    repo: Path, name: str, version: str, patches: list[Path], bases: list[tuple[str, bool]]
) -> str:
    """Write into `repo`'s object store the blobs the series was written against, taken from the
    releases `bases` ((version, required): a release not required that cannot be had is passed
    over, and only read while blobs are still missing), so that `git am
    --3way` can merge as on a clone whose history holds them. Says what was found."""
    wanted = _preimages(patches)
    current = _files(name, version, set(wanted.values()))
    wanted = {b: p for b, p in wanted.items() if p not in current or _blob(current[p]) != b}
    if not wanted:
        return "not needed: this release has every file version the series was written against"
    found: set[str] = set()
    used, tried = [], []
    scratch = repo / ".git" / "stackforge-blob"
    for base, required in bases:
        if base == version or len(found) == len(wanted):
            continue
        try:
            files = _files(name, base, set(wanted.values()))
        except Failure:
            if required:
                raise
            continue  # another stack's release, not on the index or out of reach: not needed
        tried.append(base)
        new = 0
        for data in files.values():
            blob = _blob(data)
            if blob in wanted and blob not in found:
                scratch.write_bytes(data)
                repos._git(repo, "hash-object", "-w", str(scratch))
                found.add(blob)
                new += 1
        if new:
            used.append(f"{base} ({new})")
    scratch.unlink(missing_ok=True)
    project = PYPI_PROJECT[name]
    if not found:
        where = f"{project} {', '.join(tried)}" if tried else "no release at hand"
        return f"none of the {len(wanted)} file version(s) the series was written against are in {where}"
    return f"{len(found)} of {len(wanted)} file version(s) the series was written against, from {project} {', '.join(used)}"


def try_series(
    name: str, patches: list[Path], version: str, bases: list[tuple[str, bool]], scratch: Path
) -> SeriesTrial:
    """Try `patches` (series `name`: vllm, pytorch, triton) on release `version`; `bases` are the
    releases the series may have been written against (see `_add_bases`)."""
    repo, unshipped, missing = scratch / name, set(), set()
    paths = repos.touched_paths(patches)
    if name == "vllm":
        repos.upstream_repo("vllm", repo, version=version)
        base = f"the vLLM {version} sdist"
    else:
        unshipped, missing = _wheel_tree(name, version, paths, repo)
        shipped = len(paths) - len(unshipped) - len(missing)
        base = f"{shipped} file(s) of the {PYPI_PROJECT[name]} {version} wheel"
    three_way = _add_bases(repo, name, version, patches, bases)
    git = Git(quiet=True)
    verdicts = []
    for patch in (p.resolve() for p in patches):
        touched = [p for p in repos.touched_paths([patch]) if p in unshipped]
        if touched:
            detail = f"the {PYPI_PROJECT[name]} wheel ships no copy of {', '.join(touched)}: needs a clone"
            verdicts.append(Verdict(patch.name, "unchecked", touched, detail))
            continue
        verdicts.append(_apply(git, repo, patch, missing))
    return SeriesTrial(name, base, verdicts, three_way)


def _apply(git: Git, repo: Path, patch: Path, missing: set[str]) -> Verdict:
    strict = git.run(["apply", "--check", str(patch)], repo, env=HERMETIC, check=False, echo=False)
    am = ["am", "--3way", "--committer-date-is-author-date", "--no-gpg-sign", str(patch)]
    result = git.run(am, repo, env=HERMETIC, check=False, echo=False)
    if result.ok:
        return Verdict(patch.name, "clean" if strict.ok else "3way")
    text = result.stdout + result.stderr
    files = sorted({m for rx in _FAILED for m in rx.findall(text)})
    unmerged = git.out(["diff", "--name-only", "--diff-filter=U"], repo, check=False)
    files = sorted(set(files) | set(unmerged.split()))
    gone = sorted(set(files) & missing)
    git.run(["am", "--abort"], repo, env=HERMETIC, check=False, echo=False)
    shutil.rmtree(repo / ".git" / "rebase-apply", ignore_errors=True)
    if git.out(["status", "--porcelain"], repo, check=False):
        raise Failure(f"{repo}: `git am --abort` left changes behind after {patch.name}")
    lines = [ln for ln in text.splitlines() if ln.startswith(("error:", "CONFLICT"))]
    detail = f"not in this release: {', '.join(gone)}; " * bool(gone) + "; ".join(lines[:3])
    return Verdict(patch.name, "conflict", files, detail or _last(text))


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "git am failed"
