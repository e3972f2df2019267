"""Benchmark the derived path: `stackforge lock` (a solve) and `stackforge build -e pascal` of a
derived pytorch and triton, against a local channel shaped like conda-forge's (tests/forgehelpers),
with a pytorch package the size of the real one. Prints figures; asserts nothing.

    python benchmarks/bench_derive.py [--files 12000] [--mb 91] [--lib-mb 32]

The size defaults are read from the PyTorch 2.9.1 cp312 x86-64 wheel's central directory: 12,232
files and 91 MB outside torch/lib, and libtorch_python.so at 32 MB (the Python package's own
native library; libtorch_cuda.so and friends are conda-forge's separate libtorch, which the build
downloads and audits but does not repack). Here the Python files are generated text and the
library random bytes (incompressible: the worst case for repacking). Downloads are file:// reads,
so network time is not in the figures: on a user's machine add the download of the pinned
artifacts (libtorch is about 1 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the channel fixtures the tests use

from forgehelpers import TORCH_FILES, WHEEL_PATH, forge, workspace  # noqa: E402

from stackforge.cli import main  # noqa: E402


def payload(files: int, mb: float, lib_mb: float) -> dict[str, bytes]:
    rng = random.Random(0)
    per = int(mb * 1e6 / max(files, 1))
    line = b"    value = compute(tensor, dim=-1, keepdim=True)  # generated\n"
    text = (line * (per // len(line) + 1))[:per]
    found = {f"torch/gen/m{i // 500}/f{i}.py": text for i in range(files)}
    found["torch/lib/libtorch_python.so"] = rng.randbytes(int(lib_mb * 1e6))
    found.update({WHEEL_PATH[r]: before.encode() for r, (before, _after) in TORCH_FILES.items()})
    return found


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    children = os.times()
    result = fn()
    after = os.times()
    child_cpu = (after.children_user - children.children_user) + (
        after.children_system - children.children_system
    )
    return time.perf_counter() - wall, time.process_time() - cpu + child_cpu, result


def quiet(*args: str) -> int:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return main(list(args))


def run(files: int, mb: float, lib_mb: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-derive-") as scratch:
        tmp = Path(scratch)
        os.environ["STACKFORGE_BUILD_ROOT"] = str(tmp / "build-root")
        os.environ["STACKFORGE_BINARY_CACHE"] = str(tmp / "binary-cache")
        channel = forge(tmp, libtorch_sass=[60, 70], torch_files=payload(files, mb, lib_mb))
        root = workspace(tmp, channel)
        size = sum(p.stat().st_size for p in (channel / "linux-64").glob("pytorch-*.conda"))
        print(
            f"input pytorch .conda: {size / 1e6:.1f} MB ({files} generated files, {mb} MB + {lib_mb} MB library)"
        )
        for label, args in (
            ("lock (solve, pin 3 artifacts)", ["lock"]),
            (
                "build, cold cache (fetch, audit, patch, repackage pytorch + triton)",
                ["build", "-e", "pascal"],
            ),
            ("build again (all cached)", ["build", "-e", "pascal"]),
        ):
            wall, cpu, rc = timed(lambda a=args: quiet("--root", str(root), *a))
            print(f"{label:<72} {wall:7.2f} s wall {cpu:7.2f} s CPU (exit {rc})")
        (pkg,) = (root / "output" / "linux-64").glob("pytorch-*.conda")
        print(f"derived pytorch .conda: {pkg.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=12000)
    parser.add_argument("--mb", type=float, default=91)
    parser.add_argument("--lib-mb", type=float, default=32)
    args = parser.parse_args()
    run(args.files, args.mb, args.lib_mb)
