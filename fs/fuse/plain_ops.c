/* plain_ops.c: the FUSE operations of a plain Hub repo's tree (plain.h).
 * Inode i+1 is node i; the root is node 0, inode 1 as FUSE wants. */
#include "edge.h"
#include "plain.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static plain_fs *get(fuse_req_t req) { return edge_ctx(req)->plain; }

typedef struct {
	edge_handle link; /* first: the list of open files */
	plain_file *f;
} phandle;

static void free_handle(edge_handle *link)
{
	phandle *h = (phandle *)link;
	plain_close(h->f);
	free(h);
}

static bool node_of(plain_fs *p, fuse_ino_t ino, size_t *i)
{
	*i = (size_t)ino - 1;
	return ino >= 1 && ino <= plain_count(p);
}

static void fill_stat(const edge_ctx_t *c, plain_node n, fuse_ino_t ino, struct stat *st)
{
	edge_stat_base(c, ino, st);
	st->st_mode = n.dir ? S_IFDIR | 0555 : S_IFREG | 0444;
	st->st_nlink = n.dir ? 2 : 1;
	st->st_size = (off_t)n.size;
	st->st_blocks = (blkcnt_t)((n.size + 511) / 512);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	plain_fs *p = get(req);
	size_t d;
	struct fuse_entry_param e = {0};
	if (!node_of(p, parent, &d) || !plain_info(p, d).dir) {
		fuse_reply_err(req, node_of(p, parent, &d) ? ENOTDIR : ENOENT);
		return;
	}
	ssize_t i = plain_lookup(p, d, name);
	e.entry_timeout = EDGE_TIMEOUT; /* negative entries are cached too */
	if (i >= 0) {
		e.ino = (fuse_ino_t)i + 1;
		e.attr_timeout = EDGE_TIMEOUT;
		fill_stat(edge_ctx(req), plain_info(p, (size_t)i), e.ino, &e.attr);
	}
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	plain_fs *p = get(req);
	size_t i;
	struct stat st;
	if (!node_of(p, ino, &i)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_stat(edge_ctx(req), plain_info(p, i), ino, &st);
	fuse_reply_attr(req, &st, EDGE_TIMEOUT);
}

typedef struct {
	plain_fs *p;
	size_t dir;
	fuse_ino_t self;
	const edge_ctx_t *c;
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
	if ((size_t)off - 2 >= plain_info(r->p, r->dir).nkids)
		return false;
	size_t k = plain_kid(r->p, r->dir, (size_t)off - 2);
	plain_node kn = plain_info(r->p, k);
	snprintf(name, n, "%s", kn.name);
	*ino = (fuse_ino_t)k + 1;
	*mode = kn.dir ? S_IFDIR : S_IFREG;
	return true;
}

static int plain_attr(void *arg, fuse_ino_t ino, struct stat *st, double *timeout)
{
	dir_ref *r = arg;
	size_t i;
	if (!node_of(r->p, ino, &i))
		return ENOENT;
	fill_stat(r->c, plain_info(r->p, i), ino, st);
	return 0;
}

static void readdir_any(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	plain_fs *p = get(req);
	dir_ref r = {p, 0, ino, edge_ctx(req)};
	if (!node_of(p, ino, &r.dir) || !plain_info(p, r.dir).dir)
		fuse_reply_err(req, node_of(p, ino, &r.dir) ? ENOTDIR : ENOENT);
	else
		edge_readdir(req, size, off, plain_dirent, plus ? plain_attr : NULL, &r);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	readdir_any(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	readdir_any(req, ino, size, off, true);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	plain_fs *p = get(req);
	size_t i;
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (!node_of(p, ino, &i) || plain_info(p, i).dir) {
		fuse_reply_err(req, node_of(p, ino, &i) ? EISDIR : ENOENT);
		return;
	}
	phandle *h = calloc(1, sizeof *h);
	cltfs_err e = h ? plain_open(p, i, &h->f) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (e) {
		free(h);
		fuse_reply_err(req, edge_fail(edge_ctx(req), e));
		return;
	}
	edge_file_opened(edge_ctx(req), &h->link, free_handle);
	fi->keep_cache = 1;
	edge_reply_open(req, fi, &h->link);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	plain_file *f = ((phandle *)(uintptr_t)fi->fh)->f;
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t got = 0;
	cltfs_err e = plain_read(f, buf, size, (uint64_t)off, &got);
	if (e)
		fuse_reply_err(req, edge_fail(edge_ctx(req), e));
	else
		fuse_reply_buf(req, buf, got);
	free(buf);
}

const struct fuse_lowlevel_ops edge_plain_ops = {
	.lookup = op_lookup,
	.getattr = op_getattr,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.open = op_open,
	.read = op_read,
	.release = edge_release,
	EDGE_READONLY_OPS,
};
