"""The numerics launch record: the one format the audit, the suite and the GPU runner share.

A launch record (schema "stackforge.numerics/1"):
    check       which inputs/reference to use (a key of CHECKS; audit records name their kernel)
    kernel      the kernel's name; label: the shape in words; arch: 60, 61 or 70 (the PTX target)
    shape       parameters of the inputs (sizes, sequence lengths, seed; vLLM records: the scenario)
    tensors     optional: {key: {"dtype", "shape", "strides" (elements), "role"}}: the tensors the
                launches share, allocated as strided views; `role` says what goes in them
    launches    kernels run in order, each:
        ptx, entry   the PTX file beside the record and its .entry name
        grid, block  launch geometry; shared: dynamic shared memory in bytes (above 48 KB the
                     launch opts in with CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
        global_scratch, profile_scratch  {"size", "align"}: bytes per program for the two scratch
                     pointers Triton >= 3.3 appends to every kernel (size 0: a null pointer)
        args         runtime parameters in .entry order: {"name", "tensor": KEY} or
                     {"name", "value", "type": "i32"|"i64"|"u64"|"fp32"|"i1"...}
        constexprs, case, module, function, launcher   (Triton launches) what is baked into the
                     PTX and where vLLM makes this launch
    tolerance   {"max_abs": ..., "l2_rel": ...}: a case fails past either (null: no reference)
    compiled_with  what produced the PTX

Only the standard library is imported at module level: building the records needs no torch, and
running them imports torch lazily (the GPU machine needs PyTorch, not Triton or a CUDA toolkit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackforge.verify.kernels.launch import Case, Launch, Tensor

SCHEMA = "stackforge.numerics/1"
FP16_EPS = 2.0**-11  # unit roundoff of float16
FP32_EPS = 2.0**-24

EXACT = {"max_abs": 0.0, "l2_rel": 0.0}
# fp16 output rounding and the fp16 P operand of P.V give about 3e-4 of the output's norm
ATTENTION = {"max_abs": 1e-2, "l2_rel": 5e-3}
TOLERANCES: dict[str, dict[str, float]] = {
    "half_atomic_add": EXACT,  # the random case replaces it by Higham's bound at run time
    "triton_atomic_add": EXACT,
    "triton_atomic_add_old": EXACT,
    "triton_atomic_cas": EXACT,
    # replaced at run time by the bound for fp32 sums of these inputs (about 1e-1; typical errors 1e-5)
    "triton_last_program_reduces": {"max_abs": 1e-2, "l2_rel": 1.0},
    "unified_attention_2d": ATTENTION,
    "unified_attention_3d+reduce_segments": ATTENTION,
    "prefix_prefill": ATTENTION,
    "encoder_prefill_attention": ATTENTION,
}

# jsonschema of a record (tests validate what the builders write against it)
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "schema",
        "check",
        "kernel",
        "label",
        "arch",
        "shape",
        "launches",
        "tolerance",
        "compiled_with",
    ],
    "properties": {
        "schema": {"const": SCHEMA},
        "arch": {"type": "integer"},
        "tensors": {
            "type": "object",
            "additionalProperties": {"type": "object", "required": ["dtype", "shape", "strides", "role"]},
        },
        "launches": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["ptx", "entry", "grid", "block", "shared", "args"],
                "properties": {
                    "grid": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 1},
                        "minItems": 3,
                        "maxItems": 3,
                    },
                    "args": {
                        "type": "array",
                        "items": {
                            "oneOf": [
                                {"required": ["name", "tensor"]},
                                {"required": ["name", "value", "type"]},
                            ]
                        },
                    },
                },
            },
        },
        "tolerance": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["max_abs", "l2_rel"]}]},
    },
}


@dataclass
class Built:
    """What happened to one record: compiled (with a short detail) or not (why)."""

    case: str
    arch: int
    ok: bool
    detail: str


def write_record(out: Path, name: str, record: dict, ptxs: list[str]) -> Path:
    """`<name>.json` plus one `<name>[.N].ptx` per launch (the record's launches name them)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, (launch, ptx) in enumerate(zip(record["launches"], ptxs, strict=True)):
        launch["ptx"] = f"{name}.ptx" if len(ptxs) == 1 else f"{name}.{i}.ptx"
        (out / launch["ptx"]).write_text(ptx)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"schema": SCHEMA, **record}, indent=1, sort_keys=True) + "\n")
    return path


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


def load_records(saved_dir: Path, archs: tuple[int, ...] | None = None) -> list[tuple[Path, dict]]:
    """Every record under `saved_dir` (any depth) for `archs` (None: all)."""
    records = []
    for path in sorted(Path(saved_dir).rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (
            isinstance(data, dict)
            and data.get("schema") == SCHEMA
            and (archs is None or data["arch"] in archs)
        ):
            records.append((path, data))
    return records
