"""The miniature stack: three tiny packages shaped like triton, pytorch and vllm.

Real C code compiled with CMake and Ninja by the system compiler, in real git repositories with
real patch series, so the whole pipeline (git-repos.txt -> clone + `git am` -> rattler-build ->
channel -> lock) runs on any machine in seconds, offline. `stackforge demo` and the tests use it.

  mini-triton  <- sources/minitriton + sources/minillvm  (like triton built against LLVM)
  mini-torch   <- sources/minitorch                       (a shared library with a C API)
  mini-vllm    <- sources/minivllm + sources/minicutlass  (links libminitorch; needs mini-triton
                                                           at run time only, like vllm)

Upstream repositories are created with fixed identities and dates, so their commits, and the
patched HEADs, have the same SHA on every machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stackforge.core.console import Failure

IDENTITY = {
    "GIT_AUTHOR_NAME": "Mini Upstream",
    "GIT_AUTHOR_EMAIL": "upstream@example.invalid",
    "GIT_COMMITTER_NAME": "Mini Upstream",
    "GIT_COMMITTER_EMAIL": "upstream@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
URL_BASE = "https://example.invalid/stackforge-demo"

# --- upstream sources: (message, files) per commit -------------------------------------------

LLVM = [
    (
        "mini-llvm: lowering library",
        {
            "README": "mini-llvm: the compiler library mini-triton builds against (like LLVM for Triton)\n",
            "llvm/CMakeLists.txt": """add_library(mllvm STATIC lib/lower.c)
target_include_directories(mllvm PUBLIC include)
set_target_properties(mllvm PROPERTIES POSITION_INDEPENDENT_CODE ON)
""",
            "llvm/include/mllvm.h": """#ifndef MLLVM_H
#define MLLVM_H
/* Lower one load to PTX-like text for a compute capability (60, 61, 70...). */
int mllvm_lower_load(int arch, int evict_last, char *out, int size);
#endif
""",
            "llvm/lib/lower.c": """#include <stdio.h>
#include "mllvm.h"

int mllvm_lower_load(int arch, int evict_last, char *out, int size) {
    return snprintf(out, (size_t)size, "ld.global%s.b32 // .target sm_%d",
                    evict_last ? ".L1::evict_last" : "", arch);
}
""",
        },
    ),
]

TRITON = [
    (
        "mini-triton: kernel compiler",
        {
            "README": "mini-triton: compiles one kernel for each arch in TORCH_CUDA_ARCH_LIST\n",
            "CMakeLists.txt": """cmake_minimum_required(VERSION 3.16)
project(minitriton C)
# Built against the mini-llvm checkout named by MINI_LLVM_SOURCE_DIR (as Triton uses LLVM).
if(NOT DEFINED ENV{MINI_LLVM_SOURCE_DIR})
  message(FATAL_ERROR "set MINI_LLVM_SOURCE_DIR to the mini-llvm checkout")
endif()
add_subdirectory($ENV{MINI_LLVM_SOURCE_DIR} mllvm)
add_executable(mini-triton src/main.c)
target_link_libraries(mini-triton PRIVATE mllvm)
string(REPLACE ";" "," ARCHS "${ARCH_LIST}")
target_compile_definitions(mini-triton PRIVATE ARCH_LIST="${ARCHS}")
install(TARGETS mini-triton DESTINATION bin)
""",
            "src/main.c": """#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mllvm.h"

/* Upstream always asks for evict_last, which ptxas refuses below sm_70. */
static int use_evict_last(int arch) { (void)arch; return 1; }

int main(void) {
    char list[] = ARCH_LIST, line[128];
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int arch = atoi(tok) * 10 + atoi(strchr(tok, '.') ? strchr(tok, '.') + 1 : "0");
        mllvm_lower_load(arch, use_evict_last(arch), line, sizeof line);
        printf("sm_%d: %s\\n", arch, line);
    }
    return 0;
}
""",
        },
    ),
    (
        "mini-triton: document the kernel",
        {"README": "mini-triton: compiles one kernel per arch\nUsage: mini-triton\n"},
    ),
]

TORCH = [
    (
        "mini-torch: tensor library",
        {
            "README": "mini-torch: a shared library with a C API (like libtorch)\n",
            "CMakeLists.txt": """cmake_minimum_required(VERSION 3.16)
project(minitorch C)
add_library(minitorch SHARED src/tensor.c)
target_include_directories(minitorch PUBLIC include)
string(REPLACE ";" "," ARCHS "${ARCH_LIST}")
target_compile_definitions(minitorch PRIVATE ARCH_LIST="${ARCHS}")
set_target_properties(minitorch PROPERTIES VERSION 0.1.0 SOVERSION 0)
install(TARGETS minitorch DESTINATION lib)
install(FILES include/minitorch.h DESTINATION include)
""",
            "include/minitorch.h": """#ifndef MINITORCH_H
#define MINITORCH_H
float mt_dot(const float *a, const float *b, int n);
const char *mt_arch_list(void);
/* Lowest compute capability whose kernels the compiler path (Inductor) accepts. */
int mt_min_compiler_capability(void);
#endif
""",
            "src/tensor.c": """#include "minitorch.h"

float mt_dot(const float *a, const float *b, int n) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

const char *mt_arch_list(void) { return ARCH_LIST; }

int mt_min_compiler_capability(void) { return 70; }
""",
        },
    ),
    (
        "mini-torch: faster dot",
        {"README": "mini-torch: a shared library with a C API\nSee include/minitorch.h\n"},
    ),
]

CUTLASS = [
    (
        "mini-cutlass: tile sizes",
        {
            "include/minicutlass/tile.h": """#ifndef MINICUTLASS_TILE_H
#define MINICUTLASS_TILE_H
/* Header-only templates library (like CUTLASS): one tile-size rule. */
#define MINICUTLASS_TILE(smem_bytes) ((smem_bytes) / 1024 / 4)
#endif
""",
        },
    ),
]

VLLM = [
    (
        "mini-vllm: engine",
        {
            "README": "mini-vllm: serving engine on mini-torch\n",
            "CMakeLists.txt": """cmake_minimum_required(VERSION 3.16)
project(minivllm C)
# Upstream supports compute capability 7.0 and newer only.
set(SUPPORTED_ARCHS "7.0;7.5;8.0")
foreach(arch ${ARCH_LIST})
  if(NOT arch IN_LIST SUPPORTED_ARCHS)
    message(FATAL_ERROR "arch ${arch} is not supported (SUPPORTED_ARCHS: ${SUPPORTED_ARCHS})")
  endif()
endforeach()
find_path(MINITORCH_INCLUDE minitorch.h REQUIRED)
find_library(MINITORCH_LIB minitorch REQUIRED)
add_library(minivllm SHARED src/engine.c)
target_include_directories(minivllm PUBLIC include ${MINITORCH_INCLUDE} $ENV{MINI_CUTLASS_SRC_DIR})
target_link_libraries(minivllm PUBLIC ${MINITORCH_LIB})
add_executable(mini-vllm src/main.c)
target_link_libraries(mini-vllm PRIVATE minivllm)
install(TARGETS minivllm mini-vllm)
""",
            "include/minivllm.h": """#ifndef MINIVLLM_H
#define MINIVLLM_H
float mv_attention(int n);
int mv_tile(void);
#endif
""",
            "src/engine.c": """#include <minicutlass/tile.h>
#include "minitorch.h"
#include "minivllm.h"

float mv_attention(int n) {
    float q[64], k[64];
    for (int i = 0; i < n && i < 64; ++i) { q[i] = 1.0f; k[i] = 0.5f; }
    return mt_dot(q, k, n < 64 ? n : 64);
}

int mv_tile(void) { return MINICUTLASS_TILE(98304); }
""",
            "src/main.c": """#include <stdio.h>
#include "minitorch.h"
#include "minivllm.h"

int main(void) {
    printf("mini-vllm: archs %s, tile %d, attention(8) = %.1f, compiler path from sm_%d\\n",
           mt_arch_list(), mv_tile(), mv_attention(8), mt_min_compiler_capability());
    return 0;
}
""",
        },
    ),
]

# --- the patch series: (file name, commit message, {path: (old, new)}) ---------------------------

PATCHES = {
    "minitriton": [
        (
            "0001-no-evict-last-below-sm70.patch",
            "Lower evict_last loads to plain loads below sm_70\n\nptxas refuses .L1::evict_last before sm_70.",
            {"src/main.c": ("{ (void)arch; return 1; }", "{ return arch >= 70; }")},
        ),
    ],
    "minitorch": [
        (
            "0001-compiler-path-from-sm60.patch",
            "Accept sm_60 and newer on the compiler path",
            {"src/tensor.c": ("{ return 70; }", "{ return 60; }")},
        ),
    ],
    "minivllm": [
        (
            "0001-support-pascal-and-volta.patch",
            "Add 6.0 and 6.1 to the supported archs",
            {
                "CMakeLists.txt": (
                    'set(SUPPORTED_ARCHS "7.0;7.5;8.0")',
                    'set(SUPPORTED_ARCHS "6.0;6.1;7.0;7.5;8.0")',
                )
            },
        ),
        (
            "0002-smaller-tiles-for-48k-smem.patch",
            "Size tiles for 48 KiB of shared memory per block",
            {"src/engine.c": ("MINICUTLASS_TILE(98304)", "MINICUTLASS_TILE(49152)")},
        ),
    ],
}


@dataclass(frozen=True)
class Upstream:
    name: str
    commits: list
    consumer: str
    extra: str = ""  # git-repos.txt keys


UPSTREAMS = [
    Upstream("minitriton", TRITON, "mini-triton"),
    Upstream("minillvm", LLVM, "mini-triton", "env=MINI_LLVM_SOURCE_DIR subdir=llvm"),
    Upstream("minitorch", TORCH, "mini-torch"),
    Upstream("minivllm", VLLM, "mini-vllm"),
    Upstream("minicutlass", CUTLASS, "mini-vllm", "env=MINI_CUTLASS_SRC_DIR subdir=include"),
]

# --- recipes and variants --------------------------------------------------------------------

_BUILD_ENV = """# Build-machine settings from `stackforge build` (MAX_JOBS, compiler cache): a rattler-build
# secret, so they reach the build without entering the package; xtrace off while they are read.
{ set +x; } 2>/dev/null
eval "${STACKFORGE_BUILD_ENV:-}"
set -x
"""

_CMAKE = """cmake -G Ninja -S "$SRC_DIR/{src}" -B build \\
  -DCMAKE_BUILD_TYPE=Release \\
  -DCMAKE_INSTALL_PREFIX="$PREFIX" \\
  -DCMAKE_PREFIX_PATH="$PREFIX" \\
  -DARCH_LIST="$TORCH_CUDA_ARCH_LIST"
cmake --build build --parallel "${{MAX_JOBS:-1}}"
cmake --install build
"""


def _recipe(name: str, summary: str, sources: list[str], requirements: str = "") -> str:
    src = "\n".join(
        f'  - path: ../../sources/{s}\n    target_directory: {s}\n    filter:\n      exclude: [".git"]'
        for s in sources
    )
    reqs = f"requirements:\n{requirements}" if requirements else ""
    return f"""# Miniature of the real stack, built by `stackforge demo` and the tests: the same layout as
# recipes/{{triton,pytorch,vllm}} with system compilers instead of conda-forge's.
context:
  version: "0.1.0"
  build_number: 0

package:
  name: {name}
  version: ${{{{ version }}}}

source:
{src}

build:
  number: ${{{{ build_number }}}}
  # what is inside: CUDA version, archs, stackforge's input hash (audits find packages by it)
  string: ${{{{ stackforge_build_string }}}}
  script:
    file: build.sh
    secrets:
      - STACKFORGE_BUILD_ENV
    env:
      TORCH_CUDA_ARCH_LIST: ${{{{ torch_cuda_arch_list }}}}
      SOURCE_DATE_EPOCH: ${{{{ stackforge_source_date_epoch }}}}

{reqs}
about:
  summary: "{summary}"
  license: Apache-2.0
"""


# Exact pins in the bracket form: rattler-build refuses '.' (sm60_61) in a `name version build` spec.
_VLLM_REQUIREMENTS = """  host:
    - mini-torch[version="==${{ mini_torch_version }}", build="${{ mini_torch_build }}"]
  run:
    # exact: libminivllm links the ABI of the libminitorch it was built against
    - mini-torch[version="==${{ mini_torch_version }}", build="${{ mini_torch_build }}"]
    # run time only, like vllm on triton: any mini-triton built for the same CUDA and archs
    - mini-triton[build="${{ stackforge_build_tag }}_*"]
"""

RECIPES = {
    "mini-triton": (
        _recipe(
            "mini-triton",
            "Miniature Triton: a kernel compiler built against mini-llvm",
            ["minitriton", "minillvm"],
        ),
        _BUILD_ENV
        + "# mini-triton builds against the mini-llvm checkout, as Triton against LLVM_SOURCE_DIR\n"
        'export MINI_LLVM_SOURCE_DIR="$SRC_DIR/minillvm/llvm"\n' + _CMAKE.format(src="minitriton"),
    ),
    "mini-torch": (
        _recipe("mini-torch", "Miniature PyTorch: a shared library with a C API", ["minitorch"]),
        _BUILD_ENV + _CMAKE.format(src="minitorch"),
    ),
    "mini-vllm": (
        _recipe(
            "mini-vllm",
            "Miniature vLLM: an engine linked against mini-torch",
            ["minivllm", "minicutlass"],
            _VLLM_REQUIREMENTS,
        ),
        _BUILD_ENV + "# header-only templates from their own checkout, as vLLM with VLLM_CUTLASS_SRC_DIR\n"
        'export MINI_CUTLASS_SRC_DIR="$SRC_DIR/minicutlass/include"\n' + _CMAKE.format(src="minivllm"),
    ),
}

VARIANTS = {
    "pascal": '# GPU environment "pascal" (miniature): same keys as the real recipes/variants/pascal.yaml\n'
    'cuda_compiler_version:\n  - "12.9"\ntorch_cuda_arch_list:\n  - "6.0;6.1"\n'
    '# the miniature builds with system tools: no conda channel besides output/\nchannel_sources:\n  - ""\n',
    "volta": '# GPU environment "volta" (miniature)\n'
    'cuda_compiler_version:\n  - "12.9"\ntorch_cuda_arch_list:\n  - "7.0"\nchannel_sources:\n  - ""\n',
}


# --- creating it -----------------------------------------------------------------------------


def _git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, **IDENTITY}
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def make_upstream(mirror: Path, up: Upstream) -> str:
    """Create mirror/<name>.git with the upstream's history; return the pinned (HEAD) commit."""
    repo = mirror / f"{up.name}.git"
    with tempfile.TemporaryDirectory(prefix=f"stackforge-{up.name}-") as tmp:
        work = Path(tmp)
        _git(work, "init", "-q", "-b", "main")
        for n, (message, files) in enumerate(up.commits, start=1):
            _write(work, files)
            _git(work, "add", "-A")
            _git(work, "commit", "-q", "-m", message, date=f"2025-06-{n:02d}T12:00:00+00:00")
        head = _git(work, "rev-parse", "HEAD")
        shutil.rmtree(repo, ignore_errors=True)
        mirror.mkdir(parents=True, exist_ok=True)
        _git(mirror, "clone", "-q", "--bare", str(work), str(repo))
    _git(repo, "config", "uploadpack.allowFilter", "true")
    _git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    return head


def make_patches(mirror: Path, name: str, pin: str, dest: Path) -> list[Path]:
    """patches/<name>/NNNN-*.patch: each change committed on the pin and `git format-patch`ed."""
    series = PATCHES.get(name, [])
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"stackforge-{name}-patch-") as tmp:
        work = Path(tmp) / name
        _git(Path(tmp), "clone", "-q", str(mirror / f"{name}.git"), str(work))
        _git(work, "checkout", "-q", "--detach", pin)
        for n, (file_name, message, edits) in enumerate(series, start=1):
            for rel, (old, new) in edits.items():
                text = (work / rel).read_text()
                if old not in text:
                    raise Failure(f"mini stack patch {file_name}: {old!r} not found in {rel}")
                (work / rel).write_text(text.replace(old, new))
            _git(work, "commit", "-q", "-a", "-m", message, date=f"2025-07-{n:02d}T09:00:00+00:00")
            out = _git(
                work, "format-patch", "--zero-commit", "--no-signature", "-N", "--full-index", "-1", "HEAD"
            )
            produced = work / out.splitlines()[-1]
            shutil.move(str(produced), dest / file_name)
    return sorted(dest.glob("*.patch"))


def manifest_text(pins: dict[str, str]) -> str:
    lines = [
        "# The miniature stack (stackforge demo): <name> <git-url> <commit> [key=value ...]",
        "# The URLs are not reachable: sources come from the mirror (--mirror DIR / STACKFORGE_MIRROR).",
    ]
    for up in UPSTREAMS:
        lines.append(
            f"{up.name:<12} {URL_BASE}/{up.name}.git {pins[up.name]} for={up.consumer} {up.extra}".rstrip()
        )
    return "\n".join(lines) + "\n"


def create_workspace(root: Path, mirror: Path | None = None) -> Path:
    """Write a workspace (git-repos.txt, patches/, recipes/) and its upstream mirror; return the
    mirror folder. Existing files are left as they are, so a re-run changes nothing."""
    mirror = mirror or root / "mirror"
    pins: dict[str, str] = {}
    for up in UPSTREAMS:
        repo = mirror / f"{up.name}.git"
        pins[up.name] = (
            _git(repo, "rev-parse", "refs/heads/main")
            if (repo / "HEAD").is_file()
            else make_upstream(mirror, up)
        )
    manifest = root / "git-repos.txt"
    if not manifest.is_file():
        root.mkdir(parents=True, exist_ok=True)
        manifest.write_text(manifest_text(pins))
    for up in UPSTREAMS:
        folder = root / "patches" / up.name
        if up.name in PATCHES and not folder.is_dir():
            make_patches(mirror, up.name, pins[up.name], folder)
    for name, (recipe, script) in RECIPES.items():
        folder = root / "recipes" / name
        if not (folder / "recipe.yaml").is_file():
            _write(folder, {"recipe.yaml": recipe, "build.sh": script})
    for env, text in VARIANTS.items():
        path = root / "recipes" / "variants" / f"{env}.yaml"
        if not path.is_file():
            _write(path.parent, {path.name: text})
    return mirror
