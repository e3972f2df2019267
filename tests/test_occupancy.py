"""Theoretical occupancy (`stackforge.cuda.occupancy`) against figures checkable by hand: NVIDIA's
own worked example, and one case per rule with its arithmetic in the comment."""

from __future__ import annotations

import pytest

from stackforge.cuda.caps import CAPABILITIES
from stackforge.cuda.occupancy import occupancy


def test_best_practices_guide_example_on_7_0() -> None:
    """CUDA C++ Best Practices Guide, "Calculating Occupancy": on 7.0, 37 registers per thread give
    75% with 12 resident 128-thread blocks, and 63% with four 320-thread blocks (plain division
    says 13 and 5). 37 x 32 = 1184 -> 1280 per warp; 16384 per partition // 1280 = 12 warps x 4
    partitions = 48 warps."""
    small = occupancy(70, num_warps=4, regs=37, shared=0)
    assert (small.blocks, small.warps, small.ratio) == (12, 48, 0.75)
    assert small.limited_by == ("registers",)
    large = occupancy(70, num_warps=10, regs=37, shared=0)
    assert (large.blocks, large.warps, large.ratio) == (4, 40, 0.625)  # the guide's 63%


def test_full_occupancy_is_limited_by_warps_and_registers_together() -> None:
    # 256 threads, 32 registers, 4 KB on 6.1: 64 // 8 = 8 blocks by warps; 1024 registers a warp,
    # 16384 // 1024 x 4 = 64 warps = 8 blocks; 98304 // 4096 = 24 by shared memory
    occ = occupancy(61, num_warps=8, regs=32, shared=4096)
    assert (occ.blocks, occ.warps, occ.max_warps, occ.ratio) == (8, 64, 64, 1.0)
    assert occ.limited_by == ("warps", "registers")
    assert occ.blocks_by == {"warps": 8, "blocks": 32, "registers": 8, "shared-memory": 24}


def test_registers_go_to_warps_in_units_of_256() -> None:
    # 33 x 32 = 1056 -> 1280 a warp; 16384 // 1280 = 12 x 4 = 48 warps (plain 65536 // 1056 = 62)
    occ = occupancy(61, num_warps=4, regs=33, shared=0)
    assert (occ.blocks, occ.warps, occ.ratio) == (12, 48, 0.75)
    assert occ.blocks_by["shared-memory"] is None  # no shared memory: no limit from it


def test_gp100_has_two_register_partitions_and_gp10x_four() -> None:
    # 88 x 32 = 2816 a warp. 6.0: 32768 // 2816 = 11 x 2 = 22 warps; 6.1: 16384 // 2816 = 5 x 4 = 20
    assert occupancy(60, num_warps=2, regs=88, shared=0).warps == 22
    assert occupancy(61, num_warps=2, regs=88, shared=0).warps == 20


def test_shared_memory_goes_to_blocks_in_units_of_256_bytes() -> None:
    # 14000 -> 14080 a block; 98304 // 14080 = 6 (plain 98304 // 14000 = 7)
    occ = occupancy(61, num_warps=4, regs=32, shared=14000)
    assert (occ.blocks, occ.warps, occ.limited_by) == (6, 24, ("shared-memory",))


@pytest.mark.parametrize(("arch", "blocks"), [(60, 2), (61, 3), (70, 3)])
def test_shared_memory_per_sm_differs_per_arch(arch: int, blocks: int) -> None:
    # 32 KB blocks: 64 KB per SM on 6.0, 96 KB on 6.1 and 7.0
    occ = occupancy(arch, num_warps=4, regs=32, shared=32768)
    assert occ.blocks == blocks and occ.smem_per_sm == CAPABILITIES[arch].per_sm.smem


def test_volta_carveout() -> None:
    """7.0's carveout is the smallest of 0/8/16/32/64/96 KB holding the preference and one block."""
    assert occupancy(70, 4, 32, 32768, carveout=32768).blocks == 1
    rounded = occupancy(70, 4, 32, 32768, carveout=40000)  # -> the 64 KB carveout
    assert (rounded.smem_per_sm, rounded.blocks) == (65536, 2)
    at_least_one = occupancy(70, 4, 32, 32768, carveout=0)  # a preference below one block is raised
    assert (at_least_one.smem_per_sm, at_least_one.blocks) == (32768, 1)
    assert occupancy(61, 4, 32, 32768, carveout=0).smem_per_sm == 98304  # Pascal's is dedicated


def test_what_cannot_launch_has_no_blocks() -> None:
    over_smem = occupancy(61, num_warps=4, regs=32, shared=51200)  # > 49152 a block on Pascal
    assert (over_smem.blocks, over_smem.limited_by) == (0, ("shared-memory",))
    assert occupancy(70, num_warps=4, regs=32, shared=51200).blocks == 1  # 96 KB opt-in on Volta
    # 32 warps x 72 registers: 2304 x 32 = 73728 > 65536 registers a block
    assert occupancy(61, num_warps=32, regs=72, shared=0).limited_by == ("registers",)
    assert occupancy(61, num_warps=32, regs=72, shared=0).blocks == 0
    assert occupancy(61, num_warps=4, regs=256, shared=0).blocks == 0  # over 255 a thread
    assert occupancy(61, num_warps=64, regs=16, shared=0).blocks_by["warps"] == 0  # 2048 threads


def test_tiny_blocks_run_out_of_block_slots() -> None:
    # one warp, no registers or shared memory: 64 warp slots but 32 block slots -> 50%
    occ = occupancy(70, num_warps=1, regs=0, shared=0)
    assert (occ.blocks, occ.warps, occ.ratio, occ.limited_by) == (32, 32, 0.5, ("blocks",))
    assert occ.to_json()["limited_by"] == ["blocks"] and occ.to_json()["ratio"] == 0.5


def test_audit_results_carry_occupancy_in_json_and_table() -> None:
    """A compiled kernel's cubin figures (as `sass.cubin_stats` gives them) become an occupancy in
    the report's JSON and its table cell; a failed compile has none."""
    from stackforge.verify.kernels.report import Report, Result, _cell

    stats = {"regs": 32, "warps": 4, "shared": 14000, "local": 0, "fp16_ops": 0}
    ok = Result("k/s", "k", "s", 61, "ok", shared=14000, limit=49152, stats=stats)
    over = Result("k/s", "k", "s", 60, "shared-memory", shared=65536, limit=49152)
    report = Report("pascal", [60, 61], "/vllm", {"version": "3.5.1", "patches": [], "how": "installed"})
    report.results = [over, ok]
    by_arch = {r["arch"]: r for r in report.to_json()["results"]}
    assert by_arch[60]["occupancy"] is None
    occ = by_arch[61]["occupancy"]
    assert (occ["warps"], occ["max_warps"], occ["limited_by"]) == (24, 64, ["shared-memory"])
    assert "32r 24/64w (smem)" in _cell(ok)
    full = Result("k/s", "k", "s", 61, "ok", shared=0, stats={"regs": 32, "warps": 8})
    assert _cell(full).endswith("64/64w")  # at 100% no limiter is named
