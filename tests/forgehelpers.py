"""A local channel that imitates conda-forge's split of PyTorch and Triton, and a workspace whose
stack derives pytorch and triton from it.

The channel holds `libtorch` (a shared library with real sm_XY cubins: the native part, where
the GPU code lives), `pytorch` (Python files, a native extension without GPU code, .pyc files and
an entry point that embeds the build prefix, depending on that exact libtorch), `triton` and a
`python` stand-in, each made by rattler-build's packager and indexed by py-rattler, as conda-forge's
are. The patch series are made by `git format-patch` on repositories with the files at their
repository paths.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

from cudahelpers import shared_library

from stackforge.core.git import HERMETIC

AUTHOR = {"GIT_AUTHOR_NAME": "Upstream Dev", "GIT_AUTHOR_EMAIL": "dev@example.invalid"}
REPO_ROOT = Path(__file__).resolve().parents[1]
SITE = "lib/python3.12/site-packages"
LIBTORCH_BUILD = "cuda129_generic_h0_200"
PYTORCH_BUILD = "cuda129_generic_py312_h0_200"
TRITON_BUILD = "cuda129py312h0_0"

# repo path -> (content in the artifact, content after our patch)
TORCH_FILES = {
    "torch/utils/_triton.py": (
        "def has_triton():\n    major = device_capability()[0]\n    return major >= 7\n",
        "def has_triton():\n    major = device_capability()[0]\n    return major >= 6  # Pascal runs Triton\n",
    ),
}
TRITON_FILES = {
    "third_party/nvidia/backend/compiler.py": (
        "def make_ptx(src, capability):\n    return src.replace('.acq_rel', '.acq_rel')\n",
        "def make_ptx(src, capability):\n    if capability < 70:\n        src = src.replace('.acq_rel', '')\n    return src\n",
    ),
}
WHEEL_PATH = {
    "torch/utils/_triton.py": "torch/utils/_triton.py",
    "third_party/nvidia/backend/compiler.py": "triton/backends/nvidia/compiler.py",
}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**HERMETIC, **AUTHOR, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def series(tmp: Path, name: str, files: dict[str, tuple[str, str]], dest: Path) -> str:
    """patches/<name>/0001-*.patch from a real repository; returns the base commit."""
    repo = tmp / f"upstream-{name}"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q")
    for path, (before, _after) in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(before)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "upstream release")
    base = _git(repo, "rev-parse", "HEAD")
    for path, (_before, after) in files.items():
        (repo / path).write_text(after)
    _git(
        repo, "commit", "-q", "-am", f"{name}: let compute capability 6.x through\n\nChecked by test_derived."
    )
    dest.mkdir(parents=True, exist_ok=True)
    _git(
        repo,
        "format-patch",
        "-q",
        "--zero-commit",
        "--no-signature",
        "-N",
        "--full-index",
        "-o",
        str(dest),
        "HEAD~1",
    )
    return base


def _package(channel: Path, staged: Path, name: str, version: str, build: str, depends: list[str]) -> None:
    import rattler_build

    rattler_build.assemble_package(
        name=name,
        version=version,
        target_platform="linux-64",
        build_string=build,
        output_dir=str(channel / "linux-64"),
        files_dir=str(staged),
        depends=depends,
    )


# conda-forge's entry points name the build prefix; rattler-build records it as a placeholder
_RECIPE = """package: {{name: {name}, version: "{version}"}}
source: [{{path: {staged}}}]
build:
  string: {build}
  script:
    - cp -a ./. "$PREFIX/"
    - mkdir -p "$PREFIX/bin"
    - printf '#!%s/bin/python3.12\\nimport torch.distributed.run\\n' "$PREFIX" > "$PREFIX/bin/torchrun"
    - chmod 755 "$PREFIX/bin/torchrun"
  dynamic_linking: {{binary_relocation: false}}
requirements:
  run: {depends}
"""


def _built_package(
    channel: Path, staged: Path, name: str, version: str, build: str, depends: list[str]
) -> None:
    """A package made by a rattler-build build, as conda-forge's are (prefix detection included)."""
    import rattler_build as rb

    recipe = staged.parent / f"{name}-recipe" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text(
        _RECIPE.format(name=name, version=version, staged=staged, build=build, depends=json.dumps(depends))
    )
    out = staged.parent / f"{name}-out"
    variant = rb.Stage0Recipe.from_file(recipe).render(rb.VariantConfig(), rb.RenderConfig())[0]
    result = variant.run_build(output_dir=out, channels=[], no_build_id=True, package_format="conda:1")
    shutil.copy2(result.packages[0], channel / "linux-64")


def _default(files: dict[str, tuple[str, str]]) -> dict[str, bytes]:
    return {WHEEL_PATH[repo]: before.encode() for repo, (before, _after) in files.items()}


def forge(
    tmp: Path,
    *,
    libtorch_sass: list[int],
    name: str = "forge",
    torch_files: dict[str, bytes] | None = None,
    triton_files: dict[str, bytes] | None = None,
) -> Path:
    """The channel; `libtorch_sass` is what its libtorch_cuda.so carries; `*_files` (path under
    site-packages -> bytes) are the Python files the packages ship (default: the small fixtures)."""
    from rattler.index import index_fs

    channel = tmp / name
    (channel / "noarch").mkdir(parents=True)
    stage = tmp / f"{name}-staging"
    python = stage / "python"
    (python / "bin").mkdir(parents=True)
    (python / "bin" / "python3.12").write_text("#!/bin/sh\necho stand-in\n")
    _package(channel, python, "python", "3.12.7", "h0_cpython", [])
    lib = stage / "libtorch" / "lib"
    lib.mkdir(parents=True)
    shared_library(lib, "torch_cuda", sass=libtorch_sass)
    _package(channel, lib.parent, "libtorch", "2.9.1", LIBTORCH_BUILD, [])
    torch = stage / "pytorch"
    site = torch / SITE / "torch"
    (site / "utils" / "__pycache__").mkdir(parents=True)
    (site / "__init__.py").write_text("__version__ = '2.9.1'\n")
    for wheel_path, data in (torch_files or _default(TORCH_FILES)).items():
        (torch / SITE / wheel_path).parent.mkdir(parents=True, exist_ok=True)
        (torch / SITE / wheel_path).write_bytes(data)
    (site / "utils" / "__pycache__" / "_triton.cpython-312.pyc").write_bytes(b"\xcb\r\r\n stale")
    (site / "empty.c").write_text("int torch_c(void) { return 2; }\n")
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-o",
            str(site / "_C.cpython-312-x86_64-linux-gnu.so"),
            str(site / "empty.c"),
        ],
        check=True,
    )
    (site / "empty.c").unlink()
    depends = [f"libtorch ==2.9.1 {LIBTORCH_BUILD}", "python >=3.12,<3.13.0a0", "triton 3.5.1.*"]
    _built_package(channel, torch, "pytorch", "2.9.1", PYTORCH_BUILD, depends)
    tri = stage / "triton"
    for wheel_path, data in (triton_files or _default(TRITON_FILES)).items():
        target = tri / SITE / wheel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (tri / SITE / "triton" / "__init__.py").write_text("__version__ = '3.5.1'\n")
    _package(channel, tri, "triton", "3.5.1", TRITON_BUILD, ["python >=3.12,<3.13.0a0"])
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False))
    return channel


STACK = """name: derived-test
packages:
  pytorch: "2.9.1"
  triton: "3.5.1"
derive:
  pytorch:
    build: "cuda129*"
    audit: [libtorch]
  triton:
    build: "cuda129*"
"""


def workspace(tmp: Path, channel: Path, series_from: Path | None = None) -> Path:
    """A workspace deriving pytorch and triton from `channel`; its series are made by git, or
    copied from `series_from`/patches (the real ones)."""
    root = tmp / "ws"
    (root / "recipes" / "variants").mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "recipes" / "derived", root / "recipes" / "derived")
    shutil.copytree(REPO_ROOT / "recipes" / "common", root / "recipes" / "common")
    (root / "recipes" / "variants" / "pascal.yaml").write_text(
        f'cuda_compiler_version:\n  - "12.9"\ntorch_cuda_arch_list:\n  - "6.0;6.1"\npython:\n  - "3.12"\n'
        f'channel_sources:\n  - "{channel}"\n'
    )
    torch_base = series(tmp, "pytorch", TORCH_FILES, root / "patches" / "pytorch")
    triton_base = series(tmp, "triton", TRITON_FILES, root / "patches" / "triton")
    if series_from is not None:
        for name in ("pytorch", "triton"):
            shutil.rmtree(root / "patches" / name)
            shutil.copytree(series_from / "patches" / name, root / "patches" / name)
    (root / "git-repos.txt").write_text(
        f"pytorch https://example.invalid/pytorch.git {torch_base} for=pytorch\n"
        f"triton  https://example.invalid/triton.git  {triton_base} for=triton\n"
    )
    (root / "stack.yaml").write_text(STACK)
    return root
