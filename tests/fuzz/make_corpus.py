#!/usr/bin/python3
"""Make the fuzz corpus: seeds written by real torch.save and pickle, plus
deterministic mutations (truncations, byte flips, splices) of each, so that
`make check` replays thousands of malformed inputs under ASan and UBSan."""
import io
import os
import pickle
import random
import sys
import zipfile

import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = random.Random(1)


def put(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def pt_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


t = torch.randn(2, 3, 4).to(torch.bfloat16)
seeds_pt = {
    "x": pt_bytes({"x": t}),
    "y": pt_bytes({"y": t, "targets": [t, torch.zeros_like(t)], "n_targets": 2}),
    "bare": pt_bytes(torch.randn(5, 8).half()),
    "strided": pt_bytes({"x": torch.randn(4, 6)[:, ::2]}),
    "nested": pt_bytes({"a": [1, 2, (3, "s")], "b": {"c": torch.arange(10, dtype=torch.float32)}}),
}
seeds_pkl = {name: zipfile.ZipFile(io.BytesIO(b)).read(
    [n for n in zipfile.ZipFile(io.BytesIO(b)).namelist() if n.endswith("data.pkl")][0])
    for name, b in seeds_pt.items()}
seeds_pkl["evil"] = pickle.dumps(os.system, protocol=2)
seeds_pkl["p4"] = pickle.dumps({"a": [1, 2.5, "x" * 300]}, protocol=4)
seeds_json = {
    "good": b'{"format":"cltfs","version":1,"model":{"n_layers":4,"d_model":8},"dtype":"bfloat16",'
            b'"n_targets":2,"chunk_rows":4,"x_layers":[0,1,2],"mlp_layers":[1,2,3],'
            b'"samples":[{"rows":5},{"rows":3},{"rows":9}],"batches":[[2,5],[1,9]]}',
}


def mutations(data, n):
    yield data
    for _ in range(n):
        b = bytearray(data)
        kind = rng.randrange(4)
        if kind == 0 and len(b) > 1:
            b = b[: rng.randrange(len(b))]
        elif kind == 1 and b:
            for _ in range(rng.randrange(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 2 and b:
            i = rng.randrange(len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif b:
            i, j = sorted(rng.randrange(len(b)) for _ in range(2))
            b = b[:i] + b[j:] + b[i:j]
        yield bytes(b)


for prefix, seeds, n in (("pt", seeds_pt, 400), ("pkl", seeds_pkl, 400), ("json", seeds_json, 400)):
    for name, data in seeds.items():
        for i, m in enumerate(mutations(data, n)):
            put(f"{prefix}-{name}-{i:04d}", m)
print(f"fuzz corpus: {len(os.listdir(out))} inputs in {out}")
