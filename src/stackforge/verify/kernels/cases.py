"""Which vLLM Triton kernels the kernel audit compiles, and with which arguments.

Each `Case` rebuilds one launch the way the audited tree's vLLM Python launcher makes it (the file
and function named in `Case.launcher`; where trees differ, the case asks the tree, see
`cases_attention`): the same positional/keyword arguments, tensor dtypes and
strides, constexprs, num_warps and num_stages, for a concrete scenario (head size, heads, KV
block size, sequence lengths). Triton's own binder then specialises the arguments exactly as at a
real launch (ints equal to 1 become constexprs, 16-aligned pointers and ints get divisibility
hints), so the audit compiles what a user's GPU would get.

Block sizes come from the loaded vLLM module: when our series is applied, the launchers choose
them with a helper from the device's shared memory (`fwd_kernel_block_sizes`,
`prefill_block_size`); the audit calls that helper with the limit of the target arch, and on an
unpatched tree it uses the constants the unpatched launcher hard-codes.

Tensors are `Tensor` descriptions (dtype, shape, strides, role) that Triton reads like torch
tensors; `--save-ptx` writes them out so the numerics run can allocate real ones.
"""

from __future__ import annotations

import dataclasses

from stackforge.verify.kernels.cases_attention import (
    HEAD_SIZES,
    Attn,
    reduce_segments,
    reshape_and_cache,
    unified_2d,
    unified_3d,
)
from stackforge.verify.kernels.cases_gdn import gdn_cases
from stackforge.verify.kernels.cases_moe import moe_cases
from stackforge.verify.kernels.cases_other import other_cases
from stackforge.verify.kernels.cases_prefill import (
    encoder_prefill,
    paged_attention_2d,
    prefix_prefill,
    prefix_prefill_alibi,
)
from stackforge.verify.kernels.cases_ssm import mamba2_cases
from stackforge.verify.kernels.launch import Case
from stackforge.verify.kernels.models import Model, models, with_block

__all__ = ["HEAD_SIZES", "Case", "all_cases", "attention_cases", "other_cases"]


# --- attention: the catalogue -------------------------------------------------------------------------------

_OPS = "vllm.v1.attention.ops."
_TRITON_ATTN = "TRITON_ATTN (default on sm < 80)"
_ROCM_ATTN = "ROCM_ATTN (--attention-backend ROCM_ATTN; no capability check)"
ROCM_ONLY = ("prefix_prefill", "prefix_prefill_alibi", "paged_attention_2d")
# Names a kernel has in other trees: `Case.find` takes the first the tree defines (the 2D and 3D
# unified kernels are one `kernel_unified_attention` with an IS_3D constexpr in some trees).
ALTERNATIVES = {"kernel_unified_attention_2d": ("kernel_unified_attention",),
                "kernel_unified_attention_3d": ("kernel_unified_attention",)}  # fmt: skip
# Seconds of a cold compile (Triton for sm_60, then ptxas alone for sm_61) measured by a cold
# `audit kernels -e pascal` on 2 shared cores (docs/kernel-audit.md); only the order matters:
# the queue hands out the most expensive first. ROCM_ATTN kernels: from the audit before they
# became opt-in (prefix prefill was the slowest by far). Unlisted cases count as 1.
COST = {"sample_recovered_tokens/v128256": 22.8, "sample_recovered_tokens/v32000": 8.9,
        "encoder_prefill_attention/h64": 7.7, "lora_shrink/s3": 7.1, "lora_shrink/s1": 5.8,
        "unified_attention_2d/h256": 5.7, "unified_attention_3d/h256": 4.0, "lora_expand/s3": 3.8,
        "prefix_prefill": 25.0, "prefix_prefill_alibi": 15.0, "paged_attention_2d": 10.0,
        # autotuned (one case per config): sm_61 compiles of the whole kernel on this machine, the
        # kernel's mean; chunk_scaled_dot_kkt's BK=128 two-warp configs took 36-41 s each
        "fla_chunk_scaled_dot_kkt/qwen3next@c18": 40.0, "fla_chunk_scaled_dot_kkt/qwen3next@c19": 40.0,
        "fla_chunk_scaled_dot_kkt/qwen3next@c20": 40.0, "fla_chunk_scaled_dot_kkt": 6.0, "fla_chunk_delta_h": 8.0,
        "fla_recompute_w_u": 5.0, "fla_chunk_o": 3.0, "fla_solve_tril": 2.0, "ssd_chunk_scan": 6.0,
        "ssd_chunk_state": 3.0, "ssd_bmm_chunk": 3.0, "ssd_chunk_cumsum": 2.0}  # fmt: skip


def cost(case: Case) -> float:
    return COST.get(case.id, COST.get(case.kernel, 1.0 if not case.opt_in else 10.0))


def _reach(kernel: str) -> dict[str, str]:
    if kernel in ROCM_ONLY:  # vLLM picks TRITON_ATTN on sm < 80; ROCM_ATTN only when asked for
        return {"reach": "not-default-backend", "opt_in": "rocm_attn"}
    if kernel == "encoder_prefill_attention":
        return {"reach": "model"}  # encoder / encoder-only layers (BERT-style, Whisper, ViT towers)
    return {"reach": "default"}


def attention_cases(head_sizes: tuple[int, ...] = HEAD_SIZES) -> list[Case]:
    cases = []
    for h in head_sizes:
        a = Attn(h)
        shape = f"head={h} q_heads=32 kv_heads=8 block=16 fp16"
        table = (
            ("reshape_and_cache_flash", "triton_reshape_and_cache_flash", "reshape_and_cache_kernel_flash",
             "triton_reshape_and_cache_flash.py:triton_reshape_and_cache_flash", _TRITON_ATTN + ", every step",
             reshape_and_cache(a)),
            ("unified_attention_2d", "triton_unified_attention", "kernel_unified_attention_2d",
             "triton_unified_attention.py:unified_attention", _TRITON_ATTN + ", prefill and mixed batches",
             unified_2d(a)),
            ("unified_attention_3d", "triton_unified_attention", "kernel_unified_attention_3d",
             "triton_unified_attention.py:unified_attention", _TRITON_ATTN + ", decode-only batches",
             unified_3d(a)),
            ("reduce_segments", "triton_unified_attention", "reduce_segments",
             "triton_unified_attention.py:unified_attention", _TRITON_ATTN + ", after the 3D kernel",
             reduce_segments(a)),
            ("encoder_prefill_attention", "triton_prefill_attention", "_fwd_kernel",
             "triton_prefill_attention.py:context_attention_fwd", _TRITON_ATTN + ", encoder layers",
             encoder_prefill(a)),
            ("prefix_prefill", "prefix_prefill", "_fwd_kernel", "prefix_prefill.py:context_attention_fwd",
             _ROCM_ATTN + ", prefill", prefix_prefill(a)),
            ("prefix_prefill_alibi", "prefix_prefill", "_fwd_kernel_alibi",
             "prefix_prefill.py:context_attention_fwd", _ROCM_ATTN + ", prefill of ALiBi models",
             prefix_prefill_alibi(a)),
            ("paged_attention_2d", "chunked_prefill_paged_decode", "kernel_paged_attention_2d",
             "chunked_prefill_paged_decode.py:chunked_prefill_paged_decode", _ROCM_ATTN + ", decode",
             paged_attention_2d(a)),
        )  # fmt: skip
        for kernel, module, function, launcher, reached_by, build in table:
            cases.append(
                Case(
                    f"{kernel}/h{h}",
                    kernel,
                    _OPS + module,
                    function,
                    launcher,
                    reached_by,
                    shape,
                    build,
                    **_reach(kernel),
                    alternatives=ALTERNATIVES.get(function, ()),
                )
            )
    return cases


# TRITON_ATTN launches of the model list (`model_table`, turned into scenarios by `models`).
_MODEL_KERNELS = (
    ("reshape_and_cache_flash", "triton_reshape_and_cache_flash", "reshape_and_cache_kernel_flash", reshape_and_cache),
    ("unified_attention_2d", "triton_unified_attention", "kernel_unified_attention_2d", unified_2d),
    ("unified_attention_3d", "triton_unified_attention", "kernel_unified_attention_3d", unified_3d),
    ("reduce_segments", "triton_unified_attention", "reduce_segments", reduce_segments),
)  # fmt: skip


def model_cases(table: list[Model] | None = None) -> list[Case]:
    """Each listed model's TRITON_ATTN launches, per kind of attention layer, in float16 and in
    float32; `select_cases` keeps the dtype vLLM picks for it (`dtypes.auto_dtype`: float32 for the
    families vLLM refuses in float16). Ids: `<kernel>/<key>[-full]-fp16`, "-full" for the global
    layers of a model whose other layers slide."""
    cases = []
    for m in table if table is not None else models():
        for dtype in ("float16", "float32"):
            variants = m.attention(dtype)
            for kind, a in variants:
                layer = "-full" if kind == "full" and len(variants) > 1 else ""
                extra = "".join([f" window={a.sliding_window}"] * bool(a.sliding_window)
                                + [f" softcap={a.softcap:g}"] * bool(a.softcap) + [" sinks"] * a.sinks
                                + [" block=hybrid"] * bool(m.hybrid))  # fmt: skip
                shape = (f"{m.name}{' global layers' if layer else ''}: head={a.head_size} "
                         f"q_heads={a.num_q_heads} kv_heads={a.num_kv_heads}{extra} {dtype}")  # fmt: skip
                tag = f"{m.key}{layer}-{'fp32' if dtype == 'float32' else 'fp16'}"
                for kernel, module, function, build in _MODEL_KERNELS:
                    cases.append(Case(f"{kernel}/{tag}", kernel, _OPS + module, function,
                                      "triton_attn.py:TritonAttentionImpl.forward", f"{_TRITON_ATTN}, {m.name}",
                                      shape, with_block(m, a, build), reach="model", model=m.model_type,
                                      dtype=dtype, alternatives=ALTERNATIVES.get(function, ())))  # fmt: skip
    return cases


def all_cases(head_sizes: tuple[int, ...] = HEAD_SIZES) -> list[Case]:
    cases = (
        attention_cases(head_sizes)
        + model_cases()
        + other_cases()
        + mamba2_cases()
        + gdn_cases()
        + moe_cases()
    )
    return [dataclasses.replace(c, cost=cost(c)) for c in cases]
