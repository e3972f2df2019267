"""Benchmark the build step: a full build of the miniature stack vs a no-op `build` (the ratio is
what caching buys), and the time to plan the real stack (render the four real recipes with
rattler-build, check each source checkout, hash trees and recipes into keys). Prints figures;
asserts nothing.

    python benchmarks/bench_build.py [--runs 5]

The real sources are not cloned on every machine (no GitHub here): the real plan is timed on a
copy of this workspace's recipes and variants whose git-repos.txt points at stand-in checkouts,
one small git repository per real source, so rendering and keying are real and only the size of
the trees differs (git status on a real PyTorch checkout adds its own seconds; it is timed too,
when sources/pytorch exists).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from stackforge.build import builder
from stackforge.build import plan as plan_
from stackforge.core.workspace import Workspace
from stackforge.demo import ministack
from stackforge.sources.checkouts import sync
from stackforge.spec.envs import load_env
from stackforge.spec.manifest import load_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = quiet(fn, *args, **kwargs)
    return time.perf_counter() - started, result


def bench_miniature(tmp: Path, runs: int) -> None:
    root = tmp / "mini"
    mirror = ministack.create_workspace(root)
    ws = Workspace(root)
    quiet(sync, ws, load_manifest(ws.manifest), mirror=str(mirror), quiet=True)
    env = load_env(ws, "pascal")
    full = []
    for _ in range(runs):
        shutil.rmtree(ws.output, ignore_errors=True)
        seconds, outcomes = timed(lambda: builder.run_plan(ws, plan_.make_plan(ws, env)))
        assert all(o.status == "built" for o in outcomes)
        full.append(seconds)
    noop = []
    for _ in range(runs):
        seconds, outcomes = timed(lambda: builder.run_plan(ws, plan_.make_plan(ws, env)))
        assert all(o.status == "cached" for o in outcomes)
        noop.append(seconds)
    f, n = statistics.median(full), statistics.median(noop)
    print(f"miniature stack, 3 packages, median of {runs}:")
    print(f"  full build   {f:7.3f} s   (min {min(full):.3f}, max {max(full):.3f})")
    print(f"  no-op build  {n:7.3f} s   (min {min(noop):.3f}, max {max(noop):.3f})")
    print(f"  ratio        {f / n:7.1f}x  (full / no-op)")


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **ministack.IDENTITY, "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z"}
    env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"]
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def stand_in_workspace(tmp: Path) -> Workspace:
    """This workspace's recipes, variants and git-repos.txt, with each source a small local repo."""
    root = tmp / "real"
    shutil.copytree(REPO_ROOT / "recipes", root / "recipes")
    shutil.copy2(REPO_ROOT / "stack.yaml", root / "stack.yaml")
    manifest = load_manifest(REPO_ROOT / "git-repos.txt")
    lines = []
    for src in manifest.sources:
        upstream = tmp / "upstreams" / src.name
        (upstream / (src.subdir or ".")).mkdir(parents=True, exist_ok=True)
        _git(upstream, "init", "-q", "-b", "main")
        (upstream / (src.subdir or ".") / "README").write_text(f"stand-in for {src.url}\n")
        _git(upstream, "add", "-A")
        _git(upstream, "commit", "-q", "-m", "stand-in")
        head = _git(upstream, "rev-parse", "HEAD")
        keys = " ".join(
            f"{k}={v}" for k, v in (("for", src.consumer), ("env", src.env), ("subdir", src.subdir)) if v
        )
        lines.append(f"{src.name} {upstream.as_uri()} {head} submodules=none {keys}")
    (root / "git-repos.txt").write_text("\n".join(lines) + "\n")
    ws = Workspace(root)
    manifest = load_manifest(ws.manifest)
    # named, so the checkouts only derived packages read are cloned too (--from-source all plans them)
    quiet(sync, ws, manifest, [s.name for s in manifest.sources], quiet=True)
    return ws


def bench_real_plan(tmp: Path, runs: int) -> None:
    ws = stand_in_workspace(tmp)
    for from_source in ((), ("all",)):
        for env_name in ("pascal", "volta"):
            env = load_env(ws, env_name)
            times = []
            for _ in range(runs):
                seconds, plan = timed(plan_.make_plan, ws, env, from_source=from_source)
                times.append(seconds)
            names = ", ".join(f"{i.name} ({i.method.kind}, {i.status})" for i in plan.items)
            label = " --from-source all" if from_source else ""
            print(
                f"plan of the real stack for {env_name}{label}: median {statistics.median(times):.3f} s "
                f"of {runs}  [{names}]"
            )
    real = Workspace(REPO_ROOT)
    seconds, plan = timed(plan_.make_plan, real, load_env(real, "pascal"))
    blocked = sum(i.status == "blocked" for i in plan.items)
    print(
        f"plan in this workspace as it is: {seconds:.3f} s ({blocked} of {len(plan.items)} blocked on missing checkouts)"
    )
    pytorch = REPO_ROOT / "sources" / "pytorch"
    if (pytorch / ".git").exists():
        started = time.perf_counter()
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=pytorch, capture_output=True
        )
        print(f"git status of the real sources/pytorch: {time.perf_counter() - started:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stackforge-bench-build-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["STACKFORGE_BUILD_ROOT"] = str(tmp / "build-root")
        bench_miniature(tmp, args.runs)
        bench_real_plan(tmp, args.runs)


if __name__ == "__main__":
    main()
