"""Inputs and PyTorch references per check of a numerics record (torch is passed in, imported lazily)."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import accumulate, pairwise
from typing import Any

from stackforge.verify.numerics.records import FP16_EPS, FP32_EPS

# --- inputs and references per check ---------------------------------------------------------------


def allocate(record: dict, torch: Any) -> dict[str, Any]:
    """The record's tensors on the GPU, as strided views over fresh allocations (contents unset)."""
    tensors = {}
    for key, d in record.get("tensors", {}).items():
        span = 1 + sum((n - 1) * st for n, st in zip(d["shape"], d["strides"], strict=True))
        base = torch.empty(span if all(d["shape"]) else 0, dtype=getattr(torch, d["dtype"]), device="cuda")
        tensors[key] = torch.as_strided(base, d["shape"], d["strides"])
    return tensors


def _role(record: dict, tensors: dict, role: str) -> Any:
    (found,) = [tensors[k] for k, d in record["tensors"].items() if d["role"] == role]
    return found


def _errors(out: Any, ref: Any) -> tuple[float, float, float]:
    out, ref = out.double(), ref.double()
    if not bool(out.isfinite().all()):
        return math.inf, math.inf, math.inf
    err = (out - ref).abs()
    ref_max = float(ref.abs().max()) or 1.0
    l2 = float(ref.norm()) or 1.0
    return float(err.max()), float(err.max()) / ref_max, float((out - ref).norm()) / l2


def check_half_atomic_add(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """Many threads add half values into few half slots (neighbouring slots share a 32-bit word, so the
    CAS fallback's read-modify-write of the other half is exercised); reference: float64 sums.
    Exact cases use values whose every partial sum is representable in fp16: any error is a lost or
    corrupted update. The random case is bounded by Higham's gamma_k * sum|x| (k adds per slot)."""
    shape = record["shape"]
    n, slots = shape["n"], shape["slots"]
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    idx = (torch.arange(n, device="cuda", dtype=torch.int32) % slots).contiguous()
    if shape["values"] == "ones":
        vals = torch.ones(n, device="cuda", dtype=torch.float16)
    elif shape["values"] == "sixty-fourths":  # j/64, j in 1..4
        vals = (torch.randint(1, 5, (n,), device="cuda", generator=gen).to(torch.float32) / 64).half()
    else:
        vals = (torch.randn(n, device="cuda", generator=gen) / 4).half()
    out = torch.zeros(slots, device="cuda", dtype=torch.float16)
    olds = torch.full((n,), float("nan"), device="cuda", dtype=torch.float16)  # poisoned
    run({"out": out, "vals": vals, "idx": idx, "olds": olds})
    ref = torch.zeros(slots, dtype=torch.float64, device="cuda").index_add_(0, idx.long(), vals.double())
    note = ""
    if shape["values"] == "ones":
        # atomicAdd returns the previous value: per slot, the old values are exactly 0, 1, ..., count-1
        count = n // slots
        seen = olds.float().view(count, slots).t().sort(dim=1).values
        if not bool((seen == torch.arange(count, device="cuda", dtype=torch.float32)).all()):
            return out, torch.full_like(ref, math.inf), "returned old values are not 0..count-1 per slot"
        note = f"old values 0..{count - 1} per slot"
    if shape["values"] == "random":
        k = n // slots
        bound = (k * FP16_EPS / (1 - k * FP16_EPS)) * float(
            torch.zeros(slots, dtype=torch.float64, device="cuda")
            .index_add_(0, idx.long(), vals.double().abs())
            .max()
        )
        record["tolerance"] = {"max_abs": bound, "l2_rel": 1.0}
        note = f"bound gamma_{k}*sum|x| = {bound:.3g}"
    return out, ref, note


def check_triton_atomic_add(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """Every lane of every program adds k/4 (k in 0..3) into slot (lane * stride) % slots: all
    partial sums are multiples of 1/4 below 256, exact in fp16 and fp32, so the result must equal
    the float64 sum exactly; any lost or torn update (the fp16 CAS loop) shows."""
    shape, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    x, y = _role(record, t, "addends"), _role(record, t, "slots")
    x.copy_(torch.randint(0, 4, x.shape, device="cuda", generator=gen).to(x.dtype) / 4)
    y.zero_()
    run(t)
    idx = (torch.arange(x.numel(), device="cuda") * shape["stride"]) % shape["slots"]
    ref = torch.zeros(y.numel(), dtype=torch.float64, device="cuda").index_add_(0, idx, x.double())
    return y, ref, f"{x.numel() // y.numel()} adds per slot"


def check_triton_atomic_add_old(
    record: dict, run: Callable[[dict], None], torch: Any
) -> tuple[Any, Any, str]:
    """An fp16 atomic add returns the value it replaced, and writes the fp16-rounded sum, for both
    halves of every 32-bit word; masked lanes neither add nor return."""
    shape, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    y, r, x = (_role(record, t, k) for k in ("target", "returned", "addends"))
    y0 = torch.randn(y.shape, device="cuda", generator=gen).half()
    y.copy_(y0)
    x.copy_(torch.randn(x.shape, device="cuda", generator=gen).half())
    r.fill_(-7.0)
    run(t)
    m = torch.arange(y.numel(), device="cuda") < shape["masked_from"]
    want_y = torch.where(m, (y0.float() + x.float()).half(), y0)  # fp32 holds the sum exactly
    want_r = torch.where(m, y0, torch.full_like(y0, -7.0))
    return (
        torch.cat([y, r]),
        torch.cat([want_y, want_r]),
        "sums and returned old values, masked tail untouched",
    )


def check_triton_atomic_cas(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """atomic_cas swaps exactly where the target equals the comparand and returns the old value
    (fp16: one half of a 32-bit word through the patch's CAS loop)."""
    shape, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    y, r, c, v = (_role(record, t, k) for k in ("target", "returned", "compare", "values"))
    y0 = torch.randint(0, 4, y.shape, device="cuda", generator=gen).to(y.dtype)
    y.copy_(y0)
    c.copy_(torch.randint(0, 4, c.shape, device="cuda", generator=gen).to(c.dtype))
    v.copy_(torch.randint(10, 20, v.shape, device="cuda", generator=gen).to(v.dtype))
    r.zero_()
    run(t)
    swapped = int((y0 == c).sum())
    return (
        torch.cat([y, r]),
        torch.cat([torch.where(y0 == c, v, y0), y0]),
        f"{swapped} of {y.numel()} swapped",
    )


def check_last_program_reduces(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """Each program stores its partial sum, then takes a ticket with an acq_rel atomic_add; the
    program with the last ticket sums every partial. Partials start as NaN, so a partial read
    before it is visible poisons the total. Tolerance: gamma_k * sum|x| for fp32 sums of depth k."""
    shape, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    x, part, count, total = (_role(record, t, k) for k in ("addends", "partials", "counter", "total"))
    x.copy_(torch.randn(x.shape, device="cuda", generator=gen))
    part.fill_(float("nan"))
    count.zero_()
    total.fill_(float("nan"))
    run(t)
    if int(count.item()) != shape["programs"]:
        return total, torch.full_like(total, math.inf), f"counter {int(count.item())} != {shape['programs']}"
    k = 2 * math.ceil(math.log2(x.numel()))  # a generous depth for in-thread + shuffle + cross-warp sums
    bound = k * FP32_EPS / (1 - k * FP32_EPS) * float(x.double().abs().sum())
    record["tolerance"] = {"max_abs": bound, "l2_rel": 1.0}
    return (
        total,
        x.double().sum().reshape(1),
        f"counter {shape['programs']}; bound gamma_{k}*sum|x| = {bound:.3g}",
    )


def _attention_inputs(record: dict, torch: Any) -> dict[str, Any]:
    """Random fp16 activations and caches, NaN outputs (every element must be written), the
    sequence bookkeeping from the scenario, and a block table of shuffled KV blocks."""
    sc, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(11)
    seq_lens = sc["seq_lens"]
    query_lens = sc.get("query_lens", seq_lens)
    for key, d in record["tensors"].items():
        x, role = t[key], d["role"]
        if role in (
            "query",
            "key",
            "value",
            "key_cache",
            "value_cache",
            "paged_key_cache",
            "paged_value_cache",
        ):
            x.copy_(torch.randn(x.shape, device="cuda", generator=gen) / 2)
        elif role == "sinks":  # gpt-oss: one learned logit per query head, of the scores' scale
            x.copy_(torch.randn(x.shape, device="cuda", generator=gen) * 2)
        elif role in ("output", "segm_output", "segm_max", "segm_expsum"):
            x.fill_(float("nan"))
        elif role == "scale_one":
            x.fill_(1.0)
        elif role in ("seq_lens", "b_seq_len"):
            x.copy_(torch.tensor(seq_lens))
        elif role == "cu_seqlens_q":
            x.copy_(torch.tensor([0, *accumulate(query_lens)]))
        elif role == "b_start_loc":
            x.copy_(torch.tensor([0, *accumulate(seq_lens)][:-1]))
        elif role == "block_table":
            per = math.ceil(max(seq_lens) / sc["block_size"])
            perm = torch.randperm(sc["num_blocks"], device="cuda", generator=gen)[: len(seq_lens) * per]
            x.zero_()
            x[:, :per] = perm.view(len(seq_lens), per).to(x.dtype)
        else:
            raise ValueError(f"no input rule for a tensor of role {role!r} ({key})")
    return t


def _attend(
    q: Any,
    k: Any,
    v: Any,
    scale: float,
    offset: int | None,
    torch: Any,
    softcap: float = 0.0,
    window: int = 0,
    sinks: Any = None,
) -> Any:
    """softmax(q k^T * scale) v in float64 with GQA; causal when `offset` is given: query i sees the
    keys up to offset + i (the cached context comes first). `softcap` > 0 caps the scores as Gemma
    does (softcap * tanh(s / softcap)); `window` > 0 keeps the last `window` keys of each query;
    `sinks` (one logit per query head, gpt-oss) joins each row's softmax as a key of value zero,
    as the kernel's running maximum and sum start from it."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if offset is not None:
        i = torch.arange(q.shape[0], device="cuda")[:, None]
        j = torch.arange(k.shape[0], device="cuda")[None, :]
        s = s.masked_fill(j > offset + i, -math.inf)
        if window > 0:
            s = s.masked_fill(offset + i - j >= window, -math.inf)
    if sinks is not None:
        column = sinks.double()[:, None, None].expand(-1, s.shape[1], 1)
        return torch.einsum("hqk,khd->qhd", torch.cat([s, column], -1).softmax(-1)[..., :-1], v)
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


def check_unified_attention(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """vLLM's unified attention (the 2D kernel, or the 3D kernel + reduce_segments) over the flash
    KV-cache layout and a shuffled block table: causal attention of each sequence's new tokens over
    its whole cached sequence, against a float64 reference on the same fp16 inputs."""
    sc = record["shape"]
    softcap, window = _softcap_and_window(record)
    t = _attention_inputs(record, torch)
    run(t)
    q, out, bt = (_role(record, t, r) for r in ("query", "output", "block_table"))
    kc, vc = _role(record, t, "key_cache"), _role(record, t, "value_cache")
    sinks = None
    if record["launches"][0].get("constexprs", {}).get("USE_SINKS"):
        sinks = _role(record, t, "sinks")
    bs, hk, hd = sc["block_size"], sc["num_kv_heads"], sc["head_size"]
    refs, start = [], 0
    for s, (qlen, slen) in enumerate(zip(sc["query_lens"], sc["seq_lens"], strict=True)):
        blocks = bt[s, : math.ceil(slen / bs)].long()
        k = kc[blocks].reshape(-1, hk, hd)[:slen]
        v = vc[blocks].reshape(-1, hk, hd)[:slen]
        q_s = q[start : start + qlen]
        refs.append(_attend(q_s, k, v, sc["sm_scale"], slen - qlen, torch, softcap, window, sinks))
        start += qlen
    return out, torch.cat(refs), ""


def _softcap_and_window(record: dict) -> tuple[float, int]:
    """The score cap and sliding window the record's (first) launch was compiled with."""
    launch = record["launches"][0]
    consts = launch.get("constexprs", {})
    cap = next((a.get("value", 0.0) for a in launch.get("args", []) if a.get("name") == "softcap"), 0.0)
    return (float(cap) if consts.get("USE_SOFTCAP") else 0.0), int(consts.get("SLIDING_WINDOW") or 0)


def check_prefix_prefill(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """prefix_prefill's _fwd_kernel: each sequence's cached context in the paged layout (key
    [blocks, kv_heads, head/x, block, x], value [blocks, kv_heads, head, block]) behind a shuffled
    block table, its new tokens' K/V passed directly; causal over context + new tokens."""
    sc = record["shape"]
    t = _attention_inputs(record, torch)
    run(t)
    q, k_new, v_new, out, bt = (
        _role(record, t, r) for r in ("query", "key", "value", "output", "block_table")
    )
    kc, vc = _role(record, t, "paged_key_cache"), _role(record, t, "paged_value_cache")
    bs, hk, hd = sc["block_size"], sc["num_kv_heads"], sc["head_size"]
    refs, start = [], 0
    for s, (qlen, slen) in enumerate(zip(sc["query_lens"], sc["seq_lens"], strict=True)):
        ctx = slen - qlen
        pos = torch.arange(ctx, device="cuda")
        blk, off = bt[s, pos // bs].long(), pos % bs
        k = torch.cat([kc[blk, :, :, off, :].reshape(ctx, hk, hd), k_new[start : start + qlen]])
        v = torch.cat([vc[blk, :, :, off], v_new[start : start + qlen]])
        refs.append(_attend(q[start : start + qlen], k, v, sc["sm_scale"], ctx, torch))
        start += qlen
    return out, torch.cat(refs), ""


def check_encoder_attention(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """triton_prefill_attention's _fwd_kernel as the encoder runs it: bidirectional attention
    within each of the packed sequences."""
    sc = record["shape"]
    t = _attention_inputs(record, torch)
    run(t)
    q, k, v, out = (_role(record, t, r) for r in ("query", "key", "value", "output"))
    bounds = [0, *accumulate(sc["seq_lens"])]
    refs = [_attend(q[a:b], k[a:b], v[a:b], sc["sm_scale"], None, torch) for a, b in pairwise(bounds)]
    return out, torch.cat(refs), ""


CHECKS: dict[str, Callable[[dict, Callable[[dict], None], Any], tuple[Any, Any, str]]] = {
    "half_atomic_add": check_half_atomic_add,
    "triton_atomic_add": check_triton_atomic_add,
    "triton_atomic_add_old": check_triton_atomic_add_old,
    "triton_atomic_cas": check_triton_atomic_cas,
    "triton_last_program_reduces": check_last_program_reduces,
    "unified_attention_2d": check_unified_attention,
    "unified_attention_3d+reduce_segments": check_unified_attention,
    "prefix_prefill": check_prefix_prefill,
    "encoder_prefill_attention": check_encoder_attention,
}
