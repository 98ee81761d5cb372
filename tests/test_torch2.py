"""Compatibility with torch 2: the host has Debian 12's torch 1.13, users
train with torch 2, whose torch.load differs (weights_only=True by default
since 2.6, mmap=True, its own unpickler checks) and whose torch.save writes
a newer layout.  These tests run torch 2.6 (Debian 13's python3-torch) in a
root made by tools/torch2_root.sh (`make torch2-root`, which `make check`
runs), by chroot, on paths bound into that root:

- every view a mount serves (the default files, per-sample files, flat
  batches, shuffled batches, a converted dtype) loads under torch 2.6, in
  each way a trainer loads it, exactly as under the host's torch 1.13
  (structure, dtypes, shapes, strides, values: tests/tensor_digest.py), and
  the default views exactly as torch 2.6 loads the tree they came from;
- a tree torch 2.6's torch.save wrote imports, and the mount serves it as
  torch 2.6 and torch 1.13 load the tree.

Skipped, saying why, without the root (made only as root) or without root
privileges (chroot, bind mounts).
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, TESTS, describe

ROOT = os.environ.get("CLTFS_TORCH2_ROOT", str(REPO / "build" / "torch2-root"))
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"

# How a trainer loads a file under torch 2.6: plain (weights_only=True is
# the default there), mmap=True, weights_only=False, and by DataLoader
# workers.
MODES = {
    "plain": {},
    "mmap": {"kw": {"mmap": True}},
    "pickle": {"kw": {"weights_only": False}},
    "workers": {"workers": 2},
}


def _sh(*argv):
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError("%s: %s" % (" ".join(argv), r.stderr.strip()))


class Torch2:
    """The torch 2 root: paths of the host bound into it under a private
    folder, tests/tensor_digest.py run there by its python3."""

    def __init__(self, root):
        self.root = root
        self.inner = "/tmp/cltfs-test-%d" % os.getpid()
        self.outer = root + self.inner
        self.nbinds = 0
        self.proc = False
        os.makedirs(self.outer, exist_ok=True)
        shutil.copy(str(TESTS / "tensor_digest.py"), self.outer)
        shutil.copy(str(TESTS / "gen_tree.py"), self.outer)
        if not os.path.ismount(os.path.join(root, "proc")):
            _sh("mount", "-t", "proc", "proc", os.path.join(root, "proc"))
            self.proc = True

    @contextlib.contextmanager
    def bound(self, host_path):
        """host_path (a folder, a FUSE mount among them) as seen in the root."""
        inner = "%s/b%d" % (self.inner, self.nbinds)
        os.makedirs(self.root + inner)
        _sh("mount", "--bind", str(host_path), self.root + inner)
        self.nbinds += 1
        try:
            yield inner
        finally:
            subprocess.run(["umount", "-l", self.root + inner], capture_output=True)

    def python(self, *args, timeout=600):
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        r = subprocess.run([CHROOT, self.root, "python3", *args], capture_output=True, text=True,
                           env=env, timeout=timeout)
        assert r.returncode == 0, "python3 in %s: %s" % (self.root, describe(r))
        return r.stdout

    def digests(self, inner_dir, modes=MODES):
        args = ["%s/tensor_digest.py" % self.inner, inner_dir]
        for name, spec in modes.items():
            args += ["--mode", "%s=%s" % (name, json.dumps(spec))]
        out = json.loads(self.python(*args))
        assert out["torch"].startswith("2."), out["torch"]
        return out["digests"]

    def close(self):  # each bind is undone by bound() itself
        if self.proc:
            subprocess.run(["umount", "-l", os.path.join(self.root, "proc")], capture_output=True)
        shutil.rmtree(self.outer, ignore_errors=True)


@pytest.fixture(scope="module")
def torch2():
    if not os.path.isfile(os.path.join(ROOT, ".cltfs-ready")):
        pytest.skip("no torch 2 root at %s: `make torch2-root` makes one (as root)" % ROOT)
    if os.geteuid() != 0:
        pytest.skip("chroot into the torch 2 root needs root")
    t = Torch2(ROOT)
    try:
        yield t
    finally:
        t.close()


def host_digests(path):
    """The host's torch 1.13 digests of every .pt file below path."""
    r = subprocess.run([sys.executable, str(TESTS / "tensor_digest.py"), str(path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, describe(r)
    out = json.loads(r.stdout)
    assert out["torch"].startswith("1."), out["torch"]
    return out["digests"]["plain"]


def assert_modes_equal(got, want, what):
    for mode, d in got.items():
        assert sorted(d) == sorted(want), "%s, %s: files %s, expected %s" % (what, mode, sorted(d), sorted(want))
        bad = [rel for rel in want if d[rel] != want[rel]]
        assert not bad, "%s: torch 2 (%s) loads %d of %d files differently, first %s" % (
            what, mode, len(bad), len(want), bad[0])


# torch 2.6 loading views: the daemon serves them as it does to torch 1.13
# in test_views.py, under ASan there.
@pytest.mark.plain_only
@pytest.mark.parametrize("name,opts", [
    ("s1_bf16", ()),
    ("s2_padded", ()),
    ("s1_bf16", ("batch_rows=48",)),
    ("s1_bf16", ("batch_rows=48", "shuffle=7", "shuffle_window=2")),
    ("s2_padded", ("dtype=float32",)),
], ids=["default", "padded", "batch_rows", "shuffled", "float32"])
def test_views_load_under_torch2(torch2, stores, mount, name, opts):
    imp = stores.get(name)
    with mount(imp.store, *opts) as m:
        want = host_digests(m.path)
        assert want, "no .pt file in the mount"
        with torch2.bound(m.path) as inner:
            got = torch2.digests(inner)
    assert_modes_equal(got, want, "%s %s" % (name, ",".join(opts) or "default views"))
    if not opts:  # the default views are the tree's files, as torch 2 loads the tree
        with torch2.bound(imp.tree) as inner:
            tree = torch2.digests(inner, {"plain": {}})["plain"]
        batch_files = {rel: d for rel, d in want.items() if rel in tree}
        assert batch_files and len(batch_files) == len(imp.desc["files"]), sorted(want)
        assert_modes_equal({"plain": {rel: got["plain"][rel] for rel in batch_files}}, tree,
                           "%s under torch 2: mount against tree" % name)


def test_tree_written_by_torch2_imports(torch2, tmp_path, run_cltfs, mount):
    """The reference capture run under torch 2 writes its files with torch
    2's torch.save: such a tree imports, and every view loads as the file it
    came from, under torch 2.6 and under torch 1.13."""
    tree = tmp_path / "tree"
    tree.mkdir()
    with torch2.bound(tree) as inner:
        torch2.python("%s/gen_tree.py" % torch2.inner, inner, "--layers", "0-4", "--n-layers", "6",
                      "--batches", "3", "--samples-per-batch", "2", "--d", "64", "--n-targets", "4",
                      "--dtype", "bf16", "--seed", "5")
        tree_t2 = torch2.digests(inner, {"plain": {}})["plain"]
    assert len(tree_t2) == 5 * 3 * 2, sorted(tree_t2)
    store = str(tmp_path / "store")
    r = run_cltfs("import", store, str(tree), "--quiet")
    assert r.returncode == 0, describe(r)
    tree_host = host_digests(tree)
    with mount(store) as m:
        mnt_host = host_digests(m.path)
        with torch2.bound(m.path) as inner:
            got = torch2.digests(inner)
    assert_modes_equal({"plain": {rel: mnt_host[rel] for rel in tree_host}}, tree_host,
                       "torch 1.13: mount against the tree torch 2 wrote")
    assert_modes_equal({mode: {rel: d[rel] for rel in tree_t2} for mode, d in got.items()}, tree_t2,
                       "torch 2: mount against the tree it wrote")
