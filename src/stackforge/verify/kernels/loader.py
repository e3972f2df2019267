"""Load vLLM's Triton kernel files from a source tree without importing vLLM (or needing torch).

A kernel file such as `vllm/v1/attention/ops/prefix_prefill.py` imports `torch`, `vllm.platforms`,
`vllm.triton_utils` and whatever else its Python launcher needs; its `@triton.jit` functions need
only Triton. `load_module(src, name, arch)` executes the real file with light stand-ins:

* `vllm.triton_utils` -> the installed `triton`, `triton.language`, libdevice (what vLLM exports);
* `vllm.platforms.current_platform` -> a CUDA platform of compute capability `arch` (module-level
  constants such as prefix_prefill's BASE_BLOCK depend on it);
* `vllm.logger.init_logger` -> `logging.getLogger`;
* any other `vllm.*` module whose file defines `@triton.jit` kernels -> the real file (kernels call
  helpers from other kernel files, e.g. LoRA's kernel_utils); packages are empty namespaces (no
  `__init__.py` runs), everything else is a permissive stand-in;
* `torch`, only when torch is not importable -> a stand-in with real dtype names and `finfo`
  values (kernels take fp8 limits as constexpr defaults) and permissive stand-ins for the rest;
* a stand-in as a base class (`class GatedDeltaNet(nn.Module, MambaBase)`) -> a class of its own
  whose missing class attributes are stand-ins (`_attention.apply`).

The stand-ins are `stackforge.verify.kernels.standins`.

Stand-ins are installed for the duration of one `KernelLoader` and removed afterwards; one process
should load one arch (module-level constants are per arch), so the audit runs a worker per arch.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from stackforge.verify.kernels.standins import Stub, StubModule, StubPackage, make_torch_standin

# --- vLLM stand-ins ---------------------------------------------------------------------------


class DeviceCapability(NamedTuple):
    major: int
    minor: int

    def as_version_str(self) -> str:
        return f"{self.major}.{self.minor}"

    def to_int(self) -> int:
        return self.major * 10 + self.minor


class CudaPlatform:
    """`current_platform` of a CUDA GPU of compute capability `arch`, as far as kernel files ask."""

    device_type = "cuda"
    device_name = "cuda"
    dispatch_key = "CUDA"
    ray_device_key = "GPU"
    simple_compile_backend = "inductor"

    def __init__(self, arch: int, fp8_dtype: Any) -> None:
        self.arch = arch
        self._fp8 = fp8_dtype

    def is_cuda(self) -> bool:
        return True

    def is_cuda_alike(self) -> bool:
        return True

    def get_device_capability(self, device_id: int = 0) -> DeviceCapability:
        return DeviceCapability(self.arch // 10, self.arch % 10)

    def has_device_capability(self, capability: Any, device_id: int = 0) -> bool:
        wanted = capability if isinstance(capability, int) else capability[0] * 10 + capability[1]
        return self.arch >= wanted

    def is_device_capability(self, capability: Any, device_id: int = 0) -> bool:
        wanted = capability if isinstance(capability, int) else capability[0] * 10 + capability[1]
        return self.arch == wanted

    def is_device_capability_family(self, capability: int, device_id: int = 0) -> bool:
        return self.arch // 10 == capability // 10

    def fp8_dtype(self) -> Any:
        return self._fp8

    def is_fp8_fnuz(self) -> bool:
        return False

    def supports_fp8(self) -> bool:
        return self.arch >= 89

    def get_device_name(self, device_id: int = 0) -> str:
        return f"stand-in sm_{self.arch}"

    def __getattr__(self, item: str) -> Any:
        if item.startswith("is_"):  # is_rocm, is_xpu, is_cpu, is_tpu, ...: not on CUDA
            return lambda *a, **k: False
        if item.startswith("__"):
            raise AttributeError(item)
        return Stub(f"current_platform.{item}")


def _triton_utils() -> types.ModuleType:
    import triton
    import triton.language as tl
    import triton.language.extra.libdevice as tldevice

    mod = types.ModuleType("vllm.triton_utils")
    mod.__path__ = []
    mod.HAS_TRITON, mod.triton, mod.tl, mod.tldevice = True, triton, tl, tldevice
    return mod


def _logger_module() -> types.ModuleType:
    mod = StubModule("vllm.logger")
    mod.init_logger = logging.getLogger
    mod.logger = logging.getLogger("vllm")
    return mod


# --- the import hook ----------------------------------------------------------------------------


def defines_kernels(path: Path) -> bool:
    try:
        return "@triton.jit" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


class _MissingFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on sys.meta_path: any module nothing else can import (numpy, transformers, ...) is a
    stand-in, so a kernel file's launcher imports never stop its kernels from loading."""

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in sys.stdlib_module_names:
            # another platform's stdlib module stays missing: subprocess, first imported while the
            # hook is active (by triton's import), must not find a stand-in `msvcrt` and think
            # it runs on Windows
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        mod = StubModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, loader: KernelLoader) -> None:
        self.loader = loader

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top == "vllm" or (top == "torch" and self.loader.torch_standin):
            real = self.loader.real_file(fullname)
            if real is not None:
                return importlib.util.spec_from_file_location(fullname, real)
            return importlib.machinery.ModuleSpec(fullname, self, is_package=self.loader.is_package(fullname))
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.loader.standin(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class KernelLoader:
    """Imports vLLM kernel modules from `src` (a vLLM source tree) for compute capability `arch`."""

    def __init__(self, src: Path, arch: int) -> None:
        self.src = Path(src)
        self.arch = arch
        if not (self.src / "vllm").is_dir():
            raise FileNotFoundError(f"{self.src}: no vllm/ package folder here")
        self.torch_standin = importlib.util.find_spec("torch") is None
        self._torch: types.ModuleType | None = None
        self._finder = _Finder(self)
        self._missing = _MissingFinder()

    # -- what each vllm/torch module becomes --
    def module_path(self, fullname: str) -> Path:
        return self.src.joinpath(*fullname.split("."))

    def is_package(self, fullname: str) -> bool:
        if not fullname.startswith("vllm"):
            return True  # torch.nn, numpy, ...: let `import a.b.c` find stand-ins below
        return self.module_path(fullname).is_dir()

    def real_file(self, fullname: str) -> Path | None:
        if not fullname.startswith("vllm.") or fullname in ("vllm.triton_utils", "vllm.platforms"):
            return None
        file = self.module_path(fullname).with_suffix(".py")
        return file if file.is_file() and defines_kernels(file) else None

    def standin(self, fullname: str) -> types.ModuleType:
        if fullname == "torch":
            return self.torch
        if fullname == "vllm.triton_utils":
            return _triton_utils()
        if fullname == "vllm.logger":
            return _logger_module()
        mod = StubPackage(fullname) if self.is_package(fullname) else StubModule(fullname)
        if fullname == "vllm.platforms":
            mod.current_platform = CudaPlatform(self.arch, getattr(self.torch, "float8_e4m3fn", None))
        if self.is_package(fullname):
            mod.__path__ = [str(self.module_path(fullname))] if fullname.startswith("vllm") else []
        return mod

    @property
    def torch(self) -> types.ModuleType:
        if self._torch is None:
            if self.torch_standin:
                self._torch = make_torch_standin()
            else:
                import torch

                self._torch = torch
        return self._torch

    # -- installing and removing the hook --
    def _forget(self) -> None:
        for name, module in list(sys.modules.items()):
            top = name.partition(".")[0]
            standin = isinstance(module, StubModule)
            if top == "vllm" or (top == "torch" and self.torch_standin) or standin:
                del sys.modules[name]

    @contextmanager
    def active(self) -> Iterator[KernelLoader]:
        """Stand-ins are importable inside the block only: compile kernels after it, so Triton's
        own optional imports (torch, numpy) never meet a stand-in."""
        self._forget()
        sys.meta_path.insert(0, self._finder)
        sys.meta_path.append(self._missing)
        try:
            yield self
        finally:
            sys.meta_path.remove(self._finder)
            sys.meta_path.remove(self._missing)
            self._forget()

    def load(self, module: str) -> types.ModuleType:
        """Import vLLM module `module` (dotted, e.g. "vllm.v1.attention.ops.prefix_prefill");
        call inside `active()`."""
        file = self.module_path(module).with_suffix(".py")
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist in this vLLM tree")
        return importlib.import_module(module)

    def load_all(self, modules: list[str]) -> dict[str, types.ModuleType | Exception]:
        """Import every module with the stand-ins active, before any compile (compiles run with
        them gone); a module that fails to load maps to its exception, so it costs its own cases."""
        loaded: dict[str, types.ModuleType | Exception] = {}
        with self.active():
            for name in modules:
                try:
                    loaded[name] = self.load(name)
                except Exception as exc:
                    loaded[name] = exc
        return loaded
