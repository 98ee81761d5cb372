/* http.h: HTTP requests for the Hub client (inside hfcache/ only).
 *
 * One libcurl handle per thread, kept alive between requests.  Redirects
 * are followed here, not by libcurl, so that the token goes to the
 * endpoint's host alone and the final URL can be remembered.  A GET is
 * also a state machine (http_op) for a caller that runs many at once on a
 * multi handle (ranges.c): the same steps, retries and messages.
 */
#ifndef CLTFS_HF_HTTP_H
#define CLTFS_HF_HTTP_H

#include "hfcache.h"

#include <curl/curl.h>

typedef struct {
	long status;
	char etag[160], linked_etag[160], commit[64], error_code[64], error_msg[256];
	uint64_t linked_size, content_length, range_start;
	bool has_linked_size, has_length, has_range;
	double retry_after; /* seconds, < 0 when absent */
	char *location;     /* malloc'd, of the last response */
	char *link_next;    /* malloc'd: the rel="next" URL of a Link header */
	char errbody[1024]; /* the start of an error answer's body (S3 says why there) */
	size_t errlen;
} http_hdrs;

void http_hdrs_free(http_hdrs *h);

/* Body bytes as they arrive; false aborts the transfer. */
typedef bool (*http_sink)(void *arg, const void *p, size_t n);

/* AWS Signature Version 4 (S3): libcurl signs every request
 * (CURLOPT_AWS_SIGV4); the payload is not hashed (UNSIGNED-PAYLOAD, as
 * S3 allows), so a body can be streamed.  No credentials: unsigned. */
typedef struct {
	char sigv4[96];     /* "aws:amz:<region>:s3" */
	char *userpwd;      /* "<key id>:<secret>", or NULL: never in a message */
	char *token;        /* AWS_SESSION_TOKEN (x-amz-security-token), or NULL */
	char source[512];   /* where the credentials came from, for messages */
	char ca_bundle[4096]; /* AWS_CA_BUNDLE or the profile's ca_bundle; "": none */
} http_aws;

typedef struct {
	const hf_config *cfg;
	hf_stats *st;
	const http_aws *aws; /* NULL: the Hub (a bearer token) */
} http_ctx;

/* Once per process, before threads. */
cltfs_err http_init(void);

/* HEAD url, redirects not followed (huggingface_hub reads the Hub's own
 * headers).  Transient failures are retried; any final status is returned
 * in h->status with CLTFS_OK. */
cltfs_err http_head(const http_ctx *c, const char *url, http_hdrs *h);

/* GET url, following redirects, the body to sink.  len > 0 asks for bytes
 * [off, off+len) and insists on getting exactly those; len == 0 asks from
 * off to the end.  After a failure mid-body, a retry continues where the
 * sink stopped (with Range), so sinks see every byte once.  A final status
 * other than 200/206 is an error whose message names the URL (never the
 * token) and the Hub's error code; h->status tells which.  *final_url, when
 * asked for, is the URL that answered (after redirects), malloc'd. */
cltfs_err http_get(const http_ctx *c, const char *url, uint64_t off, uint64_t len, http_sink sink, void *arg,
		   http_hdrs *h, char **final_url);

/* A request of any method with a body from memory (len bytes; body may be
 * NULL when len is 0), retried as http_get is (the body sent again whole,
 * the answer taken again), no redirects.  *out (when out is not NULL):
 * the answer's body, NUL-terminated, malloc'd.  A final status other than
 * 2xx is an error as http_get's; h holds the last answer's headers (the
 * ETag of an uploaded part). */
cltfs_err http_send(const http_ctx *c, const char *method, const char *url, const void *body, size_t len,
		    char **out, http_hdrs *h);

/* ---- a GET as steps ---- */

typedef struct {
	http_sink sink;
	void *arg;
	http_hdrs *h;
	uint64_t want;  /* bytes the sink may still take; UINT64_MAX: any */
	uint64_t given; /* bytes given to the sink since the last step */
	int aborted;    /* 1: more bytes than asked for, 2: the sink said stop,
			 * 3: another range than asked (none of it given) */
	bool ranged;    /* the body must be a 206 from byte start */
	uint64_t start;
} http_body;

/* http_get's request: init, then for each request setup a handle, perform
 * it (alone or on a multi handle) and step; free at the end.  The fields
 * are the op's own. */
typedef struct {
	const http_ctx *c;
	const char *url;      /* the first hop, the caller's: kept while the op runs */
	uint64_t off, len;    /* as http_get */
	http_hdrs *h;         /* the last response's headers */
	uint64_t done;        /* body bytes given to the sink, over all attempts */
	uint64_t start;       /* the first byte this attempt asked for */
	bool ranged;
	int attempt, hop;
	double t0;
	char *cur;            /* the URL asked now (malloc'd), NULL between attempts */
	http_body b;
	struct curl_slist *hl;
	char range[64];
} http_op;

typedef enum {
	HTTP_OP_DONE,  /* every byte asked for went to the sink */
	HTTP_OP_NEXT,  /* a redirect: set up and perform again, at once */
	HTTP_OP_RETRY, /* a transient failure: set up and perform again after *wait s */
	HTTP_OP_FAIL,  /* *err, with its message (naming the URL, never the token) */
} http_step;

void http_op_init(http_op *op, const http_ctx *c, const char *url, uint64_t off, uint64_t len, http_sink sink,
		  void *arg, http_hdrs *h);
/* Set e (fresh or curl_easy_reset) up for the op's next request.
 * CLTFS_E_NOMEM. */
cltfs_err http_op_setup(http_op *op, CURL *e);
/* After e performed what http_op_setup set up, with result rc: what next. */
http_step http_op_step(http_op *op, CURL *e, CURLcode rc, double *wait, cltfs_err *err);
/* After HTTP_OP_DONE: the URL that answered, handed over (malloc'd). */
char *http_op_take_url(http_op *op);
void http_op_free(http_op *op);

/* The message for a failed status, from the Hub's X-Error-Code. */
cltfs_err http_status_error(const char *what, const http_hdrs *h);

/* Percent-encode a path for a URL, keeping '/' when keep_slash. */
char *http_escape(const char *s, bool keep_slash);

#endif
