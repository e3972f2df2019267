"""The model list the kernel audit launches TRITON_ATTN for: plain data, one row per model.

Plain Python rather than YAML so that the audit's workers import it like any module (no package
data to ship, no parser, no file to find in an installed wheel) and a typo is an import error.
`stackforge.verify.kernels.models` turns the rows into cases; the values are read nowhere else.

Each row: `key` (the cases' tag: `unified_attention_2d/<key>-fp16`), vLLM's `model_type` (what
`dtypes.auto_dtype` decides the dtype from), `name`, and from the published config.json:
`head_dim`, `num_attention_heads`, `num_key_value_heads`, `sliding_window` (None: none) and which
attention layers use it (`layers`: "sliding", "full" or both, as vLLM builds them), the attention
logit softcap (`softcap`, 0: none), `sinks` (vLLM's model gives every attention layer sinks).
Hybrid attention+mamba rows carry `hybrid`: the architecture (vLLM's registry name) and the
config fields its `get_mamba_state_shape_from_config` reads; the attention KV block size follows
from them (`models.hybrid_block_size`), it is not written here. `reaches`: kernels other than
attention the model reaches that no case names by this key (its MoE layers). `attention_of`: a
checkpoint whose attention is another row's (no cases of its own).

`source` says where the values were read: a copy of the published config.json in a repository
(repo@commit:path) or what stands in for one; `verified` is False where no published copy could
be located with the search tools available (GitHub and huggingface.co were not reachable): those
values are the earlier hand-typed table's or from copies whose repository could not be named.
"""

from __future__ import annotations

from typing import Any

_PROF = "citsjtu2020/LLM-Prof@8434c8d:sglang/Model_Config.md (verbatim config.json copies)"

ROWS: tuple[dict[str, Any], ...] = (
    dict(key="llama3", model_type="llama", name="Llama 3.1 8B", head_dim=128, num_attention_heads=32,
         num_key_value_heads=8, source=_PROF + ", 'Llama-3.1-8B'", verified=True,
         note="no head_dim field: vLLM's hidden_size / num_attention_heads = 4096 / 32"),
    dict(key="llama3.2-3b", model_type="llama", name="Llama 3.2 3B Instruct", head_dim=128,
         num_attention_heads=24, num_key_value_heads=8,
         source="Gusiion/meta-llama-Llama-3.2-3B-Instruct@e6c23ae:config.json", verified=True,
         note="3 queries per KV head: BLOCK_M 16, BLOCK_Q 5"),
    dict(key="qwen2", model_type="qwen2", name="Qwen2.5 7B", head_dim=128, num_attention_heads=28,
         num_key_value_heads=4, source=_PROF + ", 'Qwen2.5-7B'", verified=True,
         note="sliding_window 131072 with use_sliding_window false: transformers' Qwen2Config drops it"),
    dict(key="qwen3", model_type="qwen3", name="Qwen3 8B", head_dim=128, num_attention_heads=32,
         num_key_value_heads=8, source=_PROF + ", 'Qwen3-8B'", verified=True),
    dict(key="qwen3moe", model_type="qwen3_moe", name="Qwen3 30B-A3B", head_dim=128,
         num_attention_heads=32, num_key_value_heads=4, source=_PROF + ", 'Qwen3-30B-A3B'",
         verified=True, reaches=("fused_moe",),
         note="128 experts top-8, unquantised: fused_moe_kernel (cases_moe)"),
    dict(key="gemma2", model_type="gemma2", name="Gemma 2 9B", head_dim=256, num_attention_heads=16,
         num_key_value_heads=8, sliding_window=4096, layers=("sliding", "full"), softcap=50.0,
         source="AI-Hypercomputer/maxtext:MaxText/utils/ckpt_conversion/utils/hf_model_configs.py "
         "(gemma2_9b_config, the published values as a transformers Gemma2Config)", verified=True,
         note="layer_types alternate sliding_attention / full_attention; attn_logit_softcapping 50"),
    dict(key="gemma3", model_type="gemma3", name="Gemma 3 4B", head_dim=256, num_attention_heads=8,
         num_key_value_heads=4, sliding_window=1024, layers=("sliding", "full"),
         source="not located: the earlier hand-typed table; a fixture with the same text_config "
         "(sliding_window_pattern 6) was found by its text, its repository not identified",
         verified=False, note="5 sliding layers to 1 global; window 1024 at head 256 is vLLM's "
         "Gemma 3 tile rule (_is_gemma3_attention)"),
    dict(key="glm4", model_type="glm4", name="GLM-4 9B 0414", head_dim=128, num_attention_heads=32,
         num_key_value_heads=2, source="not located: the earlier hand-typed table", verified=False),
    dict(key="mistral", model_type="mistral", name="Mistral 7B v0.1", head_dim=128,
         num_attention_heads=32, num_key_value_heads=8, sliding_window=4096, layers=("sliding",),
         source="sumitdotml/transformers:mistral-7b-v0.1/README.md (the release's params: head_dim "
         "128, n_heads 32, n_kv_heads 8, window_size 4096); not a config.json copy", verified=True,
         note="no layer_types: vLLM puts the window on every layer (CacheConfig.sliding_window)"),
    dict(key="phi3", model_type="phi3", name="Phi-3 mini 4k instruct", head_dim=96,
         num_attention_heads=32, num_key_value_heads=32, sliding_window=2047, layers=("sliding",),
         source="not located by repository: several config.json copies (hidden_size 3072, 32/32 "
         "heads, sliding_window 2047) were found by their text, none with a nameable path",
         verified=False, note="MHA at head 96 (3072 / 32); the window on every layer"),
    dict(key="gptoss", model_type="gpt_oss", name="gpt-oss-20b", head_dim=64, num_attention_heads=64,
         num_key_value_heads=8, sliding_window=128, layers=("sliding", "full"), sinks=True,
         source="EchoCog/gpt-oss-20b@52971a1:config.json (its quantization_config reads gptq where "
         "OpenAI's checkpoint is mxfp4, see the same repo's docs/gpt-oss-20b-architecture.md; the "
         "attention fields agree)", verified=True,
         note="sinks on every layer (vllm gpt_oss.py); even layers sliding. The published MXFP4 "
         "checkpoint is refused below sm_80 (Mxfp4Config.get_min_capability 80): only a bf16 "
         "conversion runs on these GPUs"),
    dict(key="qwen3next", model_type="qwen3_next", name="Qwen3-Next 80B-A3B", head_dim=256,
         num_attention_heads=16, num_key_value_heads=2, layers=("full",),
         hybrid=dict(architecture="Qwen3NextForCausalLM", linear_num_key_heads=16,
                     linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
                     linear_conv_kernel_dim=4),
         source="vLLM's own Qwen3NextConfig defaults (vllm/transformers_utils/configs/qwen3_next.py "
         "of the audited tree: 'defaults ... similar to Qwen3-Next-80B-A3B-Instruct'); a "
         "config.json copy not located", verified=False,
         note="its full_attention layers (1 in 4); the gated delta net kernels are cases_gdn's",
         reaches=("fused_moe",)),
    dict(key="granite4", model_type="granitemoehybrid", name="Granite-4.0-H-Tiny", head_dim=128,
         num_attention_heads=12, num_key_value_heads=4, layers=("full",),
         hybrid=dict(architecture="GraniteMoeHybridForCausalLM", hidden_size=1536, mamba_expand=2,
                     mamba_n_groups=1, mamba_n_heads=48, mamba_d_head=64, mamba_d_state=128,
                     mamba_d_conv=4),
         source="eyao600/Rapid-LLM, test fixture GRANITE_H_TINY_HF (values of the published "
         "config.json; found by its text, file path not identified)", verified=False,
         note="head 1536 / 12; 4 attention layers of 40; MoE 64 experts top-6 (fused_moe)",
         reaches=("fused_moe",)),
    dict(key="nemotronh", model_type="nemotron_h", name="Nemotron-H 8B Base 8K", head_dim=128,
         num_attention_heads=32, num_key_value_heads=8, layers=("full",),
         hybrid=dict(architecture="NemotronHForCausalLM", mamba_num_heads=128, mamba_head_dim=64,
                     n_groups=8, ssm_state_size=128, conv_kernel=4),
         source="NVIDIA/TensorRT-LLM unit test MAMBA_HYBRID_CONFIG (the 8B config.json: "
         "hybrid_override_pattern of 52 layers, 32/8 heads, head_dim 128; found by its text, file "
         "path not identified); vLLM's NemotronHConfig defaults agree", verified=False,
         note="no mamba_ssm_cache_dtype in the config: vLLM's NemotronH rule gives float16"),
    dict(key="qwen2-gptq", model_type="qwen2", name="GPTQ / AWQ int4 checkpoints",
         attention_of="qwen2", reaches=("fused_moe_gptq_awq",), source="-", verified=True,
         note="int4 weights leave attention as the base model's (e.g. Qwen2.5 7B); their MoE "
         "layers are fused_moe_kernel_gptq_awq (cases_moe, GPTQ only: AWQ needs sm_75)"),
)  # fmt: skip
