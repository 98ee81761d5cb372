#!/usr/bin/python3
"""Why hfcache/ranges.c fetches a reader's spans on HTTP/1.1 connections
and not as streams of one HTTP/2 connection, measured.

Usage (run with /usr/bin/python3):

    h2_bench.py [--probe build/h2_probe] [--rounds 3] [--ranges 8] [--mib 8]
                [--rtt-ms 50] [--window-kb 4096]

A CDN that offers HTTP/2 (nginx over TLS, a self-signed certificate made
here) behind hub_bench.py's delaying proxy, with a TCP window per
connection: at most --window-kb of a connection's bytes unacknowledged
(an ack comes back a round trip after the bytes left the server), as
Linux's default receive buffer (tcp_rmem, 6 MB) bounds a connection's
window over a far link.  --ranges ranges of --mib MiB of one file are
fetched at once, side by side in each round, best of the rounds:

  h2    bench/h2_probe.c as ranges.c did: libcurl's multi handle, HTTP/2
        where offered, PIPEWAIT, multiplexing: one connection
  h1    bench/h2_probe.c as ranges.c does: HTTP/1.1, up to 8 connections
  curl  curl --parallel --http1.1 of the same ranges (reported)

and prints h1 / h2 (goal >= 1.5: a far link is where the mount's frames
come from, and one connection carries at most its window a round trip)
with the connections each opened.  Goals missed are reported; exit 0
unless something failed to run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from hub_bench import DelayProxy                # noqa: E402
from nginxserver import NGINX, Nginx, make_cert  # noqa: E402

GOAL = 1.5


def probe(a, url, cert, mode):
    r = subprocess.run([a.probe, url, cert, mode, str(a.ranges), str(a.mib)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("h2_probe %s: %s" % (mode, (r.stderr or r.stdout).strip()))
    t, conns = r.stdout.split()
    return float(t), int(conns)


def curl_parallel(a, url, cert):
    args = ["curl", "-s", "-S", "--noproxy", "*", "--cacert", cert, "--http1.1", "--parallel",
            "--parallel-max", str(a.ranges)]
    for i in range(a.ranges):
        args += ["-r", "%d-%d" % (i * (a.mib << 20), (i + 1) * (a.mib << 20) - 1), "-o", "/dev/null", url]
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("curl: %s" % r.stderr.strip())
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", default=os.path.join(os.path.dirname(HERE), "build", "h2_probe"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ranges", type=int, default=8)
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--rtt-ms", type=int, default=50)
    ap.add_argument("--window-kb", type=int, default=4096)
    a = ap.parse_args()
    for exe in (a.probe, NGINX, shutil.which("curl"), shutil.which("openssl")):
        if not exe or not os.access(exe, os.X_OK):
            print("h2_bench: needs %s, nginx, curl and openssl (make build/h2_probe; make deps)" % a.probe,
                  file=sys.stderr)
            return 1
    work = tempfile.mkdtemp(prefix="cltfs-h2bench-")
    nginx = proxy = None
    try:
        cdn = os.path.join(work, "cdn")
        os.makedirs(cdn)
        with open(os.path.join(cdn, "blob"), "wb") as f:
            f.write(os.urandom(a.ranges * (a.mib << 20)))
        cert, key = make_cert(work)
        nginx = Nginx(os.path.join(work, "nginx"), cdn, tls=(cert, key)).start()
        proxy = DelayProxy(nginx.port, a.rtt_ms / 1e3, window=a.window_kb << 10).start()
        url = "https://127.0.0.1:%d/blob" % proxy.port
        rows = {"h2": [], "h1": [], "curl": []}
        for rnd in range(a.rounds):
            order = ["h2", "h1", "curl"] if rnd % 2 == 0 else ["curl", "h1", "h2"]
            for mode in order:
                rows[mode].append(curl_parallel(a, url, cert) if mode == "curl" else probe(a, url, cert, mode))
        h2 = min(rows["h2"])
        h1 = min(rows["h1"])
        cu = min(rows["curl"])
        ratio = h2[0] / h1[0]
        mb = a.ranges * a.mib * (1 << 20) / 1e6
        print("\ncltfs HTTP/2 vs HTTP/1.1 benchmark: %d ranges of %d MiB at once over %d ms round trips, "
              "%d KiB window a connection; best of %d rounds\n" % (a.ranges, a.mib, a.rtt_ms, a.window_kb,
                                                                 a.rounds))
        print("%-68s %9s %8s  %s" % ("metric", "measured", "goal", "status"))
        print("-" * 98)
        print("%-68s %9.2f %8s  %s" % ("h1 (ranges.c now) / h2 (ranges.c before), MB/s", ratio,
                                       ">= %.1f" % GOAL, "ok" if ratio >= GOAL else "MISS"))
        print("\n  h2    %.3f s, %.0f MB/s, %d connection(s)   (rounds: %s)" % (
            h2[0], mb / h2[0], h2[1], " ".join("%.3f" % r[0] for r in rows["h2"])))
        print("  h1    %.3f s, %.0f MB/s, %d connection(s)   (rounds: %s)" % (
            h1[0], mb / h1[0], h1[1], " ".join("%.3f" % r[0] for r in rows["h1"])))
        print("  curl  %.3f s, %.0f MB/s (--parallel --http1.1)   (rounds: %s)" % (
            cu, mb / cu, " ".join("%.3f" % r for r in rows["curl"])))
        print("  one connection's ceiling: window / round trip = %.0f MB/s" % (
            (a.window_kb << 10) / (a.rtt_ms / 1e3) / 1e6))
        return 0
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print("h2_bench: %s" % e, file=sys.stderr)
        return 1
    finally:
        if proxy:
            proxy.stop()
        if nginx:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
