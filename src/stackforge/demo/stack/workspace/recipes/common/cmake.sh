# Sourced by the miniature recipes' build.sh after the preamble: configure, build and install the
# checkout named in $1 with CMake and Ninja for the environment's archs.
cmake -G Ninja -S "$SRC_DIR/$1" -B build \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" \
  -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DARCH_LIST="$TORCH_CUDA_ARCH_LIST"
cmake --build build --parallel "${MAX_JOBS:-1}"
cmake --install build
