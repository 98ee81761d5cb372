#!/usr/bin/python3
"""Benchmark -o shuffle=SEED: an epoch of shuffled token batches against
the same epoch unshuffled, side by side in one run.

Usage (run with /usr/bin/python3, which has torch):

    shuffle_bench.py [--cltfs build/cltfs] [--rounds 3] [--batch-rows 4096]
                     [--cache-mb 256] [--workdir DIR] [--keep]

The tree (tests/gen_tree.py, made once and reused from --workdir): bf16,
d=2048, layers 0-1 of a 4-layer model, 2 targets, 48 batches of 4 samples
of 100-600 tokens (about 70,000 rows: 290 MB a stream).  One store, mounted
with -o batch_rows=B, and then with -o shuffle=1 and shuffle_window of 4
and 16 chunks, the default (what a quarter of the cache holds for x and
every target), and 0 (one permutation of all rows) with a cache that
holds the three streams it reads (-o cache_mb=1400).  Each mount is fresh
(the store's packs in the page cache), and reads every L0 batch_k_x.pt and
batch_k_y.pt with torch.load; the variants take turns within each round.

For each variant it prints the epoch's GB/s, its ratio to the unshuffled
epoch (best of --rounds each), and how random the batches are: the chunks
a batch's rows come from on average (unshuffled: B / chunk_rows; a full
permutation: every chunk of the store), found by matching each served row
to its row in the unshuffled epoch.  Exit 1 when something fails to run or
a shuffled epoch is not a permutation of the unshuffled one.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench                                     # noqa: E402
from bench import BenchError, Mount, log         # noqa: E402

PARAMS = dict(layers="0-1", n_layers=4, batches=48, samples_per_batch=4, d=2048,
              dtype="bfloat16", n_targets=2, min_tokens=100, max_tokens=600, seed=11)


def epoch(torch, mnt, nb):
    t0 = time.perf_counter()
    xs, nbytes = [], 0
    for k in range(nb):
        for s in "xy":
            p = os.path.join(mnt, "L0", "batch_%d_%s.pt" % (k, s))
            nbytes += os.path.getsize(p)
            obj = torch.load(p)
            if s == "x":
                xs.append(obj["x"])
            del obj
    return time.perf_counter() - t0, nbytes, xs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cltfs", default=os.path.join(bench.REPO, "build", "cltfs"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--cache-mb", type=int, default=256)
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    workdir = a.workdir or os.path.join(tempfile.gettempdir(), "cltfs-shuffle-bench")
    os.makedirs(workdir, exist_ok=True)
    try:
        run(a, torch, workdir)
    except BenchError as e:
        print("shuffle_bench: %s" % e, file=sys.stderr)
        return 1
    finally:
        Mount.stop_all()
        if not a.keep:
            shutil.rmtree(os.path.join(workdir, "store"), ignore_errors=True)
    return 0


def run(a, torch, workdir):
    a.read_ahead_kb = None
    desc = bench.make_tree(a, workdir, dict(PARAMS), "tree")
    store = os.path.join(workdir, "store")
    bench.import_store(a, desc["out"], store)
    man = json.load(open(os.path.join(store, "cltfs.json")))
    chunk_rows = man["chunk_rows"]
    variants = [("unshuffled", ""), ("window 4 chunks", ",shuffle=1,shuffle_window=4"),
                ("window 16 chunks", ",shuffle=1,shuffle_window=16"), ("default window", ",shuffle=1"),
                # a full permutation is cheap only when the cache holds every chunk
                # it reads (with 256 MiB here: 0.007x, a chunk decoded per row)
                ("full, cache 1400M", ",shuffle=1,shuffle_window=0,cache_mb=1400")]
    mnt = os.path.join(workdir, "mnt")
    os.makedirs(mnt, exist_ok=True)
    packs = list(bench.walk_files(store))
    times = {v: [] for v, _ in variants}
    served = {}
    info = {}
    nb = None
    for rnd in range(a.rounds):
        order = variants if rnd % 2 == 0 else variants[::-1]
        for name, extra in order:
            bench.warm(packs)
            m = Mount(name, [a.cltfs, store, mnt, "-f", "-o",
                             "cache_mb=%d,batch_rows=%d%s" % (a.cache_mb, a.batch_rows, extra)], mnt)
            m.start()
            if nb is None:
                nb = sum(1 for f in os.listdir(os.path.join(mnt, "L0")) if f.endswith("_x.pt"))
            dt, nbytes, xs = epoch(torch, mnt, nb)
            with open(os.path.join(mnt, ".cltfs", "stats")) as f:
                info[name] = json.load(f).get("shuffle")
            m.stop()
            times[name].append((dt, nbytes))
            if name not in served:
                served[name] = xs
            log("round %d: %s: %.2f s, %.2f GB/s" % (rnd + 1, name, dt, nbytes / dt / 1e9))
    # which stream row each served row is: rows are random, so unique
    base = torch.cat(served["unshuffled"])
    index = {bytes(r.view(torch.int16).numpy()): i for i, r in enumerate(base)}
    if len(index) != len(base):
        raise BenchError("rows of the tree are not unique; cannot match them")
    print()
    print("shuffle benchmark: %d rows, d=%d, batch_rows=%d, chunk_rows=%d, cache_mb=%d; "
          "epoch = torch.load of every L0 x and y file (%d batches, best of %d)" % (
              len(base), PARAMS["d"], a.batch_rows, chunk_rows, a.cache_mb, nb, a.rounds))
    print()
    print("  %-18s %9s %14s %20s %s" % ("variant", "GB/s", "/ unshuffled", "chunks a batch", "windows"))
    best = {v: min(t[0] / t[1] for t in ts) for v, ts in times.items()}  # s per byte
    for name, _ in variants:
        rows = [index.get(bytes(r.view(torch.int16).numpy()), -1) for x in served[name] for r in x]
        if sorted(rows) != list(range(len(base))):
            raise BenchError("%s: the epoch is not a permutation of the unshuffled one" % name)
        per_batch, at = [], 0
        for x in served[name]:
            per_batch.append(len({r // chunk_rows for r in rows[at:at + len(x)]}))
            at += len(x)
        sh = info.get(name) or {}
        print("  %-18s %9.2f %14.3f %20.1f %s" % (
            name, 1 / best[name] / 1e9, best["unshuffled"] / best[name],
            sum(per_batch) / len(per_batch),
            "%d of %d chunks" % (sh["windows"], sh["window_chunks"]) if sh else "-"))
    print()
    print("  chunks a batch: the distinct chunks (of %d rows) a batch's rows come from, on average;"
          % chunk_rows)
    print("  the store has %d chunks a stream." % ((len(base) + chunk_rows - 1) // chunk_rows))


if __name__ == "__main__":
    sys.exit(main())
