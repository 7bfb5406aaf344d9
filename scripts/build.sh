#!/usr/bin/env bash
# Builds dist/ja4ebpf, one executable file (`deno task build`):
#   1. scripts/build-bpf.sh: the BPF object and src/bpf/object.gen.ts that embeds it;
#   2. a copy of src/ with BUILD_KIND rewritten (the source file is never edited);
#   3. either `deno compile` (when a denort runtime is given in DENORT_BIN: `deno compile` would otherwise
#      download one, which needs network access), or a self-extracting executable: a small sh launcher
#      followed by a tar.gz of the deno binary and the `deno bundle` output. Its first start unpacks into a
#      cache directory keyed by the payload hash; every start checks the unpacked files against the BLAKE2b
#      (or SHA-256) sums the launcher carries (the cache belongs to the service user: a runtime changed
#      there is unpacked again, never run); no network is needed at any point.
#
#   scripts/build.sh                         build dist/ja4ebpf (this machine's architecture)
#   scripts/build.sh --arch aarch64          build dist/ja4ebpf-aarch64: the arm64 BPF object (build-bpf.sh
#                                            --arch arm64) and Deno's linux-arm64 runtime from npm
#                                            (@deno/linux-arm64-glibc, same version, kept in .tools/)
#   scripts/build.sh [--arch A] --rpm        also build the RPM (dist/rpm/ja4ebpf-V-1.ARCH.rpm) from it; the
#                                            other architecture's RPM beside it stays
#   scripts/build.sh [--arch A] --rpm-only   build the RPM from an existing executable
#
# Environment: DENO (deno binary), DENORT_BIN (denort runtime → compiled build), BUILD_KIND_FORCE
# (self-extracting|compiled), SKIP_BPF=1 (do not run build-bpf.sh; the build log says so), DENO_RUNTIME (the
# deno binary to ship instead of the one for --arch).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { echo "build: $*" >&2; }
die() {
  echo "build: error: $*" >&2
  exit 1
}

want_bin=1
want_rpm=0
want_runtime=0
HOST_ARCH=$(uname -m)
ARCH=$HOST_ARCH
while [ $# -gt 0 ]; do
  case $1 in
  --rpm) want_rpm=1 ;;
  --rpm-only)
    want_bin=0
    want_rpm=1
    ;;
  --print-runtime) # the deno binary an --arch build ships (fetched if needed), for the kernel tests
    want_bin=0
    want_runtime=1
    ;;
  --arch)
    case "${2:-}" in
    x86_64 | amd64 | x86) ARCH=x86_64 ;;
    aarch64 | arm64) ARCH=aarch64 ;;
    *) die "--arch wants x86_64 or aarch64, got '${2:-}'" ;;
    esac
    shift
    ;;
  *) die "unknown argument '$1' (use --arch x86_64|aarch64, --rpm or --rpm-only)" ;;
  esac
  shift
done

if [ -z "${DENO:-}" ]; then
  if [ -x "$ROOT/.tools/deno/node_modules/deno/deno" ]; then
    DENO="$ROOT/.tools/deno/node_modules/deno/deno"
  else
    DENO=$(command -v deno) || die "no deno: run scripts/setup.sh or set DENO"
  fi
fi
export DENO DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
VERSION=$(sed -n 's/^export const VERSION = "\(.*\)";$/\1/p' src/version.ts)
[ -n "$VERSION" ] || die "cannot read VERSION from src/version.ts"
# This machine's architecture keeps the plain name; the other one's carries its architecture.
if [ "$ARCH" = "$HOST_ARCH" ]; then
  OUT=dist/ja4ebpf
  KIND_FILE=dist/BUILD_KIND
else
  OUT=dist/ja4ebpf-$ARCH
  KIND_FILE=dist/BUILD_KIND-$ARCH
fi
WORK=dist/.build-$ARCH
BPF_ARCH=$([ "$ARCH" = aarch64 ] && echo arm64 || echo x86)
DENO_NPM_PKG=$([ "$ARCH" = aarch64 ] && echo @deno/linux-arm64-glibc || echo @deno/linux-x64-glibc)
ELF_MACHINE=$([ "$ARCH" = aarch64 ] && echo 183 || echo 62) # e_machine: EM_AARCH64, EM_X86_64

# Permissions of the running agent (both kinds): all. Deno 2 opens any path under /proc, /sys or /dev only
# with --allow-all (no --allow-read form reaches them), and the agent reads /proc/PID/maps, /proc/net/tcp and
# /sys/class/net; FFI (libbpf through pointers) is unscoped anyway. The boundary is the service user, its
# capabilities and the systemd sandbox. Remote imports stay off (--no-remote --cached-only in the launcher).
PERMS=(--allow-all)
# The agent's V8 heap limits and `deno run` flags, for both kinds (scripts/agent-flags.sh: one reading of the
# files for this build, scripts/run.sh and the benchmarks).
# shellcheck source=scripts/agent-flags.sh
. scripts/agent-flags.sh
V8FLAGS=--v8-flags=$AGENT_V8FLAGS
DENOFLAGS=(${AGENT_DENOFLAGS[@]+"${AGENT_DENOFLAGS[@]}"})

# e_machine of an ELF file (62 x86-64, 183 aarch64), empty if it is not ELF.
elf_machine() {
  [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] || return 0
  od -An -tu2 -j 18 -N 2 "$1" | tr -d ' '
}

# The deno binary the executable ships: this machine's for its own architecture, else Deno's npm package
# for the target (the same version as the build's deno), unpacked into .tools/deno-ARCH/.
runtime_deno() {
  local want=$1 d ver
  if [ -n "${DENO_RUNTIME:-}" ]; then
    d=$DENO_RUNTIME
  elif [ "$ARCH" = "$HOST_ARCH" ]; then
    d=$(readlink -f "$DENO")
  else
    ver=$("$DENO" --version | awk 'NR == 1 {print $2}')
    d=$ROOT/.tools/deno-$ARCH/$ver/package/deno
    if [ ! -x "$d" ]; then
      command -v npm >/dev/null || die "npm is needed to fetch $DENO_NPM_PKG@$ver (apt-get install npm)"
      log "fetching $DENO_NPM_PKG@$ver from npm into .tools/deno-$ARCH/$ver"
      rm -rf "$ROOT/.tools/deno-$ARCH/$ver"
      mkdir -p "$ROOT/.tools/deno-$ARCH/$ver"
      (cd "$ROOT/.tools/deno-$ARCH/$ver" && timeout 600 npm pack --silent "$DENO_NPM_PKG@$ver" >/dev/null &&
        tar -xzf ./*.tgz && rm -f ./*.tgz) || die "npm pack $DENO_NPM_PKG@$ver failed"
      chmod 0755 "$d"
    fi
  fi
  [ "$(elf_machine "$d")" = "$want" ] || die "$d is not a $ARCH executable (ELF machine '$(elf_machine "$d")')"
  echo "$d"
}

build_bin() {
  if [ "${SKIP_BPF:-0}" = 1 ]; then
    log "WARNING: SKIP_BPF=1: the BPF object was not rebuilt"
  elif [ -f scripts/build-bpf.sh ]; then
    log "building the BPF object (scripts/build-bpf.sh --arch $BPF_ARCH)"
    bash scripts/build-bpf.sh --arch "$BPF_ARCH" >&2 || die "scripts/build-bpf.sh failed"
  else
    log "WARNING: scripts/build-bpf.sh is missing: the executable carries no fresh BPF object"
  fi
  local kind
  if [ -n "${BUILD_KIND_FORCE:-}" ]; then
    kind=$BUILD_KIND_FORCE
  elif [ -n "${DENORT_BIN:-}" ]; then
    kind=compiled
  else
    kind=self-extracting
  fi
  case $kind in
  compiled) [ -n "${DENORT_BIN:-}" ] && [ -x "$DENORT_BIN" ] ||
    die "a compiled build needs DENORT_BIN=<denort runtime> (deno compile cannot download one here)" ;;
  self-extracting) ;;
  *) die "BUILD_KIND_FORCE must be self-extracting or compiled" ;;
  esac
  log "kind: $kind (version $VERSION, deno $("$DENO" --version | awk 'NR == 1 {print $2}'), $ARCH)"

  rm -rf "$WORK"
  mkdir -p "$WORK/tree"
  cp -r src deno.json "$WORK/tree/"
  [ -f deno.lock ] && cp deno.lock "$WORK/tree/"
  sed -i "s/^export const BUILD_KIND: string = \"source\";$/export const BUILD_KIND: string = \"$kind\";/" \
    "$WORK/tree/src/version.ts"
  grep -q "BUILD_KIND: string = \"$kind\"" "$WORK/tree/src/version.ts" ||
    die "could not set BUILD_KIND in the build copy of src/version.ts"
  # The BPF object for the target architecture (the source tree embeds this machine's).
  if [ "$ARCH" != "$HOST_ARCH" ]; then
    [ -s "dist/bpf/$BPF_ARCH/object.gen.ts" ] || die "dist/bpf/$BPF_ARCH/object.gen.ts missing (scripts/build-bpf.sh --arch $BPF_ARCH)"
    cp "dist/bpf/$BPF_ARCH/object.gen.ts" "$WORK/tree/src/bpf/object.gen.ts"
  fi

  rm -f "$OUT"
  if [ "$kind" = compiled ]; then
    [ "$ARCH" = "$HOST_ARCH" ] || [ "$(elf_machine "$DENORT_BIN")" = "$ELF_MACHINE" ] ||
      die "DENORT_BIN is not a $ARCH runtime"
    # DENORT_BIN makes deno compile use that runtime instead of downloading one; the timeout turns an
    # unexpected download attempt on an offline machine into an error instead of a hang.
    # Another architecture's build names its target (untested here: no denort for it is reachable).
    local target=()
    [ "$ARCH" = "$HOST_ARCH" ] || target=(--target "$ARCH-unknown-linux-gnu")
    timeout 600 "$DENO" compile --quiet --no-check=remote --config "$WORK/tree/deno.json" "${PERMS[@]}" \
      ${target[@]+"${target[@]}"} "$V8FLAGS" ${DENOFLAGS[@]+"${DENOFLAGS[@]}"} --output "$OUT" "$WORK/tree/src/main.ts" || die "deno compile failed"
  else
    local runtime
    runtime=$(runtime_deno "$ELF_MACHINE")
    mkdir -p "$WORK/payload"
    # deno bundle (esbuild, fetched from npm on first use) inlines npm packages and dynamic imports.
    timeout 300 "$DENO" bundle --quiet --platform deno --packages bundle --config "$WORK/tree/deno.json" \
      -o "$WORK/payload/ja4ebpf.js" "$WORK/tree/src/main.ts" || die "deno bundle failed"
    grep -q "\"$kind\"" "$WORK/payload/ja4ebpf.js" || die "the bundle lacks the build kind"
    cp "$runtime" "$WORK/payload/deno"
    chmod 0755 "$WORK/payload/deno"
    tar --owner=0 --group=0 --numeric-owner -C "$WORK/payload" -cf - deno ja4ebpf.js | gzip -6 -n >"$WORK/payload.tgz"
    local hash b2 s256
    hash=$(sha256sum "$WORK/payload.tgz" | cut -c1-24)
    # What each start checks the unpacked files against (order: deno, ja4ebpf.js): BLAKE2b where coreutils
    # has b2sum (2.5x faster than sha256sum over the ~95 MB runtime), SHA-256 elsewhere (busybox).
    b2=$(cd "$WORK/payload" && b2sum deno ja4ebpf.js | cut -c1-128 | tr '\n' ' ')
    s256=$(cd "$WORK/payload" && sha256sum deno ja4ebpf.js | cut -c1-64 | tr '\n' ' ')
    write_launcher "$hash" "$WORK/launcher" "${b2% }" "${s256% }"
    # The offset is a fixed-width field (padded with spaces, as leading zeros would read as octal), so
    # substituting it does not change the launcher's size.
    local size
    size=$(stat -c %s "$WORK/launcher")
    sed -i "s/^OFFSET=0000000000\$/OFFSET=$(printf %-10s "$size")/" "$WORK/launcher"
    [ "$(stat -c %s "$WORK/launcher")" = "$size" ] || die "launcher size changed"
    cat "$WORK/launcher" "$WORK/payload.tgz" >"$OUT.tmp"
    chmod 0755 "$OUT.tmp"
    mv "$OUT.tmp" "$OUT"
  fi
  chmod 0755 "$OUT"
  local bytes
  bytes=$(stat -c %s "$OUT")
  log "built $OUT: $kind build, $ARCH, $((bytes / 1048576)) MiB ($bytes bytes)"
  echo "$kind" >"$KIND_FILE"
  rm -rf "$WORK"
}

write_launcher() { # hash, file, "b2(deno) b2(ja4ebpf.js)", "sha256(deno) sha256(ja4ebpf.js)"
  local hash=$1 file=$2 b2=$3 s256=$4
  {
    cat <<EOF
#!/bin/sh
# ja4ebpf $VERSION ($ARCH), self-extracting build: this launcher is followed by a tar.gz of the Deno runtime
# and the bundled agent. The first start unpacks it into a cache directory keyed by the payload hash; every
# start checks the unpacked files against their sums before running them (the cache is writable by the user
# the agent runs as: a changed file is unpacked again, never run). Nothing is fetched from the network.
set -eu
HASH=$hash
SUMS_B2="$b2"
SUMS_SHA256="$s256"
OFFSET=0000000000
PERMS="${PERMS[*]} $V8FLAGS${DENOFLAGS[*]+ ${DENOFLAGS[*]}}"
EOF
    # scripts/agent-env; a value already set in the environment wins.
    agent_env | sed 's/^\([^=]*\)=\(.*\)$/export \1="${\1:-\2}"/'
    cat <<'EOF'
self=$0
case $self in */*) ;; *) self=$(command -v -- "$self") ;; esac
[ -r "$self" ] || { echo "ja4ebpf: cannot read my own file ($self)" >&2; exit 1; }
uid=$(id -u)
umask 077
# systemd's CacheDirectory=/StateDirectory=, then the XDG cache or ~/.cache, then /var/cache (root) or
# TMPDIR: the first that exists or can be created, is ours and is writable. Someone else's directory could
# hold a planted runtime.
pick() {
  for cand in "$@"; do
    [ -n "$cand" ] || continue
    if mkdir -p "$cand" 2>/dev/null && [ -O "$cand" ] && [ -w "$cand" ]; then
      echo "$cand"
      return 0
    fi
  done
  return 1
}
home_cache=
[ -n "${HOME:-}" ] && [ "$HOME" != / ] && home_cache=$HOME/.cache/ja4ebpf
xdg_cache=
[ -n "${XDG_CACHE_HOME:-}" ] && xdg_cache=$XDG_CACHE_HOME/ja4ebpf
state_cache=
[ -n "${STATE_DIRECTORY:-}" ] && state_cache=${STATE_DIRECTORY%%:*}/runtime
var_cache=
[ "$uid" = 0 ] && var_cache=/var/cache/ja4ebpf
systemd_cache=${CACHE_DIRECTORY:-}
base=$(pick "${JA4EBPF_CACHE_DIR:-}" "${systemd_cache%%:*}" "$state_cache" "$xdg_cache" "$home_cache" \
  "$var_cache" "${TMPDIR:-/tmp}/ja4ebpf-$uid") ||
  { echo "ja4ebpf: no usable cache directory (set JA4EBPF_CACHE_DIR)" >&2; exit 1; }
dir=$base/$HASH
# The unpacked runtime is what SUMS says: true/false.
intact() {
  [ -f "$1/.complete" ] || return 1
  if command -v b2sum >/dev/null 2>&1; then
    [ "$(b2sum "$1/deno" "$1/ja4ebpf.js" 2>/dev/null | cut -c1-128 | tr '\n' ' ')" = "$SUMS_B2 " ]
  else
    [ "$(sha256sum "$1/deno" "$1/ja4ebpf.js" 2>/dev/null | cut -c1-64 | tr '\n' ' ')" = "$SUMS_SHA256 " ]
  fi
}
if [ -f "$dir/.complete" ] && ! intact "$dir"; then
  echo "ja4ebpf: the runtime unpacked in $dir differs from this executable's: unpacking it again" >&2
  rm -rf "$dir" 2>/dev/null || :
  [ ! -e "$dir" ] || { echo "ja4ebpf: cannot remove the changed runtime in $dir: refusing to run it" >&2; exit 1; }
fi
if [ ! -f "$dir/.complete" ]; then
  tmp=$(mktemp -d "$base/.unpack.XXXXXX")
  if ! tail -c +$((OFFSET + 1)) "$self" | gzip -dc | tar -xf - -C "$tmp"; then
    rm -rf "$tmp"
    echo "ja4ebpf: unpacking into $base failed (disk full? truncated file?)" >&2
    exit 1
  fi
  : >"$tmp/.complete"
  # Atomic; if a concurrent start won the race, keep its copy.
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  [ -f "$dir/.complete" ] || { echo "ja4ebpf: $dir is incomplete; remove it" >&2; exit 1; }
  # Older versions' runtimes (about 100 MB each).
  for old in "$base"/*; do
    [ "$old" = "$dir" ] || [ ! -f "$old/.complete" ] || rm -rf "$old"
  done
fi
# Also right after unpacking: a concurrent start's copy, or a file changed since.
intact "$dir" || { echo "ja4ebpf: the runtime in $dir does not match this executable: refusing to run it" >&2; exit 1; }
DENO_DIR=$dir/deno-dir DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
export DENO_DIR DENO_NO_UPDATE_CHECK DENO_NO_PROMPT
# shellcheck disable=SC2086 # PERMS is a list of flags
exec "$dir/deno" run --cached-only --no-config --no-lock --no-remote --no-npm $PERMS "$dir/ja4ebpf.js" "$@"
EOF
  } >"$file"
}

build_rpm() {
  [ -x "$OUT" ] || die "$OUT is missing: build it first"
  command -v rpmbuild >/dev/null || die "rpmbuild is missing (Debian: apt-get install rpm)"
  local top
  top=$(mktemp -d)
  trap 'rm -rf "$top"' RETURN
  mkdir -p "$top/SOURCES" "$top/BUILD" "$top/RPMS" "$top/SRPMS" "$top/SPECS" "$top/tmp"
  cp "$OUT" "$top/SOURCES/ja4ebpf"
  cp rpm/ja4ebpf.service rpm/el8-capabilities.conf rpm/config.yaml NOTICE "$top/SOURCES/"
  cp LICENSES/*.txt "$top/SOURCES/"
  [ -f docs/operations.md ] && cp docs/operations.md "$top/SOURCES/" || : >"$top/SOURCES/operations.md"
  local kind
  kind=$(cat "$KIND_FILE" 2>/dev/null || echo unknown)
  log "rpmbuild: ja4ebpf $VERSION ($kind build, $ARCH)"
  # --target sets the header's architecture (the spec builds nothing, so any host can package either).
  rpmbuild -bb --quiet --target "$ARCH" \
    --define "_topdir $top" --define "_tmppath $top/tmp" \
    --define "ja4ebpf_version $VERSION" --define "ja4ebpf_build_kind $kind" \
    rpm/ja4ebpf.spec >&2 || die "rpmbuild failed"
  mkdir -p dist/rpm
  rm -f dist/rpm/*."$ARCH".rpm
  find "$top/RPMS" -name "*.$ARCH.rpm" -exec cp {} dist/rpm/ \;
  ls dist/rpm/*."$ARCH".rpm >/dev/null 2>&1 || die "rpmbuild made no $ARCH package"
  local f
  for f in dist/rpm/*."$ARCH".rpm; do log "built $f ($(($(stat -c %s "$f") / 1048576)) MiB)"; done
}

[ $want_runtime = 1 ] && runtime_deno "$ELF_MACHINE"
[ $want_bin = 1 ] && build_bin
[ $want_rpm = 1 ] && build_rpm
exit 0
