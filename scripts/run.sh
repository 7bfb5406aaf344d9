#!/usr/bin/env bash
# Runs the agent from source with its embedded default config (JSON lines on stdout, logs on stderr).
# Extra arguments go to `ja4ebpf run`, e.g. --config FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=$(bash scripts/setup.sh | tail -1)
export DENO_NO_UPDATE_CHECK=1
# The packaged agent's V8 flags, `deno run` flags and environment (a value already set wins).
# shellcheck source=scripts/agent-flags.sh
. scripts/agent-flags.sh
while IFS='=' read -r k v; do
  [ -n "${!k:-}" ] || export "$k=$v"
done < <(agent_env)
exec "$DENO" run -A ${AGENT_DENOFLAGS[@]+"${AGENT_DENOFLAGS[@]}"} --v8-flags="$AGENT_V8FLAGS" src/main.ts run "$@"
