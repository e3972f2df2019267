"""The model list (`model_table.ROWS`) as the launches TRITON_ATTN makes for it.

A row's attention layers become `Attn` scenarios, one per kind of layer vLLM builds for it
(sliding-window layers get `per_layer_sliding_window`, the others none: `llama.py`, `gemma2.py`,
`gemma3.py`, `gpt_oss.py`; a model without `layer_types` gets the window on every layer from
`CacheConfig.sliding_window`, `EngineArgs.create_engine_config`). The launch branches then follow
as `unified_attention` picks them: BLOCK_M/BLOCK_Q from the queries per KV head, SLIDING_WINDOW,
USE_SOFTCAP, USE_SINKS. No listed family uses ALiBi (none passes `alibi_slopes`), so that branch
stays off.

Hybrid attention+mamba models get their KV block size from vLLM's
`HybridAttentionMambaModelConfig.verify_and_update_config` (`vllm/model_executor/models/config.py`):
without prefix caching (off by default for hybrids: `ModelConfig.is_prefix_caching_supported`)
the attention block is the smallest multiple of 16 whose page (2 x block x KV heads x head x dtype
bytes, `AttentionSpec.real_page_size_bytes`) holds one mamba state page (`MambaSpec.page_size_bytes`:
the state shapes' elements x their dtype bytes). The state shapes are the tree's own: its
`get_mamba_state_shape_from_config` of the model class and `MambaStateShapeCalculator`, executed
from the audited tree's source with the row's config values (tensor parallel 1, no speculative
tokens).
"""

from __future__ import annotations
import __future__

import ast
import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from stackforge.verify.kernels.cases_attention import Attn
from stackforge.verify.kernels.launch import DType, Launch
from stackforge.verify.kernels.model_table import ROWS
from stackforge.verify.kernels.tree import parse, tree_root

KERNEL_BLOCK_ALIGNMENT = 16  # HybridAttentionMambaModelConfig: kernel_block_alignment_size (not MLA)


@dataclass(frozen=True)
class Model:
    """One row of `model_table.ROWS`."""

    key: str
    model_type: str
    name: str
    source: str
    verified: bool
    head_dim: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    sliding_window: int | None = None
    layers: tuple[str, ...] = ("full",)
    softcap: float = 0.0
    sinks: bool = False
    hybrid: dict[str, Any] | None = None
    reaches: tuple[str, ...] = ()
    attention_of: str = ""
    note: str = ""

    def attention(self, dtype: str) -> list[tuple[str, Attn]]:
        """(layer kind, scenario) per kind of attention layer vLLM builds for this model."""
        if self.attention_of:
            return []
        out = []
        for kind in self.layers:
            window = self.sliding_window or 0 if kind == "sliding" else 0
            a = Attn(self.head_dim, self.num_attention_heads, self.num_key_value_heads, dtype=dtype,
                     softcap=self.softcap, sliding_window=window, sinks=self.sinks)  # fmt: skip
            out.append((kind, a))
        return out


def models(rows: Iterable[dict[str, Any]] = ROWS) -> list[Model]:
    """The table's rows as `Model`s; an unknown field is an error, not ignored."""
    return [Model(**row) for row in rows]


# --- hybrid models: the attention block size -----------------------------------------------------


def _source(file: Path) -> ast.Module:
    tree = parse(file)
    if tree is None:
        raise FileNotFoundError(f"{file} (the tree lacks what the hybrid block size is read from)")
    return tree


def _exec(nodes: list[ast.stmt], file: Path, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run the tree's own definitions; annotations stay unevaluated (they name torch and vLLM types)."""
    code = compile(ast.Module(body=nodes, type_ignores=[]), str(file), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)  # fmt: skip
    exec(code, namespace)  # the audited tree's own source, as the loader runs its kernel files
    return namespace


def _top(tree: ast.Module, name: str) -> ast.stmt:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return node
    raise LookupError(f"no {name}")


def _registry(vllm_src: Path, architecture: str) -> tuple[str, str]:
    """(module, class) of `architecture` in vLLM's model registry (`models/registry.py`)."""
    tree = _source(vllm_src / "vllm" / "model_executor" / "models" / "registry.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == architecture and isinstance(v, ast.Tuple):
                    module, cls = ast.literal_eval(v)
                    return str(module), str(cls)
    raise LookupError(f"{architecture} is not in the tree's model registry")


@functools.cache
def state_shapes(vllm_src: Path, architecture: str, config: tuple[tuple[str, Any], ...]) -> list[tuple]:
    """The model class's `get_mamba_state_shape_from_config` evaluated from the tree's source, on
    a config with `config`'s fields, tensor parallel 1 and no speculative decoding."""
    root = vllm_src / "vllm"
    utils = root / "distributed" / "utils.py"
    ns = _exec([_top(_source(utils), "ensure_divisibility"), _top(_source(utils), "divide")], utils, {})
    calc_file = root / "model_executor" / "layers" / "mamba" / "mamba_utils.py"
    ns = _exec([_top(_source(calc_file), "MambaStateShapeCalculator")], calc_file, ns)
    module, cls = _registry(vllm_src, architecture)
    model_file = root / "model_executor" / "models" / f"{module}.py"
    klass = _top(_source(model_file), cls)
    assert isinstance(klass, ast.ClassDef)
    method = next((n for n in klass.body if isinstance(n, ast.FunctionDef)
                   and n.name == "get_mamba_state_shape_from_config"), None)  # fmt: skip
    if method is None:
        raise LookupError(f"{cls} defines no get_mamba_state_shape_from_config")
    method = copy.deepcopy(method)
    method.decorator_list = []  # a classmethod in the tree: called here with cls=None
    fn = _exec([method], model_file, ns)["get_mamba_state_shape_from_config"]
    vllm_config = SimpleNamespace(parallel_config=SimpleNamespace(tensor_parallel_size=1),
                                  model_config=SimpleNamespace(hf_config=SimpleNamespace(**dict(config))),
                                  speculative_config=None)  # fmt: skip
    return [tuple(s) for s in fn(None, vllm_config)]


@functools.cache
def _ssm_rule(vllm_src: Path, architecture: str) -> str | None:
    """The default of `getattr(hf_config, "mamba_ssm_cache_dtype", <default>)` in the tree's
    `MODELS_CONFIG_MAP` class for `architecture` (NemotronH: "float16"), None where it has none."""
    tree = _source(vllm_src / "vllm" / "model_executor" / "models" / "config.py")
    owner = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == architecture and isinstance(v, ast.Name):
                    owner = v.id
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == owner:
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "getattr"
                        and len(call.args) == 3 and isinstance(call.args[1], ast.Constant)
                        and call.args[1].value == "mamba_ssm_cache_dtype"):  # fmt: skip
                    return str(ast.literal_eval(call.args[2]))
    return None


def ssm_cache_dtype(vllm_src: Path, architecture: str, config: dict[str, Any]) -> str:
    """`mamba_ssm_cache_dtype` under `--mamba-ssm-cache-dtype auto`: the model's own rule where the
    tree's `MODELS_CONFIG_MAP` class sets one from the HF config (NemotronH: the config's value,
    else "float16"), else "auto" (the conv state's dtype)."""
    default = _ssm_rule(vllm_src, architecture)
    return "auto" if default is None else str(config.get("mamba_ssm_cache_dtype", default))


@functools.cache
def block_rule_known(vllm_src: Path) -> bool:
    """Whether the tree sizes the hybrid attention block as `hybrid_block_size` computes it:
    `HybridAttentionMambaModelConfig` sets `attn_block_size` from the page sizes and hybrids run
    without prefix caching by default. Newer trees move it to the platform, after the backend is
    known, with prefix caching on (chunk-aligned blocks): not followed yet."""
    config = vllm_src / "vllm" / "model_executor" / "models" / "config.py"
    model = vllm_src / "vllm" / "config" / "model.py"
    if not (config.is_file() and model.is_file()):
        return False
    cls = next((n for n in _source(config).body if isinstance(n, ast.ClassDef)
                and n.name == "HybridAttentionMambaModelConfig"), None)  # fmt: skip
    sets_block = cls is not None and any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "attn_block_size" for t in n.targets)
        for n in ast.walk(cls)
    )
    return sets_block and "Hybrid models do not support prefix caching" in model.read_text()


def hybrid_block_size(vllm_src: Path, model: Model, dtype: str) -> int:
    """The attention KV block size vLLM gives `model` (a hybrid row) in `dtype`, KV cache "auto"."""
    assert model.hybrid is not None
    if not block_rule_known(vllm_src):
        raise NotImplementedError(
            f"{vllm_src}: this tree sizes the hybrid attention block elsewhere (not in "
            "HybridAttentionMambaModelConfig, or with prefix caching on by default); not followed yet"
        )
    cfg = {k: v for k, v in model.hybrid.items() if k != "architecture"}
    arch = model.hybrid["architecture"]
    shapes = state_shapes(vllm_src, arch, tuple(sorted(cfg.items())))
    ssm = ssm_cache_dtype(vllm_src, arch, cfg)
    # MambaStateDtypeCalculator: the conv state in the model dtype, the temporal (last) state in
    # mamba_ssm_cache_dtype where one is set; gated delta net: both in the model dtype
    dtypes = [dtype] * len(shapes)
    if ssm != "auto":
        dtypes[-1] = ssm
    mamba_page = sum(math.prod(s) * DType(d).itemsize for s, d in zip(shapes, dtypes, strict=True))
    attn_page_1 = 2 * model.num_key_value_heads * model.head_dim * DType(dtype).itemsize
    align = KERNEL_BLOCK_ALIGNMENT
    return align * math.ceil(mamba_page / (align * attn_page_1))


def with_block(
    model: Model, a: Attn, build: Callable[[Attn], Callable]
) -> Callable[[ModuleType, int, int], Launch]:
    """`build(a)` with a hybrid model's block size, computed from the tree the module comes from."""
    if model.hybrid is None:
        return build(a)

    def launch(mod: ModuleType, arch: int, smem: int) -> Launch:
        block = hybrid_block_size(tree_root(mod), model, a.dtype)
        return build(dataclasses.replace(a, block_size=block))(mod, arch, smem)

    return launch


def reached_kernels(cases: Iterable[Any], table: Iterable[Model] | None = None) -> set[str]:
    """Kernels the model list reaches: its TRITON_ATTN cases, the cases tagged with a row's key
    (`causal_conv1d_fwd/granite4`), and what rows name in `reaches`."""
    rows = list(table if table is not None else models())
    keys = {m.key for m in rows}
    out = {k for m in rows for k in m.reaches}
    for c in cases:
        tag = c.id.partition("/")[2].partition("@")[0]
        if c.model or tag in keys or tag.split("-")[0] in keys:
            out.add(c.kernel)
    return out


def case_models(case: Any, table: Iterable[Model] | None = None) -> set[str]:
    """Keys of the rows whose launches or layers `case` is: its tag names the row (attention
    `<key>[-full]-fp16`, layers `<key>[@c<i>]`), or the row `reaches` its kernel."""
    rows = list(table if table is not None else models())
    tag = case.id.partition("/")[2].partition("@")[0]
    for suffix in ("-fp16", "-fp32", "-full"):
        tag = tag.removesuffix(suffix)
    return {m.key for m in rows if m.key == tag or case.kernel in m.reaches}


def unfollowed(cases: Iterable[Any], vllm_src: Path) -> dict[str, str]:
    """Hybrid rows' cases this tree's block size cannot be read for (`block_rule_known`): case id
    -> why. The audit leaves them out and says so rather than compile a block vLLM never uses."""
    if block_rule_known(vllm_src):
        return {}
    hybrid = {m.key for m in models() if m.hybrid}
    why = "this tree sizes the hybrid attention block elsewhere (not followed yet)"
    return {c.id: why for c in cases if c.model and c.id.partition("/")[2].rsplit("-", 1)[0] in hybrid}
