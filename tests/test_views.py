"""Views a mount computes from one store: target options (n_targets,
target_offset, target_pad), checked against values computed from the
imported source tree in Python."""
import os
import shutil
import subprocess
import zipfile

import pytest
import torch

from conftest import assert_same


def mlp_of(originals, imp, offset):
    """layer -> the MLP output of that layer, from the original y files of
    batch k: targets[j] of x layer L is the MLP output of L + offset + j."""
    def get(k, t):
        for rel in imp.desc["files"]:
            if not rel.endswith("_y.pt") or "/batch_%d_" % k not in rel:
                continue
            L = int(rel.split("/")[0][1:])
            y = originals.get(imp.tree, rel)
            j = t - L - offset
            if 0 <= j < len(y["targets"]) and y["targets"][j].any():
                return y["targets"][j]
        return None
    return get


def check_y(m, imp, originals, n_layers, nt, offset, clip, src_offset):
    mlp = mlp_of(originals, imp, src_offset)
    for rel in imp.desc["files"]:
        if not rel.endswith("_y.pt"):
            continue
        L = int(rel.split("/")[0][1:])
        k = int(rel.split("_")[1])
        x = originals.get(imp.tree, rel.replace("_y.pt", "_x.pt"))["x"]
        path = m.p(rel)
        with zipfile.ZipFile(path) as z:
            assert z.testzip() is None, rel
        y = torch.load(path, weights_only=True)
        real = max(0, min(nt, n_layers - L - offset))
        want_n = real if clip else nt
        assert list(y) == ["y", "targets", "n_targets"] and y["n_targets"] == want_n, (rel, y["n_targets"])
        assert len(y["targets"]) == want_n, rel
        if want_n:
            assert y["y"].data_ptr() == y["targets"][0].data_ptr(), rel
        for j, t in enumerate(y["targets"]):
            assert t.shape == x.shape and t.dtype == x.dtype, (rel, j)
            layer = L + offset + j
            if layer >= n_layers:
                assert not t.any(), "%s: target %d (layer %d) should be zero padding" % (rel, j, layer)
                continue
            want = mlp(k, layer)
            assert want is not None, "no source for mlp@%d" % layer
            assert torch.equal(t, want), "%s: target %d differs from mlp@%d" % (rel, j, layer)


@pytest.mark.parametrize("opts,nt,clip", [(("n_targets=3",), 3, False), (("n_targets=1",), 1, False),
                                           (("target_pad=clip",), 16, True),
                                           (("n_targets=4", "target_pad=clip"), 4, True)])
def test_target_options(stores, mount, originals, opts, nt, clip):
    """Fewer targets, clip padding: the y files carry what was asked, the
    values of the source's targets, x files unchanged."""
    imp = stores.get("s1_bf16")
    with mount(imp.store, *opts) as m:
        check_y(m, imp, originals, 8, nt, 1, clip, 1)
        for rel in imp.desc["files"]:
            if rel.endswith("_x.pt"):
                assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)
        assert m.stats()["errors"] == 0


def test_target_offset(stores, mount, originals):
    """A store imported with targets from L (offset 0, a per-layer
    transcoder's) served as the reference's next-layer targets, and back."""
    imp = stores.get("offset0")
    with mount(imp.store, "target_offset=1") as m:
        check_y(m, imp, originals, 6, 16, 1, False, 0)
    with mount(imp.store, "target_offset=0", "n_targets=2") as m:
        check_y(m, imp, originals, 6, 2, 0, False, 0)


def test_target_options_refused(stores, mount_fails):
    """An option that needs a stream the store lacks is refused at mount,
    naming the option and the stream; a value out of range is a usage
    error."""
    imp = stores.get("s1_bf16")  # targets from L+1: no mlp@0
    rc, out = mount_fails(imp.store, "target_offset=0")
    assert rc == 1 and "target_offset=0" in out and "mlp@0" in out, out
    for bad, word in (("n_targets=0", "n_targets"), ("target_offset=2", "target_offset"),
                      ("target_pad=none", "target_pad")):
        rc, out = mount_fails(imp.store, bad)
        assert rc == 2 and word in out, (bad, out)


# ------------------------------------------------------ per-sample files --

import sample_table  # noqa: E402

SAMPLE_DT = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sample_rows(imp):
    """[(batch, position in the batch, rows)] of every sample, in order."""
    man = sample_table.manifest(imp.store)
    S = man.get("batch_samples", 1)
    out = []
    for i, s in enumerate(man["samples"]):
        out.append((i // S, i % S, s["rows"]))
    return out


@pytest.mark.parametrize("reduce", ["last", "mean", "all"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_sample_files(stores, mount, originals, reduce, dtype):
    """samples/sample_NNNN.pt as the seed wrote them: {'activations': {L: t}}
    over the x layers, keys ints in order; t the sample's last row, mean over
    its real rows (padding excluded, float64 accumulation) or every real row,
    in float32 unless asked; computed here from the imported tree."""
    imp = stores.get("s2_padded")
    opts = ["sample_reduce=" + reduce] + (["sample_dtype=" + dtype] if dtype else [])
    want_dt = SAMPLE_DT[dtype or "float32"]
    layers = sorted(int(d[1:]) for d in {rel.split("/")[0] for rel in imp.desc["files"]})
    rows = sample_rows(imp)
    with mount(imp.store, *opts) as m:
        names = sorted(os.listdir(m.p("samples")))
        assert names == ["sample_%04d.pt" % i for i in range(len(rows))], names
        for i, (k, pos, n) in enumerate(rows):
            path = m.p("samples/sample_%04d.pt" % i)
            with zipfile.ZipFile(path) as z:
                assert z.testzip() is None
            got = torch.load(path, weights_only=True)
            assert list(got) == ["activations"] and list(got["activations"]) == layers, list(got)
            for L in layers:
                x = originals.get(imp.tree, "L%d/batch_%d_x.pt" % (L, k))["x"][pos, :n]
                want = x[-1] if reduce == "last" else x if reduce == "all" else x.double().mean(0)
                t = got["activations"][L]
                assert t.dtype == want_dt and tuple(t.shape) == tuple(want.shape), (i, L, t.dtype, t.shape)
                if reduce == "mean":
                    tol = 1e-6 if want_dt == torch.float32 else 1e-2
                    assert torch.allclose(t.double(), want, rtol=tol, atol=tol), (i, L)
                else:
                    assert torch.equal(t, want.to(want_dt)), (i, L)
        st = m.stats()
        assert st["views"]["samples"]["reads"] > 0 and st["views"]["x"]["reads"] == 0, st["views"]


def test_sample_sizes_need_no_chunk(stores, mount):
    """ls -l of samples/ reads no chunk: sizes come from the manifest."""
    imp = stores.get("s1_bf16")
    for reduce in ("last", "all"):
        with mount(imp.store, "sample_reduce=" + reduce) as m:
            sizes = [os.stat(m.p("samples/" + f)).st_size for f in os.listdir(m.p("samples"))]
            assert all(s > 0 for s in sizes)
            st = m.stats()
            assert st["chunks"]["store"] == 0 and st["reads"] == 0, st
            if reduce == "last":
                assert len(set(sizes)) == 1


def test_sample_size_of_the_reference_set(tmp_path, trees, run_cltfs, mount):
    """d=4096 and 31 layers, last row in float32, as the seed's set: about
    16 KB a layer a sample (its 1004 samples took 496 MB)."""
    tree, desc = trees.make(tmp_path / "tree", layers="0-30", n_layers=32, batches=2, d=4096, n_targets=1,
                            min_tokens=2, max_tokens=4, seed=31)
    store = str(tmp_path / "store")
    r = run_cltfs("import", store, tree)
    assert r.returncode == 0, r.stderr
    with mount(store) as m:
        size = os.stat(m.p("samples/sample_0000.pt")).st_size
        got = torch.load(m.p("samples/sample_0001.pt"), weights_only=True)["activations"]
    assert len(got) == 31 and got[30].shape == (4096,) and got[30].dtype == torch.float32
    assert 31 * 16384 < size < 31 * 16384 + 16384, size
    assert abs(size * 1004 / 1e6 - 496) < 25, size


def test_sample_names_past_10000(tmp_path, run_cltfs, mount):
    """More than 10,000 samples: the numbers widen to fit, all the same width."""
    import make_scale
    model, images, queries = make_scale.make_scale(str(tmp_path / "inputs"), 12000)
    store = str(tmp_path / "store")
    r = run_cltfs("init", store, "--model", model, "--dataset", queries, "--image-dir", images, "--quiet",
                  timeout=300)
    assert r.returncode == 0, r.stderr
    with mount(store, "capture=off") as m:
        names = os.listdir(m.p("samples"))
        assert len(names) == 12000 and "sample_00000.pt" in names and "sample_11999.pt" in names
        assert os.stat(m.p("samples/sample_11999.pt")).st_size > 0
        assert not os.path.exists(m.p("samples/sample_0001.pt"))


def test_sample_means_kept_in_the_store(stores, mount, originals, tmp_path):
    """Means computed by one mount are kept in STORE/means/ and served by
    the next without reading a chunk; a damaged record is computed again,
    never served; a mount in float16 neither keeps nor uses them."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    shutil.rmtree(os.path.join(imp.store, "means"), ignore_errors=True)  # kept by other tests' mounts
    rows = sample_rows(imp)
    layers = sorted(int(d[1:]) for d in {rel.split("/")[0] for rel in imp.desc["files"]})

    def read_all(m):
        return [torch.load(m.p("samples/sample_%04d.pt" % i), weights_only=True)["activations"]
                for i in range(len(rows))]

    def check(got):
        for i, (k, pos, n) in enumerate(rows):
            for L in layers:
                want = originals.get(imp.tree, "L%d/batch_%d_x.pt" % (L, k))["x"][pos, :n].double().mean(0)
                assert torch.allclose(got[i][L].double(), want, rtol=1e-6, atol=1e-6), (i, L)
    with mount(imp.store, "sample_reduce=mean") as m:
        first = read_all(m)
        assert m.stats()["chunks"]["store"] > 0
    check(first)
    kept = sorted(os.listdir(os.path.join(imp.store, "means")))
    assert kept == ["L%d.bin" % L for L in layers], kept
    with mount(imp.store, "sample_reduce=mean") as m:
        again = read_all(m)
        assert m.stats()["chunks"]["store"] == 0, m.stats()["chunks"]
    assert all(torch.equal(a[L], b[L]) for a, b in zip(first, again) for L in layers)
    # flip a byte of sample 1's record of the first layer: computed again, right
    path = os.path.join(imp.store, "means", "L%d.bin" % layers[0])
    with open(path, "r+b") as f:
        f.seek(32 + 1 * (48 * 4 + 4) + 5)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    with mount(imp.store, "sample_reduce=mean") as m:
        check(read_all(m))
        assert m.stats()["chunks"]["store"] > 0
    with mount(imp.store, "sample_reduce=mean", "dtype=float16") as m:
        got = read_all(m)
        assert m.stats()["chunks"]["store"] > 0
    for i, (k, pos, n) in enumerate(rows):
        want = originals.get(imp.tree, "L%d/batch_%d_x.pt" % (layers[0], k))["x"][pos, :n].half().double().mean(0)
        assert torch.allclose(got[i][layers[0]].double(), want, rtol=1e-5, atol=1e-5), i


@pytest.fixture
def read_only_view(tmp_path):
    """read_only_view(dir) -> a read-only bind mount of dir (unmounted at
    the end): a store on a filesystem this user cannot write, as a shared
    store often is on a cluster."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    made = []

    def bind(src):
        dst = tmp_path / ("ro%d" % len(made))
        dst.mkdir()
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        made.append(dst)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(dst)], check=True)
        return str(dst)
    yield bind
    for d in reversed(made):
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_read_only_store(stores, mount, originals, tmp_path, read_only_view):
    """A store on a read-only filesystem mounts and serves every view as a
    writable one does; means and normalization statistics it cannot keep
    are computed and served from memory (a log line says so), and means a
    writer kept there earlier are read without a chunk."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    shutil.rmtree(os.path.join(imp.store, "means"), ignore_errors=True)
    for f in ("norm_stats.json",):
        if os.path.exists(os.path.join(imp.store, f)):
            os.unlink(os.path.join(imp.store, f))
    rows = sample_rows(imp)
    names = list(imp.desc["files"]) + ["samples/sample_%04d.pt" % i for i in range(len(rows))]

    def read_all(m):
        out = {}
        for rel in names + [".cltfs/norm_stats.json"]:
            with open(m.p(rel), "rb") as f:
                out[rel] = f.read()
        return out
    ro = read_only_view(imp.store)
    with pytest.raises(OSError):
        open(os.path.join(ro, "probe"), "w")
    with mount(ro, "sample_reduce=mean") as m:
        got = read_all(m)
        log = m.log()
    assert "means are kept in memory only" in log and "Read-only file system" in log, log
    assert "not kept in the store" in log, log
    assert not os.path.exists(os.path.join(imp.store, "means"))
    assert not os.path.exists(os.path.join(imp.store, "norm_stats.json"))
    with mount(imp.store, "sample_reduce=mean") as m:  # writable: the same bytes, means kept
        assert read_all(m) == got
    assert os.listdir(os.path.join(imp.store, "means"))
    with mount(read_only_view(imp.store), "sample_reduce=mean") as m:
        again = {rel: open(m.p(rel), "rb").read() for rel in names if rel.startswith("samples/")}
        assert m.stats()["chunks"]["store"] == 0, m.stats()["chunks"]  # the kept means, read-only
        assert "kept in memory only" not in m.log(), m.log()
    assert all(again[rel] == got[rel] for rel in again)
