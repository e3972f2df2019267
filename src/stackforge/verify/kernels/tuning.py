"""A kernel's `@triton.autotune` and `@triton.heuristics` layers, as the audit meets them.

vLLM's Mamba, FLA and MoE-LoRA kernels are not bare `JITFunction`s: `@triton.heuristics` computes
constexprs from the arguments at every launch, and `@triton.autotune` benchmarks each of its
`configs` at the first launch of a key and keeps the fastest. The pinned Triton's autotuner scores a
config that raises `OutOfResources` (shared memory over the device's opt-in limit) as infinitely
slow, so it never keeps one, but only after compiling it in full (Triton, LLVM and ptxas) at that
first launch; when no config fits, the launch fails. So the audit compiles every config (`Case.config`),
and `launch_kwargs` walks the layers as Triton's `run` does, outermost first: a heuristic sees the
arguments and what outer layers added, a config adds its meta-parameters, num_warps and num_stages.
"""

from __future__ import annotations

from typing import Any

__all__ = ["autotuner", "jit_function", "launch_kwargs", "n_configs", "pruned"]


def jit_function(obj: Any) -> Any:
    """The `JITFunction` under any autotune/heuristics layers."""
    from triton.runtime.jit import JITFunction

    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj


def autotuner(obj: Any) -> Any | None:
    """The first `Autotuner` layer of a kernel, or None."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    while not isinstance(obj, JITFunction):
        if isinstance(obj, Autotuner):
            return obj
        obj = obj.fn
    return None


def n_configs(obj: Any) -> int:
    """How many configs the autotuner benchmarks (1 for a kernel without one)."""
    tuner = autotuner(obj)
    return len(tuner.configs) if tuner is not None else 1


def launch_kwargs(obj: Any, args: tuple, kwargs: dict[str, Any], config: int | None = None) -> dict[str, Any]:
    """`kwargs` plus what the layers above the `JITFunction` add at a launch with `args`, with the
    autotuner's `config`-th config (required when the kernel is autotuned)."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.jit import JITFunction

    out = dict(kwargs)
    while not isinstance(obj, JITFunction):
        if isinstance(obj, Heuristics):
            for name, rule in obj.values.items():
                out[name] = rule({**dict(zip(obj.arg_names, args, strict=False)), **out})
        elif isinstance(obj, Autotuner):
            if config is None:
                raise ValueError(
                    f"{obj.base_fn.__name__} is autotuned: name one of its {len(obj.configs)} configs"
                )
            out.update(obj.configs[config].all_kwargs())
        obj = obj.fn
    return out


def pruned(obj: Any, kwargs: dict[str, Any], config: int, max_shared_mem: int) -> bool:
    """Whether the tree's own `prune_configs_by` drops `config` on a device with `max_shared_mem`
    bytes of shared memory per block. Our series' pruning hooks (patches/vllm, the Mamba SSD
    kernels) carry their rule as `fitting(configs, kwargs, max_shared_mem)`, which the device's
    limit feeds at a real launch; a hook without it (or none) prunes nothing the audit can see."""
    tuner = autotuner(obj)
    fitting = getattr(getattr(tuner, "early_config_prune", None), "fitting", None)
    if tuner is None or fitting is None:
        return False
    return tuner.configs[config] not in fitting(tuner.configs, kwargs, max_shared_mem)
