"""An S3 server on loopback for the tests: s3rver (npm, a real S3 API
implementation: listings, ranges, multipart uploads) behind a proxy of our
own that

- verifies every request's SigV4 signature with botocore's own signer
  (the canonical request rebuilt from the method, path, query, the headers
  the request says it signed and its x-amz-date; the secret is the test's):
  a wrong one gets 403 SignatureDoesNotMatch, an unknown key id 403
  InvalidAccessKeyId, as S3 answers; s3rver itself does not check them;
- logs every request (method, key, query, range, status, body bytes, whether
  a session token came and what it was);
- injects faults on chosen requests: 500, 503 SlowDown, a reset connection,
  a body cut short, or a delay.

S3.start(); S3.endpoint is the proxy's URL (https:// with S3(tls=(cert,
key)), a certificate of nginxserver.make_cert); S3.direct the s3rver's (no
checks, no log: for benchmarks).  S3.client() is a boto3 client of the
proxy.
"""

import http.client
import http.server
import os
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = Path(os.environ.get("CLTFS_NODE_MODULES", REPO / "build" / "node" / "node_modules"))

KEY_ID = "AKIATESTKEY0000001"
SECRET = "test/secret+key/0123456789abcdefghijkl"
REGION = "eu-test-1"
BUCKET = "cltfs-test"


def have_s3rver():
    return shutil.which("node") is not None and (NODE_MODULES / "s3rver").is_dir()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_error(code, msg):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
            '<RequestId>test</RequestId></Error>' % (code, msg)).encode()


class Verifier:
    """SigV4 as botocore computes it, for a request as it arrived."""

    def __init__(self, key_id, secret, region, token=None):
        from botocore.auth import S3SigV4Auth
        from botocore.credentials import Credentials
        self.key_id, self.region = key_id, region
        self.auth = S3SigV4Auth(Credentials(key_id, secret, token), "s3", region)

    def check(self, method, host, raw_path, headers):
        """None when the signature is right, else (code, message)."""
        import datetime
        from botocore.awsrequest import AWSRequest
        authz = headers.get("Authorization")
        if not authz:
            return ("AccessDenied", "no Authorization header")
        try:
            algo, rest = authz.split(" ", 1)
            parts = dict(p.strip().split("=", 1) for p in rest.split(","))
            cred, signed, sig = parts["Credential"], parts["SignedHeaders"], parts["Signature"]
        except (ValueError, KeyError):
            return ("AuthorizationHeaderMalformed", authz[:60])
        if algo != "AWS4-HMAC-SHA256":
            return ("AuthorizationHeaderMalformed", algo)
        key_id, date, region, service, term = cred.split("/")
        if key_id != self.key_id:
            return ("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        if region != self.region or service != "s3" or term != "aws4_request":
            return ("AuthorizationHeaderMalformed", "bad scope " + cred)
        names = signed.split(";")
        for need in ("host", "x-amz-date", "x-amz-content-sha256"):
            if need not in names:
                return ("AccessDenied", "%s is not signed" % need)
        if "x-amz-security-token" in headers and "x-amz-security-token" not in names:
            return ("AccessDenied", "the session token is not signed")
        hdrs = {n: headers.get(n, "") for n in names}
        req = AWSRequest(method=method, url="http://%s%s" % (host, raw_path), headers=hdrs)
        amzdate = headers.get("x-amz-date", "")
        req.context["timestamp"] = amzdate
        ts = datetime.datetime.strptime(amzdate, "%Y%m%dT%H%M%SZ")
        if date != amzdate[:8] or abs((datetime.datetime.utcnow() - ts).total_seconds()) > 900:
            return ("RequestTimeTooSkewed", amzdate)
        cr = self.auth.canonical_request(req)
        sts = self.auth.string_to_sign(req, cr)
        want = self.auth.signature(sts, req)
        if want != sig:
            return ("SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided.")
        return None


class S3:
    def __init__(self, key_id=KEY_ID, secret=SECRET, region=REGION, token=None, bucket=BUCKET,
                 service_endpoint="localhost", tls=None):
        self.key_id, self.secret, self.region, self.token = key_id, secret, region, token
        self.tls = tls         # (cert.pem, key.pem): the proxy speaks HTTPS only
        self.bucket = bucket
        self.service_endpoint = service_endpoint
        self.log = []
        self.faults = []   # (predicate(entry) -> bool, kind, count left)
        self.lock = threading.Lock()
        self.tmp = tempfile.mkdtemp(prefix="s3rver-")
        self.node = None
        self.httpd = None
        self.verify = True
        self.list_page = None  # keys per listing page s3rver is asked for (S3: 1000)

    # ------------------------------------------------------------ control --

    def start(self):
        self.s3rver_port = free_port()
        script = (
            "const S3rver = require('s3rver');"
            "new S3rver({port: %d, address: '127.0.0.1', directory: %r, silent: true,"
            " serviceEndpoint: %r, configureBuckets: [{name: %r}]})"
            ".run().then(() => console.log('ready'));"
            % (self.s3rver_port, self.tmp + "/data", self.service_endpoint, self.bucket))
        env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
        # s3rver makes continuation tokens with DES, which OpenSSL 3 keeps
        # in its legacy provider: without it every truncated listing is a 500
        self.node = subprocess.Popen(["node", "--openssl-legacy-provider", "-e", script], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, text=True)
        line = self.node.stdout.readline()
        if "ready" not in line:
            raise RuntimeError("s3rver did not start: " + line + self.node.stdout.read())
        self.direct = "http://127.0.0.1:%d" % self.s3rver_port
        self.verifier = Verifier(self.key_id, self.secret, self.region, self.token)
        server = self

        class Handler(ProxyHandler):
            s3 = server
        self.httpd = ThreadingServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.endpoint = "http://127.0.0.1:%d" % self.port
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.endpoint = "https://127.0.0.1:%d" % self.port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
        if self.node:
            self.node.kill()
            self.node.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def fault(self, pred, kind, count=1):
        """Inject kind ("500", "503", "reset", "truncate", "delay:S",
        "nosuchupload": the 404 S3 answers for an upload id it dropped) on the
        next count requests for which pred(entry) is true (entry: method,
        key, query, range)."""
        with self.lock:
            self.faults.append([pred, kind, count])

    def clear_log(self):
        with self.lock:
            self.log.clear()

    def take_fault(self, entry):
        with self.lock:
            for f in self.faults:
                if f[2] > 0 and f[0](entry):
                    f[2] -= 1
                    return f[1]
        return None

    def client(self, endpoint=None):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, aws_session_token=self.token,
                            region_name=self.region, verify=self.tls[0] if self.tls else None,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def env(self, base, **extra):
        """The environment of one cltfs run against this server."""
        env = {k: v for k, v in base.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.key_id, AWS_SECRET_ACCESS_KEY=self.secret,
                   AWS_REGION=self.region, AWS_ENDPOINT_URL=self.endpoint,
                   AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
                   CLTFS_HUB_BACKOFF_MS="20")
        if self.token:
            env["AWS_SESSION_TOKEN"] = self.token
        env.update({k: str(v) for k, v in extra.items()})
        return {k: v for k, v in env.items() if v is not None}

    def upload_dir(self, local, prefix):
        """Every file under local to s3://bucket/prefix/ with boto3."""
        c = self.client()
        for root, _, files in os.walk(local):
            for f in files:
                p = os.path.join(root, f)
                c.upload_file(p, self.bucket, prefix + "/" + os.path.relpath(p, local))

    def requests(self, method=None, suffix=None):
        with self.lock:
            return [e for e in self.log if (method is None or e["method"] == method)
                    and (suffix is None or e["key"].endswith(suffix))]


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    s3 = None

    def log_message(self, *a):
        pass

    def _upstream(self):
        c = getattr(self, "_conn", None)
        if c is None:
            c = self._conn = http.client.HTTPConnection("127.0.0.1", self.s3.s3rver_port, timeout=60)
        return c

    def _reply(self, status, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _entry(self):
        u = urllib.parse.urlsplit(self.path)
        host = self.headers.get("Host", "")
        path = urllib.parse.unquote(u.path)
        vhost = host.split(":")[0]
        if vhost.endswith(".s3." + self.s3.service_endpoint):  # virtual-hosted: bucket in the host
            path = "/" + vhost.split(".s3.")[0] + path
        bucket, _, key = path.lstrip("/").partition("/")
        return {"method": self.command, "path": path, "bucket": bucket, "key": key, "query": u.query,
                "range": self.headers.get("Range"), "host": host,
                "token": self.headers.get("x-amz-security-token"),
                "auth": self.headers.get("Authorization") is not None, "status": None, "bytes": 0,
                "sent": 0, "t": time.monotonic(), "fault": None}  # t_end: below

    def _handle(self):
        e = self._entry()
        try:
            self._answer(e)
        finally:
            e.setdefault("t_end", time.monotonic())

    def _answer(self, e):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        e["sent"] = len(body)
        with self.s3.lock:
            self.s3.log.append(e)
        if self.s3.verify:
            bad = self.s3.verifier.check(self.command, self.headers.get("Host", ""), self.path, self.headers)
            if bad is None and self.s3.token is not None and self.headers.get("x-amz-security-token") != self.s3.token:
                bad = ("InvalidToken", "The provided token is malformed or otherwise invalid.")
            if bad:
                e["status"] = 403
                e["error"] = bad
                return self._reply(403, s3_error(*bad))
        kind = self.s3.take_fault(e)
        e["fault"] = kind
        if kind == "500":
            e["status"] = 500
            return self._reply(500, s3_error("InternalError", "We encountered an internal error."))
        if kind == "503":
            e["status"] = 503
            return self._reply(503, s3_error("SlowDown", "Please reduce your request rate."))
        if kind == "nosuchupload":
            e["status"] = 404
            return self._reply(404, s3_error("NoSuchUpload", "The specified upload does not exist. The upload ID "
                                             "may be invalid, or the upload may have been aborted or completed."))
        if kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if kind and kind.startswith("delay:"):
            time.sleep(float(kind[6:]))
        hdrs = {k: v for k, v in self.headers.items()
                if k.lower() not in ("authorization", "x-amz-security-token", "connection", "expect")}
        # s3rver names the bucket from the path: virtual-hosted requests are
        # rewritten to path-style for it
        u = urllib.parse.urlsplit(self.path)
        path = u.path
        vhost = e["host"].split(":")[0]
        if vhost.endswith(".s3." + self.s3.service_endpoint):
            path = "/" + e["bucket"] + path
        hdrs["Host"] = "127.0.0.1:%d" % self.s3.s3rver_port
        query = u.query
        if self.s3.list_page and "list-type=2" in query and "max-keys" not in query:
            # short pages (after the signature was checked): pagination
            # without a thousand keys
            query += "&max-keys=%d" % self.s3.list_page
        c = self._upstream()
        try:
            c.request(self.command, path + ("?" + query if query else ""), body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            # t_end: s3rver has done the request, before the client can
            # hear of it (after the reply, the client's next request could
            # arrive before this thread noted the time)
            e["t_end"] = time.monotonic()
        except (OSError, http.client.HTTPException):
            self._conn = None
            raise
        e["status"] = r.status
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if kind == "truncate" and self.command == "GET" and len(data) > 1:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            e["bytes"] = len(data) // 2
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if self.command != "HEAD":
            self.wfile.write(data)
        e["bytes"] = len(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
