/* fuse.c: the FUSE adapter (low-level API), the only place that speaks errno.
 *
 * Inode numbers are a pure function of the namespace, so lookups need no
 * table:
 *   1                 the root
 *   2, 3, 4           .cltfs/, .cltfs/stats, .cltfs/manifest.json
 *   16 + i            layer directory i (L<n> with n = x_layers[i])
 *   FILE0 + 2*(i*B+k) + y   batch k of layer directory i; y: 0 x, 1 y
 * Content never changes under a mount, so entries and attributes are
 * cached for a day and files are opened with keep_cache: a second read is
 * a page-cache read.  Work (build a view, compose bytes) is split from the
 * reply, as in libfuse's passthrough_ll.c.
 */
#include "fuse_edge.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define INO_ROOT 1
#define INO_META 2
#define INO_STATS 3
#define INO_MANIFEST 4
#define INO_LAYER0 16
#define INO_FILE0 (UINT64_C(1) << 20)
#define TIMEOUT EDGE_TIMEOUT
#define MAX_READ EDGE_MAX_READ

typedef struct {
	cltfs_fs *fs;
	char *manifest_json;
	size_t manifest_len;
	struct timespec mtime;
	uid_t uid;
	gid_t gid;
} ctx;

typedef struct {
	int kind; /* 0 view, 1 snapshot (stats, manifest) */
	view *v;
	char *buf;
	size_t len;
	uint64_t last_end;
} handle;

static ctx *get_ctx(fuse_req_t req) { return fuse_req_userdata(req); }

/* The one map from cltfs errors to errno. */
int edge_errno(cltfs_err e)
{
	switch (e) {
	case CLTFS_OK:
		return 0;
	case CLTFS_E_NOMEM:
		return ENOMEM;
	case CLTFS_E_NOTFOUND:
	case CLTFS_E_CORRUPT:
	case CLTFS_E_IO:
	case CLTFS_E_MISMATCH:
	case CLTFS_E_FORMAT:
		return EIO;
	case CLTFS_E_INVAL:
		return EINVAL;
	case CLTFS_E_UNSUPPORTED:
		return EOPNOTSUPP;
	}
	return EIO;
}

static bool use_syslog; /* daemonized: stderr is /dev/null */

void edge_use_syslog(void)
{
	openlog("cltfs", LOG_PID, LOG_DAEMON);
	use_syslog = true;
}

void fs_log(const char *msg)
{
	if (use_syslog)
		syslog(LOG_ERR, "%s", msg);
	else
		fprintf(stderr, "cltfs: %s\n", msg);
}

/* Count, log (naming the file and the cause) and turn into an errno. */
static int fail(ctx *c, cltfs_err e)
{
	atomic_fetch_add(&fs_stats(c->fs)->errors, 1);
	fs_log(cltfs_errmsg());
	return edge_errno(e);
}

/* ---- inodes ---- */

typedef struct {
	enum { N_ROOT, N_META, N_STATS, N_MANIFEST, N_LAYER, N_FILE, N_NONE } t;
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
	else if (ino == INO_STATS)
		n.t = N_STATS;
	else if (ino == INO_MANIFEST)
		n.t = N_MANIFEST;
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

static int do_stat(ctx *c, fuse_ino_t ino, struct stat *st)
{
	node n = decode(c, ino);
	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	st->st_uid = c->uid;
	st->st_gid = c->gid;
	st->st_mtim = st->st_ctim = st->st_atim = c->mtime;
	st->st_blksize = MAX_READ;
	switch (n.t) {
	case N_ROOT:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 3 + (nlink_t)fs_nlayers(c->fs);
		return 0;
	case N_META:
	case N_LAYER:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	case N_STATS: /* size 0: read until EOF, like /proc */
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		return 0;
	case N_MANIFEST:
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)c->manifest_len;
		return 0;
	case N_FILE: {
		uint64_t size;
		cltfs_err e = fs_view_size(c->fs, n.layer_idx, n.batch, n.is_y, &size);
		if (e)
			return fail(c, e);
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
		int li = fs_find_layer(c->fs, name);
		return li < 0 ? 0 : INO_LAYER0 + (fuse_ino_t)li;
	}
	if (p.t == N_META)
		return !strcmp(name, "stats") ? INO_STATS : !strcmp(name, "manifest.json") ? INO_MANIFEST : 0;
	if (p.t == N_LAYER) {
		int64_t k;
		int y;
		if (fs_parse_view(c->fs, name, &k, &y))
			return file_ino(c, p.layer_idx, k, y);
	}
	return 0;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	ctx *c = get_ctx(req);
	struct fuse_entry_param e = {0};
	e.ino = do_lookup(c, parent, name);
	if (!e.ino) {
		e.entry_timeout = TIMEOUT; /* negative entries are cached too */
		fuse_reply_entry(req, &e);
		return;
	}
	int err = do_stat(c, e.ino, &e.attr);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	e.attr_timeout = e.entry_timeout = TIMEOUT;
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int err = do_stat(get_ctx(req), ino, &st);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_attr(req, &st, ino == INO_STATS ? 0 : TIMEOUT);
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
		*ino = d.t == N_ROOT ? INO_ROOT : INO_ROOT;
		return true;
	}
	off -= 2;
	if (d.t == N_ROOT) {
		if (off == 0) {
			snprintf(name, n, ".cltfs");
			*ino = INO_META;
			return true;
		}
		if (off - 1 < fs_nlayers(c->fs)) {
			snprintf(name, n, "L%d", fs_layer(c->fs, (int)(off - 1)));
			*ino = INO_LAYER0 + (fuse_ino_t)(off - 1);
			return true;
		}
		return false;
	}
	*mode = S_IFREG;
	if (d.t == N_META) {
		if (off > 1)
			return false;
		snprintf(name, n, off == 0 ? "stats" : "manifest.json");
		*ino = off == 0 ? INO_STATS : INO_MANIFEST;
		return true;
	}
	if (off / 2 >= fs_nbatches(c->fs))
		return false;
	snprintf(name, n, "batch_%lld_%c.pt", (long long)(off / 2), off % 2 ? 'y' : 'x');
	*ino = file_ino(c, d.layer_idx, off / 2, (int)(off % 2));
	return true;
}

void edge_readdir(fuse_req_t req, size_t size, off_t off, edge_dirent entry, void *arg)
{
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t used = 0;
	char name[256];
	fuse_ino_t eino;
	mode_t mode;
	while (entry(arg, off, name, sizeof name, &eino, &mode)) {
		struct stat st = {.st_ino = eino, .st_mode = mode};
		size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, off + 1);
		if (need > size - used)
			break;
		used += need;
		off++;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
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

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	ctx *c = get_ctx(req);
	dir_ref r = {c, decode(c, ino), ino};
	if (r.d.t != N_ROOT && r.d.t != N_META && r.d.t != N_LAYER)
		fuse_reply_err(req, ENOTDIR);
	else
		edge_readdir(req, size, off, view_dirent, &r);
}

/* ---- files ---- */

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	ctx *c = get_ctx(req);
	node n = decode(c, ino);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (n.t != N_FILE && n.t != N_STATS && n.t != N_MANIFEST) {
		fuse_reply_err(req, n.t == N_NONE ? ENOENT : EISDIR);
		return;
	}
	handle *h = calloc(1, sizeof *h);
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	cltfs_err e = CLTFS_OK;
	if (n.t == N_FILE) {
		e = view_get(c->fs, n.layer_idx, n.batch, n.is_y, &h->v);
		fi->keep_cache = 1;
	} else {
		h->kind = 1;
		h->buf = n.t == N_STATS ? fs_stats_json(c->fs) : strdup(c->manifest_json);
		if (!h->buf)
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		else
			h->len = strlen(h->buf);
		fi->direct_io = n.t == N_STATS; /* a fresh snapshot at each open */
		fi->keep_cache = n.t == N_MANIFEST;
	}
	if (e) {
		free(h);
		fuse_reply_err(req, fail(c, e));
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	fuse_reply_open(req, fi);
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

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	ctx *c = get_ctx(req);
	handle *h = (handle *)(uintptr_t)fi->fh;
	if (h->kind == 1) {
		/* Reply from a copy: once the kernel has the bytes (inside writev),
		 * the reader may close and RELEASE free h on another thread before
		 * fuse_reply_buf returns. */
		size_t o = (size_t)off < h->len ? (size_t)off : h->len, n = size < h->len - o ? size : h->len - o;
		char *copy = malloc(n ? n : 1);
		if (!copy) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(copy, h->buf + o, n);
		fuse_reply_buf(req, copy, n);
		free(copy);
		return;
	}
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	cltfs_stats *st = fs_stats(c->fs);
	view_buf b;
	cltfs_err e = view_read(c->fs, h->v, (uint64_t)off, size, &b);
	if (e) {
		fuse_reply_err(req, fail(c, e));
		return;
	}
	/* A reader that continues where it stopped is sequential: fetch ahead. */
	uint64_t end = (uint64_t)off + b.total, prev = __atomic_exchange_n(&h->last_end, end, __ATOMIC_RELAXED);
	if (prev == (uint64_t)off && b.total)
		view_readahead(c->fs, h->v, end);
	fuse_reply_iov(req, b.iov, (int)b.niov);
	atomic_fetch_add(&st->reads, 1);
	atomic_fetch_add(&st->bytes_read, b.total);
	view_buf_release(c->fs, &b);
	note_latency(st, usec_since(&t0));
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	handle *h = (handle *)(uintptr_t)fi->fh;
	view_put(h->v);
	free(h->buf);
	free(h);
	fuse_reply_err(req, 0);
}

/* Python's open() asks isatty() of every file: a regular file is no tty. */
void edge_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
		     unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	fuse_reply_err(req, ENOTTY);
}

void edge_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv = {.f_bsize = MAX_READ, .f_frsize = 512, .f_namemax = 255};
	fuse_reply_statfs(req, &sv);
}

/* ---- read-only ---- */

static void erofs(fuse_req_t req) { fuse_reply_err(req, EROFS); }
void edge_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m) { erofs(req); }
void edge_unlink(fuse_req_t req, fuse_ino_t p, const char *n) { erofs(req); }
void edge_rename(fuse_req_t req, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn,
		      unsigned int flags)
{
	erofs(req);
}
void edge_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *fi)
{
	erofs(req);
}
void edge_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	erofs(req);
}
void edge_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t r) { erofs(req); }
void edge_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n) { erofs(req); }
void edge_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t p, const char *n) { erofs(req); }
void edge_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	erofs(req);
}

void edge_init(void *userdata, struct fuse_conn_info *conn)
{
	/* Large reads and readahead: the kernel's defaults (128 KiB) cost 2-5x
	 * in throughput (DESIGN.md section 5).  max_read must match -o max_read. */
	conn->max_read = MAX_READ;
	/* libfuse derives the kernel's max_pages (the largest request) from
	 * max_write: without this, reads stay at 128 KiB. */
	conn->max_write = MAX_READ;
	conn->max_readahead = conn->max_readahead > MAX_READ ? conn->max_readahead : MAX_READ;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
}

static const struct fuse_lowlevel_ops ops = {
	.lookup = op_lookup,
	.getattr = op_getattr,
	.readdir = op_readdir,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	EDGE_READONLY_OPS,
};

/* ---- command line ---- */

typedef struct {
	char *store, *dtype;
	long long cache_mb, batch_samples, batch_rows, readahead, threads, read_ahead_kb;
	char *args[2];
	int nargs;
	int foreground, debug, single, help, version;
} cli;

#define OPT(t, p) {t, offsetof(cli, p), 1}
#define UNSET LLONG_MIN /* an option not given */
static const struct fuse_opt cli_opts[] = {
	OPT("store=%s", store),           OPT("dtype=%s", dtype),
	OPT("cache_mb=%lld", cache_mb),   OPT("batch_samples=%lld", batch_samples),
	OPT("batch_rows=%lld", batch_rows), OPT("readahead=%lld", readahead),
	OPT("threads=%lld", threads),     OPT("read_ahead_kb=%lld", read_ahead_kb),
	OPT("-f", foreground),
	OPT("-d", debug),                 OPT("debug", debug),
	OPT("-s", single),                OPT("-h", help),
	OPT("--help", help),              OPT("-V", version),
	OPT("--version", version),        FUSE_OPT_END,
};

static int cli_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	cli *c = data;
	if (key == FUSE_OPT_KEY_NONOPT) {
		if (c->nargs == 2) {
			fprintf(stderr, "cltfs: unexpected argument '%s'\n", arg);
			return -1;
		}
		c->args[c->nargs++] = strdup(arg);
		return 0;
	}
	return 1; /* everything else goes to libfuse */
}

void cltfs_usage(FILE *f)
{
	fputs("usage: cltfs [SOURCE] MOUNTPOINT [-f] [-d] [-s] [-o opt[,opt...]]\n"
	      "       cltfs import STORE SRC_DIR [--chunk-rows N] [--target-offset 0|1] [--level N] [--quiet]\n"
	      "       cltfs pull hf://datasets/OWNER/NAME[@REV] STORE [--quiet]\n"
	      "       cltfs init STORE --model DIR --dataset QUERIES.json --image-dir DIR [--n-targets N]\n"
	      "             [--target-offset 0|1] [--padding zero|clip] [--dtype T] [--input-hook H]\n"
	      "             [--chunk-rows N] [--batch-samples S] [--template T] [--model-id ID] [--quiet]\n"
	      "       cltfs capture STORE [--rows A:B | --shard I/N] [--batch N] [--dtype T] [--threads N] [--cpu]\n"
	      "             [--quiet]\n"
	      "       cltfs stat STORE [--json]\n"
	      "       cltfs verify STORE\n"
	      "       cltfs --help | --version\n"
	      "\n"
	      "Serve model activations for CLT training as L<n>/batch_<k>_{x,y}.pt files composed on\n"
	      "read from a compressed, deduplicated store.  SOURCE is a store directory or a Hugging\n"
	      "Face Hub repo, hf://datasets/OWNER/NAME[@REV]: a cltfs store there is fetched chunk by\n"
	      "chunk as it is read (into -o store=DIR, else ~/.cache/cltfs/hub/...); any other repo\n"
	      "shows its files, each downloaded into the HF cache when first opened.  HF_ENDPOINT,\n"
	      "HF_TOKEN, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE=1 work as in huggingface_hub.\n"
	      "\n"
	      "Mount options:\n"
	      "  -o store=DIR           the store (else $CLTFS_STORE, else ~/.local/share/cltfs/store);\n"
	      "                         with an hf:// SOURCE, the local store for fetched chunks\n"
	      "  -o cache_mb=N          memory for decoded chunks (default 256)\n"
	      "  -o batch_samples=S     regroup samples S per batch\n"
	      "  -o batch_rows=B        flat token batches of B rows: {'x': [B, d]}\n"
	      "  -o dtype=T             bfloat16, float16 or float32, converted on the fly\n"
	      "  -o readahead=N         chunks decoded ahead of a sequential reader (default 4, 0 off)\n"
	      "  -o threads=N           at most N FUSE worker threads (default 16)\n"
	      "  -o read_ahead_kb=N     the kernel's readahead for this mount (default 1024; needs root)\n"
	      "  -f  stay in the foreground   -d  debug output   -s  single-threaded\n"
	      "  and the usual FUSE options (allow_other, ...).  Unmount with fusermount3 -u.\n"
	      "\n"
	      "Also: mount -t fuse.cltfs STORE MNT, mount -t fuse cltfs MNT -o store=STORE, and\n"
	      "/etc/fstab lines of type fuse.cltfs.  See man cltfs.\n",
	      f);
}

static const char *default_store(char *buf, size_t n)
{
	const char *env = getenv("CLTFS_STORE"), *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
	if (env && *env)
		return env;
	if (xdg && *xdg)
		snprintf(buf, n, "%s/cltfs/store", xdg);
	else
		snprintf(buf, n, "%s/.local/share/cltfs/store", home ? home : "");
	return buf;
}

static bool in_range(const char *name, long long v, long long lo, long long hi)
{
	if (v == UNSET || (v >= lo && v <= hi))
		return true;
	fprintf(stderr, "cltfs: -o %s=%lld: expected %lld to %lld\n", name, v, lo, hi);
	return false;
}

static bool check_opts(const cli *c, cltfs_opts *o)
{
	*o = (cltfs_opts){.dtype = -1, .cache_mb = 256, .readahead = 4, .prefault = true};
	if (!in_range("cache_mb", c->cache_mb, 1, 1 << 22) || !in_range("batch_samples", c->batch_samples, 1, INT32_MAX) ||
	    !in_range("batch_rows", c->batch_rows, 1, INT32_MAX) || !in_range("readahead", c->readahead, 0, 64) ||
	    !in_range("threads", c->threads, 1, 1024) || !in_range("read_ahead_kb", c->read_ahead_kb, 0, 1 << 20))
		return false;
	if (c->batch_samples != UNSET && c->batch_rows != UNSET) {
		fprintf(stderr, "cltfs: -o batch_samples and batch_rows exclude each other\n");
		return false;
	}
	cltfs_dtype dt;
	if (c->dtype && !cltfs_dtype_parse(c->dtype, &dt)) {
		fprintf(stderr, "cltfs: -o dtype=%s: expected bfloat16, float16 or float32\n", c->dtype);
		return false;
	}
	if (c->dtype)
		o->dtype = (int)dt;
	if (c->cache_mb != UNSET)
		o->cache_mb = (size_t)c->cache_mb;
	o->batch_samples = c->batch_samples != UNSET ? c->batch_samples : 0;
	o->batch_rows = c->batch_rows != UNSET ? c->batch_rows : 0;
	if (c->readahead != UNSET) /* readahead=0 turns it off */
		o->readahead = (int)c->readahead;
	return true;
}

/* The kernel caps a FUSE mount's readahead at its default (128 KiB) however
 * large max_readahead is: its backing device's read_ahead_kb is the knob
 * (1 MiB measured 2x faster first reads).  Find the mount's device in
 * mountinfo, not by stat(), which would wait on this very daemon. */
static void raise_readahead(const char *mnt, long long kb)
{
	char want[PATH_MAX], line[8192], dev[32] = "", path[128];
	if (kb <= 0 || !realpath(mnt, want))
		return;
	FILE *f = fopen("/proc/self/mountinfo", "r");
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		char d[32], point[PATH_MAX];
		if (sscanf(line, "%*s %*s %31s %*s %4095s", d, point) == 2 && !strcmp(point, want) &&
		    strstr(line, " - fuse"))
			snprintf(dev, sizeof dev, "%s", d); /* the last one is the newest */
	}
	fclose(f);
	snprintf(path, sizeof path, "/sys/class/bdi/%s/read_ahead_kb", dev);
	FILE *ra = *dev ? fopen(path, "w") : NULL;
	if (!ra)
		return; /* not root: the kernel default stays */
	fprintf(ra, "%lld\n", kb);
	fclose(ra);
}

static int serve(struct fuse_session *se, const cli *c)
{
	if (c->single)
		return fuse_session_loop(se);
	struct fuse_loop_config *lc = fuse_loop_cfg_create();
	if (!lc)
		return -1;
	unsigned n = c->threads != UNSET ? (unsigned)c->threads : 16;
	fuse_loop_cfg_set_clone_fd(lc, 0);
	/* Keep idle workers: each holds warm decode buffers, and a new thread
	 * would fault fresh ones in on its first chunk. */
	fuse_loop_cfg_set_idle_threads(lc, n);
	fuse_loop_cfg_set_max_threads(lc, n);
	int r = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	return r;
}

/* Open what SOURCE names: a store directory, or a Hub repo (a cltfs store
 * repo behind the local store, or a plain repo of files). */
static int open_source(const cli *c, const char *source, cltfs_store **s, hub_source **hub, plain_fs **plain,
		       cltfs_tier **capture)
{
	if (!hf_is_url(source)) {
		if (store_open(source, s))
			goto fail;
		/* a store made by `cltfs init`: a miss runs the model */
		const char *kind = store_manifest(*s)->source_kind;
		cap_load_opts lo = {.dtype = -1};
		if (kind && !strcmp(kind, "capture") && capture_tier_open(*s, &lo, capture))
			goto fail;
		return 0;
	}
	/* cltfs hf://... MNT -o store=DIR: DIR is where fetched chunks go */
	const char *local = c->nargs == 2 ? c->store : NULL;
	if (hub_open(source, local, hub))
		goto fail;
	if (hub_is_store(*hub)) {
		*s = hub_local(*hub);
		return 0;
	}
	size_t n;
	const hf_entry *e = hub_entries(*hub, &n);
	if (plain_new(hub_repo(*hub), e, n, plain))
		goto fail;
	return 0;
fail:
	fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
	return 1;
}

int fuse_main_cltfs(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	cli c = {.cache_mb = UNSET, .batch_samples = UNSET, .batch_rows = UNSET, .readahead = UNSET,
		 .threads = UNSET, .read_ahead_kb = 1024};
	int rc = 1;
	cltfs_store *s = NULL;
	hub_source *hub = NULL;
	plain_fs *plain = NULL;
	cltfs_tier *capture = NULL;
	cltfs_fs *fs = NULL;
	struct fuse_session *se = NULL;
	ctx cx = {0};
	cltfs_opts o;
	char defbuf[PATH_MAX], opt[64];

	/* Chunk buffers come from the cache's own regions; what is left on the
	 * heap is each worker's decode buffers (~1 MiB) and per-read arrays.
	 * Keep those on the heap (not one mmap each), never trimmed back, in
	 * few arenas: no page is faulted in twice and memory stays near
	 * cache_mb. */
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	mallopt(M_ARENA_MAX, 2);
	if (fuse_opt_parse(&args, &c, cli_opts, cli_proc) < 0)
		goto out;
	if (c.help) {
		cltfs_usage(stdout);
		rc = 0;
		goto out;
	}
	if (c.version) {
		printf("cltfs %s (libfuse %s)\n", CLTFS_VERSION, fuse_pkgversion());
		rc = 0;
		goto out;
	}
	if (c.nargs == 0) {
		fprintf(stderr, "cltfs: no mount point given (see cltfs --help)\n");
		rc = 2;
		goto out;
	}
	/* cltfs SOURCE MNT, or cltfs MNT with the source from -o store=, the
	 * environment, or the default. */
	const char *mnt = c.args[c.nargs - 1];
	const char *source = c.nargs == 2 ? c.args[0] : c.store ? c.store : default_store(defbuf, sizeof defbuf);
	if (!check_opts(&c, &o)) {
		rc = 2;
		goto out;
	}
	/* Everything that can fail for a reason the user must hear (a missing
	 * store, a repo not found, no token) fails here, before daemonizing. */
	if (open_source(&c, source, &s, &hub, &plain, &capture))
		goto out;
	o.tier = hub ? hub_tier_of(hub) : capture;
	snprintf(opt, sizeof opt, "-omax_read=%u", MAX_READ);
	if (fuse_opt_add_arg(&args, opt) || fuse_opt_add_arg(&args, "-oro") ||
	    fuse_opt_add_arg(&args, "-ofsname=cltfs") || fuse_opt_add_arg(&args, "-osubtype=cltfs") ||
	    (c.debug && fuse_opt_add_arg(&args, "-d")))
		goto out_store;
	if (s) {
		cx.manifest_json = cltfs_manifest_dump(store_manifest(s));
		if (!cx.manifest_json)
			goto out_store;
		cx.manifest_len = strlen(cx.manifest_json);
	}
	cx.uid = getuid();
	cx.gid = getgid();
	clock_gettime(CLOCK_REALTIME, &cx.mtime);
	se = plain ? fuse_session_new(&args, &plain_ops, sizeof plain_ops, plain)
		   : fuse_session_new(&args, &ops, sizeof ops, &cx);
	if (!se)
		goto out_json;
	if (fuse_set_signal_handlers(se))
		goto out_session;
	if (fuse_session_mount(se, mnt)) {
		fprintf(stderr, "cltfs: cannot mount %s on %s\n", source, mnt);
		goto out_signals;
	}
	raise_readahead(mnt, c.read_ahead_kb);
	/* Threads (readahead) start after the fork of daemonizing. */
	fuse_daemonize(c.foreground || c.debug);
	if (!c.foreground && !c.debug)
		edge_use_syslog();
	if (plain) {
		rc = serve(se, &c) ? 1 : 0;
		goto out_unmount;
	}
	if (fs_new(s, &o, &fs)) {
		fs_log(cltfs_errmsg());
		goto out_unmount;
	}
	cx.fs = fs;
	rc = serve(se, &c) ? 1 : 0;
	fs_free(fs);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_json:
	free(cx.manifest_json);
out_store:
	capture_tier_close(capture);
	plain_free(plain);
	if (hub)
		hub_close(hub); /* its local store is s */
	else
		store_close(s);
out:
	free(c.store);
	free(c.dtype);
	free(c.args[0]);
	free(c.args[1]);
	fuse_opt_free_args(&args);
	return rc;
}
