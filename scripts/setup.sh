#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to the point where the agent and its tests run:
# apt packages, Deno 2.9.6 from the npm registry (kept in .tools/, ignored by git), the BPF object.
# Idempotent: each step is skipped when already done. Prints where deno lives as its last line.
#   scripts/setup.sh            everything the agent needs
#   scripts/setup.sh --test     also the servers and tools the tests start
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DENO_VERSION=2.9.6
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

log() { echo "setup: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Packages the agent needs to build and run.
pkgs=(clang llvm bpftool libbpf1 libbpf-dev linux-libc-dev curl iproute2 ca-certificates)
# Servers and tools the tests start themselves.
# qemu-system-arm, gcc-aarch64-linux-gnu: the arm64 kernel check (tests/kernels/, run.sh --arch arm64); the
# aarch64 build (packaging test) takes Deno's linux-arm64 runtime from npm, as Deno itself below.
# nghttp2-client: h2load, the HTTP/2 load of bench/capture_overhead.ts --modes h2.
test_pkgs=(nginx-light apache2 tshark tcpdump wrk clickhouse-server qemu-system-x86 busybox-static rpm
  chromium libcap2-bin procps psmisc ethtool openssl python3 systemd gcc libc6-dev util-linux
  qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross nghttp2-client)
[ $want_test = 1 ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >&2
  # Debian's packages start their services on install; the tests start their own instances.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  [ $made_policy = 1 ] && as_root rm -f /usr/sbin/policy-rc.d
fi

# Deno from npm: the only registry that carries it here.
DENO=""
if command -v deno >/dev/null && deno --version 2>/dev/null | grep -q "^deno $DENO_VERSION"; then
  DENO=$(command -v deno)
elif [ -x "$ROOT/.tools/deno/node_modules/deno/deno" ]; then
  DENO="$ROOT/.tools/deno/node_modules/deno/deno"
else
  command -v npm >/dev/null || as_root apt-get install -y -qq npm >&2
  log "installing deno@$DENO_VERSION from npm into .tools/deno"
  mkdir -p "$ROOT/.tools/deno"
  (cd "$ROOT/.tools/deno" && npm install --no-audit --no-fund --silent "deno@$DENO_VERSION" >&2)
  DENO="$ROOT/.tools/deno/node_modules/deno/deno"
  [ -x "$DENO" ] || DENO="$ROOT/.tools/deno/node_modules/@deno/linux-x64-glibc/deno"
fi
export DENO_NO_UPDATE_CHECK=1

if [ -f scripts/build-bpf.sh ] && [ -f bpf/ja4ebpf.bpf.c ]; then
  DENO="$DENO" bash scripts/build-bpf.sh >&2
fi

# tracefs: tracepoints attach by name through it, and a host as it boots may not have it mounted yet (no
# systemd sys-kernel-tracing.mount). The agent and the BPF tests mount it themselves (src/bpf/tracefs.ts);
# set-up does the same, through the same code, so every test finds it whatever runs first.
if [ -f src/bpf/tracefs.ts ]; then
  tracefs=$(as_root "$DENO" eval --quiet \
    'import { ensureTracefs } from "./src/bpf/tracefs.ts"; const t = ensureTracefs();
     console.log(t.path ? `${t.path}${t.mounted ? " (mounted now)" : ""}` : `none: ${t.error}`);' 2>&1) ||
    tracefs="check failed: $tracefs"
  log "tracefs: $tracefs"
fi
echo "$DENO"
