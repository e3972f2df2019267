"""Shared memory of vLLM 0.33.0's prefix-prefill (_fwd_kernel, _fwd_kernel_alibi) and encoder
(triton_prefill_attention._fwd_kernel) kernels at the tiles the launchers pick, compiled with
the Triton first on sys.path for sm_61 (48 KB) and sm_70 (96 KB opt-in). No GPU needed.

    PYTHONPATH=<triton>:<stackforge src> python tiles.py <vllm tree> <arch>   (one arch per process)

Each tree is loaded with stackforge.verify.kernels.loader (no vLLM import); the launch arguments follow
the 0.33.0 launchers (fp16, 32 query / 8 KV heads, KV block 16). A tree whose launcher has the
series' helpers (fwd_kernel_block_sizes, fit_tiles, fma_block_size) gets the tiles they choose
for the arch's limit; otherwise the fixed upstream tiles.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stackforge.verify.kernels.launch import DType, Launch, Tensor
from stackforge.verify.numerics.compile import SharedMemoryOver, compile_launch, guard_shared_memory
from stackforge.verify.kernels.loader import KernelLoader

LIMIT = {61: 49152, 70: 98304}

# Triton 3.8's launch binder caches argument types by the dtype object's identity (torch dtypes
# are singletons); kernel_cases.Tensor makes a new DType per access, whose id can be reused by
# the next one, so give each name one object.
_DTYPES: dict[str, DType] = {}
Tensor.dtype = property(lambda self: _DTYPES.setdefault(self.dtype_name, DType(self.dtype_name)))
HEADS, KV_HEADS, BLOCK_SIZE = 32, 8, 16


def p2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def prefix(mod, arch: int, head: int):
    d = p2(head)
    if hasattr(mod, "fwd_kernel_block_sizes"):
        bm, bn, tile = mod.fwd_kernel_block_sizes(d, LIMIT[arch], arch < 80)
    else:
        bm, bn, tile = 128, 64, 32
    x = 8
    kc = Tensor("float16", (64, KV_HEADS, head // x, BLOCK_SIZE, x), role="k_cache")
    vc = Tensor("float16", (64, KV_HEADS, head, BLOCK_SIZE), role="v_cache")
    q = Tensor("float16", (256, HEADS, head))
    k = Tensor("float16", (256, KV_HEADS, head))
    o = Tensor("float16", q.shape)
    bl = Tensor("int32", (4, 16))
    args = (q, k, k, kc, vc, None, bl, 0.1, Tensor("float32", (1,)), Tensor("float32", (1,)), 1.0,
            Tensor("int32", (5,)), Tensor("int32", (4,)), x, o, bl.stride(0), bl.stride(1),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            k.stride(0), k.stride(1), k.stride(2), o.stride(0), o.stride(1), o.stride(2))
    kw = dict(stride_k_cache_bs=kc.stride(0), stride_k_cache_h=kc.stride(1), stride_k_cache_d=kc.stride(2),
              stride_k_cache_bl=kc.stride(3), stride_k_cache_x=kc.stride(4), stride_v_cache_bs=vc.stride(0),
              stride_v_cache_h=vc.stride(1), stride_v_cache_d=vc.stride(2), stride_v_cache_bl=vc.stride(3))
    return (bm, bn, tile), args, kw


def run_prefix(mod, arch, head):
    tiles, args, kw = prefix(mod, arch, head)
    params = mod._fwd_kernel.arg_names
    kw = {k: v for k, v in kw.items() if k in params}
    const = dict(BLOCK_SIZE=tiles[2], PHYSICAL_BLOCK_SIZE=BLOCK_SIZE, num_queries_per_kv=HEADS // KV_HEADS,
                 IN_PRECISION=None, BLOCK_DMODEL=head, BLOCK_DMODEL_PADDED=p2(head), SLIDING_WINDOW=0,
                 SKIP_DECODE=False, USE_FP8=False, BLOCK_M=tiles[0], BLOCK_N=tiles[1], num_unroll_cache=4,
                 num_unroll_request=1, USE_SINKS=False)
    # Parameters left out here (CAUSAL, KV_FROM_CACHE, ...) take their defaults; Triton's binder
    # refuses a launch that misses one without a default.
    const = {k: v for k, v in const.items() if k in params}
    return tiles, Launch(args, {**kw, **const, "num_warps": 4, "num_stages": 1})


def run_encoder(mod, arch, head):
    block = 64  # get_block_size below sm_80 for fp16
    if hasattr(mod, "fma_block_size") and arch < 80:
        block = mod.fma_block_size(block, p2(head), LIMIT[arch])
    q = Tensor("float16", (256, HEADS, head))
    k = Tensor("float16", (256, KV_HEADS, head))
    args = (q, k, k, q, 0.1, Tensor("int32", (4,)), Tensor("int32", (4,)), q,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(0), k.stride(1), q.stride(0), q.stride(1))
    kw = dict(kv_group_num=HEADS // KV_HEADS, BLOCK_M=block, BLOCK_DMODEL=p2(head), BLOCK_N=block, IS_CAUSAL=False,
              SLIDING_WINDOW_Q=0, SLIDING_WINDOW_K=0, USE_SINKS=False, SINKS_BIAS_KEY0=False,
              num_warps=4 if head <= 64 else 8, num_stages=1, Lk=head)
    return (block, block), Launch(args, kw)


def shared(fn, launch, arch):
    guard_shared_memory()  # over the limit: stop before ptxas (minutes on these kernels)
    try:
        kernel, _, _ = compile_launch(fn, launch, arch)
        return kernel.metadata.shared
    except SharedMemoryOver as exc:
        return exc.needed
    except Exception as exc:  # over the limit: ptxas/Triton refuse; report the message
        text = str(exc)
        import re
        m = re.search(r"Required: (\d+)", text)
        return int(m[1]) if m else f"{type(exc).__name__}: {text.strip().splitlines()[-1][:120] if text.strip() else ''}"


def main() -> None:
    import triton

    tree, arch = Path(sys.argv[1]), int(sys.argv[2])
    loader = KernelLoader(tree, arch)
    with loader.active():
        pp = loader.load("vllm.v1.attention.ops.prefix_prefill")
        enc = loader.load("vllm.v1.attention.ops.triton_prefill_attention")
    fit = lambda s: "fits" if isinstance(s, int) and s <= LIMIT[arch] else "OVER"
    for head in (64, 80, 128, 256):
        tiles, launch = run_prefix(pp, arch, head)
        s1 = shared(pp._fwd_kernel, launch, arch)
        btile, elaunch = run_encoder(enc, arch, head)
        s2 = shared(enc._fwd_kernel, elaunch, arch)
        print(f"triton {triton.__version__} {sys.argv[3] if len(sys.argv) > 3 else tree.name} sm_{arch} head {head}: "
              f"prefix_prefill (BLOCK_M, BLOCK_N, BLOCK_SIZE)={tiles} shared {s1} {fit(s1)} | "
              f"encoder BLOCK {btile[0]} shared {s2} {fit(s2)}")


if __name__ == "__main__":
    main()
