#!/bin/busybox sh
# PID 1 of the test VM: mounts what the agent needs, brings up loopback, runs the checks, powers off.
# Every line meant for the host starts with "JA4K "; the last one is "JA4K RESULT rc=N".
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/shm /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t debugfs debugfs /sys/kernel/debug
# tracefs has its own mount point from 4.1; older kernels only show it under debugfs.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
for m in /lib/modules/*.ko; do [ -e "$m" ] && insmod "$m"; done
echo "JA4K BOOT uptime=$(cut -d' ' -f1 /proc/uptime)"
set -a
[ -f /guest/params.env ] && . /guest/params.env
set +a
echo "JA4K INFO expect_refused=\"$EXPECT_REFUSED\""
sh /guest/test.sh
rc=$?
echo "JA4K RESULT rc=$rc"
sync
poweroff -f
