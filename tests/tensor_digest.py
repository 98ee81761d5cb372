"""What torch.load makes of .pt files, as digests that another torch (the
host's 1.13, a torch 2 root's 2.6: tests/test_torch2.py) can be compared
with.  A digest covers the object's structure (container types, keys in
order, lengths), every tensor's dtype, shape, strides, storage offset and
values, and the repr of anything else.  Standard library and torch only.

  python3 tests/tensor_digest.py DIR [--mode NAME=JSON ...]

Prints {mode: {relative path: hex digest}} for every .pt file below DIR,
sorted.  A mode's JSON is {"kw": {torch.load keyword arguments},
"workers": N}: with workers, a DataLoader of N worker processes loads the
files, as a trainer does.  The default mode is "plain": no arguments, no
workers.
"""

import argparse
import hashlib
import json
import os
import sys

import torch


def feed(h, o):
    if torch.is_tensor(o):
        h.update(("T%s%s%s%d|" % (o.dtype, tuple(o.shape), tuple(o.stride()), o.storage_offset())).encode())
        t = o.detach().contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    elif isinstance(o, dict):
        h.update(("D%s%d|" % (type(o).__name__, len(o))).encode())
        for k, v in o.items():
            feed(h, k)
            feed(h, v)
    elif isinstance(o, (list, tuple)):
        h.update(("S%s%d|" % (type(o).__name__, len(o))).encode())
        for x in o:
            feed(h, x)
    else:
        h.update(("V%r|" % (o,)).encode())


def digest(path, kw):
    h = hashlib.sha256()
    feed(h, torch.load(path, **kw))
    return h.hexdigest()


class Files(torch.utils.data.Dataset):
    def __init__(self, root, rels, kw):
        self.root, self.rels, self.kw = root, rels, kw

    def __len__(self):
        return len(self.rels)

    def __getitem__(self, i):
        return self.rels[i], digest(os.path.join(self.root, self.rels[i]), self.kw)


def pt_files(root):
    out = []
    for dp, dns, fns in os.walk(root):
        dns.sort()
        out += [os.path.relpath(os.path.join(dp, f), root) for f in fns if f.endswith(".pt")]
    return sorted(out)


def run_mode(root, rels, kw, workers):
    if not workers:
        return {rel: digest(os.path.join(root, rel), kw) for rel in rels}
    loader = torch.utils.data.DataLoader(Files(root, rels, kw), batch_size=None, num_workers=workers)
    return dict(loader)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--mode", action="append", default=[], metavar="NAME=JSON")
    a = ap.parse_args(argv)
    modes = dict(m.split("=", 1) for m in a.mode) or {"plain": "{}"}
    rels = pt_files(a.dir)
    if not rels:
        sys.exit("tensor_digest: no .pt file below %s" % a.dir)
    out = {}
    for name, spec in modes.items():
        m = json.loads(spec)
        out[name] = run_mode(a.dir, rels, m.get("kw", {}), m.get("workers", 0))
    json.dump({"torch": torch.__version__, "digests": out}, sys.stdout)


if __name__ == "__main__":
    main()
