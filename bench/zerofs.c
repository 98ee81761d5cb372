/*
  zerofs: the fastest FUSE read path on this machine, as a yardstick for cltfs.

  This program can be distributed under the terms of the GNU GPLv2.
*/

/** @file
 *
 * zerofs shows one read-only file, `zero.bin`, whose content is zeros.
 * Every read is answered from one static zero buffer with
 * fuse_reply_buf(), so the daemon does no work besides the FUSE round
 * trip itself: what a reader measures through it is the ceiling of any
 * FUSE filesystem here, cltfs included.
 *
 * To make the comparison fair it mounts and negotiates exactly as cltfs
 * does (DESIGN.md section 5):
 *
 *   - `-o max_read=1048576` is passed to the session, and init sets
 *     conn->max_read to the same value (else the kernel refuses the
 *     session with EPROTO);
 *   - init asks for conn->max_readahead = 1 MiB, or the largest the
 *     kernel offers;
 *   - open sets keep_cache, entries and attributes are cached 86400 s;
 *   - requests are served by the multi-threaded loop.
 *
 * Usage:
 *
 *     zerofs MOUNTPOINT [-f] [-d] [-o size=BYTES[k|m|g],...]
 *
 * `size` defaults to 2 GiB.  Other -o options go to FUSE.  Unmount with
 * `fusermount3 -u MOUNTPOINT`.
 *
 * Compile with:
 *
 *     cc -std=c11 -O2 -Wall -Wextra -Werror zerofs.c \
 *        $(pkg-config --cflags --libs fuse3) -o zerofs
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZERO_MAX_READ (1u << 20)        /* max_read and max_readahead */
#define ZERO_TIMEOUT 86400.0            /* entry and attribute timeout */
#define ZERO_INO 2                      /* inode of zero.bin; 1 is the root */

static const char zero_name[] = "zero.bin";

/* Every read is a slice of this buffer (in .bss: it costs no RAM until
   read, and then only the kernel's shared zero page). */
static char zero_buf[ZERO_MAX_READ];

struct zero_opts {
	char *size;     /* -o size=..., as given */
};

static uint64_t zero_size = 2ull << 30;

static const struct fuse_opt zero_opt_spec[] = {
	{ "size=%s", offsetof(struct zero_opts, size), 0 },
	FUSE_OPT_END
};

/* Parse "123", "64m", "2G" and friends; 0 on error. */
static uint64_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	if (end == s)
		return 0;
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	default: break;
	}
	return *end == '\0' ? v : 0;
}

/* Fill in the attributes of the root or of zero.bin; -1 for any other
   inode. */
static int zero_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else if (ino == ZERO_INO) {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)zero_size;
		st->st_blksize = ZERO_MAX_READ;
		st->st_blocks = (blkcnt_t)((zero_size + 511) / 512);
	} else {
		return -1;
	}
	return 0;
}

static void zero_init(void *userdata, struct fuse_conn_info *conn)
{
	const int *debug = userdata;

	/* Must agree with -o max_read, or the kernel rejects the session. */
	conn->max_read = ZERO_MAX_READ;

	/* conn->max_readahead holds the kernel's offer: ask for 1 MiB, or as
	   much as it allows. */
	if (conn->max_readahead > ZERO_MAX_READ)
		conn->max_readahead = ZERO_MAX_READ;
	if (*debug)
		fuse_log(FUSE_LOG_DEBUG, "zerofs: max_read %u, max_readahead %u\n",
			 conn->max_read, conn->max_readahead);
}

static void zero_getattr(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (zero_stat(ino, &st) == -1)
		fuse_reply_err(req, ENOENT);
	else
		fuse_reply_attr(req, &st, ZERO_TIMEOUT);
}

static void zero_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, zero_name) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = ZERO_INO;
	e.attr_timeout = ZERO_TIMEOUT;
	e.entry_timeout = ZERO_TIMEOUT;
	zero_stat(e.ino, &e.attr);
	fuse_reply_entry(req, &e);
}

/* Append one entry to a readdir buffer of capacity cap; returns the new
   length, or len unchanged when it does not fit. */
static size_t add_dirent(fuse_req_t req, char *buf, size_t len, size_t cap,
			 const char *name, fuse_ino_t ino, off_t next)
{
	struct stat st;
	size_t need;

	memset(&st, 0, sizeof(st));
	st.st_ino = ino;
	st.st_mode = ino == ZERO_INO ? S_IFREG : S_IFDIR;
	need = fuse_add_direntry(req, buf + len, cap - len, name, &st, next);
	return need > cap - len ? len : len + need;
}

static void zero_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
			 off_t off, struct fuse_file_info *fi)
{
	static const char *const names[] = { ".", "..", zero_name };
	static const fuse_ino_t inos[] = { FUSE_ROOT_ID, FUSE_ROOT_ID, ZERO_INO };
	char buf[512];
	size_t len = 0, cap = size < sizeof(buf) ? size : sizeof(buf);

	(void)fi;
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	/* off is the index of the next entry to return. */
	for (off_t i = off; i >= 0 && i < 3; i++) {
		size_t n = add_dirent(req, buf, len, cap, names[i], inos[i], i + 1);
		if (n == len)
			break;
		len = n;
	}
	fuse_reply_buf(req, buf, len);
}

static void zero_open(fuse_req_t req, fuse_ino_t ino,
		      struct fuse_file_info *fi)
{
	if (ino != ZERO_INO)
		fuse_reply_err(req, EISDIR);
	else if ((fi->flags & O_ACCMODE) != O_RDONLY)
		fuse_reply_err(req, EROFS);
	else {
		/* The content never changes: keep the page cache across opens. */
		fi->keep_cache = 1;
		fuse_reply_open(req, fi);
	}
}

static void zero_read(fuse_req_t req, fuse_ino_t ino, size_t size,
		      off_t off, struct fuse_file_info *fi)
{
	uint64_t left;

	(void)ino;
	(void)fi;
	left = (uint64_t)off < zero_size ? zero_size - (uint64_t)off : 0;
	if (size > left)
		size = (size_t)left;
	if (size > sizeof(zero_buf))    /* never happens with max_read */
		size = sizeof(zero_buf);
	fuse_reply_buf(req, zero_buf, size);
}

static const struct fuse_lowlevel_ops zero_oper = {
	.init		= zero_init,
	.lookup		= zero_lookup,
	.getattr	= zero_getattr,
	.readdir	= zero_readdir,
	.open		= zero_open,
	.read		= zero_read,
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct fuse_loop_config *config;
	struct fuse_session *se;
	struct zero_opts zo = { NULL };
	int ret = 1;

	memset(&opts, 0, sizeof(opts));
	if (fuse_opt_parse(&args, &zo, zero_opt_spec, NULL) == -1)
		return 1;
	if (zo.size != NULL) {
		zero_size = parse_size(zo.size);
		if (zero_size == 0) {
			fprintf(stderr, "zerofs: bad size '%s'\n", zo.size);
			goto out_args;
		}
	}
	/* The same max_read as cltfs; init sets conn->max_read to match. */
	if (fuse_opt_add_arg(&args, "-omax_read=1048576") == -1)
		goto out_args;
	/* At most 16 worker threads, cltfs's default; -o max_threads=N given
	   on the command line comes later and wins. */
	if (fuse_opt_insert_arg(&args, 1, "-omax_threads=16") == -1)
		goto out_args;

	if (fuse_parse_cmdline(&args, &opts) != 0)
		goto out_args;
	if (opts.show_help) {
		printf("usage: %s MOUNTPOINT [-f] [-o size=BYTES[k|m|g],...]\n\n",
		       argv[0]);
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out_opts;
	}
	if (opts.show_version) {
		printf("FUSE library version %s\n", fuse_pkgversion());
		fuse_lowlevel_version();
		ret = 0;
		goto out_opts;
	}
	if (opts.mountpoint == NULL) {
		fprintf(stderr, "usage: %s MOUNTPOINT [-f] [-o size=BYTES]\n",
			argv[0]);
		ret = 2;
		goto out_opts;
	}

	se = fuse_session_new(&args, &zero_oper, sizeof(zero_oper),
			      &opts.debug);
	if (se == NULL)
		goto out_opts;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, opts.mountpoint) != 0)
		goto out_signals;

	fuse_daemonize(opts.foreground);

	/* Block until ctrl+c or fusermount3 -u. */
	if (opts.singlethread) {
		ret = fuse_session_loop(se);
	} else {
		config = fuse_loop_cfg_create();
		if (config == NULL) {
			ret = 1;
		} else {
			fuse_loop_cfg_set_clone_fd(config, opts.clone_fd);
			fuse_loop_cfg_set_max_threads(config, opts.max_threads);
			/* UINT_MAX (no limit) is libfuse's default, which its
			   setter would reject with a warning. */
			if (opts.max_idle_threads != UINT_MAX)
				fuse_loop_cfg_set_idle_threads(config,
						opts.max_idle_threads);
			ret = fuse_session_loop_mt(se, config);
			fuse_loop_cfg_destroy(config);
		}
	}
	ret = ret != 0;

	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_opts:
	free(opts.mountpoint);
out_args:
	free(zo.size);
	fuse_opt_free_args(&args);
	return ret;
}
