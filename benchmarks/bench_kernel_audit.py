"""Benchmark `stackforge audit kernels`: a cold run (an empty Triton cache) and a warm one, wall
and CPU time (the audit and its workers), and the figures the audit reads from each cubin for
the kernels a user reaches: registers, stack frame and spill store bytes (ptxas' spills, from the
SASS), fp16 SASS instructions, shared bytes and theoretical occupancy (resident warps per SM, what
limits them). Static figures read from the cubins, not timings. Prints figures; asserts nothing.

    python benchmarks/bench_kernel_audit.py [-e pascal] [--vllm-src DIR] [--all] [--jobs N] [--kernels K,...]

Without --vllm-src the vLLM tree is v0.14.0 from the PyPI sdist with patches/vllm applied
(`stackforge.verify.upstream.repos.patched_repo`, cached after the first download).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the children, the --json report)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 1):
        sys.exit(f"audit failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, cpu, json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-e", "--env", default="pascal")
    parser.add_argument("--vllm-src", type=Path)
    parser.add_argument("--all", action="store_true", help="the opt-in backends' kernels too")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--kernels", help="only these kernels (the audit's --kernels)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kernel-audit-") as scratch:
        vllm = args.vllm_src
        if vllm is None:
            from stackforge.verify.upstream import repos

            vllm = repos.patched_repo("vllm", Path(scratch) / "vllm")
        env = {**os.environ, "STACKFORGE_CACHE": str(Path(scratch) / "cache")}  # cold: nothing cached
        argv = [
            sys.executable,
            "-m",
            "stackforge",
            "audit",
            "kernels",
            "-e",
            args.env,
            "--vllm-src",
            str(vllm),
            "--json",
        ]
        argv += ["--all"] * args.all + (["--jobs", str(args.jobs)] if args.jobs else [])
        argv += ["--kernels", args.kernels] if args.kernels else []
        cold = _run(argv, env)
        warm = _run(argv, env)
    report = warm[2]
    s = report["summary"]
    print(f"{os.cpu_count()} CPU(s); {args.env}; {s['kernels']} kernels, {s['compiles']} compiles")
    for name, (wall, cpu, _) in (("cold", cold), ("warm", warm)):
        print(f"{name}: {wall:6.1f} s wall, {cpu:6.1f} s CPU")
    c = s["coverage"]
    print(f"coverage: {c['reached']} reached, {c['audited']} audited, {c['passing']} passing; "
          f"not audited: {', '.join(report.get('not_audited', {})) or 'none'}")  # fmt: skip
    slowest = sorted(cold[2]["results"], key=lambda r: -r["seconds"])[:5]
    print(
        "slowest cold compiles: "
        + ", ".join(f"{r['case']} sm_{r['arch']} {r['seconds']:.1f} s" for r in slowest)
    )
    rows: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in report["results"]:
        rows[r["case"]][r["arch"]] = r
    archs = report["archs"]
    print(
        f"\n{'case':34} {'reach':20} "
        + " ".join(f"{'sm_' + str(a) + ' regs/stack/spill/fp16/smem/warps':46}" for a in archs)
    )
    for case, by_arch in rows.items():
        cells = []
        for a in archs:
            r, st = by_arch[a], by_arch[a].get("stats") or {}
            occ = r.get("occupancy")
            warps = f"{occ['warps']}/{occ['max_warps']} {'+'.join(occ['limited_by'])}" if occ else "-"
            cells.append(
                f"{st.get('regs')}/{st.get('stack')}/{st.get('spill_store_bytes')}/{st.get('fp16_ops')}/"
                f"{r['shared']}/{warps}"
                if r["status"] == "ok"
                else r["status"]
            )
        print(f"{case:34} {by_arch[archs[0]]['reach']:20} " + " ".join(f"{c:46}" for c in cells))
    _occupancy_summary(report["results"])
    _spill_summary(report["results"])
    return 0


def _spill_summary(results: list[dict], worst: int = 8) -> None:
    """Per arch: how many compiles spill (static: ptxas' spill store bytes per thread), and the worst."""
    by_arch: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        if (r.get("stats") or {}).get("spill_store_bytes"):
            by_arch[r["arch"]].append(r)
    for arch, spilling in sorted(by_arch.items()):
        top = sorted(spilling, key=lambda r: -r["stats"]["spill_store_bytes"])[:worst]
        print(
            f"sm_{arch} spills (static) in {len(spilling)} compiles; most: "
            + ", ".join(
                f"{r['case']} {r['stats']['spill_store_bytes']} B at {r['stats']['regs']} regs" for r in top
            )
        )


def _occupancy_summary(results: list[dict]) -> None:
    """Per arch: how the compiled kernels' theoretical occupancy spreads, and what limits it."""
    by_arch: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        if r.get("occupancy"):
            by_arch[r["arch"]].append(r["occupancy"])
    for arch, occs in sorted(by_arch.items()):
        ratios = sorted(o["ratio"] for o in occs)
        limits = Counter("+".join(o["limited_by"]) for o in occs)
        print(
            f"sm_{arch} occupancy over {len(occs)} compiles: min {ratios[0]:.0%}, "
            f"median {ratios[len(ratios) // 2]:.0%}, max {ratios[-1]:.0%}; limited by "
            + ", ".join(f"{k} {n}" for k, n in limits.most_common())
        )


if __name__ == "__main__":
    sys.exit(main())
