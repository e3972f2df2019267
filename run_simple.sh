#!/usr/bin/env bash
# Smoke test of the built stack: offline generation with vLLM on a small model, tokens per second.
#
#   ./run_simple.sh [-e pascal|volta] [--model NAME_OR_PATH] [--prompt TEXT] [--max-tokens N] [--enforce-eager]
#
# Thin on purpose: `stackforge preflight` checks the GPU, the environment, the built packages and
# the model, and prints the environment name; the generation then runs in that environment's
# runtime workspace (runtime/pixi.toml) as `stackforge generate`. Both live in src/stackforge/run/.
# STACKFORGE_RUNTIME_EXEC replaces the `pixi run --manifest-path runtime -e ENV` prefix.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export STACKFORGE_ROOT="$root"
pixi="${PIXI_EXE:-pixi}"

# stackforge itself: on PATH inside `pixi shell`/`pixi run` or a dev venv, else pixi's default env
if command -v stackforge >/dev/null 2>&1; then
  stackforge=(stackforge)
elif command -v "$pixi" >/dev/null 2>&1; then
  stackforge=("$pixi" run --manifest-path "$root" --environment default stackforge)
else
  echo "error: neither stackforge nor pixi ($pixi) is on PATH" >&2
  echo "  what to do: install pixi (https://pixi.sh: curl -fsSL https://pixi.sh/install.sh | bash)," >&2
  echo "  then run ./run_simple.sh again; or, in a dev checkout: python3 -m pip install -e ." >&2
  exit 1
fi

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
    echo "usage: ./run_simple.sh [options]  (the options of \`stackforge preflight\`):"
    exec "${stackforge[@]}" preflight --help
  fi
done

env_name="$("${stackforge[@]}" preflight "$@")"   # messages on stderr, the name on stdout

if [[ -n "${STACKFORGE_RUNTIME_EXEC:-}" ]]; then
  read -r -a launcher <<<"$STACKFORGE_RUNTIME_EXEC"
else
  launcher=("$pixi" run --manifest-path "$root/runtime" --environment "$env_name")
fi
exec "${launcher[@]}" python -m stackforge generate --env "$env_name" "$@"
