/* capture.h: LLaVA-1.5 activations from a Hugging Face checkpoint, on
 * libtorch, behind a C interface.
 *
 *   checkpoint - config.json (LlavaConfig; fields the real one leaves out
 *                take transformers' LlamaConfig / CLIPVisionConfig
 *                defaults), safetensors shards (header parsed with cJSON,
 *                data read with pread), either tensor naming
 *   tokenizer  - tokenizer.model (SentencePiece) plus the added tokens of
 *                tokenizer_config.json / added_tokens.json, BOS first, each
 *                text segment between added tokens encoded on its own (what
 *                the fast tokenizer users get does: a "▁" on both sides of
 *                <image>)
 *   images     - preprocessor_config.json (CLIPImageProcessor), image.h
 *   forward    - CLIP vision tower (feature layer -2, class token dropped),
 *                the GELU projector, image rows at the <image> token, the
 *                LLaMA decoder; for every layer the input hook and the MLP
 *                output
 *
 * No FUSE and no store here: fs/ calls this, never the reverse.
 */
#ifndef CLTFS_CAPTURE_H
#define CLTFS_CAPTURE_H

#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { CAP_HOOK_MLP_IN = 0, CAP_HOOK_RESID_PRE = 1, CAP_HOOK_RESID_MID = 2 };
/* "mlp_in", "resid_pre", "resid_mid" -> CAP_HOOK_*, or -1. */
int cap_hook_parse(const char *name);

enum { CAP_DEVICE_AUTO = 0, CAP_DEVICE_CPU = 1, CAP_DEVICE_CUDA = 2 };
/* A device name: NULL, "" or "auto", "cpu", "cuda", "cuda:N" (N to 1024,
 * in *index) -> CAP_DEVICE_*, or -1. */
int cap_device_parse(const char *name, int *index);

/* What init needs: sizes and the tokenizer, no weights. */
typedef struct {
	int n_layers, d_model, n_heads, n_kv_heads, intermediate;
	int vocab_size;
	double rms_eps, rope_theta;
	int v_hidden, v_layers, v_heads, v_intermediate, v_image, v_patch;
	double v_eps;
	int feature_layer;     /* -2 */
	int image_token;       /* image_token_index */
	int image_rows;        /* (image_size / patch_size)^2: rows per <image> */
	char torch_dtype[16];  /* as the checkpoint says */
} cap_config;

/* config.json of a LLaVA checkpoint folder: CLTFS_E_NOTFOUND, _FORMAT
 * (the message names the field), _UNSUPPORTED (a setting cltfs does not
 * implement, such as rope_scaling), _IO, _NOMEM. */
cltfs_err cap_config_load(const char *dir, cap_config *c);

typedef struct cap_tokenizer cap_tokenizer;
/* tokenizer.model and the added tokens of dir: CLTFS_E_NOTFOUND, _FORMAT
 * (a damaged or truncated model), _UNSUPPORTED (a normalizer other than
 * identity, a model type other than BPE), _IO, _NOMEM. */
cltfs_err cap_tokenizer_load(const char *dir, cap_tokenizer **out);
/* A tokenizer.model already in memory (len bytes at buf; name is for
 * messages), without added tokens: what cap_tokenizer_load reads first, and
 * what the fuzzer feeds.  The pieces are copied: buf may be freed after.
 * CLTFS_E_FORMAT (a damaged or truncated model, an unk_id that is no
 * piece), _UNSUPPORTED (a normalizer other than identity, a model type
 * other than BPE), _NOMEM. */
cltfs_err cap_tokenizer_parse(const uint8_t *buf, size_t len, const char *name, cap_tokenizer **out);
/* NULL is a no-op. */
void cap_tokenizer_free(cap_tokenizer *t);
/* Ids of text, BOS first; malloc'd.  CLTFS_E_NOMEM. */
cltfs_err cap_tokenize(cap_tokenizer *t, const char *text, int32_t **ids, size_t *n);
/* The prompt of a query: template with "{query}" replaced (the model
 * card's "USER: <image>\n{query} ASSISTANT:" when template is NULL);
 * malloc'd, NULL when out of memory. */
char *cap_prompt(const char *tmpl, const char *query);
#define CAP_DEFAULT_TEMPLATE "USER: <image>\n{query} ASSISTANT:"
/* Rows of a token sequence once each image token is image_rows rows. */
int64_t cap_rows(const cap_config *c, const int32_t *ids, size_t n);

typedef struct {
	const char *dir;
	int dtype;          /* compute dtype (cltfs_dtype), -1: bf16 on a GPU, fp32 on the CPU */
	int threads;        /* CPU threads, 0: libtorch's default */
	const char *device; /* "cpu", "cuda", "cuda:N"; NULL or "auto": the first GPU if any */
	int batch;          /* samples per forward pass, 0: cap_model_batch's */
} cap_load_opts;

typedef struct cap_model cap_model;
/* Load the checkpoint in o->dir onto the device (libcltfs-capture.so is
 * opened on the first call); on a GPU in the compute dtype straight from
 * the mapped file.  CLTFS_E_UNSUPPORTED (the library cannot be loaded: the
 * message says where it was looked for and why; or a CUDA device asked of
 * a torch without CUDA, or none visible), _INVAL (a device name that is not
 * cpu, cuda or cuda:N, or a GPU number past the last), _NOTFOUND (a
 * file of the checkpoint is missing), _FORMAT (a bad config, index or
 * safetensors header, or a tensor of the wrong shape: the message names
 * the tensor and the file), _IO, _NOMEM. */
cltfs_err cap_model_load(const cap_load_opts *o, cap_model **out);
/* NULL is a no-op. */
void cap_model_free(cap_model *m);
const cap_config *cap_model_config(const cap_model *m);
/* "cpu" or "cuda:0", and the compute dtype's name. */
const char *cap_model_device(const cap_model *m);
const char *cap_model_dtype(const cap_model *m);
/* Samples of about `rows` rows per forward pass: 1 on the CPU; on a GPU
 * what 70% of its free memory holds (1 to 64; 8 when that is unknown). */
int cap_model_batch(cap_model *m, int64_t rows);
/* Can the capture library run on device (cap_load_opts.device)?  Loads
 * the library only for a CUDA device.  cap_model_load's device errors. */
cltfs_err cap_device_check(const char *device);
/* The capture library's torch: version, where the build found it, and
 * whether it has CUDA and sees a GPU; or why the library cannot be
 * loaded.  Loads the library. */
void cap_build_info(char *buf, size_t n);

typedef struct {
	const int32_t *ids;
	size_t n;
	const char *image; /* path; NULL: a text-only sample (no <image> allowed) */
} cap_sample;

/* Rows of one stream of sample i of the call: layer L of the input hook
 * (kind 0) or of the MLP output (kind 1), nrows x d_model values in the
 * dtype asked for. */
typedef cltfs_err (*cap_emit)(void *arg, size_t i, int kind, int layer, const void *rows, int64_t nrows);

/* The forward pass of n samples at once (right-padded to the longest: no
 * row changes), streams handed to emit layer by layer, sample by sample.
 * emit's error stops the pass and is returned as it is; else
 * CLTFS_E_NOTFOUND or _FORMAT (an image that cannot be read: the message
 * names it), _IO (the forward pass failed), _NOMEM. */
cltfs_err cap_forward(cap_model *m, const cap_sample *s, size_t n, int input_hook, cltfs_dtype out, cap_emit emit,
		      void *arg);

#ifdef __cplusplus
}
#endif

#endif
