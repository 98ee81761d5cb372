/* views.c: the FUSE operations of a store's views (low-level API).
 *
 * Inode numbers are a pure function of the namespace, so lookups need no
 * table:
 *   1                 the root
 *   2, 3, 4           .cltfs/, .cltfs/stats, .cltfs/manifest.json
 *   5                 samples/
 *   6                 .cltfs/norm_stats.json
 *   SAMPLE0 + i       samples/sample_NNNN.pt of sample i
 *   16 + i            layer directory i (L<n> with n = x_layers[i])
 *   FILE0 + 2*(i*B+k) + y   batch k of layer directory i; y: 0 x, 1 y
 *   SNAP0 + n         the n-th snapshot of .cltfs/stats (zero-message opens)
 * Content never changes under a mount, so entries and attributes are
 * cached for a day and files are opened with keep_cache: a second read is
 * a page-cache read.  Where the kernel offers it, opens are zero-message:
 * the first OPEN is answered ENOSYS and no OPEN or RELEASE comes again, a
 * read finds its view by inode (the view cache), and .cltfs/stats, which
 * must be fresh at each open, is a new inode at each lookup (entry timeout
 * 0) holding the snapshot taken then.  -o handles keeps a handle per open
 * instead.  Work (build a view, compose bytes) is split from the reply, as
 * in libfuse's passthrough_ll.c.
 */
#include "edge.h"
#include "normstats.h"
#include "view.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INO_ROOT 1
#define INO_META 2
#define INO_STATS 3
#define INO_MANIFEST 4
#define INO_SAMPLES 5
#define INO_NORM 6
#define INO_LAYER0 16
#define INO_FILE0 (UINT64_C(1) << 20)
#define INO_SNAP0 (UINT64_C(1) << 62)
#define INO_SAMPLE0 (UINT64_C(1) << 61)

typedef edge_ctx_t ctx;

typedef struct {
	edge_handle link; /* first: the list of open files */
	int kind;         /* 0 view, 1 text (stats, manifest, norm_stats) */
	view *v;
	const char *text; /* kind 1: own, or the mount's (never changes) */
	char *own;        /* kind 1: a stats snapshot, freed with the handle */
	size_t len;
} handle;

/* ---- inodes ---- */

typedef struct {
	enum { N_ROOT, N_META, N_STATS, N_MANIFEST, N_NORM, N_LAYER, N_FILE, N_SAMPLES, N_SAMPLE, N_NONE } t;
	int layer_idx;
	int64_t batch;
	int is_y;
} node;

static node decode(const ctx *c, fuse_ino_t ino)
{
	node n = {N_NONE, 0, 0, 0};
	int nl = fs_nlayers(c->fs);
	int64_t nb = fs_nbatches(c->fs);
	if (ino == INO_ROOT)
		n.t = N_ROOT;
	else if (ino == INO_META)
		n.t = N_META;
	else if (ino == INO_STATS || ino >= INO_SNAP0)
		n.t = N_STATS;
	else if (ino == INO_MANIFEST)
		n.t = N_MANIFEST;
	else if (ino == INO_NORM)
		n.t = N_NORM;
	else if (ino == INO_SAMPLES)
		n.t = N_SAMPLES;
	else if (ino >= INO_SAMPLE0 && ino - INO_SAMPLE0 < (uint64_t)fs_nsamples(c->fs)) {
		n.t = N_SAMPLE;
		n.batch = (int64_t)(ino - INO_SAMPLE0); /* the sample */
	}
	else if (ino >= INO_LAYER0 && ino < INO_LAYER0 + (fuse_ino_t)nl) {
		n.t = N_LAYER;
		n.layer_idx = (int)(ino - INO_LAYER0);
	} else if (ino >= INO_FILE0) {
		uint64_t f = ino - INO_FILE0;
		if (f / 2 < (uint64_t)nl * (uint64_t)nb) {
			n.t = N_FILE;
			n.is_y = (int)(f & 1);
			n.layer_idx = (int)(f / 2 / (uint64_t)nb);
			n.batch = (int64_t)(f / 2 % (uint64_t)nb);
		}
	}
	return n;
}

static fuse_ino_t file_ino(const ctx *c, int li, int64_t k, int y)
{
	return INO_FILE0 + 2 * ((uint64_t)li * (uint64_t)fs_nbatches(c->fs) + (uint64_t)k) + (uint64_t)y;
}

/* ---- .cltfs/stats without OPEN ---- */

#define NSNAP (sizeof ((ctx *)0)->snaps / sizeof *((ctx *)0)->snaps)

/* A new snapshot of the stats, as a new inode (0 when out of memory). */
static fuse_ino_t snap_take(ctx *c)
{
	char *text = fs_stats_json(c->fs);
	if (!text)
		return 0;
	pthread_mutex_lock(&c->open_mu);
	uint64_t n = c->snap_seq++;
	struct edge_snap *s = &c->snaps[n % NSNAP];
	free(s->text);
	*s = (struct edge_snap){INO_SNAP0 + n, text, strlen(text)};
	pthread_mutex_unlock(&c->open_mu);
	return INO_SNAP0 + n;
}

/* Bytes [off, off+size) of snapshot ino, copied (a fresh snapshot's when
 * 64 newer ones have pushed it out); NULL when out of memory. */
static char *snap_slice(ctx *c, fuse_ino_t ino, size_t off, size_t size, size_t *n)
{
	char *out = NULL, *fresh = NULL;
	pthread_mutex_lock(&c->open_mu);
	struct edge_snap *s = &c->snaps[(ino - INO_SNAP0) % NSNAP];
	bool have = ino >= INO_SNAP0 && s->ino == ino;
	const char *text = have ? s->text : NULL;
	size_t len = have ? s->len : 0;
	if (!have) {
		pthread_mutex_unlock(&c->open_mu);
		if (!(text = fresh = fs_stats_json(c->fs)))
			return NULL;
		len = strlen(text);
	}
	size_t o = off < len ? off : len;
	*n = size < len - o ? size : len - o;
	if ((out = malloc(*n ? *n : 1)))
		memcpy(out, text + o, *n);
	if (have)
		pthread_mutex_unlock(&c->open_mu);
	free(fresh);
	return out;
}

static size_t snap_size(ctx *c, fuse_ino_t ino)
{
	size_t n = 0;
	char *all = snap_slice(c, ino, 0, SIZE_MAX, &n);
	free(all);
	return n;
}

/* deep: compute what the size needs (.cltfs/norm_stats.json: a pass over
 * the store).  Only a GETATTR on an open file is deep: the kernel sends one
 * when a read goes past the size it has (0 until computed, with attributes
 * that time out at once), so the first read computes, while `ls -l`, stat
 * and lookups stay cheap. */
static int do_stat(ctx *c, fuse_ino_t ino, struct stat *st, bool deep)
{
	node n = decode(c, ino);
	edge_stat_base(c, ino, st);
	switch (n.t) {
	case N_ROOT:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 4 + (nlink_t)fs_nlayers(c->fs);
		return 0;
	case N_META:
	case N_SAMPLES:
	case N_LAYER:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	case N_STATS: /* with handles size 0: read until EOF, like /proc */
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		if (c->no_open)
			st->st_size = (off_t)snap_size(c, ino);
		return 0;
	case N_MANIFEST:
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)c->manifest_len;
		return 0;
	case N_NORM: { /* size 0 until known: then a listing's attributes time out at once */
		const char *json;
		size_t len;
		cltfs_err e = normstats_get(c->fs, deep, &json, &len);
		if (e)
			return edge_fail(c, e);
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)len;
		return 0;
	}
	case N_SAMPLE:
	case N_FILE: {
		uint64_t size;
		cltfs_err e = n.t == N_SAMPLE ? view_sample_size(c->fs, n.batch, &size)
					      : view_size_of(c->fs, n.layer_idx, n.batch, n.is_y, &size);
		if (e)
			return edge_fail(c, e);
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)size;
		st->st_blocks = (blkcnt_t)((size + 511) / 512);
		return 0;
	}
	default:
		return ENOENT;
	}
}

static fuse_ino_t do_lookup(ctx *c, fuse_ino_t parent, const char *name)
{
	node p = decode(c, parent);
	if (p.t == N_ROOT) {
		if (!strcmp(name, ".cltfs"))
			return INO_META;
		if (!strcmp(name, "samples"))
			return INO_SAMPLES;
		int li = fs_find_layer(c->fs, name);
		return li < 0 ? 0 : INO_LAYER0 + (fuse_ino_t)li;
	}
	if (p.t == N_META)
		return !strcmp(name, "stats")		? INO_STATS
		       : !strcmp(name, "manifest.json")	? INO_MANIFEST
		       : !strcmp(name, "norm_stats.json") ? INO_NORM
							  : 0;
	if (p.t == N_LAYER) {
		int64_t k;
		int y;
		if (fs_parse_view(c->fs, name, &k, &y))
			return file_ino(c, p.layer_idx, k, y);
	}
	if (p.t == N_SAMPLES) { /* sample_<exactly the digits the listing shows>.pt */
		size_t digits = (size_t)view_sample_digits(c->fs), len = strlen(name);
		int64_t i = 0;
		bool ok = len == 7 + digits + 3 && !strncmp(name, "sample_", 7) && !strcmp(name + 7 + digits, ".pt");
		for (size_t j = 7; ok && j < 7 + digits; j++) /* zero-padded: leading zeros are the name */
			ok = name[j] >= '0' && name[j] <= '9' && (i = i * 10 + (name[j] - '0')) < fs_nsamples(c->fs);
		if (ok)
			return INO_SAMPLE0 + (fuse_ino_t)i;
	}
	return 0;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	ctx *c = edge_ctx(req);
	struct fuse_entry_param e = {0};
	atomic_fetch_add(&fs_stats(c->fs)->lookups, 1);
	e.ino = do_lookup(c, parent, name);
	if (!e.ino) {
		e.entry_timeout = EDGE_TIMEOUT; /* negative entries are cached too */
		fuse_reply_entry(req, &e);
		return;
	}
	e.attr_timeout = e.entry_timeout = EDGE_TIMEOUT;
	if (e.ino == INO_STATS && c->no_open) {
		/* looked up again at every open: each one a new file */
		if (!(e.ino = snap_take(c))) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		e.entry_timeout = 0;
	}
	int err = do_stat(c, e.ino, &e.attr, false);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	if (e.ino == INO_NORM && !e.attr.st_size)
		e.attr_timeout = 0;
	fuse_reply_entry(req, &e);
}

/* How long the kernel may keep ino's attributes: .cltfs/stats changes at
 * every read (a snapshot never does); norm_stats.json may still be
 * computed (size 0 until then). */
static double attr_timeout(fuse_ino_t ino, const struct stat *st)
{
	return ino == INO_STATS || (ino == INO_NORM && !st->st_size) ? 0 : EDGE_TIMEOUT;
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int err = do_stat(edge_ctx(req), ino, &st, fi != NULL);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_attr(req, &st, attr_timeout(ino, &st));
}

/* ---- directories ---- */

/* Directory entry number off of a directory: name and inode. */
static bool dir_entry(ctx *c, node d, fuse_ino_t self, off_t off, char *name, size_t n, fuse_ino_t *ino,
		      mode_t *mode)
{
	*mode = S_IFDIR;
	if (off == 0) {
		snprintf(name, n, ".");
		*ino = self;
		return true;
	}
	if (off == 1) {
		snprintf(name, n, "..");
		*ino = INO_ROOT; /* the parent of the root and of every directory */
		return true;
	}
	off -= 2;
	if (d.t == N_ROOT) {
		if (off < 2) {
			snprintf(name, n, off ? "samples" : ".cltfs");
			*ino = off ? INO_SAMPLES : INO_META;
			return true;
		}
		if (off - 2 < fs_nlayers(c->fs)) {
			snprintf(name, n, "L%d", fs_layer(c->fs, (int)(off - 2)));
			*ino = INO_LAYER0 + (fuse_ino_t)(off - 2);
			return true;
		}
		return false;
	}
	*mode = S_IFREG;
	if (d.t == N_META) {
		static const char *const names[] = {"stats", "manifest.json", "norm_stats.json"};
		static const fuse_ino_t inos[] = {INO_STATS, INO_MANIFEST, INO_NORM};
		if (off > 2)
			return false;
		snprintf(name, n, "%s", names[off]);
		*ino = inos[off];
		return true;
	}
	if (d.t == N_SAMPLES) {
		if (off >= fs_nsamples(c->fs))
			return false;
		snprintf(name, n, "sample_%0*lld.pt", view_sample_digits(c->fs), (long long)off);
		*ino = INO_SAMPLE0 + (fuse_ino_t)off;
		return true;
	}
	if (off / 2 >= fs_nbatches(c->fs))
		return false;
	snprintf(name, n, "batch_%lld_%c.pt", (long long)(off / 2), off % 2 ? 'y' : 'x');
	*ino = file_ino(c, d.layer_idx, off / 2, (int)(off % 2));
	return true;
}

typedef struct {
	ctx *c;
	node d;
	fuse_ino_t self;
} dir_ref;

static bool view_dirent(void *arg, off_t off, char *name, size_t n, fuse_ino_t *ino, mode_t *mode)
{
	dir_ref *r = arg;
	return dir_entry(r->c, r->d, r->self, off, name, n, ino, mode);
}

static int view_attr(void *arg, fuse_ino_t ino, struct stat *st, double *timeout)
{
	int err = do_stat(((dir_ref *)arg)->c, ino, st, false);
	if (!err)
		*timeout = attr_timeout(ino, st);
	return err;
}

static void readdir_any(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	ctx *c = edge_ctx(req);
	dir_ref r = {c, decode(c, ino), ino};
	atomic_fetch_add(&fs_stats(c->fs)->listings[plus], 1);
	if (r.d.t != N_ROOT && r.d.t != N_META && r.d.t != N_LAYER && r.d.t != N_SAMPLES)
		fuse_reply_err(req, ENOTDIR);
	else
		edge_readdir(req, size, off, view_dirent, plus ? view_attr : NULL, &r);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	readdir_any(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	readdir_any(req, ino, size, off, true);
}

/* ---- files ---- */

static void free_handle(edge_handle *link)
{
	handle *h = (handle *)link;
	view_put(h->v);
	free(h->own);
	free(h);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	ctx *c = edge_ctx(req);
	node n = decode(c, ino);
	atomic_fetch_add(&fs_stats(c->fs)->opens, 1);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (n.t != N_FILE && n.t != N_SAMPLE && n.t != N_STATS && n.t != N_MANIFEST && n.t != N_NORM) {
		fuse_reply_err(req, n.t == N_NONE ? ENOENT : EISDIR);
		return;
	}
	if (c->no_open) { /* from now on the kernel opens files itself */
		fuse_reply_err(req, ENOSYS);
		return;
	}
	handle *h = calloc(1, sizeof *h);
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	cltfs_err e = CLTFS_OK;
	if (n.t == N_FILE || n.t == N_SAMPLE) {
		e = n.t == N_SAMPLE ? view_get_sample(c->fs, n.batch, &h->v)
				    : view_get(c->fs, n.layer_idx, n.batch, n.is_y, &h->v);
		fi->keep_cache = 1;
	} else if (n.t == N_NORM) {
		h->kind = 1; /* kept by the mount until it ends: not copied */
		e = normstats_get(c->fs, true, &h->text, &h->len);
		fi->keep_cache = 1;
	} else if (n.t == N_MANIFEST) {
		h->kind = 1;
		h->text = c->manifest_json; /* read at mount: a views mount has a store */
		h->len = c->manifest_len;
		fi->keep_cache = 1;
	} else { /* N_STATS */
		h->kind = 1;
		h->text = h->own = fs_stats_json(c->fs);
		if (!h->own)
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		else
			h->len = strlen(h->own);
		fi->direct_io = 1; /* a fresh snapshot at each open */
	}
	if (e) {
		free(h);
		fuse_reply_err(req, edge_fail(c, e));
		return;
	}
	edge_file_opened(c, &h->link, free_handle);
	edge_reply_open(req, fi, &h->link);
}

static uint64_t usec_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)(t.tv_sec - t0->tv_sec) * 1000000u + (uint64_t)((t.tv_nsec - t0->tv_nsec) / 1000);
}

static void note_latency(cltfs_stats *st, uint64_t us)
{
	atomic_fetch_add(&st->lat_us_sum, us);
	unsigned long long max = atomic_load(&st->lat_us_max);
	while (us > max && !atomic_compare_exchange_weak(&st->lat_us_max, &max, us))
		;
}

/* Reply with bytes [off, off+size) of text (len bytes), from a copy: once
 * the kernel has the bytes (inside writev), the reader may close and
 * RELEASE free text on another thread before fuse_reply_buf returns. */
static void reply_slice(fuse_req_t req, const char *text, size_t len, off_t off, size_t size)
{
	size_t o = (size_t)off < len ? (size_t)off : len, n = size < len - o ? size : len - o;
	char *copy = malloc(n ? n : 1);
	if (!copy) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memcpy(copy, text + o, n);
	fuse_reply_buf(req, copy, n);
	free(copy);
}

/* A read of .cltfs/ without a handle (zero-message opens). */
static void read_meta(fuse_req_t req, ctx *c, node n, fuse_ino_t ino, size_t size, off_t off)
{
	if (n.t == N_MANIFEST) {
		reply_slice(req, c->manifest_json, c->manifest_len, off, size);
		return;
	}
	if (n.t == N_NORM) { /* the text never changes once known */
		const char *json;
		size_t len;
		cltfs_err e = normstats_get(c->fs, true, &json, &len);
		if (e)
			fuse_reply_err(req, edge_fail(c, e));
		else
			reply_slice(req, json, len, off, size);
		return;
	}
	size_t len;
	char *part = n.t == N_STATS ? snap_slice(c, ino, (size_t)off, size, &len) : NULL;
	if (part)
		fuse_reply_buf(req, part, len);
	else
		fuse_reply_err(req, n.t == N_STATS ? ENOMEM : EISDIR);
	free(part);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	ctx *c = edge_ctx(req);
	handle *h = (handle *)(uintptr_t)fi->fh;
	if (h && h->kind == 1) {
		reply_slice(req, h->text, h->len, off, size);
		return;
	}
	view *v = h ? h->v : NULL;
	node n = decode(c, ino);
	if (!h) { /* zero-message opens: the view of this inode, from the view cache */
		cltfs_err e = n.t == N_SAMPLE ? view_get_sample(c->fs, n.batch, &v)
			      : n.t == N_FILE ? view_get(c->fs, n.layer_idx, n.batch, n.is_y, &v)
					      : CLTFS_OK;
		if (n.t != N_FILE && n.t != N_SAMPLE)
			read_meta(req, c, n, ino, size, off);
		else if (e)
			fuse_reply_err(req, edge_fail(c, e));
		if (!v)
			return;
	}
	int kind = n.t == N_SAMPLE ? FS_VIEW_SAMPLE : n.is_y ? FS_VIEW_Y : FS_VIEW_X;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	cltfs_stats *st = fs_stats(c->fs);
	view_buf b;
	cltfs_err e = view_read(c->fs, v, (uint64_t)off, size, &b);
	if (e) {
		fuse_reply_err(req, edge_fail(c, e));
	} else {
		/* A reader that continues where it stopped is sequential: fetch ahead. */
		if (view_sequential(v, (uint64_t)off, b.total))
			view_readahead(c->fs, v, (uint64_t)off + b.total);
		/* counted first: the reader may read .cltfs/stats as soon as it has
		 * these bytes */
		atomic_fetch_add(&st->reads, 1);
		atomic_fetch_add(&st->bytes_read, b.total);
		atomic_fetch_add(&st->view_reads[kind], 1);
		atomic_fetch_add(&st->view_bytes[kind], b.total);
		fuse_reply_iov(req, b.iov, (int)b.niov);
		view_buf_release(c->fs, &b);
		note_latency(st, usec_since(&t0));
	}
	if (!h)
		view_put(v);
}

const struct fuse_lowlevel_ops edge_views_ops = {
	.lookup = op_lookup,
	.getattr = op_getattr,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.open = op_open,
	.read = op_read,
	.release = edge_release,
	EDGE_READONLY_OPS,
};
