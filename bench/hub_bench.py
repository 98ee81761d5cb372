#!/usr/bin/python3
"""Benchmark cltfs's Hub tier against plain HTTP downloads from the same server.

Usage (run with /usr/bin/python3, which has torch):

    hub_bench.py [--cltfs build/cltfs] [--quick] [--rounds 3] [--workdir DIR]
                 [--keep] [--store DIR] [--total-mb 300] [--d 4096]
                 [--nginx-workers 1] [--hub-nagle] [--rtt-ms 50]

It builds a store (bench.py's tree generator, then `cltfs import`; or
--store DIR), serves it as the dataset repo bench/acts from a fake Hub
(tests/hubserver.py, in process) whose LFS redirects point to an nginx on
127.0.0.1, so that API calls go to the Python Hub and every pack byte comes
from nginx.  Each round mounts hf://datasets/bench/acts with a fresh local
store and a fresh HF cache, and compares with curl fetching the same kind
of bytes from the same nginx:

  A  cold sequential read (1 MiB reads) of the largest y view; the bytes
     nginx sent meanwhile (its access log) over the read time, against
     curl downloading the largest pack whole                  goal >= 0.9
  B  open() + the first 1 MiB read(), in the middle of a cold x view, on a
     fresh mount, against curl of a 1 MiB range of a pack     (reported)
  C  `cltfs pull` of the whole store (process wall time), against one curl
     process downloading every pack                           (reported)
  D  A's read against the same read from the local store itself (a plain
     mount of the store, packs in page cache): what the Hub tier costs on
     top of decoding and FUSE                                 goal >= 0.9
  E  A's read over a link with 50 ms round trips: the fake Hub and nginx
     each behind a delaying TCP proxy of this benchmark's own (every byte
     held back 25 ms in each direction, and a new connection's first bytes
     one round trip more, for its handshake; it delays, never throttles),
     against curl of the same bytes (the frames the view needs, as range
     requests through the Hub's redirect) over the same link  goal >= 0.8
     (the mount asks the Hub where the packs are served from, so the read
     goes to the CDN at once: the mount's time over the link is printed)

The machine is shared and noisy: the two sides of each ratio are measured
interleaved in every round and the best of the rounds is taken on each
side.  The store's packs are kept in the page cache, so that nginx serves
from memory on both sides.  Goals missed are reported, not asserted: exit
0 unless something failed to run or a view read through the Hub differs
from the same view of the local store (1).  Mounts, nginx and the Hub are
always stopped; the temporary workdir is removed unless --keep (with
--workdir, the generated tree is kept there and reused).

For diagnosis it also prints, per metric: what nginx's access log and the
Hub's log saw (requests, connections, Hub round trips, the delay before
the first and after the last request), the same read from the store
itself through a plain mount (decoding and FUSE without the network: the
ceiling of A's ratio on the machine), and pull's fixed cost (a second
pull with nothing left to fetch).  The fake Hub runs with TCP_NODELAY
unless --hub-nagle: with Nagle on, its answers on kept-alive connections
wait ~40 ms for delayed ACKs, which is the fake Hub's cost, not cltfs's.
"""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
import bench                                    # noqa: E402
import hubserver                                # noqa: E402
import sample_table                             # noqa: E402
from bench import BenchError, Mount, log        # noqa: E402
from hubserver import Hub                       # noqa: E402
from nginxserver import NGINX, Nginx, NginxError  # noqa: E402

MiB = 1 << 20
REPO_ID = "bench/acts"
URL = "hf://datasets/" + REPO_ID

GOALS = {                       # metric -> (comparison, goal or None: reported only)
    "A cold y view: cltfs wire / curl MB/s": (">=", 0.9),
    "B first byte, cold x view: cltfs / curl": ("<=", None),
    "C pull / curl of every pack, MB/s": (">=", None),
    "D Hub store tier, cold y view / the same read from a local store": (">=", 0.9),
    "E Hub store tier over a link with %d ms round trips / curl of the same bytes over it": (">=", 0.8),
}


# ---------------------------------------------------------------- a link with round trips

# The machine has loopback only and no netem: a link with latency is this
# proxy, run in a process of its own (so that its event loop does not share
# the benchmark's GIL with the fake Hub's threads).  Every byte read from one
# side is written to the other `delay` seconds after it arrived, in order;
# reading never stops, so a transfer's rate is the machine's and only its
# round trips are long (it delays, never throttles).  A new connection's
# first bytes towards the server also wait one round trip, for the TCP
# handshake a real link would cost; TCP's slow start is not modelled.

def proxy_main(target_port, delay, ready_fd, window=0):
    """window > 0: at most that many bytes of a connection's direction
    unacknowledged (an ack comes back a round trip after the proxy read the
    bytes), as a TCP window bounds what one connection carries a round
    trip over a far link: reading from that side pauses meanwhile."""
    import asyncio

    class Line:
        """One direction: bytes in arrival order, each released `delay` s
        after it arrived (and not before `not_before`)."""

        def __init__(self, loop, not_before=0.0):
            self.loop, self.q, self.dst, self.armed = loop, [], None, False
            self.not_before = not_before
            self.head = 0

        def push(self, item):
            t = max(self.loop.time(), self.not_before) + delay
            self.q.append((t, item))
            self.arm()

        def arm(self):
            if not self.armed and self.head < len(self.q) and self.dst is not None:
                self.armed = True
                self.loop.call_at(self.q[self.head][0], self.flush)

        def flush(self):
            self.armed = False
            now = self.loop.time()
            while self.head < len(self.q) and self.q[self.head][0] <= now:
                item = self.q[self.head][1]
                self.q[self.head] = None
                self.head += 1
                if self.dst.is_closing():
                    continue
                if item is EOF:
                    if self.dst.can_write_eof():
                        self.dst.write_eof()
                elif item is CLOSE:
                    self.dst.close()
                else:
                    self.dst.write(item)
            if self.head > 1024 and self.head * 2 > len(self.q):
                del self.q[:self.head]
                self.head = 0
            self.arm()

        def connect(self, dst):
            self.dst = dst
            self.arm()

    EOF, CLOSE = object(), object()

    class Side(asyncio.Protocol):
        def __init__(self, out):
            self.out = out          # the Line this side's bytes go into
            self.transport, self.inflight, self.paused = None, 0, False

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.out.push(data)
            if window:
                self.inflight += len(data)
                self.out.loop.call_later(2 * delay, self.acked, len(data))
                if self.inflight >= window and not self.paused:
                    self.paused = True
                    self.transport.pause_reading()

        def acked(self, n):
            self.inflight -= n
            if self.paused and self.inflight < window and not self.transport.is_closing():
                self.paused = False
                self.transport.resume_reading()

        def eof_received(self):
            self.out.push(EOF)
            return True             # keep the other direction open

        def connection_lost(self, exc):
            self.out.push(CLOSE)

    async def main():
        loop = asyncio.get_running_loop()

        def client():
            up = Line(loop, loop.time() + 2 * delay)     # SYN, SYN-ACK: one round trip
            down = Line(loop)
            side = Side(up)

            def made(transport):
                side.transport = transport
                down.connect(transport)
                transport.set_write_buffer_limits(high=1 << 30)

                async def dial():
                    try:
                        t, _ = await loop.create_connection(lambda: Side(down), "127.0.0.1", target_port)
                        t.set_write_buffer_limits(high=1 << 30)
                        up.connect(t)
                    except OSError:
                        transport.close()
                loop.create_task(dial())
            side.connection_made = made
            return side

        srv = await loop.create_server(client, "127.0.0.1", 0, backlog=256)
        os.write(ready_fd, b"%d\n" % srv.sockets[0].getsockname()[1])
        os.close(ready_fd)
        await asyncio.Event().wait()

    import asyncio as _a
    _a.run(main())


class DelayProxy:
    """proxy_main in a child process: 127.0.0.1:port -> 127.0.0.1:target
    (window: proxy_main's, bytes; 0 none)."""

    def __init__(self, target_port, rtt, window=0):
        self.target, self.delay, self.window = target_port, rtt / 2.0, window
        self.proc = self.port = None

    def start(self):
        r, w = os.pipe()
        code = ("import sys; sys.path.insert(0, %r); import hub_bench; "
                "hub_bench.proxy_main(%d, %r, %d, %d)" % (HERE, self.target, self.delay, w, self.window))
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(w,),
                                     stdin=subprocess.DEVNULL)
        os.close(w)
        with os.fdopen(r) as f:
            line = f.readline()
        if not line.strip().isdigit():
            self.stop()
            raise BenchError("the delaying proxy did not start")
        self.port = int(line)
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------- helpers

@contextlib.contextmanager
def environ(**kw):
    """Set (or, with None, unset) environment variables for children started inside."""
    old = {k: os.environ.get(k) for k in kw}
    try:
        for k, v in kw.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def curl(*args):
    """Run curl -s with args; returns its stdout (the -w output)."""
    r = subprocess.run(["curl", "-s", "-S", "--noproxy", "*", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise BenchError("curl %s failed (%d): %s" % (" ".join(args), r.returncode,
                                                       r.stderr.decode().strip()))
    return r.stdout.decode()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def cdn_names(store, cdn):
    """{pack path relative to the store: its name (sha256) in the cdn dir}."""
    by_ino = {}
    for n in os.listdir(cdn):
        st = os.stat(os.path.join(cdn, n))
        by_ino[(st.st_dev, st.st_ino)] = n
    out = {}
    for n in sorted(os.listdir(os.path.join(store, "packs"))):
        if not n.endswith(".pack"):
            continue
        p = os.path.join(store, "packs", n)
        st = os.stat(p)
        out["packs/" + n] = by_ino.get((st.st_dev, st.st_ino)) or sha256_file(p)
    return out


def views(mnt):
    """{relative path: size} of the mount's views (sizes come from the manifest)."""
    out = {}
    for d in sorted(os.listdir(mnt)):
        if d.startswith(".") or not os.path.isdir(os.path.join(mnt, d)):
            continue
        for n in os.listdir(os.path.join(mnt, d)):
            out[d + "/" + n] = os.path.getsize(os.path.join(mnt, d, n))
    return out


def read_index(store):
    """{key: (pack path relative to the store, offset, frame bytes)}, the first
    valid record of each chunk (what cltfs answers)."""
    out = {}
    for n in sorted(os.listdir(os.path.join(store, "packs"))):
        if not n.endswith(".idx"):
            continue
        with open(os.path.join(store, "packs", n), "rb") as f:
            b = f.read()
        for at in range(16, len(b) - 39, 40):
            r = b[at:at + 40]
            if r[:4] != b"CLTR" or struct.unpack_from("<I", r, 36)[0] != zlib.crc32(r[:36]):
                continue
            key, off, csize = struct.unpack_from("<QQI", r, 4)
            out.setdefault(key, ("packs/" + n[:-4] + ".pack", off, csize))
    return out


def view_ranges(store, rel):
    """The byte ranges of the packs that hold the frames a y view needs, as
    [(pack, first byte, end)], neighbouring frames merged: what `curl of the
    same bytes` fetches.  From the manifest (targets, chunk_rows), the sample
    table (rows per sample, batch shapes) and the indexes."""
    man = sample_table.manifest(store)
    layer, batch = int(rel.split("/")[0][1:]), int(rel.split("_")[1])
    cr = man["chunk_rows"]
    rows = [smp["rows"] for smp in man["samples"]]
    sizes = [b[0] for b in man["batches"]] if man.get("batches") else \
        [min(man["batch_samples"], len(rows) - i) for i in range(0, len(rows), man["batch_samples"])]
    first = sample = 0
    for b, n in enumerate(sizes):
        nchunks = -(-sum(rows[sample:sample + n]) // cr)
        if b == batch:
            break
        first += nchunks
        sample += n
    idx = read_index(store)
    frames = []
    for t in range(man["n_targets"]):
        L = layer + man["target_offset"] + t
        if L in man["mlp_layers"]:
            for c in range(first, first + nchunks):
                frames.append(idx[1 << 48 | L << 32 | c])
    frames.sort()
    out = []
    for pack, off, n in frames:
        if out and out[-1][0] == pack and out[-1][2] == off:
            out[-1][2] = off + n
        else:
            out.append([pack, off, off + n])
    return [tuple(r) for r in out]


def layer_key(path):
    d = path.split("/")[0]
    return int(d[1:]) if d[1:].isdigit() else 1 << 30


def ms(t):
    return "%.1f" % (t * 1e3)


def times(ts, scale=1.0, fmt="%.3f"):
    return " ".join(fmt % (t * scale) for t in ts)


# ---------------------------------------------------------------- the run

class Bench:
    def __init__(self, a, workdir):
        self.a, self.work = a, workdir
        self.hub = self.nginx = None
        self.mount_logs = []        # (what, stderr) of mounts that said something

    def env(self, tag, endpoint=None):
        """The environment of a cltfs child: a fresh HF cache per tag."""
        return environ(HF_ENDPOINT=endpoint or self.hub.endpoint, HF_HOME=os.path.join(self.work, "hf_" + tag),
                       XDG_CACHE_HOME=os.path.join(self.work, "xdg"), HF_HUB_CACHE=None,
                       HF_TOKEN=None, HF_HUB_OFFLINE=None, HF_HUB_ENABLE_HF_TRANSFER=None,
                       http_proxy=None, https_proxy=None, HTTP_PROXY=None, HTTPS_PROXY=None,
                       all_proxy=None, ALL_PROXY=None)

    def mount(self, tag, endpoint=None):
        mnt = os.path.join(self.work, "mnt_" + tag)
        local = os.path.join(self.work, "local_" + tag)
        for p in (local, os.path.join(self.work, "hf_" + tag)):
            shutil.rmtree(p, ignore_errors=True)
        m = Mount("cltfs-hub", [self.a.cltfs, URL, mnt, "-f", "-o", "store=" + local], mnt)
        with self.env(tag, endpoint):
            t0 = time.perf_counter()
            m.start(timeout=60)
            m.t_mount = time.perf_counter() - t0
        return m

    def unmount(self, m, what):
        m.stop()
        err = m.stderr().strip()
        if err:
            self.mount_logs.append((what, err))

    def warm_packs(self):
        bench.warm([os.path.join(self.cdn, n) for n in os.listdir(self.cdn)])

    def setup(self):
        a = self.a
        if a.store:
            store = os.path.abspath(a.store)
            if not os.path.isfile(os.path.join(store, "cltfs.json")):
                raise BenchError("%s: no cltfs.json, not a cltfs store" % store)
            self.tree_desc = None
        else:
            self.tree_desc = bench.make_tree(a, self.work)
            store = os.path.join(self.work, "store")
            shutil.rmtree(store, ignore_errors=True)
            t0 = time.perf_counter()
            r = subprocess.run([a.cltfs, "import", store, self.tree_desc["out"], "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if r.returncode != 0:
                raise BenchError("cltfs import failed (%d): %s" % (
                    r.returncode, (r.stderr or r.stdout).decode("utf-8", "replace").strip()))
            log("imported in %.1f s" % (time.perf_counter() - t0))
        self.store = store
        self.cdn = os.path.join(self.work, "cdn")
        shutil.rmtree(self.cdn, ignore_errors=True)
        os.makedirs(self.cdn)
        self.nginx = Nginx(os.path.join(self.work, "nginx"), self.cdn, a.nginx_workers).start()
        # The fake Hub writes an answer's headers and its body in two sends; with
        # Nagle on, the body of an answer on a kept-alive connection waits for
        # the client's delayed ACK (~40 ms on Linux): a stall of the fake Hub,
        # not of cltfs nor of the real Hub.  TCP_NODELAY unless --hub-nagle.
        hubserver._Handler.disable_nagle_algorithm = not a.hub_nagle
        self.hub = Hub(token=None, lfs_threshold=1024, cdn_dir=self.cdn, cdn_url=self.nginx.url)
        t0 = time.perf_counter()
        self.commit = self.hub.add_repo(REPO_ID, store)
        self.hub.start()
        log("hub %s, nginx %s (%d worker(s)); repo hashed in %.1f s" % (
            self.hub.endpoint, self.nginx.url, a.nginx_workers, time.perf_counter() - t0))
        # E: the same Hub and nginx over a link with round trips: a second fake
        # Hub (its redirects name the CDN's proxy) and a delaying proxy in front
        # of each
        self.cdn_link = DelayProxy(self.nginx.port, a.rtt_ms / 1e3).start()
        self.hub_link = Hub(token=None, lfs_threshold=1024, cdn_dir=self.cdn, cdn_url=self.cdn_link.url)
        if self.hub_link.add_repo(REPO_ID, store) != self.commit:
            raise BenchError("the two fake Hubs gave the store different commits")
        self.hub_link.start()
        self.hub_proxy = DelayProxy(int(self.hub_link.endpoint.rsplit(":", 1)[1]), a.rtt_ms / 1e3).start()
        log("link: %d ms round trips, Hub behind %s, nginx behind %s" % (
            a.rtt_ms, self.hub_proxy.url, self.cdn_link.url))
        self.packs = cdn_names(store, self.cdn)       # packs/<w>.pack -> sha256
        if not self.packs:
            raise BenchError("%s has no packs" % store)
        self.pack_size = {p: os.path.getsize(os.path.join(store, p)) for p in self.packs}
        self.big_pack = max(self.packs, key=lambda p: (self.pack_size[p], p))
        self.big_url = "%s/%s" % (self.nginx.url, self.packs[self.big_pack])

    # ---- what nginx and the Hub saw during a measured operation
    def window(self):
        """Start a measured window: returns a token for done()."""
        nhub = sum(len(h.log) for h in (self.hub, self.hub_link))
        return (self.nginx.mark(), nhub, time.time())

    def done(self, token, t_end=None):
        """nginx's requests in the window and a profile of them:
        dict(wire, n, conns, hub (Hub requests), first (s from the start to the
        first nginx request's start), tail (s from the last one's end to t_end),
        odd (answers other than 200/206))."""
        mark, nhub, t0 = token
        t_end = time.time() if t_end is None else t_end
        reqs = self.nginx.since(mark)
        hub_n = sum(len(h.log) for h in (self.hub, self.hub_link)) - nhub
        p = dict(reqs=reqs, wire=sum(r[0] for r in reqs), n=len(reqs),
                 conns=len({r[6] for r in reqs}), hub=hub_n,
                 odd=[r for r in reqs if r[2] not in (200, 206)])
        if reqs:
            p["first"] = min(r[5] - r[1] for r in reqs) - t0
            p["tail"] = t_end - max(r[5] for r in reqs)
        return p

    # ---- metric A: cold sequential read of the largest y view
    def pick_views(self):
        """The largest y and x views, from a mount of the store itself."""
        m = Mount("cltfs-local", [self.a.cltfs, self.store, self.loc_mnt, "-f"], self.loc_mnt)
        try:
            m.start()
            self.vsizes = views(m.mnt)
        finally:
            self.unmount(m, "listing the views")
        ys = [v for v in self.vsizes if v.endswith("_y.pt")]
        xs = [v for v in self.vsizes if v.endswith("_x.pt")]
        if not ys or not xs:
            raise BenchError("the mount shows no x or y views: %s" % list(self.vsizes)[:5])
        self.yview = max(ys, key=lambda v: (self.vsizes[v], -layer_key(v), v))
        self.xview = max(xs, key=lambda v: (self.vsizes[v], layer_key(v), v))
        self.e_ranges = view_ranges(self.store, self.yview)

    def round_a(self, tag):
        m = self.mount(tag)
        try:
            n = self.vsizes[self.yview]
            w = self.window()
            dt = bench.timed_read(os.path.join(m.mnt, self.yview), n)
            p = self.done(w)
            try:
                with open(os.path.join(m.mnt, ".cltfs", "stats")) as f:
                    self.stats_a = json.load(f)
            except (OSError, ValueError) as e:
                log("could not read .cltfs/stats: %s" % e)
            self.t_mount.append(m.t_mount)
        finally:
            self.unmount(m, "round %s (A)" % tag)
        p.update(t=dt, view=n)
        self.rows["A"].append(p)

    def curl_whole(self):
        out = curl("-o", "/dev/null", "-w", "%{size_download} %{time_total}", self.big_url)
        size, t = out.split()
        if int(size) != self.pack_size[self.big_pack]:
            raise BenchError("curl got %s bytes of %s, expected %d" % (
                size, self.big_url, self.pack_size[self.big_pack]))
        self.rows["A curl"].append(float(t))

    def local_a(self):
        """For diagnosis: the same cold read from the store itself (fresh mount,
        packs in page cache): decoding and FUSE without the network."""
        m = Mount("cltfs-local", [self.a.cltfs, self.store, self.loc_mnt, "-f"], self.loc_mnt)
        try:
            m.start()
            self.rows["A local"].append(bench.timed_read(os.path.join(m.mnt, self.yview),
                                                         self.vsizes[self.yview]))
        finally:
            self.unmount(m, "local store (A)")

    # ---- metric B: open + first 1 MiB read in the middle of a cold x view
    def first_byte(self, mnt):
        path = os.path.join(mnt, self.xview)
        size = self.vsizes[self.xview]
        off = size // 2
        want = min(MiB, size - off)
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.pread(fd, want, off)
            dt = time.perf_counter() - t0
        finally:
            os.close(fd)
        if len(got) != want:
            raise BenchError("%s: read %d bytes at %d, expected %d" % (path, len(got), off, want))
        return dt, off, want

    def round_b(self, tag):
        m = self.mount(tag)
        try:
            w = self.window()
            dt, off, want = self.first_byte(m.mnt)
            p = self.done(w)
        finally:
            self.unmount(m, "round %s (B)" % tag)
        p.update(t=dt, off=off, len=want)
        self.rows["B"].append(p)

    def curl_range(self):
        out = curl("-o", "/dev/null", "-r", "0-%d" % (MiB - 1), "-w",
                   "%{http_code} %{size_download} %{time_total}", self.big_url)
        code, size, t = out.split()
        want = min(MiB, self.pack_size[self.big_pack])
        if code != "206" or int(size) != want:
            raise BenchError("curl -r of %s: %s, %s bytes" % (self.big_url, code, size))
        self.rows["B curl"].append(float(t))
        # for diagnosis: the same range through the Hub's resolve URL (302, then nginx)
        url = "%s/datasets/%s/resolve/%s/%s" % (self.hub.endpoint, REPO_ID, self.commit, self.big_pack)
        out = curl("-L", "-o", "/dev/null", "-r", "0-%d" % (MiB - 1), "-w", "%{time_total}", url)
        self.rows["B curl hub"].append(float(out))

    def local_b(self):
        m = Mount("cltfs-local", [self.a.cltfs, self.store, self.loc_mnt, "-f"], self.loc_mnt)
        try:
            m.start()
            self.rows["B local"].append(self.first_byte(m.mnt)[0])
        finally:
            self.unmount(m, "local store (B)")

    # ---- metric E: A's cold read over a link with round trips, against curl
    # of the frames the view needs over the same link
    def round_e(self, tag):
        m = self.mount(tag, self.hub_proxy.url)
        try:
            n = self.vsizes[self.yview]
            w = self.window()
            dt = bench.timed_read(os.path.join(m.mnt, self.yview), n)
            p = self.done(w)
            try:
                with open(os.path.join(m.mnt, ".cltfs", "stats")) as f:
                    self.stats_e = json.load(f)
            except (OSError, ValueError) as e:
                log("could not read .cltfs/stats: %s" % e)
        finally:
            self.unmount(m, "round %s (E)" % tag)
        p.update(t=dt, view=n, mount=m.t_mount)
        self.rows["E"].append(p)

    def curl_e(self):
        """One curl per range, all at once, each through the Hub's redirect
        (-L) as cltfs goes: the slowest one's time."""
        procs = []
        for pack, lo, hi in self.e_ranges:
            url = "%s/datasets/%s/resolve/%s/%s" % (self.hub_proxy.url, REPO_ID, self.commit, pack)
            procs.append(subprocess.Popen(
                ["curl", "-s", "-S", "--noproxy", "*", "-L", "-o", "/dev/null", "-r", "%d-%d" % (lo, hi - 1),
                 "-w", "%{http_code} %{size_download} %{time_total}", url],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        worst = 0.0
        for (pack, lo, hi), pr in zip(self.e_ranges, procs):
            out, err = pr.communicate()
            if pr.returncode != 0:
                raise BenchError("curl of %s over the link failed: %s" % (pack, err.decode().strip()))
            code, size, t = out.decode().split()
            if code != "206" or int(size) != hi - lo:
                raise BenchError("curl -r %d-%d of %s over the link: %s, %s bytes" % (lo, hi - 1, pack, code, size))
            worst = max(worst, float(t))
        self.rows["E curl"].append(worst)

    # ---- metric C: cltfs pull of everything vs one curl of every pack
    def pull(self, tag, dst):
        with self.env(tag):
            t0 = time.perf_counter()
            r = subprocess.run([self.a.cltfs, "pull", URL, dst, "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise BenchError("cltfs pull failed (%d): %s" % (
                r.returncode, (r.stderr or r.stdout).decode("utf-8", "replace").strip()))
        if r.stderr.strip():
            self.mount_logs.append(("pull %s" % tag, r.stderr.decode("utf-8", "replace").strip()))
        return dt

    def round_c(self, tag):
        dst = os.path.join(self.work, "pulled_" + tag)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.rmtree(os.path.join(self.work, "hf_" + tag), ignore_errors=True)
        w = self.window()
        dt = self.pull(tag, dst)
        p = self.done(w)
        p["packs"] = sum(q[0] for q in p["reqs"] if q[3].split(" ")[1].lstrip("/") in self.packs.values())
        p["t"] = dt
        # for diagnosis: the same pull again, with nothing left to fetch (the fixed cost)
        p["again"] = self.pull(tag, dst)
        self.pulled = dst
        self.rows["C"].append(p)

    def curl_all(self):
        args = []
        for p in sorted(self.packs):
            args += ["-o", "/dev/null", "%s/%s" % (self.nginx.url, self.packs[p])]
        t0 = time.perf_counter()
        out = curl("-w", "%{size_download}\n", *args)
        dt = time.perf_counter() - t0
        got = sum(int(x) for x in out.split())
        if got != sum(self.pack_size.values()):
            raise BenchError("curl of every pack got %d bytes, expected %d" % (
                got, sum(self.pack_size.values())))
        self.rows["C curl"].append(dt)

    # ---- content: the views read through the Hub equal the local store's
    def check_content(self):
        m = self.mount("check")
        loc = Mount("cltfs-local", [self.a.cltfs, self.store, self.loc_mnt, "-f"], self.loc_mnt)
        bad = []
        try:
            loc.start()
            for v in (self.yview, self.xview):
                if sha256_file(os.path.join(m.mnt, v)) != sha256_file(os.path.join(loc.mnt, v)):
                    bad.append(v)
        finally:
            self.unmount(m, "content check")
            self.unmount(loc, "content check, local store")
        r = subprocess.run([self.a.cltfs, "verify", self.pulled],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            bad.append("cltfs verify %s: %s" % (self.pulled, r.stdout.decode().strip()[-500:]))
        return bad

    def run(self):
        a = self.a
        self.setup()
        self.loc_mnt = os.path.join(self.work, "mnt_local")
        self.rows = {k: [] for k in ("A", "A curl", "A local", "B", "B curl", "B curl hub", "B local",
                                     "C", "C curl", "E", "E curl")}
        self.t_mount = []
        self.stats_a = self.stats_e = None
        self.pick_views()
        for rnd in range(a.rounds):
            tag = str(rnd)
            self.warm_packs()
            # the two sides of each ratio one after the other, in alternating order
            steps = [[lambda: self.round_a(tag), self.local_a, self.curl_whole],
                     [lambda: self.round_e(tag + "e"), self.curl_e],
                     [lambda: self.round_b(tag + "b"), self.curl_range],
                     [lambda: self.round_c(tag + "c"), self.curl_all]]
            for pair in steps:
                for f in (pair if rnd % 2 == 0 else pair[::-1]):
                    f()
            self.local_b()
            R = {k: v[-1] for k, v in self.rows.items()}
            log("round %d: A cltfs %.1f MB view in %s ms (%.1f MB wire, %d requests), curl %.1f MB "
                "in %s ms, local %s ms | E cltfs %s ms (%d requests), curl %s ms | B cltfs %s ms, curl %s ms "
                "| C pull %s ms, curl %s ms" % (
                    rnd + 1, R["A"]["view"] / 1e6, ms(R["A"]["t"]), R["A"]["wire"] / 1e6, R["A"]["n"],
                    self.pack_size[self.big_pack] / 1e6, ms(R["A curl"]), ms(R["A local"]), ms(R["E"]["t"]),
                    R["E"]["n"], ms(R["E curl"]), ms(R["B"]["t"]), ms(R["B curl"]), ms(R["C"]["t"]),
                    ms(R["C curl"])))
            if not a.keep:
                for p in ("local_" + tag, "local_%sb" % tag, "hf_" + tag, "hf_%sb" % tag, "hf_%sc" % tag,
                          "local_%se" % tag, "hf_%se" % tag):
                    shutil.rmtree(os.path.join(self.work, p), ignore_errors=True)
                if rnd < a.rounds - 1:
                    shutil.rmtree(os.path.join(self.work, "pulled_%sc" % tag), ignore_errors=True)
        bad = self.check_content()
        return self.report(bad)

    def report(self, bad):
        a, R = self.a, self.rows
        # best of the rounds on each side
        A = min(R["A"], key=lambda r: r["t"])
        view_mbs = A["view"] / A["t"] / 1e6
        wire_mbs = A["wire"] / A["t"] / 1e6
        psize = self.pack_size[self.big_pack]
        curl_mbs = psize / min(R["A curl"]) / 1e6
        local_mbs = A["view"] / min(R["A local"]) / 1e6
        B = min(R["B"], key=lambda r: r["t"])
        curl_b = min(R["B curl"])
        C = min(R["C"], key=lambda r: r["t"])
        total_packs = sum(self.pack_size.values())
        pull_mbs = total_packs / C["t"] / 1e6
        all_mbs = total_packs / min(R["C curl"]) / 1e6
        E = min(R["E"], key=lambda r: r["t"])
        curl_e = min(R["E curl"])
        e_bytes = sum(hi - lo for _, lo, hi in self.e_ranges)
        e_name = "E Hub store tier over a link with %d ms round trips / curl of the same bytes over it" % a.rtt_ms
        goals = {k.replace("%d", str(a.rtt_ms)): v for k, v in GOALS.items()}
        measured = {
            "A cold y view: cltfs wire / curl MB/s": wire_mbs / curl_mbs,
            "B first byte, cold x view: cltfs / curl": B["t"] / curl_b,
            "C pull / curl of every pack, MB/s": pull_mbs / all_mbs,
            "D Hub store tier, cold y view / the same read from a local store": view_mbs / local_mbs,
            e_name: curl_e / E["t"],
        }
        print()
        if self.tree_desc:
            d = self.tree_desc
            what = "%d views, %.1f MB materialized (d=%d, %d layers, %d batch(es), T=%s)" % (
                len(self.vsizes), d["bytes"] / 1e6, d["d"], len(d["layers"]), d["n_batches"], d["T"])
        else:
            what = "%d views of %s" % (len(self.vsizes), self.store)
        print("cltfs Hub-tier benchmark: %s; %d pack(s), %.1f MB; %d rounds" % (
            what, len(self.packs), total_packs / 1e6, a.rounds))
        print()
        bench.print_goals(goals, measured)
        print()
        print("absolute numbers (best of %d rounds; nginx on 127.0.0.1, %d worker(s), packs in page "
              "cache):" % (a.rounds, a.nginx_workers))

        def prof(p):
            if not p["n"]:
                return "no nginx requests"
            return ("%.2f MB from nginx in %d request(s) on %d connection(s), %d Hub request(s); "
                    "first nginx request %s ms after the start, last done %s ms before the end" % (
                        p["wire"] / 1e6, p["n"], p["conns"], p["hub"], ms(p["first"]), ms(p["tail"])))
        print("  A  %s: %.1f MB view, %d KiB reads, fresh mount + local store + HF cache each round"
              % (self.yview, A["view"] / 1e6, bench.READ_SIZE // 1024))
        print("     cltfs  %7.1f MB/s view, %7.1f MB/s wire (%s ms)" % (view_mbs, wire_mbs, ms(A["t"])))
        print("            %s" % prof(A))
        print("     curl   %7.1f MB/s (%s, %.1f MB, whole)" % (curl_mbs, self.big_pack, psize / 1e6))
        print("     view bytes / wire bytes: %.2f" % (A["view"] / A["wire"] if A["wire"] else float("nan")))
        print("     cltfs on the store itself (fresh mount, packs in page cache; diagnosis): %.1f MB/s "
              "view; Hub / local: %.2f" % (local_mbs, view_mbs / local_mbs))
        if A["wire"]:
            ceil = local_mbs * A["wire"] / A["view"]
            print("       as wire-equivalent MB/s %.1f = %.2f of curl: what decoding and FUSE alone "
                  "leave of A's ratio on this machine" % (ceil, ceil / curl_mbs))
        print("     rounds: cltfs %s ms (wire MB %s); curl %s ms; local store %s ms" % (
            times([r["t"] for r in R["A"]], 1e3, "%.1f"),
            " ".join("%.1f" % (r["wire"] / 1e6) for r in R["A"]), times(R["A curl"], 1e3, "%.1f"),
            times(R["A local"], 1e3, "%.1f")))
        print("  D  = A's cltfs read / the same read from the store itself (above): %.2f" % (view_mbs / local_mbs))
        print("  E  %s over a link with %d ms round trips (delaying proxies in front of the Hub and nginx),"
              " fresh mount each round" % (self.yview, a.rtt_ms))
        print("     cltfs  %s ms, %.1f MB/s view; %s" % (ms(E["t"]), E["view"] / E["t"] / 1e6, prof(E)))
        print("     curl   %s ms: the %.2f MB of frames the view needs, %d range(s) via the Hub's 302 (curl -L),"
              " one process each, at once" % (ms(curl_e), e_bytes / 1e6, len(self.e_ranges)))
        print("     rounds: cltfs %s ms (wire MB %s, requests %s); curl %s ms" % (
            times([r["t"] for r in R["E"]], 1e3, "%.1f"),
            " ".join("%.1f" % (r["wire"] / 1e6) for r in R["E"]), " ".join(str(r["n"]) for r in R["E"]),
            times(R["E curl"], 1e3, "%.1f")))
        # the mount also asks the Hub where the packs are served from (so
        # that the read goes to the CDN at once): its time over the link
        print("     mount over the link (listing, manifest, indexes, packs located): %s ms best (%s)" % (
            ms(min(r["mount"] for r in R["E"])), times([r["mount"] for r in R["E"]], 1e3, "%.0f")))
        if self.stats_e is not None:
            print("     .cltfs/stats after a cold E read: %s" % json.dumps(self.stats_e, sort_keys=True))
        print("  B  %s: open() + pread(%d bytes at %d), fresh mount each round"
              % (self.xview, B["len"], B["off"]))
        print("     cltfs  %s ms; %s" % (ms(B["t"]), prof(B)))
        print("     curl   %s ms (-r 0-%d of a pack on nginx); via the Hub's 302 (curl -L): %s ms" % (
            ms(curl_b), MiB - 1, ms(min(R["B curl hub"]))))
        print("     cltfs on the store itself (diagnosis): %s ms" % ms(min(R["B local"])))
        print("     rounds: cltfs %s ms; curl %s ms; curl via the Hub %s ms; local store %s ms" % (
            times([r["t"] for r in R["B"]], 1e3, "%.1f"), times(R["B curl"], 1e3, "%.1f"),
            times(R["B curl hub"], 1e3, "%.1f"), times(R["B local"], 1e3, "%.1f")))
        print("  C  cltfs pull: %s ms, %.1f MB/s of pack bytes (%.1f MB of packs from nginx; %d "
              "requests in all on %d connection(s), %.2f MB, %d Hub requests)" % (
                  ms(C["t"]), pull_mbs, C["packs"] / 1e6, C["n"], C["conns"], C["wire"] / 1e6, C["hub"]))
        print("     curl:       %s ms, %.1f MB/s (one process, %d pack(s) one after another)" % (
            ms(min(R["C curl"])), all_mbs, len(self.packs)))
        print("     pull again, nothing to fetch (its fixed cost; diagnosis): %s ms" % ms(
            min(r["again"] for r in R["C"])))
        print("     rounds: pull %s ms; curl %s ms (both: process wall time)" % (
            times([r["t"] for r in R["C"]], 1e3, "%.1f"), times(R["C curl"], 1e3, "%.1f")))
        print("  mount (hf:// listing, manifest, indexes): %s ms best (%s)" % (
            ms(min(self.t_mount)), times(self.t_mount, 1e3, "%.0f")))
        if self.stats_a is not None:
            print("  .cltfs/stats after a cold A read: %s" % json.dumps(self.stats_a, sort_keys=True))
        odd = [r for k in ("A", "B", "C", "E") for row in R[k] for r in row["odd"]]
        if odd:
            print("  WARNING: nginx answered %d request(s) with an unexpected status, e.g. %s" % (
                len(odd), odd[:3]))
        if self.stats_a and self.stats_a.get("errors"):
            print("  WARNING: cltfs counted %s errors" % self.stats_a["errors"])
        for what, err in self.mount_logs:
            print("  cltfs said (%s): %s" % (what, err.replace("\n", "\n    ")[-1500:]))
        nerr = self.nginx.errors().strip()
        if nerr:
            print("  nginx error log: %s" % nerr[-1500:])
        if bad:
            print()
            print("CONTENT MISMATCH via the Hub: %s" % bad)
            return 1
        print("  content: %s and %s via the Hub equal the local store's; the pulled store verifies"
              % (self.yview, self.xview))
        return 0

    def close(self):
        Mount.stop_all()
        if self.hub is not None:
            try:
                self.hub.stop()
            except Exception as e:
                log("stopping the hub: %s" % e)
        for p in (getattr(self, "hub_proxy", None), getattr(self, "cdn_link", None)):
            if p is not None:
                p.stop()
        if getattr(self, "hub_link", None) is not None:
            try:
                self.hub_link.stop()
            except Exception as e:
                log("stopping the link's hub: %s" % e)
        if self.nginx is not None:
            self.nginx.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cltfs", default=os.path.join(REPO, "build", "cltfs"))
    ap.add_argument("--quick", action="store_true", help="a ~64 MB tree (d=1024), for smoke tests")
    ap.add_argument("--rounds", type=int, default=3, help="repeats, best taken (default 3)")
    ap.add_argument("--workdir", default=None,
                    help="work here (the generated tree is kept and reused; default: a temporary "
                         "dir under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep everything in the workdir")
    ap.add_argument("--store", default=None, help="serve this store instead of generating one")
    ap.add_argument("--total-mb", type=float, default=None,
                    help="materialized tree size (default 300, 64 with --quick)")
    ap.add_argument("--d", type=int, default=None, help="d_model (default 4096; 1024 --quick)")
    ap.add_argument("--n-layers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--rtt-ms", type=int, default=50,
                    help="E: the round trip of the delaying proxies' link, in ms (default 50)")
    ap.add_argument("--hub-nagle", action="store_true",
                    help="leave Nagle on in the fake Hub, as tests/hubserver.py has it (its "
                         "answers on kept-alive connections then stall ~40 ms on delayed ACKs)")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if a.total_mb is None:
        a.total_mb = 64.0 if a.quick else 300.0
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    a.cltfs = os.path.abspath(a.cltfs)
    if not os.access(a.cltfs, os.X_OK):
        print("hub_bench: %s: not an executable (run make first)" % a.cltfs, file=sys.stderr)
        return 1
    for exe in (NGINX, shutil.which("curl"), shutil.which("fusermount3")):
        if not exe or not os.access(exe, os.X_OK):
            print("hub_bench: needs nginx (%s), curl and fusermount3" % NGINX, file=sys.stderr)
            return 1

    bench.unwind_on_signals()
    t0 = time.perf_counter()
    workdir = bench.workdir_of(a, "cltfs-hubbench-", "/tmp")[0]
    b = Bench(a, workdir)
    try:
        return b.run()
    except (BenchError, NginxError, OSError, subprocess.SubprocessError, ValueError) as e:
        print("hub_bench: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("hub_bench: interrupted (%s)" % e, file=sys.stderr)
        return 1
    finally:
        b.close()
        if not a.keep:
            if a.workdir:       # keep the tree for the next run, drop the rest
                store = os.path.abspath(a.store) if a.store else None
                for n in os.listdir(workdir):
                    p = os.path.join(workdir, n)
                    if n in ("tree", "tree.json") or (
                            store and (store + "/").startswith(p + "/")):
                        continue
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        os.unlink(p)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        else:
            log("kept %s" % workdir)
        log("done in %.1f s" % (time.perf_counter() - t0))


if __name__ == "__main__":
    sys.exit(main())
