"""Views a mount computes from one store: target options (n_targets,
target_offset, target_pad), checked against values computed from the
imported source tree in Python."""
import os
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
