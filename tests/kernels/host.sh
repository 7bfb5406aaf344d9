#!/usr/bin/env bash
# Runs the guest checks (guest/test.sh, guest/agent.sh) on this machine's own kernel, without a VM: the matrix's
# "host" row. Its own nginx and Apache on loopback ports that stay clear of other servers (31080/31081, metrics
# 31435), its scratch files in a temporary folder, the agent from the source tree.
#   tests/kernels/host.sh [--requests N] [--methods LIST] [--idle N] [--no-perfbuf] [--timeout S] [--env KEY=VALUE]...
#   (--mem and --agent are accepted for run.sh's sake and ignored)
# Prints the same lines as run.sh (without the JA4K prefix), then a HOST line; exits with the checks' result.
# Needs root, nginx, apache2, curl, gcc. Methods in EXPECT_REFUSED (default: the ones this kernel has no
# support for, found below) are recorded with the errno the agent reports, not counted as failures.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KERNELS_CACHE:-$HERE/cache}
requests=20 methods=all idle=64 perfbuf=1 timeout_s=900
envs=()
while [ $# -gt 0 ]; do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --no-perfbuf) perfbuf=0; shift ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --mem | --agent) shift 2 ;;
    --env) [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "host.sh: --env wants KEY=VALUE, got $2" >&2; exit 2; }
      envs+=("$2"); shift 2 ;;
    *) echo "host.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "host.sh: needs root (BPF, tracefs)" >&2; exit 2; }
for t in nginx:nginx-light apache2:apache2 curl:curl gcc:gcc setsid:util-linux ss:iproute2; do
  command -v "${t%%:*}" >/dev/null || { echo "host.sh: ${t%%:*} missing (apt-get install ${t#*:})" >&2; exit 2; }
done
DENO=${DENO:-$ROOT/.tools/deno/node_modules/deno/deno}
command -v "$DENO" >/dev/null 2>&1 || DENO=$(command -v deno || true)
[ -n "$DENO" ] || { echo "host.sh: no deno (run scripts/setup.sh)" >&2; exit 2; }
NGINX_PORT=${NGINX_PORT:-31080} APACHE_PORT=${APACHE_PORT:-31081} METRICS_PORT=${METRICS_PORT:-31435}
for p in $NGINX_PORT $APACHE_PORT $METRICS_PORT; do
  ! ss -Hltn "sport = :$p" | grep -q . || { echo "host.sh: port $p is taken" >&2; exit 2; }
done

mkdir -p "$CACHE"
W=$(mktemp -d -t ja4k-host.XXXXXX)
chmod 755 "$W" # Apache's children (www-data) read the document root
cleanup() {
  # Only what this script started: the servers by their pid files.
  [ -s "$W/nginx.pid" ] && kill -QUIT "$(cat "$W/nginx.pid")" 2>/dev/null
  [ -s "$W/apache.pid" ] && kill -TERM "$(cat "$W/apache.pid")" 2>/dev/null
  sleep 0.5
  rm -rf "$W"
}
trap cleanup EXIT

# The VM's server configurations, moved to this run's folder and ports.
sed -e "s#127.0.0.1:8080#127.0.0.1:$NGINX_PORT#; s#/tmp/#$W/#g" "$HERE/guest/nginx.conf" >"$W/nginx.conf"
sed -e "s#127.0.0.1:8081#127.0.0.1:$APACHE_PORT#; s#/tmp/#$W/#g; s#/tmp\$#$W#" \
  -e "s#/srv/www#$W/www#g" "$HERE/guest/apache.conf" >"$W/apache.conf"
mkdir -p "$W/www" "$W/bin"
echo ok >"$W/www/kt"
gcc -O2 -o "$W/bin/idle_recv" "$HERE/guest/idle_recv.c"
# `ja4ebpf` as the guest calls it: the agent from this tree.
cat >"$W/bin/ja4ebpf" <<SH
#!/bin/sh
export DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
exec "$DENO" run -A --config "$ROOT/deno.json" "$ROOT/src/main.ts" "\$@"
SH
chmod +x "$W/bin/ja4ebpf"

# Methods this kernel cannot offer, from evidence other than this run: its build configuration
# (/proc/config.gz or /boot/config-*) and the kernels known to refuse fentry (tests/helpers/features.ts).
# Probing tracefs here would only restate what the agent itself finds. The list can be overridden.
if [ -z "${EXPECT_REFUSED+x}" ]; then
  EXPECT_REFUSED=$(DENO_NO_UPDATE_CHECK=1 "$DENO" run -A --config "$ROOT/deno.json" "$ROOT/tests/helpers/features.ts" refused) ||
    { echo "host.sh: cannot tell which methods this kernel lacks (tests/helpers/features.ts)" >&2; exit 2; }
fi
distro="$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}") userland"

t0=$(date +%s.%N)
set +e
(
  export REQUESTS=$requests METHODS=$methods IDLE=$idle PERFBUF=$perfbuf SCRIPTS=$HERE/guest W=$W \
    NGINX_CONF=$W/nginx.conf APACHE_CONF=$W/apache.conf NGINX_PORT APACHE_PORT METRICS_PORT \
    AGENT_KIND=source DENO_BIN=$DENO EXPECT_REFUSED PATH=$W/bin:$PATH
  for kv in ${envs[@]+"${envs[@]}"}; do export "${kv?}"; done
  echo "JA4K INFO distro=\"$distro\" expect_refused=\"$EXPECT_REFUSED\""
  # timeout runs the checks in its own process group and kills that group when time is up.
  timeout --kill-after=10 "$timeout_s" sh "$HERE/guest/test.sh"
  rc=$?
  echo "JA4K RESULT rc=$rc"
) >"$W/console.log" 2>&1
set -e
t1=$(date +%s.%N)
sed -n 's/^.*JA4K //p' "$W/console.log"
echo "HOST kernel=host vm_s=$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")"
mkdir -p "$CACHE/host"
cp "$W/console.log" "$CACHE/host/console.log"
echo "log: $CACHE/host/console.log"
rc=$(sed -n 's/^.*JA4K RESULT rc=\([0-9]*\).*/\1/p' "$W/console.log" | tail -1)
[ -n "$rc" ] || { echo "host.sh: the checks never reported a result" >&2; exit 125; }
exit "$rc"
