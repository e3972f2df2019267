#!/bin/bash
set -euo pipefail
# build-machine settings, git-repos.txt env= checkouts, -ffile-prefix-map (recipes/common/)
. "$RECIPE_DIR/../common/preamble.sh"
# mini-triton builds against the mini-llvm checkout (MINI_LLVM_SOURCE_DIR, from the preamble),
# as Triton against LLVM_SOURCE_DIR
. "$RECIPE_DIR/../common/cmake.sh" minitriton
