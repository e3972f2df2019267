#!/bin/bash
# PyTorch (stack.yaml) for Pascal/Volta with CUDA 12.9, from sources/pytorch and its submodules.
set -euo pipefail

# build-machine settings, git-repos.txt env= checkouts, -ffile-prefix-map (recipes/common/)
. "$RECIPE_DIR/../common/preamble.sh"

cd "$SRC_DIR/pytorch"

# --- CUDA for the environment's archs (TORCH_CUDA_ARCH_LIST comes from the variant file) ------
export USE_CUDA=1
export CUDA_HOME="$BUILD_PREFIX"       # nvcc 12.9 from the build environment

# --- the CUDA toolkit is rooted at the host prefix, not at nvcc's build prefix ----------------
# PyTorch finds CUDA several ways; every one must see $PREFIX, or cublas_v2.h is searched for in
# the build prefix (conda-forge/pytorch-cpu-feedstock issue 283; its recipe/build.sh sets these).
# IN_PYTORCH_BUILD=1 makes patches/0001 ignore the compiler's root; CUPTI (patches/0002) and the
# other libraries are found under the targets directory
export IN_PYTORCH_BUILD=1
export CUDAToolkit_ROOT="$PREFIX"
export CUDAToolkit_ROOT_DIR="$PREFIX"
export CUDA_TOOLKIT_ROOT_DIR="$PREFIX"
export CUDAToolkit_BIN_DIR="$BUILD_PREFIX/bin"
export CUDAToolkit_TARGET_DIR="$PREFIX/targets/x86_64-linux"

# --- CUDA libraries: cuDNN and the system NCCL -------------------------------------------------
export TORCH_NVCC_FLAGS="-Xfatbin -compress-all"  # smaller fatbins, same code
export USE_CUDNN=1
export CUDNN_ROOT="$PREFIX"            # cuDNN 9.10.2: the last with 6.x/7.0 in its support matrix
export USE_SYSTEM_NCCL=1               # link conda's NCCL instead of building one (an hour of nvcc)
export USE_STATIC_NCCL=0               # the shared libnccl.so of the nccl package, one per process
export NCCL_ROOT_DIR="$PREFIX"         # where USE_SYSTEM_NCCL looks for it
export NCCL_INCLUDE_DIR="$PREFIX/include" # (its headers)

# --- kernels these GPUs cannot run: off, which also saves hours of nvcc ---------------------
export USE_FLASH_ATTENTION=0           # FlashAttention kernels need sm_80
export USE_MEM_EFF_ATTENTION=1         # CUTLASS memory-efficient attention works from sm_50: the SDPA path here
export USE_CUSPARSELT=0                # 2:4 structured sparsity needs sm_80 tensor cores
export USE_CUDSS=0                     # not needed by vLLM; one less library to pin
export USE_CUFILE=0                    # GPUDirect Storage: not used, one less library
export USE_FBGEMM_GENAI=0              # FBGEMM GenAI kernels target sm_90
export USE_ROCM=0                      # CUDA only: no HIP pass over the sources
export USE_XPU=0                       # nor Intel GPUs

# --- CPU side ------------------------------------------------------------------------------
export BLAS=MKL                        # as conda-forge on x86-64: mkl-devel in host
export USE_MKLDNN=1                    # oneDNN (vendored) for CPU convolutions and matmuls
export USE_DISTRIBUTED=1               # torch.distributed: vLLM tensor parallelism needs it
export USE_MPI=0                       # NCCL and Gloo cover single-node multi-GPU serving
export USE_NUMA=0                      # no libnuma dependency; vLLM does its own CPU pinning

# --- linker flags: conda's defaults, less two that break torch (pytorch-cpu-feedstock recipe/build.sh) ---
# --as-needed drops libraries torch loads only through other libraries (MKL's layers, CUDA's);
# -z,now resolves every CUDA symbol at load time, so `import torch` fails on a machine without a
# GPU driver (no libcuda.so.1): lazy binding resolves them on first use
export LDFLAGS="$(echo "${LDFLAGS:-}" | sed -e 's/-Wl,--as-needed//g' -e 's/-Wl,-z,now/-Wl,-z,lazy/g')"

# --- nothing downloaded at configure time ----------------------------------------------------
# NNPACK's CMake downloads `six` unless told otherwise: six comes from the host environment instead
# (recipe.yaml), and the download script is emptied (pytorch-cpu-feedstock recipe/build.sh does both)
: > third_party/NNPACK/cmake/DownloadSix.cmake

# --- how it is built -------------------------------------------------------------------------
export BUILD_TEST=0                    # the C++ test binaries double the build for nothing shipped
export CMAKE_GENERATOR=Ninja           # Ninja, not make: parallel and MAX_JOBS-aware
export CMAKE_PREFIX_PATH="$PREFIX"     # find host libraries (MKL, cuDNN, NCCL) before the system's
export _GLIBCXX_USE_CXX11_ABI=1        # the C++11 ABI, as PyTorch 2.9 wheels: vLLM's _C must match
# MAX_JOBS comes from stackforge (free memory / extra.stackforge.gib_per_job); setup.py reads it
export MAX_JOBS="${MAX_JOBS:-1}"

"$PYTHON" -m pip install . --no-deps --no-build-isolation -vv
