/* stat.c: `cltfs stat STORE [--json]`: rows, layers, chunks present, the
 * codec and what each codec's frames hold, bytes on disk and the bytes of
 * the files a mount serves. */
#include "cmd.h"
#include "view.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
	uint64_t chunks, raw, frames;
	uint64_t n[CLTFS_NCODECS], raw_of[CLTFS_NCODECS], frames_of[CLTFS_NCODECS]; /* by codec */
} stat_state;

static cltfs_err stat_one(void *arg, const store_entry *ent)
{
	stat_state *st = arg;
	if (ent->valid) {
		st->chunks++;
		st->raw += ent->rec.rsize;
		st->frames += ent->rec.csize;
		st->n[ent->rec.codec]++;
		st->raw_of[ent->rec.codec] += ent->rec.rsize;
		st->frames_of[ent->rec.codec] += ent->rec.csize;
	}
	return CLTFS_OK;
}

/* bytes in decimal units, one decimal: a store's size runs from kB (a
 * store init made) to PB (what 10^7 samples materialize). */
static const char *human(double b, char buf[32])
{
	static const char *unit[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
	int u = 0;
	while (b >= 1000 && u < 6) {
		b /= 1000;
		u++;
	}
	snprintf(buf, 32, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
	return buf;
}

/* {"zstd": {"frames": N, "raw_bytes": R, "frame_bytes": F}, ...} for each
 * codec some frame is in (a store may hold several: writers that disagree,
 * frames copied from a Hub store). */
static bool add_codecs(cJSON *r, const stat_state *st)
{
	cJSON *o = cJSON_AddObjectToObject(r, "frames");
	for (int c = 0; o && c < CLTFS_NCODECS; c++) {
		if (!st->n[c])
			continue;
		cJSON *k = cJSON_AddObjectToObject(o, cltfs_codec_name((cltfs_codec)c));
		if (!k || !cJSON_AddNumberToObject(k, "frames", (double)st->n[c]) ||
		    !cJSON_AddNumberToObject(k, "raw_bytes", (double)st->raw_of[c]) ||
		    !cJSON_AddNumberToObject(k, "frame_bytes", (double)st->frames_of[c]))
			return false;
	}
	return o != NULL;
}

/* The frames line(s) of the text form: each codec's count and ratio. */
static void print_codecs(const stat_state *st)
{
	const char *label = "frames";
	for (int c = 0; c < CLTFS_NCODECS; c++) {
		if (!st->n[c])
			continue;
		char r[32], f[32];
		printf("%-13s %llu %s: %s raw in %s (%.3f)\n", label, (unsigned long long)st->n[c],
		       cltfs_codec_name((cltfs_codec)c), human((double)st->raw_of[c], r), human((double)st->frames_of[c], f),
		       st->raw_of[c] ? (double)st->frames_of[c] / (double)st->raw_of[c] : 0.0);
		label = "";
	}
}

/* The bytes of every file the mount serves by default.  Files of one batch
 * differ in size only by kind (x, y) and, for y files, by how many targets
 * the layer has: one size per such class and batch, times its layers. */
static cltfs_err served_bytes(cltfs_store *s, uint64_t *total)
{
	cltfs_fs *fs;
	cltfs_opts o = {.dtype = -1, .cache_mb = 16};
	cltfs_err e = fs_new(s, &o, &fs);
	if (e)
		return e;
	const cltfs_manifest *m = store_manifest(s);
	int nl = fs_nlayers(fs), *rep = calloc((size_t)nl, sizeof *rep), *count = calloc((size_t)nl, sizeof *count);
	int nclass = 0;
	if (!rep || !count)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int li = 0; !e && li < nl; li++) { /* y classes: the layers' target counts */
		int k = 0, nt = cltfs_manifest_targets_of(m, fs_layer(fs, li));
		while (k < nclass && cltfs_manifest_targets_of(m, fs_layer(fs, rep[k])) != nt)
			k++;
		if (k == nclass)
			rep[nclass++] = li;
		count[k]++;
	}
	*total = 0;
	for (int64_t b = 0; !e && b < fs_nbatches(fs); b++) {
		uint64_t sz;
		if (!(e = view_size_of(fs, 0, b, 0, &sz)))
			*total += sz * (uint64_t)nl;
		for (int k = 0; !e && k < nclass; k++)
			if (!(e = view_size_of(fs, rep[k], b, 1, &sz)))
				*total += sz * (uint64_t)count[k];
	}
	free(rep);
	free(count);
	fs_free(fs);
	return e;
}

/* The ratio the store would have complete, from the chunks it has: what
 * a partial store (an interrupted import, a store filled on reads) says
 * instead of a ratio of what it lacks.  From the frames of the chunks
 * present (a cut-short pack may hold frames no record names). */
static double estimate(const stat_state *st, uint64_t need, uint64_t disk, uint64_t mat)
{
	if (!mat || !st->chunks)
		return 0;
	if (st->chunks >= need)
		return (double)disk / (double)mat;
	double have = (double)st->chunks / (double)need;
	return (double)st->frames / have / (double)mat;
}

static int print_json(const char *dir, const cltfs_manifest *m, const stat_state *st, uint64_t need, uint64_t disk,
		      uint64_t mat)
{
	cJSON *r = cJSON_CreateObject();
	double ratio = mat ? (double)disk / (double)mat : 0;
	/* cJSON escapes the path: a store may have any name */
	bool ok = r && cJSON_AddStringToObject(r, "store", dir) &&
		  cJSON_AddNumberToObject(r, "rows", (double)m->total_rows) &&
		  cJSON_AddNumberToObject(r, "samples", (double)m->n_samples) &&
		  cJSON_AddNumberToObject(r, "batches", (double)m->n_batches) &&
		  cJSON_AddNumberToObject(r, "x_layers", m->n_x_layers) &&
		  cJSON_AddNumberToObject(r, "mlp_layers", m->n_mlp_layers) &&
		  cJSON_AddNumberToObject(r, "d_model", m->d_model) &&
		  cJSON_AddStringToObject(r, "dtype", cltfs_dtype_name(m->dtype)) &&
		  cJSON_AddStringToObject(r, "codec", cltfs_codec_name(m->codec)) && add_codecs(r, st) &&
		  cJSON_AddNumberToObject(r, "chunks", (double)st->chunks) &&
		  cJSON_AddNumberToObject(r, "chunks_needed", (double)need) &&
		  cJSON_AddNumberToObject(r, "raw_bytes", (double)st->raw) &&
		  cJSON_AddNumberToObject(r, "disk_bytes", (double)disk) &&
		  cJSON_AddNumberToObject(r, "materialized_bytes", (double)mat) &&
		  cJSON_AddNumberToObject(r, "ratio", ratio) &&
		  cJSON_AddBoolToObject(r, "complete", st->chunks >= need) &&
		  /* no chunk yet (a store init made): nothing to estimate from */
		  (st->chunks ? cJSON_AddNumberToObject(r, "estimated_ratio", estimate(st, need, disk, mat)) != NULL
			      : cJSON_AddNullToObject(r, "estimated_ratio") != NULL);
	char *text = ok ? cJSON_PrintUnformatted(r) : NULL;
	cJSON_Delete(r);
	if (!text) {
		fprintf(stderr, "cltfs: out of memory\n");
		return 1;
	}
	printf("%s\n", text);
	free(text);
	return 0;
}

int cmd_stat(const char *dir, bool json)
{
	cltfs_store *s;
	if (store_open(dir, &s)) {
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
		return 1;
	}
	const cltfs_manifest *m = store_manifest(s);
	stat_state st = {0};
	uint64_t mat = 0;
	int rc = 0;
	if (store_foreach(s, stat_one, &st) || served_bytes(s, &mat)) {
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
		rc = 1;
	}
	uint64_t disk = store_disk_bytes(s), need = (uint64_t)(m->n_x_layers + m->n_mlp_layers) * (uint64_t)m->n_chunks;
	double ratio = mat ? (double)disk / (double)mat : 0;
	if (!rc && json)
		rc = print_json(dir, m, &st, need, disk, mat);
	else if (!rc) {
		char hb[3][32];
		printf("store         %s\n"
		       "rows          %lld in %lld samples, %lld batches\n"
		       "layers        %d x streams (L%d..L%d), %d mlp streams, d=%d, %s\n"
		       "chunks        %llu of %llu present (%lld rows each at most)\n"
		       "raw bytes     %s (the distinct streams, uncompressed)\n"
		       "codec         %s (new frames are written so)\n",
		       dir, (long long)m->total_rows, (long long)m->n_samples, (long long)m->n_batches, m->n_x_layers,
		       m->x_layers[0], m->x_layers[m->n_x_layers - 1], m->n_mlp_layers, m->d_model,
		       cltfs_dtype_name(m->dtype), (unsigned long long)st.chunks, (unsigned long long)need,
		       (long long)m->chunk_rows, human((double)st.raw, hb[0]), cltfs_codec_name(m->codec));
		print_codecs(&st);
		printf("on disk       %s\n"
		       "materialized  %s (the L<n>/batch_<k>_{x,y}.pt files it serves)\n",
		       human((double)disk, hb[1]), human((double)mat, hb[2]));
		double est = estimate(&st, need, disk, mat);
		if (st.chunks >= need)
			printf("ratio         %.4f (1/%.1f)\n", ratio, ratio > 0 ? 1 / ratio : 0);
		else if (!st.chunks)
			printf("ratio         none yet: no chunk present (captured or imported chunks tell)\n");
		else
			printf("ratio         partial store (%.1f%% of the chunks): about %.4f (1/%.1f) when complete, "
			       "from the chunks present\n", 100.0 * (double)st.chunks / (double)(need ? need : 1), est,
			       est > 0 ? 1 / est : 0);
	}
	store_close(s);
	return rc;
}
