#!/usr/bin/env bash
# Downloads the guest's userland for another architecture (Debian 12 packages: busybox-static, nginx, Apache,
# curl, libbpf and every package they depend on) and unpacks them into one root, from which
# build-initramfs.sh copies the programs and the libraries they need.
#   tests/kernels/fetch-userland.sh ARCH        ARCH: arm64
# Prints the root's directory (cache/userland-ARCH/root) as its last line. Uses the private apt lists of
# fetch.sh: the system's sources, lists and dpkg architectures are never touched.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KERNELS_CACHE:-$HERE/cache}
arch=${1:?usage: fetch-userland.sh ARCH (arm64)}
log() { echo "fetch-userland: $*" >&2; }
case $arch in
  arm64 | aarch64) arch=arm64 ;;
  *) echo "fetch-userland: unsupported architecture '$arch' (arm64)" >&2; exit 2 ;;
esac
suite=bookworm
# What the guest runs; the libraries come with their packages' dependencies.
want=(busybox-static nginx-light apache2-bin curl libbpf1 libgcc-s1 libc6)
dir=$CACHE/userland-$arch
root=$dir/root
stamp="$suite ${want[*]}"
if [ -d "$root" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$root"
  exit 0
fi

# The kernel's apt lists for this architecture (fetch.sh makes and refreshes them).
bash "$HERE/fetch.sh" 6.1 --arch "$arch" >/dev/null
apt_dir=$CACHE/apt/$suite-$arch
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1"
  -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root" -o "APT::Architecture=$arch")
# The whole dependency closure (real packages only): about 90 packages, most of them libraries; only the
# files the guest's programs need go into the image.
mapfile -t pkgs < <(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "${want[@]}" | grep -v '^[ <]' | sort -u)
[ ${#pkgs[@]} -gt 0 ] || { echo "fetch-userland: apt-cache found no packages" >&2; exit 1; }
mkdir -p "$dir/debs"
log "downloading ${#pkgs[@]} $arch packages"
(cd "$dir/debs" && apt-get "${apt_opts[@]}" download -qq "${pkgs[@]}" >&2)
rm -rf "$root.tmp"
mkdir -p "$root.tmp"
for p in "${pkgs[@]}"; do
  # The newest downloaded version of each package.
  deb=$(ls -t "$dir/debs/${p}_"*"_${arch}.deb" "$dir/debs/${p}_"*_all.deb 2>/dev/null | head -1 || true)
  [ -n "$deb" ] || { echo "fetch-userland: $p was not downloaded" >&2; exit 1; }
  dpkg-deb -x "$deb" "$root.tmp"
done
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$stamp" >"$dir/stamp"
log "$(du -sh "$root" | cut -f1) in $root"
echo "$root"
