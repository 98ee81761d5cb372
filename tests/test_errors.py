"""Error cases: corrupt packs, read-only mount, unknown names, bad manifests,
missing stores, bad import trees, malicious pickles, interrupted imports."""

import errno
import glob
import io
import json
import os
import pickle
import signal
import subprocess
import time
import zipfile

import pytest
import torch

from conftest import assert_same, describe, load_bytes, pack_bytes
from test_hub import make_hub  # noqa: F401 (a fixture)
import sample_table


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------ integrity --

def test_verify_good_store(stores, run_cltfs):
    for name in ("s1_bf16", "s2_padded", "bare_fp32"):
        imp = stores.get(name)
        r = run_cltfs("verify", imp.store)
        assert r.returncode == 0, describe(r)


@pytest.mark.parametrize("where", [0.5, 0.25, 0.9])
def test_flipped_byte_in_pack(tmp_path, stores, run_cltfs, mount, originals, where):
    """A flipped byte in a pack: the affected views fail with EIO, no view
    returns wrong data, and verify exits 1 naming the pack."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    packs = sorted(glob.glob(os.path.join(imp.store, "packs", "*.pack")),
                   key=os.path.getsize)
    assert packs, "no packs/*.pack in the store"
    pack = packs[-1]
    size = os.path.getsize(pack)
    off = int(size * where)
    with open(pack, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x5A]))

    with mount(imp.store) as m:
        eio, ok = [], []
        for rel in imp.desc["files"]:
            try:
                data = read_all(m.p(rel))
            except OSError as e:
                assert e.errno == errno.EIO, "%s: %s, expected EIO" % (rel, e)
                eio.append(rel)
                continue
            assert len(data) == os.stat(m.p(rel)).st_size, rel
            assert_same(load_bytes(data), originals.get(imp.tree, rel), rel)
            ok.append(rel)
        assert eio, "a flipped byte at %d/%d of %s changed nothing visible" % (off, size, pack)
        assert ok, "every file fails: the corruption is not confined to its chunk"
        # the error is counted; a second read fails the same way
        assert m.stats()["errors"] >= 1
        with pytest.raises(OSError) as ei:
            read_all(m.p(eio[0]))
        assert ei.value.errno == errno.EIO
        # loading it with torch gives an error too, not a tensor of wrong values
        with pytest.raises(Exception):
            torch.load(m.p(eio[0]))

    r = run_cltfs("verify", imp.store)
    assert r.returncode == 1, describe(r)
    out = r.stdout + r.stderr
    assert os.path.basename(pack) in out, "verify does not name the pack: " + describe(r)


def assert_eio_or_right(m, imp, originals):
    """Every file of a damaged store reads as EIO or as the right bytes, never
    wrong ones; at least one is EIO.  Returns how many were right."""
    eio = ok = 0
    for rel in imp.desc["files"]:
        try:
            data = read_all(m.p(rel))
        except OSError as e:
            assert e.errno == errno.EIO, "%s: %s" % (rel, e)
            eio += 1
            continue
        assert_same(load_bytes(data), originals.get(imp.tree, rel), rel)
        ok += 1
    assert eio
    return ok


def test_truncated_pack(tmp_path, stores, run_cltfs, mount, originals):
    """A pack cut short: reads of the lost chunks are EIO, verify exits 1."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    pack = sorted(glob.glob(os.path.join(imp.store, "packs", "*.pack")),
                  key=os.path.getsize)[-1]
    os.truncate(pack, os.path.getsize(pack) * 2 // 3)
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 1, describe(r)
    assert os.path.basename(pack) in r.stdout + r.stderr, describe(r)
    try:
        ctx = mount(imp.store)
        m = ctx.__enter__()
    except Exception:
        return  # refusing to mount a damaged store is acceptable too
    try:
        assert_eio_or_right(m, imp, originals)
    finally:
        ctx.__exit__(None, None, None)


# -------------------------------------------------------------- read-only --

def test_read_only(stores, mount):
    imp = stores.get("s1_bf16")
    with mount(imp.store) as m:
        existing = m.p("L0", "batch_0_x.pt")
        before = read_all(existing)

        def erofs(fn, *a):
            with pytest.raises(OSError) as ei:
                fn(*a)
            assert ei.value.errno == errno.EROFS, "%s%r: %s, expected EROFS" % (
                fn.__name__, a, ei.value)

        erofs(open, m.p("L0", "new.pt"), "wb")
        erofs(open, existing, "r+b")
        erofs(open, existing, "ab")
        erofs(open, existing, "wb")
        erofs(os.mkdir, m.p("newdir"))
        erofs(os.mkdir, m.p("L0", "newdir"))
        erofs(os.unlink, existing)
        erofs(os.rmdir, m.p("L0"))
        erofs(os.rename, existing, m.p("L0", "renamed.pt"))
        erofs(os.rename, m.p("L0"), m.p("L0b"))
        erofs(os.truncate, existing, 0)
        erofs(os.symlink, "batch_0_x.pt", m.p("L0", "link.pt"))
        erofs(os.link, existing, m.p("L0", "hard.pt"))
        assert read_all(existing) == before
        assert not os.path.exists(m.p("L0", "new.pt"))


def test_unknown_names(stores, mount):
    imp = stores.get("s1_bf16")
    names = ["L0/batch_999_x.pt", "L99", "L99/batch_0_x.pt", "L0/foo", "L0/batch_0_z.pt",
             "L0/batch_0_x.pt.tmp", "L0/batch_00_x.pt", "L0/batch_-1_x.pt",
             "L0/batch_x.pt", "batch_0_x.pt", "L6", "L00", "Lx", ".cltfs/nope",
             "L0/batch_4_y.pt"]
    with mount(imp.store) as m:
        for n in names:
            with pytest.raises(OSError) as ei:
                os.stat(m.p(n))
            assert ei.value.errno == errno.ENOENT, "%s: %s" % (n, ei.value)
            with pytest.raises(OSError) as ei:
                open(m.p(n), "rb")
            assert ei.value.errno == errno.ENOENT, "%s: %s" % (n, ei.value)
        # an existing file opened as a directory
        with pytest.raises(OSError) as ei:
            os.listdir(m.p("L0", "batch_0_x.pt"))
        assert ei.value.errno == errno.ENOTDIR


# -------------------------------------------------------- bad manifests --

def _first(obj, pred, path=()):
    """Depth-first: the first (container, key) where pred(key, value)."""
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = list(enumerate(obj))
    else:
        return None
    for k, v in items:
        if pred(k, v):
            return obj, k
    for k, v in items:
        r = _first(v, pred, path + (k,))
        if r:
            return r
    return None


def _break_type(man):
    for key in ("n_targets", "chunk_rows", "n_layers", "d_model", "target_offset"):
        hit = _first(man, lambda k, v, key=key: k == key and isinstance(v, int))
        if hit:
            hit[0][hit[1]] = "sixteen"
            return
    hit = _first(man, lambda k, v: isinstance(k, str) and isinstance(v, int)
                 and not isinstance(v, bool))
    assert hit, "no integer field in the manifest"
    hit[0][hit[1]] = "sixteen"


def _sample_list(man):
    def is_sample_list(k, v):
        return (isinstance(v, list) and len(v) > 1 and all(isinstance(e, dict) for e in v)
                and any(any("row" in kk for kk in e) for e in v))
    hit = _first(man, lambda k, v: k == "samples" and is_sample_list(k, v))
    if not hit:
        hit = _first(man, is_sample_list)
    assert hit, "no sample list with row counts in the manifest: %s" % json.dumps(man)[:2000]
    return hit[0][hit[1]]


def _rows_key(e):
    if isinstance(e.get("rows"), int):
        return "rows"
    for k in e:
        if "row" in k and isinstance(e[k], int):
            return k
    raise AssertionError("no row field in %r" % e)


def _max_T(man):
    hit = _first(man, lambda k, v: k == "batches" and isinstance(v, list) and v)
    Ts = [0]
    if hit:
        for b in hit[0][hit[1]]:
            if isinstance(b, list) and len(b) >= 2 and isinstance(b[1], int):
                Ts.append(b[1])
            elif isinstance(b, dict):
                Ts += [v for k, v in b.items() if k in ("tokens", "T") and isinstance(v, int)]
    return max(Ts)


def _break_rows(man):
    """A sample with more rows than any batch slot can hold."""
    e = _sample_list(man)[1]
    k = _rows_key(e)
    e[k] = max(e[k], _max_T(man)) + 5


def _break_rows_negative(man):
    e = _sample_list(man)[0]
    e[_rows_key(e)] = -3


def _break_sample_count(man):
    """One sample fewer than the batches hold."""
    _sample_list(man).pop()


def _break_tokens(man):
    """A batch whose T is smaller than one of its samples' rows."""
    hit = _first(man, lambda k, v: k == "batches" and isinstance(v, list) and v)
    if not hit:
        pytest.skip("manifest has no batches list")
    b = hit[0][hit[1]][0]
    if isinstance(b, dict):
        for k in ("tokens", "T"):
            if isinstance(b.get(k), int):
                b[k] = 0
                return
        pytest.skip("batch entries have no tokens field: %r" % b)
    elif isinstance(b, list) and len(b) >= 2:
        b[1] = 0
        return
    pytest.skip("unknown batch entry %r" % (b,))


@pytest.mark.parametrize("how", ["invalid_json", "empty", "wrong_type", "sample_rows",
                                 "sample_rows_negative", "sample_count", "batch_tokens",
                                 "missing"])
def test_malformed_manifest(tmp_path, stores, mount_fails, how):
    """A damaged or inconsistent manifest of format version 1 (the samples
    inline, as older cltfs wrote it) is refused, naming cltfs.json."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    path = os.path.join(imp.store, "cltfs.json")
    man = sample_table.manifest(imp.store)  # as version 1
    if how == "invalid_json":
        text = json.dumps(man)[:-7] + "{,"
    elif how == "empty":
        text = ""
    elif how == "missing":
        text = None
    else:
        {"wrong_type": _break_type, "sample_rows": _break_rows,
         "sample_rows_negative": _break_rows_negative, "sample_count": _break_sample_count,
         "batch_tokens": _break_tokens}[how](man)
        text = json.dumps(man, indent=1)
    if text is None:
        os.unlink(path)
    else:
        with open(path, "w") as f:
            f.write(text)
    for args in (("-f",), ()):
        rc, out = mount_fails(imp.store, args=args)
        assert rc == 1, "mount of a store with a %s manifest exited %s, not 1" % (how, rc)
        assert "cltfs.json" in out, "message does not name cltfs.json: %r" % out


@pytest.mark.parametrize("how", ["sample_rows", "sample_count", "batch_tokens", "more_samples"])
def test_inconsistent_sample_table(tmp_path, stores, mount_fails, run_cltfs, how):
    """A sample table that is whole and checksummed but does not add up
    (rewritten, with cltfs.json naming it) is refused, naming cltfs.json."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    t = sample_table.read(os.path.join(imp.store, "samples.bin"))
    samples, batches = t["samples"], t["batches"]
    if how == "sample_rows":
        samples[1]["rows"] = max(T for _, T in batches) + 5
    elif how == "sample_count":
        samples.pop()
    elif how == "batch_tokens":
        batches[0] = (batches[0][0], 0)
    else:
        samples.append({"rows": 1})
    sample_table.rewrite(imp.store, samples, batches)
    for args in (("-f",), ()):
        rc, out = mount_fails(imp.store, args=args)
        assert rc == 1 and "cltfs.json" in out and "inconsistent" in out, (how, rc, out)
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 1 and "cltfs.json" in r.stderr, describe(r)


@pytest.mark.parametrize("how", ["flip_rows", "flip_header", "truncate", "missing", "other_table"])
def test_damaged_sample_table(tmp_path, stores, mount_fails, how):
    """A damaged, truncated, missing or swapped samples.bin is refused at mount
    with a message naming it; nothing is served from a table that lies."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    tab = os.path.join(imp.store, "samples.bin")
    data = bytearray(open(tab, "rb").read())
    if how == "flip_rows":
        data[128] ^= 1
    elif how == "flip_header":
        data[20] ^= 1
    elif how == "truncate":
        data = data[:-4]
    elif how == "other_table":
        t = sample_table.read(tab)
        t["samples"][0]["rows"] += 1
        sample_table.write(tab, t["samples"], t["batches"])  # whole, but not the one cltfs.json names
        data = None
    if how == "missing":
        os.unlink(tab)
    elif data is not None:
        with open(tab, "wb") as f:
            f.write(data)
    for args in (("-f",), ()):
        rc, out = mount_fails(imp.store, args=args)
        assert rc == 1 and "samples.bin" in out, (how, rc, out)


def test_missing_store(tmp_path, mount_fails, run_cltfs):
    store = str(tmp_path / "no" / "such-store")
    for args in (("-f",), ()):
        rc, out = mount_fails(store, args=args)
        assert rc == 1, (rc, out)
        assert "such-store" in out, "message does not name the store: %r" % out
    r = run_cltfs("verify", store)
    assert r.returncode == 1 and "such-store" in r.stderr, describe(r)
    r = run_cltfs("stat", store)
    assert r.returncode == 1 and "such-store" in r.stderr, describe(r)


def test_missing_mountpoint(stores, mount_fails, tmp_path):
    imp = stores.get("s1_bf16")
    rc, out = mount_fails(imp.store, mnt=tmp_path / "no-such-mnt")
    assert rc != 0 and "no-such-mnt" in out, out


def test_bad_option(stores, mount_fails):
    imp = stores.get("s1_bf16")
    for opt in ("cache_mb=lots", "dtype=int7", "batch_samples=two", "readahead=-1", "sample_reduce=median",
                "sample_dtype=int8", "hub=ftp://host/x", "hub=s3://a/b", "readdirplus=sometimes"):
        rc, out = mount_fails(imp.store, opt)
        assert rc != 0, opt
        assert opt.split("=")[0] in out, "message does not name %s: %r" % (opt, out)


def test_usage_errors(run_cltfs):
    assert run_cltfs().returncode == 2
    assert run_cltfs("import").returncode == 2
    assert run_cltfs("import", "/tmp").returncode == 2
    assert run_cltfs("--no-such-flag").returncode == 2


# ----------------------------------------------------------- bad imports --

SMALL = dict(layers="0-3", n_layers=6, batches=3, d=32, seed=21)


def _import_fails(run_cltfs, tmp_path, tree, *names):
    store = str(tmp_path / "store")
    r = run_cltfs("import", store, tree, timeout=120)
    print("import stderr:", r.stderr)
    assert r.returncode == 1, describe(r)
    assert r.stderr.startswith("cltfs: ") or "\ncltfs: " in r.stderr, describe(r)
    if names:
        assert any(n in r.stderr for n in names), "message names none of %s: %s" % (
            names, describe(r))
    return r


def test_import_missing_y(tmp_path, trees, run_cltfs):
    tree, _ = trees.make(tmp_path / "tree", **SMALL)
    os.unlink(os.path.join(tree, "L2", "batch_1_y.pt"))
    _import_fails(run_cltfs, tmp_path, tree, "batch_1_y.pt")


def test_import_missing_x(tmp_path, trees, run_cltfs):
    tree, _ = trees.make(tmp_path / "tree", **SMALL)
    os.unlink(os.path.join(tree, "L1", "batch_2_x.pt"))
    _import_fails(run_cltfs, tmp_path, tree, "batch_2_x.pt")


@pytest.mark.parametrize("j", [0, 2])
def test_import_disagreeing_targets(tmp_path, trees, run_cltfs, j):
    """Modify target j of L1/batch_0_y.pt (mlp@(2+j)); every other y file of
    batch 0 that references that layer now disagrees."""
    tree, desc = trees.make(tmp_path / "tree", **SMALL)
    p = os.path.join(tree, "L1", "batch_0_y.pt")
    obj = torch.load(p)
    t = obj["targets"][j].clone()
    t.view(-1)[t.numel() // 2] += 1.0
    obj["targets"][j] = t
    if j == 0:
        obj["y"] = t
    torch.save(obj, p)
    layer = 1 + 1 + j
    names = ["L%d/batch_0_y.pt" % L for L in desc["layers"]
             if 0 <= layer - 1 - L < desc["n_targets"]]
    assert "L1/batch_0_y.pt" in names and len(names) >= 2
    r = _import_fails(run_cltfs, tmp_path, tree, *names)
    # both sides of the disagreement are named: the modified file and another
    assert sum(n in r.stderr for n in names) == 2 and "L1/batch_0_y.pt" in r.stderr, describe(r)


def test_import_y_not_targets0(tmp_path, trees, run_cltfs):
    """y that differs from targets[0] within one file is refused."""
    tree, _ = trees.make(tmp_path / "tree", **SMALL)
    p = os.path.join(tree, "L0", "batch_1_y.pt")
    obj = torch.load(p)
    obj["y"] = obj["y"].clone()
    obj["y"].view(-1)[3] += 2.0
    torch.save(obj, p)
    _import_fails(run_cltfs, tmp_path, tree, "batch_1_y.pt")


@pytest.mark.parametrize("how", ["no_targets", "n_targets", "target_not_tensor", "y_list", "x_key"])
def test_import_malformed_file(tmp_path, trees, run_cltfs, how):
    """A y file that is not the reference's dict (keys, n_targets against
    the list, a target that is no tensor, a list for the dict) or an x file
    under another key than batch 0's: refused naming the file and what is
    wrong."""
    tree, desc = trees.make(tmp_path / "tree", **SMALL)
    p = os.path.join(tree, "L1", "batch_1_%s.pt" % ("x" if how == "x_key" else "y"))
    obj = torch.load(p)
    want = {"no_targets": "expected a dict with keys y, targets, n_targets",
            "n_targets": "holds %d targets (n_targets %d)" % (desc["n_targets"], desc["n_targets"] + 1),
            "target_not_tensor": "targets[1] is not a tensor",
            "y_list": "expected a dict with keys y, targets, n_targets",
            "x_key": "not a tensor under key 'x' like the other x files"}[how]
    if how == "no_targets":
        obj = {"y": obj["y"], "n_targets": obj["n_targets"]}
    elif how == "n_targets":
        obj["n_targets"] += 1
    elif how == "target_not_tensor":
        obj["targets"][1] = 3.0
    elif how == "y_list":
        obj = obj["targets"]
    else:
        obj = {"data": obj["x"]}
    torch.save(obj, p)
    r = _import_fails(run_cltfs, tmp_path, tree, "L1/batch_1_")
    assert want in r.stderr, describe(r)


def test_import_source_read_error(tmp_path, trees, run_cltfs, mount):
    """A source file whose read fails mid-import (an I/O error of the
    filesystem it is on; here a cltfs mount whose pack is damaged at its
    end, so the last batch's views read EIO): import exits 1 naming the
    file, the batches imported before it are kept and verify, and the
    import run again from a good source completes."""
    tree, desc = trees.make(tmp_path / "tree", **SMALL)
    src = str(tmp_path / "src")
    assert run_cltfs("import", src, tree, "--quiet").returncode == 0
    pack = glob.glob(os.path.join(src, "packs", "*.pack"))[0]
    with open(pack, "r+b") as f:  # the last frame written: the last batch's
        f.seek(-40, 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    store = str(tmp_path / "store")
    with mount(src) as m:
        r = run_cltfs("import", store, m.path, "--quiet", timeout=120)
    last = "batch_%d_" % (desc["n_batches"] - 1)
    assert r.returncode == 1 and "reading it failed" in r.stderr and m.path in r.stderr and \
        last in r.stderr, describe(r)
    st = json.loads(run_cltfs("stat", store, "--json").stdout)
    assert 0 < st["chunks"] < st["chunks_needed"], st
    assert run_cltfs("verify", store).returncode == 0
    r = run_cltfs("import", store, tree, "--quiet", timeout=120)
    assert r.returncode == 0, describe(r)
    r = run_cltfs("verify", store)
    assert r.returncode == 0 and "%d of %d chunks present" % (st["chunks_needed"], st["chunks_needed"]) in r.stdout, \
        describe(r)


def test_import_shape_mismatch(tmp_path, trees, run_cltfs):
    """One layer's batch 0 has a different T than the other layers'."""
    tree, desc = trees.make(tmp_path / "tree", **SMALL)
    T = desc["T"][0]
    torch.save({"x": torch.randn(1, T + 1, desc["d"]).to(torch.bfloat16)},
               os.path.join(tree, "L1", "batch_0_x.pt"))
    _import_fails(run_cltfs, tmp_path, tree, "batch_0_x.pt", "batch_0_y.pt", "batch_0")


def test_import_dtype_mismatch(tmp_path, trees, run_cltfs):
    tree, desc = trees.make(tmp_path / "tree", **SMALL)
    p = os.path.join(tree, "L2", "batch_1_x.pt")
    obj = torch.load(p)
    torch.save({"x": obj["x"].float()}, p)
    _import_fails(run_cltfs, tmp_path, tree, "batch_1_x.pt", "batch_1")


@pytest.mark.parametrize("kind", ["random", "text", "truncated", "empty", "zip_no_pickle"])
def test_import_garbage_file(tmp_path, trees, run_cltfs, kind):
    tree, _ = trees.make(tmp_path / "tree", **SMALL)
    p = os.path.join(tree, "L0", "batch_0_x.pt")
    if kind == "random":
        data = os.urandom(5000)
    elif kind == "text":
        data = b"this is not a torch file\n" * 50
    elif kind == "truncated":
        data = read_all(p)[: os.path.getsize(p) // 2]
    elif kind == "empty":
        data = b""
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("batch_0_x/version", "3\n")
            z.writestr("batch_0_x/data/0", b"\0" * 64)
        data = buf.getvalue()
    with open(p, "wb") as f:
        f.write(data)
    _import_fails(run_cltfs, tmp_path, tree, "batch_0_x.pt")


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("how", ["torch_save", "raw_zip", "raw_zip_y"])
def test_import_malicious_pickle(tmp_path, trees, run_cltfs, how):
    """A pickle that calls os.system is refused and nothing is executed."""
    tree, _ = trees.make(tmp_path / "tree", **SMALL)
    sentinel = tmp_path / "pwned"
    cmd = "touch %s" % sentinel
    name = "batch_1_y.pt" if how == "raw_zip_y" else "batch_1_x.pt"
    p = os.path.join(tree, "L1", name)
    if how == "torch_save":
        torch.save({"x": _Evil(cmd)}, p)
    else:
        # the layout torch.save writes, with a hand-written data.pkl
        orig = zipfile.ZipFile(p)
        entries = {n: orig.read(n) for n in orig.namelist()}
        orig.close()
        pkl_name = [n for n in entries if n.endswith("/data.pkl")][0]
        entries[pkl_name] = pickle.dumps({"x": _Evil(cmd)}, protocol=2)
        with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
            for n, b in entries.items():
                z.writestr(n, b)
    assert b"system" in read_all(p)
    _import_fails(run_cltfs, tmp_path, tree, name)
    assert not sentinel.exists(), "the pickle's os.system ran"


# ------------------------------------------------------ interrupted import --

def test_interrupted_import(tmp_path, trees, cltfs_bin, run_cltfs, mount, originals):
    """kill -9 during an import leaves a store verify accepts; importing again
    completes and the mount equals the tree."""
    tree, desc = trees.make(tmp_path / "tree", layers="0-7", n_layers=8, d=128,
                            total_mb=48, seed=31, max_tokens=64)
    store = str(tmp_path / "store")
    proc = subprocess.Popen([cltfs_bin, "import", store, tree], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    killed = False
    try:
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 120:
            packs = glob.glob(os.path.join(store, "packs", "*.pack"))
            if packs and sum(os.path.getsize(p) for p in packs) > 4096:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        out, err = proc.communicate(timeout=60)
    if not killed or proc.returncode != -signal.SIGKILL:
        pytest.skip("import finished (exit %s) before it could be interrupted" %
                    proc.returncode)
    r = run_cltfs("verify", store)
    assert r.returncode == 0, "verify after kill -9: " + describe(r)
    if os.path.exists(os.path.join(store, "cltfs.json")):
        # the partial store serves what it has, and never wrong bytes
        with mount(store) as m:
            n_ok = 0
            for rel in desc["files"]:
                try:
                    data = read_all(m.p(rel))
                except OSError as e:
                    assert e.errno == errno.EIO, "%s: %s" % (rel, e)
                    continue
                assert_same(load_bytes(data), originals.get(tree, rel), rel)
                n_ok += 1
    r = run_cltfs("import", store, tree, timeout=300)
    assert r.returncode == 0, "import after kill -9: " + describe(r)
    r = run_cltfs("verify", store)
    assert r.returncode == 0, describe(r)
    with mount(store) as m:
        assert m.files() == desc["files"]
        for rel in desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(tree, rel), rel)


def test_import_out_of_space(tmp_path, trees, run_cltfs, mount, originals, small_fs):
    """An import that fills its filesystem stops with exit 1 naming the file
    and the cause; the store it leaves verifies; once there is room, the
    same import completes, and the frames written but never recorded before
    the failure are not left in the pack (it is the size a clean import
    makes: they would hold the space a retry needs)."""
    tree, desc = trees.make(tmp_path / "tree", layers="0-5", n_layers=8, d=256,
                            total_mb=40, seed=37, max_tokens=128)
    clean = str(tmp_path / "clean")
    r = run_cltfs("import", clean, tree, "--quiet", timeout=300)
    assert r.returncode == 0, describe(r)
    need = pack_bytes(clean)
    store = os.path.join(small_fs.mount(max(need // 2, 1 << 20)), "store")
    r = run_cltfs("import", store, tree, "--quiet", timeout=300)
    assert r.returncode == 1, describe(r)
    assert "No space left on device" in r.stderr and store in r.stderr, describe(r)
    v = run_cltfs("verify", store)
    assert v.returncode == 0 and "present" in v.stdout, describe(v)
    small_fs.resize(4 * need)
    r = run_cltfs("import", store, tree, "--quiet", timeout=300)
    assert r.returncode == 0, "import once there is room: " + describe(r)
    assert pack_bytes(store) == need, "pack bytes %d, a clean import's %d" % (pack_bytes(store), need)
    assert run_cltfs("verify", store).returncode == 0
    with mount(store) as m:
        for rel in desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(tree, rel), rel)


def test_import_other_tree_into_store(tmp_path, trees, stores, run_cltfs, mount, originals):
    """Importing a different tree into an existing store is refused, and the
    store still serves the first tree."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    other, _ = trees.make(tmp_path / "other", layers="0-5", n_layers=8, batches=4, d=64,
                          seed=99)
    r = run_cltfs("import", imp.store, other)
    assert r.returncode == 1, describe(r)
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 0, describe(r)
    with mount(imp.store) as m:
        for rel in imp.desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)


def test_import_missing_src(tmp_path, run_cltfs):
    r = run_cltfs("import", str(tmp_path / "store"), str(tmp_path / "no-such-tree"))
    assert r.returncode == 1 and "no-such-tree" in r.stderr, describe(r)


def test_import_empty_src(tmp_path, run_cltfs):
    (tmp_path / "empty").mkdir()
    r = run_cltfs("import", str(tmp_path / "store"), str(tmp_path / "empty"))
    assert r.returncode == 1 and "empty" in r.stderr, describe(r)


def test_corrupt_index_record(tmp_path, stores, run_cltfs, mount, originals):
    """A flipped byte in an index record: verify exits 1 naming the index;
    the mount serves the other chunks and EIO (never wrong bytes) for the
    chunk whose record is lost."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    idx = sorted(glob.glob(os.path.join(imp.store, "packs", "*.idx")),
                 key=os.path.getsize)[-1]
    size = os.path.getsize(idx)
    off = 16 + ((size - 16) // 40 // 2) * 40 + 3   # inside a record in the middle
    with open(idx, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 1]))
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 1, describe(r)
    assert os.path.basename(idx) in r.stdout + r.stderr, describe(r)
    with mount(imp.store) as m:
        assert_eio_or_right(m, imp, originals)


def test_rejected_import_then_fixed_tree(tmp_path, trees, run_cltfs, mount, originals):
    """An import refused for disagreeing targets must not poison the store:
    once the tree is fixed, importing again into the same store succeeds and
    the mount equals the tree.  (Here the bad file is the first one read for
    that stream, L0/batch_0_y.pt target 3 = mlp@4.)"""
    tree, desc = trees.make(tmp_path / "tree", **SMALL)
    p = os.path.join(tree, "L0", "batch_0_y.pt")
    good = read_all(p)
    obj = torch.load(p)
    t = obj["targets"][3].clone()
    t.view(-1)[5] += 1.0
    obj["targets"][3] = t
    torch.save(obj, p)
    store = str(tmp_path / "store")
    r = run_cltfs("import", store, tree)
    assert r.returncode == 1, describe(r)
    with open(p, "wb") as f:
        f.write(good)
    if os.path.exists(store):
        r = run_cltfs("verify", store)
        assert r.returncode == 0, describe(r)
    r = run_cltfs("import", store, tree)
    assert r.returncode == 0, "re-import after fixing the tree: " + describe(r)
    with mount(store) as m:
        for rel in desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(tree, rel), rel)


# ------------------------------------------- failing before the fork --

def test_mount_errors_before_daemonizing(stores, mount_fails, tmp_path):
    """A daemonizing mount (no -f) that cannot work says why on stderr and
    exits non-zero before it forks: nothing is mounted and no daemon is left
    to log the cause to syslog."""
    imp = stores.get("s1_bf16")
    cases = [
        # a store made by import has nothing to capture from
        ((imp.store, "capture=on"), 1, "not a store made by `cltfs init`"),
        ((imp.store, "capture=maybe"), 2, "-o capture=maybe"),
        ((imp.store, "batch_rows=64", "batch_samples=2"), 2, "exclude each other"),
        ((str(tmp_path / "nostore"),), 1, "nostore"),
        # -o hub= backs a local store only; a Hub SOURCE has its own
        (("hf://datasets/me/acts", "hub=hf://datasets/me/acts"), 1, "-o hub="),
    ]
    for (store, *opts), want_rc, want in cases:
        rc, out = mount_fails(store, *opts, args=())
        assert rc == want_rc and want in out, "%s %s: exit %d\n%s" % (store, opts, rc, out)


# ------------------------------------------------------ manifest integrity --

def _man_text(store):
    with open(os.path.join(store, "cltfs.json"), "rb") as f:
        return f.read()


def _put_text(store, data):
    with open(os.path.join(store, "cltfs.json"), "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["n_targets", "padding", "batch_samples", "layout_dropped"])
def test_manifest_edited_by_hand(tmp_path, stores, mount_fails, run_cltfs, how):
    """cltfs.json changed after cltfs wrote it (a field a hand edit would
    change, leaving valid JSON) is refused by the mount, stat and verify,
    naming the file and saying it was changed; never served differently."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    man = json.loads(_man_text(imp.store))
    assert man["version"] == 4 and len(man["checksum"]) == 8
    if how == "n_targets":
        man["n_targets"] = 10
    elif how == "padding":
        man["padding"] = "clip"
    elif how == "batch_samples":
        man["batch_samples"] = 2
    else:
        del man["layout"]
    _put_text(imp.store, json.dumps(man, separators=(",", ":")).encode() + b"\n")
    rc, out = mount_fails(imp.store)
    assert rc == 1 and "cltfs.json" in out and "changed after cltfs wrote it" in out, (how, rc, out)
    for cmd in ("stat", "verify"):
        r = run_cltfs(cmd, imp.store)
        assert r.returncode == 1 and "changed after cltfs wrote it" in r.stderr, (cmd, describe(r))


@pytest.mark.parametrize("how,word", [
    ("trailing", "bytes after the JSON value"), ("bom", "byte-order mark"), ("nul", "NUL"),
    ("duplicate", "twice in one object"), ("unknown", "unknown key \"layuot\""),
    ("fraction", "expected an integer"), ("no_checksum", "'checksum': missing")])
def test_manifest_strict(tmp_path, stores, mount_fails, how, word):
    """Loose JSON and unknown keys are refused, naming the file and the
    fault, even with a checksum that matches (a writer other than cltfs)."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    text = _man_text(imp.store)
    man = json.loads(text)
    if how == "trailing":
        text = text + b"{}"
    elif how == "bom":
        text = b"\xef\xbb\xbf" + text
    elif how == "nul":
        text = text.replace(b"\n", b"\x00\n")
    elif how == "duplicate":
        text = text.replace(b'"dtype":', b'"dtype":"float32","dtype":', 1)
    elif how in ("unknown", "fraction"):
        if how == "unknown":
            man["layuot"] = man.pop("layout")
        else:
            man["chunk_rows"] = man["chunk_rows"] + 0.5
        sample_table.save_manifest(imp.store, man)
        text = _man_text(imp.store)
    else:
        del man["checksum"]
        text = json.dumps(man, separators=(",", ":")).encode()
    _put_text(imp.store, text)
    rc, out = mount_fails(imp.store)
    assert rc == 1 and "cltfs.json" in out and word in out, (how, rc, out)


def test_record_disagrees_with_manifest(tmp_path, stores, mount_fails, run_cltfs):
    """A sample's row count changed in the sample table, the table and the
    manifest re-signed (as a writer with a bug would leave them): the index
    records no longer fit; the mount is refused naming the first record
    that disagrees (reads would take rows from the wrong place); verify
    exits 1."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    t = sample_table.read(os.path.join(imp.store, "samples.bin"))
    samples = [dict(s) for s in t["samples"]]
    samples[0]["rows"] -= 5
    batches = [list(b) for b in t["batches"]] if t["batches"] else None
    if batches:
        batches[0][1] -= 5
    sample_table.rewrite(imp.store, samples, batches)
    rc, out = mount_fails(imp.store)
    assert rc == 1 and ".idx: record " in out and "raw bytes where the manifest's rows make" in out, (rc, out)
    assert "cltfs verify" in out, out
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 1, describe(r)


def test_manifest_sizes_that_would_wrap(tmp_path, stores, mount_fails):
    """A manifest (signed) whose batch would make a file larger than 2^56
    bytes is refused before any size is computed, not wrapped."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    t = sample_table.read(os.path.join(imp.store, "samples.bin"))
    samples = [dict(s) for s in t["samples"]]
    samples[0]["rows"] = 2 ** 31 - 1
    batches = [list(b) for b in t["batches"]] if t["batches"] else None
    if batches:
        batches[0][1] = 2 ** 31 - 1
    sample_table.rewrite(imp.store, samples, batches)
    man = json.loads(_man_text(imp.store))
    man["model"]["d_model"] = 2 ** 20
    man["n_targets"] = 4096
    man["chunk_rows"] = 1
    sample_table.save_manifest(imp.store, man)
    rc, out = mount_fails(imp.store)
    assert rc == 1 and "too large to serve" in out, out


def test_partial_store_messages(tmp_path, stores, run_cltfs):
    """A store with chunks missing (an import cut short): verify says what
    fills the rest for this kind of store; stat does not print the ratio of
    a part as the store's, but estimates the whole's."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    full = json.loads(run_cltfs("stat", imp.store, "--json").stdout)
    assert full["complete"] and abs(full["estimated_ratio"] - full["ratio"]) < 1e-9, full
    idx = glob.glob(os.path.join(imp.store, "packs", "*.idx"))[0]
    n = (os.path.getsize(idx) - 16) // 40
    os.truncate(idx, 16 + 40 * (n // 2))  # half the records, cut at a record boundary
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 0 and "run the same `cltfs import` again" in r.stdout, describe(r)
    assert "filled on a read" not in r.stdout
    r = run_cltfs("stat", imp.store)
    assert r.returncode == 0 and "partial store" in r.stdout, describe(r)
    part = json.loads(run_cltfs("stat", imp.store, "--json").stdout)
    assert not part["complete"] and part["chunks"] < part["chunks_needed"], part
    assert part["ratio"] < full["ratio"] and abs(part["estimated_ratio"] / full["ratio"] - 1) < 0.5, (part, full)


# ------------------------------------------------------- hostile input --

def test_import_expanded_tensor_bounded(tmp_path, cltfs_bin):
    """A 1 KB file whose tensor claims [4096, 4096, 32] through stride 0 (what
    .expand() saves) is refused from its header, naming the file, without
    allocating what it claims (1 GiB; the import's peak RSS stays under 256
    MB)."""
    tree = tmp_path / "tree" / "L0"
    tree.mkdir(parents=True)
    x = torch.zeros(1, dtype=torch.bfloat16).expand(4096, 4096, 32)
    torch.save({"x": x}, str(tree / "batch_0_x.pt"))
    y = torch.zeros(1, 4, 8, dtype=torch.bfloat16)
    torch.save({"y": y, "targets": [y], "n_targets": 1}, str(tree / "batch_0_y.pt"))
    assert os.path.getsize(str(tree / "batch_0_x.pt")) < 4096
    r = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb %M", cltfs_bin, "import", str(tmp_path / "store"),
                        str(tmp_path / "tree")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, describe(r)
    assert "batch_0_x.pt" in r.stderr and "stride-0 or overlapping view" in r.stderr, describe(r)
    peak = int(r.stderr.rsplit("maxrss_kb ", 1)[1].split()[0])
    assert peak < 256 * 1024, "import peaked at %d MB" % (peak // 1024)


def test_fifos_do_not_hang(tmp_path, stores, run_cltfs, mount_fails, trees):
    """A FIFO where a file belongs (an import source, cltfs.json, an index)
    and cltfs.json linked to /dev/zero: refused at once, naming the file,
    never a hang or unbounded memory."""
    tree, desc = trees.make(tmp_path / "tree", layers="0-1", n_layers=3, batches=2, d=16, seed=3)
    fifo = os.path.join(tree, "L0", "batch_1_x.pt")
    os.unlink(fifo)
    os.mkfifo(fifo)
    r = run_cltfs("import", str(tmp_path / "s0"), tree, timeout=30)
    assert r.returncode == 1 and "batch_1_x.pt" in r.stderr and "not a regular file" in r.stderr, describe(r)

    for what in ("fifo", "zero"):
        imp = stores.copy("s1_bf16", tmp_path / ("man-" + what))
        man = os.path.join(imp.store, "cltfs.json")
        os.unlink(man)
        if what == "fifo":
            os.mkfifo(man)
        else:
            os.symlink("/dev/zero", man)
        for cmd in ("verify", "stat"):
            r = run_cltfs(cmd, imp.store, timeout=30)
            assert r.returncode == 1 and "cltfs.json" in r.stderr and "not a regular file" in r.stderr, \
                (what, cmd, describe(r))
        rc, out = mount_fails(imp.store, timeout=30)
        assert rc == 1 and "not a regular file" in out, (what, out)

    imp = stores.copy("s1_bf16", tmp_path / "idx-fifo")
    os.mkfifo(os.path.join(imp.store, "packs", "zz-other.idx"))
    rc, out = mount_fails(imp.store, timeout=30)
    assert rc == 1 and "zz-other.idx" in out and "not a regular file" in out, out
    r = run_cltfs("verify", imp.store, timeout=30)
    assert r.returncode == 1 and "zz-other.idx" in r.stderr + r.stdout, describe(r)


def test_store_on_failing_filesystem(tmp_path, stores, run_cltfs, mount, mount_fails, make_hub, originals):
    """The sample table is read, never mapped: a store on NFS or Lustre
    whose server fails a read would otherwise SIGBUS whatever maps
    samples.bin (a mount's daemon, and every reader of it, with it).  The
    store here sits on a cltfs mount of a plain Hub repo whose download of
    samples.bin keeps failing, so reads of it fail with EIO: stat, verify
    and a mount exit 1 naming the file and the I/O error; with the download
    working again the same store mounts and serves every file as written."""
    from test_hub import hf_env
    imp = stores.get("s1_bf16")
    files = {}
    for d, _, names in os.walk(imp.store):
        for name in names:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                files["store/" + os.path.relpath(path, imp.store)] = f.read()
    hub = make_hub()
    hub.add_repo("me/shelf", files)
    hub.add_fault(r"/store/samples\.bin$", "500", count=1000)
    env = hf_env(tmp_path, hub, CLTFS_HUB_RETRIES=1, CLTFS_HUB_BACKOFF_MS=10)
    with mount("hf://datasets/me/shelf", env=env) as m:
        store = m.p("store")
        table = os.path.join(store, "samples.bin")
        assert os.path.getsize(table) == len(files["store/samples.bin"])  # it lists, it does not read
        for cmd in ("stat", "verify"):
            r = run_cltfs(cmd, store, timeout=60)
            assert r.returncode == 1, "%s of a store whose table cannot be read: %s" % (cmd, describe(r))
            assert table in r.stderr and "Input/output error" in r.stderr, describe(r)
        rc, out = mount_fails(store)
        assert rc == 1 and table in out and "Input/output error" in out, (rc, out)
        hub.clear_faults()
        with mount(store) as s:
            for rel in imp.desc["files"]:
                assert_same(torch.load(s.p(rel)), originals.get(imp.tree, rel), rel)
        assert run_cltfs("verify", store, timeout=60).returncode == 0


def test_import_from_failing_filesystem(tmp_path, stores, trees, run_cltfs, mount, originals):
    """Import reads its sources through a mapping, where a page the source's
    filesystem cannot read (an NFS or Lustre I/O error, a file cut short
    while read) is a SIGBUS, not an error return.  The source here is a
    mount of a store with a damaged pack, whose reads of the damaged chunks
    fail with EIO: import exits 1 naming that file, never dies of the
    signal; the store it leaves verifies, and an import from the good tree
    completes it."""
    imp = stores.copy("s1_bf16", tmp_path / "damaged")
    pack = sorted(glob.glob(os.path.join(imp.store, "packs", "*.pack")), key=os.path.getsize)[-1]
    with open(pack, "r+b") as f:
        f.seek(os.path.getsize(pack) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x5A]))
    store = str(tmp_path / "store")
    with mount(imp.store) as m:
        eio = []
        for rel in imp.desc["files"]:
            try:
                read_all(m.p(rel))
            except OSError as e:
                assert e.errno == errno.EIO, "%s: %s" % (rel, e)
                eio.append(m.p(rel))
        assert eio, "the flipped byte damaged no file"
        r = run_cltfs("import", store, m.path, "--quiet", timeout=300)
    assert r.returncode == 1, "import from a failing source: " + describe(r)
    named = [p for p in eio if p in r.stderr]
    assert named and "I/O error" in r.stderr, describe(r)
    assert "run the import again" in r.stderr, describe(r)
    v = run_cltfs("verify", store)
    assert v.returncode == 0, describe(v)
    r = run_cltfs("import", store, imp.tree, "--quiet", timeout=300)
    assert r.returncode == 0, "import from the good tree: " + describe(r)
    with mount(store) as m:
        for rel in imp.desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)
