/* plain.c: a Hub repo of plain files as a read-only tree (plain.h).
 *
 * Node 0 is the root, the others are the listing's paths (with any missing
 * parent directories), sorted, so a lookup is a binary search.
 */
#include "plain.h"

#include <pthread.h>

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
	pthread_mutex_t mu;  /* guards every node's dl */
	char snap[PATH_MAX]; /* the snapshot folder in the HF cache */
};

struct plain_file {
	int fd;          /* the cached file, or -1 */
	hf_download *dl; /* else the download to follow */
};

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

/* ---- nodes ---- */

size_t plain_count(const plain_fs *p) { return p->n; }

plain_node plain_info(const plain_fs *p, size_t i)
{
	const pnode *n = &p->nodes[i];
	const char *slash = strrchr(n->path, '/');
	return (plain_node){slash ? slash + 1 : n->path, n->dir ? 0 : n->size, n->dir, n->nkids};
}

ssize_t plain_lookup(const plain_fs *p, size_t dir, const char *name)
{
	const pnode *d = &p->nodes[dir];
	char path[PATH_MAX];
	if (!d->dir || snprintf(path, sizeof path, "%s%s%s", d->path, *d->path ? "/" : "", name) >= (int)sizeof path)
		return -1;
	return find(p, path);
}

size_t plain_kid(const plain_fs *p, size_t dir, size_t k) { return p->nodes[dir].kids[k]; }

/* ---- files ---- */

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

cltfs_err plain_open(plain_fs *p, size_t i, plain_file **out)
{
	pnode *n = &p->nodes[i];
	plain_file *f = malloc(sizeof *f);
	if (!f)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	*f = (plain_file){-1, NULL};
	char path[PATH_MAX + 512];
	snprintf(path, sizeof path, "%s/%s", p->snap, n->path);
	struct stat st;
	/* In the cache already (from this mount, an earlier one, or Python). */
	if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == n->size)
		f->fd = open(path, O_RDONLY | O_CLOEXEC);
	cltfs_err e = f->fd >= 0 ? CLTFS_OK : follow(p, n, &f->dl);
	if (e) {
		free(f);
		return e;
	}
	*out = f;
	return CLTFS_OK;
}

cltfs_err plain_read(plain_file *f, void *buf, size_t len, uint64_t off, size_t *got)
{
	if (f->fd < 0)
		return hf_download_pread(f->dl, buf, len, off, got);
	*got = 0;
	while (*got < len) {
		ssize_t k = pread(f->fd, (char *)buf + *got, len - *got, (off_t)(off + *got));
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return cltfs_fail(CLTFS_E_IO, "read: %s", strerror(errno));
		if (k == 0)
			break;
		*got += (size_t)k;
	}
	return CLTFS_OK;
}

void plain_close(plain_file *f)
{
	if (!f)
		return;
	if (f->fd >= 0)
		close(f->fd);
	hf_download_release(f->dl);
	free(f);
}
