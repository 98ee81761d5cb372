/* view.c: the bytes of every view.
 *
 * Building a view computes its object (dict, tensors, ints), the pickle,
 * and the zip layout (pt_file), plus, for each storage, the list of
 * segments it is made of: runs of rows of one stream, or zero rows where a
 * sample is shorter than its batch's T.
 *
 * How a byte offset maps to chunks: pt_file_map splits a read into literal
 * pieces and storage pieces; a storage offset falls in one segment; a
 * segment's rows are rows of the stream, and row r lies in the chunk found
 * by the manifest (a binary search over its sparse batch index).  The reply is a list of
 * iovecs pointing into cached chunk buffers (referenced until the reply is
 * sent), the static zero page, and a small buffer of literal bytes: the
 * tensor data is never copied on the way to the kernel.
 *
 * Aliasing is the reference file's: y is targets[0] (one storage, as
 * torch.save writes a tensor referenced twice) and every other target has
 * a storage of its own, zero padding included, since a trainer may change
 * targets in place.  -o share_zero_targets gives all zero targets of a
 * file one storage (smaller files, the same values).
 */
#include "engine_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PIECES 64
#define SIZES 16384 /* slots of the size memo; emptied when 3/4 full */

typedef struct {
	int64_t row, nrows; /* stream rows, or zero rows when zero */
	bool zero;
} seg;

typedef struct {
	int kind, layer; /* kind -1: all zeros; KIND_MEAN: a sample's mean (segs[0].row is the sample) */
	seg *segs;
	size_t nseg;
	uint64_t *seg_off; /* byte offset of each segment in the storage */
	/* -o shuffle: nseg one-row segments, positions pos0.. of the epoch,
	 * computed when needed (segs, seg_off NULL): a table would cost 32
	 * bytes a row in every storage of every cached view */
	bool shuffled;
	int64_t pos0;
	uint64_t nbytes;
	/* the dtype its chunks come in, and the one it is served in: they
	 * differ in a sample view of another dtype (converted on the way) */
	cltfs_dtype from, to;
} source;



struct view {
	pt_file *pf;
	size_t nst;
	source *st;
	pthread_mutex_t mu; /* guards CRC computation */
	atomic_int refs;    /* view_get's references; view_open's view has none */
	cltfs_dtype dt;     /* what its stream chunks come in: the mount's dtype */
	_Atomic uint64_t last_end; /* where the last read ended: sequential readers */
	int64_t pos0;       /* while building a shuffled view: its first position */
};

struct size_slot {
	uint64_t key[6]; /* is_y | targets | storages | digits, and the shape; key[0] 0: empty */
	uint64_t size;
};

static const uint8_t zero_page[1 << 20];

/* ---- building a view ---- */

static cltfs_err add_seg(seg **v, size_t *n, size_t *cap, seg s)
{
	if (*n && !s.zero && !(*v)[*n - 1].zero && (*v)[*n - 1].row + (*v)[*n - 1].nrows == s.row) {
		(*v)[*n - 1].nrows += s.nrows; /* contiguous rows: one segment */
		return CLTFS_OK;
	}
	if (*n && s.zero && (*v)[*n - 1].zero) {
		(*v)[*n - 1].nrows += s.nrows;
		return CLTFS_OK;
	}
	if (!cltfs_grow(v, cap, *n + 1, sizeof **v))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	(*v)[(*n)++] = s;
	return CLTFS_OK;
}

/* The segments of one tensor of group g, and its shape. */
static cltfs_err group_segs(const cltfs_fs *fs, int64_t g, seg **out, size_t *nout, int64_t *shape,
			    int *ndim)
{
	const cltfs_manifest *m = fs->m;
	group grp = fs_group(fs, g);
	const group *gr = &grp;
	size_t cap = 0;
	*out = NULL;
	*nout = 0;
	cltfs_err e = CLTFS_OK;
	if (fs->o.batch_rows) {
		shape[0] = gr->nrows;
		shape[1] = m->d_model;
		*ndim = 2;
		if (fs->shuf) { /* one-row segments, computed as they are read */
			*nout = (size_t)gr->nrows;
			return CLTFS_OK;
		}
		return add_seg(out, nout, &cap, (seg){gr->row0, gr->nrows, false});
	}
	int64_t flat_rows = 0, row = gr->row0;
	for (int64_t i = 0; !e && i < gr->nsamples; i++) {
		int64_t rows = cltfs_manifest_sample_rows(m, gr->first_sample + i);
		e = add_seg(out, nout, &cap, (seg){row, rows, false});
		row += rows;
		flat_rows += rows;
		if (!e && m->shape != CLTFS_SHAPE_FLAT && rows < gr->tokens)
			e = add_seg(out, nout, &cap, (seg){0, gr->tokens - rows, true});
	}
	if (m->shape == CLTFS_SHAPE_FLAT) {
		shape[0] = flat_rows;
		shape[1] = m->d_model;
		*ndim = 2;
	} else if (m->shape == CLTFS_SHAPE_S1TD) {
		int64_t s4[4] = {gr->nsamples, 1, gr->tokens, m->d_model};
		memcpy(shape, s4, sizeof s4);
		*ndim = 4;
	} else {
		int64_t s3[3] = {gr->nsamples, gr->tokens, m->d_model};
		memcpy(shape, s3, sizeof s3);
		*ndim = 3;
	}
	return e;
}

static void free_sources(view *v)
{
	for (size_t i = 0; v->st && i < v->nst; i++) {
		free(v->st[i].segs);
		free(v->st[i].seg_off);
	}
	free(v->st);
}

void view_close(view *v)
{
	if (!v)
		return;
	pt_file_free(v->pf);
	free_sources(v);
	pthread_mutex_destroy(&v->mu);
	free(v);
}

/* A new storage: a copy of the segments (or all zeros) of nbytes. */
static cltfs_err add_source(view *v, int kind, int layer, const seg *segs, size_t nseg,
			    uint64_t nbytes, size_t row_out)
{
	source *s = &v->st[v->nst];
	s->kind = kind;
	s->layer = layer;
	s->nbytes = nbytes;
	s->from = s->to = v->dt;
	if (kind >= 0 && !segs) {
		s->shuffled = true;
		s->pos0 = v->pos0;
		s->nseg = nseg;
	} else if (kind >= 0) {
		s->segs = malloc(nseg * sizeof *segs);
		s->seg_off = malloc(nseg * sizeof *s->seg_off);
		if (!s->segs || !s->seg_off) {
			free(s->segs);
			free(s->seg_off);
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		}
		memcpy(s->segs, segs, nseg * sizeof *segs);
		uint64_t off = 0;
		for (size_t i = 0; i < nseg; i++) {
			s->seg_off[i] = off;
			off += (uint64_t)segs[i].nrows * row_out;
		}
		s->nseg = nseg;
	}
	v->nst++;
	return CLTFS_OK;
}

static pt_obj *tensor_obj(pt_arena *a, size_t key, cltfs_dtype dt, const int64_t *shape, int ndim)
{
	pt_obj *t = pt_new(a, PT_TENSOR);
	if (!t)
		return NULL;
	snprintf(t->u.t.key, sizeof t->u.t.key, "%zu", key);
	t->u.t.dtype = dt;
	t->u.t.ndim = ndim;
	int64_t stride = 1;
	for (int i = ndim - 1; i >= 0; i--) {
		t->u.t.shape[i] = shape[i];
		t->u.t.stride[i] = stride;
		stride *= shape[i];
	}
	t->u.t.numel = stride;
	return t;
}

/* The object a view pickles, and its storages. */
static cltfs_err build_obj(cltfs_fs *fs, view *v, pt_arena *a, int layer, int is_y, const seg *segs,
			   size_t nseg, const int64_t *shape, int ndim, pt_obj **root)
{
	const cltfs_manifest *m = fs->m;
	int64_t numel = 1;
	for (int i = 0; i < ndim; i++)
		numel *= shape[i];
	uint64_t nbytes = (uint64_t)numel * cltfs_dtype_size(fs->out_dt);
	cltfs_err e;
	if (!is_y) {
		if ((e = add_source(v, CLTFS_STREAM_X, layer, segs, nseg, nbytes, fs->row_out)))
			return e;
		pt_obj *t = tensor_obj(a, 0, fs->out_dt, shape, ndim);
		if (!t)
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		if (!m->x_key[0]) {
			*root = t;
			return CLTFS_OK;
		}
		*root = pt_new(a, PT_DICT);
		return *root ? pt_set(a, *root, pt_str(a, m->x_key), t)
			     : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	int nt = cltfs_manifest_targets_of(m, layer);
	pt_obj *list = pt_new(a, PT_LIST), *first = NULL;
	if (!list)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	int zero_key = -1;
	/* j == nt only when there are no targets at all (clip past the last
	 * layer): then y is a zero tensor and the list stays empty. */
	for (int j = 0; j < nt || (j == 0 && nt == 0); j++) {
		int t = j < nt ? cltfs_manifest_target_layer(m, layer, j) : -1;
		size_t key;
		if (t >= 0) {
			if ((e = add_source(v, CLTFS_STREAM_MLP, t, segs, nseg, nbytes, fs->row_out)))
				return e;
			key = v->nst - 1;
		} else { /* zero padding: a storage of its own, or one shared by all */
			if (zero_key < 0 || !fs->o.share_zero_targets) {
				if ((e = add_source(v, -1, 0, NULL, 0, nbytes, fs->row_out)))
					return e;
				zero_key = (int)v->nst - 1;
			}
			key = (size_t)zero_key;
		}
		pt_obj *obj = tensor_obj(a, key, fs->out_dt, shape, ndim);
		if (!obj)
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		if (!first)
			first = obj; /* y is targets[0]: the same object, one storage */
		if (j < nt && (e = pt_append(a, list, obj)))
			return e;
	}
	*root = pt_new(a, PT_DICT);
	if (!*root)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int k = 0; k < 3; k++) {
		const char *key = m->y_keys[k];
		pt_obj *val = !strcmp(key, "y") ? first : !strcmp(key, "targets") ? list : pt_int(a, nt);
		if (!val || (e = pt_set(a, *root, pt_str(a, key), val)))
			return val ? e : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	return CLTFS_OK;
}

/* A view with room for nst storages, none built yet (view_close frees it). */
static cltfs_err view_new(cltfs_fs *fs, size_t nst, view **out)
{
	view *v = calloc(1, sizeof *v);
	if (!v)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	pthread_mutex_init(&v->mu, NULL);
	v->dt = fs->out_dt;
	if (!(v->st = calloc(nst, sizeof *v->st))) {
		view_close(v);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	*out = v;
	return CLTFS_OK;
}

/* The zip of a view: root pickled, its storages data/0, data/1, ... sized
 * as built, under archive/. */
static cltfs_err view_layout(view *v, const char *archive, pt_obj *root)
{
	uint8_t *pkl = NULL;
	size_t plen = 0;
	cltfs_err e = pt_pickle(root, &pkl, &plen);
	const char **keys = e ? NULL : calloc(v->nst + 1, sizeof *keys);
	char (*keybuf)[24] = e ? NULL : calloc(v->nst + 1, sizeof *keybuf);
	uint64_t *sizes = e ? NULL : calloc(v->nst + 1, sizeof *sizes);
	if (!e && (!keys || !keybuf || !sizes))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (size_t i = 0; !e && i < v->nst; i++) {
		snprintf(keybuf[i], sizeof keybuf[i], "%zu", i);
		keys[i] = keybuf[i];
		sizes[i] = v->st[i].nbytes;
	}
	if (!e)
		e = pt_file_new(archive, pkl, plen, v->nst, keys, sizes, &v->pf);
	free(keys);
	free(keybuf);
	free(sizes);
	free(pkl);
	return e;
}

cltfs_err view_open(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, view **out)
{
	const cltfs_manifest *m = fs->m;
	int layer = m->x_layers[layer_idx];
	view *v = NULL;
	pt_arena *a = pt_arena_new();
	seg *segs = NULL;
	size_t nseg = 0;
	int64_t shape[PT_MAX_DIM];
	int ndim = 0;
	char archive[64];
	snprintf(archive, sizeof archive, "batch_%lld_%c", (long long)batch, is_y ? 'y' : 'x');
	cltfs_err e = a ? view_new(fs, (size_t)m->n_targets + 2, &v) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	pt_obj *root = NULL;
	if (!e)
		e = group_segs(fs, batch, &segs, &nseg, shape, &ndim);
	if (!e)
		v->pos0 = fs_group(fs, batch).row0;
	if (!e)
		e = build_obj(fs, v, a, layer, is_y, segs, nseg, shape, ndim, &root);
	if (!e)
		e = view_layout(v, archive, root);
	free(segs);
	pt_arena_free(a);
	if (e) {
		view_close(v);
		return e;
	}
	*out = v;
	return CLTFS_OK;
}

uint64_t view_size(const view *v) { return pt_file_size(v->pf); }

/* ---- per-sample files ---- */

int view_sample_digits(const cltfs_fs *fs)
{
	int digits = 1;
	for (int64_t n = fs->m->n_samples - 1; n >= 10; n /= 10)
		digits++;
	return digits < 4 ? 4 : digits;
}

static cltfs_dtype sample_dtype(const cltfs_fs *fs)
{
	return fs->o.set_sample_dtype ? (cltfs_dtype)fs->o.sample_dtype : CLTFS_F32;
}

/* {'activations': {L: t_L}}: one storage per x layer, read from the
 * sample's rows (last, all) or its mean chunk, converted on the way when
 * the dtype differs from the mount's. */
static cltfs_err build_sample(cltfs_fs *fs, view *v, pt_arena *a, int64_t i, pt_obj **root)
{
	const cltfs_manifest *m = fs->m;
	int64_t rows = cltfs_manifest_sample_rows(m, i), first = cltfs_manifest_sample_row(m, i);
	cltfs_dtype dt = sample_dtype(fs);
	int reduce = fs->o.sample_reduce;
	int64_t shape[2] = {rows, m->d_model};
	int ndim = reduce == FS_SAMPLE_ALL ? 2 : 1;
	const int64_t *sh = ndim == 2 ? shape : shape + 1;
	seg one = reduce == FS_SAMPLE_ALL ? (seg){first, rows, false}
		  : reduce == FS_SAMPLE_LAST ? (seg){first + rows - 1, 1, false}
					     : (seg){i, 1, false};
	uint64_t nbytes = (uint64_t)(ndim == 2 ? rows : 1) * (uint64_t)m->d_model * cltfs_dtype_size(dt);
	pt_obj *acts = pt_new(a, PT_DICT), *top = pt_new(a, PT_DICT);
	if (!acts || !top)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err e = CLTFS_OK;
	for (int l = 0; !e && l < m->n_x_layers; l++) {
		int kind = reduce == FS_SAMPLE_MEAN ? KIND_MEAN : CLTFS_STREAM_X;
		if ((e = add_source(v, kind, m->x_layers[l], &one, 1, nbytes, (size_t)m->d_model * cltfs_dtype_size(dt))))
			break;
		source *src = &v->st[v->nst - 1];
		src->from = reduce == FS_SAMPLE_MEAN ? CLTFS_F32 : fs->out_dt;
		src->to = dt;
		pt_obj *t = tensor_obj(a, v->nst - 1, dt, sh, ndim), *key = pt_int(a, m->x_layers[l]);
		e = t && key ? pt_set(a, acts, key, t) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	if (!e)
		e = pt_set(a, top, pt_str(a, "activations"), acts);
	*root = top;
	return e;
}

static cltfs_err view_open_sample(cltfs_fs *fs, int64_t i, view **out)
{
	view *v = NULL;
	pt_arena *a = pt_arena_new();
	char archive[64];
	snprintf(archive, sizeof archive, "sample_%0*lld", view_sample_digits(fs), (long long)i);
	cltfs_err e = a ? view_new(fs, (size_t)fs->m->n_x_layers + 1, &v) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	pt_obj *root = NULL;
	if (!e)
		e = build_sample(fs, v, a, i, &root);
	if (!e)
		e = view_layout(v, archive, root);
	pt_arena_free(a);
	if (e) {
		view_close(v);
		return e;
	}
	*out = v;
	return CLTFS_OK;
}

/* The view cache's ids of samples follow every batch file's. */
static uint64_t sample_id(const cltfs_fs *fs, int64_t i)
{
	return 1 + (uint64_t)fs->m->n_x_layers * (uint64_t)fs->ngroups * 2 + (uint64_t)i;
}


cltfs_err view_cache_new(cltfs_fs *fs)
{
	fs->vcache = calloc(VCACHE, sizeof *fs->vcache);
	fs->sizes = calloc(SIZES, sizeof *fs->sizes);
	return fs->vcache && fs->sizes ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}

void view_cache_free(cltfs_fs *fs)
{
	for (size_t i = 0; fs->vcache && i < VCACHE; i++)
		view_close(fs->vcache[i].v);
	free(fs->vcache);
	free(fs->sizes);
	fs->vcache = NULL;
	fs->sizes = NULL;
}

/* The view of id from the cache, built by open (batch file) or sample
 * (per-sample file) on a miss. */
static cltfs_err cached(cltfs_fs *fs, uint64_t id, int layer_idx, int64_t n, int is_y, bool sample, view **out)
{
	vslot *s = &fs->vcache[id % VCACHE];
	pthread_mutex_lock(&fs->vmu);
	if (s->id == id) {
		atomic_fetch_add(&s->v->refs, 1);
		*out = s->v;
		pthread_mutex_unlock(&fs->vmu);
		return CLTFS_OK;
	}
	pthread_mutex_unlock(&fs->vmu);
	view *v;
	cltfs_err e = sample ? view_open_sample(fs, n, &v) : view_open(fs, layer_idx, n, is_y, &v);
	if (e)
		return e;
	atomic_store(&v->refs, 2); /* the caller's and the cache's */
	pthread_mutex_lock(&fs->vmu);
	view *old = s->v;
	s->id = id;
	s->v = v;
	pthread_mutex_unlock(&fs->vmu);
	view_put(old);
	*out = v;
	return CLTFS_OK;
}

cltfs_err view_get(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, view **out)
{
	uint64_t id = 1 + ((uint64_t)layer_idx * (uint64_t)fs->ngroups + (uint64_t)batch) * 2 + (uint64_t)is_y;
	return cached(fs, id, layer_idx, batch, is_y, false, out);
}

cltfs_err view_get_sample(cltfs_fs *fs, int64_t i, view **out) { return cached(fs, sample_id(fs, i), 0, i, 0, true, out); }

bool view_sequential(view *v, uint64_t off, size_t n)
{
	return n && atomic_exchange(&v->last_end, off + n) == off;
}

void view_put(view *v)
{
	if (v && atomic_fetch_sub(&v->refs, 1) == 1)
		view_close(v);
}

/* ---- sizes without views ----
 *
 * A view's size is a function of a few numbers: x or y, its tensors'
 * shape, how many targets and storages a y file has (which the layer
 * decides), and the digits of the batch number (in the archive's names).
 * getattr, lookup and READDIRPLUS of 10^5 files then cost a hash lookup
 * each: a view is built only for the first file of each kind. */


/* The key of a view's size: what its bytes' layout depends on. */
static void size_key(const cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, uint64_t key[6])
{
	const cltfs_manifest *m = fs->m;
	int layer = m->x_layers[layer_idx], nt = is_y ? cltfs_manifest_targets_of(m, layer) : 0, real = 0;
	for (int j = 0; j < nt; j++)
		real += cltfs_manifest_target_layer(m, layer, j) >= 0;
	int storages = !is_y ? 1 : nt == 0 ? 1 : fs->o.share_zero_targets ? real + (real < nt) : nt;
	int digits = 1;
	for (int64_t b = batch; b >= 10; b /= 10)
		digits++;
	group gr = fs_group(fs, batch);
	key[0] = 1 + ((uint64_t)is_y | (uint64_t)nt << 1 | (uint64_t)storages << 20 | (uint64_t)digits << 40);
	key[1] = (uint64_t)gr.nsamples;
	key[2] = (uint64_t)gr.tokens;
	key[3] = (uint64_t)gr.nrows; /* batch_rows and flat shapes */
	key[4] = key[5] = 0;
}

static struct size_slot *size_slot_of(cltfs_fs *fs, const uint64_t key[6])
{
	uint64_t h = 0;
	for (int i = 0; i < 6; i++)
		h = (h ^ key[i]) * 0x9e3779b97f4a7c15ULL;
	size_t i = (size_t)(h >> 20) & (SIZES - 1);
	while (fs->sizes[i].key[0] && memcmp(fs->sizes[i].key, key, sizeof fs->sizes[i].key))
		i = (i + 1) & (SIZES - 1);
	return &fs->sizes[i];
}

/* The memo's size of key; false when it has none. */
static bool size_memo_get(cltfs_fs *fs, const uint64_t key[6], uint64_t *size)
{
	pthread_mutex_lock(&fs->vmu);
	struct size_slot *s = size_slot_of(fs, key);
	bool hit = s->key[0] != 0;
	if (hit)
		*size = s->size;
	pthread_mutex_unlock(&fs->vmu);
	return hit;
}

/* Note the size of key, emptying the memo first when it is 3/4 full. */
static void size_memo_put(cltfs_fs *fs, const uint64_t key[6], uint64_t size)
{
	pthread_mutex_lock(&fs->vmu);
	if (fs->nsizes >= SIZES / 4 * 3) {
		memset(fs->sizes, 0, SIZES * sizeof *fs->sizes);
		fs->nsizes = 0;
	}
	struct size_slot *s = size_slot_of(fs, key);
	if (!s->key[0]) {
		memcpy(s->key, key, sizeof s->key);
		s->size = size;
		fs->nsizes++;
	}
	pthread_mutex_unlock(&fs->vmu);
}

/* The size of a view got on a memo miss, noted under key; the view put back. */
static uint64_t size_noted(cltfs_fs *fs, const uint64_t key[6], view *v)
{
	uint64_t size = view_size(v);
	view_put(v);
	size_memo_put(fs, key, size);
	return size;
}

cltfs_err view_size_of(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, uint64_t *size)
{
	uint64_t key[6];
	size_key(fs, layer_idx, batch, is_y, key);
	if (size_memo_get(fs, key, size))
		return CLTFS_OK;
	view *v;
	cltfs_err e = view_get(fs, layer_idx, batch, is_y, &v);
	if (!e)
		*size = size_noted(fs, key, v);
	return e;
}

cltfs_err view_sample_size(cltfs_fs *fs, int64_t i, uint64_t *size)
{
	/* [d] files are all the same size; [T, d] ones differ by T alone */
	int64_t T = fs->o.sample_reduce == FS_SAMPLE_ALL ? cltfs_manifest_sample_rows(fs->m, i) : 0;
	uint64_t key[6] = {UINT64_C(1) << 62 | (uint64_t)fs->o.sample_reduce, (uint64_t)T, 0, 0, 0, 0};
	if (size_memo_get(fs, key, size))
		return CLTFS_OK;
	view *v;
	cltfs_err e = view_get_sample(fs, i, &v);
	if (!e)
		*size = size_noted(fs, key, v);
	return e;
}

/* ---- CRCs ---- */

/* The chunk of source s that holds stream row `row`: its key, first row
 * and rows.  A mean source's rows are samples, a chunk each. */
static uint64_t src_chunk(const cltfs_fs *fs, const source *s, int64_t row, int64_t *first, int64_t *rows)
{
	if (s->kind == KIND_MEAN) {
		*first = row;
		*rows = 1;
		return cltfs_key(KIND_MEAN, (unsigned)s->layer, (uint32_t)row);
	}
	int64_t c = cltfs_manifest_chunk_of(fs->m, row);
	*first = cltfs_manifest_chunk_start(fs->m, c);
	*rows = cltfs_manifest_chunk_rows(fs->m, c);
	return cltfs_key((unsigned)s->kind, (unsigned)s->layer, (uint32_t)c);
}

static cltfs_err src_chunk_get(cltfs_fs *fs, const source *s, uint64_t key, chunk **ch)
{
	return s->kind == KIND_MEAN ? fs_mean(fs, key, ch) : fs_chunk(fs, key, ch);
}

static size_t row_of(const cltfs_fs *fs, cltfs_dtype dt) { return (size_t)fs->m->d_model * cltfs_dtype_size(dt); }

/* Segment i of a storage, and its byte offset (rb bytes a row). */
static seg seg_at(const cltfs_fs *fs, const source *s, size_t i)
{
	return s->shuffled ? (seg){shuffle_row(fs->shuf, s->pos0 + (int64_t)i), 1, false} : s->segs[i];
}

static uint64_t seg_off_at(const source *s, size_t i, size_t rb)
{
	return s->shuffled ? (uint64_t)i * rb : s->seg_off[i];
}

/* Values [e0, e1) of the stream from row `row` of source s (counted in
 * elements from that row's first), converted from s->from to s->to into
 * dst. */
static cltfs_err convert_run(cltfs_fs *fs, const source *s, int64_t row, uint64_t e0, uint64_t e1, uint8_t *dst)
{
	const uint64_t d = (uint64_t)fs->m->d_model;
	size_t ef = cltfs_dtype_size(s->from), et = cltfs_dtype_size(s->to);
	for (uint64_t e = e0; e < e1;) {
		int64_t r = row + (int64_t)(e / d), first, rows;
		uint64_t key = src_chunk(fs, s, r, &first, &rows);
		chunk *ch;
		cltfs_err err = src_chunk_get(fs, s, key, &ch);
		if (err)
			return err;
		uint64_t in = (uint64_t)(r - first) * d + e % d, have = (uint64_t)rows * d - in;
		uint64_t n = have < e1 - e ? have : e1 - e;
		if ((in + n) * ef > ch->len) {
			fs_chunk_put(fs, ch);
			return cltfs_fail(CLTFS_E_CORRUPT, "chunk has %zu bytes, fewer than its rows", ch->len);
		}
		cltfs_convert(s->to, dst + (e - e0) * et, s->from, ch->data + in * ef, (size_t)n);
		fs_chunk_put(fs, ch);
		e += n;
	}
	return CLTFS_OK;
}

/* CRC of stream bytes [p, p+n) (as served) of one stream source without
 * conversion. */
static cltfs_err stream_crc(cltfs_fs *fs, const source *s, uint64_t p, uint64_t n, uint32_t *crc)
{
	size_t rb = row_of(fs, s->from);
	*crc = 0;
	while (n) {
		int64_t first, rows;
		uint64_t key = src_chunk(fs, s, (int64_t)(p / rb), &first, &rows);
		uint64_t cs = (uint64_t)first * rb, len = (uint64_t)rows * rb, take = cs + len - p < n ? cs + len - p : n;
		uint32_t part;
		/* a whole chunk: its CRC from an index, nothing decoded or fetched */
		if (!(s->kind != KIND_MEAN && p == cs && take == len && fs_chunk_crc(fs, key, &part))) {
			chunk *ch;
			cltfs_err e = src_chunk_get(fs, s, key, &ch);
			if (e)
				return e;
			part = p == cs && take == ch->len ? ch->crc
							  : cltfs_crc32(0, ch->data + (p - cs), (size_t)take);
			fs_chunk_put(fs, ch);
		}
		*crc = cltfs_crc32_combine(*crc, part, take);
		p += take;
		n -= take;
	}
	return CLTFS_OK;
}

/* CRC of a converted segment: converted a block at a time. */
static cltfs_err conv_crc(cltfs_fs *fs, const source *s, int64_t row, uint64_t nelem, uint32_t *crc)
{
	size_t et = cltfs_dtype_size(s->to), block = (1u << 20) / et;
	uint8_t *tmp = malloc(block * et);
	cltfs_err e = tmp ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	*crc = 0;
	for (uint64_t e0 = 0; !e && e0 < nelem; e0 += block) {
		uint64_t e1 = e0 + block < nelem ? e0 + block : nelem;
		if (!(e = convert_run(fs, s, row, e0, e1, tmp)))
			*crc = cltfs_crc32(*crc, tmp, (size_t)((e1 - e0) * et));
	}
	free(tmp);
	return e;
}

static cltfs_err source_crc(cltfs_fs *fs, const source *s, uint32_t *crc)
{
	if (s->kind < 0) {
		*crc = cltfs_crc32_zeros(s->nbytes);
		return CLTFS_OK;
	}
	*crc = 0;
	size_t rb = row_of(fs, s->to);
	for (size_t i = 0; i < s->nseg; i++) {
		seg g = seg_at(fs, s, i);
		uint64_t n = (uint64_t)g.nrows * rb;
		uint32_t part;
		if (g.zero)
			part = cltfs_crc32_zeros(n);
		else {
			cltfs_err e = s->from != s->to
					      ? conv_crc(fs, s, g.row, (uint64_t)g.nrows * (uint64_t)fs->m->d_model, &part)
					      : stream_crc(fs, s, (uint64_t)g.row * rb, n, &part);
			if (e)
				return e;
		}
		*crc = cltfs_crc32_combine(*crc, part, n);
	}
	return CLTFS_OK;
}

static cltfs_err ensure_crcs(cltfs_fs *fs, view *v, uint64_t off, uint64_t len)
{
	bool *need = calloc(v->nst + 1, sizeof *need);
	if (!need)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!pt_file_crcs_needed(v->pf, off, len, need)) {
		free(need);
		return CLTFS_OK;
	}
	cltfs_err e = CLTFS_OK;
	pthread_mutex_lock(&v->mu);
	for (size_t i = 0; !e && i < v->nst; i++)
		if (need[i] && !pt_file_has_crc(v->pf, i)) {
			uint32_t crc;
			if (!(e = source_crc(fs, &v->st[i], &crc)))
				pt_file_set_crc(v->pf, i, crc);
		}
	pthread_mutex_unlock(&v->mu);
	free(need);
	return e;
}

/* ---- reading ---- */

static cltfs_err add_iov(view_buf *b, const void *p, size_t n)
{
	if (!cltfs_grow(&b->iov, &b->iovcap, b->niov + 1, sizeof *b->iov))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	b->iov[b->niov++] = (struct iovec){(void *)p, n};
	b->total += n;
	return CLTFS_OK;
}

static cltfs_err add_ref(view_buf *b, chunk *ch)
{
	if (!cltfs_grow(&b->refs, &b->refcap, b->nrefs + 1, sizeof *b->refs))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	b->refs[b->nrefs++] = ch;
	return CLTFS_OK;
}

static cltfs_err add_zeros(view_buf *b, uint64_t n)
{
	while (n) {
		size_t take = n < sizeof zero_page ? (size_t)n : sizeof zero_page;
		cltfs_err e = add_iov(b, zero_page, take);
		if (e)
			return e;
		n -= take;
	}
	return CLTFS_OK;
}

/* Stream bytes [p, p+n) of source s as iovecs into cached chunks. */
static cltfs_err stream_iov(cltfs_fs *fs, const source *s, uint64_t p, uint64_t n, view_buf *b)
{
	size_t rb = row_of(fs, s->from);
	while (n) {
		int64_t first, rows;
		uint64_t key = src_chunk(fs, s, (int64_t)(p / rb), &first, &rows);
		uint64_t cs = (uint64_t)first * rb, len = (uint64_t)rows * rb, take = cs + len - p < n ? cs + len - p : n;
		chunk *ch;
		cltfs_err e = src_chunk_get(fs, s, key, &ch);
		if (e)
			return e;
		if ((e = add_ref(b, ch))) {
			fs_chunk_put(fs, ch);
			return e;
		}
		if (ch->len != len)
			return cltfs_fail(CLTFS_E_CORRUPT, "chunk has %zu bytes, its rows %llu", ch->len,
					  (unsigned long long)len);
		if ((e = add_iov(b, ch->data + (p - cs), (size_t)take)))
			return e;
		p += take;
		n -= take;
	}
	return CLTFS_OK;
}

/* Bytes [a, a+n) (as served) of a converted segment starting at stream row
 * `row`: whole values converted into lit (at *at), the bytes asked for
 * given from there. */
static cltfs_err conv_iov(cltfs_fs *fs, const source *s, int64_t row, uint64_t a, uint64_t n, view_buf *b,
			  size_t *at)
{
	size_t et = cltfs_dtype_size(s->to);
	uint64_t e0 = a / et, e1 = (a + n + et - 1) / et;
	if (!b->lit)
		return cltfs_fail(CLTFS_E_INVAL, "no buffer for converted values");
	uint8_t *dst = b->lit + *at;
	cltfs_err e = convert_run(fs, s, row, e0, e1, dst);
	if (!e)
		e = add_iov(b, dst + (a - e0 * et), (size_t)n);
	*at += (size_t)((e1 - e0) * et);
	return e;
}

typedef struct {
	cltfs_fs *fs;
	const source *s;
} ra_stream;

static void push_chunk(void *arg, int64_t c)
{
	ra_stream *r = arg;
	fs_readahead_push(r->fs, cltfs_key((unsigned)r->s->kind, (unsigned)r->s->layer, (uint32_t)c));
}

/* Walk a storage's segments over [off, off+n), calling stream_iov,
 * conv_iov (converted values go into b->lit at *at) or add_zeros, or
 * (keys_only) queueing the chunks for readahead. */
static cltfs_err source_iov(cltfs_fs *fs, const source *s, uint64_t off, uint64_t n, view_buf *b, size_t *at)
{
	if (s->kind < 0)
		return b ? add_zeros(b, n) : CLTFS_OK;
	size_t rb = row_of(fs, s->to), rf = row_of(fs, s->from);
	size_t lo = 0, hi = s->nseg - 1;
	if (s->shuffled)
		lo = hi = (size_t)(off / rb);
	while (lo < hi) { /* the last segment starting at or before off */
		size_t mid = (lo + hi + 1) / 2;
		if (s->seg_off[mid] <= off)
			lo = mid;
		else
			hi = mid - 1;
	}
	if (!b && s->shuffled) { /* readahead: the chunks of the windows ahead, not row by row */
		if (s->kind != KIND_MEAN) {
			ra_stream rs = {fs, s};
			int64_t p0 = s->pos0 + (int64_t)(off / rb), p1 = s->pos0 + (int64_t)((off + n + rb - 1) / rb);
			shuffle_chunks(fs->shuf, p0, p1, RA_QUEUE, push_chunk, &rs);
		}
		return CLTFS_OK;
	}
	int64_t queued = -1; /* the last chunk queued */
	for (size_t i = lo; n && i < s->nseg; i++) {
		seg g = seg_at(fs, s, i);
		uint64_t segn = (uint64_t)g.nrows * rb;
		uint64_t in = off - seg_off_at(s, i, rb), take = segn - in < n ? segn - in : n;
		cltfs_err e = CLTFS_OK;
		if (g.zero) {
			if (b)
				e = add_zeros(b, take);
		} else if (b && s->from != s->to) {
			e = conv_iov(fs, s, g.row, in, take, b, at);
		} else if (b) {
			e = stream_iov(fs, s, (uint64_t)g.row * rf + in, take, b);
		} else if (s->kind != KIND_MEAN) { /* readahead: queue the chunks */
			int64_t r0 = g.row + (int64_t)(in / rb), r1 = g.row + (int64_t)((in + take - 1) / rb);
			int64_t c0 = cltfs_manifest_chunk_of(fs->m, r0), c1 = cltfs_manifest_chunk_of(fs->m, r1);
			for (int64_t c = c0; c <= c1; c++)
				if (c != queued)
					fs_readahead_push(fs, cltfs_key((unsigned)s->kind, (unsigned)s->layer, (uint32_t)(queued = c)));
		}
		if (e)
			return e;
		off += take;
		n -= take;
	}
	return CLTFS_OK;
}

void view_buf_release(cltfs_fs *fs, view_buf *b)
{
	for (size_t i = 0; i < b->nrefs; i++)
		fs_chunk_put(fs, b->refs[i]);
	free(b->refs);
	free(b->iov);
	memset(b, 0, sizeof *b);
}

static void queue_range(cltfs_fs *fs, view *v, uint64_t off, uint64_t len);

/* How many of the bytes [off, off+len) are literal (not tensor data), or
 * converted (whole values, a segment at a time: a value's slack at each
 * end of each). */
static size_t literal_bytes(const view *v, uint64_t off, uint64_t len)
{
	pt_piece pc[MAX_PIECES];
	size_t lit = 0;
	for (uint64_t pos = off, end = off + len; pos < end;) {
		size_t n = pt_file_map(v->pf, pos, end - pos, pc, MAX_PIECES);
		if (!n)
			break;
		for (size_t i = 0; i < n; i++) {
			const source *s = pc[i].storage >= 0 ? &v->st[pc[i].storage] : NULL;
			if (!s)
				lit += (size_t)pc[i].len;
			else if (s->kind >= 0 && s->from != s->to)
				lit += (size_t)pc[i].len + 16 * (s->nseg + 1);
			pos += pc[i].len;
		}
	}
	return lit;
}

cltfs_err view_read(cltfs_fs *fs, view *v, uint64_t off, size_t len, view_buf *b)
{
	memset(b, 0, sizeof *b);
	uint64_t size = pt_file_size(v->pf);
	if (off >= size)
		return CLTFS_OK;
	if (len > size - off)
		len = (size_t)(size - off);
	/* A tier fetches over the network: ask for all of this read's chunks at
	 * once, so that they travel in parallel rather than one after another. */
	if (fs->o.ntiers && fs->ra_n)
		queue_range(fs, v, off, len);
	cltfs_err e = ensure_crcs(fs, v, off, len);
	/* The literal bytes (headers, pickle, directory: a few KiB) go one
	 * after another into the thread's buffer, sized to them, not to the
	 * read: a worker's memory stays small however large its reads. */
	size_t nlit = literal_bytes(v, off, len), at = 0;
	if (!e && nlit && !(b->lit = fs_literal_buf(fs, nlit)))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	pt_piece pc[MAX_PIECES];
	uint64_t end = off + len;
	for (uint64_t pos = off; !e && pos < end;) {
		size_t n = pt_file_map(v->pf, pos, end - pos, pc, MAX_PIECES);
		if (!n)
			break;
		for (size_t i = 0; !e && i < n; i++) {
			if (pc[i].storage >= 0) {
				e = source_iov(fs, &v->st[pc[i].storage], pc[i].off, pc[i].len, b, &at);
			} else {
				pt_file_literal(v->pf, pc[i].off, pc[i].len, b->lit + at);
				e = add_iov(b, b->lit + at, (size_t)pc[i].len);
				at += (size_t)pc[i].len;
			}
			pos += pc[i].len;
		}
	}
	if (e)
		view_buf_release(fs, b);
	return e;
}

/* Queue the chunks behind bytes [off, off+len) for the readahead threads. */
static void queue_range(cltfs_fs *fs, view *v, uint64_t off, uint64_t len)
{
	pt_piece pc[MAX_PIECES];
	size_t n = pt_file_map(v->pf, off, len, pc, MAX_PIECES);
	for (size_t i = 0; i < n; i++)
		if (pc[i].storage >= 0)
			source_iov(fs, &v->st[pc[i].storage], pc[i].off, pc[i].len, NULL, NULL);
}

void view_readahead(cltfs_fs *fs, view *v, uint64_t off)
{
	if (!fs->ra_n)
		return;
	/* readahead=N chunks, but never more than a quarter of the cache: a
	 * chunk decoded ahead must still be there when the reader arrives. */
	uint64_t len = (uint64_t)fs->o.readahead * fs->chunk_bytes, quarter = (fs->o.cache_mb << 20) / 4;
	queue_range(fs, v, off, len > quarter ? quarter : len);
}

const uint8_t *view_pickle(const view *v, size_t *len) { return pt_file_pickle(v->pf, len); }

cltfs_err view_storage_pread(cltfs_fs *fs, view *v, size_t i, uint64_t off, size_t len, uint8_t *dst)
{
	if (i >= v->nst || off > v->st[i].nbytes || len > v->st[i].nbytes - off)
		return cltfs_fail(CLTFS_E_INVAL, "storage %zu has no bytes [%llu, +%zu)", i, (unsigned long long)off, len);
	view_buf b = {0};
	size_t lit = 0; /* a view import reads converts nothing */
	cltfs_err e = source_iov(fs, &v->st[i], off, len, &b, &lit);
	size_t at = 0;
	for (size_t j = 0; !e && j < b.niov; j++) {
		memcpy(dst + at, b.iov[j].iov_base, b.iov[j].iov_len);
		at += b.iov[j].iov_len;
	}
	view_buf_release(fs, &b);
	return e;
}
