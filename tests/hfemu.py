"""What huggingface_hub writes into its cache and reads back from it, as
versions 0.24.7, 0.36.2 and 1.28.0 do (huggingface_hub is not installable
here), for the tests of cltfs's sharing of that cache.  Only the cache
side is emulated, step by step as their sources do it
(src/huggingface_hub/{file_download.py, _snapshot_download.py,
_tree_cache.py, _local_folder.py}); the HTTP side is plain urllib against
tests/hubserver.py.

    hf = Hf("1.28", hub_cache, endpoint, offline=False)
    hf.snapshot_download("me/acts", revision="main")      -> snapshot folder
    hf.hf_hub_download("me/acts", "packs/x.pack", kill_after=1000)   raises Killed

Where the versions differ:
  download   0.24, 0.36: blobs/<etag>.incomplete, opened "ab", resumed with
             Range: bytes=<its size>-, renamed to blobs/<etag>.
             1.28 (from 1.18): blobs/<etag>.<uuid4 hex[:8]>.incomplete, "wb",
             never resumed, unlinked when the download fails (a kill -9
             leaves it); hub/CACHEDIR.TAG written before each download.
  listing    0.24, 0.36: repo_info's siblings.  1.28 (from 1.22):
             trees/<commit>.json (format_version 1) read first, else the
             /tree listing, then written there.
  offline    0.24, 0.36: the snapshot folder of the commit (a commit
             revision, or refs/<rev>) is returned as it is.
             1.28: a commit revision reads trees/<commit>.json (without it:
             OfflineModeIsEnabled from the /tree call) and then needs every
             listed file in the snapshot (LocalEntryNotFoundError); a branch
             resolved through refs/ returns the snapshot, checked against
             trees/<commit>.json when there is one (IncompleteSnapshotError).
"""

import fnmatch
import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote

VERSIONS = ("0.24", "0.36", "1.28")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
CACHEDIR_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                "# This file is a cache directory tag created by huggingface_hub.\n"
                "# For information about cache directory tags, see:\n"
                "#\thttps://bford.info/cachedir/\n")


class OfflineModeIsEnabled(Exception):
    pass


class LocalEntryNotFoundError(Exception):
    pass


class IncompleteSnapshotError(Exception):
    pass


class Killed(Exception):
    """The process died here (kill -9): nothing after it ran."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def repo_folder_name(repo_id, repo_type="dataset"):
    return "--".join([repo_type + "s"] + repo_id.split("/"))


def _flock(path):
    import fcntl
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)    # filelock.FileLock on Unix: flock
    return fd


def _xet_ok(h):
    return h is None or bool(re.fullmatch(r"[0-9a-fA-F]{64}", h))   # utils/_xet.is_valid_xet_hash


class Hf:
    def __init__(self, version, hub_cache, endpoint, offline=False):
        assert version in VERSIONS, version
        self.v, self.cache, self.endpoint, self.offline = version, str(hub_cache), endpoint, offline
        self.new = version == "1.28"

    # ---- HTTP ----
    def _get(self, url, headers=None, method="GET"):
        if self.offline:
            raise OfflineModeIsEnabled(url)
        req = urllib.request.Request(url, headers=headers or {}, method=method)
        try:
            return _opener.open(req, timeout=60)
        except urllib.error.HTTPError as e:
            if e.code in (301, 302, 307):
                return e
            raise

    def _json(self, url):
        with self._get(url) as r:
            return json.loads(r.read())

    # ---- the cache layout ----
    def folder(self, repo_id, repo_type="dataset"):
        return os.path.join(self.cache, repo_folder_name(repo_id, repo_type))

    def tree_cache(self, folder, commit):
        """_tree_cache.read_tree_cache: None when absent or not valid."""
        try:
            with open(os.path.join(folder, "trees", commit + ".json"), encoding="utf-8") as f:
                data = json.load(f)
            if data.get("format_version") != 1:
                return None
            ents = {p: dict(size=i["size"], blob_id=i["blob_id"], lfs_sha256=i.get("lfs_sha256"),
                            lfs_size=i.get("lfs_size"), xet_hash=i.get("xet_hash"))
                    for p, i in data["files"].items()}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return ents if all(_xet_ok(e["xet_hash"]) for e in ents.values()) else None

    def _write_tree_cache(self, folder, commit, ents):
        path = os.path.join(folder, "trees", commit + ".json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format_version": 1, "files": {p: ents[p] for p in sorted(ents)}}, f, indent=1)
        os.replace(tmp, path)

    def _tag(self):
        tag = os.path.join(self.cache, "CACHEDIR.TAG")
        if not os.path.exists(tag):
            with open(tag, "w") as f:
                f.write(CACHEDIR_TAG)

    @staticmethod
    def _ref(folder, revision, commit):
        if revision != commit:
            path = os.path.join(folder, "refs", revision)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(commit)

    # ---- hf_hub_download ----
    def hf_hub_download(self, repo_id, filename, repo_type="dataset", revision="main", kill_after=None):
        folder = self.folder(repo_id, repo_type)
        if COMMIT.match(revision):
            pointer = os.path.join(folder, "snapshots", revision, filename)
            if os.path.exists(pointer):
                return pointer
        if self.offline:
            raise LocalEntryNotFoundError("%s: not in the cache and HF_HUB_OFFLINE is set" % filename)
        prefix = "" if repo_type == "model" else repo_type + "s/"
        url = "%s/%s%s/resolve/%s/%s" % (self.endpoint, prefix, repo_id, quote(revision, safe=""),
                                         quote(filename))
        with self._get(url, method="HEAD") as r:
            h = r.headers
        commit = h["X-Repo-Commit"]
        etag = (h.get("X-Linked-Etag") or h["ETag"]).replace("W/", "").strip('"')
        size = int(h.get("X-Linked-Size") or h["Content-Length"])
        location = h.get("Location") or url
        blob = os.path.join(folder, "blobs", etag)
        pointer = os.path.join(folder, "snapshots", commit, filename)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        os.makedirs(os.path.dirname(pointer), exist_ok=True)
        if self.new:
            self._tag()
        self._ref(folder, revision, commit)
        lock = _flock(os.path.join(self.cache, ".locks", os.path.basename(folder), etag + ".lock"))
        try:
            if not os.path.exists(blob):
                self._download(location, blob, size, kill_after)
            if not os.path.exists(pointer):
                rel = os.path.relpath(blob, os.path.dirname(pointer))
                os.symlink(rel, pointer)
        finally:
            os.close(lock)
        return pointer

    def _download(self, url, blob, size, kill_after):
        if self.new:
            part = "%s.%s.incomplete" % (blob, uuid.uuid4().hex[:8])
            mode, have = "wb", 0
        else:
            part = blob + ".incomplete"
            mode = "ab"
            have = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            with open(part, mode) as f:
                hdr = {"Range": "bytes=%d-" % have} if have else {}
                if have < size:
                    with self._get(url, hdr) as r:
                        while True:
                            b = r.read(1 << 16)
                            if not b:
                                break
                            if kill_after is not None and f.tell() + len(b) >= kill_after:
                                f.write(b[:max(0, kill_after - f.tell())])
                                f.flush()
                                raise Killed(part)
                            f.write(b)
                if f.tell() != size:    # http_get's "Consistency check failed"
                    raise OSError("%s: %d bytes of %d arrived" % (url, f.tell(), size))
            os.replace(part, blob)
        except Killed:
            raise
        except BaseException:
            if self.new:      # 1.18+: `finally: tmp_path.unlink(missing_ok=True)`
                os.unlink(part)
            raise

    # ---- snapshot_download ----
    def _listing(self, repo_id, repo_type, folder, commit):
        base = "%s/api/%ss/%s" % (self.endpoint, repo_type, repo_id)
        if not self.new:      # repo_info(revision).siblings
            return {s["rfilename"]: None for s in self._json("%s/revision/%s" % (base, commit))["siblings"]}
        ents = self.tree_cache(folder, commit)
        if ents is not None:
            return ents
        ents, url = {}, "%s/tree/%s?recursive=true&expand=false" % (base, commit)
        while url:
            with self._get(url) as r:
                page, link = json.loads(r.read()), r.headers.get("Link")
            for e in page:
                if e["type"] == "file":
                    lfs = e.get("lfs")
                    ents[e["path"]] = dict(size=e["size"], blob_id=e["oid"],
                                           lfs_sha256=lfs["oid"] if lfs else None,
                                           lfs_size=lfs["size"] if lfs else None, xet_hash=e.get("xetHash"))
            m = re.search(r'<([^>]+)>;\s*rel="next"', link or "")
            url = m.group(1) if m else None
        self._write_tree_cache(folder, commit, {p: {k: v for k, v in e.items() if v is not None}
                                               for p, e in ents.items()})
        return ents

    def snapshot_download(self, repo_id, repo_type="dataset", revision="main", allow_patterns=None):
        folder = self.folder(repo_id, repo_type)
        commit = revision if (self.new and COMMIT.match(revision)) else None
        err = None
        if commit is None:
            try:
                url = "%s/api/%ss/%s/revision/%s" % (self.endpoint, repo_type, repo_id, quote(revision, safe=""))
                commit = self._json(url)["sha"]
            except OfflineModeIsEnabled as e:
                err = e
        if commit is None:    # the local-files branch
            if COMMIT.match(revision):
                commit = revision
            else:
                ref = os.path.join(folder, "refs", revision)
                if os.path.exists(ref):
                    with open(ref) as f:
                        commit = f.read()
            snap = os.path.join(folder, "snapshots", commit or "?")
            if commit and os.path.exists(snap):
                if self.new:
                    self._raise_if_incomplete(folder, commit, snap, allow_patterns)
                return snap
            raise LocalEntryNotFoundError("no snapshot for %s in the cache (%s)" % (revision, err))
        files = [p for p in self._listing(repo_id, repo_type, folder, commit)
                 if allow_patterns is None or any(fnmatch.fnmatch(p, a) for a in allow_patterns)]
        self._ref(folder, revision, commit)
        for p in files:
            self.hf_hub_download(repo_id, p, repo_type, revision=commit)
        return os.path.join(folder, "snapshots", commit)

    def _raise_if_incomplete(self, folder, commit, snap, allow_patterns):
        ents = self.tree_cache(folder, commit)
        if ents is None:
            return
        missing = [p for p in ents if (allow_patterns is None or any(fnmatch.fnmatch(p, a) for a in allow_patterns))
                   and not os.path.isfile(os.path.join(snap, p))]
        if missing:
            raise IncompleteSnapshotError("missing: %s" % missing[:3])


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
