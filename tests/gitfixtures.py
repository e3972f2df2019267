"""Real git repositories for tests: upstreams with history, submodules and patch series."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from stackforge.sources.patches import FORMAT_PATCH

AUTHOR = {
    "GIT_AUTHOR_NAME": "Fixture Author",
    "GIT_AUTHOR_EMAIL": "fixture@example.org",
    "GIT_COMMITTER_NAME": "Fixture Author",
    "GIT_COMMITTER_EMAIL": "fixture@example.org",
}


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=repo,
        env={**os.environ, **AUTHOR, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


class Upstream:
    """A served upstream: a non-bare repo that allows partial clones (like GitHub does)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", "main")
        git(path, "config", "uploadpack.allowFilter", "true")
        git(path, "config", "uploadpack.allowAnySHA1InWant", "true")
        self._n = 0

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def commit(self, files: dict[str, str | None], message: str | None = None) -> str:
        """Write (or with None, delete) files and commit them with a fixed, increasing date."""
        for rel, text in files.items():
            target = self.path / rel
            if text is None:
                git(self.path, "rm", "-q", rel)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            git(self.path, "add", rel)
        self._n += 1
        date = f"2024-01-{self._n:02d}T12:00:00+00:00"
        git(
            self.path,
            "commit",
            "-q",
            "-m",
            message or f"commit {self._n}",
            env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date},
        )
        return self.head

    def add_submodule(self, sub: Upstream, path: str, url: str | None = None) -> str:
        git(self.path, "-c", "protocol.file.allow=always", "submodule", "add", "-q", sub.url, path)
        if url:  # record the public-looking URL while cloning from the local path
            git(self.path, "config", "--file", ".gitmodules", f"submodule.{path}.url", url)
            git(self.path, "add", ".gitmodules")
        return self.commit({}, f"add submodule {path}")

    @property
    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")


def make_patch(
    upstream: Upstream,
    base: str,
    files: dict[str, str],
    out_dir: Path,
    subject: str,
    number: int = 1,
    *,
    local: dict[str, str] | None = None,
) -> Path:
    """A real `git format-patch` file: `files` written on top of `base` by a fixed author. `local`
    files are committed first and never pushed: the patch is then made on a tree upstream never had
    (its index lines name blobs no clone holds, so git cannot 3-way merge it)."""
    scratch = out_dir.parent / f".scratch-{subject.replace(' ', '-')}"
    subprocess.run(["git", "clone", "-q", str(upstream.path), str(scratch)], check=True)
    git(scratch, "checkout", "-q", "--detach", base)
    if local:
        for rel, text in local.items():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (scratch / rel).write_text(text)
            git(scratch, "add", rel)
        git(scratch, "commit", "-q", "-m", "local base, never pushed")
    for rel, text in files.items():
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_text(text)
        git(scratch, "add", rel)
    date = "2024-06-01T00:00:00+00:00"
    git(
        scratch,
        "commit",
        "-q",
        "-m",
        f"{subject}\n\nWhy: a test needs it.",
        env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    name = git(scratch, *FORMAT_PATCH, "--start-number", str(number), "-o", str(out_dir), "HEAD~1..HEAD")
    subprocess.run(["rm", "-rf", str(scratch)], check=True)
    return Path(name.splitlines()[-1])


def write_manifest(root: Path, lines: list[str]) -> Path:
    path = root / "git-repos.txt"
    path.write_text("# test workspace\n" + "\n".join(lines) + "\n")
    return path
