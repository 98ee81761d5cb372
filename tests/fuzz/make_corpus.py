#!/usr/bin/python3
"""Make the fuzz corpus: seeds written by the real writers where there are
some (torch.save, pickle, spm_train) and by hand from the formats' specs
where not (zstd frames, index records, safetensors, the Hub's answers), plus
deterministic mutations (truncations, byte flips, insertions, splices) of
each, so that `make check` replays thousands of malformed inputs under ASan
and UBSan.  File names carry the prefix of their target (see README)."""
import io
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import make_llava  # noqa: E402  (tests/: the tokenizer the capture tests train)

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


# ---------------------------------------------------------------- frames ---
# Input of cltfs_fuzz_frame: (element size - 1) | codec << 6, raw length (3
# bytes LE), then a frame as codec/frame.c writes it: zstd (a zstd frame of
# the byte-shuffled values), raw or exp4 (below, from codec/codec.h).
# The tests have no zstd compressor in Python (python3-zstandard is not a
# dependency), so these frames use raw and RLE blocks (RFC 8878 3.1.1.2),
# which need none; the checked-in corpus holds compressed ones
# (frame-seed-zstd-*: the zstd CLI's, and what libFuzzer made of them).

M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (11400714785074694791, 14029467366897019727, 1609587929392839161,
                      9650029242287828579, 2870177450012600261)


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def xxh64_round(acc, lane):
    return rotl((acc + lane * P2) & M64, 31) * P1 & M64


def xxh64(data, seed=0):
    """XXH64 as the zstd frame checksum uses it (its low 32 bits)."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        while i + 32 <= n:
            for k in range(4):
                v[k] = xxh64_round(v[k], struct.unpack_from("<Q", data, i + 8 * k)[0])
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M64
        for x in v:
            h = ((h ^ xxh64_round(0, x)) * P1 + P4) & M64
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        h = (rotl(h ^ xxh64_round(0, struct.unpack_from("<Q", data, i)[0]), 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        h = (rotl(h ^ (struct.unpack_from("<I", data, i)[0] * P1 & M64), 23) * P2 + P3) & M64
        i += 4
    while i < n:
        h = rotl(h ^ (data[i] * P5 & M64), 11) * P1 & M64
        i += 1
    h = (h ^ (h >> 33)) * P2 & M64
    h = (h ^ (h >> 29)) * P3 & M64
    return h ^ (h >> 32)


def shuffle(esize, raw):
    """codec/frame.c's byte shuffle: byte b of every value, then the tail."""
    n = len(raw) // esize
    return b"".join(raw[b:n * esize:esize] for b in range(esize)) + raw[n * esize:]


def zstd_frame(content, rle=False, checksum=True):
    """One frame of raw (or, for runs of one byte, RLE) blocks of 128 KiB."""
    out = bytearray(struct.pack("<IBI", 0xFD2FB528, 0x80 | 0x20 | (4 if checksum else 0), len(content)))
    blocks = [content[i:i + (128 << 10)] for i in range(0, len(content), 128 << 10)] or [b""]
    for k, blk in enumerate(blocks):
        last = k == len(blocks) - 1
        if rle and blk and blk == blk[:1] * len(blk):
            out += (last | 1 << 1 | len(blk) << 3).to_bytes(3, "little") + blk[:1]
        else:
            out += (last | len(blk) << 3).to_bytes(3, "little") + blk
    if checksum:
        out += struct.pack("<I", xxh64(content) & 0xFFFFFFFF)
    return bytes(out)


def frame_input(esize, raw, **kw):
    return bytes([esize - 1]) + len(raw).to_bytes(3, "little") + zstd_frame(shuffle(esize, raw), **kw)


# Byte 0's top two bits name the codec (codec/codec.h): 0 zstd, 1 raw, 2 exp4.
CODEC_RAW, CODEC_EXP4 = 1, 2


def raw_frame(raw):
    """A raw frame: "CLRW", raw length, CRC-32 of the bytes, the bytes."""
    return b"CLRW" + struct.pack("<II", len(raw), zlib.crc32(raw)) + raw


def exp4_frame(esize, raw, n_table=15):
    """An exp4 frame as codec/frame.c writes it: "CLX4", raw length, CRC-32,
    escapes, a table of the most common top bytes (ties: the lower byte),
    4-bit codes (15: the next escape), escapes, lower planes, tail."""
    n = len(raw) // esize
    sh = shuffle(esize, raw)
    top = sh[(esize - 1) * n:esize * n]
    counts = sorted(((-top.count(v), v) for v in set(top)))[:n_table]
    table = [v for _, v in counts]
    code = {v: k for k, v in enumerate(table)}
    codes, esc = bytearray((n + 1) // 2), bytearray()
    for i, v in enumerate(top):
        c = code.get(v, 15)
        codes[i // 2] |= c << 4 if i & 1 else c
        if c == 15:
            esc.append(v)
    head = b"CLX4" + struct.pack("<III", len(raw), zlib.crc32(raw), len(esc)) + bytes(table + [0] * (16 - len(table)))
    return head + bytes(codes) + bytes(esc) + sh[:(esize - 1) * n] + sh[esize * n:]


def codec_input(codec, esize, raw, frame):
    return bytes([codec << 6 | (esize - 1)]) + len(raw).to_bytes(3, "little") + frame


bf16 = torch.randn(64, 8).to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
f32 = torch.randn(33, 4).numpy().astype("<f4").tobytes()
seeds_frame = {
    "bf16": frame_input(2, bf16),
    "f32": frame_input(4, f32),
    "odd": frame_input(4, f32[:13]),
    "empty": frame_input(2, b""),
    "zeros": frame_input(2, bytes(300 << 10), rle=True),
    "nosum": frame_input(2, bf16[:100], checksum=False),
    "raw-bf16": codec_input(CODEC_RAW, 2, bf16, raw_frame(bf16)),
    "raw-odd": codec_input(CODEC_RAW, 4, f32[:13], raw_frame(f32[:13])),
    "raw-empty": codec_input(CODEC_RAW, 2, b"", raw_frame(b"")),
    "raw-is-zstd": codec_input(CODEC_RAW, 2, bf16, frame_input(2, bf16)[4:]),
    "exp4-bf16": codec_input(CODEC_EXP4, 2, bf16, exp4_frame(2, bf16)),
    "exp4-f32": codec_input(CODEC_EXP4, 4, f32, exp4_frame(4, f32)),
    "exp4-odd": codec_input(CODEC_EXP4, 2, bf16[:67], exp4_frame(2, bf16[:67])),
    "exp4-bytes": codec_input(CODEC_EXP4, 1, f32[:200], exp4_frame(1, f32[:200])),
    "exp4-escapes": codec_input(CODEC_EXP4, 2, f32[:300], exp4_frame(2, f32[:300], n_table=3)),
    "exp4-empty": codec_input(CODEC_EXP4, 2, b"", exp4_frame(2, b"")),
    "exp4-is-raw": codec_input(CODEC_EXP4, 2, bf16, raw_frame(bf16)),
}

# --------------------------------------------------------------- records ---
# Input of cltfs_fuzz_record: a 16-byte file header, then 40-byte records:
# magic "CLTR" key offset csize rsize crc dtype codec reserved(2)
# crc-of-the-36.


def header(magic):
    return magic + struct.pack("<II", 1, 40)


def record(key, offset, csize, rsize, crc, dtype, codec=0):
    body = struct.pack("<IQQIIIBB2x", 0x52544C43, key, offset, csize, rsize, crc, dtype, codec)
    return body + struct.pack("<I", zlib.crc32(body))


recs = [record((kind << 48) | (layer << 32) | chunk, 16 + 1000 * chunk, 1000, 4096, (0x1234 * chunk) & 0xFFFFFFFF, dt)
        for kind, layer, chunk, dt in ((0, 0, 0, 0), (0, 3, 1, 0), (1, 4, 2, 1), (1, 65535, 2**32 - 1, 2))]
seeds_rec = {
    "idx": header(b"CLTFSIX1") + b"".join(recs),
    "pack": header(b"CLTFSPK1") + recs[0],
    "baddtype": header(b"CLTFSIX1") + record(1, 2, 3, 4, 5, 7),
    "codecs": header(b"CLTFSIX1") + record(1, 16, 4108, 4096, 5, 0, 1) + record(2, 16, 3000, 4096, 5, 0, 2),
    "badcodec": header(b"CLTFSIX1") + record(1, 2, 3, 4, 5, 0, 3),
    "v2": b"CLTFSIX1" + struct.pack("<II", 2, 40) + recs[1],
}

# ------------------------------------------------------------- tokenizer ---
# Input of cltfs_fuzz_tokenizer: a tokenizer.model.  The capture tests'
# model (BPE, byte fallback, LLaMA's options), one with other whitespace
# options, and a unigram model (refused: cltfs encodes BPE).


def spm_model(options):
    spm = shutil.which("spm_train")
    with tempfile.TemporaryDirectory(prefix="cltfs_fuzz_spm_") as tmp:
        with open(os.path.join(tmp, "corpus.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(make_llava.corpus_lines(n_lines=400)) + "\n")
        subprocess.run([spm, "--input=corpus.txt", "--model_prefix=m", "--num_threads=1"] + options, cwd=tmp,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(tmp, "m.model"), "rb") as f:
            return f.read()


seeds_tok = {}
if shutil.which("spm_train"):
    with tempfile.TemporaryDirectory(prefix="cltfs_fuzz_tok_") as tmp:
        make_llava.train_tokenizer(os.path.join(tmp, "tokenizer.model"))
        with open(os.path.join(tmp, "tokenizer.model"), "rb") as f:
            seeds_tok["llava"] = f.read()
    seeds_tok["suffix"] = spm_model(["--model_type=bpe", "--vocab_size=120", "--byte_fallback=false",
                                     "--treat_whitespace_as_suffix=true", "--remove_extra_whitespaces=true",
                                     "--normalization_rule_name=identity"])
    seeds_tok["unigram"] = spm_model(["--model_type=unigram", "--vocab_size=60", "--normalization_rule_name=identity"])
else:
    print("fuzz corpus: no spm_train (apt-get install sentencepiece): tokenizer seeds only from "
          "tests/fuzz/corpus", file=sys.stderr)

# ----------------------------------------------------------- safetensors ---
# Input of cltfs_fuzz_safetensors: a whole file, as tests/make_llava.py
# writes them: header length, JSON header padded to 8, the data.

ST_SIZE = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8}


def safetensors(tensors, metadata=True, pad=True):
    hdr, data = {}, b""
    if metadata:
        hdr["__metadata__"] = {"format": "pt"}
    for name, dtype, shape in tensors:
        n = ST_SIZE[dtype]
        for d in shape:
            n *= d
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += bytes((i * 7) & 255 for i in range(n))
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


seeds_st = {
    "llava": safetensors([("language_model.model.norm.weight", "F32", [16]),
                          ("language_model.model.layers.0.mlp.up_proj.weight", "BF16", [8, 4]),
                          ("vision_tower.vision_model.embeddings.patch_embedding.weight", "F16", [2, 3, 2, 2])]),
    "scalar": safetensors([("s", "F32", []), ("empty", "BF16", [0, 5])], metadata=False, pad=False),
    "i64": safetensors([("ids", "I64", [3])]),
    "dims": safetensors([("deep", "F16", [1] * 9)]),
    "none": safetensors([]),
}

# ----------------------------------------------------------------- hub ---
# Input of cltfs_fuzz_hub_json: byte 0 even for the revision API's answer,
# odd for a page of the tree listing, then the JSON as tests/hubserver.py
# answers it.

SHA = "0123456789abcdef0123456789abcdef01234567"
revision = {"_id": "0123456789abcdef01234567", "id": "o/d", "author": "o", "sha": SHA, "private": False,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "createdAt": "2024-01-01T00:00:00.000Z", "lastModified": "2024-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": "cltfs.json"}, {"rfilename": "packs/p.idx", "size": 56,
                                                        "blobId": SHA[::-1]}]}
tree = [{"type": "file", "oid": SHA, "size": 312, "path": "cltfs.json"},
        {"type": "directory", "oid": SHA[::-1], "size": 0, "path": "packs"},
        {"type": "file", "oid": SHA, "size": 134, "path": "packs/p.pack",
         "lfs": {"oid": "ab" * 32, "size": 123456789012, "pointerSize": 134}},
        {"type": "file", "oid": SHA, "size": 56, "path": "packs/p.idx",
         "lastCommit": {"id": SHA, "title": "fake commit", "date": "2024-01-01T00:00:00.000Z"}}]
seeds_hub = {
    "rev": b"\0" + json.dumps(revision).encode(),
    "revbad": b"\0" + json.dumps(dict(revision, sha=SHA.upper())).encode(),
    "tree": b"\1" + json.dumps(tree).encode(),
    "unsafe": b"\1" + json.dumps([{"type": "file", "path": "a/../../etc/passwd", "size": 1}]).encode(),
    "empty": b"\1[]",
}

# ------------------------------------------------------------------ s3 ---
# Input of cltfs_fuzz_s3_list: byte 0 even for the prefix "runs/acts", odd
# for a whole bucket; then a page of ListObjectsV2 as S3 answers it.


def s3_page(keys, truncated=False, token="1knjJftEk+8Qqp6uG+uX2nPQ76wq=="):
    objs = "".join("<Contents><Key>%s</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
                   "<ETag>&quot;0123&quot;</ETag><Size>%d</Size><StorageClass>STANDARD</StorageClass>"
                   "</Contents>" % (k, n) for k, n in keys)
    more = "<NextContinuationToken>%s</NextContinuationToken>" % token if truncated else ""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
            '2006-03-01/"><Name>b</Name><Prefix>runs/acts/</Prefix><KeyCount>%d</KeyCount><MaxKeys>1000'
            '</MaxKeys><IsTruncated>%s</IsTruncated>%s%s</ListBucketResult>'
            % (len(keys), "true" if truncated else "false", more, objs)).encode()


store_keys = [("runs/acts/cltfs.json", 312), ("runs/acts/packs/w.idx", 56), ("runs/acts/packs/w.pack", 1 << 33),
              ("runs/acts/samples.bin", 128)]
seeds_s3 = {
    "page": b"\0" + s3_page(store_keys),
    "more": b"\0" + s3_page(store_keys[:2], truncated=True),
    "notoken": b"\0" + s3_page(store_keys[:2], truncated=True, token=""),
    "bucket": b"\1" + s3_page([("cltfs.json", 1), ("a/b&amp;c", 2), ("dir/", 0)]),
    "escape": b"\0" + s3_page([("runs/acts/../../x", 1)]),
    "outside": b"\0" + s3_page([("other/x", 1)]),
    "size": b"\0" + s3_page([("runs/acts/x", 1)]).replace(b"<Size>1<", b"<Size>-1<"),
    "cut": b"\0" + s3_page(store_keys)[:-40],
}

# sample tables (samples.bin), written by tests/sample_table.py from the
# format's description
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import sample_table  # noqa: E402


def table_bytes(samples, batches=None):
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        sample_table.write(f.name, samples, batches)
        return open(f.name, "rb").read()


seeds_tab = {
    "rows": table_bytes([{"rows": 1 + i % 5} for i in range(40)]),
    "batches": table_bytes([{"rows": 4}] * 9, [(2, 4), (3, 4), (4, 4)]),
    "strings": table_bytes([{"rows": 600 + i, "id": str(i), "image": "img_%d.jpg" % i,
                             "text": "Describe this image %d." % i} for i in range(12)]),
    "one": table_bytes([{"rows": 1}]),
}

q = [{"id": i, "image": "AMBER_%d.jpg" % i, "query": "Is there a dog? \u00e9 \\ \"x\" {[]}"} for i in range(5)]
seeds_q = {
    "list": json.dumps(q, indent=1).encode(),
    "lines": "\n".join(json.dumps(e) for e in q).encode() + b"\n",
    "ids": json.dumps([{"id": "a-1", "image": "x.png", "query": ""}, {"id": 1e3, "image": "y", "query": "z"}]).encode(),
    "bad": b'[{"id": 1, "image": "a", "query": "b"} {"id": 2}]',
}

for prefix, seeds, n in (("pt", seeds_pt, 400), ("pkl", seeds_pkl, 400), ("json", seeds_json, 400),
                         ("frame", seeds_frame, 150), ("rec", seeds_rec, 150), ("tok", seeds_tok, 300),
                         ("st", seeds_st, 150), ("hub", seeds_hub, 150), ("tab", seeds_tab, 200),
                         ("q", seeds_q, 200), ("s3", seeds_s3, 150)):
    for name, data in seeds.items():
        for i, m in enumerate(mutations(data, n)):
            put(f"{prefix}-{name}-{i:04d}", m)
print(f"fuzz corpus: {len(os.listdir(out))} inputs in {out}")
