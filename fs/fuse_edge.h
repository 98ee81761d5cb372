/* fuse_edge.h: what the two FUSE front ends (fuse.c: a store's views;
 * plain.c: a plain Hub repo's files) share.  Only these two files speak
 * errno and include libfuse. */
#ifndef CLTFS_FUSE_EDGE_H
#define CLTFS_FUSE_EDGE_H

#define FUSE_USE_VERSION 312
#include "fs.h"

#include <fuse_lowlevel.h>

#define EDGE_TIMEOUT 86400.0  /* content never changes under a mount */
#define EDGE_MAX_READ (1u << 20)

/* The one map from cltfs errors to errno. */
int edge_errno(cltfs_err e);
/* fs_log (fs.h) goes to syslog from now on: stderr is /dev/null. */
void edge_use_syslog(void);

/* Entry number off of a directory: its name (n bytes), inode and type;
 * false past the end. */
typedef bool (*edge_dirent)(void *arg, off_t off, char *name, size_t n, fuse_ino_t *ino, mode_t *mode);
/* Reply to READDIR with the entries from off on that fit in size. */
void edge_readdir(fuse_req_t req, size_t size, off_t off, edge_dirent entry, void *arg);

void edge_init(void *userdata, struct fuse_conn_info *conn);
void edge_statfs(fuse_req_t req, fuse_ino_t ino);
void edge_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
		unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz);
void edge_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m);
void edge_unlink(fuse_req_t req, fuse_ino_t p, const char *n);
void edge_rename(fuse_req_t req, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn, unsigned int f);
void edge_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *fi);
void edge_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi);
void edge_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t r);
void edge_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n);
void edge_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t p, const char *n);
void edge_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi);

/* Read-only: every change is EROFS; ioctl (isatty) ENOTTY. */
#define EDGE_READONLY_OPS                                                                                  \
	.init = edge_init, .statfs = edge_statfs, .ioctl = edge_ioctl, .mkdir = edge_mkdir,                 \
	.rmdir = edge_unlink, .unlink = edge_unlink, .rename = edge_rename, .create = edge_create,          \
	.setattr = edge_setattr, .mknod = edge_mknod, .symlink = edge_symlink, .link = edge_link,           \
	.write = edge_write

/* plain.c's operations; its userdata is the plain_fs. */
extern const struct fuse_lowlevel_ops plain_ops;

#endif
