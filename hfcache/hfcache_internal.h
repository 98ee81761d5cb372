/* hfcache_internal.h: the parsers of the Hub's JSON answers, apart from the
 * requests that fetch them, for repo.c, the tests and the fuzzers (not part
 * of hfcache.h's interface).  They do no I/O: the bytes in, a result out.
 */
#ifndef CLTFS_HFCACHE_INTERNAL_H
#define CLTFS_HFCACHE_INTERNAL_H

#include "hfcache.h"

/* The commit of an answer of /api/<type>/<name>/revision/<rev>: its "sha",
 * 40 lowercase hex digits, into commit (NUL-terminated), which is left as
 * it was on failure.  what names the request in messages.
 * CLTFS_E_FORMAT (the answer is not JSON, or has no such sha). */
cltfs_err hf_parse_revision(const char *json, size_t len, const char *what, char commit[41]);

/* A growing list of entries; free it with hf_entries_free(l.e, l.n). */
typedef struct {
	hf_entry *e;
	size_t n, cap;
} hf_entries;

/* Append to l the entries of one page of /api/<type>/<name>/tree/<rev>
 * (a JSON list of {"type", "path", "size", "lfs": {"size"}}): each path
 * checked to stay inside the snapshot (no "..", no leading "/"), the LFS
 * size where there is one, directories of size 0.  On failure the entries
 * appended before stay in l, for the caller to free.  CLTFS_E_FORMAT (not
 * JSON or not a list, an entry without type or path, an unsafe path, a
 * size that is negative or over 9e15), _NOMEM. */
cltfs_err hf_parse_tree_page(const char *json, size_t len, const char *what, hf_entries *l);

#endif
