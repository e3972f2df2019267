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
import dataclasses
import importlib
import importlib.util
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackforge.cuda.caps import CAPABILITIES
from stackforge.verify.kernels.cases_attention import Attn
from stackforge.verify.kernels.launch import Case, fit
from stackforge.verify.kernels.worker import Worker, WorkerLost, overlay_env, serve
from stackforge.verify.numerics.compile import (
    SharedMemoryOver,
    compile_launch,
    first_error,
    guard_shared_memory,
)
from stackforge.verify.numerics.nvrtc import ARCHS, build_half_atomic
from stackforge.verify.numerics.records import Built, triton_record, write_record

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
    from stackforge.verify.kernels import cases_attention as ka
    from stackforge.verify.kernels import cases_prefill as kp
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
        case = vcase("unified_attention_2d", ka.unified_2d, a, f"n{i}")
        items.append(Item(f"unified_attention_2d-{i}", "unified_attention_2d", "kernel_unified_attention_2d",
                          _attn_label(kind, a), (case,)))  # fmt: skip
    for i, (kind, a) in enumerate(UNIFIED_3D):
        pair = (vcase("unified_attention_3d", ka.unified_3d, a, f"n{i}"),
                vcase("reduce_segments", ka.reduce_segments, a, f"n{i}"))  # fmt: skip
        items.append(Item(f"unified_attention_3d-{i}", "unified_attention_3d+reduce_segments",
                          "kernel_unified_attention_3d + reduce_segments", _attn_label(kind, a), pair))  # fmt: skip
    for kind, a in PREFIX_PREFILL:
        case = vcase("prefix_prefill", kp.prefix_prefill, a, f"h{a.head_size}")
        items.append(Item(f"prefix_prefill-h{a.head_size}", "prefix_prefill", "prefix_prefill _fwd_kernel",
                          _attn_label(kind, a), (case,)))  # fmt: skip
    for kind, a in ENCODER:
        case = vcase("encoder_prefill_attention", kp.encoder_prefill, a, f"h{a.head_size}")
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
        modules.update(KernelLoader(vllm, arch).load_all(vllm_names))
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
                    function, fn = case.find(module)  # the tree's kernel, and its arguments of the launch
                    case = dataclasses.replace(case, function=function)
                    launch = fit(fn, case.build(module, arch, CAPABILITIES[arch].smem_per_block_optin))
                    kernel, bound, signature = compile_launch(fn, launch, arch)
                    if kernel.metadata.shared > CAPABILITIES[arch].smem_per_block_optin:
                        raise SharedMemoryOver(
                            kernel.metadata.shared, CAPABILITIES[arch].smem_per_block_optin
                        )
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


def _serve(req: dict) -> Iterator[dict]:
    """The worker's one request: build (a part of) the suite with the Triton on sys.path."""
    only = tuple(req["only"]) if req.get("only") else None
    for b in build_all(Path(req["out"]), Path(req["vllm"]), tuple(req["archs"]), only):
        yield {"event": "built", **dataclasses.asdict(b)}


def build_in_subprocess(
    out: Path,
    vllm: Path,
    archs: tuple[int, ...],
    triton_path: Path | None,
    state: Path,
    only: tuple[str, ...] | None = None,
) -> tuple[list[Built], str]:
    """Run the suite's build in a fresh process that imports the patched Triton (the overlay at
    `triton_path`), a worker of `stackforge.verify.kernels.worker`; (what was built, its log)."""
    with tempfile.TemporaryDirectory(prefix="stackforge-numerics-log-") as scratch:
        log = Path(scratch) / "build.log"
        worker = Worker(
            "stackforge.verify.numerics.suite", overlay_env(triton_path, state / "triton-cache"), log
        )
        req = {"out": str(out), "vllm": str(vllm), "archs": list(archs), "only": list(only) if only else None}
        built: list[Built] = []
        try:
            for msg in worker.request(req):
                msg.pop("event")
                built.append(Built(**msg))
            worker.close()
        except WorkerLost as exc:
            if not built:
                lines = log.read_text(errors="replace").strip().splitlines()
                built = [Built("numerics_build", 0, False, (lines or [exc.why])[-1][:300])]
        return built, log.read_text(errors="replace")


def vllm_tree(which: str, scratch: Path) -> Path:
    """The vLLM source (the stack's release) to compile: a path, "upstream" (the PyPI sdist, cached) or "patched"
    (the sdist with patches/vllm/*.patch applied in a git repository under `scratch`)."""
    from stackforge.verify.upstream import pypi as upstream
    from stackforge.verify.upstream import repos

    if which == "upstream":
        return upstream.vllm_sdist()
    if which == "patched":
        return repos.patched_repo("vllm", scratch / "vllm")
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
    args = parser.parse_args(argv)
    archs = tuple(int(a) for a in args.archs.split(","))
    only = tuple(args.only.split(",")) if args.only else None
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
    if sys.argv[1:] == ["--worker"]:  # the patched Triton is on sys.path already
        sys.exit(serve(_serve))
    sys.exit(main())
