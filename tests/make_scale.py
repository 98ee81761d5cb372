#!/usr/bin/python3
"""Inputs for `cltfs init` at scale: a LLaVA-1.5-7B-shaped checkpoint folder
without weights (init reads only config.json and the tokenizer), a few
images, and query lists of any length.

    make_scale.py OUT_DIR --samples N [--jsonl] [--seed S]

OUT_DIR/model/      config.json as llava-hf/llava-1.5-7b-hf has it (32 layers,
                    d=4096, CLIP ViT-L/14-336: 576 rows per image), with
                    tests/make_llava.py's small trained SentencePiece tokenizer
                    (its <image> id in place of 32000)
OUT_DIR/images/     8 small JPEGs
OUT_DIR/queries-N.json or .jsonl
                    N queries in AMBER's format, {"id", "image", "query"}, with
                    varied texts of 3 to 20 words; JSON Lines with --jsonl

The same arguments give the same files.  Writing 10^6 queries takes a few
seconds.
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_llava as G  # noqa: E402

N_IMAGES = 8

# llava-hf/llava-1.5-7b-hf's config.json, with the tokenizer's ids
CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": G.IMAGE_TOKEN_INDEX,
    "model_type": "llava",
    "pad_token_id": G.PAD_TOKEN_ID,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.36.0.dev0",
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}


def make_model(out_dir):
    """The checkpoint folder init needs (no weights); returns its path."""
    model = os.path.join(out_dir, "model")
    os.makedirs(model, exist_ok=True)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    if not os.path.exists(os.path.join(model, "tokenizer.model")):
        G.train_tokenizer(os.path.join(model, "tokenizer.model"))
    G.tokenizer_files(model)
    return model


def make_images(out_dir):
    images = os.path.join(out_dir, "images")
    os.makedirs(images, exist_ok=True)
    r = random.Random(7)
    for i in range(N_IMAGES):
        p = os.path.join(images, "img_%d.jpg" % i)
        if not os.path.exists(p):
            G._picture(24 + 4 * i, 20 + 3 * i, "RGB", r).save(p, quality=90)
    return images


def queries(n, seed=0):
    """n queries in AMBER's format, in order."""
    r = random.Random(seed)
    words = G.CORPUS_WORDS
    for i in range(n):
        text = " ".join(r.choice(words) for _ in range(r.randint(3, 20)))
        yield {"id": i + 1, "image": "img_%d.jpg" % (i % N_IMAGES),
               "query": text[0].upper() + text[1:] + r.choice([".", "?"])}


def write_queries(out_dir, n, jsonl=False, seed=0):
    path = os.path.join(out_dir, "queries-%d.%s" % (n, "jsonl" if jsonl else "json"))
    if os.path.exists(path):
        return path
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        if jsonl:
            for q in queries(n, seed):
                f.write(json.dumps(q) + "\n")
        else:
            f.write("[\n")
            for i, q in enumerate(queries(n, seed)):
                f.write((",\n" if i else "") + json.dumps(q))
            f.write("\n]\n")
    os.rename(tmp, path)
    return path


def make_scale(out_dir, n, jsonl=False, seed=0):
    """(model dir, image dir, query file) for n samples."""
    os.makedirs(out_dir, exist_ok=True)
    return make_model(out_dir), make_images(out_dir), write_queries(out_dir, n, jsonl, seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--jsonl", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for p in make_scale(a.out_dir, a.samples, a.jsonl, a.seed):
        print(p)


if __name__ == "__main__":
    main()
