/* http.h: HTTP requests for the Hub client (inside hfcache/ only).
 *
 * One libcurl handle per thread, kept alive between requests.  Redirects
 * are followed here, not by libcurl, so that the token goes to the
 * endpoint's host alone and the final URL can be remembered.
 */
#ifndef CLTFS_HF_HTTP_H
#define CLTFS_HF_HTTP_H

#include "hfcache.h"

typedef struct {
	long status;
	char etag[160], linked_etag[160], commit[64], error_code[64], error_msg[256];
	uint64_t linked_size, content_length, range_start;
	bool has_linked_size, has_length, has_range;
	double retry_after; /* seconds, < 0 when absent */
	char *location;     /* malloc'd, of the last response */
	char *link_next;    /* malloc'd: the rel="next" URL of a Link header */
} http_hdrs;

void http_hdrs_free(http_hdrs *h);

/* Body bytes as they arrive; false aborts the transfer. */
typedef bool (*http_sink)(void *arg, const void *p, size_t n);

typedef struct {
	const hf_config *cfg;
	hf_stats *st;
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

/* The message for a failed status, from the Hub's X-Error-Code. */
cltfs_err http_status_error(const char *what, const http_hdrs *h);

/* Percent-encode a path for a URL, keeping '/' when keep_slash. */
char *http_escape(const char *s, bool keep_slash);

#endif
