#!/usr/bin/python3
"""Benchmark cltfs's capture against the reference forward, side by side.

Usage (run with /usr/bin/python3, which has torch):

    capture_bench.py [--cltfs build/cltfs] [--samples 24] [--layers 8] [--rounds 3] [--keep]

On a tiny random LLaVA-1.5-shaped checkpoint (tests/make_llava.py) and an
AMBER-style query set, both sides on this machine's CPU in fp32:

  tokens/s   `cltfs capture` of every sample, as it reports it (the
             batches, store writes included, the model's load not),
             against tests/llava_ref.py doing what the reference capture
             does per sample (tokenize, preprocess with PIL, forward) in
             this process (its load excluded too)          goal >= 1.0
             and the same with cltfs's whole process wall time (the
             library and model load included)
  memory     peak RSS of the `cltfs capture` process
  miss       a mounted store made by `cltfs init`: open + read of a cold
             x view, the first (the model loads) and a later one (the model
             is loaded), against the reference's forward of one sample

The model here is small, so per-call overheads weigh more than they would
on LLaVA-1.5-7B; the numbers say how cltfs's own work compares, not what a
7B capture costs.  Goals missed are printed, not asserted.
"""
import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

import torch  # noqa: E402

import llava_ref  # noqa: E402
import make_llava  # noqa: E402
import sample_table  # noqa: E402


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def reference_seconds(model_dir, data_dir, queries):
    m = llava_ref.load(model_dir, torch.float32)
    t0 = time.perf_counter()
    rows = 0
    with torch.no_grad():
        for q in queries:  # per sample, as the reference capture script: tokenize, preprocess, forward
            ids = llava_ref.tokenize(m, llava_ref.prompt(q["query"]))
            px = llava_ref.preprocess(m, os.path.join(data_dir, "images", q["image"]))
            rows += llava_ref.forward(m, ids, px, hooks=("mlp_in", "mlp_out"))["rows"]
    return time.perf_counter() - t0, rows


def capture_seconds(cltfs, model_dir, data_dir, store):
    shutil.rmtree(store, ignore_errors=True)
    subprocess.run([cltfs, "init", store, "--model", model_dir, "--dataset", os.path.join(data_dir, "queries.json"),
                    "--image-dir", os.path.join(data_dir, "images"), "--quiet"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    r = subprocess.run([cltfs, "capture", store], check=True, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    m = re.search(r"rows in ([0-9.]+) s", r.stderr)
    if not m:
        raise SystemExit("cltfs capture did not report its time: " + r.stderr)
    manifest = sample_table.manifest(store)
    return dt, float(m.group(1)), sum(s["rows"] for s in manifest["samples"]), max(peak, before)


def miss_seconds(cltfs, model_dir, data_dir, work):
    store, mnt = os.path.join(work, "miss-store"), os.path.join(work, "mnt")
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(mnt, exist_ok=True)
    subprocess.run([cltfs, "init", store, "--model", model_dir, "--dataset", os.path.join(data_dir, "queries.json"),
                    "--image-dir", os.path.join(data_dir, "images"), "--quiet"], check=True)
    proc = subprocess.Popen([cltfs, store, mnt, "-f"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        times = []
        for k in (0, 1):
            t0 = time.perf_counter()
            with open(os.path.join(mnt, "L0", "batch_%d_x.pt" % k), "rb") as f:
                while f.read(1 << 20):
                    pass
            times.append(time.perf_counter() - t0)
        return times
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=False)
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cltfs", default=os.path.join(REPO, "build", "cltfs"))
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cltfs-capbench-")
    try:
        model_dir, data_dir = os.path.join(work, "model"), os.path.join(work, "data")
        make_llava.make_llava(model_dir, seed=0, layers=a.layers)
        make_llava.make_dataset(data_dir, n=a.samples, seed=0)
        queries = json.load(open(os.path.join(data_dir, "queries.json")))
        cap, run, ref, peak = [], [], [], 0
        for r in range(a.rounds):
            dt, rt_c, rows_c, p = capture_seconds(a.cltfs, model_dir, data_dir, os.path.join(work, "store"))
            rt, rows_r = reference_seconds(model_dir, data_dir, queries)
            if rows_c != rows_r:
                raise SystemExit("row counts differ: cltfs %d, reference %d" % (rows_c, rows_r))
            cap.append(dt)
            run.append(rt_c)
            ref.append(rt)
            peak = max(peak, p)
            log("round %d: cltfs capture %.2f s (%.2f s of batches), reference %.2f s, %d rows"
                % (r + 1, dt, rt_c, rt, rows_c))
        first, later = miss_seconds(a.cltfs, model_dir, data_dir, work)
        one = min(ref) / len(queries)
        ratio = (rows_c / min(run)) / (rows_r / min(ref))
        whole = (rows_c / min(cap)) / (rows_r / min(ref))
        print("\ncltfs capture benchmark: %d samples, %d rows, %d layers (d=64), CPU fp32, best of %d\n"
              % (len(queries), rows_c, a.layers, a.rounds))
        print("%-44s %10s %8s  %s" % ("metric", "measured", "goal", "status"))
        print("-" * 72)
        print("%-44s %10.2f %8s  %s" % ("tokens/s, cltfs capture / reference", ratio, ">= 1.0",
                                         "ok" if ratio >= 1.0 else "MISS"))
        print("%-44s %10.2f %8s" % ("  the same, cltfs's whole process wall time", whole, "-"))
        print("%-44s %10.0f %8s" % ("peak RSS of cltfs capture, MB", peak / 1024, "-"))
        print("%-44s %10.1f %8s" % ("first miss (model loads), ms", first * 1e3, "-"))
        print("%-44s %10.1f %8s" % ("later miss, ms (reference forward: %.1f)" % (one * 1e3), later * 1e3, "-"))
        print("\n  cltfs %.0f tokens/s (%.2f s of batches; %.2f s process wall time); reference %.0f tokens/s"
              % (rows_c / min(run), min(run), min(cap), rows_r / min(ref)))
    finally:
        if a.keep:
            log("kept " + work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
