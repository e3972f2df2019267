"""Benchmark the sources step: no-op `clone-all` time, and bytes fetched by a blobless vs a full
clone of a fixture upstream with a long history. Prints figures; asserts nothing.

    python benchmarks/bench_clone.py [--commits 1500] [--file-kb 32] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stackforge.cli import main as stackforge

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@e",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@e",
}


def make_upstream(path: Path, commits: int, file_kb: int) -> str:
    """A repository whose every commit rewrites a few incompressible files (via git fast-import)."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "config", "uploadpack.allowFilter", "true"], check=True)
    rng = random.Random(0)
    stream = []
    for n in range(1, commits + 1):
        stream.append(
            f"commit refs/heads/main\nmark :{n}\ncommitter bench <b@e> {1_700_000_000 + n} +0000\ndata 8\ncommit {n % 10}\n"
        )
        if n > 1:
            stream.append(f"from :{n - 1}\n")
        for f in range(3):
            blob = rng.randbytes(file_kb * 1024).hex()[: file_kb * 1024]
            stream.append(f"M 644 inline data/file{(n + f) % 20}.txt\ndata {len(blob)}\n{blob}\n")
    subprocess.run(
        ["git", "-C", str(path), "fast-import", "--quiet"], input="".join(stream).encode(), check=True
    )
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "main"], capture_output=True, text=True, check=True
    ).stdout.strip()


def pack_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / ".git" / "objects" / "pack").glob("*.pack"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--file-kb", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-clone-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        head = make_upstream(root / "upstream", args.commits, args.file_kb)
        print(
            f"fixture: {args.commits} commits, 3 x {args.file_kb} KiB rewritten per commit ({time.perf_counter() - t0:.1f}s to make)"
        )
        url = (root / "upstream").as_uri()
        for flag, label in (([], "full clone"), (["--filter=blob:none"], "blobless clone")):
            dest = root / label.replace(" ", "-")
            t0 = time.perf_counter()
            subprocess.run(["git", "clone", "-q", *flag, url, str(dest)], check=True, env=ENV)
            secs = time.perf_counter() - t0
            print(f"{label:>15}: {pack_bytes(dest) / 2**20:8.2f} MiB fetched, {secs:5.2f}s")
        ws = root / "ws"
        ws.mkdir()
        (ws / "git-repos.txt").write_text(f"bench {url} {head}\n")
        quiet = contextlib.redirect_stdout(io.StringIO())
        with quiet:
            stackforge(["--root", str(ws), "clone-all", "--json"])
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = stackforge(["--root", str(ws), "clone-all", "--json"])
            times.append(time.perf_counter() - t0)
            assert code == 0
        print(
            f"no-op clone-all (1 source, in-process, {args.runs} runs): median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
        )
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "stackforge", "--root", str(ws), "clone-all", "--json"],
            check=True,
            capture_output=True,
        )
        print(
            f"no-op clone-all as a fresh process (incl. Python start-up): {(time.perf_counter() - t0) * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
