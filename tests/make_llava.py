#!/usr/bin/python3
"""Write a tiny random LLaVA-1.5-shaped checkpoint, and an AMBER-style dataset.

The model folder has the layout that
`huggingface_hub.snapshot_download("llava-hf/llava-1.5-7b-hf")` leaves, so
that cltfs's capture tier can load it with the code it uses for the real
model; only the sizes are small and the weights random.

Needs: /usr/bin/python3 with torch, numpy and PIL (python3-pil), and
SentencePiece from Debian: `apt-get install -y sentencepiece` (the
`spm_train` binary, used here) and `python3-sentencepiece` (the Python module
that tests/llava_ref.py uses).  Nothing from transformers, huggingface_hub or
safetensors: the safetensors format is written by hand below.

Usage:

    make_llava.py OUT_DIR [--seed N] [--dtype float32|bfloat16|float16]
                  [--naming old|new] [--kv-heads K] [--layers N] [--width tiny|7b]
                  [--dataset DIR [--n N] [--dataset-seed N]]
    make_llava.py --dataset DIR [--n N] [--dataset-seed N]

    >>> from make_llava import make_llava, make_dataset
    >>> facts = make_llava(out_dir, seed=0, dtype="float32", naming="old")
    >>> ds = make_dataset(ds_dir, n=6, seed=0)

Both return a dict of facts (file names, ids, sizes, the tensor -> shard
map, ...).  The same arguments give byte-identical files.

What is written to OUT_DIR
--------------------------
config.json
    A LlavaConfig as the real checkpoint has it (architectures, model_type
    "llava", image_token_index, pad_token_id, projector_hidden_act "gelu",
    vision_feature_layer -2, vision_feature_select_strategy "default",
    torch_dtype, text_config, vision_config, plus the real file's
    ignore_index / tie_word_embeddings / vocab_size / transformers_version).
    Like the real file it LEAVES FIELDS OUT, and a reader must apply
    transformers' defaults:

      text_config (LlamaConfig):
        num_key_value_heads   = num_attention_heads  (written only with --kv-heads)
        hidden_act            = "silu"
        rope_theta            = 10000.0
        rope_scaling          = None
        attention_bias        = False   (no q/k/v/o biases)
        mlp_bias              = False
        pretraining_tp        = 1
        head_dim              = hidden_size // num_attention_heads
        bos_token_id = 1, eos_token_id = 2, tie_word_embeddings = False
        (the real llava-1.5-7b-hf text_config even leaves out hidden_size
        4096, intermediate_size 11008, num_hidden_layers 32 and
        num_attention_heads 32, which are LlamaConfig's defaults; this tiny
        config has to write them because they are not the defaults)
      vision_config (CLIPVisionConfig):
        hidden_act            = "quick_gelu"   (x * sigmoid(1.702 x))
        layer_norm_eps        = 1e-5
        num_channels          = 3
      top level (LlavaConfig): multimodal_projector_bias = True.

    vision_config also carries the real file's meaningless "vocab_size":
    32000, which a reader must ignore.

model-00001-of-00002.safetensors, model-00002-of-00002.safetensors,
model.safetensors.index.json
    Random weights (seeded; linear weights ~ N(0, 1/fan_in) so activations
    stay O(1), norm weights 1 + small noise, biases small), stored in
    --dtype.  Shard 1 holds the vision tower, the projector, embed_tokens and
    the first half of the decoder layers; shard 2 the rest, the final norm and
    lm_head.  index: {"metadata": {"total_size": bytes of tensor data},
    "weight_map": {name: file}}.  Tensor names as llava-hf/llava-1.5-7b-hf
    has them (--naming old):
        language_model.model.embed_tokens.weight
        language_model.model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
        language_model.model.layers.{i}.mlp.{gate,up,down}_proj.weight
        language_model.model.layers.{i}.{input,post_attention}_layernorm.weight
        language_model.model.norm.weight
        language_model.lm_head.weight
        vision_tower.vision_model.embeddings.{class_embedding,
            patch_embedding.weight, position_embedding.weight}
        vision_tower.vision_model.pre_layrnorm.{weight,bias}
        vision_tower.vision_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
        vision_tower.vision_model.encoder.layers.{i}.layer_norm{1,2}.{weight,bias}
        vision_tower.vision_model.encoder.layers.{i}.mlp.fc{1,2}.{weight,bias}
        vision_tower.vision_model.post_layernorm.{weight,bias}
        multi_modal_projector.linear_{1,2}.{weight,bias}
    --naming new (what transformers >= 4.52 saves): model.language_model.X
    for language_model.model.X, lm_head.weight, model.vision_tower.X,
    model.multi_modal_projector.X.

safetensors format, as written here: 8-byte little-endian header length N,
then N bytes of JSON {name: {"dtype": "F32"|"BF16"|"F16", "shape": [...],
"data_offsets": [begin, end]}, "__metadata__": {"format": "pt"}} padded with
spaces to a multiple of 8, then the raw little-endian tensor data; offsets
are relative to the start of the data, contiguous, in name order.

tokenizer.model, tokenizer_config.json, special_tokens_map.json, added_tokens.json
    A SentencePiece BPE model trained by `spm_train` on a small generated
    corpus with the real LLaMA tokenizer's encoding-relevant options
    (model_type bpe, character_coverage 1.0 here where LLaMA used 0.99995,
    byte_fallback, split_digits, add_dummy_prefix,
    remove_extra_whitespaces false, identity normalization,
    allow_whitespace_only_pieces, unk 0 / bos 1 / eos 2 / no pad), vocab 300:
    ids 0-2 are <unk> <s> </s>, 3-258 the byte pieces <0x00>..<0xFF>
    (so "\\n" is <0x0A> = 13, as in LLaMA), then merged pieces, then single
    characters.  With 256 byte pieces only 41 ids are left for characters and
    merges, so the corpus is built from a small alphabet (lowercase words of
    the prompts and queries, the template's USER/ASSISTANT, ". ? :"); every
    other character (most capitals, digits, ",") is encoded as UTF-8 bytes.
    Added tokens: <image> = 300 (the SentencePiece vocab size, like 32000)
    and <pad> = 301; text vocab_size = 320 (padded, like 32064).
    No tokenizer.json (see tests/llava_ref.py for the encoding rule that the
    fast tokenizer applies around <image>).

generation_config.json
    bos/eos/pad ids, as the real repo has it.

preprocessor_config.json
    llava-1.5's CLIPImageProcessor at 56 px: size {"shortest_edge": 56},
    crop_size 56x56, bicubic (resample 3), rescale 1/255, OpenAI CLIP
    mean/std, do_convert_rgb.

make_dataset(DIR)
-----------------
DIR/queries.json in AMBER's format ([{"id": 1, "image": "AMBER_1.jpg",
"query": "Describe this image."}, ...], ids from 1) and DIR/images/: gradients
with shapes, of different sizes and aspect ratios (80x60, 56x56, 100x140,
33x70, 200x90, 61x45), JPEG (quality 95) and PNG, one RGBA PNG and one
grayscale ("L") PNG; queries of different lengths, one with a digit.

--width 7b (make_llava(..., text=TEXT_7B, vision=VISION_7B)): the same
folder with LLaVA-1.5-7B's widths (text 4096/11008, 32 heads, vocab 32064;
CLIP ViT-L/14 at 336 px, 24 layers) and --layers decoder layers, e.g. 2.8 GB
of bf16 for 4 layers, generated and written a block at a time (about 20 s
and 0.4 GB of memory); the tokenizer and added-token ids stay the tiny ones.

Not emulated: the real model's sizes and trained weights, tokenizer.json,
chat_template / processor_config.json, safetensors metadata beyond
{"format": "pt"}.
"""

import argparse
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

# ---------------------------------------------------------------- sizes ---

SP_VOCAB = 300                 # SentencePiece pieces; <image> gets this id
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
IMAGE_TOKEN_INDEX = SP_VOCAB   # 300, like 32000
PAD_TOKEN_ID = SP_VOCAB + 1    # 301, like 32001
TEXT_VOCAB = 320               # embedding rows, like 32064
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0

TEXT = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=4096,
            rms_norm_eps=1e-5)
VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, image_size=56, patch_size=14,
              projection_dim=32)

# LLaVA-1.5-7B's widths: vicuna-7b's decoder (llava-hf's config leaves these
# out: LlamaConfig's defaults, vocab padded to 32064) and CLIP ViT-L/14 at
# 336 px (576 image rows).  make_llava(..., text=TEXT_7B, vision=VISION_7B,
# layers=N) writes a checkpoint of the real shapes with N decoder layers
# (bench/gpu_bench.py times capture on it); the tokenizer stays the tiny one,
# so only ids below TEXT_VOCAB ever occur.
TEXT_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
               vocab_size=32064)
VISION_7B = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16, image_size=336, patch_size=14,
                 projection_dim=768)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

ST_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
TORCH_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16,
               "float16": torch.float16}

# The options of LLaMA's tokenizer.model that matter for encoding (its
# trainer_spec / normalizer_spec), plus what makes training reproducible.
SPM_OPTIONS = [
    "--model_type=bpe", f"--vocab_size={SP_VOCAB}", "--character_coverage=1.0",
    "--byte_fallback=true", "--split_digits=true", "--add_dummy_prefix=true",
    "--remove_extra_whitespaces=false", "--normalization_rule_name=identity",
    "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
    "--allow_whitespace_only_pieces=true", "--max_sentencepiece_length=16",
    "--split_by_unicode_script=true", "--split_by_number=true",
    "--split_by_whitespace=true", "--treat_whitespace_as_suffix=false",
    "--num_threads=1",
]

# ------------------------------------------------------------ the corpus ---

# Lowercase words of the template and the dataset's queries; the alphabet is
# kept small on purpose (see the module docstring).
CORPUS_WORDS = (
    "describe this image is there a dog cat in the picture direct contact "
    "and table please scene detail including its color position ball are "
    "birds man sitting standing on red green tree sun grass house road car "
    "the the the this this image image is is there there a a in in"
).split()


def corpus_lines(n_lines=4000, seed=1234):
    """The tokenizer's training text: fixed, whatever the model seed."""
    r = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [r.choice(CORPUS_WORDS) for _ in range(r.randint(3, 12))]
        line = " ".join(words) + r.choice([".", ".", "?"])
        if r.random() < 0.25:
            line = "USER: " + line + " ASSISTANT:"
        lines.append(line)
    return lines


def train_tokenizer(out_path):
    """Train tokenizer.model with spm_train, else with the sentencepiece
    Python module's trainer (a machine with pip's sentencepiece and no
    Debian package: the model may then differ in bytes, not in use);
    returns the options used."""
    spm = shutil.which("spm_train")
    if spm is None and importlib.util.find_spec("sentencepiece") is None:
        raise RuntimeError("spm_train not found: apt-get install -y sentencepiece")
    with tempfile.TemporaryDirectory(prefix="make_llava_spm_") as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(corpus_lines()) + "\n")
        # relative paths: the model records them in its trainer_spec, and a
        # temporary directory's name would make the file differ run to run
        if spm is not None:
            cmd = [spm]
        else:
            cmd = [sys.executable, "-c", "import sys, sentencepiece as s; "
                   "s.SentencePieceTrainer.train(' '.join(sys.argv[1:]))"]
        cmd += ["--input=corpus.txt", "--model_prefix=tokenizer"] + SPM_OPTIONS
        res = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        if res.returncode != 0:
            raise RuntimeError("spm_train failed:\n" + res.stderr[-3000:])
        shutil.copyfile(os.path.join(tmp, "tokenizer.model"), out_path)
    return SPM_OPTIONS

# ----------------------------------------------------------- safetensors ---


def tensor_bytes(t):
    """Raw little-endian bytes of a contiguous CPU tensor."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.float16:
        return t.numpy().astype("<f2").tobytes()
    if t.dtype == torch.float32:
        return t.numpy().astype("<f4").tobytes()
    raise ValueError(f"unsupported dtype {t.dtype}")


def safetensors_header(specs, metadata=None):
    """(header bytes with their 8-byte length, {name: data offset}, data
    bytes) for specs {name: (torch dtype, shape)}: names in sorted order."""
    header, offsets, off = {}, {}, 0
    for name in sorted(specs):
        dt, shape = specs[name]
        n = int(np.prod(shape, dtype=np.int64)) * torch.tensor([], dtype=dt).element_size()
        header[name] = {"dtype": ST_DTYPE[dt], "shape": list(shape),
                        "data_offsets": [off, off + n]}
        offsets[name] = off
        off += n
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    return struct.pack("<Q", len(hjson)) + hjson, offsets, off


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} as a safetensors file; returns bytes of data."""
    head, offsets, total = safetensors_header(
        {k: (t.dtype, list(t.shape)) for k, t in tensors.items()}, metadata)
    with open(path, "wb") as f:
        f.write(head)
        for name in sorted(tensors):
            f.write(tensor_bytes(tensors[name]))
    return total


class SafetensorsWriter:
    """A safetensors file written as its tensors come, in any order and in
    pieces: the header is fixed by the specs up front, and each piece goes
    to its offset (the same bytes as write_safetensors, without holding
    every tensor in memory at once)."""

    def __init__(self, path, specs, metadata=None):
        head, self.offsets, self.total = safetensors_header(specs, metadata)
        self.base = len(head)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, head)

    def write(self, name, t, byte_offset=0):
        """t's bytes at byte_offset into the tensor name's data."""
        b = tensor_bytes(t)
        pos, n = self.base + self.offsets[name] + byte_offset, 0
        while n < len(b):
            n += os.pwrite(self.fd, b[n:], pos + n)

    def close(self):
        os.close(self.fd)

# --------------------------------------------------------------- weights ---


def canonical_shapes(text, vision, kv_heads):
    """(name, shape, kind) in a fixed order; names in the "old" layout."""
    d, ff, L = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    hd = d // text["num_attention_heads"]
    dkv = kv_heads * hd
    vd, vff, VL = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    ps, n_pos = vision["patch_size"], (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    out = []
    v = "vision_tower.vision_model."
    out += [(v + "embeddings.class_embedding", [vd], "embed"),
            (v + "embeddings.patch_embedding.weight", [vd, 3, ps, ps], "linear"),
            (v + "embeddings.position_embedding.weight", [n_pos, vd], "pos"),
            (v + "pre_layrnorm.weight", [vd], "norm_w"),
            (v + "pre_layrnorm.bias", [vd], "bias")]
    for i in range(VL):
        p = f"{v}encoder.layers.{i}."
        for m in ("q", "k", "v", "out"):
            out += [(p + f"self_attn.{m}_proj.weight", [vd, vd], "linear"),
                    (p + f"self_attn.{m}_proj.bias", [vd], "bias")]
        out += [(p + "layer_norm1.weight", [vd], "norm_w"), (p + "layer_norm1.bias", [vd], "bias"),
                (p + "mlp.fc1.weight", [vff, vd], "linear"), (p + "mlp.fc1.bias", [vff], "bias"),
                (p + "mlp.fc2.weight", [vd, vff], "linear"), (p + "mlp.fc2.bias", [vd], "bias"),
                (p + "layer_norm2.weight", [vd], "norm_w"), (p + "layer_norm2.bias", [vd], "bias")]
    out += [(v + "post_layernorm.weight", [vd], "norm_w"), (v + "post_layernorm.bias", [vd], "bias")]
    out += [("multi_modal_projector.linear_1.weight", [d, vd], "linear"),
            ("multi_modal_projector.linear_1.bias", [d], "bias"),
            ("multi_modal_projector.linear_2.weight", [d, d], "linear"),
            ("multi_modal_projector.linear_2.bias", [d], "bias")]
    t = "language_model.model."
    out += [(t + "embed_tokens.weight", [text["vocab_size"], d], "embed")]
    for i in range(L):
        p = f"{t}layers.{i}."
        out += [(p + "self_attn.q_proj.weight", [d, d], "linear"),
                (p + "self_attn.k_proj.weight", [dkv, d], "linear"),
                (p + "self_attn.v_proj.weight", [dkv, d], "linear"),
                (p + "self_attn.o_proj.weight", [d, d], "linear"),
                (p + "mlp.gate_proj.weight", [ff, d], "linear"),
                (p + "mlp.up_proj.weight", [ff, d], "linear"),
                (p + "mlp.down_proj.weight", [d, ff], "linear"),
                (p + "input_layernorm.weight", [d], "norm_w"),
                (p + "post_attention_layernorm.weight", [d], "norm_w")]
    out += [(t + "norm.weight", [d], "norm_w"),
            ("language_model.lm_head.weight", [text["vocab_size"], d], "linear")]
    return out


def random_tensor(shape, kind, g):
    """One tensor, float32: its values come from g in order."""
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    if kind == "linear":     # N(0, 1/fan_in): keeps activations O(1)
        fan_in = int(np.prod(shape[1:]))
        return x / math.sqrt(fan_in)
    if kind == "norm_w":
        return 1.0 + 0.1 * x
    if kind == "bias":
        return 0.05 * x
    if kind == "pos":
        return 0.5 * x
    return x                 # embeddings: N(0, 1)


# Tensors of more elements than this are generated and written a block of
# rows at a time (an embedding of LLaVA-7B's width is 131M elements), so
# that memory stays small; every tensor of the tiny checkpoint is below it,
# so those draw from the generator exactly as one randn call.
CHUNK_ELEMS = 1 << 24


def write_random(w, name, shape, kind, g, dtype):
    """Generate the tensor name (random_tensor's distribution) into the
    SafetensorsWriter w, cast to dtype, in blocks of rows if it is large."""
    numel = int(np.prod(shape, dtype=np.int64))
    if numel <= CHUNK_ELEMS:
        w.write(name, random_tensor(shape, kind, g).to(dtype))
        return
    row = numel // shape[0]            # a row keeps fan_in: shape[1:] is whole
    step = max(1, CHUNK_ELEMS // row)
    size = torch.tensor([], dtype=dtype).element_size()
    for r0 in range(0, shape[0], step):
        rows = min(step, shape[0] - r0)
        w.write(name, random_tensor([rows] + list(shape[1:]), kind, g).to(dtype), r0 * row * size)


def rename(old, naming):
    """Map an old-layout name to the given layout."""
    if naming == "old":
        return old
    if old == "language_model.lm_head.weight":
        return "lm_head.weight"
    if old.startswith("language_model.model."):
        return "model.language_model." + old[len("language_model.model."):]
    return "model." + old


def shard_of(old_name, n_layers):
    """0 for vision, projector, embed_tokens, first half of layers; else 1."""
    if not old_name.startswith("language_model."):
        return 0
    if old_name.startswith("language_model.model.layers."):
        i = int(old_name.split(".")[3])
        return 0 if i < (n_layers + 1) // 2 else 1
    if old_name == "language_model.model.embed_tokens.weight":
        return 0
    return 1

# ------------------------------------------------------------ the folder ---


def _dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def tokenizer_files(out_dir):
    def tok(content):
        return {"content": content, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False, "special": True}
    decoder = {"0": tok("<unk>"), "1": tok("<s>"), "2": tok("</s>"),
               str(IMAGE_TOKEN_INDEX): tok(IMAGE_TOKEN), str(PAD_TOKEN_ID): tok(PAD_TOKEN)}
    _dump(os.path.join(out_dir, "tokenizer_config.json"), {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False,
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    })

    def st(content):
        return {"content": content, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False}
    _dump(os.path.join(out_dir, "special_tokens_map.json"), {
        "bos_token": st("<s>"), "eos_token": st("</s>"),
        "pad_token": st("<pad>"), "unk_token": st("<unk>")})
    _dump(os.path.join(out_dir, "added_tokens.json"),
          {IMAGE_TOKEN: IMAGE_TOKEN_INDEX, PAD_TOKEN: PAD_TOKEN_ID})


def make_llava(out_dir, seed=0, dtype="float32", naming="old", kv_heads=None,
               layers=None, text=None, vision=None):
    """Write the tiny checkpoint into out_dir (created); returns facts.

    text and vision: dicts merged over TEXT (plus vocab_size TEXT_VOCAB) and
    VISION, e.g. TEXT_7B and VISION_7B; layers then sets num_hidden_layers of
    the text model.  The weights are written as they are generated, so
    memory stays well below the checkpoint's size."""
    if dtype not in TORCH_DTYPE:
        raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPE)}")
    if naming not in ("old", "new"):
        raise ValueError("naming must be 'old' or 'new'")
    tdt = TORCH_DTYPE[dtype]
    os.makedirs(out_dir, exist_ok=True)

    text_over, vision_over = text, vision
    text = dict(TEXT, vocab_size=TEXT_VOCAB)
    text.update(text_over or {})
    if layers is not None:
        text["num_hidden_layers"] = int(layers)
    heads = text["num_attention_heads"]
    if kv_heads is not None and (heads % int(kv_heads) != 0):
        raise ValueError("kv_heads must divide num_attention_heads")
    eff_kv = int(kv_heads) if kv_heads is not None else heads
    vision = dict(VISION)
    vision.update(vision_over or {})

    # weights: generated in float32 in a fixed order, then cast, each
    # written to its shard at the offset its (sorted) name has there
    g = torch.Generator().manual_seed(int(seed))
    tensors = [(old, rename(old, naming), shape, kind, shard_of(old, text["num_hidden_layers"]))
               for old, shape, kind in canonical_shapes(text, vision, eff_kv)]
    weight_map = {name: SHARDS[k] for _, name, _, _, k in tensors}
    writers = [SafetensorsWriter(os.path.join(out_dir, SHARDS[k]),
                                 {name: (tdt, shape) for _, name, shape, _, j in tensors if j == k})
               for k in (0, 1)]
    try:
        for _, name, shape, kind, k in tensors:
            write_random(writers[k], name, shape, kind, g, tdt)
    finally:
        for w in writers:
            w.close()
    total = sum(w.total for w in writers)
    _dump(os.path.join(out_dir, "model.safetensors.index.json"),
          {"metadata": {"total_size": total},
           "weight_map": dict(sorted(weight_map.items()))})

    text_cfg = {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": text["hidden_size"],
        "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": text["max_position_embeddings"],
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": text["num_hidden_layers"],
        "rms_norm_eps": text["rms_norm_eps"],
        "torch_dtype": dtype,
        "vocab_size": text["vocab_size"],
    }
    if kv_heads is not None:
        text_cfg["num_key_value_heads"] = eff_kv
    vision_cfg = {
        "hidden_size": vision["hidden_size"],
        "image_size": vision["image_size"],
        "intermediate_size": vision["intermediate_size"],
        "model_type": "clip_vision_model",
        "num_attention_heads": vision["num_attention_heads"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "patch_size": vision["patch_size"],
        "projection_dim": vision["projection_dim"],
        "vocab_size": 32000,   # present (and meaningless) in the real file
    }
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": IMAGE_TOKEN_INDEX,
        "model_type": "llava",
        "pad_token_id": PAD_TOKEN_ID,
        "projector_hidden_act": "gelu",
        "text_config": text_cfg,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "transformers_version": "4.36.0.dev0" if naming == "old" else "4.52.4",
        "vision_config": vision_cfg,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": text["vocab_size"],
    }
    _dump(os.path.join(out_dir, "config.json"), config)
    _dump(os.path.join(out_dir, "generation_config.json"), {
        "_from_model_config": True, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
        "pad_token_id": PAD_TOKEN_ID, "transformers_version": config["transformers_version"]})

    side = vision["image_size"]
    _dump(os.path.join(out_dir, "preprocessor_config.json"), {
        "crop_size": {"height": side, "width": side},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD,
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": side},
    })

    spm_opts = train_tokenizer(os.path.join(out_dir, "tokenizer.model"))
    tokenizer_files(out_dir)

    num_patches = (vision["image_size"] // vision["patch_size"]) ** 2
    return {
        "out_dir": os.path.abspath(out_dir),
        "seed": int(seed), "dtype": dtype, "naming": naming,
        "files": sorted(os.listdir(out_dir)),
        "shards": list(SHARDS),
        "weight_map": dict(sorted(weight_map.items())),
        "total_size": total,
        "n_tensors": len(weight_map),
        "config": config,
        "text": dict(text, num_key_value_heads=eff_kv,
                     head_dim=text["hidden_size"] // heads),
        "vision": vision,
        "num_patches": num_patches,          # image rows that replace <image>
        "image_token_index": IMAGE_TOKEN_INDEX,
        "pad_token_id": PAD_TOKEN_ID,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
        "sp_vocab_size": SP_VOCAB,
        "text_vocab_size": text["vocab_size"],
        "spm_options": list(spm_opts),
    }

# --------------------------------------------------------------- dataset ---

# (width, height, PIL mode, format) of the images, cycled when n > 6
IMAGE_SPECS = [
    (80, 60, "RGB", "JPEG"),
    (56, 56, "RGB", "PNG"),
    (100, 140, "RGB", "JPEG"),
    (33, 70, "RGBA", "PNG"),
    (200, 90, "RGB", "JPEG"),
    (61, 45, "L", "PNG"),
]
QUERIES = [
    "Describe this image.",
    "Is there a dog in this image?",
    "Is there direct contact between the cat and the table in this image?",
    "Please describe the scene in detail, including every object, its color and its position.",
    "What color is the ball?",
    "Are there 3 birds in this picture?",
]


def _picture(w, h, mode, r):
    """A gradient with a few shapes, deterministic for the Random r."""
    from PIL import Image, ImageDraw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c0 = np.array([r.randint(0, 255) for _ in range(3)], dtype=np.float64)
    c1 = np.array([r.randint(0, 255) for _ in range(3)], dtype=np.float64)
    ang = r.uniform(0, 2 * math.pi)
    t = (xx * math.cos(ang) + yy * math.sin(ang))
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    rgb = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    rgb += 12.0 * np.sin(xx / (3 + r.random() * 5))[..., None]
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(r.randint(2, 4)):
        x0, y0 = r.randint(0, w - 1), r.randint(0, h - 1)
        x1, y1 = x0 + r.randint(3, max(4, w // 2)), y0 + r.randint(3, max(4, h // 2))
        col = tuple(r.randint(0, 255) for _ in range(3))
        if r.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=col)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=col, outline=(0, 0, 0))
    if mode == "RGBA":
        alpha = (255 * (0.3 + 0.7 * t)).astype(np.uint8)
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(alpha, "L"))
    elif mode == "L":
        img = img.convert("L")
    return img


def make_dataset(out_dir, n=6, seed=0):
    """Write DIR/queries.json and DIR/images/; returns facts."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    r = random.Random(int(seed))
    entries, facts = [], []
    for i in range(int(n)):
        w, h, mode, fmt = IMAGE_SPECS[i % len(IMAGE_SPECS)]
        if i >= len(IMAGE_SPECS):   # later rounds: other sizes, same kinds
            w, h = w + 7 * (i // len(IMAGE_SPECS)), h + 3 * (i // len(IMAGE_SPECS))
        img = _picture(w, h, mode, r)
        ext = "jpg" if fmt == "JPEG" else "png"
        name = f"AMBER_{i + 1}.{ext}"
        path = os.path.join(out_dir, "images", name)
        if fmt == "JPEG":
            img.save(path, "JPEG", quality=95)
        else:
            img.save(path, "PNG")
        query = QUERIES[i % len(QUERIES)]
        entries.append({"id": i + 1, "image": name, "query": query})
        facts.append({"id": i + 1, "image": name, "width": w, "height": h,
                      "mode": mode, "format": fmt, "query": query})
    with open(os.path.join(out_dir, "queries.json"), "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    return {"dir": os.path.abspath(out_dir), "queries": "queries.json",
            "image_dir": "images", "samples": facts}

# ------------------------------------------------------------------- CLI ---


def tree_digest(root):
    """sha256 over every file's relative path and bytes (for determinism)."""
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for fn in sorted(files):
            p = os.path.join(dirpath, fn)
            h.update(os.path.relpath(p, root).encode() + b"\0")
            with open(p, "rb") as f:
                for b in iter(lambda: f.read(1 << 24), b""):
                    h.update(b)
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", nargs="?", help="model folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=sorted(TORCH_DTYPE))
    ap.add_argument("--naming", default="old", choices=["old", "new"])
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--width", default="tiny", choices=["tiny", "7b"],
                    help="7b: LLaVA-1.5-7B's widths (TEXT_7B, VISION_7B)")
    ap.add_argument("--dataset", metavar="DIR", help="also write an AMBER-style dataset")
    ap.add_argument("--n", type=int, default=6, help="dataset samples")
    ap.add_argument("--dataset-seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.out_dir and not a.dataset:
        ap.error("give OUT_DIR and/or --dataset DIR")
    if a.out_dir:
        f = make_llava(a.out_dir, seed=a.seed, dtype=a.dtype, naming=a.naming,
                       kv_heads=a.kv_heads, layers=a.layers,
                       **(dict(text=TEXT_7B, vision=VISION_7B) if a.width == "7b" else {}))
        print(f"model: {f['out_dir']} ({f['n_tensors']} tensors, {f['total_size']} bytes, "
              f"{f['dtype']}, naming {f['naming']}, sha256 {tree_digest(a.out_dir)[:16]})")
    if a.dataset:
        d = make_dataset(a.dataset, n=a.n, seed=a.dataset_seed)
        print(f"dataset: {d['dir']} ({len(d['samples'])} samples, "
              f"sha256 {tree_digest(a.dataset)[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
