"""Static figures of one audited kernel under other launch parameters: registers, spill store and
load bytes, stack frame, shared memory and theoretical occupancy per variant, read from the cubin
Triton and its ptxas build for the target (no GPU). This is how the spill remedies in
docs/kernel-audit.md were compared; it prints figures and asserts nothing. Static figures only:
nothing here times a kernel.

    python benchmarks/bench_spill_remedies.py --vllm-src DIR --case prefix_prefill/h128 --arch 61 \
        --variant '' --variant 'num_warps=8' --variant 'BLOCK_M=16,BLOCK_N=16,BLOCK_SIZE=16' \
        --variant 'ptx_options=-O1' --variant 'maxnreg=128'

A variant overrides launch keywords (constexprs or Triton options) of the case as the audit builds
it; values are Python literals, strings otherwise. For sm_6x run it with the audit's Triton overlay
first on PYTHONPATH (the evict hints of some kernels need patches/triton there).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_variant(text: str) -> dict[str, Any]:
    """'BLOCK_M=16,num_warps=8' -> {"BLOCK_M": 16, "num_warps": 8}; '' is the launch as built."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, val = part.partition("=")
        out[key.strip()] = _value(val.strip())
    return out


def figures(case_id: str, vllm_src: Path, arch: int, variant: dict[str, Any]) -> dict[str, Any]:
    """Compile the case with `variant` over its launch for `arch`: the cubin's figures."""
    from stackforge.cuda.caps import CAPABILITIES
    from stackforge.cuda.occupancy import occupancy
    from stackforge.verify.kernels.cases import all_cases
    from stackforge.verify.kernels.launch import fit
    from stackforge.verify.kernels.loader import KernelLoader
    from stackforge.verify.kernels.sass import cubin_stats
    from stackforge.verify.kernels.tuning import jit_function
    from stackforge.verify.numerics.compile import compile_launch

    case = next(c for c in all_cases() if c.id == case_id)
    module = KernelLoader(vllm_src, arch).load_all([case.module])[case.module]
    fn = jit_function(case.find(module)[1])
    built = case.build(module, arch, CAPABILITIES[arch].smem_per_block_optin)
    launch = fit(fn, dataclasses.replace(built, kwargs={**built.kwargs, **variant}))
    start = time.monotonic()
    kernel, _, _ = compile_launch(fn, launch, arch)
    seconds = time.monotonic() - start
    warps = kernel.metadata.num_warps
    st = cubin_stats(kernel.asm["cubin"], arch, warps, kernel.metadata.shared)
    occ = occupancy(arch, warps, st["regs"], kernel.metadata.shared)
    tiles = {k: v for k, v in launch.kwargs.items() if k.startswith("BLOCK") or k in ("num_warps",)}
    return {**st, "tiles": tiles, "occ": f"{occ.warps}/{occ.max_warps} {'+'.join(occ.limited_by)}",
            "seconds": round(seconds, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-src", type=Path, required=True)
    parser.add_argument("--case", required=True, help="an audit case id, e.g. prefix_prefill/h128")
    parser.add_argument("--arch", type=int, action="append", required=True)
    parser.add_argument("--variant", action="append", default=[], help="KEY=VALUE,... over the launch")
    args = parser.parse_args()
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path.home() / ".cache" / "stackforge" / "triton"))
    print(f"{'arch':5} {'variant':44} {'regs':>4} {'STL B':>6} {'LDL B':>6} {'stack':>6} {'smem':>6} "
          f"{'occupancy':18} {'s':>5}  launch")  # fmt: skip
    for arch in args.arch:
        for text in args.variant or [""]:
            try:
                f = figures(args.case, args.vllm_src, arch, parse_variant(text))
            except Exception as exc:  # a variant over the shared-memory limit, a ptxas error
                print(f"sm_{arch:<2} {text or '(as built)':44} {type(exc).__name__}: {str(exc)[:120]}")
                continue
            print(
                f"sm_{arch:<2} {text or '(as built)':44} {f['regs']:>4} {f['spill_store_bytes']:>6} "
                f"{f['spill_load_bytes']:>6} {f['stack']:>6} {f['shared']:>6} {f['occ']:18} "
                f"{f['seconds']:>5}  {f['tiles']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
