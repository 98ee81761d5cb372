#!/bin/sh
# make torch2-check: cltfs built and its capture tested on Debian 13, inside
# the root tools/torch2_root.sh made: gcc 14, libfuse 3.17, Python 3.13 and
# libtorch 2.6 (the host has gcc 12 and libtorch 1.13; a user capturing on
# a GPU builds against a torch 2).  The working tree's files (tracked, and
# untracked ones git does not ignore) are copied into the root, built there
# with `make all` (-Werror), and the tests of capture, mounts, views, listings and
# errors run there: the capture library on libtorch 2.6 against
# tests/llava_ref.py on torch 2.6, the daemon on libfuse 3.17, by real
# mounts.  About 2 minutes.  Without the root (made only as root)
# it says so and exits 0.
#
#   sh tools/torch2_check.sh [ROOT]    (default build/torch2-root)
set -eu
root=${1:-build/torch2-root}
if [ ! -f "$root/.cltfs-ready" ] || [ "$(id -u)" != 0 ]; then
	echo "cltfs: torch2-check skipped: no torch 2 root at $root, or not root (make torch2-root, as root)" >&2
	exit 0
fi
inner=/tmp/cltfs-src-$$
mounted=""
cleanup() {
	for m in $mounted; do umount -l "$root/$m" 2>/dev/null || true; done
	rm -rf "${root:?}$inner"
}
trap cleanup EXIT INT TERM
for m in proc dev sys; do
	if ! mountpoint -q "$root/$m"; then
		# --rbind: /dev/pts too (tests/test_cli.py's progress on a tty);
		# rslave: unmounting them here must not unmount the host's
		if [ "$m" = proc ]; then
			mount -t proc proc "$root/proc"
		else
			mount --rbind "/$m" "$root/$m"
			mount --make-rslave "$root/$m"
		fi
		mounted="$m $mounted"
	fi
done
mkdir -p "$root$inner"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -
else # a source tree without git: all of it but the build
	tar --exclude=./build -cf - .
fi | tar -C "$root$inner" -xf -
echo "cltfs: torch2-check: building in $root (Debian 13, libtorch 2.6) and running its tests there" >&2
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LC_ALL=C.UTF-8 /bin/sh -c "
	set -e
	cd $inner
	make -s -j2 all
	build/cltfs --version
	xdist=\$(python3 -c 'import xdist' 2>/dev/null && echo \"-n \$(nproc) --dist loadfile\" || true)
	CLTFS_BIN=$inner/build/cltfs python3 -m pytest -q -p no:cacheprovider --basetemp=$inner/pytest \$xdist \\
		tests/test_capture.py tests/test_import_mount.py tests/test_views.py tests/test_errors.py \\
		tests/test_shuffle.py tests/test_normstats.py tests/test_codecs.py tests/test_cli.py \\
		tests/test_scale.py::test_listing_names_builds_no_inodes"
