#!/usr/bin/env bash
# Downloads one Debian kernel package and extracts vmlinuz + modules into the cache (ignored by git).
#   tests/kernels/fetch.sh VERSION [--arch amd64|arm64]        VERSION: 5.10 | 6.1 | 6.12
# Prints the kernel's cache directory (holding vmlinuz, release, package; for arm64 also btf, the kernel's
# own BTF cut out of its image) as its last line: cache/VERSION for amd64, cache/VERSION-arm64 for arm64.
# Uses private apt lists under the cache: the system's sources, lists and dpkg architectures are never touched.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KERNELS_CACHE:-$HERE/cache}
version=${1:?usage: fetch.sh VERSION (5.10, 6.1 or 6.12) [--arch amd64|arm64]}
arch=amd64
[ "${2:-}" = --arch ] && arch=${3:?--arch wants amd64 or arm64}
log() { echo "fetch: $*" >&2; }

case $arch in
  amd64 | x86_64 | x86) arch=amd64 suffix="" ;;
  arm64 | aarch64) arch=arm64 suffix=-arm64 ;;
  *) echo "fetch: unknown architecture '$arch' (amd64 or arm64)" >&2; exit 2 ;;
esac
case $version in
  5.10) suite=bullseye meta=linux-image-cloud-$arch ;;
  6.1) suite=bookworm meta=linux-image-cloud-$arch ;;
  6.12) suite=bookworm meta=linux-image-6.12-cloud-$arch ;;
  *) echo "fetch: unknown kernel version '$version' (known: 5.10 6.1 6.12)" >&2; exit 2 ;;
esac

dir=$CACHE/$version$suffix
if [ -s "$dir/vmlinuz" ] && [ -s "$dir/release" ] && { [ $arch = amd64 ] || [ -s "$dir/btf" ]; }; then
  echo "$dir"
  exit 0
fi

# The same mirror host as the system's own Debian sources: often the only one reachable.
mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
  head -1 | tr -d ' ' | sed 's:/$::' || true)
mirror=${mirror:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
apt_dir=$CACHE/apt/$suite$suffix
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$dir"
cat >"$apt_dir/sources.list" <<SRC
deb [signed-by=$keyring] $mirror $suite main
deb [signed-by=$keyring] $mirror-security $suite-security main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1"
  -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root"
  -o "APT::Architecture=$arch")
if [ ! -e "$apt_dir/updated" ] || [ -n "$(find "$apt_dir/updated" -mmin +1440)" ]; then
  log "apt-get update ($suite from $mirror)"
  apt-get "${apt_opts[@]}" update -qq >&2
  touch "$apt_dir/updated"
fi
# The meta package names the current ABI's image package.
# (awk reads to the end: an early exit could kill apt-cache with SIGPIPE, fatal under pipefail.)
pkg=$(apt-cache "${apt_opts[@]}" depends "$meta" | awk '/Depends: linux-image-[0-9]/ && !f {print $2; f = 1}')
[ -n "$pkg" ] || { echo "fetch: $meta has no linux-image dependency in $suite" >&2; exit 1; }
log "downloading $pkg"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" download -qq "$pkg" >&2)
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/x"
release=${pkg#linux-image-}
cp "$work/x/boot/vmlinuz-$release" "$dir/vmlinuz"
cp "$work/x/boot/config-$release" "$dir/config"
rm -rf "$dir/modules"
mv "$work/x/lib/modules/$release" "$dir/modules"
echo "$release" >"$dir/release.tmp"
basename "$deb" >"$dir/package"
if [ $arch = arm64 ]; then
  # The arm64 image is a gzip'd Image with no ELF headers: its .BTF section is found by its header (the BPF
  # build for arm64 takes its types from it; see docs/bpf.md).
  DENO=${DENO:-$HERE/../../.tools/deno/node_modules/deno/deno}
  command -v "$DENO" >/dev/null 2>&1 || DENO=$(command -v deno)
  "$DENO" run --allow-read --allow-write "$HERE/extract_btf.ts" "$dir/vmlinuz" "$dir/btf" >&2
fi
mv "$dir/release.tmp" "$dir/release"
echo "$dir"
