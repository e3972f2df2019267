"""Upstream as git repositories: the pinned PyPI files committed once, and a patch series applied.

vllm: the whole sdist tree (`pypi.vllm_sdist`) minus packaging artefacts; pytorch and triton: the
wheel files a series touches, at their repository paths (`spec.layout.PATH_MAP`). One commit with fixed
identity and dates, so the same files always give the same SHA; `git am --3way` then applies the
series as `stackforge clone` does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from stackforge.core.console import Failure, UsageError
from stackforge.spec.layout import PATH_MAP, repo_to_wheel
from stackforge.verify.upstream.pypi import PYPI_PROJECT, _lock, cache_dir, pinned, vllm_sdist, wheel_member

# sdist members that setuptools writes and git does not hold (vllm/_version.py is git-ignored).
_GENERATED = ("PKG-INFO", "setup.cfg", "vllm.egg-info", "vllm/_version.py")

# One commit with fixed identity and dates, so the same files always give the same SHA.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "stackforge",
    "GIT_AUTHOR_EMAIL": "stackforge@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "stackforge",
    "GIT_COMMITTER_EMAIL": "stackforge@users.noreply.github.com",
    "GIT_AUTHOR_DATE": "2025-01-01T00:00:00+00:00",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00+00:00",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

# `git am` takes author and date from each patch: only the committer is fixed (its date follows
# the author's), so the patched HEAD is the same commit everywhere.
_AM_ENV = {k: v for k, v in _GIT_ENV.items() if "AUTHOR" not in k and "DATE" not in k}
# Inherited variables that would redirect git or override identities and dates.
_SCRUBBED = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_AUTHOR_", "GIT_COMMITTER_")


_DIFF_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)$")


def touched_paths(patch_files: Iterable[Path]) -> list[str]:
    """Repo paths a series needs to exist before it applies: every `diff --git a/X` whose
    old side is not /dev/null, minus files an earlier patch of the series creates."""
    needed: list[str] = []
    created: set[str] = set()
    for patch in patch_files:
        current: str | None = None
        for line in patch.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _DIFF_HEADER.match(line)
            if m:
                current = m[1]
                if current not in created and current not in needed:
                    needed.append(current)
            elif current and (line.startswith("new file mode") or line == "--- /dev/null"):
                if current in needed and current not in created:
                    needed.remove(current)
                created.add(current)
                current = None
    return needed


# --- a git repository of upstream files --------------------------------------------------------


def _git_env(extra: dict[str, str]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    return {**inherited, **extra}


def _run_git(dest: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=dest, env=_git_env(env), capture_output=True, text=True)


def _git(dest: Path, *args: str, env: dict[str, str] = _GIT_ENV) -> str:
    done = _run_git(dest, *args, env=env)
    if done.returncode != 0:
        raise Failure(f"git {' '.join(args)} in {dest} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _default_patches(name: str) -> list[Path]:
    from stackforge.core.workspace import find_workspace

    return sorted(find_workspace().patch_dir(name).glob("*.patch"))


def upstream_files(
    name: str, patch_files: Sequence[Path] | None = None, *, version: str | None = None
) -> dict[str, bytes]:
    """repo path -> bytes for the files of `name` that the series touches (pytorch, triton)."""
    if name not in PATH_MAP:
        raise UsageError(f"no wheel path map for {name!r}", hint=f"one of: {', '.join(PATH_MAP)}")
    patches = list(patch_files) if patch_files is not None else _default_patches(name)
    project, version = PYPI_PROJECT[name], version or pinned(name)
    files: dict[str, bytes] = {}
    unshipped = []
    for repo_path in touched_paths(patches):
        wheel_path = repo_to_wheel(name, repo_path)
        if wheel_path is None:
            unshipped.append(repo_path)
            continue
        files[repo_path] = wheel_member(project, version, wheel_path)
    if unshipped:
        raise Failure(
            f"the {project} {version} wheel ships no copy of {', '.join(unshipped)} "
            f"(touched by {', '.join(p.name for p in patches)})",
            hint="such patches can be proven only on a git checkout: `stackforge clone` then `patches check`",
        )
    return files


def upstream_repo(
    name: str, dest: Path, *, patch_files: Sequence[Path] | None = None, version: str | None = None
) -> Path:
    """A git repository at `dest` holding upstream `name` at the pinned version as one commit
    (fixed identity and dates: same files, same SHA), ready for `git am --3way`.

    vllm: the whole sdist tree minus packaging artefacts (committed once in the cache, then
    cloned). pytorch/triton: the wheel files the series touches (`patch_files`, default patches/<name>/*.patch of the workspace) at their
    repository paths (`PATH_MAP`).
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"{dest} is not empty", hint="give upstream_repo a new or empty folder")
    version = version or pinned(name)  # default: the chosen stack's release (stack.yaml)
    if name == "vllm":
        # Committing 3,700 files takes seconds; clone a commit made once in the cache instead.
        base = _vllm_base_repo(version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _git(dest.parent, "clone", "--quiet", str(base), str(dest))
        _git(dest, "remote", "remove", "origin")  # self-contained: nothing points into the cache
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for repo_path, data in upstream_files(name, patch_files, version=version).items():
        target = dest / repo_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    _commit_all(
        dest,
        f"{name} {version}: files of the PyPI {PYPI_PROJECT[name]} {version} wheel, at their repository paths",
    )
    return dest


def _commit_all(repo: Path, message: str) -> None:
    """`git init` + one commit of everything in `repo` (fixed identity and dates)."""
    _git(repo, "init", "--quiet", "--initial-branch=main")
    _git(repo, "config", "core.autocrlf", "false")
    # -f: some upstream files match the upstream .gitignore (it is in the tree) yet are tracked.
    _git(repo, "add", "--all", "--force")
    _git(repo, "commit", "--quiet", "--no-verify", "-m", message)


def _vllm_base_repo(version: str) -> Path:
    """The sdist tree minus packaging artefacts as one commit, built once in the cache."""
    repo = cache_dir() / "repos" / f"vllm-{version}"
    if (repo / ".git" / "stackforge-complete").is_file():
        return repo
    with _lock(f"repo-vllm-{version}"):
        if (repo / ".git" / "stackforge-complete").is_file():
            return repo
        tree = vllm_sdist(version)
        repo.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".vllm-{version}-", dir=repo.parent) as scratch:
            work = Path(scratch) / "repo"
            shutil.copytree(tree, work, symlinks=True)
            for generated in _GENERATED:
                target = work / generated
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            _commit_all(work, f"vllm {version}: the PyPI sdist vllm-{version}.tar.gz")
            (work / ".git" / "stackforge-complete").touch()
            if repo.exists():  # a leftover of an interrupted build
                shutil.rmtree(repo)
            work.rename(repo)
    return repo


def apply_series(repo: Path, patch_files: Sequence[Path]) -> dict[str, str]:
    """`git am --3way` each patch onto `repo` in order, with no user git config. Returns
    patch name -> "clean" (applies exactly, checked first with `git apply --check`) or "3way"
    (needed git's three-way fallback); a patch that does not apply raises Failure naming it."""
    verdicts: dict[str, str] = {}
    for patch in (Path(p).resolve() for p in patch_files):
        clean = _run_git(repo, "apply", "--check", str(patch), env=_AM_ENV)
        try:
            _git(repo, "am", "--3way", "--quiet", "--committer-date-is-author-date", str(patch), env=_AM_ENV)
        except Failure as exc:
            _run_git(repo, "am", "--abort", env=_AM_ENV)
            raise Failure(
                f"{patch.name} does not apply to {repo}: {exc.message}",
                hint="rebase the patch onto the pinned upstream and export it again",
            ) from exc
        verdicts[patch.name] = "clean" if clean.returncode == 0 else "3way"
    return verdicts


def patched_repo(
    name: str, dest: Path, patch_files: Sequence[Path] | None = None, *, version: str | None = None
) -> Path:
    """`upstream_repo` plus the series (default patches/<name>/*.patch) applied with `git am`."""
    patches = list(patch_files) if patch_files is not None else _default_patches(name)
    upstream_repo(name, dest, patch_files=patches, version=version)
    apply_series(dest, patches)
    return dest


def patched_sdist_tree(version: str, patch_files: Sequence[Path]) -> Path:
    """The vLLM `version` sdist with the series applied, kept in the cache under the series'
    digest: what `audit kernels --vllm-src pypi[:VERSION]` audits when no checkout exists."""
    import hashlib

    digest = hashlib.sha256(
        b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in patch_files)
    ).hexdigest()
    dest = cache_dir() / "patched" / f"vllm-{version}-{digest[:12]}"
    if (dest / "vllm").is_dir():
        return dest
    with _lock(f"patched-{dest.name}"):
        if (dest / "vllm").is_dir():
            return dest
        scratch = Path(
            tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent if dest.parent.exists() else None)
        )
        try:
            patched_repo("vllm", scratch / "tree", list(patch_files), version=version)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / "tree", dest)  # whole or not at all: a killed run leaves no half tree
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return dest
