#!/bin/bash
# vLLM (stack.yaml) against this environment's pytorch, with no download at build time. This stack's
# copy of recipes/vllm/build.sh (no longer a link to it): the same steps, plus the Rust frontend's
# vendored crates, which the 0.14 recipe has no use for.
set -euo pipefail

# build-machine settings, git-repos.txt env= checkouts, -ffile-prefix-map (recipes/common/)
. "$RECIPE_DIR/../common/preamble.sh"

# --- every source vLLM's CMake would otherwise FetchContent: the preamble exported each
# *_SRC_DIR of git-repos.txt (flash-attention, cutlass, flashmla, qutlass, triton-kernels) ---
# and fail rather than download if one were missing (setup.py appends CMAKE_ARGS to its own)
export CMAKE_ARGS="${CMAKE_ARGS:-} -DFETCHCONTENT_FULLY_DISCONNECTED=ON"

# --- the Rust frontend from the vendored crates only: the preamble exported CARGO_HOME (git-repos.txt
# cargo=), whose config.toml is the [source] replacement `cargo vendor` printed at clone time ---
if [ ! -f "${CARGO_HOME:-}/config.toml" ]; then
  echo "no vendored crates: CARGO_HOME=${CARGO_HOME:-} has no config.toml (run \`stackforge clone vllm\`)" >&2
  exit 1
fi
export CARGO_NET_OFFLINE=true             # with the recipe's env: cargo never goes to the network
# the same bytes from every build folder: panic locations name the crates' paths, as __FILE__ does
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$SRC_DIR=."

cd "$SRC_DIR/vllm"

# --- against the torch in the host environment (the exact build pinned in recipe.yaml) -------
export VLLM_TARGET_DEVICE=cuda             # not auto-detected from a GPU: the build machine may have none
export VLLM_USE_PRECOMPILED=0              # compile csrc/, never fetch a prebuilt wheel's .so
# drop the torch== pin from the requirement lists: the host torch *is* that version, built here, and pip
# must not go looking for the PyPI wheel
"$PYTHON" use_existing_torch.py
export CUDA_HOME="$BUILD_PREFIX"           # nvcc 12.9 from the build environment
export CMAKE_BUILD_TYPE=Release            # setup.py's default is RelWithDebInfo: no debug info shipped
export NVCC_THREADS=1                      # one nvcc thread per job: MAX_JOBS already fills the memory
export MAX_JOBS="${MAX_JOBS:-1}"           # from stackforge: free memory / extra.stackforge.gib_per_job

"$PYTHON" -m pip install . --no-deps --no-build-isolation -vv
