#!/usr/bin/env bash
# The whole test suite: set-up (apt, deno, BPF build), fmt/lint/check, then every test.
# Ends with two lines: "ignored: N (names)" (tests and steps deno test ignored: a kernel feature absent as
# expected), then "N passed, N failed" (CI reads the last line).
#   scripts/test.sh                 everything
#   scripts/test.sh src/parse/      only the tests under a path (after set-up)
set -uo pipefail
cd "$(dirname "$0")/.."
DENO=$(bash scripts/setup.sh --test | tail -1) || { echo "set-up failed"; echo "0 passed, 1 failed"; exit 1; }
export DENO DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
passed=0
failed=0
ignored=0
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
  # "| 1 ignored (2 steps)": ignored tests plus ignored steps; absent when nothing was ignored.
  if [[ $summary =~ \|\ ([0-9]+)\ ignored(\ \(([0-9]+)\ steps?\))? ]]; then
    ignored=$((BASH_REMATCH[1] + ${BASH_REMATCH[3]:-0}))
  fi
else
  echo "deno test printed no summary (crashed?)"
  failed=$((failed + 1))
fi
names=$(sed -nE 's/^ *(.*) \.\.\. ignored( \(.*\))?$/\1/p' "$out" | paste -sd ';' | sed 's/;/; /g')
rm -f "$out"
echo "ignored: $ignored${names:+ ($names)}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
