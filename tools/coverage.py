#!/usr/bin/python3
"""Line coverage of cltfs's C code by the unit tests and the pytest suite.

Usage (make coverage runs it; about 5 minutes on 2 cores):

    tools/coverage.py BUILD_DIR [--top N] [--file PATH ...]

BUILD_DIR holds a build made with CFLAGS="-O0 -g --coverage" (make
coverage makes it in build-cov/) after its tests ran: the .gcda files
gcc's instrumentation wrote.  Prints the total, then the N files with
the most lines never run, each with its share run; with --file, the lines
of those sources that never ran (gcov's '#####'), for reading which error
paths no test reaches.  Out-of-memory branches are listed too: they are
tested by tests/fs_view.c's failing allocator, not by the end-to-end suite.

Exit 1 when BUILD_DIR has no coverage data (build or tests not run).
"""

import argparse
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = ("/tests/", "/pic/", "/asan/", "/fuzz/")  # test programs and other builds


def gcda_files(build):
    out = []
    for root, _, files in os.walk(build):
        for f in files:
            p = os.path.join(root, f)
            if f.endswith(".gcda") and not any(s in p + "/" for s in SKIP):
                out.append(p)
    return sorted(out)


def summaries(build, gcdas):
    """{source: (lines run, lines)} from gcov's summary of each object."""
    best = {}
    for g in gcdas:
        r = subprocess.run(["gcov", "-n", "-o", os.path.dirname(g), g], cwd=REPO,
                           capture_output=True, text=True)
        for m in re.finditer(r"File '([^']*)'\nLines executed:([0-9.]+)% of (\d+)", r.stdout):
            src, pct, n = m.group(1), float(m.group(2)), int(m.group(3))
            if src.startswith("/") or src.endswith(".h"):
                continue  # system headers; ours are counted in the .c that inlines them
            run = round(pct * n / 100)
            if src not in best or n > best[src][1]:
                best[src] = (run, n)
    return best


def never_run(build, src):
    """[(line number, text)] of src's lines that never ran."""
    obj = os.path.join(build, os.path.splitext(src)[0] + ".gcda")
    if not os.path.exists(obj):
        raise SystemExit("coverage: no data for %s (%s)" % (src, obj))
    # -t: the annotated source on stdout (every file the object includes,
    # each after a "0:Source:" line), nothing written beside it
    r = subprocess.run(["gcov", "-t", "-o", os.path.dirname(obj), src], cwd=REPO,
                       capture_output=True, text=True, check=True)
    out, cur = [], None
    for line in r.stdout.splitlines():
        parts = line.split(":", 3)
        if len(parts) < 3:
            continue
        count, no = parts[0].strip(), parts[1].strip()
        if no == "0" and parts[2] == "Source":
            cur = parts[3]
        elif cur == src and count == "#####":
            out.append((int(no), line.split(":", 2)[2]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--file", action="append", default=[], help="a source (e.g. hfcache/s3.c): its lines never run")
    a = ap.parse_args()
    gcdas = gcda_files(a.build)
    if not gcdas:
        print("coverage: no .gcda files under %s: build with --coverage and run the tests first" % a.build,
              file=sys.stderr)
        return 1
    best = summaries(a.build, gcdas)
    run = sum(v[0] for v in best.values())
    total = sum(v[1] for v in best.values())
    print("coverage: %d of %d lines of %d C sources run (%.1f%%)" % (run, total, len(best), 100.0 * run / total))
    print("%-30s %8s %6s" % ("file (most lines never run first)", "not run", "run"))
    for src, (r, n) in sorted(best.items(), key=lambda kv: kv[1][1] - kv[1][0], reverse=True)[:a.top]:
        print("%-30s %8d %5.1f%%" % (src, n - r, 100.0 * r / n if n else 100.0))
    for src in a.file:
        print("\n%s: lines never run" % src)
        for no, text in never_run(a.build, src):
            print("%6d  %s" % (no, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
