#!/usr/bin/env bash
# Boots one Debian kernel under QEMU (TCG) with a busybox initramfs and runs the agent's checks inside.
#   tests/kernels/run.sh VERSION [--requests N] [--methods "tracepoint kretprobe ..."] [--idle N] [--no-perfbuf]
#                                [--timeout SECONDS] [--mem MiB] [--agent js|source|bundle] [--env KEY=VALUE]...
# VERSION: 5.10 (Debian 11), 6.1 (Debian 12), 6.12 (Debian 12 backport). Prints the guest's "JA4K" lines
# without their prefix, then "log: FILE"; exits with the guest's result (124 on timeout, 125 if the guest never
# reported). The full serial console log stays in tests/kernels/cache/VERSION/console.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export KERNELS_CACHE=${KERNELS_CACHE:-$HERE/cache}
CACHE=$KERNELS_CACHE
version=${1:?usage: run.sh VERSION [--requests N] [--methods LIST] [--idle N] [--no-perfbuf] [--timeout S]}
shift
requests=20 methods=all idle=64 perfbuf=1 timeout_s=600 mem=3072
# --env: variables exported to the guest (and the agent), e.g. JA4EBPF_KRETPROBE_MAXACTIVE=1.
envs=()
while [ $# -gt 0 ]; do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --no-perfbuf) perfbuf=0; shift ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --agent) export AGENT=$2; shift 2 ;;
    --env) { [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && [[ $2 != *"'"* ]]; } ||
      { echo "run.sh: --env wants KEY=VALUE (no quotes), got $2" >&2; exit 2; }
      envs+=("$2"); shift 2 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
command -v qemu-system-x86_64 >/dev/null || { echo "run.sh: qemu-system-x86_64 missing (apt-get install qemu-system-x86)" >&2; exit 2; }
mkdir -p "$CACHE"

kdir=$(bash "$HERE/fetch.sh" "$version" | tail -1)
# Each run builds and logs in its own directory: runs of one kernel may overlap (the test suite, the matrix).
work=$(mktemp -d "$kdir/run.XXXXXX")
trap 'rm -rf "$work"' EXIT
params=$work/params.env
printf 'REQUESTS=%s\nMETHODS="%s"\nIDLE=%s\nPERFBUF=%s\n' "$requests" "$methods" "$idle" "$perfbuf" >"$params"
for kv in ${envs[@]+"${envs[@]}"}; do printf "%s='%s'\n" "${kv%%=*}" "${kv#*=}" >>"$params"; done
t0=$(date +%s.%N)
KERNEL_DIR=$kdir bash "$HERE/build-initramfs.sh" "$work/initramfs.cpio" "$params"
t1=$(date +%s.%N)
log=$work/console.log
# KVM hangs on the machines this runs on: TCG always. No network device: the guest has loopback only.
set +e
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m "$mem" \
  -nographic -no-reboot -nic none \
  -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.cpio" \
  -append "console=ttyS0 loglevel=3 panic=-1 mitigations=off" </dev/null >"$log" 2>&1
qrc=$?
set -e
t2=$(date +%s.%N)
tr -d '\r' <"$log" | sed -n 's/^.*JA4K //p'
echo "HOST kernel=$version initramfs_bytes=$(stat -c %s "$work/initramfs.cpio") build_s=$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") vm_s=$(awk "BEGIN {printf \"%.1f\", $t2 - $t1}") qemu_rc=$qrc"
cp "$log" "$kdir/console.log"
log=$kdir/console.log
echo "log: $log"
[ $qrc -eq 124 ] && { echo "run.sh: timed out after ${timeout_s}s" >&2; exit 124; }
rc=$(tr -d '\r' <"$log" | sed -n 's/^.*JA4K RESULT rc=\([0-9]*\).*/\1/p' | tail -1)
[ -n "$rc" ] || { echo "run.sh: the guest never reported a result (see $log)" >&2; exit 125; }
exit "$rc"
