#!/bin/sh
# A Debian 13 (trixie) root with its python3-torch (torch 2.6) for the
# compatibility checks: tests/test_torch2.py (views loaded by torch 2.6)
# and tools/torch2_check.sh (cltfs built against libtorch 2.6 with gcc 14,
# its capture tested there).  The host has Debian 12's torch 1.13; users
# train with torch 2, whose torch.load differs (weights_only by default,
# mmap=True, a newer writer).  Made once with debootstrap (about 100 s and
# 2 GB), again only when the package list below changes.  Without root
# (debootstrap and the chroot need it) it says so and exits 0: the checks
# then skip, saying why.
#
#   sh tools/torch2_root.sh [DIR]      (default build/torch2-root)
#   CLTFS_DEBIAN_MIRROR=URL            (default http://deb.debian.org/debian)
set -e
root=${1:-build/torch2-root}
# debootstrap resolves --include's dependencies only in part: the base
# with torch by it, the rest by the root's own apt.
base=python3-torch,python3-numpy
pkgs="python3-pytest python3-pytest-xdist python3-pil python3-sentencepiece sentencepiece fuse3 build-essential pkg-config
libfuse3-dev libzstd-dev libcjson-dev zlib1g-dev libcurl4-openssl-dev libssl-dev libtorch-dev
libsentencepiece-dev libjpeg62-turbo-dev libpng-dev time"
want=$(echo $base $pkgs)
[ "$(cat "$root/.cltfs-ready" 2>/dev/null)" = "$want" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "cltfs: not root: no torch 2 root made at $root (tests/test_torch2.py and torch2-check will skip)" >&2
	exit 0
fi
mirror=${CLTFS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
echo "cltfs: making a Debian 13 root with torch 2.6 at $root for tests/test_torch2.py and torch2-check (once; about 2 GB)" >&2
mkdir -p "$(dirname "$root")"
part=$root.part
rm -rf "$part"
fail() {
	echo "cltfs: $1; the last lines of $root.log:" >&2
	tail -5 "$root.log" >&2
	exit 1
}
debootstrap --variant=minbase --include="$base" trixie "$part" "$mirror" >"$root.log" 2>&1 ||
	fail "debootstrap of trixie from $mirror failed"
cp /etc/resolv.conf "$part/etc/resolv.conf"
mount -t proc proc "$part/proc"
trap 'umount -l "$part/proc" 2>/dev/null || true' EXIT INT TERM
chroot "$part" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
	/bin/sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $(echo $pkgs) && apt-get clean" \
	>>"$root.log" 2>&1 || fail "apt-get install in the new root failed"
umount -l "$part/proc"
rm -f "$part"/var/cache/apt/archives/*.deb # what debootstrap fetched: nobody reads it again
rm -rf "$root"
mv "$part" "$root"
echo "$want" >"$root/.cltfs-ready"
