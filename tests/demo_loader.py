#!/usr/bin/python3
"""Read a mounted cltfs tree the way the reference CLT training script does:
pair L<n>/batch_<k>_x.pt with batch_<k>_y.pt by the number after `batch_`,
take obj['x'] (or obj['data']), accept [N, T, H] or [N, 1, T, H], take
n_targets and d from the first files.  Used by `make demo`; with a second
argument (the original tree) every file is also compared with it."""
import glob
import os
import re
import sys
import time

import warnings

import torch
from torch.utils.data import DataLoader, Dataset

# 4 workers on a 2-core machine is the point of the demo, not a mistake
warnings.filterwarnings("ignore", message="This DataLoader will create")


def batch_no(path):
    return int(re.search(r"batch_(\d+)_", os.path.basename(path)).group(1))


class CLTFiles(Dataset):
    def __init__(self, root):
        self.pairs = []
        for layer_dir in sorted(glob.glob(os.path.join(root, "L*")), key=lambda p: int(p.rsplit("L", 1)[1])):
            xs = {batch_no(p): p for p in glob.glob(os.path.join(layer_dir, "batch_*_x.pt"))}
            ys = {batch_no(p): p for p in glob.glob(os.path.join(layer_dir, "batch_*_y.pt"))}
            self.pairs += [(xs[k], ys[k]) for k in sorted(xs) if k in ys]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        xp, yp = self.pairs[i]
        xo, yo = torch.load(xp), torch.load(yp)
        x = xo["x"] if "x" in xo else xo["data"]
        if x.dim() == 4:
            x = x.squeeze(1)
        return xp, x, torch.stack(yo["targets"]), yo["n_targets"], os.path.getsize(xp) + os.path.getsize(yp)


def main():
    args = [a for a in sys.argv[1:] if a != "--capture"]
    root, orig = args[0], (args[1] if len(args) > 1 else None)
    ds = CLTFiles(root)
    if "--capture" in sys.argv:
        # a store made by `cltfs init`: the first read of each batch runs
        # the model inside the filesystem, once, whichever worker asks
        loader = DataLoader(ds, batch_size=None, num_workers=4, shuffle=False)
        t0 = time.time()
        n = sum(1 for _ in loader)
        print(f"   DataLoader, 4 workers, first read (each batch captured on its miss): {n} (x, y) pairs "
              f"in {time.time() - t0:.2f} s")
    first = ds[0]
    print(f"   {len(ds)} (x, y) file pairs; n_targets={first[3]}, d={first[1].shape[-1]}, "
          f"x {tuple(first[1].shape)} {first[1].dtype}, targets {tuple(first[2].shape)}")
    paths = [p for pair in ds.pairs for p in pair]
    for label in ("first read (composed from the store)", "second read (page cache)"):
        t0 = time.time()
        nbytes = sum(os.path.getsize(p) for p in paths if torch.load(p) is not None)
        dt = time.time() - t0
        print(f"   torch.load of all {len(paths)} files, {label}: {nbytes / 1e6:.1f} MB in {dt:.2f} s "
              f"({nbytes / 1e6 / dt:.0f} MB/s)")
    loader = DataLoader(ds, batch_size=None, num_workers=4, shuffle=False)
    t0 = time.time()
    n = sum(1 for _ in loader)
    print(f"   DataLoader, 4 workers: {n} (x, y) pairs in {time.time() - t0:.2f} s")
    if orig:
        checked = 0
        for xp, x, targets, nt, size in loader:
            rel = os.path.relpath(xp, root)
            ox = torch.load(os.path.join(orig, rel))
            oy = torch.load(os.path.join(orig, rel.replace("_x.pt", "_y.pt")))
            ox = ox["x"] if "x" in ox else ox["data"]
            assert torch.equal(ox.squeeze(1) if ox.dim() == 4 else ox, x), rel
            assert torch.equal(torch.stack(oy["targets"]), targets), rel
            checked += 1
        print(f"   all {checked} (x, y) pairs equal the original files (torch.equal)")
    # a step of a tiny CLT on what was read, to show training code runs unchanged
    enc = torch.nn.Linear(first[1].shape[-1], 32)
    dec = torch.nn.Linear(32, first[1].shape[-1] * first[3])
    opt = torch.optim.SGD(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    x = first[1].float().reshape(-1, first[1].shape[-1])
    y = first[2].float().permute(1, 2, 0, 3).reshape(x.shape[0], -1)
    loss = ((dec(torch.relu(enc(x))) - y) ** 2).mean()
    loss.backward()
    opt.step()
    print(f"   one CLT training step on L0/batch_0: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
