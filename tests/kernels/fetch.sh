#!/usr/bin/env bash
# Downloads one Debian kernel package and extracts vmlinuz + modules into the cache (ignored by git).
#   tests/kernels/fetch.sh VERSION        VERSION: 5.10 | 6.1 | 6.12
# Prints the kernel's cache directory (holding vmlinuz, release, package) as its last line.
# Uses private apt lists under the cache: the system's sources and lists are never touched.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KERNELS_CACHE:-$HERE/cache}
version=${1:?usage: fetch.sh VERSION (5.10, 6.1 or 6.12)}
log() { echo "fetch: $*" >&2; }

case $version in
  5.10) suite=bullseye meta=linux-image-cloud-amd64 ;;
  6.1) suite=bookworm meta=linux-image-cloud-amd64 ;;
  6.12) suite=bookworm meta=linux-image-6.12-cloud-amd64 ;;
  *) echo "fetch: unknown kernel version '$version' (known: 5.10 6.1 6.12)" >&2; exit 2 ;;
esac

dir=$CACHE/$version
if [ -s "$dir/vmlinuz" ] && [ -s "$dir/release" ]; then
  echo "$dir"
  exit 0
fi

# The same mirror host as the system's own Debian sources: often the only one reachable.
mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
  head -1 | tr -d ' ' | sed 's:/$::' || true)
mirror=${mirror:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
apt_dir=$CACHE/apt/$suite
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$dir"
cat >"$apt_dir/sources.list" <<SRC
deb [signed-by=$keyring] $mirror $suite main
deb [signed-by=$keyring] $mirror-security $suite-security main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1"
  -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
if [ ! -e "$apt_dir/updated" ] || [ -n "$(find "$apt_dir/updated" -mmin +1440)" ]; then
  log "apt-get update ($suite from $mirror)"
  apt-get "${apt_opts[@]}" update -qq >&2
  touch "$apt_dir/updated"
fi
# The meta package names the current ABI's image package.
pkg=$(apt-cache "${apt_opts[@]}" depends "$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
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
mv "$dir/release.tmp" "$dir/release"
echo "$dir"
