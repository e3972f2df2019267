"""Spills on the FMA path (issue 13) and vllm 0024's remedy for prefix prefill.

Offline: the spill bytes the audit reads from a SASS listing (the widths of STL/LDL, as `ptxas -v`
counts them) and the bench's variant syntax. Marked `upstream`: on the v0.14.0 sdist with
patches/vllm, the audit compiles `_fwd_kernel` with the launch 0024 makes below sm_80 (8 warps,
the context loop not unrolled, tiles within FMA_REGISTER_TILE_BYTES), and the cubins show no
spills where the unpatched launch spilled tens of KB; sm_80 keeps vLLM's launch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from upstreamhelpers import load_defs

from stackforge.verify.kernels.sass import local_bytes

REPO = Path(__file__).resolve().parents[1]
PP = "vllm/v1/attention/ops/prefix_prefill.py"

SASS = """
        /*0a50*/                   STL [R1+0x10], R4 ;                      /* 0x0000100401007387 */
        /*0a60*/                   STL.64 [R1+0x18], R6 ;                   /* 0x0000180601007387 */
        /*0a70*/               @P0 STL.128 [R1+0x20], R8 ;                  /* 0x0000200801000387 */
        /*0a80*/                   STL.S16 [R1+0x30], R2 ;                  /* 0x0000300201007387 */
        /*0a90*/                   LDL.LU R4, [R1+0x10] ;                   /* 0x0000100001047983 */
        /*0aa0*/                   LDL.LU.64 R6, [R1+0x18] ;                /* 0x0000180001067983 */
        /*0ab0*/                   LDS.U.128 R8, [R3] ;                     /* 0x0000000003087984 */
"""


def test_spill_bytes_are_the_widths_of_local_stores_and_loads() -> None:
    assert local_bytes(SASS) == (4 + 8 + 16 + 2, 4 + 8)  # shared-memory loads are not spills
    assert local_bytes("") == (0, 0)


def test_bench_variants_parse_literals_and_strings() -> None:
    spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench_spill_remedies.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    assert bench.parse_variant("") == {}
    assert bench.parse_variant("BLOCK_M=16, num_warps=8,ptx_options=-O1") == {
        "BLOCK_M": 16,
        "num_warps": 8,
        "ptx_options": "-O1",
    }


def _series_tree(dest: Path, below: int) -> Path:
    """The v0.14.0 sdist with patches/vllm numbered below `below` applied by git am."""
    import os
    import subprocess

    from conftest import online

    from stackforge.core.git import HERMETIC
    from stackforge.verify.upstream import repos

    tree = online(lambda: repos.upstream_repo("vllm", dest))
    series = [p for p in sorted((REPO / "patches" / "vllm").glob("*.patch")) if int(p.name[:4]) < below]
    done = subprocess.run(["git", "am", "--quiet", "--3way", *map(str, series)], cwd=tree,
                          env={**os.environ, **HERMETIC}, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tree


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(v0.14.0 with the series up to 0023, with the whole series)."""
    return (_series_tree(tmp_path_factory.mktemp("before") / "src", 24),
            _series_tree(tmp_path_factory.mktemp("after") / "src", 10_000))  # fmt: skip


@pytest.mark.upstream
def test_0024_launch_below_sm80_only(trees: tuple[Path, Path]) -> None:
    """0024's helpers read from the patched tree: below sm_80, 8 warps, no unrolled context loop and
    tiles within 36 KB of fp32 (Pascal: 64x32 at head 64, 32x32 at 128, 16x16 at 256; a V100's
    96 KB no longer buys 128x64); sm_80 and newer keep 4 warps, unroll 4 and 128x64."""
    before, patched = trees
    names = {"fma_dot_smem_bytes", "fit_tiles", "fwd_kernel_block_sizes", "fwd_kernel_launch_options",
             "FMA_REGISTER_TILE_BYTES"}  # fmt: skip
    ns = load_defs(patched / PP, names, {})
    sizes, options = ns["fwd_kernel_block_sizes"], ns["fwd_kernel_launch_options"]
    assert [sizes(d, True, 49152, True) for d in (64, 128, 256)] == [(64, 32, 32), (32, 32, 32), (16, 16, 16)]
    assert [sizes(d, True, 98304, True) for d in (64, 128, 256)] == [(64, 32, 32), (32, 32, 32), (16, 16, 16)]
    assert sizes(128, False, 98304, True) == (32, 32, 32)  # Qwen3-Next's 544-token KV blocks
    assert sizes(128, True, 0, False) == (128, 64, 32)
    assert options(True) == {"num_warps": 8, "num_unroll_cache": 1}
    assert options(False) == {"num_warps": 4, "num_unroll_cache": 4}
    assert "fwd_kernel_launch_options" not in (before / PP).read_text()


@pytest.mark.upstream
@pytest.mark.parametrize(("env", "archs"), [("pascal", [61]), ("volta", [70])])
def test_audit_compiles_0024s_launch_without_the_spills(
    trees: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, env: str, archs: list[int]
) -> None:
    """The audit's prefix-prefill case launches what the patched launcher launches, and its cubin
    has no spill where the unpatched launch's had tens of KB (static figures, head 128)."""
    from stackforge.verify.kernels.audit import audit

    plain, patched = trees  # the series without 0024, and with it
    state = tmp_path_factory.mktemp("audit-state")
    triton = sorted((REPO / "patches" / "triton").glob("*.patch"))
    kw = dict(kernels=["prefix_prefill/h128"], head_sizes=(128,), state=state, show_progress=False)
    before = audit(None, env, archs, plain, triton, **kw)
    after = audit(None, env, archs, patched, triton, **kw)
    (b,), (a,) = before.results, after.results
    assert a.ok and a.stats["warps"] == 8 and a.stats["spill_store_bytes"] == 0, a.stats
    assert b.ok and b.stats["warps"] == 4 and b.stats["spill_store_bytes"] > 10_000, b.stats
