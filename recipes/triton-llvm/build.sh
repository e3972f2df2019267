#!/bin/bash
# LLVM + MLIR for Triton, installed under $PREFIX/lib/triton-llvm so it never collides with a
# conda-forge llvm package in the same host environment.
set -euo pipefail

# build-machine settings, git-repos.txt env= checkouts, -ffile-prefix-map (recipes/common/)
. "$RECIPE_DIR/../common/preamble.sh"

# LLVM_SOURCE_DIR: exported by the preamble (git-repos.txt llvm-project env=LLVM_SOURCE_DIR)
INSTALL="$PREFIX/lib/triton-llvm"

cmake_args=(
  -G Ninja
  -S "$LLVM_SOURCE_DIR/llvm"
  -B build
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_INSTALL_PREFIX="$INSTALL"
  # what Triton links: MLIR, and lld for its AMD backend (Triton builds both backends)
  -DLLVM_ENABLE_PROJECTS="mlir;lld"
  -DLLVM_TARGETS_TO_BUILD="host;NVPTX;AMDGPU"
  # mlir-tblgen, llvm-tblgen and FileCheck are installed: Triton's CMake runs the tablegens
  -DLLVM_BUILD_UTILS=ON
  -DLLVM_INSTALL_UTILS=ON
  # tests, benchmarks, examples and docs are not part of what Triton consumes
  -DLLVM_INCLUDE_TESTS=OFF
  -DMLIR_INCLUDE_TESTS=OFF
  -DLLVM_INCLUDE_BENCHMARKS=OFF
  -DLLVM_INCLUDE_EXAMPLES=OFF
  -DLLVM_INCLUDE_DOCS=OFF
  # no optional system libraries: the static libraries must not drag in host dependencies
  -DLLVM_ENABLE_ZLIB=OFF
  -DLLVM_ENABLE_ZSTD=OFF
  -DLLVM_ENABLE_LIBXML2=OFF
  -DLLVM_ENABLE_TERMINFO=OFF
  -DLLVM_ENABLE_LIBEDIT=OFF
  # no telemetry, no network at configure time
  -DLLVM_BUILD_TELEMETRY=OFF
  # assertions off: this is a release toolchain (Triton's own CI LLVM builds differ here)
  -DLLVM_ENABLE_ASSERTIONS=OFF
  # each LLVM link takes several GiB: link two at a time whatever MAX_JOBS is
  -DLLVM_PARALLEL_LINK_JOBS=2
  # same paths in every build: the build root is fixed, and __FILE__ strings stay relative
  -DCMAKE_C_FLAGS="$CFLAGS"  # -ffile-prefix-map from the preamble
  -DCMAKE_CXX_FLAGS="$CXXFLAGS"
)
cmake "${cmake_args[@]}"
cmake --build build --parallel "${MAX_JOBS:-1}"
cmake --install build
