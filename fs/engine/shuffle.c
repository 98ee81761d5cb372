/* shuffle.c: a seeded permutation of a store's rows, in windows of chunks.
 *
 * A window's order is a 4-round Feistel network over the smallest even
 * number of bits that holds its row count, walked until it lands inside
 * (each step is a permutation of the 2^bits values, so the walk is too, on
 * [0, n)): random access to any position in O(1), nothing stored per row.
 * 10^7 samples of 600 tokens are 6x10^9 rows: a table would be 48 GB.
 */
#include "shuffle.h"

#include <stdlib.h>

struct shuffle {
	const cltfs_manifest *m;
	uint64_t seed;
	int64_t wchunks;   /* chunks per window */
	int64_t nwin;
	uint32_t *order;   /* the window at each place of the epoch */
	int64_t *pos;      /* the first position of each place; nwin + 1 */
};

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* One step of the permutation of [0, 2^(2*half)). */
static uint64_t feistel(uint64_t x, int half, uint64_t key)
{
	uint64_t mask = (UINT64_C(1) << half) - 1, l = x >> half, r = x & mask;
	for (int round = 0; round < 4; round++) {
		uint64_t t = l ^ (mix(r ^ mix(key + (uint64_t)round)) & mask);
		l = r;
		r = t;
	}
	return l << half | r;
}

/* Position i of a seeded order of [0, n). */
static int64_t permute(int64_t i, int64_t n, uint64_t key)
{
	if (n <= 1)
		return 0;
	int half = 1;
	while ((UINT64_C(1) << (2 * half)) < (uint64_t)n)
		half++;
	uint64_t x = (uint64_t)i;
	do
		x = feistel(x, half, key);
	while (x >= (uint64_t)n);
	return (int64_t)x;
}

static int64_t window_row0(const shuffle *s, int64_t w)
{
	int64_t c = w * s->wchunks;
	return c >= s->m->n_chunks ? s->m->total_rows : cltfs_manifest_chunk_start(s->m, c);
}

cltfs_err shuffle_new(const cltfs_manifest *m, uint64_t seed, int64_t window_chunks, shuffle **out)
{
	shuffle *s = calloc(1, sizeof *s);
	if (!s)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	s->m = m;
	s->seed = seed;
	s->wchunks = window_chunks <= 0 || window_chunks > m->n_chunks ? (m->n_chunks ? m->n_chunks : 1) : window_chunks;
	s->nwin = m->n_chunks ? (m->n_chunks + s->wchunks - 1) / s->wchunks : 0;
	s->order = malloc(((size_t)s->nwin + 1) * sizeof *s->order);
	s->pos = malloc(((size_t)s->nwin + 1) * sizeof *s->pos);
	/* each window's first row, for now: one pass over the batches (a
	 * search for each of 1.8x10^7 windows took 20 s at 10^7 samples) */
	int64_t *row0 = malloc(((size_t)s->nwin + 1) * sizeof *row0);
	if (!s->order || !s->pos || !row0 || s->nwin > UINT32_MAX) {
		long long n = (long long)s->nwin;
		free(row0);
		shuffle_free(s);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory for %lld shuffle windows", n);
	}
	/* the windows' order: Fisher-Yates from a seeded counter-mode generator */
	for (int64_t i = 0; i < s->nwin; i++)
		s->order[i] = (uint32_t)i;
	for (int64_t i = s->nwin - 1; i > 0; i--) {
		int64_t j = (int64_t)(mix(seed ^ mix((uint64_t)i)) % (uint64_t)(i + 1));
		uint32_t t = s->order[i];
		s->order[i] = s->order[j];
		s->order[j] = t;
	}
	cltfs_manifest_chunk_starts(m, s->wchunks, row0);
	s->pos[0] = 0;
	for (int64_t i = 0; i < s->nwin; i++)
		s->pos[i + 1] = s->pos[i] + row0[s->order[i] + 1] - row0[s->order[i]];
	free(row0);
	*out = s;
	return CLTFS_OK;
}

void shuffle_free(shuffle *s)
{
	if (!s)
		return;
	free(s->order);
	free(s->pos);
	free(s);
}

/* The place in the epoch of position p: the last starting at or before it. */
static int64_t place_of(const shuffle *s, int64_t p)
{
	int64_t lo = 0, hi = s->nwin - 1;
	while (lo < hi) {
		int64_t mid = (lo + hi + 1) / 2;
		if (s->pos[mid] <= p)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

void shuffle_chunks(const shuffle *s, int64_t p0, int64_t p1, int64_t max, void (*fn)(void *arg, int64_t chunk),
		    void *arg)
{
	for (int64_t k = p0 < p1 ? place_of(s, p0) : s->nwin; k < s->nwin && s->pos[k] < p1; k++) {
		int64_t c0 = s->order[k] * s->wchunks, c1 = c0 + s->wchunks;
		for (int64_t c = c0; c < c1 && c < s->m->n_chunks && max > 0; c++, max--)
			fn(arg, c);
	}
}

int64_t shuffle_row(const shuffle *s, int64_t p)
{
	int64_t lo = place_of(s, p);
	int64_t w = s->order[lo], r0 = window_row0(s, w), n = window_row0(s, w + 1) - r0;
	return r0 + permute(p - s->pos[lo], n, mix(s->seed) ^ mix((uint64_t)w + 0x5eed));
}

int64_t shuffle_nwindows(const shuffle *s) { return s->nwin; }
int64_t shuffle_window_chunks(const shuffle *s) { return s->wchunks; }
