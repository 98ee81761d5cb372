/* init.c: `cltfs init STORE --model M --dataset Q.json --image-dir D`.
 *
 * A manifest from the checkpoint's config and tokenizer and a query file:
 * every sample's rows are known without running the model (an <image>
 * token counts as the image's rows), so every view's size is known at
 * once.  The manifest is built as a cltfs_manifest and written by the
 * codec's own writer, as import does.
 */
#include "cmd.h"
#include "hub.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* One query into the table: its rows from the tokenizer. */
static cltfs_err add_sample(const init_opts *o, cap_tokenizer *tok, const cap_config *cfg, const cltfs_query *q,
			    cltfs_table_writer *w)
{
	char path[PATH_MAX];
	if (strstr(q->image, "..") || q->image[0] == '/')
		return cltfs_fail(CLTFS_E_FORMAT, "%s: entry %lld (id %s): image '%s' is not a name inside --image-dir",
				  o->dataset, (long long)q->index, q->id, q->image);
	snprintf(path, sizeof path, "%s/%s", o->image_dir, q->image);
	if (access(path, R_OK))
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: entry %lld (id %s): image %s: %s", o->dataset,
				  (long long)q->index, q->id, path, strerror(errno));
	char *prompt = cap_prompt(o->template_, q->text);
	int32_t *ids = NULL;
	size_t n = 0;
	cltfs_err e = prompt ? cap_tokenize(tok, prompt, &ids, &n) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	free(prompt);
	if (e)
		return cltfs_wrap(e, "%s: entry %lld (id %s)", o->dataset, (long long)q->index, q->id);
	int images = 0;
	for (size_t k = 0; k < n; k++)
		images += ids[k] == cfg->image_token;
	int64_t rows = cap_rows(cfg, ids, n);
	free(ids);
	if (images != 1)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: entry %lld (id %s): the prompt has %d <image> tokens, not one "
				  "(check --template)", o->dataset, (long long)q->index, q->id, images);
	if (rows > INT32_MAX)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: entry %lld (id %s): %lld rows", o->dataset, (long long)q->index,
				  q->id, (long long)rows);
	return cltfs_table_add(w, (uint32_t)rows, q->id, q->image, q->text);
}

/* The samples of the query file, in order, into STORE/samples.bin. */
static cltfs_err add_samples(const char *store, const init_opts *o, const cap_config *cfg, cltfs_manifest *m)
{
	cap_tokenizer *tok = NULL;
	cltfs_queries *qs = NULL;
	cltfs_table_writer *w = NULL;
	cltfs_err e = cap_tokenizer_load(o->model, &tok);
	if (!e)
		e = cltfs_queries_open(o->dataset, &qs);
	if (!e)
		e = cltfs_table_writer_new(store, true, &w);
	cltfs_query q = {0};
	int64_t count = 0;
	bool tty = !o->quiet && isatty(2);
	double t0 = cltfs_now(), shown = t0;
	while (!e && cltfs_queries_next(qs, &q, &e)) {
		e = add_sample(o, tok, cfg, &q, w);
		count++;
		if (tty && (q.index & 4095) == 0 && cltfs_now() - shown > 0.5) {
			shown = cltfs_now();
			fprintf(stderr, "\rinit: %lld samples, %.0f a second   ", (long long)q.index + 1,
				(double)(q.index + 1) / (shown - t0));
		}
	}
	if (tty)
		fputc('\n', stderr);
	char path[PATH_MAX + 16];
	snprintf(path, sizeof path, "%s/samples.bin", store);
	cltfs_table *t = NULL;
	if (e) /* finish frees the writer, also when it fails */
		cltfs_table_writer_abort(w);
	else if (!(e = cltfs_table_writer_finish(w, path, &t)))
		cltfs_manifest_set_table(m, t, path);
	if (e == CLTFS_E_INVAL && !count) /* no samples */
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: expected a non-empty JSON list of queries or JSON Lines", o->dataset);
	cltfs_queries_close(qs);
	cap_tokenizer_free(tok);
	return e;
}

/* Every layer's input, and every MLP output some y file needs: layers
 * target_offset.. (each x layer L has targets L+offset.. up to the last). */
static cltfs_err set_layers(cltfs_manifest *m)
{
	m->x_layers = malloc((size_t)m->n_layers * sizeof *m->x_layers);
	m->mlp_layers = malloc((size_t)m->n_layers * sizeof *m->mlp_layers);
	if (!m->x_layers || !m->mlp_layers)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int L = 0; L < m->n_layers; L++) {
		m->x_layers[m->n_x_layers++] = L;
		if (L >= m->target_offset)
			m->mlp_layers[m->n_mlp_layers++] = L;
	}
	return CLTFS_OK;
}

/* The manifest's fields from the options and the checkpoint's config. */
static cltfs_err set_fields(const init_opts *o, const cap_config *cfg, const char *revision, cltfs_manifest *m)
{
	char model[PATH_MAX], images[PATH_MAX];
	const char *abs_model = realpath(o->model, model) ? model : o->model;
	m->n_layers = cfg->n_layers;
	m->d_model = cfg->d_model;
	m->dtype = (cltfs_dtype)o->dtype;
	m->target_offset = o->target_offset;
	m->n_targets = o->n_targets;
	m->padding = o->clip ? CLTFS_PAD_CLIP : CLTFS_PAD_ZERO;
	m->chunk_rows = o->chunk_rows > 0 ? o->chunk_rows : cltfs_default_chunk_rows(m->d_model, m->dtype);
	m->batch_samples = o->batch_samples;
	m->codec = (cltfs_codec)o->codec;
	free(m->input_hook);
	bool ok = (m->input_hook = strdup(o->input_hook)) &&
		  (m->model_id = strdup(o->model_id ? o->model_id : abs_model)) &&
		  (!revision || (m->model_revision = strdup(revision))) &&
		  (m->model_arch = strdup("LlavaForConditionalGeneration")) &&
		  (m->prompt_template = strdup(o->template_ ? o->template_ : CAP_DEFAULT_TEMPLATE)) &&
		  (m->source_kind = strdup("capture")) && (m->source_path = strdup(abs_model)) &&
		  (m->source_images = strdup(realpath(o->image_dir, images) ? images : o->image_dir));
	return ok ? set_layers(m) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
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
	cltfs_manifest *m = cltfs_manifest_new();
	cltfs_err e = m ? cap_config_load(o->model, &cfg) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e)
		e = set_fields(o, &cfg, revision, m);
	if (!e)
		e = cltfs_mkdirs(store, strlen(store));
	if (!e)
		e = add_samples(store, o, &cfg, m);
	if (!e)
		e = cltfs_manifest_finish(m, path);
	if (!e)
		e = store_create(store, m);
	if (!e && !o->quiet)
		printf("%s: %lld samples, %lld rows, %d layers x d=%d, %lld chunks per stream; fill it with `cltfs capture "
		       "%s` or mount it\n",
		       store, (long long)m->n_samples, (long long)m->total_rows, m->n_layers, m->d_model,
		       (long long)m->n_chunks, store);
	cltfs_manifest_free(m);
	return e;
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

int cmd_init(const char *store, const init_opts *in)
{
	init_opts opts = *in;
	char *hub_dir, *hub_commit;
	cltfs_err e = resolve_model(&opts, &hub_dir, &hub_commit);
	if (!e)
		e = init_store(store, &opts, hub_commit);
	free(hub_dir);
	free(hub_commit);
	if (e)
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
	return e ? 1 : 0;
}
