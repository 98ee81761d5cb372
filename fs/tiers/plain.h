/* plain.h: a Hub repo of plain files (no cltfs.json) as a read-only tree,
 * in place of snapshot_download (prefix plain_).
 *
 * Names and sizes come from the Hub's listing, so listing and stat cost
 * nothing.  The first open of a file starts its download into the HF cache
 * (where huggingface_hub finds it), reads are answered as soon as their
 * bytes have arrived, and later opens read the cached file.  Nodes are
 * numbered 0 (the root) to plain_count - 1.  Safe to use from many threads.
 * No FUSE here: fuse/plain_ops.c serves it.
 */
#ifndef CLTFS_PLAIN_H
#define CLTFS_PLAIN_H

#include "hfcache.h"

#include <sys/types.h>

typedef struct plain_fs plain_fs;

/* The tree of a listing (every missing parent directory added).  The repo
 * must outlive it.  CLTFS_E_FORMAT (a path that is both a file and a
 * directory), _NOMEM. */
cltfs_err plain_new(hf_repo *r, const hf_entry *e, size_t n, plain_fs **out);
/* Free the tree, cancelling running downloads (what arrived stays in the
 * cache for a resume).  NULL is a no-op. */
void plain_free(plain_fs *p);

typedef struct {
	const char *name; /* the last part of the path; "" for the root */
	uint64_t size;
	bool dir;
	size_t nkids;     /* a directory's entries */
} plain_node;
size_t plain_count(const plain_fs *p);
/* Node i (i < plain_count). */
plain_node plain_info(const plain_fs *p, size_t i);
/* The entry named name in directory dir, or -1. */
ssize_t plain_lookup(const plain_fs *p, size_t dir, const char *name);
/* Entry k of directory dir (k < its nkids). */
size_t plain_kid(const plain_fs *p, size_t dir, size_t k);

/* An open file: the cached copy, or its download as it arrives. */
typedef struct plain_file plain_file;
/* Open file node i: hfcache.h's errors (the download could not start). */
cltfs_err plain_open(plain_fs *p, size_t i, plain_file **out);
/* Bytes [off, off+len) once they have arrived (fewer at the end of the
 * file): *got.  CLTFS_E_IO, or the download's error. */
cltfs_err plain_read(plain_file *f, void *buf, size_t len, uint64_t off, size_t *got);
void plain_close(plain_file *f);

#endif
