"""Small Triton kernels that exercise what patches/triton changes for sm_6x: atomics.

vLLM's atomics (LoRA shrink, fused-MoE LoRA, bincount, EP scatter) compile for Pascal only with
patches/triton 0002 (memory order kept with `membar` fences instead of `.sem` qualifiers) and
0003 (16-bit atomics as 32-bit CAS loops). These kernels isolate those lowerings so
`stackforge.verify.numerics.gpu` can check them exactly on a GPU: contended adds in fp16 and fp32 (packed
neighbours and scattered slots), the old value an atomic add returns, atomic_cas on fp16 and i32,
and an acq_rel counter that lets the last program read every other program's partial sum.

Each `Case` builds its launch with `kernel_cases.Tensor` descriptions, like the vLLM cases, so
`stackforge.verify.numerics.suite` compiles both kinds the same way. Importing this module imports Triton.
"""

from __future__ import annotations

from types import ModuleType

import triton
import triton.language as tl

from stackforge.verify.kernels.launch import Case, Launch, Tensor

PROGRAMS, LANES, SLOTS = 16, 1024, 64  # 256 adds into each slot
SMALL = 256  # elements of the returns-old and cas kernels
MASKED_FROM = 253  # add_returns_old leaves the last 3 elements alone
REDUCE_PROGRAMS, REDUCE_BLOCK = 512, 256


@triton.jit
def add_contended(X, Y, SLOTS: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr, SEM: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    # STRIDE 1: neighbouring lanes hit neighbouring slots (fp16: the packed f16x2 CAS path);
    # STRIDE 7: scattered slots (fp16: one 16-bit half of a 32-bit word at a time)
    tl.atomic_add(Y + (o * STRIDE) % SLOTS, tl.load(X + o), sem=SEM)


@triton.jit
def add_returns_old(Y, R, X, N, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    m = o < N
    r = tl.atomic_add(Y + o, tl.load(X + o, mask=m, other=0.0), mask=m)
    tl.store(R + o, r, mask=m)


@triton.jit
def cas_returns_old(Y, R, C, V, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    r = tl.atomic_cas(Y + o, tl.load(C + o), tl.load(V + o))
    tl.store(R + o, r)


@triton.jit
def last_program_reduces(X, PART, COUNT, OUT, PROGRAMS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    tl.store(PART + pid, tl.sum(tl.load(X + pid * BLOCK + tl.arange(0, BLOCK)), axis=0))
    done = tl.atomic_add(COUNT, 1, sem="acq_rel")  # releases this partial, acquires the others'
    if done == PROGRAMS - 1:
        tl.store(OUT, tl.sum(tl.load(PART + tl.arange(0, PROGRAMS)), axis=0))


def _contended(dtype: str, stride: int, sem: str):
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        n = PROGRAMS * LANES
        args = (Tensor(dtype, (n,), role="addends"), Tensor(dtype, (SLOTS,), role="slots"))
        kw = {"SLOTS": SLOTS, "STRIDE": stride, "BLOCK": LANES, "SEM": sem, "num_warps": 4}
        scenario = {"programs": PROGRAMS, "lanes": LANES, "slots": SLOTS, "stride": stride,
                    "dtype": dtype, "sem": sem, "seed": 3}  # fmt: skip
        return Launch(args, kw, (PROGRAMS,), scenario)

    return build


def _returns_old(mod: ModuleType, arch: int, smem: int) -> Launch:
    args = (
        Tensor("float16", (SMALL,), role="target"),
        Tensor("float16", (SMALL,), role="returned"),
        Tensor("float16", (SMALL,), role="addends"),
        MASKED_FROM,
    )
    return Launch(
        args, {"BLOCK": SMALL, "num_warps": 4}, (1,), {"n": SMALL, "masked_from": MASKED_FROM, "seed": 4}
    )


def _cas(dtype: str):
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        args = tuple(Tensor(dtype, (SMALL,), role=r) for r in ("target", "returned", "compare", "values"))
        return Launch(args, {"BLOCK": SMALL, "num_warps": 4}, (1,), {"n": SMALL, "dtype": dtype, "seed": 5})

    return build


def _reduce(mod: ModuleType, arch: int, smem: int) -> Launch:
    args = (
        Tensor("float32", (REDUCE_PROGRAMS * REDUCE_BLOCK,), role="addends"),
        Tensor("float32", (REDUCE_PROGRAMS,), role="partials"),
        Tensor("int32", (1,), role="counter"),
        Tensor("float32", (1,), role="total"),
    )
    kw = {"PROGRAMS": REDUCE_PROGRAMS, "BLOCK": REDUCE_BLOCK, "num_warps": 4}
    return Launch(
        args, kw, (REDUCE_PROGRAMS,), {"programs": REDUCE_PROGRAMS, "block": REDUCE_BLOCK, "seed": 6}
    )


def atomic_cases() -> list[tuple[str, Case]]:
    """(numerics check, case) for every atomics kernel."""
    here = __name__
    table = [
        ("triton_atomic_add", "tl.atomic_add fp16 (sem=acq_rel)", "add_contended",
         f"{PROGRAMS}x{LANES} adds of k/4 into {SLOTS} neighbouring slots", "f16-neighbours",
         _contended("float16", 1, "acq_rel")),
        ("triton_atomic_add", "tl.atomic_add fp16 (sem=relaxed)", "add_contended",
         f"{PROGRAMS}x{LANES} adds of k/4 into {SLOTS} scattered slots", "f16-scattered",
         _contended("float16", 7, "relaxed")),
        ("triton_atomic_add", "tl.atomic_add fp32 (sem=acq_rel)", "add_contended",
         f"{PROGRAMS}x{LANES} adds of k/4 into {SLOTS} neighbouring slots", "f32-neighbours",
         _contended("float32", 1, "acq_rel")),
        ("triton_atomic_add", "tl.atomic_add fp32 (sem=relaxed)", "add_contended",
         f"{PROGRAMS}x{LANES} adds of k/4 into {SLOTS} scattered slots", "f32-scattered",
         _contended("float32", 7, "relaxed")),
        ("triton_atomic_add_old", "tl.atomic_add fp16, returned values", "add_returns_old",
         f"{SMALL} lanes, last {SMALL - MASKED_FROM} masked off", "f16", _returns_old),
        ("triton_atomic_cas", "tl.atomic_cas fp16", "cas_returns_old", f"{SMALL} lanes", "f16",
         _cas("float16")),
        ("triton_atomic_cas", "tl.atomic_cas i32", "cas_returns_old", f"{SMALL} lanes", "i32", _cas("int32")),
        ("triton_last_program_reduces", "tl.atomic_add i32 counter (sem=acq_rel)", "last_program_reduces",
         f"{REDUCE_PROGRAMS} programs: the last one sums every partial", "acq_rel", _reduce),
    ]  # fmt: skip
    return [
        (check, Case(f"{fn}/{tag}", kernel, here, fn, f"stackforge/numerics_kernels.py:{fn}", "patches/triton "
                     "0002/0003", shape, build))
        for check, kernel, fn, shape, tag, build in table
    ]  # fmt: skip
