#!/usr/bin/env bash
# The whole test suite: set-up (apt, deno, BPF build), fmt/lint/check, then every test.
# Ends with one line: "N passed, N failed".
#   scripts/test.sh                 everything
#   scripts/test.sh src/parse/      only the tests under a path (after set-up)
set -uo pipefail
cd "$(dirname "$0")/.."
DENO=$(bash scripts/setup.sh --test | tail -1) || { echo "set-up failed"; echo "0 passed, 1 failed"; exit 1; }
export DENO DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
passed=0
failed=0
step() { # name, command...
  local name=$1
  shift
  if "$@"; then passed=$((passed + 1)); echo "PASS $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}
if [ $# -eq 0 ]; then
  step "deno fmt --check" "$DENO" fmt --check
  step "deno lint" "$DENO" lint
  step "deno check" "$DENO" task -q check
fi
out=$(mktemp)
# Tests that start servers or load BPF programs need root; they run serially (--parallel off)
# because they share loopback ports and kernel hooks.
[ $# -eq 0 ] && set -- src/ tests/
"$DENO" test -A --permit-no-files "$@" 2>&1 | tee "$out"
summary=$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$out" | tail -1)
if [ -n "$summary" ]; then
  p=$(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$summary")
  f=$(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$summary")
  passed=$((passed + p))
  failed=$((failed + f))
else
  echo "deno test printed no summary (crashed?)"
  failed=$((failed + 1))
fi
rm -f "$out"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
