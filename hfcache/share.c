/* share.c: what every huggingface_hub from 0.24 to 1.x expects to find in
 * a cache that cltfs also writes, beyond blobs, snapshots and refs.
 *
 * - CACHEDIR.TAG at the hub cache's root (1.x writes it before a download):
 *   backup tools skip the cache.
 * - trees/<commit>.json in the repo folder (>= 1.22): the commit's listing.
 *   Its snapshot_download of a commit reads the listing from there and,
 *   offline, fails without it; with it, it checks that every listed file
 *   is in the snapshot.  So cltfs writes the Hub's listing there, in its
 *   format, and reads its sizes back when offline.
 * - Partial downloads.  Up to 1.17 a download goes to
 *   blobs/<etag>.incomplete and is resumed from there; from 1.18 to
 *   blobs/<etag>.<8 hex>.incomplete, never resumed, removed when the
 *   download fails but left behind when the process is killed, and the
 *   older name is never looked at again.  Under the blob's lock (the same
 *   flock huggingface_hub takes) no one is writing any of them, so cltfs
 *   resumes from the longest and removes the others, and once the blob is
 *   there every partial of it is garbage.  Bytes from an earlier download
 *   are trusted only once the whole blob hashes to its etag.
 */
#include "repo_internal.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define TREE_FORMAT_VERSION 1

static const char CACHEDIR_TAG[] = "Signature: 8a477f597d28d172789f06886806bc55\n"
				   "# This file is a cache directory tag created by huggingface_hub.\n"
				   "# For information about cache directory tags, see:\n"
				   "#\thttps://bford.info/cachedir/\n";

void hf_cache_tag(const char *hub_cache)
{
	char path[PATH_MAX];
	struct stat st;
	snprintf(path, sizeof path, "%s/CACHEDIR.TAG", hub_cache);
	if (stat(path, &st) == 0 || cltfs_mkdirs(hub_cache, strlen(hub_cache)))
		return;
	/* As huggingface_hub: best effort, a cache without the tag still works. */
	if (cltfs_write_atomic(path, CACHEDIR_TAG, sizeof CACHEDIR_TAG - 1))
		cltfs_log("%s", cltfs_errmsg());
}

/* n hex digits, lowercase unless upper (the Hub's hashes are lowercase;
 * huggingface_hub accepts a xet hash in either case). */
static bool hex_of(const char *s, size_t n, bool upper)
{
	size_t i = 0;
	for (; s && s[i]; i++)
		if (!isxdigit((unsigned char)s[i]) || (!upper && isupper((unsigned char)s[i])))
			return false;
	return s && i == n;
}

/* ---- trees/<commit>.json ---- */

static void tree_path(hf_repo *r, char *buf, size_t n)
{
	snprintf(buf, n, "%s/trees/%s.json", hf_repo_folder(r), hf_repo_commit(r));
}

/* One file as huggingface_hub's TreeCacheEntry.to_json writes it. */
static bool tree_file(cJSON *files, const hf_entry *e)
{
	cJSON *f = cJSON_AddObjectToObject(files, e->path);
	bool ok = f && cJSON_AddNumberToObject(f, "size", (double)e->size) &&
		  cJSON_AddStringToObject(f, "blob_id", e->blob_id);
	if (ok && e->lfs_sha256)
		ok = cJSON_AddStringToObject(f, "lfs_sha256", e->lfs_sha256) &&
		     cJSON_AddNumberToObject(f, "lfs_size", (double)e->size);
	if (ok && e->xet_hash)
		ok = cJSON_AddStringToObject(f, "xet_hash", e->xet_hash);
	return ok;
}

cltfs_err hf_tree_write(hf_repo *r, const hf_entry *e, size_t n)
{
	char path[PATH_MAX];
	struct stat st;
	tree_path(r, path, sizeof path);
	if (stat(path, &st) == 0) /* a commit's listing never changes */
		return CLTFS_OK;
	/* huggingface_hub refuses the whole file for one bad xet hash, and
	 * needs a blob id for every file: then write nothing. */
	for (size_t i = 0; i < n; i++)
		if (!e[i].dir && (!e[i].blob_id || (e[i].xet_hash && !hex_of(e[i].xet_hash, 64, true))))
			return CLTFS_OK;
	cJSON *root = cJSON_CreateObject(), *files = NULL;
	bool ok = root && cJSON_AddNumberToObject(root, "format_version", TREE_FORMAT_VERSION) &&
		  (files = cJSON_AddObjectToObject(root, "files"));
	for (size_t i = 0; ok && i < n; i++) /* sorted by path, as it writes them */
		ok = e[i].dir || tree_file(files, &e[i]);
	char *text = ok ? cJSON_Print(root) : NULL;
	cJSON_Delete(root);
	if (!text)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err err = cltfs_mkdirs(path, (size_t)(strrchr(path, '/') - path));
	if (!err)
		err = cltfs_write_atomic(path, text, strlen(text));
	free(text);
	return err;
}

static int by_path(const void *key, const void *ent) { return strcmp(key, ((const hf_entry *)ent)->path); }

void hf_tree_sizes(hf_repo *r, hf_entry *e, size_t n)
{
	char path[PATH_MAX], *text;
	size_t len;
	tree_path(r, path, sizeof path);
	if (cltfs_read_file(path, &text, &len))
		return; /* none (huggingface_hub < 1.22 and cltfs offline write none) */
	cJSON *root = cJSON_ParseWithLength(text, len);
	free(text);
	const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "format_version"), *f;
	const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
	if (cJSON_IsNumber(ver) && ver->valuedouble == TREE_FORMAT_VERSION)
		cJSON_ArrayForEach(f, files) {
			const cJSON *sz = cJSON_GetObjectItemCaseSensitive(f, "size");
			hf_entry *hit = f->string ? bsearch(f->string, e, n, sizeof *e, by_path) : NULL;
			if (hit && !hit->dir && cJSON_IsNumber(sz) && sz->valuedouble >= 0 && sz->valuedouble <= 9e15)
				hit->size = (uint64_t)sz->valuedouble;
		}
	cJSON_Delete(root);
}

/* ---- partial downloads ---- */

/* Is name a partial download of etag: <etag>.incomplete (huggingface_hub
 * up to 1.17, and cltfs) or <etag>.<tag>.incomplete (from 1.18)? */
static bool partial_of(const char *name, const char *etag)
{
	size_t n = strlen(etag), len = strlen(name);
	static const char suffix[] = ".incomplete";
	size_t sl = sizeof suffix - 1;
	if (strncmp(name, etag, n) || name[n] != '.' || len < n + sl || strcmp(name + len - sl, suffix))
		return false;
	return len == n + sl || (len > n + 1 + sl && !memchr(name + n + 1, '.', len - n - 1 - sl));
}

cltfs_err hf_partials_tidy(const char *blobs, const char *etag, uint64_t size, bool keep)
{
	char part[PATH_MAX], best[PATH_MAX] = "", p[PATH_MAX];
	snprintf(part, sizeof part, "%s/%s.incomplete", blobs, etag);
	DIR *d = opendir(blobs);
	if (!d)
		return errno == ENOENT ? CLTFS_OK : cltfs_fail(CLTFS_E_IO, "%s: %s", blobs, strerror(errno));
	uint64_t best_size = 0;
	struct dirent *de;
	cltfs_err e = CLTFS_OK;
	/* The longest partial that can be a prefix of the blob is kept. */
	while (keep && (de = readdir(d))) {
		struct stat st;
		snprintf(p, sizeof p, "%s/%s", blobs, de->d_name);
		if (partial_of(de->d_name, etag) && stat(p, &st) == 0 && S_ISREG(st.st_mode) &&
		    (uint64_t)st.st_size <= size && (!*best || (uint64_t)st.st_size > best_size)) {
			snprintf(best, sizeof best, "%s", p);
			best_size = (uint64_t)st.st_size;
		}
	}
	if (*best && strcmp(best, part) && rename(best, part) < 0)
		e = cltfs_fail(CLTFS_E_IO, "%s: %s", best, strerror(errno));
	rewinddir(d);
	while (!e && (de = readdir(d))) {
		snprintf(p, sizeof p, "%s/%s", blobs, de->d_name);
		if (partial_of(de->d_name, etag) && !(*best && !strcmp(p, part)) && unlink(p) < 0 && errno != ENOENT)
			e = cltfs_fail(CLTFS_E_IO, "%s: %s", p, strerror(errno));
	}
	closedir(d);
	return e;
}

/* The etag of a partial's name: what precedes its first dot. */
static bool partial_etag(const char *name, char *etag, size_t n)
{
	const char *dot = strchr(name, '.');
	size_t len = dot ? (size_t)(dot - name) : 0;
	if (!len || len >= n)
		return false;
	snprintf(etag, n, "%.*s", (int)len, name);
	return partial_of(name, etag);
}

void hf_partials_sweep(hf_repo *r)
{
	char blobs[PATH_MAX], etag[256], blob[PATH_MAX], lock[PATH_MAX];
	snprintf(blobs, sizeof blobs, "%s/blobs", hf_repo_folder(r));
	DIR *d = opendir(blobs);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		struct stat st;
		if (!partial_etag(de->d_name, etag, sizeof etag))
			continue;
		snprintf(blob, sizeof blob, "%s/%s", blobs, etag);
		snprintf(lock, sizeof lock, "%s/%s.lock", hf_repo_lockdir(r), etag);
		if (stat(blob, &st) < 0)
			continue; /* a download to resume later */
		int lfd = open(lock, O_RDWR | O_CLOEXEC);
		/* Someone holds the lock: it may be writing one; next time. */
		if (lfd >= 0 && flock(lfd, LOCK_EX | LOCK_NB) == 0 && hf_partials_tidy(blobs, etag, 0, false))
			cltfs_log("%s", cltfs_errmsg());
		if (lfd >= 0)
			close(lfd);
	}
	if (d)
		closedir(d);
}

/* ---- checking a blob against its name ---- */

/* Hashed as the bytes are written, so that a blob of gigabytes is not read
 * again after its download to be checked. */
struct hf_digest {
	EVP_MD_CTX *c;
	char etag[65];
};

cltfs_err hf_digest_new(const char *etag, uint64_t size, hf_digest **out)
{
	char head[64];
	size_t hlen = 0;
	const EVP_MD *md = NULL;
	*out = NULL;
	if (hex_of(etag, 64, false)) { /* an LFS file: the sha256 of its bytes */
		md = EVP_sha256();
	} else if (hex_of(etag, 40, false)) { /* a git blob: sha1 of "blob <size>\0" and its bytes */
		md = EVP_sha1();
		hlen = (size_t)snprintf(head, sizeof head, "blob %llu", (unsigned long long)size) + 1;
	}
	if (!md)
		return CLTFS_OK; /* a name that is no hash (another server's ETag): nothing to check */
	hf_digest *g = calloc(1, sizeof *g);
	if (!g || !(g->c = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(g->c, md, NULL) ||
	    (hlen && !EVP_DigestUpdate(g->c, head, hlen))) {
		hf_digest_free(g);
		return cltfs_fail(CLTFS_E_NOMEM, "cannot start a digest");
	}
	snprintf(g->etag, sizeof g->etag, "%s", etag);
	*out = g;
	return CLTFS_OK;
}

cltfs_err hf_digest_add(hf_digest *g, const void *p, size_t n)
{
	return !g || EVP_DigestUpdate(g->c, p, n) ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "digest failed");
}

cltfs_err hf_digest_add_fd(hf_digest *g, int fd, uint64_t n, const char *path)
{
	uint8_t *buf = g && n ? malloc(1u << 20) : NULL;
	cltfs_err e = !g || !n || buf ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (uint64_t at = 0; !e && g && at < n;) {
		size_t want = n - at < (1u << 20) ? (size_t)(n - at) : (1u << 20);
		ssize_t k = pread(fd, buf, want, (off_t)at);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			e = cltfs_fail(CLTFS_E_IO, "%s: %s", path, k < 0 ? strerror(errno) : "shorter than it was");
		else
			e = hf_digest_add(g, buf, (size_t)k);
		at += k > 0 ? (uint64_t)k : 0;
	}
	free(buf);
	return e;
}

cltfs_err hf_digest_check(hf_digest *g, const char *path)
{
	unsigned char out[EVP_MAX_MD_SIZE];
	unsigned olen = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 1] = "";
	if (!g)
		return CLTFS_OK;
	if (!EVP_DigestFinal_ex(g->c, out, &olen))
		return cltfs_fail(CLTFS_E_NOMEM, "digest failed");
	for (unsigned i = 0; i < olen; i++)
		snprintf(hex + 2 * i, 3, "%02x", out[i]);
	return strcmp(hex, g->etag) ? cltfs_fail(CLTFS_E_CORRUPT, "%s: its bytes hash to %s, not to its etag %s", path,
						 hex, g->etag)
				    : CLTFS_OK;
}

void hf_digest_free(hf_digest *g)
{
	if (!g)
		return;
	EVP_MD_CTX_free(g->c);
	free(g);
}

cltfs_err hf_blob_check(int fd, const char *path, const char *etag, uint64_t size)
{
	hf_digest *g;
	cltfs_err e = hf_digest_new(etag, size, &g);
	if (!e)
		e = hf_digest_add_fd(g, fd, size, path);
	if (!e)
		e = hf_digest_check(g, path);
	hf_digest_free(g);
	return e;
}
