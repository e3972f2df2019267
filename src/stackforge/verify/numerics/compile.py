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


def guard_shared_memory() -> None:
    """Stop a compile before ptxas when the kernel cannot launch anyway (Triton would raise
    OutOfResources at load time): ptxas takes minutes on the big unrolled FMA kernels."""
    from triton.backends.nvidia.compiler import CUDABackend

    original = CUDABackend.make_cubin
    if getattr(original, "stackforge_guard", False):
        return

    def make_cubin(self: Any, src: str, metadata: dict, opt: Any, capability: int) -> bytes:
        needed = metadata.get("shared", 0)
        limit = CAPABILITIES[capability].smem_per_block_optin if capability in CAPABILITIES else None
        if limit is not None and needed > limit:
            raise SharedMemoryOver(needed, limit)
        return original(self, src, metadata, opt, capability)

    make_cubin.stackforge_guard = True  # type: ignore[attr-defined]
    CUDABackend.make_cubin = make_cubin


def compile_launch(fn: Any, launch: Launch, arch: int) -> tuple[Any, dict, dict]:
    """Specialise the arguments with Triton's own launch binder, then compile for `arch`:
    (compiled kernel, bound arguments, Triton signature)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.kwargs, "debug": False}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    with contextlib.redirect_stdout(io.StringIO()):  # Triton prints a whole PTX reproducer on a ptxas error
        kernel = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
        )
    return kernel, dict(bound), signature


def first_error(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "error   :" in ln or "OutOfResources" in ln or "Required:" in ln]
    return (specific or lines or [type(exc).__name__])[0][:300]
