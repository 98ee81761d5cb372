/* hub_internal.h: what hub.c (the source, pull) and hub_tier.c (the tier)
 * share; not an interface for anything outside fs/tiers/. */
#ifndef CLTFS_HUB_INTERNAL_H
#define CLTFS_HUB_INTERNAL_H

#include "hub.h"

/* "packs/<pack>.pack" into buf: CLTFS_E_FORMAT for a name that is not one. */
cltfs_err hub_pack_path(const char *pack, char *buf, size_t n);

/* Is pack's blob whole in the HF cache (huggingface_hub's snapshot_download
 * put it there, or anything else did): its snapshot link resolves to a
 * regular file of the size the repo's listing e (sorted by path) gives?
 * Then it is a local source of the pack's frames, its snapshot path in
 * buf. */
bool hub_pack_blob(hf_repo *repo, const hf_entry *e, size_t n, const char *pack, char *buf, size_t len);

/* The Hub tier over local of the store repo (its repo, its listing and its
 * remote store, checked to hold local's dataset), which must outlive it.
 * CLTFS_E_NOMEM, _IO (libcurl), store errors. */
cltfs_err hub_tier_new(hf_repo *repo, const hf_entry *e, size_t n, cltfs_store *remote, cltfs_store *local,
		       cltfs_tier **out);

#endif
