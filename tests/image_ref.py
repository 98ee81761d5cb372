#!/usr/bin/python3
"""Reference images and pixels for tests/capture_image.c.

    image_ref.py DIR

writes into DIR (which must exist):
  img/       PNGs of every colour type and bit depth (some interlaced, some
             written here byte by byte), JPEGs (quality 95 and 75, 4:4:4,
             4:2:2, 4:2:0, grey, progressive, CMYK), in sizes from 1x5 to
             1024x768
  extra/     (if the caller made it) more images, treated as those of img/
  bad/       files that must fail, and how
  cfg/       preprocessor_config.json variants (llava-1.5's own first)
  ref/       what PIL and numpy make of them, raw: decoded RGB (.rgb),
             resized RGB (.u8), cropped uint8 CHW (.crop), and per config
             float32 [3][256] (.f32, little-endian): the final value of
             each byte in each channel
  manifest.txt, one case a line (paths absolute):
    decode  FILE W H RGB              cap_image_decode must equal RGB
    agree   FILE RGB|-                PIL decodes FILE to RGB, or fails (-)
    resize  RGB W H FILTER DW DH U8   cap_image_resize_u8 must equal U8
    config  NAME JSON F32
    pixels  NAME FILE RW RH U8|- OH OW CROP   float pixel = F32[c][CROP[c][y][x]]
    bad     FILE CODE TEXT            cap_image_load fails with CODE, the
                                      message names FILE and contains TEXT
    tall    FILE                      a 1x20000 image (no reference)

The pixels follow transformers' CLIPImageProcessor (image_processing_clip.py
and image_transforms.py, 4.3x-4.5x) step by step with PIL and numpy; the
channel format is given, not inferred (transformers 4 infers channels-first
for an image 1 or 3 pixels high, a quirk cltfs does not copy).
"""
import io
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

LLAVA = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}

CONFIGS = {
    "llava": LLAVA,
    "se56": dict(LLAVA, size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}),
    # crop taller than the resize: zero padding above and below
    "pad": {"size": {"shortest_edge": 48}, "crop_size": {"height": 64, "width": 40}, "resample": 2,
            "do_normalize": False},
    # an old feature extractor's bare integers, scalar mean and std
    "noresize": {"feature_extractor_type": "CLIPFeatureExtractor", "do_resize": False, "size": 224,
                 "crop_size": 56, "image_mean": 0.5, "image_std": 0.5},
    "nocrop": {"do_center_crop": False, "size": 40, "resample": 1, "do_rescale": False},
    "box": {"size": {"shortest_edge": 30}, "crop_size": [30, 24], "resample": 4, "do_rescale": False,
            "do_normalize": False, "image_mean": None},
}

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ---- transformers' steps ----

def settings(cfg):
    """CLIPImageProcessor.__init__'s defaults and get_size_dict's forms."""
    g = lambda k, d: d if cfg.get(k) is None else cfg[k]
    size, crop = g("size", {"shortest_edge": 224}), g("crop_size", {"height": 224, "width": 224})
    se = size if isinstance(size, int) else size["shortest_edge"]
    if isinstance(crop, int):
        crop = (crop, crop)
    elif isinstance(crop, (list, tuple)):
        crop = tuple(crop)
    else:
        crop = (crop["height"], crop["width"])
    mean, std = g("image_mean", OPENAI_CLIP_MEAN), g("image_std", OPENAI_CLIP_STD)
    return dict(do_resize=g("do_resize", True), se=se, resample=g("resample", 3),
                do_center_crop=g("do_center_crop", True), crop=crop, do_rescale=g("do_rescale", True),
                factor=g("rescale_factor", 1 / 255), do_normalize=g("do_normalize", True),
                mean=mean if isinstance(mean, list) else [mean] * 3,
                std=std if isinstance(std, list) else [std] * 3)


def resize_size(h, w, size):
    """get_resize_output_image_size(default_to_square=False)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def center_crop(image, size):
    """image_transforms.center_crop on a (C, H, W) array."""
    orig_height, orig_width = image.shape[-2:]
    crop_height, crop_width = size
    top = (orig_height - crop_height) // 2
    bottom = top + crop_height
    left = (orig_width - crop_width) // 2
    right = left + crop_width
    if top >= 0 and bottom <= orig_height and left >= 0 and right <= orig_width:
        return image[..., top:bottom, left:right]
    new_height = max(crop_height, orig_height)
    new_width = max(crop_width, orig_width)
    new_image = np.zeros_like(image, shape=image.shape[:-2] + (new_height, new_width))
    top_pad = math.ceil((new_height - orig_height) / 2)
    left_pad = math.ceil((new_width - orig_width) / 2)
    new_image[..., top_pad:top_pad + orig_height, left_pad:left_pad + orig_width] = image
    top += top_pad
    bottom += top_pad
    left += left_pad
    right += left_pad
    return new_image[..., max(0, top):min(new_height, bottom), max(0, left):min(new_width, right)]


def rescale_normalize(image, s):
    """rescale then normalize, on a (C, H, W) uint8 array."""
    if s["do_rescale"]:
        image = (image.astype(np.float64) * s["factor"]).astype(np.float32)
    if s["do_normalize"]:
        if not np.issubdtype(image.dtype, np.floating):
            image = image.astype(np.float32)
        mean = np.array(s["mean"], dtype=image.dtype)
        std = np.array(s["std"], dtype=image.dtype)
        image = ((image.T - mean) / std).T
    return image.astype(np.float32)


def float_table(cfg):
    """What the float steps make of each value 0-255 in each channel."""
    return rescale_normalize(np.tile(np.arange(256, dtype=np.uint8), (3, 1, 1)), settings(cfg))[:, 0, :]


def hf_pixels(path, cfg):
    """(resized uint8 HWC or None, cropped uint8 CHW, float32 CHW) as
    CLIPImageProcessor makes them."""
    s = settings(cfg)
    image = np.array(Image.open(path).convert("RGB"))  # convert_to_rgb, to_numpy_array
    resized = None
    if s["do_resize"]:
        oh, ow = resize_size(image.shape[0], image.shape[1], s["se"])
        image = np.array(Image.fromarray(image).resize((ow, oh), resample=s["resample"], reducing_gap=None))
        resized = image
    image = image.transpose(2, 0, 1)  # channels first from here, as transformers 5 does it
    if s["do_center_crop"]:
        image = center_crop(image, s["crop"])
    return resized, np.ascontiguousarray(image), rescale_normalize(image, s)


# ---- PNG, byte by byte (for what PIL will not write) ----

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pack_rows(a, depth):
    """Rows of an (h, w, c) integer array as PNG scanlines, filter 0."""
    out = b""
    for row in a:
        flat = row.reshape(-1).astype(np.uint32)
        if depth == 16:
            data = flat.astype(">u2").tobytes()
        elif depth == 8:
            data = flat.astype(np.uint8).tobytes()
        else:
            per = 8 // depth
            pad = (-len(flat)) % per
            flat = np.concatenate([flat, np.zeros(pad, np.uint32)]).reshape(-1, per)
            shifts = np.arange(per - 1, -1, -1) * depth
            data = (flat << shifts).sum(axis=1).astype(np.uint8).tobytes()
        out += b"\0" + data
    return out


def png_bytes(a, depth, ctype, plte=None, trns=None, interlace=False):
    h, w = a.shape[:2]
    if interlace:
        raw = b"".join(pack_rows(a[y0::dy, x0::dx], depth) for x0, y0, dx, dy in ADAM7
                       if a[y0::dy, x0::dx].size)
    else:
        raw = pack_rows(a, depth)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, int(interlace)))
    if plte is not None:
        out += chunk(b"PLTE", bytes(plte))
    if trns is not None:
        out += chunk(b"tRNS", bytes(trns))
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# ---- the images ----

SIZES = [(80, 60), (56, 56), (100, 140), (33, 70), (200, 90), (1, 5), (5, 1), (337, 336), (336, 337)]


def pattern(w, h, seed, chans=3):
    """Smooth gradients plus noise: edges for the filters, noise for rounding."""
    r = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for c in range(chans):
        v = 128 + 90 * np.sin(x / (3 + 2 * c) + y / (4 + c) + seed) + 40 * np.cos(x * y / 500.0)
        out.append(v + r.randint(-30, 31, size=(h, w)))
    return np.clip(np.stack(out, axis=-1), 0, 255).astype(np.uint8)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def pil_save(im, path, **kw):
    im.save(path, **kw)
    return path


def make_images(d):
    files = []
    img = os.path.join(d, "img")
    os.makedirs(img)
    P = lambda n: os.path.join(img, n)
    for i, (w, h) in enumerate(SIZES):
        rgb = pattern(w, h, i)
        im = Image.fromarray(rgb)
        files.append(pil_save(im, P(f"rgb_{w}x{h}.png")))
        files.append(pil_save(im, P(f"q95_{w}x{h}.jpg"), quality=95))
        files.append(pil_save(im, P(f"q75_{w}x{h}.jpg"), quality=75))
        if w * h >= 100:
            files.append(pil_save(im, P(f"s444_{w}x{h}.jpg"), quality=90, subsampling=0))
            files.append(pil_save(im, P(f"s422_{w}x{h}.jpg"), quality=90, subsampling=1))
            files.append(pil_save(im, P(f"prog_{w}x{h}.jpg"), quality=85, progressive=True, optimize=True))
            files.append(pil_save(im.convert("L"), P(f"grey_{w}x{h}.jpg"), quality=90))
            files.append(pil_save(im.convert("CMYK"), P(f"cmyk_{w}x{h}.jpg"), quality=90))
            a4 = np.concatenate([rgb, pattern(w, h, i + 50, 1)], axis=-1)
            files.append(pil_save(Image.fromarray(a4, "RGBA"), P(f"rgba_{w}x{h}.png")))
            files.append(pil_save(im.convert("L"), P(f"l_{w}x{h}.png")))
            files.append(pil_save(Image.fromarray(a4[:, :, [0, 3]], "LA"), P(f"la_{w}x{h}.png")))
            files.append(pil_save(im.quantize(256), P(f"p256_{w}x{h}.png")))
            files.append(pil_save(im.quantize(16), P(f"p16_{w}x{h}.png")))   # 4-bit indices
            files.append(pil_save(im.quantize(2), P(f"p2_{w}x{h}.png")))     # 1-bit indices
            files.append(pil_save(im.convert("1"), P(f"bw_{w}x{h}.png")))
    big = pattern(1024, 768, 99)
    files.append(pil_save(Image.fromarray(big), P("photo_1024x768.jpg"), quality=90))
    files.append(pil_save(Image.fromarray(big), P("photo_1024x768.png")))
    files += byte_pngs(P)
    extra = os.path.join(d, "extra")  # written by the C test: JPEGs PIL cannot write
    if os.path.isdir(extra):
        files += [os.path.join(extra, n) for n in sorted(os.listdir(extra))]
    return files


def byte_pngs(P):
    """PNGs PIL does not write: low-bit grey, 16-bit, tRNS, interlaced,
    palette indices past the PLTE."""
    files = []
    r = np.random.RandomState(7)
    for w, h in [(37, 23), (8, 3), (1, 9)]:
        for depth in (1, 2, 4, 8, 16):
            a = r.randint(0, 1 << depth, size=(h, w, 1))
            for il in (False, True):
                name = P(f"g{depth}{'i' if il else ''}_{w}x{h}.png")
                write(name, png_bytes(a, depth, 0, interlace=il))
                files.append(name)
        a16 = r.randint(0, 65536, size=(h, w, 4))
        a16[0, :, :] = r.randint(0, 300, size=(w, 4))  # 16-bit grey below 255 too
        for ctype, ch in ((2, 3), (4, 2), (6, 4)):
            for il in (False, True):
                name = P(f"c{ctype}d16{'i' if il else ''}_{w}x{h}.png")
                write(name, png_bytes(a16[:, :, :ch], 16, ctype, interlace=il))
                files.append(name)
        a8 = r.randint(0, 256, size=(h, w, 4))
        name = P(f"rgba8i_{w}x{h}.png")
        write(name, png_bytes(a8, 8, 6, interlace=True))
        files.append(name)
        name = P(f"grey_trns_{w}x{h}.png")
        write(name, png_bytes(a8[:, :, :1], 8, 0, trns=[0, int(a8[0, 0, 0])]))
        files.append(name)
        # 2-bit indices, a 3-entry PLTE: index 3 is past it (PIL: grey 3,3,3)
        idx = r.randint(0, 4, size=(h, w, 1))
        plte = r.randint(0, 256, size=9).tolist()
        for il in (False, True):
            name = P(f"pal_short{'i' if il else ''}_{w}x{h}.png")
            write(name, png_bytes(idx, 2, 3, plte=plte, trns=[0, 128], interlace=il))
            files.append(name)
        idx8 = r.randint(0, 256, size=(h, w, 1))
        name = P(f"pal8_short_{w}x{h}.png")
        write(name, png_bytes(idx8, 8, 3, plte=r.randint(0, 256, size=30).tolist()))
        files.append(name)
    return files


# ---- odd files, compared with PIL whatever it does ----

def tails(d, good_jpg, good_png):
    """Files cut or damaged near their end: cltfs must do what PIL does."""
    out = []
    jpg, png = open(good_jpg, "rb").read(), open(good_png, "rb").read()
    assert jpg.endswith(b"\xff\xd9") and png.endswith(chunk(b"IEND", b""))
    body = png[:-12]
    cases = {
        "noeoi.jpg": jpg[:-2],
        "trailing.jpg": jpg + b"junk after the end",
        "noiend.png": body,
        "cut_idat_crc.png": body[:-2],
        "cut_adler.png": body[:-6],
        "trailing.png": png + b"junk",
    }
    for name, data in cases.items():
        p = os.path.join(d, "img", name)
        write(p, data)
        out.append(p)
    return out


def pil_rgb(path):
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except Exception:
        return None


# ---- files that must fail ----

def bad_files(d, good_jpg, good_prog, good_png):
    b = os.path.join(d, "bad")
    os.makedirs(b)
    B = lambda n: os.path.join(b, n)
    jpg, prog, png = (open(p, "rb").read() for p in (good_jpg, good_prog, good_png))
    cases = []

    def add(name, data, code, text, pil_fails=True):
        if data is not None:
            write(B(name), data)
            if pil_fails:
                assert pil_rgb(B(name)) is None, f"PIL opens {name}"
        cases.append((B(name), code, text))

    add("missing.png", None, "NOTFOUND", "")
    os.mkdir(B("folder.jpg"))
    cases.append((B("folder.jpg"), "IO", "directory"))
    add("empty.png", b"", "FORMAT", "empty")
    add("text.jpg", b"this is not an image\n", "FORMAT", "neither")
    g = io.BytesIO()
    Image.new("RGB", (4, 4)).save(g, "GIF")
    add("anim.gif", g.getvalue(), "UNSUPPORTED", "GIF", pil_fails=False)
    g = io.BytesIO()
    Image.new("RGB", (4, 4)).save(g, "WEBP")
    add("photo.webp", g.getvalue(), "UNSUPPORTED", "WebP", pil_fails=False)
    add("half.jpg", jpg[:len(jpg) // 2], "CORRUPT", "truncated")
    add("half_prog.jpg", prog[:len(prog) * 3 // 5], "CORRUPT", "truncated")
    add("half.png", png[:len(png) // 2], "CORRUPT", "truncated")
    add("header.png", png[:20], "CORRUPT", "truncated")
    add("header.jpg", jpg[:3], "CORRUPT", "truncated")
    # a Huffman table whose code counts add up to more than 256
    i = jpg.index(b"\xff\xc4")
    add("bad_huffman.jpg", jpg[:i + 5] + b"\xff" * 16 + jpg[i + 21:], "CORRUPT", "Huffman")
    # IDAT data damaged, its CRC made right: zlib's error
    i = png.index(b"IDAT")
    n = struct.unpack(">I", png[i - 4:i])[0]
    data = bytearray(png[i + 4:i + 4 + n])
    data[2:40] = b"\xa5" * 38
    add("bad_zlib.png", png[:i - 4] + chunk(b"IDAT", bytes(data)) + png[i + 8 + n:], "CORRUPT", "corrupt")
    # the IHDR's CRC wrong: PIL refuses it too
    add("bad_crc.png", png[:29] + b"\0\0\0\0" + png[33:], "CORRUPT", "CRC")
    ihdr = lambda w, h: b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    add("zero.png", ihdr(0, 5) + chunk(b"IEND", b""), "FORMAT", "zero")
    add("wide.png", ihdr(70000, 2) + chunk(b"IEND", b""), "UNSUPPORTED", "70000x2", pil_fails=False)
    add("huge.png", ihdr(60000, 60000) + chunk(b"IEND", b""), "UNSUPPORTED", "60000x60000",
        pil_fails=False)
    i = jpg.index(b"\xff\xc0")
    add("zero.jpg", jpg[:i + 5] + b"\0\0" + jpg[i + 7:], "FORMAT", "zero", pil_fails=False)
    add("huge.jpg", jpg[:i + 5] + struct.pack(">HH", 60000, 60000) + jpg[i + 9:], "UNSUPPORTED",
        "60000x60000", pil_fails=False)
    return cases


def save_raw(path, a):
    np.ascontiguousarray(a).tofile(path)
    return path


def main():
    d = os.path.abspath(sys.argv[1])
    ref = os.path.join(d, "ref")
    cfgdir = os.path.join(d, "cfg")
    os.makedirs(ref)
    os.makedirs(cfgdir)
    files = make_images(d)
    P = lambda n: os.path.join(d, "img", n)
    lines = []
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        base = os.path.join(ref, os.path.basename(f))
        lines.append(f"decode {f} {rgb.shape[1]} {rgb.shape[0]} {save_raw(base + '.rgb', rgb)}")
    for f in tails(d, P("q95_80x60.jpg"), P("rgb_200x90.png")):
        rgb = pil_rgb(f)
        out = "-" if rgb is None else save_raw(os.path.join(ref, os.path.basename(f)) + ".rgb", rgb)
        lines.append(f"agree {f} {out}")
    # the resize alone: every filter, up and down, one side or both
    for f in (P("rgb_80x60.png"), P("rgb_33x70.png"), P("q95_337x336.jpg"), P("rgb_1x5.png"),
              P("photo_1024x768.jpg")):
        im = Image.open(f).convert("RGB")
        w, h = im.size
        base = os.path.join(ref, os.path.basename(f))
        rgbfile = base + ".rgb"
        for dw, dh in sorted({(w, h + 7), (w * 3 // 2 + 1, h), (max(1, w // 3), max(1, h // 5)), (336, 336),
                              (w * 4 + 3, h * 2 + 1), (1, 1)}):
            if dw * dh > 1 << 20:
                continue
            for flt in (1, 2, 3, 4, 5):
                out = save_raw(f"{base}.{flt}.{dw}x{dh}.u8", np.asarray(im.resize((dw, dh), flt)))
                lines.append(f"resize {rgbfile} {w} {h} {flt} {dw} {dh} {out}")
    # The float steps are elementwise, so each image's floats are the
    # table's entries for its cropped bytes: checked here for every image,
    # so that the reference keeps bytes (a quarter of the floats' size).
    for name, cfg in CONFIGS.items():
        path = os.path.join(cfgdir, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        table = float_table(cfg)
        lines.append(f"config {name} {path} {save_raw(path + '.f32', table.astype('<f4'))}")
        for f in files:
            resized, crop, px = hf_pixels(f, cfg)
            assert np.array_equal(px, table[np.arange(3)[:, None, None], crop]), (f, name)
            base = os.path.join(ref, f"{os.path.basename(f)}.{name}")
            # the whole resized image, unless very elongated (the crop is checked then)
            rh, rw = (0, 0) if resized is None else resized.shape[:2]
            u8 = "-" if rh * rw == 0 or rh * rw > 400000 else save_raw(base + ".u8", resized)
            crop_file = save_raw(base + ".crop", crop)
            lines.append(f"pixels {name} {f} {rw} {rh} {u8} {crop.shape[1]} {crop.shape[2]} {crop_file}")
    for f, code, text in bad_files(d, P("q95_337x336.jpg"), P("prog_337x336.jpg"), P("rgb_80x60.png")):
        lines.append(f"bad {f} {code} {text or '-'}")
    tall = P("tall_1x20000.png")
    write(tall, png_bytes(np.random.RandomState(3).randint(0, 256, size=(20000, 1, 3)), 8, 2))
    lines.append(f"tall {tall}")
    with open(os.path.join(d, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
