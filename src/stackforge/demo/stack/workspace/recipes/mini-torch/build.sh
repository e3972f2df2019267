#!/bin/bash
set -euo pipefail
# build-machine settings, git-repos.txt env= checkouts, -ffile-prefix-map (recipes/common/)
. "$RECIPE_DIR/../common/preamble.sh"
# a shared library with a C API, like libtorch
. "$RECIPE_DIR/../common/cmake.sh" minitorch
