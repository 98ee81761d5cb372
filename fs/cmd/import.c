/* import.c: a materialized CLT tree into a store.
 *
 * The tree (L<n>/batch_<k>_{x,y}.pt, DESIGN.md section 1) repeats every MLP
 * output in up to n_targets y files.  Import keeps each distinct stream
 * once: x@L from the x files and mlp@t from the targets, chunk by chunk.
 *
 * Plan: list the tree, read each batch's shape from the first layer's x
 * file, and the format (keys, dtype, d, n_targets) from batch 0; targets
 * that are zero in batch 0 past some layer are the padding, which fixes
 * n_layers.  The manifest is written before any chunk, so an interrupted
 * import leaves a valid store, and a re-run skips what is there.
 *
 * Trust nothing: every file's structure is checked against the plan, a
 * chunk that is already stored is compared byte for byte through the view
 * that will serve it, and each file is finally re-composed from the store
 * exactly as the mount will serve it, parsed back, and compared with the
 * source.  Import reports success only when every value of the tree came
 * back.  A batch's chunks become durable (their index records written) only
 * once every file of the batch agreed, so a refused import never leaves
 * one side of a disagreement in the store.
 */
#include "cmd.h"
#include "view.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
	const char *src;
	int *layers;
	int nlayers;
	int64_t nbatches;
	const import_opts *o;
	cltfs_manifest *m;
	int64_t *S, *T; /* per batch */
	uint64_t src_bytes;
	double t0;
} plan;

static void file_path(const plan *p, int layer, int64_t k, char xy, char *buf, size_t n)
{
	snprintf(buf, n, "%s/L%d/batch_%lld_%c.pt", p->src, layer, (long long)k, xy);
}

static int cmp_int(const void *a, const void *b)
{
	return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

/* Largest batch number of one layer directory; x and y both counted. */
static cltfs_err scan_layer(const plan *p, int layer, int64_t *maxk, uint64_t *bytes)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s/L%d", p->src, layer);
	DIR *d = opendir(dir);
	if (!d)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", dir, strerror(errno));
	struct dirent *de;
	while ((de = readdir(d))) {
		int64_t k;
		int is_y;
		if (!cltfs_parse_batch_name(de->d_name, &k, &is_y))
			continue;
		if (k > *maxk)
			*maxk = k;
		char path[PATH_MAX];
		struct stat st;
		snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
		if (!stat(path, &st))
			*bytes += (uint64_t)st.st_size;
	}
	closedir(d);
	return CLTFS_OK;
}

static cltfs_err list_tree(plan *p)
{
	DIR *d = opendir(p->src);
	if (!d)
		return cltfs_fail(errno == ENOENT ? CLTFS_E_NOTFOUND : CLTFS_E_IO, "%s: %s", p->src,
				  strerror(errno));
	int cap = 0;
	struct dirent *de;
	cltfs_err e = CLTFS_OK;
	while (!e && (de = readdir(d))) {
		int64_t L;
		char path[PATH_MAX];
		struct stat st;
		if (de->d_name[0] != 'L' || !cltfs_parse_dec(de->d_name + 1, strlen(de->d_name + 1), &L) || L >= 4096)
			continue;
		snprintf(path, sizeof path, "%s/%s", p->src, de->d_name);
		if (stat(path, &st) || !S_ISDIR(st.st_mode))
			continue;
		if (p->nlayers == cap) {
			cap = cap ? cap * 2 : 32;
			int *nl = realloc(p->layers, (size_t)cap * sizeof *nl);
			if (!nl) {
				e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
				break;
			}
			p->layers = nl;
		}
		p->layers[p->nlayers++] = (int)L;
	}
	closedir(d);
	if (e)
		return e;
	if (!p->nlayers)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: no L<n>/ directories: not a CLT activation tree", p->src);
	qsort(p->layers, (size_t)p->nlayers, sizeof *p->layers, cmp_int);
	int64_t maxk = -1;
	for (int i = 0; !e && i < p->nlayers; i++)
		e = scan_layer(p, p->layers[i], &maxk, &p->src_bytes);
	if (!e && maxk < 0)
		e = cltfs_fail(CLTFS_E_FORMAT, "%s/L%d: no batch_<k>_x.pt files", p->src, p->layers[0]);
	p->nbatches = maxk + 1;
	/* Every layer must hold every batch, x and y: name the first missing. */
	for (int i = 0; !e && i < p->nlayers; i++)
		for (int64_t k = 0; !e && k < p->nbatches; k++)
			for (int xy = 0; !e && xy < 2; xy++) {
				char path[PATH_MAX];
				struct stat st;
				file_path(p, p->layers[i], k, xy ? 'y' : 'x', path, sizeof path);
				if (stat(path, &st))
					e = cltfs_fail(CLTFS_E_NOTFOUND, "%s: missing (every layer needs batch_0..%lld, x and y)",
						       path, (long long)p->nbatches - 1);
			}
	return e;
}

/* The x tensor of an x file: {'x': t}, {'data': t} or a bare tensor. */
static const pt_obj *x_tensor(const pt_obj *root, const char **key)
{
	if (root->kind == PT_TENSOR) {
		*key = "";
		return root;
	}
	if (root->kind != PT_DICT || root->u.dict.n != 1)
		return NULL;
	const pt_obj *t = pt_get(root, "x");
	*key = "x";
	if (!t) {
		t = pt_get(root, "data");
		*key = "data";
	}
	return t && t->kind == PT_TENSOR ? t : NULL;
}

/* S and T of a tensor in the layout; rows = S * T. */
static bool shape_of(const pt_obj *t, int layout, int d, int64_t *S, int64_t *T)
{
	const int64_t *sh = t->u.t.shape;
	int n = t->u.t.ndim;
	if (layout == CLTFS_SHAPE_STD && n == 3 && sh[2] == d) {
		*S = sh[0];
		*T = sh[1];
	} else if (layout == CLTFS_SHAPE_S1TD && n == 4 && sh[1] == 1 && sh[3] == d) {
		*S = sh[0];
		*T = sh[2];
	} else if (layout == CLTFS_SHAPE_FLAT && n == 2 && sh[1] == d) {
		*S = 1;
		*T = sh[0];
	} else {
		return false;
	}
	return *S > 0 && *T > 0;
}

static void shape_str(const pt_obj *t, char *buf, size_t n)
{
	size_t at = (size_t)snprintf(buf, n, "[");
	for (int i = 0; i < t->u.t.ndim && at < n; i++)
		at += (size_t)snprintf(buf + at, n - at, "%s%lld", i ? ", " : "", (long long)t->u.t.shape[i]);
	if (at < n)
		snprintf(buf + at, n - at, "]");
}

/* A source file is read through a mapping (pt_open).  A page that cannot
 * be read in (an I/O error on NFS or Lustre, a file cut short while we read
 * it) raises SIGBUS, not an error return.  The handler names the file and
 * exits 1, leaving the store as a kill would: every batch made durable so
 * far is kept and a re-run goes on from there (test_kill_import).  Import
 * opens one source at a time; while pt_open maps and parses it, its range
 * is not known yet (base NULL), and nothing else is read then. */
static struct {
	const char *volatile path;
	const uint8_t *volatile base;
	volatile size_t len;
} src_now;
static volatile sig_atomic_t mid_line; /* a progress line waits for its end */

static void say(const char *s)
{
	size_t n = strlen(s);
	while (n) {
		ssize_t w = write(2, s, n);
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	(void)ctx;
	const uint8_t *a = si->si_addr, *b = src_now.base;
	const char *path = src_now.path;
	if (path && (!b || (a >= b && a < b + src_now.len))) {
		say(mid_line ? "\ncltfs: " : "cltfs: ");
		say(path);
		say(": reading it failed (an I/O error, or the file was cut short while being imported); the batches "
		    "imported before it are kept: run the import again\n");
		_exit(1);
	}
	signal(sig, SIG_DFL); /* not a source's page: fault again, unhandled */
}

static void close_src(pt_archive *ar)
{
	src_now.path = NULL;
	pt_close(ar);
}

/* Open a source file; check_crcs reads every byte against its record's CRC. */
static cltfs_err open_src(const char *path, pt_archive **ar, bool check_crcs)
{
	src_now.base = NULL;
	src_now.path = path;
	cltfs_err e = pt_open(path, ar);
	if (e) {
		src_now.path = NULL;
		return e;
	}
	size_t len;
	src_now.base = pt_bytes(*ar, &len);
	src_now.len = len;
	if (check_crcs && (e = pt_check_crcs(*ar, path))) {
		close_src(*ar);
		*ar = NULL;
	}
	return e;
}

/* The format from batch 0's x file: key, layout, dtype, d. */
static cltfs_err set_format(plan *p, const char *path, const pt_obj *t, const char *key)
{
	cltfs_manifest *m = p->m;
	snprintf(m->x_key, sizeof m->x_key, "%s", key);
	m->dtype = t->u.t.dtype;
	int n = t->u.t.ndim;
	m->d_model = n >= 2 ? (int)t->u.t.shape[n - 1] : 0;
	m->shape = n == 3 ? CLTFS_SHAPE_STD : n == 4 ? CLTFS_SHAPE_S1TD : CLTFS_SHAPE_FLAT;
	int64_t S, T;
	char sh[128];
	shape_str(t, sh, sizeof sh);
	if (m->d_model < 1 || !shape_of(t, m->shape, m->d_model, &S, &T))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: x has shape %s; expected [S, T, d], [S, 1, T, d] or [rows, d]",
				  path, sh);
	return CLTFS_OK;
}

/* Batch shapes from the first layer's x files; batch 0 sets the format. */
static cltfs_err plan_batches(plan *p)
{
	p->S = calloc((size_t)p->nbatches, sizeof *p->S);
	p->T = calloc((size_t)p->nbatches, sizeof *p->T);
	if (!p->S || !p->T)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int64_t k = 0; k < p->nbatches; k++) {
		char path[PATH_MAX];
		file_path(p, p->layers[0], k, 'x', path, sizeof path);
		pt_archive *ar;
		cltfs_err e = open_src(path, &ar, k == 0);
		if (e)
			return e;
		const char *key;
		const pt_obj *t = x_tensor(pt_root(ar), &key);
		char sh[128] = "?";
		if (!t)
			e = cltfs_fail(CLTFS_E_FORMAT, "%s: expected {'x': tensor}, {'data': tensor} or a tensor", path);
		else if (k == 0)
			e = set_format(p, path, t, key);
		if (t)
			shape_str(t, sh, sizeof sh);
		if (!e && (strcmp(key, p->m->x_key) || t->u.t.dtype != p->m->dtype ||
			   !shape_of(t, p->m->shape, p->m->d_model, &p->S[k], &p->T[k])))
			e = cltfs_fail(CLTFS_E_MISMATCH, "%s: x is %s %s under key '%s'; batch 0 set %s under key '%s'",
				       path, cltfs_dtype_name(t->u.t.dtype), sh, key, cltfs_dtype_name(p->m->dtype),
				       p->m->x_key);
		close_src(ar);
		if (e)
			return e;
	}
	return CLTFS_OK;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	static const uint8_t z[4096];
	while (n) {
		size_t k = n < sizeof z ? n : sizeof z;
		if (memcmp(p, z, k))
			return false;
		p += k;
		n -= k;
	}
	return true;
}

/* The y dict's parts, checked: keys, n_targets, targets list of tensors. */
static cltfs_err y_parts(const char *path, const pt_obj *root, const pt_obj **y, const pt_obj **targets,
			 int64_t *n_targets)
{
	const pt_obj *nt = pt_get(root, "n_targets");
	*y = pt_get(root, "y");
	*targets = pt_get(root, "targets");
	if (root->kind != PT_DICT || root->u.dict.n != 3 || !*y || !*targets || !nt)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: expected a dict with keys y, targets, n_targets", path);
	if ((*y)->kind != PT_TENSOR || ((*targets)->kind != PT_LIST && (*targets)->kind != PT_TUPLE) ||
	    nt->kind != PT_INT)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: y must be a tensor, targets a list, n_targets an int", path);
	*n_targets = nt->u.i;
	for (size_t j = 0; j < (*targets)->u.seq.n; j++)
		if ((*targets)->u.seq.v[j]->kind != PT_TENSOR)
			return cltfs_fail(CLTFS_E_FORMAT, "%s: targets[%zu] is not a tensor", path, j);
	return CLTFS_OK;
}

/* Target counts and padding from batch 0's y files: the targets that are
 * all zero past the last nonzero layer are padding; the layer after the
 * last nonzero target is n_layers. */
static cltfs_err plan_targets(plan *p)
{
	cltfs_manifest *m = p->m;
	int max_nt = 0, min_nt = INT_MAX, last_nonzero = -1, clip_layers = -1;
	cltfs_err e = CLTFS_OK;
	for (int i = 0; !e && i < p->nlayers; i++) {
		int L = p->layers[i];
		char path[PATH_MAX];
		file_path(p, L, 0, 'y', path, sizeof path);
		pt_archive *ar;
		if ((e = open_src(path, &ar, true)))
			break;
		const pt_obj *y, *tg;
		int64_t nt;
		if (!(e = y_parts(path, pt_root(ar), &y, &tg, &nt))) {
			if ((size_t)nt != tg->u.seq.n)
				e = cltfs_fail(CLTFS_E_FORMAT, "%s: n_targets is %lld but targets holds %zu", path,
					       (long long)nt, tg->u.seq.n);
			if (i == 0) {
				const pt_obj *root = pt_root(ar);
				for (int k = 0; k < 3; k++) {
					const pt_obj *ks = root->u.dict.k[k];
					snprintf(m->y_keys[k], sizeof m->y_keys[k], "%.*s", (int)ks->u.str.len, ks->u.str.s);
				}
			}
		}
		for (size_t j = 0; !e && j < tg->u.seq.n; j++) {
			const pt_obj *t = tg->u.seq.v[j];
			size_t bytes = (size_t)pt_tensor_numel(t) * cltfs_dtype_size(t->u.t.dtype);
			const void *data = pt_tensor_data(ar, t);
			int layer = L + p->o->target_offset + (int)j;
			if (data && !all_zero(data, bytes) && layer > last_nonzero)
				last_nonzero = layer;
		}
		if (!e) {
			int n = (int)tg->u.seq.n;
			if (n > max_nt)
				max_nt = n;
			if (n < min_nt) {
				min_nt = n;
				clip_layers = L + p->o->target_offset + n;
			}
		}
		close_src(ar);
	}
	if (e)
		return e;
	if (max_nt == 0)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: the y files hold no targets", p->src);
	m->n_targets = max_nt;
	int top = p->layers[p->nlayers - 1];
	if (min_nt < max_nt) { /* targets past the last layer were dropped */
		m->padding = CLTFS_PAD_CLIP;
		m->n_layers = clip_layers;
	} else {
		m->padding = CLTFS_PAD_ZERO;
		m->n_layers = last_nonzero + 1;
	}
	if (m->n_layers <= top)
		m->n_layers = top + 1;
	return CLTFS_OK;
}

/* The tree's shapes, kept as the sample table: every sample of a batch
 * has its batch's T rows. */
static cltfs_err plan_table(plan *p)
{
	cltfs_table_writer *w;
	cltfs_table *t;
	cltfs_err e = cltfs_table_writer_new(NULL, false, &w);
	if (e)
		return e;
	for (int64_t k = 0; !e && k < p->nbatches; k++) {
		if (p->S[k] > UINT32_MAX || p->T[k] > INT32_MAX)
			e = cltfs_fail(CLTFS_E_FORMAT, "%s: batch %lld has shape [%lld, %lld]", p->src, (long long)k,
				       (long long)p->S[k], (long long)p->T[k]);
		for (int64_t i = 0; !e && i < p->S[k]; i++)
			e = cltfs_table_add(w, (uint32_t)p->T[k], NULL, NULL, NULL);
		if (!e)
			e = cltfs_table_add_batch(w, (uint32_t)p->S[k], (uint32_t)p->T[k]);
	}
	if (e) {
		cltfs_table_writer_abort(w);
		return e;
	}
	if ((e = cltfs_table_writer_finish(w, NULL, &t)))
		return e;
	cltfs_manifest_set_table(p->m, t, NULL);
	return CLTFS_OK;
}

static cltfs_err plan_manifest(plan *p)
{
	cltfs_manifest *m = p->m;
	m->target_offset = p->o->target_offset;
	m->codec = p->o->codec >= 0 ? (cltfs_codec)p->o->codec : CLTFS_CODEC_ZSTD;
	m->source_kind = strdup("import");
	char abs[PATH_MAX];
	m->source_path = strdup(realpath(p->src, abs) ? abs : p->src);
	if (!m->source_kind || !m->source_path)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err e;
	if ((e = plan_batches(p)) || (e = plan_targets(p)))
		return e;
	m->chunk_rows = p->o->chunk_rows > 0 ? p->o->chunk_rows : cltfs_default_chunk_rows(m->d_model, m->dtype);
	m->batch_samples = p->S[0];
	m->n_x_layers = p->nlayers;
	m->x_layers = malloc((size_t)p->nlayers * sizeof *m->x_layers);
	m->mlp_layers = calloc((size_t)m->n_layers + 1, sizeof *m->mlp_layers);
	if (!m->x_layers || !m->mlp_layers)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	memcpy(m->x_layers, p->layers, (size_t)p->nlayers * sizeof *p->layers);
	for (int t = 0; t < m->n_layers; t++) /* every target layer some y file needs */
		for (int i = 0; i < p->nlayers; i++) {
			int j = t - p->layers[i] - m->target_offset;
			if (j >= 0 && j < cltfs_manifest_targets_of(m, p->layers[i])) {
				m->mlp_layers[m->n_mlp_layers++] = t;
				break;
			}
		}
	if (p->nbatches < 1 || p->nbatches > INT32_MAX)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: %lld batches", p->src, (long long)p->nbatches);
	if ((e = plan_table(p)))
		return e;
	return cltfs_manifest_finish(m, "(planned manifest)");
}

/* ---- the import pass ---- */

typedef struct {
	uint64_t key;
	int layer, is_y; /* the file that supplied the chunk */
} owner;

typedef struct {
	plan *p;
	cltfs_store *s;
	cltfs_fs *fs;
	store_writer *w;
	uint64_t written, skipped, files, bytes_done;
	uint8_t *gather;
	size_t gcap;
	uint8_t *piece; /* a piece of a view's storage, for comparing */
	size_t piececap;
	owner *own; /* chunks written in the current batch, and by which file */
	size_t nown, owncap;
	int cur_layer, cur_is_y; /* the file being verified */
	int64_t cur_batch;
} run;

static cltfs_err note_owner(run *r, uint64_t key, int layer, int is_y)
{
	if (!cltfs_grow(&r->own, &r->owncap, r->nown + 1, sizeof *r->own))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	r->own[r->nown++] = (owner){key, layer, is_y};
	return CLTFS_OK;
}

/* Contiguous bytes of a tensor: in the map, or gathered into a buffer. */
static const uint8_t *tensor_bytes(run *r, const pt_archive *ar, const pt_obj *t)
{
	const uint8_t *d = pt_tensor_data(ar, t);
	if (d)
		return d;
	size_t n = (size_t)pt_tensor_numel(t) * cltfs_dtype_size(t->u.t.dtype);
	if (!cltfs_reserve(&r->gather, &r->gcap, n))
		return NULL;
	return pt_tensor_read(ar, t, r->gather) ? NULL : r->gather;
}

/* Store the chunks of batch k of one stream that the store lacks; the file
 * they come from is (from_layer, from_y). */
static cltfs_err put_stream(run *r, int kind, int layer, int64_t k, const uint8_t *data, int from_layer,
			    int from_y)
{
	const cltfs_manifest *m = r->p->m;
	cltfs_batch bt = cltfs_manifest_batch(m, k);
	const cltfs_batch *b = &bt;
	size_t row = (size_t)m->d_model * cltfs_dtype_size(m->dtype);
	for (int64_t c = b->first_chunk; c < b->first_chunk + b->chunks; c++) {
		uint64_t key = cltfs_key((unsigned)kind, (unsigned)layer, (uint32_t)c);
		cltfs_rec rec;
		if (store_lookup(r->s, key, &rec)) {
			r->skipped++; /* compared below, through the view */
			continue;
		}
		size_t off = (size_t)(cltfs_manifest_chunk_start(m, c) - b->first_row) * row;
		size_t len = (size_t)cltfs_manifest_chunk_rows(m, c) * row;
		cltfs_err e = store_writer_add(r->w, key, data + off, len);
		if (!e)
			e = note_owner(r, key, from_layer, from_y);
		if (e)
			return e;
		r->written++;
	}
	return CLTFS_OK;
}

static cltfs_err check_tensor(const char *path, const char *what, const pt_obj *t, const plan *p, int64_t k)
{
	int64_t S, T;
	char sh[128];
	shape_str(t, sh, sizeof sh);
	if (t->u.t.dtype != p->m->dtype || !shape_of(t, p->m->shape, p->m->d_model, &S, &T) || S != p->S[k] ||
	    T != p->T[k])
		return cltfs_fail(CLTFS_E_MISMATCH, "%s: %s is %s %s; the x file of batch %lld in L%d is %s with S=%lld T=%lld",
				  path, what, cltfs_dtype_name(t->u.t.dtype), sh, (long long)k, p->layers[0],
				  cltfs_dtype_name(p->m->dtype), (long long)p->S[k], (long long)p->T[k]);
	return CLTFS_OK;
}

static bool same_obj_shape(const pt_obj *a, const pt_obj *b, int depth)
{
	if (a->kind != b->kind || depth > 32)
		return false;
	switch (a->kind) {
	case PT_INT:
		return a->u.i == b->u.i;
	case PT_STR:
		return a->u.str.len == b->u.str.len && !memcmp(a->u.str.s, b->u.str.s, a->u.str.len);
	case PT_TENSOR:
		return a->u.t.dtype == b->u.t.dtype && a->u.t.ndim == b->u.t.ndim &&
		       !memcmp(a->u.t.shape, b->u.t.shape, (size_t)a->u.t.ndim * sizeof *a->u.t.shape);
	case PT_LIST:
	case PT_TUPLE:
		if (a->u.seq.n != b->u.seq.n)
			return false;
		for (size_t i = 0; i < a->u.seq.n; i++)
			if (!same_obj_shape(a->u.seq.v[i], b->u.seq.v[i], depth + 1))
				return false;
		return true;
	case PT_DICT:
		if (a->u.dict.n != b->u.dict.n)
			return false;
		for (size_t i = 0; i < a->u.dict.n; i++)
			if (!same_obj_shape(a->u.dict.k[i], b->u.dict.k[i], depth + 1) ||
			    !same_obj_shape(a->u.dict.v[i], b->u.dict.v[i], depth + 1))
				return false;
		return true;
	default:
		return true;
	}
}

/* A tensor of the file being verified differs from the store at byte at:
 * name the stream, the row, and the file that supplied it. */
static cltfs_err disagreement(run *r, const char *path, const char *where, size_t at)
{
	const cltfs_manifest *m = r->p->m;
	size_t row = (size_t)m->d_model * cltfs_dtype_size(m->dtype);
	int j = !strncmp(where, "targets[", 8) ? atoi(where + 8) : 0;
	bool is_mlp = r->cur_is_y;
	int layer = is_mlp ? cltfs_manifest_target_layer(m, r->cur_layer, j) : r->cur_layer;
	int64_t c = cltfs_manifest_chunk_of(m, cltfs_manifest_batch(m, r->cur_batch).first_row + (int64_t)(at / row));
	uint64_t key = cltfs_key(is_mlp ? CLTFS_STREAM_MLP : CLTFS_STREAM_X, (unsigned)(layer < 0 ? 0 : layer),
				 (uint32_t)c);
	char other[PATH_MAX] = "";
	for (size_t i = 0; i < r->nown; i++)
		if (r->own[i].key == key)
			file_path(r->p, r->own[i].layer, r->cur_batch, r->own[i].is_y ? 'y' : 'x', other, sizeof other);
	return cltfs_fail(CLTFS_E_MISMATCH,
			  "%s: %s (%s@%d of batch %lld, first difference in row %lld) differs from %s%s; "
			  "refusing both: nothing of this batch was stored",
			  path, where, is_mlp ? "mlp" : "x", layer, (long long)r->cur_batch, (long long)(at / row),
			  *other ? "the same layer and rows in " : "what an earlier import stored for the same layer and rows",
			  other);
}

#define PIECE ((size_t)16 << 20) /* compared at a time: memory stays bounded */

/* One source tensor against the view's storage bytes, piece by piece. */
static cltfs_err same_tensor(run *r, view *v, const char *path, const pt_archive *sa, const pt_obj *a,
			     const pt_obj *b, const char *where)
{
	const uint8_t *x = tensor_bytes(r, sa, a);
	if (!x)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	size_t es = cltfs_dtype_size(b->u.t.dtype), n = (size_t)pt_tensor_numel(a) * es;
	size_t st = (size_t)strtoul(b->u.t.key, NULL, 10);
	for (size_t off = 0; off < n; off += PIECE) {
		size_t len = n - off < PIECE ? n - off : PIECE;
		if (!cltfs_reserve(&r->piece, &r->piececap, len))
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		cltfs_err e = view_storage_pread(r->fs, v, st, (uint64_t)b->u.t.offset * es + off, len, r->piece);
		if (e)
			return cltfs_wrap(e, "%s: %s", path, where);
		if (memcmp(x + off, r->piece, len)) {
			size_t at = 0;
			while (x[off + at] == r->piece[at])
				at++;
			return disagreement(r, path, where, off + at);
		}
	}
	return CLTFS_OK;
}

/* Compare every tensor of the source with the view's, in order. */
static cltfs_err same_values(run *r, view *v, const char *path, const pt_archive *sa, const pt_obj *a,
			     const pt_obj *b, const char *where)
{
	if (a->kind == PT_TENSOR)
		return same_tensor(r, v, path, sa, a, b, where);
	if (a->kind == PT_LIST || a->kind == PT_TUPLE) {
		for (size_t i = 0; i < a->u.seq.n; i++) {
			char w[64];
			snprintf(w, sizeof w, "targets[%zu]", i);
			cltfs_err e = same_values(r, v, path, sa, a->u.seq.v[i], b->u.seq.v[i], w);
			if (e)
				return e;
		}
	} else if (a->kind == PT_DICT) {
		for (size_t i = 0; i < a->u.dict.n; i++) {
			const pt_obj *k = a->u.dict.k[i];
			char w[64];
			snprintf(w, sizeof w, "'%.*s'", k->kind == PT_STR ? (int)k->u.str.len : 1,
				 k->kind == PT_STR ? k->u.str.s : "?");
			cltfs_err e = same_values(r, v, path, sa, a->u.dict.v[i], b->u.dict.v[i], w);
			if (e)
				return e;
		}
	}
	return CLTFS_OK;
}

/* Read the view back from the store as the mount serves it: its pickle must
 * describe the file's keys, shapes and dtypes, and each tensor's storage
 * must hold the file's values.  Compared in bounded pieces, so a
 * multi-gigabyte file costs no more memory than a small one. */
static cltfs_err verify_file(run *r, const char *path, const pt_archive *src, int li, int64_t k, int is_y)
{
	r->cur_layer = r->p->layers[li];
	r->cur_is_y = is_y;
	r->cur_batch = k;
	view *v;
	cltfs_err e = view_open(r->fs, li, k, is_y, &v);
	if (e)
		return cltfs_wrap(e, "%s", path);
	size_t plen;
	const uint8_t *pkl = view_pickle(v, &plen);
	pt_arena *a = pt_arena_new();
	pt_obj *root;
	if (!a)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	else if ((e = pt_unpickle(a, pkl, plen, &root)))
		e = cltfs_wrap(e, "%s: the view's own pickle", path);
	else if (!same_obj_shape(pt_root(src), root, 0))
		e = cltfs_fail(CLTFS_E_MISMATCH, "%s: the view's keys, shapes or dtypes differ from the file", path);
	else
		e = same_values(r, v, path, src, pt_root(src), root, "x");
	pt_arena_free(a);
	view_close(v);
	return e;
}

static cltfs_err import_x(run *r, int li, int64_t k)
{
	plan *p = r->p;
	char path[PATH_MAX];
	file_path(p, p->layers[li], k, 'x', path, sizeof path);
	pt_archive *ar;
	cltfs_err e = open_src(path, &ar, true);
	if (e)
		return e;
	const char *key;
	const pt_obj *t = x_tensor(pt_root(ar), &key);
	if (!t || strcmp(key, p->m->x_key))
		e = cltfs_fail(CLTFS_E_MISMATCH, "%s: not a tensor under key '%s' like the other x files", path,
			       p->m->x_key);
	if (!e)
		e = check_tensor(path, "x", t, p, k);
	const uint8_t *data = e ? NULL : tensor_bytes(r, ar, t);
	if (!e && !data)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e)
		e = put_stream(r, CLTFS_STREAM_X, p->layers[li], k, data, p->layers[li], 0);
	if (!e)
		e = verify_file(r, path, ar, li, k, 0);
	close_src(ar);
	return e;
}

static cltfs_err import_y(run *r, int li, int64_t k)
{
	plan *p = r->p;
	const cltfs_manifest *m = p->m;
	int L = p->layers[li];
	char path[PATH_MAX];
	file_path(p, L, k, 'y', path, sizeof path);
	pt_archive *ar;
	cltfs_err e = open_src(path, &ar, true);
	if (e)
		return e;
	const pt_obj *y, *tg;
	int64_t nt;
	int want = cltfs_manifest_targets_of(m, L);
	if (!(e = y_parts(path, pt_root(ar), &y, &tg, &nt)) && (nt != want || (int64_t)tg->u.seq.n != want))
		e = cltfs_fail(CLTFS_E_MISMATCH, "%s: holds %zu targets (n_targets %lld); expected %d", path,
			       tg->u.seq.n, (long long)nt, want);
	if (!e)
		e = check_tensor(path, "y", y, p, k);
	for (int j = 0; !e && j < want; j++) {
		const pt_obj *t = tg->u.seq.v[j];
		char what[32];
		snprintf(what, sizeof what, "targets[%d]", j);
		if ((e = check_tensor(path, what, t, p, k)))
			break;
		const uint8_t *data = tensor_bytes(r, ar, t);
		size_t n = (size_t)pt_tensor_numel(t) * cltfs_dtype_size(t->u.t.dtype);
		int layer = cltfs_manifest_target_layer(m, L, j);
		if (!data)
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		else if (layer < 0 && !all_zero(data, n))
			e = cltfs_fail(CLTFS_E_MISMATCH,
				       "%s: targets[%d] (layer %d) is not zero, but batch 0 marks layers from %d on as zero "
				       "padding past the last layer",
				       path, j, L + m->target_offset + j, m->n_layers);
		else if (layer >= 0)
			e = put_stream(r, CLTFS_STREAM_MLP, layer, k, data, L, 1);
	}
	if (!e) /* y must equal targets[0]: the view serves one tensor for both */
		e = verify_file(r, path, ar, li, k, 1);
	close_src(ar);
	return e;
}

static void progress(run *r, int64_t k, bool tty, bool done)
{
	if (!tty)
		return;
	double dt = cltfs_now() - r->p->t0;
	fprintf(stderr, "\rimport: batch %lld/%lld, %llu files, %.0f MB/s%s", (long long)k,
		(long long)r->p->nbatches, (unsigned long long)r->files,
		dt > 0 ? (double)r->bytes_done / 1e6 / dt : 0.0, done ? "\n" : "   ");
	fflush(stderr);
	mid_line = !done;
}

static uint64_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) ? 0 : (uint64_t)st.st_size;
}

static cltfs_err import_all(run *r)
{
	plan *p = r->p;
	bool tty = !p->o->quiet && isatty(2);
	for (int64_t k = 0; k < p->nbatches; k++) {
		for (int li = 0; li < p->nlayers; li++) {
			cltfs_err e = import_x(r, li, k);
			if (!e)
				e = import_y(r, li, k);
			if (e) {
				/* Which of two disagreeing files is right is unknown: keep
				 * neither.  The batch's chunks become durable only below. */
				store_writer_abandon(r->w);
				return e;
			}
			char path[PATH_MAX];
			file_path(p, p->layers[li], k, 'x', path, sizeof path);
			r->bytes_done += file_size(path);
			file_path(p, p->layers[li], k, 'y', path, sizeof path);
			r->bytes_done += file_size(path);
			r->files += 2;
		}
		/* Every file of batch k agrees with the store: make it durable. */
		cltfs_err e = store_writer_sync(r->w);
		r->nown = 0;
		if (e)
			return e;
		progress(r, k + 1, tty, false);
	}
	progress(r, p->nbatches, tty, true);
	return CLTFS_OK;
}

/* An existing store must hold the same plan: then a re-run resumes, in
 * the store's codec (a --codec that names another is refused: the store
 * would hold frames of two codecs while its manifest names one). */
static cltfs_err prepare_store(const char *store, const cltfs_manifest *m, int codec)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/cltfs.json", store);
	cltfs_manifest *old;
	cltfs_err e = cltfs_manifest_load(path, &old);
	if (e == CLTFS_E_NOTFOUND)
		return store_create(store, m);
	if (e)
		return e;
	bool same = cltfs_manifest_same(old, m);
	cltfs_codec had = old->codec;
	cltfs_manifest_free(old);
	if (!same)
		return cltfs_fail(CLTFS_E_MISMATCH,
				  "%s: the store already holds a different dataset; import into a new directory",
				  path);
	if (codec >= 0 && (cltfs_codec)codec != had)
		return cltfs_fail(CLTFS_E_MISMATCH,
				  "%s: the store's codec is %s, not %s; resume without --codec, or import into a new "
				  "directory", path, cltfs_codec_name(had), cltfs_codec_name((cltfs_codec)codec));
	return CLTFS_OK;
}

int cmd_import(const char *store, const char *src, const import_opts *o)
{
	plan p = {.src = src, .o = o, .t0 = cltfs_now()};
	struct sigaction sa = {.sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	run r = {.p = &p};
	cltfs_err e = (p.m = cltfs_manifest_new()) ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e)
		e = list_tree(&p);
	if (!e)
		e = plan_manifest(&p);
	if (!e)
		e = prepare_store(store, p.m, o->codec);
	if (!e)
		e = store_open(store, &r.s);
	cltfs_opts fo = {.dtype = -1, .cache_mb = 1024, .readahead = 0};
	if (!e)
		e = fs_new(r.s, &fo, &r.fs);
	if (!e && !(e = store_writer_open(r.s, "import", &r.w)))
		store_writer_level(r.w, o->level);
	if (!e)
		e = import_all(&r);
	cltfs_err ce = store_writer_close(r.w);
	if (!e)
		e = ce;
	if (!e && !o->quiet) {
		uint64_t disk = store_disk_bytes(r.s);
		printf("imported %llu files (%.1f MB) from %s into %s: %.1f MB on disk (%.2f%%, 1/%.1f); "
		       "%llu chunks written, %llu already stored; every value verified\n",
		       (unsigned long long)r.files, (double)p.src_bytes / 1e6, src, store, (double)disk / 1e6,
		       100.0 * (double)disk / (double)(p.src_bytes ? p.src_bytes : 1),
		       (double)p.src_bytes / (double)(disk ? disk : 1), (unsigned long long)r.written,
		       (unsigned long long)r.skipped);
	}
	fs_free(r.fs);
	store_close(r.s);
	cltfs_manifest_free(p.m);
	free(p.layers);
	free(p.S);
	free(p.T);
	free(r.gather);
	free(r.piece);
	free(r.own);
	if (e)
		fprintf(stderr, "%scltfs: %s\n", mid_line ? "\n" : "", cltfs_errmsg());
	return e ? 1 : 0;
}
