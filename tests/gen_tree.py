#!/usr/bin/python3
"""Generate a materialized CLT activation tree in the reference format.

The tree is what the reference capture script writes (DESIGN.md section 1):

    OUT/L<n>/batch_<k>_x.pt   {'x': tensor[S, T, d]}
    OUT/L<n>/batch_<k>_y.pt   {'y': targets[0], 'targets': [mlp_out(L+1) ...
                               mlp_out(L+n_targets)], 'n_targets': n_targets}

written with the real torch.save, with consistent data: for every batch the
per-layer x streams and mlp_out streams are generated once, and every y file
that references mlp_out(L') for that batch holds the same values.  Targets
whose layer is >= n_layers are zero tensors (torch.zeros_like), and y is the
same object as targets[0].

Usage (run with /usr/bin/python3, which has torch):

    gen_tree.py OUT [--layers 0-5] [--n-layers 8] [--batches 4]
                [--samples-per-batch 1] [--d 64] [--dtype bfloat16]
                [--n-targets 16] [--min-tokens 5] [--max-tokens 40]
                [--x-format x|data|bare] [--shape STd|S1Td|flat]
                [--seed 0] [--total-mb N]

As a module: make_tree(out, **kw) writes the tree and returns a description
(a dict, see make_tree).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

DTYPES = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16",
               torch.float32: "float32"}
X_FORMATS = ("x", "data", "bare")
SHAPES = ("STd", "S1Td", "flat")
N_OUTLIER_DIMS = 3
OUTLIER_SCALE = 50.0


def parse_layers(spec):
    """'0-5' -> [0..5]; '0,2,4' -> [0, 2, 4]; '3' -> [3]; a list passes."""
    if isinstance(spec, (list, tuple, range)):
        return sorted({int(v) for v in spec})
    out = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return sorted(out)


def _heavy(rng, shape, outliers, torch_dtype):
    """Student-t (df 3) values with a few outlier dimensions scaled x50."""
    a = rng.standard_t(3, size=shape).astype(np.float32)
    a[..., outliers] *= OUTLIER_SCALE
    # keep float16 finite (65504 max) whatever the tail draws
    np.clip(a, -60000.0, 60000.0, out=a)
    return torch.from_numpy(a).to(torch_dtype).contiguous()


def _shape_view(t, shape):
    """[S, T, d] -> the file's layout, as a tensor with its own storage."""
    if shape == "STd":
        return t.clone()
    if shape == "S1Td":
        return t.unsqueeze(1).clone()
    if shape == "flat":
        return t.reshape(-1, t.shape[-1]).clone()
    raise ValueError("unknown shape %r" % (shape,))


def file_shape(S, T, d, shape):
    if shape == "STd":
        return [S, T, d]
    if shape == "S1Td":
        return [S, 1, T, d]
    return [S * T, d]


def _token_counts(rng, n, lo, hi):
    """n token counts in [lo, hi]; all distinct when the range allows."""
    span = hi - lo + 1
    if span >= n:
        return [int(v) for v in rng.choice(np.arange(lo, hi + 1), size=n, replace=False)]
    return [int(v) for v in rng.integers(lo, hi + 1, size=n)]


def estimate_batch_bytes(layers, S, d, esize, n_targets, min_tokens, max_tokens):
    """Materialized bytes of one batch (all layers, x and y), about."""
    T = (min_tokens + max_tokens) / 2.0
    if S > 1:  # T is the longest of S draws
        T = min_tokens + (max_tokens - min_tokens) * S / (S + 1.0)
    per_tensor = S * T * d * esize
    per_layer = per_tensor * (1 + n_targets) + 2 * 1500  # + zip/pickle overhead
    return per_layer * len(layers)


def make_tree(out, layers="0-5", n_layers=8, batches=4, samples_per_batch=1, d=64,
              dtype="bfloat16", n_targets=16, min_tokens=5, max_tokens=40,
              x_format="x", shape="STd", seed=0, total_mb=None, target_offset=1):
    """Write the tree under out and return its description:

    {'out', 'layers', 'n_layers', 'n_batches', 'samples_per_batch', 'd',
     'dtype', 'n_targets', 'x_format', 'shape', 'seed', 'target_offset',
     'tokens': [[T of each sample] per batch], 'T': [padded T per batch],
     'files': [relative paths, sorted], 'bytes': total bytes written,
     'target_layers': {L: [layer of target j or None for zero padding]}}
    """
    layers = parse_layers(layers)
    if not layers:
        raise ValueError("no layers")
    if x_format not in X_FORMATS:
        raise ValueError("x_format must be one of %s" % (X_FORMATS,))
    if shape not in SHAPES:
        raise ValueError("shape must be one of %s" % (SHAPES,))
    if dtype not in DTYPES:
        raise ValueError("unknown dtype %r" % (dtype,))
    tdt = DTYPES[dtype]
    S = int(samples_per_batch)
    if S < 1 or d < 1 or n_targets < 1 or min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError("bad sizes")
    if max(layers) >= n_layers:
        raise ValueError("layer %d >= n_layers %d" % (max(layers), n_layers))
    esize = torch.tensor([], dtype=tdt).element_size()
    if total_mb is not None:
        per = estimate_batch_bytes(layers, S, d, esize, n_targets, min_tokens, max_tokens)
        batches = max(1, int(round(total_mb * 1e6 / per)))

    rng = np.random.default_rng(seed)
    # outlier dimensions: fixed per stream (as real activations have)
    out_x = {L: rng.choice(d, size=min(N_OUTLIER_DIMS, d), replace=False) for L in range(n_layers)}
    out_m = {L: rng.choice(d, size=min(N_OUTLIER_DIMS, d), replace=False) for L in range(n_layers)}
    counts = _token_counts(rng, batches * S, min_tokens, max_tokens)
    tokens = [counts[k * S:(k + 1) * S] for k in range(batches)]
    if S > 1:
        # make sure every batch really pads: its samples differ in length
        for k, ts in enumerate(tokens):
            if len(set(ts)) == 1 and max_tokens > min_tokens:
                ts[0] = min_tokens if ts[0] != min_tokens else max_tokens
    Ts = [max(ts) for ts in tokens]

    target_layers = {}
    for L in layers:
        tl = []
        for j in range(n_targets):
            tl_j = L + target_offset + j
            tl.append(tl_j if tl_j < n_layers else None)
        target_layers[L] = tl
    need_x = set(layers)
    need_m = {t for L in layers for t in target_layers[L] if t is not None}

    os.makedirs(out, exist_ok=True)
    for L in layers:
        os.makedirs(os.path.join(out, "L%d" % L), exist_ok=True)
    files = []
    total = 0
    for k in range(batches):
        T = Ts[k]
        # one stream per layer per batch, generated once.  Padding rows
        # (positions past a sample's own length) are random too: pad tokens
        # also run through the model in the reference capture.
        xs = {L: _heavy(rng, (S, T, d), out_x[L], tdt) for L in sorted(need_x)}
        ms = {L: _heavy(rng, (S, T, d), out_m[L], tdt) for L in sorted(need_m)}
        mviews = {L: _shape_view(t, shape) for L, t in ms.items()}
        for L in layers:
            xt = _shape_view(xs[L], shape)
            xobj = xt if x_format == "bare" else {x_format: xt}
            xp = os.path.join(out, "L%d" % L, "batch_%d_x.pt" % k)
            torch.save(xobj, xp)
            first = None
            targets = []
            for tl in target_layers[L]:
                if tl is None:
                    if first is None:
                        ref = next(iter(mviews.values()), None)
                        if ref is None:
                            ref = xt
                        first = ref
                    targets.append(torch.zeros_like(first))
                else:
                    targets.append(mviews[tl])
                    if first is None:
                        first = mviews[tl]
            yobj = {"y": targets[0], "targets": targets, "n_targets": n_targets}
            yp = os.path.join(out, "L%d" % L, "batch_%d_y.pt" % k)
            torch.save(yobj, yp)
            for p in (xp, yp):
                files.append(os.path.relpath(p, out))
                total += os.path.getsize(p)
    return {
        "out": os.path.abspath(out), "layers": layers, "n_layers": n_layers,
        "n_batches": batches, "samples_per_batch": S, "d": d,
        "dtype": DTYPE_NAMES[tdt], "n_targets": n_targets, "x_format": x_format,
        "shape": shape, "seed": seed, "target_offset": target_offset,
        "tokens": tokens, "T": Ts, "files": sorted(files), "bytes": total,
        "target_layers": {str(L): v for L, v in target_layers.items()},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", default="0-5")
    ap.add_argument("--n-layers", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--samples-per-batch", type=int, default=1)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--n-targets", type=int, default=16)
    ap.add_argument("--min-tokens", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--x-format", default="x", choices=X_FORMATS)
    ap.add_argument("--shape", default="STd", choices=SHAPES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--total-mb", type=float, default=None,
                    help="choose --batches so the tree is about this many MB")
    ap.add_argument("--json", action="store_true", help="print the full description")
    a = ap.parse_args(argv)
    try:
        desc = make_tree(a.out, layers=a.layers, n_layers=a.n_layers, batches=a.batches,
                         samples_per_batch=a.samples_per_batch, d=a.d, dtype=a.dtype,
                         n_targets=a.n_targets, min_tokens=a.min_tokens,
                         max_tokens=a.max_tokens, x_format=a.x_format, shape=a.shape,
                         seed=a.seed, total_mb=a.total_mb)
    except ValueError as e:
        print("gen_tree.py: %s" % e, file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(desc, indent=1))
    else:
        print("%s: %d layers x %d batches, %d files, %.1f MB" % (
            desc["out"], len(desc["layers"]), desc["n_batches"], len(desc["files"]),
            desc["bytes"] / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
