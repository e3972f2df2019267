"""vLLM's other Triton launches: LoRA (punica), fused MoE, rejection sampling, penalties, mrope."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from stackforge.verify.kernels.launch import Case, Launch, Tensor
from stackforge.verify.kernels.tree import launcher_literal

# --- LoRA (punica Triton ops: the LoRA path on every CUDA GPU) ------------------------------------


@dataclass(frozen=True)
class Lora:
    """64 tokens over 4 adapters (max_loras=4: lora_ids has 5 entries), rank 16, hidden 4096;
    `slices` 1 is o_proj, 3 is qkv_proj (4096/1024/1024 with 8 KV heads)."""

    slices: int
    tokens: int = 64
    hidden: int = 4096
    rank: int = 16
    max_loras: int = 5

    @property
    def slice_sizes(self) -> tuple[int, ...]:
        return (self.hidden,) if self.slices == 1 else (self.hidden, self.hidden // 4, self.hidden // 4)

    def meta(self) -> dict[str, Tensor]:
        return {
            "token_indices_sorted_by_lora_ids": Tensor("int32", (self.tokens,), role="lora_token_indices"),
            "num_tokens_per_lora": Tensor("int32", (self.max_loras,), role="lora_num_tokens"),
            "lora_token_start_loc": Tensor("int32", (self.max_loras + 1,), role="lora_start_loc"),
            "lora_ids": Tensor("int32", (self.max_loras,), role="lora_ids"),
        }


def lora_shrink(lo: Lora) -> Callable[[ModuleType, int, int], Launch]:
    """lora_shrink_op._lora_shrink with get_lora_op_configs' default "shrink" config (no tuned
    configs ship for these GPUs): SPLIT_K=64 below 128 tokens, whose partial sums meet in
    tl.atomic_add(..., sem="relaxed") on the fp32 output."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        x = Tensor("float16", (lo.tokens, lo.hidden), role="input")
        weight = Tensor("float16", (lo.max_loras - 1, lo.rank, lo.hidden), role="lora_a")
        ptr = weight if lo.slices == 1 else Tensor("uint64", (lo.slices,), role="lora_a_ptrs")
        y = Tensor("float32", (lo.slices, lo.tokens, lo.rank), role="output_zeroed")
        small = lo.tokens < 128
        block_m, block_n, block_k, split_k = 32, 16, (256 if small else 32), (64 if small else 8)
        m = lo.meta()
        args = (
            x, ptr, y, lo.tokens, lo.rank, lo.hidden, m["token_indices_sorted_by_lora_ids"],
            m["num_tokens_per_lora"], m["lora_token_start_loc"], m["lora_ids"], 1.0, x.stride(0), x.stride(1),
            *weight.stride(), *y.stride(), block_m, block_n, block_k, lo.hidden % (block_k * split_k) == 0,
            split_k, 8, lo.slices, False,
        )  # fmt: skip
        grid = (
            split_k * math.ceil(lo.tokens / block_m) * math.ceil(lo.rank / block_n),
            lo.slices,
            lo.max_loras,
        )
        kw = {"num_warps": 4, "num_ctas": 1, "num_stages": 2, "launch_pdl": False}
        return Launch(args, kw, grid, {"tokens": lo.tokens, "hidden": lo.hidden, "rank": lo.rank,
                                       "slices": lo.slices, "max_loras": lo.max_loras, "split_k": split_k})  # fmt: skip

    return build


def lora_expand(lo: Lora) -> Callable[[ModuleType, int, int], Launch]:
    """lora_expand_op._lora_expand with the default "expand" config; its input is the fp32 shrink
    buffer, so CAST_TYPE is on; add_inputs as in LoRA linear layers."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        sizes = lo.slice_sizes
        x = Tensor("float32", (lo.slices, lo.tokens, lo.rank), role="input")
        out = Tensor("float16", (lo.tokens, sum(sizes)), role="output_accumulate")
        weight = Tensor("float16", (lo.max_loras - 1, sizes[0], lo.rank), role="lora_b")
        if lo.slices == 1:
            ptr, slice_start, strides, hidden, same = weight, 0, weight.stride(), sizes[0], True
        else:
            ptr = Tensor("uint64", (lo.slices,), role="lora_b_ptrs")
            slice_start = Tensor("uint64", (lo.slices,), role="slice_offsets")
            strides = tuple(Tensor("int64", (lo.slices,), role=f"lora_b_stride_{d}") for d in range(3))
            hidden, same = Tensor("int64", (lo.slices,), role="slice_sizes"), False
        block_m, block_n, block_k = 64, 128, 16
        m = lo.meta()
        args = (
            x, ptr, out, lo.tokens, max(sizes), lo.rank, m["token_indices_sorted_by_lora_ids"],
            m["num_tokens_per_lora"], m["lora_token_start_loc"], m["lora_ids"], slice_start, *x.stride(),
            *strides, *out.stride(), hidden, block_m, block_n, block_k, lo.rank % block_k == 0, True, True,
            lo.slices, same, False,
        )  # fmt: skip
        grid = (math.ceil(lo.tokens / block_m) * math.ceil(max(sizes) / block_n), lo.slices, lo.max_loras)
        kw = {"num_warps": 4, "num_ctas": 1, "num_stages": 2, "launch_pdl": False}
        return Launch(args, kw, grid, {"tokens": lo.tokens, "slice_sizes": list(sizes), "rank": lo.rank,
                                       "max_loras": lo.max_loras})  # fmt: skip

    return build


# --- fused MoE (unquantised fp16 experts) ----------------------------------------------------------


def fused_moe(tokens: int, experts: int = 8, topk: int = 2, hidden: int = 4096, inter: int = 14336):
    """fused_moe.invoke_fused_moe_triton_kernel for the w13 GEMM, with get_default_config (no tuned
    configs ship for these GPUs); Mixtral-8x7B-like sizes. The launcher passes the whole config
    (`**config`: num_warps and num_stages too where the tree's default config sets them) with
    SPLIT_K 1, and SWAP_AB only for fp8 w8a8."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        config = dict(mod.get_default_config(tokens, experts, inter, hidden, topk, None))
        bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config.pop("BLOCK_SIZE_K")
        n = 2 * inter
        a = Tensor("float16", (tokens, hidden), role="hidden_states")
        b = Tensor("float16", (experts, n, hidden), role="w13")
        c = Tensor("float16", (tokens, topk, n), role="output")
        padded = tokens * topk + experts * (bm - 1)  # moe_align_block_size's worst case
        em = min(padded, tokens * topk * bm) if tokens < bm else padded
        args = (
            a, b, c, None, None, None, Tensor("float32", (tokens, topk), role="topk_weights"),
            Tensor("int32", (padded,), role="sorted_token_ids"), Tensor("int32", (math.ceil(padded / bm),), role="expert_ids"),
            Tensor("int32", (1,), role="num_tokens_post_padded"), n, hidden, em, tokens * topk,
            a.stride(0), a.stride(1), b.stride(0), b.stride(2), b.stride(1), c.stride(1), c.stride(2),
            0, 0, 0, 0, 0, 0, 0, 0, 0,
        )  # fmt: skip
        kw = dict(
            MUL_ROUTED_WEIGHT=False, top_k=topk, compute_type=mod.tl.float16, use_fp8_w8a8=False,
            use_int8_w8a8=False, use_int8_w8a16=False, per_channel_quant=False, naive_block_assignment=False,
            HAS_BIAS=False, BLOCK_SIZE_K=bk, SWAP_AB=False, USE_TD=False,
        ) | config | {"SPLIT_K": 1}  # fmt: skip
        grid = (math.ceil(em / bm) * math.ceil(n / bn),)
        return Launch(args, kw, grid, {"tokens": tokens, "experts": experts, "topk": topk, "hidden": hidden,
                                       "intermediate": inter, "config": config | {"BLOCK_SIZE_K": bk}})  # fmt: skip

    return build


# --- sampling and speculative decoding ------------------------------------------------------------

SPEC = {"batch": 8, "max_spec_len": 4}


def rejection_greedy(mod: ModuleType, arch: int, smem: int) -> Launch:
    """A batch mixing greedy and random requests (is_greedy a tensor, uniform probabilities
    drawn); no synthetic acceptance rates."""
    b, s = SPEC["batch"], SPEC["max_spec_len"]
    kw = dict(
        output_token_ids_ptr=Tensor("int32", (b, s + 1), role="output_token_ids"),
        cu_num_draft_tokens_ptr=Tensor("int32", (b,), role="cu_num_draft_tokens"),
        draft_token_ids_ptr=Tensor("int32", (b * s,), role="draft_token_ids"),
        target_argmax_ptr=Tensor("int64", (b * s,), role="target_argmax"),
        bonus_token_ids_ptr=Tensor("int32", (b, 1), role="bonus_token_ids"),
        is_greedy_ptr=Tensor("bool", (b,), role="is_greedy"), max_spec_len=s,
        uniform_probs_ptr=Tensor("float64", (b * s,), role="uniform_probs"),
        synthetic_conditional_rates_ptr=None, SYNTHETIC_MODE=False,
    )  # fmt: skip
    return Launch((), kw, (b,), dict(SPEC))


def rejection_random(vocab: int) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, s = SPEC["batch"], SPEC["max_spec_len"]
        kw = dict(
            output_token_ids_ptr=Tensor("int32", (b, s + 1), role="output_token_ids"),
            cu_num_draft_tokens_ptr=Tensor("int32", (b,), role="cu_num_draft_tokens"),
            draft_token_ids_ptr=Tensor("int32", (b * s,), role="draft_token_ids"),
            draft_probs_ptr=Tensor("float32", (b * s, vocab), role="draft_probs"),
            target_probs_ptr=Tensor("float32", (b * s, vocab), role="target_probs"),
            bonus_token_ids_ptr=Tensor("int32", (b, 1), role="bonus_token_ids"),
            recovered_token_ids_ptr=Tensor("int32", (b * s,), role="recovered_token_ids"),
            uniform_probs_ptr=Tensor("float64", (b * s,), role="uniform_probs"),  # generate_uniform_probs
            is_greedy_ptr=Tensor("bool", (b,), role="is_greedy"), max_spec_len=s, vocab_size=vocab,
            synthetic_conditional_rates_ptr=None, NO_DRAFT_PROBS=False, SYNTHETIC_MODE=False,
        )  # fmt: skip
        return Launch((), kw, (b,), SPEC | {"vocab": vocab})

    return build


def recovered_tokens(vocab: int) -> Callable[[ModuleType, int, int], Launch]:
    """One tree passes the exponential draws q and the whole vocabulary as one block
    (PADDED_VOCAB_SIZE); another their reciprocal inv_q, in float32 unless fp64 Gumbel is asked
    for, and the vocabulary in blocks of the BLOCK_SIZE its launcher sets."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, s = SPEC["batch"], SPEC["max_spec_len"]
        block = launcher_literal(mod, "_sample_recovered_tokens", "BLOCK_SIZE")
        if block is None and "BLOCK_SIZE" in mod.sample_recovered_tokens_kernel.arg_names:
            raise ValueError("the kernel takes BLOCK_SIZE and _sample_recovered_tokens sets no literal one")
        kw = dict(
            output_token_ids_ptr=Tensor("int32", (b * s,), role="recovered_token_ids"),
            cu_num_draft_tokens_ptr=Tensor("int32", (b,), role="cu_num_draft_tokens"),
            draft_token_ids_ptr=Tensor("int32", (b * s,), role="draft_token_ids"), draft_probs_ptr=None,
            target_probs_ptr=Tensor("float32", (b * s, vocab), role="target_probs"),
            q_ptr=Tensor("float32", (b, vocab), role="exponential_q"),
            inv_q_ptr=Tensor("float32", (b, vocab), role="exponential_q_reciprocal"), vocab_size=vocab,
            PADDED_VOCAB_SIZE=1 << (vocab - 1).bit_length(), BLOCK_SIZE=block, NO_DRAFT_PROBS=True,
            USE_FP64_GUMBEL=False,
        )  # fmt: skip
        return Launch((), kw, (b, s), SPEC | {"vocab": vocab})

    return build


def expand_spec(mod: ModuleType, arch: int, smem: int) -> Launch:
    b = SPEC["batch"]
    args = (
        Tensor("float32", (b * SPEC["max_spec_len"],), role="expanded"), Tensor("float32", (b,), role="per_request"),
        Tensor("int32", (b,), role="cu_num_tokens"), 0, 0,
    )  # fmt: skip
    return Launch(args, {"MAX_NUM_TOKENS": mod.MAX_SPEC_LEN}, (b,), dict(SPEC))


def bincount(mod: ModuleType, arch: int, smem: int) -> Launch:
    """V2 model runner (VLLM_USE_V2_MODEL_RUNNER=1) penalties: tl.atomic_or / tl.atomic_add on i32.
    One tree passes one request's prefill tokens; another the requests' rows of the runner's
    state (all_token_ids [max_num_reqs, max_model_len], per-request lengths) through an int64
    index map, one program row per request."""
    vocab, prompt, prefill, reqs, max_len = 128256, 3000, 3100, 256, 8192
    blocks = math.ceil(prefill / 1024)
    kw = dict(
        prefill_token_ids_ptr=Tensor("int32", (prefill,), role="token_ids"), prefill_len=prefill,
        prompt_len=prompt, expanded_idx_mapping_ptr=Tensor("int64", (1,), role="request_index"),
        all_token_ids_ptr=Tensor("int32", (reqs, max_len), role="token_ids"), all_token_ids_stride=max_len,
        prompt_len_ptr=Tensor("int32", (reqs,), role="prompt_len"),
        prefill_len_ptr=Tensor("int32", (reqs,), role="prefill_len"),
        prompt_bin_mask_ptr=Tensor("int32", (reqs, math.ceil(vocab / 32)), role="bin_mask_zeroed"),
        prompt_bin_mask_stride=math.ceil(vocab / 32),
        output_bin_counts_ptr=Tensor("int32", (reqs, vocab), role="bin_counts_zeroed"),
        output_bin_counts_stride=vocab, BLOCK_SIZE=1024,
    )  # fmt: skip
    per_request = "expanded_idx_mapping_ptr" in mod._bincount_kernel.arg_names
    if not per_request:  # one request's tokens: the bins of that request only
        kw |= dict(prompt_bin_mask_ptr=Tensor("int32", (vocab // 32,), role="bin_mask_zeroed"),
                   output_bin_counts_ptr=Tensor("int32", (vocab,), role="bin_counts_zeroed"))  # fmt: skip
    grid = (1, blocks) if per_request else (blocks,)
    return Launch((), kw, grid, {"vocab": vocab, "prompt_len": prompt, "prefill_len": prefill})


def mrope(mod: ModuleType, arch: int, smem: int) -> Launch:
    """Qwen2-VL-style multimodal rotary embedding (Qwen2.5-VL-7B: 28/4 heads of 128, sections
    16/24/24, NeoX-style rotation over the whole head)."""
    tokens, qh, kh, hd = 64, 28, 4, 128
    q = Tensor("float16", (tokens, qh * hd), role="query")
    k = Tensor("float16", (tokens, kh * hd), role="key")
    kw = dict(
        q_ptr=q, k_ptr=k, cos=Tensor("float16", (3, tokens, hd // 2), role="cos"),
        sin=Tensor("float16", (3, tokens, hd // 2), role="sin"), num_tokens=tokens, q_token_stride=q.stride(0),
        k_token_stride=k.stride(0), n_qh=qh, n_kh=kh, hd=hd, rd=hd, pad_n_qh=32, pad_n_kh=4, pad_hd=hd,
        pad_rd=hd, mrope_section_t=16, mrope_section_h=24, mrope_section_w=24, is_interleaved=False,
        is_neox_style=True, num_warps=4,
    )  # fmt: skip
    return Launch((), kw, (tokens,), {"tokens": tokens, "q_heads": qh, "kv_heads": kh, "head_size": hd})


REACH = {"lora_shrink": "option", "lora_expand": "option", "fused_moe": "model",
         "rejection_greedy_sample": "option", "rejection_random_sample": "option",
         "sample_recovered_tokens": "option", "expand_spec": "option", "bincount": "option", "mrope": "model"}  # fmt: skip


def other_cases() -> list[Case]:
    lora = "vllm.lora.ops.triton_ops."
    moe = "vllm.model_executor.layers.fused_moe.fused_moe"
    rs = "vllm.v1.sample.rejection_sampler"
    table = [
        ("lora_shrink", lora + "lora_shrink_op", "_lora_shrink_kernel", "lora_shrink_op.py:_lora_shrink",
         "LoRA adapters (--enable-lora)", "o_proj: 64 tokens rank 16 hidden 4096", "s1", lora_shrink(Lora(1))),
        ("lora_shrink", lora + "lora_shrink_op", "_lora_shrink_kernel", "lora_shrink_op.py:_lora_shrink",
         "LoRA adapters (--enable-lora)", "qkv_proj: 3 slices", "s3", lora_shrink(Lora(3))),
        ("lora_expand", lora + "lora_expand_op", "_lora_expand_kernel", "lora_expand_op.py:_lora_expand",
         "LoRA adapters (--enable-lora)", "o_proj: 64 tokens rank 16 hidden 4096", "s1", lora_expand(Lora(1))),
        ("lora_expand", lora + "lora_expand_op", "_lora_expand_kernel", "lora_expand_op.py:_lora_expand",
         "LoRA adapters (--enable-lora)", "qkv_proj: 3 slices 4096/1024/1024", "s3", lora_expand(Lora(3))),
        ("fused_moe", moe, "fused_moe_kernel", "fused_moe.py:invoke_fused_moe_triton_kernel",
         "MoE models, unquantised fp16 experts", "decode: 4 tokens, 8 experts top-2", "m4", fused_moe(4)),
        ("fused_moe", moe, "fused_moe_kernel", "fused_moe.py:invoke_fused_moe_triton_kernel",
         "MoE models, unquantised fp16 experts", "prefill: 256 tokens", "m256", fused_moe(256)),
        ("rejection_greedy_sample", rs, "rejection_greedy_sample_kernel", "rejection_sampler.py:rejection_sample",
         "speculative decoding", "8 requests x 4 draft tokens", "b8", rejection_greedy),
        ("rejection_random_sample", rs, "rejection_random_sample_kernel", "rejection_sampler.py:rejection_sample",
         "speculative decoding", "vocab 32000", "v32000", rejection_random(32000)),
        ("sample_recovered_tokens", rs, "sample_recovered_tokens_kernel",
         "rejection_sampler.py:sample_recovered_tokens", "speculative decoding (ngram: no draft probs)",
         "vocab 32000", "v32000", recovered_tokens(32000)),
        ("sample_recovered_tokens", rs, "sample_recovered_tokens_kernel",
         "rejection_sampler.py:sample_recovered_tokens", "speculative decoding (ngram: no draft probs)",
         "vocab 128256", "v128256", recovered_tokens(128256)),
        ("expand_spec", rs, "expand_kernel", "rejection_sampler.py:expand_batch_to_tokens", "speculative decoding",
         "8 requests", "b8", expand_spec),
        ("bincount", "vllm.v1.worker.gpu.sample.penalties", "_bincount_kernel", "penalties.py:bincount",
         "V2 model runner penalties (VLLM_USE_V2_MODEL_RUNNER=1)", "prompt 3000 of 3100 tokens", "p3100", bincount),
        ("mrope", "vllm.model_executor.layers.rotary_embedding.mrope", "_triton_mrope_forward",
         "mrope.py:triton_mrope", "Qwen2/2.5-VL multimodal RoPE", "64 tokens 28/4 heads of 128", "qwen2.5vl", mrope),
    ]  # fmt: skip
    return [Case(f"{k}/{tag}", k, mod, fn, launcher, reached, shape, build, reach=REACH[k])
            for k, mod, fn, launcher, reached, shape, tag, build in table]  # fmt: skip
