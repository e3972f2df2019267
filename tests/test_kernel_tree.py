"""The audit's cases follow the tree they audit, decided by what the tree contains (offline).

Fake vLLM trees carry the two shapes of each difference the cases handle: the 2D and 3D unified
kernels as two functions or one with an IS_3D constexpr, the TRITON_ATTN KV cache unbound from
[blocks, 2, ...] or split from a packed cache stored in a layout's order, an encoder launcher that
folds 1/ln 2 into its scale or not, a helper taking one more parameter, a launcher's literals.
The Triton 3.8 launch binder needs one dtype object per name (`launch.DType`).
"""

from __future__ import annotations

import copy
import math
import pickle
import textwrap
from pathlib import Path

import pytest

from stackforge.verify.kernels import tree
from stackforge.verify.kernels.cases import all_cases
from stackforge.verify.kernels.launch import DType, Launch, MissingArguments, Tensor, call_with, fit
from stackforge.verify.kernels.loader import KernelLoader
from stackforge.verify.kernels.standins import Stub

OPS = Path("vllm/v1/attention/ops")
MERGED = """
from vllm.triton_utils import tl, triton

def _get_tile_size(head_size, sliding_window, element_size, is_prefill):
    return 32 if is_prefill else 16

@triton.jit
def kernel_unified_attention(output_ptr, query_ptr, key_cache_ptr, stride_k_cache_1, TILE_SIZE: tl.constexpr,
                             IS_3D: tl.constexpr, segm_output_ptr=None, NUM_SEGMENTS_PER_SEQ: tl.constexpr = 1):
    pass

@triton.jit
def reduce_segments(output_ptr, NEW_FLAG: tl.constexpr):
    pass
"""
SPLIT = """
from vllm.triton_utils import tl, triton

def _get_tile_size(head_size, sliding_window, element_size, is_prefill):
    return 32 if is_prefill else 16

@triton.jit
def kernel_unified_attention_2d(output_ptr, query_ptr, TILE_SIZE: tl.constexpr):
    pass

@triton.jit
def kernel_unified_attention_3d(segm_output_ptr, query_ptr, TILE_SIZE: tl.constexpr):
    pass
"""
UNBIND_BACKEND = """
class TritonAttentionImpl:
    def forward(self, kv_cache):
        key_cache, value_cache = kv_cache.unbind(1)
"""
PACKED_BACKEND = """
class TritonAttentionImpl:
    def forward(self, kv_cache):
        key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
"""
LAYOUTS = """
from enum import Enum

class KVCacheLayout(Enum):
    LBHNC = (0, 1, 2, 3, 4)
    LBNHC = (0, 1, 3, 2, 4)
"""
PREFERENCE = "_DEFAULT_LAYOUT_PREFERENCE = (KVCacheLayout.LBNHC, KVCacheLayout.LBHNC)\n"
RESHAPE = """
from vllm.triton_utils import tl, triton

@triton.jit
def reshape_and_cache_kernel_flash(key_cache_ptr, block_stride, page_stride, head_stride, TILE_SIZE: tl.constexpr):
    pass
"""
ENCODER = """
import torch
from vllm.triton_utils import tl, triton
from vllm.utils.math_utils import RCP_LN2

def get_block_size(dtype):
    return 32 if dtype == torch.float32 else 64

def context_attention_fwd(q, softmax_scale=None):
    sm_scale = softmax_scale
    sm_scale *= RCP_LN2

@triton.jit
def _fwd_kernel(Q, Sinks, sm_scale, BLOCK_M: tl.constexpr):
    pass
"""
LAUNCHER = """
from vllm.model_executor.layers.quantization.utils.quant_utils import get_fp8_min_max
from vllm.scalar_type import scalar_types
from vllm.triton_utils import tl, triton

FP8_MIN, FP8_MAX = get_fp8_min_max()  # a stand-in unpacked at module level
RECIPROCAL = 1 / scalar_types.float4_e2m1f.max()
BLOCK = 64

def launcher(x, mode):
    BLOCK_M = 128 if mode else 32
    BLOCK_N = 64
    kernel[(1,)](x, BLOCK_SIZE=8192, BLOCK_M=BLOCK_M, WARPS=BLOCK_N * 2)

@triton.jit
def kernel(X, BLOCK_SIZE: tl.constexpr):
    pass
"""


def make_tree(root: Path, files: dict[Path, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def load(root: Path, module: str, arch: int = 61):
    loader = KernelLoader(root, arch)
    with loader.active():
        return loader.load(module)


def case(case_id: str):
    return next(c for c in all_cases((64,)) if c.id == case_id)


def test_one_dtype_object_per_name_for_tritons_binder() -> None:
    """Triton 3.8's binder caches a tensor argument's type by its dtype object: a fresh DType per
    `.dtype` gave later int32 tensors a cached `*fp16`."""
    a, b = Tensor("int32", (4,)), Tensor("int32", (8, 2))
    assert a.dtype is b.dtype is DType("int32") and a.dtype is not Tensor("float16", (4,)).dtype
    assert copy.deepcopy(a.dtype) is a.dtype and pickle.loads(pickle.dumps(a.dtype)) is a.dtype
    assert (str(a.dtype), a.dtype.itemsize, DType("float64").itemsize) == ("torch.int32", 4, 8)
    with pytest.raises(ValueError, match="unknown dtype"):
        DType("int4")


def test_merged_unified_kernel_is_found_and_given_is_3d(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {OPS / "triton_unified_attention.py": MERGED})
    mod = load(root, "vllm.v1.attention.ops.triton_unified_attention")
    for case_id, is_3d, tile in (
        ("unified_attention_2d/h64", False, 32),
        ("unified_attention_3d/h64", True, 16),
    ):
        c = case(case_id)
        name, fn = c.find(mod)
        assert name == "kernel_unified_attention"
        launch = fit(fn, c.build(mod, 61, 49152))
        assert set(launch.kwargs) == {"output_ptr", "query_ptr", "key_cache_ptr", "stride_k_cache_1", "TILE_SIZE",
                                      "IS_3D", "segm_output_ptr", "NUM_SEGMENTS_PER_SEQ"}  # fmt: skip
        assert (launch.kwargs["IS_3D"], launch.kwargs["TILE_SIZE"]) == (is_3d, tile)
        assert launch.kwargs["NUM_SEGMENTS_PER_SEQ"] == (16 if is_3d else 1)
        assert (launch.kwargs["segm_output_ptr"] is None) is not is_3d
    # a parameter without default that no case gives is an error naming it, not a silent default
    c = case("reduce_segments/h64")
    with pytest.raises(MissingArguments, match="reduce_segments takes NEW_FLAG"):
        fit(c.find(mod)[1], c.build(mod, 61, 49152))


def test_split_unified_kernels_keep_their_names(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {OPS / "triton_unified_attention.py": SPLIT})
    mod = load(root, "vllm.v1.attention.ops.triton_unified_attention")
    c2, c3 = case("unified_attention_2d/h64"), case("unified_attention_3d/h64")
    assert (
        c2.find(mod)[0] == "kernel_unified_attention_2d" and c3.find(mod)[0] == "kernel_unified_attention_3d"
    )
    launch = fit(c3.find(mod)[1], c3.build(mod, 61, 49152))
    assert set(launch.kwargs) == {"segm_output_ptr", "query_ptr", "TILE_SIZE"}  # IS_3D, output_ptr dropped
    with pytest.raises(AttributeError, match="defines no reduce_segments"):
        case("reduce_segments/h64").find(mod)


@pytest.mark.parametrize("packed", [False, True])
def test_kv_cache_layout_is_read_from_the_backend(tmp_path: Path, packed: bool) -> None:
    """[blocks, 2, block, heads, head].unbind(1), or the packed [blocks, heads, block, 2 * head]
    cache stored as [blocks, block, heads, 2 * head] (LBNHC first) and transposed + split."""
    files = {OPS / "triton_reshape_and_cache_flash.py": RESHAPE,
             Path("vllm/v1/attention/backends/triton_attn.py"): PACKED_BACKEND if packed else UNBIND_BACKEND,
             Path("vllm/v1/kv_cache_layout.py"): LAYOUTS, Path("vllm/v1/attention/backends/utils.py"): PREFERENCE}  # fmt: skip
    root = make_tree(tmp_path, files)
    assert tree.flash_cache_layout(root) == ((0, 2, 1, 3) if packed else None)
    mod = load(root, "vllm.v1.attention.ops.triton_reshape_and_cache_flash")
    assert tree.tree_root(mod) == root.resolve()
    c = case("reshape_and_cache_flash/h64")
    kw = fit(c.find(mod)[1], c.build(mod, 61, 49152)).kwargs
    heads, block, head = 8, 16, 64
    if packed:  # a block holds block x heads x (K | V) rows of one token after another
        assert kw["key_cache_ptr"].strides == (block * heads * 2 * head, heads * 2 * head, 2 * head, 1)
    else:
        assert kw["key_cache_ptr"].strides == (2 * block * heads * head, heads * head, head, 1)
    assert (kw["block_stride"], kw["page_stride"], kw["head_stride"]) == kw["key_cache_ptr"].strides[:3]


@pytest.mark.parametrize("folds", [True, False])
def test_encoder_scale_follows_the_launcher(tmp_path: Path, folds: bool) -> None:
    text = ENCODER if folds else ENCODER.replace("    sm_scale *= RCP_LN2\n", "")
    root = make_tree(tmp_path, {OPS / "triton_prefill_attention.py": text,
                                Path("vllm/utils/math_utils.py"): "RCP_LN2 = 1.4426950216\n"})  # fmt: skip
    mod = load(root, "vllm.v1.attention.ops.triton_prefill_attention")
    c = case("encoder_prefill_attention/h64")
    launch = fit(c.find(mod)[1], c.build(mod, 61, 49152))
    scale = 1 / math.sqrt(64)
    assert launch.kwargs["sm_scale"] == pytest.approx(scale * 1.4426950216 if folds else scale)
    assert launch.scenario["sm_scale"] == scale  # the numerics reference's softmax scale
    assert launch.kwargs["Sinks"] is launch.kwargs["Q"] and launch.kwargs["BLOCK_M"] == 64


def test_launcher_literals_helpers_and_stand_ins(tmp_path: Path) -> None:
    quant = Path("vllm/model_executor/layers/quantization/utils/quant_utils.py")  # no kernels: a stand-in
    root = make_tree(
        tmp_path, {OPS / "launch.py": LAUNCHER, quant: "def get_fp8_min_max():\n    return -448.0, 448.0\n"}
    )
    mod = load(root, "vllm.v1.attention.ops.launch")
    assert isinstance(mod.FP8_MIN, Stub) and isinstance(mod.RECIPROCAL, Stub)
    assert tree.launcher_literal(mod, "launcher", "BLOCK_SIZE") == 8192  # keyword argument
    assert tree.launcher_literal(mod, "launcher", "BLOCK_N") == 64  # assignment
    assert tree.launcher_literal(mod, "launcher", "BLOCK_M") is None  # 128 or 32: not one literal
    assert tree.launcher_literal(mod, "launcher", "WARPS") is None  # computed
    assert tree.launcher_literal(mod, "missing", "BLOCK_N") is None
    assert tree.launcher_uses(mod, "launcher", "kernel") and not tree.launcher_uses(mod, "launcher", "BLOCK")
    assert tree.module_constant(root, str(OPS / "launch.py"), "BLOCK") == 64
    assert tree.module_constant(root, str(OPS / "launch.py"), "RECIPROCAL") is None

    def sizes(head_size_padded: int, max_shared_mem: int, fma_dot: bool) -> tuple:
        return head_size_padded, max_shared_mem, fma_dot

    assert call_with(sizes, head_size_padded=64, pow2_block=True, max_shared_mem=1, fma_dot=False) == (
        64,
        1,
        False,
    )
    # options Triton takes beside the parameters stay; a parameter the kernel lacks goes
    launch = fit(
        mod.kernel, Launch(args=(Tensor("float16", (4,)),), kwargs={"BLOCK_SIZE": 4, "num_warps": 2, "X2": 1})
    )
    assert launch.kwargs == {"BLOCK_SIZE": 4, "num_warps": 2}
