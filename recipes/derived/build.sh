#!/usr/bin/env bash
# Install the unpacked, patched conda-forge artifact (stackforge.build.derive made $SRC_DIR) as is.
set -euo pipefail

# --- the input's files, links and modes kept -------------------------------------------------------
cp -a "$SRC_DIR/files/." "$PREFIX/"

# --- the input's own build prefix, in its text files (entry-point shebangs, .pc files) -------------
# conda-forge recorded a placeholder there for the installer to replace; writing our $PREFIX in its
# place lets rattler-build record it again, so the installer relocates these files as before.
# Each line: the placeholder as a sed pattern, a tab, the file.
while IFS=$'\t' read -r placeholder path; do
  [ -n "$path" ] || continue
  sed -i "s|${placeholder}|${PREFIX}|g" "$PREFIX/$path"
done < "$SRC_DIR/text-prefix.tsv"
