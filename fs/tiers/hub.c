/* hub.c: a Hugging Face Hub repo as the source of a mount or a pull.
 *
 * A repo with cltfs.json at its root is a cltfs store: the manifest and
 * the indexes come into the HF cache at open (they are small), and make a
 * read-only store over the cache's snapshot folder, whose packs are never
 * downloaded whole.  A read that the local store cannot serve asks the Hub
 * tier (hub_tier.c), which fetches that chunk's frame, with its neighbours
 * and what a sequential reader will want next, by range requests, checks
 * each frame against its record, and appends it to the local store: the
 * next read is local.  Any other repo is served file by file (plain.c).
 */
#include "hub_internal.h"

#include <pthread.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


struct hub_source {
	hf_config cfg;
	hf_repo *repo;
	hf_entry *entries;
	size_t nentries;
	cltfs_store *remote; /* a store repo's manifest and indexes; NULL otherwise */
};

cltfs_err hub_pack_path(const char *pack, char *buf, size_t n)
{
	if (strchr(pack, '/') || snprintf(buf, n, "packs/%s.pack", pack) >= (int)n)
		return cltfs_fail(CLTFS_E_FORMAT, "bad pack name '%s'", pack);
	return CLTFS_OK;
}

static int by_path(const void *key, const void *ent) { return strcmp(key, ((const hf_entry *)ent)->path); }

/* huggingface_hub links a snapshot path only once its blob is complete;
 * the size makes sure that the blob is this commit's pack (the frames
 * read from it are checked all the same). */
static bool blob_of(hf_repo *repo, const hf_entry *hit, char *buf, size_t len)
{
	struct stat st;
	if (hf_repo_is_s3(repo) || hit->dir) /* a bucket has no HF cache blobs */
		return false;
	snprintf(buf, len, "%s/snapshots/%s/%s", hf_repo_folder(repo), hf_repo_commit(repo), hit->path);
	return stat(buf, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == hit->size;
}

bool hub_pack_blob(hf_repo *repo, const hf_entry *e, size_t n, const char *pack, char *buf, size_t len)
{
	char rel[320];
	const hf_entry *hit = hub_pack_path(pack, rel, sizeof rel) ? NULL : bsearch(rel, e, n, sizeof *e, by_path);
	return hit && blob_of(repo, hit, buf, len);
}

/* Do two stores hold the same dataset? */
static cltfs_err same_manifest(const hub_source *h, const cltfs_store *local)
{
	if (cltfs_manifest_same(store_manifest(local), store_manifest(h->remote)))
		return CLTFS_OK;
	return cltfs_fail(CLTFS_E_MISMATCH,
			  "%s holds another dataset than %s (their manifests differ): use another local store",
			  store_dir(local), hf_repo_name(h->repo));
}

cltfs_err hub_tier_open(hub_source *h, cltfs_store *local, cltfs_tier **out)
{
	if (!h->remote)
		return cltfs_fail(CLTFS_E_INVAL, "%s has no cltfs.json at its root: it is not a cltfs store",
				  hf_repo_name(h->repo));
	cltfs_err e = same_manifest(h, local);
	return e ? e : hub_tier_new(h->repo, h->entries, h->nentries, h->remote, local, out);
}

/* -o store=DIR, or one per repo and commit under $XDG_CACHE_HOME/cltfs
 * (~/.cache/cltfs); for S3, one per prefix. */
static void default_local(const hub_source *h, char *buf, size_t n)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	const char *folder = strrchr(hf_repo_folder(h->repo), '/') + 1;
	if (hf_repo_is_s3(h->repo)) /* beside its fetched metadata */
		snprintf(buf, n, "%s/store", hf_repo_folder(h->repo));
	else if (xdg && *xdg)
		snprintf(buf, n, "%s/cltfs/hub/%s/%s", xdg, folder, hf_repo_commit(h->repo));
	else
		snprintf(buf, n, "%s/.cache/cltfs/hub/%s/%s", home ? home : "", folder, hf_repo_commit(h->repo));
}

cltfs_err hub_local_store(hub_source *h, const char *dir, cltfs_store **out)
{
	if (!h->remote)
		return cltfs_fail(CLTFS_E_INVAL, "%s has no cltfs.json at its root: it is not a cltfs store",
				  hf_repo_name(h->repo));
	char buf[PATH_MAX];
	if (!dir) {
		default_local(h, buf, sizeof buf);
		dir = buf;
	}
	struct stat st;
	char mpath[PATH_MAX + 16];
	snprintf(mpath, sizeof mpath, "%s/cltfs.json", dir);
	cltfs_err e = CLTFS_OK;
	if (stat(mpath, &st) < 0 &&
	    ((e = cltfs_mkdirs(dir, strlen(dir))) || (e = store_create(dir, store_manifest(h->remote)))))
		return e;
	if ((e = store_open(dir, out)))
		return e;
	if ((e = same_manifest(h, *out))) {
		store_close(*out);
		*out = NULL;
	}
	return e;
}

/* Is path packs/<w><ext>, a file of a writer pair? */
static bool pair_file(const char *p, const char *ext)
{
	size_t n = strlen(p), k = strlen(ext);
	return !strncmp(p, "packs/", 6) && n > 6 + k && !strcmp(p + n - k, ext) && !strchr(p + 6, '/');
}

/* Is path a file of a store's metadata: the manifest, the sample table or
 * an index? */
static bool store_meta(const char *p)
{
	return !strcmp(p, "cltfs.json") || !strcmp(p, "samples.bin") || pair_file(p, ".idx");
}

/* Fetched one after another, a store's metadata cost a mount a round trip
 * or three a file (the Hub: a HEAD, the GET and the CDN's; S3: a GET): a
 * store that a capture array pushed as it went has an index per sealed
 * pair, hundreds of them, and its first mount on a node 50 ms from the
 * Hub took seconds to minutes.  FETCH_THREADS fetch them at once, as
 * huggingface_hub's snapshot_download does with its 8 workers.  Beside
 * them, the Hub is asked where the first LOCATE_PACKS packs are served
 * from (hf_locate), so that a first read goes to the CDN at once: a round
 * trip or two less before its first byte, at no cost to the mount. */
#define FETCH_THREADS 8
#define LOCATE_PACKS 8

/* Entries of a listing fetched whole into the HF cache at once (a pack
 * among them is located instead, hf_locate), by cltfs_parallel. */
typedef struct {
	hf_repo *r;
	const hf_entry *e;
	const size_t *todo; /* the entries, by their index in e */
} fetch_set;

static bool is_pack(const char *p) { return pair_file(p, ".pack"); }

static cltfs_err fetch_one(void *arg, size_t i)
{
	fetch_set *f = arg;
	const char *path = f->e[f->todo[i]].path;
	char *local;
	if (is_pack(path)) { /* a read asks the Hub itself if this fails */
		hf_locate(f->r, path);
		return CLTFS_OK;
	}
	cltfs_err e = hf_fetch(f->r, path, &local);
	if (!e)
		free(local);
	return e;
}

/* Bytes of the packs in dir/packs (0 when there is none). */
static uint64_t pack_bytes(const char *dir)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/packs", dir);
	DIR *d = opendir(path);
	uint64_t sum = 0;
	struct dirent *de;
	struct stat st;
	while (d && (de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (n > 5 && !strcmp(de->d_name + n - 5, ".pack") && !fstatat(dirfd(d), de->d_name, &st, 0))
			sum += (uint64_t)st.st_size;
	}
	if (d)
		closedir(d);
	return sum;
}

/* Will reads of the mount go to the Hub?  Not when CLTFS_HUB_LOCATE=0,
 * nor, as far as a look at sizes tells, when the local store holds as many
 * pack bytes as the repo (a store pulled whole: its frames are the repo's
 * frames).  A wrong guess costs a few HEAD requests, or a first read the
 * Hub's round trip. */
static bool want_locate(const hub_source *h, const char *local)
{
	const char *v = getenv("CLTFS_HUB_LOCATE");
	if ((v && !strcmp(v, "0")) || hf_repo_is_s3(h->repo))
		return false;
	char buf[PATH_MAX];
	if (!local) {
		default_local(h, buf, sizeof buf);
		local = buf;
	}
	uint64_t remote = 0;
	for (size_t i = 0; i < h->nentries; i++)
		remote += !h->entries[i].dir && is_pack(h->entries[i].path) ? h->entries[i].size : 0;
	return pack_bytes(local) < remote;
}

/* The metadata files of the listing, then the packs to locate: those the
 * HF cache does not hold whole, LOCATE_PACKS at most. */
static size_t *fetch_list(const hub_source *h, bool locate, size_t *n)
{
	size_t *todo = malloc((h->nentries ? h->nentries : 1) * sizeof *todo), packs = 0;
	*n = 0;
	/* sorted by path, the manifest comes first: its failure is the one told */
	for (size_t i = 0; todo && i < h->nentries; i++)
		if (!h->entries[i].dir && store_meta(h->entries[i].path))
			todo[(*n)++] = i;
	for (size_t i = 0; todo && locate && i < h->nentries && packs < LOCATE_PACKS; i++) {
		char buf[PATH_MAX];
		const hf_entry *e = &h->entries[i];
		if (!e->dir && is_pack(e->path) && !blob_of(h->repo, e, buf, sizeof buf)) {
			todo[(*n)++] = i;
			packs++;
		}
	}
	return todo;
}

/* cltfs.json, samples.bin and every packs/<w>.idx into the HF cache; the
 * snapshot folder is then a store with indexes and no packs. */
static cltfs_err open_remote(hub_source *h, const char *local)
{
	size_t n;
	size_t *todo = fetch_list(h, want_locate(h, local), &n);
	if (!todo)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	fetch_set f = {h->repo, h->entries, todo};
	cltfs_err e = cltfs_parallel(n, FETCH_THREADS, fetch_one, &f);
	free(todo);
	if (e)
		return e;
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s/snapshots/%s", hf_repo_folder(h->repo), hf_repo_commit(h->repo));
	e = store_open(dir, &h->remote);
	return e ? cltfs_wrap(e, "%s", hf_repo_name(h->repo)) : CLTFS_OK;
}

cltfs_err hub_open(const char *url, const char *local, hub_source **out)
{
	hub_source *h = calloc(1, sizeof *h);
	if (!h)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err e = hf_config_from_env(&h->cfg);
	if (!e)
		e = hf_repo_open(&h->cfg, url, &h->repo);
	if (!e)
		e = hf_list(h->repo, &h->entries, &h->nentries);
	bool has_manifest = false;
	for (size_t i = 0; !e && i < h->nentries; i++)
		has_manifest |= !h->entries[i].dir && !strcmp(h->entries[i].path, "cltfs.json");
	if (!e && has_manifest)
		e = open_remote(h, local);
	if (e) {
		hub_close(h);
		return e;
	}
	*out = h;
	return CLTFS_OK;
}

void hub_close(hub_source *h)
{
	if (!h)
		return;
	store_close(h->remote);
	hf_entries_free(h->entries, h->nentries);
	hf_repo_close(h->repo);
	hf_config_free(&h->cfg);
	free(h);
}

bool hub_is_store(const hub_source *h) { return h->remote != NULL; }
hf_repo *hub_repo(hub_source *h) { return h->repo; }
const hf_entry *hub_entries(const hub_source *h, size_t *n)
{
	*n = h->nentries;
	return h->entries;
}

/* ---- cltfs pull ---- */

/* Frames that sit next to each other in one pack go in one range request,
 * up to this many bytes. */
#define PULL_SPAN (8u << 20)
#define PULL_THREADS 4

typedef struct {
	cltfs_rec rec;
	const char *pack; /* the remote store's name, valid while it is open */
} frame_ref;

typedef struct {
	size_t first, n; /* frames of one span */
	uint64_t off, len;
} span;

typedef struct {
	hub_source *h;
	cltfs_store *local;
	store_writer *w;
	frame_ref *f;
	size_t nf, fcap;
	span *sp;
	size_t nsp, spcap;
	pthread_mutex_t mu; /* guards next, done, since_sync, err, msg */
	size_t next;
	uint64_t total, done, since_sync;
	cltfs_err err;
	char msg[1024];
	bool tty;
	double t0;
} pull;

/* Every valid remote record the local store lacks, once per chunk. */
static cltfs_err collect(void *arg, const store_entry *ent)
{
	pull *p = arg;
	cltfs_rec rec;
	const char *pack;
	/* Records the store merged (valid, first copy of a chunk) are what
	 * store_locate answers; others are skipped. */
	if (!ent->valid || !store_locate(p->h->remote, ent->rec.key, &rec, &pack) || rec.offset != ent->rec.offset)
		return CLTFS_OK;
	const char *base = strrchr(ent->pack_path, '/');
	size_t n = strlen(pack);
	if (!base || strncmp(base + 1, pack, n) || strcmp(base + 1 + n, ".pack") ||
	    store_lookup(p->local, ent->rec.key, &rec))
		return CLTFS_OK;
	if (!cltfs_grow(&p->f, &p->fcap, p->nf + 1, sizeof *p->f))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	p->f[p->nf++] = (frame_ref){ent->rec, pack};
	p->total += ent->rec.csize;
	return CLTFS_OK;
}

static int by_place(const void *a, const void *b)
{
	const frame_ref *x = a, *y = b;
	int c = strcmp(x->pack, y->pack);
	return c ? c : x->rec.offset < y->rec.offset ? -1 : x->rec.offset > y->rec.offset;
}

static cltfs_err make_spans(pull *p)
{
	if (!p->nf)
		return CLTFS_OK;
	qsort(p->f, p->nf, sizeof *p->f, by_place);
	for (size_t i = 0; i < p->nf; i++) {
		const cltfs_rec *r = &p->f[i].rec;
		span *last = p->nsp ? &p->sp[p->nsp - 1] : NULL;
		if (last && p->f[last->first].pack == p->f[i].pack && last->off + last->len == r->offset &&
		    last->len + r->csize <= PULL_SPAN) {
			last->n++;
			last->len += r->csize;
			continue;
		}
		if (!cltfs_grow(&p->sp, &p->spcap, p->nsp + 1, sizeof *p->sp))
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		p->sp[p->nsp++] = (span){i, 1, r->offset, r->csize};
	}
	return CLTFS_OK;
}

static void pull_progress(pull *p, bool end)
{
	if (!p->tty)
		return;
	double dt = cltfs_now() - p->t0;
	fprintf(stderr, "\rpull: %.1f of %.1f MB, %.1f MB/s%s", (double)p->done / 1e6, (double)p->total / 1e6,
		dt > 0 ? (double)p->done / 1e6 / dt : 0.0, end ? "\n" : "   ");
	fflush(stderr);
}

/* A span's bytes: from the pack's blob when the HF cache holds it whole
 * (*blob: no network, and offline too), else by a range request. */
static cltfs_err span_bytes(pull *p, const char *path, const span *sp, uint8_t *buf, bool *blob)
{
	char file[PATH_MAX];
	hub_source *h = p->h;
	*blob = hub_pack_blob(h->repo, h->entries, h->nentries, p->f[sp->first].pack, file, sizeof file);
	if (!*blob)
		return hf_read_range(h->repo, path, sp->off, sp->len, buf);
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", file, strerror(errno));
	int r = cltfs_pread_full(fd, buf, sp->len, sp->off);
	close(fd);
	return r ? cltfs_fail(CLTFS_E_CORRUPT, "%s: %s", file, r > 0 ? strerror(r) : "ends before its frames") : CLTFS_OK;
}

/* Check every frame of a span's bytes against its record. */
static cltfs_err check_span(pull *p, const span *sp, const uint8_t *buf, cltfs_zctx *z, uint8_t **raw,
			    size_t *rawcap, const char *where)
{
	for (size_t i = 0; i < sp->n; i++) {
		const cltfs_rec *r = &p->f[sp->first + i].rec;
		char k[48];
		if (!cltfs_reserve(raw, rawcap, r->rsize ? r->rsize : 1))
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		cltfs_err e = store_decode(r, z, buf + (r->offset - sp->off), *raw);
		if (e)
			return cltfs_wrap(e, "%s: chunk %s at offset %llu", where, cltfs_key_str(r->key, k, sizeof k),
					  (unsigned long long)r->offset);
	}
	return CLTFS_OK;
}

/* Fetch, check and keep one span's frames.  A span read from a blob that
 * fails its check comes from the Hub instead. */
static cltfs_err pull_span(pull *p, const span *sp, cltfs_zctx *z, uint8_t **buf, size_t *cap, uint8_t **raw,
			   size_t *rawcap)
{
	char path[320], where[512];
	cltfs_err e = hub_pack_path(p->f[sp->first].pack, path, sizeof path);
	if (e)
		return e;
	if (!cltfs_reserve(buf, cap, sp->len ? sp->len : 1))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	bool blob;
	snprintf(where, sizeof where, "%s/%s", hf_repo_name(p->h->repo), path);
	if (!(e = span_bytes(p, path, sp, *buf, &blob)))
		e = check_span(p, sp, *buf, z, raw, rawcap, blob ? "the HF cache's blob" : where);
	if (e && blob && e != CLTFS_E_NOMEM) {
		cltfs_log("%s of %s: fetching it from %s instead", cltfs_errmsg(), where, hf_repo_name(p->h->repo));
		if (!(e = hf_read_range(p->h->repo, path, sp->off, sp->len, *buf)))
			e = check_span(p, sp, *buf, z, raw, rawcap, where);
	}
	for (size_t i = 0; !e && i < sp->n; i++) {
		const cltfs_rec *r = &p->f[sp->first + i].rec;
		if ((e = store_writer_add_frame(p->w, r, *buf + (r->offset - sp->off))))
			return e;
		pthread_mutex_lock(&p->mu);
		p->done += r->csize;
		p->since_sync += r->csize;
		bool sync = p->since_sync >= (64u << 20);
		if (sync)
			p->since_sync = 0;
		pthread_mutex_unlock(&p->mu);
		if (sync) /* a killed pull keeps what arrived */
			e = store_writer_sync(p->w);
	}
	return e;
}

static void *pull_main(void *arg)
{
	pull *p = arg;
	cltfs_zctx *z = cltfs_zctx_new();
	uint8_t *buf = NULL, *raw = NULL;
	size_t cap = 0, rawcap = 0;
	cltfs_err e = z ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (;;) {
		pthread_mutex_lock(&p->mu);
		if (e && !p->err) {
			p->err = e;
			snprintf(p->msg, sizeof p->msg, "%s", cltfs_errmsg());
		}
		size_t i = p->err ? p->nsp : p->next++;
		pull_progress(p, false);
		pthread_mutex_unlock(&p->mu);
		if (i >= p->nsp)
			break;
		e = pull_span(p, &p->sp[i], z, &buf, &cap, &raw, &rawcap);
	}
	free(buf);
	free(raw);
	cltfs_zctx_free(z);
	return NULL;
}

cltfs_err hub_pull(hub_source *h, cltfs_store *local, bool quiet)
{
	pull p = {.h = h, .local = local, .tty = !quiet && isatty(2), .t0 = cltfs_now()};
	cltfs_err e = !h->remote ? cltfs_fail(CLTFS_E_INVAL, "%s has no cltfs.json at its root: it is not a "
					      "cltfs store", hf_repo_name(h->repo))
				 : same_manifest(h, local);
	if (e)
		return e;
	if ((e = store_writer_open(local, "hub", &p.w)))
		return e;
	pthread_mutex_init(&p.mu, NULL);
	e = store_foreach(h->remote, collect, &p);
	if (!e)
		e = make_spans(&p);
	pthread_t t[PULL_THREADS];
	int nt = 0;
	for (; !e && nt < PULL_THREADS && nt < (int)p.nsp; nt++)
		if (pthread_create(&t[nt], NULL, pull_main, &p))
			break;
	if (!e && p.nsp && !nt)
		e = cltfs_fail(CLTFS_E_NOMEM, "cannot start a thread");
	for (int i = 0; i < nt; i++)
		pthread_join(t[i], NULL);
	if (!e && p.err)
		e = cltfs_fail(p.err, "%s", p.msg);
	cltfs_err se = store_writer_close(p.w); /* what arrived is kept, also after an error */
	if (!e)
		e = se;
	pull_progress(&p, true);
	if (!e && !quiet)
		fprintf(stderr, "pull: %zu chunks (%.1f MB) from %s into %s\n", p.nf, (double)p.total / 1e6,
			hf_repo_name(h->repo), store_dir(local));
	free(p.f);
	free(p.sp);
	pthread_mutex_destroy(&p.mu);
	return e;
}

/* ---- a model by its Hub id ---- */

/* The files of a checkpoint that capture reads. */
static bool model_file(const char *path)
{
	size_t n = strlen(path);
	return !strchr(path, '/') && ((n > 12 && !strcmp(path + n - 12, ".safetensors")) ||
				      (n > 5 && !strcmp(path + n - 5, ".json")) || !strcmp(path, "tokenizer.model"));
}

cltfs_err hub_model_dir(const char *id, char **dir, char **commit, bool quiet)
{
	hf_config cfg;
	hf_repo *r = NULL;
	hf_entry *e = NULL;
	size_t n = 0;
	char url[1024];
	snprintf(url, sizeof url, "hf://models/%s", id);
	cltfs_err err = hf_config_from_env(&cfg);
	if (!err)
		err = hf_repo_open(&cfg, url, &r);
	if (!err)
		err = hf_list(r, &e, &n);
	size_t *todo = err ? NULL : malloc((n ? n : 1) * sizeof *todo), nt = 0;
	if (!err && !todo)
		err = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (size_t i = 0; !err && i < n; i++) {
		if (e[i].dir || !model_file(e[i].path))
			continue;
		if (!quiet)
			fprintf(stderr, "model: %s (%.1f MB)\n", e[i].path, (double)e[i].size / 1e6);
		todo[nt++] = i;
	}
	/* the shards at once, as snapshot_download fetches them */
	fetch_set f = {r, e, todo};
	if (!err)
		err = cltfs_parallel(nt, FETCH_THREADS, fetch_one, &f);
	free(todo);
	if (!err) {
		char buf[4096];
		snprintf(buf, sizeof buf, "%s/snapshots/%s", hf_repo_folder(r), hf_repo_commit(r));
		*dir = strdup(buf);
		*commit = strdup(hf_repo_commit(r));
		if (!*dir || !*commit) {
			free(*dir);
			free(*commit);
			err = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		}
	}
	hf_entries_free(e, n);
	hf_repo_close(r);
	hf_config_free(&cfg);
	return err;
}
