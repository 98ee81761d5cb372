"""Scale: the metadata paths at 10^5 samples (no model run: a LLaVA-1.5-7B
shaped checkpoint without weights, tests/make_scale.py), stores of the old
manifest format, and listings whose sizes must be the bytes served."""
import json
import os
import random
import subprocess

import pytest
import torch

import make_scale
import sample_table
from conftest import assert_same, describe

N = 100_000


@pytest.fixture(scope="module")
def scale_inputs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("scale"))
    model, images, q_json = make_scale.make_scale(d, N)
    q_jsonl = make_scale.write_queries(d, N, jsonl=True)
    return model, images, q_json, q_jsonl


@pytest.fixture(scope="module")
def big_store(scale_inputs, tmp_path_factory, cltfs_bin):
    model, images, q_json, _ = scale_inputs
    store = str(tmp_path_factory.mktemp("bigstore") / "store")
    r = subprocess.run([cltfs_bin, "init", store, "--model", model, "--dataset", q_json,
                        "--image-dir", images], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return store


def test_init_streams_json_and_jsonl(scale_inputs, big_store, run_cltfs, tmp_path):
    """10^5 queries as a JSON list and as JSON Lines give the same table; the
    manifest stays small, the samples are in samples.bin."""
    model, images, _, q_jsonl = scale_inputs
    other = str(tmp_path / "jsonl")
    r = run_cltfs("init", other, "--model", model, "--dataset", q_jsonl, "--image-dir", images,
                  "--quiet", timeout=300)
    assert r.returncode == 0, describe(r)
    with open(os.path.join(big_store, "samples.bin"), "rb") as a, \
            open(os.path.join(other, "samples.bin"), "rb") as b:
        assert a.read() == b.read()
    assert os.path.getsize(os.path.join(big_store, "cltfs.json")) < 4096
    t = sample_table.read(os.path.join(big_store, "samples.bin"))
    assert len(t["samples"]) == N
    qs = list(make_scale.queries(N))
    for i in random.Random(3).sample(range(N), 200):
        s = t["samples"][i]
        assert (s["id"], s["image"], s["text"]) == (str(qs[i]["id"]), qs[i]["image"], qs[i]["query"])
        assert s["rows"] > 576  # the image's rows and the prompt's
    st = json.loads(run_cltfs("stat", big_store, "--json").stdout)
    assert st["samples"] == st["batches"] == N and st["rows"] == sum(s["rows"] for s in t["samples"])
    assert st["chunks"] == 0 and st["x_layers"] == 32 and st["d_model"] == 4096
    r = run_cltfs("verify", big_store, timeout=120)
    assert r.returncode == 0 and "0 bad" in r.stdout, describe(r)


def test_listing_a_big_layer(big_store, mount):
    """A layer directory of 2x10^5 files lists with every size, from the
    manifest alone (nothing captured, nothing read)."""
    with mount(big_store, "capture=off") as m:
        d = m.p("L7")
        names = os.listdir(d)
        assert len(names) == 2 * N
        sizes = {}
        with os.scandir(d) as it:
            for e in it:
                sizes[e.name] = e.stat().st_size
        assert len(sizes) == 2 * N and min(sizes.values()) > 0
        for k in random.Random(5).sample(range(N), 50):
            for xy in "xy":
                name = "batch_%d_%s.pt" % (k, xy)
                assert os.stat(os.path.join(d, name)).st_size == sizes[name]
        st = m.stats()
        assert st["chunks"]["store"] == 0 and st["reads"] == 0, st
        ls = subprocess.run(["ls", "-l", d], capture_output=True, text=True, timeout=120)
        assert ls.returncode == 0 and len(ls.stdout.splitlines()) == 2 * N + 1


def _fuse_inodes():
    """The kernel's FUSE inodes now (active objects of the fuse_inode slab),
    or None where /proc/slabinfo cannot be read (not root)."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("fuse_inode "):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def test_listing_names_builds_no_inodes(big_store, mount):
    """os.listdir of a 2x10^5-file layer gets names only (plain READDIR
    after the first buffer): the kernel builds no inode per name, which at
    10^7 samples took 18 GB of its memory and 220 s for one listing.  A
    lister that stats as it goes (os.scandir + stat) still gets attributes
    with the names; -o readdirplus=always gives them to every listing, and a
    stat after it then needs no LOOKUP."""
    with mount(big_store, "capture=off") as m:
        before, ino0 = m.stats()["requests"], _fuse_inodes()
        assert len(os.listdir(m.p("L3"))) == 2 * N
        ino1 = _fuse_inodes()
        rq = m.stats()["requests"]
        plus = rq["readdirplus"] - before["readdirplus"]
        assert rq["readdir"] > before["readdir"] and plus <= 2, (before, rq)
        if ino0 is not None:
            assert ino1 - ino0 < N // 4, (ino0, ino1)  # other tests' mounts make some
        with os.scandir(m.p("L4")) as it:
            assert sum(e.stat().st_size > 0 for e in it) == 2 * N
        after = m.stats()["requests"]
        # attributes came with the names: no LOOKUP per file
        assert after["readdirplus"] > rq["readdirplus"] and after["lookup"] - rq["lookup"] < 100, (rq, after)
    with mount(big_store, "capture=off", "readdirplus=always") as m:
        before, ino0 = m.stats()["requests"], _fuse_inodes()
        names = os.listdir(m.p("L3"))
        assert len(names) == 2 * N
        rq = m.stats()["requests"]
        assert rq["readdir"] == before["readdir"] and rq["readdirplus"] > before["readdirplus"], rq
        if ino0 is not None:
            assert _fuse_inodes() - ino0 > N, (ino0, _fuse_inodes())
        for name in random.Random(7).sample(names, 2000):
            assert os.stat(m.p("L3", name)).st_size > 0
        end = m.stats()["requests"]  # reading .cltfs/stats looks it up: a few
        assert end["lookup"] - rq["lookup"] < 10, (rq, end)


def _to_version1(store):
    """Rewrite a store's manifest as an older cltfs wrote it: the samples
    inline in cltfs.json, no samples.bin."""
    man = sample_table.manifest(store)
    with open(os.path.join(store, "cltfs.json"), "w") as f:
        json.dump(man, f)
    os.unlink(os.path.join(store, "samples.bin"))


@pytest.mark.parametrize("name", ["s2_padded", "many_batches"])
def test_old_format_store_mounts(stores, mount, originals, run_cltfs, tmp_path, name):
    """A store whose cltfs.json is format version 1 (samples inline) mounts,
    serves the same bytes, verifies and is the same dataset to import."""
    imp = stores.copy(name, tmp_path / "store")
    with mount(imp.store) as m:
        want = {rel: open(m.p(rel), "rb").read() for rel in imp.desc["files"]}
    _to_version1(imp.store)
    with mount(imp.store) as m:
        for rel in imp.desc["files"]:
            assert open(m.p(rel), "rb").read() == want[rel], rel
        assert_same(torch.load(m.p(imp.desc["files"][0])), originals.get(imp.tree, imp.desc["files"][0]))
    assert run_cltfs("verify", imp.store).returncode == 0
    # the same dataset: importing the tree again into it resumes, adds nothing
    r = run_cltfs("import", imp.store, imp.tree, timeout=120)
    assert r.returncode == 0 and "0 chunks written" in r.stdout, describe(r)


@pytest.mark.parametrize("name,opts", [("s2_padded", ()), ("many_batches", ()), ("flat", ()),
                                       ("s1td", ()), ("nt4_all", ("share_zero_targets",)),
                                       ("s2_padded", ("batch_rows=37",)),
                                       ("many_batches", ("batch_samples=3", "dtype=float32"))])
def test_listed_sizes_are_the_bytes(stores, mount, name, opts):
    """Every size a listing gives (READDIRPLUS, from the size memo) is the
    number of bytes a read returns."""
    imp = stores.get(name)
    with mount(imp.store, *opts) as m:
        for layer in sorted(os.listdir(m.path)):
            if not layer.startswith("L"):
                continue
            with os.scandir(m.p(layer)) as it:
                for e in it:
                    with open(e.path, "rb") as f:
                        assert len(f.read()) == e.stat().st_size, e.path
