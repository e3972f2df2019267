"""Start-up of the CLI as a fresh process: `--help`, a no-op `clone-all` and a no-op `build` of the
miniature stack (every package already in output/). Prints medians; asserts nothing about time.

    python benchmarks/bench_startup.py [RUNS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stackforge.cli import main
from stackforge.demo import ministack


def timed(argv: list[str], cwd: Path, runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `stackforge ARGV` run as a fresh process."""
    walls, cpus = [], []
    for _ in range(runs):
        before = os.times()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stackforge", *argv], cwd=cwd, check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
        after = os.times()
        cpus.append(
            (after.children_user - before.children_user) + (after.children_system - before.children_system)
        )
    return statistics.median(walls), statistics.median(cpus)


def run(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="stackforge-bench-startup-") as tmp:
        root = Path(tmp) / "ws"
        mirror = ministack.create_workspace(root)
        os.environ["STACKFORGE_BUILD_ROOT"] = str(Path(tmp) / "build-root")
        for argv in (["clone-all", "--mirror", str(mirror)], ["build", "-e", "pascal"]):  # warm: all done
            assert main(["--root", str(root), *argv]) == 0
        print(f"fresh process, median of {runs} (wall / CPU seconds):")
        for label, argv in (
            ("stackforge --help", ["--help"]),
            ("no-op clone-all (5 sources)", ["clone-all", "--mirror", str(mirror)]),
            ("no-op build -e pascal (3 packages)", ["build", "-e", "pascal"]),
        ):
            wall, cpu = timed(argv, root, runs)
            print(f"  {label:<36} {wall:.3f} s  / {cpu:.3f} s CPU")


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
