"""Stand-ins the runtime tests share: nvidia-smi answers as executables, and an output/ channel of
tiny real conda packages (rattler-build's packager, indexed by py-rattler)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from conftest import REPO_ROOT

from stackforge.core.workspace import Workspace
from stackforge.run import preflight
from stackforge.spec.envs import load_env
from stackforge.spec.stack import load_stack

WS = Workspace(REPO_ROOT)

# nvidia-smi's answer to `--query-gpu=name,compute_cap,driver_version --format=csv,noheader`
# (name and compute capability as NVIDIA lists them; an R580 driver).
SMI = {
    "p40": ("Tesla P40, 6.1, 580.95.05\n", 0),
    "p100": ("Tesla P100-PCIE-16GB, 6.0, 580.95.05\n", 0),
    "v100": ("Tesla V100-SXM2-16GB, 7.0, 580.95.05\n", 0),
    "a100": ("NVIDIA A100-SXM4-40GB, 8.0, 580.95.05\n", 0),
    "p40+v100": ("Tesla P40, 6.1, 580.95.05\nTesla V100-PCIE-32GB, 7.0, 580.95.05\n", 0),
    "none": ("No devices were found\n", 6),
    "nodriver": (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n",
        9,
    ),
}
QUERY = "--query-gpu=name,compute_cap,driver_version,memory.total"


def fake_smi(folder: Path, card: str) -> Path:
    """An executable that answers like nvidia-smi on a machine with `card` (and refuses other queries)."""
    text, code = SMI[card]
    path = folder / f"nvidia-smi-{card}"
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" != "{QUERY}" ]; then echo "unexpected query: $*" >&2; exit 2; fi\n'
        f"cat <<'EOF'\n{text}EOF\nexit {code}\n"
    )
    path.chmod(0o755)
    return path


PINS = load_stack(WS).versions


def make_channel(
    output: Path, envs: tuple[str, ...] = ("pascal", "volta"), versions: dict | None = None
) -> None:
    """output/ as `build-cuda` leaves it: our three packages per environment, indexed."""
    import rattler_build
    from rattler.index import index_fs

    files = output.parent / ".pkgfiles"
    files.mkdir(parents=True, exist_ok=True)
    (files / "README.stand-in").write_text("tiny stand-in package for the runtime tests\n")
    (output / "noarch").mkdir(parents=True, exist_ok=True)
    for env in envs:
        tag = preflight.build_tag(load_env(WS, env))
        for name, version in (versions or PINS).items():
            rattler_build.assemble_package(
                name=name,
                version=version,
                target_platform="linux-64",
                build_string=f"{tag}h0123abcd_0",
                output_dir=str(output / "linux-64"),
                files_dir=str(files),
            )
    asyncio.run(index_fs(output, write_zst=False, write_shards=False))


def make_workspace(root: Path, *, built: tuple[str, ...] = ("pascal", "volta")) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    (root / "git-repos.txt").write_text("")
    shutil.copy(REPO_ROOT / "stack.yaml", root / "stack.yaml")
    shutil.copytree(REPO_ROOT / "recipes" / "variants", root / "recipes" / "variants")
    if built:
        make_channel(root / "output", built)
    return Workspace(root)
