"""Compile, without a GPU, the device code whose numerics `stackforge.verify.numerics.gpu` checks on a GPU.

The numerics suite, for sm_60, sm_61 and sm_70 (`--archs`):

* the CUDA C++ `atomicAdd(__half*)` fallback that our vLLM patch adds (csrc/cuda_atomic_compat.cuh: a
  CAS loop on the 32-bit word under `__CUDA_ARCH__ < 700`), compiled from the vLLM tree by NVRTC 12.9
  (PyPI `nvidia-cuda-nvrtc-cu12==12.9.86`, headers from `nvidia-cuda-runtime-cu12==12.9.79`):
  compute_60/61 get the fallback, compute_70 the native instruction;
* Triton atomics (`stackforge.verify.numerics.atomics`): what patches/triton 0002/0003 lower differently
  below sm_70;
* vLLM's attention kernels loaded from the vLLM tree (`stackforge.verify.kernels.loader`) at batches other
  than the kernel audit's: unified attention 2D, 3D + reduce_segments (what TRITON_ATTN runs),
  prefix prefill and the encoder's prefill attention at the tiles the patched launchers pick.

Triton kernels are compiled the way the kernel audit compiles them (`compile_launch`: Triton's
own launch binder on `kernel_cases` launches), with the installed Triton plus patches/triton
through `triton_overlay`: run as a program, this module prepares the overlay and re-runs itself
in a subprocess with the overlay first on PYTHONPATH, as the audit's workers do.

Each record is `<name>-sm<arch>.json` (schema `stackforge.numerics/1`, see `stackforge.verify.numerics.gpu`)
beside its PTX. What cannot be compiled is reported, not hidden (e.g. the fallback header missing
from an unpatched tree, or an sm_61 atomic without the Triton patches).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import importlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackforge.verify.kernels.cases import Attn, Case, Launch, Tensor
from stackforge.verify.numerics.gpu import SCHEMA, TOLERANCES

ARCHS = (60, 61, 70)

# The kernel includes the fallback header our vLLM patch adds (csrc/cuda_atomic_compat.cuh), so what
# runs is the patch's own code: below sm_70 its CAS loop, from sm_70 the native instruction.
HALF_ATOMIC_SOURCE = r"""
#include <cuda_fp16.h>
#include "cuda_atomic_compat.cuh"

extern "C" __global__ void scatter_add_half(__half* out, const __half* vals, const int* idx, __half* olds, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) olds[i] = atomicAdd(out + idx[i], vals[i]);
}
"""
FALLBACK_HEADER = "csrc/cuda_atomic_compat.cuh"

HALF_ATOMIC_CASES = (
    # slots adjacent in memory share 32-bit words; idx = i % slots puts neighbours in the same warp
    {
        "name": "ones",
        "n": 16 * 2048,
        "slots": 16,
        "values": "ones",
        "label": "32768 adds of 1.0 into 16 slots",
    },
    {
        "name": "sixty-fourths",
        "n": 256 * 512,
        "slots": 256,
        "values": "sixty-fourths",
        "label": "131072 adds of j/64 into 256 slots",
    },
    {
        "name": "random",
        "n": 4096 * 8,
        "slots": 4096,
        "values": "random",
        "label": "32768 adds of N(0,1)/4 into 4096 slots",
    },
)


@dataclass
class Built:
    """What happened to one record: compiled (with a short detail) or not (why)."""

    case: str
    arch: int
    ok: bool
    detail: str


def _nvidia_file(*parts: str) -> Path | None:
    spec = importlib.util.find_spec("nvidia")
    for folder in spec.submodule_search_locations if spec else []:
        path = Path(folder).joinpath(*parts)
        if path.exists():
            return path
    return None


def nvrtc_compile(source: str, arch: int, name: str = "kernel.cu", includes: tuple[Path, ...] = ()) -> str:
    """CUDA C++ -> PTX for compute_<arch> with NVRTC 12.x from the PyPI wheels."""
    lib_path = _nvidia_file("cuda_nvrtc", "lib", "libnvrtc.so.12")
    include = _nvidia_file("cuda_runtime", "include")
    if lib_path is None or include is None:
        raise RuntimeError(
            "NVRTC 12.x not installed: pip install nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12"
        )
    lib = ctypes.CDLL(str(lib_path))
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None):
        raise RuntimeError("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture=compute_{arch}".encode(), f"-I{include}".encode(), b"--std=c++17"]
    opts += [f"-I{folder}".encode() for folder in includes]
    result = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if result:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        raise RuntimeError(f"NVRTC compute_{arch}: {log.value.decode(errors='replace').strip()}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()


def nvrtc_version() -> str:
    lib_path = _nvidia_file("cuda_nvrtc", "lib", "libnvrtc.so.12")
    if lib_path is None:
        return "NVRTC (not installed)"
    major, minor = ctypes.c_int(), ctypes.c_int()
    ctypes.CDLL(str(lib_path)).nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"NVRTC {major.value}.{minor.value}"


def write_record(out: Path, name: str, record: dict, ptxs: list[str]) -> Path:
    """`<name>.json` plus one `<name>[.N].ptx` per launch (the record's launches name them)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, (launch, ptx) in enumerate(zip(record["launches"], ptxs, strict=True)):
        launch["ptx"] = f"{name}.ptx" if len(ptxs) == 1 else f"{name}.{i}.ptx"
        (out / launch["ptx"]).write_text(ptx)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"schema": SCHEMA, **record}, indent=1, sort_keys=True) + "\n")
    return path


def build_half_atomic(out: Path, vllm: Path, archs: tuple[int, ...] = ARCHS) -> list[Built]:
    """atomicAdd(__half*) from the vLLM tree's fallback header: its CAS loop below compute_70, the
    native instruction for compute_70. Without the patch, compute_6x does not compile (reported)."""
    built = []
    csrc = vllm / FALLBACK_HEADER
    for arch in archs:
        try:
            if not csrc.is_file():
                raise RuntimeError(f"{csrc} does not exist: use the patched vLLM tree")
            ptx = nvrtc_compile(HALF_ATOMIC_SOURCE, arch, "half_atomic.cu", includes=(csrc.parent,))
        except RuntimeError as exc:
            built += [
                Built(f"half_atomic_add-{c['name']}-sm{arch}", arch, False, str(exc))
                for c in HALF_ATOMIC_CASES
            ]
            continue
        for case in HALF_ATOMIC_CASES:
            name = f"half_atomic_add-{case['name']}-sm{arch}"
            record = {
                "check": "half_atomic_add",
                "kernel": "atomicAdd(__half*) " + ("CAS fallback (vLLM patch)" if arch < 70 else "native"),
                "label": case["label"],
                "arch": arch,
                "shape": {"n": case["n"], "slots": case["slots"], "values": case["values"], "seed": 5},
                "launches": [
                    {
                        "entry": "scatter_add_half",
                        "grid": [math.ceil(case["n"] / 256), 1, 1],
                        "block": [256, 1, 1],
                        "shared": 0,
                        "args": [
                            {"name": "out", "tensor": "out"},
                            {"name": "vals", "tensor": "vals"},
                            {"name": "idx", "tensor": "idx"},
                            {"name": "olds", "tensor": "olds"},
                            {"name": "n", "value": case["n"], "type": "i32"},
                        ],
                    }
                ],
                "tolerance": TOLERANCES["half_atomic_add"],
                "compiled_with": nvrtc_version(),
            }
            write_record(out, name, record, [ptx])
            built.append(Built(name, arch, True, "compiled"))
    return built


# --- Triton: one compile path for the audit and the suite ------------------------------------------


class SharedMemoryOver(Exception):
    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(f"needs {needed} bytes of shared memory per block, limit {limit}")
        self.needed, self.limit = needed, limit


def smem_limit(arch: int) -> int:
    """Shared memory per block a Triton kernel may use: Triton's driver opts into the maximum
    (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN) and refuses kernels above it."""
    from stackforge.cuda.caps import CAPABILITIES

    return CAPABILITIES[arch].smem_per_block_optin


def guard_shared_memory() -> None:
    """Stop a compile before ptxas when the kernel cannot launch anyway (Triton would raise
    OutOfResources at load time): ptxas takes minutes on the big unrolled FMA kernels."""
    from triton.backends.nvidia.compiler import CUDABackend

    from stackforge.cuda.caps import CAPABILITIES

    original = CUDABackend.make_cubin
    if getattr(original, "stackforge_guard", False):
        return

    def make_cubin(self: Any, src: str, metadata: dict, opt: Any, capability: int) -> bytes:
        needed = metadata.get("shared", 0)
        if capability in CAPABILITIES and needed > smem_limit(capability):
            raise SharedMemoryOver(needed, smem_limit(capability))
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


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else repr(value)


def _tensor_key(tensors: dict[str, dict], desc: dict, param: str) -> str:
    """Launches of one record share tensors by role (the 3D kernel's segment buffers are what
    reduce_segments reads); a role seen with another shape gets the parameter's name added."""
    key = desc["role"]
    if key in tensors and tensors[key] != desc:
        key = f"{desc['role']}.{param}"
    tensors[key] = desc
    return key


def triton_launch(
    kernel: Any, bound: dict, signature: dict, launch: Launch, case: Case, tensors: dict
) -> dict:
    """The numerics launch entry of a compiled kernel (runtime arguments in .entry order; tensors
    described in `tensors`), with the constexprs baked in and where vLLM makes the launch."""
    args, constexprs = [], {}
    for name, ty in signature.items():
        value = bound[name]
        if ty == "constexpr":
            constexprs[name] = _jsonable(value)
        elif isinstance(value, Tensor):
            args.append({"name": name, "tensor": _tensor_key(tensors, value.describe(), name)})
        else:
            args.append({"name": name, "value": value, "type": ty})
    md = kernel.metadata
    return {
        "entry": md.name,
        "grid": list(launch.grid) + [1] * (3 - len(launch.grid)),
        "block": [md.num_warps * 32, 1, 1],
        "shared": md.shared,
        "global_scratch": {"size": md.global_scratch_size, "align": md.global_scratch_align},
        "profile_scratch": {"size": md.profile_scratch_size, "align": md.profile_scratch_align},
        "args": args,
        "constexprs": constexprs,
        "case": case.id,
        "module": case.module,
        "function": case.function,
        "launcher": case.launcher,
    }


TILE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_Q", "TILE_SIZE")


def tiles(launch: dict) -> str:
    """The tile sizes a launch was compiled with, for labels: "BLOCK_M=64 BLOCK_N=64 ..."."""
    c = launch["constexprs"]
    keys = [k for k in TILE_KEYS if k in c]
    if "PHYSICAL_BLOCK_SIZE" in c:  # prefix prefill: BLOCK_SIZE is the width of the context tiles
        keys.append("BLOCK_SIZE")
    return " ".join(f"{k}={c[k]}" for k in keys)


def triton_record(check: str, kernel: str, label: str, arch: int, compiled: list[tuple]) -> tuple[dict, list]:
    """(record, PTX per launch) for launches compiled in order: `compiled` holds
    (case, kernel, bound, signature, launch) tuples, launched on one shared set of tensors."""
    import triton

    tensors: dict[str, dict] = {}
    launches = [triton_launch(k, b, s, ln, case, tensors) for case, k, b, s, ln in compiled]
    shown = " / ".join(t for t in dict.fromkeys(tiles(ln) for ln in launches) if t)
    record = {
        "check": check,
        "kernel": kernel,
        "label": f"{label} ({shown})" if shown else label,
        "arch": arch,
        "shape": compiled[0][4].scenario,
        "tensors": tensors,
        "launches": launches,
        "tolerance": TOLERANCES.get(check),
        "compiled_with": f"triton {triton.__version__}",
    }
    return record, [k.asm["ptx"] for _, k, _, _, _ in compiled]


def first_error(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "error   :" in ln or "OutOfResources" in ln or "Required:" in ln]
    return (specific or lines or [type(exc).__name__])[0][:300]


# --- the suite's Triton records ----------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One record of the suite: `cases` launched in order on shared tensors, checked by `check`."""

    name: str
    check: str
    kernel: str
    label: str
    cases: tuple[Case, ...]


def _attn_label(kind: str, a: Attn) -> str:
    q, s = a.lens or ((), ())
    batch = f"seqs={_join(s)}" if kind == "encoder" else f"q={_join(q)} kv={_join(s)}"
    return f"{kind} {batch} heads {a.num_q_heads}/{a.num_kv_heads} d={a.head_size} blk{a.block_size}".strip()


def _join(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


# (kind, Attn with the batch as (query_lens, seq_lens)); seq_len counts the cached context and the
# new tokens. Heads, head sizes and KV block sizes vary; contexts span several tiles and KV blocks.
UNIFIED_2D = (
    ("prefill", Attn(128, 8, 2, 16, lens=((64, 100), (64, 100)))),
    ("mixed", Attn(64, 32, 8, 16, lens=((1, 1, 40), (300, 77, 200)))),
    ("chunked prefill", Attn(80, 12, 4, 32, lens=((50,), (130,)))),
    ("decode rows", Attn(256, 16, 16, 16, lens=((1, 1, 1, 1), (17, 64, 200, 513)))),
)
UNIFIED_3D = (  # decode-only batches below vLLM's 3D threshold (128 // kv heads sequences)
    ("decode", Attn(128, 32, 8, 16, lens=((1, 1, 1), (33, 300, 1000)))),
    ("decode", Attn(64, 14, 2, 32, lens=((1, 1), (5, 700)))),
)
PREFIX_PREFILL = (  # the tiles patches/vllm 0020 sizes from the shared-memory limit
    ("prefill", Attn(64, 32, 8, 16, lens=((64, 1, 30), (64, 200, 130)))),
    ("prefill", Attn(128, 32, 8, 16, lens=((100, 37), (400, 37)))),
    ("prefill", Attn(256, 8, 2, 32, lens=((50, 16), (333, 16)))),
)
ENCODER = (  # patches/vllm 0021: BLOCK from the shared-memory limit
    ("encoder", Attn(64, 16, 16, 16, lens=((), (150, 33)))),
    ("encoder", Attn(80, 32, 8, 16, lens=((), (100, 7, 64)))),
    ("encoder", Attn(256, 8, 2, 16, lens=((), (90, 17)))),
)


def suite_items() -> list[Item]:
    """Every Triton record of the suite except the archs: atomics kernels, then vLLM attention."""
    from stackforge.verify.kernels import cases as kc
    from stackforge.verify.numerics.atomics import atomic_cases

    items = [
        Item(f"{case.id.replace('/', '-')}", check, case.kernel, case.shape, (case,))
        for check, case in atomic_cases()
    ]
    templates = {c.kernel: c for c in kc.attention_cases((64,))}

    def vcase(kernel: str, build: Any, a: Attn, tag: str) -> Case:
        return dataclasses.replace(
            templates[kernel], id=f"{kernel}/{tag}", shape=_attn_label("", a), build=build(a)
        )

    for i, (kind, a) in enumerate(UNIFIED_2D):
        case = vcase("unified_attention_2d", kc.unified_2d, a, f"n{i}")
        items.append(Item(f"unified_attention_2d-{i}", "unified_attention_2d", "kernel_unified_attention_2d",
                          _attn_label(kind, a), (case,)))  # fmt: skip
    for i, (kind, a) in enumerate(UNIFIED_3D):
        pair = (vcase("unified_attention_3d", kc.unified_3d, a, f"n{i}"),
                vcase("reduce_segments", kc.reduce_segments, a, f"n{i}"))  # fmt: skip
        items.append(Item(f"unified_attention_3d-{i}", "unified_attention_3d+reduce_segments",
                          "kernel_unified_attention_3d + reduce_segments", _attn_label(kind, a), pair))  # fmt: skip
    for kind, a in PREFIX_PREFILL:
        case = vcase("prefix_prefill", kc.prefix_prefill, a, f"h{a.head_size}")
        items.append(Item(f"prefix_prefill-h{a.head_size}", "prefix_prefill", "prefix_prefill _fwd_kernel",
                          _attn_label(kind, a), (case,)))  # fmt: skip
    for kind, a in ENCODER:
        case = vcase("encoder_prefill_attention", kc.encoder_prefill, a, f"h{a.head_size}")
        items.append(Item(f"encoder_prefill_attention-h{a.head_size}", "encoder_prefill_attention",
                          "triton_prefill_attention _fwd_kernel", _attn_label(kind, a), (case,)))  # fmt: skip
    return items


def _modules(items: list[Item], vllm: Path | None, arch: int) -> dict[str, Any]:
    """The module of every case (vLLM files through the loader, for this arch); a module that does
    not load maps to its exception."""
    from stackforge.verify.kernels.loader import KernelLoader

    names = {c.module for item in items for c in item.cases}
    modules: dict[str, Any] = {}
    vllm_names = sorted(n for n in names if n.startswith("vllm."))
    for name in sorted(names - set(vllm_names)):
        modules[name] = importlib.import_module(name)
    if vllm_names:
        if vllm is None:
            raise ValueError("vLLM kernels need a vLLM tree")
        loader = KernelLoader(vllm, arch)
        with loader.active():  # import every module first: compiles run with the stand-ins gone
            for name in vllm_names:
                try:
                    modules[name] = loader.load(name)
                except Exception as exc:
                    modules[name] = exc
    return modules


def build_triton(
    out: Path, vllm: Path | None, archs: tuple[int, ...] = ARCHS, items: list[Item] | None = None
) -> list[Built]:
    """Compile every item for every arch with the Triton this process imports."""
    items = suite_items() if items is None else items
    guard_shared_memory()
    built = []
    for arch in archs:
        modules = _modules(items, vllm, arch)
        for item in items:
            name = f"{item.name}-sm{arch}"
            try:
                compiled = []
                for case in item.cases:
                    module = modules[case.module]
                    if isinstance(module, Exception):
                        raise module
                    launch = case.build(module, arch, smem_limit(arch))
                    kernel, bound, signature = compile_launch(getattr(module, case.function), launch, arch)
                    if kernel.metadata.shared > smem_limit(arch):
                        raise SharedMemoryOver(kernel.metadata.shared, smem_limit(arch))
                    compiled.append((case, kernel, bound, signature, launch))
            except Exception as exc:  # ptxas, shared memory, a kernel file that does not load: report it
                built.append(Built(name, arch, False, f"{type(exc).__name__}: {first_error(exc)}"))
                continue
            record, ptxs = triton_record(item.check, item.kernel, item.label, arch, compiled)
            write_record(out, name, record, ptxs)
            shared = ", ".join(f"{ln['shared']} B" for ln in record["launches"])
            built.append(Built(name, arch, True, f"shared {shared}; {record['label']}"))
    return built


def build_all(
    out: Path, vllm: Path, archs: tuple[int, ...] = ARCHS, only: tuple[str, ...] | None = None
) -> list[Built]:
    """The whole suite, or the records whose name starts with one of `only`."""
    items = [i for i in suite_items() if only is None or i.name.startswith(only)]
    built = build_half_atomic(out, vllm, archs) if only is None or "half_atomic_add".startswith(only) else []
    return built + build_triton(out, vllm, archs, items)


# --- running the build with the patched Triton ------------------------------------------------------


def overlay_env(triton_path: Path | None, cache: Path) -> dict[str, str]:
    """The environment of a process that must import the patched Triton: the overlay first on
    PYTHONPATH, Triton's cache where the caller keeps its state."""
    env = dict(os.environ)
    env["TRITON_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(triton_path)] * (triton_path is not None) + [p for p in [env.get("PYTHONPATH")] if p]
    )
    return env


def build_in_subprocess(
    out: Path,
    vllm: Path,
    archs: tuple[int, ...],
    triton_path: Path | None,
    state: Path,
    only: tuple[str, ...] | None = None,
) -> tuple[list[Built], str]:
    """Run the suite's build in a fresh process that imports the patched Triton (the overlay at
    `triton_path`); (what was built, the process's log)."""
    cmd = [sys.executable, "-m", "stackforge.verify.numerics.suite", str(out), "--vllm", str(vllm)]
    cmd += ["--archs", ",".join(map(str, archs)), "--worker"]
    cmd += ["--only", ",".join(only)] if only else []
    done = subprocess.run(
        cmd, env=overlay_env(triton_path, state / "triton-cache"), capture_output=True, text=True
    )
    built = [
        Built(**json.loads(ln[len("@built ") :]))
        for ln in done.stdout.splitlines()
        if ln.startswith("@built ")
    ]
    if done.returncode != 0 and not built:
        built = [Built("numerics_build", 0, False, (done.stderr.strip().splitlines() or ["died"])[-1][:300])]
    return built, done.stdout + done.stderr


def vllm_tree(which: str, scratch: Path) -> Path:
    """The vLLM 0.14.0 source to compile: a path, "upstream" (the PyPI sdist, cached) or "patched"
    (the sdist with patches/vllm/*.patch applied in a git repository under `scratch`)."""
    from stackforge.verify.upstream import pypi as upstream

    if which == "upstream":
        return upstream.vllm_sdist()
    if which == "patched":
        return upstream.patched_repo("vllm", scratch / "vllm")
    return Path(which)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stackforge.verify.numerics.suite", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="folder for the PTX and launch records")
    parser.add_argument(
        "--vllm",
        default="patched",
        help="vLLM tree for the vLLM kernels: PATH, upstream or patched (default)",
    )
    parser.add_argument("--archs", default=",".join(map(str, ARCHS)), help="PTX targets (default 60,61,70)")
    parser.add_argument(
        "--triton-patches",
        help="folder of Triton patches to overlay (default the workspace's patches/triton; 'none')",
    )
    parser.add_argument("--only", help="only records whose name starts with one of these (comma-separated)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    archs = tuple(int(a) for a in args.archs.split(","))
    only = tuple(args.only.split(",")) if args.only else None
    if args.worker:  # the patched Triton is on sys.path already
        built = build_all(args.out, Path(args.vllm), archs, only)
        for b in built:
            print("@built " + json.dumps(dataclasses.asdict(b)), flush=True)
        return 0
    from stackforge.core.workspace import find_workspace
    from stackforge.verify.kernels import overlay as triton_overlay

    ws = find_workspace()
    state = ws.state / "kernel-audit"  # the overlay and Triton cache the kernel audit uses too
    if args.triton_patches == "none":
        patches: list[Path] = []
    else:
        patches = sorted(Path(args.triton_patches or ws.patch_dir("triton")).glob("*.patch"))
    setup = triton_overlay.prepare(state, patches)
    with tempfile.TemporaryDirectory(prefix="stackforge-numerics-") as scratch:
        vllm = vllm_tree(args.vllm, Path(scratch)).resolve()
        built, _ = build_in_subprocess(args.out.resolve(), vllm, archs, setup.path, state, only)
    for b in built:
        print(f"{'ok  ' if b.ok else 'FAIL'} sm_{b.arch} {b.case}: {b.detail}")
    print(
        f"{sum(b.ok for b in built)} of {len(built)} records compiled into {args.out} "
        f"(triton {setup.version}, {setup.how}{', ' + ', '.join(setup.patches) if setup.patches else ''})"
    )
    return 0 if built and all(b.ok for b in built) else 1


if __name__ == "__main__":
    sys.exit(main())
