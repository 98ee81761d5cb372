/* means.h: samples' mean rows kept in the store (prefix means_).
 *
 * samples/ files with -o sample_reduce=mean need every row of a sample;
 * the d float32 values of each (layer, sample) are kept in
 * STORE/means/L<n>.bin once computed, so that a later mount serves them
 * without reading a chunk.  A record is d values and their CRC-32, at a
 * place fixed by the sample: a record never written (a hole) or torn by a
 * crash fails its CRC and is computed again.  The header names the
 * manifest (the CRC-32 of cltfs.json): a file of another is replaced.
 * Best effort: a store that cannot be written still serves, from memory.
 */
#ifndef CLTFS_MEANS_H
#define CLTFS_MEANS_H

#include "codec.h"

#include <stdbool.h>

typedef struct means means;

/* Kept means of the store in dir with manifest m tagged tag; NULL when out
 * of memory (then nothing is kept). */
means *means_new(const char *dir, const cltfs_manifest *m, uint32_t tag);
void means_free(means *mn);
/* The d values of sample i of x@layer into out, when kept and intact. */
bool means_get(means *mn, int layer, int64_t i, float *out);
/* Keep them (a failure is logged once and otherwise ignored). */
void means_put(means *mn, int layer, int64_t i, const float *vals);

#endif
