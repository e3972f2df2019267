"""Where a binary package ships a repository's Python files.

PyTorch's and Triton's wheels and conda packages copy these files verbatim, so a patch series
written against the repository can be applied to an installed package (the kernel audit's
overlay, the upstream proofs) or to a conda-forge artifact (derived packages) by mapping paths.
Repo path prefix -> path under site-packages, most specific first (the first match wins both ways).
"""

from __future__ import annotations

PATH_MAP: dict[str, tuple[tuple[str, str], ...]] = {
    "pytorch": (("torch/", "torch/"),),
    "triton": (
        ("third_party/nvidia/backend/", "triton/backends/nvidia/"),
        ("third_party/amd/backend/", "triton/backends/amd/"),
        ("python/triton/", "triton/"),
    ),
}


def repo_to_wheel(name: str, repo_path: str) -> str | None:
    """Where the package ships repo file `repo_path`, or None if it ships no copy of it."""
    for repo_prefix, wheel_prefix in PATH_MAP.get(name, ()):
        if repo_path.startswith(repo_prefix):
            return wheel_prefix + repo_path[len(repo_prefix) :]
    return None


def wheel_to_repo(name: str, wheel_path: str) -> str | None:
    """The repository path of package member `wheel_path`, or None for build products."""
    for repo_prefix, wheel_prefix in PATH_MAP.get(name, ()):
        if wheel_path.startswith(wheel_prefix):
            return repo_prefix + wheel_path[len(wheel_prefix) :]
    return None
