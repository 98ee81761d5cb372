#!/usr/bin/python3
"""Time cltfs's capture on a GPU against the reference forward (make gpu-check).

Usage (with a python whose torch has CUDA for --device cuda):

    gpu_bench.py --cltfs build-gpu/cltfs --device cuda [--layers 4] [--samples 64]
                 [--budget-s 480] [--width 7b|tiny] [--batch N] [--keep DIR] [--json FILE]
    gpu_bench.py --device cpu --layers 1 --samples 4 --width tiny     # a try on a CPU

What it does, on --device (cpu, cuda or cuda:N):

  1. a random checkpoint of LLaVA-1.5-7B's widths (tests/make_llava.py:
     text 4096/11008, 32 heads, vocab 32064; CLIP ViT-L/14 at 336 px, 576
     image rows; projector 1024->4096->4096) with --layers decoder layers,
     bf16 safetensors, about 2.8 GB for 4 layers, generated here (nothing
     is downloaded; --keep DIR keeps it for the next run); --width tiny
     uses the tests' tiny sizes instead, to try the script in seconds;
  2. an AMBER-style query set of --samples samples (small images, resized
     by the capture to the model's 336 px);
  3. `cltfs init` (a bf16 store) and `cltfs capture --device D`, timed as it
     reports itself (the batches, store writes included, the model's load
     not), its host RSS sampled every 50 ms (VmRSS; VmHWM too) and, on
     CUDA, the GPU's memory.used from nvidia-smi every 200 ms (peak minus
     the value before it started: the CUDA context is included);
  4. tests/llava_ref.py on the same device, in the dtype the capture
     reports, doing per sample what the reference capture script did:
     tokenize, preprocess (PIL), forward with the hooks mlp_in and mlp_out,
     every layer's activations copied to host memory, under no_grad.  Its
     load and one warm-up sample are not timed (cltfs's figure includes its
     own first batch, so this can only favour the reference);
  5. a second store mounted (`cltfs STORE MNT -f -o device=D`) and the time
     from starting the mount to having read all of L0/batch_0_x.pt, whose
     miss loads the model (its weights in the page cache by then) and
     captures the first batch.

Then a table of the figures and goals (the goals are for a GPU):

    capture tokens/s / reference tokens/s           >= 1.2
    peak host RSS of cltfs capture                  <= 2048 MiB (plus pinned buffers)
    cold mount to the first file read               <= 30 s

plus peak GPU memory.  --budget-s bounds the whole run: the reference stops
timing samples early and the mount step is skipped (with a note) when the
time left would not cover them, and no step outlives the budget (each
subprocess is killed at the deadline).  Progress goes to stderr with the
seconds since the start.  Exit status: 0 when every step ran (goals missed
are printed, not asserted: see "goals:" at the end, or --json), 1 when a
step failed, 2 on a usage error.
"""

import argparse
import gc
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import llava_ref  # noqa: E402
import make_llava  # noqa: E402
import sample_table  # noqa: E402
import bench as bench_mod  # noqa: E402  (gpu_bench has a function named bench)
from bench import BenchError, Mount  # noqa: E402

T0 = time.monotonic()
MiB = 1 << 20
HOOKS = ("mlp_in", "mlp_out")
GOAL_RATIO, GOAL_RSS_MIB, GOAL_MOUNT_S = 1.2, 2048, 30.0

# `cltfs capture`'s last line (fs/cmd/capture.c)
SUMMARY = re.compile(r"capture: (\d+) of (\d+) batches captured: (\d+) rows in ([0-9.]+) s, "
                     r"(\d+) tokens/s on (\S+) \((\w+)\), after ([0-9.]+) s loading the model")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def log(msg):
    print("gpu_bench [%6.1f s] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


class Budget:
    def __init__(self, seconds):
        self.deadline = T0 + seconds

    def left(self):
        return self.deadline - time.monotonic()


def run(argv, budget, limit=None, what=None):
    """A short subprocess, killed at the deadline (or after limit s)."""
    t = max(1.0, budget.left() if limit is None else min(limit, budget.left()))
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=t)
    except subprocess.TimeoutExpired:
        raise BenchError("%s: still running after %.0f s (killed)" % (what or " ".join(argv), t))
    if r.returncode != 0:
        raise BenchError("%s failed with status %d:\n%s" % (what or " ".join(argv), r.returncode,
                                                           (r.stderr or r.stdout).strip()[-3000:]))
    return r


def init_store(a, store, model_dir, data_dir, budget):
    shutil.rmtree(store, ignore_errors=True)
    run([a.cltfs, "init", store, "--model", model_dir, "--dataset", os.path.join(data_dir, "queries.json"),
         "--image-dir", os.path.join(data_dir, "images"), "--quiet"], budget, limit=300, what="cltfs init")


# ------------------------------------------------------------ checkpoint

def checkpoint(a, work):
    """The model folder: made here, or the one --keep holds for the same
    sizes and the same generator (a changed make_llava.py makes it anew)."""
    with open(make_llava.__file__, "rb") as f:
        gen = hashlib.sha256(f.read()).hexdigest()[:16]
    stamp = {"width": a.width, "layers": a.layers, "dtype": "bfloat16", "seed": 0, "make_llava": gen}
    if a.keep:
        d = os.path.join(os.path.abspath(a.keep), "llava-%s-L%d-bf16" % (a.width, a.layers))
        try:
            with open(os.path.join(d, "gpu_bench.json")) as f:
                if json.load(f) == stamp:
                    log("checkpoint: reusing %s" % d)
                    return d
        except (OSError, ValueError):
            pass
        shutil.rmtree(d, ignore_errors=True)
    else:
        d = os.path.join(work, "model")
    log("checkpoint: generating %s width, %d decoder layers, bf16 in %s" % (a.width, a.layers, d))
    t = time.monotonic()
    kw = dict(text=make_llava.TEXT_7B, vision=make_llava.VISION_7B) if a.width == "7b" else {}
    facts = make_llava.make_llava(d, seed=0, dtype="bfloat16", layers=a.layers, **kw)
    log("checkpoint: %.2f GB of weights in %.1f s" % (facts["total_size"] / 1e9, time.monotonic() - t))
    if a.keep:      # last: a run killed while generating leaves no stamp
        with open(os.path.join(d, "gpu_bench.json"), "w") as f:
            json.dump(stamp, f)
    return d


# ------------------------------------------------------------ monitoring

def proc_status(pid):
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...); {} once gone."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                v = v.split()
                if len(v) == 2 and v[1] == "kB":
                    out[k] = int(v[0])
    except (OSError, ValueError):
        pass
    return out


class GpuMemory:
    """memory.used of the GPU from nvidia-smi, polled every 200 ms in a
    thread: the peak minus the value before start()."""

    def __init__(self, device):
        self.exe = shutil.which("nvidia-smi")
        idx = torch.device(device).index or 0
        # nvidia-smi numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES:
        # pass it the entry CUDA's index N stands for (an index or a UUID).
        vis = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        self.gpu = vis[idx] if idx < len(vis) else str(idx)
        self.base = self.peak = None
        self.stop_ev = threading.Event()
        self.thread = None

    def query(self):
        if not self.exe:
            return None
        try:
            r = subprocess.run([self.exe, "-i", self.gpu, "--query-gpu=memory.used",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            return int(r.stdout.split()[0]) if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def start(self):
        self.base = self.query()
        if self.base is None:
            log("nvidia-smi %s: GPU memory not measured" % ("gave nothing" if self.exe else "not found"))
            return
        self.peak = self.base
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while not self.stop_ev.wait(0.2):
            v = self.query()
            if v is not None:
                self.peak = max(self.peak, v)

    def stop(self):
        """MiB above the value before start (None if unmeasured)."""
        if self.thread is None:
            return None
        self.stop_ev.set()
        self.thread.join(timeout=10)
        return self.peak - self.base


# --------------------------------------------------------------- capture

def capture(a, store, budget):
    """Run `cltfs capture`, watching its memory; returns its figures."""
    argv = [a.cltfs, "capture", store, "--device", a.device] + (["--batch", str(a.batch)] if a.batch else [])
    log("capture: " + " ".join(argv))
    gpu = GpuMemory(a.device) if a.cuda else None
    if gpu:
        gpu.start()
    err = tempfile.TemporaryFile()
    t = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    # VmHWM, not the child's ru_maxrss: that one starts from this process's
    # RSS, which the child shared between fork and exec.
    peak, hwm = {}, 0
    try:
        while proc.poll() is None:
            st = proc_status(proc.pid)
            if st.get("VmRSS", 0) > peak.get("VmRSS", 0):
                peak = st
            hwm = max(hwm, st.get("VmHWM", 0))
            if budget.left() < 0:
                raise BenchError("cltfs capture still running when the budget ran out (killed); "
                                 "fewer --samples or a larger --budget-s")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gpu_mib = gpu.stop() if gpu else None
    wall = time.monotonic() - t
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise BenchError("cltfs capture failed with status %d:\n%s" % (proc.returncode, text.strip()[-3000:]))
    m = SUMMARY.search(text)
    if not m:
        raise BenchError("cltfs capture printed no summary line:\n" + text.strip()[-3000:])
    done, batches, rows, secs, tps, dev, dtype, load_s = m.groups()
    if int(done) != int(batches):
        raise BenchError("cltfs capture captured %s of %s batches:\n%s" % (done, batches, text.strip()[-3000:]))
    r = {"batches": int(batches), "rows": int(rows), "secs": float(secs), "tokens_per_s": float(tps),
         "device": dev, "dtype": dtype, "load_s": float(load_s), "wall_s": wall,
         "rss_peak_mib": max(peak.get("VmRSS", 0), hwm) / 1024 or None,
         "rss_sampled_mib": peak.get("VmRSS", 0) / 1024, "vmhwm_mib": hwm / 1024,
         "rss_at_peak_mib": {k: peak.get(k, 0) / 1024 for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")},
         "gpu_mib": gpu_mib}
    if r["rss_peak_mib"] is None:
        log("capture: its RSS could not be read from /proc/PID/status")
    log("capture: %d rows in %.2f s, %.0f tokens/s on %s (%s), %.2f s loading; %.1f s wall, peak RSS %.0f MiB%s"
        % (r["rows"], r["secs"], r["tokens_per_s"], dev, dtype, r["load_s"], wall, r["rss_peak_mib"] or 0,
           ", GPU +%d MiB" % gpu_mib if gpu_mib is not None else ""))
    return r


# ------------------------------------------------------------- reference

def reference(a, model_dir, data_dir, entries, want_rows, dtype, budget, reserve_s):
    """tests/llava_ref.py per sample as the reference capture did it;
    stops timing once only reserve_s of the budget is left (after 4 samples at least)."""
    cuda, dev = a.cuda, torch.device(a.device)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def one(m, e):
        ids = llava_ref.tokenize(m, llava_ref.prompt(e["query"]))
        px = llava_ref.preprocess(m, os.path.join(data_dir, "images", e["image"]))
        out = llava_ref.forward(m, ids, px, hooks=HOOKS)
        for h in HOOKS:             # every layer to host memory, as a hook's .cpu() does
            [x.cpu() for x in out[h]]
        return out["rows"]

    t = time.monotonic()
    m = llava_ref.load(model_dir, dtype, device=a.device if cuda else None)
    sync()
    load_s = time.monotonic() - t
    log("reference: loaded in %.1f s (not timed); %s" % (load_s, m))
    with torch.no_grad():
        one(m, entries[0])          # warm-up: cuBLAS handles, kernels, the allocator's pools
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        sync()
        stop_at = budget.deadline - reserve_s
        rows, n = 0, 0
        t0 = time.perf_counter()
        for i, e in enumerate(entries):
            got = one(m, e)
            if got != want_rows[i]:
                raise BenchError("sample %d: the reference has %d rows, the store %d: they do not run the "
                                 "same tokens" % (i, got, want_rows[i]))
            rows, n = rows + got, n + 1
            if time.monotonic() > stop_at and min(4, len(entries)) <= n < len(entries):
                log("reference: stopped after %d of %d samples to keep %.0f s of the budget"
                    % (n, len(entries), reserve_s))
                break
        sync()
        secs = time.perf_counter() - t0
    r = {"samples": n, "rows": rows, "secs": secs, "tokens_per_s": rows / secs, "load_s": load_s,
         "dtype": str(dtype).replace("torch.", ""),
         "gpu_alloc_peak_mib": torch.cuda.max_memory_allocated(dev) / MiB if cuda else None}
    del m
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()    # leave the GPU to the mount's daemon
    log("reference: %d samples, %d rows in %.2f s, %.0f tokens/s" % (n, rows, secs, r["tokens_per_s"]))
    return r


# ----------------------------------------------------------- cold mount

def cold_mount(a, model_dir, data_dir, work, budget):
    """Seconds from starting a mount to having read L0/batch_0_x.pt."""
    store, mnt = os.path.join(work, "store-mount"), os.path.join(work, "mnt")
    init_store(a, store, model_dir, data_dir, budget)
    argv = [a.cltfs, store, mnt, "-f", "-o", "device=" + a.device]
    if a.batch:
        argv[-1] += ",capture_batch=%d" % a.batch
    log("mount: " + " ".join(argv))
    mount = Mount("cltfs", argv, mnt)
    got, stop = {}, threading.Event()
    path = os.path.join(mnt, "L0", "batch_0_x.pt")

    # In a thread: a read that never returns must not hang the run; the
    # unmount in the finally below ends it.
    def reader():
        try:
            while not stop.is_set():
                try:
                    os.listdir(os.path.join(mnt, "L0"))
                    break
                except OSError:
                    if time.monotonic() - t0 > 60:
                        raise
                    time.sleep(0.01)
            got["ready"] = time.monotonic() - t0
            n = 0
            with open(path, "rb") as f:
                while True:
                    b = f.read(MiB)
                    if not b:
                        break
                    n += len(b)
            got["first"], got["bytes"] = time.monotonic() - t0, n
        except BaseException as e:  # noqa: B902 - reported by the caller
            got["error"] = e

    t0 = time.monotonic()
    try:
        mount.start(timeout=max(1.0, min(60.0, budget.left())))
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        th.join(timeout=max(1.0, budget.left()))
        if th.is_alive():
            raise BenchError("mount: %s not read %.0f s after the mount started (budget spent)"
                             % (path, time.monotonic() - t0))
        if "error" in got:
            raise BenchError("mount: reading %s: %s\n%s" % (path, got["error"], mount.stderr().strip()))
        if not got["bytes"]:
            raise BenchError("mount: %s is empty" % path)
    finally:
        stop.set()
        mount.stop()
    log("mount: L0 listed %.2f s after the start, batch_0_x.pt (%d bytes) read at %.2f s"
        % (got["ready"], got["bytes"], got["first"]))
    return {"first_s": got["first"], "ready_s": got["ready"], "bytes": got["bytes"]}


# ----------------------------------------------------------------- report

def report(a, cap, ref, mnt, mount_note):
    gpu = a.cuda
    rows = []                       # (metric, measured, goal, ok or None)

    def judge(ok):
        return (None if not gpu else ok)

    ratio = cap["tokens_per_s"] / ref["tokens_per_s"]
    rows.append(("capture tokens/s (cltfs capture)", "%.0f" % cap["tokens_per_s"], "-", None))
    rows.append(("reference tokens/s (tests/llava_ref.py)", "%.0f" % ref["tokens_per_s"], "-", None))
    rows.append(("capture / reference tokens/s", "%.2f" % ratio, ">= %.1f" % GOAL_RATIO, judge(ratio >= GOAL_RATIO)))
    rows.append(("peak GPU memory of the capture, MiB",
                 "%d" % cap["gpu_mib"] if cap["gpu_mib"] is not None else "-", "-", None))
    rss = cap["rss_peak_mib"]
    rows.append(("peak host RSS of the capture, MiB", "%.0f" % rss if rss else "-",
                 "<= %d+" % GOAL_RSS_MIB, judge(rss <= GOAL_RSS_MIB) if rss else None))
    if mnt:
        rows.append(("cold mount to first file read, s", "%.2f" % mnt["first_s"], "<= %.0f" % GOAL_MOUNT_S,
                     judge(mnt["first_s"] <= GOAL_MOUNT_S)))
    else:
        rows.append(("cold mount to first file read, s", "-", "<= %.0f" % GOAL_MOUNT_S, None))

    what = "LLaVA-1.5-7B widths" if a.width == "7b" else "tiny widths"
    print("\ncltfs capture benchmark: %s, %d decoder layer%s, %d samples (%d rows), %s (%s)\n"
          % (what, a.layers, "s"[:a.layers > 1], a.samples, cap["rows"], cap["device"], cap["dtype"]))
    print("%-44s %10s %8s  %s" % ("metric", "measured", "goal", "status"))
    print("-" * 72)
    for name, val, goal, ok in rows:
        print("%-44s %10s %8s  %s" % (name, val, goal, "" if ok is None else ("ok" if ok else "MISS")))
    print()
    print("  capture: %d rows in %.2f s of batches (%d batches), %.2f s loading the model, %.1f s process wall time"
          % (cap["rows"], cap["secs"], cap["batches"], cap["load_s"], cap["wall_s"]))
    print("  capture RSS: VmRSS sampled every 50 ms peaked at %.0f MiB (%s), VmHWM %.0f MiB; "
          "goal %d MiB plus its pinned buffers"
          % (cap["rss_sampled_mib"], ", ".join("%s %.0f" % kv for kv in cap["rss_at_peak_mib"].items()
                                              if kv[0] != "VmRSS"), cap["vmhwm_mib"], GOAL_RSS_MIB))
    print("  reference: %d of %d samples timed, %d rows in %.2f s (%s; load %.1f s and one warm-up sample "
          "not timed)%s" % (ref["samples"], a.samples, ref["rows"], ref["secs"], ref["dtype"], ref["load_s"],
                            "; torch peak allocated %.0f MiB" % ref["gpu_alloc_peak_mib"]
                            if ref["gpu_alloc_peak_mib"] is not None else ""))
    if mnt:
        print("  mount: L0 listable %.2f s after starting the mount, %d bytes of L0/batch_0_x.pt read at %.2f s"
              % (mnt["ready_s"], mnt["bytes"], mnt["first_s"]))
    else:
        print("  mount: " + (mount_note if mount_note.startswith("FAILED") else "skipped: " + mount_note))
    if not gpu:
        print("  the goals are for a GPU: not judged on the CPU")
    missed = [name for name, _, _, ok in rows if ok is False]
    if gpu:
        print("\ngoals: " + ("all met" if not missed and mnt else
                             "missed: " + "; ".join(missed) if missed else "met, the mount not measured"))
    return {"ratio": ratio, "missed": missed}


# ------------------------------------------------------------------- main

def bench(a, work, budget):
    out = subprocess.run([a.cltfs, "--version"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    log("%s; torch %s%s" % (" / ".join((out.stdout or out.stderr).strip().splitlines()), torch.__version__,
                            ", %s" % torch.cuda.get_device_name(torch.device(a.device)) if a.cuda else ""))
    if not a.cuda and a.width == "7b":
        log("note: on a CPU, one sample of LLaVA-7B's widths takes minutes; --width tiny tries the script")
    model_dir = checkpoint(a, work)
    data_dir = os.path.join(work, "data")
    make_llava.make_dataset(data_dir, n=a.samples, seed=0)
    with open(os.path.join(data_dir, "queries.json")) as f:
        entries = json.load(f)
    log("dataset: %d samples; %.0f s of the budget left" % (len(entries), budget.left()))

    store = os.path.join(work, "store")
    init_store(a, store, model_dir, data_dir, budget)
    want_rows = [s["rows"] for s in sample_table.manifest(store)["samples"]]
    cap = capture(a, store, budget)
    if cap["rows"] != sum(want_rows):
        raise BenchError("cltfs capture reports %d rows, the store has %d" % (cap["rows"], sum(want_rows)))
    if a.cuda != cap["device"].startswith("cuda"):
        raise BenchError("cltfs capture ran on %s, asked for --device %s: no comparison" % (cap["device"], a.device))
    if budget.left() < 2 * cap["load_s"] + 5:       # the reference loads the same weights
        raise BenchError("no time left for the reference (%.0f s of the budget): capture measured %.0f tokens/s"
                         % (budget.left(), cap["tokens_per_s"]))

    # The mount's miss costs about the capture's model load and one batch;
    # twice that plus the init, the unmount and slack is what it needs.
    # The reference needs its load (about the capture's) and some samples.
    mount_need = 2 * (cap["load_s"] + cap["secs"] / cap["batches"]) + 20
    ref_need = 2 * cap["load_s"] + 10
    mnt, note, failed = None, None, None
    if a.no_mount:
        note = "--no-mount"
    elif not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")):
        note = "no /dev/fuse or fusermount3 on this machine"
    elif budget.left() < ref_need + mount_need:
        note = "%.0f s of the budget left after the capture: the reference needs about %.0f s, the mount %.0f s" % (
            budget.left(), ref_need, mount_need)
    if cap["dtype"] not in DTYPES:
        raise BenchError("cltfs capture ran in %s: no reference dtype for it" % cap["dtype"])
    ref = reference(a, model_dir, data_dir, entries, want_rows, DTYPES[cap["dtype"]], budget,
                    reserve_s=(0 if note else mount_need) + 5)
    if not note and budget.left() < mount_need:
        note = "%.0f s of the budget left, the mount needs about %.0f s (model load %.1f s)" % (
            budget.left(), mount_need, cap["load_s"])
    if note:
        log("mount: skipped: " + note)
    else:
        try:
            mnt = cold_mount(a, model_dir, data_dir, work, budget)
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            failed = str(e)                     # the figures above still get printed
            note = "FAILED: " + failed
    res = report(a, cap, ref, mnt, note)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": a.device, "width": a.width, "layers": a.layers, "samples": a.samples,
                       "capture": cap, "reference": ref, "mount": mnt, "mount_skipped": note,
                       "ratio": res["ratio"], "goals_missed": res["missed"],
                       "goals": {"ratio": GOAL_RATIO, "rss_mib": GOAL_RSS_MIB, "mount_s": GOAL_MOUNT_S}}, f, indent=1)
    if failed:
        raise BenchError("cold mount step: " + failed)
    log("done in %.0f s" % (time.monotonic() - T0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cltfs", default=os.path.join(REPO, "build", "cltfs"))
    ap.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N (default cuda)")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the checkpoint (default 4)")
    ap.add_argument("--samples", type=int, default=64, help="samples of the query set (default 64)")
    ap.add_argument("--budget-s", type=float, default=480, help="seconds for the whole run (default 480)")
    ap.add_argument("--width", choices=["7b", "tiny"], default="7b",
                    help="7b: LLaVA-1.5-7B's widths (default); tiny: the tests' sizes")
    ap.add_argument("--batch", type=int, default=0, help="samples per forward pass for cltfs (default: its own)")
    ap.add_argument("--keep", metavar="DIR", help="keep the generated checkpoint in DIR, and reuse it")
    ap.add_argument("--no-mount", action="store_true", help="skip the cold mount step")
    ap.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    a = ap.parse_args()
    if a.layers < 1 or a.samples < 1 or a.budget_s <= 0 or not 0 <= a.batch <= 64:
        ap.error("--layers and --samples must be >= 1, --budget-s > 0, --batch 1..64")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", a.device):
        ap.error("--device takes cpu, cuda or cuda:N")
    a.cuda = a.device.startswith("cuda")
    a.cltfs = os.path.abspath(a.cltfs)
    if not os.access(a.cltfs, os.X_OK):
        print("gpu_bench: %s: not an executable (build it first)" % a.cltfs, file=sys.stderr)
        return 1
    if a.cuda and not torch.cuda.is_available():
        print("gpu_bench: --device %s, but this python's torch %s has no usable CUDA (torch.version.cuda %s); "
              "the reference needs it" % (a.device, torch.__version__, torch.version.cuda), file=sys.stderr)
        return 1

    # SIGTERM/SIGHUP (an outer timeout) unwind through the finally below,
    # which unmounts and removes the work folder.
    bench_mod.unwind_on_signals()

    budget = Budget(a.budget_s)
    work = tempfile.mkdtemp(prefix="cltfs-gpubench-")
    try:
        bench(a, work, budget)
        return 0
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print("gpu_bench: FAILED: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("gpu_bench: interrupted (%s)" % e, file=sys.stderr)
        return 1
    finally:
        Mount.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
