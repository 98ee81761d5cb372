"""A fake Hugging Face Hub on 127.0.0.1 for cltfs's tests and benchmarks (Python stdlib only).

Two HTTP/1.1 keep-alive servers (ThreadingHTTPServer, daemon threads, quiet):
the Hub (API and resolve URLs) and a "CDN" that LFS downloads are redirected to.

Emulated, as huggingface_hub 0.24-0.36 sees the real huggingface.co:
  GET  /api/datasets/<owner>/<name>[/revision/<rev>][?blobs=true]   repo info
  GET  /api/datasets/<owner>/<name>/tree/<rev>[/<path>]?recursive=&expand=&cursor=
       file / directory entries sorted by path, `page_size` per page, Link rel="next"
  HEAD|GET /datasets/<owner>/<name>/resolve/<rev>/<path>
       small file: 200 + ETag "<git blob sha1>", Range -> 206/416
       LFS file (size >= lfs_threshold): 302 to the CDN, X-Linked-Etag "<sha256>", X-Linked-Size
       X-Repo-Commit on every answer once repo and revision are known (also 302 and 404)
  HEAD|GET <cdn>/blobs/<sha256>?sig=...   bytes, ETag, Range; no auth required (logs what it got)
  Model repos (repo_type="model": /api/models/..., /<owner>/<name>/resolve/...) work the same.
  rev: branch, tag or 40-hex commit, URL-encoded (%2F); an unencoded "a/b" branch also resolves.
  Errors carry X-Error-Code / X-Error-Message and a JSON body {"error": message}:
    unknown repo, or private repo without a valid token: RepoNotFound, 401 when the request
      has no valid token, 404 when it has one (the real Hub answers anonymous requests for a
      missing repo with 401 too, so that private repos cannot be told from missing ones);
    unknown revision: 404 RevisionNotFound "Invalid rev id: <rev>";
    missing path: 404 EntryNotFound "Entry not found" (resolve and tree);
    gated repo without a valid token: 401 GatedRepo on every route (info, tree, resolve);
    any Authorization header other than "Bearer <token>": 401 "Invalid credentials in
      Authorization header" without X-Error-Code, on every Hub route.
  Injected faults (Hub.add_fault): 429 + Retry-After, 500/502/503, truncated body then
  close, TCP reset (SO_LINGER 0) before any answer, slow body; a proxy's mistakes with
  ranges: "norange" answers a ranged GET 200 with the whole body (a Range header
  dropped), "shiftrange" 206 with bytes from 4096 earlier than asked, said so in its
  Content-Range.
  A repo renamed (Hub.rename): its old id answered 307 with a relative Location under
  the new one, on every route.
  A link's round trip (Hub(latency=s)): every request of either server is answered s
  seconds after it came, as a client far away sees it (the bytes then flow at once).

Not emulated: uploads/commits API, user accounts and gated-access approval (a valid
token simply grants access; the real Hub also serves the metadata of gated repos
anonymously and answers 403 to authenticated users who were not approved), xet
storage, multi-range requests (answered 200 with the whole body, as RFC 9110 allows),
If-None-Match / If-Range, Content-Encoding, spaces, short shas,
refs/pr/N, signed-URL expiry.

Memory: dict inputs keep their bytes in memory.  A directory input is hashed in
streaming fashion and served from disk (sendfile); it must stay unchanged while the
Hub serves it (nothing is copied).  With cdn_dir, LFS files are hard-linked (or copied
when linking fails) to <cdn_dir>/<sha256> for an external server (e.g. nginx) and
redirects point to <cdn_url>/<sha256>.

Usage:  from hubserver import Hub  (see class Hub), or as a script:
  python3 tests/hubserver.py --repo owner/name=DIR [--repo ...] [--port P] [--cdn-port Q]
      [--cdn-dir D --cdn-url URL] [--token T] [--lfs-threshold N] [--page-size N]
  prints {"endpoint": ..., "cdn_endpoint": ..., "commits": {"owner/name": sha}} and serves
  until SIGTERM/SIGINT.  `python3 tests/hubserver.py --selftest` checks this module (uses curl).
"""

import argparse
import base64
import bisect
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

CHUNK = 1 << 20
TRUE = ("true", "True", "1")
FAULT_KINDS = ("429", "500", "502", "503", "truncate", "reset", "slow", "norange", "shiftrange")
_HEX40 = re.compile(r"[0-9a-f]{40}\Z")


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _hdr(s):
    """A header-safe (latin-1) rendering of user-supplied text."""
    return s if s.isascii() and s.isprintable() else quote(s, safe="/ :")


class _File:
    """One file of a commit: bytes in memory (data) or a path on disk (src)."""
    __slots__ = ("path", "size", "oid", "sha256", "data", "src")

    def __init__(self, path, size, oid, sha256, data=None, src=None):
        self.path, self.size, self.oid, self.sha256 = path, size, oid, sha256
        self.data, self.src = data, src

    def entry(self):
        e = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.sha256:
            e["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return e


def _hash_path(src, threshold):
    size = os.path.getsize(src)
    g = hashlib.sha1(b"blob %d\0" % size)
    s = hashlib.sha256() if size >= threshold else None
    with open(src, "rb") as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            g.update(b)
            if s:
                s.update(b)
    return size, g.hexdigest(), s.hexdigest() if s else None


class _Commit:
    def __init__(self, sha, files, when):
        self.sha, self.files, self.when = sha, files, when
        dirs = set()
        for p in files:
            parts = p.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        self.dirs = dirs
        # directory oids: a git-like hash of the children, bottom-up
        kids = {d: [] for d in dirs | {""}}
        for f in files.values():
            kids[f.path.rpartition("/")[0]].append("%s %s" % (f.path.rpartition("/")[2], f.oid))
        dir_oid = {}
        for d in sorted(dirs, key=lambda d: -d.count("/")):
            dir_oid[d] = hashlib.sha1(("tree\0" + "\n".join(sorted(kids[d]))).encode()).hexdigest()
            kids[d.rpartition("/")[0]].append("%s %s" % (d.rpartition("/")[2], dir_oid[d]))
        ents = [f.entry() for f in files.values()]
        ents += [{"type": "directory", "oid": o, "size": 0, "path": d} for d, o in dir_oid.items()]
        ents.sort(key=lambda e: e["path"])
        self.entries = ents
        self.paths = [e["path"] for e in ents]
        self.children = {d: [] for d in dirs | {""}}
        for e in ents:
            self.children[e["path"].rpartition("/")[0]].append(e)

    def listing(self, path, recursive):
        """Entries under directory `path` ("" = root), or None if it is not a directory."""
        if path and path not in self.dirs:
            return None
        if not recursive:
            return self.children[path]
        if not path:
            return self.entries
        lo = bisect.bisect_left(self.paths, path + "/")
        hi = bisect.bisect_left(self.paths, path + "0")   # "0" follows "/"
        return self.entries[lo:hi]


class _Repo:
    def __init__(self, rid, rtype):
        self.id, self.type = rid, rtype
        self.branches, self.tags, self.commits = {}, {}, {}
        self.gated = self.private = False
        self.created = time.time()

    def resolve(self, rev):
        sha = self.branches.get(rev) or self.tags.get(rev)
        if sha is None and _HEX40.match(rev) and rev in self.commits:
            sha = rev
        return sha


class _Fault:
    def __init__(self, pattern, kind, count, retry_after, delay, after_bytes, server):
        if kind not in FAULT_KINDS:
            raise ValueError("unknown fault kind %r" % (kind,))
        if server not in ("hub", "cdn", "any"):
            raise ValueError("unknown server %r" % (server,))
        self.rx, self.kind, self.count = re.compile(pattern), kind, count
        self.retry_after, self.delay, self.after_bytes, self.server = retry_after, delay, after_bytes, server


class Hub:
    """The fake Hub.  Attributes: endpoint, cdn_endpoint (after start()), log (list of dicts:
    server, method, path, range, auth, status, bytes, fault), peak_inflight (the most
    requests answered at once since start or clear_log)."""

    def __init__(self, token="hf_test", lfs_threshold=1024, page_size=1000, cdn_dir=None,
                 cdn_url=None, port=0, cdn_port=0, latency=0.0):
        self.token, self.lfs_threshold, self.page_size = token, lfs_threshold, page_size
        self.latency = latency
        self.cdn_dir, self.cdn_url = cdn_dir, cdn_url
        self._ports = (port, cdn_port)
        self._lock = threading.RLock()
        self._repos, self._blobs, self._faults = {}, {}, []
        self._renamed = {}  # (type, old id) -> new id
        self._servers = []
        self._log_entries, self._inflight = [], 0
        self.peak_inflight = 0  # the most requests answered at once, of either server
        self._quiet = threading.Condition(self._lock)
        self.endpoint = self.cdn_endpoint = None

    # ---- lifecycle
    def start(self):
        for role, port in zip(("hub", "cdn"), self._ports):
            srv = _Server(("127.0.0.1", port), self, role)
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                             daemon=True, name="hub-" + role).start()
            self._servers.append(srv)
        self.endpoint = "http://127.0.0.1:%d" % self._servers[0].server_address[1]
        self.cdn_endpoint = "http://127.0.0.1:%d" % self._servers[1].server_address[1]
        return self

    def stop(self):
        """Stop both servers and cut their open (keep-alive) connections."""
        for srv in self._servers:
            srv.shutdown()
            with srv.conns_lock:
                conns = list(srv.conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            srv.server_close()
        self._servers = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- content
    def add_repo(self, repo_id, files, branch="main", gated=False, private=False, repo_type="dataset"):
        """New commit on `branch` holding exactly `files` ({path: bytes} or a directory);
        returns its sha.  gated/private apply to the whole repo (last call wins)."""
        if repo_id.count("/") != 1 or "" in repo_id.split("/"):
            raise ValueError("repo id must be owner/name: %r" % (repo_id,))
        if repo_type not in ("dataset", "model"):
            raise ValueError("repo_type must be dataset or model")
        out = {}
        if isinstance(files, dict):
            for p, data in files.items():
                p = p.strip("/")
                if isinstance(data, str):
                    data = data.encode()
                data = bytes(data)
                sha256 = hashlib.sha256(data).hexdigest() if len(data) >= self.lfs_threshold else None
                out[p] = _File(p, len(data), git_blob_sha1(data), sha256, data=data)
        else:
            root = Path(files)
            if not root.is_dir():
                raise ValueError("not a directory: %s" % root)
            srcs = {}
            for dp, _dns, fns in os.walk(root):
                for fn in fns:
                    full = os.path.join(dp, fn)
                    srcs[Path(full).relative_to(root).as_posix()] = os.path.abspath(full)
            with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
                hashes = ex.map(lambda s: _hash_path(s, self.lfs_threshold), srcs.values())
                for (p, src), (size, oid, sha256) in zip(srcs.items(), hashes):
                    out[p] = _File(p, size, oid, sha256, src=src)
        for p in out:
            if any(s in ("", ".", "..") for s in p.split("/")):
                raise ValueError("bad path %r" % (p,))
        if self.cdn_dir:
            os.makedirs(self.cdn_dir, exist_ok=True)
            for f in out.values():
                if f.sha256:
                    self._to_cdn_dir(f)
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                repo = self._repos[(repo_type, repo_id)] = _Repo(repo_id, repo_type)
            repo.gated, repo.private = gated, private
            parent = repo.branches.get(branch) or ""
            h = hashlib.sha1(("fake commit\nrepo %s/%s\nparent %s\n" % (repo_type, repo_id, parent)).encode())
            for p in sorted(out):
                h.update(b"%s\0%s\n" % (p.encode(), out[p].oid.encode()))
            sha = h.hexdigest()
            repo.commits[sha] = _Commit(sha, out, time.time())
            repo.branches[branch] = sha
            for f in out.values():
                if f.sha256:
                    self._blobs.setdefault(f.sha256, f)
        return sha

    def _to_cdn_dir(self, f):
        dst = os.path.join(self.cdn_dir, f.sha256)
        if os.path.exists(dst):
            return
        tmp = "%s.tmp%d.%d" % (dst, os.getpid(), threading.get_ident())
        if f.data is not None:
            with open(tmp, "wb") as o:
                o.write(f.data)
        else:
            try:
                os.link(f.src, tmp)
            except OSError:
                shutil.copyfile(f.src, tmp)
        os.replace(tmp, dst)

    def add_tag(self, repo_id, tag, commit, repo_type="dataset"):
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            if commit not in repo.commits:
                commit = repo.resolve(commit)
            if commit is None:
                raise ValueError("unknown commit")
            repo.tags[tag] = commit

    def rename(self, old_id, new_id, repo_type="dataset"):
        """Move a repo to a new id, as renaming it on the Hub does: a request
        under the old id is answered 307 with a relative Location under the
        new one."""
        with self._lock:
            self._repos[(repo_type, new_id)] = self._repos.pop((repo_type, old_id))
            self._renamed[(repo_type, old_id)] = new_id

    def lfs_location(self, sha256):
        if self.cdn_url:
            return "%s/%s" % (self.cdn_url.rstrip("/"), sha256)
        sig = hashlib.sha1(b"fakehub-sig:" + sha256.encode()).hexdigest()[:20]
        return "%s/blobs/%s?Expires=4102444800&sig=%s" % (self.cdn_endpoint, sha256, sig)

    # ---- faults and log
    def add_fault(self, pattern, kind, count=1, retry_after=None, delay=None, after_bytes=None, server="any"):
        f = _Fault(pattern, str(kind), count, retry_after, delay, after_bytes, server)
        with self._lock:
            self._faults.append(f)

    def faults_left(self):
        with self._lock:
            return sum(f.count for f in self._faults)

    def clear_faults(self):
        with self._lock:
            self._faults.clear()

    def _take_fault(self, server, path):
        with self._lock:
            for f in self._faults:
                if f.server in ("any", server) and f.rx.search(path):
                    f.count -= 1
                    if f.count <= 0:
                        self._faults.remove(f)
                    return f
        return None

    # A request is logged after its last byte is sent, so a client can have
    # the whole response before its entry exists.  Reading or clearing the
    # log first waits (up to 5 s) until no request is being answered.
    def _begin(self):
        with self._lock:
            self._inflight += 1
            self.peak_inflight = max(self.peak_inflight, self._inflight)

    def _log(self, entry):
        with self._lock:
            self._log_entries.append(entry)
            self._inflight -= 1
            self._quiet.notify_all()

    def _settle(self):
        self._quiet.wait_for(lambda: self._inflight == 0, timeout=5.0)

    @property
    def log(self):
        with self._lock:
            self._settle()
            return list(self._log_entries)

    def clear_log(self):
        with self._lock:
            self._settle()
            del self._log_entries[:]
            self.peak_inflight = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr, hub, role):
        self.hub, self.role = hub, role
        self.conns, self.conns_lock = set(), threading.Lock()
        super().__init__(addr, _Handler)

    def server_bind(self):   # skip HTTPServer's getfqdn() (a DNS lookup)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    # Headers and body go out in two writes: with Nagle on, the body waits
    # for the client's delayed ACK (~40 ms per answer on a kept-alive connection).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)

    def handle(self):
        try:
            super().handle()
        except OSError:       # the client went away
            pass

    def do_GET(self):
        hub, role = self.server.hub, self.server.role
        hub._begin()
        if hub.latency:
            time.sleep(hub.latency)
        self._status = self._sent = 0
        self._started = False
        fault = hub._take_fault(role, self.path.split("?", 1)[0])
        self._fault = fault
        try:
            if fault is None or fault.kind in ("truncate", "slow", "norange", "shiftrange"):
                self._send(*(self._hub() if role == "hub" else self._cdn()))
            elif fault.kind == "reset":
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()     # RST, no FIN: the server's later shutdown() fails quietly
            elif fault.kind == "429":
                ra = str(fault.retry_after if fault.retry_after is not None else 1)
                self._send(429, [("Retry-After", ra)], b'{"error":"Too Many Requests"}')
            else:
                self._send(int(fault.kind), [], b'{"error":"Injected server error"}')
        except OSError:
            self.close_connection = True
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            if not self._started:
                try:
                    self._send(500, [], b'{"error":"fake hub bug"}')
                except OSError:
                    pass
        finally:
            hub._log({"server": role, "method": self.command, "path": self.path,
                      "range": self.headers.get("Range"), "auth": self.headers.get("Authorization"),
                      "status": self._status, "bytes": self._sent,
                      "fault": fault.kind if fault else None})

    do_HEAD = do_GET

    # ---- sending
    def _send(self, status, headers, body=b"", file=None):
        """file: (_File, offset, length) instead of body."""
        length = file[2] if file else len(body)
        self._status, self._started = status, True
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if not any(k.lower() == "content-type" for k, _ in headers):
            self.send_header("Content-Type", "application/json" if status >= 400 else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        f = self._fault
        limit = 0 if self.command == "HEAD" else length
        if f and f.kind == "truncate":
            limit = min(limit, length // 2 if f.after_bytes is None else f.after_bytes)
            self.close_connection = True
        if f and f.kind == "slow":
            time.sleep(2 if f.delay is None else f.delay)
        if not limit:
            return
        if file and file[0].src:
            with open(file[0].src, "rb") as fh:
                off = file[1]
                while self._sent < limit:
                    n = self.connection.sendfile(fh, off + self._sent, min(CHUNK, limit - self._sent))
                    if n == 0:
                        raise OSError("file shrank while served")
                    self._sent += n
        else:
            view = memoryview(file[0].data)[file[1]:file[1] + length] if file else memoryview(body)
            while self._sent < limit:
                n = min(65536, limit - self._sent)
                self.wfile.write(view[self._sent:self._sent + n])
                self._sent += n

    @staticmethod
    def _err(status, code, msg, headers=()):
        h = list(headers) + [("X-Error-Message", _hdr(msg))]
        if code:
            h.append(("X-Error-Code", code))
        return status, h, json.dumps({"error": msg}).encode()

    def _blob(self, f, etag, headers):
        """200/206/416 for the bytes of f."""
        h = list(headers) + [("ETag", '"%s"' % etag), ("Accept-Ranges", "bytes"),
                             ("Content-Type", "application/octet-stream")]
        rng = self.headers.get("Range")
        kind = self._fault.kind if self._fault else None
        if kind == "norange":
            rng = None
        m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", rng or "")
        if not m or m[1] == m[2] == "" or (m[1] and m[2] and int(m[2]) < int(m[1])):
            return 200, h, b"", (f, 0, f.size)     # no / unsupported Range: whole body
        if m[1] == "":
            start, end = max(0, f.size - int(m[2])), f.size - 1
            bad = int(m[2]) == 0 or f.size == 0
        else:
            start = int(m[1])
            end = min(int(m[2]) if m[2] else f.size - 1, f.size - 1)
            bad = start >= f.size
        if bad:
            return 416, h + [("Content-Range", "bytes */%d" % f.size)], b""
        if kind == "shiftrange":
            start = max(0, start - 4096)
        return 206, h + [("Content-Range", "bytes %d-%d/%d" % (start, end, f.size))], b"", \
            (f, start, end - start + 1)

    # ---- CDN
    def _cdn(self):
        segs = urlsplit(self.path).path.split("/")
        f = self.server.hub._blobs.get(segs[2]) if len(segs) == 3 and segs[1] == "blobs" else None
        if f is None:
            return 404, [("Content-Type", "application/xml")], b"<Error><Code>NoSuchKey</Code></Error>"
        return self._blob(f, f.sha256, [])

    # ---- Hub
    def _hub(self):
        hub = self.server.hub
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        segs = url.path.split("/")[1:]
        auth = self.headers.get("Authorization")
        authed = False
        if auth is not None:
            scheme, _, tok = auth.partition(" ")
            if hub.token is None or scheme.lower() != "bearer" or tok.strip() != hub.token:
                return self._err(401, None, "Invalid credentials in Authorization header")
            authed = True
        if len(segs) >= 4 and segs[0] == "api" and segs[1] in ("datasets", "models"):
            rtype, rid, op, rest = segs[1][:-1], unquote(segs[2]) + "/" + unquote(segs[3]), \
                (segs[4] if len(segs) > 4 else "revision"), segs[5:]
        elif len(segs) >= 4 and segs[0] == "datasets" and segs[3] == "resolve":
            rtype, rid, op, rest = "dataset", unquote(segs[1]) + "/" + unquote(segs[2]), "resolve", segs[4:]
        elif len(segs) >= 3 and segs[0] not in ("api", "datasets", "spaces") and segs[2] == "resolve":
            rtype, rid, op, rest = "model", unquote(segs[0]) + "/" + unquote(segs[1]), "resolve", segs[3:]
        else:
            return self._err(404, None, "Sorry, we can't find the page you are looking for.")
        if op not in ("revision", "tree", "resolve"):
            return self._err(404, None, "Sorry, we can't find the page you are looking for.")
        with hub._lock:
            moved = hub._renamed.get((rtype, rid))
            repo = hub._repos.get((rtype, rid))
        if moved:
            old, new = "/".join(quote(x, safe="") for x in rid.split("/")), \
                "/".join(quote(x, safe="") for x in moved.split("/"))
            loc = url.path.replace("/" + old + "/", "/" + new + "/", 1) + ("?" + url.query if url.query else "")
            return 307, [("Location", loc)], b""
        if repo is None or (repo.private and not authed):
            return self._err(404 if authed else 401, "RepoNotFound", "Repository not found")
        if repo.gated and not authed:
            return self._err(401, "GatedRepo", "Access to %s %s is restricted. You must be "
                             "authenticated to access it." % (rtype, rid))
        with hub._lock:
            if op == "revision":
                rev = unquote("/".join(rest)) if rest else "main"
                sha, rest = repo.resolve(rev), []
            else:   # the rev is URL-encoded, but accept an unencoded "a/b" branch too
                rev, sha = unquote(rest[0]) if rest else "", None
                for i in range(1, len(rest) + 1):
                    sha = repo.resolve(unquote("/".join(rest[:i])))
                    if sha:
                        rest = rest[i:]
                        break
            commit = repo.commits.get(sha)
        if commit is None:
            return self._err(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        path = unquote("/".join(rest)).strip("/")
        return getattr(self, "_" + op)(hub, repo, commit, path, query)

    def _revision(self, hub, repo, commit, path, query):
        blobs = query.get("blobs") in TRUE
        sib = []
        for p in sorted(commit.files):
            s = {"rfilename": p}
            if blobs:
                f = commit.files[p]
                s.update(size=f.size, blobId=f.oid)
                if f.sha256:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            sib.append(s)
        info = {"_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24], "id": repo.id,
                "author": repo.id.split("/")[0], "sha": commit.sha, "private": repo.private,
                "gated": "auto" if repo.gated else False, "disabled": False, "downloads": 0,
                "likes": 0, "tags": [], "createdAt": _iso(repo.created),
                "lastModified": _iso(commit.when), "siblings": sib}
        return 200, [("Content-Type", "application/json")], json.dumps(info).encode()

    def _tree(self, hub, repo, commit, path, query):
        recursive = query.get("recursive") in TRUE
        offset = 0
        if "cursor" in query:
            try:
                cur = json.loads(base64.urlsafe_b64decode(query["cursor"].encode()))
                commit, offset = repo.commits[cur["c"]], int(cur["o"])
            except Exception:
                return self._err(400, None, "Invalid cursor")
        ents = commit.listing(path, recursive)
        if ents is None:
            return self._err(404, "EntryNotFound", "Entry not found",
                             [("X-Repo-Commit", commit.sha)])
        page = ents[offset:offset + hub.page_size]
        if query.get("expand") in TRUE:
            last = {"id": commit.sha, "title": "fake commit", "date": _iso(commit.when)}
            page = [dict(e, lastCommit=last) for e in page]
        h = [("Content-Type", "application/json"), ("X-Repo-Commit", commit.sha)]
        if offset + hub.page_size < len(ents):
            cur = base64.urlsafe_b64encode(json.dumps({"c": commit.sha, "o": offset + hub.page_size},
                                                      separators=(",", ":")).encode()).decode()
            q = "&".join("%s=%s" % (quote(k), quote(v)) for k, v in query.items() if k != "cursor")
            h.append(("Link", '<%s%s?%scursor=%s>; rel="next"' % (hub.endpoint, urlsplit(self.path).path,
                                                               q + "&" if q else "", cur)))
        return 200, h, json.dumps(page).encode()

    def _resolve(self, hub, repo, commit, path, query):
        h = [("X-Repo-Commit", commit.sha)]
        f = commit.files.get(path)
        if f is None:
            return self._err(404, "EntryNotFound", "Entry not found", h)
        if not f.sha256:
            return self._blob(f, f.oid, h)
        loc = hub.lfs_location(f.sha256)
        h += [("Location", loc), ("X-Linked-Etag", '"%s"' % f.sha256), ("X-Linked-Size", str(f.size)),
              ("ETag", '"%s"' % f.sha256)]
        return 302, h, ("Found. Redirecting to %s" % loc).encode()


# ---------------------------------------------------------------- script mode

def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Hugging Face Hub on 127.0.0.1")
    ap.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME=DIR")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cdn-port", type=int, default=0)
    ap.add_argument("--cdn-dir")
    ap.add_argument("--cdn-url")
    ap.add_argument("--token", default="hf_test")
    ap.add_argument("--lfs-threshold", type=int, default=1024)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args(argv)
    if a.selftest:
        return _selftest()
    if bool(a.cdn_dir) != bool(a.cdn_url):
        ap.error("--cdn-dir and --cdn-url go together")
    hub = Hub(token=a.token, lfs_threshold=a.lfs_threshold, page_size=a.page_size,
              cdn_dir=a.cdn_dir, cdn_url=a.cdn_url, port=a.port, cdn_port=a.cdn_port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    commits = {}
    for spec in a.repo:
        rid, _, d = spec.partition("=")
        commits[rid] = hub.add_repo(rid, Path(d))
    hub.start()
    print(json.dumps({"endpoint": hub.endpoint, "cdn_endpoint": hub.cdn_endpoint, "commits": commits}),
          flush=True)
    while not done.wait(0.5):
        pass
    hub.stop()
    return 0


def _selftest():   # noqa: C901  (a linear list of checks)
    import subprocess
    import tempfile
    import urllib.error
    import urllib.request

    def req(url, headers=None, method="GET"):
        r = urllib.request.Request(url, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(r) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def curl(*args):
        p = subprocess.run(["curl", "-s", *args], capture_output=True)
        return p.returncode, p.stdout

    def heads(raw):
        lines = raw.decode("latin-1").split("\r\n")
        return int(lines[0].split()[1]), {k.lower(): v.strip() for k, _, v in
                                          (ln.partition(":") for ln in lines[1:] if ln)}

    big = bytes(range(256)) * 40     # 10240 bytes: LFS
    files = {"README.md": b"hello\n", "a/x.txt": b"0123456789", "a/b/y.bin": big,
             "a/b/z.txt": b"zz", "c.txt": b"", "a.txt": b"A"}
    with Hub(page_size=2) as hub, tempfile.TemporaryDirectory() as td:
        E = hub.endpoint
        c1 = hub.add_repo("o/d", files)
        c2 = hub.add_repo("o/d", dict(files, **{"new.txt": b"new"}))
        hub.add_repo("o/d", {"f.txt": b"feature"}, branch="feat/x")
        hub.add_tag("o/d", "v1", c1)
        assert c1 != c2 and _HEX40.match(c1)
        s, h, b = req(E + "/api/datasets/o/d/revision/main")
        j = json.loads(b)
        assert s == 200 and j["sha"] == c2 and j["id"] == "o/d" and j["gated"] is False
        assert [x["rfilename"] for x in j["siblings"]] == sorted(list(files) + ["new.txt"])
        assert json.loads(req(E + "/api/datasets/o/d/revision/v1")[2])["sha"] == c1
        assert json.loads(req(E + "/api/datasets/o/d/revision/" + c1)[2])["sha"] == c1
        assert json.loads(req(E + "/api/datasets/o/d/revision/feat%2Fx")[2])["siblings"] == [{"rfilename": "f.txt"}]
        s, h, b = req(E + "/api/datasets/o/d/revision/nope")
        assert s == 404 and h["X-Error-Code"] == "RevisionNotFound" and h["X-Error-Message"] == "Invalid rev id: nope"
        s, h, b = req(E + "/api/datasets/o/missing/revision/main")
        assert s == 401 and h["X-Error-Code"] == "RepoNotFound" and json.loads(b)["error"]
        s, h, _ = req(E + "/api/datasets/o/missing/revision/main", {"Authorization": "Bearer hf_test"})
        assert s == 404 and h["X-Error-Code"] == "RepoNotFound"
        # tree, paginated by 2
        got, url = [], E + "/api/datasets/o/d/tree/v1?recursive=true"
        while url:
            s, h, b = req(url)
            assert s == 200 and len(json.loads(b)) <= 2
            got += json.loads(b)
            m = re.match(r'<([^>]+)>; rel="next"', h.get("Link") or "")
            url = m and m[1]
        assert [e["path"] for e in got] == ["README.md", "a", "a.txt", "a/b", "a/b/y.bin", "a/b/z.txt",
                                            "a/x.txt", "c.txt"], got
        ent = {e["path"]: e for e in got}
        assert ent["a"]["type"] == "directory" and ent["a/x.txt"]["oid"] == git_blob_sha1(b"0123456789")
        assert ent["a/b/y.bin"]["lfs"] == {"oid": hashlib.sha256(big).hexdigest(), "size": 10240, "pointerSize": 134}
        assert "lfs" not in ent["a/x.txt"] and ent["c.txt"]["size"] == 0
        s, h, b = req(E + "/api/datasets/o/d/tree/v1/a?recursive=false&expand=true")
        assert [e["path"] for e in json.loads(b)] == ["a/b", "a/x.txt"] and "Link" not in h
        assert json.loads(b)[0]["lastCommit"]["id"] == c1
        s, h, b = req(E + "/api/datasets/o/d/tree/main/a%2Fb?recursive=1")
        assert [e["path"] for e in json.loads(b)] == ["a/b/y.bin", "a/b/z.txt"]
        s, h, b = req(E + "/api/datasets/o/d/tree/main/nope")
        assert s == 404 and h["X-Error-Code"] == "EntryNotFound"
        # resolve, HEAD with curl
        R = E + "/datasets/o/d/resolve/"
        s, h = heads(curl("-I", R + "main/a/x.txt")[1])
        assert s == 200 and h["etag"] == '"%s"' % git_blob_sha1(b"0123456789") and h["content-length"] == "10"
        assert h["x-repo-commit"] == c2 and h["accept-ranges"] == "bytes"
        s, h = heads(curl("-I", R + "v1/a%2Fb/y.bin")[1])
        sha = hashlib.sha256(big).hexdigest()
        assert s == 302 and h["x-linked-etag"] == '"%s"' % sha and h["x-linked-size"] == "10240"
        assert h["location"].startswith(hub.cdn_endpoint + "/blobs/" + sha + "?") and h["x-repo-commit"] == c1
        loc = h["location"]
        s, h = heads(curl("-I", R + "main/nope.txt")[1])
        assert s == 404 and h["x-error-code"] == "EntryNotFound" and h["x-repo-commit"] == c2
        s, h = heads(curl("-I", R + "zzz/a.txt")[1])
        assert s == 404 and h["x-error-code"] == "RevisionNotFound" and "x-repo-commit" not in h
        assert curl(R + "main/a/x.txt") == (0, b"0123456789")
        assert curl(R + "feat/x/f.txt") == (0, b"feature")   # unencoded branch with a slash
        assert curl("-L", "-H", "Authorization: Bearer hf_test", R + "main/a/b/y.bin") == (0, big)
        assert hub.log[-1]["server"] == "cdn" and hub.log[-1]["auth"] is None and hub.log[-1]["bytes"] == 10240
        assert hub.log[-2]["auth"] == "Bearer hf_test" and hub.log[-2]["status"] == 302
        # ranges
        for rng, st, body, cr in [("2-5", 206, b"2345", "bytes 2-5/10"), ("7-", 206, b"789", "bytes 7-9/10"),
                                  ("-3", 206, b"789", "bytes 7-9/10"), ("5-100", 206, b"56789", "bytes 5-9/10"),
                                  ("10-", 416, b"", "bytes */10"), ("5-2", 200, b"0123456789", None)]:
            s, h, b = req(R + "main/a/x.txt", {"Range": "bytes=" + rng})
            assert (s, b, h.get("Content-Range")) == (st, body, cr), (rng, s, b, h)
        s, h, b = req(loc, {"Range": "bytes=256-511"})
        assert s == 206 and b == bytes(range(256)) and h["ETag"] == '"%s"' % sha
        assert req(R + "main/c.txt", {"Range": "bytes=0-"})[0] == 416
        # auth
        hub.add_repo("o/g", {"f": b"g"}, gated=True)
        hub.add_repo("o/p", {"f": b"p"}, private=True)
        for route in ("/api/datasets/o/g/revision/main", "/api/datasets/o/g/tree/main", "/datasets/o/g/resolve/main/f"):
            s, h, _ = req(E + route)
            assert s == 401 and h["X-Error-Code"] == "GatedRepo", route
            assert h["X-Error-Message"] == "Access to dataset o/g is restricted. You must be authenticated to access it."
            assert req(E + route, {"Authorization": "Bearer hf_test"})[0] == 200
        s, h, _ = req(E + "/datasets/o/p/resolve/main/f")
        assert s == 401 and h["X-Error-Code"] == "RepoNotFound"
        assert req(E + "/datasets/o/p/resolve/main/f", {"Authorization": "Bearer hf_test"})[2] == b"p"
        s, h, _ = req(E + "/datasets/o/d/resolve/main/a.txt", {"Authorization": "Bearer wrong"})
        assert s == 401 and "X-Error-Code" not in h and h["X-Error-Message"] == "Invalid credentials in Authorization header"
        # faults
        hub.add_fault(r"/x\.txt$", "429", retry_after=7, server="hub")
        s, h, _ = req(R + "main/a/x.txt")
        assert s == 429 and h["Retry-After"] == "7"
        hub.add_fault("/tree/", "503", count=2)
        assert [req(E + "/api/datasets/o/d/tree/main")[0] for _ in range(3)] == [503, 503, 200]
        hub.add_fault("/blobs/", "truncate", after_bytes=100)
        assert curl("-o", "/dev/null", loc)[0] == 18 and hub.log[-1]["bytes"] == 100
        hub.add_fault("/blobs/", "truncate", server="hub")      # other server: does not fire
        assert curl(loc) == (0, big) and hub.faults_left() == 1
        hub.clear_faults()
        hub.add_fault("x.txt", "reset")
        rc = curl(R + "main/a/x.txt")[0]
        assert rc in (52, 56), rc
        assert hub.log[-1]["status"] == 0 and hub.log[-1]["fault"] == "reset"
        hub.add_fault("x.txt", "slow", delay=0.5)
        t = time.time()
        assert curl(R + "main/a/x.txt") == (0, b"0123456789") and time.time() - t >= 0.5
        assert hub.faults_left() == 0
        # directory input, served from disk; a new commit keeps the old one servable
        d = Path(td) / "src"
        (d / "sub" / ".hidden").mkdir(parents=True)
        payload = os.urandom(3 * CHUNK + 7)
        (d / "sub" / ".hidden" / "big.bin").write_bytes(payload)
        (d / "small.txt").write_bytes(b"small")
        cd = hub.add_repo("o/dir", d)
        hub.add_repo("o/dir", {"other": b"x"})
        s, h = heads(curl("-I", E + "/datasets/o/dir/resolve/%s/sub/.hidden/big.bin" % cd)[1])
        assert s == 302 and h["x-linked-size"] == str(len(payload))
        assert curl("-L", E + "/datasets/o/dir/resolve/%s/sub/.hidden/big.bin" % cd) == (0, payload)
        assert curl(E + "/datasets/o/dir/resolve/%s/small.txt" % cd) == (0, b"small")
        blob = h["location"]
        s, h, b = req(blob, {"Range": "bytes=%d-" % (2 * CHUNK)})
        assert s == 206 and b == payload[2 * CHUNK:]
        # concurrent ranges on one keep-alive connection per thread
        errs = []

        def worker(i):
            import http.client
            conn = http.client.HTTPConnection("127.0.0.1", int(loc.split(":")[2].split("/")[0]))
            for k in range(20):
                a = (i * 7919 + k * 104729) % len(payload)
                conn.request("GET", urlsplit(blob).path, headers={"Range": "bytes=%d-%d" % (a, a + 4095)})
                r = conn.getresponse()
                if r.read() != payload[a:a + 4096]:
                    errs.append((i, k))
            conn.close()
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert not errs, errs
        # model repos
        hub.add_repo("o/m", {"w.bin": big}, repo_type="model")
        assert req(E + "/api/models/o/m/revision/main")[0] == 200
        assert heads(curl("-I", E + "/o/m/resolve/main/w.bin")[1])[0] == 302
        hub.clear_log()
        assert hub.log == []
    # script mode, with a cdn dir; a client that hangs up mid-body
    with tempfile.TemporaryDirectory() as td:
        d = Path(td) / "r"
        d.mkdir()
        (d / "w.bin").write_bytes(payload)
        p = subprocess.Popen([sys.executable, __file__, "--repo", "o/r=%s" % d, "--cdn-dir", td + "/cdn",
                              "--cdn-url", "http://cdn.invalid/x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        info = json.loads(p.stdout.readline())
        assert set(info) == {"endpoint", "cdn_endpoint", "commits"} and _HEX40.match(info["commits"]["o/r"])
        sha = hashlib.sha256(payload).hexdigest()
        assert Path(td, "cdn", sha).read_bytes() == payload
        s, h = heads(curl("-I", info["endpoint"] + "/datasets/o/r/resolve/main/w.bin")[1])
        assert h["location"] == "http://cdn.invalid/x/" + sha
        for _ in range(3):
            sk = socket.create_connection(("127.0.0.1", int(info["cdn_endpoint"].rsplit(":", 1)[1])))
            sk.sendall(b"GET /blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n" % sha.encode())
            sk.recv(1000)
            sk.close()
        assert curl(info["cdn_endpoint"] + "/blobs/" + sha) == (0, payload)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        assert p.returncode == 0 and not err, err
    print("hubserver selftest: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
