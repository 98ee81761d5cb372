#!/bin/sh
# make demo: capture on a miss.  A tiny random LLaVA-1.5-shaped checkpoint
# and a few AMBER-style queries with images; `cltfs init` sizes every file
# from the tokenizer alone; the mount at ./activations runs the model when
# a file is first read (a DataLoader with 4 workers), then serves the
# stored chunks.
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

mount_store() {
	"$BIN" "$WORK/store" "$MNT" -f -o cache_mb=64 &
	PID=$!
	i=0
	until grep -qs " $MNT fuse" /proc/mounts; do
		i=$((i + 1)); [ $i -lt 100 ] || { echo "mount did not come up" >&2; exit 1; }
		sleep 0.1
	done
}

rm -rf "$WORK"
mkdir -p "$WORK" "$MNT"
echo "== 1. a checkpoint as snapshot_download leaves it (tiny, random, LLaVA-1.5's layout) and 8 queries"
$PY tests/make_llava.py "$WORK/model" --layers 6 --dataset "$WORK/amber" --n 8 >/dev/null
ls "$WORK/model" | tr '\n' ' ' | fold -s -w 90 | sed 's/^/   /'; echo
ls "$WORK/amber/images" | tr '\n' ' ' | sed 's/^/   /'; echo

echo "== 2. cltfs init: the manifest, every sample's rows from the tokenizer alone (no model run)"
"$BIN" init "$WORK/store" --model "$WORK/model" --dataset "$WORK/amber/queries.json" \
	--image-dir "$WORK/amber/images" --n-targets 16 | sed 's/^/   /'

echo "== 3. mount it: every file is listed with its size, nothing is captured yet"
mount_store
ls -l "$MNT/L0" | head -4 | sed 's/^/   /'
sed 's/^/   /' "$MNT/.cltfs/stats" | head -1

echo "== 4. read it with a DataLoader: a miss runs the model (CLIP, projector, LLaMA) once per batch"
$PY tests/demo_loader.py "$MNT" --capture

echo "== 5. what the filesystem did (.cltfs/stats) and what is stored now (cltfs stat)"
sed 's/^/   /' "$MNT/.cltfs/stats"
fusermount3 -u "$MNT"; wait "$PID" 2>/dev/null || true; PID=
"$BIN" stat "$WORK/store" | sed 's/^/   /'

echo "== 6. mounted again: served from the store, the model does not run"
mount_store
$PY tests/demo_loader.py "$MNT"
sed 's/^/   /' "$MNT/.cltfs/stats" | head -1
echo "== done: unmounting (cltfs import STORE TREE stores an existing materialized tree the same way)"
