"""The patch series, proven on real upstream source (marker `upstream`: downloads once into the
stackforge cache, ~20 MB for the vLLM sdist plus a few hundred kB of wheel members).

Every patch in patches/{pytorch,vllm,triton} is applied with `git am --3way`, in order, to the
pinned release rebuilt by stackforge.verify.upstream.repos; then the effect of each part-A patch is checked
on the patched files themselves: CMake's arch selection is run by cmake, the Python gates are
taken out of the patched modules (ast) and called.
"""

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
from typing import Any, TypeVar

import pytest
from conftest import online

from stackforge.core.workspace import Workspace
from stackforge.sources.patches import check_series
from stackforge.spec.envs import list_envs, load_env
from stackforge.verify.upstream import repos as upstream_repos

pytestmark = pytest.mark.upstream

ROOT = Path(__file__).resolve().parents[1]
WS = Workspace(ROOT)
T = TypeVar("T")


def series(name: str) -> list[Path]:
    return sorted(WS.patch_dir(name).glob("*.patch"))


def part_a(patch: Path, name: str) -> bool:
    """This helper's patches: all of pytorch's, vLLM's 0001-0019 (part B numbers from 0020)."""
    return name == "pytorch" or (name == "vllm" and int(patch.name[:4]) < 20)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    """(name, patched) -> a git repository of the pinned upstream, built once per module."""
    built: dict[tuple[str, bool], Path] = {}

    def get(name: str, patched: bool) -> Path:
        if (name, patched) not in built:
            dest = tmp_path_factory.mktemp(f"{name}-{'patched' if patched else 'upstream'}")
            patches = series(name)
            online(lambda: upstream_repos.upstream_repo(name, dest, patch_files=patches))
            if patched:
                upstream_repos.apply_series(dest, patches)
            built[name, patched] = dest
        return built[name, patched]

    return get


# --- every patch applies --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pytorch", "vllm", "triton"])
def test_series_applies_to_the_pinned_release(name: str, tmp_path: Path) -> None:
    patches = series(name)
    if not patches:
        pytest.skip(f"patches/{name}/ holds no patch yet")
    repo = online(lambda: upstream_repos.upstream_repo(name, tmp_path / name, patch_files=patches))
    verdicts = upstream_repos.apply_series(repo, patches)
    assert list(verdicts) == [p.name for p in patches]
    # Each patch was made on exactly this tree, so none should need git's three-way fallback.
    assert {n: v for n, v in verdicts.items() if v != "clean"} == {}
    log = upstream_repos._git(repo, "log", "--format=%an <%ae>", f"-{len(patches)}").splitlines()
    assert log == ["stackforge <stackforge@users.noreply.github.com>"] * len(patches)


@pytest.mark.parametrize("name", ["pytorch", "vllm", "triton"])
def test_patches_check_reports_every_patch_clean_at_the_pin(name: str, tmp_path: Path) -> None:
    """What `stackforge patches check NAME` reports, run on the upstream release rebuilt from PyPI."""
    patches = series(name)
    if not patches:
        pytest.skip(f"patches/{name}/ holds no patch yet")
    repo = online(lambda: upstream_repos.upstream_repo(name, tmp_path / name, patch_files=patches))
    results = check_series(repo, upstream_repos._git(repo, "rev-parse", "HEAD"), patches)
    assert [(r.patch, r.verdict) for r in results] == [(p.name, "clean") for p in patches]


@pytest.mark.parametrize("name", ["pytorch", "vllm"])
def test_part_a_patches_are_format_patch_output_with_an_explained_message(name: str) -> None:
    mine = [p for p in series(name) if part_a(p, name)]
    assert mine, f"no part-A patch in patches/{name}"
    for patch in mine:
        text = patch.read_text()
        assert re.fullmatch(r"\d{4}-[A-Za-z0-9._-]+\.patch", patch.name), patch.name
        assert text.startswith("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n")
        assert "\nSubject: [PATCH] " in text  # -N: no "1/5" numbering
        assert re.search(r"^index [0-9a-f]{40}\.\.[0-9a-f]{40}", text, re.M), f"{patch.name}: --full-index"
        assert not re.search(r"^-- \n\d", text, re.M), f"{patch.name}: has a signature"
        message = text.split("\n---\n", 1)[0]
        for part in ("What fails without it", "Why this is right", "How it was checked"):
            assert part in message, f"{patch.name}: commit message lacks {part!r}"


# --- vLLM: CMake selects 6.0/6.1 and 7.0, and no sm_75+ kernel family -------------------------


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


@pytest.mark.parametrize("env_name", list_envs(WS))
def test_cmake_builds_the_environment_archs_and_no_newer_kernel_family(
    env_name: str, repos: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    env = load_env(WS, env_name)
    rc, results, output = run_arch_logic(
        repos("vllm", True), env.cuda_version, env.torch_cuda_arch_list, tmp_path
    )
    assert rc == 0, output
    assert results.pop("CUDA_ARCHS") == env.torch_cuda_arch_list
    assert len(results) >= 20, output  # Marlin, CUTLASS, Machete, Hadacore, QuTLASS ... all seen
    assert {k: v for k, v in results.items() if v} == {}, "kernel families selected for an old GPU"


def test_unpatched_cmake_drops_pascal(repos: Callable[[str, bool], Path], tmp_path: Path) -> None:
    rc, results, output = run_arch_logic(repos("vllm", False), "12.9", "6.0;6.1", tmp_path)
    assert rc == 0 and results["CUDA_ARCHS"] == "", output


@pytest.mark.parametrize("requested", ["6.0;6.1", "7.0"])
def test_cmake_stops_when_cuda_13_cannot_build_the_archs(
    requested: str, repos: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    rc, _, output = run_arch_logic(repos("vllm", True), "13.0", requested, tmp_path)
    assert rc != 0
    flat = " ".join(output.split())
    assert f"None of the requested CUDA architectures ({requested}) can be built with CUDA 13.0" in flat
    assert "Compute capability 6.x and 7.0 need CUDA 12.x." in flat


# --- vLLM: dtype and attention backend choices, run from the patched modules ------------------


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


@pytest.mark.parametrize("capability", [(6, 0), (6, 1), (7, 0)])
@pytest.mark.parametrize("requested", ["auto", "bfloat16"])
def test_bf16_runs_in_fp16_below_8_0_with_one_warning(
    capability: tuple[int, int],
    requested: str,
    repos: Callable[[str, bool], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dtype, messages = resolve_dtype(
        monkeypatch, repos("vllm", True), CudaGpu(capability, "Tesla P40"), requested, TORCH.bfloat16
    )
    assert dtype is TORCH.float16
    version = "{}.{}".format(*capability)
    assert messages == [("WARNING", FALLBACK.format(version, "torch.float16") + " for compatibility.")]


def test_bf16_is_kept_from_8_0_and_fp16_models_fall_back_to_fp32(
    repos: Callable[[str, bool], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = repos("vllm", True)
    for requested in ("auto", "bfloat16"):
        assert resolve_dtype(monkeypatch, tree, CudaGpu((8, 0), "A100"), requested, TORCH.bfloat16) == (
            TORCH.bfloat16,
            [],
        )
    dtype, messages = resolve_dtype(
        monkeypatch, tree, CudaGpu((6, 1), "Tesla P40"), "bfloat16", TORCH.bfloat16, "gemma3"
    )
    assert dtype is TORCH.float32  # vLLM refuses float16 for gemma3
    assert messages[0] == ("WARNING", FALLBACK.format("6.1", "torch.float32") + " for compatibility.")


def test_unpatched_vllm_keeps_an_explicit_bf16_on_pascal(
    repos: Callable[[str, bool], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the patch fixes: v0.14.0 accepts bf16 here and fails later in the worker."""
    dtype, messages = resolve_dtype(
        monkeypatch, repos("vllm", False), CudaGpu((6, 1), "Tesla P40"), "bfloat16", TORCH.bfloat16
    )
    assert (dtype, messages) == (TORCH.bfloat16, [])


def test_attention_backends_on_old_gpus(repos: Callable[[str, bool], Path]) -> None:
    """As shipped, v0.14.0 already leaves only TRITON_ATTN below 7.5 (no patch needed)."""
    tree = repos("vllm", True)
    capability = device_capability(tree)
    backends = tree / "vllm/v1/attention/backends"
    gates = {
        cls: method(backends / f, cls, "supports_compute_capability", {"DeviceCapability": capability})
        for f, cls in (
            ("flash_attn.py", "FlashAttentionBackend"),
            ("flashinfer.py", "FlashInferBackend"),
            ("triton_attn.py", "TritonAttentionBackend"),
        )
    }
    for old in ((6, 0), (6, 1), (7, 0)):
        assert {cls: gate(None, capability(*old)) for cls, gate in gates.items()} == {
            "FlashAttentionBackend": False,
            "FlashInferBackend": False,
            "TritonAttentionBackend": True,
        }


def test_triton_attn_refuses_fp8_kv_cache_below_8_9(repos: Callable[[str, bool], Path]) -> None:
    tree = repos("vllm", True)
    capability = device_capability(tree)
    namespace = {
        "DeviceCapability": capability,
        "current_platform": types.SimpleNamespace(is_cuda=lambda: True),
    }
    path = tree / "vllm/v1/attention/backends/triton_attn.py"
    check = method(path, "TritonAttentionBackend", "supports_combination", namespace)

    def reason(kv: str, cap: tuple[int, int]) -> str | None:
        return check(None, 128, TORCH.float16, kv, 16, False, False, False, capability(*cap))

    for kv, cap in (("fp8", (6, 1)), ("fp8_e4m3", (7, 0)), ("fp8_e5m2", (6, 0)), ("fp8", (8, 6))):
        text = reason(kv, cap)
        assert text is not None and "needs compute capability 8.9" in text and "--kv-cache-dtype auto" in text
        assert "{}.{}".format(*cap) in text
    assert reason("auto", (6, 1)) is None
    assert reason("fp8", (8, 9)) is None
    unpatched = repos("vllm", False) / "vllm/v1/attention/backends/triton_attn.py"
    assert "def supports_combination" not in unpatched.read_text()  # v0.14.0 accepts fp8 anywhere


# --- PyTorch: Inductor's Triton gates admit major 6 -------------------------------------------


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


@pytest.mark.parametrize("patched", [False, True])
def test_inductor_triton_gates(patched: bool, repos: Callable[[str, bool], Path]) -> None:
    tree = repos("pytorch", patched)
    lowest = 6 if patched else 7

    def props(major: int) -> Any:
        return types.SimpleNamespace(major=major, minor=0)

    extra = nested_function(tree / "torch/utils/_triton.py", "has_triton", "cuda_extra_check")
    worker = types.SimpleNamespace(get_device_properties=lambda: props(current))
    torch = types.SimpleNamespace(
        version=types.SimpleNamespace(hip=None),
        cuda=types.SimpleNamespace(get_device_properties=lambda device=None: props(current)),
    )
    capable = method(
        tree / "torch/_dynamo/device_interface.py", "CudaInterface", "is_triton_capable", {"torch": torch}
    )
    for current in (5, 6, 7, 8):
        assert extra(types.SimpleNamespace(Worker=worker)) is (current >= lowest)
        assert capable(None) is (current >= lowest)
    assert scheduler_bound(tree) == lowest
    message = (tree / "torch/_inductor/exc.py").read_text()
    assert f"Triton only supports devices of CUDA Capability >= {lowest}.0" in message
