#!/bin/sh
# make demo: a small activation tree written by torch.save, imported into a
# store, mounted at ./activations, read with a DataLoader, unmounted.
set -eu
PY=/usr/bin/python3
BIN="$(pwd)/build/cltfs"
WORK="$(pwd)/build/demo"
MNT="$(pwd)/activations"

cleanup() {
	if grep -qs " $MNT fuse" /proc/mounts; then fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT"; fi
	[ -n "${PID:-}" ] && wait "$PID" 2>/dev/null || true
	rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

rm -rf "$WORK"
mkdir -p "$WORK" "$MNT"
echo "== 1. a materialized CLT tree, as the reference capture writes it (torch.save, bf16, 16 targets)"
$PY tests/gen_tree.py "$WORK/tree" --layers 0-11 --n-layers 13 --batches 16 --d 512 \
	--min-tokens 40 --max-tokens 120 --seed 1 >/dev/null
du -sh "$WORK/tree" | sed 's/^/   /'

echo "== 2. cltfs import: each distinct stream stored once, shuffled and zstd-compressed, verified"
"$BIN" import "$WORK/store" "$WORK/tree" | sed 's/^/   /'

echo "== 3. mount it where the symlink used to be: $MNT"
"$BIN" "$WORK/store" "$MNT" -f -o cache_mb=64 &
PID=$!
i=0
until grep -qs " $MNT fuse" /proc/mounts; do
	i=$((i + 1)); [ $i -lt 100 ] || { echo "mount did not come up" >&2; exit 1; }
	sleep 0.1
done
ls "$MNT" | head -3 | sed 's/^/   /'; echo "   ..."
ls -l "$MNT/L0" | head -4 | sed 's/^/   /'

echo "== 4. a DataLoader with 4 workers reads it as plain files, the way a CLT trainer does"
$PY tests/demo_loader.py "$MNT" "$WORK/tree"

echo "== 5. what the filesystem did (.cltfs/stats) and what the store costs (cltfs stat)"
sed 's/^/   /' "$MNT/.cltfs/stats"
"$BIN" stat "$WORK/store" | sed 's/^/   /'
echo "== done: unmounting"
