"""End-to-end: the Hub tier.  A fake Hub (tests/hubserver.py) serves a cltfs
store repo (mounted chunk by chunk, pulled) and a plain repo of files
(mounted file by file into the HF cache, huggingface_hub's layout), with
revisions, tokens, gated and private repos, offline mode and injected
faults."""

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import threading
import time

import pytest
import torch

from conftest import assert_same, describe, is_mounted, load_bytes, LoadedFiles, pack_bytes
from hfemu import VERSIONS, Hf, IncompleteSnapshotError, Killed, LocalEntryNotFoundError
from hubserver import Hub, git_blob_sha1
from nginxserver import NGINX, Nginx, make_cert

LFS_THRESHOLD = 4096       # packs are LFS (redirected to the CDN); cltfs.json and idx are not
TOKEN = "hf_test"
STORE_REPO = "me/acts"
STORE_URL = "hf://datasets/" + STORE_REPO
PLAIN_REPO = "me/plain"
PLAIN_URL = "hf://datasets/" + PLAIN_REPO
HEX40 = re.compile(r"[0-9a-f]{40}\Z")


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------- fixtures --

@pytest.fixture
def make_hub():
    """make_hub(**kw) -> a started Hub, stopped after the test.  After the
    test, every request the CDN got must have come without a token."""
    hubs = []

    def _make(**kw):
        kw.setdefault("lfs_threshold", LFS_THRESHOLD)
        h = Hub(token=TOKEN, **kw).start()
        hubs.append(h)
        return h
    yield _make
    for h in hubs:
        h.stop()
    for h in hubs:
        leaked = [e for e in h.log if e["server"] == "cdn" and e["auth"] is not None]
        assert not leaked, "the CDN received an Authorization header: %s" % leaked[:3]


@pytest.fixture
def hub(make_hub):
    return make_hub()


def hf_env(tmp_path, hub, **extra):
    """The environment of one cltfs run: caches under tmp_path, the fake Hub's
    endpoint, no token unless given, fast retries."""
    env = dict(os.environ)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE",
              "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "CLTFS_STORE", "CLTFS_HUB_RETRIES",
              "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        env.pop(k, None)
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"),
               HF_ENDPOINT=hub.endpoint, CLTFS_HUB_BACKOFF_MS="50")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def repo_folder(tmp_path, repo):
    return tmp_path / "hf" / "hub" / ("datasets--" + repo.replace("/", "--"))


def add_store(hub, stores, repo=STORE_REPO, **kw):
    imp = stores.get("s1_bf16")
    commit = hub.add_repo(repo, imp.store, **kw)
    return imp, commit


def pack_names(imp):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(imp.store, "packs", "*.pack")))


def pack_sha256(imp):
    """sha256 of each pack file (its CDN blob name) -> size."""
    out = {}
    for p in glob.glob(os.path.join(imp.store, "packs", "*.pack")):
        out[hashlib.sha256(read_all(p)).hexdigest()] = os.path.getsize(p)
    return out


def is_pack_request(e, repo=STORE_REPO, shas=()):
    if e["server"] == "hub":
        return e["path"].startswith("/datasets/%s/resolve/" % repo) and \
            e["path"].split("?")[0].endswith(".pack")
    return any(e["path"].startswith("/blobs/" + s) for s in shas)


def check_store_views(m, imp, originals, rels=None):
    for rel in rels if rels is not None else imp.desc["files"]:
        assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)


def pull_serves(run_cltfs, mount, store, env, imp, originals):
    """`cltfs pull` of the store repo into store succeeds, the store
    verifies, and a mount of it alone serves every view."""
    r = run_cltfs("pull", STORE_URL, store, "--quiet", env=env)
    assert r.returncode == 0, describe(r)
    r = run_cltfs("verify", store)
    assert r.returncode == 0, describe(r)
    with mount(store) as m:
        check_store_views(m, imp, originals)


@pytest.fixture(scope="session")
def plain_dir(tmp_path_factory):
    """A repo of torch.save'd samples: some under LFS_THRESHOLD, some over,
    in nested directories."""
    d = tmp_path_factory.mktemp("plainrepo")
    sizes = {"sample_0000.pt": 8, "sample_0001.pt": 4000, "sample_0002.pt": 30000,
             "sub/sample_0003.pt": 100, "sub/deeper/sample_0004.pt": 5000,
             "big/sample_0005.pt": 700000}
    for i, (rel, n) in enumerate(sorted(sizes.items())):
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(i)
        torch.save({"x": torch.randn(n, generator=g), "i": i}, str(p))
    (d / "README.md").write_bytes(b"# a plain dataset\n")
    (d / "empty.txt").write_bytes(b"")
    (d / "odd name").mkdir()
    (d / "odd name" / "a b+c%.txt").write_bytes(b"odd\n" * 10)
    files = {}
    for root, _, fns in os.walk(d):
        for fn in fns:
            full = os.path.join(root, fn)
            files[os.path.relpath(full, d)] = read_all(full)
    small = [r for r, b in files.items() if len(b) < LFS_THRESHOLD]
    big = [r for r, b in files.items() if len(b) >= LFS_THRESHOLD]
    assert len(small) >= 2 and len(big) >= 2, {r: len(b) for r, b in files.items()}
    return str(d), files


def etag_of(data):
    return hashlib.sha256(data).hexdigest() if len(data) >= LFS_THRESHOLD else git_blob_sha1(data)


def check_hf_cache(folder, commit, files, want_blobs=None, ref="main"):
    """folder (hub/datasets--o--n) holds huggingface_hub's layout for the
    files {path: bytes} of commit; with want_blobs, blobs/ holds exactly
    those etags."""
    folder = str(folder)
    blobs = os.path.join(folder, "blobs")
    hub_cache = os.path.dirname(folder)
    locks = os.path.join(hub_cache, ".locks", os.path.basename(folder))
    for rel, data in files.items():
        etag = etag_of(data)
        blob = os.path.join(blobs, etag)
        assert os.path.isfile(blob) and not os.path.islink(blob), "no blob %s for %s" % (etag, rel)
        assert read_all(blob) == data, "%s: blob bytes differ" % rel
        snap = os.path.join(folder, "snapshots", commit, rel)
        assert os.path.islink(snap), "%s is not a symlink" % snap
        want = "../" * (rel.count("/") + 2) + "blobs/" + etag
        assert os.readlink(snap) == want, (rel, os.readlink(snap), want)
        assert read_all(snap) == data
        assert os.path.isfile(os.path.join(locks, etag + ".lock")), "no lock file for %s" % rel
    left = glob.glob(os.path.join(glob.escape(folder), "**", "*.incomplete"), recursive=True)
    assert not left, "left behind: %s" % left
    if want_blobs is not None:
        assert sorted(os.listdir(blobs)) == sorted(want_blobs)
    if ref:
        with open(os.path.join(folder, "refs", ref), "rb") as f:
            assert f.read() == commit.encode(), "refs/%s does not hold exactly the commit" % ref


def resolve_requests(hub, repo, rel):
    return [e for e in hub.log if e["server"] == "hub" and
            e["path"].startswith("/datasets/%s/resolve/" % repo) and
            e["path"].split("?")[0].endswith("/" + rel)]


def cdn_requests(hub, data):
    sha = hashlib.sha256(data).hexdigest()
    return [e for e in hub.log if e["server"] == "cdn" and e["path"].startswith("/blobs/" + sha)]


def assert_resumed(hub, data, half):
    """The CDN sent data's bytes from half on, each once: with a Range from
    half, or from the start with a plain GET, as huggingface_hub sends."""
    gets = [e for e in cdn_requests(hub, data) if e["method"] == "GET"]
    assert gets, hub.log
    for e in gets:
        if half:
            assert e["range"] and e["range"].startswith("bytes=%d-" % half), e
        else:
            assert e["range"] is None, e
    assert sum(e["bytes"] for e in gets) == len(data) - half


def assert_no_token(text, where="output"):
    assert TOKEN not in text, "the token appears in %s:\n%s" % (where, text)


# ================================================== a cltfs store repo ==

def test_store_repo_views_equal_reference(tmp_path, hub, stores, mount, originals):
    """Every view of a hub-mounted store repo loads exactly like the reference
    tree; the chunks came from the Hub; cltfs.json and the idx files are in
    the HF cache, the packs are not."""
    imp, commit = add_store(hub, stores)
    env = hf_env(tmp_path, hub)
    with mount(imp.store) as m:
        local = {rel: read_all(m.p(rel)) for rel in imp.desc["files"]}
    with mount(STORE_URL, env=env) as m:
        assert m.files() == imp.desc["files"]
        st0 = m.stats()
        assert st0["chunks"]["hub"] == 0, st0
        check_store_views(m, imp, originals)
        st = m.stats()
        assert st["chunks"]["hub"] > 0 and st["errors"] == 0, st
        # the Hub's own counters: requests made, body bytes, no retries here;
        # neighbouring frames come by one range request (a span), so there
        # may be fewer requests than chunks, never fewer frames
        assert st["hub"]["requests"] >= st["hub"]["spans"] > 0 and st["hub"]["bytes"] > 0, st
        assert st["hub"]["frames"] >= st["chunks"]["hub"], st
        assert st["hub"]["retries"] == 0 and st["hub"]["failures"] == 0, st
        for rel in imp.desc["files"]:
            assert read_all(m.p(rel)) == local[rel], "%s differs from a local mount's" % rel
    folder = repo_folder(tmp_path, STORE_REPO)
    meta = {"cltfs.json": read_all(os.path.join(imp.store, "cltfs.json")),
            "samples.bin": read_all(os.path.join(imp.store, "samples.bin"))}
    for p in glob.glob(os.path.join(imp.store, "packs", "*.idx")):
        meta["packs/" + os.path.basename(p)] = read_all(p)
    check_hf_cache(folder, commit, meta, want_blobs=[etag_of(b) for b in meta.values()])
    assert not glob.glob(str(folder / "snapshots" / commit / "packs" / "*.pack"))


def test_packs_fetched_by_range_only(tmp_path, hub, stores, mount):
    """Pack bytes only ever come by Range requests of frames (one, or
    neighbours together), never the whole pack."""
    imp, commit = add_store(hub, stores)
    shas = pack_sha256(imp)
    env = hf_env(tmp_path, hub)
    with mount(STORE_URL, env=env) as m:
        for rel in imp.desc["files"]:
            read_all(m.p(rel))
    gets = [e for e in hub.log if is_pack_request(e, shas=shas) and e["method"] == "GET"]
    assert any(e["server"] == "cdn" for e in gets), "no pack bytes from the CDN"
    for e in gets:
        assert e["range"] and re.fullmatch(r"bytes=\d+-\d+", e["range"]), e
        if e["server"] == "cdn":
            size = shas[e["path"].split("/")[2].split("?")[0]]
            assert 0 < e["bytes"] < size, e
    # the idx files and the manifest were fetched whole, once
    for rel in ["cltfs.json", "samples.bin"] + ["packs/" + p[:-5] + ".idx" for p in pack_names(imp)]:
        size = os.path.getsize(os.path.join(imp.store, rel))
        got = [e for e in resolve_requests(hub, STORE_REPO, rel) if e["method"] == "GET"]
        assert len(got) == 1 and got[0]["bytes"] == size, (rel, got)
        assert got[0]["range"] in (None, "bytes=0-", "bytes=0-%d" % (size - 1)), (rel, got)


def test_redirect_target_remembered(tmp_path, hub, stores, mount, originals):
    """After the first chunk, later ranges of the pack go straight to the
    CDN without asking the Hub again."""
    imp, commit = add_store(hub, stores)
    shas = pack_sha256(imp)
    env = hf_env(tmp_path, hub)
    files = imp.desc["files"]
    with mount(STORE_URL, "readahead=0", env=env) as m:
        check_store_views(m, imp, originals, files[:1])
        first = [e for e in hub.log if is_pack_request(e, shas=shas)]
        assert [e["status"] for e in first if e["server"] == "hub"][:1] == [302], first
        hub.clear_log()
        check_store_views(m, imp, originals, files[1:])
        later = [e for e in hub.log if is_pack_request(e, shas=shas)]
        assert any(e["server"] == "cdn" for e in later), "no further chunk was fetched"
        assert not [e for e in later if e["server"] == "hub"], \
            "the Hub was asked again for the pack: %s" % later[:3]


def test_packs_located_at_mount(tmp_path, hub, stores, run_cltfs, mount, originals):
    """The mount asks the Hub where the pack is served from (a HEAD, beside
    the indexes): the first read goes to the CDN at once, with no Hub round
    trip.  CLTFS_HUB_LOCATE=0 leaves that to the read; a local store that
    holds the repo's packs already (pulled) asks nothing."""
    imp, commit = add_store(hub, stores)
    shas = pack_sha256(imp)
    rel = imp.desc["files"][0]
    hub.clear_log()
    with mount(STORE_URL, "store=" + str(tmp_path / "a"), env=hf_env(tmp_path, hub)) as m:
        at_mount = [e for e in hub.log if is_pack_request(e, shas=shas)]
        hub.clear_log()
        check_store_views(m, imp, originals, [rel])
        read = [e for e in hub.log if is_pack_request(e, shas=shas)]
    assert [(e["method"], e["status"]) for e in at_mount] == [("HEAD", 302)], at_mount
    assert read and all(e["server"] == "cdn" for e in read), read
    hub.clear_log()
    with mount(STORE_URL, "store=" + str(tmp_path / "b"), env=hf_env(tmp_path, hub, CLTFS_HUB_LOCATE=0)) as m:
        assert not [e for e in hub.log if is_pack_request(e, shas=shas)]
        check_store_views(m, imp, originals, [rel])
        read = [e for e in hub.log if is_pack_request(e, shas=shas)]
    assert [e["status"] for e in read if e["server"] == "hub"][:1] == [302], read
    env = hf_env(tmp_path, hub)
    r = run_cltfs("pull", STORE_URL, str(tmp_path / "a"), "--quiet", env=env)
    assert r.returncode == 0, describe(r)
    hub.clear_log()
    with mount(STORE_URL, "store=" + str(tmp_path / "a"), env=env) as m:
        check_store_views(m, imp, originals, [rel])
    assert not [e for e in hub.log if is_pack_request(e, shas=shas)], hub.log


@pytest.fixture
def tls_cdn(tmp_path):
    """nginx serving a folder over HTTPS, HTTP/2 offered (ALPN), with a
    self-signed certificate for 127.0.0.1: the CDN a real Hub redirects
    to, signed by a CA the system does not know.  (nginx, cert, folder)."""
    if not os.access(NGINX, os.X_OK) or not shutil.which("openssl"):
        pytest.skip("needs nginx (%s) and openssl: make deps installs them" % NGINX)
    d = tmp_path / "tls"
    cdn = d / "cdn"
    cdn.mkdir(parents=True)
    cert, key = make_cert(str(d))
    n = Nginx(str(d / "nginx"), str(cdn), tls=(cert, key)).start()
    yield n, cert, str(cdn)
    n.stop()


def test_store_over_https_http2(tmp_path, make_hub, stores, run_cltfs, mount, mount_fails, originals,
                                tls_cdn):
    """Packs from a CDN over TLS that offers HTTP/2, as huggingface.co's:
    signed by a CA the system does not trust, a read fails with EIO and a
    log line that says what to set; with SSL_CERT_FILE, CURL_CA_BUNDLE or
    REQUESTS_CA_BUNDLE naming the CA, every view equals the tree, a
    mount's ranges over HTTP/1.1 (a connection each, hfcache/ranges.c
    says why), a pull's over HTTP/2; a CA file that cannot be read fails
    the mount, named."""
    nginx, cert, cdn = tls_cdn
    hub = make_hub(cdn_dir=cdn, cdn_url=nginx.url)
    imp, commit = add_store(hub, stores)
    rel = imp.desc["files"][0]
    with mount(STORE_URL, "store=" + str(tmp_path / "untrusted"), env=hf_env(tmp_path, hub)) as m:
        with pytest.raises(OSError) as ei:
            read_all(m.p(rel))
        assert ei.value.errno == errno.EIO, ei.value
        log = m.log()
    assert "TLS certificate could not be verified" in log and "SSL_CERT_FILE" in log, log
    mark = nginx.mark()
    for var in ("SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        with mount(STORE_URL, "store=" + str(tmp_path / var), env=hf_env(tmp_path, hub, **{var: cert})) as m:
            check_store_views(m, imp, originals)
    reqs = nginx.since(mark)
    assert reqs and all(r[2] == 206 and r[3].endswith(" HTTP/1.1") for r in reqs), reqs
    mark = nginx.mark()
    r = run_cltfs("pull", STORE_URL, str(tmp_path / "pulled"), "--quiet", env=hf_env(tmp_path, hub, SSL_CERT_FILE=cert))
    assert r.returncode == 0, describe(r)
    reqs = nginx.since(mark)
    assert reqs and all(r[2] == 206 and r[3].endswith(" HTTP/2.0") for r in reqs), reqs
    r = run_cltfs("verify", str(tmp_path / "pulled"))
    assert r.returncode == 0, describe(r)
    rc, out = mount_fails(STORE_URL, env=hf_env(tmp_path, hub, SSL_CERT_FILE=tmp_path / "none.pem"))
    assert rc != 0 and "SSL_CERT_FILE=%s" % (tmp_path / "none.pem") in out and "No such file" in out, out


def test_local_store_serves_later_mount_offline(tmp_path, hub, stores, mount, originals):
    """-o store=DIR keeps fetched chunks: a second mount with HF_HUB_OFFLINE=1
    and the Hub down serves every view from it."""
    imp, commit = add_store(hub, stores)
    local = str(tmp_path / "local")
    env = hf_env(tmp_path, hub)
    with mount(STORE_URL, "store=" + local, env=env) as m:
        check_store_views(m, imp, originals)
        assert m.stats()["chunks"]["hub"] > 0
    assert os.path.isfile(os.path.join(local, "cltfs.json"))
    assert not os.path.exists(tmp_path / "xdg" / "cltfs"), "chunks went to the default store too"
    hub.stop()
    env = hf_env(tmp_path, hub, HF_HUB_OFFLINE=1)
    with mount(STORE_URL, "store=" + local, env=env) as m:
        assert m.files() == imp.desc["files"]
        check_store_views(m, imp, originals)
        st = m.stats()
        assert st["chunks"]["hub"] == 0 and st["chunks"]["store"] > 0 and st["errors"] == 0, st


def test_offline_uncached_chunk_is_eio(tmp_path, hub, stores, mount, originals):
    """Offline, a view whose chunks the local store lacks fails with EIO;
    the views it holds are served, and the mount stays up."""
    imp, commit = add_store(hub, stores)
    local = str(tmp_path / "local")
    rels = imp.desc["files"]
    with mount(STORE_URL, "store=" + local, "readahead=0", env=hf_env(tmp_path, hub)) as m:
        check_store_views(m, imp, originals, rels[:2])
    hub.stop()
    env = hf_env(tmp_path, hub, HF_HUB_OFFLINE=1)
    with mount(STORE_URL, "store=" + local, "readahead=0", env=env) as m:
        check_store_views(m, imp, originals, rels[:2])
        failed = []
        for rel in rels[2:]:
            try:
                data = read_all(m.p(rel))
            except OSError as e:
                assert e.errno == errno.EIO, (rel, e)
                failed.append(rel)
                continue
            assert_same(load_bytes(data), originals.get(imp.tree, rel), rel)
        assert failed, "every view was served offline from two views' chunks"
        assert m.stats()["chunks"]["hub"] == 0
        check_store_views(m, imp, originals, rels[:2])


def test_local_store_of_another_dataset_refused(tmp_path, hub, stores, mount_fails):
    """-o store=DIR holding another dataset's store is refused at mount."""
    add_store(hub, stores)
    other = stores.copy("s2_padded", tmp_path / "other")
    rc, out = mount_fails(STORE_URL, "store=" + other.store, env=hf_env(tmp_path, hub))
    assert rc != 0 and "another dataset" in out, out


def test_default_local_store(tmp_path, make_hub, stores, mount, originals, run_cltfs):
    """Without -o store=, fetched chunks go to
    $XDG_CACHE_HOME/cltfs/hub/datasets--OWNER--NAME/<commit>/, and a later
    mount reads them there instead of from the Hub."""
    hub = make_hub(page_size=2)     # the store repo's listing paginated too
    imp, commit = add_store(hub, stores)
    env = hf_env(tmp_path, hub)
    rels = imp.desc["files"][:6]
    with mount(STORE_URL, env=env) as m:
        check_store_views(m, imp, originals, rels)
    local = tmp_path / "xdg" / "cltfs" / "hub" / "datasets--me--acts" / commit
    assert (local / "cltfs.json").is_file(), os.listdir(tmp_path / "xdg")
    r = run_cltfs("verify", str(local))
    assert r.returncode == 0, describe(r)
    hub.clear_log()
    with mount(STORE_URL, env=env) as m:
        check_store_views(m, imp, originals, rels)
        st = m.stats()
        assert st["chunks"]["hub"] == 0 and st["chunks"]["store"] > 0, st
    # no pack byte asked for (the mount may ask where a pack is served from:
    # the local store holds only some of the chunks)
    assert not [e for e in hub.log if is_pack_request(e, shas=pack_sha256(imp)) and e["method"] != "HEAD"]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_dataloader_workers(tmp_path, hub, stores, mount, originals):
    """A DataLoader with 2 workers over the hub-mounted store gets the tensors
    of the reference tree."""
    imp, commit = add_store(hub, stores)

    rels = list(imp.desc["files"])
    with mount(STORE_URL, env=hf_env(tmp_path, hub)) as m:
        dl = torch.utils.data.DataLoader(LoadedFiles(m.path, rels), batch_size=None, num_workers=2,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
        seen = []
        for rel, obj in dl:
            assert_same(obj, originals.get(imp.tree, rel), rel)
            seen.append(rel)
        assert sorted(seen) == sorted(rels)
        assert m.stats()["errors"] == 0


# ------------------------------------------------------------------ pull --

def test_pull_then_verify_and_mount(tmp_path, hub, stores, run_cltfs, mount, originals):
    imp, commit = add_store(hub, stores)
    shas = pack_sha256(imp)
    env = hf_env(tmp_path, hub)
    store = str(tmp_path / "pulled")
    r = run_cltfs("pull", STORE_URL, store, "--quiet", env=env)
    assert r.returncode == 0, describe(r)
    ranges = [e for e in hub.log if e["server"] == "cdn" and e["method"] == "GET"]
    assert ranges and all(e["range"] for e in ranges), ranges
    # ranges of several frames: fewer requests than chunks, no byte twice
    n_chunks = json.loads(run_cltfs("stat", imp.store, "--json").stdout)["chunks"]
    assert len([e for e in ranges if e["status"] == 206]) < n_chunks, (len(ranges), n_chunks)
    assert sum(e["bytes"] for e in ranges if e["status"] == 206) <= sum(shas.values())
    r = run_cltfs("verify", store)
    assert r.returncode == 0, describe(r)
    with mount(store) as m:
        assert m.files() == imp.desc["files"]
        check_store_views(m, imp, originals)
        st = m.stats()
        assert "hub" not in st["chunks"] and st["errors"] == 0  # a local store: no Hub tier
    hub.clear_log()
    r = run_cltfs("pull", STORE_URL, store, "--quiet", env=env)
    assert r.returncode == 0, describe(r)
    again = [e for e in hub.log if e["range"]]
    assert not again, "a second pull fetched bytes again: %s" % again


def test_pull_completes_partial_store(tmp_path, hub, stores, run_cltfs, mount, originals):
    """A pull into a store a mount filled in part fetches only the chunks it
    lacks."""
    imp, commit = add_store(hub, stores)
    shas = pack_sha256(imp)
    env = hf_env(tmp_path, hub)
    store = str(tmp_path / "local")
    with mount(STORE_URL, "store=" + store, "readahead=0", env=env) as m:
        check_store_views(m, imp, originals, imp.desc["files"][:2])
        had = m.stats()["chunks"]["hub"]
    assert had > 0
    mounted_bytes = sum(e["bytes"] for e in hub.log if e["server"] == "cdn" and e["status"] == 206)
    assert mounted_bytes > 0
    hub.clear_log()
    r = run_cltfs("pull", STORE_URL, store, env=env)
    assert r.returncode == 0, describe(r)
    assert_no_token(r.stdout + r.stderr)
    pulled = sum(e["bytes"] for e in hub.log if e["server"] == "cdn" and e["status"] == 206)
    assert 0 < pulled <= sum(shas.values()) - mounted_bytes, (pulled, mounted_bytes, shas)
    r = run_cltfs("verify", store)
    assert r.returncode == 0, describe(r)
    hub.stop()
    with mount(store) as m:
        check_store_views(m, imp, originals)


def test_fill_on_a_full_disk(tmp_path, hub, stores, run_cltfs, mount, originals, small_fs):
    """A Hub mount whose local store cannot grow (its filesystem is full)
    still serves every view right, from what it fetches; it logs the cause
    once and counts the frames it could not keep.  The store it leaves
    verifies, and a pull once there is room completes it, with no dead
    bytes left by the frames appended but never recorded."""
    imp, commit = add_store(hub, stores)
    need = sum(pack_sha256(imp).values())
    store = os.path.join(small_fs.mount(max(need // 3 // 4096 * 4096, 64 << 10)), "store")
    env = hf_env(tmp_path, hub)
    with mount(STORE_URL, "store=" + store, env=env) as m:
        check_store_views(m, imp, originals)
        st = m.stats()
        assert st["errors"] == 0 and st["hub"]["not_kept"] > 0, st
        log = m.log()
    assert log.count("No space left on device") == 1 and "not kept in the local store" in log, log
    v = run_cltfs("verify", store)
    assert v.returncode == 0 and "present" in v.stdout, describe(v)
    small_fs.resize(4 * need + (1 << 20))
    r = run_cltfs("pull", STORE_URL, store, "--quiet", env=env)
    assert r.returncode == 0, describe(r)
    clean = str(tmp_path / "clean")
    assert run_cltfs("pull", STORE_URL, clean, "--quiet", env=env).returncode == 0
    assert pack_bytes(store) == pack_bytes(clean), "dead bytes left in the packs: %d, clean %d" % (
        pack_bytes(store), pack_bytes(clean))
    assert run_cltfs("verify", store).returncode == 0
    hub.stop()
    with mount(store) as m:
        check_store_views(m, imp, originals)


def test_pull_failure_then_retry(tmp_path, hub, stores, run_cltfs, mount, originals):
    """A pull the Hub keeps failing exits non-zero with a message; the next
    one completes the store."""
    imp, commit = add_store(hub, stores)
    store = str(tmp_path / "pulled")
    env = hf_env(tmp_path, hub, CLTFS_HUB_RETRIES=1, CLTFS_HUB_BACKOFF_MS=10)
    hub.add_fault(r"^/blobs/", "500", count=100, server="cdn")
    r = run_cltfs("pull", STORE_URL, store, "--quiet", env=env)
    assert r.returncode != 0, describe(r)
    assert "500" in r.stderr, describe(r)
    hub.clear_faults()
    pull_serves(run_cltfs, mount, store, env, imp, originals)


def test_pull_plain_repo_fails(tmp_path, hub, plain_dir, run_cltfs):
    hub.add_repo(PLAIN_REPO, plain_dir[0])
    r = run_cltfs("pull", PLAIN_URL, str(tmp_path / "s"), "--quiet", env=hf_env(tmp_path, hub))
    assert r.returncode != 0, describe(r)
    assert "not a cltfs store" in r.stderr, describe(r)


# --------------------------------------------------------------- faults --

FAULT_KINDS = ["429", "500", "503", "truncate", "reset", "slow"]


@pytest.mark.parametrize("server,kind", [("hub", k) for k in FAULT_KINDS] +
                         [("cdn", k) for k in FAULT_KINDS])
def test_store_read_survives_fault(tmp_path, hub, stores, mount, originals, server, kind):
    imp, commit = add_store(hub, stores)
    # a fault of the Hub's: the read asks it where the pack is (as it does
    # past the first packs, and once a location is 5 minutes old)
    env = hf_env(tmp_path, hub, **({"CLTFS_HUB_LOCATE": 0} if server == "hub" else {}))
    with mount(STORE_URL, env=env) as m:
        pattern = r"\.pack$" if server == "hub" else r"^/blobs/"
        hub.add_fault(pattern, kind, retry_after=1 if kind == "429" else None,
                      delay=1 if kind == "slow" else None, server=server)
        check_store_views(m, imp, originals, imp.desc["files"][:4])
        assert hub.faults_left() == 0, "the fault was never hit"
        st = m.stats()
        assert st["errors"] == 0, st
        assert is_mounted(m.path)


@pytest.mark.parametrize("server,kind", [("cdn", "500"), ("cdn", "truncate"), ("hub", "503"),
                                         ("cdn", "reset")])
def test_store_read_eio_when_retries_exhausted(tmp_path, hub, stores, mount, originals,
                                               server, kind):
    """More faults than retries: the read fails with EIO (never short or
    wrong bytes), the mount stays up, and the same read succeeds once the
    Hub answers again."""
    imp, commit = add_store(hub, stores)
    env = hf_env(tmp_path, hub, CLTFS_HUB_RETRIES=2, CLTFS_HUB_BACKOFF_MS=10,
                 **({"CLTFS_HUB_LOCATE": 0} if server == "hub" else {}))
    rel = imp.desc["files"][0]
    with mount(STORE_URL, env=env) as m:
        pattern = r"\.pack$" if server == "hub" else r"^/blobs/"
        hub.add_fault(pattern, kind, count=100, server=server)
        with pytest.raises(OSError) as ei:
            torch.load(m.p(rel))
        assert ei.value.errno == errno.EIO, ei.value
        with pytest.raises(OSError) as ei:
            read_all(m.p(rel))
        assert ei.value.errno == errno.EIO, ei.value
        assert hub.faults_left() < 100
        assert is_mounted(m.path) and m.proc.poll() is None
        hub.clear_faults()
        assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)
        check_store_views(m, imp, originals)


# ------------------------------------ ranges: neighbours, ahead, faults --

def cdn_gets(hub, shas):
    """The CDN's range requests for pack bytes, in the order they ended."""
    return [e for e in hub.log if e["server"] == "cdn" and e["method"] == "GET" and is_pack_request(e, shas=shas)]


def test_cold_y_view_few_range_requests(tmp_path, hub, stores, mount):
    """Cold reads of y views ask for their frames in a few range requests
    (neighbouring frames of the pack in one: the engine's readahead asks for
    a read's chunks at once), far fewer than frames, and read the bytes a
    mount of the store itself reads."""
    imp, commit = add_store(hub, stores)
    shas = pack_sha256(imp)
    rels = sorted(r for r in imp.desc["files"] if r.startswith("L0/") and r.endswith("_y.pt"))
    with mount(imp.store) as m:
        local = {rel: read_all(m.p(rel)) for rel in rels}
    hub.clear_log()
    with mount(STORE_URL, env=hf_env(tmp_path, hub)) as m:
        for rel in rels:
            assert read_all(m.p(rel)) == local[rel], rel
        st = m.stats()
    frames = st["chunks"]["hub"]
    gets = cdn_gets(hub, shas)
    assert frames >= 8 and st["errors"] == 0, st
    assert 1 <= len(gets) and 3 * len(gets) <= frames, (len(gets), frames, [e["range"] for e in gets])
    assert st["hub"]["spans"] == len(gets) and st["hub"]["frames"] >= frames, st


def test_link_fetches_ahead_and_keeps_it(tmp_path, make_hub, stores, mount, originals):
    """Over a link with round trips (every answer 30 ms late), a reader's
    first load fetches, in the same request, a window of the frames that
    follow (one frame at a time would cost a round trip each), also for
    -o readahead=0; at unmount every frame that came is checked and kept,
    so a later mount offline serves every view of this (small) store."""
    hub = make_hub(latency=0.03)
    imp, commit = add_store(hub, stores)
    shas = pack_sha256(imp)
    local = str(tmp_path / "local")
    rel = imp.desc["files"][0]
    with mount(STORE_URL, "store=" + local, "readahead=0", env=hf_env(tmp_path, hub)) as m:
        check_store_views(m, imp, originals, [rel])
        st = m.stats()
    gets = cdn_gets(hub, shas)
    assert len(gets) == 1 and st["hub"]["frames"] > st["chunks"]["hub"], ([e["range"] for e in gets], st)
    # the link's 30 ms, as libcurl times it (from the request's send to the
    # first byte: a loaded machine has measured 27 ms), not loopback's 0.1
    assert st["hub"]["rtt_us"] >= 20000, st
    hub.stop()
    with mount(STORE_URL, "store=" + local, env=hf_env(tmp_path, hub, HF_HUB_OFFLINE=1)) as m:
        check_store_views(m, imp, originals)
        st = m.stats()
    assert st["chunks"]["hub"] == 0 and st["errors"] == 0, st


def test_fault_mid_span_resumed(tmp_path, make_hub, stores, mount, originals):
    """A body cut in the middle of a request of many frames is resumed from
    the byte where it stopped (no byte asked for twice), and every view
    reads right."""
    hub = make_hub(latency=0.03)   # the first request holds a window of frames
    imp, commit = add_store(hub, stores)
    shas = pack_sha256(imp)
    cut = 5000                     # past the first frame, inside a later one
    hub.add_fault(r"^/blobs/", "truncate", after_bytes=cut, server="cdn")
    with mount(STORE_URL, env=hf_env(tmp_path, hub)) as m:
        check_store_views(m, imp, originals)
        st = m.stats()
    assert hub.faults_left() == 0 and st["errors"] == 0 and st["hub"]["retries"] >= 1, st
    gets = cdn_gets(hub, shas)
    cut_req = [e for e in gets if e["fault"] == "truncate"]
    assert len(cut_req) == 1 and cut_req[0]["bytes"] == cut, gets
    first, last = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", cut_req[0]["range"]).groups())
    assert last - first + 1 > cut, cut_req
    resumed = [e for e in gets if e["range"] == "bytes=%d-%d" % (first + cut, last)]
    assert len(resumed) == 1 and resumed[0]["status"] == 206 and resumed[0]["bytes"] == last + 1 - first - cut, gets


@pytest.mark.parametrize("kind", ["norange", "shiftrange"])
def test_store_read_other_range_than_asked(tmp_path, hub, stores, mount, originals, kind):
    """A proxy that drops the Range header (200, the whole pack) or answers
    another range than asked: none of those bytes reach a frame.  Once, the
    request is tried again and the view reads right; every time, the read
    fails with EIO and the log says what the server did, not that a frame
    was damaged."""
    imp, _ = add_store(hub, stores)
    rel = imp.desc["files"][1]
    env = hf_env(tmp_path, hub, CLTFS_HUB_RETRIES=2, CLTFS_HUB_BACKOFF_MS=10)
    with mount(STORE_URL, env=env) as m:
        hub.add_fault(r"^/blobs/", kind, count=1, server="cdn")
        assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)
        assert hub.faults_left() == 0
    with mount(STORE_URL, "store=" + str(tmp_path / "fresh"), env=env, name="again") as m:
        hub.add_fault(r"^/blobs/", kind, count=1000, server="cdn")
        with pytest.raises(OSError) as ei:
            read_all(m.p(rel))
        assert ei.value.errno == errno.EIO
        log = m.log()
    assert "another range than asked" in log, log
    assert "checksum" not in log and "CRC" not in log and "damaged" not in log, log


def test_fetch_error_names_url_and_chunk(tmp_path, hub, stores, mount):
    """A range that keeps failing: EIO to the reader, and a log line that
    names the chunk, the file of the repo and the URL."""
    imp, commit = add_store(hub, stores)
    env = hf_env(tmp_path, hub, CLTFS_HUB_RETRIES=1, CLTFS_HUB_BACKOFF_MS=10)
    rel = imp.desc["files"][0]
    with mount(STORE_URL, env=env) as m:
        hub.add_fault(r"^/blobs/", "500", count=100, server="cdn")
        with pytest.raises(OSError) as ei:
            read_all(m.p(rel))
        assert ei.value.errno == errno.EIO, ei.value
        log = m.log()
    lines = [ln for ln in log.splitlines() if "HTTP 500" in ln]
    assert lines, log
    pack = "packs/%s" % pack_names(imp)[0]
    for ln in lines:
        assert re.search(r"chunk (x|mlp)@\d+#\d+", ln), ln
        assert "hf://datasets/%s@%s/%s" % (STORE_REPO, commit[:12], pack) in ln, ln
        assert re.search(r"http://127\.0\.0\.1:\d+/\S+", ln), ln


def many_pairs_repo(imp, pairs):
    """The files of imp's store plus `pairs` empty writer pairs (a header
    alone: a capture array that pushes as it goes leaves one pair per
    sealed pack), as {path in the repo: bytes}."""
    files = {}
    for root, _, names in os.walk(imp.store):
        for n in names:
            p = os.path.join(root, n)
            files[os.path.relpath(p, imp.store)] = read_all(p)
    idx = sorted(k for k in files if k.startswith("packs/") and k.endswith(".idx"))[0]
    for i in range(pairs):
        files["packs/shard-%02d.idx" % i] = files[idx][:16]
        files["packs/shard-%02d.pack" % i] = files[idx[:-4] + ".pack"][:16]
    return files


def test_store_metadata_fetched_at_once(tmp_path, make_hub, stores, mount, mount_fails, originals):
    """A store with many writer pairs, each answered a round trip late: the
    mount fetches their indexes several at a time (one after another, 12
    pairs cost it ~40 round trips), serves every view; and an index the Hub
    keeps failing fails the mount with a message that names it."""
    hub = make_hub(latency=0.1)
    imp = stores.get("s1_bf16")
    hub.add_repo(STORE_REPO, many_pairs_repo(imp, 12))
    hub.clear_log()
    with mount(STORE_URL, env=hf_env(tmp_path, hub)) as m:
        peak = hub.peak_inflight
        idx = [e for e in hub.log if e["path"].endswith(".idx")]
        check_store_views(m, imp, originals)
    assert len({e["path"] for e in idx}) == 13, idx
    assert peak >= 4, "at most %d requests at once while the mount fetched 13 indexes" % peak
    hub.add_fault(r"shard-07\.idx$", "500", count=1000, server="hub")
    rc, out = mount_fails(STORE_URL, env=hf_env(tmp_path, hub, CLTFS_HUB_RETRIES=1,
                                                 HF_HOME=tmp_path / "hf2"))
    assert rc != 0 and "packs/shard-07.idx" in out and "500" in out, out


def test_norm_stats_listing_during_pass(tmp_path, hub, stores, mount):
    """A first read of .cltfs/norm_stats.json starts a pass over every chunk,
    which over a link can take minutes (here a range answers after 3 s).
    An `ls -l .cltfs` meanwhile waits for it: were it answered size 0, the
    kernel would keep that size over the reader's newer one and the reader
    would get an empty file.  Both get the whole text."""
    imp, commit = add_store(hub, stores)
    env = hf_env(tmp_path, hub)
    with mount(STORE_URL, env=env) as m:
        hub.add_fault(r"^/blobs/", "slow", delay=3, server="cdn")
        got = {}

        def first_read():
            try:
                got["text"] = read_all(m.p(".cltfs/norm_stats.json"))
            except OSError as e:
                got["error"] = e
        reader = threading.Thread(target=first_read)
        reader.start()
        deadline = time.monotonic() + 30
        while hub.faults_left() and time.monotonic() < deadline and reader.is_alive():
            time.sleep(0.02)
        assert hub.faults_left() == 0, "the pass never fetched a range"
        sizes = {e.name: e.stat().st_size for e in os.scandir(m.p(".cltfs"))}
        reader.join(120)
        assert "error" not in got, got
        stats = json.loads(got["text"])
        assert stats["format"] == "cltfs-norm-stats/1" and stats["layers"], stats.keys()
        assert sizes["norm_stats.json"] == len(got["text"]), sizes
        assert os.stat(m.p(".cltfs/norm_stats.json")).st_size == len(got["text"])


# ======================================================= a plain repo ==

def test_plain_listing_paginated(tmp_path, make_hub, plain_dir, mount):
    """Names, kinds and sizes come from the paginated tree listing; listing
    and stat download nothing."""
    hub = make_hub(page_size=2)
    src, files = plain_dir
    hub.add_repo(PLAIN_REPO, src)
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        assert sorted(os.listdir(m.path)) == sorted(
            {r.split("/")[0] for r in files}), os.listdir(m.path)
        assert sorted(os.listdir(m.p("sub"))) == ["deeper", "sample_0003.pt"]
        assert os.listdir(m.p("sub", "deeper")) == ["sample_0004.pt"]
        assert os.path.isdir(m.p("sub")) and os.path.isdir(m.p("sub", "deeper"))
        for rel, data in files.items():
            st = os.stat(m.p(rel))
            assert st.st_size == len(data), rel
            assert os.path.isfile(m.p(rel))
        with pytest.raises(FileNotFoundError):
            os.stat(m.p("nope.pt"))
        pages = [e for e in hub.log if "/tree/" in e["path"]]
        # every file and directory, in pages of 2
        dirs = {r.rsplit("/", 1)[0] for r in files if "/" in r}
        dirs |= {d.rsplit("/", 1)[0] for d in dirs if "/" in d}
        n_pages = (len(files) + len(dirs) + 1) // 2
        assert len(pages) == n_pages, [e["path"] for e in pages]
        assert sum("cursor=" in e["path"] for e in pages) == n_pages - 1, pages
        assert not [e for e in hub.log if "/resolve/" in e["path"] or e["server"] == "cdn"]
    assert not os.path.exists(repo_folder(tmp_path, PLAIN_REPO) / "blobs")


def test_plain_read_fills_hf_cache(tmp_path, hub, plain_dir, mount):
    """Reading files downloads exactly those into huggingface_hub's layout:
    blobs/<etag>, relative snapshot links, refs/main, .locks; no
    .incomplete; unread files are not downloaded."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    read = ["sample_0000.pt", "sample_0002.pt", "sub/sample_0003.pt", "sub/deeper/sample_0004.pt",
            "empty.txt", "odd name/a b+c%.txt"]
    assert {len(files[r]) < LFS_THRESHOLD for r in read} == {True, False}
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        for rel in read:
            data = read_all(m.p(rel))
            assert data == files[rel], rel
            if rel.endswith(".pt"):
                assert_same(torch.load(m.p(rel)), torch.load(os.path.join(src, rel)), rel)
    folder = repo_folder(tmp_path, PLAIN_REPO)
    check_hf_cache(folder, commit, {r: files[r] for r in read},
                   want_blobs=[etag_of(files[r]) for r in read])
    for rel in set(files) - set(read):
        assert not os.path.lexists(folder / "snapshots" / commit / rel), rel
        assert not resolve_requests(hub, PLAIN_REPO, rel), "unread %s was requested" % rel
        if len(files[rel]) >= LFS_THRESHOLD:
            assert not cdn_requests(hub, files[rel]), rel
    # LFS bytes came from the CDN, small files from the Hub
    assert cdn_requests(hub, files["sample_0002.pt"])
    assert not os.path.exists(folder / ".no_exist")


def test_plain_later_opens_read_cache(tmp_path, hub, plain_dir, mount):
    """A second open, and a second mount, read the cached file without
    asking the Hub for it."""
    src, files = plain_dir
    hub.add_repo(PLAIN_REPO, src)
    env = hf_env(tmp_path, hub)
    rels = ["sample_0001.pt", "sub/sample_0003.pt"]
    with mount(PLAIN_URL, env=env) as m:
        for rel in rels:
            assert read_all(m.p(rel)) == files[rel]
        # The last bytes reach the reader before the download is linked
        # into the snapshot, and the server logs a request after answering
        # it: wait for both before clearing the log.
        snap = next((repo_folder(tmp_path, PLAIN_REPO) / "snapshots").iterdir())
        deadline = time.monotonic() + 10
        while not all((snap / rel).exists() for rel in rels) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        hub.clear_log()
        for rel in rels:
            fd = os.open(m.p(rel), os.O_RDONLY)
            try:
                assert os.pread(fd, 100, 10) == files[rel][10:110]
            finally:
                os.close(fd)
            assert read_all(m.p(rel)) == files[rel]
        assert not [e for e in hub.log if "/resolve/" in e["path"] or e["server"] == "cdn"]
    with mount(PLAIN_URL, env=env) as m:
        for rel in rels:
            assert read_all(m.p(rel)) == files[rel]
    assert not [e for e in hub.log if "/resolve/" in e["path"] or e["server"] == "cdn"]


def test_plain_concurrent_first_reads(tmp_path, hub, plain_dir, mount):
    """Many threads open and read the same files at once on a fresh mount
    (one download each, followed by every reader) and all get the right
    bytes; each blob is downloaded once."""
    import threading
    import random
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    rels = ["big/sample_0005.pt", "sample_0002.pt", "sample_0000.pt"]
    errors = []
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        def worker(seed):
            rng = random.Random(seed)
            try:
                for rel in rng.sample(rels, len(rels)):
                    data = files[rel]
                    fd = os.open(m.p(rel), os.O_RDONLY)
                    try:
                        for _ in range(4):
                            off = rng.randrange(0, len(data))
                            n = rng.choice([1, 4096, 100000, len(data)])
                            if os.pread(fd, n, off) != data[off:off + n]:
                                errors.append("%s: pread(%d, %d)" % (rel, n, off))
                    finally:
                        os.close(fd)
                    if read_all(m.p(rel)) != data:
                        errors.append("%s: full read" % rel)
            except Exception as e:  # noqa: BLE001
                errors.append("%d: %r" % (seed, e))
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not any(t.is_alive() for t in ts), "readers hung"
    assert not errors, errors[:5]
    for rel in rels:
        gets = [e for e in resolve_requests(hub, PLAIN_REPO, rel) if e["method"] == "GET"]
        assert len(gets) == 1, (rel, gets)
    check_hf_cache(repo_folder(tmp_path, PLAIN_REPO), commit, {r: files[r] for r in rels},
                   want_blobs=[etag_of(files[r]) for r in rels])


def test_plain_waits_for_a_download_huggingface_hub_holds(tmp_path, hub, plain_dir, mount):
    """huggingface_hub downloads a blob under .locks/<folder>/<etag>.lock,
    taken with flock (the filelock package).  A first read of that file on
    a mount meanwhile waits for the lock rather than download the bytes a
    second time, then serves the blob the other process finished."""
    import fcntl
    import threading
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    rel = "big/sample_0005.pt"
    data = files[rel]
    assert len(data) >= LFS_THRESHOLD  # an LFS blob, from the CDN
    etag = etag_of(data)
    folder = repo_folder(tmp_path, PLAIN_REPO)
    lock = tmp_path / "hf" / "hub" / ".locks" / folder.name / (etag + ".lock")
    lock.parent.mkdir(parents=True)
    got = {}
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        with open(lock, "w") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            reader = threading.Thread(target=lambda: got.update(data=read_all(m.p(rel))))
            reader.start()
            reader.join(1.0)
            assert reader.is_alive(), "the read did not wait for the lock"
            # "the other process" finishes its download as huggingface_hub
            # lays it out, then lets go of the lock
            (folder / "blobs").mkdir(parents=True, exist_ok=True)
            (folder / "blobs" / etag).write_bytes(data)
        reader.join(30)
        assert not reader.is_alive(), "the read hung after the lock was released"
    assert got["data"] == data
    assert not cdn_requests(hub, data), "downloaded again what the other process had"
    assert os.readlink(folder / "snapshots" / commit / rel) == "../../../blobs/" + etag


def test_renamed_repo_followed(tmp_path, hub, plain_dir, stores, mount, originals):
    """A repo renamed on the Hub answers its old id with 307 and a relative
    Location under the new one (huggingface_hub follows those): a mount of
    the old id lists and reads the files as before, a plain repo and a
    store repo alike, and keeps them in the HF cache folder of the id it
    was given, as hf_hub_download(repo_id=old) does."""
    src, files = plain_dir
    commit = hub.add_repo("me/old-name", src)
    hub.rename("me/old-name", "me/new-name")
    rels = ["sample_0000.pt", "big/sample_0005.pt"]
    with mount("hf://datasets/me/old-name", env=hf_env(tmp_path, hub)) as m:
        assert sorted(os.listdir(m.path)) == sorted({r.split("/")[0] for r in files})
        for rel in rels:
            assert read_all(m.p(rel)) == files[rel], rel
    assert [e for e in hub.log if e["status"] == 307], "the old id was not redirected"
    check_hf_cache(repo_folder(tmp_path, "me/old-name"), commit, {r: files[r] for r in rels})
    imp, _ = add_store(hub, stores, repo="me/old-store")
    hub.rename("me/old-store", "me/new-store")
    with mount("hf://datasets/me/old-store", env=hf_env(tmp_path, hub)) as m:
        for rel in imp.desc["files"][:4]:
            assert_same(torch.load(m.p(rel)), originals.get(imp.tree, rel), rel)


def test_plain_unmount_during_download(tmp_path, hub, plain_dir, mount):
    """Unmounting while a download runs stops it cleanly (the daemon exits
    0); a later mount finishes it."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    rel = "big/sample_0005.pt"
    env = hf_env(tmp_path, hub)
    with mount(PLAIN_URL, env=env) as m:
        hub.add_fault(r"^/blobs/", "slow", delay=1.5, server="cdn")
        fd = os.open(m.p(rel), os.O_RDONLY)
        os.close(fd)
        time.sleep(0.3)
    assert hub.faults_left() == 0
    with mount(PLAIN_URL, env=env) as m:
        assert read_all(m.p(rel)) == files[rel]
    check_hf_cache(repo_folder(tmp_path, PLAIN_REPO), commit, {rel: files[rel]},
                   want_blobs=[etag_of(files[rel])])


def test_plain_offline_shows_cached_files(tmp_path, hub, plain_dir, mount):
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    rels = ["sample_0002.pt", "sub/deeper/sample_0004.pt"]
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        for rel in rels:
            assert read_all(m.p(rel)) == files[rel]
    hub.stop()
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub, HF_HUB_OFFLINE=1)) as m:
        assert sorted(os.listdir(m.path)) == ["sample_0002.pt", "sub"]
        assert os.listdir(m.p("sub")) == ["deeper"]
        assert os.listdir(m.p("sub", "deeper")) == ["sample_0004.pt"]
        for rel in rels:
            assert os.stat(m.p(rel)).st_size == len(files[rel])
            assert read_all(m.p(rel)) == files[rel]
        assert not os.path.exists(m.p("sample_0000.pt"))
    with mount(PLAIN_URL + "@" + commit, env=hf_env(tmp_path, hub, HF_HUB_OFFLINE=1)) as m:
        assert read_all(m.p(rels[0])) == files[rels[0]]


def test_offline_uncached_repo_fails(tmp_path, hub, plain_dir, mount_fails):
    hub.add_repo(PLAIN_REPO, plain_dir[0])
    rc, out = mount_fails(PLAIN_URL, env=hf_env(tmp_path, hub, HF_HUB_OFFLINE=1))
    assert rc != 0 and "HF_HUB_OFFLINE" in out, out
    assert not [e for e in hub.log], "an offline mount talked to the Hub"


@pytest.mark.parametrize("partial", ["half", "oversized"])
def test_plain_resumes_incomplete_blob(tmp_path, hub, plain_dir, mount, partial):
    """A blob's .incomplete is resumed with a Range from its size (one
    longer than the file cannot be a prefix: downloaded again from 0)."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    rel = "sample_0002.pt"
    data = files[rel]
    sha = hashlib.sha256(data).hexdigest()
    blobs = repo_folder(tmp_path, PLAIN_REPO) / "blobs"
    blobs.mkdir(parents=True)
    if partial == "half":
        half = len(data) // 2
        (blobs / (sha + ".incomplete")).write_bytes(data[:half])
    else:
        half = 0
        (blobs / (sha + ".incomplete")).write_bytes(b"\xff" * (len(data) + 10))
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        assert read_all(m.p(rel)) == data
    assert_resumed(hub, data, half)
    check_hf_cache(repo_folder(tmp_path, PLAIN_REPO), commit, {rel: data}, want_blobs=[sha])


def test_plain_download_failure_eio_then_retry(tmp_path, hub, plain_dir, mount):
    """A download that keeps failing: the read gets EIO and leaves a
    .incomplete; a later open downloads again, resuming it."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    rel = "sample_0002.pt"
    data = files[rel]
    sha = hashlib.sha256(data).hexdigest()
    env = hf_env(tmp_path, hub, CLTFS_HUB_RETRIES=1, CLTFS_HUB_BACKOFF_MS=10)
    blobs = repo_folder(tmp_path, PLAIN_REPO) / "blobs"
    with mount(PLAIN_URL, env=env) as m:
        hub.add_fault(r"^/blobs/", "truncate", count=100, after_bytes=30000, server="cdn")
        with pytest.raises(OSError) as ei:
            read_all(m.p(rel))
        assert ei.value.errno == errno.EIO, ei.value
        part = blobs / (sha + ".incomplete")
        assert part.is_file() and 0 < part.stat().st_size < len(data)
        have = part.stat().st_size
        assert data[:have] == part.read_bytes()
        assert not (blobs / sha).exists()
        hub.clear_faults()
        hub.clear_log()
        assert read_all(m.p(rel)) == data
        gets = [e for e in cdn_requests(hub, data) if e["method"] == "GET"]
        assert gets and gets[0]["range"] and gets[0]["range"].startswith("bytes=%d-" % have), gets
    check_hf_cache(repo_folder(tmp_path, PLAIN_REPO), commit, {rel: data}, want_blobs=[sha])


@pytest.mark.parametrize("rel,server,kind", [("sample_0002.pt", "cdn", "503"),
                                             ("sample_0002.pt", "cdn", "reset"),
                                             ("sample_0000.pt", "hub", "429"),
                                             ("sub/sample_0003.pt", "hub", "truncate")])
def test_plain_read_survives_fault(tmp_path, hub, plain_dir, mount, rel, server, kind):
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    pattern = r"^/blobs/" if server == "cdn" else re.escape(rel) + "$"
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        hub.add_fault(pattern, kind, count=2, retry_after=1 if kind == "429" else None,
                      server=server)
        assert read_all(m.p(rel)) == files[rel]
        assert hub.faults_left() == 0
    check_hf_cache(repo_folder(tmp_path, PLAIN_REPO), commit, {rel: files[rel]},
                   want_blobs=[etag_of(files[rel])])


def test_plain_rate_limit_of_an_hour_is_an_error(tmp_path, hub, plain_dir, mount):
    """429 with Retry-After: 3600 (a rate limit's ban): the read fails with
    EIO at once, the log says 429, rather than holding the reader an hour;
    the next read, once the Hub answers, succeeds."""
    src, files = plain_dir
    hub.add_repo(PLAIN_REPO, src)
    rel = "sample_0000.pt"
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        hub.add_fault(re.escape(rel) + "$", "429", count=1, retry_after=3600)
        t0 = time.monotonic()
        with pytest.raises(OSError) as ei:
            read_all(m.p(rel))
        assert ei.value.errno == errno.EIO and time.monotonic() - t0 < 30
        assert "429" in m.log(), m.log()
        assert read_all(m.p(rel)) == files[rel]


@pytest.mark.parametrize("var", ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"])
def test_hf_hub_cache_overrides_location(tmp_path, hub, plain_dir, mount, var):
    """The cache folder huggingface_hub would use: HF_HUB_CACHE, or its
    older name HUGGINGFACE_HUB_CACHE."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    hc = tmp_path / "hubcache"
    rel = "sub/deeper/sample_0004.pt"
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub, **{var: str(hc)})) as m:
        assert read_all(m.p(rel)) == files[rel]
    check_hf_cache(hc / "datasets--me--plain", commit, {rel: files[rel]})
    assert not os.path.exists(tmp_path / "hf" / "hub")


# ============================================================ revisions ==

def test_revision_tag_and_commit(tmp_path, hub, mount):
    c1 = hub.add_repo(PLAIN_REPO, {"a.txt": b"first\n", "d/b.bin": os.urandom(5000)})
    c2 = hub.add_repo(PLAIN_REPO, {"a.txt": b"second!\n", "new.txt": b"new"})
    hub.add_tag(PLAIN_REPO, "v1", c1)
    env = hf_env(tmp_path, hub)
    with mount(PLAIN_URL + "@v1", env=env) as m:
        assert sorted(os.listdir(m.path)) == ["a.txt", "d"]
        assert read_all(m.p("a.txt")) == b"first\n"
    with mount(PLAIN_URL + "@" + c1, env=env) as m:
        assert sorted(os.listdir(m.path)) == ["a.txt", "d"]
        assert read_all(m.p("a.txt")) == b"first\n"
    with mount(PLAIN_URL, env=env) as m:
        assert sorted(os.listdir(m.path)) == ["a.txt", "new.txt"]
        assert read_all(m.p("a.txt")) == b"second!\n"
    c3 = hub.add_repo(PLAIN_REPO, {"f.txt": b"feature\n"}, branch="feat/x")
    with mount(PLAIN_URL + "@feat/x", env=env) as m:
        assert os.listdir(m.path) == ["f.txt"]
        assert read_all(m.p("f.txt")) == b"feature\n"
    # a pull request's revision, as given or percent-encoded as in the Hub's URLs
    c4 = hub.add_repo(PLAIN_REPO, {"pr.txt": b"proposed\n"}, branch="refs/pr/1")
    for rev in ("refs/pr/1", "refs%2Fpr%2F1"):
        with mount(PLAIN_URL + "@" + rev, env=env) as m:
            assert os.listdir(m.path) == ["pr.txt"], rev
            assert read_all(m.p("pr.txt")) == b"proposed\n"
    folder = repo_folder(tmp_path, PLAIN_REPO)
    assert (folder / "refs" / "refs" / "pr" / "1").read_bytes() == c4.encode()  # as huggingface_hub keeps it
    assert (folder / "refs" / "feat" / "x").read_bytes() == c3.encode()
    assert (folder / "refs" / "v1").read_bytes() == c1.encode()
    assert (folder / "refs" / "main").read_bytes() == c2.encode()
    assert os.readlink(folder / "snapshots" / c1 / "a.txt") == "../../blobs/" + git_blob_sha1(b"first\n")
    assert read_all(folder / "snapshots" / c2 / "a.txt") == b"second!\n"


def test_new_commit_keeps_old_revision(tmp_path, hub, mount):
    """After a new commit on main, @<old commit> still shows the old content
    and main the new; refs/main follows."""
    c1 = hub.add_repo(PLAIN_REPO, {"a.txt": b"old\n", "keep.bin": b"k" * 5000})
    env = hf_env(tmp_path, hub)
    with mount(PLAIN_URL, env=env) as m:
        assert read_all(m.p("a.txt")) == b"old\n"
    folder = repo_folder(tmp_path, PLAIN_REPO)
    assert (folder / "refs" / "main").read_bytes() == c1.encode()
    c2 = hub.add_repo(PLAIN_REPO, {"a.txt": b"new content\n", "keep.bin": b"k" * 5000})
    assert c2 != c1
    with mount(PLAIN_URL, env=env) as m:
        assert os.stat(m.p("a.txt")).st_size == len(b"new content\n")
        assert read_all(m.p("a.txt")) == b"new content\n"
        assert read_all(m.p("keep.bin")) == b"k" * 5000
    assert (folder / "refs" / "main").read_bytes() == c2.encode()
    hub.clear_log()
    with mount(PLAIN_URL + "@" + c1, env=env) as m:
        assert read_all(m.p("a.txt")) == b"old\n"
        assert read_all(m.p("keep.bin")) == b"k" * 5000
    # keep.bin's blob, the same in both commits, was not downloaded again
    assert not cdn_requests(hub, b"k" * 5000), hub.log
    sha = hashlib.sha256(b"k" * 5000).hexdigest()
    for c in (c1, c2):
        assert os.readlink(folder / "snapshots" / c / "keep.bin") == "../../blobs/" + sha


def test_store_repo_old_commit(tmp_path, hub, stores, mount, originals):
    """A store repo replaced by another dataset on main: @<old commit> still
    serves the old store (its own default local store)."""
    imp, c1 = add_store(hub, stores)
    other = stores.get("s2_padded")
    c2 = hub.add_repo(STORE_REPO, other.store)
    env = hf_env(tmp_path, hub)
    with mount(STORE_URL + "@" + c1, env=env) as m:
        assert m.files() == imp.desc["files"]
        check_store_views(m, imp, originals, imp.desc["files"][:4])
    with mount(STORE_URL, env=env) as m:
        assert m.files() == other.desc["files"]
        check_store_views(m, other, originals, other.desc["files"][:4])
    base = tmp_path / "xdg" / "cltfs" / "hub" / "datasets--me--acts"
    assert sorted(os.listdir(base)) == sorted([c1, c2])


# ============================================== errors, tokens, access ==

def test_unknown_repo_fails(tmp_path, hub, mount_fails):
    rc, out = mount_fails("hf://datasets/me/nothing", env=hf_env(tmp_path, hub))
    assert rc != 0 and "not found" in out.lower(), out
    rc, out = mount_fails("hf://datasets/me/nothing", env=hf_env(tmp_path, hub, HF_TOKEN=TOKEN))
    assert rc != 0 and "not found" in out.lower(), out
    assert_no_token(out)


def test_unknown_revision_fails(tmp_path, hub, mount_fails):
    hub.add_repo(PLAIN_REPO, {"a.txt": b"a"})
    rc, out = mount_fails(PLAIN_URL + "@nope", env=hf_env(tmp_path, hub))
    assert rc != 0 and "revision" in out.lower(), out
    rc, out = mount_fails(PLAIN_URL + "@" + "0" * 40, env=hf_env(tmp_path, hub))
    assert rc != 0 and "revision" in out.lower(), out


@pytest.mark.parametrize("url", ["hf://datasets/onlyone", "hf://datasets/", "hf://datasets/a/b/c"])
def test_bad_url_fails(tmp_path, hub, mount_fails, url):
    rc, out = mount_fails(url, env=hf_env(tmp_path, hub))
    assert rc != 0 and out.strip(), out
    assert "hf://" in out, out
    assert not hub.log, "a bad URL reached the Hub: %s" % hub.log


def test_gated_repo_needs_token(tmp_path, hub, stores, mount, mount_fails, originals):
    imp, commit = add_store(hub, stores, gated=True)
    rc, out = mount_fails(STORE_URL, env=hf_env(tmp_path, hub))
    assert rc != 0 and "HF_TOKEN" in out, out
    hub.clear_log()
    env = hf_env(tmp_path, hub, HF_TOKEN=TOKEN)
    with mount(STORE_URL, env=env) as m:
        check_store_views(m, imp, originals, imp.desc["files"][:6])
        log = m.log()
    assert_no_token(log, "the daemon's log")
    hub_reqs = [e for e in hub.log if e["server"] == "hub"]
    cdn_reqs = [e for e in hub.log if e["server"] == "cdn"]
    assert hub_reqs and cdn_reqs
    assert all(e["auth"] == "Bearer " + TOKEN for e in hub_reqs), hub_reqs[:3]
    assert all(e["auth"] is None for e in cdn_reqs), cdn_reqs[:3]


def test_private_repo_token_from_hf_home(tmp_path, hub, plain_dir, mount, mount_fails):
    """A private repo: not found without a token; $HF_HOME/token is read
    when HF_TOKEN is unset."""
    src, files = plain_dir
    hub.add_repo(PLAIN_REPO, src, private=True)
    env = hf_env(tmp_path, hub)
    rc, out = mount_fails(PLAIN_URL, env=env)
    assert rc != 0 and "not found" in out.lower(), out
    (tmp_path / "hf").mkdir(exist_ok=True)
    (tmp_path / "hf" / "token").write_text(TOKEN + "\n")
    with mount(PLAIN_URL, env=env) as m:
        for rel in ("sample_0001.pt", "sub/sample_0003.pt"):
            assert read_all(m.p(rel)) == files[rel]
        log = m.log()
    assert_no_token(log, "the daemon's log")
    assert all(e["auth"] == "Bearer " + TOKEN for e in hub.log if e["server"] == "hub"
               and e["status"] != 401)
    assert all(e["auth"] is None for e in hub.log if e["server"] == "cdn")


@pytest.mark.parametrize("how", ["HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"])
def test_private_repo_token_as_huggingface_hub_finds_it(tmp_path, hub, plain_dir, mount, how):
    """huggingface_hub's other token sources: the variable's older name,
    and a token file named by HF_TOKEN_PATH."""
    src, files = plain_dir
    hub.add_repo(PLAIN_REPO, src, private=True)
    if how == "HF_TOKEN_PATH":
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "hf").write_text(TOKEN + "\n")
        env = hf_env(tmp_path, hub, HF_TOKEN_PATH=str(tmp_path / "secrets" / "hf"))
    else:
        env = hf_env(tmp_path, hub, HUGGING_FACE_HUB_TOKEN=TOKEN)
    with mount(PLAIN_URL, env=env) as m:
        assert read_all(m.p("sample_0001.pt")) == files["sample_0001.pt"]
        assert_no_token(m.log(), "the daemon's log")


def test_token_never_in_output(tmp_path, hub, stores, run_cltfs, mount_fails):
    """Failing runs with a token set do not print it."""
    add_store(hub, stores)
    env = hf_env(tmp_path, hub, HF_TOKEN=TOKEN, CLTFS_HUB_RETRIES=0)
    hub.add_fault(r"/revision/", "500", count=100, server="hub")
    rc, out = mount_fails(STORE_URL, env=env)
    assert rc != 0 and "500" in out, out
    assert_no_token(out)
    hub.clear_faults()
    env_bad = dict(env, HF_TOKEN="hf_wrong_secret")
    rc, out = mount_fails(STORE_URL, env=env_bad)
    assert rc != 0 and out.strip()
    assert "hf_wrong_secret" not in out, out
    r = run_cltfs("pull", STORE_URL + "@nope", str(tmp_path / "s"), env=env)
    assert r.returncode != 0
    assert_no_token(r.stdout + r.stderr)


# ================================================= tiers behind a store ==

def test_local_store_falls_back_to_hub(tmp_path, hub, stores, mount, mount_fails, originals):
    """-o hub=URL puts a Hub store repo behind a local store: what the local
    store lacks is fetched and kept, so a later mount of it alone, offline,
    serves everything.  A store of another dataset is refused at mount."""
    imp, commit = add_store(hub, stores)
    local = tmp_path / "local"
    (local / "packs").mkdir(parents=True)
    for name in ("cltfs.json", "samples.bin"):  # the manifest alone, no chunk
        with open(os.path.join(imp.store, name), "rb") as f, open(local / name, "wb") as g:
            g.write(f.read())
    env = hf_env(tmp_path, hub)
    with mount(str(local), "hub=" + STORE_URL, env=env) as m:
        check_store_views(m, imp, originals)
        st = m.stats()
    # (frames a reader went past are kept at once, and read back from the store)
    assert st["chunks"]["hub"] > 0 and st["errors"] == 0, st
    hub.stop()
    with mount(str(local), env=hf_env(tmp_path, hub, HF_HUB_OFFLINE=1)) as m:
        check_store_views(m, imp, originals)
        st = m.stats()
    assert st["chunks"]["store"] > 0 and "hub" not in st["chunks"], st
    other = stores.get("s2_padded").store
    hub.start()  # on new ports
    rc, out = mount_fails(other, "hub=" + STORE_URL, env=hf_env(tmp_path, hub))
    assert rc == 1 and "holds another dataset" in out, out


# ====================== one HF cache, shared with huggingface_hub 0.24-1.x ==
# tests/hfemu.py writes and reads the cache as each version's source does.

def hub_cache(tmp_path):
    return tmp_path / "hf" / "hub"


def spawn_mount(cltfs_bin, url, mnt, env, *opts):
    """A daemon of our own (`cltfs URL MNT -f`), for a test that kills it:
    the Popen once mounted."""
    import subprocess
    os.makedirs(mnt, exist_ok=True)
    cmd = [cltfs_bin, url, str(mnt), "-f"] + (["-o", ",".join(opts)] if opts else [])
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while not is_mounted(str(mnt)):
        assert p.poll() is None and time.monotonic() < deadline, "mount failed: %s" % cmd
        time.sleep(0.01)
    return p


def kill_mount(p, mnt):
    """kill -9 of the daemon, then the dead mount detached."""
    from conftest import unmount
    p.kill()
    p.wait()
    unmount(str(mnt))


@pytest.mark.parametrize("ver", VERSIONS)
def test_hf_snapshot_packs_served_offline(tmp_path, hub, stores, mount, originals, ver):
    """A store repo that huggingface_hub's snapshot_download put in the
    cache: a mount with HF_HUB_OFFLINE=1 and the Hub down reads every frame
    from the pack blobs (checked as fetched frames are) and serves every
    view; nothing is copied into the local store."""
    imp, commit = add_store(hub, stores)
    snap = Hf(ver, hub_cache(tmp_path), hub.endpoint).snapshot_download(STORE_REPO)
    assert sorted(os.listdir(os.path.join(snap, "packs"))) == sorted(os.listdir(os.path.join(imp.store, "packs")))
    hub.stop()
    local = tmp_path / "local"
    with mount(STORE_URL, "store=%s" % local, env=hf_env(tmp_path, hub, HF_HUB_OFFLINE=1)) as m:
        check_store_views(m, imp, originals)
        st = m.stats()
    assert st["errors"] == 0 and st["hub"]["requests"] == 0, st
    assert st["hub"]["blob_frames"] == st["chunks"]["hub"] > 0, st
    assert all(os.path.getsize(p) <= 16 for p in glob.glob(str(local / "packs" / "*.pack"))), \
        "frames of the blobs were copied into the local store"


@pytest.mark.parametrize("ver", VERSIONS)
def test_hf_snapshot_packs_not_fetched_again(tmp_path, hub, stores, mount, originals, ver):
    """Online too: a pack whose blob is whole in the cache is never asked
    of the Hub or the CDN."""
    imp, commit = add_store(hub, stores)
    Hf(ver, hub_cache(tmp_path), hub.endpoint).snapshot_download(STORE_REPO, revision=commit)
    hub.clear_log()
    with mount(STORE_URL, env=hf_env(tmp_path, hub)) as m:
        check_store_views(m, imp, originals)
        st = m.stats()
    pack_reqs = [e for e in hub.log if is_pack_request(e, shas=pack_sha256(imp))]
    assert not pack_reqs, pack_reqs[:3]
    assert st["hub"]["blob_frames"] == st["chunks"]["hub"] > 0 and st["errors"] == 0, st


def test_hf_snapshot_during_mount(tmp_path, hub, stores, mount, originals):
    """A snapshot_download that completes while a mount runs: the views read
    after it come from the pack blobs, without a request for a pack."""
    imp, commit = add_store(hub, stores)
    rels = imp.desc["files"]
    shas = pack_sha256(imp)
    with mount(STORE_URL, "readahead=0", env=hf_env(tmp_path, hub)) as m:
        check_store_views(m, imp, originals, rels[:1])
        assert [e for e in hub.log if is_pack_request(e, shas=shas)]
        Hf("1.28", hub_cache(tmp_path), hub.endpoint).snapshot_download(STORE_REPO)
        hub.clear_log()
        check_store_views(m, imp, originals, rels[1:])
        st = m.stats()
    assert not [e for e in hub.log if is_pack_request(e, shas=shas)]
    assert st["hub"]["blob_frames"] > 0 and st["errors"] == 0, st


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_hf_blob_damaged(tmp_path, hub, stores, mount, originals, damage):
    """A pack blob with a flipped byte: the frames it spoils are fetched from
    the Hub (and the mount says why), the others read from the blob.  A blob
    of another size than the listing's is not used at all."""
    imp, commit = add_store(hub, stores)
    Hf("1.28", hub_cache(tmp_path), hub.endpoint).snapshot_download(STORE_REPO)
    blobs = {s: repo_folder(tmp_path, STORE_REPO) / "blobs" / s for s in pack_sha256(imp)}
    big = max(blobs.values(), key=os.path.getsize)
    size = os.path.getsize(big)
    with open(big, "r+b") as f:
        if damage == "flip":
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x40]))
        else:
            f.truncate(size - 1)
    hub.clear_log()
    with mount(STORE_URL, env=hf_env(tmp_path, hub)) as m:
        check_store_views(m, imp, originals)
        st = m.stats()
        log = m.log()
    assert st["errors"] == 0, st
    sha = os.path.basename(big)
    fetched = [e for e in hub.log if e["server"] == "cdn" and e["path"].startswith("/blobs/" + sha)]
    assert fetched, "no frame of the damaged blob was fetched"
    if damage == "flip":
        assert "zstd" in log and "fetching it from " + STORE_URL in log, log
        assert 0 < st["hub"]["blob_frames"] < st["chunks"]["hub"], st
    else:
        others = [e for e in hub.log if e["server"] == "cdn" and not e["path"].startswith("/blobs/" + sha)]
        assert not others, others[:3]
        assert st["hub"]["frames"] > 0 and st["hub"]["blob_frames"] < st["chunks"]["hub"], st


def test_pull_offline_from_hf_snapshot(tmp_path, hub, stores, run_cltfs, mount, originals):
    """`cltfs pull` with HF_HUB_OFFLINE=1 copies the frames of the pack
    blobs huggingface_hub downloaded, each checked, into a store that
    verifies."""
    imp, commit = add_store(hub, stores)
    Hf("0.36", hub_cache(tmp_path), hub.endpoint).snapshot_download(STORE_REPO)
    hub.stop()
    pull_serves(run_cltfs, mount, str(tmp_path / "pulled"), hf_env(tmp_path, hub, HF_HUB_OFFLINE=1), imp, originals)


def test_hf_offline_snapshot_of_cltfs_cache(tmp_path, hub, plain_dir, mount):
    """A cache that cltfs filled has what huggingface_hub 1.x reads
    offline: trees/<commit>.json (format_version 1, every file with its
    size and blob id, LFS files with their sha256 and size) and
    hub/CACHEDIR.TAG; so every version's offline snapshot_download, of the
    commit and of the branch, returns the snapshot, and 1.x still tells a
    partial snapshot from a complete one."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        some = sorted(files)[:2]
        for rel in some:
            assert read_all(m.p(rel)) == files[rel]
    folder = repo_folder(tmp_path, PLAIN_REPO)
    with open(folder / "trees" / (commit + ".json")) as f:
        tree = json.load(f)
    assert tree["format_version"] == 1 and sorted(tree["files"]) == sorted(files), tree
    for rel, data in files.items():
        ent = tree["files"][rel]
        assert ent["size"] == len(data) and ent["blob_id"] == git_blob_sha1(data), (rel, ent)
        if len(data) >= LFS_THRESHOLD:
            assert ent["lfs_sha256"] == hashlib.sha256(data).hexdigest() and ent["lfs_size"] == len(data), ent
        else:
            assert "lfs_sha256" not in ent and "lfs_size" not in ent, ent
    with open(hub_cache(tmp_path) / "CACHEDIR.TAG") as f:
        assert f.read().startswith("Signature: 8a477f597d28d172789f06886806bc55\n")
    hub.stop()
    new = Hf("1.28", hub_cache(tmp_path), hub.endpoint, offline=True)
    with pytest.raises(LocalEntryNotFoundError):   # the files cltfs did not read
        new.snapshot_download(PLAIN_REPO, revision=commit)
    with pytest.raises(IncompleteSnapshotError):
        new.snapshot_download(PLAIN_REPO, revision="main")
    hub.start()
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        for rel in files:
            assert read_all(m.p(rel)) == files[rel]
    hub.stop()
    for ver in VERSIONS:
        hf = Hf(ver, hub_cache(tmp_path), hub.endpoint, offline=True)
        for rev in (commit, "main"):
            snap = hf.snapshot_download(PLAIN_REPO, revision=rev)
            assert snap == str(folder / "snapshots" / commit), (ver, rev, snap)
            for rel, data in files.items():
                assert read_all(os.path.join(snap, rel)) == data, (ver, rev, rel)


def test_hf_offline_snapshot_of_store_metadata(tmp_path, hub, stores, mount, originals):
    """After a mount of a store repo, huggingface_hub 1.x's offline
    snapshot_download of the commit's metadata (manifest, sample table,
    indexes) is served from the cache cltfs filled."""
    imp, commit = add_store(hub, stores)
    with mount(STORE_URL, env=hf_env(tmp_path, hub)) as m:
        check_store_views(m, imp, originals, imp.desc["files"][:1])
    hub.stop()
    hf = Hf("1.28", hub_cache(tmp_path), hub.endpoint, offline=True)
    snap = hf.snapshot_download(STORE_REPO, revision=commit,
                                allow_patterns=["cltfs.json", "samples.bin", "packs/*.idx"])
    for rel in ["cltfs.json", "samples.bin"] + ["packs/" + p[:-5] + ".idx" for p in pack_names(imp)]:
        assert read_all(os.path.join(snap, rel)) == read_all(os.path.join(imp.store, rel)), rel


@pytest.mark.parametrize("left", ["1.28", "both"])
def test_resume_partial_of_new_hf(tmp_path, hub, plain_dir, mount, left):
    """huggingface_hub >= 1.18 killed mid-download leaves
    blobs/<etag>.<uuid>.incomplete (and never resumes it): cltfs resumes
    from it, or from the longer of it and an older <etag>.incomplete, and
    leaves no partial behind."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    rel = "big/sample_0005.pt"
    data = files[rel]
    sha = hashlib.sha256(data).hexdigest()
    blobs = repo_folder(tmp_path, PLAIN_REPO) / "blobs"
    half = len(data) // 2
    with pytest.raises(Killed):
        Hf("1.28", hub_cache(tmp_path), hub.endpoint).hf_hub_download(PLAIN_REPO, rel, kill_after=half)
    parts = glob.glob(str(blobs / (sha + ".*.incomplete")))
    assert len(parts) == 1 and os.path.getsize(parts[0]) == half, parts
    if left == "both":
        (blobs / (sha + ".incomplete")).write_bytes(data[:1000])
    hub.clear_log()
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        assert read_all(m.p(rel)) == data
    assert_resumed(hub, data, half)
    check_hf_cache(repo_folder(tmp_path, PLAIN_REPO), commit, {rel: data}, want_blobs=[sha])


@pytest.mark.parametrize("rel", ["big/sample_0005.pt", "sample_0001.pt"])
def test_resumed_bytes_checked(tmp_path, hub, plain_dir, mount, rel):
    """A partial download whose bytes are not the file's (its blob's sha256,
    or git sha1 for a small file, says so once complete) is downloaded again
    from the start: the reader gets the right bytes, the cache the right
    blob."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    data = files[rel]
    etag = etag_of(data)
    blobs = repo_folder(tmp_path, PLAIN_REPO) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / (etag + ".incomplete")).write_bytes(bytes(len(data) // 2))
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        assert read_all(m.p(rel)) == data
        assert "downloading it again from the start" in m.log()
    check_hf_cache(repo_folder(tmp_path, PLAIN_REPO), commit, {rel: data}, want_blobs=[etag])


def test_killed_cltfs_partial_removed(tmp_path, hub, plain_dir, cltfs_bin, mount):
    """cltfs killed mid-download leaves blobs/<etag>.incomplete, which
    huggingface_hub >= 1.18 never looks at: it downloads the blob itself.
    The next cltfs start removes the partial, under the blob's lock."""
    src, files = plain_dir
    commit = hub.add_repo(PLAIN_REPO, src)
    rel = "big/sample_0005.pt"
    data = files[rel]
    sha = hashlib.sha256(data).hexdigest()
    part = repo_folder(tmp_path, PLAIN_REPO) / "blobs" / (sha + ".incomplete")
    # the first body is cut after 300000 bytes, and the retry waits 30 s
    hub.add_fault(r"^/blobs/", "truncate", count=100, after_bytes=300000, server="cdn")
    env = hf_env(tmp_path, hub, CLTFS_HUB_BACKOFF_MS=30000)
    mnt = tmp_path / "killed"
    p = spawn_mount(cltfs_bin, PLAIN_URL, mnt, env)
    try:
        fd = os.open(str(mnt / rel), os.O_RDONLY)   # starts the download
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size == 300000):
            assert time.monotonic() < deadline, "no partial download"
            time.sleep(0.02)
    finally:
        kill_mount(p, mnt)
    try:
        os.close(fd)
    except OSError:
        pass
    hub.clear_faults()
    Hf("1.28", hub_cache(tmp_path), hub.endpoint).hf_hub_download(PLAIN_REPO, rel)
    assert part.exists(), "huggingface_hub 1.28 does not remove it"
    with mount(PLAIN_URL, env=hf_env(tmp_path, hub)) as m:
        assert read_all(m.p(rel)) == data
    check_hf_cache(repo_folder(tmp_path, PLAIN_REPO), commit, {rel: data}, want_blobs=[sha])
