"""An interpreter with another stack's Triton, for the kernel audit of that stack's vLLM.

The audit compiles with the Triton it imports (its compiler, its bundled ptxas, the series
overlaid on it), so auditing vLLM 0.33's kernels needs the Triton that stack pins, while the
test environment carries the first stack's. `stack_triton_python` makes a virtual environment
in the download cache holding only that Triton wheel from PyPI; a `.pth` file puts this
interpreter's site-packages and `src/` after it on the path, so stackforge and its libraries
come from here and Triton from there. Made once, under a lock, reused by later runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from filelock import FileLock

from stackforge.verify.upstream import pypi

ROOT = Path(__file__).resolve().parents[1]


def _version(python: Path) -> str | None:
    probe = subprocess.run(
        [str(python), "-c", "import triton, stackforge; print(triton.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def stack_triton_python(version: str) -> Path:
    """A Python that imports triton `version` and this checkout's stackforge; skips without network."""
    import triton

    if triton.__version__ == version:
        return Path(sys.executable)
    home = pypi.cache_dir() / "venvs" / f"triton-{version}-py{sys.version_info[0]}{sys.version_info[1]}"
    python = home / "bin" / "python"
    home.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home) + ".lock"):
        if python.exists() and _version(python) == version:
            return python
        scratch = home.with_name(home.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        venv.create(scratch, with_pip=True)
        pip = subprocess.run(
            [
                str(scratch / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                f"triton=={version}",
            ],
            capture_output=True,
            text=True,
        )
        if pip.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            pytest.skip(f"could not install triton=={version} from PyPI: {pip.stderr.strip()[-300:]}")
        site = subprocess.run(
            [str(scratch / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
        # .pth lines go after the venv's own site-packages: its triton wins, the rest comes from here
        Path(site, "zz-stackforge-test.pth").write_text("\n".join([str(ROOT / "src"), *sorted(ours)]) + "\n")
        # venv writes absolute paths into bin/ scripts; the interpreter itself only needs pyvenv.cfg
        shutil.rmtree(home, ignore_errors=True)
        os.replace(scratch, home)
        # pyvenv.cfg and bin/python point at the base interpreter, so the move is harmless
        found = _version(python)
        if found != version:
            pytest.fail(f"{python}: imports triton {found}, expected {version}")
    return python
