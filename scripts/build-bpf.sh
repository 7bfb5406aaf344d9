#!/usr/bin/env bash
# Builds the BPF object and the TypeScript files generated from it:
#   bpf/vmlinux.h            from the build host's kernel BTF (ignored by git)
#   dist/bpf/ja4ebpf.bpf.o   clang -O2 -g -target bpf, then llvm-strip -g (DWARF out, BTF kept)
#   src/bpf/object.gen.ts    the object as base64, embedded in the bundle (ignored by git)
#   src/bpf/layout.gen.ts    event layouts from the object's BTF (committed; layout_test.ts checks drift)
# Idempotent and fast when up to date. DENO may name the deno binary (else `deno` on PATH).
# VMLINUX_BTF may name another BTF file than /sys/kernel/btf/vmlinux; FORCE=1 rebuilds everything.
#
#   scripts/build-bpf.sh                      for this machine's architecture (as above)
#   scripts/build-bpf.sh --arch arm64|x86     for another one: bpf/vmlinux-ARCH.h, dist/bpf/ARCH/ja4ebpf.bpf.o
#                                             and dist/bpf/ARCH/object.gen.ts (scripts/build.sh --arch puts it
#                                             in the build copy); layout.gen.ts is left alone (the layout is one
#                                             contract: tests/kernels/arch_layout_test.ts compares the objects)
# The other architecture's types come from its kernel's own BTF: VMLINUX_BTF, else the BTF of Debian 12's
# cloud kernel for it (tests/kernels/fetch.sh 6.1 --arch ARCH: one package download, cached). Why not the
# host's vmlinux.h with shims: docs/bpf.md ("arm64").
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "build-bpf: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

CLANG=${CLANG:-clang}
STRIP=${LLVM_STRIP:-llvm-strip}
BPFTOOL=${BPFTOOL:-bpftool}
for t in "$CLANG" "$STRIP" "$BPFTOOL"; do
  command -v "$t" >/dev/null || die "$t not found (Debian: apt-get install clang llvm bpftool libbpf-dev)"
done
[ -f /usr/include/bpf/bpf_helpers.h ] || die "libbpf headers missing (apt-get install libbpf-dev)"

# libbpf's names (__TARGET_ARCH_x86, __TARGET_ARCH_arm64).
arch_of() {
  case $1 in
  x86_64 | x86 | amd64) echo x86 ;;
  aarch64 | arm64) echo arm64 ;;
  *) return 1 ;;
  esac
}
HOST_ARCH=$(arch_of "$(uname -m)") || die "unsupported architecture $(uname -m)"
ARCH=$HOST_ARCH
case "${1:-}" in
"") ;;
--arch) ARCH=$(arch_of "${2:-}") || die "--arch wants x86 (x86_64) or arm64 (aarch64), got '${2:-}'" ;;
*) die "unknown argument '$1' (use --arch x86|arm64)" ;;
esac

if [ "$ARCH" = "$HOST_ARCH" ]; then
  OBJ=dist/bpf/ja4ebpf.bpf.o
  FULL=bpf/.output/ja4ebpf.full.o
  OBJ_TS=src/bpf/object.gen.ts
  LAYOUT_TS=src/bpf/layout.gen.ts
  VMLINUX_H=bpf/vmlinux.h
  BTF_SRC=${VMLINUX_BTF:-/sys/kernel/btf/vmlinux}
else
  OBJ=dist/bpf/$ARCH/ja4ebpf.bpf.o
  FULL=bpf/.output/ja4ebpf.$ARCH.full.o
  OBJ_TS=dist/bpf/$ARCH/object.gen.ts
  LAYOUT_TS=
  VMLINUX_H=bpf/vmlinux-$ARCH.h
  BTF_SRC=${VMLINUX_BTF:-}
  if [ -z "$BTF_SRC" ] && { [ ! -s "$VMLINUX_H" ] || [ "${FORCE:-0}" = 1 ]; }; then
    deb_arch=$([ "$ARCH" = x86 ] && echo amd64 || echo arm64)
    log "fetching Debian 12's $deb_arch cloud kernel for its BTF (tests/kernels/fetch.sh)"
    kdir=$(bash tests/kernels/fetch.sh 6.1 --arch "$deb_arch" | tail -1) || die "could not fetch the $deb_arch kernel"
    BTF_SRC=$kdir/btf
    # An amd64 kernel's BTF is the bzImage's too; fetch.sh cuts it out for arm64 only.
    [ -s "$BTF_SRC" ] || die "no BTF in $kdir (set VMLINUX_BTF=FILE)"
  fi
fi
mkdir -p "$(dirname "$OBJ")" bpf/.output

# 1. vmlinux.h: generated, not committed (see docs/bpf.md). CO-RE relocates every field access
#    at load time, so the running kernel's layout wins; this header only has to name the fields.
if [ ! -s "$VMLINUX_H" ] || [ "${FORCE:-0}" = 1 ]; then
  [ -r "$BTF_SRC" ] || die "$BTF_SRC not readable: the build needs a kernel with BTF (CONFIG_DEBUG_INFO_BTF) or VMLINUX_BTF=file"
  log "generating $VMLINUX_H from $BTF_SRC"
  "$BPFTOOL" btf dump file "$BTF_SRC" format c >"$VMLINUX_H.tmp"
  mv "$VMLINUX_H.tmp" "$VMLINUX_H"
fi

# 2. The object, when a source is newer than it.
stale=0
if [ ! -s "$OBJ" ] || [ "${FORCE:-0}" = 1 ]; then
  stale=1
elif [ -n "$(find bpf scripts/build-bpf.sh -newer "$OBJ" \( -name '*.c' -o -name '*.h' -o -name '*.sh' \) -print -quit)" ]; then
  stale=1
fi
if [ $stale = 1 ]; then
  log "compiling $OBJ"
  src=bpf
  if [ "$VMLINUX_H" != bpf/vmlinux.h ]; then
    # `#include "vmlinux.h"` looks beside the including file before any -I: another architecture's build
    # compiles a copy of the sources with its own header in place.
    src=bpf/.output/src-$ARCH
    rm -rf "$src"
    mkdir -p "$src"
    (cd bpf && find . -path ./.output -prune -o \( -name '*.c' -o -name '*.h' \) ! -name 'vmlinux*.h' -print0 |
      xargs -0 cp --parents -t "../$src")
    cp "$VMLINUX_H" "$src/vmlinux.h"
  fi
  "$CLANG" -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_$ARCH -I"$src" -c "$src/ja4ebpf.bpf.c" -o "$FULL"
  # -g: DWARF goes, .BTF and .BTF.ext (CO-RE relocations, struct layouts) stay.
  "$STRIP" -g -o "$OBJ.tmp" "$FULL"
  mv "$OBJ.tmp" "$OBJ"
  log "$(stat -c %s "$FULL") bytes -> $(stat -c %s "$OBJ") bytes after strip"
fi

# 3. The embedded copy.
if [ ! -s "$OBJ_TS" ] || [ "$OBJ" -nt "$OBJ_TS" ]; then
  log "writing $OBJ_TS"
  {
    echo "// Generated by scripts/build-bpf.sh from $OBJ: do not edit (ignored by git)."
    printf 'export const BPF_OBJECT_B64 = "%s";\n' "$(base64 -w0 "$OBJ")"
  } >"$OBJ_TS.tmp"
  mv "$OBJ_TS.tmp" "$OBJ_TS"
fi

# 4. The layout, from the object's BTF (writes only when the content changes). Not in CI: there the
#    committed file must stay as committed so that src/bpf/layout_test.ts can catch a forgotten regeneration.
if [ "${CI:-}" = true ] || [ -z "$LAYOUT_TS" ]; then
  :
elif [ ! -s "$LAYOUT_TS" ] || [ "$OBJ" -nt "$LAYOUT_TS" ] || [ scripts/gen-layout.ts -nt "$LAYOUT_TS" ]; then
  DENO=${DENO:-$(command -v deno || true)}
  if [ -z "$DENO" ]; then
    log "warning: deno not found: $LAYOUT_TS not regenerated"
  else
    "$DENO" run --allow-read --allow-write --allow-run scripts/gen-layout.ts "$OBJ" "$LAYOUT_TS" >&2
    touch "$LAYOUT_TS"
  fi
fi
