"""What a compiled kernel costs on the GPU, read from its cubin with the cuobjdump inside the
triton wheel (no GPU needed): registers, local memory (spills and stack), spill stores, and the
fp16 arithmetic instructions in the SASS. On sm_61 fp16 arithmetic runs at 1/64 of the fp32 rate
(`stackforge.cuda.caps`, fp16_rate; NVIDIA's CUDA C++ Programming Guide, "Arithmetic
Instructions"), so a kernel doing its math in fp16 there is a performance bug.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from stackforge.core.files import atomic_write

# SASS opcodes of fp16 arithmetic (packed half2 and scalar forms share them)
FP16_OPS = ("HADD2", "HMUL2", "HFMA2", "HSET2", "HSETP2", "HMNMX2")
_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_OP = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(?:\.[\w.]+)?\s")
# local-memory stores and loads with their width modifiers (STL.64, LDL.LU.128, STL.S16)
_LOCAL = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?(STL|LDL)((?:\.[A-Z0-9]+)*)\s")
_WIDTH = {".U8": 1, ".S8": 1, ".U16": 2, ".S16": 2, ".64": 8, ".128": 16}
STATS_VERSION = 3  # cached figures of an older layout are read again


def cuobjdump() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def sass_ops(sass: str) -> Counter:
    """Opcode -> count over every instruction of a `cuobjdump -sass` listing."""
    return Counter(m[1] for m in _OP.finditer(sass))


def local_bytes(sass: str) -> tuple[int, int]:
    """(bytes stored, bytes loaded) by the STL and LDL instructions of a listing: each counted once
    with its width (4 bytes unless .64, .128, .U8, .S16 ...). Over a Triton kernel, which has no
    local arrays of its own (its PTX declares no .local), these are ptxas' spills: the sums equal
    the "bytes spill stores" and "bytes spill loads" of `ptxas -v`."""
    out = {"STL": 0, "LDL": 0}
    for m in _LOCAL.finditer(sass):
        mods = {f".{mod}" for mod in m[2].split(".") if mod}  # split once, not once per width
        out[m[1]] += next((w for mod, w in _WIDTH.items() if mod in mods), 4)
    return out["STL"], out["LDL"]


def cubin_stats(cubin: bytes, arch: int, num_warps: int, shared: int) -> dict[str, Any]:
    """{"regs", "stack", "local", "spill_stores", "spill_store_bytes", "spill_load_bytes",
    "fp16_ops", "fp16_by_op"} of one cubin; {} when cuobjdump is missing (the audit still reports
    compile results)."""
    tool = cuobjdump()
    if not tool.is_file():
        return {}
    cache = Path(os.environ.get("TRITON_CACHE_DIR") or tempfile.gettempdir()) / "stackforge-stats"
    cached = cache / f"{hashlib.sha256(cubin).hexdigest()}-w{num_warps}-v{STATS_VERSION}.json"
    if cached.is_file():  # warm runs: no cuobjdump
        return json.loads(cached.read_text())
    stats = _read(tool, cubin, num_warps, shared)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, json.dumps(stats).encode())
    return stats


def _read(tool: Path, cubin: bytes, num_warps: int, shared: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=False)
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True, check=False)
    m = _RES.search(res.stdout)
    # A newer wheel's cuobjdump (CUDA 13, triton 3.8) refuses to disassemble sm_6x/sm_70 cubins
    # ("SM61 is deprecated") while -res-usage still works: the SASS figures are then unknown, not 0.
    ops = sass_ops(sass.stdout)
    listed = sass.returncode == 0 and bool(ops)
    fp16 = {op: n for op, n in ops.items() if op in FP16_OPS}
    stored, loaded = local_bytes(sass.stdout)
    return {
        "regs": int(m[1]) if m else None,
        "stack": int(m[2]) if m else None,
        "local": int(m[4]) if m else None,
        "spill_stores": ops.get("STL", 0) if listed else None,
        "spill_store_bytes": stored if listed else None,
        "spill_load_bytes": loaded if listed else None,
        "fp16_ops": sum(fp16.values()) if listed else None,
        "fp16_by_op": fp16,
        "warps": num_warps,
        "shared": shared,
    }
