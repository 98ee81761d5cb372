/* http.c: requests with retries, manual redirects and a per-thread handle;
 * a GET also as steps (http_op) for a multi handle. */
#include "http.h"

#include <ctype.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAX_REDIRECTS 10
#define RETRY_AFTER_CAP 60.0 /* seconds: a longer Retry-After is an error */
#define RETRY_BUDGET 180.0   /* seconds of waiting in all for one request */
/* Bytes libcurl reads from a socket at once (its default is 16 KiB): a
 * range of megabytes then costs tens of calls, not hundreds. */
#define RECV_BUFFER (256L << 10)

static pthread_key_t handle_key;
static pthread_once_t handle_once = PTHREAD_ONCE_INIT;

static void free_handle(void *h) { curl_easy_cleanup(h); }
static void make_key(void) { pthread_key_create(&handle_key, free_handle); }

cltfs_err http_init(void)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT))
		return cltfs_fail(CLTFS_E_IO, "libcurl failed to initialize");
	pthread_once(&handle_once, make_key);
	return CLTFS_OK;
}

/* The calling thread's handle: connections stay open between requests. */
static CURL *thread_handle(void)
{
	pthread_once(&handle_once, make_key);
	CURL *h = pthread_getspecific(handle_key);
	if (h) {
		curl_easy_reset(h);
		return h;
	}
	h = curl_easy_init();
	if (h && pthread_setspecific(handle_key, h)) {
		curl_easy_cleanup(h);
		return NULL;
	}
	return h;
}

void http_hdrs_free(http_hdrs *h)
{
	free(h->location);
	free(h->link_next);
	h->location = h->link_next = NULL;
}

static void hdrs_reset(http_hdrs *h)
{
	http_hdrs_free(h);
	memset(h, 0, sizeof *h);
	h->retry_after = -1;
}

/* ---- headers ---- */

static void copy_value(char *dst, size_t n, const char *v, size_t len)
{
	len = len < n - 1 ? len : n - 1;
	memcpy(dst, v, len);
	dst[len] = 0;
}

/* Link: <url>; rel="next" (possibly among other links). */
static char *parse_link_next(const char *v, size_t len)
{
	const char *end = v + len;
	while (v < end) {
		const char *lt = memchr(v, '<', (size_t)(end - v));
		if (!lt)
			return NULL;
		const char *gt = memchr(lt, '>', (size_t)(end - lt));
		if (!gt)
			return NULL;
		const char *comma = memchr(gt, ',', (size_t)(end - gt));
		const char *stop = comma ? comma : end;
		const char *rel = NULL;
		for (const char *p = gt; p + 10 <= stop; p++)
			if (!strncasecmp(p, "rel=\"next\"", 10) || !strncasecmp(p, "rel=next", 8))
				rel = p;
		if (rel)
			return strndup(lt + 1, (size_t)(gt - lt - 1));
		v = stop + 1;
	}
	return NULL;
}

static size_t on_header(char *line, size_t size, size_t nitems, void *arg)
{
	http_hdrs *h = arg;
	size_t n = size * nitems, len = n;
	while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	if (len >= 5 && !strncmp(line, "HTTP/", 5)) { /* a new response: forget the last one's */
		hdrs_reset(h);
		const char *sp = memchr(line, ' ', len);
		h->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		return n;
	}
	const char *colon = memchr(line, ':', len);
	if (!colon)
		return n;
	size_t klen = (size_t)(colon - line);
	const char *v = colon + 1;
	while (v < line + len && (*v == ' ' || *v == '\t'))
		v++;
	size_t vlen = (size_t)(line + len - v);
#define IS(name) (klen == sizeof name - 1 && !strncasecmp(line, name, klen))
	if (IS("ETag"))
		copy_value(h->etag, sizeof h->etag, v, vlen);
	else if (IS("X-Linked-Etag"))
		copy_value(h->linked_etag, sizeof h->linked_etag, v, vlen);
	else if (IS("X-Repo-Commit"))
		copy_value(h->commit, sizeof h->commit, v, vlen);
	else if (IS("X-Error-Code"))
		copy_value(h->error_code, sizeof h->error_code, v, vlen);
	else if (IS("X-Error-Message"))
		copy_value(h->error_msg, sizeof h->error_msg, v, vlen);
	else if (IS("X-Linked-Size")) {
		h->linked_size = strtoull(v, NULL, 10);
		h->has_linked_size = true;
	} else if (IS("Content-Length")) {
		h->content_length = strtoull(v, NULL, 10);
		h->has_length = true;
	} else if (IS("Content-Range") && vlen > 6 && !strncasecmp(v, "bytes ", 6) && isdigit((unsigned char)v[6])) {
		h->range_start = strtoull(v + 6, NULL, 10);
		h->has_range = true;
	} else if (IS("Retry-After") && vlen && isdigit((unsigned char)*v)) {
		h->retry_after = strtod(v, NULL);
	} else if (IS("Location")) {
		free(h->location);
		h->location = strndup(v, vlen);
	} else if (IS("Link")) {
		char *next = parse_link_next(v, vlen);
		if (next) {
			free(h->link_next);
			h->link_next = next;
		}
	}
#undef IS
	return n;
}

/* ---- one request ---- */

/* A 206 whose Content-Range is missing or starts elsewhere than byte start. */
static bool other_range(const http_hdrs *h, uint64_t start) { return !h->has_range || h->range_start != start; }

static size_t on_body(char *p, size_t size, size_t nitems, void *arg)
{
	http_body *b = arg;
	size_t n = size * nitems;
	http_hdrs *h = b->h;
	if (h->status < 200 || h->status > 299 || (b->sink && h->status != 200 && h->status != 206)) {
		/* An error page: the headers say what went wrong, or (S3) its
		 * XML, whose start is kept for the message. */
		size_t k = n < sizeof h->errbody - 1 - h->errlen ? n : sizeof h->errbody - 1 - h->errlen;
		memcpy(h->errbody + h->errlen, p, k);
		h->errlen += k;
		h->errbody[h->errlen] = 0;
		return n;
	}
	if (!b->sink)
		return n;
	/* A proxy that dropped the Range (200: the file from byte 0) or
	 * answered another range: not one byte of it is what the sink
	 * expects, so none is given (a frame would fail its check and look
	 * damaged); the attempt is tried again. */
	if (b->ranged && (h->status != 206 || other_range(h, b->start))) {
		b->aborted = 3;
		return 0;
	}
	if (n > b->want) {
		b->aborted = 1; /* more than asked for: never pass on extra bytes */
		return 0;
	}
	if (!b->sink(b->arg, p, n)) {
		b->aborted = 2;
		return 0;
	}
	b->want -= b->want == UINT64_MAX ? 0 : n;
	b->given += n;
	return n;
}

/* scheme://host:port of a URL, for the same-host test. */
static bool origin_of(const char *url, char *out, size_t n)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL;
	bool ok = u && !curl_url_set(u, CURLUPART_URL, url, 0) && !curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) &&
		  !curl_url_get(u, CURLUPART_HOST, &host, 0) &&
		  !curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
	if (ok)
		snprintf(out, n, "%s://%s:%s", scheme, host, port);
	for (char *p = out; ok && *p; p++)
		*p = (char)tolower((unsigned char)*p);
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return ok;
}

static bool same_origin(const char *a, const char *b)
{
	char oa[512], ob[512];
	return origin_of(a, oa, sizeof oa) && origin_of(b, ob, sizeof ob) && !strcmp(oa, ob);
}

/* A URL as messages show it: without its query (signed CDN URLs). */
static const char *shown(const char *url, char *buf, size_t n)
{
	size_t len = strcspn(url, "?");
	snprintf(buf, n, "%.*s", (int)len, url);
	return buf;
}

/* The token only to the Hub itself: a redirect to a CDN (another host)
 * must not carry it.  False when out of memory. */
static bool bearer_auth(const http_ctx *c, const char *url, struct curl_slist **hl)
{
	if (!c->cfg->token || !same_origin(url, c->cfg->endpoint))
		return false;
	char auth[4200];
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->cfg->token);
	*hl = curl_slist_append(*hl, auth);
	memset(auth, 0, sizeof auth);
	return !*hl;
}

/* S3: libcurl's own SigV4 signs the request (its x-amz-* headers too).
 * The payload hash is UNSIGNED-PAYLOAD, which S3 accepts for every
 * request: a body need not be read twice.  False when out of memory. */
static bool aws_auth(CURL *e, const http_aws *a, struct curl_slist **hl)
{
	if (!a->userpwd)
		return false; /* anonymous: a public bucket */
	if (!(*hl = curl_slist_append(*hl, "x-amz-content-sha256: UNSIGNED-PAYLOAD")))
		return true;
	if (a->token) {
		size_t n = strlen(a->token) + 32;
		char *v = malloc(n);
		if (!v)
			return true;
		snprintf(v, n, "x-amz-security-token: %s", a->token);
		struct curl_slist *l = curl_slist_append(*hl, v);
		memset(v, 0, n);
		free(v);
		if (!l)
			return true;
		*hl = l;
	}
	curl_easy_setopt(e, CURLOPT_AWS_SIGV4, a->sigv4);
	curl_easy_setopt(e, CURLOPT_USERPWD, a->userpwd);
	return false;
}

/* Set e up for one request; *hl (the header list, which may hold the
 * token) is the caller's to give to after(). */
static CURLcode setup(CURL *e, const http_ctx *c, const char *url, bool head, const char *range, http_body *b,
		      http_hdrs *h, struct curl_slist **out)
{
	struct curl_slist *hl = NULL;
	*out = NULL;
	if (c->aws ? aws_auth(e, c->aws, &hl) : bearer_auth(c, url, &hl))
		return CURLE_OUT_OF_MEMORY;
	*out = hl;
	hdrs_reset(h);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "cltfs/" CLTFS_VERSION);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 10L);
	/* A stalled transfer (under 1 KiB/s for 30 s) fails and is retried. */
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, 30L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, NULL);
	/* HTTP/2 where the server offers it (ALPN, over TLS), else HTTP/1.1
	 * with keep-alive (ranges.c asks HTTP/1.1 of its frames' requests:
	 * several connections carry more than one over a far link). */
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	/* the CA certificates to trust, as the Python clients take them */
	const char *ca = c->aws && *c->aws->ca_bundle ? c->aws->ca_bundle : c->cfg ? c->cfg->ca_file : NULL;
	if (ca)
		curl_easy_setopt(e, CURLOPT_CAINFO, ca);
	if (c->cfg && c->cfg->ca_dir)
		curl_easy_setopt(e, CURLOPT_CAPATH, c->cfg->ca_dir);
	if (head)
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	else
		curl_easy_setopt(e, CURLOPT_BUFFERSIZE, RECV_BUFFER);
	if (range)
		curl_easy_setopt(e, CURLOPT_RANGE, range);
	return CURLE_OK;
}

/* After a request set up by setup(): drop the header list (it holds the
 * token), count the request, and keep the shortest round trip seen (from
 * sending the request to the first byte of the answer), by which a reader
 * sizes what it keeps in flight. */
static void after(const http_ctx *c, CURL *e, struct curl_slist **hl)
{
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(*hl);
	*hl = NULL;
	atomic_fetch_add(&c->st->requests, 1);
	curl_off_t pre = 0, first = 0;
	if (curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pre) ||
	    curl_easy_getinfo(e, CURLINFO_STARTTRANSFER_TIME_T, &first) || first <= pre)
		return;
	unsigned long long us = (unsigned long long)(first - pre), old = atomic_load(&c->st->rtt_us);
	while ((!old || us < old) && !atomic_compare_exchange_weak(&c->st->rtt_us, &old, us))
		;
}

static CURLcode perform(const http_ctx *c, const char *url, bool head, const char *range, http_body *b, http_hdrs *h)
{
	CURL *e = thread_handle();
	if (!e)
		return CURLE_OUT_OF_MEMORY;
	struct curl_slist *hl;
	CURLcode rc = setup(e, c, url, head, range, b, h, &hl);
	if (rc)
		return rc;
	rc = curl_easy_perform(e);
	after(c, e, &hl);
	return rc;
}

/* Transient: worth another attempt. */
static bool transient_status(long s) { return s == 429 || s == 500 || s == 502 || s == 503 || s == 504; }

/* libcurl's words for rc; for a certificate it could not check, what to
 * do about it (a private CA, or a proxy that inspects TLS). */
static const char *curl_why(CURLcode rc)
{
	if (rc == CURLE_PEER_FAILED_VERIFICATION)
		return "the server's TLS certificate could not be verified (signed by a private CA, or a proxy's? "
		       "set SSL_CERT_FILE, CURL_CA_BUNDLE or REQUESTS_CA_BUNDLE to the CA's certificate file; "
		       "AWS_CA_BUNDLE for S3)";
	return curl_easy_strerror(rc);
}

static bool transient_curl(CURLcode rc)
{
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_PARTIAL_FILE:
	case CURLE_GOT_NOTHING:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return true;
	default:
		return false;
	}
}

/* The wait before retrying after attempt `attempt` (1, 2, ...) failed:
 * Retry-After when the server said so, else backoff doubling from
 * backoff_ms; counted as a retry.  < 0 when the budget of attempts or
 * time is spent. */
static double retry_wait(const http_ctx *c, int attempt, double retry_after, double t0)
{
	if (attempt > c->cfg->retries)
		return -1;
	double w = (double)c->cfg->backoff_ms / 1000.0 * (double)(1u << (attempt - 1 < 10 ? attempt - 1 : 10));
	if (w > 10.0)
		w = 10.0;
	if (retry_after >= 0) {
		if (retry_after > RETRY_AFTER_CAP)
			return -1;
		w = retry_after;
	}
	if (cltfs_now() - t0 + w > RETRY_BUDGET)
		return -1;
	atomic_fetch_add(&c->st->retries, 1);
	return w;
}

static void sleep_for(double w)
{
	struct timespec ts = {(time_t)w, (long)((w - (double)(time_t)w) * 1e9)};
	while (nanosleep(&ts, &ts))
		;
}

static bool wait_retry(const http_ctx *c, int attempt, double retry_after, double t0)
{
	double w = retry_wait(c, attempt, retry_after, t0);
	if (w < 0)
		return false;
	sleep_for(w);
	return true;
}

static cltfs_err status_error(const http_ctx *c, const char *what, const http_hdrs *h);

static cltfs_err head_once(const http_ctx *c, const char *url, http_hdrs *h)
{
	char sh[1024];
	double t0 = cltfs_now();
	for (int attempt = 1;; attempt++) {
		http_body b = {NULL, NULL, h, UINT64_MAX, 0, 0, false, 0};
		CURLcode rc = perform(c, url, true, NULL, &b, h);
		if (rc == CURLE_OUT_OF_MEMORY)
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		bool again = rc ? transient_curl(rc) : transient_status(h->status);
		if (!again && rc)
			return cltfs_fail(CLTFS_E_IO, "HEAD %s: %s", shown(url, sh, sizeof sh), curl_why(rc));
		if (!again)
			return CLTFS_OK;
		if (!wait_retry(c, attempt, rc ? -1 : h->retry_after, t0)) {
			atomic_fetch_add(&c->st->failures, 1);
			return rc ? cltfs_fail(CLTFS_E_IO, "HEAD %s: %s after %d attempts", shown(url, sh, sizeof sh),
					       curl_why(rc), attempt)
				  : status_error(c, shown(url, sh, sizeof sh), h);
		}
	}
}

static bool is_redirect(long s);
static char *join_url(const char *base, const char *loc);

cltfs_err http_head(const http_ctx *c, const char *url, http_hdrs *h)
{
	/* As huggingface_hub: a relative redirect (a renamed repo, the Hub's
	 * own resolve cache) is the Hub speaking and is followed; one to
	 * another host (a CDN) is the answer. */
	char *cur = strdup(url);
	cltfs_err e = cur ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (int hop = 0; !e; hop++) {
		if ((e = head_once(c, cur, h)) || !is_redirect(h->status) || !h->location || h->location[0] != '/' ||
		    h->location[1] == '/' || hop == MAX_REDIRECTS)
			break;
		char *next = join_url(cur, h->location);
		free(cur);
		if (!(cur = next))
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	free(cur);
	return e;
}

cltfs_err http_status_error(const char *what, const http_hdrs *h)
{
	const char *code = h->error_code, *msg = *h->error_msg ? h->error_msg : "no message";
	if (!strcmp(code, "GatedRepo"))
		return cltfs_fail(CLTFS_E_INVAL,
				  "%s: gated repository: access is restricted (set HF_TOKEN or log in with "
				  "`huggingface-cli login`, with an account that was granted access)",
				  what);
	if (!strcmp(code, "RepoNotFound"))
		return cltfs_fail(CLTFS_E_NOTFOUND,
				  "%s: repository not found (if it is private or gated, set HF_TOKEN or log in)", what);
	if (!strcmp(code, "RevisionNotFound"))
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: revision not found (%s)", what, msg);
	if (!strcmp(code, "EntryNotFound"))
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: file not found in the repository", what);
	if (h->status == 401 || h->status == 403)
		return cltfs_fail(CLTFS_E_INVAL, "%s: HTTP %ld, access refused (%s): check HF_TOKEN", what, h->status,
				  msg);
	if (h->status == 404)
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: HTTP 404 not found", what);
	return cltfs_fail(CLTFS_E_IO, "%s: HTTP %ld%s%s%s%s", what, h->status, *code ? " " : "", code,
			  *h->error_msg ? ": " : "", h->error_msg);
}

/* The text of <tag>...</tag> in an S3 error body, into out ("" if none). */
static void xml_field(const char *body, const char *tag, char *out, size_t n)
{
	char open[64], close[64];
	snprintf(open, sizeof open, "<%s>", tag);
	snprintf(close, sizeof close, "</%s>", tag);
	const char *a = strstr(body, open), *b = a ? strstr(a, close) : NULL;
	*out = 0;
	if (a && b)
		copy_value(out, n, a + strlen(open), (size_t)(b - a - strlen(open)));
}

/* S3's answer to a failed request: its XML names the cause.  A refusal
 * of the credentials says which ones were used (never the secret). */
static cltfs_err s3_status_error(const http_ctx *c, const char *what, const http_hdrs *h)
{
	char code[64], msg[256];
	xml_field(h->errbody, "Code", code, sizeof code);
	xml_field(h->errbody, "Message", msg, sizeof msg);
	if (h->status == 401 || h->status == 403)
		return cltfs_fail(CLTFS_E_INVAL, "%s: HTTP %ld %s%s%s: access refused; credentials: %s", what, h->status,
				  *code ? code : "Forbidden", *msg ? ": " : "", msg, c->aws->source);
	if (h->status == 404)
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: HTTP 404 %s%s%s", what, *code ? code : "not found",
				  *msg ? ": " : "", msg);
	return cltfs_fail(CLTFS_E_IO, "%s: HTTP %ld%s%s%s%s", what, h->status, *code ? " " : "", code, *msg ? ": " : "",
			  msg);
}

static cltfs_err status_error(const http_ctx *c, const char *what, const http_hdrs *h)
{
	return c->aws ? s3_status_error(c, what, h) : http_status_error(what, h);
}

static bool is_redirect(long s) { return s == 301 || s == 302 || s == 303 || s == 307 || s == 308; }

/* Resolve a Location against the URL that sent it. */
static char *join_url(const char *base, const char *loc)
{
	CURLU *u = curl_url();
	char *out = NULL, *res = NULL;
	if (u && !curl_url_set(u, CURLUPART_URL, base, 0) && !curl_url_set(u, CURLUPART_URL, loc, 0) &&
	    !curl_url_get(u, CURLUPART_URL, &out, 0))
		res = strdup(out);
	curl_free(out);
	curl_url_cleanup(u);
	return res;
}

/* ---- a GET as steps ---- */

void http_op_init(http_op *op, const http_ctx *c, const char *url, uint64_t off, uint64_t len, http_sink sink,
		  void *arg, http_hdrs *h)
{
	memset(op, 0, sizeof *op);
	*op = (http_op){.c = c, .url = url, .off = off, .len = len, .h = h, .attempt = 1, .t0 = cltfs_now()};
	op->b = (http_body){sink, arg, h, UINT64_MAX, 0, 0, false, 0};
}

cltfs_err http_op_setup(http_op *op, CURL *e)
{
	if (!op->cur) { /* a new attempt: from the first hop, from the first byte not given yet */
		if (!(op->cur = strdup(op->url)))
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		op->hop = 0;
		op->start = op->off + op->done;
		op->ranged = op->start > 0 || op->len > 0;
		if (op->len)
			snprintf(op->range, sizeof op->range, "%llu-%llu", (unsigned long long)op->start,
				 (unsigned long long)(op->off + op->len - 1));
		else
			snprintf(op->range, sizeof op->range, "%llu-", (unsigned long long)op->start);
		op->b.want = op->len ? op->len - op->done : UINT64_MAX;
		op->b.aborted = 0;
		op->b.ranged = op->ranged;
		op->b.start = op->start;
	}
	op->b.given = 0;
	if (setup(e, op->c, op->cur, false, op->ranged ? op->range : NULL, &op->b, op->h, &op->hl))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	return CLTFS_OK;
}

/* The end of an attempt that did not deliver everything: retry or fail. */
static http_step attempt_failed(http_op *op, CURLcode rc, const char *sh, double *wait, cltfs_err *err)
{
	http_hdrs *h = op->h;
	bool ok_status = op->ranged ? h->status == 206 : h->status == 200;
	bool short_body = !rc && ok_status; /* the body ended early without a curl error */
	bool again = rc ? transient_curl(rc) : short_body || transient_status(h->status);
	if (!again) {
		atomic_fetch_add(&op->c->st->failures, 1);
		*err = rc ? cltfs_fail(CLTFS_E_IO, "GET %s: %s", sh, curl_why(rc))
			  : status_error(op->c, sh, h);
		return HTTP_OP_FAIL;
	}
	if ((*wait = retry_wait(op->c, op->attempt, rc ? -1 : h->retry_after, op->t0)) < 0) {
		atomic_fetch_add(&op->c->st->failures, 1);
		if (rc)
			*err = cltfs_fail(CLTFS_E_IO, "GET %s: %s after %d attempts", sh, curl_why(rc),
					  op->attempt);
		else if (short_body)
			*err = cltfs_fail(CLTFS_E_IO, "GET %s: body ended after %llu of %llu bytes, %d attempts", sh,
					  (unsigned long long)op->done, (unsigned long long)op->len, op->attempt);
		else
			*err = cltfs_wrap(status_error(op->c, sh, h), "after %d attempts", op->attempt);
		return HTTP_OP_FAIL;
	}
	op->attempt++;
	return HTTP_OP_RETRY;
}

/* An answer that is not the one asked for (a proxy's mistake): tried
 * again while the retry budget lasts, as a transient fault. */
static http_step wrong_answer(http_op *op, const char *sh, const char *what, double *wait, cltfs_err *err)
{
	if ((*wait = retry_wait(op->c, op->attempt, -1, op->t0)) < 0) {
		atomic_fetch_add(&op->c->st->failures, 1);
		*err = cltfs_fail(CLTFS_E_IO, "GET %s: %s, %d attempts", sh, what, op->attempt);
		return HTTP_OP_FAIL;
	}
	free(op->cur); /* the next attempt starts again from the first hop */
	op->cur = NULL;
	op->attempt++;
	return HTTP_OP_RETRY;
}

http_step http_op_step(http_op *op, CURL *e, CURLcode rc, double *wait, cltfs_err *err)
{
	char sh[1024];
	http_hdrs *h = op->h;
	after(op->c, e, &op->hl);
	op->done += op->b.given;
	atomic_fetch_add(&op->c->st->bytes, op->b.given);
	op->b.given = 0;
	shown(op->url, sh, sizeof sh);
	if (rc == CURLE_OUT_OF_MEMORY) {
		*err = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		return HTTP_OP_FAIL;
	}
	if (!rc && is_redirect(h->status) && h->location) { /* the next hop of this attempt */
		char *next = join_url(op->cur, h->location);
		if (!next) {
			*err = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			return HTTP_OP_FAIL;
		}
		free(op->cur);
		op->cur = next;
		if (op->hop++ < MAX_REDIRECTS)
			return HTTP_OP_NEXT;
		rc = CURLE_TOO_MANY_REDIRECTS;
	}
	/* A ranged request wants a 206 that starts where asked; a 200 would
	 * be the whole file from byte 0 (on_body gave none of either). */
	bool ok_status = op->ranged ? h->status == 206 : h->status == 200;
	if (op->b.aborted == 3 || (!rc && h->status == 206 && other_range(h, op->start)))
		return wrong_answer(op, sh, "the server answered another range than asked", wait, err);
	if (op->b.aborted == 1)
		return wrong_answer(op, sh, "more bytes than asked for", wait, err);
	if (op->b.aborted) {
		*err = cltfs_wrap(CLTFS_E_IO, "GET %s", sh); /* the sink's message */
		return HTTP_OP_FAIL;
	}
	if (!rc && ok_status && (!op->len || op->done == op->len))
		return HTTP_OP_DONE;
	free(op->cur); /* the next attempt starts again from the first hop */
	op->cur = NULL;
	return attempt_failed(op, rc, sh, wait, err);
}

char *http_op_take_url(http_op *op)
{
	char *u = op->cur;
	op->cur = NULL;
	return u;
}

void http_op_free(http_op *op)
{
	curl_slist_free_all(op->hl);
	op->hl = NULL;
	free(op->cur);
	op->cur = NULL;
}

cltfs_err http_get(const http_ctx *c, const char *url, uint64_t off, uint64_t len, http_sink sink, void *arg,
		   http_hdrs *h, char **final_url)
{
	http_op op;
	http_op_init(&op, c, url, off, len, sink, arg, h);
	cltfs_err err = CLTFS_OK;
	for (;;) {
		CURL *e = thread_handle();
		if (!e) {
			err = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			break;
		}
		if ((err = http_op_setup(&op, e)))
			break;
		double w = 0;
		http_step st = http_op_step(&op, e, curl_easy_perform(e), &w, &err);
		if (st == HTTP_OP_DONE && final_url)
			*final_url = http_op_take_url(&op);
		if (st == HTTP_OP_DONE || st == HTTP_OP_FAIL)
			break;
		if (st == HTTP_OP_RETRY)
			sleep_for(w);
	}
	http_op_free(&op);
	return err;
}

/* An answer's body in memory, for http_send. */
typedef struct {
	char *p;
	size_t n, cap;
} answer;

static bool answer_sink(void *arg, const void *p, size_t n)
{
	answer *a = arg;
	if (a->n + n > (64u << 20) || !cltfs_reserve(&a->p, &a->cap, a->n + n + 1)) {
		cltfs_fail(CLTFS_E_NOMEM, "out of memory for an answer of %zu bytes", a->n + n);
		return false;
	}
	memcpy(a->p + a->n, p, n);
	a->n += n;
	a->p[a->n] = 0;
	return true;
}

/* One attempt of http_send: its curl result. */
static CURLcode send_once(const http_ctx *c, const char *method, const char *url, const void *body, size_t len,
			  http_body *b, http_hdrs *h)
{
	CURL *e = thread_handle();
	if (!e)
		return CURLE_OUT_OF_MEMORY;
	struct curl_slist *hl;
	CURLcode rc = setup(e, c, url, false, NULL, b, h, &hl);
	if (rc)
		return rc;
	curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	if (strcmp(method, "GET") && strcmp(method, "DELETE")) {
		/* Bytes, not the form libcurl would otherwise say a body is (S3
		 * keeps an object's Content-Type). */
		struct curl_slist *l = curl_slist_append(hl, "Content-Type: application/octet-stream");
		if (!l) {
			curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
			curl_slist_free_all(hl); /* it may hold the token */
			return CURLE_OUT_OF_MEMORY;
		}
		hl = l;
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	}
	rc = curl_easy_perform(e);
	after(c, e, &hl);
	return rc;
}

cltfs_err http_send(const http_ctx *c, const char *method, const char *url, const void *body, size_t len,
		    char **out, http_hdrs *h)
{
	char sh[1024];
	shown(url, sh, sizeof sh);
	double t0 = cltfs_now();
	for (int attempt = 1;; attempt++) {
		answer a = {0};
		http_body b = {out ? answer_sink : NULL, &a, h, UINT64_MAX, 0, 0, false, 0};
		CURLcode rc = send_once(c, method, url, body, len, &b, h);
		atomic_fetch_add(&c->st->bytes, len);
		if (rc == CURLE_OUT_OF_MEMORY || b.aborted) {
			free(a.p);
			return cltfs_fail(CLTFS_E_NOMEM, "%s %s: out of memory", method, sh);
		}
		bool ok = !rc && h->status >= 200 && h->status <= 299;
		bool again = rc ? transient_curl(rc) : !ok && transient_status(h->status);
		if (ok && out)
			*out = a.p ? a.p : strdup("");
		else
			free(a.p);
		if (ok)
			return out && !*out ? cltfs_fail(CLTFS_E_NOMEM, "out of memory") : CLTFS_OK;
		if (again && wait_retry(c, attempt, rc ? -1 : h->retry_after, t0))
			continue;
		atomic_fetch_add(&c->st->failures, 1);
		if (rc)
			return cltfs_fail(CLTFS_E_IO, "%s %s: %s after %d attempts", method, sh, curl_why(rc),
					  attempt);
		return cltfs_wrap(status_error(c, sh, h), "%s, after %d attempts", method, attempt);
	}
}

char *http_escape(const char *s, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(s);
	char *out = malloc(3 * n + 1), *o = out;
	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (isalnum(*p) || strchr("-._~", *p) || (keep_slash && *p == '/')) {
			*o++ = (char)*p;
		} else {
			*o++ = '%';
			*o++ = hex[*p >> 4];
			*o++ = hex[*p & 15];
		}
	}
	*o = 0;
	return out;
}
