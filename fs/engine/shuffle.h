/* shuffle.h: the row order of -o shuffle=SEED (prefix shuffle_).
 *
 * An epoch is a seeded permutation of every stored row (padding is never
 * stored, so never served): position p of the epoch holds stream row
 * shuffle_row(p).  The rows are cut into windows of N consecutive chunks;
 * the windows are visited in a seeded random order, and each window's rows
 * in a seeded random order of their own, so the rows of a batch come from
 * one or two windows: its chunks are decoded once and served from memory.
 * One window of every chunk (N 0) is one permutation of all rows.
 * No table of rows is kept: a window's order is a keyed Feistel network
 * over its row numbers (cycle-walking to its size), 12 bytes per window.
 */
#ifndef CLTFS_SHUFFLE_H
#define CLTFS_SHUFFLE_H

#include "codec.h"

typedef struct shuffle shuffle;

/* The order for seed over m's rows, windows of window_chunks chunks (0: one
 * window).  CLTFS_E_NOMEM. */
cltfs_err shuffle_new(const cltfs_manifest *m, uint64_t seed, int64_t window_chunks, shuffle **out);
void shuffle_free(shuffle *s);
/* The stream row at position pos (below m->total_rows) of the epoch. */
int64_t shuffle_row(const shuffle *s, int64_t pos);
/* The chunks (of every stream) that positions [p0, p1) read: those of the
 * windows they fall in, each passed to fn once; at most max of them. */
void shuffle_chunks(const shuffle *s, int64_t p0, int64_t p1, int64_t max, void (*fn)(void *arg, int64_t chunk),
		    void *arg);
/* The windows, and chunks per window. */
int64_t shuffle_nwindows(const shuffle *s);
int64_t shuffle_window_chunks(const shuffle *s);

#endif
