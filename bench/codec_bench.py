#!/usr/bin/python3
"""Benchmark cltfs's codecs (zstd, raw, exp4) against each other on one tree.

Usage (run with /usr/bin/python3, which has torch):

    codec_bench.py [--cltfs build/cltfs] [--decoder BIN] [--tree DIR]
                   [--codecs zstd,raw,exp4] [--rounds 3] [--threads N]
                   [--workdir DIR] [--keep] [--quick] [--total-mb 1100]
                   [--cache-mb 256]

The tree is bench.py's default (tests/gen_tree.py: bf16, d=4096, a
32-layer model's L0..L30, 16 targets, one sample per batch; made once and
reused from --workdir), or --tree DIR, an existing materialized tree.  It
is imported once per codec (`cltfs import --codec C`), and for each codec
the benchmark reports:

    store / materialized      du of the store over du of the tree
    decode GB/s, 1 core       every frame of the store decoded as a read
    decode GB/s, all cores    decodes it (frame, then the CRC-32 against
                              its record), raw bytes out per second, by
                              bench/codec_decode.c: cltfs's own decoder
                              (libcltfs_codec.a), best of --rounds; on
                              --threads threads (default: every CPU)
    cold read GB/s            1 MiB sequential reads of the largest y view
                              through a fresh mount (-f), page cache dropped
                              first (as root), best of --rounds but at least
                              5 (as bench.py's cold reads: they are short);
                              the rounds go through the codecs in turn, so
                              that noise spreads over all of them
    packs cached GB/s         the same read with the store's packs in the
                              page cache: decoding and FUSE without the disk

The decoder is compiled from bench/codec_decode.c with cc against the
libcltfs_codec.a beside --cltfs unless --decoder names a binary.  Nothing
is judged: the table is for choosing a codec.  Exit 1 when something fails
to run.  Mounts are always unmounted; the stores are removed unless --keep
(the generated tree stays in --workdir for the next run).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench                                     # noqa: E402
from bench import BenchError, Mount, log         # noqa: E402

CODECS = ("zstd", "raw", "exp4")


def build_decoder(a, workdir):
    """bench/codec_decode.c compiled against the codec library beside --cltfs."""
    lib = os.path.join(os.path.dirname(a.cltfs), "libcltfs_codec.a")
    if not os.path.exists(lib):
        raise BenchError("%s: missing (run make first), or give --decoder" % lib)
    out = os.path.join(workdir, "codec_decode")
    libs = subprocess.run(["pkg-config", "--libs", "libzstd", "libcjson", "zlib"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    libs = libs.stdout.split() if libs.returncode == 0 else ["-lzstd", "-lcjson", "-lz"]
    cmd = [os.environ.get("CC", "cc"), "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra",
           "-I" + os.path.join(REPO, "codec"), os.path.join(HERE, "codec_decode.c"), lib] + libs + \
          ["-lpthread", "-lm", "-o", out]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise BenchError("compiling the decoder failed: %s\n%s" % (" ".join(cmd), r.stdout))
    return out


def import_store(a, tree, store, codec):
    if os.path.exists(store):
        shutil.rmtree(store)
    t0 = time.perf_counter()
    r = subprocess.run([a.cltfs, "import", store, tree, "--codec", codec, "--quiet"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError("cltfs import --codec %s failed (%d): %s" % (
            codec, r.returncode, r.stderr.decode("utf-8", "replace").strip()))
    return dt


def decode_rates(a, decoder, store):
    cmd = [decoder, store, "--rounds", str(a.rounds)] + (["--threads", str(a.threads)] if a.threads else [])
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise BenchError("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
    return json.loads(r.stdout)


def largest_y(a, store, mnt):
    """The largest y view's name and size, as a mount serves it."""
    m = Mount("cltfs", [a.cltfs, store, mnt, "-f", "-o", "cache_mb=%d" % a.cache_mb], mnt).start()
    try:
        sizes = {}
        for d in sorted(os.listdir(mnt)):
            if d.startswith("L"):
                for f in os.listdir(os.path.join(mnt, d)):
                    if f.endswith("_y.pt"):
                        sizes[d + "/" + f] = os.path.getsize(os.path.join(mnt, d, f))
    finally:
        m.stop()
    if not sizes:
        raise BenchError("%s: no y views" % store)
    name = max(sizes, key=lambda f: (sizes[f], f))
    return name, sizes[name]


def read_once(a, store, mnt, view, nbytes, cold):
    """Seconds for one sequential read of view through a fresh mount."""
    if cold:
        dropped = bench.drop_caches()
    else:
        bench.warm(list(bench.walk_files(store)))
        dropped = False
    m = Mount("cltfs", [a.cltfs, store, mnt, "-f", "-o", "cache_mb=%d" % a.cache_mb], mnt).start()
    try:
        return bench.timed_read(os.path.join(mnt, view), nbytes), dropped, m.read_ahead_kb()
    finally:
        m.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cltfs", default=os.path.join(REPO, "build", "cltfs"))
    ap.add_argument("--decoder", default=None,
                    help="a built bench/codec_decode.c (default: compiled into the workdir)")
    ap.add_argument("--tree", default=None, help="import this materialized tree instead of generating one")
    ap.add_argument("--codecs", default=",".join(CODECS), help="comma-separated (default: all)")
    ap.add_argument("--rounds", type=int, default=3, help="repeats, best taken (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="decoding threads for 'all cores' (default: every CPU)")
    ap.add_argument("--workdir", default=None,
                    help="work here and keep the generated tree for the next run (default: a temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the stores too")
    ap.add_argument("--quick", action="store_true", help="a ~64 MB tree (d=1024), for smoke tests")
    ap.add_argument("--total-mb", type=float, default=None,
                    help="materialized tree size (default 1100, as bench.py; 64 with --quick)")
    ap.add_argument("--d", type=int, default=None, help="d_model (default 4096; 1024 --quick)")
    ap.add_argument("--n-layers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-mb", type=int, default=256)
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if a.total_mb is None:
        a.total_mb = 64.0 if a.quick else 1100.0
    a.cltfs = os.path.abspath(a.cltfs)
    codecs = [c for c in a.codecs.split(",") if c]
    bad = [c for c in codecs if c not in CODECS]
    if bad or not codecs:
        ap.error("--codecs takes some of %s" % ", ".join(CODECS))
    if a.rounds < 1 or a.threads < 0:
        ap.error("--rounds must be >= 1 and --threads >= 0")
    if not os.access(a.cltfs, os.X_OK):
        print("codec_bench: %s: not an executable (run make first)" % a.cltfs, file=sys.stderr)
        return 1

    bench.unwind_on_signals()
    workdir, tmp = bench.workdir_of(a, "cltfs-codec-bench-")
    stores = {c: os.path.join(workdir, "store-" + c) for c in codecs}
    try:
        return run(a, workdir, codecs, stores)
    except (BenchError, OSError, ValueError, subprocess.SubprocessError) as e:
        print("codec_bench: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("codec_bench: interrupted (%s)" % e, file=sys.stderr)
        return 1
    finally:
        Mount.stop_all()
        if tmp and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not a.keep:
            for s in stores.values():
                shutil.rmtree(s, ignore_errors=True)


def run(a, workdir, codecs, stores):
    if a.tree:
        tree = os.path.abspath(a.tree)
        if not os.path.isdir(tree):
            raise BenchError("%s: not a directory" % tree)
        desc = None
    else:
        desc = bench.make_tree(a, workdir)
        tree = desc["out"]
    decoder = os.path.abspath(a.decoder) if a.decoder else build_decoder(a, workdir)
    tree_alloc, tree_app = bench.du(tree)
    mnt = os.path.join(workdir, "mnt")

    res = {}
    for c in codecs:
        t_import = import_store(a, tree, stores[c], c)
        alloc, app = bench.du(stores[c])
        res[c] = {"import_s": t_import, "store_alloc": alloc, "store_app": app}
        log("%s: imported in %.2f s, %.1f MB" % (c, t_import, alloc / 1e6))
    for c in codecs:
        res[c]["decode"] = decode_rates(a, decoder, stores[c])
        d = res[c]["decode"]
        log("%s: decode %.2f GB/s on 1 core, %.2f GB/s on %d" % (
            c, d["decode_gbs_1"], d["decode_gbs_all"], d["threads"]))

    view, nbytes = largest_y(a, stores[codecs[0]], mnt)   # the same views whatever the codec
    dropped_all, ra = True, set()
    for c in codecs:
        res[c]["cold"], res[c]["warm"] = [], []
    reads = max(a.rounds, 5)    # short reads, a noisy machine: as bench.py's cold reads
    for rnd in range(reads):
        for c in codecs:
            dt, dropped, kb = read_once(a, stores[c], mnt, view, nbytes, cold=True)
            res[c]["cold"].append(dt)
            dropped_all &= dropped
            ra.add(kb)
            res[c]["warm"].append(read_once(a, stores[c], mnt, view, nbytes, cold=False)[0])
        log("round %d cold read of %s: %s" % (rnd + 1, view, ", ".join(
            "%s %.3f s" % (c, res[c]["cold"][-1]) for c in codecs)))

    # ---- report
    print()
    what = ("bench.py's default tree, %d files (d=%d, %d layers, %d batch(es))" % (
        len(desc["files"]), desc["d"], len(desc["layers"]), desc["n_batches"]) if desc else tree)
    print("cltfs codec benchmark: %s, %.1f MB materialized; best of %d rounds (reads: of %d)" % (
        what, tree_alloc / 1e6, a.rounds, reads))
    print("cold read: %s (%.1f MB, 1 MiB reads), page cache %s; kernel read_ahead_kb %s" % (
        view, nbytes / 1e6, "dropped" if dropped_all else "NOT dropped (not root)",
        "/".join(str(k) for k in sorted(ra, key=str))))
    threads = res[codecs[0]]["decode"]["threads"]
    head = ("codec", "store/mat", "store MB", "import s", "decode 1 core", "decode %d cores" % threads,
            "cold read", "packs cached")
    print()
    print("%-6s %10s %9s %9s %14s %15s %10s %13s" % head)
    print("%-6s %10s %9s %9s %14s %15s %10s %13s" % ("", "", "", "", "GB/s", "GB/s", "GB/s", "GB/s"))
    for c in codecs:
        r, d = res[c], res[c]["decode"]
        print("%-6s %10.4f %9.1f %9.2f %14.2f %15.2f %10.2f %13.2f" % (
            c, r["store_alloc"] / tree_alloc, r["store_alloc"] / 1e6, r["import_s"], d["decode_gbs_1"],
            d["decode_gbs_all"], nbytes / min(r["cold"]) / 1e9, nbytes / min(r["warm"]) / 1e9))
    print()
    for c in codecs:
        r, d = res[c], res[c]["decode"]
        print("  %s: frames %d (%s), %.1f MB raw in %.1f MB frames (%.3f); cold reads %s s; packs cached %s s" % (
            c, d["frames"], ", ".join("%s %d" % kv for kv in d["codecs"].items()), d["raw_bytes"] / 1e6,
            d["frame_bytes"] / 1e6, d["frame_bytes"] / d["raw_bytes"],
            " ".join("%.3f" % t for t in r["cold"]), " ".join("%.3f" % t for t in r["warm"])))
    print("  tree: %.1f MB allocated (%.1f MB apparent)" % (tree_alloc / 1e6, tree_app / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
