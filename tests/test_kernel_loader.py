"""The kernel loader on class statements in kernel files: stand-ins as base classes.

vLLM 0.14.0's qwen3_next.py (`class Qwen3NextGatedDeltaNet(nn.Module, MambaBase)`) and
lightning_attn.py (`lightning_attention_ = _attention.apply` after `class _attention(torch.autograd.Function)`)
did not load: every stand-in base became `object` (two of them: "duplicate base class object"),
and a class made from one had none of the real base's class attributes. The offline fixture has
the same statements; the upstream test loads every kernel file of the real tree.
"""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest
import triton
from conftest import online

from stackforge.verify.kernels.loader import KernelLoader, Stub, defines_kernels

MODELS_FILE = textwrap.dedent(
    """
    from abc import ABC, abstractmethod

    import torch
    from torch import nn
    from vllm.model_executor.custom_op import CustomOp
    from vllm.model_executor.layers.mamba.abstract import MambaBase
    from vllm.triton_utils import tl, triton

    @triton.jit
    def gating_kernel(X, N: tl.constexpr):
        o = tl.arange(0, N)
        tl.store(X + o, tl.sigmoid(tl.load(X + o)))

    class GatedDeltaNet(nn.Module, MambaBase):  # qwen3_next.py
        @property
        def mamba_type(self) -> str:
            return "gdn_attention"

    class TwoStandins(CustomOp, MambaBase):  # the same, whether torch is installed or not
        pass

    class WithABC(MambaBase, ABC):
        @abstractmethod
        def forward(self): ...

    class MixtureOfExperts(MambaBase):
        pass

    class ForCausalLM(nn.Module, CustomOp, MixtureOfExperts, MambaBase):  # qwen3_next.py, shorter
        pass

    class AbstractMixture(WithABC, CustomOp):  # beside a class that has ABC's metaclass
        pass

    class _attention(torch.autograd.Function):  # lightning_attn.py
        @staticmethod
        def forward(ctx, q):
            return q

    class _op(CustomOp):
        pass

    lightning_attention_ = _attention.apply
    registered = _op.register("op")
    LOADED_TO_THE_END = True
    """
)


def models_tree(root: Path) -> Path:
    folder = root / "vllm" / "model_executor" / "models"
    folder.mkdir(parents=True)
    (root / "vllm" / "model_executor" / "layers" / "mamba").mkdir(parents=True)  # packages, as in vLLM
    (folder / "hybrid.py").write_text(MODELS_FILE)
    return root


@pytest.mark.parametrize("arch", [61, 70])
def test_stand_in_base_classes_load(tmp_path: Path, arch: int) -> None:
    loader = KernelLoader(models_tree(tmp_path), arch)
    (mod,) = loader.load_all(["vllm.model_executor.models.hybrid"]).values()
    assert not isinstance(mod, Exception), mod
    assert mod.LOADED_TO_THE_END and isinstance(mod.gating_kernel, triton.runtime.jit.JITFunction)
    assert mod.TwoStandins.__mro__[1] is not mod.TwoStandins.__mro__[2]  # a class per stand-in base
    assert mod.GatedDeltaNet().mamba_type == "gdn_attention"  # the file's own members still work
    assert isinstance(mod.registered, Stub)  # a stand-in base's class attribute is a stand-in
    if loader.torch_standin:
        assert isinstance(mod.lightning_attention_, Stub)
    with pytest.raises(TypeError):  # ABC's rules hold beside a stand-in
        mod.WithABC()
    assert not any(name == "vllm" or name.startswith("vllm.") for name in sys.modules)


def test_another_platforms_stdlib_module_stays_missing(tmp_path: Path) -> None:
    """subprocess decides it runs on Windows when `import msvcrt` succeeds: imported for the first
    time while the loader is active (triton's import chain does so), it must not find a stand-in."""
    import importlib.util

    loader = KernelLoader(models_tree(tmp_path), 61)
    with loader.active():
        assert importlib.util.find_spec("msvcrt") is None
        assert importlib.util.find_spec("_winapi") is None
        assert isinstance(
            importlib.import_module("einops"), types.ModuleType
        )  # a missing package still is one


# --- vLLM 0.14.0 itself (the sdist, cached) ---------------------------------------------------------


@pytest.mark.upstream
def test_every_kernel_file_of_v0140_loads() -> None:
    from stackforge.verify.upstream import pypi as upstream

    tree = online(upstream.vllm_sdist)
    files = sorted(p for p in (tree / "vllm").rglob("*.py") if defines_kernels(p))
    names = [".".join(p.relative_to(tree).with_suffix("").parts) for p in files]
    assert len(names) > 50  # 63 in v0.14.0
    loaded = KernelLoader(tree, 61).load_all(names)
    failed = {n: f"{type(m).__name__}: {m}" for n, m in loaded.items() if isinstance(m, Exception)}
    assert not failed, failed
    qwen3_next = loaded["vllm.model_executor.models.qwen3_next"]
    lightning = loaded["vllm.model_executor.layers.lightning_attn"]
    assert isinstance(qwen3_next.fused_gdn_gating_kernel, triton.runtime.jit.JITFunction)
    kernels = {k for k, v in vars(lightning).items() if isinstance(v, triton.runtime.jit.JITFunction)}
    assert {"_fwd_diag_kernel", "_fwd_kv_parallel", "_linear_attn_decode_kernel"} <= kernels
