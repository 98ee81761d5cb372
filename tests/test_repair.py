"""cltfs verify --repair: a damaged store made whole again from a source,
keeping what verifies and reclaiming what does not."""
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import assert_same, describe, load_bytes
from test_hub import STORE_URL, hf_env, make_hub  # noqa: F401 (a fixture)


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def flip(path, frac):
    size = os.path.getsize(path)
    off = int(size * frac)
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x5A]))


def packs(store, ext=".pack"):
    return sorted(glob.glob(os.path.join(store, "packs", "*" + ext)))


def all_equal(mount, store, imp, originals):
    with mount(store) as m:
        for rel in imp.desc["files"]:
            assert_same(load_bytes(read_all(m.p(rel))), originals.get(imp.tree, rel), rel)
        assert m.stats()["errors"] == 0


def disk(store):
    return sum(os.path.getsize(p) for p in packs(store) + packs(store, ".idx"))


@pytest.mark.parametrize("explicit", [False, True])
def test_repair_damaged_frames(tmp_path, stores, run_cltfs, mount, originals, explicit):
    """Two flipped bytes in the pack: verify fails; --repair (from the tree
    the store was imported from, or one given) keeps every chunk that
    verifies, re-imports the lost ones, and the store verifies and serves
    the originals."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    for frac in (0.3, 0.7):
        flip(packs(imp.store)[-1], frac)
    assert run_cltfs("verify", imp.store).returncode == 1
    args = ("verify", "--repair", imp.store) + ((imp.tree,) if explicit else ())
    r = run_cltfs(*args, timeout=300)
    assert r.returncode == 0, describe(r)
    assert "damaged records dropped" in r.stderr and "0 bad" in r.stdout, describe(r)
    assert run_cltfs("verify", imp.store).returncode == 0
    names = {os.path.basename(p) for p in packs(imp.store)}
    assert len(names) == 2 and any("repair" in n for n in names), names  # the kept pair, the re-import's
    all_equal(mount, imp.store, imp, originals)


def test_repair_truncated_pack(tmp_path, stores, run_cltfs, mount, originals):
    imp = stores.copy("big", tmp_path / "store")
    p = packs(imp.store)[-1]
    os.truncate(p, os.path.getsize(p) // 2)
    r = run_cltfs("verify", "--repair", imp.store, timeout=300)
    assert r.returncode == 0, describe(r)
    all_equal(mount, imp.store, imp, originals)


def test_repair_reclaims_copies(tmp_path, stores, run_cltfs, mount, originals):
    """A store holding every chunk twice (another store's pair copied in,
    with bytes no record names at the end of its pack): --repair leaves the
    clean pair as it is (the same file), drops the other, and the store
    shrinks back; nothing is fetched."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    once = disk(imp.store)
    (orig,) = packs(imp.store)
    ino = os.stat(orig).st_ino
    other = stores.copy("s1_bf16", tmp_path / "other")
    for p in packs(other.store) + packs(other.store, ".idx"):
        shutil.copy(p, os.path.join(imp.store, "packs", "zz-" + os.path.basename(p)))
    with open(packs(imp.store)[-1], "ab") as f:  # unreferenced bytes, as a refused import leaves
        f.write(os.urandom(50000))
    assert disk(imp.store) > 2 * once
    r = run_cltfs("verify", "--repair", imp.store, timeout=300)
    assert r.returncode == 0, describe(r)
    assert "1 of 2 writer pairs clean" in r.stderr, describe(r)
    assert packs(imp.store) == [orig] and os.stat(orig).st_ino == ino
    assert disk(imp.store) == once, (disk(imp.store), once)
    all_equal(mount, imp.store, imp, originals)


def test_repair_from_hub(tmp_path, stores, run_cltfs, mount, originals, make_hub):
    """A store pulled from a Hub store repo, damaged: --repair with the
    repo's hf:// URL fetches only the lost chunks."""
    imp = stores.get("s1_bf16")
    hub = make_hub()
    hub.add_repo("me/acts", imp.store)
    env = hf_env(tmp_path, hub)
    store = str(tmp_path / "pulled")
    assert run_cltfs("pull", STORE_URL, store, "--quiet", env=env).returncode == 0
    flip(packs(store)[-1], 0.5)
    hub.clear_log()
    r = run_cltfs("verify", "--repair", store, STORE_URL, env=env, timeout=300)
    assert r.returncode == 0, describe(r)
    fetched = [e for e in hub.log if e["server"] == "cdn" and e["status"] == 206]
    total = sum(os.path.getsize(p) for p in packs(imp.store))
    assert fetched and sum(e["bytes"] for e in fetched) < total / 2, fetched
    all_equal(mount, store, imp, originals)


def test_repair_needs_a_source(tmp_path, stores, run_cltfs):
    """Chunks lost and the tree the store came from gone: a clear error that
    says what to give; the store stays valid (it verifies, partial)."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    man = json.load(open(os.path.join(imp.store, "cltfs.json")))
    flip(packs(imp.store)[-1], 0.5)
    tree = shutil.copytree(imp.tree, str(tmp_path / "moved"))
    r = run_cltfs("verify", "--repair", imp.store, str(tmp_path / "nowhere"), timeout=300)
    assert r.returncode != 0 and "nowhere" in r.stderr, describe(r)
    v = run_cltfs("verify", imp.store)
    assert v.returncode == 0 and "missing" not in v.stderr, describe(v)
    r = run_cltfs("verify", "--repair", imp.store, tree, timeout=300)
    assert r.returncode == 0, describe(r)
    assert man["source"]["path"] == imp.tree


@pytest.mark.parametrize("other", ["bare_fp32", "s2_padded"])
def test_pair_of_another_store_copied_in(tmp_path, stores, run_cltfs, mount, mount_fails, originals, other):
    """A pack and index of another store copied into packs/ (a user's slip
    while merging shards): the mount is refused naming that index, the
    record and what disagrees (another dtype; rows the manifest does not
    make); verify names it; --repair drops its records, and the store
    serves its own views again."""
    imp = stores.copy("s1_bf16", tmp_path / "store")
    theirs = stores.get(other)
    for src in packs(theirs.store) + packs(theirs.store, ".idx"):
        shutil.copy(src, os.path.join(imp.store, "packs", "stray" + os.path.splitext(src)[1]))
    rc, out = mount_fails(imp.store)
    assert rc == 1 and "stray.idx" in out and "cltfs verify" in out, out
    assert ("another dtype" in out) == (other == "bare_fp32"), out
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 1 and "stray.idx" in r.stderr, describe(r)
    r = run_cltfs("verify", "--repair", imp.store, timeout=300)
    assert r.returncode == 0 and "damaged records dropped" in r.stderr, describe(r)
    assert not os.path.exists(os.path.join(imp.store, "packs", "stray.idx"))
    all_equal(mount, imp.store, imp, originals)


@pytest.mark.parametrize("idx_bytes", [0, 7])
def test_pair_of_a_writer_killed_at_its_start(tmp_path, stores, run_cltfs, mount, originals, idx_bytes):
    """A writer killed between creating its index and writing the header
    leaves an index shorter than a header (and maybe a pack of a few
    bytes): it holds no records. verify, --repair and mounts take it as
    that, as a writer reopening it does (repair used to fail here, 'bad
    index header', and every repair after it: a killed repair's re-import
    leaves such a pair)."""
    imp = stores.copy("s2_padded", tmp_path / "store")
    base = os.path.join(imp.store, "packs", "vm-killed")
    with open(base + ".idx", "wb") as f:
        f.write(b"CLTFSIX1"[:idx_bytes])
    with open(base + ".pack", "wb") as f:
        f.write(b"CLTF")
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 0, describe(r)
    all_equal(mount, imp.store, imp, originals)
    r = run_cltfs("verify", "--repair", imp.store, timeout=300)
    assert r.returncode == 0, describe(r)
    all_equal(mount, imp.store, imp, originals)
    with open(base + ".idx", "wb") as f:  # a header of another kind is still an error
        f.write(b"NOTANIDX" * 4)
    r = run_cltfs("verify", imp.store)
    assert r.returncode == 1 and "vm-killed.idx" in r.stderr, describe(r)


def test_repair_killed_resumes(tmp_path, stores, cltfs_bin, run_cltfs, mount, originals):
    """kill -9 at random moments of --repair: the store still verifies (or
    shows only what repair would fix) and --repair again completes."""
    r0 = random.Random(int(time.time()))
    imp = stores.copy("big", tmp_path / "store")
    flip(packs(imp.store)[-1], 0.5)
    t0 = time.monotonic()
    probe = shutil.copytree(imp.store, str(tmp_path / "probe"))
    assert run_cltfs("verify", "--repair", probe, imp.tree, timeout=300).returncode == 0
    full = time.monotonic() - t0
    kills = 0
    for _ in range(4):
        p = subprocess.Popen([cltfs_bin, "verify", "--repair", imp.store, imp.tree], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=r0.uniform(0, full))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
        assert os.path.exists(os.path.join(imp.store, "cltfs.json"))
    r = run_cltfs("verify", "--repair", imp.store, imp.tree, timeout=300)
    assert r.returncode == 0, describe(r)
    all_equal(mount, imp.store, imp, originals)
    print("repair killed %d times" % kills)


def test_repair_beside_a_pair_of_its_own_name(tmp_path, stores, run_cltfs, mount, originals):
    """A repair killed within the same second leaves a pair named as the
    next repair's would be: the next one must not append its copies to that
    pair and then remove it as unclean (it used to: it then verified a store
    with every copied chunk gone, exited 0, and mounts gave EIO)."""
    import socket
    imp = stores.copy("s2_padded", tmp_path / "store")
    pk = os.path.join(imp.store, "packs")
    src = packs(imp.store)[-1][:-5]
    with open(src + ".pack", "ab") as f:  # bytes no record names: unclean, its chunks are copied
        f.write(b"\0" * 100)
    host, now = socket.gethostname(), int(time.time())
    for t in range(now, now + 30):  # what killed repairs left: unclean pairs of the names
        for ext in (".pack", ".idx"):
            shutil.copyfile(src + ext, os.path.join(pk, "%s-repair-%d%s" % (host, t, ext)))
    r = run_cltfs("verify", "--repair", imp.store, timeout=300)
    assert r.returncode == 0, describe(r)
    v = run_cltfs("verify", imp.store)
    assert v.returncode == 0 and "chunks present (" not in v.stdout, describe(v)
    all_equal(mount, imp.store, imp, originals)
