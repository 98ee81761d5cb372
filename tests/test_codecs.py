"""End-to-end: a codec per store.  Trees imported with `--codec raw` and
`--codec exp4` mount with every view equal to the original; the codec is in
cltfs.json (version 3) and in `cltfs stat`; damaged raw and exp4 frames are
EIO, never wrong bytes; a bad --codec is a usage error naming the valid
codecs; a manifest naming a codec this cltfs does not know is refused
naming the file."""

import glob
import json
import os
import zipfile

import pytest
import torch

from conftest import assert_same, describe
from test_errors import assert_eio_or_right

CODECS = ("zstd", "raw", "exp4")
VALID = "zstd, raw, exp4"
# trees of every dtype and layout, and small chunks (views span chunks)
CASES = [("s1_bf16", ()), ("s2_padded", ()), ("data_fp16", ()), ("bare_fp32", ()), ("odd_d", ()),
         ("s1td", ("--chunk-rows", "3")), ("flat", ("--chunk-rows", "1")), ("big", ("--chunk-rows", "64"))]


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def imported(stores, name, codec, args=()):
    return stores.get(name, *args, "--codec", codec)


@pytest.mark.parametrize("codec", ["raw", "exp4"])
@pytest.mark.parametrize("name,args", CASES, ids=["-".join((n,) + a) for n, a in CASES])
def test_views_equal_tree(stores, mount, originals, codec, name, args):
    """Every view of a store in this codec loads exactly like the original
    (keys, dtypes, shapes, bit-identical values, y sharing targets[0]'s
    storage) and is a valid zip."""
    imp = imported(stores, name, codec, args)
    with mount(imp.store) as m:
        assert m.files() == imp.desc["files"]
        for rel in imp.desc["files"]:
            got = torch.load(m.p(rel), weights_only=True)
            assert_same(got, originals.get(imp.tree, rel), rel)
            if rel.endswith("_y.pt"):
                assert got["y"].data_ptr() == got["targets"][0].data_ptr(), rel
            with zipfile.ZipFile(m.p(rel)) as z:
                assert z.testzip() is None, rel
        assert m.stats()["errors"] == 0


@pytest.mark.parametrize("codec", CODECS)
def test_manifest_stat_verify(stores, run_cltfs, codec):
    """The codec is recorded in cltfs.json (zstd, the default, as before:
    no field; another: the field; version 4 either way), and
    shown by stat; verify checks every frame."""
    imp = imported(stores, "s1_bf16", codec)
    man = json.load(open(os.path.join(imp.store, "cltfs.json")))
    if codec == "zstd":
        assert "codec" not in man and man["version"] == 4, man
    else:
        assert man["codec"] == codec and man["version"] == 4, man
    r = run_cltfs("stat", imp.store)
    assert r.returncode == 0, describe(r)
    assert "codec         %s" % codec in r.stdout, r.stdout
    frames = [ln for ln in r.stdout.splitlines() if ln.startswith("frames")]
    assert len(frames) == 1 and (" %s: " % codec) in frames[0], r.stdout
    r = run_cltfs("stat", imp.store, "--json")
    assert r.returncode == 0, describe(r)
    st = json.loads(r.stdout)
    assert st["codec"] == codec and list(st["frames"]) == [codec], st
    assert st["frames"][codec]["frames"] == st["chunks"] and st["frames"][codec]["raw_bytes"] == st["raw_bytes"]
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 0, describe(r)


def test_default_is_zstd(stores):
    """Without --codec, and with --codec zstd, the store is the same bytes."""
    a, b = stores.get("s2_padded"), imported(stores, "s2_padded", "zstd")
    assert read_all(os.path.join(a.store, "cltfs.json")) == read_all(os.path.join(b.store, "cltfs.json"))
    pa, pb = (sorted(glob.glob(os.path.join(s, "packs", "*.pack"))) for s in (a.store, b.store))
    assert [read_all(p) for p in pa] == [read_all(p) for p in pb]


def test_sizes(stores):
    """raw frames hold the chunks as they are; exp4's are smaller, zstd's
    smaller still (on activation-like values)."""
    size = {}
    for c in CODECS:
        packs = glob.glob(os.path.join(imported(stores, "big", c).store, "packs", "*.pack"))
        size[c] = sum(os.path.getsize(p) for p in packs)
    assert size["zstd"] < size["exp4"] < size["raw"], size


@pytest.mark.parametrize("codec", ["raw", "exp4"])
@pytest.mark.parametrize("where", [0.3, 0.5, 0.9])
def test_flipped_byte(tmp_path, stores, run_cltfs, mount, originals, codec, where):
    """A flipped byte in a raw or exp4 pack: the views that need its chunk
    are EIO and the log names the pack, the chunk and the offset; no view
    returns wrong bytes; verify exits 1 naming the pack."""
    src = imported(stores, "s1_bf16", codec)
    store = tmp_path / "store"
    import shutil
    shutil.copytree(src.store, store)
    pack = sorted(glob.glob(os.path.join(store, "packs", "*.pack")), key=os.path.getsize)[-1]
    off = int(os.path.getsize(pack) * where)
    with open(pack, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x08]))
    with mount(str(store)) as m:
        assert assert_eio_or_right(m, src, originals), "every file EIO"
        log = m.log()
    line = [ln for ln in log.splitlines() if os.path.basename(pack) in ln]
    assert line and "at offset" in line[0] and ("x@" in line[0] or "mlp@" in line[0]), log
    assert "CRC-32" in line[0] or "frame" in line[0], line[0]
    r = run_cltfs("verify", str(store))
    assert r.returncode == 1 and os.path.basename(pack) in r.stdout + r.stderr, describe(r)


def test_bad_codec_value(tmp_path, trees, run_cltfs):
    """An unknown --codec is a usage error (exit 2) naming the valid ones,
    for import and init alike; nothing is written."""
    tree, _ = trees.get("s1_bf16")
    store = tmp_path / "store"
    for args in (("import", str(store), tree, "--codec", "lz4"),
                 ("import", str(store), tree, "--codec", "ZSTD"),
                 ("import", str(store), tree, "--codec", ""),
                 ("init", str(store), "--model", "m", "--dataset", "q.json", "--image-dir", "i",
                  "--codec", "bzip2")):
        r = run_cltfs(*args)
        assert r.returncode == 2, describe(r)
        assert VALID in r.stderr and "--codec" in r.stderr, describe(r)
    r = run_cltfs("import", str(store), tree, "--codec")
    assert r.returncode == 2, describe(r)
    assert not store.exists()


def test_reimport_other_codec(tmp_path, stores, run_cltfs, mount, originals):
    """A re-run resumes in the store's own codec; a --codec naming another
    one is refused naming the store's manifest."""
    src = imported(stores, "s2_padded", "raw")
    store = str(tmp_path / "store")
    import shutil
    shutil.copytree(src.store, store)
    r = run_cltfs("import", store, src.tree, "--codec", "zstd")
    assert r.returncode == 1, describe(r)
    assert "cltfs.json" in r.stderr and "raw" in r.stderr and "zstd" in r.stderr, describe(r)
    r = run_cltfs("import", store, src.tree)
    assert r.returncode == 0, describe(r)
    assert json.load(open(os.path.join(store, "cltfs.json")))["codec"] == "raw"
    with mount(store) as m:
        for rel in src.desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(src.tree, rel), rel)


@pytest.mark.parametrize("value", ['"lz9"', '7', '""'])
def test_manifest_unknown_codec(tmp_path, stores, mount_fails, run_cltfs, value):
    """A manifest naming a codec this cltfs does not know is refused by the
    mount (before it goes to the background), stat and verify, with a
    message naming cltfs.json and the codecs it knows."""
    src = imported(stores, "s1_bf16", "raw")
    store = tmp_path / "store"
    import shutil
    shutil.copytree(src.store, store)
    path = store / "cltfs.json"
    text = path.read_text()
    assert '"codec":"raw"' in text
    path.write_text(text.replace('"codec":"raw"', '"codec":%s' % value))
    for args in (("-f",), ()):
        rc, out = mount_fails(str(store), args=args)
        assert rc == 1, out
        assert str(path) in out and "codec" in out and VALID in out, out
    for cmd in ("stat", "verify"):
        r = run_cltfs(cmd, str(store))
        assert r.returncode == 1 and str(path) in r.stderr and VALID in r.stderr, describe(r)


# ------------------------------------------------------- the Hub tier --
# Frames travel between stores as they are, each record naming its codec:
# a Hub store in one codec fills a local store of another, which then holds
# both (as a store whose writers disagree does) and serves every view.

@pytest.fixture
def hub():
    from hubserver import Hub
    h = Hub(token="hf_test", lfs_threshold=4096).start()
    yield h
    h.stop()


def hub_env(tmp_path, hub, **extra):
    env = dict(os.environ)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
              "HUGGINGFACE_HUB_CACHE", "CLTFS_STORE", "CLTFS_HUB_RETRIES"):
        env.pop(k, None)
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"), HF_ENDPOINT=hub.endpoint,
               CLTFS_HUB_BACKOFF_MS="50")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_hub_store_in_raw(tmp_path, hub, stores, mount, run_cltfs, originals):
    """A raw store on the Hub mounts (its frames fetched as they are into a
    local store, which takes the Hub's manifest and so its codec)."""
    imp = imported(stores, "s1_bf16", "raw")
    hub.add_repo("me/raw", imp.store)
    local = str(tmp_path / "local")
    with mount("hf://datasets/me/raw", "store=" + local, env=hub_env(tmp_path, hub)) as m:
        for rel in imp.desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)
        assert m.stats()["chunks"]["hub"] > 0 and m.stats()["errors"] == 0
    st = json.loads(run_cltfs("stat", local, "--json").stdout)
    assert st["codec"] == "raw" and list(st["frames"]) == ["raw"], st
    assert run_cltfs("verify", local).returncode == 0


def test_hub_fills_store_of_another_codec(tmp_path, hub, stores, mount, run_cltfs, originals):
    """An exp4 store missing half its chunks, behind it (-o hub=) a raw Hub
    store of the same dataset: the missing chunks come from the Hub as raw
    frames into the exp4 store, which then holds both codecs; stat counts
    each, verify checks each, and it serves every view on its own."""
    src = imported(stores, "s1_bf16", "exp4")
    hub_store = imported(stores, "s1_bf16", "raw")
    hub.add_repo("me/raw", hub_store.store)
    local = tmp_path / "local"
    import shutil
    shutil.copytree(src.store, local)
    idx = glob.glob(str(local / "packs" / "*.idx"))
    assert len(idx) == 1
    n = (os.path.getsize(idx[0]) - 16) // 40
    os.truncate(idx[0], 16 + 40 * (n // 2))
    with mount(str(local), "hub=hf://datasets/me/raw", env=hub_env(tmp_path, hub)) as m:
        for rel in src.desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(src.tree, rel), rel)
        st = m.stats()
    assert st["chunks"]["hub"] > 0 and st["chunks"]["store"] > 0 and st["errors"] == 0, st
    r = run_cltfs("stat", str(local), "--json")
    st = json.loads(r.stdout)
    assert st["codec"] == "exp4" and set(st["frames"]) == {"exp4", "raw"}, st
    assert st["frames"]["exp4"]["frames"] == n // 2 and st["frames"]["raw"]["frames"] == n - n // 2, st
    text = run_cltfs("stat", str(local)).stdout
    assert len([ln for ln in text.splitlines() if " raw: " in ln or " exp4: " in ln]) == 2, text
    assert run_cltfs("verify", str(local)).returncode == 0
    hub.stop()
    with mount(str(local), env=hub_env(tmp_path, hub, HF_HUB_OFFLINE=1)) as m:
        for rel in src.desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(src.tree, rel), rel)
        st = m.stats()
    assert st["chunks"]["store"] > 0 and st["errors"] == 0, st
