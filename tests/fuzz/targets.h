/* targets.h: the fuzz entry points, one per parser of untrusted input.
 * Each takes any bytes, returns 0, and must never crash, hang, leak or
 * read out of bounds; a broken invariant of a parse that succeeded aborts.
 * libfuzzer.c runs one under libFuzzer; replay.c runs a corpus through
 * them by file name prefix (see README). */
#ifndef CLTFS_FUZZ_TARGETS_H
#define CLTFS_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

int cltfs_fuzz_frame(const uint8_t *data, size_t size);       /* frame- */
int cltfs_fuzz_record(const uint8_t *data, size_t size);      /* rec- */
int cltfs_fuzz_manifest(const uint8_t *data, size_t size);    /* json- */
int cltfs_fuzz_pt(const uint8_t *data, size_t size);          /* pt- */
int cltfs_fuzz_pickle(const uint8_t *data, size_t size);      /* pkl- */
int cltfs_fuzz_tokenizer(const uint8_t *data, size_t size);   /* tok- */
int cltfs_fuzz_safetensors(const uint8_t *data, size_t size); /* st- */
int cltfs_fuzz_hub_json(const uint8_t *data, size_t size);    /* hub- */
int cltfs_fuzz_table(const uint8_t *data, size_t size);       /* tab- */
int cltfs_fuzz_queries(const uint8_t *data, size_t size);     /* q- */
int cltfs_fuzz_s3_list(const uint8_t *data, size_t size);     /* s3- */

#endif
