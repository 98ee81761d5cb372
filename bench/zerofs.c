/* zerofs.c: the benchmark's FUSE ceiling.  Part of cltfs (MIT, see LICENSE).
 *
 *     zerofs MOUNTPOINT [-f] [-d] [-s] [-o size=BYTES[k|m|g],threads=N,...]
 *
 * The mount holds one read-only file, zero.bin: size bytes (2 GiB unless
 * -o size=) of zeros.  Every read is answered from one static buffer of
 * zeros, so the daemon does nothing but the FUSE round trip itself.
 * bench/bench.py reads zero.bin cold beside a cltfs view of the same size;
 * cltfs's speed over zerofs's is how much of the ceiling cltfs reaches.
 *
 * The ratio means something only if both mounts move bytes the same way,
 * so zerofs negotiates what cltfs does:
 *   - -o max_read=1 MiB and ro on the mount, and init as edge_init
 *     (fs/fuse/edge.c): max_read and max_write 1 MiB (max_write is what
 *     sets the kernel's largest request), max_readahead at least 1 MiB,
 *     asynchronous reads;
 *   - open keeps the page cache and never asks for direct I/O; entries and
 *     attributes are valid for a day, as EDGE_TIMEOUT;
 *   - the multi-threaded loop, 16 workers all kept when idle, one
 *     /dev/fuse descriptor, as serve (fs/fuse/mount.c).
 * The kernel keeps a FUSE mount's readahead at 128 KiB whatever
 * max_readahead says; cltfs raises its bdi's read_ahead_kb itself
 * (raise_readahead).  zerofs does not: bench.py writes the same value to
 * both mounts' read_ahead_kb (--read-ahead-kb) after mounting them.
 *
 * Unmount with `fusermount3 -u MOUNTPOINT`.  Unknown -o options go to
 * libfuse.
 */
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ZERO_MAX_READ (1u << 20)  /* cltfs's EDGE_MAX_READ */
#define ZERO_TIMEOUT 86400.0      /* cltfs's EDGE_TIMEOUT */
#define ZERO_INO 2                /* zero.bin; the root is FUSE_ROOT_ID */
#define ZERO_NAME "zero.bin"

/* Every reply is a prefix of this.  It is never written: in .bss it costs
 * no memory until read, and then only the kernel's zero page. */
static char zeros[ZERO_MAX_READ];

/* The session's userdata, read-only once the session exists. */
typedef struct {
	uint64_t size; /* of zero.bin */
	uid_t uid;
	gid_t gid;
	struct timespec mtime; /* of both nodes: the mount's start */
} zero_fs;

static zero_fs *zfs(fuse_req_t req) { return fuse_req_userdata(req); }

/* ---- operations ---- */

static void zero_init(void *userdata, struct fuse_conn_info *conn)
{
	conn->max_read = ZERO_MAX_READ; /* must equal -o max_read */
	conn->max_write = ZERO_MAX_READ;
	if (conn->max_readahead < ZERO_MAX_READ)
		conn->max_readahead = ZERO_MAX_READ;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
}

/* The root's or zero.bin's attributes; false for any other inode. */
static bool zero_attr(const zero_fs *z, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	st->st_uid = z->uid;
	st->st_gid = z->gid;
	st->st_mtim = st->st_ctim = st->st_atim = z->mtime;
	st->st_blksize = ZERO_MAX_READ;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return true;
	}
	if (ino != ZERO_INO)
		return false;
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = (off_t)z->size;
	st->st_blocks = (blkcnt_t)((z->size + 511) / 512);
	return true;
}

static void zero_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e = {.ino = ZERO_INO, .attr_timeout = ZERO_TIMEOUT,
				     .entry_timeout = ZERO_TIMEOUT};
	if (parent != FUSE_ROOT_ID || strcmp(name, ZERO_NAME)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	zero_attr(zfs(req), e.ino, &e.attr);
	fuse_reply_entry(req, &e);
}

static void zero_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	if (zero_attr(zfs(req), ino, &st))
		fuse_reply_attr(req, &st, ZERO_TIMEOUT);
	else
		fuse_reply_err(req, ENOENT);
}

/* The root's entries; a READDIR offset is an index into this. */
static const struct {
	const char *name;
	fuse_ino_t ino;
	mode_t mode;
} root_entries[] = {
	{".", FUSE_ROOT_ID, S_IFDIR},
	{"..", FUSE_ROOT_ID, S_IFDIR},
	{ZERO_NAME, ZERO_INO, S_IFREG},
};
#define N_ENTRIES ((off_t)(sizeof root_entries / sizeof *root_entries))

static void zero_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			 struct fuse_file_info *fi)
{
	char buf[256]; /* room for all three */
	size_t cap = size < sizeof buf ? size : sizeof buf, used = 0;
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	for (; off >= 0 && off < N_ENTRIES; off++) {
		struct stat st = {.st_ino = root_entries[off].ino, .st_mode = root_entries[off].mode};
		size_t need = fuse_add_direntry(req, buf + used, cap - used, root_entries[off].name, &st,
						off + 1);
		if (need > cap - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
}

static void zero_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != ZERO_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->keep_cache = 1; /* the content never changes: keep it across opens */
	fuse_reply_open(req, fi);
}

/* The bytes of [off, off + size) that lie in the file, from the zeros
 * (the kernel never asks for more than max_read at once). */
static void zero_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	uint64_t end = zfs(req)->size, pos = off > 0 ? (uint64_t)off : 0;
	uint64_t left = pos < end ? end - pos : 0;
	if (size > left)
		size = (size_t)left;
	if (size > sizeof zeros)
		size = sizeof zeros;
	fuse_reply_buf(req, zeros, size);
}

static const struct fuse_lowlevel_ops zero_ops = {
	.init = zero_init,
	.lookup = zero_lookup,
	.getattr = zero_getattr,
	.readdir = zero_readdir,
	.open = zero_open,
	.read = zero_read,
};

/* ---- the command line ---- */

typedef struct {
	char *size, *mnt;
	unsigned threads;
	int foreground, debug, single, help, version;
} cli;

#define OPT(t, p) {t, offsetof(cli, p), 1}
static const struct fuse_opt cli_opts[] = {
	OPT("size=%s", size),
	OPT("threads=%u", threads),
	OPT("max_threads=%u", threads), /* libfuse's name for it */
	OPT("-f", foreground),
	OPT("-d", debug),
	OPT("debug", debug),
	OPT("-s", single),
	OPT("-h", help),
	OPT("--help", help),
	OPT("-V", version),
	OPT("--version", version),
	FUSE_OPT_END,
};

/* The one argument that is not an option is the mount point. */
static int cli_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	cli *c = data;
	if (key != FUSE_OPT_KEY_NONOPT)
		return 1; /* libfuse's */
	if (c->mnt) {
		fprintf(stderr, "zerofs: unexpected argument '%s'\n", arg);
		return -1;
	}
	c->mnt = strdup(arg);
	return c->mnt ? 0 : -1;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: zerofs MOUNTPOINT [-f] [-d] [-s] [-o size=BYTES[k|m|g],threads=N,...]\n"
		   "Mounts MOUNTPOINT/" ZERO_NAME ", BYTES of zeros (default 2g), served\n"
		   "by N threads (default 16; -s for one); other -o options go to libfuse.\n");
}

/* "2147483648", "64m", "2G": a count of bytes, 0 when s is none. */
static uint64_t parse_size(const char *s)
{
	static const char units[] = "kmg";
	char *end;
	errno = 0;
	unsigned long long n = strtoull(s, &end, 10);
	if (!isdigit((unsigned char)*s) || errno)
		return 0;
	const char *u = *end ? strchr(units, tolower((unsigned char)*end)) : NULL;
	int shift = u ? 10 * (int)(u - units + 1) : 0;
	if (u)
		end++;
	if (*end || n > (uint64_t)INT64_MAX >> shift) /* st_size is an off_t */
		return 0;
	return (uint64_t)n << shift;
}

/* The filesystem of the options; false, with a message, if they are bad. */
static bool check_cli(const cli *c, zero_fs *z)
{
	*z = (zero_fs){.size = 2ull << 30, .uid = getuid(), .gid = getgid()};
	clock_gettime(CLOCK_REALTIME, &z->mtime);
	if (!c->mnt) {
		fprintf(stderr, "zerofs: no mount point given (see zerofs --help)\n");
		return false;
	}
	if (c->size && !(z->size = parse_size(c->size))) {
		fprintf(stderr, "zerofs: -o size=%s: expected BYTES[k|m|g], at least 1\n", c->size);
		return false;
	}
	if (c->threads < 1 || c->threads > 1024) {
		fprintf(stderr, "zerofs: -o threads=%u: expected 1 to 1024\n", c->threads);
		return false;
	}
	return true;
}

/* The session options cltfs mounts with, and -d when asked. */
static bool add_mount_args(struct fuse_args *args, const cli *c)
{
	char opt[64];
	snprintf(opt, sizeof opt, "-omax_read=%u", ZERO_MAX_READ);
	return !fuse_opt_add_arg(args, opt) && !fuse_opt_add_arg(args, "-oro") &&
	       !fuse_opt_add_arg(args, "-ofsname=zerofs") && !fuse_opt_add_arg(args, "-osubtype=zerofs") &&
	       !(c->debug && fuse_opt_add_arg(args, "-d"));
}

/* Serve until unmounted or signalled: as cltfs's serve. */
static int serve(struct fuse_session *se, const cli *c)
{
	if (c->single)
		return fuse_session_loop(se);
	struct fuse_loop_config *lc = fuse_loop_cfg_create();
	if (!lc)
		return -1;
	fuse_loop_cfg_set_clone_fd(lc, 0);
	fuse_loop_cfg_set_idle_threads(lc, c->threads);
	fuse_loop_cfg_set_max_threads(lc, c->threads);
	int r = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	return r;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	cli c = {.threads = 16};
	zero_fs z;
	struct fuse_session *se;
	int rc = 2;

	if (fuse_opt_parse(&args, &c, cli_opts, cli_proc) < 0)
		goto out;
	if (c.help || c.version) {
		if (c.help)
			usage(stdout);
		else
			printf("zerofs (cltfs bench; libfuse %s)\n", fuse_pkgversion());
		rc = 0;
		goto out;
	}
	if (!check_cli(&c, &z))
		goto out;
	rc = 1;
	if (!add_mount_args(&args, &c))
		goto out;
	se = fuse_session_new(&args, &zero_ops, sizeof zero_ops, &z);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se))
		goto out_session;
	if (fuse_session_mount(se, c.mnt)) {
		fprintf(stderr, "zerofs: cannot mount on %s\n", c.mnt);
		goto out_signals;
	}
	fuse_daemonize(c.foreground || c.debug);
	rc = serve(se, &c) ? 1 : 0;
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out:
	free(c.size);
	free(c.mnt);
	fuse_opt_free_args(&args);
	return rc;
}
