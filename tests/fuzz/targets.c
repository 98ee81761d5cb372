/* Fuzz targets for every parser of untrusted input: chunk frames, index
 * records, manifests, .pt archives, pickles, SentencePiece models,
 * safetensors headers and the Hub's JSON answers.  Each must return an
 * error or a valid result, never crash, hang, leak or read out of bounds;
 * where a parse succeeds the target checks what the callers rely on and
 * aborts if it does not hold.  Built with libFuzzer by
 * tests/fuzz/libfuzzer.c, and replayed over a corpus by replay.c in
 * `make check` (see README). */
#include "capture.h"
#include "codec.h"
#include "hfcache_internal.h"
#include "s3.h"
#include "safetensors.h"
#include "targets.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <string.h>

/* What a frame's raw length may be here: a store's chunks are about 1 MiB. */
#define FRAME_MAX_RAW (4u << 20)
/* Frames up to this are compressed again and decoded back. */
#define FRAME_ROUND_TRIP (64u << 10)

static volatile uint8_t sink; /* reads stored here are not optimized away */

static void touch_tensors(const pt_archive *ar, const pt_obj *o, int depth)
{
	if (depth > 8)
		return;
	if (o->kind == PT_TENSOR) {
		size_t n = (size_t)pt_tensor_numel(o) * cltfs_dtype_size(o->u.t.dtype);
		if (n > (64u << 20))
			return;
		void *buf = malloc(n ? n : 1);
		if (buf && pt_tensor_read(ar, o, buf) == CLTFS_OK && n)
			((volatile uint8_t *)buf)[n - 1];
		free(buf);
	} else if (o->kind == PT_LIST || o->kind == PT_TUPLE) {
		for (size_t i = 0; i < o->u.seq.n; i++)
			touch_tensors(ar, o->u.seq.v[i], depth + 1);
	} else if (o->kind == PT_DICT) {
		for (size_t i = 0; i < o->u.dict.n; i++)
			touch_tensors(ar, o->u.dict.v[i], depth + 1);
	}
}

int cltfs_fuzz_pt(const uint8_t *data, size_t size)
{
	pt_archive *ar;
	if (pt_open_mem(data, size, "fuzz", &ar) != CLTFS_OK)
		return 0;
	pt_check_crcs(ar, "fuzz");
	touch_tensors(ar, pt_root(ar), 0);
	pt_close(ar);
	return 0;
}

int cltfs_fuzz_pickle(const uint8_t *data, size_t size)
{
	pt_arena *a = pt_arena_new();
	pt_obj *o;
	if (a && pt_unpickle(a, data, size, &o) == CLTFS_OK) {
		uint8_t *out;
		size_t n;
		if (pt_pickle(o, &out, &n) == CLTFS_OK) /* what we read, we can write */
			free(out);
	}
	pt_arena_free(a);
	return 0;
}

int cltfs_fuzz_manifest(const uint8_t *data, size_t size)
{
	cltfs_manifest *m;
	if (cltfs_manifest_parse((const char *)data, size, "fuzz.json", &m) == CLTFS_OK) {
		char *s = cltfs_manifest_dump(m);
		free(s);
		if (m->n_chunks)
			cltfs_manifest_chunk_of(m, m->total_rows - 1);
		cltfs_manifest_free(m);
	}
	return 0;
}

/* The values of a frame that decoded must survive encode + decode. */
static void frame_round_trip(cltfs_zctx *z, cltfs_codec codec, size_t esize, const uint8_t *raw, size_t raw_len)
{
	size_t cap = cltfs_frame_bound(codec, raw_len), n;
	uint8_t *frame = malloc(cap), *back = malloc(raw_len ? raw_len : 1);
	uint32_t crc;
	if (frame && back && cltfs_frame_encode(z, codec, 1, esize, raw, raw_len, frame, cap, &n) == CLTFS_OK &&
	    (n > cap || cltfs_frame_decode(z, codec, esize, frame, n, back, raw_len, &crc) != CLTFS_OK ||
	     memcmp(raw, back, raw_len) || crc != cltfs_crc32(0, raw, raw_len)))
		abort();
	free(frame);
	free(back);
}

/* Input: byte 0: element size (1 + byte % 8) and codec (its top two bits:
 * 0 zstd, 1 raw, 2 exp4, 3 zstd; inputs from before codecs keep meaning
 * zstd frames); raw length (bytes 1-3, little-endian, at most
 * FRAME_MAX_RAW), then the frame.  A frame that decodes must give the CRC
 * of what it gave. */
int cltfs_fuzz_frame(const uint8_t *data, size_t size)
{
	if (size < 4)
		return 0;
	size_t esize = 1 + data[0] % 8;
	cltfs_codec codec = (cltfs_codec)((data[0] >> 6) % CLTFS_NCODECS);
	size_t raw_len = (size_t)data[1] | (size_t)data[2] << 8 | (size_t)data[3] << 16;
	if (raw_len > FRAME_MAX_RAW)
		return 0;
	cltfs_zctx *z = cltfs_zctx_new();
	uint8_t *raw = malloc(raw_len ? raw_len : 1);
	uint32_t crc;
	if (z && raw && cltfs_frame_decode(z, codec, esize, data + 4, size - 4, raw, raw_len, &crc) == CLTFS_OK) {
		if (crc != cltfs_crc32(0, raw, raw_len))
			abort();
		if (raw_len <= FRAME_ROUND_TRIP)
			frame_round_trip(z, codec, esize, raw, raw_len);
	}
	free(raw);
	cltfs_zctx_free(z);
	return 0;
}

static bool rec_equal(const cltfs_rec *a, const cltfs_rec *b)
{
	return a->key == b->key && a->offset == b->offset && a->csize == b->csize && a->rsize == b->rsize &&
	       a->crc == b->crc && a->dtype == b->dtype && a->codec == b->codec;
}

/* Input: as an index file, a 16-byte header then 40-byte records.  A record
 * that decodes must encode to one that decodes to the same fields. */
int cltfs_fuzz_record(const uint8_t *data, size_t size)
{
	if (size < CLTFS_FILE_HEADER)
		return 0;
	cltfs_file_header_check(CLTFS_PACK_MAGIC, data);
	cltfs_file_header_check(CLTFS_IDX_MAGIC, data);
	for (size_t off = CLTFS_FILE_HEADER; off + CLTFS_REC_SIZE <= size; off += CLTFS_REC_SIZE) {
		cltfs_rec r, again;
		uint8_t out[CLTFS_REC_SIZE];
		char key[48];
		if (cltfs_rec_decode(data + off, &r) != CLTFS_OK)
			continue;
		cltfs_key_str(r.key, key, sizeof key);
		cltfs_rec_encode(&r, out);
		if (cltfs_rec_decode(out, &again) != CLTFS_OK || !rec_equal(&r, &again))
			abort();
	}
	return 0;
}

/* Input: a tokenizer.model; a model that parses encodes a few fixed texts
 * (added-token free: those come from JSON files beside the model). */
int cltfs_fuzz_tokenizer(const uint8_t *data, size_t size)
{
	static const char *const texts[] = {
		"USER: <image>\nDescribe this image, please. ASSISTANT:",
		"  two  spaces, digits 0123 and \xc3\xa9\xe7\x8c\xab; bad UTF-8 \xff\xe2\x96 ",
		"",
	};
	cap_tokenizer *t;
	if (cap_tokenizer_parse(data, size, "fuzz.model", &t) != CLTFS_OK)
		return 0;
	for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
		int32_t *ids;
		size_t n;
		if (cap_tokenize(t, texts[i], &ids, &n) == CLTFS_OK)
			free(ids);
	}
	cap_tokenizer_free(t);
	return 0;
}

/* Input: a safetensors file.  Every tensor of a header that parses must lie
 * inside the file and hold exactly its shape's values. */
int cltfs_fuzz_safetensors(const uint8_t *data, size_t size)
{
	cap_st_header *h;
	if (cap_st_parse(data, size, "fuzz.safetensors", &h) != CLTFS_OK)
		return 0;
	for (size_t i = 0; i < h->n; i++) {
		const cap_st_tensor *t = &h->t[i];
		uint64_t bytes = cltfs_dtype_size(t->dtype);
		for (int d = 0; d < t->ndim; d++)
			if (__builtin_mul_overflow(bytes, (uint64_t)t->shape[d], &bytes))
				abort();
		if (!t->name || t->ndim > CAP_ST_MAX_DIM || t->offset > size || t->bytes > size - t->offset ||
		    t->bytes != bytes)
			abort();
		if (t->bytes) /* under ASan: the first and last byte are in the input */
			sink ^= data[t->offset] ^ data[t->offset + t->bytes - 1];
	}
	cap_st_free(h);
	return 0;
}

/* Would path, joined to a snapshot folder, name something outside it? */
static bool escapes(const char *path)
{
	if (!*path || *path == '/')
		return true;
	for (const char *c = path; c; c = strchr(c, '/') ? strchr(c, '/') + 1 : NULL)
		if (!strncmp(c, "..", 2) && (c[2] == '/' || !c[2]))
			return true;
	return false;
}

/* Input: byte 0 picks the parser (even: a revision answer, odd: a page of
 * the tree listing), the rest is the answer's body. */
int cltfs_fuzz_hub_json(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	const char *json = (const char *)data + 1;
	if (data[0] % 2 == 0) {
		char commit[41];
		if (hf_parse_revision(json, size - 1, "fuzz", commit) == CLTFS_OK && strlen(commit) != 40)
			abort();
		return 0;
	}
	hf_entries l = {0};
	if (hf_parse_tree_page(json, size - 1, "fuzz", &l) == CLTFS_OK)
		for (size_t i = 0; i < l.n; i++)
			if (escapes(l.e[i].path) || (l.e[i].dir && l.e[i].size))
				abort();
	hf_entries_free(l.e, l.n);
	return 0;
}

/* Input: byte 0 picks the prefix (even: "runs/acts", odd: the whole
 * bucket), the rest is a page of an S3 ListObjectsV2 answer.  Every path
 * kept stays inside the folder it would be written to. */
int cltfs_fuzz_s3_list(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	char *xml = malloc(size);
	if (!xml)
		return 0;
	memcpy(xml, data + 1, size - 1);
	xml[size - 1] = 0;
	s3_objects l = {0};
	char *token = NULL;
	if (s3_parse_listing(data[0] % 2 ? "" : "runs/acts", "fuzz", xml, &l, &token) == CLTFS_OK)
		for (size_t i = 0; i < l.n; i++)
			if (escapes(l.e[i].path) || strchr(l.e[i].etag, '\n'))
				abort();
	if (token && !*token)
		abort();
	free(token);
	s3_objects_free(&l);
	free(xml);
	return 0;
}

/* A sample table: every sample's strings, then a manifest around it, whose
 * batch index must agree with a walk of the table wherever it is asked. */
int cltfs_fuzz_table(const uint8_t *data, size_t size)
{
	cltfs_table *t;
	if (cltfs_table_from_bytes(data, size, "fuzz.bin", &t) != CLTFS_OK)
		return 0;
	uint64_t rows = 0;
	for (uint64_t i = 0; i < t->n; i++) {
		const char *id, *image, *text;
		char *buf;
		if (!cltfs_table_strings(t, i, &buf, &id, &image, &text) &&
		    strlen(id) + strlen(image) + strlen(text) > size)
			abort(); /* strings inside the table */
		free(buf);
		rows += t->rows[i];
	}
	cltfs_manifest *m = cltfs_manifest_new();
	if (!m) {
		cltfs_table_close(t);
		return 0;
	}
	m->n_layers = m->d_model = 2;
	m->n_targets = 1;
	m->chunk_rows = 3;
	m->batch_samples = 2;
	m->x_layers = calloc(1, sizeof(int));
	m->mlp_layers = calloc(1, sizeof(int));
	m->n_x_layers = m->x_layers ? 1 : 0;
	if (m->mlp_layers) {
		m->mlp_layers[0] = 1;
		m->n_mlp_layers = 1;
	}
	cltfs_manifest_set_table(m, t, NULL);
	if (cltfs_manifest_finish(m, "fuzz.json") == CLTFS_OK) {
		if ((uint64_t)m->total_rows != rows)
			abort();
		for (int64_t c = 0; c < m->n_chunks; c += 1 + c / 7) {
			int64_t start = cltfs_manifest_chunk_start(m, c), b = cltfs_manifest_batch_of_chunk(m, c);
			cltfs_batch x = cltfs_manifest_batch(m, b);
			if (cltfs_manifest_chunk_of(m, start) != c || start < x.first_row || start >= x.first_row + x.rows)
				abort();
		}
	}
	cltfs_manifest_free(m);
	return 0;
}

/* A query file, every query of it, through a file (the reader reads files). */
int cltfs_fuzz_queries(const uint8_t *data, size_t size)
{
	int fd = memfd_create("cltfs-queries", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) == (ssize_t)size) {
		char path[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		cltfs_queries *qs;
		cltfs_query q;
		cltfs_err e;
		if (cltfs_queries_open(path, &qs) == CLTFS_OK) {
			while (cltfs_queries_next(qs, &q, &e))
				if (!q.id || !q.image || !q.text)
					abort();
			cltfs_queries_close(qs);
		}
	}
	close(fd);
	return 0;
}
