"""nginx on 127.0.0.1 serving a folder, in the foreground as our child
(bench/hub_bench.py's CDN, and the tests' CDN over TLS).

Nginx(dir, root, workers=1, tls=None).start(): everything of its own under
dir, the files of root at url; tls=(cert.pem, key.pem) serves HTTPS with
HTTP/2 offered by ALPN, as a real CDN does.  Its access log (since(mark))
gives each request's bytes, time, status, request line (with the
protocol: "GET /x HTTP/2.0"), range, end time and connection number.
make_cert(dir) makes a self-signed certificate for 127.0.0.1 with openssl.
"""

import os
import socket
import subprocess
import sys
import time

NGINX = "/usr/sbin/nginx"


class NginxError(RuntimeError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(dir):
    """(cert.pem, key.pem) under dir: a self-signed certificate for
    127.0.0.1 and localhost, its own CA (a client trusts it by its file)."""
    cert, key = os.path.join(dir, "cert.pem"), os.path.join(dir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return cert, key


NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
user root root;
pid {dir}/nginx.pid;
lock_file {dir}/nginx.lock;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format bench '$bytes_sent $request_time $status $msec $connection "$request" "$http_range"';
    access_log {dir}/access.log bench;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port}{listen_tls};
        server_name localhost;{tls}
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground as our child, everything under dir."""

    def __init__(self, dir, root, workers=1, tls=None):
        self.dir, self.root, self.workers, self.tls = dir, root, workers, tls
        self.proc = self.port = None
        self.access = os.path.join(dir, "access.log")

    def start(self, tries=5):
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        for _ in range(tries):
            self.port = free_port()
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(
                    workers=self.workers, dir=self.dir, port=self.port, root=self.root,
                    listen_tls=" ssl http2" if self.tls else "",
                    tls=("\n        ssl_certificate %s;\n        ssl_certificate_key %s;" % self.tls
                         if self.tls else "")))
            err = open(os.path.join(self.dir, "stderr"), "ab")
            self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-c", conf,
                                          "-e", os.path.join(self.dir, "error.log")],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            err.close()
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            self.stop()         # the port was taken meanwhile, or nginx failed: say why if last
        raise NginxError("nginx did not start: %s" % self.errors().strip()[-2000:])

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def errors(self):
        out = ""
        for name in ("stderr", "error.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    out += f.read()
            except OSError:
                pass
        return out

    def mark(self):
        try:
            return os.path.getsize(self.access)
        except OSError:
            return 0

    def since(self, mark, settle=0.05):
        """Access log entries after mark, once the log stopped growing for
        `settle` s: [(bytes_sent, request_time, status, request, range, end time,
        connection)]."""
        size = self.mark()
        while True:
            time.sleep(settle)
            now = self.mark()
            if now == size:
                break
            size = now
        with open(self.access, "rb") as f:
            f.seek(mark)
            data = f.read(size - mark).decode("latin-1")
        out = []
        for line in data.splitlines():
            try:
                sent, rtime, status, end, conn, rest = line.split(" ", 5)
                req, _, rng = rest.rpartition(" ")
                out.append((int(sent), float(rtime), int(status), req.strip('"'), rng.strip('"'),
                            float(end), int(conn)))
            except ValueError:
                print("nginxserver: unparsed log line: %r" % line, file=sys.stderr)
        return out

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()       # SIGTERM: fast shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
