#!/bin/sh
# The image's entry point: `stackforge serve` with the old-GPU defaults, inside the installed
# runtime environment (no pixi at run time).
#   entrypoint.sh [MODEL] [stackforge serve / vllm serve options]     e.g. Qwen/Qwen2.5-0.5B-Instruct
#   entrypoint.sh /models/qwen --max-model-len 2048 --gpus 0,1 --dry-run
# MODEL (or $MODEL) is a Hugging Face id, read from the mounted cache ($HF_HOME), or a mounted path.
# It listens on 0.0.0.0 inside the container: the host decides what is exposed (-p 127.0.0.1:8000:8000).
set -eu

root="${STACKFORGE_ROOT:-/stackforge}"
activate="${STACKFORGE_ACTIVATE:-$root/activate.sh}"
# shellcheck disable=SC1090
[ -f "$activate" ] && . "$activate"
# vllm and nginx are on PATH once the environment is active: no launcher prefix
export STACKFORGE_RUNTIME_EXEC="${STACKFORGE_RUNTIME_EXEC:-}"

model="${MODEL:-}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  model="$1"
  shift
fi
host=0.0.0.0
for arg in "$@"; do
  case "$arg" in --host | --host=*) host="" ;; esac
done

if [ -n "$model" ]; then set -- --model "$model" "$@"; fi
if [ -n "$host" ]; then set -- --host "$host" "$@"; fi
exec stackforge --root "$root" serve "$@"
