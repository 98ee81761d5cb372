/* tier.h: where a chunk comes from when the local store lacks it.
 *
 * A mount has a list of tiers tried in order after the local store (the
 * Hub, then capture: fetching a frame is cheaper than running the model).
 * The read path knows only this struct of function pointers, never which
 * tier answered: STYLE.md's "tiers are a struct of function pointers".
 * Each tier is made by its own module (tiers/hub.h, tiers/capturer.h),
 * which embeds a cltfs_tier as its first member.
 */
#ifndef CLTFS_TIER_H
#define CLTFS_TIER_H

#include "codec.h"

typedef struct cltfs_tier cltfs_tier;
struct cltfs_tier {
	/* The key of the tier's counters in .cltfs/stats ("hub", "capture"). */
	const char *name;
	/* Put chunk key's raw bytes (len of them, as the manifest says) into
	 * dst and its record into *rec, and add the chunk to the local store so
	 * that the next read is local.  Called from many threads at once; the
	 * chunk cache makes it once per chunk.  CLTFS_E_NOTFOUND when this
	 * tier cannot have the chunk (the next tier is asked), else
	 * CLTFS_E_CORRUPT, _IO, _NOMEM, ... with a message naming the source. */
	cltfs_err (*load)(cltfs_tier *t, uint64_t key, cltfs_zctx *z, uint8_t *dst, size_t len, cltfs_rec *rec);
	/* The chunk's record when the tier knows it without producing the
	 * chunk (a Hub store's index: CRCs for the zip directory), else false.
	 * NULL when the tier never knows. */
	bool (*lookup)(cltfs_tier *t, uint64_t key, cltfs_rec *rec);
	/* A chunk of the store was just read (from the store or any tier): a
	 * tier may prepare what a reader will want next (capture: the next
	 * batches).  Must not block; NULL when the tier has no use for it. */
	void (*hint)(cltfs_tier *t, uint64_t key);
	/* A JSON object of the tier's own counters into buf, for .cltfs/stats;
	 * NULL when it has none. */
	void (*stats)(cltfs_tier *t, char *buf, size_t n);
	/* Free the tier (after the filesystem that used it). */
	void (*close)(cltfs_tier *t);
};

/* Close a tier (NULL is a no-op). */
static inline void tier_close(cltfs_tier *t)
{
	if (t)
		t->close(t);
}

#endif
