"""End-to-end: `cltfs capture --push s3://...`, a capture that fills an S3
prefix as it goes.  The tiny LLaVA checkpoint of tests/test_capture.py,
the S3 server of tests/s3server.py (s3rver behind the proxy that checks
every signature, logs every request in order and injects faults).

--push-every 0 --push-min-mb 0 makes every durable point of the capture
(about once a second) seal its writer pair and push it: a test sees many
pairs without a run of minutes."""

import errno
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import describe
from s3server import BUCKET, have_s3rver
from test_capture import (CAPTURE_TIMEOUT, llava, read_views_bytes, run_capture,  # noqa: F401
                          run_init, stat_json, verify_ok, view_rels)
from test_s3 import bucket_files, env_of, make_s3, s3, writes  # noqa: F401

pytestmark = pytest.mark.skipif(not have_s3rver(), reason="s3rver not installed (make deps installs it)")

PREFIX = "capture/acts"
URL = "s3://%s/%s" % (BUCKET, PREFIX)
FAST = ("--push", URL, "--push-every", "0", "--push-min-mb", "0")
# samples the tiny model takes ~4 s to capture on one core here: the first
# push (after the first durable second) comes well before the end
PUSH_SAMPLES = 400


def init_store(llava, run_cltfs, path, n):
    run_init(run_cltfs, str(path), llava.model(), llava.dataset(n), "--dtype", "float32", "--quiet")
    return str(path)


@pytest.fixture(scope="module")
def clean(llava, tmp_path_factory, cltfs_bin):
    """One-process captures without --push, by dataset size: the views
    every pushed store must equal."""
    from conftest import _run
    made = {}

    def get(n):
        if n not in made:
            store = str(tmp_path_factory.mktemp("clean") / "store")
            run_init(lambda *a, **k: _run(cltfs_bin, *a, **k), store, llava.model(), llava.dataset(n),
                     "--dtype", "float32", "--quiet")
            r = _run(cltfs_bin, "capture", store, "--quiet", timeout=CAPTURE_TIMEOUT)
            assert r.returncode == 0, describe(r)
            made[n] = store
        return made[n]
    return get


def completed(s3, suffix):
    """Keys ending in suffix whose object was written whole, in order (a
    PUT, or the POST that completes a multipart upload)."""
    return [e["key"] for e in writes(s3) if e["key"].endswith(suffix) and "partNumber=" not in e["query"]
            and not e["query"].startswith("uploads")]


def views(mount, source, rels, *opts, env=None):
    with mount(source, *opts, env=env) as m:
        return read_views_bytes(m, rels)


def readable_batches(m, n_layers, n_batches):
    """Batches whose every view the mount serves (the others fail: their
    chunks are not at the prefix yet)."""
    ok = []
    for k in range(n_batches):
        try:
            got = read_views_bytes(m, [r for r in view_rels(n_layers, n_batches) if "batch_%d_" % k in r])
        except OSError as e:
            assert e.errno == errno.EIO, (k, e)
            continue
        ok.append((k, got))
    return ok


def pull_and_verify(run_cltfs, env, dest):
    r = run_cltfs("pull", URL, dest, env=env, timeout=CAPTURE_TIMEOUT)
    assert r.returncode == 0, describe(r)
    verify_ok(run_cltfs, dest)
    st = stat_json(run_cltfs, dest)
    assert st["chunks"] == st["chunks_needed"], st


def test_push_while_capturing_then_resume(llava, clean, s3, run_cltfs, cltfs_bin, tmp_path, mount):
    """A shard capturing with --push is killed -9 once some pairs are at
    the prefix: the manifest arrived after the first pack, a mount of the
    prefix serves the batches pushed so far byte-equal to a one-process
    capture.  The rerun pushes what the killed one sealed and did not push,
    captures the rest and seals and pushes its last pair: the prefix then
    holds the whole store (pulled, it verifies; every view equals the
    one-process capture's), each pack was uploaded once, and capture
    --status reads the rotated pair names as the shard's."""
    n = PUSH_SAMPLES
    store = init_store(llava, run_cltfs, tmp_path / "store", n)
    env = env_of(tmp_path, s3)
    p = subprocess.Popen([cltfs_bin, "capture", store, "--shard", "1/1", "--threads", "1"] + list(FAST),
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while p.poll() is None and time.monotonic() - t0 < CAPTURE_TIMEOUT:
            if completed(s3, "cltfs.json"):
                break
            time.sleep(0.02)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    err = p.stderr.read().decode(errors="replace")
    assert p.returncode == -signal.SIGKILL, "capture ended before a push (exit %s): %s" % (p.returncode, err)
    w = writes(s3)
    keys = [e["key"] for e in w]
    first_pack = min(i for i, k in enumerate(keys) if k.endswith(".pack"))
    assert keys.index(PREFIX + "/cltfs.json") > first_pack, keys[:6]
    assert keys.index(PREFIX + "/samples.bin") > first_pack, keys[:6]
    for idx in completed(s3, ".idx"):  # each index after its own pack, and its pack whole by then
        pack = idx[:-4] + ".pack"
        assert pack in completed(s3, ".pack") and \
            completed(s3, "").index(pack) < completed(s3, "").index(idx), (idx, keys)
    assert all(re.search(r"-capture-1of1-\d+\.(pack|idx)$", k) for k in keys if "/packs/" in k), keys

    n_layers = llava.facts()["text"]["num_hidden_layers"]
    rels = view_rels(n_layers, n)
    want = views(mount, clean(n), rels)
    with mount(URL, "capture=off", env=env) as m:
        ok = readable_batches(m, n_layers, n)
    assert ok and ok[0][0] == 0 and len(ok) < n, [k for k, _ in ok]
    for k, got in ok:
        for rel, data in got.items():
            assert data == want[rel], rel
    partial = len(ok)

    s3.clear_log()
    r = run_capture(run_cltfs, store, "--shard", "1/1", *FAST, env=env)
    assert "pushed to %s" % URL in r.stderr, describe(r)
    rerun = re.search(r"capture: (\d+) of %d batches captured" % n, r.stderr)
    assert rerun and 0 < int(rerun.group(1)) < n, describe(r)
    packs = completed(s3, ".pack")
    assert len(packs) == len(set(packs)), "a pack uploaded twice: %s" % packs
    local = {k: os.path.getsize(os.path.join(store, k)) for k in
             ("packs/" + f for f in os.listdir(os.path.join(store, "packs")))}
    remote = bucket_files(s3, PREFIX)
    assert {k: len(v) for k, v in remote.items() if k.startswith("packs/")} == local
    assert remote["cltfs.json"] == open(os.path.join(store, "cltfs.json"), "rb").read()
    assert not [k for k in completed(s3, "") if k.endswith("cltfs.json")], "the manifest uploaded again"
    # linear traffic: pack bytes sent are the packs' bytes, once
    sent = sum(e["sent"] for e in writes(s3) if e["key"].endswith(".pack") and e["method"] == "PUT")
    new = sum(v for k, v in local.items() if k.endswith(".pack") and PREFIX + "/" + k in packs)
    assert sent == new, (sent, new)

    st = run_cltfs("capture", "--status", store)
    assert st.returncode == 0, describe(st)
    line = [x for x in st.stdout.splitlines() if x.startswith("shard 1/1:")]
    assert line and "%d/%d batches" % (n, n) in line[0] and re.search(r"-capture-1of1-\d+: \d+ chunks", line[0]), \
        st.stdout
    assert "other writer" not in st.stdout, st.stdout

    pulled = str(tmp_path / "pulled")
    pull_and_verify(run_cltfs, env, pulled)
    assert views(mount, pulled, rels) == want
    print("measured: killed with %d of %d batches readable at the prefix, %s captured by the rerun; "
          "%d pairs in all, %.1f MB of packs" % (partial, n, rerun.group(1), len([k for k in local if k.endswith(".pack")]),
        sum(v for k, v in local.items() if k.endswith(".pack")) / 1e6))


def test_failed_pushes_do_not_stop_the_capture(llava, clean, s3, run_cltfs, tmp_path, mount):
    """The first upload fails (a 500, no retries left) while the capture
    runs: the capture logs it, goes on, and the next push sends that pair
    with the later ones; it ends with exit 0 and the whole store at the
    prefix."""
    n = PUSH_SAMPLES
    store = init_store(llava, run_cltfs, tmp_path / "store", n)
    env = env_of(tmp_path, s3, CLTFS_HUB_RETRIES=0)
    s3.fault(lambda e: e["method"] == "PUT" and e["key"].endswith(".pack"), "500", 1)
    r = run_capture(run_cltfs, store, "--threads", "1", *FAST, env=env)
    err = r.stderr.splitlines()
    failed = [i for i, x in enumerate(err) if "failed, retried later" in x and "InternalError" in x]
    done = [i for i, x in enumerate(err) if x.startswith("capture: %d of %d batches captured" % (n, n))]
    assert failed and done and failed[0] < done[0], describe(r)
    assert len([e for e in s3.log if e["fault"]]) == 1
    failed_key = [e["key"] for e in s3.log if e["fault"]][0]
    assert failed_key in completed(s3, ".pack"), "the pair that failed was not pushed again"
    pulled = str(tmp_path / "pulled")
    pull_and_verify(run_cltfs, env, pulled)
    rels = view_rels(llava.facts()["text"]["num_hidden_layers"], n)
    assert views(mount, pulled, rels) == views(mount, clean(n), rels)


def test_last_push_fails_then_a_rerun_pushes(llava, clean, make_s3, run_cltfs, tmp_path, mount):
    """The server is down: the capture still captures every batch, then
    exits 1 naming the bucket and the cause.  A rerun once the server is
    back captures nothing and pushes every sealed pair, the manifest
    last."""
    n = 12
    s3 = make_s3()
    store = init_store(llava, run_cltfs, tmp_path / "store", n)
    env = env_of(tmp_path, s3, CLTFS_HUB_RETRIES=1)
    s3.stop()
    r = run_capture(run_cltfs, store, "--push", URL, check=False, env=env)
    assert r.returncode == 1, describe(r)
    assert "the last push to %s failed" % URL in r.stderr and BUCKET in r.stderr, describe(r)
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"], st
    s3 = make_s3()
    env = env_of(tmp_path, s3)
    r = run_capture(run_cltfs, store, "--push", URL, env=env)
    assert "all %d batches were stored already" % n in r.stderr, describe(r)
    keys = [e["key"] for e in writes(s3)]
    assert keys and keys[-1] == PREFIX + "/cltfs.json", keys
    assert os.listdir(os.path.join(store, "packs")) and all(
        os.path.getsize(os.path.join(store, "packs", f)) > 64 for f in os.listdir(os.path.join(store, "packs"))), \
        "an empty pair was left: %s" % os.listdir(os.path.join(store, "packs"))
    pulled = str(tmp_path / "pulled")
    pull_and_verify(run_cltfs, env, pulled)
    rels = view_rels(llava.facts()["text"]["num_hidden_layers"], n)
    assert views(mount, pulled, rels) == views(mount, clean(n), rels)


def test_push_usage_errors(run_cltfs, tmp_path):
    for args, msg in ((("--push", "hf://datasets/a/b"), "s3://BUCKET/PREFIX"),
                      (("--push", "/tmp/x"), "s3://BUCKET/PREFIX"),
                      (("--push-every", "5"), "go with --push"),
                      (("--push", URL, "--push-every", "-1"), "--push-every"),
                      (("--push", URL, "--status"), "--push")):
        r = run_cltfs("capture", str(tmp_path / "s"), *args)
        assert r.returncode == 2 and msg in r.stderr, (args, describe(r))
    r = run_cltfs("capture", "--help")
    assert "--push-every" in r.stdout and "--push-min-mb" in r.stdout
