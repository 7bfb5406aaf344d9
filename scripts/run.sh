#!/usr/bin/env bash
# Runs the agent from source with its embedded default config (JSON lines on stdout, logs on stderr).
# Extra arguments go to `ja4ebpf run`, e.g. --config FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=$(bash scripts/setup.sh | tail -1)
export DENO_NO_UPDATE_CHECK=1
# The V8 heap limits the packaged agent runs with (one file for the build, this script and the benchmarks).
V8FLAGS=$(tr ' ' ',' <scripts/agent-v8-flags | tr -d '\n')
# ... and its environment (a value already set wins).
while IFS='=' read -r k v; do
  case $k in '' | '#'*) continue ;; esac
  [ -n "${!k:-}" ] || export "$k=$v"
done <scripts/agent-env
# ... and its `deno run` flags (scripts/agent-deno-flags, comments dropped).
DENOFLAGS=$(sed 's/#.*//' scripts/agent-deno-flags | tr -s ' \n' ' ')
# shellcheck disable=SC2086 # DENOFLAGS is a list of flags
exec "$DENO" run -A $DENOFLAGS --v8-flags="$V8FLAGS" src/main.ts run "$@"
