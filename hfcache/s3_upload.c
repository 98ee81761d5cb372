/* s3_upload.c: a file into an S3 object, resumable.
 *
 * A file of one part or less is one PUT.  A larger one is a multipart
 * upload: parts of S3_PART_SIZE, PARTS_IN_FLIGHT at a time (each on its
 * thread's kept-alive connection), then CompleteMultipartUpload.  Every
 * finished part is appended to a journal (its number and ETag, synced)
 * under the target's cache folder, with the upload id: a push killed
 * midway starts again from the parts it finished.  The journal, not S3's
 * ListParts, says what is done: S3-compatible servers do not all have
 * ListParts, and the journal costs no request.  An upload the server no
 * longer knows (aborted, expired: NoSuchUpload) is begun again once.
 */
#include "s3.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PARTS_IN_FLIGHT 4
#define JOURNAL_MAGIC "cltfs-s3-upload 1"

typedef struct {
	const s3_target *t;
	const http_ctx *c;
	const char *path;
	char *url; /* the object's */
	int fd;    /* the local file */
	uint64_t size, psize; /* psize: bytes of a part (the last one fewer) */
	uint32_t nparts;
	char id[1024];     /* the upload id, percent-encoded for a query */
	char (*etag)[128]; /* per part, "" until it is done */
	int jfd;           /* the journal, appended to */
	char jpath[PATH_MAX];
	atomic_ullong *done;
	pthread_mutex_t mu; /* guards next, err, msg, and the journal's appends */
	uint32_t next;
	cltfs_err err;
	char msg[1024];
} upload;

static char *object_url(const s3_target *t, const char *path)
{
	char *esc = http_escape(path, true);
	size_t n = esc ? strlen(s3_base(t)) + strlen(esc) + 1 : 0;
	char *url = esc ? malloc(n) : NULL;
	if (url)
		snprintf(url, n, "%s%s", s3_base(t), esc);
	free(esc);
	return url;
}

static cltfs_err read_at(int fd, const char *local, void *buf, size_t len, uint64_t off)
{
	int r = cltfs_pread_full(fd, buf, len, off);
	return r ? cltfs_fail(CLTFS_E_IO, "%s: %s", local, r > 0 ? strerror(r) : "shorter than it was") : CLTFS_OK;
}

/* ---- the journal ---- */

static void journal_path(upload *u)
{
	char name[PATH_MAX / 2];
	snprintf(name, sizeof name, "%s", u->path);
	for (char *p = name; *p; p++)
		*p = *p == '/' ? '%' : *p;
	snprintf(u->jpath, sizeof u->jpath, "%s/.uploads/%s", s3_cache(u->t), name);
}

static cltfs_err journal_append(upload *u, const char *line)
{
	size_t n = strlen(line);
	if (write(u->jfd, line, n) != (ssize_t)n || fdatasync(u->jfd) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", u->jpath, strerror(errno));
	return CLTFS_OK;
}

/* The parts an earlier run finished, when its journal is of this upload
 * (the same size and part size): true with u->id and u->etag set.  False
 * with stale set to the id of an upload of another size (the file grew
 * since), "" when there is none. */
static bool journal_resume(upload *u, char stale[1024])
{
	FILE *f = fopen(u->jpath, "re");
	*stale = 0;
	if (!f)
		return false;
	char line[2048], id[1024];
	unsigned long long size = 0, psize = 0;
	bool parsed = fgets(line, sizeof line, f) && sscanf(line, JOURNAL_MAGIC " %llu %llu %1023s", &size, &psize, id) == 3;
	bool ok = parsed && size == u->size && psize == u->psize;
	if (parsed && !ok)
		snprintf(stale, 1024, "%s", id);
	while (ok && fgets(line, sizeof line, f)) {
		unsigned part;
		char etag[128];
		if (sscanf(line, "%u %127s", &part, etag) == 2 && part >= 1 && part <= u->nparts)
			snprintf(u->etag[part - 1], sizeof u->etag[0], "%s", etag);
	}
	fclose(f);
	if (ok)
		snprintf(u->id, sizeof u->id, "%s", id);
	return ok;
}

/* ---- the requests ---- */

/* CreateMultipartUpload: a new id, and a new journal that holds it. */
static cltfs_err begin(upload *u)
{
	char url[8192], *body = NULL;
	snprintf(url, sizeof url, "%s?uploads=", u->url);
	http_hdrs h = {0};
	cltfs_err e = http_send(u->c, "POST", url, NULL, 0, &body, &h);
	http_hdrs_free(&h);
	const char *a = body ? strstr(body, "<UploadId>") : NULL, *b = a ? strstr(a, "</UploadId>") : NULL;
	if (!e && !b)
		e = cltfs_fail(CLTFS_E_FORMAT, "%s/%s: CreateMultipartUpload answered no UploadId", s3_name(u->t), u->path);
	char *id = b ? strndup(a + 10, (size_t)(b - a - 10)) : NULL, *esc = id ? http_escape(id, false) : NULL;
	if (!e && !esc)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e && strlen(esc) >= sizeof u->id)
		e = cltfs_fail(CLTFS_E_FORMAT, "%s/%s: an UploadId of %zu bytes", s3_name(u->t), u->path, strlen(esc));
	free(body);
	free(id);
	if (e) {
		free(esc);
		return e;
	}
	snprintf(u->id, sizeof u->id, "%s", esc);
	free(esc);
	char line[1200];
	snprintf(line, sizeof line, JOURNAL_MAGIC " %llu %llu %s\n", (unsigned long long)u->size,
		 (unsigned long long)u->psize, u->id);
	if (ftruncate(u->jfd, 0) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", u->jpath, strerror(errno));
	return journal_append(u, line);
}

/* UploadPart of part i (from 0), its ETag into the journal. */
static cltfs_err put_part(upload *u, uint32_t i, uint8_t *buf)
{
	uint64_t off = (uint64_t)i * u->psize, len = u->size - off < u->psize ? u->size - off : u->psize;
	cltfs_err e = read_at(u->fd, u->path, buf, (size_t)len, off);
	if (e)
		return e;
	char url[8192];
	snprintf(url, sizeof url, "%s?partNumber=%u&uploadId=%s", u->url, i + 1, u->id);
	http_hdrs h = {0};
	e = http_send(u->c, "PUT", url, buf, (size_t)len, NULL, &h);
	if (!e && !*h.etag)
		e = cltfs_fail(CLTFS_E_FORMAT, "%s/%s: part %u: no ETag in the answer", s3_name(u->t), u->path, i + 1);
	char line[256];
	snprintf(line, sizeof line, "%u %s\n", i + 1, h.etag);
	if (e || strcspn(h.etag, " \t\r\n") != strlen(h.etag)) {
		http_hdrs_free(&h);
		return e ? e : cltfs_fail(CLTFS_E_FORMAT, "%s/%s: part %u: an ETag with spaces", s3_name(u->t), u->path, i + 1);
	}
	if (u->done)
		atomic_fetch_add(u->done, len);
	pthread_mutex_lock(&u->mu);
	snprintf(u->etag[i], sizeof u->etag[0], "%s", h.etag);
	http_hdrs_free(&h);
	e = journal_append(u, line);
	pthread_mutex_unlock(&u->mu);
	return e;
}

static void *part_main(void *arg)
{
	upload *u = arg;
	uint8_t *buf = malloc(u->psize);
	cltfs_err e = buf ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (;;) {
		pthread_mutex_lock(&u->mu);
		if (e && !u->err) {
			u->err = e;
			snprintf(u->msg, sizeof u->msg, "%s", cltfs_errmsg());
		}
		while (!u->err && u->next < u->nparts && *u->etag[u->next])
			u->next++;
		uint32_t i = u->err ? u->nparts : u->next++;
		pthread_mutex_unlock(&u->mu);
		if (i >= u->nparts)
			break;
		e = put_part(u, i, buf);
	}
	free(buf);
	return NULL;
}

/* Every part not yet done, PARTS_IN_FLIGHT at a time. */
static cltfs_err put_parts(upload *u)
{
	pthread_t th[PARTS_IN_FLIGHT];
	int n = 0;
	u->next = 0;
	u->err = CLTFS_OK; /* a second round (the server forgot the first upload) starts clean */
	for (; n < PARTS_IN_FLIGHT && (uint32_t)n < u->nparts; n++)
		if (pthread_create(&th[n], NULL, part_main, u))
			break;
	if (!n)
		return cltfs_fail(CLTFS_E_NOMEM, "cannot start a thread");
	for (int i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	return u->err ? cltfs_fail(u->err, "%s", u->msg) : CLTFS_OK;
}

/* CompleteMultipartUpload.  S3 may answer 200 with an <Error> in the
 * body: that is a failure too.  *gone: the server no longer knows the
 * upload. */
static cltfs_err complete(upload *u, bool *gone)
{
	size_t cap = (size_t)u->nparts * 200 + 128, n = 0;
	char *xml = malloc(cap), url[8192], *body = NULL;
	if (!xml)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	n += (size_t)snprintf(xml + n, cap - n, "<CompleteMultipartUpload>");
	for (uint32_t i = 0; i < u->nparts; i++)
		n += (size_t)snprintf(xml + n, cap - n, "<Part><PartNumber>%u</PartNumber><ETag>%s</ETag></Part>", i + 1,
				      u->etag[i]);
	n += (size_t)snprintf(xml + n, cap - n, "</CompleteMultipartUpload>");
	snprintf(url, sizeof url, "%s?uploadId=%s", u->url, u->id);
	http_hdrs h = {0};
	cltfs_err e = http_send(u->c, "POST", url, xml, n, &body, &h);
	*gone = e == CLTFS_E_NOTFOUND || (body && strstr(body, "NoSuchUpload"));
	if (!e && (!body || strstr(body, "<Error>")))
		e = cltfs_fail(CLTFS_E_IO, "%s/%s: CompleteMultipartUpload failed: %.300s", s3_name(u->t), u->path,
			       body ? body : "");
	http_hdrs_free(&h);
	free(body);
	free(xml);
	return e;
}

/* AbortMultipartUpload of an upload that will not be completed, so that
 * its parts stop taking space.  Best effort: a server that refuses (some
 * S3-compatible ones do not abort) keeps them until its own cleanup. */
static void abort_stale(upload *u, const char *id)
{
	char url[8192];
	snprintf(url, sizeof url, "%s?uploadId=%s", u->url, id);
	http_hdrs h = {0};
	http_send(u->c, "DELETE", url, NULL, 0, NULL, &h);
	http_hdrs_free(&h);
}

/* One multipart upload, from its journal when there is one. */
static cltfs_err multipart(upload *u)
{
	journal_path(u);
	const char *slash = strrchr(u->jpath, '/');
	cltfs_err e = cltfs_mkdirs(u->jpath, (size_t)(slash - u->jpath));
	if (e)
		return e;
	for (int round = 0;; round++) {
		memset(u->etag, 0, sizeof u->etag[0] * u->nparts);
		char stale[1024];
		bool resumed = journal_resume(u, stale);
		if (*stale)
			abort_stale(u, stale);
		if ((u->jfd = open(u->jpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0)
			return cltfs_fail(CLTFS_E_IO, "%s: %s", u->jpath, strerror(errno));
		if (!resumed)
			e = begin(u);
		for (uint32_t i = 0; !e && u->done && i < u->nparts; i++)
			if (*u->etag[i])
				atomic_fetch_add(u->done, i + 1 < u->nparts ? u->psize : u->size - (uint64_t)i * u->psize);
		if (!e)
			e = put_parts(u);
		bool gone = false;
		if (!e)
			e = complete(u, &gone);
		close(u->jfd);
		if (!e || (!gone && e != CLTFS_E_NOTFOUND) || round > 0)
			break;
		unlink(u->jpath); /* the server forgot it: once more, from the start */
		e = CLTFS_OK;
	}
	if (!e)
		unlink(u->jpath);
	return e;
}

static cltfs_err put_whole(upload *u)
{
	uint8_t *buf = malloc(u->size ? u->size : 1);
	cltfs_err e = buf ? read_at(u->fd, u->path, buf, (size_t)u->size, 0) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	http_hdrs h = {0};
	if (!e)
		e = http_send(u->c, "PUT", u->url, buf, (size_t)u->size, NULL, &h);
	if (!e && u->done)
		atomic_fetch_add(u->done, u->size);
	http_hdrs_free(&h);
	free(buf);
	return e;
}

/* CLTFS_S3_PART_MB (5..5120: S3's bounds), else S3_PART_SIZE. */
static uint64_t part_size(void)
{
	const char *v = getenv("CLTFS_S3_PART_MB");
	char *end;
	long mb = v && *v ? strtol(v, &end, 10) : 0;
	return v && *v && !*end && mb >= 5 && mb <= 5120 ? (uint64_t)mb << 20 : S3_PART_SIZE;
}

cltfs_err s3_upload(const s3_target *t, const http_ctx *c, const char *path, const char *local, uint64_t size,
		    atomic_ullong *done)
{
	upload u = {.t = t, .c = c, .path = path, .size = size, .psize = part_size(), .done = done, .jfd = -1};
	u.nparts = (uint32_t)((size + u.psize - 1) / u.psize);
	if (size > u.psize * 10000)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: %llu bytes need more than S3's 10000 parts", local,
				  (unsigned long long)size);
	if ((u.fd = open(local, O_RDONLY | O_CLOEXEC)) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", local, strerror(errno));
	u.url = object_url(t, path);
	u.etag = calloc(u.nparts ? u.nparts : 1, sizeof *u.etag);
	pthread_mutex_init(&u.mu, NULL);
	cltfs_err e = !u.url || !u.etag ? cltfs_fail(CLTFS_E_NOMEM, "out of memory")
		      : u.nparts <= 1	 ? put_whole(&u)
					 : multipart(&u);
	pthread_mutex_destroy(&u.mu);
	free(u.etag);
	free(u.url);
	close(u.fd);
	return e ? cltfs_wrap(e, "uploading %s to %s/%s", local, s3_name(t), path) : CLTFS_OK;
}
