"""Fixtures for cltfs's end-to-end tests (run with /usr/bin/python3, real torch).

- cltfs_bin: the binary ($CLTFS_BIN, else <repo>/build/cltfs).
- run_cltfs(*args): run the binary, capture text output.
- trees: generated reference trees (tests/gen_tree.py), cached per session
  (trees.get(name) for a named config of TREE_CONFIGS, trees.make(dir, **kw)
  for a fresh one a test may modify).
- stores: trees imported with `cltfs import`, cached per session
  (stores.get(name) -> Imported(store, tree, desc)); stores.copy(name, dir)
  for a private copy a test may corrupt.
- mount(store, *opts): context manager; starts `cltfs STORE MNT -f -o ...`
  under the test's tmp_path, waits until the mount is up (failing with the
  daemon's stderr if it exits), always unmounts (fusermount3 -u, then -uz)
  and reaps the daemon, also when the test fails.  A watchdog kills a daemon
  that outlives its deadline so that a hung read cannot hang the suite.
- mount_fails(store, *opts): run a mount that must fail; returns (rc, output).

Without CLTFS_TEST_DEVICE every process runs with no GPU visible.  No
process sees the SLURM_ARRAY_* variables of a suite run as an array task.

A session finalizer unmounts any cltfs mount left under the session's
temporary directory and reports it as an error.

Marker plain_only: a slow test that reaches no C path the rest of the
suite does not; make pytest-asan leaves it out (-m "not plain_only") to
keep make check in its time, make pytest runs it.
"""

import atexit
import contextlib
import glob
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# The capture tests compare fp32 captures value for value: on a machine
# with a GPU they would run on it (in bf16) unless told.  make gpu-check
# sets CLTFS_TEST_DEVICE=cuda and runs the GPU tests on purpose.
if not os.environ.get("CLTFS_TEST_DEVICE"):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

# `cltfs capture` in a Slurm array task captures only its shard: a suite
# run as one (CI on a cluster) must not make every test's capture a shard.
for _k in [k for k in os.environ if k.startswith("SLURM_ARRAY_")]:
    del os.environ[_k]

import gen_tree  # noqa: E402

MOUNT_TIMEOUT = float(os.environ.get("CLTFS_TEST_MOUNT_TIMEOUT", "20"))
MOUNT_DEADLINE = float(os.environ.get("CLTFS_TEST_MOUNT_DEADLINE", "150"))

# Named trees shared by the tests (kwargs of gen_tree.make_tree).  Small d and
# few layers/batches keep the suite fast.
TREE_CONFIGS = {
    # one sample per batch, batches of different token counts, bf16,
    # 16 targets with zero padding past layer 7
    "s1_bf16": dict(layers="0-5", n_layers=8, batches=4, samples_per_batch=1, d=64,
                    dtype="bfloat16", seed=0),
    # two samples per batch, padded to the longer one
    "s2_padded": dict(layers="0-3", n_layers=6, batches=3, samples_per_batch=2, d=48,
                      dtype="bfloat16", seed=1),
    # flat [rows, d]
    "flat": dict(layers="0-3", n_layers=6, batches=3, shape="flat", d=32, seed=2),
    # {'data': t}, float16
    "data_fp16": dict(layers="0-3", n_layers=6, batches=3, x_format="data",
                      dtype="float16", d=32, seed=3),
    # bare tensor x, float32
    "bare_fp32": dict(layers="0-3", n_layers=6, batches=3, x_format="bare",
                      dtype="float32", d=32, seed=4),
    # [S, 1, T, d] with two samples per batch
    "s1td": dict(layers="0-3", n_layers=6, batches=3, shape="S1Td", samples_per_batch=2,
                 d=32, seed=5),
    # n_targets 4, every layer including the last (whose targets are all zero)
    "nt4_all": dict(layers="0-7", n_layers=8, batches=3, n_targets=4, d=32, seed=6),
    # n_targets 16, every layer 0..n_layers-1: the last layer's targets all zero
    "nt16_all": dict(layers="0-5", n_layers=6, batches=3, n_targets=16, d=32, seed=7),
    # layers that do not start at 0 and have a gap
    "sparse_layers": dict(layers="2,3,5", n_layers=8, batches=3, d=32, seed=8),
    # an odd width (rows not a multiple of 64 bytes), float16
    "odd_d": dict(layers="0-2", n_layers=4, batches=3, d=33, dtype="float16", seed=10),
    # one- to three-token samples
    "tiny_T": dict(layers="0-2", n_layers=4, batches=3, d=16, min_tokens=1, max_tokens=3,
                   seed=12),
    # a single layer, the last one: every target is zero padding
    "one_layer_last": dict(layers="3", n_layers=4, batches=2, d=16, seed=13),
    # many batches (batch_10 sorts before batch_2 as text)
    "many_batches": dict(layers="0-1", n_layers=3, batches=25, d=16, min_tokens=1,
                         max_tokens=30, n_targets=2, seed=14),
    # multi-MB files, two padded samples per batch
    "big": dict(layers="0-2", n_layers=4, batches=2, samples_per_batch=2, d=256,
                min_tokens=200, max_tokens=400, n_targets=4, seed=15),
    # targets start at L (circuit-tracer), imported with --target-offset 0
    "offset0": dict(layers="0-4", n_layers=6, batches=3, d=32, seed=9, target_offset=0),
}

# extra `cltfs import` arguments a named tree needs
IMPORT_ARGS = {"offset0": ("--target-offset", "0")}

# mounts and daemons this session started: path -> Popen or None
_ACTIVE = {}
_ACTIVE_LOCK = threading.Lock()
_BASETEMP = []


def find_cltfs_bin():
    p = os.environ.get("CLTFS_BIN")
    if p:
        return os.path.abspath(p)
    return str(REPO / "build" / "cltfs")


# ---------------------------------------------------------------- mounts --

def _unescape_mount_path(s):
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and len(s[i + 1:i + 4]) == 3 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_table():
    """[(mount point, fstype, source)] from /proc/self/mountinfo (no FUSE calls)."""
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if " - " not in line:
                continue
            pre, post = line.rstrip("\n").split(" - ", 1)
            pre = pre.split()
            post = post.split()
            rows.append((_unescape_mount_path(pre[4]), post[0],
                         _unescape_mount_path(post[1]) if len(post) > 1 else ""))
    return rows


def is_mounted(path):
    path = os.path.abspath(path)
    return any(mp == path for mp, _, _ in mount_table())


def mount_entry(path):
    path = os.path.abspath(path)
    for mp, fstype, src in mount_table():
        if mp == path:
            return fstype, src
    return None


def _fusermount(*args):
    try:
        return subprocess.run(["fusermount3", *args], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(args, 1, "", str(e))


def unmount(path, proc=None, use_umount=False):
    """Unmount path (politely, then lazily) and reap proc.  Never raises."""
    path = os.path.abspath(path)
    for attempt in range(10):
        if not is_mounted(path):
            break
        if use_umount:
            subprocess.run(["umount", path], capture_output=True, timeout=30)
        else:
            _fusermount("-u", path)
        if not is_mounted(path):
            break
        time.sleep(0.1 * (attempt + 1))
    if is_mounted(path):
        _fusermount("-uz", path)
        if is_mounted(path):
            subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)
    if proc is not None:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
    with _ACTIVE_LOCK:
        _ACTIVE.pop(path, None)


class MountFailed(Exception):
    pass


class Mount:
    """A running cltfs mount."""

    def __init__(self, path, store, proc, log_path, opts):
        self.path = path
        self.store = store
        self.proc = proc
        self.log_path = log_path
        self.opts = opts
        self.watchdog_fired = False

    def p(self, *rel):
        return os.path.join(self.path, *rel)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def read_special(self, rel):
        """Read a file whose size is reported as 0 (like /proc) until EOF."""
        fd = os.open(self.p(rel), os.O_RDONLY)
        try:
            chunks = []
            while True:
                b = os.read(fd, 1 << 16)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def stats(self):
        return json.loads(self.read_special(".cltfs/stats"))

    def files(self):
        """Relative paths of every L*/ file the mount lists, sorted."""
        out = []
        for d in sorted(os.listdir(self.path)):
            if d.startswith("L") and os.path.isdir(self.p(d)):
                out += [d + "/" + f for f in os.listdir(self.p(d))]
        return sorted(out)

    def __repr__(self):
        return "Mount(%r, store=%r, opts=%r)" % (self.path, self.store, self.opts)


def _register(path, proc):
    with _ACTIVE_LOCK:
        _ACTIVE[os.path.abspath(path)] = proc


@contextlib.contextmanager
def mounted(cltfs_bin, store, *opts, base, args=(), env=None, timeout=MOUNT_TIMEOUT,
            deadline=MOUNT_DEADLINE, name="mnt"):
    """Mount store with `cltfs STORE MNT -f -o opts` in a new directory under
    base; yield a Mount; always unmount.  store None: not passed (use -o
    store=... in opts or $CLTFS_STORE in env)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    n = 0
    while (base / ("%s%d" % (name, n))).exists():
        n += 1
    mnt = base / ("%s%d" % (name, n))
    mnt.mkdir()
    mnt = str(mnt)
    log_path = str(base / ("%s%d.log" % (name, n)))
    cmd = [cltfs_bin] + ([str(store)] if store is not None else []) + [mnt, "-f"]
    if opts:
        cmd += ["-o", ",".join(opts)]
    cmd += list(args)
    logf = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    logf.close()
    _register(mnt, proc)
    m = Mount(mnt, store, proc, log_path, opts)

    def fire():
        if proc.poll() is None:
            m.watchdog_fired = True
            proc.kill()

    dog = threading.Timer(deadline, fire)
    dog.daemon = True
    failure = None
    try:
        t0 = time.monotonic()
        while True:
            if is_mounted(mnt):
                break
            if proc.poll() is not None:
                raise MountFailed("cltfs exited with %s before the mount was up: %s\n%s" % (
                    proc.returncode, " ".join(cmd), m.log()))
            if time.monotonic() - t0 > timeout:
                raise MountFailed("mount not up after %.0fs: %s\n%s" % (
                    timeout, " ".join(cmd), m.log()))
            time.sleep(0.01)
        dog.start()
        try:
            yield m
        except BaseException:
            failure = True
            raise
    finally:
        dog.cancel()
        unmount(mnt, proc)
        if m.watchdog_fired and not failure:
            raise AssertionError("cltfs daemon killed after %.0fs (hung?): %s\n%s" % (
                deadline, " ".join(cmd), m.log()))
        if not failure and not m.watchdog_fired and proc.returncode != 0:
            raise AssertionError("cltfs daemon exited %s after the unmount: %s\n%s" % (
                proc.returncode, " ".join(cmd), m.log()))


def _cleanup_leftovers():
    """Unmount what this session left behind; return descriptions."""
    left = []
    roots = [str(b) for b in _BASETEMP]
    with _ACTIVE_LOCK:
        active = dict(_ACTIVE)
    for mp, fstype, src in mount_table():
        under = any(mp == r or mp.startswith(r.rstrip("/") + "/") for r in roots)
        if under or mp in active:
            left.append("%s (%s, %s)" % (mp, fstype, src))
            unmount(mp, active.get(mp))
    for mp, proc in active.items():
        if proc is not None and proc.poll() is None:
            left.append("daemon pid %d for %s still running" % (proc.pid, mp))
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
    with _ACTIVE_LOCK:
        _ACTIVE.clear()
    return left


atexit.register(_cleanup_leftovers)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "plain_only: slow, and no C path of its own: left out of make pytest-asan")


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_mounts(tmp_path_factory):
    _BASETEMP.append(tmp_path_factory.getbasetemp())
    yield
    left = _cleanup_leftovers()
    if left:
        raise AssertionError("cltfs mounts/daemons left behind (now cleaned up):\n  " +
                             "\n  ".join(left))


# -------------------------------------------------------------- fixtures --

@pytest.fixture(scope="session")
def cltfs_bin():
    p = find_cltfs_bin()
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        pytest.fail("cltfs binary not found at %s (run make, or set CLTFS_BIN)" % p)
    return p


def _run(cltfs_bin, *args, timeout=300, env=None, input=None):
    return subprocess.run([cltfs_bin, *[str(a) for a in args]], capture_output=True,
                          text=True, timeout=timeout, env=env, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


@pytest.fixture(scope="session")
def run_cltfs(cltfs_bin):
    def run(*args, **kw):
        return _run(cltfs_bin, *args, **kw)
    return run


# script(1) gives a command a terminal, as a user at one sees it.
needs_script = pytest.mark.skipif(shutil.which("script") is None, reason="script(1) gives the command a terminal")


def on_tty(*cmd, env=None, timeout=300):
    """(exit status, output) of cmd run on a terminal by script(1), the
    output decoded from bytes: text mode would turn each \r into \n."""
    line = " ".join(shlex.quote(str(a)) for a in cmd)
    r = subprocess.run(["script", "-qec", line, "/dev/null"], env=env, capture_output=True, timeout=timeout)
    return r.returncode, r.stdout.decode()


def describe(r):
    return "exit %s\n--- stdout\n%s--- stderr\n%s" % (r.returncode, r.stdout, r.stderr)


class Trees:
    def __init__(self, base):
        self.base = Path(base)
        self._cache = {}

    def get(self, name):
        """(path, desc) of the named config, generated once per session."""
        if name not in self._cache:
            out = self.base / name
            desc = gen_tree.make_tree(str(out), **TREE_CONFIGS[name])
            self._cache[name] = (str(out), desc)
        return self._cache[name]

    @staticmethod
    def make(out, **kw):
        """A fresh tree at out (a test may modify it)."""
        return str(out), gen_tree.make_tree(str(out), **kw)


@pytest.fixture(scope="session")
def trees(tmp_path_factory):
    return Trees(tmp_path_factory.mktemp("trees"))


class Imported:
    def __init__(self, store, tree, desc, result):
        self.store, self.tree, self.desc, self.result = store, tree, desc, result


class Stores:
    def __init__(self, base, trees, cltfs_bin):
        self.base = Path(base)
        self.trees = trees
        self.bin = cltfs_bin
        self._cache = {}

    def get(self, name, *args):
        """The named tree imported into a store (with import arguments args,
        plus those IMPORT_ARGS gives the tree), once per session."""
        key = (name,) + tuple(args)
        if key not in self._cache:
            tree, desc = self.trees.get(name)
            store = str(self.base / "-".join(a.strip("-") for a in key))
            r = _run(self.bin, "import", store, tree, *IMPORT_ARGS.get(name, ()), *args)
            self._cache[key] = (Imported(store, tree, desc, r), r)
        imp, r = self._cache[key]
        if r.returncode != 0:
            pytest.fail("cltfs import %s %s failed: %s" % (imp.store, imp.tree, describe(r)))
        return imp

    def copy(self, name, dest, *args):
        """A private copy of the named store at dest."""
        imp = self.get(name, *args)
        shutil.copytree(imp.store, str(dest))
        return Imported(str(dest), imp.tree, imp.desc, imp.result)


@pytest.fixture(scope="session")
def stores(tmp_path_factory, trees, cltfs_bin):
    return Stores(tmp_path_factory.mktemp("stores"), trees, cltfs_bin)


@pytest.fixture
def mount(cltfs_bin, tmp_path):
    """mount(store, *opts, args=(), env=None) -> context manager yielding a Mount."""
    def _mount(store, *opts, **kw):
        return mounted(cltfs_bin, store, *opts, base=tmp_path, **kw)
    return _mount


@pytest.fixture
def mount_fails(cltfs_bin, tmp_path):
    """Run a mount that must fail: returns (exit status, stdout+stderr).  If it
    mounts after all, unmount it and fail the test."""
    def _fails(store, *opts, args=("-f",), timeout=MOUNT_TIMEOUT, env=None, mnt=None):
        if mnt is None:
            mnt = tmp_path / "badmnt"
            n = 0
            while mnt.exists():
                n += 1
                mnt = tmp_path / ("badmnt%d" % n)
            mnt.mkdir()
        mnt = str(mnt)
        cmd = [cltfs_bin] + ([str(store)] if store is not None else []) + [mnt] + list(args)
        if opts:
            cmd += ["-o", ",".join(opts)]
        log_path = mnt + ".log"
        with open(log_path, "w") as logf:
            # a file, not a pipe: a daemonized child may keep it open
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        _register(mnt, proc)
        t0 = time.monotonic()
        while proc.poll() is None:
            # -f: a mount that comes up is a failure; no need to wait longer
            if (is_mounted(mnt) and "-f" in args) or time.monotonic() - t0 > timeout:
                was = is_mounted(mnt)
                unmount(mnt, proc)
                pytest.fail("%s did not exit (mounted: %s)" % (" ".join(cmd), was))
            time.sleep(0.01)
        with open(log_path, errors="replace") as f:
            out = f.read()
        was = is_mounted(mnt)
        if was:
            unmount(mnt, proc)
            pytest.fail("%s exited %d but left a mount" % (" ".join(cmd), proc.returncode))
        with _ACTIVE_LOCK:
            _ACTIVE.pop(os.path.abspath(mnt), None)
        return proc.returncode, out
    return _fails


# ------------------------------------------------------------ comparison --

def load_bytes(data, **kw):
    import torch
    return torch.load(io.BytesIO(data), **kw)


def _bits(t):
    import torch
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()])


def assert_same(a, b, where="obj"):
    """a (through cltfs) equals b (the original): same types, keys and key
    order, dtypes, shapes, and bit-identical values."""
    import torch
    if torch.is_tensor(b):
        assert torch.is_tensor(a), "%s: %s, expected a tensor" % (where, type(a).__name__)
        assert a.dtype == b.dtype, "%s: dtype %s, expected %s" % (where, a.dtype, b.dtype)
        assert tuple(a.shape) == tuple(b.shape), "%s: shape %s, expected %s" % (
            where, tuple(a.shape), tuple(b.shape))
        assert torch.equal(a, b), "%s: values differ" % where
        assert torch.equal(_bits(a), _bits(b)), "%s: bits differ" % where
    elif isinstance(b, dict):
        assert isinstance(a, dict), "%s: %s, expected a dict" % (where, type(a).__name__)
        assert list(a.keys()) == list(b.keys()), "%s: keys %s, expected %s" % (
            where, list(a.keys()), list(b.keys()))
        for k in b:
            assert_same(a[k], b[k], "%s[%r]" % (where, k))
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b), "%s: %s, expected %s" % (
            where, type(a).__name__, type(b).__name__)
        assert len(a) == len(b), "%s: length %d, expected %d" % (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, "%s[%d]" % (where, i))
    else:
        assert type(a) is type(b) and a == b, "%s: %r, expected %r" % (where, a, b)


class Originals:
    """torch.load of the original tree's files, cached."""

    def __init__(self):
        self._c = {}

    def get(self, tree, rel):
        import torch
        k = (tree, rel)
        if k not in self._c:
            self._c[k] = torch.load(os.path.join(tree, rel))
        return self._c[k]


@pytest.fixture(scope="session")
def originals():
    return Originals()


class LoadedFiles:
    """A map-style dataset of (rel, torch.load(root/rel)) for each rel: what
    a DataLoader's workers read in the tests."""

    def __init__(self, root, rels):
        self.root, self.rels = root, rels

    def __len__(self):
        return len(self.rels)

    def __getitem__(self, i):
        import torch
        return self.rels[i], torch.load(os.path.join(self.root, self.rels[i]))


def pack_bytes(store):
    """Bytes of every pack of a store: a clean run's, or more when a writer
    left frames it never recorded."""
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(str(store), "packs", "*.pack")))


class SmallFs:
    """A tmpfs of a chosen size under the test's tmp_path: a filesystem the
    test can fill (ENOSPC) and then give room (resize).  Mounting one needs
    root: without it the test is skipped, saying so."""

    def __init__(self, base):
        self.path = str(base / "smallfs")
        self.mounted = False

    def mount(self, size):
        os.makedirs(self.path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", self.path],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip("cannot mount a tmpfs to fill (needs root): " + r.stderr.strip())
        self.mounted = True
        return self.path

    def resize(self, size):
        subprocess.run(["mount", "-o", "remount,size=%d" % size, self.path], check=True)

    def unmount(self):
        if self.mounted:
            subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False


@pytest.fixture
def small_fs(tmp_path):
    fs = SmallFs(tmp_path)
    try:
        yield fs
    finally:
        fs.unmount()
