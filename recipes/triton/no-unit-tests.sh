# Sourced by build.sh in the Triton source tree: build no C++ unit tests.
# Triton 3.5.1 declares `option(TRITON_BUILD_UT ... ON)` in CMakeLists.txt and its setup.py passes
# no TRITON_BUILD_UT from the environment, so an exported TRITON_BUILD_UT=OFF changes nothing;
# with the option on, CMake configures unittest/ and FetchContent clones googletest: a download
# in an offline build. The option's default is switched off here, and the build stops if the
# line is not found. (conda-forge/triton-feedstock recipe/build.sh, commit 73cb998 "Disable
# building C++ unittests", edits CMakeLists.txt the same way.)
sed -i -E 's/^([[:space:]]*option\(TRITON_BUILD_UT[[:space:]].*)[[:space:]]ON\)/\1 OFF)/' CMakeLists.txt
if ! grep -Eq '^[[:space:]]*option\(TRITON_BUILD_UT[[:space:]].*[[:space:]]OFF\)' CMakeLists.txt; then
  echo "error: no 'option(TRITON_BUILD_UT ... OFF)' in $PWD/CMakeLists.txt after the edit" >&2
  exit 1
fi
