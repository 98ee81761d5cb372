/* plain.c: a Hub repo of plain files (no cltfs.json) as a read-only tree,
 * in place of snapshot_download.
 *
 * Names and sizes come from the Hub's listing at mount, so ls and stat
 * cost nothing.  The first open of a file starts its download into the HF
 * cache (where huggingface_hub finds it); reads are answered as soon as
 * their bytes have arrived; later opens read the cached file.  Inode i+1
 * is node i: node 0 is the root, the others are the listing's paths (with
 * any missing parent directories), sorted, so a lookup is a binary search.
 */
#include "fuse_edge.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
	char *path; /* "" for the root */
	uint64_t size;
	bool dir;
	size_t *kids, nkids, kcap;
	hf_download *dl; /* the running or last download; guarded by mu */
} pnode;

struct plain_fs {
	hf_repo *r;
	pnode *nodes;
	size_t n;
	pthread_mutex_t mu;
	char snap[PATH_MAX]; /* the snapshot folder in the HF cache */
	struct timespec mtime;
	uid_t uid;
	gid_t gid;
};

typedef struct {
	int fd;          /* the cached file, or -1 */
	hf_download *dl; /* else the download to follow */
} phandle;

static int by_path(const void *a, const void *b)
{
	return strcmp(((const pnode *)a)->path, ((const pnode *)b)->path);
}

static ssize_t find(const plain_fs *p, const char *path)
{
	size_t lo = 0, hi = p->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(p->nodes[mid].path, path);
		if (!c)
			return (ssize_t)mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static cltfs_err add(plain_fs *p, size_t *cap, const char *path, size_t len, uint64_t size, bool dir)
{
	if (!cltfs_grow(&p->nodes, cap, p->n + 1, sizeof *p->nodes))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	pnode *n = &p->nodes[p->n];
	*n = (pnode){.size = size, .dir = dir};
	if (!(n->path = strndup(path, len)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	p->n++;
	return CLTFS_OK;
}

/* Sort, drop duplicates (a directory both listed and implied), link each
 * node to its parent. */
static cltfs_err build_tree(plain_fs *p)
{
	qsort(p->nodes, p->n, sizeof *p->nodes, by_path);
	size_t w = 0;
	for (size_t i = 0; i < p->n; i++) {
		if (w && !strcmp(p->nodes[w - 1].path, p->nodes[i].path)) {
			if (p->nodes[w - 1].dir != p->nodes[i].dir)
				return cltfs_fail(CLTFS_E_FORMAT, "hf://%s: '%s' is both a file and a directory",
						  hf_repo_id(p->r), p->nodes[i].path);
			free(p->nodes[i].path);
			continue;
		}
		p->nodes[w++] = p->nodes[i];
	}
	p->n = w;
	for (size_t i = 1; i < p->n; i++) { /* node 0, "", is the root */
		const char *slash = strrchr(p->nodes[i].path, '/');
		char parent[PATH_MAX];
		snprintf(parent, sizeof parent, "%.*s", slash ? (int)(slash - p->nodes[i].path) : 0, p->nodes[i].path);
		ssize_t pi = find(p, parent);
		if (pi < 0 || !p->nodes[pi].dir)
			return cltfs_fail(CLTFS_E_FORMAT, "hf://%s: no directory for '%s'", hf_repo_id(p->r),
					  p->nodes[i].path);
		pnode *d = &p->nodes[pi];
		if (!cltfs_grow(&d->kids, &d->kcap, d->nkids + 1, sizeof *d->kids))
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		d->kids[d->nkids++] = i;
	}
	return CLTFS_OK;
}

cltfs_err plain_new(hf_repo *r, const hf_entry *e, size_t n, plain_fs **out)
{
	plain_fs *p = calloc(1, sizeof *p);
	if (!p)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	p->r = r;
	pthread_mutex_init(&p->mu, NULL);
	snprintf(p->snap, sizeof p->snap, "%s/snapshots/%s", hf_repo_folder(r), hf_repo_commit(r));
	clock_gettime(CLOCK_REALTIME, &p->mtime);
	p->uid = getuid();
	p->gid = getgid();
	size_t cap = 0;
	cltfs_err err = add(p, &cap, "", 0, 0, true);
	for (size_t i = 0; !err && i < n; i++) {
		err = add(p, &cap, e[i].path, strlen(e[i].path), e[i].size, e[i].dir);
		/* every parent directory, in case the listing leaves some out */
		for (const char *s = e[i].path; !err && (s = strchr(s, '/')); s++)
			err = add(p, &cap, e[i].path, (size_t)(s - e[i].path), 0, true);
	}
	if (!err)
		err = build_tree(p);
	if (err) {
		plain_free(p);
		return err;
	}
	*out = p;
	return CLTFS_OK;
}

void plain_free(plain_fs *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++) {
		if (p->nodes[i].dl) {
			hf_download_cancel(p->nodes[i].dl); /* what arrived stays for a resume */
			hf_download_release(p->nodes[i].dl);
		}
		free(p->nodes[i].path);
		free(p->nodes[i].kids);
	}
	free(p->nodes);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

/* ---- operations ---- */

static plain_fs *get(fuse_req_t req) { return fuse_req_userdata(req); }

static pnode *node_of(plain_fs *p, fuse_ino_t ino) { return ino >= 1 && ino <= p->n ? &p->nodes[ino - 1] : NULL; }

static void fill_stat(const plain_fs *p, const pnode *n, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	st->st_uid = p->uid;
	st->st_gid = p->gid;
	st->st_mtim = st->st_ctim = st->st_atim = p->mtime;
	st->st_blksize = EDGE_MAX_READ;
	st->st_mode = n->dir ? S_IFDIR | 0555 : S_IFREG | 0444;
	st->st_nlink = n->dir ? 2 : 1;
	st->st_size = n->dir ? 0 : (off_t)n->size;
	st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	plain_fs *p = get(req);
	pnode *d = node_of(p, parent);
	struct fuse_entry_param e = {0};
	if (!d || !d->dir) {
		fuse_reply_err(req, d ? ENOTDIR : ENOENT);
		return;
	}
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s%s%s", d->path, *d->path ? "/" : "", name);
	ssize_t i = find(p, path);
	e.entry_timeout = EDGE_TIMEOUT;
	if (i >= 0) {
		e.ino = (fuse_ino_t)i + 1;
		e.attr_timeout = EDGE_TIMEOUT;
		fill_stat(p, &p->nodes[i], e.ino, &e.attr);
	}
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	plain_fs *p = get(req);
	pnode *n = node_of(p, ino);
	struct stat st;
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_stat(p, n, ino, &st);
	fuse_reply_attr(req, &st, EDGE_TIMEOUT);
}

typedef struct {
	plain_fs *p;
	pnode *d;
	fuse_ino_t self;
} dir_ref;

static bool plain_dirent(void *arg, off_t off, char *name, size_t n, fuse_ino_t *ino, mode_t *mode)
{
	dir_ref *r = arg;
	*mode = S_IFDIR;
	if (off < 2) {
		snprintf(name, n, off ? ".." : ".");
		*ino = off ? 1 : r->self; /* the kernel fixes ".." up itself */
		return true;
	}
	if ((size_t)off - 2 >= r->d->nkids)
		return false;
	const pnode *k = &r->p->nodes[r->d->kids[off - 2]];
	const char *slash = strrchr(k->path, '/');
	snprintf(name, n, "%s", slash ? slash + 1 : k->path);
	*ino = (fuse_ino_t)r->d->kids[off - 2] + 1;
	*mode = k->dir ? S_IFDIR : S_IFREG;
	return true;
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	plain_fs *p = get(req);
	dir_ref r = {p, node_of(p, ino), ino};
	if (!r.d || !r.d->dir)
		fuse_reply_err(req, r.d ? ENOTDIR : ENOENT);
	else
		edge_readdir(req, size, off, plain_dirent, &r);
}

/* The file's download, started on the first open, shared by later ones
 * until it is done (a failed one is tried again). */
static cltfs_err follow(plain_fs *p, pnode *n, hf_download **out)
{
	pthread_mutex_lock(&p->mu);
	if (n->dl && hf_download_failed(n->dl)) {
		hf_download_release(n->dl);
		n->dl = NULL;
	}
	cltfs_err e = n->dl ? CLTFS_OK : hf_download_start(p->r, n->path, &n->dl);
	if (!e)
		*out = hf_download_ref(n->dl);
	pthread_mutex_unlock(&p->mu);
	return e;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	plain_fs *p = get(req);
	pnode *n = node_of(p, ino);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (!n || n->dir) {
		fuse_reply_err(req, n ? EISDIR : ENOENT);
		return;
	}
	phandle *h = malloc(sizeof *h);
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	*h = (phandle){-1, NULL};
	char path[PATH_MAX + 512];
	snprintf(path, sizeof path, "%s/%s", p->snap, n->path);
	struct stat st;
	/* In the cache already (from this mount, an earlier one, or Python). */
	if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == n->size)
		h->fd = open(path, O_RDONLY | O_CLOEXEC);
	cltfs_err e = h->fd >= 0 ? CLTFS_OK : follow(p, n, &h->dl);
	if (e) {
		free(h);
		fs_log(cltfs_errmsg());
		fuse_reply_err(req, edge_errno(e));
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	phandle *h = (phandle *)(uintptr_t)fi->fh;
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t got = 0;
	cltfs_err e = CLTFS_OK;
	if (h->fd >= 0) {
		while (got < size) {
			ssize_t k = pread(h->fd, buf + got, size - got, off + (off_t)got);
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0)
				e = cltfs_fail(CLTFS_E_IO, "read: %s", strerror(errno));
			if (k <= 0)
				break;
			got += (size_t)k;
		}
	} else {
		e = hf_download_pread(h->dl, buf, size, (uint64_t)off, &got);
	}
	if (e) {
		fs_log(cltfs_errmsg());
		fuse_reply_err(req, edge_errno(e));
	} else {
		fuse_reply_buf(req, buf, got);
	}
	free(buf);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	phandle *h = (phandle *)(uintptr_t)fi->fh;
	if (h->fd >= 0)
		close(h->fd);
	hf_download_release(h->dl);
	free(h);
	fuse_reply_err(req, 0);
}

const struct fuse_lowlevel_ops plain_ops = {
	.lookup = op_lookup,
	.getattr = op_getattr,
	.readdir = op_readdir,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	EDGE_READONLY_OPS,
};
