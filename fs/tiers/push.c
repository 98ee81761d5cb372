/* push.c: a local store copied to an S3 prefix (push.h).
 *
 * The order is what makes a half-done push safe to read: readers find a
 * store by its cltfs.json and its frames through the indexes, so packs go
 * first, then indexes, then the sample table, then the manifest.  Sizes
 * are taken in the same spirit: every index's before any pack's (a writer
 * appends a frame before its record), so the bytes uploaded of a pack hold
 * every frame that the uploaded index names, even while a writer appends.
 */
#include "push.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
	char *path; /* relative to the store */
	uint64_t size;
} upfile;

typedef struct {
	const char *dir;
	hf_repo *r;
	hf_entry *remote; /* sorted by path */
	size_t nremote;
	upfile *f;
	size_t n, cap;
	uint64_t total;
	atomic_ullong done;
	size_t skipped;
	const push_opts *o;
	bool tty;
	double t0;
} push;

static int by_path(const void *key, const void *ent) { return strcmp(key, ((const hf_entry *)ent)->path); }

/* Is rel at the prefix already, with size bytes? */
/* rel as the remote listing has it, or NULL. */
static const hf_entry *remote_entry(const push *p, const char *rel)
{
	return p->nremote ? bsearch(rel, p->remote, p->nremote, sizeof *p->remote, by_path) : NULL;
}

static bool remote_has(const push *p, const char *rel, uint64_t size)
{
	const hf_entry *e = remote_entry(p, rel);
	return e && e->size == size;
}

static cltfs_err size_of(const push *p, const char *rel, uint64_t *size)
{
	char path[PATH_MAX];
	struct stat st;
	snprintf(path, sizeof path, "%s/%s", p->dir, rel);
	if (stat(path, &st) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
	*size = (uint64_t)st.st_size;
	return CLTFS_OK;
}

/* Queue size bytes of rel (UINT64_MAX: its size now) unless the prefix
 * has them. */
static cltfs_err queue(push *p, const char *rel, uint64_t size)
{
	cltfs_err e = size == UINT64_MAX ? size_of(p, rel, &size) : CLTFS_OK;
	if (e)
		return e;
	if (remote_has(p, rel, size)) {
		p->skipped++;
		return CLTFS_OK;
	}
	char *dup = strdup(rel);
	if (!dup || !cltfs_grow(&p->f, &p->cap, p->n + 1, sizeof *p->f)) {
		free(dup);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	p->f[p->n++] = (upfile){dup, size};
	p->total += size;
	return CLTFS_OK;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The writers' names (packs/<w>.idx) that o picks, sorted. */
static cltfs_err writers(const char *dir, const push_opts *o, char ***out, size_t *n)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/packs", dir);
	DIR *d = opendir(path);
	if (!d)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
	size_t cap = 0;
	cltfs_err e = CLTFS_OK;
	*out = NULL;
	*n = 0;
	for (struct dirent *de; !e && (de = readdir(d));) {
		size_t len = strlen(de->d_name);
		if (len <= 4 || strcmp(de->d_name + len - 4, ".idx"))
			continue;
		char *w = strndup(de->d_name, len - 4);
		if (w && o->pick && !o->pick(w, o->pick_arg)) {
			free(w);
			continue;
		}
		if (!w || !cltfs_grow(out, &cap, *n + 1, sizeof **out)) {
			free(w);
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		} else {
			(*out)[(*n)++] = w;
		}
	}
	closedir(d);
	if (!e && *n) /* none picked: no array at all */
		qsort(*out, *n, sizeof **out, by_name);
	return e;
}

/* Does the prefix hold rel (any size)? */
/* Does the prefix hold a pack, or is one about to go there? */
static bool any_pack(const push *p)
{
	for (size_t i = 0; i < p->nremote; i++)
		if (!strncmp(p->remote[i].path, "packs/", 6) && strstr(p->remote[i].path, ".pack"))
			return true;
	for (size_t i = 0; i < p->n; i++)
		if (strstr(p->f[i].path, ".pack"))
			return true;
	return false;
}

/* The sample table, then the manifest (o->meta_once: once, after a pack). */
static cltfs_err plan_meta(push *p)
{
	if (p->o->meta_once && (remote_entry(p, "cltfs.json") || !any_pack(p)))
		return CLTFS_OK;
	cltfs_err e = queue(p, "samples.bin", UINT64_MAX);
	return e ? e : queue(p, "cltfs.json", UINT64_MAX);
}

/* What to upload, in order: packs, indexes, the sample table, the manifest. */
static cltfs_err plan(push *p)
{
	char **w = NULL, rel[PATH_MAX];
	size_t nw = 0;
	uint64_t *idx = NULL;
	cltfs_err e = writers(p->dir, p->o, &w, &nw);
	if (!e && nw && !(idx = calloc(nw, sizeof *idx)))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (size_t i = 0; !e && i < nw; i++) { /* the indexes' sizes before the packs' */
		snprintf(rel, sizeof rel, "packs/%s.idx", w[i]);
		e = size_of(p, rel, &idx[i]);
	}
	for (size_t i = 0; !e && i < nw; i++) {
		snprintf(rel, sizeof rel, "packs/%s.pack", w[i]);
		e = queue(p, rel, UINT64_MAX);
	}
	for (size_t i = 0; !e && i < nw; i++) {
		snprintf(rel, sizeof rel, "packs/%s.idx", w[i]);
		e = queue(p, rel, idx[i]);
	}
	if (!e)
		e = plan_meta(p);
	for (size_t i = 0; i < nw; i++)
		free(w[i]);
	free(w);
	free(idx);
	return e;
}

/* A prefix that holds a store already must hold this one. */
static cltfs_err same_store(push *p)
{
	if (!remote_entry(p, "cltfs.json"))
		return CLTFS_OK;
	char *theirs = NULL, mine[PATH_MAX];
	snprintf(mine, sizeof mine, "%s/cltfs.json", p->dir);
	char *a = NULL, *b = NULL;
	size_t na = 0, nb = 0;
	cltfs_err e = hf_fetch(p->r, "cltfs.json", &theirs);
	if (!e)
		e = cltfs_read_file(theirs, &a, &na);
	if (!e)
		e = cltfs_read_file(mine, &b, &nb);
	if (!e && (na != nb || memcmp(a, b, na)))
		e = cltfs_fail(CLTFS_E_MISMATCH, "%s holds another store than %s (their cltfs.json differ): push to "
				  "another prefix", hf_repo_name(p->r), p->dir);
	free(theirs);
	free(a);
	free(b);
	return e;
}

static void progress(push *p, bool end)
{
	if (!p->tty)
		return;
	double dt = cltfs_now() - p->t0, done = (double)atomic_load(&p->done);
	fprintf(stderr, "\rpush: %.1f of %.1f MB, %.1f MB/s%s", done / 1e6, (double)p->total / 1e6,
		dt > 0 ? done / 1e6 / dt : 0.0, end ? "\n" : "   ");
	fflush(stderr);
}

/* A store of many writer pairs (a capture array that pushed as it went
 * has one per sealed pack) was uploaded one file after another: a round
 * trip or more each, where S3 takes many requests at once.  The files of
 * one phase of plan()'s order (packs, indexes, the sample table, the
 * manifest) go up PUSH_FILES at a time, and none of the next phase starts
 * before all of them are there: the order readers depend on holds. */
#define PUSH_FILES 4

static int phase_of(const char *rel)
{
	size_t n = strlen(rel);
	return n > 5 && !strcmp(rel + n - 5, ".pack") ? 0 : n > 4 && !strcmp(rel + n - 4, ".idx") ? 1
	       : !strcmp(rel, "samples.bin")                                                 ? 2
										     : 3;
}

typedef struct {
	push *p;
	size_t lo;          /* the phase's first file */
	pthread_mutex_t mu; /* the progress line */
} phase;

static cltfs_err upload_one(void *arg, size_t i)
{
	phase *u = arg;
	const upfile *f = &u->p->f[u->lo + i];
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", u->p->dir, f->path);
	cltfs_err e = hf_upload(u->p->r, f->path, path, f->size, &u->p->done);
	pthread_mutex_lock(&u->mu);
	progress(u->p, false);
	pthread_mutex_unlock(&u->mu);
	return e;
}

static cltfs_err upload_all(push *p)
{
	phase u = {.p = p};
	cltfs_err e = CLTFS_OK;
	pthread_mutex_init(&u.mu, NULL);
	for (size_t hi; !e && u.lo < p->n; u.lo = hi) {
		for (hi = u.lo + 1; hi < p->n && phase_of(p->f[hi].path) == phase_of(p->f[u.lo].path); hi++)
			;
		e = cltfs_parallel(hi - u.lo, PUSH_FILES, upload_one, &u);
	}
	pthread_mutex_destroy(&u.mu);
	return e;
}

bool push_url_ok(const char *url) { return hf_is_remote_url(url) && !hf_is_url(url); }

cltfs_err push_some(const char *dir, const char *url, push_opts *o)
{
	push p = {.dir = dir, .o = o, .tty = !o->quiet && isatty(2), .t0 = cltfs_now()};
	hf_config cfg;
	if (!push_url_ok(url))
		return cltfs_fail(CLTFS_E_INVAL, "'%s': cltfs pushes to s3://BUCKET/PREFIX only", url);
	cltfs_err e = hf_config_from_env(&cfg);
	if (e)
		return e;
	if (!(e = hf_repo_open(&cfg, url, &p.r)) && !(e = hf_list(p.r, &p.remote, &p.nremote)) &&
	    !(e = same_store(&p)) && !(e = plan(&p)))
		e = upload_all(&p);
	if (p.tty)
		progress(&p, true);
	o->files = p.n;
	o->bytes = p.total;
	if (!e && !o->quiet)
		fprintf(stderr, "push: %zu files (%.1f MB) to %s, %zu already there\n", p.n, (double)p.total / 1e6,
			hf_repo_name(p.r), p.skipped);
	for (size_t i = 0; i < p.n; i++)
		free(p.f[i].path);
	free(p.f);
	hf_entries_free(p.remote, p.nremote);
	hf_repo_close(p.r);
	hf_config_free(&cfg);
	return e;
}

cltfs_err push_store(const char *dir, const char *url, bool quiet)
{
	if (!push_url_ok(url)) /* before the store is opened: the cheaper error first */
		return cltfs_fail(CLTFS_E_INVAL, "'%s': cltfs pushes to s3://BUCKET/PREFIX only", url);
	cltfs_store *s = NULL;
	cltfs_err e = store_open(dir, &s); /* a store, whole and readable, or nothing is pushed */
	store_close(s);
	if (e)
		return e;
	push_opts o = {.quiet = quiet};
	return push_some(dir, url, &o);
}

/* ---- pushing in the background ---- */

struct push_bg {
	char *dir, *url;
	push_opts o;
	pthread_t thr;
	pthread_mutex_t mu;
	pthread_cond_t cv;  /* a kick, stop */
	bool kicked, stop;
	bool behind;        /* kicked and not pushed since, or the last push failed */
	size_t files;       /* uploaded by the thread */
	uint64_t bytes;
};

static void *bg_main(void *arg)
{
	push_bg *b = arg;
	pthread_mutex_lock(&b->mu);
	for (;;) {
		while (!b->kicked && !b->stop)
			pthread_cond_wait(&b->cv, &b->mu);
		if (b->stop)
			break;
		b->kicked = false;
		pthread_mutex_unlock(&b->mu);
		push_opts o = b->o;
		cltfs_err e = push_some(b->dir, b->url, &o);
		if (e) /* the next kick, or the last push, tries again */
			cltfs_log("push to %s failed, retried later: %s", b->url, cltfs_errmsg());
		pthread_mutex_lock(&b->mu);
		b->behind = e || b->kicked;
		if (!e) { /* a failed push's files are counted by the push that sends them */
			b->files += o.files;
			b->bytes += o.bytes;
		}
	}
	pthread_mutex_unlock(&b->mu);
	return NULL;
}

static void bg_free(push_bg *b)
{
	pthread_mutex_destroy(&b->mu);
	pthread_cond_destroy(&b->cv);
	free(b->dir);
	free(b->url);
	free(b);
}

cltfs_err push_bg_start(const char *dir, const char *url, const push_opts *o, push_bg **out)
{
	push_bg *b = calloc(1, sizeof *b);
	if (!b || !(b->dir = strdup(dir)) || !(b->url = strdup(url))) {
		if (b)
			free(b->dir);
		free(b);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	b->o = *o;
	b->o.quiet = true; /* a capture's progress line owns the terminal */
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cv, NULL);
	if (pthread_create(&b->thr, NULL, bg_main, b)) {
		bg_free(b);
		return cltfs_fail(CLTFS_E_IO, "cannot start a thread to push to %s", url);
	}
	*out = b;
	return CLTFS_OK;
}

void push_bg_kick(push_bg *b)
{
	pthread_mutex_lock(&b->mu);
	b->kicked = b->behind = true;
	pthread_cond_signal(&b->cv);
	pthread_mutex_unlock(&b->mu);
}

bool push_bg_behind(push_bg *b)
{
	pthread_mutex_lock(&b->mu);
	bool behind = b->behind;
	pthread_mutex_unlock(&b->mu);
	return behind;
}

cltfs_err push_bg_finish(push_bg *b, push_opts *last)
{
	pthread_mutex_lock(&b->mu);
	b->stop = true;
	pthread_cond_signal(&b->cv);
	pthread_mutex_unlock(&b->mu);
	pthread_join(b->thr, NULL);
	*last = b->o;
	last->quiet = true;
	cltfs_err e = push_some(b->dir, b->url, last);
	last->files += b->files;
	last->bytes += b->bytes;
	bg_free(b);
	return e;
}
