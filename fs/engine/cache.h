/* cache.h: decoded chunks in memory (prefix cache_).
 *
 * Bounded by bytes, LRU, sharded (a lock per shard, none held during a
 * load), single flight (concurrent readers of one key wait for one load)
 * and reference counted (an evicted chunk is freed when its last reader
 * puts it back).  Safe to use from many threads.
 */
#ifndef CLTFS_CACHE_H
#define CLTFS_CACHE_H

#include "codec.h"

#include <stdatomic.h>

typedef struct chunk {
	uint64_t key;
	uint8_t *data; /* buf_size bytes, len of them the chunk */
	size_t len;
	uint32_t crc;  /* of data[0..len), as served */
	/* private to cache.c, guarded by the key's shard lock */
	int refs, state;
	cltfs_err err;
	char *errmsg;  /* the loader's message, for readers that waited on a failed load */
	struct chunk *hnext, *prev, *next;
} chunk;

typedef struct chunk_cache chunk_cache;
/* Fill buf (cap bytes) with key's chunk: its length in *len and its CRC in
 * *crc.  Called outside every cache lock, from many threads at once. */
typedef cltfs_err (*chunk_loader)(void *arg, uint64_t key, uint8_t *buf, size_t cap, size_t *len,
				  uint32_t *crc);

/* A cache of limit_bytes whose every buffer is buf_size bytes (the largest
 * chunk served).  NULL when out of memory. */
chunk_cache *cache_new(size_t limit_bytes, size_t buf_size, chunk_loader load, void *arg);
/* Free the cache and every buffer: no chunk may still be referenced. */
void cache_free(chunk_cache *c);
/* Fault in up to bytes of buffers now, at the lowest priority, until
 * *stop or the first chunk load: a read that comes after a mount's idle
 * start does not pay for fresh pages, and one that comes at once does not
 * compete with the zeroing (its own faults cost less than the contention). */
void cache_reserve(chunk_cache *c, size_t bytes, const atomic_bool *stop);
/* A referenced chunk (cache_put gives it back).  *hit says whether it was
 * in memory already.  On a miss the caller loads it while other callers
 * for the key wait; a failed load returns the loader's error and message
 * to the loader and to every waiter, and the next call loads again.
 * The loader's errors, or CLTFS_E_NOMEM. */
cltfs_err cache_get(chunk_cache *c, uint64_t key, chunk **out, bool *hit);
void cache_put(chunk_cache *c, chunk *ch);
/* Is key in memory or being loaded?  (For readahead: a hint, not a promise.) */
bool cache_has(chunk_cache *c, uint64_t key);
void cache_usage(chunk_cache *c, size_t *bytes, size_t *entries, size_t *limit);
/* Bytes of chunk buffers made so far, in use or kept for reuse: the
 * memory the cache holds (it never returns a buffer before cache_free). */
size_t cache_buffers(chunk_cache *c);

#endif
