"""End-to-end: stores on S3.  An S3 server on loopback (s3rver behind the
proxy of tests/s3server.py, which checks every request's SigV4 signature
with botocore, logs requests and injects faults) holds a store uploaded
with boto3; cltfs mounts it (chunks fetched by range on a read), pulls it,
and pushes a store there, which boto3 reads back."""

import errno
import glob
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch

from conftest import assert_same, describe, needs_script, on_tty
from nginxserver import make_cert
from s3server import BUCKET, S3, have_s3rver

pytestmark = pytest.mark.skipif(not have_s3rver(), reason="s3rver not installed (make deps installs it)")

PREFIX = "runs/acts"
URL = "s3://%s/%s" % (BUCKET, PREFIX)


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def make_s3():
    servers = []

    def _make(**kw):
        s = S3(**kw).start()
        servers.append(s)
        return s
    yield _make
    for s in servers:
        s.stop()


@pytest.fixture
def s3(make_s3):
    return make_s3()


def env_of(tmp_path, s3, **extra):
    base = dict(os.environ)
    for k in ("HF_HUB_OFFLINE", "CLTFS_OFFLINE", "CLTFS_STORE", "CLTFS_S3_ADDRESSING", "HF_ENDPOINT",
              "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        base.pop(k, None)
    base.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"))
    return s3.env(base, **extra)


def run(cltfs_bin, *args, env, timeout=300):
    return subprocess.run([cltfs_bin] + [str(a) for a in args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def store_files(store):
    out = {}
    for root, _, files in os.walk(store):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, store)] = read_all(p)
    return out


def is_pack(e):
    return e["key"].endswith(".pack")


def check_views(m, imp, originals, rels=None):
    for rel in rels if rels is not None else imp.desc["files"]:
        assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)


# ----------------------------------------------------------------- mount --

def test_mount_views_equal_local_mount(tmp_path, s3, stores, mount, originals):
    """A store uploaded with boto3 mounts from S3; every view is byte-equal
    to a local mount's and loads as the reference; pack bytes come only by
    range requests, and every request was signed right (the proxy would
    have refused it)."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    s3.clear_log()
    env = env_of(tmp_path, s3)
    with mount(imp.store) as m:
        local = {rel: read_all(m.p(rel)) for rel in imp.desc["files"]}
    with mount(URL, env=env) as m:
        assert m.files() == imp.desc["files"]
        assert not [e for e in s3.log if is_pack(e)], "pack bytes fetched at mount"
        for rel in imp.desc["files"]:
            assert read_all(m.p(rel)) == local[rel], "%s differs from a local mount's" % rel
        check_views(m, imp, originals, imp.desc["files"][:2])
        st = m.stats()
        assert st["chunks"]["hub"] > 0 and st["errors"] == 0, st
    assert all(e["status"] in (200, 206) for e in s3.log), [e for e in s3.log if e["status"] not in (200, 206)]
    assert all(e["auth"] for e in s3.log)
    gets = [e for e in s3.log if is_pack(e)]
    assert gets and all(e["method"] == "GET" and e["range"] for e in gets), gets[:3]
    size = {k: len(v) for k, v in store_files(imp.store).items()}
    for e in gets:
        assert 0 < e["bytes"] < size[e["key"][len(PREFIX) + 1:]], e
    # the metadata came whole, into the S3 cache folder; the packs did not
    meta = glob.glob(str(tmp_path / "xdg" / "cltfs" / "s3" / "*" / BUCKET / PREFIX / "snapshots" / "*" / "*"))
    assert any(p.endswith("cltfs.json") for p in meta), meta


def test_public_bucket_without_credentials(tmp_path, s3, stores, mount, originals, cltfs_bin):
    """No AWS_ACCESS_KEY_ID and no profile: requests go unsigned, as the
    AWS CLI's --no-sign-request sends them to a public bucket; the mount
    serves every view and pull copies the store.  Where the server wants a
    signature, the refusal says no credentials were found."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    env = env_of(tmp_path, s3)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    r = run(cltfs_bin, "pull", URL, tmp_path / "refused", env=env)
    assert r.returncode == 1 and "AccessDenied" in r.stderr and "unsigned" in r.stderr, describe(r)
    s3.verify = False  # a public bucket: anyone may read
    s3.clear_log()
    with mount(URL, env=env) as m:
        for rel in imp.desc["files"]:
            assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)
    r = run(cltfs_bin, "pull", URL, tmp_path / "pulled", env=env)
    assert r.returncode == 0, describe(r)
    assert s3.log and not [e for e in s3.log if e["auth"]], "a request was signed"
    v = run(cltfs_bin, "verify", tmp_path / "pulled", env=env)
    assert v.returncode == 0 and " 0 bad" in v.stdout and "missing" not in v.stdout + v.stderr, describe(v)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory, cltfs_bin):
    """A store of ~20 MB of packs: larger than what a reader fetches ahead."""
    import gen_tree
    base = tmp_path_factory.mktemp("big")
    desc = gen_tree.make_tree(str(base / "tree"), layers="0-1", n_layers=4, batches=6, samples_per_batch=4,
                              d=512, min_tokens=100, max_tokens=200, seed=11)
    r = subprocess.run([cltfs_bin, "import", str(base / "store"), str(base / "tree")], capture_output=True,
                       text=True)
    assert r.returncode == 0, describe(r)
    return str(base / "store"), desc


def test_lazy_reads_fetch_only_what_is_read(tmp_path, s3, big_store, mount):
    """Reading one file fetches its chunks and at most the window a reader
    fetches ahead (here 1 MiB), not the store; a second read of it costs no
    request; reading it again after the frames were kept costs none."""
    store, desc = big_store
    s3.upload_dir(store, PREFIX)
    env = env_of(tmp_path, s3, CLTFS_HUB_AHEAD_MB=1)
    packs = sum(len(v) for k, v in store_files(store).items() if k.endswith(".pack"))
    rel = [f for f in desc["files"] if f.endswith("_x.pt")][2]
    with mount(URL, env=env) as m:
        s3.clear_log()
        data = read_all(m.p(rel))
        gets = [e for e in s3.log if is_pack(e)]
        fetched = sum(e["bytes"] for e in gets)
        assert gets and fetched < len(data) + (3 << 20) and fetched < packs / 3, (fetched, len(data), packs)
        st = m.stats()
        assert st["hub"]["spans"] == len(gets), (st, len(gets))
        s3.clear_log()
        read_all(m.p(rel))
        assert not [e for e in s3.log if is_pack(e)], "a second read went to S3"


def test_sequential_reader_fetches_in_large_ranges(tmp_path, s3, big_store, mount):
    """A reader going through the store asks S3 for 8 MiB ranges at least
    (AWS's advice; a GET costs the server more than its round trip shows),
    from its first read on, even on loopback: a handful of GETs for ~16 MB,
    not one per frame or per MiB."""
    store, desc = big_store
    s3.upload_dir(store, PREFIX)
    packs = sum(len(v) for k, v in store_files(store).items() if k.endswith(".pack"))
    assert packs > (12 << 20), packs
    with mount(URL, env=env_of(tmp_path, s3)) as m:
        s3.clear_log()
        for rel in desc["files"]:
            read_all(m.p(rel))
        gets = [e for e in s3.log if is_pack(e)]
    fetched = sum(e["bytes"] for e in gets)
    assert fetched >= packs * 0.9, (fetched, packs)
    assert len(gets) <= packs // (6 << 20) + 2, [e["bytes"] for e in gets]


def test_pull_then_offline_mount(tmp_path, s3, stores, mount, cltfs_bin):
    """cltfs pull copies every chunk; the pulled store then equals the
    source's content (verify passes), and a second pull fetches nothing."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    env = env_of(tmp_path, s3)
    dest = tmp_path / "pulled"
    r = run(cltfs_bin, "pull", URL, dest, env=env)
    assert r.returncode == 0, describe(r)
    assert "pull:" in r.stderr and URL in r.stderr, r.stderr
    r = run(cltfs_bin, "verify", dest, env=env)
    assert r.returncode == 0, describe(r)
    s3.clear_log()
    r = run(cltfs_bin, "pull", URL, dest, env=env)
    assert r.returncode == 0, describe(r)
    assert not [e for e in s3.log if is_pack(e)], "a second pull fetched pack bytes"
    # offline: the pulled store and the cached metadata serve every view
    s3.stop()
    with mount(URL, "store=%s" % dest, env=dict(env, CLTFS_OFFLINE="1")) as m:
        with mount(imp.store) as ml:
            for rel in imp.desc["files"]:
                assert read_all(m.p(rel)) == read_all(ml.p(rel)), rel


# ------------------------------------------------------------ credentials --

def test_wrong_secret_is_a_clear_error(tmp_path, s3, stores, cltfs_bin, mount_fails):
    """A wrong secret: the proxy answers 403 SignatureDoesNotMatch; the
    mount and the pull fail at once, naming the bucket, the S3 code and
    where the credentials came from, never the secret."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    bad = "wrong/secret/" + "x" * 20
    env = env_of(tmp_path, s3, AWS_SECRET_ACCESS_KEY=bad)
    rc, out = mount_fails(URL, env=env)
    assert rc != 0
    assert "SignatureDoesNotMatch" in out and BUCKET in out and "AWS_ACCESS_KEY_ID" in out, out
    assert bad not in out and s3.secret not in out
    r = run(cltfs_bin, "pull", URL, tmp_path / "p", env=env)
    assert r.returncode == 1, describe(r)
    assert "SignatureDoesNotMatch" in r.stderr and "from the environment" in r.stderr, r.stderr
    assert bad not in r.stderr
    env = env_of(tmp_path, s3, AWS_ACCESS_KEY_ID="AKIAUNKNOWN000000000")
    r = run(cltfs_bin, "pull", URL, tmp_path / "p", env=env)
    assert r.returncode == 1 and "InvalidAccessKeyId" in r.stderr, describe(r)


def test_tls_endpoint_and_ca_bundle(tmp_path, make_s3, stores, cltfs_bin, mount):
    """An S3-compatible server over TLS with a certificate of a private CA
    (an in-house MinIO's, say): without the CA a pull fails at once saying
    to set AWS_CA_BUNDLE; with AWS_CA_BUNDLE, or the profile's ca_bundle,
    the mount serves every view as the store does, signed requests over
    TLS; a ca_bundle that cannot be read is refused, named."""
    cert, key = make_cert(str(tmp_path))
    s3 = make_s3(tls=(cert, key))
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    env = env_of(tmp_path, s3)
    r = run(cltfs_bin, "pull", URL, tmp_path / "p", env=env)
    assert r.returncode == 1 and "certificate" in r.stderr and "AWS_CA_BUNDLE" in r.stderr, describe(r)
    with mount(URL, "store=%s" % (tmp_path / "m"), env=dict(env, AWS_CA_BUNDLE=cert)) as m:
        with mount(imp.store) as ml:
            for rel in imp.desc["files"]:
                assert read_all(m.p(rel)) == read_all(ml.p(rel)), rel
    assert s3.requests("GET", ".pack"), "no pack byte came over TLS"
    config = tmp_path / "config"
    config.write_text("[default]\nca_bundle = %s\n" % cert)
    r = run(cltfs_bin, "pull", URL, tmp_path / "p2", env=dict(env, AWS_CONFIG_FILE=str(config)))
    assert r.returncode == 0, describe(r)
    r = run(cltfs_bin, "verify", tmp_path / "p2", env=env)
    assert r.returncode == 0, describe(r)
    r = run(cltfs_bin, "pull", URL, tmp_path / "p3", env=dict(env, AWS_CA_BUNDLE=str(tmp_path / "none.pem")))
    assert r.returncode == 1 and "none.pem (from AWS_CA_BUNDLE)" in r.stderr and "No such file" in r.stderr, \
        describe(r)


def test_profile_from_credentials_file(tmp_path, make_s3, stores, cltfs_bin):
    """AWS_PROFILE picks a section of AWS_SHARED_CREDENTIALS_FILE, with its
    session token (sent as x-amz-security-token, signed); the region and
    the endpoint come from the profile of AWS_CONFIG_FILE."""
    s3 = make_s3(token="FwoGZXIvYXdzEXAMPLETOKEN//+=")
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    creds, conf = tmp_path / "credentials", tmp_path / "config"
    creds.write_text("[default]\naws_access_key_id = AKIAWRONG\naws_secret_access_key = nope\n\n"
                     "[work]\naws_access_key_id = %s\naws_secret_access_key = %s\n"
                     "aws_session_token = %s\n" % (s3.key_id, s3.secret, s3.token))
    conf.write_text("[profile work]\nregion = %s\nendpoint_url = %s\n" % (s3.region, s3.endpoint))
    env = env_of(tmp_path, s3, AWS_PROFILE="work", AWS_SHARED_CREDENTIALS_FILE=creds,
                 AWS_CONFIG_FILE=conf)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
              "AWS_ENDPOINT_URL"):
        env.pop(k)
    s3.clear_log()
    r = run(cltfs_bin, "pull", URL, tmp_path / "p", env=env)
    assert r.returncode == 0, describe(r)
    assert s3.log and all(e["token"] == s3.token and e["status"] in (200, 206) for e in s3.log), s3.log[:2]
    # without the token the proxy refuses, and the message says which profile
    creds.write_text("[work]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (s3.key_id, s3.secret))
    r = run(cltfs_bin, "pull", URL, tmp_path / "p2", env=env)
    assert r.returncode == 1 and "profile 'work'" in r.stderr and "InvalidToken" in r.stderr, describe(r)


# ----------------------------------------------------------------- faults --

@pytest.mark.parametrize("kind", ["500", "503", "reset", "truncate"])
def test_faults_are_retried(tmp_path, s3, stores, mount, kind):
    """500, 503 SlowDown, a reset and a body cut short on pack ranges (and
    on the listing) are retried: every view still reads right."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    env = env_of(tmp_path, s3)
    with mount(imp.store) as ml:
        local = {rel: read_all(ml.p(rel)) for rel in imp.desc["files"]}
    s3.fault(lambda e: "list-type" in e["query"], "503" if kind == "truncate" else kind, 1)
    s3.fault(lambda e: is_pack(e) and e["method"] == "GET", kind, 3)
    with mount(URL, env=env) as m:
        for rel in imp.desc["files"]:
            assert read_all(m.p(rel)) == local[rel], rel
        st = m.stats()
        assert st["hub"]["retries"] >= 3 and st["errors"] == 0, st
    assert len([e for e in s3.log if e["fault"]]) == 4


def test_persistent_failure_is_eio_with_a_log_line(tmp_path, s3, stores, mount):
    """When S3 keeps failing a range, the read fails with EIO after the
    retries, and the daemon's log names the object and the S3 code."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    env = env_of(tmp_path, s3, CLTFS_HUB_RETRIES=2)
    s3.fault(lambda e: is_pack(e), "503", 1000)
    with mount(URL, env=env) as m:
        with pytest.raises(OSError) as ei:
            read_all(m.p(imp.desc["files"][0]))
        assert ei.value.errno == errno.EIO
        time.sleep(0.2)
        log = m.log()
    assert "SlowDown" in log and BUCKET in log and ".pack" in log, log


# ------------------------------------------------------------------ push --

def bucket_files(s3, prefix):
    c = s3.client()
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix) + 1:]] = c.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read()
    return out


def writes(s3):
    return [e for e in s3.log if e["method"] in ("PUT", "POST") and e["status"] == 200]


def test_push_then_boto3_reads_it_back(tmp_path, s3, big_store, cltfs_bin, mount):
    """cltfs push uploads every file of the store (the pack as a multipart
    upload), boto3 reads back the same bytes, the manifest is the last write,
    and a second push uploads nothing; the pushed store mounts."""
    store, desc = big_store
    env = env_of(tmp_path, s3, CLTFS_S3_PART_MB=5)
    r = run(cltfs_bin, "push", store, URL, env=env)
    assert r.returncode == 0, describe(r)
    assert bucket_files(s3, PREFIX) == store_files(store)
    head = s3.client().head_object(Bucket=s3.bucket, Key=PREFIX + "/cltfs.json")
    assert head["ContentType"] == "application/octet-stream", head
    w = writes(s3)
    assert w[-1]["key"] == PREFIX + "/cltfs.json" and w[-1]["method"] == "PUT", w[-3:]
    assert len([e for e in w if e["key"] == PREFIX + "/cltfs.json"]) == 1
    parts = [e for e in w if "partNumber=" in e["query"]]
    pack = max(len(v) for k, v in store_files(store).items() if k.endswith(".pack"))
    assert len(parts) == (pack + (5 << 20) - 1) // (5 << 20), len(parts)
    # every pack's last write before any index's first
    first_idx = min(i for i, e in enumerate(w) if e["key"].endswith(".idx"))
    assert all(i < first_idx for i, e in enumerate(w) if e["key"].endswith(".pack")), w
    s3.clear_log()
    r = run(cltfs_bin, "push", store, URL, env=env)
    assert r.returncode == 0 and not writes(s3), (describe(r), writes(s3))
    with mount(URL, env=env) as m, mount(store) as ml:
        for rel in desc["files"][:6]:
            assert read_all(m.p(rel)) == read_all(ml.p(rel)), rel


def test_push_many_pairs_at_once(tmp_path, s3, stores, cltfs_bin, mount):
    """A store of many writer pairs (one per sealed pack of a capture that
    pushed as it went), each write answered late: the packs go up several
    at a time, and still every pack is there before any index is written,
    every index before the sample table, that before the manifest; the
    pushed store mounts and serves the views."""
    imp = stores.get("s1_bf16")
    store = str(tmp_path / "store")
    shutil.copytree(imp.store, store)
    idx = sorted(glob.glob(os.path.join(store, "packs", "*.idx")))[0]
    for i in range(12):
        for ext, src in ((".idx", idx), (".pack", idx[:-4] + ".pack")):
            with open(src, "rb") as f, open(os.path.join(store, "packs", "shard-%02d%s" % (i, ext)), "wb") as g:
                g.write(f.read(16))    # a header alone: a pair with no frame yet
    s3.fault(lambda e: e["method"] == "PUT", "delay:0.1", count=1000)
    env = env_of(tmp_path, s3)
    r = run(cltfs_bin, "push", store, URL, env=env)
    assert r.returncode == 0, describe(r)
    assert bucket_files(s3, PREFIX) == store_files(store)
    w = writes(s3)
    phase = [[e for e in w if e["key"].endswith(".pack")], [e for e in w if e["key"].endswith(".idx")],
             [e for e in w if e["key"].endswith("/samples.bin")], [e for e in w if e["key"].endswith("/cltfs.json")]]
    assert [len(p) >= 1 for p in phase] == [True] * 4 and len(phase[1]) == 13, [len(p) for p in phase]
    for a, b in zip(phase, phase[1:]):
        assert max(e["t_end"] for e in a) <= min(e["t"] for e in b), "a write of the next phase began early"
    packs = phase[0]
    peak = max(sum(1 for o in packs if o["t"] <= e["t"] < o["t_end"]) for e in packs)
    assert peak >= 3, "at most %d pack writes at once" % peak
    with mount(URL, env=env) as m, mount(imp.store) as ml:
        for rel in imp.desc["files"]:
            assert read_all(m.p(rel)) == read_all(ml.p(rel)), rel


def test_push_refuses_another_store(tmp_path, s3, stores, big_store, cltfs_bin):
    """A prefix that holds another store is not written over."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    s3.clear_log()
    r = run(cltfs_bin, "push", big_store[0], URL, env=env_of(tmp_path, s3))
    assert r.returncode == 1 and "another store" in r.stderr, describe(r)
    assert not writes(s3)


def test_killed_push_resumes(tmp_path, s3, big_store, cltfs_bin):
    """kill -9 in the middle of a pack's multipart upload: no manifest is
    there yet (a reader sees no store); a second push goes on from the
    parts that were done (it sends only the others) and completes."""
    store, desc = big_store
    env = env_of(tmp_path, s3, CLTFS_S3_PART_MB=5)
    kill_push_mid_pack(s3, cltfs_bin, store, env)
    done = {e["query"].split("&")[0] for e in writes(s3) if "partNumber=" in e["query"]}
    assert "cltfs.json" not in [k for k in bucket_files(s3, PREFIX)], "manifest before the packs"
    s3.clear_log()
    r = run(cltfs_bin, "push", store, URL, env=env)
    assert r.returncode == 0, describe(r)
    again = {e["query"].split("&")[0] for e in writes(s3) if "partNumber=" in e["query"]}
    assert "partNumber=1" in done and "partNumber=1" not in again, (done, again)
    assert not [e for e in s3.log if e["query"] == "uploads="], "a new upload instead of the same one"
    assert bucket_files(s3, PREFIX) == store_files(store)
    assert writes(s3)[-1]["key"] == PREFIX + "/cltfs.json"


@needs_script
def test_push_and_pull_progress_on_a_tty(tmp_path, s3, big_store, cltfs_bin):
    """On a terminal, push and pull rewrite a progress line (MB done of the
    total, MB/s) and end it; without one they print no progress."""
    store, _ = big_store
    env = env_of(tmp_path, s3)
    rc, out = on_tty(cltfs_bin, "push", store, URL, env=env)
    assert rc == 0 and re.search(r"\rpush: [\d.]+ of [\d.]+ MB, [\d.]+ MB/s", out), out
    rc, out = on_tty(cltfs_bin, "pull", URL, tmp_path / "pulled", env=env)
    assert rc == 0 and re.search(r"\rpull: [\d.]+ of [\d.]+ MB, [\d.]+ MB/s", out), out
    r = run(cltfs_bin, "pull", URL, tmp_path / "pulled2", env=env)
    assert r.returncode == 0 and not re.search(r"pull: [\d.]+ of [\d.]+ MB", r.stderr + r.stdout), describe(r)
    assert "\r" not in r.stderr + r.stdout and "chunks" in r.stderr, describe(r)  # the summary alone


def test_virtual_hosted_addressing(tmp_path, make_s3, stores, mount):
    """-o s3_addressing=virtual: requests go to BUCKET.s3.localhost (the
    bucket in the host name, signed with that host) and serve the same
    views."""
    s3 = make_s3()
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    s3.clear_log()
    env = env_of(tmp_path, s3, AWS_ENDPOINT_URL="http://s3.localhost:%d" % s3.port)
    with mount(imp.store) as ml, mount(URL, "s3_addressing=virtual", env=env) as m:
        for rel in imp.desc["files"][:4]:
            assert read_all(m.p(rel)) == read_all(ml.p(rel)), rel
    assert s3.log and all(e["host"] == "%s.s3.localhost:%d" % (BUCKET, s3.port) for e in s3.log), s3.log[:2]
    assert all(e["status"] in (200, 206) for e in s3.log), [e for e in s3.log if e["status"] not in (200, 206)]


def test_push_retries_faults_and_refuses_bad_credentials(tmp_path, s3, big_store, cltfs_bin):
    """500, 503 SlowDown and resets on CreateMultipartUpload, parts, the
    completion and the manifest's PUT are retried: the push completes with
    the same bytes.  A wrong secret fails it at once (exit 1) naming the
    bucket and the credentials' source, and nothing is written."""
    store, desc = big_store
    env = env_of(tmp_path, s3, CLTFS_S3_PART_MB=5)
    bad = env_of(tmp_path, s3, AWS_SECRET_ACCESS_KEY="not/the/secret")
    r = run(cltfs_bin, "push", store, URL, env=bad)
    assert r.returncode == 1 and "SignatureDoesNotMatch" in r.stderr and BUCKET in r.stderr, describe(r)
    assert "not/the/secret" not in r.stderr and not writes(s3)
    s3.fault(lambda e: e["query"] == "uploads=", "500", 1)
    s3.fault(lambda e: "partNumber=2&" in e["query"], "503", 2)
    s3.fault(lambda e: "partNumber=3&" in e["query"], "reset", 1)
    s3.fault(lambda e: e["method"] == "POST" and e["query"].startswith("uploadId="), "503", 1)
    s3.fault(lambda e: e["key"].endswith("cltfs.json") and e["method"] == "PUT", "reset", 1)
    r = run(cltfs_bin, "push", store, URL, env=env)
    assert r.returncode == 0, describe(r)
    assert len([e for e in s3.log if e["fault"]]) == 6
    assert bucket_files(s3, PREFIX) == store_files(store)


def test_s3_prefix_without_a_store_is_refused(tmp_path, s3, mount_fails, cltfs_bin):
    """A prefix with no cltfs.json is not a store: the mount and pull say so."""
    s3.client().put_object(Bucket=s3.bucket, Key=PREFIX + "/notes.txt", Body=b"hello")
    env = env_of(tmp_path, s3)
    rc, out = mount_fails(URL, env=env)
    assert rc != 0 and "no cltfs.json" in out, out
    r = run(cltfs_bin, "pull", URL, tmp_path / "p", env=env)
    assert r.returncode == 1 and "not a cltfs store" in r.stderr, describe(r)


def test_listing_pages(tmp_path, s3, stores, mount):
    """A prefix listed in several pages (the server gives 2 keys a page
    here, where S3 gives 1000): every page is asked for with its
    continuation token, and the mount serves every view."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    s3.list_page = 2
    s3.clear_log()
    env = env_of(tmp_path, s3)
    with mount(imp.store) as ml, mount(URL, env=env) as m:
        for rel in imp.desc["files"]:
            assert read_all(m.p(rel)) == read_all(ml.p(rel)), rel
    lists = [e for e in s3.log if "list-type=2" in e["query"]]
    n = len(store_files(imp.store))
    assert len(lists) == (n + 1) // 2, (n, lists)
    assert all("continuation-token=" in e["query"] for e in lists[1:]), lists


def test_local_store_backed_by_s3(tmp_path, s3, stores, mount):
    """-o hub=s3://...: a local store (here an empty one with the same
    manifest) fetches what it lacks from S3 and keeps it: a later mount of
    the store alone serves those views."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    env = env_of(tmp_path, s3)
    local = tmp_path / "local"
    s3.clear_log()
    with mount(URL, "store=%s" % local, env=env):
        pass  # creates the local store from the S3 manifest, fetches nothing
    assert not [e for e in s3.log if is_pack(e)]
    rels = imp.desc["files"][:3]
    with mount(imp.store) as ml:
        want = {rel: read_all(ml.p(rel)) for rel in rels}
    with mount(local, "hub=" + URL, env=env) as m:
        for rel in rels:
            assert read_all(m.p(rel)) == want[rel], rel
        assert m.stats()["chunks"]["hub"] > 0
    s3.stop()
    with mount(local, env=env) as m:
        for rel in rels:
            assert read_all(m.p(rel)) == want[rel], rel


def test_metadata_fetched_again_only_when_changed(tmp_path, s3, stores, mount):
    """A second mount lists the prefix and fetches none of the manifest, the
    sample table or the indexes again (their sizes and ETags are those of
    its copies); an index replaced by other bytes of the same size is
    fetched again."""
    imp = stores.get("s1_bf16")
    s3.upload_dir(imp.store, PREFIX)
    env = env_of(tmp_path, s3)
    meta = lambda: [e for e in s3.log if e["method"] == "GET" and not is_pack(e) and "list-type" not in e["query"]]
    s3.clear_log()
    with mount(URL, env=env):
        pass
    assert len(meta()) == len(store_files(imp.store)) - len([k for k in store_files(imp.store) if k.endswith(".pack")])
    s3.clear_log()
    with mount(URL, env=env):
        pass
    assert not meta(), meta()
    idx = sorted(k for k in store_files(imp.store) if k.endswith(".idx"))[0]
    data = bytearray(read_all(os.path.join(imp.store, idx)))
    data[-1] ^= 1  # the last record's checksum fails: that chunk is lost, the rest serves
    s3.client().put_object(Bucket=s3.bucket, Key=PREFIX + "/" + idx, Body=bytes(data))
    s3.clear_log()
    with mount(URL, env=env):
        pass
    assert [e["key"] for e in meta()] == [PREFIX + "/" + idx], meta()
    cached = glob.glob(str(tmp_path / "xdg" / "cltfs" / "s3" / "*" / BUCKET / PREFIX / "snapshots" / "latest" / idx))
    assert cached and read_all(cached[0]) == bytes(data)


def kill_push_mid_pack(s3, cltfs_bin, store, env):
    """Start a push whose parts after the first are slow, kill -9 it once
    part 1 is done; the upload id it was using."""
    s3.fault(lambda e: "partNumber=" in e["query"] and not e["query"].startswith("partNumber=1&"),
             "delay:2", 100)
    p = subprocess.Popen([cltfs_bin, "push", store, URL], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while not [e for e in writes(s3) if e["query"].startswith("partNumber=1&")]:
        assert p.poll() is None and time.monotonic() - t0 < 60, p.stdout.read()
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    s3.faults.clear()
    time.sleep(2.5)
    part1 = [e for e in writes(s3) if e["query"].startswith("partNumber=1&")][0]
    return part1["query"].split("uploadId=")[1]


def test_push_after_the_pack_grew(tmp_path, s3, big_store, cltfs_bin):
    """A push killed mid-pack, then the pack grows: the next push aborts the
    old multipart upload (its parts would be of another file) and uploads
    the pack as it is now."""
    store = str(tmp_path / "store")
    import shutil
    shutil.copytree(big_store[0], store)
    env = env_of(tmp_path, s3, CLTFS_S3_PART_MB=5)
    old = kill_push_mid_pack(s3, cltfs_bin, store, env)
    pack = glob.glob(store + "/packs/*.pack")[0]
    with open(pack, "ab") as f:
        f.write(b"\0" * 4096)  # bytes no record names: what an appending writer leaves before its sync
    s3.clear_log()
    r = run(cltfs_bin, "push", store, URL, env=env)
    assert r.returncode == 0, describe(r)
    aborts = [e for e in s3.log if e["method"] == "DELETE"]
    assert [e["query"] for e in aborts] == ["uploadId=" + old], aborts
    assert bucket_files(s3, PREFIX) == store_files(store)


def test_killed_push_resumes_after_the_server_forgot_the_upload(tmp_path, s3, big_store, cltfs_bin):
    """A push killed mid-pack whose multipart upload the bucket then drops
    (AWS's AbortIncompleteMultipartUpload lifecycle rule does so after a
    few days): the next push finds the journaled upload gone, starts the
    pack's upload again from its first part, and completes byte for byte."""
    store, desc = big_store
    env = env_of(tmp_path, s3, CLTFS_S3_PART_MB=5)
    old = kill_push_mid_pack(s3, cltfs_bin, store, env)
    # s3rver cannot abort an upload: its proxy answers as S3 does for one dropped
    s3.fault(lambda e: "uploadId=" + old in e["query"], "nosuchupload", 10000)
    s3.clear_log()
    r = run(cltfs_bin, "push", store, URL, env=env)
    assert r.returncode == 0, describe(r)
    assert [e for e in s3.log if e["query"] == "uploads="], "no new upload after the old one was dropped"
    again = {e["query"].split("&")[0] for e in writes(s3) if "partNumber=" in e["query"]}
    assert "partNumber=1" in again, again  # from the start: the dropped parts are gone
    assert bucket_files(s3, PREFIX) == store_files(store)
    assert writes(s3)[-1]["key"] == PREFIX + "/cltfs.json"
    assert any(e.get("fault") == "nosuchupload" for e in s3.log), "the old upload was not tried"
