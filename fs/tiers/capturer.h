/* capturer.h: a store filled by running the model (prefix capturer_,
 * capture_tier_).
 *
 * A store made by `cltfs init` knows every sample's rows but holds no
 * chunk.  A capturer runs the model (capture.h) on whole batches and
 * appends every stream's chunks of them (the input hook and the MLP
 * output of each layer) through its own writer; what is stored is skipped,
 * so a killed run resumes and shards on many machines fill one store.
 * The capture tier does the same for a read under a mount: the chunk's
 * batch is captured once across threads (a mutex) and across processes
 * sharing the store (a lock file per batch).  No FUSE here.
 */
#ifndef CLTFS_CAPTURER_H
#define CLTFS_CAPTURER_H

#include "capture.h"
#include "store.h"
#include "tier.h"

typedef struct {
	cap_load_opts load;  /* device, dtype, threads, samples per pass (load.dir is ignored) */
	const char *model;   /* the checkpoint folder; NULL: the manifest's source.path */
	const char *images;  /* the image folder; NULL: the manifest's source.images */
	int ahead;           /* the capture tier: batches captured past a miss, by a thread */
	int idle_s;          /* the capture tier: free the model after this many idle seconds (0: never) */
	int compress_threads; /* threads compressing chunks, 0: every CPU on a GPU, 1 on the CPU */
	cltfs_tier *const *before; /* the capture tier: the tiers asked before it (a batch */
	int nbefore;               /* they have is not captured ahead); they outlive it */
} capture_cfg;

typedef struct capturer capturer;

/* A capturer of store s (which must outlive it) appending through writer
 * tag.  Checks now what a capture needs, so that a mount fails at start:
 * CLTFS_E_INVAL (s was not made by init), _NOTFOUND (no checkpoint or
 * image folder there), _MISMATCH (a checkpoint of another shape than the
 * store's), _FORMAT (a bad config.json or tokenizer), store errors.  The
 * model itself loads on the first capture. */
cltfs_err capturer_new(cltfs_store *s, const capture_cfg *cfg, const char *tag, capturer **out);
/* Sync the writer and free (NULL is a no-op); a failed sync is logged. */
void capturer_free(capturer *c);
/* Load the model now (else the first capture does): capture.h's errors,
 * CLTFS_E_MISMATCH for a checkpoint of another shape than the store's. */
cltfs_err capturer_load(capturer *c);
/* Is every chunk of batch b's streams in the store? */
bool capturer_batch_stored(capturer *c, int64_t b);
/* The same for any store (no capturer, no writer): what `capture
 * --status` counts. */
bool capture_batch_stored(cltfs_store *s, int64_t b);
/* Capture batches [b0, b1), as many samples per forward pass as the
 * model takes; durable: sync the writer after (else at the next sync).
 * A failure leaves every chunk that was added whole and right.
 * CLTFS_E_MISMATCH (the tokenizer or the model disagrees with the
 * manifest), capture.h's and the store's errors. */
cltfs_err capturer_run(capturer *c, int64_t b0, int64_t b1, bool durable);

/* Seal the writer's pair (what was captured made durable, the pair
 * closed: it is never appended to again) and go on in the new pair tag,
 * so that the sealed one can be uploaded once, whole; tag NULL: no new
 * pair (the end: nothing is captured more).  The pool's, the
 * sync's and store_writer_open's errors (then nothing is captured more). */
cltfs_err capturer_rotate(capturer *c, const char *tag);
/* The current pair's name <w> (packs/<w>.pack and .idx). */
const char *capturer_writer(const capturer *c);

/* Free the model and the compression threads until the next capture
 * (which loads it again), after making what was captured durable: the
 * pool's or the sync's error. */
cltfs_err capturer_unload(capturer *c);

typedef struct {
	uint64_t batches, rows;  /* captured so far */
	double run_s, load_s;    /* seconds in forward passes and writes; loading the model */
	int per_pass;            /* samples per forward pass (0 before the model loaded) */
	const char *device, *dtype; /* "cpu" / "cuda:0", "float32"; NULL before the model loaded */
} capturer_stats;
void capturer_get_stats(capturer *c, capturer_stats *out);

/* The capture tier of a store made by init: a miss captures the chunk's
 * batch into s, and then cfg->ahead batches after it on a thread of the
 * tier's own (a sequential reader finds them stored).  capturer_new's
 * errors. */
cltfs_err capture_tier_open(cltfs_store *s, const capture_cfg *cfg, cltfs_tier **out);

#endif
