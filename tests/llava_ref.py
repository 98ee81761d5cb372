#!/usr/bin/python3
"""An independent reference forward of LLaVA-1.5 in plain torch (no transformers).

It reads an HF LLaVA-1.5 model folder (the layout of llava-hf/llava-1.5-7b-hf,
or the tiny one tests/make_llava.py writes) and computes, for one prompt and
one image, the per-layer activations that cltfs's capture tier must
reproduce.  It follows the documented semantics of transformers'
LlavaForConditionalGeneration (v4.36 to v4.5x) and is written from scratch
for torch 1.13; nothing is shared with the generator in make_llava.py (its
safetensors reader is its own).

Needs: /usr/bin/python3 with torch, numpy, PIL (python3-pil) and the Debian
SentencePiece module: `apt-get install -y python3-sentencepiece` (and
`sentencepiece`, whose spm_train make_llava.py runs).

Usage:

    llava_ref.py MODEL_DIR QUERIES_JSON IMAGE_DIR OUT.pt
                 [--template T] [--dtype float32|bfloat16]
                 [--hooks mlp_in,resid_pre,resid_mid,mlp_out]
    llava_ref.py MODEL_DIR --show-tokens [TEXT]   ids and pieces of a prompt
    llava_ref.py --selftest                       the checks listed below

    OUT.pt = torch.save({"samples": [{"id", "input_ids" (after expansion,
    len == rows), "text_ids" (before), "image_positions": [start, stop],
    "rows", "acts": {hook: tensor[n_layers, rows, d]}}, ...], "template",
    "dtype", "hooks", "model_dir"}).  In --template a literal backslash-n is
    read as a newline.

    >>> import llava_ref as R
    >>> m = R.load(model_dir, dtype=torch.float32)
    >>> ids = R.tokenize(m, R.prompt("Describe this image."))
    >>> px = R.preprocess(m, "images/AMBER_1.jpg")          # float32 [3, H, W]
    >>> out = R.forward(m, ids, px)
    >>> out["mlp_in"].shape                                  # [n_layers, rows, d]
    >>> out["input_ids"], out["image_positions"], out["rows"]

    load(..., device="cuda") puts the weights on that device; forward then
    makes every tensor it creates there and returns activations there
    (preprocess still returns a CPU tensor: forward moves it).

What is emulated
----------------
config: config.json with transformers' defaults for the fields the real file
  leaves out: text_config (LlamaConfig) vocab_size 32000, hidden_size 4096,
  intermediate_size 11008, num_hidden_layers 32, num_attention_heads 32,
  num_key_value_heads = num_attention_heads, hidden_act "silu",
  max_position_embeddings 2048, rms_norm_eps 1e-6, rope_theta 10000.0,
  no attention/mlp biases; vision_config (CLIPVisionConfig) hidden_size 768,
  intermediate_size 3072, num_hidden_layers 12, num_attention_heads 12,
  image_size 224, patch_size 32, hidden_act "quick_gelu", layer_norm_eps
  1e-5; top level image_token_index 32000, projector_hidden_act "gelu",
  vision_feature_layer -2, vision_feature_select_strategy "default".
weights: model.safetensors.index.json + shards, or a single
  model.safetensors; F32/BF16/F16; the llava-hf names
  (language_model.model.*, language_model.lm_head, vision_tower.*,
  multi_modal_projector.*) or the transformers >= 4.52 names
  (model.language_model.*, lm_head, model.vision_tower.*,
  model.multi_modal_projector.*).  Weights are cast to the compute dtype.
tokenizer (the rule of HF's fast LlamaTokenizerFast, which is what users
  get): split the text on the added tokens (<image>, <pad>, and <s> </s>
  <unk>), encode each non-empty piece of text with SentencePiece separately
  (sp.encode(segment): identity normalization, the dummy prefix "▁" added
  to EVERY segment, byte fallback), map each added token to its id, prepend
  BOS.  The fast tokenizer extracts added tokens before its normalizer runs,
  and its normalizer (prepend "▁", replace " " by "▁") then runs on each
  segment, so a "▁" appears on both sides of <image>: the real
  llava-1.5-7b-hf gives for "USER: <image>\\n..."
      [1, 3148 ▁US, 1001 ER, 29901 :, 29871 ▁, 32000 <image>, 29871 ▁, 13 <0x0A>, ...]
  (cltfs DESIGN.md section 6).  The slow LlamaTokenizer with legacy=False
  (what tokenizer_config.json asks for) does NOT add "▁" after <image>; it
  matches only in legacy mode.  The newer LlavaProcessor (>= 4.47) repeats
  <image> num_patches times in the text before tokenizing; empty segments
  between the copies encode to nothing, so the ids are the same as the
  model-side expansion done here.
image: PIL open, convert("RGB") unless already RGB (RGBA drops alpha, "L"
  replicates), resize with the shortest edge to size.shortest_edge and the
  other edge int(shortest * long / short) (truncation, as
  image_transforms.get_resize_output_image_size), PIL BICUBIC on the uint8
  image, center crop with top = (h - crop_h) // 2, left = (w - crop_w) // 2,
  rescale as float64 * rescale_factor then float32, normalize
  (x - mean) / std in float32, CHW.  (This is the slow CLIPImageProcessor;
  the torchvision-based CLIPImageProcessorFast resizes differently.)
vision tower (CLIP): conv patch embedding (no bias), class token first,
  + position_embedding, pre_layrnorm; layers: LN1 -> attention (q, k, v,
  out_proj with biases, scores * head_dim**-0.5, softmax in float32) ->
  residual, LN2 -> fc1 -> quick_gelu -> fc2 -> residual.  hidden_states[0] is
  pre_layrnorm's output and hidden_states[i] layer i's output; features =
  hidden_states[vision_feature_layer] (-2: the second to last layer's
  output), class token dropped ("default"); layers past it are not run.
projector: linear_1 -> GELU (exact, erf) -> linear_2.
merge: the one <image> id is replaced by the num_patches feature rows, so
  rows = len(ids) - 1 + num_patches; position ids 0..rows-1.
decoder (LLaMA): embed_tokens; per layer: RMSNorm (float32:
  x * rsqrt(mean(x^2) + eps), cast back to the input dtype, times weight),
  q/k/v (no bias), rotary embedding (inv_freq = 1 / theta^(arange(0, d, 2)
  / d) in float32, cos/sin of cat(freqs, freqs) cast to the dtype, HF's
  rotate_half: q*cos + cat(-q2, q1)*sin), GQA (kv head h // n_rep), causal
  softmax in float32 (scores / sqrt(head_dim), masked with dtype min),
  o_proj, residual; post_attention_layernorm -> down(silu(gate(x)) * up(x))
  -> residual.
hooks, per decoder layer L (each [n_layers, rows, d], in the compute dtype):
  resid_pre = the hidden state entering layer L (HF hidden_states[L]);
  resid_mid = after the attention residual, before post_attention_layernorm;
  mlp_in = post_attention_layernorm's output (what a forward hook on
  layer.mlp sees as input); mlp_out = the MLP's output before its residual.

Not emulated: batches and padding (one sample, no attention mask), several
images, rope_scaling, the final norm / lm_head (logits only on request:
forward(..., logits=True)), generation, flash/sdpa kernels.  In float32 the
result matches HF's eager path up to float rounding; in bfloat16 the order
of roundings follows HF's eager code, but HF versions and kernels differ
among themselves there, so bf16 agreement is approximate.

Self-test (--selftest, a few seconds): safetensors files parse with an
independent minimal parser (header, offsets contiguous and in bounds,
total_size) and round-trip bit for bit against the generator's weights in
F32/BF16/F16 and both namings; CLIP attention == torch.nn.MultiheadAttention;
LLaMA decoder layers (MHA and GQA) == a naive per-position loop in float64;
hook invariants (resid_pre[L+1] == resid_mid[L] + mlp_out[L], mlp_in ==
RMSNorm(resid_mid)); naming old == new; the generator is deterministic;
preprocess sizes; the ▁ pieces around <image>; fp32 vs bf16 per hook.
"""

import argparse
import json
import math
import os
import re
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_TEMPLATE = "USER: <image>\n{query} ASSISTANT:"
HOOKS = ("mlp_in", "resid_pre", "resid_mid", "mlp_out")

# transformers' defaults for the fields a config.json may leave out
LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=None, hidden_act="silu",
                      max_position_embeddings=2048, rms_norm_eps=1e-6,
                      rope_theta=10000.0, rope_scaling=None, attention_bias=False,
                      mlp_bias=False, pretraining_tp=1, head_dim=None,
                      bos_token_id=1, eos_token_id=2)
CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, num_channels=3, image_size=224,
                            patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
LLAVA_DEFAULTS = dict(image_token_index=32000, projector_hidden_act="gelu",
                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                      multimodal_projector_bias=True)

# ----------------------------------------------------------- safetensors ---

_ST_NP = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}


def read_safetensors(path):
    """{name: CPU tensor} of one safetensors file (F32, F16, BF16)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} past end of file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_NP:
            raise ValueError(f"{path}: {name}: unsupported dtype {dt}")
        npdt, size = _ST_NP[dt]
        b, e = info["data_offsets"]
        shape = list(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if not (0 <= b <= e <= len(data)) or e - b != count * size:
            raise ValueError(f"{path}: {name}: bad data_offsets {b}..{e}")
        arr = np.frombuffer(data[b:e], dtype=npdt).copy().reshape(shape)
        if dt == "BF16":
            t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")))
        out[name] = t
    return out


def read_checkpoint(model_dir):
    """All tensors of a model folder (sharded with an index, or single)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            wmap = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(wmap.values())):
            for k, v in read_safetensors(os.path.join(model_dir, shard)).items():
                if wmap.get(k) != shard:
                    raise ValueError(f"{shard}: {k} is not mapped to this shard in the index")
                tensors[k] = v
        missing = set(wmap) - set(tensors)
        if missing:
            raise ValueError(f"tensors in the index but in no shard: {sorted(missing)[:5]}")
        return tensors
    return read_safetensors(os.path.join(model_dir, "model.safetensors"))


_PREFIXES = [  # (checkpoint prefix, canonical prefix); first match wins
    ("language_model.model.", "text."), ("model.language_model.", "text."),
    ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."),
    ("vision_tower.vision_model.", "vision."), ("model.vision_tower.vision_model.", "vision."),
    ("multi_modal_projector.", "proj."), ("model.multi_modal_projector.", "proj."),
]


def canonical_name(name):
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(f"unexpected tensor name {name!r}")

# ---------------------------------------------------------------- model ---


class LlavaRef:
    """What load() returns: configs, canonical weights, tokenizer, preprocessor."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        t, v = self.text, self.vision
        return (f"LlavaRef({self.model_dir}, {self.dtype}, text {t['num_hidden_layers']}x"
                f"{t['hidden_size']} heads {t['num_attention_heads']}/{t['num_key_value_heads']}, "
                f"vision {v['num_hidden_layers']}x{v['hidden_size']}, patches {self.num_patches})")


def _with_defaults(cfg, defaults):
    out = dict(defaults)
    out.update({k: v for k, v in (cfg or {}).items()})
    return out


def load(model_dir, dtype=torch.float32, device=None):
    """Load config, weights (cast to dtype, then moved to device if given),
    tokenizer and preprocessor."""
    import sentencepiece as spm
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    top = _with_defaults({k: v for k, v in cfg.items() if k in LLAVA_DEFAULTS}, LLAVA_DEFAULTS)
    text = _with_defaults(cfg.get("text_config"), LLAMA_DEFAULTS)
    if text["num_key_value_heads"] is None:
        text["num_key_value_heads"] = text["num_attention_heads"]
    if text["head_dim"] is None:
        text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    if text["hidden_act"] != "silu" or text["rope_scaling"] is not None:
        raise ValueError("only hidden_act silu and no rope_scaling are emulated")
    vision = _with_defaults(cfg.get("vision_config"), CLIP_VISION_DEFAULTS)
    if vision["hidden_act"] != "quick_gelu" or top["projector_hidden_act"] != "gelu":
        raise ValueError("only quick_gelu (vision) and gelu (projector) are emulated")
    if not isinstance(top["vision_feature_layer"], int):
        raise ValueError("only an int vision_feature_layer is emulated")

    weights = {}
    for name, t in read_checkpoint(model_dir).items():
        if name.endswith("embeddings.position_ids"):   # an old buffer, not a weight
            continue
        t = t.to(dtype)
        if device is not None:
            t = t.to(device)
        weights[canonical_name(name)] = t

    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    added = {}
    tc_path = os.path.join(model_dir, "tokenizer_config.json")
    tc = {}
    if os.path.exists(tc_path):
        with open(tc_path) as f:
            tc = json.load(f)
        for i, tok in tc.get("added_tokens_decoder", {}).items():
            added[tok["content"]] = int(i)
    at_path = os.path.join(model_dir, "added_tokens.json")
    if os.path.exists(at_path):
        with open(at_path) as f:
            added.update({k: int(v) for k, v in json.load(f).items()})
    bos = sp.bos_id() if sp.bos_id() >= 0 else 1
    add_bos = tc.get("add_bos_token", True)

    with open(os.path.join(model_dir, "preprocessor_config.json")) as f:
        pre = json.load(f)
    num_patches = (vision["image_size"] // vision["patch_size"]) ** 2
    return LlavaRef(model_dir=model_dir, dtype=dtype, device=torch.device(device or "cpu"),
                    config=cfg, top=top, text=text,
                    vision=vision, W=weights, sp=sp, added=added, bos_id=bos,
                    add_bos=add_bos, pre=pre, num_patches=num_patches,
                    image_token_index=int(top["image_token_index"]))

# ------------------------------------------------------------ tokenizer ---


def prompt(query, template=DEFAULT_TEMPLATE):
    """The model card's prompt with the query in place of {query}."""
    return template.replace("{query}", query)


def split_added(model, text):
    """[(segment, id or None)]: added tokens with their ids, text between."""
    if not model.added:
        return [(text, None)]
    alts = sorted(model.added, key=len, reverse=True)
    pat = re.compile("|".join(re.escape(a) for a in alts))
    out, pos = [], 0
    for m in pat.finditer(text):
        if m.start() > pos:
            out.append((text[pos:m.start()], None))
        out.append((m.group(0), model.added[m.group(0)]))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], None))
    return out


def tokenize(model, text):
    """ids as HF's fast tokenizer gives them (see the module docstring)."""
    ids = [model.bos_id] if model.add_bos else []
    for seg, tid in split_added(model, text):
        if tid is not None:
            ids.append(tid)
        elif seg:
            ids.extend(model.sp.encode(seg))
    return ids


def pieces(model, ids):
    """Readable pieces for ids (added tokens by their content)."""
    inv = {v: k for k, v in model.added.items()}
    n = model.sp.get_piece_size()
    return [inv[i] if i in inv else (model.sp.id_to_piece(i) if i < n else f"<{i}?>") for i in ids]

# --------------------------------------------------------------- images ---


def resize_output_size(height, width, shortest):
    """(h, w) as get_resize_output_image_size(default_to_square=False)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def preprocess(model, image_path):
    """float32 [3, crop_h, crop_w] as CLIPImageProcessor (slow) makes it."""
    from PIL import Image
    pre = model.pre
    img = Image.open(image_path)
    if pre.get("do_convert_rgb", True) and img.mode != "RGB":
        img = img.convert("RGB")
    img.load()
    if pre.get("do_resize", True):
        size = pre["size"]
        if "shortest_edge" in size:
            h, w = resize_output_size(img.height, img.width, int(size["shortest_edge"]))
        else:
            h, w = int(size["height"]), int(size["width"])
        img = img.resize((w, h), resample=int(pre.get("resample", 3)))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if pre.get("do_center_crop", True):
        ch, cw = int(pre["crop_size"]["height"]), int(pre["crop_size"]["width"])
        h, w = arr.shape[:2]
        if ch > h or cw > w:
            raise ValueError("image smaller than the crop: HF pads, not emulated")
        top, left = (h - ch) // 2, (w - cw) // 2
        arr = arr[top:top + ch, left:left + cw]
    x = arr
    if pre.get("do_rescale", True):
        x = (x.astype(np.float64) * float(pre.get("rescale_factor", 1 / 255))).astype(np.float32)
    if pre.get("do_normalize", True):
        mean = np.array(pre["image_mean"], dtype=x.dtype)
        std = np.array(pre["image_std"], dtype=x.dtype)
        x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32))

# --------------------------------------------------------------- vision ---


def linear(x, W, name, bias=True):
    return F.linear(x, W[name + ".weight"], W.get(name + ".bias") if bias else None)


def clip_attention(x, W, p, heads):
    """CLIP self-attention, x [B, T, D] -> [B, T, D]; p = '...self_attn'."""
    B, T, D = x.shape
    hd = D // heads
    q = linear(x, W, p + ".q_proj").view(B, T, heads, hd).transpose(1, 2)
    k = linear(x, W, p + ".k_proj").view(B, T, heads, hd).transpose(1, 2)
    v = linear(x, W, p + ".v_proj").view(B, T, heads, hd).transpose(1, 2)
    s = torch.matmul(q, k.transpose(-1, -2)) * (hd ** -0.5)
    a = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    o = torch.matmul(a, v).transpose(1, 2).reshape(B, T, D)
    return linear(o, W, p + ".out_proj")


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def clip_layer(x, W, p, vcfg):
    D, eps = vcfg["hidden_size"], vcfg["layer_norm_eps"]
    h = F.layer_norm(x, (D,), W[p + ".layer_norm1.weight"], W[p + ".layer_norm1.bias"], eps)
    x = x + clip_attention(h, W, p + ".self_attn", vcfg["num_attention_heads"])
    h = F.layer_norm(x, (D,), W[p + ".layer_norm2.weight"], W[p + ".layer_norm2.bias"], eps)
    h = linear(quick_gelu(linear(h, W, p + ".mlp.fc1")), W, p + ".mlp.fc2")
    return x + h


def image_features(model, pixel_values):
    """Projected image rows [num_patches (or +1 for "full"), d_text]."""
    W, v, dt = model.W, model.vision, model.dtype
    px = pixel_values.to(device=W["vision.pre_layrnorm.weight"].device, dtype=dt)
    if px.dim() == 3:
        px = px[None]
    D, ps = v["hidden_size"], v["patch_size"]
    if px.shape[-1] != v["image_size"] or px.shape[-2] != v["image_size"]:
        raise ValueError(f"pixel_values {tuple(px.shape)} != image_size {v['image_size']}")
    x = F.conv2d(px, W["vision.embeddings.patch_embedding.weight"], stride=ps)
    x = x.flatten(2).transpose(1, 2)                                   # [1, P, D]
    cls = W["vision.embeddings.class_embedding"].view(1, 1, D)
    x = torch.cat([cls, x], dim=1)
    x = x + W["vision.embeddings.position_embedding.weight"][: x.shape[1]][None]
    x = F.layer_norm(x, (D,), W["vision.pre_layrnorm.weight"], W["vision.pre_layrnorm.bias"],
                     v["layer_norm_eps"])
    n = v["num_hidden_layers"]
    want = model.top["vision_feature_layer"]
    want = want if want >= 0 else n + 1 + want          # index into hidden_states
    if not 0 <= want <= n:
        raise ValueError(f"vision_feature_layer {model.top['vision_feature_layer']} out of range")
    for i in range(want):                               # hidden_states[want]
        x = clip_layer(x, W, f"vision.encoder.layers.{i}", v)
    if model.top["vision_feature_select_strategy"] == "default":
        x = x[:, 1:]
    h = F.gelu(linear(x, W, "proj.linear_1", bias="proj.linear_1.bias" in W))
    return linear(h, W, "proj.linear_2", bias="proj.linear_2.bias" in W)[0]

# -------------------------------------------------------------- decoder ---


def rms_norm(x, w, eps):
    dt = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dt)


def rotary(T, head_dim, theta, dtype, device=None):
    """cos, sin [T, head_dim] as LlamaRotaryEmbedding (float32, then dtype),
    made on device (as HF makes them on the model's device)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float()
                                / head_dim))
    pos = torch.arange(T, dtype=torch.int64, device=device).float()
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def llama_attention(x, W, p, tcfg, cos, sin):
    """LLaMA self-attention, x [1, T, d] -> [1, T, d]; p = '...self_attn'."""
    B, T, _ = x.shape
    H, KV, hd = tcfg["num_attention_heads"], tcfg["num_key_value_heads"], tcfg["head_dim"]
    q = F.linear(x, W[p + ".q_proj.weight"]).view(B, T, H, hd).transpose(1, 2)
    k = F.linear(x, W[p + ".k_proj.weight"]).view(B, T, KV, hd).transpose(1, 2)
    v = F.linear(x, W[p + ".v_proj.weight"]).view(B, T, KV, hd).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    if KV != H:      # repeat_kv: head h reads kv head h // (H // KV)
        k = k[:, :, None].expand(B, KV, H // KV, T, hd).reshape(B, H, T, hd)
        v = v[:, :, None].expand(B, KV, H // KV, T, hd).reshape(B, H, T, hd)
    s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    s = s.masked_fill(future, torch.finfo(s.dtype).min)
    a = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    o = torch.matmul(a, v).transpose(1, 2).reshape(B, T, H * hd)
    return F.linear(o, W[p + ".o_proj.weight"])


def llama_layer(x, W, p, tcfg, cos, sin):
    """One decoder layer; returns (out, resid_mid, mlp_in, mlp_out)."""
    eps = tcfg["rms_norm_eps"]
    h = rms_norm(x, W[p + ".input_layernorm.weight"], eps)
    mid = x + llama_attention(h, W, p + ".self_attn", tcfg, cos, sin)
    mlp_in = rms_norm(mid, W[p + ".post_attention_layernorm.weight"], eps)
    g = F.silu(F.linear(mlp_in, W[p + ".mlp.gate_proj.weight"]))
    u = F.linear(mlp_in, W[p + ".mlp.up_proj.weight"])
    mlp_out = F.linear(g * u, W[p + ".mlp.down_proj.weight"])
    return mid + mlp_out, mid, mlp_in, mlp_out


@torch.no_grad()
def forward(model, input_ids, pixel_values, hooks=HOOKS, logits=False):
    """One sample (batch 1, no padding).  Returns a dict: {hook: tensor
    [n_layers, rows, d]} for each hook asked, plus "input_ids" (the ids
    after expansion, a list of length rows whose image rows hold
    image_token_index), "image_positions" ([start, stop) of the image rows),
    "rows", "text_ids" (the ids given) and, if asked, "logits" [rows, vocab]."""
    W, t, dt = model.W, model.text, model.dtype
    dev = W["text.embed_tokens.weight"].device     # everything made here goes there
    ids = [int(i) for i in (input_ids.tolist() if torch.is_tensor(input_ids) else input_ids)]
    img = model.image_token_index
    where = [i for i, x in enumerate(ids) if x == img]
    emb = W["text.embed_tokens.weight"][torch.tensor(ids, dtype=torch.long, device=dev)]
    if where:
        if len(where) != 1 or pixel_values is None:
            raise ValueError(f"need exactly one {img} id and an image, got {len(where)}")
        feats = image_features(model, pixel_values).to(dt)
        p = where[0]
        emb = torch.cat([emb[:p], feats, emb[p + 1:]], dim=0)
        expanded = ids[:p] + [img] * feats.shape[0] + ids[p + 1:]
        span = [p, p + feats.shape[0]]
    else:
        expanded, span = list(ids), [0, 0]
    T = emb.shape[0]
    cos, sin = rotary(T, t["head_dim"], float(t["rope_theta"]), dt, device=dev)
    x = emb[None]
    acts = {h: [] for h in hooks}
    for L in range(t["num_hidden_layers"]):
        pre = x
        x, mid, mlp_in, mlp_out = llama_layer(x, W, f"text.layers.{L}", t, cos, sin)
        got = {"resid_pre": pre, "resid_mid": mid, "mlp_in": mlp_in, "mlp_out": mlp_out}
        for h in hooks:
            acts[h].append(got[h][0])
    out = {h: torch.stack(v) for h, v in acts.items()}
    out.update(input_ids=expanded, image_positions=span, rows=T, text_ids=ids)
    if logits:
        xf = rms_norm(x, W["text.norm.weight"], t["rms_norm_eps"])
        out["logits"] = F.linear(xf, W["lm_head.weight"])[0]
    return out


def run_sample(model, entry, image_dir, template=DEFAULT_TEMPLATE, hooks=HOOKS):
    ids = tokenize(model, prompt(entry["query"], template))
    px = preprocess(model, os.path.join(image_dir, entry["image"]))
    r = forward(model, ids, px, hooks=hooks)
    return {"id": entry["id"], "input_ids": r["input_ids"], "text_ids": r["text_ids"],
            "image_positions": r["image_positions"], "rows": r["rows"],
            "acts": {h: r[h] for h in hooks}}

# ------------------------------------------------------------ self-test ---


def _check_safetensors_independently(path):
    """A second, minimal reading of the format: returns (names, data bytes)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = f.read(n)
    assert n % 8 == 0, f"{path}: header length {n} not a multiple of 8"
    assert hdr[:1] == b"{", f"{path}: header does not start with '{{'"
    h = json.loads(hdr)
    assert h.pop("__metadata__") == {"format": "pt"}
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k, v) for k, v in h.items())
    pos = 0
    for b, e, k, v in spans:
        assert b == pos, f"{path}: {k} starts at {b}, expected {pos}"
        itemsize = {"F32": 4, "F16": 2, "BF16": 2}[v["dtype"]]
        assert e - b == itemsize * math.prod(v["shape"]), f"{path}: {k} size"
        pos = e
    assert 8 + n + pos == size, f"{path}: data ends at {8 + n + pos}, file is {size}"
    return set(h), pos


def _naive_llama_layer(x, W, p, tcfg):
    """Float64 per-position loop; x [T, d] -> (out, mid, mlp_in, mlp_out)."""
    T, d = x.shape
    H, KV, hd = tcfg["num_attention_heads"], tcfg["num_key_value_heads"], tcfg["head_dim"]
    eps, theta = tcfg["rms_norm_eps"], float(tcfg["rope_theta"])
    w = {k: v.double() for k, v in W.items() if k.startswith(p)}
    x = x.double()

    def rms(v, g):
        return g * v / math.sqrt(float((v * v).mean()) + eps)

    def rope(vec, t):
        out = vec.clone()
        for i in range(hd // 2):
            ang = t * theta ** (-(2 * i) / hd)
            a, b = vec[i], vec[i + hd // 2]
            out[i] = a * math.cos(ang) - b * math.sin(ang)
            out[i + hd // 2] = b * math.cos(ang) + a * math.sin(ang)
        return out

    hn = torch.stack([rms(x[t], w[p + ".input_layernorm.weight"]) for t in range(T)])
    q = hn @ w[p + ".self_attn.q_proj.weight"].T
    k = hn @ w[p + ".self_attn.k_proj.weight"].T
    v = hn @ w[p + ".self_attn.v_proj.weight"].T
    attn = torch.zeros(T, H * hd, dtype=torch.float64)
    for h in range(H):
        g = h // (H // KV)
        for t in range(T):
            qt = rope(q[t, h * hd:(h + 1) * hd], t)
            scores = [float(qt @ rope(k[s, g * hd:(g + 1) * hd], s)) / math.sqrt(hd)
                      for s in range(t + 1)]
            m = max(scores)
            e = [math.exp(sc - m) for sc in scores]
            z = sum(e)
            for s in range(t + 1):
                attn[t, h * hd:(h + 1) * hd] += (e[s] / z) * v[s, g * hd:(g + 1) * hd]
    mid = x + attn @ w[p + ".self_attn.o_proj.weight"].T
    mlp_in = torch.stack([rms(mid[t], w[p + ".post_attention_layernorm.weight"]) for t in range(T)])
    gate = mlp_in @ w[p + ".mlp.gate_proj.weight"].T
    up = mlp_in @ w[p + ".mlp.up_proj.weight"].T
    mlp_out = (gate * torch.sigmoid(gate) * up) @ w[p + ".mlp.down_proj.weight"].T
    return mid + mlp_out, mid, mlp_in, mlp_out


def selftest(verbose=True):
    import tempfile
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_llava as G

    def say(*a):
        if verbose:
            print(*a, flush=True)

    tmp = tempfile.mkdtemp(prefix="llava_ref_selftest_")
    mdir, ddir = os.path.join(tmp, "m"), os.path.join(tmp, "d")
    facts = G.make_llava(mdir, seed=0)
    ds = G.make_dataset(ddir, n=6, seed=0)

    # 1. safetensors: independent parse, round trip, all dtypes and namings
    for dtype, naming in (("float32", "old"), ("bfloat16", "old"), ("float16", "new")):
        d = os.path.join(tmp, f"st_{dtype}_{naming}")
        f = G.make_llava(d, seed=3, dtype=dtype, naming=naming, kv_heads=2)
        with open(os.path.join(d, "model.safetensors.index.json")) as fh:
            index = json.load(fh)
        names, total = set(), 0
        for shard in f["shards"]:
            nm, nbytes = _check_safetensors_independently(os.path.join(d, shard))
            assert all(index["weight_map"][k] == shard for k in nm)
            names |= nm
            total += nbytes
        assert names == set(index["weight_map"]) and total == index["metadata"]["total_size"]
        got = read_checkpoint(d)
        g = torch.Generator().manual_seed(3)
        text = dict(f["text"])
        for old, shape, kind in G.canonical_shapes(text, f["vision"], text["num_key_value_heads"]):
            want = G.random_tensor(shape, kind, g).to(G.TORCH_DTYPE[dtype])
            have = got[G.rename(old, naming)]
            assert have.dtype == want.dtype and have.shape == want.shape
            assert torch.equal(have.view(-1).view(torch.int16 if have.element_size() == 2
                                                    else torch.int32),
                               want.view(-1).view(torch.int16 if want.element_size() == 2
                                                  else torch.int32)), old
        say(f"ok safetensors {dtype}/{naming}: {len(names)} tensors, {total} bytes, "
            f"independent parse + bit-exact round trip")

    # 2. CLIP attention == nn.MultiheadAttention
    torch.manual_seed(0)
    D, heads, T = 48, 4, 17
    Wt = {f"a.{m}_proj.{s}": (torch.randn(D, D) / math.sqrt(D) if s == "weight" else 0.1 * torch.randn(D))
          for m in ("q", "k", "v", "out") for s in ("weight", "bias")}
    mha = torch.nn.MultiheadAttention(D, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([Wt[f"a.{m}_proj.weight"] for m in "qkv"]))
        mha.in_proj_bias.copy_(torch.cat([Wt[f"a.{m}_proj.bias"] for m in "qkv"]))
        mha.out_proj.weight.copy_(Wt["a.out_proj.weight"])
        mha.out_proj.bias.copy_(Wt["a.out_proj.bias"])
        xin = torch.randn(1, T, D)
        ref, _ = mha(xin, xin, xin, need_weights=False)
        mine = clip_attention(xin, Wt, "a", heads)
    err = (ref - mine).abs().max().item()
    assert err < 1e-5, err
    say(f"ok CLIP attention vs nn.MultiheadAttention: max err {err:.2e}")

    # 3. LLaMA layers (MHA and GQA) == naive float64 loop
    for kv in (None, 2):
        d = mdir if kv is None else os.path.join(tmp, "st_float32_old")
        m = load(d)
        t = m.text
        x = torch.randn(9, t["hidden_size"])
        cos, sin = rotary(9, t["head_dim"], float(t["rope_theta"]), torch.float32)
        with torch.no_grad():
            fast = llama_layer(x[None], m.W, "text.layers.1", t, cos, sin)
        slow = _naive_llama_layer(x, m.W, "text.layers.1", t)
        errs = [(a[0].double() - b).abs().max().item() for a, b in zip(fast, slow)]
        assert max(errs) < 1e-4, errs
        say(f"ok LLaMA layer (heads {t['num_attention_heads']}, kv {t['num_key_value_heads']}) "
            f"vs naive loop: max err {max(errs):.2e}")

    # 4. tokens of the default prompt; the ▁ around <image>
    m32 = load(mdir, torch.float32)
    assert m32.num_patches == facts["num_patches"] and m32.text["num_key_value_heads"] == 4
    assert m32.text["rope_theta"] == 10000.0 and m32.vision["layer_norm_eps"] == 1e-5
    ids = tokenize(m32, prompt("Describe this image."))
    pcs = pieces(m32, ids)
    p = ids.index(m32.image_token_index)
    assert ids[0] == 1 and pcs[p - 1] == "▁" and pcs[p + 1] == "▁" and pcs[p + 2] == "<0x0A>", pcs
    say("ok tokens", ids)
    say("   pieces", pcs)

    # 5. preprocess sizes, forward on the dataset, hook invariants, fp32 vs bf16
    with open(os.path.join(ddir, "queries.json")) as fh:
        entries = json.load(fh)
    from PIL import Image
    for e, s in zip(entries, ds["samples"]):
        with Image.open(os.path.join(ddir, "images", e["image"])) as im:
            assert (im.width, im.height, im.mode) == (s["width"], s["height"], s["mode"])
        h, w = resize_output_size(s["height"], s["width"], 56)
        assert min(h, w) == 56 and max(h, w) == int(56 * max(s["height"], s["width"])
                                                     / min(s["height"], s["width"]))
        px = preprocess(m32, os.path.join(ddir, "images", e["image"]))
        assert px.shape == (3, 56, 56) and px.dtype == torch.float32
    mbf = load(mdir, torch.bfloat16)
    worst = {h: 0.0 for h in HOOKS}
    rows = []
    for e in entries:
        a = run_sample(m32, e, os.path.join(ddir, "images"))
        b = run_sample(mbf, e, os.path.join(ddir, "images"))
        assert a["rows"] == len(a["text_ids"]) - 1 + m32.num_patches == len(a["input_ids"])
        A = a["acts"]
        assert torch.allclose(A["resid_pre"][1:], A["resid_mid"][:-1] + A["mlp_out"][:-1], atol=1e-5)
        L = m32.text["num_hidden_layers"]
        for i in range(L):
            w = m32.W[f"text.layers.{i}.post_attention_layernorm.weight"]
            assert torch.allclose(A["mlp_in"][i], rms_norm(A["resid_mid"][i], w, 1e-5), atol=1e-6)
        for h in HOOKS:
            assert b["acts"][h].dtype == torch.bfloat16
            worst[h] = max(worst[h], (A[h] - b["acts"][h].float()).abs().max().item())
        rows.append((e["id"], len(a["text_ids"]), a["rows"],
                     round(A["resid_pre"].abs().max().item(), 2)))
    say("ok rows (id, text ids, rows, max|resid_pre|):", rows)
    say("   max |fp32 - bf16| per hook:", {h: round(v, 4) for h, v in worst.items()})

    # 6. naming new and a bf16 checkpoint give the same activations
    dnew = os.path.join(tmp, "m_new")
    G.make_llava(dnew, seed=0, naming="new")
    e = entries[2]
    a = run_sample(m32, e, os.path.join(ddir, "images"))
    n = run_sample(load(dnew), e, os.path.join(ddir, "images"))
    assert all(torch.equal(a["acts"][h], n["acts"][h]) for h in HOOKS)
    dbf = os.path.join(tmp, "m_bf16")
    G.make_llava(dbf, seed=0, dtype="bfloat16")
    b1 = run_sample(mbf, e, os.path.join(ddir, "images"))
    b2 = run_sample(load(dbf, torch.bfloat16), e, os.path.join(ddir, "images"))
    assert all(torch.equal(b1["acts"][h], b2["acts"][h]) for h in HOOKS)
    say("ok naming old == new; bf16 file == fp32 file cast to bf16")

    # 7. determinism of the generator
    d2, d3 = os.path.join(tmp, "m_again"), os.path.join(tmp, "m_seed1")
    G.make_llava(d2, seed=0)
    G.make_llava(d3, seed=1)
    G.make_dataset(os.path.join(tmp, "d_again"), n=6, seed=0)
    assert G.tree_digest(mdir) == G.tree_digest(d2)
    assert G.tree_digest(ddir) == G.tree_digest(os.path.join(tmp, "d_again"))
    same_tok = open(os.path.join(mdir, "tokenizer.model"), "rb").read() == \
        open(os.path.join(d3, "tokenizer.model"), "rb").read()
    assert same_tok and G.tree_digest(mdir) != G.tree_digest(d3)
    say("ok deterministic: same seed -> identical files; seed 1 -> other weights, same tokenizer")

    import shutil
    shutil.rmtree(tmp)
    say("selftest passed")
    return {"rows": rows, "fp32_vs_bf16": worst, "tokens": ids, "pieces": pcs}

# ------------------------------------------------------------------ CLI ---


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", help="MODEL_DIR QUERIES_JSON IMAGE_DIR OUT.pt")
    ap.add_argument("--template", default=DEFAULT_TEMPLATE)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--hooks", default=",".join(HOOKS))
    ap.add_argument("--show-tokens", nargs="?", const="", metavar="TEXT",
                    help="print ids and pieces of TEXT (default: the default prompt)")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args(argv)
    if a.selftest:
        selftest()
        return 0
    template = a.template.replace("\\n", "\n")
    if a.show_tokens is not None:
        if len(a.paths) != 1:
            ap.error("--show-tokens takes MODEL_DIR")
        m = load(a.paths[0])
        text = a.show_tokens.replace("\\n", "\n") or prompt("Describe this image.", template)
        ids = tokenize(m, text)
        print(json.dumps(text))
        print(ids)
        print(pieces(m, ids))
        return 0
    if len(a.paths) != 4:
        ap.error("give MODEL_DIR QUERIES_JSON IMAGE_DIR OUT.pt")
    model_dir, queries, image_dir, out = a.paths
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    hooks = tuple(h for h in a.hooks.split(",") if h)
    bad = set(hooks) - set(HOOKS)
    if bad:
        ap.error(f"unknown hooks {sorted(bad)}")
    m = load(model_dir, dtype)
    with open(queries) as f:
        entries = json.load(f)
    samples = [run_sample(m, e, image_dir, template, hooks) for e in entries]
    torch.save({"samples": samples, "template": template, "dtype": a.dtype,
                "hooks": list(hooks), "model_dir": os.path.abspath(model_dir)}, out)
    print(f"{out}: {len(samples)} samples, rows {[s['rows'] for s in samples]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
