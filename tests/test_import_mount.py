"""End-to-end: generate reference trees, `cltfs import` them, mount the store,
and check that every view loads exactly like the original file."""

import errno
import json
import os
import random
import re
import shutil
import subprocess
import time
import zipfile

import pytest
import torch

import gen_tree
from conftest import (TREE_CONFIGS, LoadedFiles, assert_same, describe, is_mounted, load_bytes,
                      mount_entry, unmount)

CONFIGS = sorted(TREE_CONFIGS)
# (tree, extra import arguments): every tree as imported by default, and a
# few with small chunks so that chunks split batches and views span chunks
STORE_CASES = [(n, ()) for n in CONFIGS] + [
    ("s1_bf16", ("--chunk-rows", "5")),
    ("s2_padded", ("--chunk-rows", "7")),
    ("s1td", ("--chunk-rows", "3")),
    ("flat", ("--chunk-rows", "1")),
    ("offset0", ("--chunk-rows", "4")),
    ("big", ("--chunk-rows", "64")),
    ("odd_d", ("--chunk-rows", "3")),
]
STORE_IDS = ["-".join((n,) + tuple(a.strip("-") for a in args)) for n, args in STORE_CASES]


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------ generator --

def test_generator_tree_is_consistent(trees):
    """The generator itself: y is targets[0], shared mlp streams agree across y
    files, zero padding past the last layer, padded batches, distinct T."""
    for name in CONFIGS:
        tree, desc = trees.get(name)
        cfg = TREE_CONFIGS[name]
        S = desc["samples_per_batch"]
        assert desc["files"] == sorted(
            "L%d/batch_%d_%s.pt" % (L, k, s) for L in desc["layers"]
            for k in range(desc["n_batches"]) for s in "xy")
        if S == 1:
            assert len(set(desc["T"])) == len(desc["T"]), desc["T"]
        else:
            assert all(len(set(ts)) > 1 for ts in desc["tokens"]), desc["tokens"]
        for k in range(desc["n_batches"]):
            mlp = {}
            for L in desc["layers"]:
                y = torch.load(os.path.join(tree, "L%d/batch_%d_y.pt" % (L, k)))
                x = torch.load(os.path.join(tree, "L%d/batch_%d_x.pt" % (L, k)))
                assert list(y) == ["y", "targets", "n_targets"]
                assert y["y"] is y["targets"][0]
                assert y["n_targets"] == cfg.get("n_targets", 16) == len(y["targets"])
                if desc["x_format"] == "bare":
                    assert torch.is_tensor(x)
                    xt = x
                else:
                    assert list(x) == [desc["x_format"]]
                    xt = x[desc["x_format"]]
                want = gen_tree.file_shape(S, desc["T"][k], desc["d"], desc["shape"])
                assert list(xt.shape) == want
                assert str(xt.dtype) == "torch." + desc["dtype"]
                for j, t in enumerate(y["targets"]):
                    assert list(t.shape) == want and t.dtype == xt.dtype
                    tl = L + desc["target_offset"] + j
                    if tl >= desc["n_layers"]:
                        assert not t.any(), "target past the last layer not zero"
                    else:
                        assert t.any()
                        if tl in mlp:
                            assert torch.equal(mlp[tl], t)
                        mlp[tl] = t
                    # x and mlp_out streams are different tensors
                    assert not torch.equal(t, xt)


def test_generator_cli(tmp_path):
    out = tmp_path / "t"
    r = subprocess.run(["/usr/bin/python3", os.path.join(os.path.dirname(__file__),
                                                          "gen_tree.py"), str(out),
                        "--layers", "0-2", "--n-layers", "4", "--batches", "2", "--d", "16",
                        "--dtype", "float16", "--n-targets", "4", "--shape", "S1Td",
                        "--samples-per-batch", "2", "--x-format", "data", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    desc = json.loads(r.stdout)
    assert desc["layers"] == [0, 1, 2] and desc["n_batches"] == 2
    x = torch.load(str(out / "L2/batch_1_x.pt"))
    assert list(x) == ["data"] and x["data"].dtype == torch.float16
    assert x["data"].shape[:2] == (2, 1) and x["data"].shape[3] == 16
    d2 = gen_tree.make_tree(str(tmp_path / "sized"), layers="0-1", n_layers=2, d=32,
                            total_mb=0.5)
    assert 0.25e6 < d2["bytes"] < 1e6, d2["bytes"]


# ----------------------------------------------------------------- CLI --

def test_cli_help_version(run_cltfs):
    for a in ("--help", "--version"):
        r = run_cltfs(a)
        assert r.returncode == 0, describe(r)
        assert r.stdout.strip(), a + " printed nothing on stdout"


@pytest.mark.parametrize("name", CONFIGS)
def test_import_summary(stores, name):
    imp = stores.get(name)
    r = imp.result
    assert r.returncode == 0, describe(r)
    assert r.stdout.strip(), "import printed no summary line"
    # progress only when stderr is a TTY
    assert r.stderr == "", "import wrote to a non-TTY stderr: %r" % r.stderr
    assert os.path.isfile(os.path.join(imp.store, "cltfs.json"))
    assert json.load(open(os.path.join(imp.store, "cltfs.json")))
    packs = os.listdir(os.path.join(imp.store, "packs"))
    assert any(p.endswith(".pack") for p in packs) and any(p.endswith(".idx") for p in packs)


def test_import_dedups(stores):
    """The store holds each distinct stream once: far smaller than the tree."""
    imp = stores.get("s1_bf16")
    packs = os.path.join(imp.store, "packs")
    stored = sum(os.path.getsize(os.path.join(packs, p)) for p in os.listdir(packs))
    assert stored * 3 < imp.desc["bytes"], (stored, imp.desc["bytes"])


def test_stat_and_verify(stores, run_cltfs):
    imp = stores.get("s1_bf16")
    r = run_cltfs("stat", imp.store)
    assert r.returncode == 0 and r.stdout.strip(), describe(r)
    r = run_cltfs("stat", imp.store, "--json")
    assert r.returncode == 0, describe(r)
    assert isinstance(json.loads(r.stdout), dict)
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 0, describe(r)


def test_reimport_same_tree(tmp_path, stores, run_cltfs, mount, originals):
    """Importing the same tree again into an existing store succeeds and the
    views are unchanged."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    r = run_cltfs("import", imp.store, imp.tree)
    assert r.returncode == 0, describe(r)
    with mount(imp.store) as m:
        for rel in imp.desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)


# ------------------------------------------------------- mount contents --

@pytest.mark.parametrize("name,args", STORE_CASES, ids=STORE_IDS)
def test_views_equal_tree(stores, mount, originals, name, args):
    """Every file loads through the mount exactly like the original: keys,
    key order, n_targets, dtype, shape, bit-identical values; y shares its
    storage with targets[0]; the listing is the tree's."""
    imp = stores.get(name, *args)
    with mount(imp.store) as m:
        layers = sorted(d for d in os.listdir(m.path) if re.fullmatch(r"L\d+", d))
        assert layers == sorted("L%d" % L for L in imp.desc["layers"])
        assert m.files() == imp.desc["files"]
        for rel in imp.desc["files"]:
            got = torch.load(m.p(rel))
            want = originals.get(imp.tree, rel)
            assert_same(got, want, rel)
            if rel.endswith("_y.pt"):
                assert got["n_targets"] == imp.desc["n_targets"]
                assert got["y"].data_ptr() == got["targets"][0].data_ptr(), \
                    "%s: y does not share storage with targets[0]" % rel


@pytest.mark.parametrize("name", ["s1_bf16", "s2_padded"])
def test_y_is_targets0(stores, mount, name):
    """As torch.save writes the reference, y is the very object targets[0]."""
    imp = stores.get(name)
    with mount(imp.store) as m:
        for rel in imp.desc["files"]:
            if rel.endswith("_y.pt"):
                obj = torch.load(m.p(rel))
                assert obj["y"] is obj["targets"][0], rel


@pytest.mark.parametrize("name,args", STORE_CASES, ids=STORE_IDS)
def test_zip_and_weights_only(stores, mount, originals, name, args):
    """Every view is a valid zip (testzip passes: CRCs right), st_size is the
    length read, and it loads with weights_only=True."""
    imp = stores.get(name, *args)
    with mount(imp.store) as m:
        for rel in imp.desc["files"]:
            p = m.p(rel)
            assert os.stat(p).st_size == len(read_all(p)), rel
            with zipfile.ZipFile(p) as z:
                assert z.testzip() is None, rel
                names = z.namelist()
                assert any(n.endswith("/data.pkl") for n in names), names
            got = torch.load(p, weights_only=True)
            assert_same(got, originals.get(imp.tree, rel), rel)


@pytest.mark.parametrize("name,args", [("s1_bf16", ()), ("s2_padded", ()), ("bare_fp32", ()),
                                       ("s1td", ()), ("s1_bf16", ("--chunk-rows", "5")),
                                       ("flat", ("--chunk-rows", "1")),
                                       ("big", ("--chunk-rows", "64"))])
def test_random_pread(stores, mount, name, args):
    """Random preads (on a fresh mount, before anything is cached) equal the
    same bytes of a full sequential read; two full reads are identical;
    st_size is the length read."""
    imp = stores.get(name, *args)
    rng = random.Random(1234)
    with mount(imp.store) as m:
        picks = {}
        for rel in imp.desc["files"]:
            size = os.stat(m.p(rel)).st_size
            fd = os.open(m.p(rel), os.O_RDONLY)
            try:
                got = []
                for _ in range(8):
                    off = rng.randrange(0, size + 1)
                    ln = rng.choice([1, 7, 64, 511, 4096, 65536, size + 100])
                    got.append((off, ln, os.pread(fd, ln, off)))
                got.append((size, 10, os.pread(fd, 10, size)))
                got.append((size + 12345, 10, os.pread(fd, 10, size + 12345)))
            finally:
                os.close(fd)
            picks[rel] = (size, got)
        for rel, (size, got) in picks.items():
            full = read_all(m.p(rel))
            assert len(full) == size, "%s: st_size %d, read %d bytes" % (rel, size, len(full))
            assert read_all(m.p(rel)) == full, rel
            for off, ln, b in got:
                assert b == full[off:off + ln], "%s: pread(%d, %d) differs" % (rel, ln, off)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("name", ["s1_bf16", "nt4_all"])
def test_dataloader_workers(stores, mount, originals, name):
    """A DataLoader with 4 workers over all files returns the same tensors."""
    imp = stores.get(name)

    rels = list(imp.desc["files"]) * 2
    with mount(imp.store) as m:
        dl = torch.utils.data.DataLoader(LoadedFiles(m.path, rels), batch_size=None,
                                         num_workers=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
        seen = []
        for rel, obj in dl:
            assert_same(obj, originals.get(imp.tree, rel), rel)
            seen.append(rel)
        assert sorted(seen) == sorted(rels)


# -------------------------------------------- the reference training loop --

def _ref_tensor(obj):
    """obj['x'] or obj['data'] (a bare tensor too); [N,T,H] or [N,1,T,H] (or
    flat [rows, H]) -> [rows, H] float32."""
    if isinstance(obj, dict):
        t = obj["x"] if "x" in obj else obj["data"]
    else:
        t = obj
    if t.dim() == 4:
        t = t.squeeze(1)
    return t.reshape(-1, t.shape[-1]).float()


def _ref_pairs(layer_dir):
    """Pair x and y files by the number after batch_, in batch order."""
    xs, ys = {}, {}
    for f in os.listdir(layer_dir):
        mt = re.match(r"batch_(\d+)_([xy])\.pt$", f)
        if mt:
            (xs if mt.group(2) == "x" else ys)[int(mt.group(1))] = os.path.join(layer_dir, f)
    return [(xs[k], ys[k]) for k in sorted(set(xs) & set(ys))]


def _train_tiny_clt(root, steps=12, n_features=16):
    """A few steps of a tiny linear CLT, reading files as the reference
    training script does; returns the losses."""
    layers = sorted(int(d[1:]) for d in os.listdir(root) if re.fullmatch(r"L\d+", d))
    pairs = {L: _ref_pairs(os.path.join(root, "L%d" % L)) for L in layers}
    first_x, first_y = pairs[layers[0]][0]
    y0 = torch.load(first_y)
    n_targets = int(y0["n_targets"])
    d = _ref_tensor(torch.load(first_x)).shape[-1]
    torch.manual_seed(0)
    enc = {L: torch.nn.Linear(d, n_features) for L in layers}
    dec = {L: torch.nn.Linear(n_features, n_targets * d, bias=False) for L in layers}
    params = [p for m in list(enc.values()) + list(dec.values()) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    losses = []
    step = 0
    while step < steps:
        for k in range(len(pairs[layers[0]])):
            if step >= steps:
                break
            opt.zero_grad()
            loss = 0.0
            for L in layers:
                xf, yf = pairs[L][k]
                x = _ref_tensor(torch.load(xf))
                yobj = torch.load(yf)
                assert yobj["n_targets"] == n_targets
                tg = torch.cat([t.reshape(-1, d).float() for t in yobj["targets"]], dim=1)
                scale = x.abs().mean() + 1e-6
                f = torch.relu(enc[L](x / scale))
                loss = loss + torch.nn.functional.mse_loss(dec[L](f), tg / scale)
            loss.backward()
            opt.step()
            losses.append(float(loss))
            step += 1
    return n_targets, d, losses


@pytest.mark.parametrize("name", ["s1_bf16", "s1td", "data_fp16", "nt4_all"])
def test_reference_training_loop(stores, mount, name):
    """The reference training loader runs unchanged on the mount and sees
    exactly the data of the tree (identical losses)."""
    imp = stores.get(name)
    want = _train_tiny_clt(imp.tree)
    assert want[0] == imp.desc["n_targets"] and want[1] == imp.desc["d"]
    with mount(imp.store) as m:
        got = _train_tiny_clt(m.path)
    assert all(v == v and abs(v) != float("inf") for v in got[2]), got
    assert got == want


# -------------------------------------------------- .cltfs/ and options --

# "chunks" has one more key per tier of the mount ("hub", "capture"): a
# local store's mount has none.
STATS_KEYS = {
    "chunks": {"memory", "store"},
    "bytes_read": None, "reads": None, "opens": None, "errors": None,
    "cache": {"bytes", "limit", "entries"},
    "index": {"chunks", "bytes"},
    "readahead": None, "readahead_queued": None, "readahead_errors": None,
    "latency_us": {"mean", "max"},
    "requests": {"lookup", "readdir", "readdirplus"},
}


def check_stats(st):
    assert isinstance(st, dict)
    for k, sub in STATS_KEYS.items():
        assert k in st, "stats lacks %r: %s" % (k, st)
        if sub is None:
            assert type(st[k]) is int, "stats[%r] = %r is not an integer" % (k, st[k])
        else:
            assert isinstance(st[k], dict), "stats[%r] = %r" % (k, st[k])
            for s in sub:
                assert type(st[k].get(s)) is int, "stats[%r][%r] = %r" % (k, s, st[k].get(s))


def test_cltfs_dir(stores, mount):
    imp = stores.get("s1_bf16")
    with mount(imp.store) as m:
        # a new snapshot at each open, its size known (zero-message opens)
        assert 0 < os.stat(m.p(".cltfs/stats")).st_size < 4096
        # sizes come from the manifest: stat and listing load no chunk
        for rel in imp.desc["files"]:
            assert os.stat(m.p(rel)).st_size > 0
        st0 = m.stats()
        check_stats(st0)
        assert st0["chunks"]["store"] == 0 and st0["reads"] == 0, st0
        total = 0
        for rel in imp.desc["files"]:
            total += len(read_all(m.p(rel)))
        st = m.stats()
        check_stats(st)
        assert st["reads"] > st0["reads"]
        assert st["bytes_read"] > st0["bytes_read"]
        assert st["chunks"]["store"] > 0
        assert set(st["chunks"]) == {"memory", "store"}, st  # no tier behind a local store
        assert st["errors"] == 0
        assert 0 <= st["cache"]["bytes"] <= st["cache"]["limit"]
        assert st["cache"]["limit"] in (256 << 20, 256 * 10 ** 6), st["cache"]
        # chunk buffers: what was read needed some, and the prefault that
        # ran before the first read stopped there (never past cache_mb)
        assert 0 < st["cache"]["buffers"] <= st["cache"]["limit"], st["cache"]
        man = json.loads(read_all(m.p(".cltfs/manifest.json")))
        with open(os.path.join(imp.store, "cltfs.json")) as f:
            assert man == json.load(f)
        assert os.stat(m.p(".cltfs/manifest.json")).st_size == len(
            read_all(m.p(".cltfs/manifest.json")))


def test_small_cache(tmp_path, trees, run_cltfs, mount, originals):
    """cache_mb=1 with more than 1 MB of distinct data still serves every file
    correctly, the cache stays under its limit, and the bytes are those of a
    default mount."""
    tree, desc = trees.make(tmp_path / "tree", layers="0-7", n_layers=8, batches=6,
                            samples_per_batch=2, d=64, min_tokens=40, max_tokens=120,
                            seed=11)
    store = str(tmp_path / "store")
    r = run_cltfs("import", store, tree)
    assert r.returncode == 0, describe(r)
    ref = {}
    with mount(store) as m:
        for rel in desc["files"]:
            ref[rel] = read_all(m.p(rel))
    with mount(store, "cache_mb=1", "readahead=2") as m:
        rels = list(desc["files"])
        random.Random(5).shuffle(rels)
        for rel in rels:
            data = read_all(m.p(rel))
            assert data == ref[rel], rel
            assert_same(load_bytes(data), originals.get(tree, rel), rel)
        st = m.stats()
        check_stats(st)
        assert st["cache"]["limit"] <= (1 << 20), st["cache"]
        assert st["cache"]["bytes"] <= st["cache"]["limit"], st["cache"]


def test_daemonizes(stores, cltfs_bin, tmp_path, originals):
    """Without -f the command returns once the mount is up."""
    imp = stores.get("s1_bf16")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run([cltfs_bin, imp.store, str(mnt)], capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, describe(r)
        assert is_mounted(str(mnt)), "cltfs returned 0 but nothing is mounted"
        rel = imp.desc["files"][1]
        assert_same(torch.load(str(mnt / rel)), originals.get(imp.tree, rel), rel)
    finally:
        unmount(str(mnt))
    assert not is_mounted(str(mnt))


# ------------------------------------------------- mount(8) and fstab --

def _needs_mount_helper():
    if os.geteuid() != 0:
        pytest.skip("mount(8) tests need root")
    if not os.path.exists("/sbin/mount.fuse3") and not os.path.exists("/usr/sbin/mount.fuse3"):
        pytest.skip("/sbin/mount.fuse3 missing")
    if not (os.path.exists("/sbin/mount.fuse") or os.path.exists("/usr/sbin/mount.fuse")):
        pytest.skip("mount(8) needs /sbin/mount.fuse (only mount.fuse3 is installed)")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8)")


def _daemons_for(mnt):
    """pids whose command line names mnt (the daemons mount(8) started)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mnt) in args and b"mount" not in os.path.basename(args[0]):
            pids.append(int(pid))
    return pids


HELPER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _helper_finds(cltfs_bin):
    """mount(8) drops PATH from the environment of /sbin/mount.fuse, which runs
    `/bin/sh -c 'cltfs ...'`: /bin/sh then searches its default PATH.  True
    when that finds this very binary."""
    for d in HELPER_PATH.split(":"):
        p = os.path.join(d, "cltfs")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return os.path.samefile(p, cltfs_bin)
    return False


@pytest.fixture
def on_helper_path(cltfs_bin):
    """Make `cltfs` findable by mount(8)'s helpers for one test: a link in
    /usr/local/bin (and /sbin/mount.cltfs for `mount -t cltfs`) when nothing
    is installed there, removed afterwards.  An installed cltfs that is
    another binary is left alone and the test skipped."""
    _needs_mount_helper()
    links = []
    for path in ("/usr/local/bin/cltfs", "/sbin/mount.cltfs"):
        if os.path.lexists(path):
            if not os.path.samefile(path, cltfs_bin):
                pytest.skip("%s is another cltfs; not replacing it" % path)
            continue
        try:
            os.symlink(cltfs_bin, path)
        except OSError as e:
            pytest.skip("cannot link %s: %s" % (path, e))
        links.append(path)
    try:
        assert _helper_finds(cltfs_bin)
        yield
    finally:
        for path in links:
            os.unlink(path)


@pytest.mark.parametrize("how", ["type_fuse_hash", "type_fuse.cltfs", "type_fuse_store_opt",
                                 "fstab", "type_cltfs"])
def test_mount_helper(stores, cltfs_bin, tmp_path, originals, on_helper_path, how):
    imp = stores.get("s1_bf16")
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(cltfs_bin) + os.pathsep + env.get("PATH", "")
    if how == "type_fuse_hash":
        # the classic `prog#source` form: mount.fuse runs prog by its full path
        cmd = ["mount", "-t", "fuse", "%s#%s" % (cltfs_bin, imp.store), mnt]
    elif how == "type_fuse.cltfs":
        cmd = ["mount", "-t", "fuse.cltfs", imp.store, mnt]
    elif how == "type_fuse_store_opt":
        cmd = ["mount", "-t", "fuse", "cltfs", mnt, "-o", "store=" + imp.store]
    elif how == "type_cltfs":
        # mount(8) runs /sbin/mount.cltfs STORE MNT -o rw,...: cltfs as its own helper
        cmd = ["mount", "-t", "cltfs", imp.store, mnt, "-o", "cache_mb=16"]
    else:
        fstab = tmp_path / "fstab"
        fstab.write_text("# test fstab\n%s %s fuse.cltfs defaults,cache_mb=16 0 0\n" % (
            imp.store, mnt))
        cmd = ["mount", "-T", str(fstab), mnt]
    pids = []
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, "%s: %s" % (" ".join(cmd), describe(r))
        assert is_mounted(mnt), "%s returned 0 but nothing is mounted" % " ".join(cmd)
        fstype, _src = mount_entry(mnt)
        assert fstype.startswith("fuse"), fstype
        pids = _daemons_for(mnt)
        for rel in imp.desc["files"][:4]:
            assert_same(torch.load(os.path.join(mnt, rel)), originals.get(imp.tree, rel), rel)
        r = subprocess.run(["umount", mnt], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, "umount: " + describe(r)
        assert not is_mounted(mnt)
    finally:
        unmount(mnt, use_umount=True)
        # the daemon must go away once unmounted
        t0 = time.monotonic()
        alive = pids
        while alive and time.monotonic() - t0 < 10:
            alive = [p for p in pids if os.path.exists("/proc/%d" % p)]
            time.sleep(0.05)
        for p in alive:
            os.kill(p, 9)
    assert not alive, "daemon(s) %s still running after umount" % alive


# ----------------------------------------------------- concurrency --

@pytest.mark.parametrize("args", [(), ("--chunk-rows", "5")], ids=["default", "chunk5"])
def test_concurrent_readers(stores, mount, args):
    """Many threads reading the same files at once on a fresh mount (single
    flight, readahead, a small cache) all get the bytes of a quiet mount."""
    import threading
    imp = stores.get("s1_bf16", *args)
    with mount(imp.store) as m:
        ref = {rel: read_all(m.p(rel)) for rel in imp.desc["files"]}
    for opts in ((), ("cache_mb=1", "readahead=8")):
        with mount(imp.store, *opts) as m:
            errors = []

            def worker(seed):
                rng = random.Random(seed)
                rels = list(imp.desc["files"])
                rng.shuffle(rels)
                try:
                    for rel in rels[:24]:
                        fd = os.open(m.p(rel), os.O_RDONLY)
                        try:
                            size = len(ref[rel])
                            off = rng.randrange(0, size)
                            b = os.pread(fd, rng.randrange(1, size + 1), off)
                            if b != ref[rel][off:off + len(b)] or not b:
                                errors.append("%s: pread at %d" % (rel, off))
                        finally:
                            os.close(fd)
                        if read_all(m.p(rel)) != ref[rel]:
                            errors.append("%s: full read" % rel)
                except Exception as e:  # noqa: BLE001
                    errors.append("%s: %r" % (seed, e))

            ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
            assert not any(t.is_alive() for t in ts), "readers hung"
            assert not errors, errors[:5]
            assert m.stats()["errors"] == 0


# ----------------------------------------------------- store selection --

def test_store_selection(stores, mount, tmp_path, originals):
    """STORE omitted: -o store=DIR, else $CLTFS_STORE, else
    $XDG_DATA_HOME/cltfs/store."""
    imp = stores.get("s1_bf16")
    rel = imp.desc["files"][3]
    want = originals.get(imp.tree, rel)
    with mount(None, "store=" + imp.store) as m:
        assert_same(torch.load(m.p(rel)), want, rel)
    env = dict(os.environ, CLTFS_STORE=imp.store)
    with mount(None, env=env) as m:
        assert_same(torch.load(m.p(rel)), want, rel)
    xdg = tmp_path / "xdg"
    (xdg / "cltfs").mkdir(parents=True)
    os.symlink(imp.store, str(xdg / "cltfs" / "store"))
    env = dict(os.environ, XDG_DATA_HOME=str(xdg))
    env.pop("CLTFS_STORE", None)
    with mount(None, env=env) as m:
        assert_same(torch.load(m.p(rel)), want, rel)


# ------------------------------------------------------ view options --

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dtype_option(stores, mount, originals, dtype):
    """-o dtype=T converts every tensor on the fly (round to nearest even)."""
    imp = stores.get("s1_bf16")
    tdt = getattr(torch, dtype)
    with mount(imp.store, "dtype=" + dtype) as m:
        for rel in imp.desc["files"]:
            want = originals.get(imp.tree, rel)
            got = torch.load(m.p(rel), weights_only=True)
            if rel.endswith("_x.pt"):
                assert_same(got, {"x": want["x"].to(tdt)}, rel)
            else:
                conv = [t.to(tdt) for t in want["targets"]]
                assert_same(got, {"y": conv[0], "targets": conv,
                                  "n_targets": want["n_targets"]}, rel)
                assert got["y"].data_ptr() == got["targets"][0].data_ptr()


def _rows(t):
    if t.dim() == 4:
        t = t.squeeze(1)
    return t.reshape(-1, t.shape[-1])


@pytest.mark.parametrize("name,B", [("s1_bf16", 7), ("s1_bf16", 64), ("s2_padded", 5),
                                    ("s1td", 9)])
def test_batch_rows_option(stores, mount, originals, name, B):
    """-o batch_rows=B: flat token batches, rows [kB, (k+1)B) of the whole row
    stream, the last batch shorter.  An imported tree's samples keep the rows
    they had (a padded slot is T rows), so the stream is every file's rows in
    order."""
    imp = stores.get(name)
    nb = imp.desc["n_batches"]
    with mount(imp.store, "batch_rows=%d" % B) as m:
        for L in imp.desc["layers"]:
            xs = torch.cat([_rows(originals.get(imp.tree, "L%d/batch_%d_x.pt" % (L, k))["x"])
                            for k in range(nb)])
            ys = [originals.get(imp.tree, "L%d/batch_%d_y.pt" % (L, k)) for k in range(nb)]
            tg = [torch.cat([_rows(y["targets"][j]) for y in ys])
                  for j in range(imp.desc["n_targets"])]
            n = (xs.shape[0] + B - 1) // B
            names = sorted(os.listdir(m.p("L%d" % L)))
            assert names == sorted("batch_%d_%s.pt" % (k, s) for k in range(n) for s in "xy")
            for k in range(n):
                x = torch.load(m.p("L%d" % L, "batch_%d_x.pt" % k))
                assert_same(x, {"x": xs[k * B:(k + 1) * B].clone()}, "L%d x%d" % (L, k))
                y = torch.load(m.p("L%d" % L, "batch_%d_y.pt" % k))
                want = [t[k * B:(k + 1) * B].clone() for t in tg]
                assert_same(y, {"y": want[0], "targets": want,
                                "n_targets": imp.desc["n_targets"]}, "L%d y%d" % (L, k))


def test_batch_samples_option(stores, mount, originals):
    """-o batch_samples=2 on a one-sample-per-batch store: batch k holds
    samples 2k and 2k+1, T the longer, the shorter padded (with zeros)."""
    imp = stores.get("s1_bf16")
    nb = imp.desc["n_batches"]
    Ts = imp.desc["T"]
    with mount(imp.store, "batch_samples=2") as m:
        for L in imp.desc["layers"]:
            names = sorted(os.listdir(m.p("L%d" % L)))
            n = (nb + 1) // 2
            assert names == sorted("batch_%d_%s.pt" % (k, s) for k in range(n) for s in "xy")
            for k in range(n):
                group = list(range(2 * k, min(2 * k + 2, nb)))
                T = max(Ts[i] for i in group)
                x = torch.load(m.p("L%d" % L, "batch_%d_x.pt" % k))["x"]
                assert list(x.shape) == [len(group), T, imp.desc["d"]], (L, k, x.shape)
                y = torch.load(m.p("L%d" % L, "batch_%d_y.pt" % k))
                assert y["y"].data_ptr() == y["targets"][0].data_ptr()
                for s, i in enumerate(group):
                    ox = originals.get(imp.tree, "L%d/batch_%d_x.pt" % (L, i))["x"][0]
                    assert torch.equal(x[s, :Ts[i]], ox), (L, k, s)
                    assert not x[s, Ts[i]:].any(), "padding rows not zero"
                    oy = originals.get(imp.tree, "L%d/batch_%d_y.pt" % (L, i))
                    for j, t in enumerate(oy["targets"]):
                        assert torch.equal(y["targets"][j][s, :Ts[i]], t[0]), (L, k, s, j)
                        assert not y["targets"][j][s, Ts[i]:].any()


@pytest.mark.parametrize("opts", [("ro",), ("rw", "dev", "suid"), ("allow_other", "noatime"),
                                  ("nodev", "nosuid", "cache_mb=8", "threads=2")],
                         ids=lambda o: ",".join(o))
def test_standard_options_pass_through(stores, mount, originals, opts):
    """The usual mount options are accepted next to cltfs's own; the mount
    stays read-only whatever they say."""
    import errno
    imp = stores.get("s2_padded")
    with mount(imp.store, *opts) as m:
        for rel in imp.desc["files"][:6]:
            assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)
        with pytest.raises(OSError) as ei:
            open(m.p("L0", "new.pt"), "wb")
        assert ei.value.errno == errno.EROFS


@pytest.mark.parametrize("share", [False, True], ids=["own", "share_zero_targets"])
@pytest.mark.parametrize("name", ["s1_bf16", "nt16_all", "one_layer_last"])
def test_zero_padding_storages(stores, mount, name, share):
    """By default a y file aliases as the reference file does: y is
    targets[0], every other target (zero padding too) has a storage of its
    own.  -o share_zero_targets gives all zero targets one storage."""
    imp = stores.get(name)
    n_layers, off = imp.desc["n_layers"], imp.desc["target_offset"]
    with mount(imp.store, *(["share_zero_targets"] if share else [])) as m:
        for rel in imp.desc["files"]:
            if not rel.endswith("_y.pt"):
                continue
            L = int(rel.split("/")[0][1:])
            obj = torch.load(m.p(rel))
            assert obj["y"].data_ptr() == obj["targets"][0].data_ptr(), rel
            zeros = [t for j, t in enumerate(obj["targets"]) if L + off + j >= n_layers]
            assert all(not t.any() for t in zeros), rel
            ptrs = {t.data_ptr() for t in obj["targets"]}
            if share:
                assert len({t.data_ptr() for t in zeros}) <= 1, rel
            else:
                assert len(ptrs) == len(obj["targets"]), rel
            with zipfile.ZipFile(m.p(rel)) as z:
                n_storages = sum(1 for n in z.namelist() if "/data/" in n)
            nz = len(obj["targets"]) - len(zeros)
            assert n_storages == (nz + (1 if zeros else 0) if share else len(obj["targets"])), rel


@pytest.mark.parametrize("name", ["s1_bf16", "nt16_all", "s2_padded"])
def test_in_place_changes_match_the_tree(stores, mount, name):
    """A trainer that works in place (normalizing each target, adding to
    one) sees on the mount what it sees on the reference tree: no target
    shares memory with another but y with targets[0]."""
    imp = stores.get(name)
    with mount(imp.store) as m:
        for rel in imp.desc["files"]:
            if not rel.endswith("_y.pt"):
                continue
            a = torch.load(m.p(rel))
            b = torch.load(os.path.join(imp.tree, rel))  # a fresh copy: it is changed below
            for obj in (a, b):
                for j, t in enumerate(obj["targets"]):
                    t.add_(j + 1)
                    t.mul_(0.5)
            for j, (ta, tb) in enumerate(zip(a["targets"], b["targets"])):
                assert torch.equal(ta, tb), "%s: targets[%d] differs after in-place changes" % (rel, j)
            assert torch.equal(a["y"], b["y"]), rel


@pytest.mark.parametrize("name,args", [("s1_bf16", ()), ("big", ("--chunk-rows", "64"))])
def test_mmap(stores, mount, name, args):
    """Views can be mmapped (torch 2.x's torch.load(mmap=True) does) and the
    mapping holds the bytes read() returns."""
    import mmap
    imp = stores.get(name, *args)
    with mount(imp.store) as m:
        for rel in imp.desc["files"][::3]:
            fd = os.open(m.p(rel), os.O_RDONLY)
            try:
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                try:
                    data = mm[:]
                finally:
                    mm.close()
            finally:
                os.close(fd)
            assert data == read_all(m.p(rel)), rel


def test_cltfs_dir_listing(stores, mount):
    imp = stores.get("s1_bf16")
    with mount(imp.store) as m:
        assert {"stats", "manifest.json"} <= set(os.listdir(m.p(".cltfs")))
        assert os.path.isdir(m.p(".cltfs"))


@pytest.mark.parametrize("handles", [False, True])
def test_opens(stores, mount, originals, handles):
    """Zero-message opens (the default where the kernel has them): the
    kernel sends one OPEN per mount, none per file, keeps the page cache
    (a second read sends no READ), and .cltfs/stats is still fresh at each
    open.  -o handles answers every open."""
    imp = stores.get("s1_bf16")
    rels = imp.desc["files"]
    with mount(imp.store, *(("handles",) if handles else ())) as m:
        for _ in range(3):
            for rel in rels[:-1]:
                with open(m.p(rel), "rb") as f:
                    assert_same(load_bytes(f.read()), originals.get(imp.tree, rel), rel)
        before = m.stats()
        if handles:
            assert before["opens"] >= 3 * (len(rels) - 1), before
            assert os.stat(m.p(".cltfs/stats")).st_size == 0  # read until EOF, like /proc
        else:
            assert before["opens"] == 1, before  # the first open only
        for rel in rels[:-1]:  # once read, served from the page cache
            read_all(m.p(rel))
        assert m.stats()["reads"] == before["reads"]
        # each open of stats is a new snapshot: the last file's reads show
        assert_same(load_bytes(read_all(m.p(rels[-1]))), originals.get(imp.tree, rels[-1]), rels[-1])
        after = m.stats()
        assert after["reads"] > before["reads"] and after["bytes_read"] > before["bytes_read"], (before, after)
        # a write is refused either way
        with pytest.raises(OSError) as ei:
            open(m.p(rels[0]), "r+b")
        assert ei.value.errno == errno.EROFS
