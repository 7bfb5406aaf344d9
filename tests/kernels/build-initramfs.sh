#!/usr/bin/env bash
# Builds the guest's initramfs (uncompressed newc cpio): busybox, the agent (deno + source tree, or the bundle
# dist/ja4ebpf), libbpf, the BPF object, nginx, Apache, curl, an idle-recvfrom load generator, and the guest
# scripts under /guest. Shared libraries are collected with ldd.
#   [KERNEL_DIR=tests/kernels/cache/VERSION] tests/kernels/build-initramfs.sh OUT.cpio [ENV_FILE]
# ENV_FILE (optional) becomes /guest/params.env: variables the guest test reads (REQUESTS, METHODS...).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KERNELS_CACHE:-$HERE/cache}
out=${1:?usage: build-initramfs.sh OUT.cpio [ENV_FILE]}
envfile=${2:-}
log() { echo "initramfs: $*" >&2; }
need() { [ -e "$1" ] || { echo "initramfs: missing $1 ($2)" >&2; exit 1; }; }

DENO=${DENO:-$ROOT/.tools/deno/node_modules/deno/deno}
command -v "$DENO" >/dev/null 2>&1 || DENO=$(command -v deno || true)
need /bin/busybox "apt-get install busybox-static"
need /usr/sbin/nginx "apt-get install nginx-light"
need /usr/sbin/apache2 "apt-get install apache2"
need /usr/bin/curl "apt-get install curl"
file /bin/busybox | grep -q 'statically linked' || { echo "initramfs: /bin/busybox is not static (install busybox-static)" >&2; exit 1; }

stage=$(mktemp -d "$CACHE/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage" # becomes / in the guest: Apache's children (www-data) must traverse it
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,srv/www,var/log/nginx,var/lib/nginx,guest}
mkdir -p "$stage"/lib64 "$stage"/lib/x86_64-linux-gnu "$stage"/usr/lib/x86_64-linux-gnu
chmod 1777 "$stage/tmp"

# Copies a file to the same path in the image, following symlinks.
put() { mkdir -p "$stage$(dirname "$1")" && cp -L "$1" "$stage$1"; }
# Copies the shared libraries ldd resolves for an ELF file (plus the dynamic loader).
put_libs() {
  ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^[ \t]*\/lib/ {print $1}' | while read -r lib; do
    [ -e "$stage$lib" ] || put "$lib"
  done
}
# Copies an ELF file and its libraries.
put_elf() { put "$1" && put_libs "$1"; }

cp /bin/busybox "$stage/bin/busybox"
put_elf /usr/sbin/nginx
put_elf /usr/sbin/apache2
for m in mpm_event authz_core; do put_elf "/usr/lib/apache2/modules/mod_$m.so"; done
put_elf /usr/bin/curl
# glibc dlopens libgcc_s for pthread_cancel (Apache's children abort without it).
put "$(ldconfig -p | awk '/libgcc_s\.so\.1 .*x86-64/ {print $NF; exit}')"
libbpf=$(ldconfig -p | awk '/libbpf\.so\.1 .*x86-64/ {print $NF; exit}')
[ -n "$libbpf" ] || { echo "initramfs: libbpf.so.1 not found (apt-get install libbpf1)" >&2; exit 1; }
put_elf "$libbpf"
# bpftool is optional: only for looking around in the guest by hand.
bpftool=$(command -v bpftool || true)
[ -n "$bpftool" ] && put_elf "$(readlink -f "$bpftool")" && ln -sf "$(readlink -f "$bpftool")" "$stage/usr/sbin/bpftool"

# Kernel modules for the TC packet hook (built as modules in Debian's cloud kernels), uncompressed so
# busybox's insmod takes them; init loads every .ko under /lib/modules.
if [ -n "${KERNEL_DIR:-}" ] && [ -d "$KERNEL_DIR/modules" ]; then
  mkdir -p "$stage/lib/modules"
  find "$KERNEL_DIR/modules" \( -name 'sch_ingress.ko*' -o -name 'cls_bpf.ko*' \) | while read -r m; do
    case $m in
      *.xz) busybox unxz -c "$m" >"$stage/lib/modules/$(basename "${m%.xz}")" ;;
      *) cp "$m" "$stage/lib/modules/" ;;
    esac
  done
fi

# The load generator: built static so it needs nothing from the image.
idle_src=$HERE/guest/idle_recv.c
if [ ! -x "$CACHE/idle_recv" ] || [ "$idle_src" -nt "$CACHE/idle_recv" ]; then
  gcc -static -O2 -o "$CACHE/idle_recv" "$idle_src"
fi
cp "$CACHE/idle_recv" "$stage/usr/bin/idle_recv"

# The agent. AGENT=js (default): `deno bundle` of the tree as it is now, one JS file, so the guest neither
# transpiles TypeScript nor resolves npm packages (both slow under TCG). AGENT=source: deno + the source tree
# with a primed DENO_DIR (the guest has no network). AGENT=bundle: dist/ja4ebpf, the file that ships (its
# first start unpacks ~100 MB, ~20 s under TCG).
mkdir -p "$stage/agent"
[ -n "$DENO" ] || { echo "initramfs: no deno (run scripts/setup.sh)" >&2; exit 1; }
export DENO_NO_UPDATE_CHECK=1
put_libs "$(readlink -f "$DENO")" # also the libraries the bundle's own deno needs
kind=${AGENT:-js}
if [ "$kind" = js ] && ! (cd "$ROOT" && timeout 300 "$DENO" bundle --quiet --platform deno --packages bundle \
  -o "$stage/agent/ja4ebpf.js" src/main.ts >&2); then
  log "deno bundle failed: using the source tree"
  kind=source
fi
case $kind in
  bundle)
    need "$ROOT/dist/ja4ebpf" "deno task build"
    cp "$ROOT/dist/ja4ebpf" "$stage/usr/bin/ja4ebpf"
    ;;
  js)
    cp "$(readlink -f "$DENO")" "$stage/usr/bin/deno"
    cat >"$stage/usr/bin/ja4ebpf" <<'SH'
#!/bin/sh
export DENO_DIR=/tmp/deno_dir DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
exec /usr/bin/deno run -A --no-config /agent/ja4ebpf.js "$@"
SH
    ;;
  *)
    kind=source
    cp "$(readlink -f "$DENO")" "$stage/usr/bin/deno"
    cp -r "$ROOT/src" "$ROOT/deno.json" "$stage/agent/"
    [ -f "$ROOT/deno.lock" ] && cp "$ROOT/deno.lock" "$stage/agent/"
    (cd "$ROOT" && DENO_DIR=$CACHE/deno_dir "$DENO" cache --quiet src/main.ts >&2)
    cp -r "$CACHE/deno_dir" "$stage/agent/deno_dir"
    cat >"$stage/usr/bin/ja4ebpf" <<'SH'
#!/bin/sh
export DENO_DIR=/agent/deno_dir DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
exec /usr/bin/deno run -A --cached-only --config /agent/deno.json /agent/src/main.ts "$@"
SH
    ;;
esac
chmod +x "$stage/usr/bin/ja4ebpf"
echo "$kind" >"$stage/agent/kind"
if [ -d "$ROOT/dist/bpf" ]; then cp -r "$ROOT/dist/bpf" "$stage/agent/bpf"; fi

# Just enough of /etc for the servers: Apache refuses to serve as root, nginx's workers may.
cat >"$stage/etc/passwd" <<'ETC'
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/srv/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
ETC
cat >"$stage/etc/group" <<'ETC'
root:x:0:
www-data:x:33:
nogroup:x:65534:
ETC
echo "passwd: files
group: files
hosts: files" >"$stage/etc/nsswitch.conf"
echo "127.0.0.1 localhost" >"$stage/etc/hosts"
cp "$HERE"/guest/*.sh "$HERE"/guest/*.conf "$stage/guest/"
cp "$HERE/guest/init.sh" "$stage/init"
chmod +x "$stage/init" "$stage"/guest/*.sh
[ -n "$envfile" ] && cp "$envfile" "$stage/guest/params.env"
echo "ok" >"$stage/srv/www/kt" # the path the guest requests (Apache serves files only here)
# Lets dlopen("libbpf.so.1") resolve without LD_LIBRARY_PATH.
printf '/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' >"$stage/etc/ld.so.conf"
ldconfig -r "$stage"

# busybox's cpio: always there with busybox-static (file names here have no newlines).
(cd "$stage" && find . | busybox cpio -o -H newc -R root:root 2>/dev/null) >"$out.tmp"
mv "$out.tmp" "$out"
log "$(du -h "$out" | cut -f1) in $out"
