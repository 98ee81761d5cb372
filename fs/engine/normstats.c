/* normstats.c: per-dimension mean and standard deviation of every stream.
 *
 * One pass: each thread takes a whole stream (x@L or mlp@L) at a time and
 * walks its chunks in order.  A chunk's rows are summed twice in float64
 * (its mean, then the squared deviations from it), and the chunk is merged
 * into the stream's running (count, mean, M2) with Chan et al.'s pairwise
 * update: one sum of squares over 10^9 rows would lose the digits the
 * README promises (1e-6 relative against numpy).  Chunks are read through
 * fs_load_stored, not the chunk cache: the pass would evict what a trainer
 * reads, and it must see the stored dtype whatever -o dtype says.
 */
#include "normstats.h"

#include "engine_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FORMAT "cltfs-norm-stats/1"
#define FILE_NAME "norm_stats.json"

typedef struct {
	int kind, layer;
	int64_t n;          /* rows merged */
	double *mean, *m2;  /* d each */
} stream_acc;

typedef struct {
	cltfs_fs *fs;
	stream_acc *st;
	int nst;
	atomic_int next;            /* the next stream to take */
	atomic_ullong done;         /* chunks merged, all streams */
	atomic_bool failed;
	pthread_mutex_t mu;         /* guards err, msg, running */
	pthread_cond_t cv;
	cltfs_err err;
	char msg[512];
	int running;
} pass;

/* ---- the pass ---- */

static void fail_pass(pass *p, cltfs_err e)
{
	pthread_mutex_lock(&p->mu);
	if (!p->err) {
		p->err = e;
		snprintf(p->msg, sizeof p->msg, "%s", cltfs_errmsg());
	}
	atomic_store(&p->failed, true);
	pthread_mutex_unlock(&p->mu);
}

/* Merge one chunk of rows x rows [rows, d] (float32) into a. */
static void merge_chunk(stream_acc *a, const float *x, int64_t rows, int64_t d, double *cm, double *cm2)
{
	for (int64_t j = 0; j < d; j++)
		cm[j] = cm2[j] = 0;
	for (int64_t r = 0; r < rows; r++)
		for (int64_t j = 0; j < d; j++)
			cm[j] += x[r * d + j];
	for (int64_t j = 0; j < d; j++)
		cm[j] /= (double)rows;
	for (int64_t r = 0; r < rows; r++)
		for (int64_t j = 0; j < d; j++) {
			double dev = x[r * d + j] - cm[j];
			cm2[j] += dev * dev;
		}
	double na = (double)a->n, nb = (double)rows, n = na + nb;
	for (int64_t j = 0; j < d; j++) {
		double delta = cm[j] - a->mean[j];
		a->mean[j] += delta * nb / n;
		a->m2[j] += cm2[j] + delta * delta * na * nb / n;
	}
	a->n += rows;
}

/* One stream, chunk by chunk. */
static cltfs_err run_stream(pass *p, stream_acc *a, cltfs_zctx *z, uint8_t *raw, float *f, double *cm, double *cm2)
{
	cltfs_fs *fs = p->fs;
	const cltfs_manifest *m = fs->m;
	for (int64_t c = 0; c < m->n_chunks && !atomic_load(&p->failed); c++) {
		cltfs_rec rec;
		cltfs_err e = fs_load_stored(fs, cltfs_key((unsigned)a->kind, (unsigned)a->layer, (uint32_t)c), z, raw, &rec);
		if (e)
			return e;
		int64_t rows = cltfs_manifest_chunk_rows(m, c);
		cltfs_convert(CLTFS_F32, f, fs->in_dt, raw, (size_t)(rows * m->d_model));
		merge_chunk(a, f, rows, m->d_model, cm, cm2);
		atomic_fetch_add(&p->done, 1);
	}
	return CLTFS_OK;
}

static void *worker(void *arg)
{
	pass *p = arg;
	const cltfs_manifest *m = p->fs->m;
	size_t d = (size_t)m->d_model;
	size_t rows = (size_t)(m->chunk_rows < m->max_batch_rows ? m->chunk_rows : m->max_batch_rows);
	cltfs_zctx *z = cltfs_zctx_new();
	uint8_t *raw = malloc(rows * d * cltfs_dtype_size(p->fs->in_dt));
	float *f = malloc(rows * d * sizeof *f);
	double *cm = malloc(d * sizeof *cm), *cm2 = malloc(d * sizeof *cm2);
	if (!z || !raw || !f || !cm || !cm2)
		fail_pass(p, cltfs_fail(CLTFS_E_NOMEM, "out of memory for the statistics' buffers"));
	for (int i; !atomic_load(&p->failed) && (i = atomic_fetch_add(&p->next, 1)) < p->nst;) {
		cltfs_err e = run_stream(p, &p->st[i], z, raw, f, cm, cm2);
		if (e)
			fail_pass(p, e);
	}
	cltfs_zctx_free(z);
	free(raw);
	free(f);
	free(cm);
	free(cm2);
	pthread_mutex_lock(&p->mu);
	p->running--;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static cltfs_err new_streams(pass *p)
{
	const cltfs_manifest *m = p->fs->m;
	p->nst = m->n_x_layers + m->n_mlp_layers;
	if (!(p->st = calloc((size_t)p->nst, sizeof *p->st)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int i = 0; i < p->nst; i++) {
		stream_acc *a = &p->st[i];
		bool x = i < m->n_x_layers;
		a->kind = x ? CLTFS_STREAM_X : CLTFS_STREAM_MLP;
		a->layer = x ? m->x_layers[i] : m->mlp_layers[i - m->n_x_layers];
		a->mean = calloc((size_t)m->d_model, sizeof *a->mean);
		a->m2 = calloc((size_t)m->d_model, sizeof *a->m2);
		if (!a->mean || !a->m2)
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	return CLTFS_OK;
}

static void free_streams(pass *p)
{
	for (int i = 0; p->st && i < p->nst; i++) {
		free(p->st[i].mean);
		free(p->st[i].m2);
	}
	free(p->st);
}

/* Start the threads and wait for them, calling cb about once a second. */
static cltfs_err run_pass(pass *p, normstats_progress cb, void *arg)
{
	uint64_t total = (uint64_t)p->nst * (uint64_t)p->fs->m->n_chunks;
	int want = fs_cpus();
	pthread_t thr[RA_MAX_THREADS];
	int started = 0;
	pthread_mutex_lock(&p->mu);
	for (; started < want; started++, p->running++)
		if (pthread_create(&thr[started], NULL, worker, p))
			break;
	if (!started) {
		pthread_mutex_unlock(&p->mu);
		return cltfs_fail(CLTFS_E_NOMEM, "cannot start a thread for the statistics");
	}
	while (p->running) {
		struct timespec t;
		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_sec += 1;
		pthread_cond_timedwait(&p->cv, &p->mu, &t);
		if (cb && p->running) {
			pthread_mutex_unlock(&p->mu);
			cb(arg, atomic_load(&p->done), total);
			pthread_mutex_lock(&p->mu);
		}
	}
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < started; i++)
		pthread_join(thr[i], NULL);
	if (p->err)
		return cltfs_fail(p->err, "%s", p->msg);
	if (cb)
		cb(arg, total, total);
	return CLTFS_OK;
}

/* ---- the text ---- */

/* A number JSON can carry: non-finite values (a stream with inf in it)
 * become null. */
static void put_num(sbuf *b, double v)
{
	if (isfinite(v))
		sbuf_put(b, "%.17g", v);
	else
		sbuf_put(b, "null");
}

static void put_stream(sbuf *b, const stream_acc *a, int64_t d)
{
	double all_mean = 0, all_m2 = 0;
	for (int64_t j = 0; j < d; j++)
		all_mean += a->mean[j];
	all_mean /= (double)d;
	/* every dimension has n values: the M2 of all of them is theirs plus
	 * the spread of their means */
	for (int64_t j = 0; j < d; j++)
		all_m2 += a->m2[j] + (double)a->n * (a->mean[j] - all_mean) * (a->mean[j] - all_mean);
	sbuf_put(b, "{\"count\": %lld, \"mean\": ", (long long)a->n);
	put_num(b, all_mean);
	sbuf_put(b, ", \"std\": ");
	put_num(b, sqrt(all_m2 / ((double)a->n * (double)d)));
	sbuf_put(b, ",\n    \"mean_per_dim\": [");
	for (int64_t j = 0; j < d; j++) {
		sbuf_put(b, j ? ", " : "");
		put_num(b, a->mean[j]);
	}
	sbuf_put(b, "],\n    \"std_per_dim\": [");
	for (int64_t j = 0; j < d; j++) {
		sbuf_put(b, j ? ", " : "");
		put_num(b, sqrt(a->m2[j] / (double)a->n));
	}
	sbuf_put(b, "]}");
}

static const stream_acc *find_stream(const pass *p, int kind, int layer)
{
	for (int i = 0; i < p->nst; i++)
		if (p->st[i].kind == kind && p->st[i].layer == layer)
			return &p->st[i];
	return NULL;
}

/* {"format", "manifest_crc32", ..., "layers": {"L": {"x": .., "mlp": ..}},
 *  "crc32"}: the last field is the CRC-32 of every byte before it. */
static cltfs_err render(cltfs_fs *fs, const pass *p, uint32_t tag, char **json, size_t *len)
{
	const cltfs_manifest *m = fs->m;
	sbuf b = {0};
	sbuf_put(&b, "{\"format\": \"" FORMAT "\", \"manifest_crc32\": \"%08x\",\n"
		" \"dtype\": \"%s\", \"d_model\": %d, \"rows\": %lld, \"std\": \"population (ddof=0)\",\n"
		" \"layers\": {",
	    tag, cltfs_dtype_name(m->dtype), m->d_model, (long long)m->total_rows);
	int first = 1;
	for (int L = 0; L < m->n_layers; L++) {
		const stream_acc *x = find_stream(p, CLTFS_STREAM_X, L), *y = find_stream(p, CLTFS_STREAM_MLP, L);
		if (!x && !y)
			continue;
		sbuf_put(&b, "%s\n  \"%d\": {", first ? "" : ",", L);
		first = 0;
		if (x) {
			sbuf_put(&b, "\"x\": ");
			put_stream(&b, x, m->d_model);
		}
		if (y) {
			sbuf_put(&b, "%s\"mlp\": ", x ? ",\n   " : "");
			put_stream(&b, y, m->d_model);
		}
		sbuf_put(&b, "}");
	}
	sbuf_put(&b, "},\n ");
	size_t signed_len = b.n;
	sbuf_put(&b, "\"crc32\": \"%08x\"}\n", b.p ? cltfs_crc32(0, b.p, signed_len) : 0);
	if (b.oom) {
		free(b.p);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory for the statistics' text");
	}
	*json = b.p;
	*len = b.n;
	return CLTFS_OK;
}

cltfs_err normstats_compute(cltfs_fs *fs, normstats_progress cb, void *arg, char **json, size_t *len)
{
	pass p = {.fs = fs};
	pthread_mutex_init(&p.mu, NULL);
	pthread_cond_init(&p.cv, NULL);
	uint32_t tag = 0;
	cltfs_err e = fs_manifest_tag(fs, &tag);
	if (!e)
		e = new_streams(&p);
	if (!e)
		e = run_pass(&p, cb, arg);
	if (!e)
		e = render(fs, &p, tag, json, len);
	free_streams(&p);
	pthread_mutex_destroy(&p.mu);
	pthread_cond_destroy(&p.cv);
	return e;
}

/* ---- in the store ---- */

void normstats_path(cltfs_fs *fs, char *buf, size_t n) { snprintf(buf, n, "%s/" FILE_NAME, store_dir(fs->s)); }

/* An intact text of this manifest: its own CRC and the manifest's match. */
static bool intact(const char *t, size_t len, uint32_t tag, const char **why)
{
	static const char key[] = "\"crc32\": \"";
	char want[64];
	snprintf(want, sizeof want, "{\"format\": \"" FORMAT "\", \"manifest_crc32\": \"%08x\"", tag);
	if (len < sizeof key + 12 || strncmp(t, want, 20)) {
		*why = "not a " FORMAT " file";
		return false;
	}
	if (strncmp(t, want, strlen(want))) {
		*why = "computed for another manifest";
		return false;
	}
	size_t at = len - (sizeof key - 1) - 11; /* "crc32": "xxxxxxxx"}\n */
	unsigned crc;
	if (memcmp(t + at, key, sizeof key - 1) || sscanf(t + at + sizeof key - 1, "%8x", &crc) != 1 ||
	    memcmp(t + len - 3, "\"}\n", 3) || crc != cltfs_crc32(0, t, at)) {
		*why = "damaged (its CRC-32 does not match)";
		return false;
	}
	return true;
}

cltfs_err normstats_load(cltfs_fs *fs, char **json, size_t *len)
{
	char path[4096];
	normstats_path(fs, path, sizeof path);
	uint32_t tag;
	cltfs_err e = fs_manifest_tag(fs, &tag);
	if (e)
		return e;
	if ((e = cltfs_read_file(path, json, len)))
		return e == CLTFS_E_NOMEM ? e : cltfs_fail(CLTFS_E_NOTFOUND, "%s", cltfs_errmsg());
	const char *why;
	if (intact(*json, *len, tag, &why))
		return CLTFS_OK;
	free(*json);
	*json = NULL;
	return cltfs_fail(CLTFS_E_CORRUPT, "%s: %s", path, why);
}

cltfs_err normstats_save(cltfs_fs *fs, const char *json, size_t len)
{
	char path[4096];
	normstats_path(fs, path, sizeof path);
	return cltfs_write_atomic(path, json, len);
}

/* ---- for a mount ---- */

static void log_progress(void *arg, uint64_t done, uint64_t total)
{
	cltfs_fs *fs = arg;
	cltfs_log("norm_stats: %s: %llu of %llu chunks (%.0f%%)", store_dir(fs->s), (unsigned long long)done,
		  (unsigned long long)total, total ? 100.0 * (double)done / (double)total : 100.0);
}

/* ns_mu is held through a pass on purpose: a stat that answered size 0
 * meanwhile would make the kernel drop the size of the computing reader's
 * GETATTR (its attributes are newer), and that reader would read an empty
 * file (test_norm_stats_listing_during_pass). */
cltfs_err normstats_get(cltfs_fs *fs, bool compute, const char **json, size_t *len)
{
	pthread_mutex_lock(&fs->ns_mu);
	cltfs_err e = CLTFS_OK;
	if (!fs->ns_json && !fs->ns_tried) { /* the store's copy, once */
		fs->ns_tried = true;
		e = normstats_load(fs, &fs->ns_json, &fs->ns_len);
		if (e == CLTFS_E_CORRUPT)
			cltfs_log("norm_stats: not served: %s", cltfs_errmsg());
		if (e == CLTFS_E_NOTFOUND || e == CLTFS_E_CORRUPT)
			e = CLTFS_OK;
	}
	if (!e && !fs->ns_json && compute) {
		char path[4096];
		normstats_path(fs, path, sizeof path);
		/* written by `cltfs stats` since this mount looked? */
		e = normstats_load(fs, &fs->ns_json, &fs->ns_len);
		if (!e)
			goto out;
		cltfs_log("norm_stats: computing %s: one pass over every chunk", path);
		e = normstats_compute(fs, log_progress, fs, &fs->ns_json, &fs->ns_len);
		/* a store on read-only media still serves them, from memory */
		if (!e && normstats_save(fs, fs->ns_json, fs->ns_len))
			cltfs_log("norm_stats: not kept in the store: %s", cltfs_errmsg());
	}
out:
	*json = fs->ns_json;
	*len = fs->ns_json ? fs->ns_len : 0;
	pthread_mutex_unlock(&fs->ns_mu);
	return e;
}
