"""samples.bin, the sample table of a cltfs store (manifest version 2), read
and written in Python for the tests: an implementation of the format from
its description (DESIGN.md, codec/samples.c's header comment), not from the
C code, so that the two check each other.

    header   128 bytes: b"CLTFSSM1", u32 version 1, u32 flags (1: batch
             shapes, 2: strings), u64 samples, u64 batches, u64 string
             bytes, u32 CRC-32 of rows, of shapes, of offsets, of strings,
             zeros, u32 CRC-32 of the first 124 bytes
    rows     u32 per sample, padded with zeros to 8 bytes
    shapes   u32 S, u32 T per batch
    offsets  u64 per sample + 1 into the strings
    strings  b"id\\0image\\0text\\0" per sample
"""
import json
import os
import struct
import zlib

MAGIC = b"CLTFSSM1"
HEADER = 128


def _pad8(n):
    return (n + 7) & ~7


def read(path):
    """{"samples": [{"rows", "id", "image", "text"}...], "batches": [(S, T)...] or None,
    "crc": the header's CRC}; raises ValueError on a bad table."""
    with open(path, "rb") as f:
        b = f.read()
    if len(b) < HEADER or b[:8] != MAGIC:
        raise ValueError("not a sample table")
    if struct.unpack_from("<I", b, 124)[0] != zlib.crc32(b[:124]):
        raise ValueError("header checksum")
    version, flags, n, nb, blob_len = struct.unpack_from("<IIQQQ", b, 8)
    crcs = struct.unpack_from("<IIII", b, 40)
    rows_off = HEADER
    shapes_off = rows_off + _pad8(4 * n)
    offs_off = shapes_off + 8 * nb
    blob_off = offs_off + (8 * (n + 1) if flags & 2 else 0)
    if version != 1 or len(b) != blob_off + blob_len:
        raise ValueError("version or size")
    for (lo, hi), crc in zip([(rows_off, shapes_off), (shapes_off, offs_off), (offs_off, blob_off),
                              (blob_off, len(b))], crcs):
        if zlib.crc32(b[lo:hi]) != crc:
            raise ValueError("section checksum")
    rows = struct.unpack_from("<%dI" % n, b, rows_off)
    shapes = [struct.unpack_from("<II", b, shapes_off + 8 * i) for i in range(nb)] if flags & 1 else None
    samples = [{"rows": r} for r in rows]
    if flags & 2:
        offs = struct.unpack_from("<%dQ" % (n + 1), b, offs_off)
        blob = b[blob_off:]
        for i, s in enumerate(samples):
            ident, image, text, tail = blob[offs[i]:offs[i + 1]].split(b"\0")
            assert tail == b""
            s.update(id=ident.decode(), image=image.decode(), text=text.decode())
    return {"samples": samples, "batches": shapes, "crc": struct.unpack_from("<I", b, 124)[0]}


def write(path, samples, batches=None):
    """A table of samples ([{"rows", and optionally "id", "image", "text"}]) and
    batch shapes; returns the header's CRC (what cltfs.json records)."""
    n = len(samples)
    strings = any(k in s for s in samples for k in ("id", "image", "text"))
    rows = struct.pack("<%dI" % n, *[s["rows"] for s in samples])
    rows += b"\0" * (_pad8(len(rows)) - len(rows))
    shapes = b"".join(struct.pack("<II", S, T) for S, T in batches or [])
    offs, blob = b"", b""
    if strings:
        at = []
        for s in samples:
            at.append(len(blob))
            blob += b"".join(str(s.get(k, "")).encode() + b"\0" for k in ("id", "image", "text"))
        at.append(len(blob))
        offs = struct.pack("<%dQ" % (n + 1), *at)
    flags = (1 if batches else 0) | (2 if strings else 0)
    h = MAGIC + struct.pack("<IIQQQ", 1, flags, n, len(batches or []), len(blob))
    h += struct.pack("<IIII", zlib.crc32(rows), zlib.crc32(shapes), zlib.crc32(offs), zlib.crc32(blob))
    h += b"\0" * (124 - len(h))
    crc = zlib.crc32(h)
    with open(path, "wb") as f:
        f.write(h + struct.pack("<I", crc) + rows + shapes + offs + blob)
    return crc


def manifest(store):
    """cltfs.json of a store as a dict, with "samples" (and "batches") read from
    its table when it is version 2: the version 1 form, whatever the version."""
    with open(os.path.join(store, "cltfs.json")) as f:
        man = json.load(f)
    man.pop("checksum", None)
    if man.get("version", 1) >= 2:
        t = read(os.path.join(store, "samples.bin"))
        man["samples"] = t["samples"]
        if t["batches"]:
            man["batches"] = [list(b) for b in t["batches"]]
        man["version"] = 1
    return man


def save_manifest(store, man):
    """Write cltfs.json as cltfs does (version 4): compact JSON with its
    "checksum" last, the CRC-32 of the file's bytes with those 8 digits read
    as zeros.  For tests that change a field on purpose and want cltfs to
    look past the checksum at what they changed."""
    man = {k: v for k, v in man.items() if k != "checksum"}
    man["checksum"] = "00000000"
    text = json.dumps(man, separators=(",", ":")) + "\n"
    text = text.replace('"checksum":"00000000"', '"checksum":"%08x"' % (zlib.crc32(text.encode()) & 0xFFFFFFFF))
    with open(os.path.join(store, "cltfs.json"), "w") as f:
        f.write(text)


def rewrite(store, samples, batches=None):
    """Replace a version 2+ store's table and make cltfs.json name it."""
    crc = write(os.path.join(store, "samples.bin"), samples, batches)
    path = os.path.join(store, "cltfs.json")
    with open(path) as f:
        man = json.load(f)
    man["samples"].update(count=len(samples), crc32="%08x" % crc)
    save_manifest(store, man)
