/* capturer.c: stores filled by running the model (capturer.h). */
#include "capturer.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Rows of one stream of the batches being captured, shared by the jobs
 * that compress its chunks; freed by the last. */
typedef struct {
	uint8_t *rows;
	size_t bytes;
	int refs;
} rows_buf;

/* Chunks [c0, c1) of stream (kind, layer), from rows that start at row0. */
typedef struct job {
	struct job *next;
	rows_buf *b;
	int kind, layer;
	int64_t row0, c0, c1;
} job;

/* The threads that cut streams into chunks and compress them while the
 * model goes on (with the next layers, and the next batches).  At most
 * POOL_BYTES of rows wait or are being compressed (one stream more when a
 * stream alone is larger). */
#define POOL_BYTES ((size_t)1 << 30)
typedef struct {
	pthread_t *thr;
	int n;                  /* threads running; 0: compress on the caller's thread */
	pthread_mutex_t mu;
	pthread_cond_t cv;      /* a job queued, a job done, stop */
	job *head, *tail;
	int busy;               /* jobs being compressed */
	size_t bytes;           /* of the rows_bufs alive */
	bool stop;
	cltfs_err err;          /* the first failure, and its message */
	char msg[1024];
} pool;

struct capturer {
	cltfs_store *s;
	const cltfs_manifest *m;
	cap_load_opts lo;
	char *model_dir, *image_dir;
	cap_tokenizer *tok;  /* the checkpoint's, loaded at once: rows are checked against it */
	cap_config cfg;
	cap_model *model;    /* loaded on the first capture */
	store_writer *w;
	int hook;
	size_t row;          /* bytes of a row */
	uint8_t **sb;        /* [kind][layer]: the rows of the batches being captured */
	int64_t b0, b1;      /* the batches being captured: [b0, b1) */
	int64_t s0, s1;      /* their samples */
	int64_t row0, nrows; /* their rows */
	int64_t c0, c1;      /* their chunks */
	int64_t *soff;       /* each sample's first row, from row0 (s1 - s0 + 1 of them) */
	size_t soffcap;
	int64_t first;       /* the sample the current forward pass starts at */
	int fwd;             /* samples per forward pass */
	double load_s;       /* seconds the model took to load */
	uint64_t batches_run, rows_run;
	double run_s;        /* seconds in forward passes and store writes */
	uint64_t unloads;    /* times the model was freed while idle */
	int threads;         /* compression threads, 0: pool_start's choice */
	pool p;
};

/* The chunks of one job that the store lacks, compressed with z. */
static cltfs_err cut_chunks(capturer *c, const job *j, cltfs_zctx *z)
{
	const cltfs_manifest *m = c->m;
	cltfs_err e = CLTFS_OK;
	cltfs_rec rec;
	for (int64_t ch = j->c0; !e && ch < j->c1; ch++) {
		uint64_t key = cltfs_key((unsigned)j->kind, (unsigned)j->layer, (uint32_t)ch);
		size_t off = (size_t)(cltfs_manifest_chunk_start(m, ch) - j->row0) * c->row,
		       len = (size_t)cltfs_manifest_chunk_rows(m, ch) * c->row;
		if (!store_lookup(c->s, key, &rec))
			e = z ? store_writer_add_with(c->w, z, key, j->b->rows + off, len)
			      : store_writer_add(c->w, key, j->b->rows + off, len);
	}
	return e;
}

/* Drop a hold on rows; called with the pool's lock held. */
static void buf_release(pool *p, rows_buf *b)
{
	if (!--b->refs) {
		p->bytes -= b->bytes;
		free(b->rows);
		free(b);
	}
}

static void *pool_main(void *arg)
{
	capturer *c = arg;
	pool *p = &c->p;
	cltfs_zctx *z = cltfs_zctx_new();
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->head && !p->stop)
			pthread_cond_wait(&p->cv, &p->mu);
		job *j = p->head;
		if (!j) /* stopped, and nothing left */
			break;
		if (!(p->head = j->next))
			p->tail = NULL;
		p->busy++;
		pthread_mutex_unlock(&p->mu);
		cltfs_err e = p->err ? CLTFS_OK /* failing already: the rest is dropped */
			      : z ? cut_chunks(c, j, z) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		pthread_mutex_lock(&p->mu);
		if (e && !p->err) {
			p->err = e;
			snprintf(p->msg, sizeof p->msg, "%s", cltfs_errmsg());
		}
		p->busy--;
		buf_release(p, j->b);
		free(j);
		pthread_cond_broadcast(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
	cltfs_zctx_free(z);
	return NULL;
}

/* Threads for the pool: as many as the CPUs on a GPU (compression is what
 * bounds a GPU capture), one on the CPU (the model has the rest).  Started
 * on the first capture: a mount forks after capturer_new. */
static void pool_start(capturer *c, bool gpu)
{
	pool *p = &c->p;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int want = c->threads ? c->threads : !gpu ? 1 : cpus < 1 ? 1 : cpus > 64 ? 64 : (int)cpus;
	if (p->thr || !(p->thr = calloc((size_t)want, sizeof *p->thr)))
		return;
	while (p->n < want && !pthread_create(&p->thr[p->n], NULL, pool_main, c))
		p->n++;
}

/* The pool's first failure since the last call, as this thread's. */
static cltfs_err pool_error(pool *p)
{
	cltfs_err e = p->err;
	if (e)
		cltfs_fail(e, "%s", p->msg);
	p->err = CLTFS_OK;
	return e;
}

/* Wait until every job is done: what was captured is in the writer. */
static cltfs_err pool_wait(pool *p)
{
	if (!p->n)
		return CLTFS_OK;
	pthread_mutex_lock(&p->mu);
	while (p->head || p->busy)
		pthread_cond_wait(&p->cv, &p->mu);
	cltfs_err e = pool_error(p);
	pthread_mutex_unlock(&p->mu);
	return e;
}

static void pool_stop(pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n; i++) /* they finish the queue first */
		pthread_join(p->thr[i], NULL);
	free(p->thr);
	p->thr = NULL;
	p->n = 0;
	p->stop = false;
}

/* One whole stream of the batches being captured (rows is taken over):
 * its chunks in pieces for the pool, or compressed here without one. */
static cltfs_err submit(capturer *c, int kind, int layer, uint8_t *rows)
{
	pool *p = &c->p;
	rows_buf *b = malloc(sizeof *b);
	if (!b) {
		free(rows);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	*b = (rows_buf){rows, (size_t)c->nrows * c->row, 1};
	job one = {NULL, b, kind, layer, c->row0, c->c0, c->c1};
	if (!p->n) {
		cltfs_err e = cut_chunks(c, &one, NULL);
		free(rows);
		free(b);
		return e;
	}
	/* about four pieces a thread, so that threads finishing early help */
	int64_t n = c->c1 - c->c0, per = (n + 4 * p->n - 1) / (4 * p->n);
	pthread_mutex_lock(&p->mu);
	while (p->bytes && p->bytes + b->bytes > POOL_BYTES && !p->err)
		pthread_cond_wait(&p->cv, &p->mu);
	cltfs_err e = pool_error(p);
	p->bytes += b->bytes;
	for (int64_t a = c->c0; !e && a < c->c1; a += per) {
		job *j = malloc(sizeof *j);
		if (!j) {
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			break;
		}
		*j = one;
		j->c0 = a;
		j->c1 = a + per < c->c1 ? a + per : c->c1;
		b->refs++;
		if (p->tail)
			p->tail->next = j;
		else
			p->head = j;
		p->tail = j;
	}
	buf_release(p, b); /* the submitter's hold */
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return e;
}

/* What a capture needs, checked before any model runs. */
static cltfs_err check_sources(capturer *c)
{
	struct stat st;
	cltfs_err e = cap_config_load(c->model_dir, &c->cfg);
	if (e)
		return e;
	if (c->cfg.n_layers != c->m->n_layers || c->cfg.d_model != c->m->d_model)
		return cltfs_fail(CLTFS_E_MISMATCH, "%s: %d layers x %d, but the store was made for %d x %d",
				  c->model_dir, c->cfg.n_layers, c->cfg.d_model, c->m->n_layers, c->m->d_model);
	if ((e = cap_tokenizer_load(c->model_dir, &c->tok)))
		return e;
	if (stat(c->image_dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return cltfs_fail(CLTFS_E_NOTFOUND, "image folder %s: %s", c->image_dir,
				  errno && !S_ISDIR(st.st_mode) ? strerror(errno) : "not a directory");
	return cap_device_check(c->lo.device);
}

cltfs_err capturer_new(cltfs_store *s, const capture_cfg *cfg, const char *tag, capturer **out)
{
	const cltfs_manifest *m = store_manifest(s);
	if (!m->source_kind || strcmp(m->source_kind, "capture") || !m->source_path || !m->source_images)
		return cltfs_fail(CLTFS_E_INVAL, "%s: not a store made by `cltfs init` (nothing to capture from)",
				  store_dir(s));
	capturer *c = calloc(1, sizeof *c);
	if (!c || !(c->sb = calloc(2 * (size_t)m->n_layers, sizeof *c->sb)) ||
	    !(c->model_dir = strdup(cfg->model ? cfg->model : m->source_path)) ||
	    !(c->image_dir = strdup(cfg->images ? cfg->images : m->source_images))) {
		capturer_free(c);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	c->s = s;
	c->m = m;
	pthread_mutex_init(&c->p.mu, NULL);
	pthread_cond_init(&c->p.cv, NULL);
	c->lo = cfg->load;
	c->threads = cfg->compress_threads;
	c->lo.dir = c->model_dir;
	c->hook = cap_hook_parse(m->input_hook);
	c->row = (size_t)m->d_model * cltfs_dtype_size(m->dtype);
	cltfs_err e = check_sources(c);
	if (!e)
		e = store_writer_open(s, tag, &c->w);
	if (e) {
		capturer_free(c);
		return e;
	}
	*out = c;
	return CLTFS_OK;
}

void capturer_free(capturer *c)
{
	if (!c)
		return;
	if (c->m) { /* the queue goes into the writer, then the writer syncs */
		pool_stop(&c->p);
		if (pool_error(&c->p))
			cltfs_log("%s", cltfs_errmsg());
		pthread_mutex_destroy(&c->p.mu);
		pthread_cond_destroy(&c->p.cv);
	}
	if (c->w && store_writer_close(c->w))
		cltfs_log("%s", cltfs_errmsg());
	for (int i = 0; c->sb && i < 2 * c->m->n_layers; i++)
		free(c->sb[i]);
	free(c->sb);
	cap_model_free(c->model);
	cap_tokenizer_free(c->tok);
	free(c->model_dir);
	free(c->image_dir);
	free(c->soff);
	free(c);
}

bool capture_batch_stored(cltfs_store *s, int64_t b)
{
	const cltfs_manifest *m = store_manifest(s);
	cltfs_batch bt = cltfs_manifest_batch(m, b);
	cltfs_rec rec;
	for (int kind = 0; kind < 2; kind++)
		for (int L = 0; L < m->n_layers; L++)
			for (int64_t k = 0; cltfs_manifest_has_stream(m, (unsigned)kind, L) && k < bt.chunks; k++)
				if (!store_lookup(s, cltfs_key((unsigned)kind, (unsigned)L, (uint32_t)(bt.first_chunk + k)), &rec))
					return false;
	return true;
}

bool capturer_batch_stored(capturer *c, int64_t b)
{
	return capture_batch_stored(c->s, b);
}

/* The rows of one stream for sample i of the forward pass: into the
 * stream's buffer at the sample's place; after the last sample of the
 * batches, cut into chunks and appended. */
static cltfs_err emit(void *arg, size_t i, int kind, int layer, const void *rows, int64_t nrows)
{
	capturer *c = arg;
	const cltfs_manifest *m = c->m;
	int64_t si = c->first + (int64_t)i;
	if (!cltfs_manifest_has_stream(m, (unsigned)kind, layer))
		return CLTFS_OK;
	int64_t want = si < c->s1 ? cltfs_manifest_sample_rows(m, si) : -1;
	if (nrows != want)
		return cltfs_fail(CLTFS_E_MISMATCH, "the model gave %lld rows for a sample of %lld", (long long)nrows,
				  (long long)want);
	uint8_t **sb = &c->sb[kind * m->n_layers + layer];
	if (!*sb && !(*sb = malloc((size_t)c->nrows * c->row)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory for batch %lld", (long long)c->b0);
	memcpy(*sb + (size_t)c->soff[si - c->s0] * c->row, rows, (size_t)nrows * c->row);
	if (si + 1 < c->s1)
		return CLTFS_OK;
	uint8_t *whole = *sb;
	*sb = NULL;
	return submit(c, kind, layer, whole);
}

cltfs_err capturer_load(capturer *c)
{
	if (c->model)
		return CLTFS_OK;
	double t0 = cltfs_now();
	cltfs_err e = cap_model_load(&c->lo, &c->model);
	c->load_s = cltfs_now() - t0;
	if (e)
		return e;
	/* One sample at a time on the CPU (no gain from padding there); on a
	 * GPU what its free memory holds of samples this long; unless asked. */
	int64_t S = c->m->batch_samples > 0 ? c->m->batch_samples : 1;
	c->fwd = c->lo.batch > 0 ? c->lo.batch : cap_model_batch(c->model, (c->m->max_batch_rows + S - 1) / S);
	pool_start(c, strcmp(cap_model_device(c->model), "cpu") != 0);
	if (c->fwd > 64)
		c->fwd = 64;
	const cap_config *cfg = cap_model_config(c->model);
	if (cfg->n_layers != c->m->n_layers || cfg->d_model != c->m->d_model) {
		cap_model_free(c->model);
		c->model = NULL;
		return cltfs_fail(CLTFS_E_MISMATCH, "%s: %d layers x %d, but the store was made for %d x %d", c->lo.dir,
				  cfg->n_layers, cfg->d_model, c->m->n_layers, c->m->d_model);
	}
	return CLTFS_OK;
}

/* The model's input for sample si: its rows must be what init counted.
 * *strings holds the sample's id (its first string), image and text, which
 * s points into; the caller frees it after the forward pass. */
static cltfs_err prepare(capturer *c, int64_t si, cap_sample *s, char *img, size_t imgn, char **strings)
{
	const char *id, *image, *text;
	cltfs_err e = cltfs_manifest_sample_text(c->m, si, strings, &id, &image, &text);
	if (e)
		return e;
	int64_t want = cltfs_manifest_sample_rows(c->m, si);
	char *prompt = cap_prompt(c->m->prompt_template, text);
	int32_t *ids = NULL;
	size_t n = 0;
	e = prompt ? cap_tokenize(c->tok, prompt, &ids, &n) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	free(prompt);
	if (!e && cap_rows(&c->cfg, ids, n) != want)
		e = cltfs_fail(CLTFS_E_MISMATCH, "sample %s: the tokenizer gives %lld rows, the manifest %lld: the "
			       "checkpoint's tokenizer changed since `cltfs init`", id,
			       (long long)cap_rows(&c->cfg, ids, n), (long long)want);
	snprintf(img, imgn, "%s/%s", c->image_dir, image);
	*s = (cap_sample){ids, n, *image ? img : NULL};
	return e ? cltfs_wrap(e, "sample %s", id) : CLTFS_OK;
}

/* Samples [first, first+n) in one forward pass. */
static cltfs_err run_samples(capturer *c, int64_t first, int n)
{
	cap_sample s[64] = {{0}};
	char *strings[64] = {0};
	char (*img)[PATH_MAX] = malloc((size_t)n * sizeof *img);
	cltfs_err e = img ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int k = 0; !e && k < n; k++)
		e = prepare(c, first + k, &s[k], img[k], sizeof img[k], &strings[k]);
	c->first = first;
	if (!e)
		e = cap_forward(c->model, s, (size_t)n, c->hook, c->m->dtype, emit, c);
	if (e && n == 1 && strings[0] && !strstr(cltfs_errmsg(), "sample "))
		e = cltfs_wrap(e, "sample %s", strings[0]); /* the id is the first string */
	for (int k = 0; k < n; k++) {
		free((void *)s[k].ids);
		free(strings[k]);
	}
	free(img);
	return e;
}

/* Where batches [b0, b1) lie: their samples, rows, chunks, and each
 * sample's place in the streams' buffers. */
static cltfs_err place(capturer *c, int64_t b0, int64_t b1)
{
	cltfs_batch first = cltfs_manifest_batch(c->m, b0), last = cltfs_manifest_batch(c->m, b1 - 1);
	c->b0 = b0;
	c->b1 = b1;
	c->s0 = first.first_sample;
	c->s1 = last.first_sample + last.samples;
	c->row0 = first.first_row;
	c->nrows = last.first_row + last.rows - c->row0;
	c->c0 = first.first_chunk;
	c->c1 = last.first_chunk + last.chunks;
	if (!cltfs_reserve(&c->soff, &c->soffcap, (size_t)(c->s1 - c->s0 + 1) * sizeof *c->soff))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	c->soff[0] = 0;
	for (int64_t i = c->s0; i < c->s1; i++)
		c->soff[i - c->s0 + 1] = c->soff[i - c->s0] + cltfs_manifest_sample_rows(c->m, i);
	return CLTFS_OK;
}

/* Batches [b0, b1): their samples, fwd at a time through the model. */
cltfs_err capturer_run(capturer *c, int64_t b0, int64_t b1, bool durable)
{
	cltfs_err e = capturer_load(c);
	const cltfs_manifest *m = c->m;
	double t0 = cltfs_now();
	if (!e)
		e = place(c, b0, b1);
	for (int64_t si = c->s0; !e && si < c->s1; si += c->fwd)
		e = run_samples(c, si, (int)(c->s1 - si < c->fwd ? c->s1 - si : c->fwd));
	for (int i = 0; i < 2 * m->n_layers; i++) { /* a failed pass leaves no rows behind */
		free(c->sb[i]);
		c->sb[i] = NULL;
	}
	/* Whatever chunks were added are right (a failure stops before a
	 * stream is cut into chunks, and a chunk is whole rows the model
	 * made): they stay pending with the earlier batches' and are kept.
	 * Durable: the pool's queue first, then the sync; else a failure of
	 * the pool so far is this call's. */
	if (!e && durable && !(e = pool_wait(&c->p)))
		e = store_writer_sync(c->w);
	if (!e && !durable && c->p.n) {
		pthread_mutex_lock(&c->p.mu);
		e = pool_error(&c->p);
		pthread_mutex_unlock(&c->p.mu);
	}
	if (!e) {
		c->batches_run += (uint64_t)(b1 - b0);
		c->rows_run += (uint64_t)c->nrows;
		c->run_s += cltfs_now() - t0;
	}
	return e;
}

cltfs_err capturer_rotate(capturer *c, const char *tag)
{
	cltfs_err e = pool_wait(&c->p);
	store_writer *w = c->w;
	if (!e) {
		c->w = NULL; /* closed even when its sync fails: its records stay unwritten, batches are captured again */
		e = store_writer_close(w);
	}
	if (!e && tag)
		e = store_writer_open(c->s, tag, &c->w);
	return e;
}

const char *capturer_writer(const capturer *c) { return c->w ? store_writer_name(c->w) : ""; }

cltfs_err capturer_unload(capturer *c)
{
	if (!c->model)
		return CLTFS_OK;
	pool_stop(&c->p);
	cltfs_err e = pool_error(&c->p);
	if (!e)
		e = store_writer_sync(c->w);
	cap_model_free(c->model);
	c->model = NULL;
	c->unloads++;
	return e;
}

void capturer_get_stats(capturer *c, capturer_stats *out)
{
	*out = (capturer_stats){c->batches_run, c->rows_run, c->run_s, c->load_s, c->model ? c->fwd : 0,
				c->model ? cap_model_device(c->model) : NULL, c->model ? cap_model_dtype(c->model) : NULL};
}

/* ---- the capture tier ----
 *
 * A miss captures the chunk's batch; then a thread of the tier's own
 * captures the next `ahead` batches, so that a reader going through the
 * batches in order finds each one stored (or in the making) when it gets
 * there.  The thread starts with the first miss (after a mount's fork). */

typedef struct {
	cltfs_tier base;
	capturer *c;
	pthread_mutex_t mu;       /* the model runs one batch at a time; guards c */
	pthread_mutex_t amu;      /* guards what follows */
	pthread_cond_t acv;
	int64_t next, end;        /* batches to capture ahead: [next, end) */
	int ahead;                /* how many batches past a miss */
	cltfs_tier *const *before; /* tiers asked before this one */
	int nbefore;
	bool stop, started;
	pthread_t thr;
	uint64_t ahead_runs;      /* batches the thread captured */
	int idle_s;               /* free the model after this long unused (0: never) */
	double last_use;          /* when a capture last ran (guarded by amu) */
	bool idler;               /* the idle thread runs */
	bool idle_thr_joinable;   /* idle_thr was started and not joined */
	pthread_cond_t icv;       /* wakes the idle thread: stop */
	pthread_t idle_thr;
} capture_tier;

/* The model stays loaded while captures come; after idle_s seconds
 * without one it is freed (a GPU's memory back to others), and the next
 * miss loads it again. */
static void *idle_main(void *arg)
{
	capture_tier *ct = arg;
	pthread_mutex_lock(&ct->amu);
	while (!ct->stop) {
		double due = ct->last_use + ct->idle_s;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		double wait = due - cltfs_now();
		if (wait > 0) {
			double at = (double)ts.tv_sec + ts.tv_nsec / 1e9 + wait;
			ts.tv_sec = (time_t)at;
			ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
			pthread_cond_timedwait(&ct->icv, &ct->amu, &ts);
			continue;
		}
		pthread_mutex_unlock(&ct->amu);
		pthread_mutex_lock(&ct->mu);
		pthread_mutex_lock(&ct->amu);
		bool idle = cltfs_now() >= ct->last_use + ct->idle_s;
		pthread_mutex_unlock(&ct->amu);
		if (idle && capturer_unload(ct->c))
			cltfs_log("freeing the idle model: %s", cltfs_errmsg());
		else if (idle)
			cltfs_log("capture: the model was idle for %d s: freed until the next miss", ct->idle_s);
		pthread_mutex_unlock(&ct->mu);
		pthread_mutex_lock(&ct->amu);
		if (idle) /* until the next capture starts this thread again */
			break;
	}
	ct->idler = false;
	pthread_mutex_unlock(&ct->amu);
	return NULL;
}

/* A capture ran: the idle clock starts over (and its thread, if needed). */
static void used(capture_tier *ct)
{
	if (!ct->idle_s)
		return;
	pthread_mutex_lock(&ct->amu);
	ct->last_use = cltfs_now();
	if (!ct->idler && !ct->stop) {
		if (ct->idle_thr_joinable) /* the last one ended: reap it */
			pthread_join(ct->idle_thr, NULL);
		ct->idle_thr_joinable = ct->idler = !pthread_create(&ct->idle_thr, NULL, idle_main, ct);
	}
	pthread_mutex_unlock(&ct->amu);
}

/* Another process may be capturing the same batch: its lock file makes
 * this one wait, then find the chunks in the store. */
static int lock_batch(capturer *c, int64_t b)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/locks", store_dir(c->s));
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/locks/batch-%lld.lock", store_dir(c->s), (long long)b);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	while (fd >= 0 && flock(fd, LOCK_EX) < 0 && errno == EINTR)
		;
	return fd;
}

/* Batch b in the store, captured unless it is there already; *ran says
 * whether this call ran the model. */
static cltfs_err capture_one(capture_tier *ct, int64_t b, bool *ran)
{
	capturer *c = ct->c;
	*ran = false;
	if (capturer_batch_stored(c, b)) /* the common case ahead of a reader: nothing to lock */
		return CLTFS_OK;
	pthread_mutex_lock(&ct->mu);
	int fd = lock_batch(c, b);
	store_rescan(c->s);
	*ran = !capturer_batch_stored(c, b);
	/* durable before the lock goes: another process waits to read it */
	cltfs_err e = *ran ? capturer_run(c, b, b + 1, true) : CLTFS_OK;
	if (fd >= 0)
		close(fd);
	pthread_mutex_unlock(&ct->mu);
	if (*ran)
		used(ct);
	return e;
}

/* Can batch b come from the store or an earlier tier (the Hub) without
 * the model? */
static bool available(capture_tier *ct, int64_t b)
{
	const cltfs_manifest *m = ct->c->m;
	cltfs_batch bt = cltfs_manifest_batch(m, b);
	cltfs_rec rec;
	for (int kind = 0; kind < 2; kind++)
		for (int L = 0; L < m->n_layers; L++)
			for (int64_t k = 0; cltfs_manifest_has_stream(m, (unsigned)kind, L) && k < bt.chunks; k++) {
				uint64_t key = cltfs_key((unsigned)kind, (unsigned)L, (uint32_t)(bt.first_chunk + k));
				bool has = store_lookup(ct->c->s, key, &rec);
				for (int i = 0; !has && i < ct->nbefore; i++)
					has = ct->before[i]->lookup && ct->before[i]->lookup(ct->before[i], key, &rec);
				if (!has)
					return false;
			}
	return true;
}

static void *ahead_main(void *arg)
{
	capture_tier *ct = arg;
	pthread_mutex_lock(&ct->amu);
	for (;;) {
		while (!ct->stop && ct->next >= ct->end)
			pthread_cond_wait(&ct->acv, &ct->amu);
		if (ct->stop)
			break;
		int64_t b = ct->next++;
		pthread_mutex_unlock(&ct->amu);
		bool ran = false;
		if (!available(ct, b) && capture_one(ct, b, &ran)) /* a reader of it will fail with the cause */
			cltfs_log("capturing batch %lld ahead: %s", (long long)b, cltfs_errmsg());
		pthread_mutex_lock(&ct->amu);
		ct->ahead_runs += ran;
	}
	pthread_mutex_unlock(&ct->amu);
	return NULL;
}

/* After batch b was read: capture the `ahead` batches that follow it. */
static void want_ahead(capture_tier *ct, int64_t b)
{
	if (!ct->ahead)
		return;
	pthread_mutex_lock(&ct->amu);
	int64_t end = b + 1 + ct->ahead < ct->c->m->n_batches ? b + 1 + ct->ahead : ct->c->m->n_batches;
	if (end == ct->end && ct->next >= b + 1) { /* asked already: every chunk of a batch hints */
		pthread_mutex_unlock(&ct->amu);
		return;
	}
	if (ct->next < b + 1 || ct->next > end) /* a reader elsewhere: start over from it */
		ct->next = b + 1;
	ct->end = end;
	if (!ct->started && !ct->stop && !pthread_create(&ct->thr, NULL, ahead_main, ct))
		ct->started = true;
	pthread_cond_signal(&ct->acv);
	pthread_mutex_unlock(&ct->amu);
}

/* Any chunk read: the batches after its own are wanted next. */
static void tier_hint(cltfs_tier *t, uint64_t key)
{
	capture_tier *ct = (capture_tier *)t;
	want_ahead(ct, cltfs_manifest_batch_of_chunk(ct->c->m, cltfs_key_chunk(key)));
}

static cltfs_err tier_load(cltfs_tier *t, uint64_t key, cltfs_zctx *z, uint8_t *dst, size_t len, cltfs_rec *rec)
{
	capture_tier *ct = (capture_tier *)t;
	capturer *c = ct->c;
	int64_t b = cltfs_manifest_batch_of_chunk(c->m, cltfs_key_chunk(key));
	bool ran;
	cltfs_err e = store_lookup(c->s, key, rec) ? CLTFS_OK : capture_one(ct, b, &ran);
	char k[48];
	if (!e && !store_lookup(c->s, key, rec))
		e = cltfs_fail(CLTFS_E_IO, "chunk %s: not in the store after capturing batch %lld",
			       cltfs_key_str(key, k, sizeof k), (long long)b);
	if (!e && rec->rsize != len)
		e = cltfs_fail(CLTFS_E_CORRUPT, "chunk %s: %u bytes, not %zu", cltfs_key_str(key, k, sizeof k),
			       rec->rsize, len);
	return e ? e : store_read_chunk(c->s, rec, z, dst);
}

static void tier_stats(cltfs_tier *t, char *buf, size_t n)
{
	capture_tier *ct = (capture_tier *)t;
	pthread_mutex_lock(&ct->amu);
	unsigned long long ahead = ct->ahead_runs;
	pthread_mutex_unlock(&ct->amu);
	if (pthread_mutex_trylock(&ct->mu)) { /* a capture is running: do not wait for it */
		snprintf(buf, n, "{\"capturing\": true, \"ahead_batches\": %llu}", ahead);
		return;
	}
	capturer *c = ct->c;
	snprintf(buf, n, "{\"batches\": %llu, \"ahead_batches\": %llu, \"rows\": %llu, \"seconds\": %.3f, "
		 "\"model_load_seconds\": %.3f, \"device\": \"%s\", \"model_unloads\": %llu}",
		 (unsigned long long)c->batches_run, ahead, (unsigned long long)c->rows_run, c->run_s, c->load_s,
		 c->model ? cap_model_device(c->model) : "not loaded", (unsigned long long)c->unloads);
	pthread_mutex_unlock(&ct->mu);
}

static void tier_free(cltfs_tier *t)
{
	capture_tier *ct = (capture_tier *)t;
	pthread_mutex_lock(&ct->amu);
	ct->stop = true;
	pthread_cond_signal(&ct->acv);
	pthread_cond_signal(&ct->icv);
	pthread_mutex_unlock(&ct->amu);
	if (ct->started) /* a batch being captured ahead is finished first */
		pthread_join(ct->thr, NULL);
	if (ct->idle_thr_joinable)
		pthread_join(ct->idle_thr, NULL);
	capturer_free(ct->c);
	pthread_mutex_destroy(&ct->mu);
	pthread_mutex_destroy(&ct->amu);
	pthread_cond_destroy(&ct->acv);
	pthread_cond_destroy(&ct->icv);
	free(ct);
}

cltfs_err capture_tier_open(cltfs_store *s, const capture_cfg *cfg, cltfs_tier **out)
{
	capture_tier *t = calloc(1, sizeof *t);
	if (!t)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err e = capturer_new(s, cfg, "capture", &t->c);
	if (e) {
		free(t);
		return e;
	}
	t->base = (cltfs_tier){"capture", tier_load, NULL, tier_hint, tier_stats, tier_free};
	t->ahead = cfg->ahead;
	t->idle_s = cfg->idle_s;
	t->before = cfg->before;
	t->nbefore = cfg->nbefore;
	pthread_mutex_init(&t->mu, NULL);
	pthread_mutex_init(&t->amu, NULL);
	pthread_cond_init(&t->acv, NULL);
	pthread_cond_init(&t->icv, NULL);
	*out = &t->base;
	return CLTFS_OK;
}
