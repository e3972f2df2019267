"""The miniature stack: three tiny packages shaped like triton, pytorch and vllm.

Real C code compiled with CMake and Ninja by the system compiler, in real git repositories with
real patch series, so the whole pipeline (git-repos.txt -> clone + `git am` -> rattler-build ->
channel -> lock) runs on any machine in seconds, offline. `stackforge demo` and the tests use it.

  mini-triton  <- sources/minitriton + sources/minillvm  (like triton built against LLVM)
  mini-torch   <- sources/minitorch                       (a shared library with a C API)
  mini-vllm    <- sources/minivllm + sources/minicutlass  (links libminitorch; needs mini-triton
                                                           at run time only, like vllm)

Everything is a real file under `stack/`: `upstream/<name>/<NN>/` holds the files of each upstream
commit (messages in `upstreams.yaml`), `workspace/` the patch series, recipes and variants that a
demo workspace starts with (its recipes/common/preamble.sh is the real stack's). Upstream
repositories are made with fixed identities and dates, so their commits, and the patched HEADs,
have the same SHA on every machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from stackforge.core.console import Failure

STACK = Path(__file__).parent / "stack"
IDENTITY = {
    "GIT_AUTHOR_NAME": "Mini Upstream",
    "GIT_AUTHOR_EMAIL": "upstream@example.invalid",
    "GIT_COMMITTER_NAME": "Mini Upstream",
    "GIT_COMMITTER_EMAIL": "upstream@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
URL_BASE = "https://example.invalid/stackforge-demo"


@dataclass(frozen=True)
class Upstream:
    name: str
    consumer: str
    commits: tuple[str, ...]  # messages; files in stack/upstream/<name>/<NN>/
    keys: str = ""  # git-repos.txt keys beyond for=


def upstreams() -> list[Upstream]:
    data = yaml.safe_load((STACK / "upstreams.yaml").read_text())
    return [Upstream(u["name"], u["consumer"], tuple(u["commits"]), u.get("keys", "")) for u in data]


def _git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, **IDENTITY}
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def make_upstream(mirror: Path, up: Upstream) -> str:
    """Create mirror/<name>.git with the upstream's history; return the pinned (HEAD) commit."""
    repo = mirror / f"{up.name}.git"
    with tempfile.TemporaryDirectory(prefix=f"stackforge-{up.name}-") as tmp:
        work = Path(tmp)
        _git(work, "init", "-q", "-b", "main")
        for n, message in enumerate(up.commits, start=1):
            shutil.copytree(STACK / "upstream" / up.name / f"{n:02d}", work, dirs_exist_ok=True)
            _git(work, "add", "-A")
            _git(work, "commit", "-q", "-m", message, date=f"2025-06-{n:02d}T12:00:00+00:00")
        head = _git(work, "rev-parse", "HEAD")
        shutil.rmtree(repo, ignore_errors=True)
        mirror.mkdir(parents=True, exist_ok=True)
        _git(mirror, "clone", "-q", "--bare", str(work), str(repo))
    _git(repo, "config", "uploadpack.allowFilter", "true")
    _git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    return head


def manifest_text(pins: dict[str, str]) -> str:
    lines = [
        "# The miniature stack (stackforge demo): <name> <git-url> <commit> [key=value ...]",
        "# The URLs are not reachable: sources come from the mirror (--mirror DIR / STACKFORGE_MIRROR).",
    ]
    for up in upstreams():
        lines.append(
            f"{up.name:<12} {URL_BASE}/{up.name}.git {pins[up.name]} for={up.consumer} {up.keys}".rstrip()
        )
    return "\n".join(lines) + "\n"


def create_workspace(root: Path, mirror: Path | None = None) -> Path:
    """Write a workspace (git-repos.txt, patches/, recipes/) and its upstream mirror; return the
    mirror folder. Existing files are left as they are, so a re-run changes nothing."""
    mirror = mirror or root / "mirror"
    pins: dict[str, str] = {}
    for up in upstreams():
        repo = mirror / f"{up.name}.git"
        pins[up.name] = (
            _git(repo, "rev-parse", "refs/heads/main")
            if (repo / "HEAD").is_file()
            else make_upstream(mirror, up)
        )
    manifest = root / "git-repos.txt"
    if not manifest.is_file():
        root.mkdir(parents=True, exist_ok=True)
        manifest.write_text(manifest_text(pins))
    template = STACK / "workspace"
    for path in sorted(template.rglob("*")):
        target = root / path.relative_to(template)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)  # follows the preamble's link: the demo gets a real file
    return mirror
