"""Theoretical occupancy: how many of an SM's warp slots one kernel's blocks can fill, and what
stops more, from the kernel's warps per block, registers per thread and shared memory per block.

The rules of NVIDIA's CUDA Occupancy Calculator as `cuda_occupancy.h` (CUDA toolkit) implements
them in `cudaOccMaxActiveBlocksPerMultiprocessor`, on the per-SM facts of `caps.SmLimits`.
Resident blocks per SM are the least of what each resource allows:

* warps: max warps per SM // warps per block;
* blocks: the resident-block limit;
* registers: a warp gets regs x 32 rounded up to the allocation unit (256); each of the register
  file's partitions holds (regs per SM / partitions) // that many warps; a block whose warps,
  rounded up to the partitions, need more than regs per block (the hardware's check) gets none;
* shared memory: a block's bytes rounded up to the allocation unit (256); blocks = shared per SM //
  that, none above the per-block opt-in limit (Triton opts in: `caps.smem_per_block_optin`).

On 7.0 shared memory per SM is a carveout: the smallest of 0/8/16/32/64/96 KB that holds both the
preferred size and one block (the calculator's rule). The default preference is the largest, as
the calculator assumes without one and as Triton's launcher asks for above 48 KB
(`cuFuncSetCacheConfig(CU_FUNC_CACHE_PREFER_SHARED)`).

Left out: partitioned global caching (6.1 can run a block on half an SM; it is off unless a
kernel asks, which Triton's do not), and the calculator's extra 6.0 rule (refuse on GP100 what
GP10x's 4 partitions cannot hold), which never changes the answer for a power-of-two warp count,
the only kind Triton launches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stackforge.cuda.caps import CAPABILITIES

WARP = 32
MAX_THREADS_PER_BLOCK = 1024  # every compute capability from 2.0 on
LIMITS = ("warps", "blocks", "registers", "shared-memory")


@dataclass(frozen=True)
class Occupancy:
    """Resident blocks and warps per SM of one kernel on one arch, and what limits them."""

    arch: int
    warps_per_block: int
    blocks: int  # resident blocks per SM
    max_warps: int  # warp slots per SM
    blocks_by: dict[str, int | None]  # blocks per SM each resource allows; None: not a limit
    smem_per_sm: int  # shared memory per SM the answer assumes (7.0: the carveout)

    @property
    def warps(self) -> int:
        return self.blocks * self.warps_per_block

    @property
    def ratio(self) -> float:
        return self.warps / self.max_warps

    @property
    def limited_by(self) -> tuple[str, ...]:
        """Every resource that allows no more than `blocks` (ties are all named, as the calculator does)."""
        return tuple(name for name in LIMITS if self.blocks_by[name] == self.blocks)

    def to_json(self) -> dict[str, Any]:
        return {
            "warps": self.warps,
            "max_warps": self.max_warps,
            "ratio": round(self.ratio, 4),
            "blocks": self.blocks,
            "warps_per_block": self.warps_per_block,
            "limited_by": list(self.limited_by),
            "blocks_by": self.blocks_by,
            "smem_per_sm": self.smem_per_sm,
        }


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(arch: int, num_warps: int, regs: int, shared: int, carveout: int | None = None) -> Occupancy:
    """Occupancy of a block of `num_warps` warps using `regs` registers per thread and `shared` bytes
    of shared memory on compute capability `arch`; `carveout`: the preferred shared memory per SM
    on an arch that splits it with L1 (7.0; default the largest)."""
    cap = CAPABILITIES[arch]
    lim = cap.per_sm
    fits = num_warps >= 1 and num_warps * WARP <= MAX_THREADS_PER_BLOCK
    by_warps = lim.warps // num_warps if fits else 0

    by_regs: int | None = None  # a kernel without registers is not limited by them
    per_warp = _round_up(regs * WARP, lim.reg_unit)
    # the hardware's per-block check counts a block's warps rounded up to the partitions
    if regs > lim.regs_per_thread or per_warp * _round_up(num_warps, lim.reg_partitions) > lim.regs_per_block:
        by_regs = 0
    elif per_warp and fits:
        warps_per_sm = (lim.regs // lim.reg_partitions // per_warp) * lim.reg_partitions
        by_regs = warps_per_sm // num_warps

    per_block = _round_up(shared, lim.smem_unit)
    smem_per_sm = lim.smem
    if lim.smem_carveouts:
        wanted = max(lim.smem if carveout is None else carveout, per_block)
        smem_per_sm = min((c for c in lim.smem_carveouts if c >= wanted), default=lim.smem)
    by_smem: int | None = None
    if per_block > cap.smem_per_block_optin:
        by_smem = 0
    elif per_block:
        by_smem = smem_per_sm // per_block

    blocks_by = {"warps": by_warps, "blocks": lim.blocks, "registers": by_regs, "shared-memory": by_smem}
    blocks = min(n for n in blocks_by.values() if n is not None)
    return Occupancy(arch, num_warps, blocks, lim.warps, blocks_by, smem_per_sm)
