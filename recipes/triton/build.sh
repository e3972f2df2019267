#!/bin/bash
# Triton (stack.yaml), offline, against the triton-llvm package in the host environment.
set -euo pipefail

# build-machine settings, git-repos.txt env= checkouts, -ffile-prefix-map (recipes/common/)
. "$RECIPE_DIR/../common/preamble.sh"

cd "$SRC_DIR/triton"

# --- no network: every dependency setup.py would download comes from the host environment ---
export TRITON_OFFLINE_BUILD=1                 # never download; fail if something is missing
export LLVM_SYSPATH="$PREFIX/lib/triton-llvm" # the LLVM of git-repos.txt's llvm-project pin
export LLVM_INCLUDE_DIRS="$LLVM_SYSPATH/include"
export LLVM_LIBRARY_DIR="$LLVM_SYSPATH/lib"
export JSON_SYSPATH="$PREFIX"
export PYBIND11_SYSPATH="$SP_DIR/pybind11"

# --- the CUDA 12.9 tools: CUDA 13's ptxas cannot target sm_60/61/70 -------------------------
export TRITON_PTXAS_PATH="$PREFIX/bin/ptxas"
export TRITON_CUOBJDUMP_PATH="$PREFIX/bin/cuobjdump"
export TRITON_NVDISASM_PATH="$PREFIX/bin/nvdisasm"
export TRITON_CUDACRT_PATH="$PREFIX"
export TRITON_CUDART_PATH="$PREFIX"

# --- what is built -----------------------------------------------------------------------------
export TRITON_BUILD_PROTON=OFF   # the profiler needs CUPTI and nothing in PyTorch/vLLM uses it
export TRITON_PARALLEL_LINK_JOBS=2  # each link of libtriton.so pulls in LLVM: a few GiB each
# Version without a +git suffix: the source is a copy without .git; PyTorch pins triton==X.Y.Z exactly
export TRITON_WHEEL_VERSION_SUFFIX=""

# C++ unit tests off in CMakeLists.txt itself (no environment variable reaches the option in 3.5.1;
# on, they FetchContent googletest): see no-unit-tests.sh
. "$RECIPE_DIR/no-unit-tests.sh"
# -Werror is dropped by patches/0001 (recipe.yaml source patches), applied to this copy

# setup.py moved from python/ to the repository root during 3.x: use whichever this tree has
if [[ -f setup.py ]]; then pkg_dir=.; else pkg_dir=python; fi
"$PYTHON" -m pip install "$pkg_dir" --no-deps --no-build-isolation -vv

# --- the runtime tools, where Triton looks for them --------------------------------------------
# An offline build bundles no ptxas/cuobjdump/nvdisasm/headers; Triton looks in
# triton/backends/nvidia/{bin,include} (or TRITON_*_PATH): link them to the CUDA 12.9 packages of
# the same environment (run requirements), with relative links so the prefix can move.
nvidia="$SP_DIR/triton/backends/nvidia"
mkdir -p "$nvidia/bin"
for tool in ptxas cuobjdump nvdisasm; do
  ln -sfn "$("$PYTHON" -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PREFIX/bin/$tool" "$nvidia/bin")" "$nvidia/bin/$tool"
done
cuda_h="$(find "$PREFIX/targets" "$PREFIX/include" -name cuda.h -print -quit 2>/dev/null || true)"
if [[ -n "$cuda_h" && ! -e "$nvidia/include/cuda.h" ]]; then
  rm -rf "$nvidia/include"
  ln -sfn "$("$PYTHON" -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$(dirname "$cuda_h")" "$nvidia")" "$nvidia/include"
fi
