/* manifest.c: cltfs.json, parsed and validated with cJSON.
 *
 * Everything a view's size depends on is here, so sizes never need a chunk.
 * Validation is strict: an unknown value, a wrong type or an inconsistency
 * is refused with the file, the field and the reason, because a manifest
 * that is half understood would serve wrong bytes.
 */
#include "codec.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LAYERS 4096
#define MAX_D (1 << 20)

static const char *const hooks[] = {"mlp_in", "resid_pre", "resid_mid"};
static const char *const shapes[] = {"STd", "S1Td", "flat"};

/* The defaults of every optional field: a manifest parsed without them and
 * one built in code agree. */
static void set_defaults(cltfs_manifest *m)
{
	m->version = 1;
	m->target_offset = 1;
	m->n_targets = 16;
	m->padding = CLTFS_PAD_ZERO;
	m->batch_samples = 1;
	strcpy(m->x_key, "x");
	m->shape = CLTFS_SHAPE_STD;
	strcpy(m->y_keys[0], "y");
	strcpy(m->y_keys[1], "targets");
	strcpy(m->y_keys[2], "n_targets");
}

cltfs_manifest *cltfs_manifest_new(void)
{
	cltfs_manifest *m = calloc(1, sizeof *m);
	if (m && !(m->input_hook = strdup("mlp_in"))) {
		free(m);
		return NULL;
	}
	if (m)
		set_defaults(m);
	return m;
}

void cltfs_manifest_free(cltfs_manifest *m)
{
	if (!m)
		return;
	for (int64_t i = 0; m->samples && i < m->n_samples; i++) {
		free(m->samples[i].id);
		free(m->samples[i].image);
		free(m->samples[i].text);
	}
	free(m->samples);
	free(m->batches);
	free(m->chunk_start);
	free(m->x_layers);
	free(m->mlp_layers);
	free(m->model_id);
	free(m->model_revision);
	free(m->model_arch);
	free(m->input_hook);
	free(m->prompt_template);
	free(m->source_kind);
	free(m->source_path);
	free(m->source_images);
	free(m);
}

bool cltfs_manifest_has_layer(const int *layers, int n, int layer)
{
	for (int i = 0; i < n; i++)
		if (layers[i] == layer)
			return true;
	return false;
}

bool cltfs_manifest_has_stream(const cltfs_manifest *m, unsigned kind, int layer)
{
	if (kind == CLTFS_STREAM_X)
		return cltfs_manifest_has_layer(m->x_layers, m->n_x_layers, layer);
	return kind == CLTFS_STREAM_MLP && cltfs_manifest_has_layer(m->mlp_layers, m->n_mlp_layers, layer);
}

int64_t cltfs_default_chunk_rows(int d_model, cltfs_dtype dtype)
{
	int64_t rows = (int64_t)((1u << 20) / ((size_t)d_model * cltfs_dtype_size(dtype)));
	return rows < 1 ? 1 : rows;
}

int cltfs_manifest_target_layer(const cltfs_manifest *m, int layer, int j)
{
	int t = layer + m->target_offset + j;
	return t < m->n_layers ? t : -1;
}

int cltfs_manifest_targets_of(const cltfs_manifest *m, int layer)
{
	if (m->padding == CLTFS_PAD_ZERO)
		return m->n_targets;
	int real = m->n_layers - layer - m->target_offset;
	return real < 0 ? 0 : real < m->n_targets ? real : m->n_targets;
}

int64_t cltfs_manifest_chunk_of(const cltfs_manifest *m, int64_t row)
{
	int64_t lo = 0, hi = m->n_chunks - 1;
	while (lo < hi) {
		int64_t mid = (lo + hi + 1) / 2;
		if (m->chunk_start[mid] <= row)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

/* ---- parsing ---- */

typedef struct {
	const char *path;
	const char *field;
	char prefix[48]; /* "samples[3]." inside a list */
} ctx;

static cltfs_err ferr(const ctx *c, const char *why)
{
	return cltfs_fail(CLTFS_E_FORMAT, "%s: field '%s%s': %s", c->path, c->prefix, c->field, why);
}

static const cJSON *get(const cJSON *o, const char *k)
{
	return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* An integer in [lo, hi]; absent takes def unless def < lo (required). */
static cltfs_err get_int(const cJSON *o, const char *k, int64_t lo, int64_t hi, int64_t def,
			 int64_t *out, ctx *c)
{
	c->field = k;
	const cJSON *v = get(o, k);
	if (!v) {
		if (def < lo)
			return ferr(c, "missing");
		*out = def;
		return CLTFS_OK;
	}
	if (!cJSON_IsNumber(v) || !(v->valuedouble >= -0x1p63 && v->valuedouble < 0x1p63) ||
	    v->valuedouble != (double)(int64_t)v->valuedouble)
		return ferr(c, "expected an integer");
	int64_t x = (int64_t)v->valuedouble;
	if (x < lo || x > hi) {
		char why[128];
		snprintf(why, sizeof why, "%lld is out of range [%lld, %lld]", (long long)x,
			 (long long)lo, (long long)hi);
		return ferr(c, why);
	}
	*out = x;
	return CLTFS_OK;
}

static cltfs_err get_str(const cJSON *o, const char *k, bool required, char **out, ctx *c)
{
	c->field = k;
	const cJSON *v = get(o, k);
	*out = NULL;
	if (!v || cJSON_IsNull(v))
		return required ? ferr(c, "missing") : CLTFS_OK;
	if (!cJSON_IsString(v))
		return ferr(c, "expected a string");
	if (!(*out = strdup(v->valuestring)))
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", c->path);
	return CLTFS_OK;
}

static cltfs_err get_enum(const cJSON *o, const char *k, const char *const *names, int n, int def,
			  int *out, ctx *c)
{
	c->field = k;
	const cJSON *v = get(o, k);
	if (!v && def >= 0) {
		*out = def;
		return CLTFS_OK;
	}
	if (!v)
		return ferr(c, "missing");
	if (!cJSON_IsString(v))
		return ferr(c, "expected a string");
	for (int i = 0; i < n; i++)
		if (!strcmp(v->valuestring, names[i])) {
			*out = i;
			return CLTFS_OK;
		}
	return ferr(c, "unknown value");
}

static cltfs_err get_layers(const cJSON *o, const char *k, int **out, int *n, ctx *c)
{
	c->field = k;
	const cJSON *v = get(o, k);
	if (!cJSON_IsArray(v))
		return ferr(c, "expected an array of layer numbers");
	int len = cJSON_GetArraySize(v);
	if (len > MAX_LAYERS)
		return ferr(c, "too many layers");
	*out = calloc((size_t)len + 1, sizeof **out);
	if (!*out)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", c->path);
	*n = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, v)
	{
		if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= MAX_LAYERS ||
		    it->valuedouble != (int)it->valuedouble)
			return ferr(c, "expected layer numbers in [0, 4096)");
		int L = (int)it->valuedouble;
		if (*n && L <= (*out)[*n - 1])
			return ferr(c, "layers must be strictly ascending");
		(*out)[(*n)++] = L;
	}
	return CLTFS_OK;
}

static cltfs_err parse_model(const cJSON *root, cltfs_manifest *m, ctx *c)
{
	c->field = "model";
	const cJSON *mo = get(root, "model");
	if (!cJSON_IsObject(mo))
		return ferr(c, "expected an object");
	int64_t nl, d;
	cltfs_err e;
	if ((e = get_str(mo, "id", false, &m->model_id, c)) ||
	    (e = get_str(mo, "revision", false, &m->model_revision, c)) ||
	    (e = get_str(mo, "architecture", false, &m->model_arch, c)) ||
	    (e = get_int(mo, "n_layers", 1, MAX_LAYERS, -1, &nl, c)) ||
	    (e = get_int(mo, "d_model", 1, MAX_D, -1, &d, c)))
		return e;
	m->n_layers = (int)nl;
	m->d_model = (int)d;
	return CLTFS_OK;
}

static cltfs_err parse_layout(const cJSON *root, cltfs_manifest *m, ctx *c)
{
	c->field = "layout";
	const cJSON *lo = get(root, "layout");
	if (!lo)
		return CLTFS_OK;
	if (!cJSON_IsObject(lo))
		return ferr(c, "expected an object");
	c->field = "layout.x_key";
	const cJSON *xk = get(lo, "x_key");
	if (xk) {
		if (!cJSON_IsString(xk) || (strcmp(xk->valuestring, "x") && strcmp(xk->valuestring, "data") &&
					     *xk->valuestring))
			return ferr(c, "expected \"x\", \"data\" or \"\" (a bare tensor)");
		strcpy(m->x_key, xk->valuestring);
	}
	cltfs_err e = get_enum(lo, "shape", shapes, 3, CLTFS_SHAPE_STD, &m->shape, c);
	if (e)
		return e;
	c->field = "layout.y_keys";
	const cJSON *yk = get(lo, "y_keys");
	if (yk) {
		bool seen[3] = {0};
		if (!cJSON_IsArray(yk) || cJSON_GetArraySize(yk) != 3)
			return ferr(c, "expected a permutation of y, targets, n_targets");
		for (int i = 0; i < 3; i++) {
			const cJSON *s = cJSON_GetArrayItem(yk, i);
			int which = !cJSON_IsString(s) ? -1
				    : !strcmp(s->valuestring, "y")       ? 0
				    : !strcmp(s->valuestring, "targets") ? 1
				    : !strcmp(s->valuestring, "n_targets") ? 2
									   : -1;
			if (which < 0 || seen[which])
				return ferr(c, "expected a permutation of y, targets, n_targets");
			seen[which] = true;
			strcpy(m->y_keys[i], s->valuestring);
		}
	}
	return CLTFS_OK;
}

static cltfs_err parse_samples(const cJSON *root, cltfs_manifest *m, ctx *c)
{
	c->field = "samples";
	const cJSON *sv = get(root, "samples");
	if (!cJSON_IsArray(sv) || cJSON_GetArraySize(sv) == 0)
		return ferr(c, "expected a non-empty array");
	m->n_samples = cJSON_GetArraySize(sv);
	m->samples = calloc((size_t)m->n_samples, sizeof *m->samples);
	if (!m->samples)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", c->path);
	int64_t i = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, sv)
	{
		cltfs_sample *s = &m->samples[i];
		snprintf(c->prefix, sizeof c->prefix, "samples[%lld]", (long long)i++);
		c->field = "";
		if (!cJSON_IsObject(it))
			return ferr(c, "expected an object");
		strcat(c->prefix, ".");
		cltfs_err e;
		if ((e = get_int(it, "rows", 1, INT32_MAX, -1, &s->rows, c)) ||
		    (e = get_str(it, "id", false, &s->id, c)) ||
		    (e = get_str(it, "image", false, &s->image, c)) ||
		    (e = get_str(it, "text", false, &s->text, c)))
			return e;
		if (s->id == NULL) { /* ids may be numbers, as in AMBER's query file */
			const cJSON *id = get(it, "id");
			char buf[32];
			if (cJSON_IsNumber(id)) {
				snprintf(buf, sizeof buf, "%.0f", id->valuedouble);
				if (!(s->id = strdup(buf)))
					return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			}
		}
	}
	c->prefix[0] = 0;
	return CLTFS_OK;
}

static cltfs_err parse_batches(const cJSON *root, cltfs_manifest *m, ctx *c)
{
	c->field = "batches";
	const cJSON *bv = get(root, "batches");
	if (!bv)
		return CLTFS_OK;
	if (!cJSON_IsArray(bv) || cJSON_GetArraySize(bv) == 0)
		return ferr(c, "expected a non-empty array of [S, T]");
	m->n_batches = cJSON_GetArraySize(bv);
	m->batches = calloc((size_t)m->n_batches, sizeof *m->batches);
	if (!m->batches)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", c->path);
	m->explicit_batches = true;
	int64_t i = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, bv)
	{
		const cJSON *s = cJSON_GetArrayItem(it, 0), *t = cJSON_GetArrayItem(it, 1);
		if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !cJSON_IsNumber(s) ||
		    !cJSON_IsNumber(t) || s->valuedouble < 1 || t->valuedouble < 1 ||
		    s->valuedouble > INT32_MAX || t->valuedouble > INT32_MAX)
			return ferr(c, "expected [S, T] pairs of positive integers");
		m->batches[i].samples = (int64_t)s->valuedouble;
		m->batches[i].tokens = (int64_t)t->valuedouble;
		i++;
	}
	return CLTFS_OK;
}

static cltfs_err parse_root(const cJSON *root, cltfs_manifest *m, ctx *c)
{
	cltfs_err e;
	int64_t v;
	int dt;
	static const char *const dtnames[] = {"bfloat16", "float16", "float32"};
	static const char *const pads[] = {"zero", "clip"};
	c->field = "(top level)";
	if (!cJSON_IsObject(root))
		return ferr(c, "expected a JSON object");
	c->field = "format";
	const cJSON *fmt = get(root, "format");
	if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "cltfs"))
		return ferr(c, "expected \"cltfs\": this is not a cltfs manifest");
	if ((e = get_int(root, "version", 1, 1000, -1, &v, c)))
		return e;
	if (v != 1)
		return ferr(c, "this cltfs reads format version 1 only");
	m->version = 1;
	if ((e = parse_model(root, m, c)) || (e = get_enum(root, "dtype", dtnames, 3, -1, &dt, c)))
		return e;
	m->dtype = (cltfs_dtype)dt;
	int hook;
	if ((e = get_enum(root, "input_hook", hooks, 3, 0, &hook, c)))
		return e;
	if (!(m->input_hook = strdup(hooks[hook])))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if ((e = get_int(root, "target_offset", 0, 1, 1, &v, c)))
		return e;
	m->target_offset = (int)v;
	if ((e = get_int(root, "n_targets", 1, MAX_LAYERS, 16, &v, c)))
		return e;
	m->n_targets = (int)v;
	if ((e = get_enum(root, "padding", pads, 2, 0, &m->padding, c)) ||
	    (e = get_int(root, "chunk_rows", 1, 1 << 24, -1, &m->chunk_rows, c)) ||
	    (e = get_int(root, "batch_samples", 1, INT32_MAX, 1, &m->batch_samples, c)) ||
	    (e = get_str(root, "prompt_template", false, &m->prompt_template, c)) ||
	    (e = get_layers(root, "x_layers", &m->x_layers, &m->n_x_layers, c)) ||
	    (e = get_layers(root, "mlp_layers", &m->mlp_layers, &m->n_mlp_layers, c)) ||
	    (e = parse_layout(root, m, c)) || (e = parse_samples(root, m, c)) ||
	    (e = parse_batches(root, m, c)))
		return e;
	const cJSON *src = get(root, "source");
	if (cJSON_IsObject(src) &&
	    ((e = get_str(src, "kind", false, &m->source_kind, c)) ||
	     (e = get_str(src, "path", false, &m->source_path, c)) ||
	     (e = get_str(src, "images", false, &m->source_images, c))))
		return e;
	return CLTFS_OK;
}

static cltfs_err finish_fail(const char *path, const char *fmt, long long a, long long b)
{
	char why[256];
	snprintf(why, sizeof why, fmt, a, b);
	return cltfs_fail(CLTFS_E_FORMAT, "%s: inconsistent: %s", path, why);
}

/* Derived fields: batches (when not explicit), row positions, chunks. */
cltfs_err cltfs_manifest_finish(cltfs_manifest *m, const char *path)
{
	/* what parsing checks field by field, for a manifest built in code */
	if (m->n_layers < 1 || m->n_layers > MAX_LAYERS || m->d_model < 1 || m->d_model > MAX_D)
		return finish_fail(path, "n_layers %lld or d_model %lld out of range", m->n_layers, m->d_model);
	if (m->n_targets < 1 || m->n_targets > MAX_LAYERS || m->chunk_rows < 1 || m->chunk_rows > (1 << 24))
		return finish_fail(path, "n_targets %lld or chunk_rows %lld out of range", m->n_targets, m->chunk_rows);
	if (m->n_samples < 1 || m->batch_samples < 1 || (unsigned)m->dtype >= CLTFS_NDTYPES)
		return finish_fail(path, "%lld samples, batches of %lld: nothing to serve", m->n_samples,
				   m->batch_samples);
	if (m->d_model * cltfs_dtype_size(m->dtype) * (uint64_t)m->chunk_rows > UINT32_MAX)
		return finish_fail(path, "chunk_rows %lld times the row size exceeds 4 GiB", m->chunk_rows, 0);
	if (m->n_x_layers == 0)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: inconsistent: x_layers is empty", path);
	for (int i = 0; i < m->n_x_layers; i++)
		if (m->x_layers[i] >= m->n_layers)
			return finish_fail(path, "x layer %lld is not below n_layers %lld", m->x_layers[i], m->n_layers);
	for (int i = 0; i < m->n_mlp_layers; i++)
		if (m->mlp_layers[i] >= m->n_layers)
			return finish_fail(path, "mlp layer %lld is not below n_layers %lld", m->mlp_layers[i], m->n_layers);
	for (int i = 0; i < m->n_x_layers; i++)
		for (int j = 0; j < cltfs_manifest_targets_of(m, m->x_layers[i]); j++) {
			int t = cltfs_manifest_target_layer(m, m->x_layers[i], j);
			if (t >= 0 && !cltfs_manifest_has_layer(m->mlp_layers, m->n_mlp_layers, t))
				return finish_fail(path, "layer %lld's targets need mlp layer %lld, which mlp_layers lacks",
						   m->x_layers[i], t);
		}
	int64_t row = 0;
	for (int64_t i = 0; i < m->n_samples; i++) {
		m->samples[i].first_row = row;
		row += m->samples[i].rows;
	}
	m->total_rows = row;
	if (!m->explicit_batches) {
		free(m->batches);
		m->n_batches = (m->n_samples + m->batch_samples - 1) / m->batch_samples;
		if (!(m->batches = calloc((size_t)m->n_batches, sizeof *m->batches)))
			return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
		for (int64_t b = 0; b < m->n_batches; b++) {
			int64_t s0 = b * m->batch_samples, n = m->n_samples - s0;
			m->batches[b].samples = n < m->batch_samples ? n : m->batch_samples;
		}
	}
	int64_t s = 0, chunks = 0;
	for (int64_t b = 0; b < m->n_batches; b++) {
		cltfs_batch *bt = &m->batches[b];
		bt->first_sample = s;
		if (s + bt->samples > m->n_samples)
			return finish_fail(path, "batches hold more samples (%lld+) than samples lists (%lld)",
					   s + bt->samples, m->n_samples);
		bt->first_row = m->samples[s].first_row;
		bt->rows = 0;
		int64_t longest = 0;
		for (int64_t i = s; i < s + bt->samples; i++) {
			bt->rows += m->samples[i].rows;
			if (m->samples[i].rows > longest)
				longest = m->samples[i].rows;
		}
		if (!m->explicit_batches)
			bt->tokens = longest;
		else if (longest > bt->tokens)
			return finish_fail(path, "batch %lld has T=%lld, shorter than one of its samples",
					   b, bt->tokens);
		bt->first_chunk = chunks;
		bt->chunks = (bt->rows + m->chunk_rows - 1) / m->chunk_rows;
		chunks += bt->chunks;
		s += bt->samples;
	}
	if (s != m->n_samples)
		return finish_fail(path, "batches hold %lld samples, samples lists %lld", s, m->n_samples);
	if (chunks > UINT32_MAX)
		return finish_fail(path, "too many chunks (%lld)", chunks, 0);
	m->n_chunks = chunks;
	free(m->chunk_start);
	if (!(m->chunk_start = malloc(((size_t)chunks + 1) * sizeof *m->chunk_start)))
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	for (int64_t b = 0; b < m->n_batches; b++)
		for (int64_t c = 0; c < m->batches[b].chunks; c++)
			m->chunk_start[m->batches[b].first_chunk + c] = m->batches[b].first_row + c * m->chunk_rows;
	m->chunk_start[chunks] = m->total_rows;
	return CLTFS_OK;
}

cltfs_err cltfs_manifest_parse(const char *json, size_t len, const char *path, cltfs_manifest **out)
{
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
	if (!root) {
		long long at = end ? (long long)(end - json) : -1;
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not valid JSON (error near byte %lld)", path, at);
	}
	cltfs_manifest *m = calloc(1, sizeof *m);
	if (!m) {
		cJSON_Delete(root);
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	}
	set_defaults(m);
	ctx c = {path, "", ""};
	cltfs_err e = parse_root(root, m, &c);
	cJSON_Delete(root);
	if (!e)
		e = cltfs_manifest_finish(m, path);
	if (e) {
		cltfs_manifest_free(m);
		return e;
	}
	*out = m;
	return CLTFS_OK;
}

cltfs_err cltfs_manifest_load(const char *path, cltfs_manifest **out)
{
	char *buf;
	size_t len;
	cltfs_err e = cltfs_read_file(path, &buf, &len);
	if (e)
		return e;
	e = cltfs_manifest_parse(buf, len, path, out);
	free(buf);
	return e;
}

/* ---- writing ---- */

static cJSON *layer_array(const int *l, int n)
{
	cJSON *a = cJSON_CreateArray();
	for (int i = 0; a && i < n; i++)
		if (!cJSON_AddItemToArray(a, cJSON_CreateNumber(l[i]))) {
			cJSON_Delete(a);
			return NULL;
		}
	return a;
}

static bool add_str(cJSON *o, const char *k, const char *v)
{
	return v ? cJSON_AddStringToObject(o, k, v) != NULL : cJSON_AddNullToObject(o, k) != NULL;
}

static cJSON *build(const cltfs_manifest *m)
{
	cJSON *r = cJSON_CreateObject(), *mo = cJSON_CreateObject(), *lo = cJSON_CreateObject();
	cJSON *sv = cJSON_CreateArray(), *yk = cJSON_CreateArray();
	bool ok = r && mo && lo && sv && yk;
	ok = ok && cJSON_AddStringToObject(r, "format", "cltfs") && cJSON_AddNumberToObject(r, "version", 1);
	ok = ok && add_str(mo, "id", m->model_id) && add_str(mo, "revision", m->model_revision) &&
	     (!m->model_arch || add_str(mo, "architecture", m->model_arch)) &&
	     cJSON_AddNumberToObject(mo, "n_layers", m->n_layers) &&
	     cJSON_AddNumberToObject(mo, "d_model", m->d_model) && cJSON_AddItemToObject(r, "model", mo);
	if (!ok) {
		cJSON_Delete(mo);
		cJSON_Delete(lo);
		cJSON_Delete(sv);
		cJSON_Delete(yk);
		cJSON_Delete(r);
		return NULL;
	}
	ok = cJSON_AddStringToObject(r, "dtype", cltfs_dtype_name(m->dtype)) &&
	     cJSON_AddStringToObject(r, "input_hook", m->input_hook ? m->input_hook : "mlp_in") &&
	     cJSON_AddNumberToObject(r, "target_offset", m->target_offset) &&
	     cJSON_AddNumberToObject(r, "n_targets", m->n_targets) &&
	     cJSON_AddStringToObject(r, "padding", m->padding == CLTFS_PAD_CLIP ? "clip" : "zero") &&
	     cJSON_AddNumberToObject(r, "chunk_rows", (double)m->chunk_rows) &&
	     cJSON_AddNumberToObject(r, "batch_samples", (double)m->batch_samples) &&
	     add_str(r, "prompt_template", m->prompt_template) &&
	     cJSON_AddItemToObject(r, "x_layers", layer_array(m->x_layers, m->n_x_layers)) &&
	     cJSON_AddItemToObject(r, "mlp_layers", layer_array(m->mlp_layers, m->n_mlp_layers));
	for (int i = 0; ok && i < 3; i++)
		ok = cJSON_AddItemToArray(yk, cJSON_CreateString(m->y_keys[i]));
	ok = ok && cJSON_AddStringToObject(lo, "x_key", m->x_key) &&
	     cJSON_AddStringToObject(lo, "shape", shapes[m->shape]) && cJSON_AddItemToObject(lo, "y_keys", yk);
	if (ok)
		cJSON_AddItemToObject(r, "layout", lo);
	else {
		cJSON_Delete(lo);
		cJSON_Delete(yk);
	}
	for (int64_t i = 0; ok && i < m->n_samples; i++) {
		const cltfs_sample *s = &m->samples[i];
		cJSON *so = cJSON_CreateObject();
		ok = so && cJSON_AddNumberToObject(so, "rows", (double)s->rows) &&
		     (!s->id || cJSON_AddStringToObject(so, "id", s->id)) &&
		     (!s->image || cJSON_AddStringToObject(so, "image", s->image)) &&
		     (!s->text || cJSON_AddStringToObject(so, "text", s->text));
		if (!ok || !cJSON_AddItemToArray(sv, so)) {
			cJSON_Delete(so);
			ok = false;
		}
	}
	if (ok)
		cJSON_AddItemToObject(r, "samples", sv);
	else
		cJSON_Delete(sv);
	if (ok && m->explicit_batches) {
		cJSON *bv = cJSON_AddArrayToObject(r, "batches");
		for (int64_t b = 0; ok && bv && b < m->n_batches; b++) {
			cJSON *pair = cJSON_CreateArray();
			ok = pair && cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)m->batches[b].samples)) &&
			     cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)m->batches[b].tokens)) &&
			     cJSON_AddItemToArray(bv, pair);
		}
		ok = ok && bv;
	}
	if (ok && (m->source_kind || m->source_path)) {
		cJSON *so = cJSON_AddObjectToObject(r, "source");
		ok = so && add_str(so, "kind", m->source_kind) && add_str(so, "path", m->source_path) &&
		     (!m->source_images || add_str(so, "images", m->source_images));
	}
	if (!ok) {
		cJSON_Delete(r);
		return NULL;
	}
	return r;
}

char *cltfs_manifest_dump(const cltfs_manifest *m)
{
	cJSON *r = build(m);
	if (!r)
		return NULL;
	/* Unformatted: the sample list of a large dataset stays compact. */
	char *s = cJSON_PrintUnformatted(r);
	cJSON_Delete(r);
	return s;
}

cltfs_err cltfs_manifest_save(const cltfs_manifest *m, const char *path)
{
	char *s = cltfs_manifest_dump(m);
	size_t len = s ? strlen(s) : 0;
	char *text = s ? realloc(s, len + 2) : NULL;
	if (!text) {
		free(s);
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory writing the manifest", path);
	}
	memcpy(text + len, "\n", 2);
	cltfs_err e = cltfs_write_atomic(path, text, len + 1);
	free(text);
	return e;
}
