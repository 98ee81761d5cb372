/* repo_internal.h: what ranges.c needs of a repo (repo.c defines it); not
 * part of hfcache.h's interface. */
#ifndef CLTFS_HF_REPO_INTERNAL_H
#define CLTFS_HF_REPO_INTERNAL_H

#include "http.h"

const http_ctx *hf_repo_http(hf_repo *r);
bool hf_repo_offline(const hf_repo *r);
/* <endpoint>/<type>/<name>/resolve/<commit>/<path, escaped>, malloc'd;
 * NULL when out of memory. */
char *hf_repo_resolve_url(hf_repo *r, const char *path);
/* "hf://<id>@<commit, 12 digits>/<path>": how messages name a file. */
void hf_repo_what(const hf_repo *r, const char *path, char *buf, size_t n);
/* The URL a path was last redirected to (a CDN's), while it is fresh:
 * malloc'd, or NULL. */
char *hf_repo_location(hf_repo *r, const char *path);
/* Remember url as where path's bytes are; NULL forgets it (it failed). */
void hf_repo_remember(hf_repo *r, const char *path, const char *url);
/* <hub_cache>/.locks/<repo folder> */
const char *hf_repo_lockdir(const hf_repo *r);

/* ---- share.c: what other huggingface_hub versions expect of the cache ---- */

/* <hub_cache>/CACHEDIR.TAG, as huggingface_hub 1.x writes it, when missing
 * (best effort: a failure is logged). */
void hf_cache_tag(const char *hub_cache);
/* The listing e (sorted by path) as trees/<commit>.json, huggingface_hub's
 * format_version 1, unless there is one (a commit's listing never
 * changes).  Nothing is written for a listing that lacks a file's blob id.
 * CLTFS_E_IO, _NOMEM. */
cltfs_err hf_tree_write(hf_repo *r, const hf_entry *e, size_t n);
/* The sizes trees/<commit>.json gives the files of e (sorted by path);
 * nothing when there is none or it is not one huggingface_hub reads. */
void hf_tree_sizes(hf_repo *r, hf_entry *e, size_t n);
/* Under the blob's lock: of the partial downloads of etag in blobs (either
 * huggingface_hub's naming), keep the longest that may be a prefix of a
 * size-byte blob as <etag>.incomplete (keep) and remove the others.
 * CLTFS_E_IO. */
cltfs_err hf_partials_tidy(const char *blobs, const char *etag, uint64_t size, bool keep);
/* Remove the partial downloads of blobs that are there whole, each under
 * its lock (skipped while someone holds it).  Failures are logged. */
void hf_partials_sweep(hf_repo *r);
/* A blob's digest, to check it against its etag: sha256 for a 64-hex etag
 * (LFS), the git blob sha1 for a 40-hex one (the blob's size goes into
 * it); *out NULL for any other etag, which is not checked (the functions
 * below take NULL as "nothing to check").  CLTFS_E_NOMEM. */
typedef struct hf_digest hf_digest;
cltfs_err hf_digest_new(const char *etag, uint64_t size, hf_digest **out);
/* The next bytes of the blob.  CLTFS_E_NOMEM (the digest failed). */
cltfs_err hf_digest_add(hf_digest *g, const void *p, size_t n);
/* Bytes [0, n) of fd (at path, for messages): what an earlier download
 * left.  CLTFS_E_IO, _NOMEM. */
cltfs_err hf_digest_add_fd(hf_digest *g, int fd, uint64_t n, const char *path);
/* Once every byte was added: CLTFS_E_CORRUPT (naming path) when they do not
 * hash to the etag.  The digest is spent. */
cltfs_err hf_digest_check(hf_digest *g, const char *path);
void hf_digest_free(hf_digest *g);
/* The size bytes of fd against etag, as above, at once. */
cltfs_err hf_blob_check(int fd, const char *path, const char *etag, uint64_t size);

#endif
