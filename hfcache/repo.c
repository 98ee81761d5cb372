/* repo.c: configuration, revisions, listings and the HF cache layout.
 *
 * The cache is huggingface_hub's, to the byte, so that either side's
 * downloads are hits for the other:
 *   <hub_cache>/datasets--owner--name/blobs/<etag>           the bytes
 *   <hub_cache>/datasets--owner--name/blobs/<etag>.incomplete a download
 *   <hub_cache>/datasets--owner--name/snapshots/<commit>/<path>
 *         -> ../../blobs/<etag> (one "../" per directory, plus two)
 *   <hub_cache>/datasets--owner--name/refs/<rev>             the commit
 *   <hub_cache>/datasets--owner--name/.no_exist/<commit>/<path>  empty
 *   <hub_cache>/.locks/datasets--owner--name/<etag>.lock     flock
 * The blob's name is X-Linked-Etag (LFS files: sha256) or ETag (git sha1),
 * without quotes, from a HEAD of .../resolve/<commit>/<path> that does not
 * follow redirects.
 */
#include "hfcache_internal.h"
#include "repo_internal.h"
#include "s3.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOCATION_TTL 300 /* seconds a redirect target is reused */
#define NLOCATIONS 64

struct hf_repo {
	hf_config cfg;
	http_ctx http;
	hf_stats st;
	char *type;     /* "datasets" or "models" */
	char *name;     /* owner/name */
	char *id;       /* datasets/owner/name */
	char *rev;      /* as asked */
	char commit[41];
	char *folder;   /* <hub_cache>/datasets--owner--name */
	char *lockdir;  /* <hub_cache>/.locks/datasets--owner--name */
	char *url_base; /* <endpoint>/datasets/owner/name/resolve/<commit>/ */
	char *label;    /* hf://<id>@<commit, 12 digits>, or s3://bucket/prefix */
	s3_target *s3;  /* an S3 prefix, not a Hub repo (s3.h); else NULL */
	pthread_mutex_t mu; /* guards loc */
	struct {
		char *path, *url;
		time_t when;
	} loc[NLOCATIONS];
	unsigned loc_next;
};

/* ---- configuration ---- */

static char *env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? (char *)v : NULL;
}

static char *expand_home(const char *p)
{
	const char *home = getenv("HOME");
	char buf[PATH_MAX];
	if (p[0] == '~' && (p[1] == '/' || !p[1]) && home)
		snprintf(buf, sizeof buf, "%s%s", home, p + 1);
	else
		snprintf(buf, sizeof buf, "%s", p);
	return strdup(buf);
}

static bool truthy(const char *v)
{
	return v && (!strcasecmp(v, "1") || !strcasecmp(v, "on") || !strcasecmp(v, "yes") || !strcasecmp(v, "true"));
}

static char *read_token_file(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char buf[4096];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	char *s = buf, *e = buf + n;
	while (*s && isspace((unsigned char)*s))
		s++;
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = 0;
	char *t = *s ? strdup(s) : NULL;
	memset(buf, 0, sizeof buf);
	return t;
}

static int env_int(const char *name, int def, int lo, int hi)
{
	const char *v = env((char *)name);
	char *end;
	long x = v ? strtol(v, &end, 10) : def;
	return v && (*end || x < lo || x > hi) ? def : (int)x;
}

/* The CA certificates a TLS server's must chain to, where the Python
 * clients find them: requests' REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE
 * (huggingface_hub 0.x), OpenSSL's SSL_CERT_FILE and SSL_CERT_DIR (httpx:
 * huggingface_hub 1.x).  A name that cannot be read is refused here, not
 * at the first request. */
static cltfs_err ca_from_env(hf_config *c)
{
	static const char *const files[] = {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"};
	for (size_t i = 0; i < sizeof files / sizeof *files && !c->ca_file; i++) {
		const char *v = env(files[i]);
		if (!v)
			continue;
		if (access(v, R_OK) < 0)
			return cltfs_fail(CLTFS_E_INVAL, "%s=%s: %s", files[i], v, strerror(errno));
		if (!(c->ca_file = strdup(v)))
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	const char *d = env("SSL_CERT_DIR");
	if (d && access(d, R_OK | X_OK) < 0)
		return cltfs_fail(CLTFS_E_INVAL, "SSL_CERT_DIR=%s: %s", d, strerror(errno));
	if (d && !(c->ca_dir = strdup(d)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	return CLTFS_OK;
}

cltfs_err hf_config_from_env(hf_config *c)
{
	memset(c, 0, sizeof *c);
	char buf[PATH_MAX], home[PATH_MAX];
	const char *e = env("HF_ENDPOINT");
	c->endpoint = strdup(e ? e : "https://huggingface.co");
	if (env("HF_HOME")) {
		snprintf(home, sizeof home, "%s", env("HF_HOME"));
	} else if (env("XDG_CACHE_HOME")) {
		snprintf(home, sizeof home, "%s/huggingface", env("XDG_CACHE_HOME"));
	} else {
		snprintf(home, sizeof home, "~/.cache/huggingface");
	}
	if (env("HF_HUB_CACHE"))
		c->hub_cache = expand_home(env("HF_HUB_CACHE"));
	else if (env("HUGGINGFACE_HUB_CACHE"))
		c->hub_cache = expand_home(env("HUGGINGFACE_HUB_CACHE"));
	else {
		snprintf(buf, sizeof buf, "%s/hub", home);
		c->hub_cache = expand_home(buf);
	}
	if (env("HF_TOKEN"))
		c->token = strdup(env("HF_TOKEN"));
	else if (env("HUGGING_FACE_HUB_TOKEN"))
		c->token = strdup(env("HUGGING_FACE_HUB_TOKEN"));
	else {
		char *p;
		if (env("HF_TOKEN_PATH"))
			p = expand_home(env("HF_TOKEN_PATH"));
		else {
			snprintf(buf, sizeof buf, "%s/token", home);
			p = expand_home(buf);
		}
		c->token = p ? read_token_file(p) : NULL;
		free(p);
	}
	c->offline = truthy(env("HF_HUB_OFFLINE"));
	cltfs_err err = ca_from_env(c);
	if (err) {
		hf_config_free(c);
		return err;
	}
	c->retries = env_int("CLTFS_HUB_RETRIES", 5, 0, 100);
	c->backoff_ms = env_int("CLTFS_HUB_BACKOFF_MS", 500, 0, 600000);
	if (!c->endpoint || !c->hub_cache) {
		hf_config_free(c);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	size_t n = strlen(c->endpoint);
	while (n && c->endpoint[n - 1] == '/')
		c->endpoint[--n] = 0;
	return http_init();
}

void hf_config_free(hf_config *c)
{
	free(c->endpoint);
	if (c->token)
		memset(c->token, 0, strlen(c->token));
	free(c->token);
	free(c->hub_cache);
	free(c->ca_file);
	free(c->ca_dir);
	memset(c, 0, sizeof *c);
}

static cltfs_err config_copy(hf_config *dst, const hf_config *src)
{
	*dst = *src;
	dst->endpoint = strdup(src->endpoint);
	dst->hub_cache = strdup(src->hub_cache);
	dst->token = src->token ? strdup(src->token) : NULL;
	dst->ca_file = src->ca_file ? strdup(src->ca_file) : NULL;
	dst->ca_dir = src->ca_dir ? strdup(src->ca_dir) : NULL;
	if (!dst->endpoint || !dst->hub_cache || (src->token && !dst->token) || (src->ca_file && !dst->ca_file) ||
	    (src->ca_dir && !dst->ca_dir)) {
		hf_config_free(dst);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	return CLTFS_OK;
}

/* ---- small file-system helpers ---- */

/* mkdir -p of the directory that will hold path. */
static cltfs_err mkparent(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash && slash != path ? cltfs_mkdirs(path, (size_t)(slash - path)) : CLTFS_OK;
}

static cltfs_err write_atomic(const char *path, const char *text)
{
	cltfs_err e = mkparent(path);
	return e ? e : cltfs_write_atomic(path, text, strlen(text));
}

static bool is_commit(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (!isxdigit((unsigned char)s[n]) || isupper((unsigned char)s[n]))
			return false;
	return n == 40;
}

/* ---- the repo ---- */

bool hf_is_url(const char *s) { return !strncmp(s, "hf://", 5); }
bool hf_is_remote_url(const char *s) { return hf_is_url(s) || s3_is_url(s); }

static char *percent_decode(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;
	for (size_t i = 0; out && i < n; i++) {
		if (s[i] == '%' && i + 2 < n + 1 && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
			char hex[3] = {s[i + 1], s[i + 2], 0};
			*o++ = (char)strtol(hex, NULL, 16);
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	if (out)
		*o = 0;
	return out;
}

/* hf://datasets/owner/name[@rev], hf://models/owner/name, hf://owner/name
 * (a model, as huggingface_hub's HfFileSystem reads it). */
static cltfs_err parse_url(hf_repo *r, const char *url)
{
	const char *p = url + 5, *type = "models";
	if (!strncmp(p, "datasets/", 9)) {
		type = "datasets";
		p += 9;
	} else if (!strncmp(p, "models/", 7)) {
		p += 7;
	} else if (!strncmp(p, "spaces/", 7)) {
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: spaces are not served (datasets and models are)", url);
	}
	const char *at = strchr(p, '@');
	size_t nlen = at ? (size_t)(at - p) : strlen(p);
	while (nlen && p[nlen - 1] == '/')
		nlen--;
	const char *slash = memchr(p, '/', nlen);
	if (!slash || slash == p || slash + 1 == p + nlen || memchr(slash + 1, '/', (size_t)(p + nlen - slash - 1)))
		return cltfs_fail(CLTFS_E_INVAL, "%s: expected hf://datasets/OWNER/NAME[@REVISION]", url);
	for (size_t i = 0; i < nlen; i++)
		if (!isalnum((unsigned char)p[i]) && !strchr("-_./", p[i]))
			return cltfs_fail(CLTFS_E_INVAL, "%s: '%c' is not allowed in a repository id", url, p[i]);
	r->type = strdup(type);
	r->name = strndup(p, nlen);
	r->rev = at && at[1] ? percent_decode(at + 1, strlen(at + 1)) : strdup("main");
	if (!r->type || !r->name || !r->rev)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (strstr(r->rev, "..") || r->rev[0] == '/')
		return cltfs_fail(CLTFS_E_INVAL, "%s: bad revision '%s'", url, r->rev);
	return CLTFS_OK;
}

static cltfs_err make_paths(hf_repo *r)
{
	char buf[PATH_MAX], folder[512];
	snprintf(folder, sizeof folder, "%s--%s", r->type, r->name);
	for (char *p = folder; *p; p++)
		if (*p == '/') { /* owner/name -> owner--name */
			memmove(p + 2, p + 1, strlen(p + 1) + 1);
			p[0] = p[1] = '-';
			p++;
		}
	snprintf(buf, sizeof buf, "%s/%s", r->cfg.hub_cache, folder);
	r->folder = strdup(buf);
	snprintf(buf, sizeof buf, "%s/.locks/%s", r->cfg.hub_cache, folder);
	r->lockdir = strdup(buf);
	snprintf(buf, sizeof buf, "%s/%s", r->type, r->name);
	r->id = strdup(buf);
	return r->folder && r->lockdir && r->id ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}

/* Models resolve at <endpoint>/<name>/..., datasets at <endpoint>/datasets/<name>/... */
static const char *url_prefix(const hf_repo *r) { return strcmp(r->type, "models") ? "datasets/" : ""; }

typedef struct {
	char *p;
	size_t n, cap;
} membuf;

static bool mem_sink(void *arg, const void *p, size_t n)
{
	membuf *m = arg;
	if (m->n + n > (64u << 20)) {
		cltfs_fail(CLTFS_E_FORMAT, "an API answer over 64 MiB");
		return false;
	}
	if (!cltfs_reserve(&m->p, &m->cap, m->n + n + 1)) {
		cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		return false;
	}
	memcpy(m->p + m->n, p, n);
	m->n += n;
	m->p[m->n] = 0;
	return true;
}

/* The body of an API answer into *body (the caller frees body->p, which
 * may be NULL for an empty body), and its rel="next" link when next is set. */
static cltfs_err api_get(hf_repo *r, const char *url, const char *what, membuf *body, char **next)
{
	http_hdrs h = {0};
	cltfs_err e = http_get(&r->http, url, 0, 0, mem_sink, body, &h, NULL);
	if (!e && next) {
		*next = h.link_next;
		h.link_next = NULL;
	}
	http_hdrs_free(&h);
	return e ? cltfs_wrap(e, "%s", what) : CLTFS_OK;
}

cltfs_err hf_parse_revision(const char *json, size_t len, const char *what, char commit[41])
{
	cJSON *j = cJSON_ParseWithLength(json, len);
	if (!j)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: the Hub's answer is not JSON", what);
	const cJSON *sha = cJSON_GetObjectItemCaseSensitive(j, "sha");
	bool ok = cJSON_IsString(sha) && is_commit(sha->valuestring);
	if (ok)
		memcpy(commit, sha->valuestring, 41);
	cJSON_Delete(j);
	return ok ? CLTFS_OK : cltfs_fail(CLTFS_E_FORMAT, "%s: the Hub's revision answer has no commit sha", what);
}

static cltfs_err resolve_online(hf_repo *r, const char *what)
{
	char url[4096];
	char *rev = http_escape(r->rev, false);
	if (!rev)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	snprintf(url, sizeof url, "%s/api/%s/%s/revision/%s", r->cfg.endpoint, r->type, r->name, rev);
	free(rev);
	membuf m = {0};
	cltfs_err e = api_get(r, url, what, &m, NULL);
	if (!e)
		e = hf_parse_revision(m.p ? m.p : "", m.n, what, r->commit);
	free(m.p);
	if (e)
		return e;
	if (!strcmp(r->rev, r->commit))
		return CLTFS_OK;
	/* As huggingface_hub does: refs/<branch or tag> holds the commit. */
	char ref[PATH_MAX], old[64] = "";
	snprintf(ref, sizeof ref, "%s/refs/%s", r->folder, r->rev);
	FILE *f = fopen(ref, "r");
	if (f) {
		if (!fgets(old, sizeof old, f))
			old[0] = 0;
		fclose(f);
	}
	return strcmp(old, r->commit) ? write_atomic(ref, r->commit) : CLTFS_OK;
}

static cltfs_err resolve_offline(hf_repo *r, const char *what)
{
	char path[PATH_MAX];
	struct stat st;
	if (is_commit(r->rev)) {
		snprintf(path, sizeof path, "%s/snapshots/%s", r->folder, r->rev);
		if (stat(path, &st) < 0)
			return cltfs_fail(CLTFS_E_NOTFOUND, "%s: HF_HUB_OFFLINE is set and commit %s is not in the cache (%s)",
					  what, r->rev, path);
		snprintf(r->commit, sizeof r->commit, "%s", r->rev);
		return CLTFS_OK;
	}
	snprintf(path, sizeof path, "%s/refs/%s", r->folder, r->rev);
	FILE *f = fopen(path, "r");
	char buf[64] = "";
	if (!f)
		return cltfs_fail(CLTFS_E_NOTFOUND,
				  "%s: HF_HUB_OFFLINE is set and revision '%s' is not in the cache (no %s)", what,
				  r->rev, path);
	if (!fgets(buf, sizeof buf, f))
		buf[0] = 0;
	fclose(f);
	buf[strcspn(buf, "\r\n")] = 0;
	if (!is_commit(buf))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not a commit hash", path);
	snprintf(r->commit, sizeof r->commit, "%s", buf);
	return CLTFS_OK;
}

/* An S3 prefix as a repo: its objects at s3_base, its files fetched
 * whole into <s3 cache>/snapshots/latest (S3 has no commits: each online
 * open lists, and fetches what changed), offline also with CLTFS_OFFLINE. */
static cltfs_err open_s3(hf_repo *r, const char *url)
{
	cltfs_err e = s3_open(url, &r->s3);
	if (e)
		return e;
	r->http.aws = s3_aws(r->s3);
	r->cfg.offline |= truthy(getenv("CLTFS_OFFLINE"));
	snprintf(r->commit, sizeof r->commit, "latest");
	r->id = strdup(s3_name(r->s3));
	r->label = strdup(s3_name(r->s3));
	r->folder = strdup(s3_cache(r->s3));
	r->url_base = strdup(s3_base(r->s3));
	return r->id && r->label && r->folder && r->url_base ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}

cltfs_err hf_repo_open(const hf_config *cfg, const char *url, hf_repo **out)
{
	hf_repo *r = calloc(1, sizeof *r);
	if (!r)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	pthread_mutex_init(&r->mu, NULL);
	cltfs_err e = config_copy(&r->cfg, cfg);
	if (e) {
		free(r);
		return e;
	}
	r->http = (http_ctx){&r->cfg, &r->st, NULL};
	if (s3_is_url(url))
		e = open_s3(r, url);
	else if (!(e = parse_url(r, url)))
		e = make_paths(r);
	if (!e && !r->s3)
		e = r->cfg.offline ? resolve_offline(r, url) : resolve_online(r, url);
	char base[4096];
	if (!e && !r->s3) {
		snprintf(base, sizeof base, "%s/%s%s/resolve/%s/", r->cfg.endpoint, url_prefix(r), r->name, r->commit);
		if (!(r->url_base = strdup(base)))
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		snprintf(base, sizeof base, "hf://%s@%.12s", r->id, r->commit);
		if (!e && !(r->label = strdup(base)))
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	if (e) {
		hf_repo_close(r);
		return e;
	}
	hf_partials_sweep(r);
	*out = r;
	return CLTFS_OK;
}

void hf_repo_close(hf_repo *r)
{
	if (!r)
		return;
	for (int i = 0; i < NLOCATIONS; i++) {
		free(r->loc[i].path);
		free(r->loc[i].url);
	}
	hf_config_free(&r->cfg);
	free(r->type);
	free(r->name);
	free(r->id);
	free(r->rev);
	free(r->folder);
	free(r->lockdir);
	free(r->url_base);
	free(r->label);
	s3_close(r->s3);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

const char *hf_repo_commit(const hf_repo *r) { return r->commit; }
const char *hf_repo_id(const hf_repo *r) { return r->id; }
const char *hf_repo_folder(const hf_repo *r) { return r->folder; }
const char *hf_repo_name(const hf_repo *r) { return r->label; }
bool hf_repo_is_s3(const hf_repo *r) { return r->s3 != NULL; }
hf_stats *hf_repo_stats(hf_repo *r) { return &r->st; }

/* ---- listing ---- */

static cltfs_err add_entry(hf_entries *l, const char *path, uint64_t size, bool dir)
{
	if (!cltfs_grow(&l->e, &l->cap, l->n + 1, sizeof *l->e))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	l->e[l->n] = (hf_entry){.size = size, .dir = dir};
	if (!(l->e[l->n].path = strdup(path)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	l->n++;
	return CLTFS_OK;
}

/* A string field of a listing entry onto the last entry of l (absent or
 * not a string: NULL). */
static cltfs_err entry_str(hf_entries *l, char **dst, const cJSON *v)
{
	if (!cJSON_IsString(v))
		return CLTFS_OK;
	*dst = strdup(v->valuestring);
	return *dst ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}

/* A path from the Hub must stay inside the snapshot. */
static bool safe_path(const char *p)
{
	if (!*p || *p == '/' || strstr(p, "//"))
		return false;
	for (const char *s = p; *s; s = strchr(s, '/') ? strchr(s, '/') + 1 : s + strlen(s))
		if (!strncmp(s, "..", 2) && (s[2] == '/' || !s[2]))
			return false;
	return !(p[0] == '.' && (p[1] == '/' || !p[1]));
}

static cltfs_err tree_entries(const cJSON *arr, hf_entries *l, const char *what)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, arr) {
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(it, "type"),
			    *path = cJSON_GetObjectItemCaseSensitive(it, "path"),
			    *size = cJSON_GetObjectItemCaseSensitive(it, "size"),
			    *lfs = cJSON_GetObjectItemCaseSensitive(it, "lfs");
		if (!cJSON_IsString(type) || !cJSON_IsString(path))
			return cltfs_fail(CLTFS_E_FORMAT, "%s: a tree entry without type or path", what);
		if (!safe_path(path->valuestring))
			return cltfs_fail(CLTFS_E_FORMAT, "%s: unsafe path '%s' in the tree listing", what,
					  path->valuestring);
		bool dir = !strcmp(type->valuestring, "directory");
		const cJSON *lsize = cJSON_GetObjectItemCaseSensitive(lfs, "size");
		double sz = cJSON_IsNumber(lsize) ? lsize->valuedouble : cJSON_IsNumber(size) ? size->valuedouble : 0;
		if (sz < 0 || sz > 9e15)
			return cltfs_fail(CLTFS_E_FORMAT, "%s: bad size for '%s'", what, path->valuestring);
		cltfs_err e = add_entry(l, path->valuestring, dir ? 0 : (uint64_t)sz, dir);
		if (e)
			return e;
		hf_entry *ent = &l->e[l->n - 1];
		if (!dir)
			e = entry_str(l, &ent->blob_id, cJSON_GetObjectItemCaseSensitive(it, "oid"));
		if (!e && !dir)
			e = entry_str(l, &ent->lfs_sha256, cJSON_GetObjectItemCaseSensitive(lfs, "oid"));
		if (!e && !dir)
			e = entry_str(l, &ent->xet_hash, cJSON_GetObjectItemCaseSensitive(it, "xetHash"));
		if (e)
			return e;
	}
	return CLTFS_OK;
}

cltfs_err hf_parse_tree_page(const char *json, size_t len, const char *what, hf_entries *l)
{
	cJSON *j = cJSON_ParseWithLength(json, len);
	if (!j)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: the Hub's answer is not JSON", what);
	cltfs_err e = cJSON_IsArray(j) ? tree_entries(j, l, what)
				       : cltfs_fail(CLTFS_E_FORMAT, "%s: the tree listing is not a JSON list", what);
	cJSON_Delete(j);
	return e;
}

static cltfs_err list_online(hf_repo *r, hf_entries *l)
{
	char url[4096], what[600];
	snprintf(what, sizeof what, "hf://%s@%s: listing", r->id, r->commit);
	snprintf(url, sizeof url, "%s/api/%s/%s/tree/%s?recursive=true&expand=false", r->cfg.endpoint, r->type,
		 r->name, r->commit);
	char *next = strdup(url);
	cltfs_err e = next ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int page = 0; !e && next; page++) {
		membuf m = {0};
		char *cur = next;
		next = NULL;
		if (page > 100000)
			e = cltfs_fail(CLTFS_E_FORMAT, "%s: endless pagination", what);
		else if (!(e = api_get(r, cur, what, &m, &next)))
			e = hf_parse_tree_page(m.p ? m.p : "", m.n, what, l);
		free(m.p);
		free(cur);
	}
	free(next);
	return e;
}

static cltfs_err walk(const char *root, const char *rel, hf_entries *l, int depth)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel);
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? CLTFS_OK : cltfs_fail(CLTFS_E_IO, "%s: %s", dir, strerror(errno));
	cltfs_err e = CLTFS_OK;
	struct dirent *de;
	while (!e && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char path[PATH_MAX], full[PATH_MAX];
		snprintf(path, sizeof path, "%s%s%s", rel, *rel ? "/" : "", de->d_name);
		snprintf(full, sizeof full, "%s/%s", root, path);
		struct stat st;
		if (stat(full, &st) < 0) /* a dangling link: its blob is gone */
			continue;
		if (S_ISDIR(st.st_mode)) {
			e = add_entry(l, path, 0, true);
			if (!e && depth < 64)
				e = walk(root, path, l, depth + 1);
		} else if (S_ISREG(st.st_mode)) {
			e = add_entry(l, path, (uint64_t)st.st_size, false);
		}
	}
	closedir(d);
	return e;
}

static int by_path(const void *a, const void *b)
{
	return strcmp(((const hf_entry *)a)->path, ((const hf_entry *)b)->path);
}

cltfs_err hf_list(hf_repo *r, hf_entry **out, size_t *n)
{
	hf_entries l = {0};
	char snap[PATH_MAX];
	snprintf(snap, sizeof snap, "%s/snapshots/%s", r->folder, r->commit);
	cltfs_err e = r->cfg.offline ? walk(snap, "", &l, 0) : r->s3 ? s3_list(r->s3, &r->http, &l) : list_online(r, &l);
	if (e) {
		hf_entries_free(l.e, l.n);
		return e;
	}
	if (l.n) /* an empty prefix or repo: no array at all */
		qsort(l.e, l.n, sizeof *l.e, by_path);
	if (r->s3) {
		/* a bucket is not huggingface_hub's: no cache tag, no tree file */
	} else if (r->cfg.offline) {
		hf_tree_sizes(r, l.e, l.n);
	} else {
		hf_cache_tag(r->cfg.hub_cache);
		/* Best effort, as huggingface_hub writes it: the listing served. */
		if (hf_tree_write(r, l.e, l.n))
			cltfs_log("%s", cltfs_errmsg());
	}
	*out = l.e;
	*n = l.n;
	return CLTFS_OK;
}

void hf_entries_free(hf_entry *e, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(e[i].path);
		free(e[i].blob_id);
		free(e[i].lfs_sha256);
		free(e[i].xet_hash);
	}
	free(e);
}

/* ---- whole files ---- */

struct hf_download {
	hf_repo *r;
	char *path;     /* in the repo */
	char snap[PATH_MAX];
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int fd;         /* the bytes so far (the .incomplete, then the blob); -1 before */
	uint64_t have;  /* bytes [0, have) are in fd, for readers */
	uint64_t written; /* bytes [0, written) are in fd: the download's thread's */
	bool hold;      /* bytes of an earlier download in fd: readers wait for the check */
	hf_digest *dig; /* of the bytes written, to check against the etag (NULL: no check) */
	bool done;
	cltfs_err err;
	char msg[1024];
	int refs;       /* the callers' and the thread's */
	atomic_bool cancel;
};

static void download_free(hf_download *d);

static void publish(hf_download *d, int fd, uint64_t have, bool done)
{
	pthread_mutex_lock(&d->mu);
	if (fd >= 0)
		d->fd = fd;
	d->have = have;
	d->done = done;
	pthread_cond_broadcast(&d->cv);
	pthread_mutex_unlock(&d->mu);
}

/* A blob name from the headers: X-Linked-Etag, else ETag, no W/ or quotes. */
static bool blob_name(const http_hdrs *h, char *out, size_t n)
{
	const char *e = *h->linked_etag ? h->linked_etag : h->etag;
	if (!strncmp(e, "W/", 2))
		e += 2;
	size_t len = strlen(e);
	if (len >= 2 && e[0] == '"' && e[len - 1] == '"') {
		e++;
		len -= 2;
	}
	if (!len || len >= n || memchr(e, '/', len) || (e[0] == '.' && len <= 2))
		return false;
	snprintf(out, n, "%.*s", (int)len, e);
	return true;
}

/* snapshots/<commit>/<path> -> ../../blobs/<etag>, relative as huggingface_hub makes it. */
static cltfs_err link_snapshot(hf_download *d, const char *etag)
{
	char target[PATH_MAX] = "";
	size_t depth = 2;
	for (const char *p = d->path; *p; p++)
		depth += *p == '/';
	for (size_t i = 0; i < depth; i++)
		strcat(target, "../");
	strcat(target, "blobs/");
	strcat(target, etag);
	cltfs_err e = mkparent(d->snap);
	if (e)
		return e;
	if (symlink(target, d->snap) < 0 && errno != EEXIST)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", d->snap, strerror(errno));
	return CLTFS_OK;
}

static bool file_sink(void *arg, const void *p, size_t n)
{
	hf_download *d = arg;
	if (atomic_load(&d->cancel)) {
		cltfs_fail(CLTFS_E_IO, "download cancelled");
		return false;
	}
	int r = cltfs_pwrite_full(d->fd, p, n, d->written);
	if (r) {
		cltfs_fail(CLTFS_E_IO, "writing the download: %s", strerror(r));
		return false;
	}
	if (hf_digest_add(d->dig, p, n))
		return false;
	d->written += n;
	if (!d->hold)
		publish(d, -1, d->written, false);
	return true;
}

static cltfs_err open_existing(hf_download *d, const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		cltfs_err e = cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return e;
	}
	publish(d, fd, (uint64_t)st.st_size, true);
	return CLTFS_OK;
}

/* Bytes [from, size) of the file into the partial download d->fd. */
static cltfs_err download_rest(hf_download *d, uint64_t from, uint64_t size)
{
	hf_repo *r = d->r;
	char url[8192];
	char *esc = http_escape(d->path, true);
	if (!esc)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	snprintf(url, sizeof url, "%s%s", r->url_base, esc);
	free(esc);
	d->written = from;
	/* From the start, a plain GET as huggingface_hub sends; a resume asks
	 * for exactly the rest. */
	http_hdrs h = {0};
	cltfs_err e = http_get(&r->http, url, from, from ? size - from : 0, file_sink, d, &h, NULL);
	http_hdrs_free(&h);
	if (!e && d->written != size)
		e = cltfs_fail(CLTFS_E_IO, "%s: %llu bytes arrived, the Hub announced %llu", url,
			       (unsigned long long)d->written, (unsigned long long)size);
	return e;
}

/* Complete the partial download (open as d->fd, from bytes there) and
 * check it against its etag, hashing the bytes as they are written. */
static cltfs_err download_checked(hf_download *d, const char *part, const char *etag, uint64_t from,
				  uint64_t size)
{
	cltfs_err e = hf_digest_new(etag, size, &d->dig);
	if (!e)
		e = hf_digest_add_fd(d->dig, d->fd, from, part);
	if (!e && from < size)
		e = download_rest(d, from, size);
	if (!e)
		e = hf_digest_check(d->dig, part);
	hf_digest_free(d->dig);
	d->dig = NULL;
	return e;
}

/* Bytes an earlier download left (from cltfs, or from any huggingface_hub)
 * are held from readers until the whole blob checks out; when it does not,
 * it is downloaded again from the start. */
static cltfs_err complete_partial(hf_download *d, const char *part, const char *etag, uint64_t have, uint64_t size)
{
	cltfs_err e = download_checked(d, part, etag, have, size);
	if (e != CLTFS_E_CORRUPT || !d->hold)
		return e;
	cltfs_log("%s: downloading it again from the start", cltfs_errmsg());
	if (ftruncate(d->fd, 0) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", part, strerror(errno));
	d->hold = false;
	publish(d, -1, 0, false);
	return download_checked(d, part, etag, 0, size);
}

/* Take the blob's lock into *lfd, waiting for whoever holds it (a Python
 * script, another mount) rather than download the same bytes twice.
 * CLTFS_E_IO (cancelled meanwhile, or no lock file). */
static cltfs_err lock_blob(hf_download *d, const char *lock, int *lfd)
{
	if ((*lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", lock, strerror(errno));
	while (flock(*lfd, LOCK_EX | LOCK_NB) < 0) {
		if (atomic_load(&d->cancel)) {
			close(*lfd);
			return cltfs_fail(CLTFS_E_IO, "download cancelled");
		}
		usleep(50000);
	}
	return CLTFS_OK;
}

/* Download into blobs/<etag>.incomplete (resuming the longest partial
 * download of it there), under the blob's lock, check it, then rename and
 * link. */
static cltfs_err fetch_blob(hf_download *d, const char *etag, uint64_t size)
{
	hf_repo *r = d->r;
	char blob[PATH_MAX], part[PATH_MAX], lock[PATH_MAX], blobs[PATH_MAX];
	snprintf(blobs, sizeof blobs, "%s/blobs", r->folder);
	snprintf(blob, sizeof blob, "%s/%s", blobs, etag);
	snprintf(part, sizeof part, "%s.incomplete", blob);
	snprintf(lock, sizeof lock, "%s/%s.lock", r->lockdir, etag);
	cltfs_err e = mkparent(blob);
	if (!e)
		e = mkparent(lock);
	if (e)
		return e;
	hf_cache_tag(r->cfg.hub_cache);
	int lfd;
	if ((e = lock_blob(d, lock, &lfd)))
		return e;
	struct stat st;
	if (stat(blob, &st) == 0) { /* there whole: its partials are garbage */
		if (hf_partials_tidy(blobs, etag, size, false))
			cltfs_log("%s", cltfs_errmsg()); /* the blob is served all the same */
		e = link_snapshot(d, etag);
		close(lfd);
		return e ? e : open_existing(d, d->snap);
	}
	int fd = -1;
	if (!(e = hf_partials_tidy(blobs, etag, size, true)) &&
	    ((fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0 || fstat(fd, &st) < 0))
		e = cltfs_fail(CLTFS_E_IO, "%s: %s", part, strerror(errno));
	if (e)
		goto out;
	uint64_t have = (uint64_t)st.st_size; /* at most size: tidy removed longer ones */
	d->hold = have > 0;
	publish(d, fd, d->hold ? 0 : have, false);
	fd = -1; /* d owns it now */
	if ((e = complete_partial(d, part, etag, have, size))) {
		if (e == CLTFS_E_CORRUPT) /* wrong bytes: nothing to resume */
			unlink(part);
		goto out;
	}
	if (rename(part, blob) < 0) {
		e = cltfs_fail(CLTFS_E_IO, "%s: %s", blob, strerror(errno));
		goto out;
	}
	if (!(e = link_snapshot(d, etag)))
		publish(d, -1, size, true);
out:
	if (fd >= 0)
		close(fd);
	close(lfd); /* releases the lock */
	return e;
}

static cltfs_err download_run(hf_download *d)
{
	hf_repo *r = d->r;
	char path[PATH_MAX], url[8192], what[1024];
	struct stat st;
	snprintf(what, sizeof what, "hf://%s@%.12s/%s", r->id, r->commit, d->path);
	if (stat(d->snap, &st) == 0 && S_ISREG(st.st_mode))
		return open_existing(d, d->snap); /* a commit's snapshot never changes */
	snprintf(path, sizeof path, "%s/.no_exist/%s/%s", r->folder, r->commit, d->path);
	if (stat(path, &st) == 0)
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: not in the repository", what);
	if (r->cfg.offline)
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: HF_HUB_OFFLINE is set and the file is not in the cache (%s)",
				  what, d->snap);
	char *esc = http_escape(d->path, true);
	if (!esc)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	snprintf(url, sizeof url, "%s%s", r->url_base, esc);
	free(esc);
	http_hdrs h = {0};
	cltfs_err e = http_head(&r->http, url, &h);
	char etag[160];
	uint64_t size = h.has_linked_size ? h.linked_size : h.content_length;
	if (!e && h.status == 404 && !strcmp(h.error_code, "EntryNotFound") && *h.commit) {
		if (!write_atomic(path, "")) /* as huggingface_hub remembers it */
			e = cltfs_fail(CLTFS_E_NOTFOUND, "%s: not in the repository", what);
		else
			e = cltfs_wrap(CLTFS_E_NOTFOUND, "%s: not in the repository", what);
	} else if (!e && (h.status < 200 || h.status >= 400)) {
		e = http_status_error(what, &h);
	} else if (!e && !blob_name(&h, etag, sizeof etag)) {
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: the Hub gave no usable ETag", what);
	} else if (!e && !h.has_linked_size && !h.has_length) {
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: the Hub gave no size", what);
	}
	http_hdrs_free(&h);
	if (!e)
		e = fetch_blob(d, etag, size);
	return e ? cltfs_wrap(e, "%s", what) : CLTFS_OK;
}

static void finish(hf_download *d, cltfs_err e)
{
	pthread_mutex_lock(&d->mu);
	if (e) {
		d->err = e;
		snprintf(d->msg, sizeof d->msg, "%s", cltfs_errmsg());
	}
	d->done = true;
	pthread_cond_broadcast(&d->cv);
	pthread_mutex_unlock(&d->mu);
}

static void download_drop(hf_download *d)
{
	pthread_mutex_lock(&d->mu);
	bool last = --d->refs == 0;
	pthread_mutex_unlock(&d->mu);
	if (last)
		download_free(d);
}

static void *download_main(void *arg)
{
	hf_download *d = arg;
	finish(d, download_run(d));
	download_drop(d);
	return NULL;
}

static cltfs_err download_new(hf_repo *r, const char *path, hf_download **out)
{
	if (!safe_path(path))
		return cltfs_fail(CLTFS_E_INVAL, "'%s': not a path inside a repository", path);
	hf_download *d = calloc(1, sizeof *d);
	if (!d || !(d->path = strdup(path))) {
		free(d);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	d->r = r;
	d->fd = -1;
	d->refs = 1;
	snprintf(d->snap, sizeof d->snap, "%s/snapshots/%s/%s", r->folder, r->commit, path);
	pthread_mutex_init(&d->mu, NULL);
	pthread_cond_init(&d->cv, NULL);
	*out = d;
	return CLTFS_OK;
}

static void download_free(hf_download *d)
{
	if (d->fd >= 0)
		close(d->fd);
	pthread_mutex_destroy(&d->mu);
	pthread_cond_destroy(&d->cv);
	free(d->path);
	free(d);
}

/* An S3 object into the snapshot folder, when it changed (online). */
static cltfs_err s3_fetch(hf_repo *r, const char *path, char **local)
{
	char snap[PATH_MAX];
	if (snprintf(snap, sizeof snap, "%s/snapshots/%s/%s", r->folder, r->commit, path) >= (int)sizeof snap)
		return cltfs_fail(CLTFS_E_INVAL, "%s/%s: path too long", r->label, path);
	struct stat st;
	cltfs_err e = CLTFS_OK;
	if (r->cfg.offline && stat(snap, &st) < 0)
		e = cltfs_fail(CLTFS_E_NOTFOUND, "%s/%s: offline, and not in %s", r->label, path, r->folder);
	else if (!r->cfg.offline)
		e = s3_get_file(r->s3, &r->http, path, snap);
	if (!e && !(*local = strdup(snap)))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	return e;
}

cltfs_err hf_fetch(hf_repo *r, const char *path, char **local)
{
	if (r->s3)
		return s3_fetch(r, path, local);
	hf_download *d;
	cltfs_err e = download_new(r, path, &d);
	if (e)
		return e;
	e = download_run(d);
	if (!e && !(*local = strdup(d->snap)))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	download_free(d);
	return e;
}

cltfs_err hf_download_start(hf_repo *r, const char *path, hf_download **out)
{
	if (r->s3)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: only a cltfs store is served from S3", r->label);
	hf_download *d;
	cltfs_err e = download_new(r, path, &d);
	if (e)
		return e;
	d->refs = 2;
	pthread_t t;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	int rc = pthread_create(&t, &a, download_main, d);
	pthread_attr_destroy(&a);
	if (rc) {
		download_free(d);
		return cltfs_fail(CLTFS_E_NOMEM, "cannot start a download thread");
	}
	*out = d;
	return CLTFS_OK;
}

cltfs_err hf_download_pread(hf_download *d, void *buf, size_t len, uint64_t off, size_t *got)
{
	pthread_mutex_lock(&d->mu);
	while (!d->done && d->have < off + len)
		pthread_cond_wait(&d->cv, &d->mu);
	if (d->have < off + len && d->err) {
		cltfs_err e = cltfs_fail(d->err, "%s", d->msg);
		pthread_mutex_unlock(&d->mu);
		return e;
	}
	uint64_t have = d->have;
	int fd = d->fd;
	pthread_mutex_unlock(&d->mu);
	size_t n = off >= have ? 0 : have - off < len ? (size_t)(have - off) : len;
	size_t done = 0;
	while (done < n) {
		ssize_t k = pread(fd, (uint8_t *)buf + done, n - done, (off_t)(off + done));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return cltfs_fail(CLTFS_E_IO, "%s: %s", d->snap, k < 0 ? strerror(errno) : "file shrank");
		done += (size_t)k;
	}
	*got = n;
	return CLTFS_OK;
}

static cltfs_err download_wait(hf_download *d)
{
	pthread_mutex_lock(&d->mu);
	while (!d->done)
		pthread_cond_wait(&d->cv, &d->mu);
	cltfs_err e = d->err ? cltfs_fail(d->err, "%s", d->msg) : CLTFS_OK;
	pthread_mutex_unlock(&d->mu);
	return e;
}


hf_download *hf_download_ref(hf_download *d)
{
	pthread_mutex_lock(&d->mu);
	d->refs++;
	pthread_mutex_unlock(&d->mu);
	return d;
}

bool hf_download_failed(hf_download *d)
{
	pthread_mutex_lock(&d->mu);
	bool f = d->done && d->err;
	pthread_mutex_unlock(&d->mu);
	return f;
}

void hf_download_cancel(hf_download *d)
{
	atomic_store(&d->cancel, true);
	download_wait(d);
}

void hf_download_release(hf_download *d)
{
	if (d)
		download_drop(d);
}

/* ---- ranges ---- */

typedef struct {
	uint8_t *dst;
	size_t n;
} fill;

static bool fill_sink(void *arg, const void *p, size_t n)
{
	fill *f = arg;
	memcpy(f->dst + f->n, p, n); /* http_get never passes more than asked */
	f->n += n;
	return true;
}

static char *cached_location(hf_repo *r, const char *path)
{
	char *url = NULL;
	time_t now = time(NULL);
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < NLOCATIONS && !url; i++)
		if (r->loc[i].path && !strcmp(r->loc[i].path, path) && now - r->loc[i].when < LOCATION_TTL)
			url = strdup(r->loc[i].url);
	pthread_mutex_unlock(&r->mu);
	return url;
}

static void remember_location(hf_repo *r, const char *path, const char *url, bool forget)
{
	pthread_mutex_lock(&r->mu);
	int slot = -1;
	for (int i = 0; i < NLOCATIONS && slot < 0; i++)
		if (r->loc[i].path && !strcmp(r->loc[i].path, path))
			slot = i;
	if (slot < 0 && !forget)
		slot = (int)(r->loc_next++ % NLOCATIONS);
	if (slot >= 0) {
		free(r->loc[slot].path);
		free(r->loc[slot].url);
		r->loc[slot].path = forget ? NULL : strdup(path);
		r->loc[slot].url = forget ? NULL : strdup(url);
		if (!r->loc[slot].path || !r->loc[slot].url) {
			free(r->loc[slot].path);
			free(r->loc[slot].url);
			r->loc[slot].path = r->loc[slot].url = NULL;
		}
		r->loc[slot].when = time(NULL);
	}
	pthread_mutex_unlock(&r->mu);
}

cltfs_err hf_read_range(hf_repo *r, const char *path, uint64_t off, size_t len, void *dst)
{
	char what[1024];
	hf_repo_what(r, path, what, sizeof what);
	if (r->cfg.offline)
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: offline (HF_HUB_OFFLINE or CLTFS_OFFLINE) and bytes %llu..%llu are "
				  "not cached", what, (unsigned long long)off, (unsigned long long)(off + len));
	if (!len)
		return CLTFS_OK;
	http_hdrs h = {0};
	fill f = {dst, 0};
	/* A signed CDN URL from an earlier redirect saves the Hub round trip;
	 * when it has expired (403, 404, 410), start again from the Hub. */
	char *cached = cached_location(r, path);
	if (cached) {
		cltfs_err e = http_get(&r->http, cached, off, len, fill_sink, &f, &h, NULL);
		free(cached);
		http_hdrs_free(&h);
		if (!e)
			return CLTFS_OK;
		if (e == CLTFS_E_NOMEM)
			return e;
		remember_location(r, path, NULL, true);
		f.n = 0;
	}
	char *esc = http_escape(path, true), url[8192], *final = NULL;
	if (!esc)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	snprintf(url, sizeof url, "%s%s", r->url_base, esc);
	free(esc);
	cltfs_err e = http_get(&r->http, url, off, len, fill_sink, &f, &h, &final);
	http_hdrs_free(&h);
	if (!e && final && strcmp(final, url))
		remember_location(r, path, final, false);
	free(final);
	return e ? cltfs_wrap(e, "%s", what) : CLTFS_OK;
}

cltfs_err hf_locate(hf_repo *r, const char *path)
{
	if (r->s3 || r->cfg.offline)
		return CLTFS_OK;
	char *url = hf_repo_resolve_url(r, path), what[1024];
	if (!url)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	http_hdrs h = {0};
	cltfs_err e = http_head(&r->http, url, &h);
	/* http_head followed the Hub's own redirects: one left names its CDN */
	if (!e && h.status >= 300 && h.status < 400 && h.location &&
	    (!strncmp(h.location, "https://", 8) || !strncmp(h.location, "http://", 7)))
		remember_location(r, path, h.location, false);
	else if (!e && (h.status < 200 || h.status >= 300))
		e = http_status_error(url, &h);
	http_hdrs_free(&h);
	free(url);
	hf_repo_what(r, path, what, sizeof what);
	return e ? cltfs_wrap(e, "%s", what) : CLTFS_OK;
}

cltfs_err hf_upload(hf_repo *r, const char *path, const char *local, uint64_t size, atomic_ullong *done)
{
	if (!r->s3)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: cltfs pushes to S3 only", r->label);
	if (r->cfg.offline)
		return cltfs_fail(CLTFS_E_INVAL, "%s: offline (HF_HUB_OFFLINE or CLTFS_OFFLINE): nothing is uploaded",
				  r->label);
	return s3_upload(r->s3, &r->http, path, local, size, done);
}

/* ---- for ranges.c (repo_internal.h) ---- */

const http_ctx *hf_repo_http(hf_repo *r) { return &r->http; }
const char *hf_repo_lockdir(const hf_repo *r) { return r->lockdir; }
bool hf_repo_offline(const hf_repo *r) { return r->cfg.offline; }

char *hf_repo_resolve_url(hf_repo *r, const char *path)
{
	char *esc = http_escape(path, true);
	size_t n = esc ? strlen(r->url_base) + strlen(esc) + 1 : 0;
	char *url = esc ? malloc(n) : NULL;
	if (url)
		snprintf(url, n, "%s%s", r->url_base, esc);
	free(esc);
	return url;
}

void hf_repo_what(const hf_repo *r, const char *path, char *buf, size_t n)
{
	snprintf(buf, n, "%s/%s", r->label, path);
}

char *hf_repo_location(hf_repo *r, const char *path) { return cached_location(r, path); }

void hf_repo_remember(hf_repo *r, const char *path, const char *url)
{
	remember_location(r, path, url, url == NULL);
}
