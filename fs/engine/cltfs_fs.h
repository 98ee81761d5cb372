/* cltfs_fs.h: the filesystem object (prefix fs_): a store, its tiers, the
 * chunk cache, readahead, and the namespace of views.
 *
 *   L<n>/batch_<k>_x.pt and batch_<k>_y.pt for each x layer n of the store
 *   and each batch k of the mount's batching (the store's, -o batch_samples
 *   or -o batch_rows).
 *
 * The bytes of one file are view.h's.  No FUSE here: fuse/ calls this.
 * A cltfs_fs is safe to use from many threads.
 */
#ifndef CLTFS_FS_H
#define CLTFS_FS_H

#include "store.h"
#include "tier.h"

#include <stdatomic.h>

#define FS_MAX_TIERS 4

enum { FS_SAMPLE_LAST = 0, FS_SAMPLE_MEAN = 1, FS_SAMPLE_ALL = 2 };
enum { FS_VIEW_X = 0, FS_VIEW_Y = 1, FS_VIEW_SAMPLE = 2 };

typedef struct {
	int64_t batch_samples;   /* 0: the store's batching */
	int64_t batch_rows;      /* 0: off; else flat token batches of B rows */
	bool shuffle;            /* batch_rows batches of a seeded permutation of the rows */
	uint64_t shuffle_seed;
	int64_t shuffle_window;  /* chunks per window; 0 one window; -1 what a quarter of the cache holds */
	int dtype;               /* -1: as stored, else a cltfs_dtype to convert to */
	size_t cache_mb;         /* memory for decoded chunks */
	int readahead;           /* chunks decoded ahead of a sequential reader; 0 off */
	bool prefault;           /* fault in the cache's memory at fs_start (mounts) */
	bool share_zero_targets; /* y views: one storage for every zero padding target */
	/* y views; zero (as an all-zero cltfs_opts has them): the store's */
	int n_targets;           /* targets per file */
	bool set_target_offset;  /* target_offset: the first target's layer from L (0 or 1) */
	int target_offset;
	bool set_target_pad;     /* target_pad: CLTFS_PAD_ZERO or _CLIP past the last layer */
	int target_pad;
	/* samples/sample_NNNN.pt: each x layer's last row, mean or every row */
	int sample_reduce;       /* FS_SAMPLE_LAST (default), _MEAN, _ALL */
	bool set_sample_dtype;   /* sample_dtype: their dtype; float32 when not set */
	int sample_dtype;
	cltfs_tier *tiers[FS_MAX_TIERS]; /* tried in order after the store; not owned */
	int ntiers;
} cltfs_opts;

typedef struct {
	atomic_ullong mem_hits, store_loads, bytes_read, reads, errors, readahead, readahead_errors, readahead_queued;
	atomic_ullong opens; /* OPEN requests: one per mount with zero-message opens */
	atomic_ullong lookups, listings[2]; /* LOOKUP; READDIR and READDIRPLUS requests */
	atomic_ullong view_reads[3], view_bytes[3]; /* by kind of file: FS_VIEW_X, _Y, _SAMPLE */
	atomic_ullong tier_loads[FS_MAX_TIERS];
	atomic_ullong lat_us_sum, lat_us_max;
} cltfs_stats;

typedef struct cltfs_fs cltfs_fs;

/* Build the filesystem over an open store (which must outlive it).  Starts
 * no thread, so that a mount can fail in the foreground and fork after.
 * CLTFS_E_INVAL (options that exclude each other), _NOMEM. */
cltfs_err fs_new(cltfs_store *s, const cltfs_opts *o, cltfs_fs **out);
/* Start the readahead threads and the cache's prefault: after a mount has
 * daemonized (threads do not survive fork).  CLTFS_E_NOMEM when no thread
 * could start. */
cltfs_err fs_start(cltfs_fs *fs);
/* The CPUs readahead uses (threads decoding), 2 to 32: the default
 * readahead depth scales with them. */
int fs_cpus(void);
/* Stop the threads and free (NULL is a no-op); the tiers are the caller's. */
void fs_free(cltfs_fs *fs);
cltfs_store *fs_store(cltfs_fs *fs);
cltfs_stats *fs_stats(cltfs_fs *fs);
/* JSON for .cltfs/stats, malloc'd; NULL when out of memory. */
char *fs_stats_json(cltfs_fs *fs);

/* The namespace. */
int fs_nlayers(const cltfs_fs *fs);
/* The layer number n of directory i (L<n>). */
int fs_layer(const cltfs_fs *fs, int i);
int64_t fs_nbatches(const cltfs_fs *fs);
/* The store's samples: samples/sample_NNNN.pt for each. */
int64_t fs_nsamples(const cltfs_fs *fs);
/* Directory index of "L<n>", or -1. */
int fs_find_layer(const cltfs_fs *fs, const char *name);
/* "batch_<k>_x.pt" / "batch_<k>_y.pt" with k < fs_nbatches: *batch, *is_y;
 * false for any other name. */
bool fs_parse_view(const cltfs_fs *fs, const char *name, int64_t *batch, int *is_y);

#endif
