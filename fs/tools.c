/* tools.c: `cltfs stat` and `cltfs verify`. */
#include "fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static cltfs_store *open_or_report(const char *dir)
{
	cltfs_store *s;
	if (store_open(dir, &s)) {
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
		return NULL;
	}
	return s;
}

/* ---- verify ---- */

typedef struct {
	cltfs_zctx *z;
	uint8_t *buf;
	size_t cap;
	uint64_t ok, bad, dup;
	uint8_t *seen; /* one bit per (stream, chunk) present */
	const cltfs_manifest *m;
} verify_state;

static size_t slot_of(const cltfs_manifest *m, uint64_t key)
{
	/* x@L and mlp@L each have n_chunks slots, per layer */
	size_t stream = (size_t)cltfs_key_layer(key) * 2 + cltfs_key_kind(key);
	return stream * (size_t)m->n_chunks + cltfs_key_chunk(key);
}

static cltfs_err verify_one(void *arg, const store_entry *ent)
{
	verify_state *v = arg;
	char k[48];
	if (!ent->valid) {
		fprintf(stderr, "cltfs: %s: record at offset %llu fails its checksum or names no chunk of this store\n",
			ent->idx_path, (unsigned long long)ent->idx_offset);
		v->bad++;
		return CLTFS_OK;
	}
	if (!cltfs_reserve(&v->buf, &v->cap, ent->rec.rsize))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (store_check_entry(ent, v->z, v->buf)) {
		fprintf(stderr, "cltfs: %s: chunk %s at offset %llu: %s\n", ent->pack_path,
			cltfs_key_str(ent->rec.key, k, sizeof k), (unsigned long long)ent->rec.offset, cltfs_errmsg());
		v->bad++;
		return CLTFS_OK;
	}
	size_t slot = slot_of(v->m, ent->rec.key);
	if (v->seen[slot / 8] & (1u << (slot % 8)))
		v->dup++;
	v->seen[slot / 8] |= (uint8_t)(1u << (slot % 8));
	v->ok++;
	return CLTFS_OK;
}

/* The chunks the views need: x@L for every x layer, mlp@t for every mlp layer. */
static uint64_t chunks_needed(const cltfs_manifest *m)
{
	return (uint64_t)(m->n_x_layers + m->n_mlp_layers) * (uint64_t)m->n_chunks;
}

int cmd_verify(const char *dir)
{
	cltfs_store *s = open_or_report(dir);
	if (!s)
		return 1;
	const cltfs_manifest *m = store_manifest(s);
	verify_state v = {.z = cltfs_zctx_new(), .m = m};
	size_t slots = (size_t)(m->n_layers + 1) * 2 * (size_t)m->n_chunks;
	v.seen = calloc(slots / 8 + 1, 1);
	int rc = 1;
	if (!v.z || !v.seen)
		fprintf(stderr, "cltfs: out of memory\n");
	else if (store_foreach(s, verify_one, &v))
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
	else {
		uint64_t present = v.ok - v.dup, need = chunks_needed(m);
		printf("%s: %llu chunks checked, %llu bad; %llu of %llu chunks present%s\n", dir,
		       (unsigned long long)(v.ok + v.bad), (unsigned long long)v.bad, (unsigned long long)present,
		       (unsigned long long)need,
		       present < need ? " (the rest is filled on a read or by re-running the import)" : "");
		rc = v.bad ? 1 : 0;
	}
	cltfs_zctx_free(v.z);
	free(v.buf);
	free(v.seen);
	store_close(s);
	return rc;
}

/* ---- stat ---- */

typedef struct {
	uint64_t chunks, raw, frames;
} stat_state;

static cltfs_err stat_one(void *arg, const store_entry *ent)
{
	stat_state *st = arg;
	if (ent->valid) {
		st->chunks++;
		st->raw += ent->rec.rsize;
		st->frames += ent->rec.csize;
	}
	return CLTFS_OK;
}

int cmd_stat(const char *dir, bool json)
{
	cltfs_store *s = open_or_report(dir);
	if (!s)
		return 1;
	const cltfs_manifest *m = store_manifest(s);
	stat_state st = {0};
	cltfs_fs *fs = NULL;
	cltfs_opts o = {.dtype = -1, .cache_mb = 16, .readahead = 0};
	uint64_t mat = 0;
	int rc = 0;
	if (store_foreach(s, stat_one, &st) || fs_new(s, &o, &fs)) {
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
		rc = 1;
	}
	/* The materialized equivalent: every default view's size. */
	for (int li = 0; !rc && li < fs_nlayers(fs); li++)
		for (int64_t k = 0; !rc && k < fs_nbatches(fs); k++)
			for (int y = 0; y < 2; y++) {
				uint64_t sz;
				if (fs_view_size(fs, li, k, y, &sz)) {
					fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
					rc = 1;
					break;
				}
				mat += sz;
			}
	if (!rc) {
		uint64_t disk = store_disk_bytes(s), need = chunks_needed(m);
		double ratio = mat ? (double)disk / (double)mat : 0;
		if (json)
			printf("{\"store\": \"%s\", \"rows\": %lld, \"samples\": %lld, \"batches\": %lld, "
			       "\"x_layers\": %d, \"mlp_layers\": %d, \"d_model\": %d, \"dtype\": \"%s\", "
			       "\"chunks\": %llu, \"chunks_needed\": %llu, \"raw_bytes\": %llu, "
			       "\"disk_bytes\": %llu, \"materialized_bytes\": %llu, \"ratio\": %.6f}\n",
			       dir, (long long)m->total_rows, (long long)m->n_samples, (long long)m->n_batches,
			       m->n_x_layers, m->n_mlp_layers, m->d_model, cltfs_dtype_name(m->dtype),
			       (unsigned long long)st.chunks, (unsigned long long)need, (unsigned long long)st.raw,
			       (unsigned long long)disk, (unsigned long long)mat, ratio);
		else
			printf("store         %s\n"
			       "rows          %lld in %lld samples, %lld batches\n"
			       "layers        %d x streams (L%d..L%d), %d mlp streams, d=%d, %s\n"
			       "chunks        %llu of %llu present (%lld rows each at most)\n"
			       "raw bytes     %.1f MB (the distinct streams, uncompressed)\n"
			       "on disk       %.1f MB\n"
			       "materialized  %.1f MB (the L<n>/batch_<k>_{x,y}.pt files it serves)\n"
			       "ratio         %.4f (1/%.1f)\n",
			       dir, (long long)m->total_rows, (long long)m->n_samples, (long long)m->n_batches,
			       m->n_x_layers, m->x_layers[0], m->x_layers[m->n_x_layers - 1], m->n_mlp_layers,
			       m->d_model, cltfs_dtype_name(m->dtype), (unsigned long long)st.chunks,
			       (unsigned long long)need, (long long)m->chunk_rows, (double)st.raw / 1e6,
			       (double)disk / 1e6, (double)mat / 1e6, ratio, ratio > 0 ? 1 / ratio : 0);
	}
	fs_free(fs);
	store_close(s);
	return rc;
}
