"""Stand-ins the upstream proofs share: vLLM's CMake arch logic run by cmake, its dtype and
backend rules loaded from a tree without importing vLLM, and the PyTorch gates read from source."""

from __future__ import annotations
import __future__

import ast
import logging
import re
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def arch_script(tree: Path) -> str:
    """A cmake -P script that runs the tree's own arch logic: the CUDA_SUPPORTED_ARCHS block, the
    filtering right after "CUDA target architectures", and every per-kernel
    cuda_archs_loose_intersection() with a literal arch list, with cmake/utils.cmake's functions."""
    text = (tree / "CMakeLists.txt").read_text()
    start = text.index("if(DEFINED CMAKE_CUDA_COMPILER_VERSION AND")
    supported = text[start : text.index("endif()", start) + len("endif()")]
    head = 'message(STATUS "CUDA target architectures: ${CUDA_ARCHS}")\n'
    after = text.index(head) + len(head)
    filtering = text[after : text.index("\nelse()", after)]
    lines = [
        "cmake_minimum_required(VERSION 3.20)",
        f'include("{tree}/cmake/utils.cmake")',
        "set(CMAKE_CUDA_COMPILER_VERSION ${CUDA_VERSION})",
        supported,
        "set(CUDA_ARCHS ${REQUESTED})",
        filtering,
        'message(STATUS "RESULT CUDA_ARCHS=${CUDA_ARCHS}")',
    ]
    sources = [text, *(p.read_text() for p in sorted((tree / "cmake/external_projects").glob("*.cmake")))]
    for source in sources:
        for m in re.finditer(
            r'cuda_archs_loose_intersection\((\w+)\s+"([^"$]*)"\s+"\$\{CUDA_ARCHS\}"\)', source
        ):
            lines.append(f'cuda_archs_loose_intersection(_OUT "{m[2]}" "${{CUDA_ARCHS}}")')
            lines.append(f'message(STATUS "RESULT {m[1]}[{m[2]}]=${{_OUT}}")')
    return "\n".join(lines) + "\n"


def run_arch_logic(tree: Path, cuda: str, requested: str, scratch: Path) -> tuple[int, dict[str, str], str]:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed: the arch selection is checked by running CMake itself")
    script = scratch / "archs.cmake"
    script.write_text(arch_script(tree))
    done = subprocess.run(
        [cmake, f"-DCUDA_VERSION={cuda}", f"-DREQUESTED={requested}", "-P", str(script)],
        capture_output=True,
        text=True,
    )
    output = done.stdout + done.stderr
    results = dict(re.findall(r"RESULT (\S+?)=(\S*)", output))
    return done.returncode, results, output


def load_defs(path: Path, names: set[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute the top-level functions/assignments `names` of a module in `namespace`
    (annotations unevaluated, as `from __future__ import annotations` would leave them)."""
    tree = ast.parse(path.read_text())
    body = [
        n
        for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name in names)
        or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in names for t in n.targets))
    ]
    assert {getattr(n, "name", None) or n.targets[0].id for n in body} == names, path  # type: ignore[attr-defined]
    flags = __future__.annotations.compiler_flag
    exec(
        compile(ast.Module(body=body, type_ignores=[]), str(path), "exec", flags=flags, dont_inherit=True),
        namespace,
    )
    return namespace


def method(path: Path, cls: str, name: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    """One method of a class in `path`, as a plain function (first argument: cls/self)."""
    tree = ast.parse(path.read_text())
    klass = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    fn = next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == name)
    fn.decorator_list = []
    flags = __future__.annotations.compiler_flag
    exec(
        compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec", flags=flags, dont_inherit=True),
        namespace,
    )
    return namespace[name]


def device_capability(tree: Path) -> type:
    """vLLM's own DeviceCapability (a NamedTuple with ordering), from the tree."""
    namespace: dict[str, Any] = {"NamedTuple": typing.NamedTuple, "Any": typing.Any}
    path = tree / "vllm/platforms/interface.py"
    klass = next(
        n for n in ast.walk(ast.parse(path.read_text())) if getattr(n, "name", "") == "DeviceCapability"
    )
    exec(compile(ast.Module(body=[klass], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["DeviceCapability"]


class Dtype:
    """Stands in for torch.dtype: torch is not a test dependency, and the code under test only
    compares dtypes and checks isinstance."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"torch.{self.name}"


TORCH = types.SimpleNamespace(
    dtype=Dtype, float16=Dtype("float16"), bfloat16=Dtype("bfloat16"), float32=Dtype("float32")
)


class CudaGpu:
    """The answers vLLM's CUDA platform gives for one GPU (CudaPlatformBase.supported_dtypes:
    bf16 from compute capability 8.0)."""

    def __init__(self, capability: tuple[int, int], name: str) -> None:
        self.capability, self.name = capability, name

    def is_cuda(self) -> bool:
        return True

    @property
    def supported_dtypes(self) -> list[Dtype]:
        if self.capability >= (8, 0):
            return [TORCH.bfloat16, TORCH.float16, TORCH.float32]
        return [TORCH.float16, TORCH.float32]

    def get_device_name(self) -> str:
        return self.name

    def get_device_capability(self) -> Any:
        return types.SimpleNamespace(as_version_str=lambda: "{}.{}".format(*self.capability))


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelname, record.getMessage()))


def resolve_dtype(
    monkeypatch: pytest.MonkeyPatch,
    tree: Path,
    gpu: CudaGpu,
    requested: str,
    config_dtype: Dtype,
    model_type: str = "llama",
) -> tuple[Dtype, list[tuple[str, str]]]:
    """Run the tree's _get_and_verify_dtype for a model whose config says `config_dtype`."""
    logger = logging.getLogger(f"stackforge.test.dtype.{id(gpu)}.{requested}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    messages = Messages()
    logger.handlers[:] = [messages]
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = gpu  # type: ignore[attr-defined]
    namespace: dict[str, Any] = {
        "torch": TORCH,
        "current_platform": gpu,
        "logger": logger,
        "PretrainedConfig": object,
        "ModelArchConfigConvertorBase": types.SimpleNamespace(get_torch_dtype=lambda *a, **k: config_dtype),
    }
    names = {
        "_STR_DTYPE_TO_TORCH_DTYPE",
        "_FLOAT16_NOT_SUPPORTED_MODELS",
        "_is_valid_dtype",
        "_check_valid_dtype",
        "_resolve_auto_dtype",
        "_get_and_verify_dtype",
    }
    load_defs(tree / "vllm/config/model.py", names, namespace)
    # _resolve_auto_dtype imports current_platform from vllm.platforms inside the function.
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    config = types.SimpleNamespace(model_type=model_type)
    dtype = namespace["_get_and_verify_dtype"]("m", config, requested, is_pooling_model=False)
    return dtype, messages.records


FALLBACK = (
    "Your device 'Tesla P40' (with compute capability {}) doesn't support torch.bfloat16. Falling back to {}"
)


def nested_function(path: Path, outer: str, inner: str) -> Callable[..., Any]:
    tree = ast.parse(path.read_text())
    host = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == outer)
    fn = next(n for n in ast.walk(host) if isinstance(n, ast.FunctionDef) and n.name == inner)
    namespace: dict[str, Any] = {}
    flags = __future__.annotations.compiler_flag
    exec(
        compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec", flags=flags, dont_inherit=True),
        namespace,
    )
    return namespace[inner]


def scheduler_bound(tree: Path) -> int:
    """N in create_backend's `...major < N` before GPUTooOldForTriton."""
    source = (tree / "torch/_inductor/scheduler.py").read_text()
    host = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and n.name == "create_backend"
    )
    bounds = [
        n.comparators[0].value
        for n in ast.walk(host)
        if isinstance(n, ast.Compare)
        and isinstance(n.ops[0], ast.Lt)
        and isinstance(n.left, ast.Attribute)
        and n.left.attr == "major"
        and isinstance(n.comparators[0], ast.Constant)
    ]
    assert len(bounds) == 1, bounds
    return bounds[0]


def assert_fp16_fallback(
    monkeypatch: Any, tree: Path, capability: tuple[int, int], requested: str, gpu: type = CudaGpu
) -> None:
    """A bf16 (or auto) request on a GPU below 8.0 runs in float16, with exactly one warning. `gpu`:
    the platform stand-in for the release under test."""
    dtype, messages = resolve_dtype(
        monkeypatch, tree, gpu(capability, "Tesla P40"), requested, TORCH.bfloat16
    )
    assert dtype is TORCH.float16
    version = "{}.{}".format(*capability)
    assert messages == [("WARNING", FALLBACK.format(version, "torch.float16") + " for compatibility.")]


def gemma3_dtype_and_bf16_kept_from_8_0(
    monkeypatch: Any, tree: Path, gpu: type = CudaGpu
) -> tuple[Any, list]:
    """Asserts bf16 (auto or explicit) stays bf16 on an 8.0 GPU; returns what an explicit bf16 request
    for gemma3 (a family vLLM refuses to run in float16) becomes on a P40, with its messages."""
    for requested in ("auto", "bfloat16"):
        kept = resolve_dtype(monkeypatch, tree, gpu((8, 0), "A100"), requested, TORCH.bfloat16)
        assert kept == (TORCH.bfloat16, [])
    return resolve_dtype(
        monkeypatch, tree, CudaGpu((6, 1), "Tesla P40"), "bfloat16", TORCH.bfloat16, "gemma3"
    )
