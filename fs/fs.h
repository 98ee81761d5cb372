/* fs.h: the daemon's internal interface.
 *
 *   store  - a store directory: manifest, per-writer packs and indexes
 *   cache  - decoded chunks in memory, bounded, single flight, refcounted
 *   view   - the virtual namespace and the bytes of each .pt view
 *   import - a materialized tree into a store
 *   tools  - stat and verify
 *   fuse   - the FUSE adapter, the only place that speaks errno
 */
#ifndef CLTFS_FS_H
#define CLTFS_FS_H

#include "codec.h"
#include "hfcache.h"
#include "capture.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/uio.h>

/* ---- store ---- */

typedef struct cltfs_store cltfs_store;

/* Open an existing store: load and validate cltfs.json, merge every index. */
cltfs_err store_open(const char *dir, cltfs_store **out);
/* Create dir (and packs/) if needed and write the manifest atomically. */
cltfs_err store_create(const char *dir, const cltfs_manifest *m);
void store_close(cltfs_store *s);
const cltfs_manifest *store_manifest(const cltfs_store *s);
const char *store_dir(const cltfs_store *s);
/* The record of a chunk; on a miss, index files are rescanned (at most once
 * a second) since capture jobs may be appending to the store. */
bool store_lookup(cltfs_store *s, uint64_t key, cltfs_rec *rec);
/* Read one chunk's frame, decode it into dst (rec->rsize bytes) and check
 * its CRC.  CLTFS_E_CORRUPT names the pack, chunk and offset. */
cltfs_err store_read_chunk(cltfs_store *s, const cltfs_rec *rec, cltfs_zctx *z, void *dst);
/* Merge what other writers appended since the last scan, now. */
void store_rescan(cltfs_store *s);
/* store_lookup, and the name <w> of the pack that holds the frame. */
bool store_locate(cltfs_store *s, uint64_t key, cltfs_rec *rec, const char **pack);
/* Decode a frame read from anywhere and check it against its record. */
cltfs_err store_decode(const cltfs_rec *rec, cltfs_zctx *z, const void *frame, void *dst);
/* Raw bytes of chunk c of any stream (rows * d * dtype size). */
uint64_t store_chunk_raw(const cltfs_store *s, uint32_t chunk);

/* Every record of every index file, in file order, for verify and stat. */
typedef struct {
	const char *idx_path, *pack_path;
	uint64_t idx_offset; /* of the record */
	bool valid;          /* record checksum ok */
	cltfs_rec rec;
} store_entry;
typedef cltfs_err (*store_visit)(void *arg, const store_entry *e);
cltfs_err store_foreach(cltfs_store *s, store_visit fn, void *arg);
/* Read, decode and CRC-check the frame of one entry from its own pack. */
cltfs_err store_check_entry(const store_entry *e, cltfs_zctx *z, void *dst);
/* Bytes of the manifest plus every pack and index file. */
uint64_t store_disk_bytes(cltfs_store *s);

/* Appending: one writer per (host, tag); frames first, records after an
 * fsync, so no reader ever sees a record whose frame is not durable. */
typedef struct store_writer store_writer;
cltfs_err store_writer_open(cltfs_store *s, const char *tag, store_writer **out);
/* zstd level of the frames this writer adds (default 1). */
void store_writer_level(store_writer *w, int level);
cltfs_err store_writer_add(store_writer *w, uint64_t key, const void *raw, size_t len);
/* Append a frame as it came from another store (checked by the caller
 * with store_decode): no re-encoding. */
cltfs_err store_writer_add_frame(store_writer *w, const cltfs_rec *rec, const void *frame);
/* Added chunks are readable by this process at once; this makes them
 * durable and visible to others: fsync the pack, append the pending
 * records, fsync the index. */
cltfs_err store_writer_sync(store_writer *w);
/* Forget the pending records (their frames stay as unreferenced bytes):
 * used when what was added turned out to be wrong. */
void store_writer_abandon(store_writer *w);
cltfs_err store_writer_close(store_writer *w);

/* ---- chunk cache ---- */

typedef struct chunk {
	uint64_t key;
	uint8_t *data;
	size_t len;
	uint32_t crc; /* of data, as served */
	/* private to cache.c */
	int refs, state;
	cltfs_err err;
	struct chunk *hnext, *prev, *next;
} chunk;

typedef struct chunk_cache chunk_cache;
/* Fill buf (cap bytes) with key's chunk: its length in *len, CRC in *crc. */
typedef cltfs_err (*chunk_loader)(void *arg, uint64_t key, uint8_t *buf, size_t cap, size_t *len,
				  uint32_t *crc);

/* Every chunk buffer is buf_size bytes: the largest chunk served. */
chunk_cache *cache_new(size_t limit_bytes, size_t buf_size, chunk_loader load, void *arg);
void cache_free(chunk_cache *c);
/* Fault in up to bytes of buffers now (a background thread at mount), so
 * that a cold read does not pay for fresh pages. */
void cache_reserve(chunk_cache *c, size_t bytes, const atomic_bool *stop);
/* A referenced chunk; concurrent callers for one key wait for one load.
 * *hit says whether it was already in memory. */
cltfs_err cache_get(chunk_cache *c, uint64_t key, chunk **out, bool *hit);
void cache_put(chunk_cache *c, chunk *ch);
bool cache_has(chunk_cache *c, uint64_t key);
void cache_usage(chunk_cache *c, size_t *bytes, size_t *entries, size_t *limit);

/* ---- fill tiers ---- */

/* Where a chunk comes from when the local store lacks it (the Hub, capture,
 * STYLE.md's struct of function pointers).  load puts the chunk's raw bytes
 * (len of them, as the manifest says) into dst, fills *rec, and adds the
 * chunk to the local store so that the next read is local.  Called from
 * many threads; the chunk cache makes it once per chunk. */
typedef struct cltfs_tier cltfs_tier;
struct cltfs_tier {
	const char *name; /* "hub", "capture": the counter in .cltfs/stats */
	cltfs_err (*load)(cltfs_tier *t, uint64_t key, cltfs_zctx *z, uint8_t *dst, size_t len, cltfs_rec *rec);
	/* The chunk's record when the tier knows it without producing the
	 * chunk (a Hub store's index: CRCs for the zip directory), or NULL. */
	bool (*lookup)(cltfs_tier *t, uint64_t key, cltfs_rec *rec);
	/* A JSON object of the tier's own counters for .cltfs/stats, or NULL. */
	void (*stats)(cltfs_tier *t, char *buf, size_t n);
};

/* ---- the Hub as a source (hub.c, plain.c) ---- */

typedef struct hub_source hub_source;
/* hf://datasets/owner/name[@rev]: resolve the revision, list the repo;
 * for a cltfs store repo, fetch its manifest and indexes and open the
 * local store (local_store, or one under ~/.cache/cltfs) behind a tier. */
cltfs_err hub_open(const char *url, const char *local_store, hub_source **out);
void hub_close(hub_source *h);
bool hub_is_store(const hub_source *h);
cltfs_store *hub_local(hub_source *h);
cltfs_tier *hub_tier_of(hub_source *h);
hf_repo *hub_repo(hub_source *h);
const hf_entry *hub_entries(const hub_source *h, size_t *n);
/* A model given by its Hub id (owner/name[@rev]): its checkpoint files
 * in the HF cache (fetched if missing, or offline from refs/), the
 * snapshot folder and the commit, malloc'd. */
cltfs_err hub_model_dir(const char *id, char **dir, char **commit, bool quiet);
/* Every chunk the local store lacks, in parallel range requests. */
cltfs_err hub_pull(hub_source *h, bool quiet);

/* A plain repo (no cltfs.json): its files, each downloaded whole into the
 * HF cache on first open and read as it arrives. */
typedef struct plain_fs plain_fs;
cltfs_err plain_new(hf_repo *r, const hf_entry *e, size_t n, plain_fs **out);
void plain_free(plain_fs *p);

/* ---- capture (capture.c) ---- */

typedef struct {
	const char *model, *dataset, *image_dir; /* the checkpoint folder, the queries, the images */
	const char *model_id;  /* recorded as the model's id (default: the folder) */
	const char *template_; /* NULL: the model card's */
	const char *input_hook;
	int n_targets, target_offset, dtype, batch_samples;
	int64_t chunk_rows; /* 0: about 1 MiB of raw rows */
	bool clip, quiet;
} init_opts;
cltfs_err cmd_init(const char *store, const init_opts *o);

typedef struct {
	cap_load_opts load;
	int shard, shards;  /* --shard i/N (1-based); 0: off */
	int64_t row0, row1; /* --rows a:b; equal: all */
	bool quiet;
} capture_opts;
cltfs_err cmd_capture(const char *store, const capture_opts *o);

/* The model run for a store's batches, appending through writer tag. */
typedef struct capturer capturer;
cltfs_err capturer_new(cltfs_store *s, const cap_load_opts *lo, const char *tag, capturer **out);
void capturer_free(capturer *c);
/* durable: sync the writer after it (else at the next sync or close). */
cltfs_err capture_batch(capturer *c, int64_t batch, bool durable);
/* The tier of a store made by init: a miss captures the chunk's batch. */
cltfs_err capture_tier_open(cltfs_store *s, const cap_load_opts *lo, cltfs_tier **out);
void capture_tier_close(cltfs_tier *t);

/* ---- the filesystem: namespace and views ---- */

typedef struct {
	int64_t batch_samples; /* 0: the store's batching */
	int64_t batch_rows;    /* 0: off; else flat token batches of B rows */
	int dtype;             /* -1: as stored */
	size_t cache_mb;
	int readahead;         /* chunks ahead of a sequential reader */
	bool prefault;         /* fault in the cache's memory at start (mounts) */
	cltfs_tier *tier;      /* behind the store, or NULL; not owned */
} cltfs_opts;

typedef struct {
	atomic_ullong mem_hits, store_loads, tier_loads, bytes_read, reads, errors, readahead;
	atomic_ullong lat_us_sum, lat_us_max;
} cltfs_stats;

typedef struct cltfs_fs cltfs_fs;

cltfs_err fs_new(cltfs_store *s, const cltfs_opts *o, cltfs_fs **out);
void fs_free(cltfs_fs *fs);
cltfs_store *fs_store(cltfs_fs *fs);
cltfs_stats *fs_stats(cltfs_fs *fs);
/* JSON for .cltfs/stats, malloc'd. */
char *fs_stats_json(cltfs_fs *fs);

/* The namespace: layer directories L<n>, each with batch_<k>_{x,y}.pt. */
int fs_nlayers(const cltfs_fs *fs);
int fs_layer(const cltfs_fs *fs, int i); /* layer number of directory i */
int64_t fs_nbatches(const cltfs_fs *fs);
/* Directory index of "L<n>", or -1. */
int fs_find_layer(const cltfs_fs *fs, const char *name);
/* Parse "batch_<k>_x.pt"/"batch_<k>_y.pt": false if not a view name. */
bool fs_parse_view(const cltfs_fs *fs, const char *name, int64_t *batch, int *is_y);

typedef struct view view;
/* Build a view for the caller alone; view_close frees it. */
cltfs_err view_open(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, view **out);
void view_close(view *v);
/* A shared, referenced view from the filesystem's view cache (built on a
 * miss); view_put drops the reference.  Views are immutable but for their
 * lazily set CRCs, which a view's own lock guards. */
cltfs_err view_get(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, view **out);
void view_put(view *v);
uint64_t view_size(const view *v);
/* A view's file size, through the view cache (for getattr and lookup). */
cltfs_err fs_view_size(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, uint64_t *size);

/* The bytes of [off, off+len): iovecs into chunk buffers, the zero page
 * and literal bytes; hold references until view_buf_release. */
typedef struct {
	struct iovec *iov;
	size_t niov, iovcap;
	chunk **refs;
	size_t nrefs, refcap;
	uint8_t *lit;
	size_t total;
} view_buf;
cltfs_err view_read(cltfs_fs *fs, view *v, uint64_t off, size_t len, view_buf *out);
void view_buf_release(cltfs_fs *fs, view_buf *b);
/* The view's pickle, and bytes [off, off+len) of its storage i (the data of
 * data/<i>): what import compares with a source file, tensor by tensor. */
const uint8_t *view_pickle(const view *v, size_t *len);
cltfs_err view_storage_pread(cltfs_fs *fs, view *v, size_t i, uint64_t off, size_t len, uint8_t *dst);
/* Prefetch the chunks of the next readahead=N chunks' worth of bytes from
 * off on the readahead threads. */
void view_readahead(cltfs_fs *fs, view *v, uint64_t off);

/* ---- commands ---- */

typedef struct {
	int chunk_rows;    /* 0: about 1 MiB of raw bytes */
	int target_offset; /* 1 as the reference */
	int level;         /* zstd level */
	bool quiet;
} import_opts;
cltfs_err cmd_import(const char *store, const char *src, const import_opts *o);
int cmd_stat(const char *store, bool json);
int cmd_verify(const char *store);
int cmd_pull(const char *url, const char *store, bool quiet);

/* A line for the user: stderr, or syslog once a mount has daemonized. */
void fs_log(const char *msg);

/* The usage text of every command. */
#include <stdio.h>
void cltfs_usage(FILE *f);
/* The FUSE side: returns the process exit status. */
int fuse_main_cltfs(int argc, char **argv);

#endif
