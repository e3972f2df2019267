"""What GPU code a binary carries: find cuobjdump, list the SASS and PTX archs it embeds, and decide
which compute capabilities that code can run on.

cuobjdump is looked for in the CUDA environment (the active conda/pixi prefix, or
`<workspace>/.pixi/envs/<env>`), `$CUDA_HOME`, `PATH`, and last in the Triton wheel's bundle
(`triton/backends/nvidia/bin`, found without importing Triton). `STACKFORGE_CUOBJDUMP` overrides all.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from stackforge.core.console import Failure
from stackforge.cuda.caps import ptx_runs_on, sass_runs_on

# Section names that hold device code in a host ELF (executable fatbins; relocatable ones in .o/.a).
DEVICE_SECTIONS = (b".nv_fatbin", b"__nv_relfatbin", b".nvFatBinSegment")
EM_CUDA = 190  # e_machine of a cubin: the file is device code itself

_ELF_LINE = re.compile(r"^ELF file\s+\d+:\s*(\S+)")
_PTX_LINE = re.compile(r"^PTX file\s+\d+:\s*(\S+)")
_SM = re.compile(r"sm_(\d+)([a-z]?)")


@dataclass(frozen=True)
class Sass:
    """One cubin: `arch` 61 for sm_61; `suffix` 'a'/'f' marks arch-specific code (sm_90a)."""

    arch: int
    suffix: str = ""

    def runs_on(self, gpu: int) -> bool:
        """SASS runs on its own arch, and on newer minors of the same major unless arch-specific."""
        return sass_runs_on(self.arch, gpu, arch_specific=bool(self.suffix))

    def __str__(self) -> str:
        return f"sm_{self.arch}{self.suffix}"


@dataclass(frozen=True)
class Coverage:
    """How a GPU of compute capability `arch` gets code from a binary: 'sass', 'ptx' (driver JIT) or
    'missing'; `by` names what serves it (sm_60, compute_60)."""

    arch: int
    status: str
    by: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "missing"


@dataclass
class Embedded:
    """The device code found in one file."""

    path: Path
    sass: list[Sass] = field(default_factory=list)
    ptx: list[int] = field(default_factory=list)

    @property
    def has_code(self) -> bool:
        return bool(self.sass or self.ptx)

    def coverage(self, arch: int) -> Coverage:
        """Exact SASS first, then SASS of an older minor of the same major, then PTX the driver can JIT
        (PTX of compute_X runs on any GPU with capability >= X)."""
        fitting = sorted((s for s in self.sass if s.runs_on(arch)), key=lambda s: -s.arch)
        if fitting:
            return Coverage(arch, "sass", str(fitting[0]))
        jit = sorted((p for p in self.ptx if ptx_runs_on(p, arch)), reverse=True)
        if jit:
            return Coverage(arch, "ptx", f"compute_{jit[0]}")
        return Coverage(arch, "missing")


def find_cuobjdump(prefixes: list[Path] | None = None) -> Path:
    """The cuobjdump to use, or a Failure that says where it was looked for and how to get one."""
    explicit = os.environ.get("STACKFORGE_CUOBJDUMP")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise Failure(f"STACKFORGE_CUOBJDUMP={explicit} is not an executable file")
        return Path(explicit)
    candidates: list[Path] = [p / "bin" / "cuobjdump" for p in prefixes or []]
    for var in ("CONDA_PREFIX", "CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "cuobjdump")
    on_path = shutil.which("cuobjdump")
    if on_path:
        candidates.append(Path(on_path))
    bundle = triton_bin_dir()
    if bundle:
        candidates.append(bundle / "cuobjdump")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "(no candidate paths)"
    raise Failure(
        f"cuobjdump not found (looked at: {looked}, and PATH)",
        hint="run inside the CUDA environment (pixi run -e pascal ...), set CUDA_HOME, "
        "or `pip install 'stackforge[audit]'`, whose triton wheel bundles cuobjdump",
    )


def triton_bin_dir() -> Path | None:
    """`triton/backends/nvidia/bin` of an installed Triton wheel, found without importing Triton."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "backends" / "nvidia" / "bin"
        if folder.is_dir():
            return folder
    return None


def elf_section_names(path: Path) -> set[bytes] | None:
    """Section names of a 64-bit little-endian ELF, or None when the file is not one.

    Reading the section table is enough to skip the many libraries with no device code without
    starting cuobjdump for each of them."""
    try:
        with path.open("rb") as fh:
            ident = fh.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
                return None
            (shoff,) = struct.unpack_from("<Q", ident, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
            if not shoff or not shnum or shstrndx >= shnum:
                return set()
            fh.seek(shoff)
            table = fh.read(shentsize * shnum)
            name_hdr = table[shstrndx * shentsize : (shstrndx + 1) * shentsize]
            str_off, str_size = struct.unpack_from("<QQ", name_hdr, 0x18)
            fh.seek(str_off)
            strtab = fh.read(str_size)
    except OSError:
        return None
    names = set()
    for i in range(shnum):
        (name_off,) = struct.unpack_from("<I", table, i * shentsize)
        end = strtab.find(b"\0", name_off)
        names.add(strtab[name_off : end if end >= 0 else None])
    return names


def elf_machine(path: Path) -> int | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return struct.unpack_from("<H", head, 18)[0]


def may_hold_device_code(path: Path) -> bool:
    """True for a cubin, a fatbin, or a host ELF with a fatbin section."""
    if path.suffix == ".fatbin":
        return True
    if elf_machine(path) == EM_CUDA:
        return True
    names = elf_section_names(path)
    return bool(names and any(n in names for n in DEVICE_SECTIONS))


def list_embedded(cuobjdump: Path, path: Path) -> Embedded:
    """Run `cuobjdump --list-elf --list-ptx` on one file and parse the archs it names."""
    proc = subprocess.run(
        [str(cuobjdump), "--list-elf", "--list-ptx", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = Embedded(path)
    for line in proc.stdout.splitlines():
        elf, ptx = _ELF_LINE.match(line), _PTX_LINE.match(line)
        match = _SM.search((elf or ptx).group(1)) if (elf or ptx) else None
        if not match:
            continue
        if elf:
            sass = Sass(int(match.group(1)), match.group(2))
            if sass not in found.sass:
                found.sass.append(sass)
        elif int(match.group(1)) not in found.ptx:
            found.ptx.append(int(match.group(1)))
    if proc.returncode != 0 and not found.has_code and "does not contain device code" not in proc.stderr:
        raise Failure(
            f"{path}: cuobjdump failed (exit {proc.returncode}): {proc.stderr.strip()[:400]}",
            hint=f"check the file is intact; {cuobjdump} may be older than the CUDA that built it",
        )
    found.sass.sort(key=lambda s: (s.arch, s.suffix))
    found.ptx.sort()
    return found
