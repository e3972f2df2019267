#!/bin/bash
# vLLM 0.14.0 against this environment's pytorch, with no download at build time.
set -euo pipefail

# Build-machine settings from `stackforge build` (MAX_JOBS, compiler cache): a rattler-build
# secret, so they reach the build without entering the package; xtrace off while they are read.
{ set +x; } 2>/dev/null
eval "${STACKFORGE_BUILD_ENV:-}"
set -x

# --- every source vLLM's CMake would otherwise FetchContent (git-repos.txt env=/subdir=) -----
export VLLM_FLASH_ATTN_SRC_DIR="$SRC_DIR/flash-attention"
export VLLM_CUTLASS_SRC_DIR="$SRC_DIR/cutlass"
export FLASH_MLA_SRC_DIR="$SRC_DIR/flashmla"
export QUTLASS_SRC_DIR="$SRC_DIR/qutlass"
export TRITON_KERNELS_SRC_DIR="$SRC_DIR/triton-kernels/python/triton_kernels/triton_kernels"
# and fail rather than download if one were missing (setup.py appends CMAKE_ARGS to its own)
export CMAKE_ARGS="${CMAKE_ARGS:-} -DFETCHCONTENT_FULLY_DISCONNECTED=ON"

cd "$SRC_DIR/vllm"

# --- against the torch in the host environment (the exact build pinned in recipe.yaml) -------
export VLLM_TARGET_DEVICE=cuda             # not auto-detected from a GPU: the build machine may have none
export VLLM_USE_PRECOMPILED=0              # compile csrc/, never fetch a prebuilt wheel's .so
# drop torch==2.9.1 from the requirement lists: the host torch *is* 2.9.1, built here, and pip
# must not go looking for the PyPI wheel
"$PYTHON" use_existing_torch.py
export CUDA_HOME="$BUILD_PREFIX"           # nvcc 12.9 from the build environment
export CMAKE_BUILD_TYPE=Release            # setup.py's default is RelWithDebInfo: no debug info shipped
export NVCC_THREADS=1                      # one nvcc thread per job: MAX_JOBS already fills the memory
export MAX_JOBS="${MAX_JOBS:-1}"           # from stackforge: free memory / extra.stackforge.gib_per_job
# same paths in every build (the build root is fixed; __FILE__ strings stay relative)
export CFLAGS="${CFLAGS:-} -ffile-prefix-map=$SRC_DIR=."
export CXXFLAGS="${CXXFLAGS:-} -ffile-prefix-map=$SRC_DIR=."

"$PYTHON" -m pip install . --no-deps --no-build-isolation -vv
