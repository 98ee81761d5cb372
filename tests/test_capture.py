"""End-to-end: the capture tier.  A tiny random LLaVA-1.5 checkpoint and an
AMBER-style dataset (tests/make_llava.py), `cltfs init` + `cltfs capture`
(or a read through a mount that captures on a miss), and every view compared
with the independent reference forward in tests/llava_ref.py.

Run with /usr/bin/python3 (torch 1.13, PIL, the Debian sentencepiece module).
Printed lines starting with "measured:" give the largest errors seen against
the reference (run pytest with -s to see them)."""

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch

import llava_ref as R
import make_llava as G
import sample_table
from conftest import describe, is_mounted, load_bytes, LoadedFiles, needs_script, on_tty
from test_hub import make_hub  # noqa: F401 (a fixture)

DEFAULT_TEMPLATE = R.DEFAULT_TEMPLATE
ALT_TEMPLATE = "USER: <image>\n{query}\nASSISTANT:"   # the reference capture script's
LONG_TEMPLATE = "A chat about this picture. USER: <image>\nPlease: {query} ASSISTANT:"
N_TARGETS = 16
TORCH_DT = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# tolerances against the fp32 reference
FP32_ATOL, FP32_RTOL = 1e-4, 1e-4
BF16_ATOL, BF16_RTOL = 0.05, 0.02
# the whole forward pass in bf16 (a GPU's default), against fp32: each
# layer rounds its inputs again; measured 0.078 at most on the test model
# (values of order 1), and a wrong operation is off by order 1
BF16C_ATOL, BF16C_RTOL = 0.15, 0.05

CAPTURE_TIMEOUT = 240


def measured(what, value):
    print("measured: %s = %.3g" % (what, value))


# ------------------------------------------------------------ fixtures --

class Dataset:
    def __init__(self, root, facts):
        self.root = str(root)
        self.queries = os.path.join(self.root, "queries.json")
        self.images = os.path.join(self.root, "images")
        self.facts = facts
        with open(self.queries) as f:
            self.entries = json.load(f)


class Llava:
    """Checkpoints, datasets and reference activations, made once per session
    (shared read-only: tests that change them make a private copy)."""

    VARIANTS = {
        "fp32": dict(dtype="float32", naming="old"),
        "new": dict(dtype="float32", naming="new"),
        "bf16ckpt": dict(dtype="bfloat16", naming="old"),
        "gqa": dict(dtype="float32", naming="old", kv_heads=2),
    }

    def __init__(self, base):
        self.base = base
        self._models, self._facts, self._ds, self._ref, self._loaded = {}, {}, {}, {}, {}

    def model(self, variant="fp32"):
        if variant not in self._models:
            d = os.path.join(str(self.base), "model-" + variant)
            self._facts[variant] = G.make_llava(d, seed=0, **self.VARIANTS[variant])
            self._models[variant] = d
        return self._models[variant]

    def facts(self, variant="fp32"):
        self.model(variant)
        return self._facts[variant]

    def dataset(self, n=6):
        if n not in self._ds:
            d = os.path.join(str(self.base), "dataset-%d" % n)
            self._ds[n] = Dataset(d, G.make_dataset(d, n=n, seed=0))
        return self._ds[n]

    def loaded(self, variant="fp32"):
        if variant not in self._loaded:
            self._loaded[variant] = R.load(self.model(variant), dtype=torch.float32)
        return self._loaded[variant]

    def ref_some(self, indices, variant="fp32", n=6, template=DEFAULT_TEMPLATE):
        """Like ref(), with only the samples at indices computed (None elsewhere)."""
        m = self.loaded(variant)
        ds = self.dataset(n)
        return [R.run_sample(m, e, ds.images, template=template) if i in indices else None
                for i, e in enumerate(ds.entries)]

    def ref(self, variant="fp32", n=6, template=DEFAULT_TEMPLATE):
        """[run_sample result per sample]: fp32 compute, every hook."""
        key = (variant, n, template)
        if key not in self._ref:
            m = self.loaded(variant)
            ds = self.dataset(n)
            self._ref[key] = [R.run_sample(m, e, ds.images, template=template)
                              for e in ds.entries]
        return self._ref[key]


@pytest.fixture(scope="session")
def llava(tmp_path_factory):
    return Llava(tmp_path_factory.mktemp("llava"))


def run_init(run_cltfs, store, model, ds, *args, check=True):
    r = run_cltfs("init", store, "--model", model, "--dataset", ds.queries,
                  "--image-dir", ds.images, *args, timeout=120)
    if check:
        assert r.returncode == 0, "init failed: " + describe(r)
    return r


def run_capture(run_cltfs, store, *args, check=True, env=None):
    r = run_cltfs("capture", store, *args, timeout=CAPTURE_TIMEOUT, env=env)
    if check:
        assert r.returncode == 0, "capture failed: " + describe(r)
    return r


def stat_json(run_cltfs, store):
    r = run_cltfs("stat", store, "--json")
    assert r.returncode == 0, "stat failed: " + describe(r)
    return json.loads(r.stdout)


def verify_ok(run_cltfs, store):
    r = run_cltfs("verify", store, timeout=120)
    assert r.returncode == 0, "verify failed: " + describe(r)
    return r


def manifest(store):
    """cltfs.json with its samples read from samples.bin (tests/sample_table.py)."""
    return sample_table.manifest(store)


def first_rows(rows):
    out, acc = [], 0
    for r in rows:
        out.append(acc)
        acc += r
    return out


@pytest.fixture(scope="session")
def fp32_store(llava, run_cltfs, tmp_path_factory):
    """A float32 store of the fp32 checkpoint filled by `cltfs capture` alone
    (the baseline other stores are compared with).  Tests copy it."""
    store = str(tmp_path_factory.mktemp("fp32store") / "store")
    run_init(run_cltfs, store, llava.model("fp32"), llava.dataset(), "--dtype", "float32")
    r = run_capture(run_cltfs, store)
    return store, r


def copy_store(src, dst):
    shutil.copytree(src, str(dst), ignore=shutil.ignore_patterns("locks"))
    return str(dst)


# ------------------------------------------------------------- helpers --

def view_rels(n_layers, n_batches):
    return ["L%d/batch_%d_%s.pt" % (L, k, s) for k in range(n_batches)
            for L in range(n_layers) for s in "xy"]


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def read_views_bytes(m, rels):
    return {rel: read_all(m.p(rel)) for rel in rels}


def err_of(got, want):
    return (got.double() - want.double()).abs().max().item() if got.numel() else 0.0


def _cmp(got, want, tdt, tol, what, worst, key, counts):
    """got (a view's rows) against want (the reference, fp32)."""
    e = err_of(got, want)
    worst[key] = max(worst[key], e)
    assert torch.allclose(got.double(), want.double(), atol=tol[0], rtol=tol[1]), \
        "%s differs from the reference: max |diff| %.3g" % (what, e)
    counts[0] += int((got == want.to(tdt)).sum())
    counts[1] += got.numel()


def check_views(load, ref, n_layers, dtype, hook="mlp_in", batches=None, where="", S=1,
                offset=1, n_targets=N_TARGETS, clip=False, tol=None):
    """Compare the views (load(rel) -> object) of the given batches with the
    reference (batch k = samples k*S .. k*S+S-1, padded with zero rows to the
    longest); returns {"x": max error, "y": max error, "exact": fraction of
    values equal to the reference rounded to dtype}."""
    tdt = TORCH_DT[dtype]
    if tol is None:
        tol = (FP32_ATOL, FP32_RTOL) if dtype == "float32" else (BF16_ATOL, BF16_RTOL)
    worst = {"x": 0.0, "y": 0.0}
    counts = [0, 0]
    groups = [list(range(i, min(i + S, len(ref)))) for i in range(0, len(ref), S)]
    if batches is None:
        batches = range(len(groups))
    for k in batches:
        idx = groups[k]
        T = max(ref[i]["rows"] for i in idx)
        d = ref[idx[0]]["acts"][hook].shape[-1]
        for L in range(n_layers):
            rel = "L%d/batch_%d_x.pt" % (L, k)
            x = load(rel)
            assert isinstance(x, dict) and list(x) == ["x"], "%s%s: %r" % (where, rel, type(x))
            xt = x["x"]
            assert xt.dtype == tdt, "%s%s: dtype %s, expected %s" % (where, rel, xt.dtype, tdt)
            assert tuple(xt.shape) == (len(idx), T, d), \
                "%s%s: shape %s, expected %s" % (where, rel, tuple(xt.shape), (len(idx), T, d))
            for i, si in enumerate(idx):
                Ti = ref[si]["rows"]
                _cmp(xt[i, :Ti], ref[si]["acts"][hook][L], tdt, tol,
                     "%s%s: x[%d] (sample %d) vs %s[%d]" % (where, rel, i, si, hook, L),
                     worst, "x", counts)
                assert not xt[i, Ti:].any(), "%s%s: padding rows of x[%d] not zero" % (where, rel, i)

            rel = "L%d/batch_%d_y.pt" % (L, k)
            y = load(rel)
            assert isinstance(y, dict) and list(y) == ["y", "targets", "n_targets"], \
                "%s%s: keys %r" % (where, rel, list(y) if isinstance(y, dict) else type(y))
            real = max(0, min(n_targets, n_layers - L - offset))
            nt = real if clip else n_targets
            assert y["n_targets"] == nt and len(y["targets"]) == nt, \
                "%s%s: n_targets %r, %d targets, expected %d" % (
                    where, rel, y["n_targets"], len(y["targets"]), nt)
            assert isinstance(y["targets"], list), "%s%s: targets is a %s" % (
                where, rel, type(y["targets"]).__name__)
            if nt:
                assert y["y"] is y["targets"][0], "%s%s: y is not targets[0]" % (where, rel)
                assert y["y"].data_ptr() == y["targets"][0].data_ptr(), \
                    "%s%s: y does not share storage with targets[0]" % (where, rel)
            for j, t in enumerate(y["targets"]):
                assert t.dtype == tdt and tuple(t.shape) == tuple(xt.shape), \
                    "%s%s: targets[%d] %s %s, expected %s %s" % (
                        where, rel, j, t.dtype, tuple(t.shape), tdt, tuple(xt.shape))
                tl = L + offset + j
                if tl >= n_layers:
                    assert not t.any(), "%s%s: targets[%d] (layer %d, past the last) not zero" % (
                        where, rel, j, tl)
                    continue
                for i, si in enumerate(idx):
                    Ti = ref[si]["rows"]
                    _cmp(t[i, :Ti], ref[si]["acts"]["mlp_out"][tl], tdt, tol,
                         "%s%s: targets[%d][%d] (sample %d) vs mlp_out[%d]" % (
                             where, rel, j, i, si, tl), worst, "y", counts)
                    assert not t[i, Ti:].any(), "%s%s: padding rows of targets[%d][%d] not zero" % (
                        where, rel, j, i)
    worst["exact"] = counts[0] / max(counts[1], 1)
    return worst


def _collate(batch):
    return batch


# ---------------------------------------------------------------- CLI --

def test_help_lists_init_and_capture(run_cltfs):
    r = run_cltfs("--help")
    assert r.returncode == 0, describe(r)
    for word in ("init", "capture", "--model", "--dataset", "--image-dir", "--shard", "--rows",
                 "--input-hook", "--template"):
        assert word in r.stdout, "%s missing from cltfs --help" % word


def test_capture_usage_errors(llava, run_cltfs, tmp_path):
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--quiet")
    for args in (("--shard", "3/2"), ("--shard", "0/2"), ("--shard", "1/0"), ("--shard", "x"),
                 ("--rows", "5:3"), ("--rows", "5"), ("--rows", "0:10", "--shard", "1/2")):
        r = run_cltfs("capture", store, *args)
        assert r.returncode == 2, "capture %s: %s" % (" ".join(args), describe(r))
        assert r.stderr.strip(), "capture %s: no message" % " ".join(args)
    assert stat_json(run_cltfs, store)["chunks"] == 0


# ---------------------------------------------------------------- init --

def test_init_rows_match_reference(llava, run_cltfs, tmp_path, mount):
    """init writes the manifest only (no model run); every sample's rows are
    the reference's token count with <image> as 16 rows."""
    ds = llava.dataset()
    store = str(tmp_path / "store")
    r = run_init(run_cltfs, store, llava.model(), ds)
    assert r.stdout.strip(), "init printed no summary line"
    ref = llava.ref()
    man = manifest(store)
    rows = [s["rows"] for s in man["samples"]]
    assert rows == [s["rows"] for s in ref], (rows, [s["rows"] for s in ref])
    for s, e, rs in zip(man["samples"], ds.entries, ref):
        assert str(s["id"]) == str(e["id"]) and s["image"] == e["image"] and s["text"] == e["query"]
        assert rs["rows"] == len(rs["text_ids"]) - 1 + llava.facts()["num_patches"]
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == 0 and st["samples"] == len(ds.entries) and st["rows"] == sum(rows)
    assert st["chunks_needed"] > 0
    # no chunk yet: no estimate of the ratio (not "about 0.0000 (1/0.0)")
    assert st["estimated_ratio"] is None and not st["complete"], st
    text = run_cltfs("stat", store).stdout
    assert re.search(r"^ratio +none yet: no chunk present", text, re.M), text
    assert re.search(r"^raw bytes +0 B ", text, re.M) and "(1/0.0)" not in text, text
    mat = re.search(r"^materialized +([\d.]+) (kB|MB|GB)", text, re.M)
    assert mat and abs(float(mat.group(1)) * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[mat.group(2)] /
                       st["materialized_bytes"] - 1) < 0.05, text  # one decimal
    # sizes come from the manifest: listing and stat through a mount capture nothing
    with mount(store) as m:
        mm = json.loads(m.read_special(".cltfs/manifest.json"))
        with open(os.path.join(store, "cltfs.json")) as f:
            assert mm == json.load(f)  # the store's manifest, as it is on disk
        assert sorted(d for d in os.listdir(m.path) if re.fullmatch(r"L\d+", d)) == \
            ["L%d" % L for L in range(llava.facts()["text"]["num_hidden_layers"])]
        for rel in m.files():
            assert os.stat(m.p(rel)).st_size > 0
        assert m.stats()["chunks"]["capture"] == 0
    assert stat_json(run_cltfs, store)["chunks"] == 0
    # --quiet: nothing on stdout
    r = run_init(run_cltfs, str(tmp_path / "quiet"), llava.model(), ds, "--quiet")
    assert r.stdout == "", r.stdout


@pytest.mark.parametrize("template", [ALT_TEMPLATE, LONG_TEMPLATE], ids=["script", "long"])
def test_init_custom_template(llava, run_cltfs, tmp_path, mount, template):
    """--template: every sample's rows are what the reference tokenizer gives
    for that template, and the capture uses it (the reference script's
    "USER: <image>\\n{query}\\nASSISTANT:" and a longer one)."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--template", template,
             "--dtype", "float32")
    assert manifest(store)["prompt_template"] == template
    ref = llava.ref(template=template)
    default = llava.ref()
    rows = [s["rows"] for s in manifest(store)["samples"]]
    assert rows == [s["rows"] for s in ref], (rows, [s["rows"] for s in ref])
    if template == LONG_TEMPLATE:
        assert all(a > b for a, b in zip(rows, [s["rows"] for s in default]))
    else:
        assert any(a["input_ids"] != b["input_ids"] for a, b in zip(ref, default))
    run_capture(run_cltfs, store, "--rows", "0:1", "--quiet")
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store) as m:
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=[0])


def _write_queries(ds_dir, entries):
    with open(os.path.join(ds_dir, "queries.json"), "w") as f:
        json.dump(entries, f)


def test_init_rows_match_the_reference_tokenizer(llava, run_cltfs, tmp_path):
    """Every sample's rows (its prompt's tokens, <image> counted as its
    patches) are what SentencePiece and HF's added-token splitting give,
    over 400 generated queries: words, digits, punctuation, runs of spaces,
    tabs and newlines, text outside the tokenizer's training (accents, CJK,
    emoji: byte fallback), and added tokens written in the query.  A wrong
    count would shift every activation of the sample."""
    import random as _random
    rng = _random.Random(11)
    words = ["the", "cat", "image", "Describe", "dog", "table", "ball", "color", "in", "of", "?", ".", ",",
             "naïve", "café", "日本語", "画像", "🙂", "👩‍🔬", "x²", "3", "42", "1024", "</s>", "<s>",
             "don't", "e.g.", "U.S.A.", "—", "«quoted»", "\u00a0", "tab\there", "line\nbreak"]
    queries = []
    for i in range(400):
        n = rng.randrange(1, 14)
        parts = [rng.choice(words) for _ in range(n)]
        seps = [rng.choice([" ", " ", " ", "  ", "\n", "\t", "", "   "]) for _ in range(n)]
        q = "".join(a + b for a, b in zip(parts, seps))
        if rng.random() < 0.2:
            q = " " * rng.randrange(1, 3) + q
        queries.append(q)
    ds = llava.dataset()
    entries = json.loads(open(ds.queries).read())
    qpath = tmp_path / "queries.json"
    qpath.write_text(json.dumps([{"id": i, "image": entries[0]["image"], "query": q}
                                 for i, q in enumerate(queries)]))
    store = str(tmp_path / "store")
    r = run_cltfs("init", store, "--model", llava.model(), "--dataset", str(qpath), "--image-dir", ds.images,
                  "--quiet", timeout=120)
    assert r.returncode == 0, describe(r)
    m = llava.loaded()
    got = [s["rows"] for s in manifest(store)["samples"]]
    want = []
    for q in queries:
        ids = R.tokenize(m, DEFAULT_TEMPLATE.replace("{query}", q))
        want.append(len(ids) + ids.count(m.image_token_index) * (m.num_patches - 1))
    bad = [(queries[i], got[i], want[i]) for i in range(len(queries)) if got[i] != want[i]]
    assert not bad, "%d of %d queries: %r" % (len(bad), len(queries), bad[:5])


def test_capture_of_an_imported_store_refused(stores, run_cltfs):
    """An imported store has no model to run: capture and capture --status
    say so, naming the store, and exit 1."""
    imp = stores.get("s1_bf16")
    for args in (("capture", imp.store), ("capture", "--status", imp.store)):
        r = run_cltfs(*args)
        assert r.returncode == 1 and imp.store in r.stderr and "not a store made by `cltfs init`" in r.stderr, \
            describe(r)


def test_init_errors(llava, run_cltfs, tmp_path):
    model, ds = llava.model(), llava.dataset()

    def init(store, model_dir=model, queries=ds.queries, images=ds.images, *args):
        return run_cltfs("init", str(tmp_path / store), "--model", model_dir, "--dataset", queries,
                         "--image-dir", images, *args)

    def fails(r, *words):
        assert r.returncode == 1, describe(r)
        for w in words:
            assert w in r.stderr, "message does not name %r: %s" % (w, describe(r))
        return r

    # a missing image: the message names the image file and the sample's id
    dd = tmp_path / "ds_missing"
    shutil.copytree(ds.root, str(dd))
    entries = json.loads(open(ds.queries).read())
    entries[2]["id"] = 9041
    _write_queries(str(dd), entries)
    os.unlink(str(dd / "images" / entries[2]["image"]))
    fails(init("s1", queries=str(dd / "queries.json"), images=str(dd / "images")),
          os.path.join(str(dd / "images"), entries[2]["image"]), "9041")
    assert not os.path.exists(str(tmp_path / "s1" / "cltfs.json"))

    # malformed query files: the message names the file
    bad = {
        "notlist": {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
        "noimage": [{"id": 1, "query": "Describe this image."}],
        "noquery": [{"id": 1, "image": "AMBER_1.jpg"}],
        "notjson": "this is not json [",
        "empty": [],
        "unclosed": '[{"id": 1, "image": "AMBER_1.jpg", "query": "Describe."}',
        "trailing": '[{"id": 1, "image": "AMBER_1.jpg", "query": "Describe."}] {"id": 2}',
        "cut": '[{"id": 1, "image": "AMBER_1.jpg", "query": "Descr',
        "nocomma": '[{"id": 1, "image": "AMBER_1.jpg", "query": "a"} {"id": 2, "image": "b", "query": "c"}]',
        "dotdot": [{"id": 7, "image": "../secret.jpg", "query": "Describe."}],
        "absolute": [{"id": 8, "image": "/etc/passwd", "query": "Describe."}],
    }
    # what each message says beyond the file's name
    said = {"unclosed": "not closed", "trailing": "after the list", "cut": "ends inside",
            "nocomma": "expected ',' or ']'", "dotdot": "not a name inside --image-dir",
            "absolute": "not a name inside --image-dir"}
    for name, content in bad.items():
        q = tmp_path / ("q_%s.json" % name)
        q.write_text(content if isinstance(content, str) else json.dumps(content))
        fails(init("s_" + name, queries=str(q)), str(q), *([said[name]] if name in said else []))
        assert not os.path.exists(str(tmp_path / ("s_" + name) / "cltfs.json")), name
    fails(init("s_noqfile", queries=str(tmp_path / "nonexistent.json")), "nonexistent.json")

    # a model folder without config.json / tokenizer.model
    for missing in ("config.json", "tokenizer.model"):
        md = tmp_path / ("model_no_" + missing)
        md.mkdir()
        for f in os.listdir(model):
            if f != missing:
                os.symlink(os.path.join(model, f), str(md / f))
        fails(init("s_no_" + missing, model_dir=str(md)), missing)

    # a template without <image>
    fails(init("s_tmpl", model, ds.queries, ds.images, "--template", "USER: {query} ASSISTANT:"),
          "<image>")

    # an initialised store
    store = str(tmp_path / "s_twice")
    run_init(run_cltfs, store, model, ds, "--quiet")
    before = open(os.path.join(store, "cltfs.json")).read()
    fails(init("s_twice"), "cltfs.json")
    assert open(os.path.join(store, "cltfs.json")).read() == before


# ----------------------------------------------------- reference values --

def test_capture_fp32_equals_reference(llava, fp32_store, run_cltfs, tmp_path, mount):
    """--dtype float32 store of a float32 checkpoint: every x view is the
    reference's mlp_in, every target the reference's mlp_out (zeros past the
    last layer), y is targets[0]."""
    base, r = fp32_store
    assert "capture" in r.stderr, "no summary line on stderr: " + describe(r)
    store = copy_store(base, tmp_path / "store")
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"] > 0, st
    assert st["dtype"] == "float32", st
    verify_ok(run_cltfs, store)
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store) as m:
        assert m.files() == sorted(view_rels(n_layers, len(ref)))
        w = check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32")
        stats = m.stats()
        assert stats["chunks"]["capture"] == 0, stats
    measured("fp32 store, max |x - ref mlp_in|", w["x"])
    measured("fp32 store, max |target - ref mlp_out|", w["y"])


def test_capture_twice_captures_nothing(llava, fp32_store, run_cltfs, tmp_path):
    store = copy_store(fp32_store[0], tmp_path / "store")
    before = stat_json(run_cltfs, store)
    packs = {f: os.path.getsize(os.path.join(store, "packs", f))
             for f in os.listdir(os.path.join(store, "packs"))}
    r = run_capture(run_cltfs, store)
    after = stat_json(run_cltfs, store)
    assert after["chunks"] == before["chunks"] and after["disk_bytes"] == before["disk_bytes"], \
        (before, after)
    assert {f: os.path.getsize(os.path.join(store, "packs", f))
            for f in os.listdir(os.path.join(store, "packs"))} == packs
    assert r.stderr.strip(), "no summary line: " + describe(r)
    r = run_capture(run_cltfs, store, "--quiet")
    assert r.stderr == "" and r.stdout == "", describe(r)


def test_capture_bf16_default(llava, run_cltfs, tmp_path, mount):
    """The default store dtype (bf16) with fp32 compute: the reference's fp32
    values rounded to bf16."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--quiet")
    assert manifest(store)["dtype"] == "bfloat16"
    run_capture(run_cltfs, store, "--quiet")
    verify_ok(run_cltfs, store)
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store) as m:
        w = check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "bfloat16")
    measured("bf16 store, max |x - ref mlp_in|", w["x"])
    measured("bf16 store, max |target - ref mlp_out|", w["y"])
    measured("bf16 store, fraction equal to ref.to(bf16)", w["exact"])
    # fp32 compute rounded once to bf16: all but values next to a rounding
    # boundary equal torch's round-to-nearest-even of the reference
    assert w["exact"] > 0.98, "only %.4f of the values equal the reference rounded to bf16" % (
        w["exact"])


@pytest.mark.parametrize("hook", ["resid_pre", "resid_mid"])
def test_input_hook(llava, run_cltfs, tmp_path, mount, hook):
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--input-hook", hook,
             "--dtype", "float32", "--quiet")
    assert manifest(store)["input_hook"] == hook
    run_capture(run_cltfs, store, "--quiet")
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store) as m:
        w = check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", hook=hook)
    measured("fp32 store, max |x - ref %s|" % hook, w["x"])
    measured("fp32 store (%s), max |target - ref mlp_out|" % hook, w["y"])


@pytest.mark.parametrize("variant", ["new", "bf16ckpt", "gqa"])
def test_checkpoint_variants(llava, fp32_store, run_cltfs, tmp_path, mount, variant):
    """The transformers >= 4.52 tensor names, a bf16 checkpoint (weights cast
    to fp32 for the compute) and GQA (num_key_value_heads 2)."""
    model = llava.model(variant)
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, model, llava.dataset(), "--dtype", "float32", "--quiet")
    run_capture(run_cltfs, store, "--quiet")
    verify_ok(run_cltfs, store)
    ref = llava.ref(variant)
    n_layers = llava.facts(variant)["text"]["num_hidden_layers"]
    rels = view_rels(n_layers, len(ref))
    with mount(store) as m:
        w = check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32",
                        where="[%s] " % variant)
        got = read_views_bytes(m, rels) if variant == "new" else None
    measured("%s checkpoint, max |x - ref|" % variant, w["x"])
    measured("%s checkpoint, max |target - ref|" % variant, w["y"])
    if variant == "new":
        # the same weights under other names: the same bytes as the old naming
        base = copy_store(fp32_store[0], tmp_path / "base")
        with mount(base) as m:
            want = read_views_bytes(m, rels)
        diff = [rel for rel in rels if got[rel] != want[rel]]
        assert not diff, "naming new gives other bytes than naming old: %s" % diff[:5]


# ----------------------------------------------------- capture on a miss --

def _all_views_through_loader(m, rels):
    loader = torch.utils.data.DataLoader(LoadedFiles(m.path, rels), batch_size=1, num_workers=4,
                                         collate_fn=_collate)
    out = {}
    for batch in loader:
        for rel, obj in batch:
            out[rel] = obj
    return out


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_miss_capture_dataloader(llava, fp32_store, run_cltfs, tmp_path, mount):
    """An init'ed store, nothing captured: a DataLoader with 4 workers reads
    every view through the mount; the reads capture each batch once, and the
    result equals the reference and the bytes `cltfs capture` stores."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    rels = view_rels(n_layers, len(ref))
    with mount(store) as m:
        objs = _all_views_through_loader(m, rels)
        stats = m.stats()
        got_bytes = read_views_bytes(m, rels)
        log = m.log()
    assert sorted(objs) == sorted(rels)
    w = check_views(lambda rel: objs[rel], ref, n_layers, "float32")
    measured("miss capture through DataLoader, max |x - ref|", w["x"])
    measured("miss capture through DataLoader, max |target - ref|", w["y"])
    assert stats["chunks"]["capture"] > 0, stats
    # each batch ran through the model once, whichever worker asked first
    assert stats["capture"]["batches"] == len(ref), stats
    assert stats["capture"]["rows"] == sum(r["rows"] for r in ref), stats
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"], \
        "every chunk should be captured once: %s\nmount log:\n%s" % (st, log)
    # the same as a store filled by `cltfs capture` alone
    base = copy_store(fp32_store[0], tmp_path / "base")
    bst = stat_json(run_cltfs, base)
    print("measured: disk bytes, miss-filled %d vs `cltfs capture` %d" % (
        st["disk_bytes"], bst["disk_bytes"]))
    assert st["chunks"] == bst["chunks"], (st, bst)
    assert st["disk_bytes"] <= bst["disk_bytes"] * 1.02 + 4096, (st, bst)
    with mount(base) as m:
        want = read_views_bytes(m, rels)
    diff = [rel for rel in rels if got_bytes[rel] != want[rel]]
    assert not diff, "views captured on a miss differ from `cltfs capture`'s: %s" % diff[:5]


def test_second_mount_serves_from_store(llava, run_cltfs, tmp_path, mount):
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--quiet")
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    rels = view_rels(n_layers, len(llava.dataset().entries))
    with mount(store) as m:
        first = read_views_bytes(m, rels)
        s1 = m.stats()
    assert s1["chunks"]["capture"] > 0, s1
    chunks = stat_json(run_cltfs, store)["chunks"]
    with mount(store) as m:
        second = read_views_bytes(m, rels)
        s2 = m.stats()
    assert s2["chunks"]["capture"] == 0, s2
    assert s2["chunks"]["store"] > 0, s2
    assert second == first
    assert stat_json(run_cltfs, store)["chunks"] == chunks


def test_rows_range(llava, run_cltfs, tmp_path, mount):
    """--rows A:B captures only the batches covering rows [A, B); a read of
    another batch through a mount then captures that batch on the miss."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    rows = [s["rows"] for s in manifest(store)["samples"]]
    start = first_rows(rows)
    needed = stat_json(run_cltfs, store)["chunks_needed"]
    per_batch = needed // len(rows)
    assert per_batch * len(rows) == needed, "chunks per batch differ: %d for %d batches" % (
        needed, len(rows))
    # rows from inside sample 2 to the first row of sample 3: batches 2 and 3
    a, b = start[2] + 1, start[3] + 1
    run_capture(run_cltfs, store, "--rows", "%d:%d" % (a, b), "--quiet")
    assert stat_json(run_cltfs, store)["chunks"] == 2 * per_batch
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store, "capture_ahead=0") as m:  # the miss's batch alone
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=[2, 3])
        s = m.stats()
        assert s["chunks"]["capture"] == 0, "batches 2 and 3 should be stored: %s" % s
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=[0])
        s = m.stats()
        assert s["chunks"]["capture"] > 0, s
    assert stat_json(run_cltfs, store)["chunks"] == 3 * per_batch
    # rows past the end
    r = run_capture(run_cltfs, store, "--rows", "%d:%d" % (sum(rows), sum(rows) + 5), check=False)
    assert r.returncode != 0, describe(r)


@pytest.mark.parametrize("args,S,offset,nt,clip", [
    (("--batch-samples", "2"), 2, 1, N_TARGETS, False),
    (("--n-targets", "4"), 1, 1, 4, False),
    (("--target-offset", "0", "--n-targets", "4", "--padding", "clip"), 1, 0, 4, True),
], ids=["batch-samples-2", "n-targets-4", "offset0-clip"])
def test_store_layouts(llava, run_cltfs, tmp_path, mount, args, S, offset, nt, clip):
    """Other store layouts: two samples per batch (padded with zero rows to
    the longer), fewer targets, targets from L with clipping."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet",
             *args)
    man = manifest(store)
    assert (man["batch_samples"], man["target_offset"], man["n_targets"], man["padding"]) == \
        (S, offset, nt, "clip" if clip else "zero"), man
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store) as m:   # captured on the miss
        assert m.files() == sorted(view_rels(n_layers, len(ref) // S))
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", S=S,
                    offset=offset, n_targets=nt, clip=clip)
        assert m.stats()["chunks"]["capture"] > 0
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"], st
    if S == 2:
        # regrouped at mount time: three samples per batch
        with mount(store, "batch_samples=3") as m:
            check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", S=3)
            assert m.stats()["chunks"]["capture"] == 0


def test_two_mounts_single_flight(llava, run_cltfs, tmp_path, mount):
    """Two mounts of one init'ed store read every view at once (four threads
    each): each batch is captured by one of them, once."""
    import concurrent.futures as cf
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    rels = view_rels(n_layers, len(ref))
    with mount(store) as m1, mount(store) as m2:
        with cf.ThreadPoolExecutor(8) as ex:
            futs = [(m, rel, ex.submit(read_all, m.p(rel))) for rel in rels for m in (m1, m2)]
            got = [(m, rel, f.result()) for m, rel, f in futs]
        s1, s2 = m1.stats(), m2.stats()
        log = m1.log() + m2.log()
    assert s1["chunks"]["capture"] + s2["chunks"]["capture"] > 0, (s1, s2)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"], \
        "chunks captured twice by two mounts: %s\n%s" % (st, log)
    verify_ok(run_cltfs, store)
    by_rel = {}
    for m, rel, data in got:
        by_rel.setdefault(rel, set()).add(data)
    assert all(len(v) == 1 for v in by_rel.values()), "the two mounts served other bytes"
    w = check_views(lambda rel: load_bytes(next(iter(by_rel[rel]))), ref, n_layers, "float32")
    measured("two mounts, max |x - ref|", w["x"])


# ------------------------------------------------------ shards, resuming --

def test_two_shards_concurrently(llava, fp32_store, run_cltfs, cltfs_bin, tmp_path, mount):
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    procs = [subprocess.Popen([cltfs_bin, "capture", store, "--shard", "%d/2" % i],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for i in (1, 2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=CAPTURE_TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        outs.append((p.returncode, out, err))
    for i, (rc, out, err) in enumerate(outs):
        assert rc == 0, "shard %d/2 exited %s:\n%s%s" % (i + 1, rc, out, err)
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"], st
    packs = [f for f in os.listdir(os.path.join(store, "packs"))
             if f.endswith(".pack") and os.path.getsize(os.path.join(store, "packs", f)) > 64]
    assert len(packs) >= 2, "the two shards did not write two packs: %s" % os.listdir(
        os.path.join(store, "packs"))
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    rels = view_rels(n_layers, len(llava.dataset().entries))
    base = copy_store(fp32_store[0], tmp_path / "base")
    with mount(store) as m:
        got = read_views_bytes(m, rels)
        assert m.stats()["chunks"]["capture"] == 0
    with mount(base) as m:
        want = read_views_bytes(m, rels)
    diff = [rel for rel in rels if got[rel] != want[rel]]
    assert not diff, "views of the sharded capture differ: %s" % diff[:5]


# the index format (codec/codec.h): a 16-byte header, then 40-byte records
IDX_HEADER, IDX_RECORD = 16, 40


def _idx_records(store):
    """Index records in the store's packs/*.idx (what a reader would count)."""
    d = os.path.join(store, "packs")
    total = 0
    for f in (os.listdir(d) if os.path.isdir(d) else ()):
        if f.endswith(".idx"):
            try:
                total += max(0, os.path.getsize(os.path.join(d, f)) - IDX_HEADER) // IDX_RECORD
            except OSError:
                pass
    return total


KILL_SAMPLES = 150   # enough batches of the tiny model for a capture to last > 1 s


def test_killed_capture_resumes(llava, run_cltfs, cltfs_bin, tmp_path, mount):
    """SIGKILL a capture once some batches are durable (capture makes its
    batches durable about once a second, so the dataset is large enough to
    take longer than that); a rerun finishes the store with no chunk twice,
    and the views equal a clean capture's."""
    ds = llava.dataset(KILL_SAMPLES)
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), ds, "--dtype", "float32", "--quiet")
    clean = str(tmp_path / "clean")
    run_init(run_cltfs, clean, llava.model(), ds, "--dtype", "float32", "--quiet")
    needed = stat_json(run_cltfs, store)["chunks_needed"]
    per_batch = needed // len(ds.entries)
    p = subprocess.Popen([cltfs_bin, "capture", store, "--threads", "1"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    t0 = time.monotonic()
    killed_at = None
    try:
        while p.poll() is None and time.monotonic() - t0 < CAPTURE_TIMEOUT:
            if _idx_records(store) >= per_batch:   # the first batch's records are written
                p.send_signal(signal.SIGKILL)
                killed_at = _idx_records(store)
                break
            time.sleep(0.0005)
    finally:
        if p.poll() is None and killed_at is None:
            p.kill()
        p.wait()
    err = p.stderr.read().decode(errors="replace")
    assert killed_at is not None and p.returncode == -signal.SIGKILL, \
        "capture was not caught mid-run (exit %s): %s" % (p.returncode, err)
    partial = stat_json(run_cltfs, store)["chunks"]
    assert per_batch <= partial < needed, \
        "killed with %d of %d chunks stored (%d per batch, %d index records seen)" % (
            partial, needed, per_batch, killed_at)
    run_capture(run_cltfs, store, "--quiet")
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"] == needed, \
        "after the resume: %s (partial run had %d chunks)" % (st, partial)
    run_capture(run_cltfs, clean, "--quiet")
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    rels = view_rels(n_layers, len(ds.entries))
    with mount(store) as m:
        got = read_views_bytes(m, rels)
        assert m.stats()["chunks"]["capture"] == 0
        some = [0, partial // per_batch - 1, partial // per_batch, KILL_SAMPLES - 1]
        ref = llava.ref_some(some, n=KILL_SAMPLES)
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=some)
    with mount(clean) as m:
        want = read_views_bytes(m, rels)
    diff = [rel for rel in rels if got[rel] != want[rel]]
    assert not diff, "views of the resumed capture differ: %s" % diff[:5]
    print("measured: killed with %d of %d chunks stored (%d per batch)" % (
        partial, needed, per_batch))


# -------------------------------------------------------------- errors --

def _private_model(llava, dest):
    shutil.copytree(llava.model(), str(dest))
    return str(dest)


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_shard(llava, run_cltfs, tmp_path, cut):
    model = _private_model(llava, tmp_path / "model")
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, model, llava.dataset(), "--quiet")
    shard = os.path.join(model, "model-00002-of-00002.safetensors")
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(100 if cut == "header" else size // 2)
    r = run_capture(run_cltfs, store, check=False)
    assert r.returncode == 1, describe(r)
    assert "model-00002-of-00002.safetensors" in r.stderr, describe(r)
    assert stat_json(run_cltfs, store)["chunks"] == 0


def test_shard_on_failing_filesystem(llava, run_cltfs, tmp_path, mount, make_hub):
    """Shards are read, not mapped: on a mapping, a page the filesystem
    cannot read in is a SIGBUS that kills capture (and a mount capturing on
    a miss).  The checkpoint here sits on a cltfs mount of a plain Hub repo
    whose download of one shard keeps failing, so its reads fail with EIO:
    capture exits 1 naming the shard, a mount that captures on a miss
    answers EIO and lives on; with the download working again capture
    completes."""
    from test_hub import hf_env
    model = llava.model()
    hub = make_hub()
    hub.add_repo("me/llava", model)
    shard = "model-00002-of-00002.safetensors"
    with open(os.path.join(model, shard), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    hub.add_fault("^/blobs/" + sha, "truncate", count=1000, after_bytes=4096, server="cdn")
    env = hf_env(tmp_path, hub, CLTFS_HUB_RETRIES=1, CLTFS_HUB_BACKOFF_MS=10)
    store = str(tmp_path / "store")
    with mount("hf://datasets/me/llava", env=env) as m:
        run_init(run_cltfs, store, m.path, llava.dataset(), "--dtype", "float32", "--quiet")
        r = run_capture(run_cltfs, store, "--quiet", check=False)
        assert r.returncode == 1, "capture from a failing shard: " + describe(r)
        assert shard in r.stderr and "reading tensor" in r.stderr, describe(r)
        assert stat_json(run_cltfs, store)["chunks"] == 0
        with mount(store) as s:  # captures on a miss, in the daemon
            with pytest.raises(OSError) as ei:
                read_all(s.p("L0", "batch_0_x.pt"))
            assert ei.value.errno == errno.EIO, ei.value
            assert s.stats()["errors"] >= 1  # the daemon lives on
        hub.clear_faults()
        run_capture(run_cltfs, store, "--quiet")
    verify_ok(run_cltfs, store)


def _edit_header(path, edit):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    hj = json.dumps(header, separators=(",", ":")).encode()
    assert len(hj) <= n, "edited header is longer"
    hj += b" " * (n - len(hj))
    with open(path, "wb") as f:
        f.write(raw[:8] + hj + raw[8 + n:])


@pytest.mark.parametrize("how", ["shape", "missing"])
def test_bad_tensor(llava, run_cltfs, tmp_path, how):
    """A tensor of the wrong shape (same byte size, so the file is otherwise
    valid), or a tensor the index maps to a shard that lacks it: capture
    exits 1 naming the tensor."""
    model = _private_model(llava, tmp_path / "model")
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, model, llava.dataset(), "--quiet")
    name = "language_model.model.layers.0.mlp.gate_proj.weight"
    shard = os.path.join(model, llava.facts()["weight_map"][name])

    def edit(h):
        if how == "shape":
            assert h[name]["shape"] == [160, 64]
            h[name]["shape"] = [64, 160]
        else:
            h[name.replace("gate_proj", "gate_prOj")] = h.pop(name)
    _edit_header(shard, edit)
    r = run_capture(run_cltfs, store, check=False)
    assert r.returncode == 1, describe(r)
    assert name in r.stderr, "message does not name %s: %s" % (name, describe(r))
    assert stat_json(run_cltfs, store)["chunks"] == 0


def _store_missing_image(llava, run_cltfs, tmp_path, index=3):
    """An fp32 store of a private copy of the dataset, whose image `index` is
    deleted after init: (store, dataset dir, image name)."""
    ds = llava.dataset()
    dd = tmp_path / "ds"
    shutil.copytree(ds.root, str(dd))
    store = str(tmp_path / "store")
    r = run_cltfs("init", store, "--model", llava.model(), "--dataset", str(dd / "queries.json"),
                  "--image-dir", str(dd / "images"), "--dtype", "float32", "--quiet")
    assert r.returncode == 0, describe(r)
    gone = ds.entries[index]["image"]
    os.unlink(str(dd / "images" / gone))
    return store, dd, gone


def test_image_missing_at_capture(llava, run_cltfs, tmp_path, mount):
    """An image deleted after init: capture exits 1 naming it and keeps the
    batches it captured before that one; with the image back a rerun
    captures the rest."""
    store, dd, gone = _store_missing_image(llava, run_cltfs, tmp_path, index=3)
    needed = stat_json(run_cltfs, store)["chunks_needed"]
    per_batch = needed // 6
    r = run_capture(run_cltfs, store, check=False)
    assert r.returncode == 1, describe(r)
    assert gone in r.stderr, "message does not name %s: %s" % (gone, describe(r))
    verify_ok(run_cltfs, store)
    kept = stat_json(run_cltfs, store)["chunks"]
    packs = {f: os.path.getsize(os.path.join(store, "packs", f))
             for f in os.listdir(os.path.join(store, "packs"))}
    assert kept == 3 * per_batch, (
        "after the failure at batch 3, %d chunks are indexed, expected the %d of batches 0-2 "
        "(packs: %s)" % (kept, 3 * per_batch, packs))
    shutil.copyfile(os.path.join(llava.dataset().images, gone), str(dd / "images" / gone))
    r = run_capture(run_cltfs, store)
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"], st
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store) as m:
        check_views(lambda rel: torch.load(m.p(rel)), llava.ref(), n_layers, "float32")
        assert m.stats()["chunks"]["capture"] == 0


def test_image_missing_mount_eio(llava, run_cltfs, tmp_path, mount):
    """Through a mount, the views of a batch whose image is gone are EIO;
    the mount stays up and serves the other batches; with the image back the
    batch is captured on the next read."""
    store, dd, gone = _store_missing_image(llava, run_cltfs, tmp_path, index=3)
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store, "capture_ahead=0") as m:  # the misses' batches alone
        for rel in ("L0/batch_3_x.pt", "L2/batch_3_y.pt", "L0/batch_3_x.pt"):
            with pytest.raises(OSError) as ei:
                read_all(m.p(rel))
            assert ei.value.errno == errno.EIO, "%s: %s, expected EIO" % (rel, ei.value)
        assert is_mounted(m.path) and m.proc.poll() is None
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32",
                    batches=[0, 4, 5])
        stats = m.stats()
        assert stats["errors"] > 0, stats
        log = m.log()
        # the image back: the failed batch is captured on the next read
        shutil.copyfile(os.path.join(llava.dataset().images, gone), str(dd / "images" / gone))
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=[3])
    assert gone in log, "the mount log does not name %s:\n%s" % (gone, log)
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == 4 * (st["chunks_needed"] // 6), st


def test_capture_library_missing(llava, run_cltfs, tmp_path):
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--quiet")
    lib = str(tmp_path / "nowhere" / "libcltfs-capture.so")
    env = dict(os.environ, CLTFS_CAPTURE_LIB=lib)
    r = run_capture(run_cltfs, store, check=False, env=env)
    assert r.returncode == 1, describe(r)
    assert lib in r.stderr, describe(r)
    assert stat_json(run_cltfs, store)["chunks"] == 0


@pytest.mark.parametrize("batch_samples,fwd", [(1, 4), (2, 3)], ids=["S1-fwd4", "S2-fwd3"])
def test_batched_forward_equals_reference(llava, fp32_store, run_cltfs, tmp_path, mount, batch_samples, fwd):
    """Several samples in one forward pass, right-padded to the longest
    (across store batches, and across a store batch's boundary with S=2 and
    3 per pass): no row changes, the views equal the reference's and, with
    S=1, the one-sample-at-a-time store's."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet",
             "--batch-samples", str(batch_samples))
    r = run_capture(run_cltfs, store, "--batch", str(fwd))
    assert "captured" in r.stderr, describe(r)
    verify_ok(run_cltfs, store)
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"] > 0, st
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store) as m:
        w = check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", S=batch_samples)
        assert m.stats()["chunks"]["capture"] == 0
        if batch_samples == 1:
            rels = sorted(view_rels(n_layers, len(ref)))
            with mount(fp32_store[0]) as one:
                for rel in rels:
                    a, b = torch.load(m.p(rel)), torch.load(one.p(rel))
                    ta = a["x"] if "x" in a else torch.stack(a["targets"])
                    tb = b["x"] if "x" in b else torch.stack(b["targets"])
                    assert (ta - tb).abs().max().item() <= 1e-5, rel
    measured("batched forward (S=%d, %d per pass), max |x - ref|" % (batch_samples, fwd), w["x"])


def test_capture_batch_option_errors(llava, run_cltfs, tmp_path):
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--quiet")
    for bad in ("0", "65", "x"):
        r = run_capture(run_cltfs, store, "--batch", bad, check=False)
        assert r.returncode == 2 and "--batch" in r.stderr, describe(r)


@pytest.mark.parametrize("damage", ["empty", "half", "garbage"])
def test_damaged_tokenizer(llava, run_cltfs, tmp_path, damage):
    """A tokenizer.model that is cut or overwritten: init fails naming it,
    never crashes."""
    model = _private_model(llava, tmp_path / "model")
    path = os.path.join(model, "tokenizer.model")
    data = read_all(path)
    if damage == "empty":
        data = b""
    elif damage == "half":
        data = data[:len(data) // 2]
    else:
        data = bytes((b * 7 + 13) & 0xFF for b in data)
    with open(path, "wb") as f:
        f.write(data)
    r = run_init(run_cltfs, str(tmp_path / "store"), model, llava.dataset(), check=False)
    assert r.returncode == 1 and "tokenizer.model" in r.stderr, describe(r)
    assert not os.path.exists(tmp_path / "store" / "cltfs.json")


def test_init_manifest_fields(llava, run_cltfs, tmp_path):
    """The manifest records the model (id, architecture, sizes), the hooks,
    the targets, the template and where the model and images are."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--model-id", "llava-hf/llava-1.5-7b-hf",
             "--input-hook", "resid_mid", "--quiet")
    man = manifest(store)
    facts = llava.facts()
    assert man["model"]["id"] == "llava-hf/llava-1.5-7b-hf"
    assert man["model"]["architecture"] == "LlavaForConditionalGeneration"
    assert man["model"]["n_layers"] == facts["text"]["num_hidden_layers"]
    assert man["model"]["d_model"] == facts["text"]["hidden_size"]
    assert (man["input_hook"], man["n_targets"], man["target_offset"], man["padding"], man["dtype"]) == \
        ("resid_mid", N_TARGETS, 1, "zero", "bfloat16"), man
    assert man["prompt_template"] == "USER: <image>\n{query} ASSISTANT:"
    assert man["source"]["kind"] == "capture"
    assert os.path.samefile(man["source"]["path"], llava.model())
    assert os.path.samefile(man["source"]["images"], llava.dataset().images)


def test_init_model_from_the_hub(llava, fp32_store, run_cltfs, tmp_path, mount, make_hub):
    """--model OWNER/NAME that is no folder: the checkpoint's files
    (safetensors, json, tokenizer.model; nothing else) are fetched into the
    HF cache as snapshot_download lays it out, the manifest names the id and
    the commit, and the store captures what a store of the folder does."""
    from test_hub import hf_env
    hub = make_hub(latency=0.05)    # a round trip: the files come at once, not one by one
    model = llava.model()
    files = {os.path.relpath(p, model): read_all(p) for p in glob.glob(os.path.join(model, "*")) if os.path.isfile(p)}
    files["README.md"] = b"# a model card: not fetched"
    files["extra/weights.bin"] = b"not fetched either"
    sha = hub.add_repo("me/tiny-llava", files, repo_type="model")
    hub.clear_log()
    env = hf_env(tmp_path, hub)
    store = str(tmp_path / "store")
    ds = llava.dataset()
    r = run_cltfs("init", store, "--model", "me/tiny-llava", "--dataset", ds.queries, "--image-dir", ds.images,
                  "--dtype", "float32", env=env, timeout=120)
    assert r.returncode == 0, describe(r)
    snap = tmp_path / "hf" / "hub" / "models--me--tiny-llava" / "snapshots" / sha
    fetched = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if not p.is_dir())
    assert fetched == sorted(k for k in files if k.endswith((".safetensors", ".json", "tokenizer.model"))), fetched
    man = manifest(store)
    assert (man["model"]["id"], man["model"].get("revision")) == ("me/tiny-llava", sha), man["model"]
    assert os.path.samefile(man["source"]["path"], str(snap)), man["source"]
    got_log = [e["path"] for e in hub.log if "/resolve/" in e["path"]]
    assert not [p for p in got_log if "README" in p or "weights.bin" in p], got_log
    assert len(fetched) >= 3 and hub.peak_inflight >= 3, (fetched, hub.peak_inflight)
    n_batches = len(ds.entries)
    rels = view_rels(llava.facts()["text"]["num_hidden_layers"], n_batches)[:4]
    with mount(store, env=env) as m:
        got = read_views_bytes(m, rels)
    with mount(copy_store(fp32_store[0], tmp_path / "base")) as m:
        want = read_views_bytes(m, rels)
    assert got == want
    # a name that is neither a folder nor a model on the Hub: both said
    r = run_cltfs("init", str(tmp_path / "s2"), "--model", "me/no-such-model", "--dataset", ds.queries,
                  "--image-dir", ds.images, env=env, timeout=120)
    assert r.returncode == 1 and "me/no-such-model" in r.stderr and "not found as a Hub model" in r.stderr, describe(r)


def test_capture_with_another_model_refused(llava, run_cltfs, tmp_path, mount_fails):
    """A checkpoint of another shape than the store was made for (capture's
    --model, a mount's -o model=): the capture and the mount exit 1 naming
    the checkpoint and both shapes; nothing is stored."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    other = str(tmp_path / "other")
    G.make_llava(other, seed=1, layers=n_layers - 1)
    r = run_capture(run_cltfs, store, "--model", other, check=False)
    want = "%d layers" % (n_layers - 1)
    assert r.returncode == 1 and other in r.stderr and want in r.stderr and \
        "the store was made for %d" % n_layers in r.stderr, describe(r)
    rc, out = mount_fails(store, "model=" + other)
    assert rc == 1 and other in out and want in out, out
    assert stat_json(run_cltfs, store)["chunks"] == 0
    verify_ok(run_cltfs, store)


def test_repair_recaptures_damaged_chunks(llava, fp32_store, run_cltfs, tmp_path, mount):
    """A captured store whose pack is damaged: `verify --repair` drops the
    damaged records, runs the model again for what they held (the manifest
    says the store was captured), and the store verifies and serves the
    views `cltfs capture` made, byte for byte."""
    store = copy_store(fp32_store[0], tmp_path / "store")
    pack = sorted(glob.glob(os.path.join(store, "packs", "*.pack")))[-1]
    size = os.path.getsize(pack)
    with open(pack, "r+b") as f:
        for frac in (0.3, 0.8):
            f.seek(int(size * frac))
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x5A]))
    assert run_cltfs("verify", store).returncode == 1
    r = run_cltfs("verify", "--repair", store, timeout=CAPTURE_TIMEOUT)
    assert r.returncode == 0 and "damaged records dropped" in r.stderr, describe(r)
    missing = int(re.search(r"(\d+) of \d+ chunks missing", r.stderr).group(1))
    assert missing > 0 and "captured" in r.stderr + r.stdout, describe(r)
    verify_ok(run_cltfs, store)
    rels = view_rels(llava.facts()["text"]["num_hidden_layers"], len(llava.dataset().entries))
    with mount(store) as m:
        got = read_views_bytes(m, rels)
        assert m.stats()["chunks"]["capture"] == 0  # all there again: nothing captured on a read
    with mount(copy_store(fp32_store[0], tmp_path / "base")) as m:
        want = read_views_bytes(m, rels)
    assert [rel for rel in rels if got[rel] != want[rel]] == []


@needs_script
def test_capture_progress_on_a_tty(llava, run_cltfs, cltfs_bin, tmp_path):
    """On a terminal, capture says it is loading the model (minutes for a
    7B checkpoint), then rewrites a progress line per batch whose rate is
    the model's (loading left out, as in the summary); not on a terminal,
    only the summary."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    rc, out = on_tty(cltfs_bin, "capture", store, timeout=CAPTURE_TIMEOUT)
    assert rc == 0, out
    n = len(llava.dataset().entries)
    assert "\rcapture: loading the model" in out and "\rcapture: batch %d/%d" % (n, n) in out, out
    last = float(re.findall(r"batch \d+/\d+, \d+ rows captured, (\d+) tokens/s", out)[-1])
    summary = float(re.search(r"(\d+) tokens/s on ", out).group(1))
    assert 0.5 * summary <= last <= 2 * summary, (last, summary, out)
    store2 = str(tmp_path / "store2")
    run_init(run_cltfs, store2, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    r = run_capture(run_cltfs, store2)
    assert "capture: batch" not in r.stderr and "loading the model" not in r.stderr.split("after")[0], describe(r)


# ------------------------------------------------------- composed tiers --

def test_hub_store_captured_on_miss(llava, fp32_store, run_cltfs, tmp_path, mount, make_hub):
    """Tiers compose: a Hub store repo that holds half of a capture store's
    batches, mounted here with the checkpoint at hand.  A chunk the Hub has
    is fetched; one nobody has is captured into the local store; every view
    equals a store that `cltfs capture` filled alone."""
    from test_hub import hf_env
    store = str(tmp_path / "half")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    run_capture(run_cltfs, store, "--shard", "1/2", "--quiet")
    n_batches = len(llava.dataset().entries)
    hub = make_hub()
    hub.add_repo("me/half", {os.path.relpath(p, store): read_all(p)
                             for p in glob.glob(os.path.join(store, "*")) + glob.glob(os.path.join(store, "packs", "*"))
                             if os.path.isfile(p)})
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    rels = view_rels(n_layers, n_batches)
    local = str(tmp_path / "local")
    with mount("hf://datasets/me/half", "store=" + local, env=hf_env(tmp_path, hub)) as m:
        got = read_views_bytes(m, rels)
        st = m.stats()
    assert st["chunks"]["hub"] > 0 and st["chunks"]["capture"] > 0 and st["errors"] == 0, st
    assert st["capture"]["batches"] == n_batches - n_batches // 2, st  # the half the Hub lacks
    with mount(copy_store(fp32_store[0], tmp_path / "base")) as m:
        want = read_views_bytes(m, rels)
    diff = [rel for rel in rels if got[rel] != want[rel]]
    assert not diff, "views from the Hub and capture differ from `cltfs capture`'s: %s" % diff[:5]
    verify_ok(run_cltfs, local)


def test_capture_library_stands_alone(llava, cltfs_bin, tmp_path):
    """libcltfs-capture.so needs nothing of cltfs's from its host: a plain
    Python process loads it with ctypes, loads the checkpoint, and reads the
    library's own error messages."""
    lib = os.path.join(os.path.dirname(os.path.realpath(cltfs_bin)), "libcltfs-capture.so")
    r = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not re.search(r" (cltfs|cap|pt|hf)_", r.stdout), r.stdout
    script = r'''
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
class Opts(ctypes.Structure):
    _fields_ = [("dir", ctypes.c_char_p), ("dtype", ctypes.c_int), ("threads", ctypes.c_int),
                ("device", ctypes.c_char_p), ("batch", ctypes.c_int)]
lib.capimpl_errmsg.restype = ctypes.c_char_p
lib.capimpl_model_device.restype = ctypes.c_char_p
lib.capimpl_model_device.argtypes = [ctypes.c_void_p]
lib.capimpl_model_free.argtypes = [ctypes.c_void_p]
m = ctypes.c_void_p()
bad = Opts(sys.argv[3].encode(), -1, 1, b"cpu", 0)
assert lib.capimpl_model_load(ctypes.byref(bad), ctypes.byref(m)) != 0
print("error:", lib.capimpl_errmsg().decode())
ok = Opts(sys.argv[2].encode(), -1, 1, b"cpu", 0)
e = lib.capimpl_model_load(ctypes.byref(ok), ctypes.byref(m))
assert e == 0, lib.capimpl_errmsg()
print("device:", lib.capimpl_model_device(m).decode())
lib.capimpl_model_free(m)
info = ctypes.create_string_buffer(1024)
lib.capimpl_build_info(info, 1024)
print("build:", info.value.decode())
'''
    missing = str(tmp_path / "no-such-checkpoint")
    r = subprocess.run([sys.executable, "-c", script, lib, llava.model(), missing],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert r.returncode == 0, describe(r)
    assert "error: " in r.stdout and missing in r.stdout, r.stdout
    assert "device: cpu" in r.stdout, r.stdout
    assert re.search(r"build: torch \S+ from .+, CUDA: (no|yes)", r.stdout), r.stdout


def test_mount_checks_capture_at_start(llava, run_cltfs, tmp_path, mount, mount_fails):
    """What a capture on a miss needs is checked when the mount starts: a
    checkpoint or image folder that is not there fails a daemonizing mount
    with a message naming it; with the default capture=auto, a store whose
    checkpoint is gone still mounts and serves what it holds, and says why
    it will not capture."""
    model = str(tmp_path / "model")
    shutil.copytree(llava.model(), model)
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, model, llava.dataset(), "--quiet")
    missing = str(tmp_path / "no-such-dir")
    for opts in (("model=" + missing,), ("images=" + missing,), ("capture=on", "model=" + missing)):
        rc, out = mount_fails(store, *opts, args=())
        assert rc == 1 and missing in out, "%s: exit %d\n%s" % (opts, rc, out)
    shutil.rmtree(model)
    rc, out = mount_fails(store, "capture=on", args=())
    assert rc == 1 and model in out, out
    with mount(store) as m:
        with pytest.raises(OSError) as ei:
            read_all(m.p("L0", "batch_0_x.pt"))
        assert ei.value.errno == errno.EIO
        log = m.log()
    assert "not capturing on a miss" in log and model in log, log


def test_capture_ahead_of_a_reader(llava, run_cltfs, tmp_path, mount):
    """A reader going through the batches in order: after a miss, the mount
    captures the next capture_ahead batches on its own, so the reader finds
    them stored; each batch is captured once, and all of it is durable."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    per_batch = stat_json(run_cltfs, store)["chunks_needed"] // len(ref)
    with mount(store, "capture_ahead=2") as m:
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=[0])
        deadline = time.monotonic() + CAPTURE_TIMEOUT
        while m.stats()["capture"].get("ahead_batches", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        st = m.stats()
        assert st["capture"]["ahead_batches"] == 2, st  # batches 1 and 2, by the mount alone
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=list(range(len(ref))))
        st = m.stats()
    assert st["capture"]["batches"] == len(ref), st  # each batch once, by a reader or ahead of one
    verify_ok(run_cltfs, store)
    assert stat_json(run_cltfs, store)["chunks"] == per_batch * len(ref)


# ------------------------------------------- devices, the torch it uses --

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def capture_info(run_cltfs):
    """`cltfs --version`'s capture line: what the capture library runs on."""
    r = run_cltfs("--version")
    assert r.returncode == 0, describe(r)
    line = [l for l in r.stdout.splitlines() if l.startswith("capture: ")]
    assert line, "no capture line in --version: " + describe(r)
    return line[0]


def test_version_reports_torch(run_cltfs, cltfs_bin):
    """--version names the torch the library was built against, where the
    build found it (what tools/find_torch.sh wrote), and whether it has
    CUDA."""
    info = capture_info(run_cltfs)
    m = re.match(r"capture: torch (\S+) from (.+), CUDA: (no|yes.*)$", info)
    assert m, info
    build = os.path.dirname(os.path.realpath(os.path.join(os.path.dirname(cltfs_bin), "libcltfs-capture.so")))
    with open(os.path.join(build, "torch.mk")) as f:
        mk = dict(l.split(" := ", 1) for l in f.read().splitlines() if " := " in l)
    assert m.group(1) == mk["TORCH_VERSION"] and m.group(2) == mk["TORCH_FROM"], (info, mk)
    assert (m.group(3) != "no") == (mk["TORCH_CUDA"] == "1"), (info, mk)


def test_device_errors(llava, run_cltfs, tmp_path, mount_fails):
    """A device name that is none: a usage error.  CUDA asked of a torch
    without it (or with no GPU visible): a clear error before anything runs,
    from capture and from a mount."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--quiet")
    for bad in ("gpu", "cuda:", "cuda:x", "cuda0", "cuda:-1", "CPU"):
        r = run_cltfs("capture", store, "--device", bad)
        assert r.returncode == 2 and "--device" in r.stderr, (bad, describe(r))
        rc, log = mount_fails(store, "device=" + bad)
        assert rc == 2 and "device=" + bad in log, (bad, rc, log)
    if "CUDA: no" not in capture_info(run_cltfs) and "no GPU visible" not in capture_info(run_cltfs):
        pytest.skip("this torch has CUDA and sees a GPU: make gpu-check tests that")
    for dev in ("cuda", "cuda:0", "cuda:3"):
        r = run_cltfs("capture", store, "--device", dev, timeout=120)
        assert r.returncode == 1, describe(r)
        msg = r.stderr
        assert ("device %s" % dev) in msg and ("no CUDA" in msg or "no CUDA GPU is visible" in msg), msg
        assert "torch" in msg or "CUDA_VISIBLE_DEVICES" in msg, msg
        rc, log = mount_fails(store, "device=" + dev)
        assert rc != 0 and ("device %s" % dev) in log and "CUDA" in log, (rc, log)
    assert stat_json(run_cltfs, store)["chunks"] == 0


def test_device_cpu_and_compress_threads(llava, fp32_store, run_cltfs, tmp_path, mount):
    """--device cpu, with four compression threads: the same store as the
    default capture, chunk for chunk."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model("fp32"), llava.dataset(), "--dtype", "float32", "--quiet")
    r = run_capture(run_cltfs, store, "--device", "cpu", "--compress-threads", "4")
    assert "on cpu" in r.stderr, describe(r)
    verify_ok(run_cltfs, store)
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    base = copy_store(fp32_store[0], tmp_path / "base")
    with mount(store) as m, mount(base) as mb:
        for rel in m.files():
            assert read_all(m.p(rel)) == read_all(mb.p(rel)), rel
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32")


def test_idle_model_is_freed(llava, run_cltfs, tmp_path, mount):
    """-o capture_idle=S: the model is freed S seconds after the last
    capture, and the next miss loads it again and captures right."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--dtype", "float32", "--quiet")
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store, "capture_idle=1,capture_ahead=0") as m:
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=[0])
        assert m.stats()["capture"]["device"] == "cpu", m.stats()
        deadline = time.monotonic() + 10
        while m.stats()["capture"].get("model_unloads", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        st = m.stats()["capture"]
        assert st["model_unloads"] == 1 and st["device"] == "not loaded", st
        assert "freed until the next miss" in m.log(), m.log()
        check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "float32", batches=[1])
        st = m.stats()["capture"]
        assert st["device"] == "cpu" and st["batches"] == 2, st
    verify_ok(run_cltfs, store)


def test_find_torch(tmp_path):
    """tools/find_torch.sh: TORCH_DIR first (an error when it holds no
    libtorch), then the torch a python imports, then Debian's libtorch-dev;
    rewritten only when its inputs change."""
    script = os.path.join(REPO, "tools", "find_torch.sh")
    tdir = os.path.dirname(torch.__file__)

    def run(out, torch_dir, *pythons):
        r = subprocess.run(["sh", script, str(out), torch_dir, *pythons], capture_output=True, text=True,
                           timeout=120)
        mk = {}
        if os.path.exists(str(out)):
            with open(str(out)) as f:
                mk = dict(l.split(" := ", 1) for l in f.read().splitlines() if " := " in l)
        return r, mk

    r, mk = run(tmp_path / "a" / "torch.mk", str(tmp_path / "nothing-here"), sys.executable)
    assert r.returncode == 1 and "nothing-here" in r.stderr and "no libtorch" in r.stderr, describe(r)
    assert not mk
    r, mk = run(tmp_path / "b" / "torch.mk", tdir, "no-such-python")
    assert r.returncode == 0, describe(r)
    assert mk["TORCH_FROM"] == "TORCH_DIR (%s)" % tdir and "-Wl,-rpath,%s/lib" % tdir in mk["TORCH_LIBS"], mk
    abi = "-D_GLIBCXX_USE_CXX11_ABI=%d" % int(torch.compiled_with_cxx11_abi())
    assert abi in mk["TORCH_CFLAGS"], mk
    assert os.path.exists(str(tmp_path / "b" / "torch_build.h"))
    out = tmp_path / "c" / "torch.mk"
    r, mk = run(out, "", "no-such-python", sys.executable)
    assert r.returncode == 0 and mk["TORCH_FROM"] == "%s (%s)" % (sys.executable, tdir), (describe(r), mk)
    assert mk["TORCH_VERSION"] == torch.__version__ and abi in mk["TORCH_CFLAGS"], mk
    assert mk["TORCH_CUDA"] == ("1" if os.path.exists(os.path.join(tdir, "lib", "libtorch_cuda.so")) else "0")
    before = os.stat(str(out)).st_mtime_ns
    r, _ = run(out, "", "no-such-python", sys.executable)
    assert r.returncode == 0 and r.stderr == "" and os.stat(str(out)).st_mtime_ns == before, describe(r)
    if os.path.exists("/usr/include/torch/csrc/api/include/torch/torch.h"):
        r, mk = run(tmp_path / "d" / "torch.mk", "", "no-such-python")
        assert r.returncode == 0 and mk["TORCH_FROM"].startswith("Debian libtorch-dev"), (describe(r), mk)
        assert "-L" not in mk["TORCH_LIBS"] and "-isystem /usr/include " not in mk["TORCH_CFLAGS"] + " ", mk


GPU = os.environ.get("CLTFS_TEST_DEVICE", "")


def test_bf16_compute_within_tolerance(llava, run_cltfs, tmp_path, mount):
    """The whole forward pass in bf16 (what a GPU runs by default), here on
    the CPU: every value within the bf16 tolerance of the fp32 reference.
    With CLTFS_TEST_DEVICE=cuda (make gpu-check) on that GPU, with the batch
    its memory allows."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--quiet")
    dev = GPU or "cpu"
    r = run_capture(run_cltfs, store, "--device", dev, "--dtype", "bfloat16")
    assert "on %s (bfloat16)" % (dev if dev != "cuda" else "cuda:0") in r.stderr, describe(r)
    verify_ok(run_cltfs, store)
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store, "capture=off") as m:
        w = check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "bfloat16", tol=(BF16C_ATOL, BF16C_RTOL))
    measured("bf16 compute on %s, max |x - ref mlp_in|" % dev, w["x"])
    measured("bf16 compute on %s, max |target - ref mlp_out|" % dev, w["y"])


@pytest.mark.skipif(not GPU, reason="CLTFS_TEST_DEVICE=cuda (make gpu-check) runs this on a GPU")
def test_gpu_capture_on_miss(llava, run_cltfs, tmp_path, mount):
    """A mount on a GPU: misses captured there in bf16 (the default on a GPU),
    read by a DataLoader with workers, within the bf16 tolerance."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--quiet")
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store, "device=" + GPU) as m:
        w = check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "bfloat16", tol=(BF16C_ATOL, BF16C_RTOL))
        st = m.stats()["capture"]
        assert st["device"].startswith("cuda"), st
    measured("GPU mount, max |target - ref mlp_out|", w["y"])
    verify_ok(run_cltfs, store)


@pytest.mark.parametrize("codec", ["raw", "exp4"])
def test_init_codec(llava, run_cltfs, tmp_path, mount, codec):
    """init --codec: the store's manifest names it and capture (and a capture
    on a miss) writes every frame in it; the views are what the default
    (zstd) store serves, the reference rounded to bf16."""
    store = str(tmp_path / "store")
    run_init(run_cltfs, store, llava.model(), llava.dataset(), "--codec", codec, "--quiet")
    man = json.load(open(os.path.join(store, "cltfs.json")))
    assert man["codec"] == codec and man["version"] == 4, man
    run_capture(run_cltfs, store, "--rows", "0:1", "--quiet")
    ref = llava.ref()
    n_layers = llava.facts()["text"]["num_hidden_layers"]
    with mount(store) as m:  # the rest captured on a miss
        w = check_views(lambda rel: torch.load(m.p(rel)), ref, n_layers, "bfloat16")
    assert w["exact"] > 0.98, w
    st = stat_json(run_cltfs, store)
    assert st["chunks"] == st["chunks_needed"] and st["codec"] == codec and list(st["frames"]) == [codec], st
    verify_ok(run_cltfs, store)
