#!/usr/bin/env bash
# Runs the agent from source with its embedded default config (JSON lines on stdout, logs on stderr).
# Extra arguments go to `ja4ebpf run`, e.g. --config FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=$(bash scripts/setup.sh | tail -1)
export DENO_NO_UPDATE_CHECK=1
exec "$DENO" run -A src/main.ts run "$@"
