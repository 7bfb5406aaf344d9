#!/bin/sh
# The agent's part of the guest checks (sourced by test.sh): --validate, then every capture method in turn.
# Skipped with a SKIP line while the commands are placeholders ("not built yet").
agent_checks() {
  # The placeholders print "(not built yet)" in their usage.
  if ja4ebpf --validate --help 2>&1 | grep -q "not built yet"; then
    out SKIP validate="not built yet"
    return 0
  fi
  vout=$(ja4ebpf --validate --json 2>/tmp/validate.err)
  vrc=$?
  out VALIDATE rc=$vrc json="$(echo "$vout" | tr -d '\n')"
  [ $vrc -eq 0 ] || fail validate exit $vrc: "$(head -c 300 /tmp/validate.err)"
  if ja4ebpf run --help 2>&1 | grep -q "not built yet"; then
    out SKIP run="not built yet"
    return 0
  fi
  ms=$METHODS
  [ "$ms" = all ] && ms="tracepoint kretprobe fexit raw_tp auto"
  for m in $ms; do run_method "$m" 0 0; done
  if [ "$IDLE" -gt 0 ]; then
    idle_recv "$IDLE" >/tmp/idle.out &
    idle_pid=$!
    i=0
    while ! grep -q blocked /tmp/idle.out 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    for m in $ms; do run_method "$m" "$IDLE" 0; done
    kill $idle_pid 2>/dev/null
    pkill -f idle_recv 2>/dev/null
    wait $idle_pid 2>/dev/null
  fi
  [ "$PERFBUF" = 1 ] && run_method auto 0 1
  return 0
}

# JA4H of the fixed request curl sends (GET, HTTP/1.1, no cookie/referer, names Host,User-Agent,Accept,
# Accept-Language): computed here, independently of the agent's own code.
expected_ja4h() {
  names="Host,User-Agent,Accept,Accept-Language"
  b=$(printf '%s' "$names" | sha256sum | cut -c1-12)
  echo "ge11nn04enus_${b}_000000000000_000000000000"
}

# run_method METHOD IDLE PERFBUF: runs the agent with nginx forced onto METHOD (Apache always on its uprobe),
# sends REQUESTS to each server, counts rows with the right JA4H.
run_method() {
  m=$1
  idle=$2
  perf=$3
  cfg=/tmp/agent-$m.yaml
  {
    echo "capture:"
    echo "  nginx: { method: $m }"
    echo "  apache: { method: uprobe }"
    [ "$perf" = 1 ] && echo "  buffer: perf"
    echo "sink: { kind: stdout }"
  } >$cfg
  [ -n "$AGENT_CONFIG_EXTRA" ] && cat "$AGENT_CONFIG_EXTRA" >>$cfg
  ja4ebpf run --config $cfg >/tmp/rows.json 2>/tmp/agent.err &
  apid=$!
  # Ready when the agent says so on stderr, or gone.
  i=0
  while [ $i -lt 300 ] && kill -0 $apid 2>/dev/null && ! grep -qi '"attached\|ready' /tmp/agent.err; do
    sleep 0.1
    i=$((i + 1))
  done
  if ! kill -0 $apid 2>/dev/null; then
    out METHOD method=$m idle=$idle perf=$perf attached=0 error="\"$(tail -c 300 /tmp/agent.err | tr '\n"' " '")\""
    return 0
  fi
  for srv in nginx:8080 apache:8081; do
    i=0
    while [ $i -lt "$REQUESTS" ]; do request "http://127.0.0.1:${srv#*:}/kt?m=$m&i=$i" >/dev/null; i=$((i + 1)); done
  done
  sleep 1
  nmissed=$(awk '{s += $3} END {print s + 0}' $T/kprobe_profile 2>/dev/null)
  kill -TERM $apid
  wait $apid
  want=$(expected_ja4h)
  for s in nginx apache; do
    rows=$(grep -c "\"server\":\"$s\"" /tmp/rows.json)
    good=$(grep "\"server\":\"$s\"" /tmp/rows.json | grep -c "\"ja4h\":\"$want\"")
    cap=$(grep "\"server\":\"$s\"" /tmp/rows.json | grep -o '"capture":"[a-z_]*"' | sort -u | cut -d'"' -f4 | tr '\n' ,)
    drops=$(grep -io '"drops[a-z_]*":[0-9]*' /tmp/agent.err | tail -1 | cut -d: -f2)
    out METHOD method=$m server=$s idle=$idle perf=$perf attached=1 capture="${cap%,}" sent="$REQUESTS" \
      rows="$rows" right_ja4h="$good" drops="${drops:-?}" nmissed="${nmissed:-0}"
  done
}
