"""Stand-ins for what a vLLM kernel file imports and its kernels never use (`Stub`, `StubModule`,
`StubPackage`), and for torch on machines without it (`make_torch_standin`): the pieces
`stackforge.verify.kernels.loader` builds its import hook from."""

from __future__ import annotations

import dis
import functools
import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple


def _unpacked(frame: types.FrameType) -> int:
    """How many values the instruction running in `frame` unpacks (0 when it is no unpacking)."""
    for ins in dis.get_instructions(frame.f_code):
        if ins.offset == frame.f_lasti:
            if ins.opname == "UNPACK_SEQUENCE":
                return int(ins.arg or 0)
            if ins.opname == "UNPACK_EX":  # `a, *rest, b = ...`: the named ones
                return int((ins.arg or 0) & 0xFF) + int((ins.arg or 0) >> 8)
            return 0
    return 0


class StandinClass(type):
    """The metaclass of the class a `Stub` base becomes: class attributes the real base would
    have given (`_attention.apply` of a `torch.autograd.Function` subclass, lightning_attn.py)
    are stubs too."""

    def __getattr__(cls, item: str) -> Any:
        if item.startswith("__") and item.endswith("__"):
            raise AttributeError(item)
        return Stub(f"{cls.__qualname__}.{item}")


@functools.cache
def _joined(meta: type) -> type:
    """`StandinClass` and the metaclass of a real base beside the stand-in (ABCMeta of `ABC`), so
    the class statement finds no metaclass conflict."""
    return type(f"Standin{meta.__name__}", (StandinClass, meta), {})


class Stub:
    """Stands for anything a kernel file imports that its kernels never use: attribute access
    and calls give more stubs, a call with one function passes it through (decorators such as
    `@torch.inference_mode()`), and as a base class it becomes a class of its own (`StandinClass`)."""

    def __init__(self, name: str = "stub", *_args: Any, **_kwargs: Any) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__") and item.endswith("__"):
            raise AttributeError(item)
        return Stub(f"{self._name}.{item}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], Stub):
            return args[0]
        return Stub(f"{self._name}()")

    def __getitem__(self, _key: Any) -> Stub:
        return Stub(f"{self._name}[]")

    def __iter__(self) -> Iterator[Any]:
        # `lo, hi = get_fp8_min_max()` at module level: as many stubs as the statement unpacks;
        # iterated any other way, a stub is empty
        n = _unpacked(sys._getframe(1))
        return iter([Stub(f"{self._name}[{i}]") for i in range(n)])

    def __bool__(self) -> bool:
        return False

    def __or__(self, _other: Any) -> Stub:  # `torch.Tensor | None` in annotations
        return self

    __ror__ = __or__

    def _arith(self, _other: Any = None) -> Stub:  # `1 / scalar_types.float4_e2m1f.max()`
        return Stub(f"({self._name})")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _arith
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __pow__ = __neg__ = _arith

    def __mro_entries__(self, bases: tuple) -> tuple:
        # a class per base: as `object`, two stand-in bases (qwen3_next.py) are a duplicate base
        metas = [type(b) for b in bases if isinstance(b, type) and type(b) is not type]
        real = next((m for m in metas if all(issubclass(m, o) for o in metas)), None)  # most derived
        meta = StandinClass if real is None else real if issubclass(real, StandinClass) else _joined(real)
        return (meta(self._name, (), {"__module__": __name__}),)

    def __repr__(self) -> str:
        return f"<stand-in {self._name}>"


class StubModule(types.ModuleType):
    """A module whose every missing attribute is a `Stub`."""

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__") and item.endswith("__"):
            raise AttributeError(item)
        return Stub(f"{self.__name__}.{item}")


class StubPackage(StubModule):
    """A package stand-in: `from vllm.x import y` imports submodule y when the tree has it."""

    def __getattr__(self, item: str) -> Any:
        path = getattr(self, "__path__", None)
        if path and not item.startswith("__"):
            folder = Path(path[0])
            if (folder / f"{item}.py").is_file() or (folder / item).is_dir():
                return importlib.import_module(f"{self.__name__}.{item}")
        return super().__getattr__(item)


# --- torch, for machines without it ---------------------------------------------------------------


class DType:
    """A torch dtype by name: Triton's canonicalize_dtype reads `str(dtype)`."""

    def __init__(self, name: str, itemsize: int, is_floating_point: bool) -> None:
        self.name = name
        self.itemsize = itemsize
        self.is_floating_point = is_floating_point

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def to_complex(self) -> DType:
        return self


class FInfo(NamedTuple):
    bits: int
    min: float
    max: float
    eps: float
    tiny: float


# (itemsize, min, max, eps, tiny) of the float types; values are IEEE / OCP fp8 facts.
_FLOATS = {
    "float16": (2, -65504.0, 65504.0, 2**-10, 2**-14),
    "bfloat16": (2, -3.3895313892515355e38, 3.3895313892515355e38, 2**-7, 2**-126),
    "float32": (4, -3.4028234663852886e38, 3.4028234663852886e38, 2**-23, 2**-126),
    "float64": (8, -1.7976931348623157e308, 1.7976931348623157e308, 2**-52, 2**-1022),
    "float8_e4m3fn": (1, -448.0, 448.0, 0.125, 2**-6),
    "float8_e4m3fnuz": (1, -240.0, 240.0, 0.125, 2**-7),
    "float8_e5m2": (1, -57344.0, 57344.0, 0.25, 2**-14),
    "float8_e5m2fnuz": (1, -57344.0, 57344.0, 0.125, 2**-15),
}
_INTS = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "uint32": 4, "uint64": 8, "bool": 1}


def make_torch_standin() -> types.ModuleType:
    torch = StubModule("torch")
    torch.__path__ = []  # a package, so `import torch.nn` finds a submodule stand-in
    dtypes = {n: DType(n, v[0], True) for n, v in _FLOATS.items()}
    dtypes |= {n: DType(n, size, False) for n, size in _INTS.items()}
    for name, dtype in dtypes.items():
        setattr(torch, name, dtype)
    torch.half, torch.float, torch.double = dtypes["float16"], dtypes["float32"], dtypes["float64"]
    torch.int, torch.long = dtypes["int32"], dtypes["int64"]
    torch.dtype = DType
    torch.Tensor = type("Tensor", (), {})
    torch.device = type("device", (), {"__init__": lambda self, *a, **k: None})

    def finfo(dtype: DType) -> FInfo:
        size, lo, hi, eps, tiny = _FLOATS[dtype.name]
        return FInfo(size * 8, lo, hi, eps, tiny)

    torch.finfo = finfo
    torch.__version__ = "0+stackforge.standin"
    return torch
