#!/bin/sh
# A Debian 13 (trixie) root with its python3-torch (torch 2.6) for the
# compatibility tests, tests/test_torch2.py: the host has Debian 12's torch
# 1.13, users train with torch 2, whose torch.load differs (weights_only by
# default, mmap=True, a newer writer).  Made once with debootstrap (about
# 75 s and 1.3 GB), then left alone.  Without root (debootstrap and the
# tests' chroot need it) it says so and exits 0: the tests then skip,
# saying why.
#
#   sh tools/torch2_root.sh [DIR]      (default build/torch2-root)
#   CLTFS_DEBIAN_MIRROR=URL            (default http://deb.debian.org/debian)
set -e
root=${1:-build/torch2-root}
[ -f "$root/.cltfs-ready" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "cltfs: not root: no torch 2 root made at $root (tests/test_torch2.py will skip)" >&2
	exit 0
fi
mirror=${CLTFS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
echo "cltfs: making a Debian 13 root with torch 2.6 at $root for tests/test_torch2.py (once; about 1.3 GB)" >&2
mkdir -p "$(dirname "$root")"
rm -rf "$root.part"
if ! debootstrap --variant=minbase --include=python3-torch,python3-numpy trixie "$root.part" "$mirror" \
	>"$root.log" 2>&1; then
	echo "cltfs: debootstrap of trixie from $mirror failed; the last lines of $root.log:" >&2
	tail -5 "$root.log" >&2
	exit 1
fi
rm -f "$root.part"/var/cache/apt/archives/*.deb # 216 MB nobody reads again
rm -rf "$root"
mv "$root.part" "$root"
touch "$root/.cltfs-ready"
