/* cltfs_fs.c: the filesystem object.
 *
 * How a chunk is found (fs_chunk): the chunk cache; on a miss, the loader
 * below asks the local store, then each tier in order (a tier that cannot
 * have the chunk says CLTFS_E_NOTFOUND and the next one is asked).  A
 * conversion (-o dtype=) is done as a chunk is loaded, so a converted
 * chunk is cached under its own key (the output dtype in bits 56..63) and
 * its CRC is computed once, there.
 *
 * Readahead: a sequential reader queues the chunks of the bytes ahead of
 * it; a thread per CPU (at least RA_TIER_THREADS when a tier may fetch over
 * the network) loads them into the cache, so that one reader keeps every
 * core decoding while the FUSE thread copies.
 */
#include <unistd.h>
#include "engine_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cltfs_store *fs_store(cltfs_fs *fs) { return fs->s; }

cltfs_err fs_manifest_tag(cltfs_fs *fs, uint32_t *tag)
{
	if (fs->have_tag) { /* read once, by fs_new: the manifest never changes under it */
		*tag = fs->tag;
		return CLTFS_OK;
	}
	char path[4096], *text;
	size_t len;
	snprintf(path, sizeof path, "%s/cltfs.json", store_dir(fs->s));
	cltfs_err e = cltfs_read_file(path, &text, &len);
	if (e)
		return e;
	*tag = cltfs_crc32(0, text, len);
	free(text);
	fs->tag = *tag;
	fs->have_tag = true;
	return CLTFS_OK;
}
cltfs_stats *fs_stats(cltfs_fs *fs) { return &fs->st; }
int fs_nlayers(const cltfs_fs *fs) { return fs->m->n_x_layers; }
int fs_layer(const cltfs_fs *fs, int i) { return fs->m->x_layers[i]; }
int64_t fs_nbatches(const cltfs_fs *fs) { return fs->ngroups; }
int64_t fs_nsamples(const cltfs_fs *fs) { return fs->m->n_samples; }

/* ---- per-thread state ---- */

typedef struct {
	cltfs_zctx *z;
	uint8_t *raw; /* a converted chunk's stored bytes */
	size_t cap;
	uint8_t *lit; /* a read's literal bytes */
	size_t litcap;
} thread_ctx;

static void free_thread(void *p)
{
	thread_ctx *t = p;
	if (t) {
		cltfs_zctx_free(t->z);
		free(t->raw);
		free(t->lit);
		free(t);
	}
}

static thread_ctx *thread_state(cltfs_fs *fs)
{
	thread_ctx *t = pthread_getspecific(fs->tkey);
	if (t)
		return t;
	if (!(t = calloc(1, sizeof *t)) || !(t->z = cltfs_zctx_new()) || pthread_setspecific(fs->tkey, t)) {
		free_thread(t);
		return NULL;
	}
	return t;
}

uint8_t *fs_literal_buf(cltfs_fs *fs, size_t n)
{
	thread_ctx *t = thread_state(fs);
	return t && cltfs_reserve(&t->lit, &t->litcap, n) ? t->lit : NULL;
}

/* ---- loading a chunk ---- */

#define KEY_MASK ((UINT64_C(1) << 56) - 1)

/* The chunk from the first tier that has it. */
static cltfs_err tier_load(cltfs_fs *fs, uint64_t key, cltfs_zctx *z, uint8_t *dst, size_t len, cltfs_rec *rec)
{
	char k[48];
	cltfs_err e = cltfs_fail(CLTFS_E_NOTFOUND, "%s: chunk %s is not in the store", store_dir(fs->s),
				 cltfs_key_str(key, k, sizeof k));
	for (int i = 0; i < fs->o.ntiers; i++) {
		cltfs_tier *t = fs->o.tiers[i];
		e = t->load(t, key, z, dst, len, rec);
		if (!e)
			atomic_fetch_add(&fs->st.tier_loads[i], 1);
		if (e != CLTFS_E_NOTFOUND)
			break;
	}
	return e;
}

cltfs_err fs_load_stored(cltfs_fs *fs, uint64_t key, cltfs_zctx *z, uint8_t *dst, cltfs_rec *rec)
{
	char k[48];
	bool local = store_lookup(fs->s, key, rec);
	/* Sizes come from the manifest: a tier's record is known only after
	 * its load. */
	size_t rsize = store_chunk_raw(fs->s, cltfs_key_chunk(key));
	if (local && rec->rsize != rsize)
		return cltfs_fail(CLTFS_E_CORRUPT, "%s: chunk %s is larger than any chunk of the store",
				  store_dir(fs->s), cltfs_key_str(key, k, sizeof k));
	cltfs_err e = local ? store_read_chunk(fs->s, rec, z, dst) : tier_load(fs, key, z, dst, rsize, rec);
	if (e)
		return e;
	if (local)
		atomic_fetch_add(&fs->st.store_loads, 1);
	for (int i = 0; i < fs->o.ntiers; i++)
		if (fs->o.tiers[i]->hint)
			fs->o.tiers[i]->hint(fs->o.tiers[i], key);
	return CLTFS_OK;
}

/* The mean of one sample's rows of x@L, accumulated in float64 from the
 * chunks (in the mount's dtype), written as d float32 values. */
static cltfs_err load_mean(cltfs_fs *fs, uint64_t key, uint8_t *buf, size_t cap, size_t *len, uint32_t *crc)
{
	const cltfs_manifest *m = fs->m;
	int64_t i = cltfs_key_chunk(key), d = m->d_model, rows = cltfs_manifest_sample_rows(m, i);
	int64_t row = cltfs_manifest_sample_row(m, i), end = row + rows;
	unsigned layer = cltfs_key_layer(key);
	if ((size_t)d * 4 > cap)
		return cltfs_fail(CLTFS_E_INVAL, "a mean of %lld values does not fit a chunk buffer", (long long)d);
	/* kept in the store when the mount's values are the stored ones
	 * (float32 holds bfloat16 and float16 exactly) */
	bool keep = fs->means && (fs->out_dt == fs->in_dt || fs->out_dt == CLTFS_F32);
	if (keep && means_get(fs->means, (int)layer, i, (float *)(void *)buf)) {
		*len = (size_t)d * 4;
		*crc = cltfs_crc32(0, buf, *len);
		return CLTFS_OK;
	}
	double *acc = calloc((size_t)d, sizeof *acc);
	float *vals = malloc((size_t)d * sizeof *vals);
	cltfs_err e = acc && vals ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	size_t es = cltfs_dtype_size(fs->out_dt);
	while (!e && row < end) {
		int64_t c = cltfs_manifest_chunk_of(m, row), first = cltfs_manifest_chunk_start(m, c);
		int64_t n = cltfs_manifest_chunk_rows(m, c) - (row - first);
		if (n > end - row)
			n = end - row;
		chunk *ch;
		if ((e = fs_chunk(fs, cltfs_key(CLTFS_STREAM_X, layer, (uint32_t)c), &ch)))
			break;
		for (int64_t r = 0; r < n; r++) {
			cltfs_convert(CLTFS_F32, vals, fs->out_dt, ch->data + (size_t)((row - first + r) * d) * es, (size_t)d);
			for (int64_t j = 0; j < d; j++)
				acc[j] += vals[j];
		}
		fs_chunk_put(fs, ch);
		row += n;
	}
	for (int64_t j = 0; !e && j < d; j++) {
		float f = (float)(acc[j] / (double)rows);
		memcpy(buf + 4 * j, &f, 4);
	}
	free(acc);
	free(vals);
	if (e)
		return e;
	if (keep)
		means_put(fs->means, (int)layer, i, (const float *)(const void *)buf);
	*len = (size_t)d * 4;
	*crc = cltfs_crc32(0, buf, *len);
	return CLTFS_OK;
}

cltfs_err fs_mean(cltfs_fs *fs, uint64_t key, chunk **out)
{
	bool hit;
	return cache_get(fs->cache, key, out, &hit);
}

/* The cache's loader: decode straight into the cache's buffer; a
 * conversion decodes into the thread's scratch first. */
static cltfs_err load_chunk(void *arg, uint64_t ckey, uint8_t *buf, size_t cap, size_t *len, uint32_t *crc)
{
	cltfs_fs *fs = arg;
	uint64_t key = ckey & KEY_MASK;
	cltfs_rec rec;
	char k[48];
	if (cltfs_key_kind(key) == KIND_MEAN)
		return load_mean(fs, key, buf, cap, len, crc);
	thread_ctx *t = thread_state(fs);
	size_t rsize = store_chunk_raw(fs->s, cltfs_key_chunk(key));
	size_t n = rsize / cltfs_dtype_size(fs->in_dt), out = n * cltfs_dtype_size(fs->out_dt);
	if (out > cap)
		return cltfs_fail(CLTFS_E_CORRUPT, "%s: chunk %s is larger than any chunk of the store",
				  store_dir(fs->s), cltfs_key_str(key, k, sizeof k));
	uint8_t *raw = !t ? NULL : !fs->conv ? buf : cltfs_reserve(&t->raw, &t->cap, rsize) ? t->raw : NULL;
	if (!raw)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory loading chunk %s", cltfs_key_str(key, k, sizeof k));
	cltfs_err e = fs_load_stored(fs, key, t->z, raw, &rec);
	if (e)
		return e;
	*len = out;
	if (!fs->conv) {
		*crc = rec.crc;
		return CLTFS_OK;
	}
	cltfs_convert(fs->out_dt, buf, fs->in_dt, raw, n);
	*crc = cltfs_crc32(0, buf, out);
	return CLTFS_OK;
}

cltfs_err fs_chunk(cltfs_fs *fs, uint64_t key, chunk **out)
{
	bool hit;
	cltfs_err e = cache_get(fs->cache, key | fs->conv, out, &hit);
	if (!e && hit)
		atomic_fetch_add(&fs->st.mem_hits, 1);
	return e;
}

void fs_chunk_put(cltfs_fs *fs, chunk *ch) { cache_put(fs->cache, ch); }

bool fs_chunk_crc(cltfs_fs *fs, uint64_t key, uint32_t *crc)
{
	cltfs_rec rec;
	if (fs->conv)
		return false; /* a converted chunk's CRC is its own */
	bool known = store_lookup(fs->s, key, &rec);
	for (int i = 0; !known && i < fs->o.ntiers; i++)
		known = fs->o.tiers[i]->lookup && fs->o.tiers[i]->lookup(fs->o.tiers[i], key, &rec);
	if (known)
		*crc = rec.crc;
	return known;
}

/* ---- readahead ---- */

static void *ra_main(void *arg)
{
	cltfs_fs *fs = arg;
	pthread_mutex_lock(&fs->ra_mu);
	for (;;) {
		while (!fs->ra_len && !fs->ra_stop)
			pthread_cond_wait(&fs->ra_cv, &fs->ra_mu);
		if (fs->ra_stop)
			break;
		uint64_t key = fs->ra_q[fs->ra_head];
		fs->ra_head = (fs->ra_head + 1) % RA_QUEUE;
		fs->ra_len--;
		pthread_mutex_unlock(&fs->ra_mu);
		chunk *ch;
		if (!cache_has(fs->cache, key | fs->conv)) {
			if (fs_chunk(fs, key, &ch)) {
				/* The reader that arrives will fail (or retry) on its own;
				 * say now what went wrong ahead of it. */
				atomic_fetch_add(&fs->st.readahead_errors, 1);
				cltfs_log("readahead: %s", cltfs_errmsg());
			} else {
				atomic_fetch_add(&fs->st.readahead, 1);
				fs_chunk_put(fs, ch);
			}
		}
		pthread_mutex_lock(&fs->ra_mu);
	}
	pthread_mutex_unlock(&fs->ra_mu);
	return NULL;
}

void fs_readahead_push(cltfs_fs *fs, uint64_t key)
{
	if (!fs->ra_n || cache_has(fs->cache, key | fs->conv))
		return;
	pthread_mutex_lock(&fs->ra_mu);
	bool queued = false;
	for (size_t i = 0; i < fs->ra_len; i++)
		if (fs->ra_q[(fs->ra_head + i) % RA_QUEUE] == key)
			queued = true;
	bool added = !queued && fs->ra_len < RA_QUEUE;
	if (added) {
		fs->ra_q[(fs->ra_head + fs->ra_len) % RA_QUEUE] = key;
		fs->ra_len++;
		pthread_cond_signal(&fs->ra_cv);
	}
	pthread_mutex_unlock(&fs->ra_mu);
	if (added) {
		atomic_fetch_add(&fs->st.readahead_queued, 1);
		store_prefetch(fs->s, key);
	}
}

/* ---- the filesystem ---- */

static void *warm_main(void *arg)
{
	cltfs_fs *fs = arg;
	cache_reserve(fs->cache, fs->o.cache_mb << 20, &fs->stopping);
	return NULL;
}

/* The mount's batching: the store's batches, samples regrouped S at a
 * time, or flat runs of B rows. */
static void count_groups(cltfs_fs *fs)
{
	const cltfs_manifest *m = fs->m;
	fs->stored_batches = !fs->o.batch_rows && (!fs->o.batch_samples || fs->o.batch_samples == m->batch_samples);
	if (fs->o.batch_rows)
		fs->ngroups = (m->total_rows + fs->o.batch_rows - 1) / fs->o.batch_rows;
	else if (fs->stored_batches)
		fs->ngroups = m->n_batches;
	else
		fs->ngroups = (m->n_samples + fs->o.batch_samples - 1) / fs->o.batch_samples;
}

group fs_group(const cltfs_fs *fs, int64_t g)
{
	const cltfs_manifest *m = fs->m;
	group gr = {0};
	if (fs->o.batch_rows) {
		gr.row0 = g * fs->o.batch_rows;
		gr.nrows = m->total_rows - gr.row0 < fs->o.batch_rows ? m->total_rows - gr.row0 : fs->o.batch_rows;
	} else if (fs->stored_batches) {
		cltfs_batch b = cltfs_manifest_batch(m, g);
		gr = (group){b.first_sample, b.samples, b.tokens, b.first_row, b.rows};
	} else {
		gr.first_sample = g * fs->o.batch_samples;
		gr.nsamples = m->n_samples - gr.first_sample < fs->o.batch_samples ? m->n_samples - gr.first_sample
										: fs->o.batch_samples;
		gr.row0 = cltfs_manifest_sample_row(m, gr.first_sample);
		for (int64_t i = 0; i < gr.nsamples; i++) {
			int64_t r = cltfs_manifest_sample_rows(m, gr.first_sample + i);
			gr.nrows += r;
			gr.tokens = r > gr.tokens ? r : gr.tokens;
		}
	}
	return gr;
}

/* The largest chunk of the store, in the output dtype: every cache buffer
 * has this size. */
static size_t largest_chunk(const cltfs_fs *fs)
{
	int64_t rows = fs->m->chunk_rows < fs->m->max_batch_rows ? fs->m->chunk_rows : fs->m->max_batch_rows;
	return (size_t)rows * fs->row_out;
}

/* The layers named "a-b, c" for a message: the first ones of a list. */
static void layer_list(const int *l, int n, char *buf, size_t cap)
{
	size_t used = 0;
	buf[0] = 0;
	for (int i = 0; i < n && used + 16 < cap;) {
		int j = i;
		while (j + 1 < n && l[j + 1] == l[j] + 1)
			j++;
		used += (size_t)snprintf(buf + used, cap - used, "%s%d", used ? ", " : "", l[i]);
		if (j > i)
			used += (size_t)snprintf(buf + used, cap - used, "-%d", l[j]);
		i = j + 1;
	}
}

/* The mount's view of the manifest: the store's, with -o n_targets,
 * target_offset and target_pad.  Every target a y view would then carry
 * must be a stream the store keeps: else the mount is refused, naming the
 * option and the stream. */
static cltfs_err target_options(cltfs_fs *fs, const cltfs_manifest *sm)
{
	const cltfs_opts *o = &fs->o;
	fs->vm = *sm;
	fs->m = &fs->vm;
	if (o->n_targets > 0)
		fs->vm.n_targets = o->n_targets;
	if (o->set_target_offset)
		fs->vm.target_offset = o->target_offset;
	if (o->set_target_pad)
		fs->vm.padding = o->target_pad;
	const cltfs_manifest *m = fs->m;
	for (int i = 0; i < m->n_x_layers; i++) {
		int L = m->x_layers[i];
		for (int j = 0; j < cltfs_manifest_targets_of(m, L); j++) {
			int t = cltfs_manifest_target_layer(m, L, j);
			if (t < 0 || cltfs_manifest_has_layer(m->mlp_layers, m->n_mlp_layers, t))
				continue;
			char have[256], opt[96] = "";
			layer_list(m->mlp_layers, m->n_mlp_layers, have, sizeof have);
			if (o->n_targets > 0)
				snprintf(opt, sizeof opt, "-o n_targets=%d", o->n_targets);
			if (o->set_target_offset)
				snprintf(opt + strlen(opt), sizeof opt - strlen(opt), "%s-o target_offset=%d",
					 *opt ? ", " : "", o->target_offset);
			return cltfs_fail(CLTFS_E_INVAL, "%s%s: L%d's target %d would be mlp@%d, a stream the store "
					  "lacks (it keeps mlp@%s)", *opt ? opt : "the store's targets",
					  *opt ? "" : "", L, j, t, have);
		}
	}
	return CLTFS_OK;
}

/* -o shuffle_window, or by default the chunks whose every stream a y file
 * reads (x and each target) fit a quarter of the cache: a window's chunks
 * are then decoded once per epoch. */
static int64_t shuffle_window(const cltfs_fs *fs)
{
	if (fs->o.shuffle_window >= 0)
		return fs->o.shuffle_window;
	uint64_t per = (uint64_t)fs->chunk_bytes * (uint64_t)(1 + fs->m->n_targets);
	int64_t n = (int64_t)((fs->o.cache_mb << 20) / 4 / (per ? per : 1));
	return n < 1 ? 1 : n;
}

cltfs_err fs_new(cltfs_store *s, const cltfs_opts *o, cltfs_fs **out)
{
	if (o->batch_rows && o->batch_samples)
		return cltfs_fail(CLTFS_E_INVAL, "batch_rows and batch_samples exclude each other");
	if (o->shuffle && !o->batch_rows)
		return cltfs_fail(CLTFS_E_INVAL, "-o shuffle needs -o batch_rows=B: it serves flat token batches");
	if (o->ntiers < 0 || o->ntiers > FS_MAX_TIERS)
		return cltfs_fail(CLTFS_E_INVAL, "%d tiers: at most %d", o->ntiers, FS_MAX_TIERS);
	cltfs_fs *fs = calloc(1, sizeof *fs);
	if (!fs)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	fs->s = s;
	fs->o = *o;
	cltfs_err e = target_options(fs, store_manifest(s));
	if (e) {
		free(fs);
		return e;
	}
	fs->in_dt = fs->m->dtype;
	fs->out_dt = o->dtype < 0 ? fs->in_dt : (cltfs_dtype)o->dtype;
	fs->conv = fs->out_dt == fs->in_dt ? 0 : (uint64_t)(fs->out_dt + 1) << 56;
	fs->row_in = (size_t)fs->m->d_model * cltfs_dtype_size(fs->in_dt);
	fs->row_out = (size_t)fs->m->d_model * cltfs_dtype_size(fs->out_dt);
	fs->chunk_bytes = largest_chunk(fs);
	if (fs->chunk_bytes < (size_t)fs->m->d_model * 4) /* a sample's mean, in float32 */
		fs->chunk_bytes = (size_t)fs->m->d_model * 4;
	pthread_mutex_init(&fs->ra_mu, NULL);
	pthread_cond_init(&fs->ra_cv, NULL);
	pthread_mutex_init(&fs->vmu, NULL);
	pthread_mutex_init(&fs->ns_mu, NULL);
	e = view_cache_new(fs);
	if (!e && pthread_key_create(&fs->tkey, free_thread))
		e = cltfs_fail(CLTFS_E_NOMEM, "no thread key left");
	else if (!e)
		fs->have_tkey = true;
	count_groups(fs);
	if (!e && !(fs->cache = cache_new(o->cache_mb << 20, fs->chunk_bytes, load_chunk, fs)))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	uint32_t tag;
	if (!e && !fs_manifest_tag(fs, &tag) && !(fs->means = means_new(store_dir(s), fs->m, tag)))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e && o->shuffle)
		e = shuffle_new(fs->m, o->shuffle_seed, shuffle_window(fs), &fs->shuf);
	if (!e && fs->shuf) {
		/* a window whose chunks the cache cannot hold decodes a chunk for a row */
		uint64_t need = (uint64_t)shuffle_window_chunks(fs->shuf) * fs->chunk_bytes * (uint64_t)(1 + fs->m->n_targets);
		if (need > (uint64_t)o->cache_mb << 20)
			cltfs_log("warning: -o shuffle: a window of %lld chunks needs %llu MiB of cache for an x file and "
				  "its y file, more than cache_mb=%zu: most reads will decode a whole chunk for a row "
				  "(raise cache_mb or lower shuffle_window)",
				  (long long)shuffle_window_chunks(fs->shuf), (unsigned long long)(need >> 20), o->cache_mb);
	}
	if (e) {
		fs_free(fs);
		return e;
	}
	*out = fs;
	return CLTFS_OK;
}

int fs_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 2 ? 2 : n > RA_MAX_THREADS ? RA_MAX_THREADS : (int)n;
}

cltfs_err fs_start(cltfs_fs *fs)
{
	if (fs->o.prefault && !fs->warming && !pthread_create(&fs->warm_thr, NULL, warm_main, fs))
		fs->warming = true;
	int want = fs->o.readahead <= 0 ? 0 : fs_cpus();
	if (want && fs->o.ntiers && want < RA_TIER_THREADS)
		want = RA_TIER_THREADS;
	while (fs->ra_n < want && !pthread_create(&fs->ra_thr[fs->ra_n], NULL, ra_main, fs))
		fs->ra_n++;
	if (fs->ra_n < want && !fs->ra_n)
		return cltfs_fail(CLTFS_E_NOMEM, "cannot start a readahead thread");
	return CLTFS_OK;
}

void fs_free(cltfs_fs *fs)
{
	if (!fs)
		return;
	atomic_store(&fs->stopping, true);
	pthread_mutex_lock(&fs->ra_mu);
	fs->ra_stop = true;
	pthread_cond_broadcast(&fs->ra_cv);
	pthread_mutex_unlock(&fs->ra_mu);
	for (int i = 0; i < fs->ra_n; i++)
		pthread_join(fs->ra_thr[i], NULL);
	if (fs->warming)
		pthread_join(fs->warm_thr, NULL);
	view_cache_free(fs);
	shuffle_free(fs->shuf);
	means_free(fs->means);
	pthread_mutex_destroy(&fs->vmu);
	pthread_mutex_destroy(&fs->ns_mu);
	free(fs->ns_json);
	cache_free(fs->cache);
	if (fs->have_tkey) { /* this thread's state; the others' went with their threads */
		free_thread(pthread_getspecific(fs->tkey));
		pthread_setspecific(fs->tkey, NULL);
		pthread_key_delete(fs->tkey);
	}
	pthread_mutex_destroy(&fs->ra_mu);
	pthread_cond_destroy(&fs->ra_cv);
	free(fs);
}

/* ---- text ---- */

void sbuf_put(sbuf *b, const char *fmt, ...)
{
	for (int tries = 0; !b->oom && tries < 2; tries++) {
		va_list ap;
		va_start(ap, fmt);
		int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
		va_end(ap);
		if (k < 0) {
			b->oom = true;
			return;
		}
		if (b->p && (size_t)k < b->cap - b->n) {
			b->n += (size_t)k;
			return;
		}
		size_t want = b->n + (size_t)k + 1 > 2 * b->cap ? b->n + (size_t)k + 1 : 2 * b->cap;
		char *q = realloc(b->p, want);
		if (!q)
			b->oom = true;
		else {
			b->p = q;
			b->cap = want;
		}
	}
}

/* ---- .cltfs/stats ---- */

char *fs_stats_json(cltfs_fs *fs)
{
	size_t bytes, entries, limit;
	uint64_t ichunks, ibytes;
	cache_usage(fs->cache, &bytes, &entries, &limit);
	store_index_usage(fs->s, &ichunks, &ibytes);
	unsigned long long reads = fs->st.reads;
	sbuf t = {0};
	sbuf_put(&t, "{\"chunks\": {\"memory\": %llu, \"store\": %llu", (unsigned long long)fs->st.mem_hits,
	    (unsigned long long)fs->st.store_loads);
	for (int i = 0; i < fs->o.ntiers; i++)
		sbuf_put(&t, ", \"%s\": %llu", fs->o.tiers[i]->name, (unsigned long long)fs->st.tier_loads[i]);
	sbuf_put(&t, "},\n \"bytes_read\": %llu, \"reads\": %llu, \"opens\": %llu, \"errors\": %llu,\n"
		" \"cache\": {\"bytes\": %zu, \"limit\": %zu, \"entries\": %zu, \"buffers\": %zu},\n"
		" \"index\": {\"chunks\": %llu, \"bytes\": %llu},\n"
		" \"readahead\": %llu, \"readahead_queued\": %llu, \"readahead_errors\": %llu,\n"
		" \"latency_us\": {\"mean\": %llu, \"max\": %llu},\n"
		" \"requests\": {\"lookup\": %llu, \"readdir\": %llu, \"readdirplus\": %llu}",
	    (unsigned long long)fs->st.bytes_read, reads, (unsigned long long)fs->st.opens,
	    (unsigned long long)fs->st.errors, bytes, limit, entries, cache_buffers(fs->cache),
	    (unsigned long long)ichunks, (unsigned long long)ibytes,
	    (unsigned long long)fs->st.readahead, (unsigned long long)fs->st.readahead_queued,
	    (unsigned long long)fs->st.readahead_errors,
	    reads ? (unsigned long long)fs->st.lat_us_sum / reads : 0ULL, (unsigned long long)fs->st.lat_us_max,
	    (unsigned long long)fs->st.lookups, (unsigned long long)fs->st.listings[0],
	    (unsigned long long)fs->st.listings[1]);
	for (int i = 0; i < fs->o.ntiers; i++) {
		cltfs_tier *tr = fs->o.tiers[i];
		char extra[1024] = "";
		if (tr->stats) /* the tier's own counters: requests, retries, batches */
			tr->stats(tr, extra, sizeof extra);
		if (*extra)
			sbuf_put(&t, ",\n \"%s\": %s", tr->name, extra);
	}
	static const char *const kinds[3] = {"x", "y", "samples"};
	sbuf_put(&t, ",\n \"views\": {");
	for (int i = 0; i < 3; i++)
		sbuf_put(&t, "%s\"%s\": {\"reads\": %llu, \"bytes\": %llu}", i ? ", " : "", kinds[i],
		    (unsigned long long)fs->st.view_reads[i], (unsigned long long)fs->st.view_bytes[i]);
	sbuf_put(&t, "}");
	if (fs->shuf)
		sbuf_put(&t, ",\n \"shuffle\": {\"seed\": %llu, \"window_chunks\": %lld, \"windows\": %lld, \"batch_rows\": %lld}",
		    (unsigned long long)fs->o.shuffle_seed, (long long)shuffle_window_chunks(fs->shuf),
		    (long long)shuffle_nwindows(fs->shuf), (long long)fs->o.batch_rows);
	sbuf_put(&t, "}\n");
	if (t.oom) {
		free(t.p);
		return NULL;
	}
	return t.p;
}

/* ---- names ---- */

int fs_find_layer(const cltfs_fs *fs, const char *name)
{
	int64_t L;
	if (name[0] != 'L' || !cltfs_parse_dec(name + 1, strlen(name + 1), &L))
		return -1;
	for (int i = 0; i < fs->m->n_x_layers; i++)
		if (fs->m->x_layers[i] == L)
			return i;
	return -1;
}

bool fs_parse_view(const cltfs_fs *fs, const char *name, int64_t *batch, int *is_y)
{
	return cltfs_parse_batch_name(name, batch, is_y) && *batch < fs->ngroups;
}
