/* mount.c: `cltfs [SOURCE] MOUNTPOINT [-o opt,...]`.
 *
 * The order matters, and is libfuse's passthrough_ll.c `main` as a ladder
 * of what was done: parse the options; open the source, its store and its
 * tiers; build the filesystem; mount; and only then daemonize and start
 * threads.  Everything that can fail for a reason the user must hear (a
 * missing store, a bad option, a repo not found, a checkpoint that does
 * not fit) fails before the fork, with a message on stderr and exit 1;
 * threads do not survive a fork, so they start after it (fs_start).
 */
#include "capturer.h"
#include "edge.h"
#include "hub.h"
#include "plain.h"

#include <limits.h>
#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
	char *store, *dtype, *hub, *capture, *model, *images, *device, *target_pad, *sample_reduce, *sample_dtype;
	char *s3_addressing, *readdirplus;
	long long cache_mb, batch_samples, batch_rows, readahead, threads, read_ahead_kb, capture_ahead;
	long long capture_batch, capture_idle, n_targets, target_offset, shuffle, shuffle_window;
	char *args[2];
	int nargs;
	int share_zero, foreground, debug, single, help, version, handles;
} cli;

#define OPT(t, p) {t, offsetof(cli, p), 1}
#define UNSET LLONG_MIN /* an option not given */
static const struct fuse_opt cli_opts[] = {
	OPT("store=%s", store),             OPT("dtype=%s", dtype),
	OPT("hub=%s", hub),                 OPT("capture=%s", capture),
	OPT("model=%s", model),             OPT("images=%s", images),
	OPT("cache_mb=%lld", cache_mb),     OPT("batch_samples=%lld", batch_samples),
	OPT("batch_rows=%lld", batch_rows), OPT("readahead=%lld", readahead),
	OPT("threads=%lld", threads),       OPT("read_ahead_kb=%lld", read_ahead_kb),
	OPT("capture_ahead=%lld", capture_ahead), OPT("device=%s", device),
	OPT("capture_batch=%lld", capture_batch), OPT("capture_idle=%lld", capture_idle),
	OPT("n_targets=%lld", n_targets),         OPT("target_offset=%lld", target_offset),
	OPT("target_pad=%s", target_pad),         OPT("sample_reduce=%s", sample_reduce),
	OPT("sample_dtype=%s", sample_dtype),     OPT("s3_addressing=%s", s3_addressing),
	OPT("shuffle=%lld", shuffle),             OPT("shuffle_window=%lld", shuffle_window),
	OPT("readdirplus=%s", readdirplus),
	OPT("share_zero_targets", share_zero), OPT("handles", handles),
	OPT("-f", foreground),
	OPT("-d", debug),                   OPT("debug", debug),
	OPT("-s", single),                  OPT("-h", help),
	OPT("--help", help),                OPT("-V", version),
	OPT("--version", version),          FUSE_OPT_END,
};

/* The versions of what cltfs runs on; the capture library is loaded to
 * say what its torch is. */
static void print_version(void)
{
	char cap[1024];
	printf("cltfs %s (libfuse %s)\n", CLTFS_VERSION, fuse_pkgversion());
	fflush(stdout);
	cap_build_info(cap, sizeof cap);
	printf("capture: %s\n", cap);
}

static int cli_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	cli *c = data;
	if (key == FUSE_OPT_KEY_NONOPT) {
		if (c->nargs == 2) {
			fprintf(stderr, "cltfs: unexpected argument '%s'\n", arg);
			return -1;
		}
		if (!(c->args[c->nargs++] = strdup(arg))) {
			fprintf(stderr, "cltfs: out of memory\n");
			return -1;
		}
		return 0;
	}
	return 1; /* everything else goes to libfuse */
}

static void cli_free(cli *c)
{
	char *s[] = {c->store,  c->dtype,  c->hub,        c->capture,       c->model,        c->images,
		     c->device, c->target_pad, c->sample_reduce, c->sample_dtype, c->args[0], c->args[1],
		     c->s3_addressing, c->readdirplus};
	for (size_t i = 0; i < sizeof s / sizeof *s; i++)
		free(s[i]);
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
	/* readahead: two chunks a decoding thread (one per CPU), at least 4 */
	int ra = 2 * fs_cpus() < 4 ? 4 : 2 * fs_cpus() > 64 ? 64 : 2 * fs_cpus();
	*o = (cltfs_opts){.dtype = -1, .cache_mb = 256, .readahead = ra, .prefault = true};
	if (!in_range("cache_mb", c->cache_mb, 1, 1 << 22) || !in_range("batch_samples", c->batch_samples, 1, INT32_MAX) ||
	    !in_range("batch_rows", c->batch_rows, 1, INT32_MAX) || !in_range("readahead", c->readahead, 0, 64) ||
	    !in_range("threads", c->threads, 1, 1024) || !in_range("read_ahead_kb", c->read_ahead_kb, 0, 1 << 20) ||
	    !in_range("capture_ahead", c->capture_ahead, 0, 64) || !in_range("capture_batch", c->capture_batch, 1, 64) ||
	    !in_range("capture_idle", c->capture_idle, 0, INT32_MAX) || !in_range("n_targets", c->n_targets, 1, 4096) ||
	    !in_range("target_offset", c->target_offset, 0, 1) || !in_range("shuffle", c->shuffle, 0, LLONG_MAX) ||
	    !in_range("shuffle_window", c->shuffle_window, 0, INT32_MAX))
		return false;
	if (c->shuffle_window != UNSET && c->shuffle == UNSET) {
		fprintf(stderr, "cltfs: -o shuffle_window needs -o shuffle=SEED\n");
		return false;
	}
	if (c->shuffle != UNSET && c->batch_rows == UNSET) {
		fprintf(stderr, "cltfs: -o shuffle=%lld needs -o batch_rows=B: it serves flat token batches\n",
			c->shuffle);
		return false;
	}
	if (c->batch_samples != UNSET && c->batch_rows != UNSET) {
		fprintf(stderr, "cltfs: -o batch_samples and batch_rows exclude each other\n");
		return false;
	}
	cltfs_dtype dt;
	if (c->dtype && !cltfs_dtype_parse(c->dtype, &dt)) {
		fprintf(stderr, "cltfs: -o dtype=%s: expected bfloat16, float16 or float32\n", c->dtype);
		return false;
	}
	int dev_index;
	if (c->device && cap_device_parse(c->device, &dev_index) < 0) {
		fprintf(stderr, "cltfs: -o device=%s: expected cpu, cuda or cuda:N\n", c->device);
		return false;
	}
	cltfs_dtype sdt;
	int reduce = !c->sample_reduce ? FS_SAMPLE_LAST
		     : !strcmp(c->sample_reduce, "last") ? FS_SAMPLE_LAST
		     : !strcmp(c->sample_reduce, "mean") ? FS_SAMPLE_MEAN
		     : !strcmp(c->sample_reduce, "all")  ? FS_SAMPLE_ALL
							 : -1;
	if (reduce < 0) {
		fprintf(stderr, "cltfs: -o sample_reduce=%s: expected last, mean or all\n", c->sample_reduce);
		return false;
	}
	if (c->sample_dtype && !cltfs_dtype_parse(c->sample_dtype, &sdt)) {
		fprintf(stderr, "cltfs: -o sample_dtype=%s: expected float32, bfloat16 or float16\n", c->sample_dtype);
		return false;
	}
	o->sample_reduce = reduce;
	o->set_sample_dtype = c->sample_dtype != NULL;
	o->sample_dtype = c->sample_dtype ? (int)sdt : 0;
	if (c->target_pad && strcmp(c->target_pad, "zero") && strcmp(c->target_pad, "clip")) {
		fprintf(stderr, "cltfs: -o target_pad=%s: expected zero or clip\n", c->target_pad);
		return false;
	}
	if (c->readdirplus && strcmp(c->readdirplus, "auto") && strcmp(c->readdirplus, "always")) {
		fprintf(stderr, "cltfs: -o readdirplus=%s: expected auto or always\n", c->readdirplus);
		return false;
	}
	if (c->capture && strcmp(c->capture, "auto") && strcmp(c->capture, "on") && strcmp(c->capture, "off")) {
		fprintf(stderr, "cltfs: -o capture=%s: expected auto, on or off\n", c->capture);
		return false;
	}
	if (c->dtype)
		o->dtype = (int)dt;
	if (c->cache_mb != UNSET)
		o->cache_mb = (size_t)c->cache_mb;
	o->batch_samples = c->batch_samples != UNSET ? c->batch_samples : 0;
	o->batch_rows = c->batch_rows != UNSET ? c->batch_rows : 0;
	o->shuffle = c->shuffle != UNSET;
	o->shuffle_seed = o->shuffle ? (uint64_t)c->shuffle : 0;
	o->shuffle_window = c->shuffle_window != UNSET ? c->shuffle_window : -1;
	if (c->readahead != UNSET) /* readahead=0 turns it off */
		o->readahead = (int)c->readahead;
	o->share_zero_targets = c->share_zero;
	o->n_targets = c->n_targets != UNSET ? (int)c->n_targets : 0;
	o->set_target_offset = c->target_offset != UNSET;
	o->target_offset = (int)(o->set_target_offset ? c->target_offset : 0);
	o->set_target_pad = c->target_pad != NULL;
	o->target_pad = c->target_pad && !strcmp(c->target_pad, "clip") ? CLTFS_PAD_CLIP : CLTFS_PAD_ZERO;
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

/* ---- sources and tiers ---- */

/* What a mount opened, closed in the reverse order by close_sources. */
typedef struct {
	hub_source *hub;   /* SOURCE's repo or -o hub's */
	plain_fs *plain;   /* a plain repo's tree */
	cltfs_store *store;
	cltfs_tier *tiers[FS_MAX_TIERS];
	int ntiers;
} sources;

static void close_sources(sources *src)
{
	while (src->ntiers)
		tier_close(src->tiers[--src->ntiers]);
	store_close(src->store);
	plain_free(src->plain);
	hub_close(src->hub);
}

/* The capture tier of a store made by init.  auto (the default) captures
 * when the checkpoint is there, and says so when it is not; on insists. */
static cltfs_err add_capture(const cli *c, sources *src)
{
	const char *mode = c->capture ? c->capture : "auto";
	const char *kind = store_manifest(src->store)->source_kind;
	bool made_by_init = kind && !strcmp(kind, "capture");
	if (!strcmp(mode, "off") || (!strcmp(mode, "auto") && !made_by_init))
		return CLTFS_OK;
	capture_cfg cfg = {.load = {.dtype = -1, .device = c->device,
				    .batch = c->capture_batch != UNSET ? (int)c->capture_batch : 0},
			   .model = c->model, .images = c->images,
			   .ahead = c->capture_ahead != UNSET ? (int)c->capture_ahead : 1,
			   .idle_s = c->capture_idle != UNSET ? (int)c->capture_idle : 600,
			   .before = src->tiers, .nbefore = src->ntiers};
	cltfs_err e = capture_tier_open(src->store, &cfg, &src->tiers[src->ntiers]);
	if (!e) {
		src->ntiers++;
	} else if (e == CLTFS_E_NOTFOUND && !strcmp(mode, "auto") && !c->model && !c->images) {
		/* a store captured elsewhere: serve what it holds */
		fprintf(stderr, "cltfs: not capturing on a miss (%s); -o model=DIR,images=DIR to capture here\n",
			cltfs_errmsg());
		e = CLTFS_OK;
	}
	return e;
}

/* SOURCE: a store directory (with -o hub=, backed by a Hub store repo), or
 * a Hub repo (a store repo behind a local store, or a plain repo of files);
 * then the capture tier. */
static cltfs_err open_sources(const cli *c, const char *source, sources *src)
{
	cltfs_err e;
	/* s3.h reads it where the AWS CLI's settings are read. */
	if (c->s3_addressing && setenv("CLTFS_S3_ADDRESSING", c->s3_addressing, 1))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (hf_is_remote_url(source)) {
		if (c->hub)
			return cltfs_fail(CLTFS_E_INVAL, "-o hub= backs a local store; the source is %s already", source);
		if ((e = hub_open(source, c->nargs == 2 ? c->store : NULL, &src->hub)))
			return e;
		if (!hub_is_store(src->hub) && hf_repo_is_s3(hub_repo(src->hub)))
			return cltfs_fail(CLTFS_E_INVAL, "%s has no cltfs.json: only a cltfs store is served from S3",
					  source);
		if (!hub_is_store(src->hub)) {
			size_t n;
			const hf_entry *ent = hub_entries(src->hub, &n);
			return plain_new(hub_repo(src->hub), ent, n, &src->plain);
		}
		/* cltfs hf://... MNT -o store=DIR: DIR is where fetched chunks go */
		e = hub_local_store(src->hub, c->nargs == 2 ? c->store : NULL, &src->store);
	} else {
		e = store_open(source, &src->store);
		if (!e && c->hub && !hf_is_remote_url(c->hub))
			e = cltfs_fail(CLTFS_E_INVAL, "-o hub=%s: expected hf://datasets/OWNER/NAME or s3://BUCKET/PREFIX",
				       c->hub);
		if (!e && c->hub && (e = hub_open(c->hub, source, &src->hub)))
			e = cltfs_wrap(e, "-o hub"); /* its message names the URL */
		else if (!e && c->hub && !hub_is_store(src->hub))
			e = cltfs_fail(CLTFS_E_INVAL, "-o hub=%s: no cltfs.json at its root: not a cltfs store", c->hub);
	}
	/* a record that disagrees with the manifest (another row count, chunk
	 * size, stream) means one of them is not what was written: serving
	 * would put rows in the wrong place */
	const char *bad = e ? NULL : store_first_bad(src->store);
	if (bad)
		return cltfs_fail(CLTFS_E_CORRUPT, "%s: %s (`cltfs verify %s` lists every damaged record)",
				  store_dir(src->store), bad, store_dir(src->store));
	if (!e && src->hub && !(e = hub_tier_open(src->hub, src->store, &src->tiers[src->ntiers])))
		src->ntiers++;
	return e ? e : add_capture(c, src);
}

/* ---- main ---- */

int edge_mount_main(int argc, char **argv, void (*usage)(FILE *))
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	cli c = {.cache_mb = UNSET, .batch_samples = UNSET, .batch_rows = UNSET, .readahead = UNSET,
		 .threads = UNSET, .read_ahead_kb = 1024, .capture_ahead = UNSET, .capture_batch = UNSET,
		 .capture_idle = UNSET, .n_targets = UNSET, .target_offset = UNSET, .shuffle = UNSET,
		 .shuffle_window = UNSET};
	int rc = 1;
	sources src = {0};
	cltfs_fs *fs = NULL;
	struct fuse_session *se = NULL;
	edge_ctx_t cx = {0};
	cltfs_opts o;
	char defbuf[PATH_MAX], mpath[PATH_MAX + 16], opt[64];

	/* Chunk buffers come from the cache's own regions; what is left on the
	 * heap is each worker's decode buffers (~1 MiB) and per-read arrays.
	 * Keep those on the heap (not one mmap each), never trimmed back, in
	 * few arenas: no page is faulted in twice and memory stays near
	 * cache_mb. */
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	mallopt(M_ARENA_MAX, 2);
	if (fuse_opt_parse(&args, &c, cli_opts, cli_proc) < 0) {
		rc = 2;
		goto out;
	}
	if (c.help || c.version) {
		if (c.help)
			usage(stdout);
		else
			print_version();
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
	if (open_sources(&c, source, &src))
		goto out_msg;
	memcpy(o.tiers, src.tiers, sizeof o.tiers);
	o.ntiers = src.ntiers;
	if (src.store && fs_new(src.store, &o, &fs))
		goto out_msg;
	/* .cltfs/manifest.json: the store's cltfs.json as it is on disk */
	snprintf(mpath, sizeof mpath, "%s/cltfs.json", src.store ? store_dir(src.store) : "");
	if (src.store && cltfs_read_file(mpath, &cx.manifest_json, &cx.manifest_len)) {
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
		goto out_fs;
	}
	edge_files_init(&cx);
	cx.handles = c.handles;
	cx.rdplus_always = c.readdirplus && !strcmp(c.readdirplus, "always");
	cx.fs = fs;
	cx.plain = src.plain;
	cx.uid = getuid();
	cx.gid = getgid();
	clock_gettime(CLOCK_REALTIME, &cx.mtime);
	snprintf(opt, sizeof opt, "-omax_read=%u", EDGE_MAX_READ);
	if (fuse_opt_add_arg(&args, opt) || fuse_opt_add_arg(&args, "-oro") ||
	    fuse_opt_add_arg(&args, "-ofsname=cltfs") || fuse_opt_add_arg(&args, "-osubtype=cltfs") ||
	    (c.debug && fuse_opt_add_arg(&args, "-d")))
		goto out_fs;
	se = fuse_session_new(&args, src.plain ? &edge_plain_ops : &edge_views_ops, sizeof edge_views_ops, &cx);
	if (!se)
		goto out_fs;
	if (fuse_set_signal_handlers(se))
		goto out_session;
	if (fuse_session_mount(se, mnt)) {
		fprintf(stderr, "cltfs: cannot mount %s on %s\n", source, mnt);
		goto out_signals;
	}
	raise_readahead(mnt, c.read_ahead_kb);
	fuse_daemonize(c.foreground || c.debug);
	if (!c.foreground && !c.debug)
		cltfs_log_to_syslog(); /* stderr is /dev/null from here on */
	if (fs && fs_start(fs)) {
		cltfs_log("%s", cltfs_errmsg());
		goto out_unmount;
	}
	rc = serve(se, &c) ? 1 : 0;
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
	edge_files_free(&cx); /* what no RELEASE came for */
out_fs:
	fs_free(fs);
	free(cx.manifest_json);
	goto out_sources;
out_msg:
	fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
out_sources:
	close_sources(&src);
out:
	cli_free(&c);
	fuse_opt_free_args(&args);
	return rc;
}
