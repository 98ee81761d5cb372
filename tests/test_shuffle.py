"""-o shuffle=SEED: flat token batches whose rows are a seeded permutation
of every real row, checked against the rows of the imported source tree."""
import os
import zipfile

import numpy as np
import pytest
import torch

import sample_table
from test_views import mlp_of, sample_rows

CHUNK_ROWS = 3


def stream_rows(imp, originals):
    """x@L rows and mlp rows in stream order (padding excluded), from the tree."""
    rows = sample_rows(imp)
    layers = sorted(int(d[1:]) for d in {rel.split("/")[0] for rel in imp.desc["files"]})
    mlp = mlp_of(originals, imp, 1)
    x = {L: torch.cat([originals.get(imp.tree, "L%d/batch_%d_x.pt" % (L, k))["x"][p, :n] for k, p, n in rows])
         for L in layers}
    y = {}
    for t in range(16):
        parts = [mlp(k, t) for k, _, _ in rows]
        if all(p is not None for p in parts):
            y[t] = torch.cat([parts[i][p, :n] for i, (k, p, n) in enumerate(rows)])
    return layers, x, y


def chunk_of_rows(imp):
    """The chunk of every stream row: chunks of CHUNK_ROWS within each stored batch."""
    out, c = [], 0
    per_batch = {}
    for k, _, n in sample_rows(imp):
        per_batch[k] = per_batch.get(k, 0) + n
    for k in sorted(per_batch):
        for r in range(per_batch[k]):
            out.append(c + r // CHUNK_ROWS)
        c += (per_batch[k] + CHUNK_ROWS - 1) // CHUNK_ROWS
    return out


def epoch(m, L, nb, key="x"):
    got = []
    for k in range(nb):
        path = m.p("L%d/batch_%d_%s.pt" % (L, k, key))
        with zipfile.ZipFile(path) as z:
            assert z.testzip() is None
        got.append(torch.load(path, weights_only=True))
    return got


def order_of(x_rows, served):
    """The stream row of each served row (rows are random: each is unique)."""
    index = {bytes(r.view(torch.int16).numpy()): i for i, r in enumerate(x_rows)}
    assert len(index) == len(x_rows)
    return [index[bytes(r.view(torch.int16).numpy())] for r in served]


@pytest.mark.parametrize("window", [None, "0", "1", "2"])
def test_shuffle_is_a_permutation(stores, mount, originals, window):
    """Every real row exactly once per epoch; x and y of a batch hold the
    same rows in the same order; each window's rows come together."""
    imp = stores.get("s2_padded", "--chunk-rows", str(CHUNK_ROWS))
    layers, x, y = stream_rows(imp, originals)
    total, B = len(x[layers[0]]), 5
    nb = (total + B - 1) // B
    opts = ["batch_rows=%d" % B, "shuffle=42"] + (["shuffle_window=" + window] if window else [])
    with mount(imp.store, *opts) as m:
        assert sorted(os.listdir(m.p("L0"))) == sorted("batch_%d_%s.pt" % (k, s) for k in range(nb) for s in "xy")
        sizes = [e.stat().st_size for L in layers for e in os.scandir(m.p("L%d" % L))]
        assert all(sizes) and m.stats()["chunks"]["store"] == 0, "ls -l read a chunk"
        for L in layers:
            xs = epoch(m, L, nb)
            served = torch.cat([f["x"] for f in xs])
            assert served.shape == x[L].shape
            order = order_of(x[L], served)
            assert sorted(order) == list(range(total)), "not a permutation"
            assert order != list(range(total)), "not shuffled"
            ys = epoch(m, L, nb, "y")
            for j, t in enumerate(ys[0]["targets"]):
                if L + 1 + j in y:
                    got = torch.cat([f["targets"][j] for f in ys])
                    assert torch.equal(got, y[L + 1 + j][order]), (L, j)
            assert all(f["y"].data_ptr() == f["targets"][0].data_ptr() for f in ys)
        st = m.stats()
        assert st["shuffle"]["seed"] == 42 and st["views"]["y"]["reads"] > 0, st
    chunks = chunk_of_rows(imp)
    w = st["shuffle"]["window_chunks"]
    assert w == (int(window) if window and window != "0" else w)
    wins = [chunks[r] // w for r in order]
    runs = 1 + sum(a != b for a, b in zip(wins, wins[1:]))
    assert runs == st["shuffle"]["windows"] == len(set(wins)), (runs, st["shuffle"])
    if window == "0":
        assert st["shuffle"]["windows"] == 1


def test_shuffle_seeds(stores, mount, originals):
    """The same seed gives the same epoch (also in another dtype); another seed another."""
    imp = stores.get("s2_padded", "--chunk-rows", str(CHUNK_ROWS))
    layers, x, _ = stream_rows(imp, originals)
    total, B = len(x[0]), 4
    nb = (total + B - 1) // B

    def run(*opts):
        with mount(imp.store, "batch_rows=%d" % B, *opts) as m:
            return torch.cat([f["x"] for f in epoch(m, 0, nb)])
    a, b = run("shuffle=1"), run("shuffle=1")
    assert torch.equal(a, b)
    c = run("shuffle=2")
    assert not torch.equal(a, c) and sorted(order_of(x[0], c)) == list(range(total))
    f32 = run("shuffle=1", "dtype=float32")
    assert f32.dtype == torch.float32 and torch.equal(f32, a.float())
    plain = run()
    assert torch.equal(plain, x[0]), "batch_rows without shuffle is the stream in order"


def test_shuffled_view_read_ahead(stores, mount):
    """A reader going through a shuffled view in order: the chunks its next
    bytes will need (a permutation's windows, not the stream's order) are
    decoded ahead, and every byte equals a mount that reads nothing ahead."""
    imp = stores.get("big", "--chunk-rows", "16")
    opts = ("batch_rows=512", "shuffle=7", "cache_mb=64")

    def read(m, rel, step=16384):
        fd = os.open(m.p(rel), os.O_RDONLY | os.O_DIRECT)  # each pread a READ of the daemon's
        try:
            buf, out, off = mmap_buffer(step), bytearray(), 0
            while True:
                n = os.preadv(fd, [buf], off)
                out += buf[:n]
                off += n
                if n < step:
                    return bytes(out)
        finally:
            os.close(fd)
    rels = ["L1/batch_0_x.pt", "L1/batch_1_y.pt"]
    with mount(imp.store, *opts, "readahead=0") as m:
        want = {rel: read(m, rel) for rel in rels}
        assert m.stats()["readahead"] == 0
    with mount(imp.store, *opts, "readahead=8") as m:
        got = {rel: read(m, rel) for rel in rels}
        st = m.stats()
    assert got == want
    # chunks were queued ahead of the reader; how many the threads decoded
    # before it came is a race (on a loaded machine it may win them all)
    assert len(want[rels[1]]) > 8 * 16384 and st["readahead_queued"] > 0 and st["readahead_errors"] == 0, st


def mmap_buffer(n):
    """n bytes aligned to a page, as O_DIRECT wants."""
    import mmap
    return mmap.mmap(-1, n)


def test_shuffle_refused(stores, mount_fails):
    imp = stores.get("s1_bf16")
    rc, out = mount_fails(imp.store, "shuffle=3")
    assert rc != 0 and "needs -o batch_rows" in out, out
    rc, out = mount_fails(imp.store, "batch_rows=4", "shuffle_window=2")
    assert rc != 0 and "shuffle_window needs -o shuffle" in out, out
    rc, out = mount_fails(imp.store, "batch_rows=4", "shuffle=-1")
    assert rc != 0 and "shuffle" in out, out
