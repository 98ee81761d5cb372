#!/usr/bin/python3
"""Benchmark cltfs's metadata at scale: no model runs, no chunk is read.

Usage (run with /usr/bin/python3):

    scale.py --cltfs build/cltfs [--sizes 10000,100000,1000000] [--rounds 3]
             [--workdir DIR] [--no-find] [--fill-index build/fill_index]

For each size it generates a query list (tests/make_scale.py: a
LLaVA-1.5-7B-shaped checkpoint without weights, 32 layers, d=4096, 576
image rows) and times `cltfs init`, the mount until its first `ls`
answers, `cltfs stat` and `cltfs verify`; the per-sample cost at each
size against the smallest shows whether the curve is linear.  At 10^6 it
reads the daemon's memory beyond its chunk cache.  At 10^5 samples (2x10^5
files in a layer directory) it lists a layer directory against the same
number of empty files on ext4 (the disk this runs on), side by side in
each of --rounds interleaved rounds, best of the rounds: `ls -l`, and
Python's os.scandir + stat; and `find MNT -type f | wc -l` over the whole
mount.  With --fill-index (build/fill_index) it fills two whole streams of
the 10^5 store with all-zero chunks, as a finished capture leaves them, and
reads the mount's index memory per stored chunk and its daemon memory
against the empty store's.  Goals are ratios from one run, reported, not
asserted.
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
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

import make_scale  # noqa: E402
import bench  # noqa: E402
from bench import Mount, drop_caches, log, print_goals  # noqa: E402

MiB = 1 << 20
CACHE_MB = 16

GOALS = {
    "init of 10^6 samples, seconds": ("<=", 10.0),
    "init per sample, 10^6 / 10^4 (1: linear)": ("<=", 1.5),
    "mount of 10^6 samples until ls answers, s": ("<=", 1.0),
    "daemon MiB beyond the cache, 10^6 samples": ("<=", 64.0),
    "first ls -l of a 2x10^5-file layer / ext4": ("<=", 1.2),
    "os.scandir + stat of that layer / ext4": ("<=", 1.2),
    "index bytes a stored chunk (filled streams)": ("<=", 16.0),
}


def timed(argv, **kw):
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
    return time.perf_counter() - t0


def ls_l(d):
    t0 = time.perf_counter()
    r = subprocess.run(["ls", "-l", d], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError("ls -l %s: %s" % (d, r.stderr.decode().strip()))
    return time.perf_counter() - t0, r.stdout.count(b"\n") - 1


def scandir_stat(d):
    t0 = time.perf_counter()
    n = 0
    with os.scandir(d) as it:
        for e in it:
            os.stat(e.path)
            n += 1
    return time.perf_counter() - t0, n


def empty_files(d, n_batches):
    """The same names as a layer directory, empty, on the local disk."""
    if os.path.isdir(d) and len(os.listdir(d)) == 2 * n_batches:
        return
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for k in range(n_batches):
        for xy in "xy":
            os.close(os.open(os.path.join(d, "batch_%d_%s.pt" % (k, xy)), os.O_CREAT | os.O_WRONLY, 0o644))


def mount_until_ls(a, store, mnt):
    m = Mount("cltfs", [a.cltfs, store, mnt, "-f", "-o", "capture=off,cache_mb=%d" % CACHE_MB], mnt)
    t0 = time.perf_counter()
    m.start()
    os.listdir(mnt)
    return m, time.perf_counter() - t0


def run(a, workdir):
    sizes = sorted(int(s) for s in a.sizes.split(","))
    inputs = os.path.join(workdir, "inputs")
    res = {}
    for n in sizes:
        model, images, queries = make_scale.make_scale(inputs, n)
        store = os.path.join(workdir, "store-%d" % n)
        t_init, t_mount, t_stat, t_verify, beyond, peak = [], [], [], [], None, 0
        for rnd in range(a.rounds):
            shutil.rmtree(store, ignore_errors=True)
            t_init.append(timed([a.cltfs, "init", store, "--model", model, "--dataset", queries,
                                 "--image-dir", images, "--quiet"], timeout=600))
            t_stat.append(timed([a.cltfs, "stat", store], timeout=600))
            t_verify.append(timed([a.cltfs, "verify", store], timeout=600))
            mnt = os.path.join(workdir, "mnt")
            m, t = mount_until_ls(a, store, mnt)
            t_mount.append(t)
            os.listdir(os.path.join(mnt, "L0"))  # one layer listed: what a trainer starts with
            rss = m.status("VmRSS") / 1024
            with open(os.path.join(mnt, ".cltfs", "stats")) as f:  # what the chunk cache holds now
                cached = json.load(f)["cache"]["bytes"] / MiB
            beyond = rss - cached if beyond is None else min(beyond, rss - cached)
            peak = rss if rnd == 0 else min(peak, rss)
            m.stop()
        res[n] = dict(init=min(t_init), mount=min(t_mount), stat=min(t_stat), verify=min(t_verify),
                      beyond=beyond, rss=peak)
        log("%d samples: init %.2f s, mount %.3f s, stat %.2f s, verify %.2f s, daemon %.1f MiB beyond "
            "its chunk cache" % (n, res[n]["init"], res[n]["mount"], res[n]["stat"], res[n]["verify"], beyond))
    listing = filled = None
    n_list = 100_000 if 100_000 in res else None
    if n_list:
        listing = list_against_ext4(a, workdir, n_list)
    if n_list and a.fill_index:
        filled = filled_index(a, workdir, n_list)
    report(a, sizes, res, listing, filled)
    return 0


def filled_index(a, workdir, n):
    """Mount the n-sample store with x@0 and mlp@1 filled, beside it empty."""
    store = os.path.join(workdir, "store-%d" % n)
    full = os.path.join(workdir, "filled-%d" % n)
    shutil.rmtree(full, ignore_errors=True)
    shutil.copytree(store, full)
    t0 = time.perf_counter()
    subprocess.run([a.fill_index, full, "x@0", "mlp@1"], check=True, timeout=1200)
    log("filled x@0 and mlp@1 of %d samples in %.1f s" % (n, time.perf_counter() - t0))
    mnt = os.path.join(workdir, "mnt")
    out = {}
    try:
        for name, path in (("empty", store), ("filled", full)):
            best = None
            for _ in range(a.rounds):
                m, t = mount_until_ls(a, path, mnt)
                with open(os.path.join(mnt, ".cltfs", "stats")) as f:
                    st = json.load(f)
                rss = m.status("VmRSS") / 1024
                m.stop()
                if best is None or t < best["mount"]:
                    best = dict(mount=t, rss=rss if best is None else min(rss, best["rss"]), **st["index"])
                else:
                    best["rss"] = min(rss, best["rss"])
            out[name] = best
    finally:
        shutil.rmtree(full, ignore_errors=True)
    f = out["filled"]
    log("filled: %d chunks, index %.1f MiB (%.2f B a chunk), mount %.3f s, daemon %.1f MiB (empty: %.1f MiB, "
        "mount %.3f s)" % (f["chunks"], f["bytes"] / MiB, f["bytes"] / max(f["chunks"], 1), f["mount"], f["rss"],
                           out["empty"]["rss"], out["empty"]["mount"]))
    return out


def list_against_ext4(a, workdir, n):
    store = os.path.join(workdir, "store-%d" % n)
    ext = os.path.join(workdir, "ext4-empty")
    empty_files(ext, n)
    mnt = os.path.join(workdir, "mnt")
    t_ls, t_ext, s_ls, s_ext = [], [], [], []
    for rnd in range(a.rounds):
        # fresh mount (nothing cached) against ext4 with the page cache dropped
        dropped = drop_caches()
        m, _ = mount_until_ls(a, store, mnt)
        t, cnt = ls_l(os.path.join(mnt, "L0"))
        t_ls.append(t)
        m.stop()
        drop_caches()
        t, cnt_e = ls_l(ext)
        t_ext.append(t)
        if cnt != cnt_e:
            raise RuntimeError("ls -l: %d entries on the mount, %d on ext4" % (cnt, cnt_e))
        m, _ = mount_until_ls(a, store, mnt)
        s_ls.append(scandir_stat(os.path.join(mnt, "L1"))[0])
        m.stop()
        drop_caches()
        s_ext.append(scandir_stat(ext)[0])
        log("round %d: ls -l %.2f s vs ext4 %.2f s; scandir+stat %.2f s vs ext4 %.2f s%s" % (
            rnd + 1, t_ls[-1], t_ext[-1], s_ls[-1], s_ext[-1], "" if dropped else " (page cache not dropped)"))
    t_find = None
    if not a.no_find:
        m, _ = mount_until_ls(a, store, mnt)
        t0 = time.perf_counter()
        r = subprocess.run("find %s -type f | wc -l" % mnt, shell=True, capture_output=True, text=True)
        t_find = (time.perf_counter() - t0, int(r.stdout.strip() or 0))
        m.stop()
    return dict(ls=min(t_ls), ext=min(t_ext), scan=min(s_ls), scan_ext=min(s_ext), find=t_find,
                all_ls=t_ls, all_ext=t_ext, all_scan=s_ls, all_scan_ext=s_ext)


def report(a, sizes, res, listing, filled):
    lo, hi = sizes[0], sizes[-1]
    per = {n: res[n]["init"] / n for n in sizes}
    measured = {
        "init of 10^6 samples, seconds": res[1_000_000]["init"] if 1_000_000 in res else None,
        "init per sample, 10^6 / 10^4 (1: linear)": per[hi] / per[lo] if hi != lo else None,
        "mount of 10^6 samples until ls answers, s": res[1_000_000]["mount"] if 1_000_000 in res else None,
        "daemon MiB beyond the cache, 10^6 samples": res[1_000_000]["beyond"] if 1_000_000 in res else None,
        "first ls -l of a 2x10^5-file layer / ext4": listing["ls"] / listing["ext"] if listing else None,
        "os.scandir + stat of that layer / ext4": listing["scan"] / listing["scan_ext"] if listing else None,
        "index bytes a stored chunk (filled streams)":
            filled["filled"]["bytes"] / filled["filled"]["chunks"] if filled else None,
    }
    print()
    print("cltfs scale benchmark: LLaVA-1.5-7B shape (32 layers, d=4096), sizes %s, best of %d"
          % (", ".join(str(n) for n in sizes), a.rounds))
    print()
    print_goals(GOALS, measured)
    print()
    print("absolute numbers:")
    print("  %10s  %8s  %10s  %8s  %8s  %8s  %s" % ("samples", "init s", "us/sample", "mount s", "stat s",
                                                     "verify s", "daemon RSS MiB (cache_mb %d)" % CACHE_MB))
    for n in sizes:
        r = res[n]
        print("  %10d  %8.2f  %10.2f  %8.3f  %8.2f  %8.2f  %.1f" % (
            n, r["init"], 1e6 * r["init"] / n, r["mount"], r["stat"], r["verify"], r["rss"]))
    if listing:
        print("  layer directory of 2x10^5 files: ls -l %.2f s (%s), ext4 %.2f s (%s)" % (
            listing["ls"], " ".join("%.2f" % t for t in listing["all_ls"]), listing["ext"],
            " ".join("%.2f" % t for t in listing["all_ext"])))
        print("  os.scandir + stat: %.2f s (%s), ext4 %.2f s (%s)" % (
            listing["scan"], " ".join("%.2f" % t for t in listing["all_scan"]), listing["scan_ext"],
            " ".join("%.2f" % t for t in listing["all_scan_ext"])))
        if listing["find"]:
            t, cnt = listing["find"]
            print("  find MNT -type f | wc -l at 10^5 samples: %d files in %.1f s (%.0f files/s)" % (
                cnt, t, cnt / t))
    if filled:
        f, e = filled["filled"], filled["empty"]
        print("  10^5 samples, x@0 and mlp@1 filled (%d chunks): index %.1f MiB, mount %.3f s, daemon RSS %.1f "
              "MiB; empty: mount %.3f s, RSS %.1f MiB (%.1f B of RSS a chunk)" % (
                  f["chunks"], f["bytes"] / MiB, f["mount"], f["rss"], e["mount"], e["rss"],
                  (f["rss"] - e["rss"]) * MiB / f["chunks"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cltfs", default=os.path.join(REPO, "build", "cltfs"))
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="keep the inputs here and reuse them")
    ap.add_argument("--no-find", action="store_true", help="skip the find over the whole mount")
    ap.add_argument("--fill-index", default=None, help="build/fill_index: measure the index of filled streams")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    a.cltfs = os.path.abspath(a.cltfs)
    a.fill_index = a.fill_index and os.path.abspath(a.fill_index)
    workdir, tmp = bench.workdir_of(a, "cltfs-scale-")
    try:
        return run(a, workdir)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print("bench: %s" % e, file=sys.stderr)
        return 1
    finally:
        Mount.stop_all()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
