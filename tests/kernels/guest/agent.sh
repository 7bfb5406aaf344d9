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
  if [ $vrc -ne 0 ]; then
    fail validate exit $vrc: "$(head -c 300 /tmp/validate.err)"
    # Again with libbpf's messages: the verifier's last words say why a program was refused.
    # (--validate keeps libbpf quiet; `run` at debug level prints everything libbpf says.)
    printf 'log:\n  level: debug\nmetrics:\n  enabled: false\n' >/tmp/debug.yaml
    timeout 120 ja4ebpf run --config /tmp/debug.yaml >/dev/null 2>/tmp/validate-debug.err
    grep -iE 'unknown func|invalid|fail|not supported|denied|error' /tmp/validate-debug.err |
      sed 's/^{"ts":"[^"]*",//' | awk '!seen[$0]++' | tail -n 10 | cut -c1-300 | sed 's/^/JA4K VERIFIER /'
    # The verifier's last lines for the first two refused programs.
    awk '/BPF program load failed/ {p = $0} /BEGIN PROG LOAD LOG/ {n = 0; next}
      /END PROG LOAD LOG/ {if (k++ < 2) {print p; for (i = n - 4; i < n; i++) if (i >= 0) print buf[i % 4]}; next}
      {buf[n % 4] = $0; n++}' /tmp/validate-debug.err | cut -c1-240 | sed 's/^/JA4K VERIFIER /'
  fi
  if ja4ebpf run --help 2>&1 | grep -q "not built yet"; then
    out SKIP run="not built yet"
    return 0
  fi
  ms=$METHODS
  [ "$ms" = all ] && ms="tracepoint kretprobe fexit raw_tp auto"
  for m in $ms; do run_method "$m" 0 0; done
  # The adversarial pass: idle processes blocked in recvfrom hold kretprobe instances.
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

# run_method METHOD IDLE PERFBUF: runs the agent with nginx forced onto METHOD (Apache on its uprobe, or
# auto when METHOD is auto), sends REQUESTS to each server, counts rows with the right JA4H. One METHOD line per
# server: method asked, method attached (0 = refused, with the reason), rows, drops from the agent's metrics,
# kretprobe nmissed where the kernel shows it.
run_method() {
  m=$1
  idle=$2
  perf=$3
  ap=uprobe
  [ "$m" = auto ] && ap=auto
  rb=auto
  [ "$perf" = 1 ] && rb=perfbuf
  cfg=/tmp/agent-$m.yaml
  cat >$cfg <<YAML
capture:
  nginx: $m
  apache: $ap
  ringbuf: $rb
  hold_ms: 200
output:
  stdout: true
metrics:
  enabled: true
  listen: 127.0.0.1:9435
log:
  format: json
YAML
  [ -n "$AGENT_CONFIG_EXTRA" ] && cat "$AGENT_CONFIG_EXTRA" >>$cfg
  : >/tmp/agent.err
  ja4ebpf run --config $cfg >/tmp/rows.json 2>/tmp/agent.err &
  apid=$!
  # Ready when the agent logs "ready", or gone.
  i=0
  while [ $i -lt 600 ] && kill -0 $apid 2>/dev/null && ! grep -q '"msg":"ready"' /tmp/agent.err; do
    sleep 0.1
    i=$((i + 1))
  done
  if ! grep -q '"msg":"ready"' /tmp/agent.err; then
    kill -TERM $apid 2>/dev/null
    wait $apid 2>/dev/null
    # The last warnings and errors: libbpf's verifier log ends with the reason a program was refused.
    grep -E '"level":"(warn|error)"' /tmp/agent.err | tail -n 12 | sed 's/^{"ts":"[^"]*",//; s/^/JA4K AGENTLOG /' |
      cut -c1-300
    # The reason nginx's hook was refused, else the agent's last error.
    why=$(grep '"msg":"hook unavailable"' /tmp/agent.err | grep '"hook":"nginx"' | grep -o '"reason":"[^"]*"' |
      cut -d'"' -f4)
    [ -n "$why" ] || why=$(grep '"level":"error"' /tmp/agent.err | tail -1 | grep -o '"error":"[^"]*"' | cut -d'"' -f4)
    [ -n "$why" ] || why=$(tail -c 200 /tmp/agent.err)
    out METHOD method=$m server=all idle=$idle perf=$perf attached=0 error="\"$(echo "$why" | tr '\n"' " '" | cut -c1-200)\""
    fail "agent did not start with nginx=$m"
    return 0
  fi
  # What the agent decided, for the log: one line per hook.
  grep -E '"msg":"(hook attached|hook unavailable|ready|apache uprobes attached after retry)"' /tmp/agent.err |
    sed 's/^{"ts":"[^"]*",//; s/^/JA4K AGENTLOG /' | cut -c1-400
  buffer=$(grep '"msg":"ready"' /tmp/agent.err | grep -o '"buffer":"[a-z]*"' | cut -d'"' -f4)
  for srv in nginx:8080 apache:8081; do
    i=0
    while [ $i -lt "$REQUESTS" ]; do request "http://127.0.0.1:${srv#*:}/kt?m=$m&i=$i" >/dev/null; i=$((i + 1)); done
  done
  sleep 1
  curl -s -m 5 http://127.0.0.1:9435/metrics >/tmp/metrics.txt
  # Legacy (tracefs) kprobes list their misses here; libbpf's perf-event kprobes show them only in the link
  # info of kernels >= 6.7, which the agent exports as ja4ebpf_bpf_drops_total{reason="kretprobe_missed"}.
  nmissed=$(awk '{s += $3} END {print s + 0}' $T/kprobe_profile 2>/dev/null)
  kill -TERM $apid
  wait $apid
  want=$(expected_ja4h)
  drops=$(awk '/^ja4ebpf_bpf_drops_total/ {s += $NF} END {print s + 0}' /tmp/metrics.txt)
  kmissed=$(awk '/^ja4ebpf_bpf_drops_total.*kretprobe_missed/ {s += $NF} END {print s + 0}' /tmp/metrics.txt)
  for s in nginx apache; do
    # The "ready" line lists what attached: "nginx=kretprobe apache=uprobe close=tracepoint".
    hook=$(grep '"msg":"ready"' /tmp/agent.err | grep -o "[\" ]$s=[a-z_]*" | cut -d= -f2)
    why=""
    [ -z "$hook" ] && why=$(grep '"msg":"hook unavailable"' /tmp/agent.err | grep "\"hook\":\"$s\"" | grep -o '"reason":"[^"]*"' | cut -d'"' -f4 | tr ' ' '_' | cut -c1-160)
    rows=$(grep -c "\"server\":\"$s\"" /tmp/rows.json)
    good=$(grep "\"server\":\"$s\"" /tmp/rows.json | grep -c "\"ja4h\":\"$want\"")
    cap=$(grep "\"server\":\"$s\"" /tmp/rows.json | grep -o '"capture":"[a-z_]*"' | sort -u | cut -d'"' -f4 | tr '\n' ,)
    out METHOD method=$m server=$s idle=$idle buffer=${buffer:-?} attached=${hook:-0} capture="${cap%,}" \
      sent="$REQUESTS" rows="$rows" right_ja4h="$good" drops="$drops" kretprobe_missed="$kmissed" \
      kprobe_profile_missed="${nmissed:-0}" ${why:+refused="$why"}
    # Without the adversary, a method that attached must see every request with the right JA4H.
    if [ "$idle" = 0 ] && [ -n "$hook" ] && [ "$good" != "$REQUESTS" ]; then
      fail "$s via $hook: $good of $REQUESTS rows with the right JA4H"
    fi
  done
}
