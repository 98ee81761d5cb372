/* capture.c: stores filled by running the model.
 *
 *   init     - a manifest from the checkpoint's config and tokenizer and a
 *              query file: every sample's rows are known without the model
 *   capture  - run the model on batches, appending every stream's chunks
 *              (the input hook and the MLP output of each layer); what is
 *              stored is skipped, so a killed run resumes and shards on
 *              many machines fill one store, each with its own writer
 *   tier     - the same on a miss under a mount: the chunk's batch is
 *              captured, once across threads (a mutex) and across
 *              processes sharing the store (a lock file per batch)
 */
#include "capture.h"
#include "fs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- init ---- */

static cltfs_err init_store(const char *store, const init_opts *o, const char *revision);

/* One query of AMBER's format: {"id": 1, "image": "AMBER_1.jpg", "query": "..."}. */
static cltfs_err add_sample(const init_opts *o, cap_tokenizer *tok, const cap_config *cfg, const cJSON *q, int i,
			    cJSON *samples, int64_t *rows)
{
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(q, "id"),
		    *img = cJSON_GetObjectItemCaseSensitive(q, "image"),
		    *text = cJSON_GetObjectItemCaseSensitive(q, "query");
	if (!cJSON_IsObject(q) || !cJSON_IsString(img) || !cJSON_IsString(text) ||
	    !(cJSON_IsNumber(id) || cJSON_IsString(id)))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: entry %d: expected {\"id\": ..., \"image\": \"...\", \"query\": \"...\"}",
				  o->dataset, i);
	char idbuf[64], path[PATH_MAX];
	if (cJSON_IsNumber(id))
		snprintf(idbuf, sizeof idbuf, "%.0f", id->valuedouble);
	else
		snprintf(idbuf, sizeof idbuf, "%s", id->valuestring);
	if (strstr(img->valuestring, "..") || img->valuestring[0] == '/')
		return cltfs_fail(CLTFS_E_FORMAT, "%s: entry %d (id %s): image '%s' is not a name inside --image-dir",
				  o->dataset, i, idbuf, img->valuestring);
	snprintf(path, sizeof path, "%s/%s", o->image_dir, img->valuestring);
	if (access(path, R_OK))
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: entry %d (id %s): image %s: %s", o->dataset, i, idbuf, path,
				  strerror(errno));
	char *prompt = cap_prompt(o->template_, text->valuestring);
	int32_t *ids = NULL;
	size_t n = 0;
	cltfs_err e = prompt ? cap_tokenize(tok, prompt, &ids, &n) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	free(prompt);
	if (e)
		return cltfs_wrap(e, "%s: entry %d (id %s)", o->dataset, i, idbuf);
	int images = 0;
	for (size_t k = 0; k < n; k++)
		images += ids[k] == cfg->image_token;
	*rows = cap_rows(cfg, ids, n);
	free(ids);
	if (images != 1)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: entry %d (id %s): the prompt has %d <image> tokens, not one "
				  "(check --template)", o->dataset, i, idbuf, images);
	cJSON *s = cJSON_CreateObject();
	if (!s || !cJSON_AddStringToObject(s, "id", idbuf) || !cJSON_AddStringToObject(s, "image", img->valuestring) ||
	    !cJSON_AddStringToObject(s, "text", text->valuestring) || !cJSON_AddNumberToObject(s, "rows", (double)*rows) ||
	    !cJSON_AddItemToArray(samples, s)) {
		cJSON_Delete(s);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	return CLTFS_OK;
}

/* Every layer's input, and every MLP output some y file needs: layers
 * target_offset.. (each x layer L has targets L+offset.. up to the last). */
static cltfs_err add_layers(cJSON *r, const cap_config *c, const init_opts *o)
{
	int n = c->n_layers, *x = malloc((size_t)n * sizeof *x);
	if (!x)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int L = 0; L < n; L++)
		x[L] = L;
	cJSON *xa = cJSON_CreateIntArray(x, n), *ma = cJSON_CreateIntArray(x + o->target_offset, n - o->target_offset);
	free(x);
	bool ok = xa && ma && cJSON_AddItemToObject(r, "x_layers", xa);
	if (!ok)
		cJSON_Delete(xa);
	if (!ok || !cJSON_AddItemToObject(r, "mlp_layers", ma)) {
		cJSON_Delete(ma);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	return CLTFS_OK;
}

static cJSON *build_manifest(const init_opts *o, const cap_config *c, cJSON *samples, const char *revision)
{
	char model[PATH_MAX], images[PATH_MAX];
	cJSON *r = cJSON_CreateObject(), *mo = cJSON_AddObjectToObject(r, "model"), *src;
	size_t row = (size_t)c->d_model * cltfs_dtype_size((cltfs_dtype)o->dtype);
	int64_t chunk_rows = o->chunk_rows > 0 ? o->chunk_rows : (int64_t)((1u << 20) / row);
	bool ok = r && mo && cJSON_AddStringToObject(r, "format", "cltfs") && cJSON_AddNumberToObject(r, "version", 1) &&
		  cJSON_AddStringToObject(mo, "id", o->model_id ? o->model_id : realpath(o->model, model) ? model : o->model) &&
		  (!revision || cJSON_AddStringToObject(mo, "revision", revision)) &&
		  cJSON_AddStringToObject(mo, "architecture", "LlavaForConditionalGeneration") &&
		  cJSON_AddNumberToObject(mo, "n_layers", c->n_layers) && cJSON_AddNumberToObject(mo, "d_model", c->d_model) &&
		  cJSON_AddStringToObject(r, "dtype", cltfs_dtype_name((cltfs_dtype)o->dtype)) &&
		  cJSON_AddStringToObject(r, "input_hook", o->input_hook) &&
		  cJSON_AddNumberToObject(r, "target_offset", o->target_offset) &&
		  cJSON_AddNumberToObject(r, "n_targets", o->n_targets) &&
		  cJSON_AddStringToObject(r, "padding", o->clip ? "clip" : "zero") &&
		  cJSON_AddNumberToObject(r, "chunk_rows", (double)(chunk_rows < 1 ? 1 : chunk_rows)) &&
		  cJSON_AddNumberToObject(r, "batch_samples", o->batch_samples) &&
		  cJSON_AddStringToObject(r, "prompt_template", o->template_ ? o->template_ : CAP_DEFAULT_TEMPLATE) &&
		  !add_layers(r, c, o) && (src = cJSON_AddObjectToObject(r, "source")) &&
		  cJSON_AddStringToObject(src, "kind", "capture") &&
		  cJSON_AddStringToObject(src, "path", realpath(o->model, model) ? model : o->model) &&
		  cJSON_AddStringToObject(src, "images", realpath(o->image_dir, images) ? images : o->image_dir);
	if (!ok) {
		cJSON_Delete(r);
		cJSON_Delete(samples);
		return NULL;
	}
	cJSON_AddItemToObject(r, "samples", samples);
	return r;
}

/* --model: a checkpoint folder, or a Hub id (owner/name[@rev]) resolved
 * through the HF cache, fetching what is missing. */
static cltfs_err resolve_model(init_opts *o, char **dir, char **commit)
{
	struct stat st;
	*dir = *commit = NULL;
	if (!stat(o->model, &st) || !strchr(o->model, '/') || o->model[0] == '/' || o->model[0] == '.')
		return CLTFS_OK;
	cltfs_err e = hub_model_dir(o->model, dir, commit, o->quiet);
	if (e)
		return cltfs_wrap(e, "--model %s: no such folder, and not found as a Hub model", o->model);
	if (!o->model_id)
		o->model_id = o->model;
	o->model = *dir;
	return CLTFS_OK;
}

cltfs_err cmd_init(const char *store, const init_opts *in)
{
	init_opts opts = *in, *o = &opts;
	char *hub_dir, *hub_commit;
	cltfs_err e = resolve_model(o, &hub_dir, &hub_commit);
	if (!e)
		e = init_store(store, o, hub_commit);
	free(hub_dir);
	free(hub_commit);
	return e;
}

static cltfs_err init_store(const char *store, const init_opts *o, const char *revision)
{
	char path[PATH_MAX + 16];
	snprintf(path, sizeof path, "%s/cltfs.json", store);
	if (!access(path, F_OK))
		return cltfs_fail(CLTFS_E_INVAL, "%s: already a store (%s exists)", store, path);
	if (cap_hook_parse(o->input_hook) < 0)
		return cltfs_fail(CLTFS_E_INVAL, "--input-hook %s: expected mlp_in, resid_pre or resid_mid", o->input_hook);
	cap_config cfg;
	cap_tokenizer *tok = NULL;
	cltfs_err e = cap_config_load(o->model, &cfg);
	if (!e)
		e = cap_tokenizer_load(o->model, &tok);
	size_t len = 0;
	char *text = NULL;
	if (!e)
		e = cltfs_read_file(o->dataset, &text, &len);
	cJSON *q = text ? cJSON_ParseWithLength(text, len) : NULL, *samples = cJSON_CreateArray();
	free(text);
	if (!e && (!cJSON_IsArray(q) || !cJSON_GetArraySize(q)))
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: expected a non-empty JSON list of queries", o->dataset);
	int64_t total = 0, rows = 0;
	for (int i = 0; !e && i < cJSON_GetArraySize(q); i++) {
		e = add_sample(o, tok, &cfg, cJSON_GetArrayItem(q, i), i, samples, &rows);
		total += rows;
	}
	cJSON_Delete(q);
	cap_tokenizer_free(tok);
	cJSON *r = e ? NULL : build_manifest(o, &cfg, samples, revision);
	if (e)
		cJSON_Delete(samples);
	else if (!r)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	char *json = r ? cJSON_Print(r) : NULL;
	cJSON_Delete(r);
	cltfs_manifest *m = NULL;
	if (!e && !json)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e)
		e = cltfs_manifest_parse(json, strlen(json), "(new manifest)", &m);
	free(json);
	if (!e)
		e = store_create(store, m);
	if (!e && !o->quiet)
		printf("%s: %lld samples, %lld rows, %d layers x d=%d, %lld chunks per stream; fill it with `cltfs capture "
		       "%s` or mount it\n",
		       store, (long long)m->n_samples, (long long)total, cfg.n_layers, cfg.d_model,
		       (long long)m->n_chunks, store);
	cltfs_manifest_free(m);
	return e;
}

/* ---- running the model on batches ---- */



struct capturer {
	cltfs_store *s;
	const cltfs_manifest *m;
	cap_load_opts lo;
	cap_model *model;
	store_writer *w;
	int hook;
	size_t row;          /* bytes of a row */
	uint8_t **sb;        /* [kind][layer]: the rows of the batches being captured */
	int64_t b0, b1;      /* the batches being captured: [b0, b1) */
	int64_t s0, s1;      /* their samples */
	int64_t first;       /* the sample the current forward pass starts at */
	int fwd;             /* samples per forward pass */
	double load_s; /* seconds the model took to load */
	uint64_t batches_run, rows_run;
	double run_s;  /* seconds in forward passes and store writes */
};

cltfs_err capturer_new(cltfs_store *s, const cap_load_opts *lo, const char *tag, capturer **out)
{
	const cltfs_manifest *m = store_manifest(s);
	if (!m->source_kind || strcmp(m->source_kind, "capture") || !m->source_path || !m->source_images)
		return cltfs_fail(CLTFS_E_INVAL, "%s: not a store made by `cltfs init` (nothing to capture from)",
				  store_dir(s));
	capturer *c = calloc(1, sizeof *c);
	if (!c || !(c->sb = calloc(2 * (size_t)m->n_layers, sizeof *c->sb))) {
		free(c);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	c->s = s;
	c->m = m;
	c->lo = *lo;
	c->lo.dir = m->source_path;
	c->hook = cap_hook_parse(m->input_hook);
	c->row = (size_t)m->d_model * cltfs_dtype_size(m->dtype);
	cltfs_err e = store_writer_open(s, tag, &c->w);
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
	if (c->w && store_writer_close(c->w))
		fs_log(cltfs_errmsg());
	for (int i = 0; i < 2 * c->m->n_layers; i++)
		free(c->sb[i]);
	free(c->sb);
	cap_model_free(c->model);
	free(c);
}

static bool stream_stored(const cltfs_manifest *m, int kind, int layer)
{
	return kind == CLTFS_STREAM_X ? cltfs_manifest_has_layer(m->x_layers, m->n_x_layers, layer)
				      : cltfs_manifest_has_layer(m->mlp_layers, m->n_mlp_layers, layer);
}

/* Is every chunk of the batch's streams in the store? */
static bool batch_stored(capturer *c, int64_t b)
{
	const cltfs_batch *bt = &c->m->batches[b];
	cltfs_rec rec;
	for (int kind = 0; kind < 2; kind++)
		for (int L = 0; L < c->m->n_layers; L++)
			for (int64_t k = 0; stream_stored(c->m, kind, L) && k < bt->chunks; k++)
				if (!store_lookup(c->s, cltfs_key((unsigned)kind, (unsigned)L, (uint32_t)(bt->first_chunk + k)),
						  &rec))
					return false;
	return true;
}

/* The chunks of batches [b0, b1) of one stream, from its buffer. */
static cltfs_err cut_chunks(capturer *c, int kind, int layer, const uint8_t *buf)
{
	const cltfs_manifest *m = c->m;
	int64_t row0 = m->batches[c->b0].first_row, c0 = m->batches[c->b0].first_chunk,
		c1 = m->batches[c->b1 - 1].first_chunk + m->batches[c->b1 - 1].chunks;
	cltfs_err e = CLTFS_OK;
	cltfs_rec rec;
	for (int64_t ch = c0; !e && ch < c1; ch++) {
		uint64_t key = cltfs_key((unsigned)kind, (unsigned)layer, (uint32_t)ch);
		size_t off = (size_t)(m->chunk_start[ch] - row0) * c->row,
		       len = (size_t)(m->chunk_start[ch + 1] - m->chunk_start[ch]) * c->row;
		if (!store_lookup(c->s, key, &rec))
			e = store_writer_add(c->w, key, buf + off, len);
	}
	return e;
}

/* The rows of one stream for sample i of the forward pass: into the
 * stream's buffer at the sample's place; after the last sample of the
 * batches, cut into chunks and appended. */
static cltfs_err emit(void *arg, size_t i, int kind, int layer, const void *rows, int64_t nrows)
{
	capturer *c = arg;
	const cltfs_manifest *m = c->m;
	int64_t si = c->first + (int64_t)i, row0 = m->batches[c->b0].first_row,
		total = m->samples[c->s1 - 1].first_row + m->samples[c->s1 - 1].rows - row0;
	if (!stream_stored(m, kind, layer))
		return CLTFS_OK;
	if (si >= c->s1 || nrows != m->samples[si].rows)
		return cltfs_fail(CLTFS_E_MISMATCH, "the model gave %lld rows for a sample of %lld", (long long)nrows,
				  si < c->s1 ? (long long)m->samples[si].rows : -1LL);
	uint8_t **sb = &c->sb[kind * m->n_layers + layer];
	if (!*sb && !(*sb = malloc((size_t)total * c->row)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory for batch %lld", (long long)c->b0);
	memcpy(*sb + (size_t)(m->samples[si].first_row - row0) * c->row, rows, (size_t)nrows * c->row);
	if (si + 1 < c->s1)
		return CLTFS_OK;
	cltfs_err e = cut_chunks(c, kind, layer, *sb);
	free(*sb);
	*sb = NULL;
	return e;
}

static cltfs_err load_model(capturer *c)
{
	if (c->model)
		return CLTFS_OK;
	double t0 = cltfs_now();
	cltfs_err e = cap_model_load(&c->lo, &c->model);
	c->load_s = cltfs_now() - t0;
	if (e)
		return e;
	/* One sample at a time on the CPU (no gain from padding there), 8 on a
	 * GPU, unless asked. */
	c->fwd = c->lo.batch > 0 ? c->lo.batch : strcmp(cap_model_device(c->model), "cpu") ? 8 : 1;
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

/* The model's input for sample si: its rows must be what init counted. */
static cltfs_err prepare(capturer *c, int64_t si, cap_sample *s, char *img, size_t imgn)
{
	const cltfs_sample *sm = &c->m->samples[si];
	char *prompt = cap_prompt(c->m->prompt_template, sm->text ? sm->text : "");
	int32_t *ids = NULL;
	size_t n = 0;
	cltfs_err e = prompt ? cap_tokenize(cap_model_tokenizer(c->model), prompt, &ids, &n)
			     : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	free(prompt);
	if (!e && cap_rows(cap_model_config(c->model), ids, n) != sm->rows)
		e = cltfs_fail(CLTFS_E_MISMATCH, "sample %s: the tokenizer gives %lld rows, the manifest %lld: the "
			       "checkpoint's tokenizer changed since `cltfs init`", sm->id ? sm->id : "?",
			       (long long)cap_rows(cap_model_config(c->model), ids, n), (long long)sm->rows);
	snprintf(img, imgn, "%s/%s", c->m->source_images, sm->image ? sm->image : "");
	*s = (cap_sample){ids, n, sm->image ? img : NULL};
	return e ? cltfs_wrap(e, "sample %s", sm->id ? sm->id : "?") : CLTFS_OK;
}

/* Samples [first, first+n) in one forward pass. */
static cltfs_err run_samples(capturer *c, int64_t first, int n)
{
	cap_sample s[64] = {{0}};
	char (*img)[PATH_MAX] = malloc((size_t)n * sizeof *img);
	cltfs_err e = img ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int k = 0; !e && k < n; k++)
		e = prepare(c, first + k, &s[k], img[k], sizeof img[k]);
	c->first = first;
	if (!e)
		e = cap_forward(c->model, s, (size_t)n, c->hook, c->m->dtype, emit, c);
	if (e && n == 1 && c->m->samples[first].id && !strstr(cltfs_errmsg(), "sample "))
		e = cltfs_wrap(e, "sample %s", c->m->samples[first].id);
	for (int k = 0; k < n; k++)
		free((void *)s[k].ids);
	free(img);
	return e;
}

/* Batches [b0, b1): their samples, fwd at a time through the model. */
static cltfs_err capture_range(capturer *c, int64_t b0, int64_t b1, bool durable)
{
	cltfs_err e = load_model(c);
	const cltfs_manifest *m = c->m;
	double t0 = cltfs_now();
	c->b0 = b0;
	c->b1 = b1;
	c->s0 = m->batches[b0].first_sample;
	c->s1 = m->batches[b1 - 1].first_sample + m->batches[b1 - 1].samples;
	for (int64_t si = c->s0; !e && si < c->s1; si += c->fwd)
		e = run_samples(c, si, (int)(c->s1 - si < c->fwd ? c->s1 - si : c->fwd));
	for (int i = 0; i < 2 * m->n_layers; i++) { /* a failed pass leaves no rows behind */
		free(c->sb[i]);
		c->sb[i] = NULL;
	}
	/* Whatever chunks were added are right (a failure stops before a
	 * stream is cut into chunks, and a chunk is whole rows the model
	 * made): they stay pending with the earlier batches' and are kept. */
	if (!e)
		e = durable ? store_writer_sync(c->w) : CLTFS_OK;
	if (!e) {
		c->batches_run += (uint64_t)(b1 - b0);
		c->rows_run += (uint64_t)(m->samples[c->s1 - 1].first_row + m->samples[c->s1 - 1].rows -
					  m->samples[c->s0].first_row);
		c->run_s += cltfs_now() - t0;
	}
	return e;
}

cltfs_err capture_batch(capturer *c, int64_t b, bool durable)
{
	return batch_stored(c, b) ? CLTFS_OK : capture_range(c, b, b + 1, durable);
}

/* ---- cltfs capture ---- */

cltfs_err cmd_capture(const char *store, const capture_opts *o)
{
	cltfs_store *s;
	cltfs_err e = store_open(store, &s);
	if (e)
		return e;
	const cltfs_manifest *m = store_manifest(s);
	int64_t b0 = 0, b1 = m->n_batches;
	char tag[64] = "capture";
	if (o->shards > 0) {
		b0 = m->n_batches * (o->shard - 1) / o->shards;
		b1 = m->n_batches * o->shard / o->shards;
		snprintf(tag, sizeof tag, "capture-%dof%d", o->shard, o->shards);
	} else if (o->row1 > o->row0) {
		if (o->row0 >= m->total_rows)
			e = cltfs_fail(CLTFS_E_INVAL, "--rows %lld:%lld: the store has %lld rows", (long long)o->row0,
				       (long long)o->row1, (long long)m->total_rows);
		while (b0 < m->n_batches && m->batches[b0].first_row + m->batches[b0].rows <= o->row0)
			b0++;
		b1 = b0;
		while (b1 < m->n_batches && m->batches[b1].first_row < o->row1)
			b1++;
	}
	capturer *c = NULL;
	if (!e)
		e = capturer_new(s, &o->load, tag, &c);
	bool tty = !o->quiet && isatty(2);
	double t0 = cltfs_now(), synced = t0;
	int64_t rows = 0, done = 0;
	for (int64_t b = b0; !e && b < b1;) {
		if (batch_stored(c, b)) {
			b++;
			continue;
		}
		if (!c->model && (e = load_model(c)))
			break;
		/* consecutive missing batches, as many samples as a forward pass takes */
		int64_t end = b + 1, n = m->batches[b].samples;
		while (end < b1 && n + m->batches[end].samples <= c->fwd && !batch_stored(c, end))
			n += m->batches[end++].samples;
		/* durable about once a second, not per batch (an fsync can cost
		 * more than a small batch): a kill loses at most that second */
		bool durable = cltfs_now() - synced >= 1.0 || end == b1;
		e = capture_range(c, b, end, durable);
		if (durable)
			synced = cltfs_now();
		for (; b < end; b++, done++)
			rows += m->batches[b].rows;
		if (tty && !e) {
			double dt = cltfs_now() - t0;
			fprintf(stderr, "\rcapture: batch %lld/%lld, %lld rows captured, %.0f tokens/s   ",
				(long long)(b - b0), (long long)(b1 - b0), (long long)rows, dt > 0 ? (double)rows / dt : 0.0);
		}
	}
	if (tty)
		fputc('\n', stderr);
	double run = cltfs_now() - t0 - (c ? c->load_s : 0);
	if (!e && !o->quiet && c && c->model)
		fprintf(stderr, "capture: %lld of %lld batches captured: %lld rows in %.2f s, %.0f tokens/s on %s (%s), "
			"after %.2f s loading the model\n", (long long)done, (long long)(b1 - b0), (long long)rows, run,
			run > 0 ? (double)rows / run : 0.0, cap_model_device(c->model), cap_model_dtype(c->model),
			c->load_s);
	else if (!e && !o->quiet)
		fprintf(stderr, "capture: all %lld batches were stored already\n", (long long)(b1 - b0));
	capturer_free(c);
	store_close(s);
	return e;
}

/* ---- the capture tier ---- */

typedef struct {
	cltfs_tier base;
	capturer *c;
	pthread_mutex_t mu; /* the model runs one batch at a time */
} capture_tier;

static int64_t batch_of_chunk(const cltfs_manifest *m, int64_t ch)
{
	int64_t lo = 0, hi = m->n_batches - 1;
	while (lo < hi) {
		int64_t mid = (lo + hi + 1) / 2;
		if (m->batches[mid].first_chunk <= ch)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
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

static cltfs_err tier_load(cltfs_tier *t, uint64_t key, cltfs_zctx *z, uint8_t *dst, size_t len, cltfs_rec *rec)
{
	capture_tier *ct = (capture_tier *)t;
	capturer *c = ct->c;
	int64_t b = batch_of_chunk(c->m, cltfs_key_chunk(key));
	pthread_mutex_lock(&ct->mu);
	int fd = lock_batch(c, b);
	store_rescan(c->s);
	/* durable before the lock goes: another process waits to read it */
	cltfs_err e = store_lookup(c->s, key, rec) ? CLTFS_OK : capture_batch(c, b, true);
	if (fd >= 0)
		close(fd);
	pthread_mutex_unlock(&ct->mu);
	char k[48];
	if (!e && !store_lookup(c->s, key, rec))
		e = cltfs_fail(CLTFS_E_NOTFOUND, "chunk %s: not in the store after capturing batch %lld",
			       cltfs_key_str(key, k, sizeof k), (long long)b);
	if (!e && rec->rsize != len)
		e = cltfs_fail(CLTFS_E_CORRUPT, "chunk %s: %u bytes, not %zu", cltfs_key_str(key, k, sizeof k),
			       rec->rsize, len);
	return e ? e : store_read_chunk(c->s, rec, z, dst);
}

static void tier_stats(cltfs_tier *t, char *buf, size_t n)
{
	capture_tier *ct = (capture_tier *)t;
	if (pthread_mutex_trylock(&ct->mu)) { /* a capture is running: do not wait for it */
		snprintf(buf, n, "{\"capturing\": true}");
		return;
	}
	capturer *c = ct->c;
	snprintf(buf, n, "{\"batches\": %llu, \"rows\": %llu, \"seconds\": %.3f, \"model_load_seconds\": %.3f, "
		 "\"device\": \"%s\"}", (unsigned long long)c->batches_run, (unsigned long long)c->rows_run, c->run_s,
		 c->load_s, c->model ? cap_model_device(c->model) : "not loaded");
	pthread_mutex_unlock(&ct->mu);
}

cltfs_err capture_tier_open(cltfs_store *s, const cap_load_opts *lo, cltfs_tier **out)
{
	capture_tier *t = calloc(1, sizeof *t);
	if (!t)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err e = capturer_new(s, lo, "capture", &t->c);
	if (e) {
		free(t);
		return e;
	}
	t->base = (cltfs_tier){"capture", tier_load, NULL, tier_stats};
	pthread_mutex_init(&t->mu, NULL);
	*out = &t->base;
	return CLTFS_OK;
}

void capture_tier_close(cltfs_tier *t)
{
	if (!t)
		return;
	capture_tier *ct = (capture_tier *)t;
	capturer_free(ct->c);
	pthread_mutex_destroy(&ct->mu);
	free(ct);
}
