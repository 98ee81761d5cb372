/* cache.c: decoded chunks in memory.
 *
 * get / put with reference counts: an evicted chunk is freed only when its
 * last reader is done.  A key being loaded is in the table in state LOADING,
 * so concurrent readers of one chunk (DataLoader workers) wait on the
 * shard's condition variable for the one load instead of repeating it.
 * Keys hash to one of several shards, each with its own lock, table, LRU
 * list and share of the byte budget.  Loads run outside every lock.
 */
#include "fs.h"

#include <stdlib.h>
#include <string.h>

enum { LOADING, READY, FAILED };
#define NSHARDS 8
#define NBUCKETS 1024

typedef struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	chunk *buckets[NBUCKETS];
	chunk lru; /* sentinel: lru.next is the most recent, unreferenced only */
	size_t bytes, entries, limit;
} shard;

struct chunk_cache {
	shard shards[NSHARDS];
	chunk_loader load;
	void *arg;
	size_t limit;
};

static size_t mix(uint64_t k)
{
	k ^= k >> 31;
	k *= 0x9e3779b97f4a7c15ULL;
	return (size_t)(k ^ (k >> 29));
}

static shard *shard_of(chunk_cache *c, uint64_t key) { return &c->shards[mix(key) % NSHARDS]; }
static chunk **bucket(shard *s, uint64_t key) { return &s->buckets[(mix(key) / NSHARDS) % NBUCKETS]; }

chunk_cache *cache_new(size_t limit, chunk_loader load, void *arg)
{
	chunk_cache *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->load = load;
	c->arg = arg;
	c->limit = limit;
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

static void destroy(shard *s, chunk *ch)
{
	s->bytes -= ch->len;
	s->entries--;
	free(ch->data);
	free(ch);
}

/* Free least recently used idle chunks until the shard fits its budget. */
static void evict(shard *s)
{
	while (s->bytes > s->limit && s->lru.prev != &s->lru) {
		chunk *old = s->lru.prev;
		lru_remove(old);
		unlink_hash(s, old);
		destroy(s, old);
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
				free(ch->data);
				free(ch);
			}
		pthread_mutex_destroy(&s->mu);
		pthread_cond_destroy(&s->cv);
	}
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
		if (ch->state == FAILED) {
			cltfs_err e = ch->err;
			if (--ch->refs == 0) { /* the loader already unlinked it */
				free(ch->data);
				free(ch);
			}
			pthread_mutex_unlock(&s->mu);
			return cltfs_fail(e, "chunk load failed in another reader");
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

	cltfs_err e = c->load(c->arg, key, &ch->data, &ch->len, &ch->crc);

	pthread_mutex_lock(&s->mu);
	if (e) {
		/* Waiters see the error once; the next reader retries the load. */
		ch->state = FAILED;
		ch->err = e;
		unlink_hash(s, ch);
		s->entries--;
		ch->refs--;
		pthread_cond_broadcast(&s->cv);
		/* Free once nobody waits: the last waiter's put does it. */
		if (ch->refs == 0) {
			free(ch->data);
			free(ch);
		}
		pthread_mutex_unlock(&s->mu);
		return e;
	}
	ch->state = READY;
	s->bytes += ch->len;
	evict(s);
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
			free(ch->data);
			free(ch);
		} else {
			ch->next = s->lru.next; /* most recent first */
			ch->prev = &s->lru;
			s->lru.next->prev = ch;
			s->lru.next = ch;
			evict(s);
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
