"""Quantised-MoE, MoE-LoRA and EAGLE launches: `fused_moe_kernel_gptq_awq` (GPTQ int4/int8 MoE
checkpoints through MoeWNA16), `_fused_moe_lora_kernel` (`--enable-lora` on a MoE model) and the
EAGLE drafter's input kernels (vllm/v1/spec_decode/utils.py).

Mixtral-8x7B sizes as the fused_moe case (hidden 4096, intermediate 14336, 8 experts, top-2),
float16, the w13 GEMM (gate and up projections). No tuned MoE configs ship for these GPUs, so
`get_default_config` decides the tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

from stackforge.verify.kernels.launch import Case, Launch, Tensor

Build = Callable[[ModuleType, int, int], Launch]
HIDDEN, INTER, EXPERTS, TOPK = 4096, 14336, 8, 2


def _routing(tokens: int, bm: int, experts: int = EXPERTS, topk: int = TOPK) -> tuple[int, dict[str, Tensor]]:
    """moe_align_block_size's buffers: padded length (its worst case) and the routing tensors."""
    padded = tokens * topk + experts * (bm - 1)
    return padded, {
        "topk_weights": Tensor("float32", (tokens, topk), role="topk_weights"),
        "sorted_token_ids": Tensor("int32", (padded,), role="sorted_token_ids"),
        "expert_ids": Tensor("int32", (math.ceil(padded / bm),), role="expert_ids"),
        "num_tokens_post_padded": Tensor("int32", (1,), role="num_tokens_post_padded"),
    }


def gptq_moe(tokens: int, bits: int, group: int = 128) -> Build:
    """fused_moe.py:invoke_fused_moe_wna16_triton_kernel. GPTQ MoE layers use MoeWNA16Method
    (gptq.py: GPTQConfig.get_quant_method), whose own min capability (7.0) is never checked there,
    so Pascal reaches it too. Triton runs where should_moe_wna16_use_cuda says no: 8-bit weights,
    or more than 6 routed tokens per expert (a prefill). Weights are uint8 (E, N, K / (8 / bits)),
    scales (E, N, K / group) fp16, symmetric (no zero points: GPTQ's usual sym=True)."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        n, k, m = 2 * INTER, HIDDEN, tokens
        config = mod.get_default_config(m, EXPERTS, n, k, TOPK, f"int{bits}_w{bits}a16", [0, group])
        config = {**config, **mod.get_moe_wna16_block_config(
            config=config, use_moe_wna16_cuda=False, num_valid_tokens=m * TOPK, size_k=k, size_n=n,
            num_experts=n, group_size=group, real_top_k=TOPK, block_size_m=config["BLOCK_SIZE_M"])}  # fmt: skip
        bm, bn = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"]
        a = Tensor("float16", (m, k), role="hidden_states")
        b = Tensor("uint8", (EXPERTS, n, k // (8 // bits)), role="w13_qweight")
        scale = Tensor("float16", (EXPERTS, n, k // group), role="w13_scales")
        c = Tensor("float16", (m, TOPK, n), role="output")
        padded, r = _routing(m, bm)
        em = min(padded, m * TOPK * bm) if m < bm else padded
        args = (
            a, b, c, scale, None, r["topk_weights"], r["sorted_token_ids"], r["expert_ids"],
            r["num_tokens_post_padded"], n, k, em, m * TOPK, a.stride(0), a.stride(1), b.stride(0), b.stride(2),
            b.stride(1), c.stride(1), c.stride(2), scale.stride(0), scale.stride(2), scale.stride(1), 0, 0, 0,
        )  # fmt: skip
        kw = dict(block_k_diviable=k % config["BLOCK_SIZE_K"] == 0, group_size=group, MUL_ROUTED_WEIGHT=False,
                  top_k=TOPK, compute_type=mod.tl.float16, has_zp=False, use_int4_w4a16=bits == 4,
                  use_int8_w8a16=bits == 8, **config)  # fmt: skip
        return Launch(args, kw, (math.ceil(em / bm) * math.ceil(n / bn),),
                      {"tokens": m, "bits": bits, "group": group, "config": config})  # fmt: skip

    return build


def moe_lora(step: str, tokens: int = 64, rank: int = 16, max_loras: int = 4, slices: int = 2) -> Build:
    """fused_moe_lora_op.py:_fused_moe_lora_shrink / _fused_moe_lora_expand for w13 (2 slices: gate,
    up). Config: lora/layers/utils.py:try_get_optimal_moe_lora_config, i.e. get_default_config
    (64x64x32, GROUP_SIZE_M 8 above 8 tokens) with shrink's BLOCK_SIZE_N min(64, rank) and expand's
    BLOCK_SIZE_K max(16, min(32, rank)); NUM_WARPS 4 and NUM_STAGES 3 (add_lora_fused_moe's
    defaults); SPLIT_K 1, so no atomic; no PDL below sm_90 (supports_pdl)."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        m = tokens
        cfg = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}
        if m <= EXPERTS:
            cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
        padded, r = _routing(m, cfg["BLOCK_SIZE_M"])
        sorted_ids = Tensor("int32", (max_loras, padded), role="sorted_token_ids")
        expert_ids = Tensor("int32", (max_loras, math.ceil(padded / cfg["BLOCK_SIZE_M"])), role="expert_ids")
        common = (
            r["topk_weights"],
            sorted_ids,
            expert_ids,
            Tensor("int32", (max_loras,), role="num_tokens_post_padded"),
        )
        meta = (EXPERTS, Tensor("int32", (max_loras,), role="lora_ids"),
                Tensor("int32", (max_loras + 1,), role="adapter_enabled"))  # fmt: skip
        ptrs = Tensor("uint64", (slices,), role="lora_ptrs")
        small = Tensor("float16", (slices, m, TOPK, rank), role="a_intermediate_cache1")
        if step == "shrink":
            cfg["BLOCK_SIZE_N"] = min(cfg["BLOCK_SIZE_N"], 1 << (rank - 1).bit_length())
            x = Tensor("float16", (m, HIDDEN), role="hidden_states")
            weight = Tensor("float16", (max_loras, EXPERTS, rank, HIDDEN), role="lora_a")
            a, c, n, k = x, small, rank, HIDDEN
            sizes, slice_a, top_k, primary = (x.stride(0), x.stride(1)), 1, TOPK, True
        else:
            cfg["BLOCK_SIZE_K"] = max(16, min(cfg["BLOCK_SIZE_K"], 1 << (rank - 1).bit_length()))
            a = Tensor("float16", (slices * m * TOPK, rank), role="a_intermediate_cache1")
            weight = Tensor("float16", (max_loras, EXPERTS, INTER, rank), role="lora_b")
            c = Tensor("float16", (slices, m, TOPK, INTER), role="b_intermediate_cache1")
            n, k, sizes, slice_a, top_k, primary = INTER, rank, (rank, 1), slices, 1, False
        args = (
            a, ptrs, c, *common, n, k, padded, m * TOPK, *meta, *sizes, weight.stride(0), weight.stride(1),
            weight.stride(3), weight.stride(2), c.stride(2), c.stride(3), sorted_ids.stride(0), expert_ids.stride(0),
        )  # fmt: skip
        kw = dict(slice_a_size=a.shape[0] * a.shape[1] // slice_a, slice_c_size=math.prod(c.shape) // slices,
                  num_slice_a=slice_a, num_slice_c=slices, top_k=top_k, MUL_ROUTED_WEIGHT=False, IS_PRIMARY=primary,
                  **cfg, num_warps=4, num_stages=3, SPLIT_K=1, USE_GDC=False, launch_pdl=False)  # fmt: skip
        grid = (
            math.ceil(padded / cfg["BLOCK_SIZE_M"]) * math.ceil(n / cfg["BLOCK_SIZE_N"]),
            slices,
            max_loras,
        )
        return Launch(
            args, kw, grid, {"tokens": m, "rank": rank, "max_loras": max_loras, "step": step, "config": cfg}
        )

    return build


# --- EAGLE (V1 model runner, padded drafter batch: the default, disable_padded_drafter_batch False) ---

EAGLE = {"batch": 8, "num_spec": 3, "vocab": 128256}  # Llama-3-8B + an EAGLE-3 head drafting 3 tokens


def eagle_next_token(mod: ModuleType, arch: int, smem: int) -> Launch:
    """eagle.py:EagleProposer.prepare_next_token_ids_padded: one program per request."""
    b, t = EAGLE["batch"], EAGLE["num_spec"] + 1
    sampled = Tensor("int32", (b, t), role="sampled_token_ids")
    args = (sampled, Tensor("bool", (b,), role="discard_request_mask"), Tensor("int32", (b,), role="backup_tokens"),
            Tensor("int32", (b,), role="next_token_ids"), Tensor("int32", (b,), role="valid_sampled_tokens_count"),
            EAGLE["vocab"], t, b, sampled.stride(0))  # fmt: skip
    return Launch(args, {"BLOCK_SIZE_TOKENS": 1 << (t - 1).bit_length()}, (b,), dict(EAGLE))


def eagle_inputs(mod: ModuleType, arch: int, smem: int) -> Launch:
    """eagle.py:EagleProposer.prepare_inputs_padded: one program per request."""
    b = EAGLE["batch"]
    args = (Tensor("int32", (b,), role="cu_num_draft_tokens"), Tensor("int32", (b,), role="valid_sampled_tokens_count"),
            Tensor("int32", (b + 1,), role="query_start_loc"), Tensor("int32", (b,), role="token_indices_to_sample"),
            Tensor("int32", (b,), role="num_rejected_tokens"), b)  # fmt: skip
    return Launch(args, {}, (b,), dict(EAGLE))


def moe_cases() -> list[Case]:
    moe = "vllm.model_executor.layers.fused_moe.fused_moe"
    lora = "vllm.lora.ops.triton_ops.fused_moe_lora_op"
    spec = "vllm.v1.spec_decode.utils"
    table = [
        ("fused_moe_gptq_awq", moe, "fused_moe_kernel_gptq_awq", "fused_moe.py:invoke_fused_moe_wna16_triton_kernel",
         "GPTQ int4 MoE checkpoints (MoeWNA16), prefill", "Mixtral-8x7B GPTQ int4 g128: 256 tokens", "int4-m256",
         "model", gptq_moe(256, 4)),
        ("fused_moe_gptq_awq", moe, "fused_moe_kernel_gptq_awq", "fused_moe.py:invoke_fused_moe_wna16_triton_kernel",
         "GPTQ int8 MoE checkpoints (MoeWNA16), decode", "Mixtral-8x7B GPTQ int8 g128: 4 tokens", "int8-m4",
         "model", gptq_moe(4, 8)),
        ("fused_moe_lora", lora, "_fused_moe_lora_kernel", "fused_moe_lora_op.py:_fused_moe_lora_shrink",
         "LoRA adapters on MoE models (--enable-lora)", "w13 shrink: 64 tokens rank 16, 4 LoRAs", "shrink",
         "option", moe_lora("shrink")),
        ("fused_moe_lora", lora, "_fused_moe_lora_kernel", "fused_moe_lora_op.py:_fused_moe_lora_expand",
         "LoRA adapters on MoE models (--enable-lora)", "w13 expand: 64 tokens rank 16, 4 LoRAs", "expand",
         "option", moe_lora("expand")),
        ("eagle_prepare_next_token", spec, "eagle_prepare_next_token_padded_kernel",
         "eagle.py:EagleProposer.prepare_next_token_ids_padded", "EAGLE speculative decoding",
         "8 requests x 3 draft tokens, vocab 128256", "b8", "option", eagle_next_token),
        ("eagle_prepare_inputs", spec, "eagle_prepare_inputs_padded_kernel",
         "eagle.py:EagleProposer.prepare_inputs_padded", "EAGLE speculative decoding", "8 requests", "b8", "option",
         eagle_inputs),
    ]  # fmt: skip
    return [Case(f"{k}/{tag}", k, mod, fn, launcher, reached, shape, build, reach=reach)
            for k, mod, fn, launcher, reached, shape, tag, reach, build in table]  # fmt: skip
