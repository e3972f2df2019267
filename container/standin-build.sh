#!/bin/sh
# Build container/Dockerfile for real with stand-ins, where registries, conda-forge and a CUDA
# build are out of reach (what docs/container.md reports as tested): both base images are a
# Debian 12 minbase made by debootstrap, the pixi in the install stage is a stand-in that checks
# `--locked`, the lock file and the output/ channel, and output/ holds tiny indexed packages.
# Then the entrypoint runs inside the image with --dry-run on replayed nvidia-smi answers.
# Needs root, buildah and debootstrap (Debian: apt-get install -y buildah debootstrap).
#   container/standin-build.sh CONTEXT ROOTFS STANDIN_PIXI [SITE]
# CONTEXT: a copy of the repository with output/ and runtime/pixi.lock filled in. SITE: a folder
# of Python 3.11 packages Debian lacks (py-rattler, which preflight reads output/ with).
set -eu
ctx=$1 rootfs=$2 pixi=$3 site=${4:-}
here=$(cd "$(dirname "$0")/.." && pwd)
b() { buildah --storage-driver vfs "$@"; }
[ -x "$rootfs/usr/bin/python3" ] || debootstrap --variant=minbase \
  --include=python3,python3-yaml,python3-rich,passwd bookworm "$rootfs" http://deb.debian.org/debian
c=$(b from scratch); m=$(b mount "$c"); cp -a "$rootfs/." "$m/"; b umount "$c"
b commit -q "$c" localhost/debian-standin:bookworm; b rm "$c"
c=$(b from localhost/debian-standin:bookworm); b copy "$c" "$pixi" /usr/local/bin/pixi
if [ -n "$site" ]; then b copy "$c" "$site" /opt/standin-site; fi
b commit -q "$c" localhost/pixi-standin:bookworm; b rm "$c"
(cd "$ctx" && b bud --isolation chroot -f container/Dockerfile --build-arg ENV=pascal \
  --build-arg PIXI_IMAGE=localhost/pixi-standin:bookworm \
  --build-arg BASE_IMAGE=localhost/debian-standin:bookworm -t localhost/stackforge-standin:pascal .)
c=$(b from -q localhost/stackforge-standin:pascal)
trap 'b rm "$c" >/dev/null' EXIT
b run --isolation chroot "$c" -- id
for case in p40 p40x2; do
  b run --isolation chroot -v "$here/tests/data/nvidia-smi:/smi:ro" --env STACKFORGE_NVIDIA_SMI=/smi/replay \
    --env NVIDIA_SMI_CASE=$case "$c" -- /stackforge/container/entrypoint.sh Qwen/Qwen2.5-0.5B-Instruct --dry-run
done
