/* Fuzz targets for the parsers that take untrusted input: .pt archives,
 * pickles and manifests.  Each must return an error or a valid result,
 * never crash, hang or read out of bounds.  Built with libFuzzer by
 * tests/fuzz/libfuzzer.c, and replayed over a corpus by replay.c in
 * `make check`. */
#include "codec.h"

#include <stdlib.h>
#include <string.h>

int cltfs_fuzz_pt(const uint8_t *data, size_t size);
int cltfs_fuzz_pickle(const uint8_t *data, size_t size);
int cltfs_fuzz_manifest(const uint8_t *data, size_t size);

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
