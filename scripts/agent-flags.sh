# shellcheck shell=bash
# Sourced by scripts/run.sh and scripts/build.sh (from the project root): how the packaged agent runs, read
# from its three files in one place (the benchmarks and tests read the same files in tests/helpers/agent.ts).
#   AGENT_V8FLAGS    scripts/agent-v8-flags as one comma-separated list, for --v8-flags=
#   AGENT_DENOFLAGS  scripts/agent-deno-flags (comments dropped), an array of `deno run` flags
#   agent_env        prints scripts/agent-env's KEY=VALUE lines (comments and blank lines dropped)
AGENT_V8FLAGS=$(tr ' ' ',' <scripts/agent-v8-flags | tr -d '\n')
read -r -a AGENT_DENOFLAGS <<<"$(sed 's/#.*//' scripts/agent-deno-flags | tr -s ' \n' ' ')"
agent_env() {
  grep -E '^[A-Z_][A-Z0-9_]*=' scripts/agent-env
}
