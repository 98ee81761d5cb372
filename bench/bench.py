#!/usr/bin/python3
"""Benchmark cltfs against the materialized tree and against zerofs.

Usage (run with /usr/bin/python3, which has torch):

    bench.py --cltfs build/cltfs --zerofs build/zerofs [--total-mb 1100]
             [--workdir DIR] [--quick] [--rounds 3] [--cache-mb 256]
             [--read-ahead-kb N]

It generates a reference-format tree with tests/gen_tree.py (bf16,
d=4096, a 32-layer model's L0..L30, 16 targets, one sample per batch),
imports it with `cltfs import`, mounts the store, and prints each goal as
a ratio of two numbers measured side by side in the same run:

    store bytes / materialized bytes          (du of both)         <= 0.10
    first torch.load of every file via the mount
        / torch.load of the original from the page cache           <= 1.5
    second torch.load via the mount / the same original read       <= 1.05
    cold sequential GB/s of the largest y view via the mount
        / the same bytes read from zerofs's zero.bin               >= 0.8
    peak daemon RSS (VmHWM) / (cache_mb + 64 MiB)                   <= 1

The machine is shared and noisy, so nothing is judged on an absolute
time: every ratio compares two measurements interleaved in each of
--rounds rounds, best of the rounds on each side.  Goals missed are
reported, not asserted: exit 0 unless something failed to run (1), or a
view's content differs from the original (1).  Mounts are always
unmounted.

Besides the table it prints the absolute numbers behind each ratio, and
for diagnosis: cltfs's cold read with the store's packs in the page cache
(its CPU path alone), the daemons' minor page faults per MiB served, a
4-reader parallel pass, .cltfs/stats, and both mounts' kernel readahead
(the kernel offers FUSE 128 KiB and ignores a larger max_readahead from
init; --read-ahead-kb sets /sys/class/bdi/<dev>/read_ahead_kb on both
mounts alike, as root).  With --workdir the generated tree is kept there
and reused by the next run with the same parameters.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MiB = 1 << 20
READ_SIZE = MiB                 # the 1 MiB reads of the sequential test

GOALS = {                       # metric -> (comparison, goal)
    "store / materialized bytes": ("<=", 0.10),
    "first torch.load: mount / original": ("<=", 1.5),
    "second torch.load: mount / original": ("<=", 1.05),
    "cold seq read: cltfs / zerofs GB/s": (">=", 0.8),
    "peak daemon RSS / (cache_mb + 64 MiB)": ("<=", 1.0),
}


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- mounts

class Mount:
    """A FUSE daemon run in the foreground (-f) as our child."""

    active = []                 # every mount not yet stopped, for cleanup

    def __init__(self, name, argv, mnt, read_ahead_kb=None):
        self.name, self.argv, self.mnt = name, argv, mnt
        self.ra_kb = read_ahead_kb  # set the bdi's read_ahead_kb after mount
        self.proc = None
        self.err = None
        self.hwm_kb = 0         # VmHWM read just before the last stop

    def start(self, timeout=30.0):
        os.makedirs(self.mnt, exist_ok=True)
        if os.path.ismount(self.mnt):
            raise BenchError("%s is already a mount point" % self.mnt)
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self.err, stderr=self.err)
        Mount.active.append(self)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise BenchError("%s exited with %d before mounting: %s\n  %s" % (
                    self.name, self.proc.returncode, " ".join(self.argv),
                    self.stderr().strip()))
            if time.monotonic() > deadline:
                raise BenchError("%s: no mount at %s after %.0f s" % (
                    self.name, self.mnt, timeout))
            time.sleep(0.005)
        if self.ra_kb:
            self.set_read_ahead_kb(self.ra_kb)
        return self

    def stderr(self):
        if self.err is None:
            return ""
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")[-4000:]

    def status(self, key):
        """A /proc/<pid>/status field in kB (VmHWM, VmRSS), 0 if gone."""
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except (OSError, ValueError, AttributeError):
            pass
        return 0

    def minflt(self):
        """Minor page faults of the daemon so far (0 if gone)."""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                return int(f.read().rsplit(")", 1)[1].split()[7])
        except (OSError, ValueError, IndexError, AttributeError):
            return 0

    def bdi_path(self):
        dev = os.stat(self.mnt).st_dev
        return "/sys/class/bdi/%d:%d/read_ahead_kb" % (os.major(dev), os.minor(dev))

    def read_ahead_kb(self):
        """The kernel readahead of this mount's bdi (None if unknown)."""
        try:
            with open(self.bdi_path()) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def set_read_ahead_kb(self, kb):
        try:
            with open(self.bdi_path(), "w") as f:
                f.write("%d\n" % kb)
        except OSError as e:
            raise BenchError("cannot set read_ahead_kb of %s: %s" % (self.mnt, e))

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.hwm_kb = max(self.hwm_kb, self.status("VmHWM"))
        if os.path.ismount(self.mnt):
            r = subprocess.run(["fusermount3", "-u", self.mnt],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode != 0:
                log("fusermount3 -u %s: %s; unmounting lazily" % (
                    self.mnt, r.stderr.decode().strip()))
                subprocess.run(["fusermount3", "-uz", self.mnt],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log("%s (pid %d) still running after unmount; killing it" % (
                self.name, self.proc.pid))
            self.proc.kill()
            self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        if self in Mount.active:
            Mount.active.remove(self)
        if rc not in (0, -signal.SIGTERM, -signal.SIGKILL):
            log("%s exited with status %d: %s" % (self.name, rc, self.stderr().strip()))

    @classmethod
    def stop_all(cls):
        for m in list(cls.active):
            try:
                m.stop()
            except Exception as e:  # keep unmounting the others
                log("cleanup of %s failed: %s" % (m.mnt, e))


def drop_caches():
    """Drop the page cache if we may; False when not root."""
    if os.geteuid() != 0:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- I/O helpers

def walk_files(root):
    for d, _, names in os.walk(root):
        for n in names:
            yield os.path.join(d, n)


def du(root):
    """(allocated bytes, apparent bytes) of the files under root."""
    alloc = apparent = 0
    for p in walk_files(root):
        st = os.lstat(p)
        alloc += st.st_blocks * 512
        apparent += st.st_size
    return alloc, apparent


def read_file(path, nbytes=None, bs=READ_SIZE, buf=None):
    """Read path sequentially with bs-byte reads; returns bytes read."""
    if buf is None:
        buf = bytearray(bs)
    mv = memoryview(buf)
    got = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while nbytes is None or got < nbytes:
            want = bs if nbytes is None else min(bs, nbytes - got)
            n = os.readv(fd, [mv[:want]])
            if n == 0:
                break
            got += n
    finally:
        os.close(fd)
    return got


def timed_read(path, nbytes):
    buf = bytearray(READ_SIZE)
    t0 = time.perf_counter()
    got = read_file(path, nbytes, buf=buf)
    dt = time.perf_counter() - t0
    if got != nbytes:
        raise BenchError("%s: read %d bytes, expected %d" % (path, got, nbytes))
    return dt


def warm(paths):
    buf = bytearray(READ_SIZE)
    for p in paths:
        read_file(p, buf=buf)


def load_all(torch, root, files):
    """Seconds to torch.load every file under root, one after another."""
    t0 = time.perf_counter()
    for f in files:
        obj = torch.load(os.path.join(root, f))
        del obj
    return time.perf_counter() - t0


def same(torch, a, b):
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(same(torch, a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(torch, x, y) for x, y in zip(a, b)))
    return a == b


# ---------------------------------------------------------------- the tree

def tree_params(a):
    """gen_tree.make_tree arguments for the requested size."""
    d = a.d if a.d else (1024 if a.quick else 4096)
    n_layers = a.n_layers
    layers = list(range(n_layers - 1))      # L0..L30 for 32 layers, as the reference
    esize = 2                                # bf16
    per_token = len(layers) * 17 * d * esize  # x + 16 targets per layer
    total = a.total_mb * 1e6
    # Batches of about 450 tokens (a LLaVA prompt is 200-700) when the
    # total allows several; else one batch sized to the total (d=4096 and
    # 1100 MB give one batch of ~255-320 tokens).
    batches = max(1, int(total // (per_token * 450)))
    t_mean = total / (batches * per_token)
    lo = max(8, int(t_mean))
    hi = max(lo, int(t_mean * 1.25))         # >= the requested total
    return dict(layers=layers, n_layers=n_layers, batches=batches,
                samples_per_batch=1, d=d, dtype="bfloat16", n_targets=16,
                min_tokens=lo, max_tokens=hi, seed=a.seed)


def make_tree(a, workdir):
    params = tree_params(a)
    tree = os.path.join(workdir, "tree")
    marker = os.path.join(workdir, "tree.json")
    if os.path.exists(marker):
        with open(marker) as f:
            old = json.load(f)
        if old.get("params") == params and os.path.isdir(tree):
            log("reusing %s" % tree)
            return old["desc"]
        os.unlink(marker)
    if os.path.exists(tree):
        shutil.rmtree(tree)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import gen_tree
    log("generating %s: %d layers x %d batch(es), d=%d, %d-%d tokens" % (
        tree, len(params["layers"]), params["batches"], params["d"],
        params["min_tokens"], params["max_tokens"]))
    t0 = time.perf_counter()
    desc = gen_tree.make_tree(tree, **params)
    log("generated %.1f MB in %.1f s" % (desc["bytes"] / 1e6, time.perf_counter() - t0))
    with open(marker, "w") as f:
        json.dump({"params": params, "desc": desc}, f)
    return desc


# ---------------------------------------------------------------- main

def print_goals(goals, measured):
    """The table of metric, measured, goal, status; goals {metric: (cmp,
    goal)}, a goal of None only reported, a measured None "n/a".  Also used
    by hub_bench.py."""
    w = max(len(k) for k in goals)
    print("%-*s  %9s  %7s  %s" % (w, "metric", "measured", "goal", "status"))
    print("-" * (w + 30))
    for k, (cmp, goal) in goals.items():
        v = measured[k]
        if goal is None:
            print("%-*s  %9s  %7s  %s" % (w, k, fmt_ratio(v), "-", "(reported)"))
            continue
        ok = "n/a" if v is None else "ok" if (v <= goal if cmp == "<=" else v >= goal) else "MISS"
        print("%-*s  %9s  %2s %4.2f  %s" % (w, k, fmt_ratio(v), cmp, goal, ok))


def fmt_ratio(v):
    return "%.3f" % v if v is not None else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cltfs", default=os.path.join(REPO, "build", "cltfs"))
    ap.add_argument("--zerofs", default=os.path.join(REPO, "build", "zerofs"))
    ap.add_argument("--total-mb", type=float, default=None,
                    help="materialized tree size (default 1100, 64 with --quick)")
    ap.add_argument("--workdir", default=None,
                    help="keep the tree here and reuse it (default: a temporary dir)")
    ap.add_argument("--quick", action="store_true", help="a ~64 MB tree, for smoke tests")
    ap.add_argument("--rounds", type=int, default=3, help="repeats, best taken (default 3)")
    ap.add_argument("--cache-mb", type=int, default=256)
    ap.add_argument("--d", type=int, default=None, help="d_model (default 4096; 1024 --quick)")
    ap.add_argument("--n-layers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--read-ahead-kb", type=int, default=1024,
                    help="after mounting, set both mounts' bdi read_ahead_kb to this, so the "
                         "zero-serving ceiling gets what cltfs sets for itself (default 1024, "
                         "cltfs's default; needs root)")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if a.total_mb is None:
        a.total_mb = 64.0 if a.quick else 1100.0
    a.cltfs = os.path.abspath(a.cltfs)
    a.zerofs = os.path.abspath(a.zerofs)
    for exe in (a.cltfs, a.zerofs):
        if not os.access(exe, os.X_OK):
            print("bench: %s: not an executable (run make first)" % exe, file=sys.stderr)
            return 1
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")

    # SIGTERM/SIGHUP unwind through the finally below, which unmounts.
    def on_signal(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = None
    if a.workdir:
        workdir = os.path.abspath(a.workdir)
        os.makedirs(workdir, exist_ok=True)
    else:
        workdir = tmp = tempfile.mkdtemp(prefix="cltfs-bench-", dir="/var/tmp")
    try:
        return run(a, workdir)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print("bench: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("bench: interrupted (%s)" % e, file=sys.stderr)
        return 1
    finally:
        Mount.stop_all()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(workdir, "store"), ignore_errors=True)


def run(a, workdir):
    import torch
    torch.set_num_threads(1)

    desc = make_tree(a, workdir)
    tree = desc["out"]
    files = list(desc["files"])
    store = os.path.join(workdir, "store")
    mnt_c = os.path.join(workdir, "mnt-cltfs")
    mnt_z = os.path.join(workdir, "mnt-zerofs")
    if os.path.exists(store):
        shutil.rmtree(store)

    # ---- import
    t0 = time.perf_counter()
    r = subprocess.run([a.cltfs, "import", store, tree],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t_import = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError("cltfs import failed (%d): %s" % (
            r.returncode, (r.stderr or r.stdout).decode("utf-8", "replace").strip()))
    log("import: %s (%.1f s)" % (r.stdout.decode().strip(), t_import))

    tree_alloc, tree_app = du(tree)
    store_alloc, store_app = du(store)
    stat_json = None
    r = subprocess.run([a.cltfs, "stat", store, "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode == 0:
        try:
            stat_json = json.loads(r.stdout)
        except ValueError:
            log("cltfs stat --json: not JSON: %r" % r.stdout[:200])
    else:
        log("cltfs stat --json failed (%d): %s" % (r.returncode, r.stderr.decode().strip()))

    cltfs = Mount("cltfs", [a.cltfs, store, mnt_c, "-f",
                            "-o", "cache_mb=%d" % a.cache_mb], mnt_c,
                  a.read_ahead_kb)
    # the same with -o share_zero_targets: what giving up the reference's
    # aliasing would save, in bytes and time
    mnt_s = os.path.join(workdir, "mnt-share")
    shared = Mount("cltfs-share", [a.cltfs, store, mnt_s, "-f",
                                   "-o", "cache_mb=%d,share_zero_targets" % a.cache_mb], mnt_s,
                   a.read_ahead_kb)
    tree_paths = [os.path.join(tree, f) for f in files]
    store_paths = list(walk_files(store))
    sizes = {f: os.path.getsize(os.path.join(tree, f)) for f in files}

    # ---- torch.load: first and second read via the mount vs the original
    # Each round remounts cltfs (empty chunk cache, no view in the page
    # cache) with the original tree and the store's packs both in the
    # page cache, then: original, mount (first), mount (second), original,
    # mount (second again): two samples of each steady-state side a round.
    t_orig, t_first, t_second, t_shared = [], [], [], []
    ra = {}
    hwm = 0
    for rnd in range(a.rounds):
        cltfs.start()
        ra["cltfs"] = cltfs.read_ahead_kb()
        vsizes = {f: os.path.getsize(os.path.join(mnt_c, f)) for f in files}
        bad = [f for f in files if vsizes[f] <= 0]
        if bad:
            raise BenchError("views missing or empty via the mount: %s" % bad[:5])
        warm(tree_paths)
        warm(store_paths)
        t_orig.append(load_all(torch, tree, files))
        t_first.append(load_all(torch, mnt_c, files))
        t_second.append(load_all(torch, mnt_c, files))
        t_orig.append(load_all(torch, tree, files))
        t_second.append(load_all(torch, mnt_c, files))
        cltfs.stop()
        hwm = max(hwm, cltfs.hwm_kb)
        shared.start()
        ssizes = {f: os.path.getsize(os.path.join(mnt_s, f)) for f in files}
        warm(store_paths)
        t_shared.append(load_all(torch, mnt_s, files))
        shared.stop()
        log("round %d torch.load: original %.3f/%.3f s, mount first %.3f s, second %.3f/%.3f s, "
            "share_zero_targets first %.3f s"
            % (rnd + 1, t_orig[-2], t_orig[-1], t_first[-1], t_second[-2], t_second[-1], t_shared[-1]))

    # ---- cold sequential read of the largest y view vs zerofs
    ys = [f for f in files if f.endswith("_y.pt")]
    ybig = max(ys, key=lambda f: (vsizes[f], f))   # the largest view, as mounted
    nbytes = vsizes[ybig]
    zerofs = Mount("zerofs", [a.zerofs, mnt_z, "-f", "-o", "size=%d" % nbytes], mnt_z,
                   a.read_ahead_kb)
    dropped = False
    t_c, t_z, t_cw = [], [], []
    faults = {"cltfs": [], "zerofs": []}
    for rnd in range(max(a.rounds, 5)):
        # cltfs and zerofs cold (remounted, page cache dropped), in
        # alternating order; then, for diagnosis only, cltfs remounted with
        # the store's packs in the page cache (its CPU path without the disk).
        order = [("cltfs", cltfs), ("zerofs", zerofs)]
        if rnd % 2:
            order.reverse()
        for name, m in order:
            dropped = drop_caches()
            m.start()
            ra[name] = m.read_ahead_kb()
            f0 = m.minflt()
            if name == "cltfs":
                t_c.append(timed_read(os.path.join(mnt_c, ybig), nbytes))
            else:
                t_z.append(timed_read(os.path.join(mnt_z, "zero.bin"), nbytes))
            faults[name].append(m.minflt() - f0)
            m.stop()
        warm(store_paths)
        cltfs.start()
        t_cw.append(timed_read(os.path.join(mnt_c, ybig), nbytes))
        cltfs.stop()
        hwm = max(hwm, cltfs.hwm_kb)
        log("round %d cold read of %.1f MB: cltfs %.3f s, zerofs %.3f s; "
            "cltfs with the store in page cache %.3f s" % (
                rnd + 1, nbytes / 1e6, t_c[-1], t_z[-1], t_cw[-1]))

    # ---- content check and a parallel pass (4 readers), then RSS and stats
    cltfs.start()
    t0 = time.perf_counter()
    errors = []

    def reader(part):
        try:
            buf = bytearray(READ_SIZE)
            for f in part:
                read_file(os.path.join(mnt_c, f), buf=buf)
        except OSError as e:
            errors.append("%s" % e)
    threads = [threading.Thread(target=reader, args=(files[i::4],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t_par = time.perf_counter() - t0
    if errors:
        raise BenchError("parallel read via the mount failed: %s" % errors[0])
    mismatched = []
    for f in files:
        x = torch.load(os.path.join(tree, f))
        y = torch.load(os.path.join(mnt_c, f))
        if not same(torch, x, y):
            mismatched.append(f)
        del x, y
    stats = None
    try:
        with open(os.path.join(mnt_c, ".cltfs", "stats")) as f:
            stats = json.load(f)
    except (OSError, ValueError) as e:
        log("could not read .cltfs/stats: %s" % e)
    rss_now = cltfs.status("VmRSS")
    cltfs.stop()
    hwm = max(hwm, cltfs.hwm_kb)

    # ---- report
    best_o, best_f, best_s = min(t_orig), min(t_first), min(t_second)
    best_c, best_z = min(t_c), min(t_z)
    gbs_c, gbs_z = nbytes / best_c / 1e9, nbytes / best_z / 1e9
    mat = sum(sizes.values())
    vmat = sum(vsizes.values())
    rss_limit_kb = (a.cache_mb + 64) * 1024
    measured = {
        "store / materialized bytes": store_alloc / tree_alloc,
        "first torch.load: mount / original": best_f / best_o,
        "second torch.load: mount / original": best_s / best_o,
        "cold seq read: cltfs / zerofs GB/s": gbs_c / gbs_z,
        "peak daemon RSS / (cache_mb + 64 MiB)": hwm / rss_limit_kb if hwm else None,
    }
    print()
    print("cltfs benchmark: %d files, %.1f MB materialized (d=%d, %d layers, %d batch(es), "
          "T=%s), %d rounds" % (len(files), mat / 1e6, desc["d"], len(desc["layers"]),
                                desc["n_batches"], desc["T"], a.rounds))
    print()
    print_goals(GOALS, measured)
    print()
    print("absolute numbers (best of %d; every ratio above compares numbers from this run):"
          % a.rounds)
    print("  tree:    %10.1f MB allocated (%.1f MB apparent), %d files"
          % (tree_alloc / 1e6, tree_app / 1e6, len(files)))
    print("  store:   %10.1f MB allocated (%.1f MB apparent)" % (store_alloc / 1e6, store_app / 1e6))
    if stat_json is not None:
        print("  cltfs stat: %s" % json.dumps(stat_json, sort_keys=True)[:400])
    print("  import:  %10.2f s  (%.2f GB/s of materialized input)" % (t_import, mat / t_import / 1e9))
    print("  torch.load all, original (page cache): %7.3f s  %6.2f GB/s  (all: %s)"
          % (best_o, mat / best_o / 1e9, " ".join("%.3f" % t for t in t_orig)))
    print("  torch.load all, mount, first read:     %7.3f s  %6.2f GB/s  (all: %s)"
          % (best_f, vmat / best_f / 1e9, " ".join("%.3f" % t for t in t_first)))
    print("  torch.load all, mount, second read:    %7.3f s  %6.2f GB/s  (all: %s)"
          % (best_s, vmat / best_s / 1e9, " ".join("%.3f" % t for t in t_second)))
    smat = sum(ssizes.values())
    print("    the views total %.1f MB against %.1f MB of originals (each zero target its own"
          " storage, as the reference)" % (vmat / 1e6, mat / 1e6))
    print("  -o share_zero_targets: views %.1f MB (%.3f of the default's); first torch.load %.3f s,"
          " %.3f of the default's (all: %s)" % (smat / 1e6, smat / vmat, min(t_shared),
                                               min(t_shared) / best_f,
                                               " ".join("%.3f" % t for t in t_shared)))
    print("  cold sequential read of %s (%.1f MB, %d KiB reads, page cache %s):"
          % (ybig, nbytes / 1e6, READ_SIZE // 1024, "dropped" if dropped else "NOT dropped (not root)"))
    print("    cltfs  %6.2f GB/s  (%s s)" % (gbs_c, " ".join("%.3f" % t for t in t_c)))
    print("    zerofs %6.2f GB/s  (%s s)" % (gbs_z, " ".join("%.3f" % t for t in t_z)))
    print("    cltfs, store packs in page cache (diagnosis): %6.2f GB/s  (%s s)" % (
        nbytes / min(t_cw) / 1e9, " ".join("%.3f" % t for t in t_cw)))
    print("    daemon minor page faults per MiB read: cltfs %.0f, zerofs %.0f" % (
        min(faults["cltfs"]) * MiB / nbytes, min(faults["zerofs"]) * MiB / nbytes))
    print("  parallel read of every view, 4 readers: %.3f s, %.2f GB/s"
          % (t_par, vmat / t_par / 1e9))
    print("  daemon peak RSS (VmHWM): %.1f MB; RSS at the end: %.1f MB; limit %d MiB"
          % (hwm / 1024, rss_now / 1024, a.cache_mb + 64))
    print("  kernel read_ahead_kb: %s" % ", ".join("%s %s" % kv for kv in sorted(ra.items())))
    if len(set(ra.values())) > 1:
        print("  WARNING: cltfs and zerofs mounts have different readahead")
    if stats is not None:
        print("  .cltfs/stats: %s" % json.dumps(stats, sort_keys=True))
        if stats.get("errors"):
            print("  WARNING: cltfs counted %s errors" % stats["errors"])
    if mismatched:
        print()
        print("CONTENT MISMATCH: %d of %d views differ from the originals, e.g. %s"
              % (len(mismatched), len(files), mismatched[:3]))
        return 1
    print("  content: all %d views load equal to the originals" % len(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
