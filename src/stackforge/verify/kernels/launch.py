"""What a kernel launch is made of, as the kernel audit describes it without torch or a GPU.

Tensors are `Tensor` descriptions (dtype, shape, strides, role) that Triton reads like torch
tensors; `--save-ptx` writes them out so the numerics run can allocate real ones. A `Case` names
the vLLM file and @triton.jit function and builds its `Launch` for an arch.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar


class DType:
    """A torch dtype as Triton's launcher sees it: `str(dtype)` is "torch.<name>". One object per
    name, as torch has: Triton 3.8's binder caches a tensor argument's type by its dtype object, so
    a fresh object per `.dtype` gave an int32 tensor a cached `*fp16` ("invalid operands of type
    pointer<fp16>")."""

    _interned: ClassVar[dict[str, DType]] = {}
    name: str
    itemsize: int

    SIZES: ClassVar[dict[str, int]] = {
        "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
        "int32": 4, "int64": 8, "uint64": 8, "float8_e5m2": 1, "float8_e4m3fn": 1, "bool": 1,
    }  # fmt: skip

    def __new__(cls, name: str) -> DType:
        if name not in cls.SIZES:
            raise ValueError(f"unknown dtype {name}")
        if name not in cls._interned:
            dtype = super().__new__(cls)
            dtype.name, dtype.itemsize = name, cls.SIZES[name]
            cls._interned[name] = dtype
        return cls._interned[name]

    def __reduce__(self) -> tuple:  # copies and pickles stay the one object per name
        return DType, (self.name,)

    def __str__(self) -> str:
        return f"torch.{self.name}"

    __repr__ = __str__


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass
class Tensor:
    """What a launch passes where vLLM passes a torch tensor. `role` tells the numerics run what
    the contents must be (e.g. "cu_seqlens_q" must be a prefix sum); strides are in elements."""

    dtype_name: str
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    role: str = "data"

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)
        self.strides = tuple(self.strides) if self.strides is not None else contiguous_strides(self.shape)

    @property
    def dtype(self) -> DType:
        return DType(self.dtype_name)

    def data_ptr(self) -> int:
        return 1 << 20  # CUDA allocations are 256-byte aligned: Triton adds divisibility-16 hints

    def stride(self, dim: int | None = None) -> Any:
        return self.strides if dim is None else self.strides[dim]

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype_name,
            "shape": list(self.shape),
            "strides": list(self.strides),
            "role": self.role,
        }


@dataclass
class Launch:
    """One kernel launch: arguments as vLLM passes them, the grid, and the scenario behind them."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    grid: tuple[int, ...] = (1,)
    scenario: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    id: str  # unique, e.g. "unified_attention_2d/h128"
    kernel: str  # display name
    module: str  # dotted vLLM module that defines the kernel
    function: str  # the @triton.jit function
    launcher: str  # where vLLM builds this launch (file:function)
    reached_by: str  # which vLLM path runs it on Pascal/Volta
    shape: str  # human label of the scenario
    build: Callable[[ModuleType, int, int], Launch]  # (module, arch, shared-memory limit) -> Launch
    # who reaches it on Pascal/Volta: "default" (every model, default options), "model" (some
    # models only), "option" (a vLLM option turns it on), "not-default-backend" (a backend vLLM
    # never picks on these GPUs by itself)
    reach: str = "default"
    opt_in: str = ""  # audited only with `--backends <opt_in>` (or --all)
    model: str = ""  # a model's launch (its config's heads, window, softcap): vLLM's model_type
    dtype: str = "float16"  # the activations' dtype; model cases exist in each, the audit keeps vLLM's pick
    cost: float = 1.0  # static estimate of the compile time, for scheduling (longest first)
    # other names of the kernel in other trees (one kernel merged from two, a rename): `find`
    # takes the first name the loaded module defines
    alternatives: tuple[str, ...] = ()
    config: int | None = None  # an autotuned kernel: which of its configs this case compiles (`tuning`)
    configs: int = 1  # how many configs its autotuner benchmarks

    def find(self, module: ModuleType) -> tuple[str, Any]:
        """(name, @triton.jit function) of this case in `module`: `function` or an alternative."""
        for name in (self.function, *self.alternatives):
            if hasattr(module, name):
                return name, getattr(module, name)
        names = " or ".join((self.function, *self.alternatives))
        raise AttributeError(f"{module.__name__} defines no {names}")


# Launch options Triton takes besides a kernel's parameters (`triton.compile` options).
def _option_names() -> frozenset[str]:
    import dataclasses

    from triton.backends.nvidia.compiler import CUDAOptions

    return frozenset(f.name for f in dataclasses.fields(CUDAOptions))


class MissingArguments(TypeError):
    """The kernel takes a parameter without default that the case does not give."""


def fit(fn: Any, launch: Launch) -> Launch:
    """`launch` with the keyword arguments `fn` takes: a case states what vLLM's launchers pass
    across trees (e.g. `IS_3D` where the 2D and 3D kernels are one), and a parameter the tree's
    kernel lacks is one its launcher cannot pass. A parameter without default that nothing gives
    is an error naming it, not a silent default."""
    params = list(fn.arg_names)
    options = _option_names()
    kwargs = {k: v for k, v in launch.kwargs.items() if k in params or k in options}
    given = set(params[: len(launch.args)]) | set(kwargs)
    defaults = {p.name for p in fn.params if p.has_default}
    missing = [p for p in params if p not in given and p not in defaults]
    if missing:
        raise MissingArguments(f"{fn.__name__} takes {', '.join(missing)}, which the case does not give")
    return dataclasses.replace(launch, kwargs=kwargs)


def call_with(fn: Callable[..., Any], **facts: Any) -> Any:
    """Call a launcher's helper with the facts its parameters name (`fwd_kernel_block_sizes` took
    `pow2_block` in one tree and not in another)."""
    names = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in facts.items() if k in names})


class Pruned(Exception):
    """Raised by a case's build when the tree's own autotune pruning drops its config on this arch:
    vLLM never launches it there, so there is nothing to compile."""
