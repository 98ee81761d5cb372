"""Normalization statistics: .cltfs/norm_stats.json and `cltfs stats`,
checked against numpy over the imported source tree (real rows only,
float64), plus where they are kept and what happens when they cannot be."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from test_views import mlp_of, sample_rows


def reference(imp, originals):
    """{(kind, layer): float64 array [rows, d]} of every stream, from the tree."""
    rows = sample_rows(imp)
    layers = sorted(int(d[1:]) for d in {rel.split("/")[0] for rel in imp.desc["files"]})
    mlp = mlp_of(originals, imp, 1)
    out = {}

    def gather(get):
        parts = []
        for k, pos, n in rows:
            t = get(k)
            if t is None:
                return None
            parts.append(t[pos, :n].double().numpy())
        return np.concatenate(parts)
    for L in layers:
        out[("x", L)] = gather(lambda k: originals.get(imp.tree, "L%d/batch_%d_x.pt" % (L, k))["x"])
    for t in range(0, 16):
        got = gather(lambda k: mlp(k, t))
        if got is not None:
            out[("mlp", t)] = got
    return out


def check(text, imp, originals):
    got = json.loads(text)
    assert got["format"] == "cltfs-norm-stats/1" and got["std"] == "population (ddof=0)"
    ref = reference(imp, originals)
    seen = set()
    for L, streams in got["layers"].items():
        for kind, s in streams.items():
            want = ref[(kind, int(L))]
            seen.add((kind, int(L)))
            assert s["count"] == want.shape[0] == got["rows"], (kind, L)
            np.testing.assert_allclose(s["mean_per_dim"], want.mean(0), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(s["std_per_dim"], want.std(0), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(s["mean"], want.mean(), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(s["std"], want.std(), rtol=1e-6, atol=1e-9)
    assert seen == set(ref), sorted(set(ref) - seen)


@pytest.mark.parametrize("opts", [(), ("handles",)])
def test_norm_stats_file(stores, mount, originals, tmp_path, opts):
    """Listed with size 0 (no chunk read) until computed; the first open
    computes them in one pass, matching numpy to 1e-6; kept in the store so
    the next mount lists their size and serves them without a chunk."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    with mount(imp.store, *opts) as m:
        ls = {e.name: e.stat().st_size for e in os.scandir(m.p(".cltfs"))}
        assert ls["norm_stats.json"] == 0, ls
        assert m.stats()["chunks"]["store"] == 0
        with open(m.p(".cltfs/norm_stats.json")) as f:
            text = f.read()
        assert m.stats()["chunks"]["store"] > 0
        assert os.stat(m.p(".cltfs/norm_stats.json")).st_size == len(text)
    check(text, imp, originals)
    with open(os.path.join(imp.store, "norm_stats.json")) as f:
        assert f.read() == text
    with mount(imp.store) as m:
        ls = {e.name: e.stat().st_size for e in os.scandir(m.p(".cltfs"))}
        assert ls["norm_stats.json"] == len(text), ls
        with open(m.p(".cltfs/norm_stats.json")) as f:
            assert f.read() == text
        assert m.stats()["chunks"]["store"] == 0


def test_stats_command(stores, run_cltfs, originals, tmp_path):
    """cltfs stats: the same text, a progress line, kept until --force; a
    damaged or foreign copy is computed again, not served."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    r = run_cltfs("stats", imp.store)
    assert r.returncode == 0, r.stderr
    assert "chunks (100%)" in r.stderr and "norm_stats.json" in r.stdout, (r.stdout, r.stderr)
    path = os.path.join(imp.store, "norm_stats.json")
    text = open(path).read()
    check(text, imp, originals)
    r = run_cltfs("stats", imp.store)
    assert r.returncode == 0 and "up to date" in r.stdout and "chunks" not in r.stderr, (r.stdout, r.stderr)
    # one digit changed: damaged, so computed again
    i = text.index('"mean": ') + 9
    bad = text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:]
    open(path, "w").write(bad)
    r = run_cltfs("stats", imp.store)
    assert r.returncode == 0 and "chunks (100%)" in r.stderr and "damaged" in r.stderr, r.stderr
    assert open(path).read() == text
    r = run_cltfs("stats", "--force", "--quiet", imp.store)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    assert open(path).read() == text


def test_stats_of_another_manifest(stores, mount, tmp_path):
    """Statistics computed for one store and copied into another are not served as its own."""
    a = stores.copy("s2_padded", tmp_path / "a")
    b = stores.copy("s1_bf16", tmp_path / "b")
    with mount(a.store) as m:
        open(m.p(".cltfs/norm_stats.json")).read()
    os.link(os.path.join(a.store, "norm_stats.json"), os.path.join(b.store, "norm_stats.json"))
    with mount(b.store) as m:
        assert os.stat(m.p(".cltfs/norm_stats.json")).st_size == 0
        got = json.loads(open(m.p(".cltfs/norm_stats.json")).read())
        assert "computed for another manifest" in m.log(), m.log()
    assert got["d_model"] == 64 and "5" in got["layers"], got["d_model"]


def test_stats_missing_chunk(stores, mount, run_cltfs, tmp_path):
    """A store that lacks chunks: the command fails naming the chunk and the
    store; a read of the file fails with EIO and the log says why."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    packs = os.path.join(imp.store, "packs")
    victim = sorted(f for f in os.listdir(packs) if f.endswith(".idx"))[0]
    os.unlink(os.path.join(packs, victim))
    r = run_cltfs("stats", imp.store)
    assert r.returncode == 1 and "chunk" in r.stderr and imp.store in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(imp.store, "norm_stats.json"))
    with mount(imp.store) as m:
        with pytest.raises(OSError) as ei:
            open(m.p(".cltfs/norm_stats.json")).read()
        assert ei.value.errno == 5  # EIO
        assert "not in the store" in m.log(), m.log()


def test_stats_usage(run_cltfs, tmp_path):
    r = run_cltfs("stats")
    assert r.returncode == 2 and "stats takes one STORE" in r.stderr
    r = run_cltfs("stats", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "nothing" in r.stderr, r.stderr
