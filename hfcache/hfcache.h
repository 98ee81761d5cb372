/* hfcache.h: the Hugging Face Hub client and the HF cache, shared with
 * huggingface_hub.
 *
 *   config   - HF_ENDPOINT, HF_TOKEN / $HF_HOME/token, HF_HOME, HF_HUB_CACHE,
 *              XDG_CACHE_HOME, HF_HUB_OFFLINE, as huggingface_hub reads them
 *   repo     - hf://datasets/owner/name[@rev], its revision resolved to one
 *              commit when opened, so that a mount never mixes revisions
 *   files    - whole files into the cache layout huggingface_hub uses
 *              (blobs/<etag>, snapshots/<commit>/<path> -> ../blobs/<etag>,
 *              refs/<rev>, .no_exist/, .locks/, resumable .incomplete), also
 *              as a background download that readers follow as it grows
 *   ranges   - byte ranges of a file of the repo, not cached (chunk frames)
 *
 * Every request retries 429 (honouring Retry-After), 5xx, resets and
 * truncated bodies with exponential backoff, bounded in count and time.
 * The token is sent to the endpoint's host only, never after a redirect to
 * another host, and never appears in a message.  No FUSE here: fs/ calls
 * this library, never the reverse.
 */
#ifndef CLTFS_HFCACHE_H
#define CLTFS_HFCACHE_H

#include "codec.h"

#include <stdatomic.h>

typedef struct {
	char *endpoint;  /* no trailing slash */
	char *token;     /* NULL when there is none */
	char *hub_cache; /* the folder holding datasets--owner--name/ */
	bool offline;
	int retries;     /* attempts after the first (CLTFS_HUB_RETRIES, default 5) */
	int backoff_ms;  /* first wait (CLTFS_HUB_BACKOFF_MS, default 500), doubling */
	char *ca_file;   /* CA certificates: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or SSL_CERT_FILE; NULL: the system's */
	char *ca_dir;    /* SSL_CERT_DIR; NULL: the system's */
} hf_config;

/* From the environment, as huggingface_hub does.  CLTFS_E_INVAL (an
 * unusable HF_ENDPOINT or CLTFS_HUB_* value, a CA file or folder that
 * cannot be read: the message names it), _NOMEM. */
cltfs_err hf_config_from_env(hf_config *c);
void hf_config_free(hf_config *c);

/* Does s name a Hub repo: "hf://datasets/owner/name[@rev]" (a dataset),
 * "hf://models/owner/name[@rev]" or "hf://owner/name[@rev]" (a model, as
 * huggingface_hub's HfFileSystem reads it)? */
bool hf_is_url(const char *s);
/* hf_is_url, or an S3 prefix "s3://BUCKET[/PREFIX]": what hf_repo_open
 * opens. */
bool hf_is_remote_url(const char *s);

typedef struct {
	atomic_ullong requests, bytes, retries, failures;
	/* The shortest time seen from sending a request to the first byte of
	 * its answer, in microseconds (0: none yet): the link's round trip. */
	atomic_ullong rtt_us;
} hf_stats;

typedef struct hf_repo hf_repo;
/* Parse url and resolve its revision (default main) to a commit: with the
 * Hub's revision API, or offline from refs/ in the cache.  Writes
 * refs/<rev> when the revision is a branch or tag.  CLTFS_E_INVAL (a URL
 * that is not one of hf_is_url's), _UNSUPPORTED (spaces), _NOTFOUND (no
 * such repo or revision; offline: not in the cache), _IO (the Hub did not
 * answer, or refused: a gated or private repo says "set HF_TOKEN"),
 * _FORMAT (a reply or a refs/ file that is not what the Hub writes), _NOMEM. */
cltfs_err hf_repo_open(const hf_config *cfg, const char *url, hf_repo **out);
/* NULL is a no-op; downloads must be cancelled first. */
void hf_repo_close(hf_repo *r);
const char *hf_repo_commit(const hf_repo *r);
/* "datasets/owner/name" */
const char *hf_repo_id(const hf_repo *r);
/* The repo's folder in the cache: <hub_cache>/datasets--owner--name */
const char *hf_repo_folder(const hf_repo *r);
/* How messages name it: "hf://datasets/owner/name@<commit, 12 digits>",
 * or "s3://bucket/prefix". */
const char *hf_repo_name(const hf_repo *r);
/* An S3 prefix (s3://BUCKET/PREFIX, hfcache/s3.h), not a Hub repo: the
 * same requests, files and ranges, no HF cache layout (its files are
 * fetched whole into hf_repo_folder/snapshots/latest when they changed). */
bool hf_repo_is_s3(const hf_repo *r);
hf_stats *hf_repo_stats(hf_repo *r);

typedef struct {
	char *path;
	uint64_t size;
	bool dir;
	/* What the Hub's listing says of a file, for trees/<commit>.json (NULL
	 * when it says nothing): its git blob sha1 ("oid"), its LFS sha256
	 * ("lfs.oid") and its xet hash ("xetHash"). */
	char *blob_id, *lfs_sha256, *xet_hash;
} hf_entry;
/* Every file and directory of the commit, sorted by path: the Hub's tree
 * listing (all pages), or offline, what the cache's snapshot holds (with
 * the sizes of trees/<commit>.json where it has them).  Online, the
 * listing is also written where huggingface_hub >= 1.22 keeps it,
 * trees/<commit>.json, so that its offline snapshot_download of the
 * commit works on a cache that cltfs filled.  hf_repo_open's errors;
 * CLTFS_E_FORMAT for a path that would escape the snapshot folder. */
cltfs_err hf_list(hf_repo *r, hf_entry **out, size_t *n);
void hf_entries_free(hf_entry *e, size_t n);

/* The file in the cache, downloaded whole if it is not there yet: its
 * snapshot path, malloc'd.  CLTFS_E_NOTFOUND when the repo has no such
 * file (remembered in .no_exist/) or, offline, when it is not cached;
 * _INVAL for a path outside the repo; _IO (the download failed after its
 * retries: the message names the URL), _CORRUPT (it ended short), _NOMEM. */
cltfs_err hf_fetch(hf_repo *r, const char *path, char **local);

/* A download in the background that readers follow as bytes arrive.
 * start: hf_fetch's errors for what is known at once (no such file,
 * offline); later failures come from hf_download_pread. */
typedef struct hf_download hf_download;
cltfs_err hf_download_start(hf_repo *r, const char *path, hf_download **out);
/* Read [off, off+len) once it has arrived (or the file ended): *got bytes.
 * A download that failed fails every read that needs bytes it lacks. */
cltfs_err hf_download_pread(hf_download *d, void *buf, size_t len, uint64_t off, size_t *got);
/* Another reference to share a running download. */
hf_download *hf_download_ref(hf_download *d);
/* Ended with an error: a new download may succeed where it failed. */
bool hf_download_failed(hf_download *d);
/* Stop a running download (what arrived stays, for a later resume) and
 * wait for its thread to let go: before closing the repo. */
void hf_download_cancel(hf_download *d);
/* Drop the caller's reference; the download goes on to the end. */
void hf_download_release(hf_download *d);

/* Bytes [off, off+len) of a file of the commit into dst, exactly, or an
 * error: never short or wrong bytes.  Redirect targets are remembered for
 * a while so that sequential ranges skip the Hub's round trip.
 * CLTFS_E_NOTFOUND (no such file; offline: nothing is fetched), _IO (after
 * the retries: the message names the URL), _NOMEM. */
cltfs_err hf_read_range(hf_repo *r, const char *path, uint64_t off, size_t len, void *dst);

/* Ask the Hub where path's bytes are served from (a HEAD: its redirect to
 * the CDN) and remember it as hf_read_range and ranges do, so that the
 * first read of path skips the Hub's round trip.  Nothing to do for a
 * bucket, offline, or a file the Hub serves itself.  The errors of the
 * request (a later read asks the Hub again in any case). */
cltfs_err hf_locate(hf_repo *r, const char *path);

/* Upload the first size bytes of the file at local to path under an S3
 * prefix (hf_repo_is_s3): one PUT, or a multipart upload resumed from its
 * journal after a kill (s3.h).  *done (may be NULL) counts the bytes sent.
 * CLTFS_E_UNSUPPORTED for a Hub repo; the errors of the requests
 * (CLTFS_E_INVAL: credentials refused, _IO, ...) and of the file. */
cltfs_err hf_upload(hf_repo *r, const char *path, const char *local, uint64_t size, atomic_ullong *done);

/* Ranges in flight: many range requests at once, driven by one thread on
 * one libcurl multi handle, so that they share connections (HTTP/1.1
 * keep-alive, up to a few connections per host: not HTTP/2's one
 * connection, whose TCP window caps it over a far link; ranges.c).  Each
 * request follows redirects, retries and resumes exactly as hf_read_range
 * does, and gives every byte once, in order, as it arrives.  The thread starts with the first request (not at
 * open: threads do not survive a fork). */
typedef struct hf_ranges hf_ranges;
typedef struct {
	/* Bytes of the range as they arrive, in order; false stops the request
	 * (it then ends with CLTFS_E_IO). */
	bool (*data)(void *arg, const void *p, size_t n);
	/* The end, once: CLTFS_OK when every byte came, else the error, whose
	 * message (cltfs_errmsg() of the calling thread) names the file, the
	 * URL and the cause.  Called on the ranges' thread, or on the caller's
	 * when hf_ranges_close cancels what is still in flight. */
	void (*done)(void *arg, cltfs_err e);
} hf_range_cb;
/* CLTFS_E_NOMEM, _IO (libcurl refused). */
cltfs_err hf_ranges_open(hf_repo *r, hf_ranges **out);
/* Ask for bytes [off, off+len) of a file of the commit (len > 0); cb's
 * functions are called later, never from inside this call.
 * CLTFS_E_NOTFOUND offline (nothing is fetched), _NOMEM, _IO (no thread). */
cltfs_err hf_ranges_get(hf_ranges *q, const char *path, uint64_t off, uint64_t len, hf_range_cb cb, void *arg);
/* Stop: requests still in flight end with CLTFS_E_IO ("cancelled").  NULL
 * is a no-op.  Before hf_repo_close. */
void hf_ranges_close(hf_ranges *q);

#endif
