/* edge.c: what both FUSE front ends share: the errno map, READDIR
 * replies, and the operations of a read-only tree. */
#include "edge.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

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

int edge_fail(edge_ctx_t *c, cltfs_err e)
{
	if (c->fs)
		atomic_fetch_add(&fs_stats(c->fs)->errors, 1);
	cltfs_log("%s", cltfs_errmsg());
	return edge_errno(e);
}

void edge_stat_base(const edge_ctx_t *c, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	st->st_uid = c->uid;
	st->st_gid = c->gid;
	st->st_mtim = st->st_ctim = st->st_atim = c->mtime;
	st->st_blksize = EDGE_MAX_READ;
}

void edge_files_init(edge_ctx_t *c)
{
	pthread_mutex_init(&c->open_mu, NULL);
	c->open_files.prev = c->open_files.next = &c->open_files;
}

void edge_file_opened(edge_ctx_t *c, edge_handle *h, void (*free_fn)(edge_handle *))
{
	h->free = free_fn;
	pthread_mutex_lock(&c->open_mu);
	h->next = c->open_files.next;
	h->prev = &c->open_files;
	h->next->prev = h;
	c->open_files.next = h;
	pthread_mutex_unlock(&c->open_mu);
}

void edge_file_released(edge_ctx_t *c, edge_handle *h)
{
	pthread_mutex_lock(&c->open_mu);
	h->prev->next = h->next;
	h->next->prev = h->prev;
	pthread_mutex_unlock(&c->open_mu);
}

void edge_reply_open(fuse_req_t req, struct fuse_file_info *fi, edge_handle *h)
{
	fi->fh = (uint64_t)(uintptr_t)h;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		edge_file_released(edge_ctx(req), h);
		h->free(h);
	}
}

void edge_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	edge_handle *h = (edge_handle *)(uintptr_t)fi->fh; /* the handle's first member */
	edge_file_released(edge_ctx(req), h);
	h->free(h);
	fuse_reply_err(req, 0);
}

void edge_files_free(edge_ctx_t *c)
{
	for (size_t i = 0; i < sizeof c->snaps / sizeof *c->snaps; i++)
		free(c->snaps[i].text);
	while (c->open_files.next != &c->open_files) {
		edge_handle *h = c->open_files.next;
		edge_file_released(c, h);
		h->free(h);
	}
	pthread_mutex_destroy(&c->open_mu);
}

void edge_readdir(fuse_req_t req, size_t size, off_t off, edge_dirent entry, edge_getattr attr, void *arg)
{
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t used = 0, need;
	char name[256];
	fuse_ino_t eino;
	mode_t mode;
	int err = 0;
	while (entry(arg, off, name, sizeof name, &eino, &mode)) {
		struct fuse_entry_param e = {.attr = {.st_ino = eino, .st_mode = mode}};
		bool dot = !strcmp(name, ".") || !strcmp(name, "..");
		if (!attr) {
			need = fuse_add_direntry(req, buf + used, size - used, name, &e.attr, off + 1);
		} else {
			/* "." and ".." go without an inode: the kernel makes no entry of them */
			double timeout = EDGE_TIMEOUT;
			if (!dot && (err = attr(arg, eino, &e.attr, &timeout)))
				break;
			if (!dot) {
				e.ino = eino;
				e.attr_timeout = e.entry_timeout = timeout;
			}
			need = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, off + 1);
		}
		if (need > size - used)
			break;
		used += need;
		off++;
	}
	if (err && !used)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, used);
	free(buf);
}

void edge_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

/* Python's open() asks isatty() of every file: a regular file is no tty. */
void edge_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
		     unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	fuse_reply_err(req, ENOTTY);
}

void edge_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv = {.f_bsize = EDGE_MAX_READ, .f_frsize = 512, .f_namemax = 255};
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
	conn->max_read = EDGE_MAX_READ;
	/* libfuse derives the kernel's max_pages (the largest request) from
	 * max_write: without this, reads stay at 128 KiB. */
	conn->max_write = EDGE_MAX_READ;
	conn->max_readahead = conn->max_readahead > EDGE_MAX_READ ? conn->max_readahead : EDGE_MAX_READ;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* Listings: READDIRPLUS (names with attributes) where the lister asks
	 * for attributes, as the kernel guesses ("auto": the first buffer of a
	 * listing, then only while the lister looks names up), plain READDIR
	 * otherwise.  Attributes make the kernel build an inode for every name
	 * (~1 KiB of its memory each): a layer directory of 10^7 samples is
	 * 2x10^7 names, and os.listdir() of it with attributes took 220 s and
	 * 18 GB of kernel memory, without 21 s and none.  -o readdirplus=always
	 * gives every listing attributes (du and find, which list a whole
	 * directory before they stat, 5x faster; DESIGN.md section 5). */
	edge_ctx_t *c = userdata;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	if (!c->rdplus_always && (conn->capable & FUSE_CAP_READDIRPLUS_AUTO))
		conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
	else
		conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	/* Zero-message opens: an OPEN answered ENOSYS tells the kernel to open
	 * every file itself from then on, with the page cache kept, and to
	 * send no RELEASE: two round trips less per open() of a file. */
	c->no_open = !c->handles && (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT);
}
