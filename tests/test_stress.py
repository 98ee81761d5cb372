"""Randomized stress: reads of every kind against whole files, kills at
random moments, random damage.  Seeded and counted.

    CLTFS_STRESS=N   scale (default 1: a few seconds each, in make check;
                     make stress runs 25); CLTFS_STRESS_SEED=S reproduces a
                     run (each test prints its seed and counts).

1. Random reads (fsx-style): pread at random offsets and lengths, O_DIRECT,
   mmap, and reads after the page cache was dropped, on mounts with
   different view options, each compared with the same file read whole on
   a fresh mount (and, without a conversion, whole files with torch against
   the originals); the per-sample files too, converted or not.
2. kill -9 at a random moment of import, of pull (a Hub store on
   loopback), of a mount filling its local store from the Hub while
   readers go through its views, and of capture, then verify (the store
   is valid), the same command or mount again (it resumes), and every
   view compared with the originals (with an uninterrupted capture's,
   byte for byte).  And of an HF cache filled by turns by cltfs and by
   huggingface_hub (tests/hfemu.py): every file right, no partial left.
3. Random byte flips and truncations of packs, indexes and the sample
   table: every read is the right bytes or EIO, or the mount refuses the
   store; never different bytes.
"""
import errno
import glob
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import assert_same, describe, load_bytes, pack_bytes
from test_capture import fp32_store, llava  # noqa: F401 (fixtures)
from test_hub import STORE_URL, etag_of, hf_env, kill_mount, make_hub, spawn_mount  # noqa: F401 (a fixture)

SCALE = max(1, int(os.environ.get("CLTFS_STRESS", "1")))
SEED = int(os.environ.get("CLTFS_STRESS_SEED", str(int(time.time()) & 0xFFFFFF)))


def rng(name):
    """A generator per test, reproducible from SEED."""
    r = random.Random("%s-%d" % (name, SEED))
    print("stress %s: seed %d, scale %d" % (name, SEED, SCALE))
    return r


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def whole_files(m, rels):
    return {rel: read_all(m.p(rel)) for rel in rels}


def drop_caches(path, store):
    """Evict one mounted file and the store's packs from the page cache:
    what /proc/sys/vm/drop_caches did for them, without emptying the cache
    of every other test (make check runs test files in parallel: a global
    drop made another file's "served from the page cache" checks fail)."""
    for p in [path] + glob.glob(os.path.join(store, "packs", "*")):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------ random reads --

def _pread(path, off, n, direct=False):
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    try:
        if not direct:
            return os.pread(fd, n, off)
        # O_DIRECT wants aligned buffers, offsets and lengths
        a = 4096
        start, end = off - off % a, -(-(off + n) // a) * a
        buf = mmap.mmap(-1, end - start)
        try:
            got = os.preadv(fd, [buf], start)
            return bytes(buf[off - start:min(off - start + n, got)])
        finally:
            buf.close()
    finally:
        os.close(fd)


def _mmap_read(path, off, n):
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b""
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            return mm[off:off + n]


OPTION_SETS = [(), ("dtype=float32",), ("batch_samples=2",), ("batch_rows=37",),
               ("share_zero_targets",), ("handles",), ("readahead=0", "cache_mb=1"),
               ("sample_reduce=all",), ("sample_reduce=mean", "sample_dtype=bfloat16"),
               ("sample_reduce=all", "sample_dtype=bfloat16", "dtype=float16")]


@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: ",".join(o) or "default")
def test_random_reads(stores, mount, originals, opts):
    r = rng("random_reads-" + ",".join(opts))
    imp = stores.get("s2_padded")
    with mount(imp.store, *opts) as m:
        rels = sorted(m.files()) + ["samples/" + f for f in sorted(os.listdir(m.p("samples")))]
        want = whole_files(m, rels)  # the reference: whole files, fresh mount
        if not opts or opts == ("share_zero_targets",) or opts == ("handles",):
            for rel in rels:
                if not rel.startswith("samples/"):
                    assert_same(load_bytes(want[rel]), originals.get(imp.tree, rel), rel)
    counts = {"pread": 0, "direct": 0, "mmap": 0, "after_drop": 0}
    with mount(imp.store, *opts) as m:  # a second mount: cold again
        for i in range(150 * SCALE):
            rel = r.choice(rels)
            data, path = want[rel], m.p(rel)
            size = len(data)
            off = r.randrange(size + 1) if r.random() < 0.9 else r.choice([0, size, max(0, size - 1)])
            n = r.choice([1, 7, 4096, 65536, 1 << 20, r.randrange(1, 3 << 20)])
            kind = r.choice(list(counts))
            if kind == "after_drop":
                drop_caches(path, imp.store)
            if kind == "mmap":
                got = _mmap_read(path, off, n)
            else:
                got = _pread(path, off, n, direct=(kind == "direct"))
            assert got == data[off:off + n], "%s %s [%d, +%d) differs (seed %d, op %d)" % (
                kind, rel, off, n, SEED, i)
            counts[kind] += 1
        st = m.stats()
        assert st["errors"] == 0, st
    print("stress random reads %s: %s" % (",".join(opts) or "default", counts))


# ------------------------------------------------------------ kill -9 --

def _kill_at_random(argv, r, longest, env=None):
    """Start argv and SIGKILL it after a random part of longest seconds;
    True if it was killed (False: it had finished first)."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        p.wait(timeout=r.uniform(0, longest))
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True
    assert p.returncode == 0, "%s: %s" % (" ".join(argv), p.stderr.read().decode(errors="replace"))
    return False


def _compare_all(mount, store, imp, originals):
    with mount(store) as m:
        for rel in imp.desc["files"]:
            assert_same(load_bytes(read_all(m.p(rel))), originals.get(imp.tree, rel), rel)


def test_kill_import(tmp_path, trees, cltfs_bin, run_cltfs, mount, originals):
    r = rng("kill_import")
    tree, desc = trees.make(tmp_path / "tree", layers="0-5", n_layers=8, batches=6,
                            samples_per_batch=1, d=256, min_tokens=100, max_tokens=300, seed=21)
    t0 = time.monotonic()
    once = str(tmp_path / "once")
    res = run_cltfs("import", once, tree, "--quiet")
    assert res.returncode == 0, describe(res)
    full = time.monotonic() - t0
    kills = 0
    for k in range(3 * SCALE):
        store = str(tmp_path / ("s%d" % k))
        for attempt in range(r.randint(1, 3)):
            if _kill_at_random([cltfs_bin, "import", store, tree, "--quiet"], r, full * 1.2):
                kills += 1
                if os.path.exists(os.path.join(store, "cltfs.json")):
                    v = run_cltfs("verify", store)
                    # an interrupted import is a valid store with chunks missing
                    assert v.returncode == 0 or "missing" in v.stdout + v.stderr, describe(v)
        res = run_cltfs("import", store, tree, "--quiet")
        assert res.returncode == 0, "resumed import: " + describe(res)
        v = run_cltfs("verify", store)
        assert v.returncode == 0, describe(v)
        # frames a killed run wrote but never recorded are cut off by the next
        assert pack_bytes(store) == pack_bytes(once), "dead bytes left in the packs"
        _compare_all(mount, store, type("I", (), {"desc": desc, "tree": tree}), originals)
        shutil.rmtree(store)
    print("stress kill import: %d kills over %d stores" % (kills, 3 * SCALE))


def test_kill_pull(tmp_path, stores, cltfs_bin, run_cltfs, mount, originals, make_hub):
    r = rng("kill_pull")
    imp = stores.get("big")
    hub = make_hub()
    hub.add_repo("me/acts", imp.store)
    url, env = STORE_URL, hf_env(tmp_path, hub)
    t0 = time.monotonic()
    res = run_cltfs("pull", url, str(tmp_path / "once"), env=env)
    assert res.returncode == 0, describe(res)
    full = max(time.monotonic() - t0, 0.05)
    kills = 0
    for k in range(2 * SCALE):
        store = str(tmp_path / ("p%d" % k))
        for attempt in range(r.randint(1, 3)):
            kills += _kill_at_random([cltfs_bin, "pull", url, store, "--quiet"], r, full * 1.2, env=env)
            if os.path.exists(os.path.join(store, "cltfs.json")):
                v = run_cltfs("verify", store)
                assert v.returncode == 0 or "missing" in v.stdout + v.stderr, describe(v)
        res = run_cltfs("pull", url, store, "--quiet", env=env)
        assert res.returncode == 0, describe(res)
        assert run_cltfs("verify", store).returncode == 0
        assert pack_bytes(store) == pack_bytes(tmp_path / "once"), "dead bytes left in the packs"
        _compare_all(mount, store, imp, originals)
        shutil.rmtree(store)
    print("stress kill pull: %d kills over %d stores" % (kills, 2 * SCALE))


PACE = 0.12   # seconds a reader of a Hub fill waits between files: a fill of seconds, synced in its middle


def _read_quietly(paths):
    """Read every path whole, PACE apart, ignoring errors (the mount is
    killed under the reader)."""
    for p in paths:
        try:
            read_all(p)
        except OSError:
            pass
        time.sleep(PACE)


def _readers(r, mnt, rels):
    """Two readers going through every view in their own random orders."""
    import threading
    ts = [threading.Thread(target=_read_quietly, args=([os.path.join(mnt, rel) for rel in r.sample(rels, len(rels))],))
          for _ in range(2)]
    for t in ts:
        t.start()
    return ts


def test_kill_hub_fill(tmp_path, stores, cltfs_bin, run_cltfs, mount, originals, make_hub):
    """kill -9 of a mount at a random moment of its fill from a Hub store
    repo (two readers going through every view in random orders; frames
    fetched in spans, appended and made durable about once a second by the
    tier's background thread), 1 to 3 times a local store; after each,
    verify.  Then a mount again serves every view equal to the originals
    and completes the store, which verifies, and alone serves every view."""
    r = rng("kill_hub_fill")
    imp = stores.get("big", "--chunk-rows", "16")   # many chunks: many frames, many spans
    hub = make_hub(latency=0.01)
    hub.add_repo("me/acts", imp.store)
    env = hf_env(tmp_path, hub)
    rels = imp.desc["files"]
    t0 = time.monotonic()
    with mount(STORE_URL, "store=" + str(tmp_path / "once"), env=env) as m:
        for t in _readers(r, m.path, rels):
            t.join()
    full = time.monotonic() - t0
    kills = partial = 0
    for k in range(2 * SCALE):
        store = str(tmp_path / ("h%d" % k))
        for attempt in range(r.randint(1, 3)):
            mnt = tmp_path / ("m%d_%d" % (k, attempt))
            p = spawn_mount(cltfs_bin, STORE_URL, mnt, env, "store=" + store)
            readers = _readers(r, str(mnt), rels)
            time.sleep(r.uniform(0, full * 1.2))
            kill_mount(p, mnt)
            kills += 1
            for t in readers:
                t.join()
            v = run_cltfs("verify", store)
            assert v.returncode == 0 or "missing" in v.stdout + v.stderr, describe(v)
            st = run_cltfs("stat", store, "--json")
            assert st.returncode == 0, describe(st)
            st = json.loads(st.stdout)
            partial += 0 < st["chunks"] < st["chunks_needed"]
        with mount(STORE_URL, "store=" + store, env=env) as m:
            for rel in rels:
                assert_same(load_bytes(read_all(m.p(rel))), originals.get(imp.tree, rel), rel)
        v = run_cltfs("verify", store)
        assert v.returncode == 0, describe(v)
        _compare_all(mount, store, imp, originals)   # the store alone
        shutil.rmtree(store)
    print("stress kill hub fill: %d kills over %d stores (a fill: %.1f s), %d leaving the store part filled"
          % (kills, 2 * SCALE, full, partial))


def test_kill_plain_fill_shared_cache(tmp_path, cltfs_bin, mount, make_hub):
    """One HF cache filled by turns by cltfs and by huggingface_hub (1.28's
    and 0.36's downloads, tests/hfemu.py), each killed at a random moment,
    1 to 4 times a cache; then a mount reads every file right, and the
    cache holds exactly one blob a file, each hashing to its name, and no
    partial download of either naming."""
    from hfemu import Hf, Killed
    r = rng("kill_plain_fill")
    g = random.Random(SEED)
    files = {"a.bin": g.randbytes(3 << 20), "sub/b.bin": g.randbytes(1 << 20), "small.txt": g.randbytes(3000)}
    hub = make_hub()
    commit = hub.add_repo("me/plain", files)
    url = "hf://datasets/me/plain"
    kills = {"cltfs": 0, "hf": 0}
    for k in range(2 * SCALE):
        base = tmp_path / ("c%d" % k)
        env = hf_env(base, hub, CLTFS_HUB_BACKOFF_MS=150, CLTFS_HUB_RETRIES=20)
        for attempt in range(r.randint(1, 4)):
            if r.random() < 0.5:
                # cltfs's bodies are cut short a few times: a download takes
                # several resumed requests, with backoffs between them
                hub.add_fault(r"^/blobs/", "truncate", count=6, after_bytes=400000, server="cdn")
                mnt = base / ("m%d" % attempt)
                p = spawn_mount(cltfs_bin, url, mnt, env)
                readers = _readers(r, str(mnt), sorted(files))
                time.sleep(r.uniform(0, 1.5))
                kill_mount(p, mnt)
                for t in readers:
                    t.join()
                hub.clear_faults()
                kills["cltfs"] += 1
            else:
                rel = r.choice(sorted(files))
                hf = Hf(r.choice(["0.36", "1.28"]), base / "hf" / "hub", hub.endpoint)
                try:
                    hf.hf_hub_download("me/plain", rel, kill_after=r.randint(0, len(files[rel])))
                except Killed:
                    kills["hf"] += 1

        with mount(url, env=env) as m:
            for rel, data in files.items():
                assert read_all(m.p(rel)) == data, rel
        folder = base / "hf" / "hub" / "datasets--me--plain"
        blobs = sorted(os.listdir(folder / "blobs"))
        assert blobs == sorted(etag_of(d) for d in files.values()), blobs
        for rel in files:
            assert read_all(folder / "snapshots" / commit / rel) == files[rel], rel
    print("stress kill plain fill: %d kills of cltfs, %d of huggingface_hub, over %d caches"
          % (kills["cltfs"], kills["hf"], 2 * SCALE))


# ------------------------------------------------------------ damage --

def _damage(r, store):
    """One random flip or truncation of a pack, an index or samples.bin;
    returns a description."""
    files = glob.glob(os.path.join(store, "packs", "*.pack")) + \
        glob.glob(os.path.join(store, "packs", "*.idx")) + \
        glob.glob(os.path.join(store, "samples.bin"))
    path = r.choice(sorted(files))
    size = os.path.getsize(path)
    if r.random() < 0.75 and size:
        off = r.randrange(size)
        with open(path, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ (1 << r.randrange(8))]))
        return "flip %s@%d" % (os.path.basename(path), off)
    cut = r.randrange(size) if size else 0
    os.truncate(path, cut)
    return "truncate %s to %d of %d" % (os.path.basename(path), cut, size)


def test_random_damage(tmp_path, stores, mount, cltfs_bin, originals):
    r = rng("random_damage")
    imp = stores.get("s2_padded")
    counts = {"refused": 0, "eio": 0, "right": 0}
    with mount(imp.store) as m:
        want = whole_files(m, imp.desc["files"])
    for k in range(8 * SCALE):
        store = str(tmp_path / ("d%d" % k))
        shutil.copytree(imp.store, store, ignore=shutil.ignore_patterns("locks"))
        what = [_damage(r, store) for _ in range(r.randint(1, 3))]
        mnt = tmp_path / ("m%d" % k)
        mnt.mkdir()
        # daemonized: a refused store exits non-zero with a message
        p = subprocess.run([cltfs_bin, store, str(mnt), "-o", "capture=off"], capture_output=True,
                           text=True, timeout=60)
        if p.returncode != 0:
            assert "cltfs: " in p.stderr, "refused without a message: %s: %s" % (what, describe(p))
            counts["refused"] += 1
            shutil.rmtree(store)
            continue
        try:
            for rel in imp.desc["files"]:
                try:
                    got = read_all(str(mnt / rel))
                except OSError as e:
                    assert e.errno == errno.EIO, "%s: %s after %s" % (rel, e, what)
                    counts["eio"] += 1
                    continue
                assert got == want[rel], "%s: different bytes after %s (seed %d)" % (rel, what, SEED)
                counts["right"] += 1
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)])
        shutil.rmtree(store)
    print("stress damage: %s over %d stores" % (counts, 8 * SCALE))
    assert counts["eio"] + counts["refused"] > 0


def test_checksum_of_a_view_is_stable(stores, mount):
    """Two mounts, the same options: the same bytes (what the reads above
    compare against is itself deterministic)."""
    imp = stores.get("s1_bf16")
    digests = []
    for _ in range(2):
        with mount(imp.store) as m:
            digests.append({rel: hashlib.sha256(read_all(m.p(rel))).hexdigest() for rel in m.files()})
    assert digests[0] == digests[1]


def test_kill_capture(tmp_path, llava, fp32_store, cltfs_bin, run_cltfs, mount):
    """kill -9 at a random moment of `cltfs capture`, 1 to 3 times, then
    verify, capture again (it resumes), and every file equal to an
    uninterrupted capture's, byte for byte."""
    import test_capture as TC
    r = rng("kill_capture")
    base = fp32_store[0]
    t0 = time.monotonic()
    once = str(tmp_path / "once")
    TC.run_init(run_cltfs, once, llava.model("fp32"), llava.dataset(), "--dtype", "float32", "--quiet")
    TC.run_capture(run_cltfs, once, "--quiet")
    full = time.monotonic() - t0
    kills = 0
    for k in range(2 * SCALE):
        store = str(tmp_path / ("c%d" % k))
        TC.run_init(run_cltfs, store, llava.model("fp32"), llava.dataset(), "--dtype", "float32", "--quiet")
        for attempt in range(r.randint(1, 3)):
            if _kill_at_random([cltfs_bin, "capture", store, "--quiet"], r, full):
                kills += 1
                v = run_cltfs("verify", store)
                assert v.returncode == 0, describe(v)
        res = run_cltfs("capture", store, "--quiet", timeout=TC.CAPTURE_TIMEOUT)
        assert res.returncode == 0, describe(res)
        with mount(store) as m, mount(base) as mb:
            for rel in m.files():
                assert read_all(m.p(rel)) == read_all(mb.p(rel)), rel
        shutil.rmtree(store)
    print("stress kill capture: %d kills over %d stores" % (kills, 2 * SCALE))
