/* fill_index: fill whole streams of a store with all-zero chunks, as a
 * capture that ran to the end would leave its index, for measuring what a
 * mount of a filled store holds in memory (bench/scale.py).  No model
 * runs: each distinct chunk size is compressed once and its frame appended
 * for every chunk of that size.
 *
 *   fill_index STORE STREAM...      STREAM: x@L or mlp@L
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
	uint32_t rsize, csize, crc;
	uint8_t *frame;
} sized_frame;

static int fail(const char *what)
{
	fprintf(stderr, "fill_index: %s: %s\n", what, cltfs_errmsg());
	return 1;
}

/* The frame of rsize zero bytes, encoded on first use. */
static sized_frame *frame_of(sized_frame **cache, size_t *n, size_t *cap, uint32_t rsize, const cltfs_manifest *m,
			     cltfs_zctx *z)
{
	for (size_t i = 0; i < *n; i++)
		if ((*cache)[i].rsize == rsize)
			return &(*cache)[i];
	uint8_t *zeros = calloc(rsize ? rsize : 1, 1);
	size_t bound = cltfs_frame_bound(m->codec, rsize), clen;
	uint8_t *frame = malloc(bound);
	if (!zeros || !frame || !cltfs_grow(cache, cap, *n + 1, sizeof **cache) ||
	    cltfs_frame_encode(z, m->codec, 1, cltfs_dtype_size(m->dtype), zeros, rsize, frame, bound, &clen)) {
		free(zeros);
		free(frame);
		return NULL;
	}
	sized_frame *f = &(*cache)[(*n)++];
	*f = (sized_frame){rsize, (uint32_t)clen, cltfs_crc32(0, zeros, rsize), frame};
	free(zeros);
	return f;
}

static int fill(cltfs_store *s, store_writer *w, const char *name, unsigned kind, unsigned layer, cltfs_zctx *z)
{
	const cltfs_manifest *m = store_manifest(s);
	sized_frame *cache = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	if (!cltfs_manifest_has_stream(m, kind, (int)layer)) {
		fprintf(stderr, "fill_index: %s: %s keeps no such stream\n", name, store_dir(s));
		return 2;
	}
	for (uint32_t c = 0; !rc && c < (uint64_t)m->n_chunks; c++) {
		sized_frame *f = frame_of(&cache, &n, &cap, (uint32_t)store_chunk_raw(s, c), m, z);
		if (!f) {
			rc = fail(name);
			break;
		}
		/* the offset is the append's; add_frame wants a plausible one */
		cltfs_rec rec = {cltfs_key(kind, layer, c), CLTFS_FILE_HEADER, f->csize, f->rsize, f->crc, (uint8_t)m->dtype,
				 (uint8_t)m->codec};
		if (store_writer_add_frame(w, &rec, f->frame) || ((c + 1) % 65536 == 0 && store_writer_sync(w)))
			rc = fail(name);
	}
	for (size_t i = 0; i < n; i++)
		free(cache[i].frame);
	free(cache);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: fill_index STORE STREAM...   (STREAM: x@L or mlp@L)\n");
		return 2;
	}
	cltfs_store *s;
	if (store_open(argv[1], &s))
		return fail(argv[1]);
	store_writer *w = NULL;
	cltfs_zctx *z = cltfs_zctx_new();
	int rc = !z ? (fprintf(stderr, "fill_index: out of memory\n"), 1)
		    : store_writer_open(s, "fill", &w) ? fail("writer") : 0;
	for (int i = 2; !rc && i < argc; i++) {
		unsigned layer;
		char kind[4];
		if (sscanf(argv[i], "%3[a-z]@%u", kind, &layer) != 2 || (strcmp(kind, "x") && strcmp(kind, "mlp"))) {
			fprintf(stderr, "fill_index: %s: expected x@L or mlp@L\n", argv[i]);
			rc = 2;
			break;
		}
		rc = fill(s, w, argv[i], strcmp(kind, "x") ? CLTFS_STREAM_MLP : CLTFS_STREAM_X, layer, z);
	}
	if (w && store_writer_close(w) && !rc)
		rc = fail("sync");
	cltfs_zctx_free(z);
	store_close(s);
	return rc;
}
