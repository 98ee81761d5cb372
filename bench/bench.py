#!/usr/bin/python3
"""Benchmark cltfs against the materialized tree and against zerofs.

Usage (run with /usr/bin/python3, which has torch):

    bench.py --cltfs build/cltfs --zerofs build/zerofs
             [--decode-tool build/codec_decode] [--rounds 3] [--quick]
             [--d 2048] [--n-layers 32] [--n-targets 16] [--batches 2]
             [--min-tokens 300] [--max-tokens 500] [--total-mb N]
             [--small-d 256] [--small-batches 16] [--workers 4]
             [--workdir DIR] [--cache-mb 256] [--read-ahead-kb N] [--seed 0]

It generates two reference-format trees with tests/gen_tree.py and imports
each with `cltfs import`:

  - the main tree, the issue's shape: bf16, d=2048, a 32-layer model's
    L0..L30 (--n-layers 32: layers 0..n-2), 16 targets, --batches 2
    batches of one sample of --min-tokens..--max-tokens (300-500) tokens:
    about 1.67 GB in 124 files.  --total-mb N instead chooses the number of
    batches for about N MB.  --quick: d=256, 8 layers (L0..L6), about
    50 MB, for smoke tests;
  - the small-file tree: d=256 (--small-d), L0..L10 of 12 layers, 8
    targets, --small-batches 16 batches of the same token counts: 352 files
    of 0.2-1.8 MB (--quick: d=64, 4 batches).

It then prints each goal as a ratio of two numbers measured side by side in
the same run, in --rounds interleaved rounds, best of the rounds on each
side.  "Fresh mount" is cltfs remounted (empty chunk cache, no view in the
page cache) with the tree and the store's packs in the page cache;
"re-read" is the same mount read again; "tree" is the original tree read
from the page cache:

    store bytes / materialized bytes (du of both)                   <= 0.10
    first torch.load of every file, fresh mount / tree          reported
        (bounded by FUSE: the next row)
    first read of every file as bytes (1 MiB reads, the `cat`), fresh
        mount, GB/s / the same byte count read from a fresh zerofs
        mount (one file of that size, 1 MiB reads), GB/s            >= 0.9
    both evicted: page cache dropped, fresh mount, torch.load of every
        file / torch.load of every file of the tree after a drop     <= 0.8
    re-read torch.load of every file, mount / tree                   <= 1.05
    4-worker DataLoader epoch (item k,L: torch.load of batch k's x and
        y of layer L, batch-major; batch_size=None, num_workers=4,
        shuffle=False), first epoch on a fresh mount / the tree      <= 1.1
    small files, first torch.load of every file / tree               <= 1.3
    small files, re-read / tree                                      <= 1.05
    one reader, cold sequential read of the largest y view (page
        cache dropped, fresh mount), GB/s / min(the same byte count
        from zerofs cold, GB/s; zstd decode of every frame of the
        store on all cores, GB/s)                                   >= 0.8
    peak daemon RSS (VmHWM) of any cltfs mount / (cache_mb + 64 MiB) <= 1

The decode limit comes from --decode-tool (default: codec_decode beside
--cltfs, build/codec_decode, from bench/codec_decode.c), run as
`TOOL STORE --threads N` with the store in the page cache, on all cores and
on one; it prints a line ending in "<rate> GB/s" (or a line of JSON with
"decode_gbs_all").  Without the tool that row is n/a, with a note, and
the report still gives cltfs / zerofs alone.

The machine is shared and noisy, so nothing is judged on an absolute
time.  Goals missed are reported, not asserted: exit 0 unless something
failed to run (1), or a view's content differs from the original (1).
Mounts are always unmounted, DataLoader workers always reaped, also on
SIGTERM, SIGHUP and ^C.  Progress goes to stderr.

Besides the table it prints the absolute numbers behind each ratio, and
for diagnosis: -o share_zero_targets's views and first load, cltfs's cold
read with the store's packs in the page cache (its CPU path alone), the
daemons' minor page faults per MiB served, a 4-reader parallel pass,
.cltfs/stats, and the mounts' kernel readahead (the kernel offers FUSE
128 KiB and ignores a larger max_readahead from init; --read-ahead-kb sets
/sys/class/bdi/<dev>/read_ahead_kb on every mount alike, as root).  With
--workdir the generated trees are kept there and reused by the next run
with the same parameters.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MiB = 1 << 20
READ_SIZE = MiB                 # the 1 MiB reads of the byte passes

GOALS = {                       # metric -> (comparison, goal or None: reported only)
    "store / materialized bytes": ("<=", 0.10),
    "first torch.load, fresh mount / tree": ("<=", None),
    "first read as bytes, fresh mount / zerofs, GB/s": (">=", 0.9),
    "both evicted torch.load, mount / tree": ("<=", 0.8),
    "re-read torch.load, mount / tree": ("<=", 1.05),
    "4-worker DataLoader epoch, first: mount / tree": ("<=", 1.1),
    "small files, first torch.load: mount / tree": ("<=", 1.3),
    "small files, re-read: mount / tree": ("<=", 1.05),
    "cold seq y read / min(zerofs, decode), GB/s": (">=", 0.8),
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


def unwind_on_signals():
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so that they unwind
    through the callers' finally blocks, which unmount."""
    def on_signal(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


def workdir_of(a, prefix, parent="/var/tmp"):
    """--workdir (made if missing), else a new temporary folder in parent:
    (the folder, the temporary one or None)."""
    if a.workdir:
        workdir = os.path.abspath(a.workdir)
        os.makedirs(workdir, exist_ok=True)
        return workdir, None
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    return tmp, tmp


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


def read_all(root, files):
    """Seconds to read every file under root, one after another, with
    1 MiB reads (what `cat` does); also the bytes read."""
    buf = bytearray(READ_SIZE)
    got = 0
    t0 = time.perf_counter()
    for f in files:
        got += read_file(os.path.join(root, f), buf=buf)
    return time.perf_counter() - t0, got


# ---------------------------------------------------------------- DataLoader

class LayerBatches:
    """A torch Dataset (map-style): item i is (batch k, layer L) in
    batch-major order (every layer of batch 0, then batch 1, ...), and loads
    the x and y file of that batch and layer with torch.load.  A plain class
    at module level, so a worker started by spawn or forkserver can unpickle
    it as well as a forked one."""

    def __init__(self, root, batches, layers):
        self.root = root
        self.items = [(k, L) for k in batches for L in layers]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import torch
        k, L = self.items[i]
        d = os.path.join(self.root, "L%d" % L)
        return (torch.load(os.path.join(d, "batch_%d_x.pt" % k)),
                torch.load(os.path.join(d, "batch_%d_y.pt" % k)))


def dataloader_epoch(torch, root, batches, layers, workers):
    """Seconds for one epoch of a DataLoader over LayerBatches(root), from
    creating the loader (the workers' start is part of an epoch) to its last
    item.  The workers are shut down and reaped on every way out."""
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(LayerBatches(root, batches, layers),
                                         batch_size=None, num_workers=workers,
                                         shuffle=False)
    it = iter(loader)
    n = 0
    try:
        for x, y in it:
            n += 1
            del x, y
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it
    dt = time.perf_counter() - t0
    if n != len(batches) * len(layers):
        raise BenchError("DataLoader over %s: %d items, expected %d" % (
            root, n, len(batches) * len(layers)))
    return dt


# ---------------------------------------------------------------- decode limit

GBS_LINE = re.compile(r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*GB/s\s*$")


def decode_limit_gbs(a, store, threads=None):
    """GB/s of zstd-decoding every frame of store on `threads` cores (all
    of them by default): runs `a.decode_tool STORE --threads N` and reads
    the last stdout line that ends in "<number> GB/s" (or, from a line of
    JSON as bench/codec_decode.c prints, its "decode_gbs_all").  None when
    the tool is not there; BenchError when it fails or prints no rate."""
    tool = a.decode_tool
    if not tool or not os.access(tool, os.X_OK):
        return None
    if threads is None:
        threads = cpu_count()
    argv = [tool, store, "--threads", str(threads)]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=300)
    except subprocess.TimeoutExpired:
        raise BenchError("%s: no answer after 300 s" % " ".join(argv))
    out = r.stdout.decode("utf-8", "replace")
    if r.returncode != 0:
        raise BenchError("%s exited with %d: %s" % (
            " ".join(argv), r.returncode,
            (r.stderr.decode("utf-8", "replace") or out).strip()[-400:]))
    gbs = None
    for line in out.splitlines():
        line = line.strip()
        m = GBS_LINE.search(line)
        if m:
            gbs = float(m.group(1))
        elif line.startswith("{"):
            try:
                gbs = float(json.loads(line)["decode_gbs_all"])
            except (ValueError, KeyError, TypeError):
                pass
    if gbs is None or gbs <= 0:
        raise BenchError("%s printed no \"... GB/s\" line: %r" % (" ".join(argv), out[-400:]))
    return gbs


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------- the trees

def tree_params(a):
    """gen_tree.make_tree arguments of the main tree.

    bench.py's options give the shape (--d, --n-layers, --n-targets,
    --batches, --min-tokens, --max-tokens, --total-mb).  A caller whose
    options lack --min-tokens (hub_bench.py: --d, --n-layers, --total-mb,
    --quick, --seed) gets the older shape sized by --total-mb."""
    if not hasattr(a, "min_tokens"):
        return legacy_tree_params(a)
    d = a.d if a.d else (256 if a.quick else 2048)
    n_layers = a.n_layers if a.n_layers else (8 if a.quick else 32)
    if n_layers < 2:
        raise BenchError("--n-layers must be >= 2 (the tree holds L0..L<n-2>)")
    lo, hi = a.min_tokens, a.max_tokens
    if lo < 1 or hi < lo:
        raise BenchError("--min-tokens/--max-tokens: need 1 <= min <= max")
    p = dict(layers=list(range(n_layers - 1)),   # L0..L30 of 32, as the reference
             n_layers=n_layers, batches=a.batches, samples_per_batch=1, d=d,
             dtype="bfloat16", n_targets=a.n_targets, min_tokens=lo, max_tokens=hi,
             seed=a.seed)
    if a.total_mb:
        p["total_mb"] = a.total_mb              # gen_tree chooses the batches
    return p


def legacy_tree_params(a):
    """The shape before the issue's: d=4096 (1024 --quick), L0..L30, 16
    targets, batches of ~450 tokens, as many as a.total_mb allows."""
    d = a.d if a.d else (1024 if a.quick else 4096)
    n_layers = a.n_layers
    layers = list(range(n_layers - 1))
    per_token = len(layers) * 17 * d * 2     # x + 16 targets per layer, bf16
    total = a.total_mb * 1e6
    batches = max(1, int(total // (per_token * 450)))
    t_mean = total / (batches * per_token)
    lo = max(8, int(t_mean))
    hi = max(lo, int(t_mean * 1.25))         # >= the requested total
    return dict(layers=layers, n_layers=n_layers, batches=batches,
                samples_per_batch=1, d=d, dtype="bfloat16", n_targets=16,
                min_tokens=lo, max_tokens=hi, seed=a.seed)


def small_tree_params(a):
    """The small-file tree: d=256, L0..L10 of a 12-layer model, 8 targets,
    enough batches for a few hundred files, the main tree's token counts."""
    return dict(layers=list(range(11)), n_layers=12,
                batches=a.small_batches or (4 if a.quick else 16), samples_per_batch=1,
                d=a.small_d or (64 if a.quick else 256), dtype="bfloat16", n_targets=8,
                min_tokens=a.min_tokens, max_tokens=a.max_tokens, seed=a.seed + 1)


def make_tree(a, workdir, params=None, name="tree"):
    """Generate workdir/<name> with gen_tree (params, else tree_params(a)),
    or reuse it when workdir/<name>.json says it has the same parameters;
    returns gen_tree's description."""
    if params is None:
        params = tree_params(a)
    tree = os.path.join(workdir, name)
    marker = os.path.join(workdir, name + ".json")
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
    log("generating %s: %d layers x %s, d=%d, %d targets, %d-%d tokens" % (
        tree, len(params["layers"]), "%d batch(es)" % params["batches"]
        if "total_mb" not in params else "batches for ~%.0f MB" % params["total_mb"],
        params["d"], params["n_targets"], params["min_tokens"], params["max_tokens"]))
    t0 = time.perf_counter()
    desc = gen_tree.make_tree(tree, **params)
    log("generated %d files, %.1f MB in %.1f s" % (
        len(desc["files"]), desc["bytes"] / 1e6, time.perf_counter() - t0))
    with open(marker, "w") as f:
        json.dump({"params": params, "desc": desc}, f)
    return desc


def import_store(a, tree, store):
    """cltfs import tree -> store (replacing it); seconds taken."""
    if os.path.exists(store):
        shutil.rmtree(store)
    t0 = time.perf_counter()
    r = subprocess.run([a.cltfs, "import", store, tree],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError("cltfs import %s failed (%d): %s" % (
            tree, r.returncode, (r.stderr or r.stdout).decode("utf-8", "replace").strip()))
    log("import: %s (%.1f s)" % (r.stdout.decode().strip(), dt))
    return dt


# ---------------------------------------------------------------- report

def print_goals(goals, measured, notes=None):
    """The table of metric, measured, goal, status; goals {metric: (cmp,
    goal)}, a goal of None only reported, a measured None "n/a"; notes
    {metric: text} printed after the status.  Also used by hub_bench.py and
    scale.py."""
    notes = notes or {}
    w = max(len(k) for k in goals)
    print("%-*s  %9s  %7s  %s" % (w, "metric", "measured", "goal", "status"))
    print("-" * (w + 30))
    for k, (cmp, goal) in goals.items():
        v = measured[k]
        note = ("  " + notes[k]) if notes.get(k) else ""
        if goal is None:
            print("%-*s  %9s  %7s  %s%s" % (w, k, fmt_ratio(v), "-", "(reported)", note))
            continue
        ok = "n/a" if v is None else "ok" if (v <= goal if cmp == "<=" else v >= goal) else "MISS"
        print("%-*s  %9s  %2s %4.2f  %s%s" % (w, k, fmt_ratio(v), cmp, goal, ok, note))


def fmt_ratio(v):
    return "%.3f" % v if v is not None else "n/a"


def fmt_all(ts):
    return " ".join("%.3f" % t for t in ts)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cltfs", default=os.path.join(REPO, "build", "cltfs"))
    ap.add_argument("--zerofs", default=os.path.join(REPO, "build", "zerofs"))
    ap.add_argument("--decode-tool", default=None,
                    help="decodes every frame of a store: TOOL STORE --threads N prints "
                         "'... GB/s' (default: codec_decode beside --cltfs, build/codec_decode; "
                         "absent: that row is n/a)")
    ap.add_argument("--workdir", default=None,
                    help="keep the trees here and reuse them (default: a temporary dir)")
    ap.add_argument("--quick", action="store_true",
                    help="smaller trees (d=256, 8 layers: ~50 MB; small files d=64), "
                         "for smoke tests")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds, best of them taken (default 3)")
    ap.add_argument("--cache-mb", type=int, default=256)
    ap.add_argument("--d", type=int, default=None, help="d_model (default 2048; 256 --quick)")
    ap.add_argument("--n-layers", type=int, default=None,
                    help="the model's layers; the tree holds L0..L<n-2> (default 32; 8 --quick)")
    ap.add_argument("--n-targets", type=int, default=16)
    ap.add_argument("--batches", type=int, default=2, help="batches of one sample (default 2)")
    ap.add_argument("--min-tokens", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=500)
    ap.add_argument("--total-mb", type=float, default=None,
                    help="instead of --batches: as many batches as make about this many MB")
    ap.add_argument("--small-d", type=int, default=None,
                    help="d_model of the small-file tree (default 256; 64 --quick)")
    ap.add_argument("--small-batches", type=int, default=None,
                    help="batches of the small-file tree (default 16: 352 files; 4 --quick)")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--read-ahead-kb", type=int, default=1024,
                    help="after mounting, set every mount's bdi read_ahead_kb to this, so the "
                         "zero-serving ceiling gets what cltfs sets for itself (default 1024, "
                         "cltfs's default; needs root)")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    a.cltfs = os.path.abspath(a.cltfs)
    a.zerofs = os.path.abspath(a.zerofs)
    a.decode_tool = os.path.abspath(a.decode_tool) if a.decode_tool else \
        os.path.join(os.path.dirname(a.cltfs), "codec_decode")
    for exe in (a.cltfs, a.zerofs):
        if not os.access(exe, os.X_OK):
            print("bench: %s: not an executable (run make first)" % exe, file=sys.stderr)
            return 1
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    if a.batches < 1 or a.workers < 0:
        ap.error("--batches must be >= 1 and --workers >= 0")

    unwind_on_signals()
    workdir, tmp = workdir_of(a, "cltfs-bench-")
    t0 = time.monotonic()
    try:
        return run(a, workdir)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print("bench: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("bench: interrupted (%s)" % e, file=sys.stderr)
        return 1
    finally:
        # a second signal must not cut the cleanup short
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        Mount.stop_all()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            for s in ("store", "store-small"):
                shutil.rmtree(os.path.join(workdir, s), ignore_errors=True)
        log("done in %.0f s" % (time.monotonic() - t0))


def run(a, workdir):
    import torch
    torch.set_num_threads(1)
    # 4 workers on a 2-core machine is the point of the row, not a mistake
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    T0 = time.perf_counter()

    # ---- the trees and their stores
    desc = make_tree(a, workdir)
    sdesc = make_tree(a, workdir, small_tree_params(a), "small")
    tree, stree = desc["out"], sdesc["out"]
    files, sfiles = list(desc["files"]), list(sdesc["files"])
    store = os.path.join(workdir, "store")
    sstore = os.path.join(workdir, "store-small")
    t_import = import_store(a, tree, store)
    import_store(a, stree, sstore)

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

    def cltfs_mount(name, st, mnt, extra=""):
        return Mount(name, [a.cltfs, st, mnt, "-f", "-o", "cache_mb=%d%s" % (a.cache_mb, extra)],
                     mnt, a.read_ahead_kb)
    mnt_c = os.path.join(workdir, "mnt-cltfs")
    mnt_z = os.path.join(workdir, "mnt-zerofs")
    cltfs = cltfs_mount("cltfs", store, mnt_c)
    # the same with -o share_zero_targets: what giving up the reference's
    # aliasing would save, in bytes and time
    mnt_s = os.path.join(workdir, "mnt-share")
    shared = cltfs_mount("cltfs-share", store, mnt_s, ",share_zero_targets")
    small = cltfs_mount("cltfs-small", sstore, os.path.join(workdir, "mnt-small"))
    mnt_sm = small.mnt
    tree_paths = [os.path.join(tree, f) for f in files]
    store_paths = list(walk_files(store))
    stree_paths = [os.path.join(stree, f) for f in sfiles]
    sstore_paths = list(walk_files(sstore))
    sizes = {f: os.path.getsize(os.path.join(tree, f)) for f in files}
    mat = sum(sizes.values())
    smat = sum(os.path.getsize(p) for p in stree_paths)
    batches = list(range(desc["n_batches"]))
    layers = list(desc["layers"])

    hwm = 0
    ra = {}

    phase_hwm = {}                      # pass -> the largest VmHWM of a mount in it, kB

    def stop(m, phase):
        """Unmount m; a cltfs mount's peak RSS counts in the RSS row."""
        nonlocal hwm
        kb = m.status("VmHWM") if m.proc is not None else 0
        m.stop()
        if m.name.startswith("cltfs"):
            hwm = max(hwm, m.hwm_kb)
            phase_hwm[phase] = max(phase_hwm.get(phase, 0), kb)

    def fresh(m, *warm_paths):
        """m mounted anew, with warm_paths in the page cache."""
        m.start()
        ra[m.name] = m.read_ahead_kb()
        for ps in warm_paths:
            warm(ps)
        return m

    # the views' sizes, from one mount (a stat does not fill the page cache)
    cltfs.start()
    vsizes = {f: os.path.getsize(os.path.join(mnt_c, f)) for f in files}
    stop(cltfs, "setup")
    bad = [f for f in files if vsizes[f] <= 0]
    if bad:
        raise BenchError("views missing or empty via the mount: %s" % bad[:5])
    vmat = sum(vsizes.values())
    zcat = Mount("zerofs", [a.zerofs, mnt_z, "-f", "-o", "size=%d" % vmat], mnt_z,
                 a.read_ahead_kb)

    t = {k: [] for k in ("orig", "first", "second", "cat", "zcat", "ev_tree", "ev_mount",
                         "dl_mount", "dl_tree", "shared", "s_orig", "s_first", "s_second")}
    cat_bytes = 0
    for rnd in range(a.rounds):
        log("round %d of %d (%.0f s so far)" % (rnd + 1, a.rounds, time.perf_counter() - T0))
        # ---- torch.load, first read (fresh mount, tree and packs cached)
        # and re-read: original, mount (first), mount (re-read), original,
        # mount (re-read again): two samples of each steady-state side.
        fresh(cltfs, tree_paths, store_paths)
        t["orig"].append(load_all(torch, tree, files))
        t["first"].append(load_all(torch, mnt_c, files))
        t["second"].append(load_all(torch, mnt_c, files))
        t["orig"].append(load_all(torch, tree, files))
        t["second"].append(load_all(torch, mnt_c, files))
        stop(cltfs, "torch.load")
        log("  torch.load: tree %.3f/%.3f s, fresh mount %.3f s, re-read %.3f/%.3f s" % (
            t["orig"][-2], t["orig"][-1], t["first"][-1], t["second"][-2], t["second"][-1]))

        # ---- the same first read as bytes vs zerofs's ceiling, alternating
        for side in (("cltfs", "zerofs") if rnd % 2 == 0 else ("zerofs", "cltfs")):
            if side == "cltfs":
                fresh(cltfs, tree_paths, store_paths)
                dt, cat_bytes = read_all(mnt_c, files)
                t["cat"].append(dt)
                stop(cltfs, "bytes")
            else:
                fresh(zcat)
                t["zcat"].append(timed_read(os.path.join(mnt_z, "zero.bin"), vmat))
                zcat.stop()
        if cat_bytes != vmat:
            raise BenchError("the byte pass read %d bytes of views of %d" % (cat_bytes, vmat))
        log("  first read as bytes: fresh mount %.3f s, zerofs %.3f s (%.1f MB)" % (
            t["cat"][-1], t["zcat"][-1], vmat / 1e6))

        # ---- DataLoader epoch: fresh mount vs the tree, alternating
        for side in (("mount", "tree") if rnd % 2 == 0 else ("tree", "mount")):
            fresh(cltfs, tree_paths, store_paths)
            if side == "mount":
                t["dl_mount"].append(dataloader_epoch(torch, mnt_c, batches, layers, a.workers))
            else:
                t["dl_tree"].append(dataloader_epoch(torch, tree, batches, layers, a.workers))
            stop(cltfs, "DataLoader")
        log("  %d-worker DataLoader epoch: fresh mount %.3f s, tree %.3f s" % (
            a.workers, t["dl_mount"][-1], t["dl_tree"][-1]))

        # ---- -o share_zero_targets, first read (diagnosis)
        fresh(shared, tree_paths, store_paths)
        ssizes = {f: os.path.getsize(os.path.join(mnt_s, f)) for f in files}
        t["shared"].append(load_all(torch, mnt_s, files))
        stop(shared, "share_zero_targets")

        # ---- both evicted: page cache dropped, fresh mount vs the tree
        for side in (("mount", "tree") if rnd % 2 == 0 else ("tree", "mount")):
            ev_dropped = drop_caches()
            if side == "mount":
                cltfs.start()
                t["ev_mount"].append(load_all(torch, mnt_c, files))
                stop(cltfs, "evicted")
            else:
                t["ev_tree"].append(load_all(torch, tree, files))
        log("  both evicted%s: fresh mount %.3f s, tree %.3f s" % (
            "" if ev_dropped else " (page cache NOT dropped: not root)",
            t["ev_mount"][-1], t["ev_tree"][-1]))

        # ---- small files: first read and re-read vs the small tree
        fresh(small, stree_paths, sstore_paths)
        t["s_orig"].append(load_all(torch, stree, sfiles))
        t["s_first"].append(load_all(torch, mnt_sm, sfiles))
        t["s_second"].append(load_all(torch, mnt_sm, sfiles))
        t["s_orig"].append(load_all(torch, stree, sfiles))
        t["s_second"].append(load_all(torch, mnt_sm, sfiles))
        stop(small, "small files")
        log("  small files: tree %.3f/%.3f s, fresh mount %.3f s, re-read %.3f/%.3f s" % (
            t["s_orig"][-2], t["s_orig"][-1], t["s_first"][-1], t["s_second"][-2],
            t["s_second"][-1]))

    # ---- cold sequential read of the largest y view vs zerofs, and the
    # decode limit
    ys = [f for f in files if f.endswith("_y.pt")]
    ybig = max(ys, key=lambda f: (vsizes[f], f))   # the largest view, as mounted
    nbytes = vsizes[ybig]
    zerofs = Mount("zerofs", [a.zerofs, mnt_z, "-f", "-o", "size=%d" % nbytes], mnt_z,
                   a.read_ahead_kb)
    dropped = False
    t_c, t_z, t_cw = [], [], []
    dec_all, dec_one = [], []
    dec_note = None
    ncpu = cpu_count()
    if not a.decode_tool or not os.access(a.decode_tool, os.X_OK):
        dec_note = "no decode tool %s (bench/codec_decode.c; --decode-tool)" % a.decode_tool
    faults = {"cltfs": [], "zerofs": []}
    for rnd in range(max(a.rounds, 5)):
        # cltfs and zerofs cold (remounted, page cache dropped), in
        # alternating order; then, for diagnosis only, cltfs remounted with
        # the store's packs in the page cache (its CPU path without the disk);
        # then the decode tool on all cores and on one.
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
            stop(m, "cold read")
        fresh(cltfs, store_paths)
        t_cw.append(timed_read(os.path.join(mnt_c, ybig), nbytes))
        stop(cltfs, "cold read")
        dec_msg = ""
        if dec_note is None and rnd < a.rounds:
            try:
                warm(store_paths)
                g = decode_limit_gbs(a, store, ncpu)
                g1 = decode_limit_gbs(a, store, 1)
                if g is None or g1 is None:
                    raise BenchError("%s went away" % a.decode_tool)
                dec_all.append(g)
                dec_one.append(g1)
                dec_msg = "; decode %.2f GB/s on %d cores, %.2f on 1" % (g, ncpu, g1)
            except BenchError as e:
                log("decode limit: %s" % e)
                dec_note = "the decode tool failed: %s" % str(e)[:160]
                dec_all, dec_one = [], []
        log("cold read %d of %.1f MB: cltfs %.3f s, zerofs %.3f s; "
            "cltfs with the store in page cache %.3f s%s" % (
                rnd + 1, nbytes / 1e6, t_c[-1], t_z[-1], t_cw[-1], dec_msg))

    # ---- a parallel pass (4 readers), the content check, RSS and stats
    log("parallel pass and content check (%.0f s so far)" % (time.perf_counter() - T0))
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
    stop(cltfs, "parallel+content")
    small.start()
    for f in sfiles:
        x = torch.load(os.path.join(stree, f))
        y = torch.load(os.path.join(mnt_sm, f))
        if not same(torch, x, y):
            mismatched.append("small/" + f)
        del x, y
    stop(small, "small content")

    # ---- report
    best = {k: min(v) for k, v in t.items()}
    best_c, best_z = min(t_c), min(t_z)
    gbs_c, gbs_z = nbytes / best_c / 1e9, nbytes / best_z / 1e9
    gbs_dec = max(dec_all) if dec_all else None
    gbs_cat, gbs_zcat = vmat / best["cat"] / 1e9, vmat / best["zcat"] / 1e9
    rss_limit_kb = (a.cache_mb + 64) * 1024
    notes = {}
    if gbs_dec is None:
        notes["cold seq y read / min(zerofs, decode), GB/s"] = (
            "no decode limit (below); / zerofs alone: %.3f" % (gbs_c / gbs_z))
    notes["first torch.load, fresh mount / tree"] = "bounded by FUSE: next row"
    measured = {
        "store / materialized bytes": store_alloc / tree_alloc,
        "first torch.load, fresh mount / tree": best["first"] / best["orig"],
        "first read as bytes, fresh mount / zerofs, GB/s": gbs_cat / gbs_zcat,
        "both evicted torch.load, mount / tree": best["ev_mount"] / best["ev_tree"],
        "re-read torch.load, mount / tree": best["second"] / best["orig"],
        "4-worker DataLoader epoch, first: mount / tree": best["dl_mount"] / best["dl_tree"],
        "small files, first torch.load: mount / tree": best["s_first"] / best["s_orig"],
        "small files, re-read: mount / tree": best["s_second"] / best["s_orig"],
        "cold seq y read / min(zerofs, decode), GB/s":
            gbs_c / min(gbs_z, gbs_dec) if gbs_dec else None,
        "peak daemon RSS / (cache_mb + 64 MiB)": hwm / rss_limit_kb if hwm else None,
    }
    goals = dict(GOALS)
    if a.workers != 4:     # the row's name says what ran
        k = "4-worker DataLoader epoch, first: mount / tree"
        k2 = "%d-worker DataLoader epoch, first: mount / tree" % a.workers
        goals = {(k2 if m == k else m): v for m, v in goals.items()}
        measured[k2] = measured.pop(k)
    print()
    print("cltfs benchmark: %d files, %.1f MB materialized (d=%d, %d layers, %d batch(es), "
          "T=%s, %d targets); small files: %d files, %.1f MB (d=%d, %d layers, %d batches, "
          "%d targets); %d rounds" % (
              len(files), mat / 1e6, desc["d"], len(desc["layers"]), desc["n_batches"],
              desc["T"], desc["n_targets"], len(sfiles), smat / 1e6, sdesc["d"],
              len(sdesc["layers"]), sdesc["n_batches"], sdesc["n_targets"], a.rounds))
    print()
    print_goals(goals, measured, notes)
    print()
    print("absolute numbers (best of %d; every ratio above compares numbers from this run):"
          % a.rounds)
    print("  tree:    %10.1f MB allocated (%.1f MB apparent), %d files"
          % (tree_alloc / 1e6, tree_app / 1e6, len(files)))
    print("  store:   %10.1f MB allocated (%.1f MB apparent)" % (store_alloc / 1e6, store_app / 1e6))
    if stat_json is not None:
        print("  cltfs stat: %s" % json.dumps(stat_json, sort_keys=True)[:400])
    print("  import:  %10.2f s  (%.2f GB/s of materialized input)" % (t_import, mat / t_import / 1e9))
    print("  torch.load of every file (tree: %.1f MB; views: %.1f MB, each zero target its own"
          " storage, as the reference):" % (mat / 1e6, vmat / 1e6))
    print("    tree, page cache:           %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["orig"], mat / best["orig"] / 1e9, fmt_all(t["orig"])))
    print("    fresh mount, first read:    %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["first"], vmat / best["first"] / 1e9, fmt_all(t["first"])))
    print("    same mount, re-read:        %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["second"], vmat / best["second"] / 1e9, fmt_all(t["second"])))
    print("    both evicted%s:" % ("" if ev_dropped else " (page cache NOT dropped: not root)"))
    print("      tree from disk:         %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["ev_tree"], mat / best["ev_tree"] / 1e9, fmt_all(t["ev_tree"])))
    print("      fresh mount, store:     %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["ev_mount"], vmat / best["ev_mount"] / 1e9, fmt_all(t["ev_mount"])))
    print("  first read as bytes (%d KiB reads, %.1f MB):" % (READ_SIZE // 1024, vmat / 1e6))
    print("    fresh mount, every file:    %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["cat"], gbs_cat, fmt_all(t["cat"])))
    print("    zerofs, one file:           %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["zcat"], gbs_zcat, fmt_all(t["zcat"])))
    print("  %d-worker DataLoader epoch (%d items of x and y, batch-major):"
          % (a.workers, len(batches) * len(layers)))
    print("    tree, page cache:           %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["dl_tree"], mat / best["dl_tree"] / 1e9, fmt_all(t["dl_tree"])))
    print("    fresh mount, first epoch:   %7.3f s  %6.2f GB/s  (all: %s)"
          % (best["dl_mount"], vmat / best["dl_mount"] / 1e9, fmt_all(t["dl_mount"])))
    print("  small files, torch.load of every file (%d files, %.1f MB):" % (len(sfiles), smat / 1e6))
    print("    tree, page cache:           %7.3f s  %6.1f ms a file  (all: %s)"
          % (best["s_orig"], best["s_orig"] * 1e3 / len(sfiles), fmt_all(t["s_orig"])))
    print("    fresh mount, first read:    %7.3f s  %6.1f ms a file  (all: %s)"
          % (best["s_first"], best["s_first"] * 1e3 / len(sfiles), fmt_all(t["s_first"])))
    print("    same mount, re-read:        %7.3f s  %6.1f ms a file  (all: %s)"
          % (best["s_second"], best["s_second"] * 1e3 / len(sfiles), fmt_all(t["s_second"])))
    svm = sum(ssizes.values())
    print("  -o share_zero_targets: views %.1f MB (%.3f of the default's); first torch.load %.3f s,"
          " %.3f of the default's (all: %s)" % (svm / 1e6, svm / vmat, best["shared"],
                                               best["shared"] / best["first"],
                                               fmt_all(t["shared"])))
    print("  cold sequential read of %s (%.1f MB, %d KiB reads, page cache %s):"
          % (ybig, nbytes / 1e6, READ_SIZE // 1024, "dropped" if dropped else "NOT dropped (not root)"))
    print("    cltfs  %6.2f GB/s  (%s s)" % (gbs_c, fmt_all(t_c)))
    print("    zerofs %6.2f GB/s  (%s s); cltfs / zerofs %.3f" % (gbs_z, fmt_all(t_z), gbs_c / gbs_z))
    if gbs_dec is not None:
        print("    decode of every frame of the store: %6.2f GB/s on %d cores, %.2f GB/s on 1"
              " (all: %s; %s)" % (gbs_dec, ncpu, max(dec_one), " ".join("%.2f" % g for g in dec_all),
                                  " ".join("%.2f" % g for g in dec_one)))
    else:
        print("    decode of every frame of the store: n/a, %s" % dec_note)
    print("    cltfs, store packs in page cache (diagnosis): %6.2f GB/s  (%s s)" % (
        nbytes / min(t_cw) / 1e9, fmt_all(t_cw)))
    print("    daemon minor page faults per MiB read: cltfs %.0f, zerofs %.0f" % (
        min(faults["cltfs"]) * MiB / nbytes, min(faults["zerofs"]) * MiB / nbytes))
    print("  parallel read of every view, 4 readers: %.3f s, %.2f GB/s"
          % (t_par, vmat / t_par / 1e9))
    print("  daemon peak RSS (VmHWM): %.1f MB; RSS at the end: %.1f MB; limit %d MiB"
          % (hwm / 1024, rss_now / 1024, a.cache_mb + 64))
    print("    peak RSS by pass, MB: %s" % ", ".join(
        "%s %.0f" % (k, v / 1024) for k, v in phase_hwm.items()))
    print("  kernel read_ahead_kb: %s" % ", ".join("%s %s" % kv for kv in sorted(ra.items())))
    if len(set(ra.values())) > 1:
        print("  WARNING: the mounts have different readahead")
    if stats is not None:
        print("  .cltfs/stats: %s" % json.dumps(stats, sort_keys=True))
        if stats.get("errors"):
            print("  WARNING: cltfs counted %s errors" % stats["errors"])
    print("  wall time: %.0f s" % (time.perf_counter() - T0))
    if mismatched:
        print()
        print("CONTENT MISMATCH: %d of %d views differ from the originals, e.g. %s"
              % (len(mismatched), len(files) + len(sfiles), mismatched[:3]))
        return 1
    print("  content: all %d views (and %d small-file views) load equal to the originals"
          % (len(files), len(sfiles)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
