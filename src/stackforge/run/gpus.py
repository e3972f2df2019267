"""The GPUs of this machine, as nvidia-smi reports them: one type for doctor, preflight and serve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stackforge.cuda.caps import dotted

QUERY = "--query-gpu=name,compute_cap,driver_version,memory.total"
# Drivers before R510 have no compute_cap field: ask for the rest, guess the capability by name.
FALLBACK_QUERY = "--query-gpu=name,driver_version,memory.total"


# Compute capability by card name, for drivers too old to answer the compute_cap field.
NAME_TO_CAP = (
    (re.compile(r"P100", re.I), 60),
    (re.compile(r"\bP40\b|\bP4\b|\bP6\b|GTX 10\d0|TITAN Xp|TITAN X \(Pascal\)|Quadro P\d", re.I), 61),
    (re.compile(r"V100|TITAN V|GV100|CMP 100-210", re.I), 70),
)


@dataclass
class Gpu:
    index: int
    name: str
    arch: int | None  # 61 for compute capability 6.1
    driver: str = ""
    env: str | None = None
    memory_mib: int | None = None  # memory.total; None where nvidia-smi says [N/A] or was not asked

    @property
    def capability(self) -> str:
        return dotted(self.arch) if self.arch is not None else "unknown"

    def __str__(self) -> str:
        return f"GPU {self.index} ({self.name}, compute capability {self.capability})"


def find_nvidia_smi() -> str | None:
    explicit = os.environ.get("STACKFORGE_NVIDIA_SMI")
    if explicit is not None:
        return explicit if os.access(explicit, os.X_OK) and Path(explicit).is_file() else None
    return shutil.which("nvidia-smi")


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def parse_capability(text: str) -> int | None:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return int(match.group(1)) * 10 + int(match.group(2)) if match else None


def capability_from_name(name: str) -> int | None:
    return next((cap for pattern, cap in NAME_TO_CAP if pattern.search(name)), None)


def parse_memory(text: str) -> int | None:
    match = re.fullmatch(r"\s*(\d+)\s*MiB\s*", text)
    return int(match.group(1)) if match else None


def parse_smi_csv(text: str, with_cap: bool = True) -> list[Gpu]:
    """Rows of `name, compute_cap, driver_version[, memory.total]` (without compute_cap for old
    drivers); rows without memory.total are older recordings and still parse."""
    gpus = []
    base = 3 if with_cap else 2
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if not line.strip() or len(fields) not in (base, base + 1):
            continue
        name, driver = fields[0], fields[base - 1]
        arch = parse_capability(fields[1]) if with_cap else capability_from_name(name)
        memory = parse_memory(fields[base]) if len(fields) > base else None
        gpus.append(Gpu(index=len(gpus), name=name, arch=arch, driver=driver, memory_mib=memory))
    return gpus


def _smi(smi: str, query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
