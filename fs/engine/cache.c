/* cache.c: decoded chunks in memory.
 *
 * Buffers: every chunk buffer has one size, the store's largest chunk, and
 * comes from 2 MiB-aligned regions marked for transparent huge pages.  An
 * evicted chunk's buffer goes to a free list and is reused as it is: a
 * fresh 4 KiB page costs a fault, and on a VM that costs more than the
 * decompression of the page (measured: half of a cold read's time).
 *
 * get / put with reference counts: an evicted chunk is freed only when its
 * last reader is done.  A key being loaded is in the table in state LOADING,
 * so concurrent readers of one chunk (DataLoader workers) wait on the
 * shard's condition variable for the one load instead of repeating it.
 * Keys hash to one of several shards, each with its own lock, table, LRU
 * list and share of the byte budget.  Loads run outside every lock.
 */
#include "cache.h"

#include <pthread.h>

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { LOADING, READY, FAILED };
#define NSHARDS 8
#define NBUCKETS 1024

typedef struct {
	pthread_mutex_t mu;       /* guards everything below, and the chunks of this shard */
	pthread_cond_t cv;        /* a load of this shard ended (with mu) */
	chunk *buckets[NBUCKETS]; /* the shard's chunks by key, LOADING ones included */
	chunk lru;                /* sentinel: lru.next is the most recent; unreferenced chunks only */
	size_t bytes, entries;
	size_t limit;             /* set once at cache_new */
} shard;

#define REGION (32u << 20)

typedef struct region {
	struct region *next;
	void *base;
	size_t len;
} region;

struct chunk_cache {
	shard shards[NSHARDS];
	chunk_loader load;       /* set once at cache_new, like arg, limit and buf_size */
	void *arg;
	size_t limit, buf_size;
	pthread_mutex_t pool_mu; /* guards the fields below */
	void *free_bufs;         /* a list through each buffer's first word */
	atomic_bool loading;     /* a chunk was loaded: cache_reserve yields */
	size_t made;             /* bytes of buffers carved, in use or free */
	uint8_t *carve, *carve_end;
	region *regions;
};

static void buf_put(chunk_cache *c, uint8_t *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&c->pool_mu);
	memcpy(b, &c->free_bufs, sizeof(void *));
	c->free_bufs = b;
	pthread_mutex_unlock(&c->pool_mu);
}

/* A fresh buffer carved from the current region, or from a new one. */
static uint8_t *buf_carve(chunk_cache *c)
{
	if (c->carve + c->buf_size > c->carve_end) {
		size_t len = c->buf_size > REGION ? (c->buf_size + (2u << 20) - 1) & ~((size_t)(2u << 20) - 1) : REGION;
		region *r = malloc(sizeof *r);
		void *p = r ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : MAP_FAILED;
		if (p == MAP_FAILED) {
			free(r);
			return NULL;
		}
		madvise(p, len, MADV_HUGEPAGE);
		*r = (region){c->regions, p, len};
		c->regions = r;
		c->carve = p;
		c->carve_end = (uint8_t *)p + len;
	}
	uint8_t *b = c->carve;
	c->carve += c->buf_size;
	c->made += c->buf_size;
	return b;
}

/* A buffer of buf_size bytes: a recycled one, else a fresh one. */
static uint8_t *buf_get(chunk_cache *c)
{
	pthread_mutex_lock(&c->pool_mu);
	uint8_t *b = c->free_bufs;
	if (b)
		memcpy(&c->free_bufs, b, sizeof(void *));
	else
		b = buf_carve(c);
	pthread_mutex_unlock(&c->pool_mu);
	return b;
}

void cache_reserve(chunk_cache *c, size_t bytes, const atomic_bool *stop)
{
	long page = sysconf(_SC_PAGESIZE);
	/* Lowest priority: this must never slow a reader down. */
	setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
	for (size_t n = 0; n + c->buf_size <= bytes && !atomic_load(stop) && !atomic_load(&c->loading);
	     n += c->buf_size) {
		pthread_mutex_lock(&c->pool_mu);
		bool in_region = c->carve + c->buf_size <= c->carve_end;
		bool region_fits = n + REGION <= bytes + c->buf_size;
		/* carve what the current region holds, but map no new region past the budget */
		uint8_t *b = in_region || region_fits ? buf_carve(c) : NULL;
		pthread_mutex_unlock(&c->pool_mu);
		if (!b)
			break;
		for (size_t i = 0; i < c->buf_size; i += (size_t)page)
			((volatile uint8_t *)b)[i] = 0; /* fault it in now, not on a read */
		buf_put(c, b);
	}
}

static size_t mix(uint64_t k)
{
	k ^= k >> 31;
	k *= 0x9e3779b97f4a7c15ULL;
	return (size_t)(k ^ (k >> 29));
}

static shard *shard_of(chunk_cache *c, uint64_t key) { return &c->shards[mix(key) % NSHARDS]; }
static chunk **bucket(shard *s, uint64_t key) { return &s->buckets[(mix(key) / NSHARDS) % NBUCKETS]; }

chunk_cache *cache_new(size_t limit, size_t buf_size, chunk_loader load, void *arg)
{
	chunk_cache *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->load = load;
	c->arg = arg;
	c->limit = limit;
	c->buf_size = buf_size < sizeof(void *) ? sizeof(void *) : buf_size;
	pthread_mutex_init(&c->pool_mu, NULL);
	for (int i = 0; i < NSHARDS; i++) {
		shard *s = &c->shards[i];
		pthread_mutex_init(&s->mu, NULL);
		pthread_cond_init(&s->cv, NULL);
		s->lru.next = s->lru.prev = &s->lru;
		s->limit = limit / NSHARDS;
	}
	return c;
}

static void unlink_hash(shard *s, chunk *ch)
{
	for (chunk **p = bucket(s, ch->key); *p; p = &(*p)->hnext)
		if (*p == ch) {
			*p = ch->hnext;
			return;
		}
}

static void lru_remove(chunk *ch)
{
	if (ch->next) {
		ch->prev->next = ch->next;
		ch->next->prev = ch->prev;
		ch->next = ch->prev = NULL;
	}
}

static void destroy(chunk_cache *c, shard *s, chunk *ch)
{
	s->bytes -= c->buf_size;
	s->entries--;
	buf_put(c, ch->data);
	free(ch);
}

/* A failed chunk is out of the table and counted nowhere. */
static void destroy_failed(chunk_cache *c, chunk *ch)
{
	buf_put(c, ch->data);
	free(ch->errmsg);
	free(ch);
}

/* Free least recently used idle chunks until the shard fits its budget. */
static void evict(chunk_cache *c, shard *s)
{
	while (s->bytes > s->limit && s->lru.prev != &s->lru) {
		chunk *old = s->lru.prev;
		lru_remove(old);
		unlink_hash(s, old);
		destroy(c, s, old);
	}
}

void cache_free(chunk_cache *c)
{
	if (!c)
		return;
	for (int i = 0; i < NSHARDS; i++) {
		shard *s = &c->shards[i];
		for (int b = 0; b < NBUCKETS; b++)
			for (chunk *ch = s->buckets[b], *n; ch; ch = n) {
				n = ch->hnext;
				free(ch);
			}
		pthread_mutex_destroy(&s->mu);
		pthread_cond_destroy(&s->cv);
	}
	for (region *r = c->regions, *n; r; r = n) {
		n = r->next;
		munmap(r->base, r->len);
		free(r);
	}
	pthread_mutex_destroy(&c->pool_mu);
	free(c);
}

static chunk *lookup(shard *s, uint64_t key)
{
	for (chunk *ch = *bucket(s, key); ch; ch = ch->hnext)
		if (ch->key == key)
			return ch;
	return NULL;
}

cltfs_err cache_get(chunk_cache *c, uint64_t key, chunk **out, bool *hit)
{
	shard *s = shard_of(c, key);
	pthread_mutex_lock(&s->mu);
	chunk *ch = lookup(s, key);
	if (ch) {
		ch->refs++;
		lru_remove(ch);
		while (ch->state == LOADING)
			pthread_cond_wait(&s->cv, &s->mu);
		if (ch->state == FAILED) { /* the loader's error and message, for every waiter */
			cltfs_err e = cltfs_fail(ch->err, "%s", ch->errmsg ? ch->errmsg : "out of memory");
			if (--ch->refs == 0) /* the loader already unlinked it */
				destroy_failed(c, ch);
			pthread_mutex_unlock(&s->mu);
			return e;
		}
		*hit = true;
		*out = ch;
		pthread_mutex_unlock(&s->mu);
		return CLTFS_OK;
	}
	ch = calloc(1, sizeof *ch);
	if (!ch) {
		pthread_mutex_unlock(&s->mu);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	ch->key = key;
	ch->refs = 1;
	ch->state = LOADING;
	ch->hnext = *bucket(s, key);
	*bucket(s, key) = ch;
	s->entries++;
	pthread_mutex_unlock(&s->mu);

	/* Once readers arrive the prefault stops: its page zeroing competed
	 * with their reads for the cores (and the mm) at a mount's start. */
	atomic_store_explicit(&c->loading, true, memory_order_relaxed);
	ch->data = buf_get(c);
	cltfs_err e = ch->data ? c->load(c->arg, key, ch->data, c->buf_size, &ch->len, &ch->crc)
			       : cltfs_fail(CLTFS_E_NOMEM, "out of memory for a chunk");

	pthread_mutex_lock(&s->mu);
	if (e) {
		/* Waiters see the error once; the next reader retries the load. */
		ch->state = FAILED;
		ch->err = e;
		ch->errmsg = strdup(cltfs_errmsg()); /* NULL: waiters say "out of memory" */
		unlink_hash(s, ch);
		s->entries--;
		ch->refs--;
		pthread_cond_broadcast(&s->cv);
		/* Free once nobody waits: the last waiter does it. */
		if (ch->refs == 0)
			destroy_failed(c, ch);
		pthread_mutex_unlock(&s->mu);
		return e;
	}
	ch->state = READY;
	s->bytes += c->buf_size;
	evict(c, s);
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	*hit = false;
	*out = ch;
	return CLTFS_OK;
}

void cache_put(chunk_cache *c, chunk *ch)
{
	shard *s = shard_of(c, ch->key);
	pthread_mutex_lock(&s->mu);
	if (--ch->refs == 0) {
		if (ch->state == FAILED) { /* already out of the table */
			destroy_failed(c, ch);
		} else {
			ch->next = s->lru.next; /* most recent first */
			ch->prev = &s->lru;
			s->lru.next->prev = ch;
			s->lru.next = ch;
			evict(c, s);
		}
	}
	pthread_mutex_unlock(&s->mu);
}

bool cache_has(chunk_cache *c, uint64_t key)
{
	shard *s = shard_of(c, key);
	pthread_mutex_lock(&s->mu);
	bool has = lookup(s, key) != NULL;
	pthread_mutex_unlock(&s->mu);
	return has;
}

size_t cache_buffers(chunk_cache *c)
{
	pthread_mutex_lock(&c->pool_mu);
	size_t n = c->made;
	pthread_mutex_unlock(&c->pool_mu);
	return n;
}

void cache_usage(chunk_cache *c, size_t *bytes, size_t *entries, size_t *limit)
{
	*bytes = *entries = 0;
	for (int i = 0; i < NSHARDS; i++) {
		shard *s = &c->shards[i];
		pthread_mutex_lock(&s->mu);
		*bytes += s->bytes;
		*entries += s->entries;
		pthread_mutex_unlock(&s->mu);
	}
	*limit = c->limit;
}
