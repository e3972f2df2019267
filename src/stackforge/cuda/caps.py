"""One table of GPU facts per compute capability, and one rule for which code runs on which GPU.

In the style of nixpkgs' `cudaCapabilityToInfo`: a GPU target is a row of data. Sources:
NVIDIA's CUDA C++ Programming Guide, "Compute Capabilities" (shared memory per block, opt-in
limit, arithmetic throughput: fp16 on 6.1 runs at 1/64 of fp32, on 6.0 and 7.0 at twice fp32),
the Volta tuning guide (96 KB opt-in, tensor cores), and the CUDA 12.x/13.0 release notes
(offline compilation for compute capability below 7.5 was removed in CUDA 13.0; 12.9 is the last
toolkit that compiles it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capability:
    """What one compute capability can do, and which CUDA toolkits can compile for it."""

    arch: int  # 61 for compute capability 6.1
    family: str
    cards: str
    smem_per_block: int  # bytes a kernel gets without opting in
    smem_per_block_optin: int  # bytes after cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
    bf16: bool
    fp16_rate: str  # fp16 arithmetic throughput relative to fp32
    tensor_cores: bool
    min_cuda: str  # oldest toolkit that compiles for it
    max_cuda: str  # newest toolkit that compiles for it

    @property
    def dotted(self) -> str:
        return dotted(self.arch)

    @property
    def sm(self) -> str:
        return sm(self.arch)


CAPABILITIES: dict[int, Capability] = {
    c.arch: c
    for c in (
        Capability(60, "Pascal", "Tesla P100", 49152, 49152, False, "2x fp32", False, "8.0", "12.9"),
        Capability(
            61,
            "Pascal",
            "Tesla P40/P4, GTX 10xx, Quadro P",
            49152,
            49152,
            False,
            "1/64 of fp32",
            False,
            "8.0",
            "12.9",
        ),
        Capability(
            70,
            "Volta",
            "Tesla V100, Titan V, Quadro GV100, CMP 100-210",
            49152,
            98304,
            False,
            "2x fp32",
            True,
            "9.0",
            "12.9",
        ),
    )
}


def dotted(arch: int) -> str:
    """61 -> '6.1' (TORCH_CUDA_ARCH_LIST, nvidia-smi's compute_cap)."""
    return f"{arch // 10}.{arch % 10}"


def sm(arch: int) -> str:
    """61 -> 'sm_61' (nvcc, ptxas, cuobjdump)."""
    return f"sm_{arch}"


def parse_dotted(text: str) -> int | None:
    """'6.1' -> 61; None when `text` is not MAJOR.MINOR."""
    major, _, minor = text.strip().partition(".")
    return int(major) * 10 + int(minor) if major.isdigit() and minor.isdigit() and len(minor) == 1 else None


def sass_runs_on(code: int, gpu: int, *, arch_specific: bool = False) -> bool:
    """The one rule for machine code: SASS for `code` runs on a GPU of the same major with an equal or
    newer minor (sm_60 on a 6.1 card), never across majors; arch-specific SASS (sm_90a) only on its own."""
    return gpu == code if arch_specific else gpu // 10 == code // 10 and gpu >= code


def ptx_runs_on(code: int, gpu: int) -> bool:
    """PTX for compute_`code` runs on any GPU of that capability or newer, through the driver's JIT."""
    return gpu >= code


def cuda_can_compile(cuda: str, arch: int) -> bool:
    """Whether toolkit `cuda` ('12.9') compiles for `arch`: its min_cuda..max_cuda range."""
    cap = CAPABILITIES[arch]
    return _version(cap.min_cuda) <= _version(cuda) <= _version(cap.max_cuda)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())
