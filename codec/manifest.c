/* manifest.c: cltfs.json, parsed and validated with cJSON.
 *
 * Everything a view's size depends on is in the manifest and its sample
 * table (samples.c), so sizes never need a chunk.  Validation is strict: an
 * unknown value, a wrong type or an inconsistency is refused with the
 * file, the field and the reason, because a manifest that is half
 * understood would serve wrong bytes.
 *
 * Format version 2 keeps cltfs.json small: the samples are in samples.bin,
 * which cltfs.json names with its CRC.  Version 1 (the samples and batch
 * shapes inline, as JSON) is still read, into the same table in memory;
 * every manifest is written as version 2, or 3 when it names a codec
 * other than zstd: a cltfs older than codecs ignores fields it does not
 * know and would read such a store's frames as zstd, failing every read;
 * version 3 makes it refuse the store at once instead.
 *
 * Version 4 (what this cltfs writes) can be trusted: the file carries a
 * CRC-32 of its own bytes ("checksum", last, computed with its 8 digits as
 * zeros), every key must be one cltfs knows, and the JSON must be strict:
 * no byte-order mark, no NUL, nothing after the value, no key twice, no
 * fraction where an integer belongs.  An edit by hand (a target count, a
 * batch's shape) would otherwise change what the mount serves without a
 * word.  Versions 1 to 3 are read as before, strictly too.
 *
 * Per batch nothing is kept but a sparse index: the first sample, row and
 * chunk of every SPARSE-th batch.  A batch's numbers are summed from there
 * over at most SPARSE-1 batches of the table, so memory is about one byte
 * per batch at 10^7 batches, and finding the batch of a row or a chunk is
 * a binary search and a short walk.
 */
#include "codec.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LAYERS 4096
#define MAX_D (1 << 20)
#define SPARSE 16
#define TABLE_NAME "samples.bin"

static const char *const hooks[] = {"mlp_in", "resid_pre", "resid_mid"};
static const char *const shapes[] = {"STd", "S1Td", "flat"};

/* The defaults of every optional field: a manifest parsed without them and
 * one built in code agree. */
static void set_defaults(cltfs_manifest *m)
{
	m->version = 2;
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
	cltfs_table_close(m->table);
	free(m->table_path);
	free(m->sp_sample);
	free(m->sp_row);
	free(m->sp_chunk);
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

void cltfs_manifest_set_table(cltfs_manifest *m, cltfs_table *t, const char *path)
{
	cltfs_table_close(m->table);
	free(m->table_path);
	m->table = t;
	m->table_path = path ? strdup(path) : NULL; /* NULL also when out of memory: it is only a hint */
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

/* ---- samples and batches ---- */

int64_t cltfs_manifest_sample_rows(const cltfs_manifest *m, int64_t i) { return m->table->rows[i]; }

cltfs_err cltfs_manifest_sample_text(const cltfs_manifest *m, int64_t i, char **buf, const char **id,
				     const char **image, const char **text)
{
	return cltfs_table_strings(m->table, (uint64_t)i, buf, id, image, text);
}

/* Batch b's samples (S), rows and longest sample (T), b's first sample
 * being s. */
static void batch_shape(const cltfs_manifest *m, int64_t b, int64_t s, int64_t *S, int64_t *rows, int64_t *T)
{
	const cltfs_table *t = m->table;
	*S = t->batches ? t->batches[2 * b] : m->n_samples - s < m->batch_samples ? m->n_samples - s : m->batch_samples;
	*rows = 0;
	int64_t longest = 0;
	for (int64_t i = s; i < s + *S; i++) {
		*rows += t->rows[i];
		if (t->rows[i] > longest)
			longest = t->rows[i];
	}
	*T = t->batches ? t->batches[2 * b + 1] : longest;
}

static int64_t chunks_of(const cltfs_manifest *m, int64_t rows) { return (rows + m->chunk_rows - 1) / m->chunk_rows; }

/* Walk from the sparse entry at or before b to b. */
static cltfs_batch walk_to(const cltfs_manifest *m, int64_t b)
{
	int64_t k = b / SPARSE;
	cltfs_batch out = {m->sp_sample[k], 0, 0, m->sp_row[k], 0, m->sp_chunk[k], 0};
	for (int64_t i = k * SPARSE;; i++) {
		batch_shape(m, i, out.first_sample, &out.samples, &out.rows, &out.tokens);
		out.chunks = chunks_of(m, out.rows);
		if (i == b)
			return out;
		out.first_sample += out.samples;
		out.first_row += out.rows;
		out.first_chunk += out.chunks;
	}
}

cltfs_batch cltfs_manifest_batch(const cltfs_manifest *m, int64_t b) { return walk_to(m, b); }

/* The last sparse entry whose value (of sp, n_batches/SPARSE+1 of them) is
 * at most v. */
static int64_t sparse_find(const cltfs_manifest *m, const int64_t *sp, int64_t v)
{
	int64_t lo = 0, hi = (m->n_batches - 1) / SPARSE;
	while (lo < hi) {
		int64_t mid = (lo + hi + 1) / 2;
		if (sp[mid] <= v)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

/* The batch holding item v of a running count (rows, chunks or samples:
 * which), from its sparse index; its number in *bi. */
static cltfs_batch batch_holding(const cltfs_manifest *m, const int64_t *sp, int which, int64_t v, int64_t *bi)
{
	int64_t b = sparse_find(m, sp, v) * SPARSE;
	cltfs_batch x = walk_to(m, b);
	for (;;) {
		int64_t first = which == 0 ? x.first_row : which == 1 ? x.first_chunk : x.first_sample;
		int64_t count = which == 0 ? x.rows : which == 1 ? x.chunks : x.samples;
		if (v < first + count || b + 1 >= m->n_batches) {
			*bi = b;
			return x;
		}
		b++;
		int64_t s = x.first_sample + x.samples;
		x.first_row += x.rows;
		x.first_chunk += x.chunks;
		x.first_sample = s;
		batch_shape(m, b, s, &x.samples, &x.rows, &x.tokens);
		x.chunks = chunks_of(m, x.rows);
	}
}

int64_t cltfs_manifest_chunk_of(const cltfs_manifest *m, int64_t row)
{
	int64_t bi;
	cltfs_batch b = batch_holding(m, m->sp_row, 0, row, &bi);
	int64_t c = b.first_chunk + (row - b.first_row) / m->chunk_rows;
	return c < b.first_chunk + b.chunks ? c : b.first_chunk + b.chunks - 1;
}

int64_t cltfs_manifest_chunk_start(const cltfs_manifest *m, int64_t c)
{
	if (c >= m->n_chunks)
		return m->total_rows;
	int64_t bi;
	cltfs_batch b = batch_holding(m, m->sp_chunk, 1, c, &bi);
	return b.first_row + (c - b.first_chunk) * m->chunk_rows;
}

int64_t cltfs_manifest_chunk_rows(const cltfs_manifest *m, int64_t c)
{
	int64_t bi;
	cltfs_batch b = batch_holding(m, m->sp_chunk, 1, c, &bi);
	int64_t start = (c - b.first_chunk) * m->chunk_rows;
	return b.rows - start < m->chunk_rows ? b.rows - start : m->chunk_rows;
}

int64_t cltfs_manifest_batch_of_chunk(const cltfs_manifest *m, int64_t c)
{
	int64_t bi;
	batch_holding(m, m->sp_chunk, 1, c, &bi);
	return bi;
}

void cltfs_manifest_chunk_starts(const cltfs_manifest *m, int64_t step, int64_t *out)
{
	int64_t n = 0, next = 0; /* starts written; the next chunk wanted */
	for (int64_t b = 0, s = 0, row = 0, chunk = 0; b < m->n_batches && next < m->n_chunks; b++) {
		int64_t S, rows, T;
		batch_shape(m, b, s, &S, &rows, &T);
		int64_t k = chunks_of(m, rows);
		for (; next < chunk + k; next += step)
			out[n++] = row + (next - chunk) * m->chunk_rows;
		s += S;
		row += rows;
		chunk += k;
	}
	out[n] = m->total_rows;
}

int64_t cltfs_manifest_sample_row(const cltfs_manifest *m, int64_t i)
{
	int64_t bi;
	cltfs_batch b = batch_holding(m, m->sp_sample, 2, i, &bi);
	int64_t row = b.first_row;
	for (int64_t s = b.first_sample; s < i; s++)
		row += m->table->rows[s];
	return row;
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

/* A version 1 manifest's "samples" (and "batches") into a table in memory. */
static cltfs_err parse_inline_samples(const cJSON *root, cltfs_manifest *m, ctx *c)
{
	c->field = "samples";
	const cJSON *sv = get(root, "samples"), *bv = get(root, "batches"), *it;
	if (!cJSON_IsArray(sv) || cJSON_GetArraySize(sv) == 0)
		return ferr(c, "expected a non-empty array");
	bool strings = false;
	cJSON_ArrayForEach(it, sv) strings |= get(it, "id") || get(it, "image") || get(it, "text");
	cltfs_table_writer *w;
	cltfs_err e = cltfs_table_writer_new(NULL, strings, &w);
	int64_t i = 0;
	cJSON_ArrayForEach(it, sv)
	{
		if (e)
			break;
		snprintf(c->prefix, sizeof c->prefix, "samples[%lld]", (long long)i++);
		c->field = "";
		if (!cJSON_IsObject(it)) {
			e = ferr(c, "expected an object");
			break;
		}
		strcat(c->prefix, ".");
		int64_t rows;
		char *id = NULL, *image = NULL, *text = NULL, num[32];
		const cJSON *idv = get(it, "id");
		if (cJSON_IsNumber(idv) && idv->valuedouble != (double)(int64_t)idv->valuedouble) {
			e = ferr(c, "id: expected a string or an integer");
			break;
		}
		if (cJSON_IsNumber(idv)) /* ids may be numbers, as in AMBER's query file */
			snprintf(num, sizeof num, "%.0f", idv->valuedouble);
		if (!(e = get_int(it, "rows", 1, INT32_MAX, -1, &rows, c)) &&
		    (cJSON_IsNumber(idv) || !(e = get_str(it, "id", false, &id, c))) &&
		    !(e = get_str(it, "image", false, &image, c)) && !(e = get_str(it, "text", false, &text, c)))
			e = cltfs_table_add(w, (uint32_t)rows, cJSON_IsNumber(idv) ? num : id, image, text);
		free(id);
		free(image);
		free(text);
	}
	c->prefix[0] = 0;
	c->field = "batches";
	if (!e && bv && (!cJSON_IsArray(bv) || cJSON_GetArraySize(bv) == 0))
		e = ferr(c, "expected a non-empty array of [S, T]");
	const cJSON *pairs = e ? NULL : bv;
	cJSON_ArrayForEach(it, pairs)
	{
		const cJSON *s = cJSON_GetArrayItem(it, 0), *t = cJSON_GetArrayItem(it, 1);
		if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !cJSON_IsNumber(s) || !cJSON_IsNumber(t) ||
		    s->valuedouble < 1 || t->valuedouble < 1 || s->valuedouble > INT32_MAX || t->valuedouble > INT32_MAX ||
		    s->valuedouble != (double)(int64_t)s->valuedouble || t->valuedouble != (double)(int64_t)t->valuedouble) {
			e = ferr(c, "expected [S, T] pairs of positive integers");
			break;
		}
		e = cltfs_table_add_batch(w, (uint32_t)s->valuedouble, (uint32_t)t->valuedouble);
		if (e)
			break;
	}
	cltfs_table *t = NULL;
	if (e) {
		cltfs_table_writer_abort(w);
		return e;
	}
	if ((e = cltfs_table_writer_finish(w, NULL, &t)))
		return e;
	cltfs_manifest_set_table(m, t, NULL);
	return CLTFS_OK;
}

/* A version 2 manifest's "samples": {"file": "samples.bin", "count": N,
 * "crc32": "..."}: the table beside path, which must be the one named. */
static cltfs_err open_table(const cJSON *root, cltfs_manifest *m, ctx *c)
{
	c->field = "samples";
	const cJSON *so = get(root, "samples");
	if (!cJSON_IsObject(so))
		return ferr(c, "expected {\"file\": \"samples.bin\", \"count\": N, \"crc32\": \"...\"}");
	const cJSON *file = get(so, "file"), *crc = get(so, "crc32");
	int64_t count;
	cltfs_err e = get_int(so, "count", 1, (int64_t)UINT32_MAX + 1, -1, &count, c);
	c->field = "samples.file";
	if (!e && (!cJSON_IsString(file) || strcmp(file->valuestring, TABLE_NAME)))
		e = ferr(c, "expected \"" TABLE_NAME "\"");
	c->field = "samples.crc32";
	if (!e && (!cJSON_IsString(crc) || strlen(crc->valuestring) != 8 ||
		   strspn(crc->valuestring, "0123456789abcdef") != 8))
		e = ferr(c, "expected 8 lowercase hex digits");
	if (e)
		return e;
	char path[4096];
	const char *slash = strrchr(c->path, '/');
	snprintf(path, sizeof path, "%.*s%s", slash ? (int)(slash - c->path + 1) : 0, c->path, TABLE_NAME);
	cltfs_table *t;
	if ((e = cltfs_table_open(path, &t)))
		return e == CLTFS_E_NOTFOUND ? cltfs_fail(e, "%s: missing (%s names it)", path, c->path) : e;
	char have[9];
	snprintf(have, sizeof have, "%08x", t->crc);
	if (strcmp(have, crc->valuestring) || (int64_t)t->n != count) {
		unsigned long long n = t->n;
		cltfs_table_close(t);
		return cltfs_fail(CLTFS_E_MISMATCH, "%s: not the sample table %s names (%llu samples, CRC %s; it says "
				  "%lld, %s)", path, c->path, n, have, (long long)count, crc->valuestring);
	}
	cltfs_manifest_set_table(m, t, path);
	return CLTFS_OK;
}

/* "codec": absent is zstd (every store made before codecs); a name this
 * cltfs does not know is refused naming the ones it does, since its frames
 * could not be read. */
static cltfs_err get_codec(const cJSON *root, cltfs_manifest *m, ctx *c)
{
	c->field = "codec";
	const cJSON *v = get(root, "codec");
	if (!v) {
		m->codec = CLTFS_CODEC_ZSTD;
		return CLTFS_OK;
	}
	if (!cJSON_IsString(v))
		return ferr(c, "expected a string (one of " CLTFS_CODEC_NAMES ")");
	if (!cltfs_codec_parse(v->valuestring, &m->codec)) {
		char why[160];
		snprintf(why, sizeof why, "unknown codec \"%.40s\": this cltfs reads " CLTFS_CODEC_NAMES, v->valuestring);
		return ferr(c, why);
	}
	return CLTFS_OK;
}

/* Every key of o is one of names (NULL-terminated), else an error naming
 * the first that is not: a misspelled option would silently take its
 * default. */
static cltfs_err only_keys(const cJSON *o, const char *where, const char *const *names, ctx *c)
{
	if (!cJSON_IsObject(o))
		return CLTFS_OK;
	for (const cJSON *it = o->child; it; it = it->next) {
		size_t i = 0;
		while (names[i] && strcmp(names[i], it->string))
			i++;
		if (!names[i]) {
			c->field = where;
			char why[160];
			snprintf(why, sizeof why, "unknown key \"%.60s\" (a cltfs newer than this one, or a typo)",
				 it->string);
			return ferr(c, why);
		}
	}
	return CLTFS_OK;
}

static cltfs_err known_keys(const cJSON *root, ctx *c)
{
	static const char *const top[] = {"format", "version", "model", "dtype", "input_hook", "target_offset",
					  "n_targets", "padding", "codec", "chunk_rows", "batch_samples",
					  "prompt_template", "x_layers", "mlp_layers", "layout", "samples",
					  "batches", "source", "checksum", NULL};
	static const char *const model[] = {"id", "revision", "architecture", "n_layers", "d_model", NULL};
	static const char *const layout[] = {"x_key", "shape", "y_keys", NULL};
	static const char *const samples[] = {"file", "count", "crc32", NULL};
	static const char *const source[] = {"kind", "path", "images", NULL};
	cltfs_err e;
	if ((e = only_keys(root, "(top level)", top, c)) || (e = only_keys(get(root, "model"), "model", model, c)) ||
	    (e = only_keys(get(root, "layout"), "layout", layout, c)) ||
	    (e = only_keys(get(root, "source"), "source", source, c)))
		return e;
	return cJSON_IsObject(get(root, "samples")) ? only_keys(get(root, "samples"), "samples", samples, c)
						     : CLTFS_OK;
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
	if (v < 1 || v > 4)
		return ferr(c, "this cltfs reads format versions 1 to 4");
	m->version = (int)v;
	if ((e = parse_model(root, m, c)) || (e = get_enum(root, "dtype", dtnames, 3, -1, &dt, c)))
		return e;
	m->dtype = (cltfs_dtype)dt;
	int hook;
	if ((e = get_enum(root, "input_hook", hooks, 3, 0, &hook, c)))
		return e;
	free(m->input_hook);
	if (!(m->input_hook = strdup(hooks[hook])))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if ((e = get_int(root, "target_offset", 0, 1, 1, &v, c)))
		return e;
	m->target_offset = (int)v;
	if ((e = get_int(root, "n_targets", 1, MAX_LAYERS, 16, &v, c)))
		return e;
	m->n_targets = (int)v;
	if ((e = get_codec(root, m, c)) || (e = get_enum(root, "padding", pads, 2, 0, &m->padding, c)) ||
	    (e = get_int(root, "chunk_rows", 1, 1 << 24, -1, &m->chunk_rows, c)) ||
	    (e = get_int(root, "batch_samples", 1, INT32_MAX, 1, &m->batch_samples, c)) ||
	    (e = get_str(root, "prompt_template", false, &m->prompt_template, c)) ||
	    (e = get_layers(root, "x_layers", &m->x_layers, &m->n_x_layers, c)) ||
	    (e = get_layers(root, "mlp_layers", &m->mlp_layers, &m->n_mlp_layers, c)) ||
	    (e = parse_layout(root, m, c)) ||
	    (e = m->version == 1 ? parse_inline_samples(root, m, c) : open_table(root, m, c)))
		return e;
	const cJSON *src = get(root, "source");
	if ((e = known_keys(root, c)))
		return e;
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

/* What parsing checks field by field, for a manifest built in code too. */
static cltfs_err check_fields(const cltfs_manifest *m, const char *path)
{
	if (m->n_layers < 1 || m->n_layers > MAX_LAYERS || m->d_model < 1 || m->d_model > MAX_D)
		return finish_fail(path, "n_layers %lld or d_model %lld out of range", m->n_layers, m->d_model);
	if (m->n_targets < 1 || m->n_targets > MAX_LAYERS || m->chunk_rows < 1 || m->chunk_rows > (1 << 24))
		return finish_fail(path, "n_targets %lld or chunk_rows %lld out of range", m->n_targets, m->chunk_rows);
	if ((unsigned)m->codec >= CLTFS_NCODECS)
		return finish_fail(path, "codec %lld is not one of %lld this cltfs knows", (long long)m->codec,
				   CLTFS_NCODECS);
	if (!m->table || m->batch_samples < 1 || (unsigned)m->dtype >= CLTFS_NDTYPES)
		return finish_fail(path, "%s, batches of %lld: nothing to serve", (long long)(m->table != NULL),
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
	return CLTFS_OK;
}

/* One pass over the table: totals, the sparse index, and every batch's
 * consistency. */
static cltfs_err index_batches(cltfs_manifest *m, const char *path)
{
	const cltfs_table *t = m->table;
	m->n_samples = (int64_t)t->n;
	m->n_batches = t->batches ? (int64_t)t->nb : (m->n_samples + m->batch_samples - 1) / m->batch_samples;
	size_t ns = (size_t)(m->n_batches / SPARSE + 2);
	free(m->sp_sample);
	free(m->sp_row);
	free(m->sp_chunk);
	m->sp_sample = malloc(ns * sizeof *m->sp_sample);
	m->sp_row = malloc(ns * sizeof *m->sp_row);
	m->sp_chunk = malloc(ns * sizeof *m->sp_chunk);
	if (!m->sp_sample || !m->sp_row || !m->sp_chunk)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	int64_t s = 0, row = 0, chunk = 0;
	m->max_batch_rows = 0;
	for (int64_t b = 0; b < m->n_batches; b++) {
		if (b % SPARSE == 0) {
			m->sp_sample[b / SPARSE] = s;
			m->sp_row[b / SPARSE] = row;
			m->sp_chunk[b / SPARSE] = chunk;
		}
		int64_t S = t->batches ? t->batches[2 * b] : 1, rows, T;
		if (S < 1 || S > m->n_samples - s || (t->batches && !t->batches[2 * b + 1]))
			return S < 1 || (t->batches && !t->batches[2 * b + 1])
				       ? finish_fail(path, "batch %lld has %lld samples or no rows", b, S)
				       : finish_fail(path, "batches hold more samples (%lld+) than samples lists (%lld)",
						     s + S, m->n_samples);
		batch_shape(m, b, s, &S, &rows, &T);
		for (int64_t i = s; i < s + S; i++)
			if (!t->rows[i] || t->rows[i] > (uint32_t)T || t->rows[i] > INT32_MAX)
				return !t->rows[i] ? finish_fail(path, "sample %lld has %lld rows", i, 0)
						   : finish_fail(path, "batch %lld has T=%lld, shorter than one of its samples",
								 b, T);
		/* the largest file a batch makes: S x T rows of d values in
		 * float32 (-o dtype=), for x and each target; sizes that do not fit
		 * in 2^56 bytes are refused, so no size computed later wraps */
		uint64_t bytes;
		if (__builtin_mul_overflow((uint64_t)S, (uint64_t)T, &bytes) ||
		    __builtin_mul_overflow(bytes, (uint64_t)m->d_model * 4u * (uint64_t)(m->n_targets + 1), &bytes) ||
		    bytes >= (UINT64_C(1) << 56))
			return finish_fail(path, "batch %lld: %lld samples of its length make files too large to serve",
					   b, S);
		s += S;
		row += rows;
		chunk += chunks_of(m, rows);
		if (rows > m->max_batch_rows)
			m->max_batch_rows = rows;
	}
	if (s != m->n_samples)
		return finish_fail(path, "batches hold %lld samples, samples lists %lld", s, m->n_samples);
	if (chunk > UINT32_MAX)
		return finish_fail(path, "too many chunks (%lld)", chunk, 0);
	m->total_rows = row;
	m->n_chunks = chunk;
	return CLTFS_OK;
}

cltfs_err cltfs_manifest_finish(cltfs_manifest *m, const char *path)
{
	cltfs_err e = check_fields(m, path);
	return e ? e : index_batches(m, path);
}

/* The first key that appears twice in one object of v (cJSON keeps both,
 * and a reader would see the first), or NULL. */
static const char *twice(const cJSON *v)
{
	for (const cJSON *a = v ? v->child : NULL; a; a = a->next) {
		for (const cJSON *b = a->next; cJSON_IsObject(v) && b; b = b->next)
			if (!strcmp(a->string, b->string))
				return a->string;
		const char *d = twice(a);
		if (d)
			return d;
	}
	return NULL;
}

/* JSON as cltfs writes it and nothing looser. */
static cltfs_err strict_parse(const char *json, size_t len, const char *path, cJSON **out)
{
	if (len >= 3 && !memcmp(json, "\xEF\xBB\xBF", 3))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: starts with a byte-order mark", path);
	const char *nul = memchr(json, 0, len);
	if (nul)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: a NUL byte at %zu", path, (size_t)(nul - json));
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
	if (!root) {
		long long at = end ? (long long)(end - json) : -1;
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not valid JSON (error near byte %lld)", path, at);
	}
	*out = NULL;
	while (end < json + len && strchr(" \t\r\n", *end))
		end++;
	const char *dup = twice(root);
	cltfs_err e = end < json + len ? cltfs_fail(CLTFS_E_FORMAT, "%s: bytes after the JSON value, at %zu", path,
						    (size_t)(end - json))
		      : dup ? cltfs_fail(CLTFS_E_FORMAT, "%s: key \"%.60s\" twice in one object", path, dup)
			    : CLTFS_OK;
	if (e)
		cJSON_Delete(root);
	else
		*out = root;
	return e;
}

#define SUM_KEY "\"checksum\":\""

/* Version 4's "checksum": the CRC-32 of the file's bytes with its own 8
 * hex digits read as zeros; it must stand in the file as cltfs writes it. */
static cltfs_err check_sum(const cJSON *root, const char *json, size_t len, const char *path)
{
	const cJSON *v = get(root, "checksum");
	if (!cJSON_IsString(v) || strlen(v->valuestring) != 8 || strspn(v->valuestring, "0123456789abcdef") != 8)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: field 'checksum': %s", path,
				  v ? "expected 8 lowercase hex digits" : "missing (a version 4 manifest has one)");
	char want[sizeof SUM_KEY + 10];
	snprintf(want, sizeof want, SUM_KEY "%s\"", v->valuestring);
	const char *at = memmem(json, len, want, strlen(want));
	if (!at || memmem(at + 1, len - (size_t)(at + 1 - json), want, strlen(want)))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: the checksum is not written as cltfs writes it", path);
	size_t digits = (size_t)(at - json) + strlen(SUM_KEY);
	uint32_t crc = cltfs_crc32(0, json, digits);
	crc = cltfs_crc32(crc, "00000000", 8);
	crc = cltfs_crc32(crc, json + digits + 8, len - digits - 8);
	char have[9];
	snprintf(have, sizeof have, "%08x", crc);
	if (strcmp(have, v->valuestring))
		return cltfs_fail(CLTFS_E_CORRUPT, "%s: its checksum says %s, its bytes give %s: the manifest was changed "
				  "after cltfs wrote it (by hand, or damaged); a changed field would change what the "
				  "mount serves", path, v->valuestring, have);
	return CLTFS_OK;
}

cltfs_err cltfs_manifest_parse(const char *json, size_t len, const char *path, cltfs_manifest **out)
{
	cJSON *root = NULL;
	cltfs_err se = strict_parse(json, len, path, &root);
	if (se)
		return se;
	cltfs_manifest *m = calloc(1, sizeof *m);
	if (!m) {
		cJSON_Delete(root);
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	}
	set_defaults(m);
	ctx c = {path, "", ""};
	cltfs_err e = parse_root(root, m, &c);
	if (!e && (m->version >= 4 || get(root, "checksum")))
		e = check_sum(root, json, len, path);
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

/* The manifest as JSON; with_codec false leaves the codec and the source out (and writes
 * version 2), for comparing datasets. */
static cJSON *build(const cltfs_manifest *m, bool with_codec)
{
	cJSON *r = cJSON_CreateObject(), *mo = cJSON_CreateObject(), *lo = cJSON_CreateObject();
	cJSON *yk = cJSON_CreateArray();
	bool codec = with_codec && m->codec != CLTFS_CODEC_ZSTD;
	bool ok = r && mo && lo && yk;
	ok = ok && cJSON_AddStringToObject(r, "format", "cltfs") &&
	     cJSON_AddNumberToObject(r, "version", with_codec ? 4 : 2);
	ok = ok && add_str(mo, "id", m->model_id) && add_str(mo, "revision", m->model_revision) &&
	     (!m->model_arch || add_str(mo, "architecture", m->model_arch)) &&
	     cJSON_AddNumberToObject(mo, "n_layers", m->n_layers) &&
	     cJSON_AddNumberToObject(mo, "d_model", m->d_model) && cJSON_AddItemToObject(r, "model", mo);
	if (!ok) {
		cJSON_Delete(mo);
		cJSON_Delete(lo);
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
	     (!codec || cJSON_AddStringToObject(r, "codec", cltfs_codec_name(m->codec))) &&
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
	char crc[9];
	snprintf(crc, sizeof crc, "%08x", m->table->crc);
	cJSON *so = ok ? cJSON_AddObjectToObject(r, "samples") : NULL;
	ok = so && cJSON_AddStringToObject(so, "file", TABLE_NAME) &&
	     cJSON_AddNumberToObject(so, "count", (double)m->table->n) && cJSON_AddStringToObject(so, "crc32", crc);
	if (ok && with_codec && (m->source_kind || m->source_path)) { /* provenance, not identity */
		cJSON *src = cJSON_AddObjectToObject(r, "source");
		ok = src && add_str(src, "kind", m->source_kind) && add_str(src, "path", m->source_path) &&
		     (!m->source_images || add_str(src, "images", m->source_images));
	}
	if (!ok) {
		cJSON_Delete(r);
		return NULL;
	}
	return r;
}

static char *dump(const cltfs_manifest *m, bool with_codec)
{
	cJSON *r = build(m, with_codec);
	char *s = r ? cJSON_PrintUnformatted(r) : NULL;
	cJSON_Delete(r);
	return s;
}

char *cltfs_manifest_dump(const cltfs_manifest *m) { return dump(m, true); }

char *cltfs_manifest_text(const cltfs_manifest *m)
{
	cJSON *r = build(m, true);
	char *s = r && cJSON_AddStringToObject(r, "checksum", "00000000") ? cJSON_PrintUnformatted(r) : NULL;
	cJSON_Delete(r);
	size_t len = s ? strlen(s) : 0;
	char *text = s ? realloc(s, len + 2) : NULL;
	if (!text) {
		free(s);
		return NULL;
	}
	memcpy(text + len, "\n", 2);
	char *at = strstr(text, SUM_KEY "00000000\"");
	char hex[9];
	snprintf(hex, sizeof hex, "%08x", cltfs_crc32(0, text, len + 1));
	memcpy(at + strlen(SUM_KEY), hex, 8);
	return text;
}

bool cltfs_manifest_same(const cltfs_manifest *a, const cltfs_manifest *b)
{
	char *x = dump(a, false), *y = dump(b, false);
	bool same = x && y && !strcmp(x, y);
	free(x);
	free(y);
	return same;
}

cltfs_err cltfs_manifest_save(const cltfs_manifest *m, const char *path)
{
	/* the table first, then cltfs.json, which names it: a reader never
	 * sees a manifest whose table is not there */
	char tpath[4096];
	const char *slash = strrchr(path, '/');
	snprintf(tpath, sizeof tpath, "%.*s%s", slash ? (int)(slash - path + 1) : 0, path, TABLE_NAME);
	cltfs_err e = CLTFS_OK;
	if (!m->table_path || strcmp(m->table_path, tpath))
		e = cltfs_table_save(m->table, tpath);
	char *text = e ? NULL : cltfs_manifest_text(m);
	if (!e && !text)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory writing the manifest", path);
	if (!e)
		e = cltfs_write_atomic(path, text, strlen(text));
	free(text);
	return e;
}
