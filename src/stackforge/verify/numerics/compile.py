"""Triton compiles for a target arch without a GPU: one compile path for the kernel audit and the suite."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from stackforge.cuda.caps import CAPABILITIES
from stackforge.verify.kernels.launch import Launch


class SharedMemoryOver(Exception):
    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(f"needs {needed} bytes of shared memory per block, limit {limit}")
        self.needed, self.limit = needed, limit


def _check_shared(metadata: dict, capability: int) -> None:
    needed = metadata.get("shared", 0)
    limit = CAPABILITIES[capability].smem_per_block_optin if capability in CAPABILITIES else None
    if limit is not None and needed > limit:
        raise SharedMemoryOver(needed, limit)


def guard_shared_memory() -> None:
    """Stop a compile as soon as its shared memory is known and over the limit (Triton would
    raise OutOfResources at load time): Triton's make_llir allocates shared memory and records
    it in the metadata, so the check runs before LLVM's code generation (make_ptx) and again
    before ptxas (make_cubin), which takes minutes on the big unrolled FMA kernels."""
    from triton.backends.nvidia.compiler import CUDABackend

    if getattr(CUDABackend.make_cubin, "stackforge_guard", False):
        return
    make_ptx_original, make_cubin_original = CUDABackend.make_ptx, CUDABackend.make_cubin

    def make_ptx(self: Any, src: Any, metadata: dict, opt: Any, capability: int) -> str:
        _check_shared(metadata, capability)
        return make_ptx_original(self, src, metadata, opt, capability)

    def make_cubin(self: Any, src: str, metadata: dict, opt: Any, capability: int) -> bytes:
        _check_shared(metadata, capability)
        return make_cubin_original(self, src, metadata, opt, capability)

    make_cubin.stackforge_guard = True  # type: ignore[attr-defined]
    CUDABackend.make_ptx, CUDABackend.make_cubin = make_ptx, make_cubin


# (id of the JITFunction, arch) -> (the function, target, backend, binder): making a binder
# generates and execs Python, which the audit's twin keys would otherwise do once per case
_BINDERS: dict[tuple[int, int], tuple[Any, Any, Any, Any]] = {}


def specialise(fn: Any, launch: Launch, arch: int) -> tuple[Any, Any, dict, dict, dict, Any, dict]:
    """Triton's own launch binder on `launch` for `arch`: (target, backend, bound arguments,
    signature, constexprs, attrs, options), what `triton.compile` and its cache key are made of."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    if (id(fn), arch) not in _BINDERS:  # the function is kept with it, so its id stays its own
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        _BINDERS[id(fn), arch] = (
            fn,
            target,
            backend,
            create_function_from_signature(fn.signature, fn.params, backend),
        )
    _, target, backend, binder = _BINDERS[id(fn), arch]
    kwargs = {**launch.kwargs, "debug": False}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return target, backend, dict(bound), signature, constexprs, attrs, options


def compile_launch(fn: Any, launch: Launch, arch: int) -> tuple[Any, dict, dict]:
    """Specialise the arguments with Triton's own launch binder, then compile for `arch`:
    (compiled kernel, bound arguments, Triton signature)."""
    import triton
    from triton.compiler import ASTSource

    target, _, bound, signature, constexprs, attrs, options = specialise(fn, launch, arch)
    with contextlib.redirect_stdout(io.StringIO()):  # Triton prints a whole PTX reproducer on a ptxas error
        kernel = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
        )
    kernel.stackforge_options = options.__dict__  # what a retargeted ptxas run needs
    return kernel, bound, signature


def first_error(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "error   :" in ln or "OutOfResources" in ln or "Required:" in ln]
    return (specific or lines or [type(exc).__name__])[0][:300]
