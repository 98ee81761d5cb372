/* engine_internal.h: what cltfs_fs.c and view.c share inside the engine;
 * not an interface for anything outside fs/engine/. */
#ifndef CLTFS_ENGINE_INTERNAL_H
#define CLTFS_ENGINE_INTERNAL_H

#include "cache.h"
#include "means.h"
#include "shuffle.h"
#include "view.h"

#include <pthread.h>

#define RA_QUEUE 256
#define RA_MAX_THREADS 32 /* decoding: one per CPU, 2 at least (fs_start) */
#define RA_TIER_THREADS 8 /* fetching from a tier: requests in flight, at least */

/* One batch of the mount's batching: samples [first_sample, +nsamples),
 * the first at row row0, padded to tokens rows each; or (batch_rows) rows
 * [row0, +nrows).  Computed when needed (fs_group), never stored: a store
 * of 10^7 samples would need hundreds of MB for them. */
typedef struct {
	int64_t first_sample, nsamples, tokens;
	int64_t row0, nrows;
} group;

/* Built views, direct-mapped by id: getattr, lookup and open of a file are
 * frequent, and building a view (its pickle and zip layout) each time cost
 * more than the request itself. */
#define VCACHE 4096
typedef struct {
	uint64_t id; /* 1 + (layer_idx * nbatches + batch) * 2 + is_y; 0 empty */
	view *v;
} vslot;

/* Text built from printf pieces, growing as it goes: .cltfs/stats and
 * norm_stats.json.  oom: a piece could not be added (p then holds what
 * came before; free it). */
typedef struct {
	char *p;
	size_t n, cap;
	bool oom;
} sbuf;
void sbuf_put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct cltfs_fs {
	cltfs_store *s;
	const cltfs_manifest *m; /* &vm: the store's, with the mount's target options */
	cltfs_manifest vm;       /* a shallow copy: its pointers are the store's */
	cltfs_opts o;
	chunk_cache *cache;
	cltfs_stats st;
	int64_t ngroups;      /* batches of the mount's batching */
	shuffle *shuf;        /* -o shuffle: the epoch's row order, else NULL */
	means *means;         /* samples' means kept in the store, or NULL */
	uint32_t tag;         /* fs_manifest_tag's, once read (set by fs_new, before any thread) */
	bool have_tag;
	bool stored_batches;  /* the store's own batching */
	cltfs_dtype in_dt, out_dt;
	uint64_t conv;        /* cache key bits for the output dtype, 0 if none */
	size_t row_in, row_out;
	size_t chunk_bytes;   /* the largest chunk, as served */
	pthread_key_t tkey;   /* each thread's decoder and buffers */
	bool have_tkey;
	/* readahead: a bounded queue of chunk keys */
	pthread_mutex_t ra_mu;
	pthread_cond_t ra_cv;
	uint64_t ra_q[RA_QUEUE]; /* guarded by ra_mu */
	size_t ra_head, ra_len;  /* guarded by ra_mu */
	bool ra_stop;            /* guarded by ra_mu */
	pthread_t ra_thr[RA_MAX_THREADS];
	int ra_n;                /* threads started: set by fs_start only */
	pthread_t warm_thr;
	bool warming;
	atomic_bool stopping;    /* freeing: the warm-up thread gives up */
	pthread_mutex_t vmu;     /* guards vcache's slots and the size memo */
	vslot *vcache;
	struct size_slot *sizes; /* view sizes by shape (view.c); SIZES slots */
	size_t nsizes;
	pthread_mutex_t ns_mu;   /* guards ns_*: normstats_get */
	char *ns_json;           /* .cltfs/norm_stats.json, once known */
	size_t ns_len;
	bool ns_tried;           /* the store's copy was looked for */
};

/* A sample's mean over its rows of one x stream, in float32, d values, as
 * a one-row chunk of the chunk cache (key kind 3; never in a store). */
#define KIND_MEAN 3
/* The mean chunk of key (KIND_MEAN, layer, sample), computed on a miss
 * from the sample's rows.  fs_chunk_put gives it back. */
cltfs_err fs_mean(cltfs_fs *fs, uint64_t key, chunk **out);

/* The CRC-32 of the store's cltfs.json: what derived files (means,
 * norm_stats.json) say they were computed from; read by fs_new, again only
 * if that failed (then cltfs_read_file's errors). */
cltfs_err fs_manifest_tag(cltfs_fs *fs, uint32_t *tag);

/* Group g (g < ngroups) of the mount's batching. */
group fs_group(const cltfs_fs *fs, int64_t g);

/* Stream chunk key in the store's dtype, rsize bytes (store_chunk_raw)
 * into dst: from the store, else from the tiers in order; no cache.
 * Errors as view_read's. */
cltfs_err fs_load_stored(cltfs_fs *fs, uint64_t key, cltfs_zctx *z, uint8_t *dst, cltfs_rec *rec);
/* A referenced chunk of the store's stream key, in the mount's dtype:
 * from memory, the store, or the tiers in order.  fs_chunk_put gives it
 * back.  Errors as view_read's. */
cltfs_err fs_chunk(cltfs_fs *fs, uint64_t key, chunk **out);
void fs_chunk_put(cltfs_fs *fs, chunk *ch);
/* The CRC of a whole chunk (as stored) when an index knows it, the store's
 * or a tier's: nothing decoded or fetched. */
bool fs_chunk_crc(cltfs_fs *fs, uint64_t key, uint32_t *crc);
/* Queue a chunk for the readahead threads (dropped when the queue is full). */
void fs_readahead_push(cltfs_fs *fs, uint64_t key);
/* The calling thread's buffer of at least n bytes for a read's literal
 * bytes (reused: a fresh one would fault its pages in on every read), or
 * NULL when out of memory. */
uint8_t *fs_literal_buf(cltfs_fs *fs, size_t n);

/* The view cache of view.c: made by fs_new, freed by fs_free. */
cltfs_err view_cache_new(cltfs_fs *fs);
void view_cache_free(cltfs_fs *fs);

#endif
