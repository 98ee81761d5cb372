/* ranges.c: many range requests at once, on one libcurl multi handle.
 *
 * Over a link with tens of milliseconds per round trip, a request is
 * latency-bound: what fills the link is several requests in flight.  One
 * thread drives them all on one multi handle, which owns the connections:
 * HTTP/1.1 connections, at most MAX_HOST_CONNS to a host, each kept alive
 * for the next request (requests past the limit wait in libcurl's queue
 * for a free one).  Not HTTP/2, though CDNs offer it: libcurl then puts
 * every request on one connection, and one TCP connection carries at
 * most its window a round trip.  Over a link of 50 ms round trips and a
 * 4 MiB window a connection (bench/h2_bench.py: a proxy that holds back
 * both, as Linux's default receive buffer bounds the window), 8 ranges of
 * 8 MiB at once took 1.13 s as streams of one HTTP/2 connection, 0.42 s
 * on 8 HTTP/1.1 connections (0.61 s as HTTP/2 with one stream a
 * connection, measured by hand: the other requests wait for the first's
 * ALPN before connecting).
 *
 * Each request is an http_op (http.c), so it does what hf_read_range does
 * blocking, step for step: the remembered redirect target (a CDN's URL)
 * first, and when that fails, the Hub's resolve URL; redirects followed by
 * hand (the token only to the Hub); 429, 5xx, resets and stalls retried
 * with backoff; a body cut short resumed with Range from the first byte not
 * yet given, so the caller sees every byte once, in order.  A retry's wait
 * is a timer of the loop, not a sleep: the other requests go on meanwhile.
 */
#include "repo_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* HTTP/1.1 connections to one host at once.  Enough for the bytes a reader
 * keeps in flight (a few requests of megabytes each), and few enough to be
 * a polite client of the Hub's CDN. */
#define MAX_HOST_CONNS 8
#define POLL_MAX_MS 1000

typedef struct xfer xfer;
struct xfer {
	xfer *next;
	hf_ranges *q;
	char *path, *hub_url;
	char what[1024]; /* hf://<id>@<commit>/<path>, for messages */
	char *url;       /* the op's first hop */
	bool via_cache;  /* url is a remembered redirect target */
	bool remembered; /* where the bytes came from is remembered */
	uint64_t off, len, given;
	http_op op;
	http_hdrs h;
	CURL *e;
	double wake; /* a retry waiting for its time */
	hf_range_cb cb;
	void *arg;
};

struct hf_ranges {
	hf_repo *r;
	CURLM *m;
	pthread_mutex_t mu; /* guards incoming, stop, started */
	xfer *incoming;
	bool stop, started;
	pthread_t thr;
	/* the loop thread's own */
	xfer *waiting; /* retries, until their wake */
	xfer *active;  /* on the multi handle */
};

static void unlink_x(xfer **list, xfer *x)
{
	for (xfer **p = list; *p; p = &(*p)->next)
		if (*p == x) {
			*p = x->next;
			return;
		}
}

/* The end of a request: the caller hears of it, then it is freed. */
static void finish(xfer *x, cltfs_err e)
{
	x->cb.done(x->arg, e);
	http_op_free(&x->op);
	http_hdrs_free(&x->h);
	if (x->e)
		curl_easy_cleanup(x->e);
	free(x->url);
	free(x->hub_url);
	free(x->path);
	free(x);
}

static bool on_data(void *arg, const void *p, size_t n)
{
	xfer *x = arg;
	/* The first bytes from a redirect target: later requests for this file
	 * go there at once, without the Hub's round trip (hf_read_range
	 * remembers it only once its request is done; here requests for one
	 * file overlap, so it is remembered as soon as it is known to work). */
	if (!x->via_cache && !x->remembered && x->op.cur && strcmp(x->op.cur, x->hub_url)) {
		hf_repo_remember(x->q->r, x->path, x->op.cur);
		x->remembered = true;
	}
	x->given += n;
	if (x->cb.data(x->arg, p, n))
		return true;
	cltfs_fail(CLTFS_E_IO, "the reader of %s stopped the transfer", x->what);
	return false;
}

/* Put x's next request on the multi handle. */
static cltfs_err send_x(hf_ranges *q, xfer *x)
{
	curl_easy_reset(x->e);
	cltfs_err e = http_op_setup(&x->op, x->e);
	if (e)
		return e;
	curl_easy_setopt(x->e, CURLOPT_PRIVATE, x);
	curl_easy_setopt(x->e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1); /* a connection each: above */
	if (curl_multi_add_handle(q->m, x->e))
		return cltfs_fail(CLTFS_E_IO, "%s: libcurl refused a transfer", x->what);
	x->next = q->active;
	q->active = x;
	return CLTFS_OK;
}

/* A new op for what x has not yet given: from the remembered redirect
 * target when there is one, else from the Hub. */
static cltfs_err begin(hf_ranges *q, xfer *x)
{
	free(x->url);
	x->url = x->via_cache ? hf_repo_location(q->r, x->path) : NULL;
	if (!x->url) {
		x->via_cache = false;
		x->url = strdup(x->hub_url);
		if (!x->url)
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	http_op_free(&x->op);
	http_op_init(&x->op, hf_repo_http(q->r), x->url, x->off + x->given, x->len - x->given, on_data, x, &x->h);
	return send_x(q, x);
}

/* x's request ended with rc: the op says what next. */
static void step(hf_ranges *q, xfer *x, CURLcode rc)
{
	double wait = 0;
	cltfs_err e = CLTFS_OK;
	switch (http_op_step(&x->op, x->e, rc, &wait, &e)) {
	case HTTP_OP_NEXT:
		if ((e = send_x(q, x)))
			finish(x, cltfs_wrap(e, "%s", x->what));
		return;
	case HTTP_OP_RETRY:
		x->wake = cltfs_now() + wait;
		x->next = q->waiting;
		q->waiting = x;
		return;
	case HTTP_OP_DONE:
		if (!x->via_cache && !x->remembered && x->op.cur && strcmp(x->op.cur, x->hub_url))
			hf_repo_remember(q->r, x->path, x->op.cur);
		finish(x, CLTFS_OK);
		return;
	case HTTP_OP_FAIL:
		break;
	}
	/* A remembered CDN URL that fails (expired: 403, 404, 410, or any
	 * other failure) is forgotten, and the Hub asked again. */
	if (x->via_cache && e != CLTFS_E_NOMEM) {
		hf_repo_remember(q->r, x->path, NULL);
		x->via_cache = false;
		if (!(e = begin(q, x)))
			return;
	}
	finish(x, cltfs_wrap(e, "%s", x->what));
}

static void take_incoming(hf_ranges *q, bool *stop)
{
	pthread_mutex_lock(&q->mu);
	xfer *in = NULL;
	while (q->incoming) { /* the list is newest first: begin the oldest first */
		xfer *x = q->incoming;
		q->incoming = x->next;
		x->next = in;
		in = x;
	}
	*stop = q->stop;
	pthread_mutex_unlock(&q->mu);
	while (in) {
		xfer *x = in;
		in = x->next;
		cltfs_err e = *stop ? cltfs_fail(CLTFS_E_IO, "%s: cancelled", x->what) : begin(q, x);
		if (e)
			finish(x, e);
	}
}

/* Retries whose time has come go back on the multi handle. */
static void wake_retries(hf_ranges *q)
{
	double now = cltfs_now();
	for (xfer **p = &q->waiting; *p;) {
		xfer *x = *p;
		if (x->wake > now) {
			p = &x->next;
			continue;
		}
		*p = x->next;
		cltfs_err e = send_x(q, x);
		if (e)
			finish(x, cltfs_wrap(e, "%s", x->what));
	}
}

/* How long the loop may sleep: until the next retry's time, capped (libcurl
 * shortens it to its own timers). */
static int sleep_ms(hf_ranges *q)
{
	double now = cltfs_now(), next = now + POLL_MAX_MS / 1000.0;
	for (xfer *x = q->waiting; x; x = x->next)
		next = x->wake < next ? x->wake : next;
	return next > now ? (int)((next - now) * 1000.0) + 1 : 0;
}

static void cancel_all(hf_ranges *q)
{
	while (q->active) {
		xfer *x = q->active;
		q->active = x->next;
		curl_multi_remove_handle(q->m, x->e);
		finish(x, cltfs_fail(CLTFS_E_IO, "%s: cancelled", x->what));
	}
	while (q->waiting) {
		xfer *x = q->waiting;
		q->waiting = x->next;
		finish(x, cltfs_fail(CLTFS_E_IO, "%s: cancelled", x->what));
	}
}

static void *loop_main(void *arg)
{
	hf_ranges *q = arg;
	for (;;) {
		bool stop;
		take_incoming(q, &stop);
		if (stop)
			break;
		wake_retries(q);
		int running = 0, left = 0;
		curl_multi_perform(q->m, &running);
		CURLMsg *msg;
		while ((msg = curl_multi_info_read(q->m, &left))) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			xfer *x = NULL;
			CURLcode rc = msg->data.result;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
			curl_multi_remove_handle(q->m, msg->easy_handle);
			unlink_x(&q->active, x);
			step(q, x, rc);
		}
		curl_multi_poll(q->m, NULL, 0, sleep_ms(q), NULL);
	}
	cancel_all(q);
	return NULL;
}

cltfs_err hf_ranges_open(hf_repo *r, hf_ranges **out)
{
	hf_ranges *q = calloc(1, sizeof *q);
	if (!q)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	q->r = r;
	if (!(q->m = curl_multi_init())) {
		free(q);
		return cltfs_fail(CLTFS_E_IO, "libcurl: cannot make a multi handle");
	}
	curl_multi_setopt(q->m, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
	curl_multi_setopt(q->m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)MAX_HOST_CONNS);
	curl_multi_setopt(q->m, CURLMOPT_MAXCONNECTS, (long)(2 * MAX_HOST_CONNS));
	pthread_mutex_init(&q->mu, NULL);
	*out = q;
	return CLTFS_OK;
}

cltfs_err hf_ranges_get(hf_ranges *q, const char *path, uint64_t off, uint64_t len, hf_range_cb cb, void *arg)
{
	char what[1024];
	hf_repo_what(q->r, path, what, sizeof what);
	if (hf_repo_offline(q->r))
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: offline (HF_HUB_OFFLINE or CLTFS_OFFLINE) and bytes %llu..%llu "
				  "are not cached", what, (unsigned long long)off, (unsigned long long)(off + len));
	xfer *x = calloc(1, sizeof *x);
	if (!x || !(x->path = strdup(path)) || !(x->hub_url = hf_repo_resolve_url(q->r, path)) ||
	    !(x->e = curl_easy_init())) {
		if (x) {
			free(x->path);
			free(x->hub_url);
			free(x);
		}
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	*x = (xfer){.q = q, .path = x->path, .hub_url = x->hub_url, .e = x->e, .via_cache = true, .off = off,
		    .len = len, .cb = cb, .arg = arg};
	memcpy(x->what, what, sizeof what);
	pthread_mutex_lock(&q->mu);
	cltfs_err e = CLTFS_OK;
	if (!q->started && !q->stop) {
		if (pthread_create(&q->thr, NULL, loop_main, q))
			e = cltfs_fail(CLTFS_E_IO, "%s: cannot start the thread that fetches ranges", what);
		else
			q->started = true;
	}
	if (!e && q->stop)
		e = cltfs_fail(CLTFS_E_IO, "%s: cancelled", what);
	if (!e) {
		x->next = q->incoming;
		q->incoming = x;
	}
	pthread_mutex_unlock(&q->mu);
	if (e) {
		curl_easy_cleanup(x->e);
		free(x->path);
		free(x->hub_url);
		free(x);
		return e;
	}
	curl_multi_wakeup(q->m);
	return CLTFS_OK;
}

void hf_ranges_close(hf_ranges *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->mu);
	q->stop = true;
	bool started = q->started;
	pthread_mutex_unlock(&q->mu);
	if (started) {
		curl_multi_wakeup(q->m);
		pthread_join(q->thr, NULL);
	}
	bool stop;
	take_incoming(q, &stop); /* none without a thread; cancelled */
	curl_multi_cleanup(q->m);
	pthread_mutex_destroy(&q->mu);
	free(q);
}
