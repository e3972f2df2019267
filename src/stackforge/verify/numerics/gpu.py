"""Numerics of Pascal/Volta device code on whatever NVIDIA GPU is at hand.

PTX compiled here for sm_60/61/70 (by Triton for vLLM's kernels and our atomics kernels, by NVRTC 12.9
for CUDA C++ fallbacks) runs on any newer GPU through the driver's JIT, so an H100 can check that the
code a P40 will run computes the right numbers. `stackforge.verify.numerics.suite` (the numerics suite) and
`stackforge audit kernels --save-ptx` write, into a folder, one `<name>.json` launch record per
kernel x shape x arch beside its PTX; `run_checks` loads each PTX with the CUDA driver API (ctypes,
libcuda.so.1), makes the inputs with PyTorch on the GPU, launches, and compares with a PyTorch
reference computed from the same inputs. Records whose `check` has no reference here (the audit
saves every kernel it compiles: LoRA, MoE, sampling, ...) are listed, not run.


The record format is in `stackforge.verify.numerics.records`; the references in
`stackforge.verify.numerics.checks`.

Only the standard library is imported at module level: building the records needs no torch, and
running them imports torch lazily (the GPU machine needs PyTorch, not Triton or a CUDA toolkit).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stackforge.verify.numerics.checks import CHECKS, _errors
from stackforge.verify.numerics.records import load_records


@dataclass
class Result:
    """One kernel x shape x arch on the GPU: errors against the reference, and the verdict."""

    kernel: str
    shape: str
    arch: int
    max_abs: float
    max_rel: float  # max |out - ref| / max |ref|
    l2_rel: float  # ||out - ref|| / ||ref||
    tolerance: dict
    ok: bool
    note: str = ""
    seconds: float = 0.0  # JIT, launches and reference


# --- the CUDA driver through ctypes ----------------------------------------------------------------

CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
_PARAM = re.compile(r"\.param\s+\.(\w+)(?:\s+\.ptr)?(?:\s+\.global)?(?:\s+\.align\s+\d+)?\s+(\w+)")


def ptx_param_types(ptx: str, entry: str) -> list[str]:
    """The .param types of `.entry entry(...)` in order ('u64', 'u32', 'f32', ...)."""
    match = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)", ptx, re.S)
    if not match:
        raise ValueError(f"no .entry {entry} in the PTX")
    return [m.group(1) for m in _PARAM.finditer(match.group(1))]


class Driver:
    """The few CUDA driver calls a launch needs, in the context PyTorch made current."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]

    def check(self, result: int, what: str) -> None:
        if result != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(text))
            raise RuntimeError(f"{what} failed: CUDA error {result} ({(text.value or b'?').decode()})")

    def load(self, ptx: str, entry: str) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
        """JIT-compile the PTX for this GPU; a 4 KB log says why when the JIT refuses it."""
        module, func = ctypes.c_void_p(), ctypes.c_void_p()
        log = ctypes.create_string_buffer(4096)
        # CU_JIT_ERROR_LOG_BUFFER (5), CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES (6)
        opts = (ctypes.c_int * 2)(5, 6)
        vals = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(4096))
        result = self.lib.cuModuleLoadDataEx(ctypes.byref(module), ptx.encode() + b"\0", 2, opts, vals)
        if result != 0:
            self.check(result, f"cuModuleLoadDataEx ({log.value.decode(errors='replace').strip()})")
        self.check(
            self.lib.cuModuleGetFunction(ctypes.byref(func), module, entry.encode()), "cuModuleGetFunction"
        )
        return module, func

    def unload(self, module: ctypes.c_void_p) -> None:
        self.check(self.lib.cuModuleUnload(module), "cuModuleUnload")

    def launch(
        self, func: ctypes.c_void_p, grid: list[int], block: list[int], shared: int, params: list, stream: int
    ) -> None:
        if shared > 48 * 1024:  # dynamic shared memory past 48 KB needs an opt-in
            self.check(
                self.lib.cuFuncSetAttribute(func, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared),
                "cuFuncSetAttribute",
            )
        holders = (ctypes.c_void_p * len(params))(
            *[ctypes.cast(ctypes.byref(p), ctypes.c_void_p) for p in params]
        )
        self.check(
            self.lib.cuLaunchKernel(
                func,
                *[ctypes.c_uint(g) for g in grid],
                *[ctypes.c_uint(b) for b in block],
                ctypes.c_uint(shared),
                ctypes.c_void_p(stream),
                holders,
                None,
            ),
            "cuLaunchKernel",
        )


_INTS = {8: ctypes.c_int8, 16: ctypes.c_int16, 32: ctypes.c_int32, 64: ctypes.c_int64}


def _scalar(value: Any, ptx_type: str) -> ctypes._SimpleCData:
    """A scalar argument in the width of its .param (Triton passes i1 as .u8, i32 as .u32, ...)."""
    bits = int(re.sub(r"\D", "", ptx_type) or 64)
    if ptx_type.startswith("f"):
        return (ctypes.c_double if bits == 64 else ctypes.c_float)(float(value))
    value = int(value) & ((1 << bits) - 1)  # two's complement of the .param's width
    return _INTS[bits](value - (1 << bits) if value >> (bits - 1) else value)


def launch_record(driver: Driver, record: dict, folder: Path, tensors: dict, torch: Any) -> None:
    """Launch a record's kernels in order on `tensors` (name -> CUDA tensor) and wait for them."""
    for launch in record["launches"]:
        _launch_one(driver, launch, folder, tensors, torch)
    torch.cuda.synchronize()


def _launch_one(driver: Driver, launch: dict, folder: Path, tensors: dict, torch: Any) -> None:
    ptx = (folder / launch["ptx"]).read_text()
    types = ptx_param_types(ptx, launch["entry"])
    args = launch["args"]
    extra = types[len(args) :]
    if len(types) < len(args) or any(t not in ("u64", "b64") for t in extra):
        raise RuntimeError(
            f"{launch['ptx']}: PTX parameters {types} do not match the record's {len(args)} args"
        )
    params: list = []
    for arg, ptx_type in zip(args, types, strict=False):
        if "tensor" in arg:
            params.append(ctypes.c_uint64(tensors[arg["tensor"]].data_ptr()))
        else:
            params.append(_scalar(arg["value"], ptx_type))
    scratch = []  # kept alive until the launch has finished
    programs = math.prod(launch["grid"])
    sizes = [
        launch.get("global_scratch", {}).get("size", 0),
        launch.get("profile_scratch", {}).get("size", 0),
    ]
    for i, _ in enumerate(extra):  # Triton's global and profile scratch pointers
        size = sizes[i] if i < len(sizes) else 0
        if size:
            buf = torch.empty(programs * size + 256, dtype=torch.uint8, device="cuda")
            scratch.append(buf)
            params.append(ctypes.c_uint64((buf.data_ptr() + 255) // 256 * 256))
        else:
            params.append(ctypes.c_uint64(0))
    module, func = driver.load(ptx, launch["entry"])
    try:
        stream = torch.cuda.current_stream().cuda_stream
        driver.launch(func, launch["grid"], launch["block"], launch.get("shared", 0), params, stream)
        torch.cuda.synchronize()
    finally:
        driver.unload(module)


def unchecked(saved_dir: Path, archs: tuple[int, ...] | None = None) -> Counter:
    """Kernels of the records that have no reference here: check -> number of records."""
    return Counter(r["check"] for _, r in load_records(saved_dir, archs) if r["check"] not in CHECKS)


def gpu_present() -> str | None:
    """None when a CUDA GPU can run the checks, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch"
    return None


def device_name() -> str:
    import torch

    cap = ".".join(map(str, torch.cuda.get_device_capability()))
    return f"{torch.cuda.get_device_name()} (compute capability {cap})"


def run_checks(saved_dir: Path, env: Any = None) -> list[Result]:
    """Run every record under `saved_dir` that has a reference, for the archs of `env` (a GpuEnv,
    anything with `.archs`, or None for all), on the current GPU."""
    import torch

    archs = tuple(env.archs) if env is not None else None
    torch.cuda.init()
    torch.empty(1, device="cuda")  # makes the primary context current for the driver calls
    driver = Driver()
    results = []
    for path, record in load_records(saved_dir, archs):
        check = CHECKS.get(record["check"])
        if check is None:
            continue

        def run(tensors: dict, record: dict = record, folder: Path = path.parent) -> None:
            launch_record(driver, record, folder, tensors, torch)

        start = time.monotonic()
        try:
            out, ref, note = check(record, run, torch)
            max_abs, max_rel, l2_rel = _errors(out, ref)
            tol = record["tolerance"]
            ok = max_abs <= tol["max_abs"] and l2_rel <= tol["l2_rel"]
        except Exception as exc:  # a JIT or launch failure is a result, not a crash of the whole run
            max_abs = max_rel = l2_rel = math.inf
            tol, ok, note = record.get("tolerance") or {}, False, f"{type(exc).__name__}: {exc}"[:300]
        seconds = round(time.monotonic() - start, 2)
        results.append(
            Result(
                record["kernel"],
                record["label"],
                record["arch"],
                max_abs,
                max_rel,
                l2_rel,
                tol,
                ok,
                note,
                seconds,
            )
        )
    return results


def table(results: list[Result], device: str) -> str:
    """A Markdown table of the results (what docs/verification.md carries)."""
    lines = [
        f"GPU: {device}",
        "",
        "| kernel | shape | PTX target | max abs err | max rel err | L2 rel err | tolerance (abs / L2 rel) | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tol = f"{r.tolerance.get('max_abs', math.nan):.3g} / {r.tolerance.get('l2_rel', math.nan):.3g}"
        verdict = "pass" if r.ok else "FAIL"
        if r.note:
            verdict += f" ({r.note})"
        verdict = verdict.replace("|", "\\|")
        lines.append(
            f"| {r.kernel} | {r.shape} | sm_{r.arch} | {r.max_abs:.3g} | {r.max_rel:.3g} | {r.l2_rel:.3g} | {tol} | {verdict} |"
        )
    return "\n".join(lines)


def summary(results: list[Result], skipped: Counter) -> str:
    failed = [r for r in results if not r.ok]
    text = f"{len(results) - len(failed)} of {len(results)} passed in {sum(r.seconds for r in results):.1f} s"
    if skipped:
        names = ", ".join(f"{k} ({n})" for k, n in sorted(skipped.items()))
        text += f"; {sum(skipped.values())} compiled records have no reference here: {names}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stackforge.verify.numerics.gpu", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "saved_dir",
        type=Path,
        help="folder of launch records and PTX (numerics_build, audit kernels --save-ptx)",
    )
    parser.add_argument("--archs", default=None, help="comma-separated PTX targets to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    why = gpu_present()
    if why:
        print(f"no GPU: {why}; nothing run")
        return 1
    archs = None
    if args.archs:
        archs = type("Archs", (), {"archs": tuple(int(a) for a in args.archs.split(","))})()
    results = run_checks(args.saved_dir, archs)
    device = device_name()
    print(table(results, device))
    skipped = unchecked(args.saved_dir, archs.archs if archs else None)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": device, "results": [asdict(r) for r in results], "no_reference": skipped}, indent=2
            )
        )
    print(summary(results, skipped))
    return 1 if not results or any(not r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
