#!/usr/bin/env bash
# Records a big capture of real TLS and plain HTTP/1.1 traffic for bench/pcap_throughput.ts.
#   scripts/gen-capture.sh OUT.pcap [STREAMS]      (default 20000 TCP streams; needs root, nginx, tcpdump, wrk)
# nginx (own prefix and config in a temp dir, self-signed certificate) listens on 127.0.0.1:18443 (TLS) and
# :18080 (HTTP); tcpdump records loopback while wrk opens one connection per request ("Connection: close")
# against both, in rounds, until the capture holds at least STREAMS SYNs.
set -euo pipefail
OUT=${1:?usage: gen-capture.sh OUT.pcap [STREAMS]}
WANT=${2:-20000}
for t in nginx tcpdump wrk openssl; do
  command -v "$t" >/dev/null || { echo "gen-capture: $t is not installed (apt-get install nginx-light tcpdump wrk openssl)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "gen-capture: tcpdump on lo needs root" >&2; exit 2; }

DIR=$(mktemp -d)
NGINX_PID=""
TCPDUMP_PID=""
cleanup() {
  [ -n "$TCPDUMP_PID" ] && kill "$TCPDUMP_PID" 2>/dev/null && wait "$TCPDUMP_PID" 2>/dev/null || true
  [ -f "$DIR/nginx.pid" ] && kill "$(cat "$DIR/nginx.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null
mkdir -p "$DIR/logs" "$DIR/tmp"
cat >"$DIR/nginx.conf" <<EOF
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR/tmp/body;
  proxy_temp_path $DIR/tmp/proxy;
  fastcgi_temp_path $DIR/tmp/fastcgi;
  uwsgi_temp_path $DIR/tmp/uwsgi;
  scgi_temp_path $DIR/tmp/scgi;
  server {
    listen 127.0.0.1:18080;
    listen 127.0.0.1:18443 ssl;
    ssl_certificate $DIR/cert.pem;
    ssl_certificate_key $DIR/key.pem;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / { return 200 "ok\n"; }
  }
}
EOF
nginx -p "$DIR" -c "$DIR/nginx.conf"
for _ in $(seq 50); do [ -f "$DIR/nginx.pid" ] && break; sleep 0.1; done

tcpdump -i lo -n -B 65536 -s 0 -U -w "$OUT" 'tcp port 18443 or tcp port 18080' 2>"$DIR/tcpdump.log" &
TCPDUMP_PID=$!
sleep 1

syns() { tcpdump -r "$OUT" -n 'tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn' 2>/dev/null | wc -l; }
round=0
while :; do
  round=$((round + 1))
  wrk -t1 -c32 -d3s -H 'Connection: close' -H 'Accept-Language: en-US,en;q=0.9' -H 'Cookie: a=1; b=2' \
    http://127.0.0.1:18080/ >/dev/null
  wrk -t1 -c32 -d4s -H 'Connection: close' https://127.0.0.1:18443/ >/dev/null
  n=$(syns)
  echo "gen-capture: round $round, $n SYNs" >&2
  [ "$n" -ge "$WANT" ] && break
  [ "$round" -ge 30 ] && { echo "gen-capture: gave up at $n SYNs" >&2; exit 1; }
done
sleep 1
kill "$TCPDUMP_PID"
wait "$TCPDUMP_PID" 2>/dev/null || true
TCPDUMP_PID=""
grep -E "packets (captured|dropped)" "$DIR/tcpdump.log" >&2 || true
ls -l "$OUT" >&2
