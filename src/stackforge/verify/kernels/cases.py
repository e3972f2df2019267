"""Which vLLM Triton kernels the kernel audit compiles, and with which arguments.

Each `Case` rebuilds one launch the way vLLM 0.14.0's Python launcher makes it (the file and
function named in `Case.launcher`): the same positional/keyword arguments, tensor dtypes and
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

from stackforge.verify.kernels.cases_attention import HEAD_SIZES, attention_cases
from stackforge.verify.kernels.cases_other import other_cases
from stackforge.verify.kernels.launch import Case

__all__ = ["HEAD_SIZES", "Case", "all_cases", "attention_cases", "other_cases"]


def all_cases(head_sizes: tuple[int, ...] = HEAD_SIZES) -> list[Case]:
    return attention_cases(head_sizes) + other_cases()
