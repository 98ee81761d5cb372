/* s3.c: where an S3 prefix's objects are, how requests to it are signed,
 * and how it is listed and read.
 *
 * Signing is libcurl's (CURLOPT_AWS_SIGV4, http.c): this file only finds
 * the credentials, the region and the endpoint, as the AWS CLI does, so
 * that a user's existing setup (environment, ~/.aws) works as it is.
 * The query strings built here are already in SigV4's canonical form
 * (parameters sorted, values percent-encoded, "key=" for an empty value):
 * libcurl 7.88 signs the query as it is given.
 */
#include "s3.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct s3_target {
	char *bucket, *prefix; /* prefix: no leading or trailing '/', may be "" */
	char *name;            /* s3://bucket/prefix */
	char *bucket_url;      /* ends in '/' */
	char *base;            /* bucket_url + prefix + '/' (when there is one) */
	char *cache;
	http_aws aws;
	s3_objects listed; /* the last listing, sorted by path */
};

bool s3_is_url(const char *s) { return !strncmp(s, "s3://", 5); }

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

/* ---- ~/.aws/credentials and ~/.aws/config ---- */

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n && isspace((unsigned char)s[n - 1]))
		s[--n] = 0;
	return s;
}

/* key's value in [section] of the INI file at path, into out: false when
 * the file, the section or the key is not there. */
static bool ini_get(const char *path, const char *section, const char *key, char *out, size_t n)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	char line[4096];
	bool in = false, found = false;
	while (!found && fgets(line, sizeof line, f)) {
		char *s = trim(line);
		if (*s == '[') {
			char *end = strchr(s, ']');
			if (end)
				*end = 0;
			in = !strcmp(trim(s + 1), section);
			continue;
		}
		char *eq = strchr(s, '=');
		if (!in || !eq || *s == '#' || *s == ';')
			continue;
		*eq = 0;
		if (!strcmp(trim(s), key)) {
			snprintf(out, n, "%s", trim(eq + 1));
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* AWS_SHARED_CREDENTIALS_FILE or AWS_CONFIG_FILE, else ~/.aws/<file>. */
static void aws_file(const char *var, const char *file, char *out, size_t n)
{
	const char *v = env(var), *home = env("HOME");
	if (v && v[0] == '~' && home)
		snprintf(out, n, "%s%s", home, v + 1);
	else if (v)
		snprintf(out, n, "%s", v);
	else
		snprintf(out, n, "%s/.aws/%s", home ? home : "", file);
}

typedef struct {
	char profile[256], creds[PATH_MAX], config[PATH_MAX], config_section[300];
} aws_files;

static void find_files(aws_files *a)
{
	const char *p = env("AWS_PROFILE") ? env("AWS_PROFILE") : env("AWS_DEFAULT_PROFILE");
	snprintf(a->profile, sizeof a->profile, "%s", p ? p : "default");
	aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials", a->creds, sizeof a->creds);
	aws_file("AWS_CONFIG_FILE", "config", a->config, sizeof a->config);
	/* The config file names its sections "profile NAME", except default. */
	if (!strcmp(a->profile, "default"))
		snprintf(a->config_section, sizeof a->config_section, "default");
	else
		snprintf(a->config_section, sizeof a->config_section, "profile %s", a->profile);
}

/* A value of the profile: the credentials file first, then the config. */
static bool profile_get(const aws_files *a, const char *key, char *out, size_t n, const char **from)
{
	if (ini_get(a->creds, a->profile, key, out, n)) {
		*from = a->creds;
		return true;
	}
	*from = a->config;
	return ini_get(a->config, a->config_section, key, out, n);
}

static cltfs_err set_keys(http_aws *aws, const char *id, const char *secret, const char *token)
{
	size_t n = strlen(id) + strlen(secret) + 2;
	if (!(aws->userpwd = malloc(n)) || (token && *token && !(aws->token = strdup(token))))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	snprintf(aws->userpwd, n, "%s:%s", id, secret);
	return CLTFS_OK;
}

/* The credentials, as the AWS CLI's chain finds them: the environment,
 * then the profile's files; none: anonymous (a public bucket). */
static cltfs_err find_credentials(http_aws *aws, const aws_files *a)
{
	const char *id = env("AWS_ACCESS_KEY_ID"), *secret = env("AWS_SECRET_ACCESS_KEY");
	if (id && secret) {
		snprintf(aws->source, sizeof aws->source, "AWS_ACCESS_KEY_ID (%.8s...) and AWS_SECRET_ACCESS_KEY%s "
			 "from the environment", id, env("AWS_SESSION_TOKEN") ? " and AWS_SESSION_TOKEN" : "");
		return set_keys(aws, id, secret, env("AWS_SESSION_TOKEN"));
	}
	char kid[256], sec[512], tok[4096];
	const char *from, *from2;
	if (profile_get(a, "aws_access_key_id", kid, sizeof kid, &from) &&
	    profile_get(a, "aws_secret_access_key", sec, sizeof sec, &from2)) {
		bool has_token = profile_get(a, "aws_session_token", tok, sizeof tok, &from2);
		snprintf(aws->source, sizeof aws->source, "profile '%s' (key %.8s...%s) in %s", a->profile, kid,
			 has_token ? ", with a session token" : "", from);
		cltfs_err e = set_keys(aws, kid, sec, has_token ? tok : NULL);
		memset(sec, 0, sizeof sec);
		memset(tok, 0, sizeof tok);
		return e;
	}
	snprintf(aws->source, sizeof aws->source,
		 "none found (no AWS_ACCESS_KEY_ID, no profile '%s' in %s): requests are unsigned", a->profile,
		 a->creds);
	return CLTFS_OK;
}

/* ---- where the objects are ---- */

/* Bucket names as S3 allows them (3-63 of a-z 0-9 . -): anything else
 * would change the URL's meaning. */
static bool good_bucket(const char *b, size_t n)
{
	if (n < 3 || n > 63)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!islower((unsigned char)b[i]) && !isdigit((unsigned char)b[i]) && b[i] != '.' && b[i] != '-')
			return false;
	return true;
}

/* The messages leave the URL out: s3_open names it. */
static cltfs_err parse_url(s3_target *t, const char *url)
{
	const char *b = url + 5, *slash = strchr(b, '/');
	size_t bn = slash ? (size_t)(slash - b) : strlen(b);
	if (!good_bucket(b, bn))
		return cltfs_fail(CLTFS_E_INVAL, "expected s3://BUCKET[/PREFIX] with a bucket name of 3 to 63 "
				  "characters a-z 0-9 . -");
	const char *p = slash ? slash + 1 : "";
	size_t pn = strlen(p);
	while (pn && p[pn - 1] == '/')
		pn--;
	if (strstr(p, "//") || strstr(p, "..") || *p == '/')
		return cltfs_fail(CLTFS_E_INVAL, "a prefix with '//' or '..' is not one");
	t->bucket = strndup(b, bn);
	t->prefix = strndup(p, pn);
	return t->bucket && t->prefix ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}

/* The endpoint: scheme://host[:port], no path.  *custom: given by the
 * user (an S3-compatible server), not AWS's own. */
static cltfs_err find_endpoint(const aws_files *a, const char *region, char *out, size_t n, bool *custom)
{
	const char *v = env("AWS_ENDPOINT_URL_S3") ? env("AWS_ENDPOINT_URL_S3") : env("AWS_ENDPOINT_URL");
	char buf[1024], *from;
	if (!v && profile_get(a, "endpoint_url", buf, sizeof buf, (const char **)&from))
		v = buf;
	*custom = v != NULL;
	if (!v) {
		snprintf(out, n, "https://s3.%s.amazonaws.com", region);
		return CLTFS_OK;
	}
	if (strncmp(v, "http://", 7) && strncmp(v, "https://", 8))
		return cltfs_fail(CLTFS_E_INVAL, "endpoint URL '%s': not http:// or https://", v);
	snprintf(out, n, "%s", v);
	size_t len = strlen(out);
	while (len && out[len - 1] == '/')
		out[--len] = 0;
	const char *host = strstr(out, "://") + 3;
	if (!*host || strchr(host, '/') || strchr(host, '?'))
		return cltfs_fail(CLTFS_E_INVAL, "endpoint URL '%s': expected scheme://host[:port]", v);
	return CLTFS_OK;
}

/* Path-style (endpoint/bucket/...) or virtual-hosted (bucket.host/...). */
static cltfs_err path_style(const s3_target *t, bool custom, bool *path)
{
	const char *v = env("CLTFS_S3_ADDRESSING");
	if (!v || !strcmp(v, "auto")) {
		/* As the CLI: virtual-hosted on AWS, unless the bucket's name
		 * cannot be a host name under TLS (dots); S3-compatible servers
		 * are commonly reached by path. */
		*path = custom || strchr(t->bucket, '.');
		return CLTFS_OK;
	}
	if (strcmp(v, "path") && strcmp(v, "virtual"))
		return cltfs_fail(CLTFS_E_INVAL, "s3_addressing (CLTFS_S3_ADDRESSING) '%s': expected path, virtual or auto",
				  v);
	*path = !strcmp(v, "path");
	return CLTFS_OK;
}

static cltfs_err make_urls(s3_target *t, const char *endpoint, bool path)
{
	char buf[2048];
	const char *host = strstr(endpoint, "://") + 3;
	if (path)
		snprintf(buf, sizeof buf, "%s/%s/", endpoint, t->bucket);
	else
		snprintf(buf, sizeof buf, "%.*s%s.%s/", (int)(host - endpoint), endpoint, t->bucket, host);
	t->bucket_url = strdup(buf);
	char *esc = http_escape(t->prefix, true);
	if (esc)
		snprintf(buf, sizeof buf, "%s%s%s", t->bucket_url ? t->bucket_url : "", esc, *t->prefix ? "/" : "");
	free(esc);
	t->base = esc ? strdup(buf) : NULL;
	snprintf(buf, sizeof buf, "s3://%s%s%s", t->bucket, *t->prefix ? "/" : "", t->prefix);
	t->name = strdup(buf);
	/* The cache folder names the server too: one bucket name on two
	 * servers is two buckets. */
	const char *xdg = env("XDG_CACHE_HOME"), *home = env("HOME");
	char hostdir[256];
	snprintf(hostdir, sizeof hostdir, "%s", host);
	for (char *p = hostdir; *p; p++)
		*p = *p == ':' ? '_' : *p;
	if (xdg)
		snprintf(buf, sizeof buf, "%s/cltfs/s3/%s/%s/%s", xdg, hostdir, t->bucket, t->prefix);
	else
		snprintf(buf, sizeof buf, "%s/.cache/cltfs/s3/%s/%s/%s", home ? home : "", hostdir, t->bucket,
			 t->prefix);
	t->cache = strdup(buf);
	return t->bucket_url && t->base && t->name && t->cache ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}

/* As the AWS CLI: AWS_CA_BUNDLE, else the profile's ca_bundle; else the
 * Hub's variables (hf_config) and then the system's certificates. */
static cltfs_err find_ca_bundle(http_aws *aws, const aws_files *a)
{
	const char *from = "AWS_CA_BUNDLE", *v = env("AWS_CA_BUNDLE");
	if (v)
		snprintf(aws->ca_bundle, sizeof aws->ca_bundle, "%s", v);
	else if (!profile_get(a, "ca_bundle", aws->ca_bundle, sizeof aws->ca_bundle, &from)) {
		aws->ca_bundle[0] = 0;
		return CLTFS_OK;
	}
	if (access(aws->ca_bundle, R_OK) < 0)
		return cltfs_fail(CLTFS_E_INVAL, "ca_bundle %s (from %s): %s", aws->ca_bundle, from, strerror(errno));
	return CLTFS_OK;
}

cltfs_err s3_open(const char *url, s3_target **out)
{
	s3_target *t = calloc(1, sizeof *t);
	if (!t)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	aws_files a;
	find_files(&a);
	char region[64], endpoint[1024], *from;
	const char *r = env("AWS_REGION") ? env("AWS_REGION") : env("AWS_DEFAULT_REGION");
	if (r)
		snprintf(region, sizeof region, "%s", r);
	else if (!profile_get(&a, "region", region, sizeof region, (const char **)&from))
		snprintf(region, sizeof region, "us-east-1");
	bool custom = false, path = false;
	cltfs_err e = parse_url(t, url);
	for (const char *p = region; !e && *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-')
			e = cltfs_fail(CLTFS_E_INVAL, "AWS region '%s': not a region name", region);
	if (!e)
		e = find_endpoint(&a, region, endpoint, sizeof endpoint, &custom);
	if (!e)
		e = path_style(t, custom, &path);
	if (!e)
		e = make_urls(t, endpoint, path);
	if (!e)
		e = find_credentials(&t->aws, &a);
	if (!e)
		e = find_ca_bundle(&t->aws, &a);
	snprintf(t->aws.sigv4, sizeof t->aws.sigv4, "aws:amz:%s:s3", region);
	if (e) {
		s3_close(t);
		return cltfs_wrap(e, "%s", url);
	}
	*out = t;
	return CLTFS_OK;
}

void s3_close(s3_target *t)
{
	if (!t)
		return;
	if (t->aws.userpwd)
		memset(t->aws.userpwd, 0, strlen(t->aws.userpwd));
	if (t->aws.token)
		memset(t->aws.token, 0, strlen(t->aws.token));
	free(t->aws.userpwd);
	free(t->aws.token);
	free(t->bucket);
	free(t->prefix);
	free(t->name);
	free(t->bucket_url);
	free(t->base);
	free(t->cache);
	s3_objects_free(&t->listed);
	free(t);
}

const http_aws *s3_aws(const s3_target *t) { return &t->aws; }
const char *s3_name(const s3_target *t) { return t->name; }
const char *s3_base(const s3_target *t) { return t->base; }
const char *s3_cache(const s3_target *t) { return t->cache; }

/* ---- listing ---- */

/* XML's five entities; anything else stays as it is. */
static void xml_unescape(char *s)
{
	static const struct {
		const char *ent;
		char c;
	} ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
	char *o = s;
	for (char *p = s; *p;) {
		size_t i = 0;
		for (; *p == '&' && i < sizeof ents / sizeof *ents; i++)
			if (!strncmp(p, ents[i].ent, strlen(ents[i].ent)))
				break;
		if (*p == '&' && i < sizeof ents / sizeof *ents) {
			*o++ = ents[i].c;
			p += strlen(ents[i].ent);
		} else {
			*o++ = *p++;
		}
	}
	*o = 0;
}

/* The text of the first <tag>...</tag> in [p, end), malloc'd and
 * unescaped; NULL when absent (or out of memory: *nomem). */
static char *xml_text(const char *p, const char *end, const char *tag, bool *nomem)
{
	char open[64], close[64];
	snprintf(open, sizeof open, "<%s>", tag);
	snprintf(close, sizeof close, "</%s>", tag);
	const char *a = strstr(p, open);
	if (!a || a >= end)
		return NULL;
	a += strlen(open);
	const char *b = strstr(a, close);
	if (!b || b > end)
		return NULL;
	char *s = strndup(a, (size_t)(b - a));
	*nomem = !s;
	if (s)
		xml_unescape(s);
	return s;
}

/* A key's path below the prefix must stay below the folder it is kept in. */
static bool safe_rel(const char *p)
{
	if (!*p || *p == '/' || p[strlen(p) - 1] == '/' || strstr(p, "//"))
		return false;
	for (const char *s = p; s; s = strchr(s, '/')) {
		s += *s == '/';
		if (!strncmp(s, "..", 2) && (s[2] == '/' || !s[2]))
			return false;
		if (s[0] == '.' && (s[1] == '/' || !s[1]))
			return false;
	}
	return true;
}

void s3_objects_free(s3_objects *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->e[i].path);
	free(l->e);
	*l = (s3_objects){0};
}

/* One <Contents> of a listing into l. */
static cltfs_err add_object(const char *prefix, const char *what, const char *p, const char *end, s3_objects *l)
{
	bool nomem = false;
	char *key = xml_text(p, end, "Key", &nomem), *size = xml_text(p, end, "Size", &nomem);
	char *etag = xml_text(p, end, "ETag", &nomem);
	size_t pn = strlen(prefix);
	cltfs_err e = nomem ? cltfs_fail(CLTFS_E_NOMEM, "out of memory") : CLTFS_OK;
	if (!e && (!key || !size || !*key))
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: a listed object without Key or Size", what);
	if (!e && pn && (strncmp(key, prefix, pn) || key[pn] != '/'))
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: listed '%s', which is not under the prefix", what, key);
	const char *rel = !e && pn ? key + pn + 1 : key;
	bool folder = !e && (!*rel || rel[strlen(rel) - 1] == '/'); /* "folder/" markers are no files */
	char *endp = NULL;
	unsigned long long n = !e ? strtoull(size, &endp, 10) : 0;
	if (!e && (!isdigit((unsigned char)*size) || *endp || n > 9000000000000000ULL))
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: object '%s' has size '%s'", what, key, size);
	if (!e && !folder && !safe_rel(rel))
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: object '%s' has a path cltfs will not use", what, key);
	if (!e && !folder) {
		char *dup = strdup(rel);
		if (!dup || !cltfs_grow(&l->e, &l->cap, l->n + 1, sizeof *l->e)) {
			free(dup);
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		} else {
			s3_object *o = &l->e[l->n++];
			*o = (s3_object){.path = dup, .size = n};
			if (etag && strlen(etag) < sizeof o->etag && !strchr(etag, '\n'))
				snprintf(o->etag, sizeof o->etag, "%s", etag);
		}
	}
	free(key);
	free(size);
	free(etag);
	return e;
}

cltfs_err s3_parse_listing(const char *prefix, const char *what, const char *body, s3_objects *l, char **token)
{
	*token = NULL;
	if (!strstr(body, "<ListBucketResult"))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: the answer to a listing is not one", what);
	const char *p = body, *end = body + strlen(body);
	cltfs_err e = CLTFS_OK;
	while (!e && (p = strstr(p, "<Contents>"))) {
		const char *stop = strstr(p, "</Contents>");
		if (!stop)
			return cltfs_fail(CLTFS_E_FORMAT, "%s: a listing cut short", what);
		e = add_object(prefix, what, p, stop, l);
		p = stop;
	}
	bool nomem = false;
	char *trunc = e ? NULL : xml_text(body, end, "IsTruncated", &nomem);
	bool more = trunc && !strcmp(trunc, "true");
	*token = more ? xml_text(body, end, "NextContinuationToken", &nomem) : NULL;
	if (!e && (nomem || (more && (!*token || !**token))))
		e = cltfs_fail(nomem ? CLTFS_E_NOMEM : CLTFS_E_FORMAT, "%s: a truncated listing without its next token",
			       what);
	if (e) {
		free(*token);
		*token = NULL;
	}
	free(trunc);
	return e;
}

static int by_path(const void *a, const void *b)
{
	return strcmp(((const s3_object *)a)->path, ((const s3_object *)b)->path);
}

/* The last listing's entries, copied to l. */
static cltfs_err copy_listed(const s3_target *t, hf_entries *l)
{
	for (size_t i = 0; i < t->listed.n; i++) {
		char *dup = strdup(t->listed.e[i].path);
		if (!dup || !cltfs_grow(&l->e, &l->cap, l->n + 1, sizeof *l->e)) {
			free(dup);
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		}
		l->e[l->n++] = (hf_entry){.path = dup, .size = t->listed.e[i].size};
	}
	return CLTFS_OK;
}

cltfs_err s3_list(s3_target *t, const http_ctx *c, hf_entries *l)
{
	s3_objects_free(&t->listed);
	char *pfx = NULL, *token = NULL;
	if (*t->prefix) {
		char buf[2048];
		snprintf(buf, sizeof buf, "%s/", t->prefix);
		pfx = http_escape(buf, false);
	}
	cltfs_err e = *t->prefix && !pfx ? cltfs_fail(CLTFS_E_NOMEM, "out of memory") : CLTFS_OK;
	do {
		char *tok = token ? http_escape(token, false) : NULL, *body = NULL;
		size_t n = strlen(t->bucket_url) + (tok ? strlen(tok) : 0) + (pfx ? strlen(pfx) : 0) + 64;
		char *url = malloc(n);
		if (!url || (token && !tok)) {
			free(url);
			free(tok);
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			break;
		}
		/* Parameters in SigV4's order: sorted by name. */
		snprintf(url, n, "%s?%s%s%slist-type=2%s%s", t->bucket_url, tok ? "continuation-token=" : "",
			 tok ? tok : "", tok ? "&" : "", pfx ? "&prefix=" : "", pfx ? pfx : "");
		free(tok);
		free(token);
		token = NULL;
		http_hdrs h = {0};
		e = http_send(c, "GET", url, NULL, 0, &body, &h);
		http_hdrs_free(&h);
		free(url);
		if (!e)
			e = s3_parse_listing(t->prefix, t->name, body, &t->listed, &token);
		free(body);
		if (e)
			e = cltfs_wrap(e, "listing %s", t->name);
	} while (!e && token);
	free(token);
	free(pfx);
	/* sorted, so that each file a mount fetches finds its ETag by bisection
	 * (S3 lists in key order, but a compatible server need not) */
	if (!e && t->listed.n)
		qsort(t->listed.e, t->listed.n, sizeof *t->listed.e, by_path);
	return e ? e : copy_listed(t, l);
}

/* ---- whole files ---- */

typedef struct {
	int fd;
	const char *path;
	uint64_t written;
} file_out;

static bool write_sink(void *arg, const void *p, size_t n)
{
	file_out *f = arg;
	int r = cltfs_pwrite_full(f->fd, p, n, f->written);
	if (r) {
		cltfs_fail(CLTFS_E_IO, "%s: %s", f->path, strerror(r));
		return false;
	}
	f->written += n;
	return true;
}

/* Where the ETag of the copy of path that s3_get_file made is kept. */
static void etag_path(const s3_target *t, const char *path, char *buf, size_t n)
{
	snprintf(buf, n, "%s/etags/%s", t->cache, path);
}

/* Is dst the object the last listing names: its size, and the ETag
 * recorded when it was fetched? */
static bool unchanged(const s3_target *t, const char *path, const char *dst)
{
	const s3_object key = {.path = (char *)path};
	const s3_object *o = t->listed.n ? bsearch(&key, t->listed.e, t->listed.n, sizeof key, by_path) : NULL;
	struct stat st;
	if (!o || !*o->etag || stat(dst, &st) < 0 || (uint64_t)st.st_size != o->size)
		return false;
	char p[PATH_MAX], have[sizeof o->etag + 1];
	etag_path(t, path, p, sizeof p);
	FILE *f = fopen(p, "re");
	bool same = f && fgets(have, sizeof have, f) && !strcmp(have, o->etag);
	if (f)
		fclose(f);
	return same;
}

/* Remember the ETag of what was fetched (a failure costs a fetch later). */
static void record_etag(const s3_target *t, const char *path, const char *etag)
{
	char p[PATH_MAX];
	etag_path(t, path, p, sizeof p);
	const char *slash = strrchr(p, '/');
	if (*etag && !cltfs_mkdirs(p, (size_t)(slash - p)))
		cltfs_write_atomic(p, etag, strlen(etag));
}

cltfs_err s3_get_file(const s3_target *t, const http_ctx *c, const char *path, const char *dst)
{
	if (unchanged(t, path, dst))
		return CLTFS_OK;
	char tmp[PATH_MAX + 32];
	snprintf(tmp, sizeof tmp, "%s.%d.tmp", dst, (int)getpid());
	const char *slash = strrchr(dst, '/');
	cltfs_err e = slash ? cltfs_mkdirs(dst, (size_t)(slash - dst)) : CLTFS_OK;
	if (e)
		return e;
	file_out f = {open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), tmp, 0};
	if (f.fd < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", tmp, strerror(errno));
	char *esc = http_escape(path, true);
	size_t n = esc ? strlen(t->base) + strlen(esc) + 1 : 0;
	char *url = esc ? malloc(n) : NULL;
	if (url)
		snprintf(url, n, "%s%s", t->base, esc);
	http_hdrs h = {0};
	e = url ? http_get(c, url, 0, 0, write_sink, &f, &h, NULL) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	char etag[sizeof h.etag];
	snprintf(etag, sizeof etag, "%s", e ? "" : h.etag);
	http_hdrs_free(&h);
	free(esc);
	free(url);
	if (!e && fsync(f.fd) < 0)
		e = cltfs_fail(CLTFS_E_IO, "%s: %s", tmp, strerror(errno));
	close(f.fd);
	if (!e && rename(tmp, dst) < 0)
		e = cltfs_fail(CLTFS_E_IO, "%s: %s", dst, strerror(errno));
	if (e)
		unlink(tmp);
	else
		record_etag(t, path, etag);
	return e ? cltfs_wrap(e, "%s/%s", t->name, path) : CLTFS_OK;
}
