/* normstats.h: normalization statistics of a store (prefix normstats_).
 *
 * Per layer and stream (x, mlp): the mean and standard deviation of every
 * dimension and of all values, over the stored rows (padding is never
 * stored, so never counted), accumulated in float64.  The text is JSON
 * (the README gives its format); it is kept as STORE/norm_stats.json,
 * tagged with the manifest it was computed from.
 */
#ifndef CLTFS_NORMSTATS_H
#define CLTFS_NORMSTATS_H

#include "cltfs_fs.h"

/* Called now and then while computing: chunks done of total. */
typedef void (*normstats_progress)(void *arg, uint64_t done, uint64_t total);

/* The statistics in one pass over every chunk of every stream (the store's,
 * else the tiers'), decoding on fs_cpus() threads.  *json is malloc'd.
 * Errors as view_read's (a chunk no one has names it), CLTFS_E_NOMEM. */
cltfs_err normstats_compute(cltfs_fs *fs, normstats_progress cb, void *arg, char **json, size_t *len);
/* STORE/norm_stats.json when it is intact and of this store's manifest:
 * CLTFS_E_NOTFOUND when absent, _CORRUPT when damaged or of another
 * manifest (the message says which), _NOMEM. */
cltfs_err normstats_load(cltfs_fs *fs, char **json, size_t *len);
/* Write it to STORE/norm_stats.json atomically: CLTFS_E_IO. */
cltfs_err normstats_save(cltfs_fs *fs, const char *json, size_t len);
/* A mount's text, kept by fs once it has one: the store's copy, else
 * (compute) one computed now (logging progress) and saved in the store.
 * *json stays valid until fs_free; NULL when not computed and !compute.
 * Errors as normstats_compute's. */
cltfs_err normstats_get(cltfs_fs *fs, bool compute, const char **json, size_t *len);
/* Its path, for messages. */
void normstats_path(cltfs_fs *fs, char *buf, size_t n);

#endif
