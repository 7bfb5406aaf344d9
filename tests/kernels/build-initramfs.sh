#!/usr/bin/env bash
# Builds the guest's initramfs (uncompressed newc cpio): busybox, the agent (deno + source tree, or the bundle
# dist/ja4ebpf), libbpf, the BPF object, nginx, Apache, curl, an idle-recvfrom load generator, and the guest
# scripts under /guest. Shared libraries are collected with ldd.
#   [KERNEL_DIR=tests/kernels/cache/VERSION] [ARCH=arm64] tests/kernels/build-initramfs.sh OUT.cpio [ENV_FILE]
# ENV_FILE (optional) becomes /guest/params.env: variables the guest test reads (REQUESTS, METHODS...).
# ARCH=arm64 builds an aarch64 image on any host: the programs and libraries from Debian's arm64 packages
# (fetch-userland.sh), their libraries found from the ELF files' NEEDED entries instead of ldd, the agent with
# the arm64 BPF object and Deno's linux-arm64 runtime (scripts/build.sh --arch aarch64 --print-runtime).
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
[ -n "$DENO" ] || { echo "initramfs: no deno (run scripts/setup.sh)" >&2; exit 1; }
ARCH=${ARCH:-}
case $ARCH in
  "" | x86 | amd64 | x86_64) ARCH=x86 TRIPLET=x86_64-linux-gnu SYS="" RUNTIME=$(readlink -f "$DENO") ;;
  arm64 | aarch64)
    ARCH=arm64 TRIPLET=aarch64-linux-gnu
    SYS=$(bash "$HERE/fetch-userland.sh" arm64 | tail -1)
    RUNTIME=$(bash "$ROOT/scripts/build.sh" --arch aarch64 --print-runtime | tail -1)
    command -v aarch64-linux-gnu-gcc >/dev/null ||
      { echo "initramfs: aarch64-linux-gnu-gcc missing (apt-get install gcc-aarch64-linux-gnu)" >&2; exit 1; }
    ;;
  *) echo "initramfs: unsupported ARCH=$ARCH (x86 or arm64)" >&2; exit 2 ;;
esac
need "$SYS/bin/busybox" "apt-get install busybox-static"
need "$SYS/usr/sbin/nginx" "apt-get install nginx-light"
need "$SYS/usr/sbin/apache2" "apt-get install apache2"
need "$SYS/usr/bin/curl" "apt-get install curl"
file "$SYS/bin/busybox" | grep -q 'statically linked' || { echo "initramfs: /bin/busybox is not static (install busybox-static)" >&2; exit 1; }

stage=$(mktemp -d "$CACHE/stage.XXXXXX")
trap 'rm -rf "$stage" "$stage.tree"' EXIT
chmod 755 "$stage" # becomes / in the guest: Apache's children (www-data) must traverse it
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,srv/www,var/log/nginx,var/lib/nginx,guest}
mkdir -p "$stage"/lib64 "$stage/lib/$TRIPLET" "$stage/usr/lib/$TRIPLET"
chmod 1777 "$stage/tmp"

# The file behind a path of the image's root (SYS, or / for x86), its symlinks followed inside that root.
src_of() {
  local p=$1 l i=0
  while [ -L "$SYS$p" ] && [ $i -lt 40 ]; do
    l=$(readlink "$SYS$p")
    case $l in /*) p=$l ;; *) p=$(dirname "$p")/$l ;; esac
    i=$((i + 1))
  done
  echo "$SYS$p"
}
# Copies a file to the same path in the image, following symlinks.
put() { mkdir -p "$stage$(dirname "$1")" && cp "$(src_of "$1")" "$stage$1"; }
# The first of the root's library directories holding SONAME, as a path of the image.
find_lib() {
  local d
  for d in /lib/$TRIPLET /usr/lib/$TRIPLET /lib /usr/lib; do
    [ -e "$SYS$d/$1" ] && { echo "$d/$1"; return 0; }
  done
  return 1
}
# Copies the shared libraries of an ELF file given by its path on this machine (plus the dynamic loader):
# x86 as ldd resolves them; another architecture's through its NEEDED entries, recursively, in SYS.
put_libs() {
  if [ -z "$SYS" ]; then
    ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^[ \t]*\/lib/ {print $1}' | while read -r lib; do
      [ -e "$stage$lib" ] || put "$lib"
    done
    return 0
  fi
  local interp lib so
  interp=$(readelf -lW "$1" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  [ -z "$interp" ] || [ -e "$stage$interp" ] || put "$interp"
  for so in $(readelf -dW "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    lib=$(find_lib "$so") || { echo "initramfs: $so (needed by $1) is in none of the $ARCH packages" >&2; exit 1; }
    [ -e "$stage$lib" ] && continue
    put "$lib"
    put_libs "$stage$lib"
  done
}
# Copies an ELF file (a path of the image's root) and its libraries.
put_elf() { put "$1" && put_libs "$(src_of "$1")"; }

cp "$SYS/bin/busybox" "$stage/bin/busybox"
put_elf /usr/sbin/nginx
put_elf /usr/sbin/apache2
for m in mpm_event authz_core; do put_elf "/usr/lib/apache2/modules/mod_$m.so"; done
put_elf /usr/bin/curl
if [ $ARCH = x86 ]; then
  # glibc dlopens libgcc_s for pthread_cancel (Apache's children abort without it).
  # awk reads to the end: leaving early would kill ldconfig with SIGPIPE, which pipefail turns into exit 141.
  put "$(ldconfig -p | awk '/libgcc_s\.so\.1 .*x86-64/ && !f {print $NF; f = 1}')"
  libbpf=$(ldconfig -p | awk '/libbpf\.so\.1 .*x86-64/ && !f {print $NF; f = 1}')
  [ -n "$libbpf" ] || { echo "initramfs: libbpf.so.1 not found (apt-get install libbpf1)" >&2; exit 1; }
  put_elf "$libbpf"
  # bpftool is optional: only for looking around in the guest by hand.
  bpftool=$(command -v bpftool || true)
  [ -n "$bpftool" ] && put_elf "$(readlink -f "$bpftool")" && ln -sf "$(readlink -f "$bpftool")" "$stage/usr/sbin/bpftool"
else
  put "$(find_lib libgcc_s.so.1)" || { echo "initramfs: libgcc_s.so.1 missing from the $ARCH packages" >&2; exit 1; }
  put_elf "$(find_lib libbpf.so.1)" || { echo "initramfs: libbpf.so.1 missing from the $ARCH packages" >&2; exit 1; }
fi

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
idle_bin=$CACHE/idle_recv$([ $ARCH = x86 ] || echo "-$ARCH")
if [ ! -x "$idle_bin" ] || [ "$idle_src" -nt "$idle_bin" ]; then
  if [ $ARCH = x86 ]; then gcc -static -O2 -o "$idle_bin" "$idle_src"; else aarch64-linux-gnu-gcc -static -O2 -o "$idle_bin" "$idle_src"; fi
fi
cp "$idle_bin" "$stage/usr/bin/idle_recv"

# The agent. AGENT=js (default): `deno bundle` of the tree as it is now, one JS file, so the guest neither
# transpiles TypeScript nor resolves npm packages (both slow under TCG). AGENT=source: deno + the source tree
# with a primed DENO_DIR (the guest has no network). AGENT=bundle: dist/ja4ebpf, the file that ships (its
# first start unpacks ~100 MB, ~20 s under TCG).
mkdir -p "$stage/agent"
export DENO_NO_UPDATE_CHECK=1
put_libs "$RUNTIME" # also the libraries the bundle's own deno needs
kind=${AGENT:-js}
# The tree to bundle: another architecture's needs its own BPF object in place of this machine's.
tree=$ROOT
if [ $ARCH != x86 ] && [ "$kind" = js ]; then
  bash "$ROOT/scripts/build-bpf.sh" --arch $ARCH >&2
  tree=$stage.tree
  mkdir -p "$tree"
  cp -r "$ROOT/src" "$ROOT/deno.json" "$tree/"
  [ -f "$ROOT/deno.lock" ] && cp "$ROOT/deno.lock" "$tree/"
  cp "$ROOT/dist/bpf/$ARCH/object.gen.ts" "$tree/src/bpf/object.gen.ts"
fi
if [ "$kind" = js ] && ! (cd "$tree" && timeout 300 "$DENO" bundle --quiet --platform deno --packages bundle \
  -o "$stage/agent/ja4ebpf.js" src/main.ts >&2); then
  [ $ARCH = x86 ] || { echo "initramfs: deno bundle failed" >&2; exit 1; }
  log "deno bundle failed: using the source tree"
  kind=source
fi
[ "$tree" = "$ROOT" ] || rm -rf "$tree"
[ $ARCH = x86 ] || [ "$kind" != source ] || { echo "initramfs: AGENT=source is x86 only (use js or bundle)" >&2; exit 2; }
case $kind in
  bundle)
    exe=$ROOT/dist/ja4ebpf
    [ $ARCH = x86 ] || exe=$ROOT/dist/ja4ebpf-aarch64
    need "$exe" "scripts/build.sh$([ $ARCH = x86 ] || echo " --arch aarch64")"
    cp "$exe" "$stage/usr/bin/ja4ebpf"
    ;;
  js)
    cp "$RUNTIME" "$stage/usr/bin/deno"
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
# The object the bundle embeds, also as a file (for looking around in the guest by hand).
obj=$ROOT/dist/bpf/ja4ebpf.bpf.o
[ $ARCH = x86 ] || obj=$ROOT/dist/bpf/$ARCH/ja4ebpf.bpf.o
[ -f "$obj" ] && mkdir -p "$stage/agent/bpf" && cp "$obj" "$stage/agent/bpf/"

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
# This machine's ldconfig writes no cache for another architecture's libraries: the loader is told instead.
[ $ARCH = x86 ] || echo "LD_LIBRARY_PATH=/lib/$TRIPLET:/usr/lib/$TRIPLET" >>"$stage/guest/params.env"
echo "ok" >"$stage/srv/www/kt" # the path the guest requests (Apache serves files only here)
# Lets dlopen("libbpf.so.1") resolve without LD_LIBRARY_PATH.
printf '/lib/%s\n/usr/lib/%s\n' "$TRIPLET" "$TRIPLET" >"$stage/etc/ld.so.conf"
ldconfig -r "$stage"

# busybox's cpio: always there with busybox-static (file names here have no newlines).
(cd "$stage" && find . | busybox cpio -o -H newc -R root:root 2>/dev/null) >"$out.tmp"
mv "$out.tmp" "$out"
log "$(du -h "$out" | cut -f1) in $out"
