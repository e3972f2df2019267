# Sourced first by every recipes/<pkg>/build.sh (`. "$RECIPE_DIR/../common/preamble.sh"`): what
# every build of the stack sets the same way. Part of every package's cache key.

# --- build-machine settings from `stackforge build` (MAX_JOBS, compiler cache) ------------------
# A rattler-build secret, so they reach the build without entering the package; xtrace off while
# they are read, so no value lands in the log.
{ set +x; } 2>/dev/null
eval "${STACKFORGE_BUILD_ENV:-}"
set -x

# --- every other checkout this build reads, where its build system looks for it -----------------
# From git-repos.txt env=VAR subdir=PATH, handed over by stackforge as "VAR=dir ..." (dirs
# relative to $SRC_DIR): vLLM's CMake then finds cutlass, flash-attention, ... and downloads nothing.
for pair in ${STACKFORGE_SOURCE_ENV:-}; do
  export "${pair%%=*}=$SRC_DIR/${pair#*=}"
done

# --- the same bytes from every build folder ------------------------------------------------------
# The build root is fixed by stackforge; mapping the source folder keeps __FILE__ strings and
# debug paths relative as well.
export CFLAGS="${CFLAGS:-} -ffile-prefix-map=$SRC_DIR=."
export CXXFLAGS="${CXXFLAGS:-} -ffile-prefix-map=$SRC_DIR=."
