#!/usr/bin/python3
"""Benchmark cltfs's S3 store tier and push against curl and boto3 on the
same S3 server.

Usage (run with /usr/bin/python3, which has torch and boto3):

    s3_bench.py [--cltfs build/cltfs] [--rounds 3] [--batches 4] [--keep]

It builds a store of the reference shape (tests/gen_tree.py: L0..L30 of
32 layers, 16 targets, d=2048, bf16, as bench.py; then `cltfs import`),
starts s3rver
(tests/s3server.py: build/node, `make deps` installs it) on 127.0.0.1 and
talks to it directly (s3rver's own credentials; no checking proxy, which
would be the bottleneck), and measures side by side, interleaved in each
round, the best round taken on each side:

  S1 cold read of every view through an S3 mount, batch-major (each
     layer's x and y of batch 0, then of batch 1, ...: a CLT training
     step's order; a fresh local store each round): pack bytes received
     over the read time,
     against curl downloading the largest pack whole (signed with
     --aws-sigv4, the same server)                             goal >= 0.9
     and its view bytes over the read time against the same read from
     the local store (a fresh mount, packs in the page cache): the local-
     store path of hub_bench.py's row D                        goal >= 0.9
     (a reference-shaped store's views are ~12x its packs: the wire rate
     of S1 is bounded by the FUSE copy of every view byte)
  S2 `cltfs pull` of the whole store (process wall time), against curl
     downloading every pack                                    (reported)
  S3 `cltfs push` of the store to a fresh prefix (process wall time),
     against boto3's upload_file of the same files (its default multipart
     transfer: 8 MiB parts, 10 threads)                        goal >= 1.0
  S4 S1 over a link with --rtt-ms round trips (hub_bench.py's delaying
     proxy between client and server: this machine has no netem), against
     curl of the largest pack over the same link                (reported)

On loopback S1 is CPU-bound on two cores shared with the server: every
frame that arrives is decoded (checked and used), appended to the local
store and copied through FUSE; and s3rver spends ~2 ms of CPU on each
GET, so the requests each cold read made are printed below the table,
with the CPU the daemon and s3rver spent a GB of views in S1, S4 and the
local read (from /proc: where the cores went).
S4 is the case users have: a bucket tens of milliseconds away.

Goals missed are reported, not asserted: exit 0 unless something failed to
run or a view read from S3 differs from the local store's (1).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import gen_tree  # noqa: E402
from s3server import S3, have_s3rver  # noqa: E402

KEY = SECRET = "S3RVER"  # s3rver's own account: it checks signatures made with it


def mb_s(nbytes, secs):
    return nbytes / 1e6 / secs if secs > 0 else float("inf")


def files_of(store):
    out = []
    for root, _, files in os.walk(store):
        for f in files:
            p = os.path.join(root, f)
            out.append((os.path.relpath(p, store), p, os.path.getsize(p)))
    return sorted(out)


def wait_mount(mnt, proc, timeout=30):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with open("/proc/self/mounts") as f:
            if any(line.split()[1] == mnt for line in f):
                return
        if proc.poll() is not None:
            raise RuntimeError("cltfs exited: %s" % proc.stdout.read())
        time.sleep(0.02)
    raise RuntimeError("mount not up")


class Mounted:
    def __init__(self, cltfs, source, mnt, env, opts=()):
        os.makedirs(mnt, exist_ok=True)
        cmd = [cltfs, source, mnt, "-f"] + (["-o", ",".join(opts)] if opts else [])
        self.mnt, self.proc = mnt, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT, text=True)
        wait_mount(mnt, self.proc)

    def stats(self):
        import json
        with open(os.path.join(self.mnt, ".cltfs/stats"), "rb") as f:
            return json.loads(f.read())

    def close(self):
        subprocess.run(["fusermount3", "-u", self.mnt], check=False)
        self.proc.wait(timeout=30)


def cpu_s(pid):
    """CPU seconds (user + system, all threads) a process has used."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_views(mnt, rels):
    n = 0
    for rel in rels:
        with open(os.path.join(mnt, rel), "rb", buffering=0) as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                n += len(b)
    return n


def curl_get(s3, url, out="/dev/null"):
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "-f", "-o", out, "--aws-sigv4", "aws:amz:%s:s3" % s3.region,
                    "-u", "%s:%s" % (KEY, SECRET), "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", url],
                   check=True)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cltfs", default=str(HERE.parent / "build" / "cltfs"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4, help="batches of one sample (default 4: a ~270 MB store)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--rtt-ms", type=float, default=50.0)
    a = ap.parse_args()
    if not have_s3rver():
        print("s3_bench: s3rver is not installed (make deps)", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="s3bench-")
    s3 = None
    try:
        # the reference shape, as bench.py's: L0..L30 of 32, 16 targets, bf16
        desc = gen_tree.make_tree(work + "/tree", layers="0-30", n_layers=32, batches=a.batches,
                                  samples_per_batch=1, d=2048, dtype="bfloat16", n_targets=16,
                                  min_tokens=300, max_tokens=500, seed=5)
        store = work + "/store"
        subprocess.run([a.cltfs, "import", store, work + "/tree", "--quiet"], check=True)
        shutil.rmtree(work + "/tree")
        files = files_of(store)
        packs = [f for f in files if f[0].endswith(".pack")]
        pack_bytes = sum(f[2] for f in packs)
        total = sum(f[2] for f in files)
        print("s3_bench: store of %.1f MB (%d packs), s3rver on loopback, %d rounds" %
              (total / 1e6, len(packs), a.rounds))
        s3 = S3(key_id=KEY, secret=SECRET).start()
        boto = s3.client(endpoint=s3.direct)
        from boto3.s3.transfer import TransferConfig
        for rel, p, _ in files:
            boto.upload_file(p, s3.bucket, "src/" + rel)
        base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # batch-major: every layer's x and y of batch 0, then of batch 1,
        # ...: what a cross-layer transcoder's training steps read
        views = sorted(desc["files"], key=lambda r: (int(r.split("_")[1]), int(r.split("/")[0][1:]), r))
        best = {}
        gets = {}  # pack GETs of each cold read, by row
        cpu = {}   # CPU and wall seconds a GB of views, by row


        def keep(name, v):
            best[name] = max(best.get(name, 0.0), v)

        def keep_cpu(key, daemon_s, server_s, dt, nbytes):
            """The fastest round's CPU (daemon, s3rver) and wall seconds a GB of views."""
            gb = nbytes / 1e9
            if key not in cpu or dt / gb < cpu[key][2]:
                cpu[key] = (daemon_s / gb, server_s / gb, dt / gb)

        def cold_read(endpoint, tag, curl_key, mount_key):
            """curl of the largest pack, then the views through a fresh
            mount, both via endpoint; the mount, still up, is returned."""
            env = dict(base, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION=s3.region,
                       AWS_ENDPOINT_URL=endpoint, XDG_CACHE_HOME="%s/xdg-%s" % (work, tag))
            big = max(packs, key=lambda f: f[2])
            keep(curl_key, mb_s(big[2], curl_get(s3, "%s/%s/src/%s" % (endpoint, s3.bucket, big[0]))))
            m = Mounted(a.cltfs, "s3://%s/src" % s3.bucket, "%s/mnt-%s" % (work, tag), env)
            try:
                c0, s0 = cpu_s(m.proc.pid), cpu_s(s3.node.pid)
                t0 = time.monotonic()
                nbytes = read_views(m.mnt, views)
                dt = time.monotonic() - t0
                keep_cpu(mount_key, cpu_s(m.proc.pid) - c0, cpu_s(s3.node.pid) - s0, dt, nbytes)
                hub = m.stats()["hub"]
                keep(mount_key, mb_s(hub["bytes"], dt))
                keep(mount_key + " views", mb_s(nbytes, dt))
                gets.setdefault(mount_key, []).append(hub["requests"])
            except BaseException:
                m.close()
                raise
            return env, m
        for rnd in range(a.rounds):
            # S1: cold views through the mount, vs curl of the largest pack
            env, m = cold_read(s3.direct, str(rnd), "curl pack MB/s", "S1 mount MB/s")
            try:
                if rnd == 0:
                    local = Mounted(a.cltfs, store, "%s/local" % work, env)
                    try:
                        for rel in views[:8]:
                            with open(os.path.join(m.mnt, rel), "rb") as f1, \
                                    open(os.path.join(local.mnt, rel), "rb") as f2:
                                if f1.read() != f2.read():
                                    print("s3_bench: %s differs from the local store's" % rel)
                                    return 1
                    finally:
                        local.close()
            finally:
                m.close()
            # S1 against the same read from the local store (a fresh mount,
            # its packs in the page cache): what the S3 tier costs
            for f in packs:
                with open(f[1], "rb") as fh:
                    while fh.read(1 << 24):
                        pass
            local = Mounted(a.cltfs, store, "%s/local" % work, env)
            try:
                c0 = cpu_s(local.proc.pid)
                t0 = time.monotonic()
                nbytes = read_views(local.mnt, views)
                dt = time.monotonic() - t0
                keep("local views MB/s", mb_s(nbytes, dt))
                keep_cpu("local", cpu_s(local.proc.pid) - c0, 0.0, dt, nbytes)
            finally:
                local.close()
            # S2: pull vs curl of every pack
            t0 = time.monotonic()
            subprocess.run([a.cltfs, "pull", "s3://%s/src" % s3.bucket, "%s/pulled%d" % (work, rnd), "--quiet"],
                           env=env, check=True)
            keep("S2 pull MB/s", mb_s(pack_bytes, time.monotonic() - t0))
            t = sum(curl_get(s3, "%s/%s/src/%s" % (s3.direct, s3.bucket, f[0])) for f in packs)
            keep("curl packs MB/s", mb_s(pack_bytes, t))
            # S3: push vs boto3 upload_file
            t0 = time.monotonic()
            subprocess.run([a.cltfs, "push", store, "s3://%s/push%d" % (s3.bucket, rnd), "--quiet"],
                           env=env, check=True)
            keep("S3 push MB/s", mb_s(total, time.monotonic() - t0))
            t0 = time.monotonic()
            cfg = TransferConfig()
            for rel, p, _ in files:
                boto.upload_file(p, s3.bucket, "boto%d/%s" % (rnd, rel), Config=cfg)
            keep("boto3 MB/s", mb_s(total, time.monotonic() - t0))
        # S4: the same cold read over a link with round trips
        from hub_bench import DelayProxy
        link = DelayProxy(int(s3.direct.rsplit(":", 1)[1]), a.rtt_ms / 1e3).start()
        try:
            for rnd in range(a.rounds):
                cold_read(link.url, "link%d" % rnd, "curl link MB/s", "S4 link MB/s")[1].close()
        finally:
            link.stop()
        rows = [("S1 cold views through an S3 mount (wire) / curl of a pack", best["S1 mount MB/s"],
                 best["curl pack MB/s"], 0.9),
                ("S1 the same read, view bytes / the same from the local store", best["S1 mount MB/s views"],
                 best["local views MB/s"], 0.9),
                ("S2 cltfs pull / curl of every pack", best["S2 pull MB/s"], best["curl packs MB/s"], None),
                ("S3 cltfs push / boto3 upload_file", best["S3 push MB/s"], best["boto3 MB/s"], 1.0),
                ("S4 S1 over a %.0f ms link / curl of a pack over it" % a.rtt_ms, best["S4 link MB/s"],
                 best["curl link MB/s"], None)]
        for name, x, y, goal in rows:
            r = x / y
            mark = "" if goal is None else ("  goal >= %.1f %s" % (goal, "met" if r >= goal else "MISSED"))
            print("  %-62s %7.1f / %7.1f MB/s = %.2fx%s" % (name, x, y, r, mark))
        # Where the cores go: on loopback the server shares the 2 cores
        # with the daemon and the reader.
        for key in ("local", "S1 mount MB/s", "S4 link MB/s"):
            if key in cpu:
                d, srv, wall = cpu[key]
                print("  %-8s CPU s a GB of views (fastest round): daemon %.2f, s3rver %.2f; wall %.2f s a GB "
                      "(%d cores)" % (key.split()[0], d, srv, wall, os.cpu_count()))
        for key in sorted(gets):
            print("  %s: requests of each cold read (listing and metadata too): %s" % (
                key.split()[0], " ".join(str(n) for n in gets[key])))
        return 0
    finally:
        if s3:
            s3.stop()
        if a.keep:
            print("s3_bench: kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
