"""One table of GPU facts per compute capability, and one rule for which code runs on which GPU.

In the style of nixpkgs' `cudaCapabilityToInfo`: a GPU target is a row of data. Sources:
NVIDIA's CUDA C++ Programming Guide, "Compute Capabilities" (shared memory per block, opt-in
limit, arithmetic throughput: fp16 on 6.1 runs at 1/64 of fp32, on 6.0 and 7.0 at twice fp32),
the Volta tuning guide (96 KB opt-in, tensor cores), and the CUDA 12.x/13.0 release notes
(offline compilation for compute capability below 7.5 was removed in CUDA 13.0; 12.9 is the last
toolkit that compiles it).

The per-SM limits (`SmLimits`, for theoretical occupancy: `stackforge.cuda.occupancy`) are the
Programming Guide's "Technical Specifications per Compute Capability" table (resident blocks,
warps and threads per SM, 64K 32-bit registers per SM and per block, 255 registers per thread,
shared memory per SM: 64 KB on 6.0, 96 KB on 6.1 and 7.0) and the CUDA Occupancy Calculator's
"GPU data" (`cuda_occupancy.h` in the toolkit): registers go to a warp in units of 256, shared
memory to a block in units of 256 bytes, and a block's warps are spread over the register file's
partitions, 2 on 6.0 (GP100's two processing blocks) and 4 on 6.1 and 7.0. Volta's shared memory
and L1 share 128 KB; the shared part is a carveout of 0, 8, 16, 32, 64 or 96 KB per SM.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmLimits:
    """What one SM holds at once: the resources resident blocks share (occupancy)."""

    threads: int  # resident threads per SM
    warps: int  # resident warps per SM
    blocks: int  # resident blocks per SM
    regs: int  # 32-bit registers per SM
    regs_per_block: int
    regs_per_thread: int  # ptxas' ceiling (cuda_occupancy.h says 256 from 7.0; ptxas gives 255)
    reg_unit: int  # registers are given to each warp in multiples of this
    # register-file partitions a block's warps are spread over (the calculator's "warp allocation
    # granularity"): each holds regs / reg_partitions, so warps per SM are a multiple of this
    reg_partitions: int
    smem: int  # shared memory bytes per SM (7.0: the largest carveout)
    smem_unit: int  # shared memory is given to each block in multiples of this
    smem_carveouts: tuple[int, ...]  # shared/L1 splits (bytes of shared); () if dedicated


_VOLTA_CARVEOUTS = tuple(k * 1024 for k in (0, 8, 16, 32, 64, 96))


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
    per_sm: SmLimits

    @property
    def dotted(self) -> str:
        return dotted(self.arch)

    @property
    def sm(self) -> str:
        return sm(self.arch)


CAPABILITIES: dict[int, Capability] = {
    c.arch: c
    for c in (
        Capability(
            60,
            "Pascal",
            "Tesla P100",
            49152,
            49152,
            False,
            "2x fp32",
            False,
            "8.0",
            "12.9",
            SmLimits(
                threads=2048,
                warps=64,
                blocks=32,
                regs=65536,
                regs_per_block=65536,
                regs_per_thread=255,
                reg_unit=256,
                reg_partitions=2,
                smem=65536,
                smem_unit=256,
                smem_carveouts=(),
            ),
        ),
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
            SmLimits(
                threads=2048,
                warps=64,
                blocks=32,
                regs=65536,
                regs_per_block=65536,
                regs_per_thread=255,
                reg_unit=256,
                reg_partitions=4,
                smem=98304,
                smem_unit=256,
                smem_carveouts=(),
            ),
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
            SmLimits(
                threads=2048,
                warps=64,
                blocks=32,
                regs=65536,
                regs_per_block=65536,
                regs_per_thread=255,
                reg_unit=256,
                reg_partitions=4,
                smem=98304,
                smem_unit=256,
                smem_carveouts=_VOLTA_CARVEOUTS,
            ),
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
