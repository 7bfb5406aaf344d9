#!/bin/sh
# The agent's part of the guest checks (sourced by test.sh): --validate, then every capture method in turn.
# Skipped with a SKIP line while the commands are placeholders ("not built yet").
agent_checks() {
  # The placeholders print "(not built yet)" in their usage.
  if ja4ebpf --validate --help 2>&1 | grep -q "not built yet"; then
    out SKIP validate="not built yet"
    return 0
  fi
  vout=$(ja4ebpf --validate --json 2>$W/validate.err)
  vrc=$?
  out VALIDATE rc=$vrc json="$(echo "$vout" | tr -d '\n')"
  if [ $vrc -ne 0 ]; then
    fail validate exit $vrc: "$(head -c 300 $W/validate.err)"
    # Again with libbpf's messages: the verifier's last words say why a program was refused.
    # (--validate keeps libbpf quiet; `run` at debug level prints everything libbpf says.)
    printf 'log:\n  level: debug\nmetrics:\n  enabled: false\n' >$W/debug.yaml
    timeout 120 ja4ebpf run --config $W/debug.yaml >/dev/null 2>$W/validate-debug.err
    grep -iE 'unknown func|invalid|fail|not supported|denied|error' $W/validate-debug.err |
      sed 's/^{"ts":"[^"]*",//' | awk '!seen[$0]++' | tail -n 10 | cut -c1-300 | sed 's/^/JA4K VERIFIER /'
    # The verifier's last lines for the first two refused programs.
    awk '/BPF program load failed/ {p = $0} /BEGIN PROG LOAD LOG/ {n = 0; next}
      /END PROG LOAD LOG/ {if (k++ < 2) {print p; for (i = n - 4; i < n; i++) if (i >= 0) print buf[i % 4]}; next}
      {buf[n % 4] = $0; n++}' $W/validate-debug.err | cut -c1-240 | sed 's/^/JA4K VERIFIER /'
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
    # In its own process group (setsid), so the children go with it: `kill -- -PGID`.
    setsid idle_recv "$IDLE" >$W/idle.out &
    idle_pid=$!
    i=0
    while ! grep -q blocked $W/idle.out 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    for m in $ms; do run_method "$m" "$IDLE" 0; done
    kill -TERM -$idle_pid 2>/dev/null
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

# attached_hook SERVER: the method the agent attached for it, from its "ready" line ("nginx=kretprobe
# apache=uprobe close=tracepoint"); empty when none attached.
attached_hook() {
  grep '"msg":"ready"' $W/agent.err | grep -o "[\" ]$1=[a-z_]*" | cut -d= -f2
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
  cfg=$W/agent-$m.yaml
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
  listen: 127.0.0.1:$METRICS_PORT
log:
  format: json
YAML
  [ -n "$AGENT_CONFIG_EXTRA" ] && cat "$AGENT_CONFIG_EXTRA" >>$cfg
  : >$W/agent.err
  ja4ebpf run --config $cfg >$W/rows.json 2>$W/agent.err &
  apid=$!
  # Ready when the agent logs "ready", or gone.
  i=0
  while [ $i -lt 600 ] && kill -0 $apid 2>/dev/null && ! grep -q '"msg":"ready"' $W/agent.err; do
    sleep 0.1
    i=$((i + 1))
  done
  if ! grep -q '"msg":"ready"' $W/agent.err; then
    kill -TERM $apid 2>/dev/null
    wait $apid 2>/dev/null
    # The last warnings and errors: libbpf's verifier log ends with the reason a program was refused.
    grep -E '"level":"(warn|error)"' $W/agent.err | tail -n 12 | sed 's/^{"ts":"[^"]*",//; s/^/JA4K AGENTLOG /' |
      cut -c1-300
    # The reason nginx's hook was refused, else the agent's last error.
    why=$(grep '"msg":"hook unavailable"' $W/agent.err | grep '"hook":"nginx"' | grep -o '"reason":"[^"]*"' |
      cut -d'"' -f4)
    [ -n "$why" ] || why=$(grep '"level":"error"' $W/agent.err | tail -1 | grep -o '"error":"[^"]*"' | cut -d'"' -f4)
    # Else the last error line, without its timestamp and level.
    [ -n "$why" ] || why=$(grep '"level":"error"' $W/agent.err | tail -1 | sed 's/^{"ts":"[^"]*","level":"error",//')
    [ -n "$why" ] || why=$(tail -c 200 $W/agent.err)
    out METHOD method=$m server=all idle=$idle perf=$perf attached=0 error="\"$(echo "$why" | tr '\n"' " '" | cut -c1-200)\""
    # A method this kernel is known to refuse (EXPECT_REFUSED) must be refused with its errno, not vaguely.
    case " $EXPECT_REFUSED " in
      *" $m "*) echo "$why" | grep -qE '\bE[A-Z]{2,}\b' || fail "nginx=$m refused without an errno: $why" ;;
      *) fail "agent did not start with nginx=$m" ;;
    esac
    return 0
  fi
  # What the agent decided, for the log: one line per hook.
  grep -E '"msg":"(hook attached|hook unavailable|ready|apache uprobes attached after retry)"' $W/agent.err |
    sed 's/^{"ts":"[^"]*",//; s/^/JA4K AGENTLOG /' | cut -c1-400
  buffer=$(grep '"msg":"ready"' $W/agent.err | grep -o '"buffer":"[a-z]*"' | cut -d'"' -f4)
  packets=$(grep '"msg":"ready"' $W/agent.err | grep -o '[" ]packets=[a-z_]*' | cut -d= -f2)
  for srv in nginx:$NGINX_PORT apache:$APACHE_PORT; do
    i=0
    while [ $i -lt "$REQUESTS" ]; do request "http://127.0.0.1:${srv#*:}/kt?m=$m&i=$i" >/dev/null; i=$((i + 1)); done
  done
  # The rows this round should have: every request of each server whose hook attached (a method the kernel
  # lacks leaves nginx without one: expected, not a miss to wait for or retry).
  want_rows=0
  for srv in nginx apache; do
    [ -n "$(attached_hook $srv)" ] && want_rows=$((want_rows + REQUESTS))
  done
  # Until every request of this round is a row (a slow emulated CPU may take a while), at most 15 s; then at
  # least 1 s, so rows that should not be there would show too.
  i=0
  # (strip_query is on: the rows' path is /kt; the agent's output file holds this round's rows only.)
  while [ $i -lt 150 ] && [ "$(grep -c '"path":"/kt"' $W/rows.json 2>/dev/null)" -lt $want_rows ]; do
    sleep 0.1
    i=$((i + 1))
  done
  [ $i -lt 10 ] && sleep 1
  curl -s -m 5 http://127.0.0.1:$METRICS_PORT/metrics >$W/metrics.txt
  # What the agent saw (events by hook, rows captured/emitted), for a round that misses rows.
  out INFO method=$m counters="\"$(grep -E '^ja4ebpf_(events_total|rows_captured_total|rows_emitted_total)' \
    $W/metrics.txt | tr '\n"' " '" | cut -c1-300)\""
  # A round that missed rows, once: say whether the kernel ran syscall tracepoints for the servers at all (an
  # ftrace event on the same tracepoint, one more request each), then run the round again. Seen 2 times in 6
  # full CI runs under TCG (arm64, nginx on raw_tp): no syscall tracepoint program ran for any server process
  # in that agent run, while its uprobe and tc programs did.
  if [ "$idle" = 0 ] && [ "${RETRIED:-0}" = 0 ] &&
    [ "$(grep -c '"path":"/kt"' $W/rows.json 2>/dev/null)" -lt $want_rows ]; then
    tp_diagnose "$m"
    kill -TERM $apid
    wait $apid
    RETRIED=1
    out RETRY method=$m rows="$(grep -c '"path":"/kt"' $W/rows.json 2>/dev/null)" want=$want_rows
    run_method "$m" "$idle" "$perf"
    RETRIED=0
    return 0
  fi
  # Legacy (tracefs) kprobes list their misses here; libbpf's perf-event kprobes show them only in the link
  # info of kernels >= 6.7, which the agent exports as ja4ebpf_bpf_drops_total{reason="kretprobe_missed"}.
  nmissed=$(awk '{s += $3} END {print s + 0}' $T/kprobe_profile 2>/dev/null)
  # The agent's own tracefs kretprobe (maxactive in the r<N>: prefix) and its hits/misses.
  [ "$m" = kretprobe ] && out KPROBE events="\"$(grep ja4ebpf_ $T/kprobe_events 2>/dev/null | tr '\n' ';')\"" \
    profile="\"$(grep ja4ebpf_ $T/kprobe_profile 2>/dev/null | tr -s ' ' | tr '\n' ';')\""
  kill -TERM $apid
  wait $apid
  # A clean stop removes the agent's kprobe events.
  left=$(grep -c ja4ebpf_ $T/kprobe_events 2>/dev/null)
  [ "${left:-0}" = 0 ] || fail "$left ja4ebpf kprobe events left after the agent stopped (nginx=$m)"
  want=$(expected_ja4h)
  drops=$(awk '/^ja4ebpf_bpf_drops_total/ {s += $NF} END {print s + 0}' $W/metrics.txt)
  kmissed=$(awk '/^ja4ebpf_bpf_drops_total.*kretprobe_missed/ {s += $NF} END {print s + 0}' $W/metrics.txt)
  for s in nginx apache; do
    hook=$(attached_hook $s)
    why=""
    [ -z "$hook" ] && why=$(grep '"msg":"hook unavailable"' $W/agent.err | grep "\"hook\":\"$s\"" | grep -o '"reason":"[^"]*"' | cut -d'"' -f4 | cut -c1-160)
    # Only rows for this server's port: on the host, other nginx/Apache instances may be running.
    port=$NGINX_PORT
    [ $s = apache ] && port=$APACHE_PORT
    grep "\"server\":\"$s\"" $W/rows.json | grep "\"dst_port\":$port[,}]" >$W/rows-$s.json
    rows=$(grep -c . $W/rows-$s.json)
    good=$(grep -c "\"ja4h\":\"$want\"" $W/rows-$s.json)
    cap=$(grep -o '"capture":"[a-z_]*"' $W/rows-$s.json | sort -u | cut -d'"' -f4 | tr '\n' ,)
    # JA4T comes from the TC packet hook: rows carrying one show it attached and joined.
    ja4t=$(grep -c '"ja4t":"[^"]' $W/rows-$s.json)
    out METHOD method=$m server=$s idle=$idle perf=$perf buffer=${buffer:-?} attached=${hook:-0} capture="${cap%,}" \
      sent="$REQUESTS" rows="$rows" right_ja4h="$good" ja4t="$ja4t" packets="${packets:-0}" drops="$drops" kretprobe_missed="$kmissed" \
      kprobe_profile_missed="${nmissed:-0}" ${why:+"refused=\"$why\""}
    # A method asked for by name and refused: expected only where the kernel lacks it (EXPECT_REFUSED), and
    # then with the errno the agent got.
    if [ $s = nginx ] && [ "$m" != auto ] && [ -z "$hook" ]; then
      case " $EXPECT_REFUSED " in
        *" $m "*) echo "$why" | grep -qE '\bE[A-Z]{2,}\b' || fail "nginx=$m refused without an errno: $why" ;;
        *) fail "nginx=$m refused: $why" ;;
      esac
    fi
    # Without the adversary, a method that attached must see every request with the right JA4H.
    if [ "$idle" = 0 ] && [ -n "$hook" ] && [ "$good" != "$REQUESTS" ]; then
      fail "$s via $hook: $good of $REQUESTS rows with the right JA4H"
    fi
  done
}

# tp_diagnose METHOD: with ftrace on sys_exit_recvfrom and sys_enter_close (the agent's tracepoints stay
# attached), one request to each server; counts the servers' lines in the trace: 0 means the kernel ran no
# syscall tracepoint for them (their TIF_SYSCALL_TRACEPOINT flag unset), not that the agent dropped events.
tp_diagnose() {
  [ -d $T/events/syscalls ] || { out DIAG method=$1 tracefs=none; return 0; }
  : >$T/trace
  echo 1 >$T/events/syscalls/sys_exit_recvfrom/enable
  echo 1 >$T/events/syscalls/sys_enter_close/enable
  echo 1 >$T/events/syscalls/sys_exit_read/enable
  request "http://127.0.0.1:$NGINX_PORT/diag" >/dev/null
  request "http://127.0.0.1:$APACHE_PORT/diag" >/dev/null
  sleep 1
  echo 0 >$T/events/syscalls/sys_exit_recvfrom/enable
  echo 0 >$T/events/syscalls/sys_enter_close/enable
  echo 0 >$T/events/syscalls/sys_exit_read/enable
  out DIAG method=$1 nginx_recvfrom="$(grep -c 'nginx.*sys_recvfrom' $T/trace)" \
    nginx_close="$(grep -c 'nginx.*sys_close' $T/trace)" apache_read="$(grep -c 'apache2.*sys_read' $T/trace)" \
    apache_close="$(grep -c 'apache2.*sys_close' $T/trace)" lines="$(grep -vc '^#' $T/trace)" \
    events="\"$(curl -s -m 5 http://127.0.0.1:$METRICS_PORT/metrics | grep -E '^ja4ebpf_(events_total|bpf_drops_total)' |
      tr '\n"' " '" | cut -c1-300)\""
  : >$T/trace
}
