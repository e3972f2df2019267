"""Which dtype vLLM runs a model in on these GPUs, read from the vLLM tree itself (no list of ours).

The first stack's vLLM: `vllm/platforms/cuda.py` `CudaPlatform.supported_dtypes` gives [float16, float32]
from capability 6.0 up to 8.0 (no bf16), and `vllm/config/model.py` `_resolve_auto_dtype` drops
float16 for the model types of `_FLOAT16_NOT_SUPPORTED_MODELS` (Gemma 2/3, PLaMo 2, GLM-4:
"Numerical instability"), so `--dtype auto` runs those in float32 on Pascal and Volta.
"""

from __future__ import annotations

import ast
from pathlib import Path

from stackforge.verify.kernels.tree import parse

_TORCH_DTYPES = ("float16", "bfloat16", "float32")


def fp16_refused(vllm_src: Path) -> dict[str, str]:
    """model_type -> reason, from `_FLOAT16_NOT_SUPPORTED_MODELS` ({} when the tree has none)."""
    file = vllm_src / "vllm" / "config" / "model.py"
    if not file.is_file():
        return {}
    tree = parse(file)
    assert tree is not None  # is_file() above
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_FLOAT16_NOT_SUPPORTED_MODELS" for t in targets):
                value = ast.literal_eval(node.value)
                return {str(k): str(v) for k, v in value.items()}
    return {}


def supported_dtypes(vllm_src: Path, arch: int) -> list[str]:
    """`CudaPlatform.supported_dtypes` for compute capability `arch` (61 = 6.1), in vLLM's order."""
    file = vllm_src / "vllm" / "platforms" / "cuda.py"
    if not file.is_file():  # a partial tree: the first stack's answer for 6.0 <= arch < 8.0
        return ["bfloat16", "float16", "float32"] if arch >= 80 else ["float16", "float32"]
    tree = parse(file)
    assert tree is not None  # is_file() above
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "supported_dtypes":
            for stmt in node.body:
                if isinstance(stmt, ast.If):
                    call = stmt.test
                    needed = call.args[0].value if isinstance(call, ast.Call) and call.args else None
                    if isinstance(needed, int) and arch >= needed:
                        return _names(stmt.body)
                elif isinstance(stmt, ast.Return):
                    return _names([stmt])
    return ["float16", "float32"]


def _names(body: list[ast.stmt]) -> list[str]:
    for stmt in body:
        if isinstance(stmt, ast.Return) and isinstance(stmt.value, ast.List):
            return [
                e.attr for e in stmt.value.elts if isinstance(e, ast.Attribute) and e.attr in _TORCH_DTYPES
            ]
    return []


def auto_dtype(vllm_src: Path, arch: int, model_type: str) -> str:
    """What `--dtype auto` gives a float16/bfloat16 checkpoint of `model_type` on `arch`."""
    supported = [
        d
        for d in supported_dtypes(vllm_src, arch)
        if d != "float16" or model_type not in fp16_refused(vllm_src)
    ]
    return supported[0] if supported else "float32"
