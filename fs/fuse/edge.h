/* edge.h: the FUSE side (prefix edge_): what the two front ends share.
 *
 *   views.c      a store's views (L<n>/batch_<k>_{x,y}.pt, .cltfs/)
 *   plain_ops.c  a plain Hub repo's files
 *   edge.c       the errno map, READDIR, the read-only operations
 *   mount.c      the command line of a mount, daemonizing, the loop
 *
 * Only the files of fs/fuse/ include libfuse, and only edge_errno turns a
 * cltfs_err into an errno.
 */
#ifndef CLTFS_EDGE_H
#define CLTFS_EDGE_H

#define FUSE_USE_VERSION 312
#include "cltfs_fs.h"

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define EDGE_TIMEOUT 86400.0  /* content never changes under a mount */
#define EDGE_MAX_READ (1u << 20)

struct plain_fs;

/* An open file's state (fi->fh) begins with this link: the open files are
 * on a list, so that the ones whose RELEASE never came (the kernel may
 * drop it when the mount goes away) are freed at exit. */
typedef struct edge_handle {
	struct edge_handle *prev, *next;
	void (*free)(struct edge_handle *h);
} edge_handle;

/* The session's userdata: set before the session starts, read-only after
 * (fs is set once fs_new succeeded, before the loop runs), but for the
 * list of open files. */
typedef struct {
	cltfs_fs *fs;             /* a store's views, or NULL */
	struct plain_fs *plain;   /* a plain repo's files, or NULL */
	char *manifest_json;      /* .cltfs/manifest.json */
	size_t manifest_len;
	struct timespec mtime;    /* of every node: the mount's start */
	uid_t uid;
	gid_t gid;
	pthread_mutex_t open_mu;  /* guards open_files and the snapshots */
	edge_handle open_files;   /* sentinel of a circular list */
	bool handles;             /* -o handles: answer every OPEN (no zero-message opens) */
	bool no_open;             /* opens never reach us (set at INIT) */
	bool rdplus_always;       /* -o readdirplus=always: every listing with attributes */
	/* .cltfs/stats without OPEN: each lookup is a new inode with the
	 * snapshot it names (views.c) */
	uint64_t snap_seq;
	struct edge_snap {
		fuse_ino_t ino;
		char *text;
		size_t len;
	} snaps[64];
} edge_ctx_t;

static inline edge_ctx_t *edge_ctx(fuse_req_t req) { return fuse_req_userdata(req); }

/* The list of open files: empty, add one (at open), drop one (at RELEASE,
 * before its free), and free every one left (after the session). */
void edge_files_init(edge_ctx_t *c);
void edge_file_opened(edge_ctx_t *c, edge_handle *h, void (*free_fn)(edge_handle *));
void edge_file_released(edge_ctx_t *c, edge_handle *h);
void edge_files_free(edge_ctx_t *c);
/* Answer an OPEN with h (on the list already) as fi->fh; h is freed when
 * the opener was interrupted (no RELEASE will come). */
void edge_reply_open(fuse_req_t req, struct fuse_file_info *fi, edge_handle *h);
/* RELEASE of a file opened by edge_reply_open: off the list, freed. */
void edge_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* The one map from cltfs errors to errno. */
int edge_errno(cltfs_err e);
/* Log the thread's message (naming the file and the cause), count the
 * error in .cltfs/stats when there is a filesystem, and return the errno. */
int edge_fail(edge_ctx_t *c, cltfs_err e);
/* What every node's stat has: inode, owner, times, block size. */
void edge_stat_base(const edge_ctx_t *c, fuse_ino_t ino, struct stat *st);

/* Entry number off of a directory: its name (n bytes), inode and type;
 * false past the end. */
typedef bool (*edge_dirent)(void *arg, off_t off, char *name, size_t n, fuse_ino_t *ino, mode_t *mode);
/* The attributes of inode ino: 0, or an errno; *timeout is how long the
 * kernel may keep the entry and its attributes (EDGE_TIMEOUT when left). */
typedef int (*edge_getattr)(void *arg, fuse_ino_t ino, struct stat *st, double *timeout);
/* Reply to READDIR (attr NULL) or READDIRPLUS (each entry with its
 * attributes, cached by the kernel for EDGE_TIMEOUT: `ls -l`, `du` and
 * scandir + stat then need no request per file) with the entries from off
 * on that fit in size. */
void edge_readdir(fuse_req_t req, size_t size, off_t off, edge_dirent entry, edge_getattr attr, void *arg);
/* OPENDIR: the kernel may keep a listing in its cache (the tree never
 * changes under a mount). */
void edge_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

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
	.write = edge_write, .opendir = edge_opendir

/* The two front ends' operations; their userdata is an edge_ctx_t. */
extern const struct fuse_lowlevel_ops edge_views_ops;
extern const struct fuse_lowlevel_ops edge_plain_ops;

/* cltfs [SOURCE] MOUNTPOINT [options]: the process's exit status.  usage
 * prints the usage text (for --help). */
int edge_mount_main(int argc, char **argv, void (*usage)(FILE *));

#endif
