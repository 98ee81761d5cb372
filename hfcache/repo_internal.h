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

#endif
