#!/usr/bin/env bash
# Boots one Debian kernel under QEMU (TCG) with a busybox initramfs and runs the agent's checks inside.
#   tests/kernels/run.sh VERSION [--arch x86|arm64] [--requests N] [--methods "tracepoint kretprobe ..."]
#                                [--idle N] [--no-perfbuf] [--timeout SECONDS] [--mem MiB] [--smp N]
#                                [--agent js|source|bundle] [--env KEY=VALUE]... [--loglevel N]
# VERSION: 5.10 (Debian 11), 6.1 (Debian 12), 6.12 (Debian 12 backport). Prints the guest's "JA4K" lines
# without their prefix, then "log: FILE"; exits with the guest's result (124 on timeout, 125 if the guest never
# reported). The full serial console log stays in tests/kernels/cache/VERSION[-arm64]/console.log.
# --arch arm64: Debian's arm64 cloud kernel and arm64 userland under qemu-system-aarch64 -M virt -cpu max
# (TCG: every instruction emulated, V8 included; see docs/validation.md for the times).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export KERNELS_CACHE=${KERNELS_CACHE:-$HERE/cache}
CACHE=$KERNELS_CACHE
version=${1:?usage: run.sh VERSION [--requests N] [--methods LIST] [--idle N] [--no-perfbuf] [--timeout S]}
shift
requests=20 methods=all idle=64 perfbuf=1 timeout_s="" mem=3072 arch=x86 smp=2 loglevel=3
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
    --smp) smp=$2; shift 2 ;;
    # The guest console's log level: 3 prints errors only; 5 adds warnings and the call traces that come with
    # a "soft lockup" or a "BUG" (for a failure to be diagnosed from console.log).
    --loglevel) loglevel=$2; shift 2 ;;
    --arch) case $2 in
        x86 | x86_64 | amd64) arch=x86 ;;
        arm64 | aarch64) arch=arm64 ;;
        *) echo "run.sh: --arch wants x86 or arm64, got $2" >&2; exit 2 ;;
      esac
      shift 2 ;;
    --agent) export AGENT=$2; shift 2 ;;
    --env) { [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && [[ $2 != *"'"* ]]; } ||
      { echo "run.sh: --env wants KEY=VALUE (no quotes), got $2" >&2; exit 2; }
      envs+=("$2"); shift 2 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ $arch = x86 ]; then
  qemu=(qemu-system-x86_64 -accel tcg -cpu max) console=ttyS0 qpkg=qemu-system-x86 deb_arch=amd64
else
  # -M virt: the generic board Debian's arm64 kernels boot on (PL011 serial, GICv3, PSCI for poweroff).
  qemu=(qemu-system-aarch64 -M virt,gic-version=3 -accel tcg -cpu max) console=ttyAMA0 qpkg=qemu-system-arm
  deb_arch=arm64
fi
# Everything runs emulated; arm64 under TCG takes ~4x as long as x86 (docs/validation.md).
[ -n "$timeout_s" ] || timeout_s=$([ $arch = x86 ] && echo 600 || echo 2400)
command -v "${qemu[0]}" >/dev/null || { echo "run.sh: ${qemu[0]} missing (apt-get install $qpkg)" >&2; exit 2; }
mkdir -p "$CACHE"

kdir=$(bash "$HERE/fetch.sh" "$version" --arch $deb_arch | tail -1)
# Each run builds and logs in its own directory: runs of one kernel may overlap (the test suite, the matrix).
work=$(mktemp -d "$kdir/run.XXXXXX")
trap 'rm -rf "$work"' EXIT
params=$work/params.env
printf 'REQUESTS=%s\nMETHODS="%s"\nIDLE=%s\nPERFBUF=%s\n' "$requests" "$methods" "$idle" "$perfbuf" >"$params"
# Methods this kernel cannot offer, from its build configuration: fexit needs ftrace direct calls (arm64 has them
# from 6.4 on; Debian's 6.1 arm64 kernel lacks them), kretprobe needs kprobes. The guest still requires such a
# refusal to carry the errno the agent got; --env EXPECT_REFUSED=... overrides.
expect_refused=""
grep -q '^CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y' "$kdir/config" || expect_refused="fexit"
grep -q '^CONFIG_KPROBES=y' "$kdir/config" || expect_refused="kretprobe $expect_refused"
printf 'EXPECT_REFUSED="%s"\n' "${expect_refused% }" >>"$params"
for kv in ${envs[@]+"${envs[@]}"}; do printf "%s='%s'\n" "${kv%%=*}" "${kv#*=}" >>"$params"; done
t0=$(date +%s.%N)
KERNEL_DIR=$kdir ARCH=$arch bash "$HERE/build-initramfs.sh" "$work/initramfs.cpio" "$params"
t1=$(date +%s.%N)
log=$work/console.log
# KVM hangs on the machines this runs on: TCG always. No network device: the guest has loopback only.
set +e
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" -smp "$smp" -m "$mem" \
  -nographic -no-reboot -nic none \
  -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.cpio" \
  -append "console=$console loglevel=$loglevel panic=-1 mitigations=off" </dev/null >"$log" 2>&1
qrc=$?
set -e
t2=$(date +%s.%N)
sh "$HERE/console-lines.sh" <"$log"
echo "HOST kernel=$version arch=$arch initramfs_bytes=$(stat -c %s "$work/initramfs.cpio") build_s=$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") vm_s=$(awk "BEGIN {printf \"%.1f\", $t2 - $t1}") qemu_rc=$qrc"
cp "$log" "$kdir/console.log"
log=$kdir/console.log
echo "log: $log"
[ $qrc -eq 124 ] && { echo "run.sh: timed out after ${timeout_s}s" >&2; exit 124; }
rc=$(tr -d '\r' <"$log" | sed -n 's/^.*JA4K RESULT rc=\([0-9]*\).*/\1/p' | tail -1)
[ -n "$rc" ] || { echo "run.sh: the guest never reported a result (see $log)" >&2; exit 125; }
exit "$rc"
