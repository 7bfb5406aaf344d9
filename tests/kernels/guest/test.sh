#!/bin/sh
# The checks run inside the test VM (busybox sh). Output for the host: lines "JA4K KIND key=value ...".
# Parameters come from /guest/params.env: REQUESTS (per server and method), METHODS (space-separated, or
# "all"), IDLE (idle recvfrom processes for the adversarial pass, 0 = skip), PERFBUF (1 = forced perf-buffer pass).
# The same checks run on the host itself (tests/kernels/host.sh), which sets where things are instead of the VM's
# fixed places: SCRIPTS (this folder), W (scratch files), NGINX_CONF, APACHE_CONF, the ports, AGENT_KIND, DENO_BIN,
# EXPECT_REFUSED (methods the host is known to refuse: recorded with their errno, not failures).
REQUESTS=${REQUESTS:-20}
METHODS=${METHODS:-all}
IDLE=${IDLE:-64}
PERFBUF=${PERFBUF:-1}
SCRIPTS=${SCRIPTS:-/guest}
W=${W:-/tmp}
NGINX_CONF=${NGINX_CONF:-/guest/nginx.conf}
APACHE_CONF=${APACHE_CONF:-/guest/apache.conf}
NGINX_PORT=${NGINX_PORT:-8080}
APACHE_PORT=${APACHE_PORT:-8081}
METRICS_PORT=${METRICS_PORT:-9435}
failures=0
out() { echo "JA4K $* t=$(cut -d' ' -f1 /proc/uptime)"; }
fail() { out "FAIL $*"; failures=$((failures + 1)); }

# --- The kernel and what it offers, found without bpftool ---
out INFO kernel="$(uname -r)" arch="$(uname -m)" cpus="$(nproc)" mem_kb="$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
out INFO version="\"$(cat /proc/version)\""
# The syscall wrapper this architecture's kernel should have (the agent finds its own in kallsyms).
case $(uname -m) in
  aarch64) wrapper=__arm64_sys_recvfrom ;;
  *) wrapper=__x64_sys_recvfrom ;;
esac
syms=$(grep -c " $wrapper\$" /proc/kallsyms)
out CHECK symbol=$wrapper present="$syms"
[ "$syms" -ge 1 ] || fail symbol $wrapper missing from kallsyms
if [ -e /sys/kernel/btf/vmlinux ]; then out CHECK btf=1 size="$(wc -c </sys/kernel/btf/vmlinux)"; else fail btf /sys/kernel/btf/vmlinux missing; fi
T=/sys/kernel/tracing
[ -d $T/events ] || T=/sys/kernel/debug/tracing
fmt=$T/events/syscalls/sys_exit_recvfrom/format
if [ -r $fmt ]; then
  # The offset of the first syscall field tells the trace_entry size (8 normally, wider with PREEMPT_LAZY).
  nr_off=$(awk -F'[:;]' '/__syscall_nr/ {gsub(/[^0-9]/, "", $4); print $4}' $fmt)
  ret_off=$(awk -F'[:;]' '/ ret;/ {gsub(/[^0-9]/, "", $4); print $4}' $fmt)
  out CHECK tracepoint=sys_exit_recvfrom syscall_nr_offset="$nr_off" ret_offset="$ret_off"
else
  fail tracepoint sys_exit_recvfrom format not readable
fi
[ -e $T/kprobe_events ] && out CHECK kprobe_events=1 || out CHECK kprobe_events=0
[ -e $T/available_filter_functions ] && out CHECK ftrace=1 fexit_target="$(grep -c "^$wrapper" $T/available_filter_functions 2>/dev/null)" || out CHECK ftrace=0
out CHECK preempt="$(grep -o 'PREEMPT[A-Z_]*' /proc/version | head -1)"
if command -v bpftool >/dev/null; then
  for f in ringbuf perf_event_array; do
    bpftool feature probe kernel 2>/dev/null | grep -q "eBPF map_type $f is available" && v=1 || v=0
    out CHECK map_$f=$v
  done
fi

# --- The agent's runtime starts ---
kind=${AGENT_KIND:-$(cat /agent/kind)}
t0=$(cut -d' ' -f1 /proc/uptime)
if [ "$kind" != bundle ]; then
  v=$(${DENO_BIN:-/usr/bin/deno} --version 2>&1 | head -1)
else
  v=$(/usr/bin/ja4ebpf version 2>&1 | head -1)
fi
t1=$(cut -d' ' -f1 /proc/uptime)
out CHECK agent_kind=$kind runtime="\"$v\"" start_s="$(awk "BEGIN {print $t1 - $t0}")"
case $v in deno* | ja4ebpf*) ;; *) fail runtime did not start: "$v" ;; esac
# Loading the whole agent (no BPF yet): what every ja4ebpf start costs in this VM.
t0=$(cut -d' ' -f1 /proc/uptime)
av=$(ja4ebpf version 2>&1 | head -1)
t1=$(cut -d' ' -f1 /proc/uptime)
out CHECK agent_version="\"$av\"" load_s="$(awk "BEGIN {print $t1 - $t0}")"

# --- The servers answer on loopback ---
nginx -c "$NGINX_CONF" -e $W/nginx-error.log || fail nginx did not start: "$(cat $W/nginx-error.log)"
apache2 -f "$APACHE_CONF" -k start || fail apache did not start: "$(cat $W/apache-error.log)"
# Waits until a server answers (Apache forks its children after returning).
wait_http() {
  i=0
  while [ $i -lt 50 ]; do curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; i=$((i + 1)); done
  return 1
}
wait_http http://127.0.0.1:$NGINX_PORT/kt || fail nginx does not answer
wait_http http://127.0.0.1:$APACHE_PORT/kt || fail apache does not answer: "$(tail -n 3 $W/apache-error.log | tr '\n' ' ')"
# A fixed request: the agent's JA4H for it must match the one computed here from the same header names.
UA="ja4ebpf-kernel-test/1"
request() { curl -sS -m 5 -o /dev/null -w '%{http_code}\n' -A "$UA" -H 'Accept-Language: en-US,en;q=0.9' "$1"; }
for srv in nginx:$NGINX_PORT apache:$APACHE_PORT; do
  ok=0
  i=0
  while [ $i -lt "$REQUESTS" ]; do
    [ "$(request "http://127.0.0.1:${srv#*:}/kt?i=$i")" = 200 ] && ok=$((ok + 1))
    i=$((i + 1))
  done
  out CHECK server="${srv%%:*}" requests="$REQUESTS" ok="$ok"
  [ "$ok" = "$REQUESTS" ] || fail "${srv%%:*}" answered "$ok" of "$REQUESTS"
done

# --- The agent itself, once its commands exist ---
. $SCRIPTS/agent.sh
agent_checks

out SUMMARY failures=$failures
[ $failures -eq 0 ]
