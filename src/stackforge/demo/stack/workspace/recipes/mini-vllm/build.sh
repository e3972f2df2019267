#!/bin/bash
set -euo pipefail
# build-machine settings, git-repos.txt env= checkouts, -ffile-prefix-map (recipes/common/)
. "$RECIPE_DIR/../common/preamble.sh"
# header-only templates from their own checkout (MINI_CUTLASS_SRC_DIR, from the preamble), as
# vLLM with VLLM_CUTLASS_SRC_DIR
. "$RECIPE_DIR/../common/cmake.sh" minivllm
