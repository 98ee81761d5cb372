/* hub_internal.h: what hub.c (the source, pull) and hub_tier.c (the tier)
 * share; not an interface for anything outside fs/tiers/. */
#ifndef CLTFS_HUB_INTERNAL_H
#define CLTFS_HUB_INTERNAL_H

#include "hub.h"

/* "packs/<pack>.pack" into buf: CLTFS_E_FORMAT for a name that is not one. */
cltfs_err hub_pack_path(const char *pack, char *buf, size_t n);

/* The Hub tier over local of the store repo (its repo and its remote
 * store, checked to hold local's dataset), which must outlive it.
 * CLTFS_E_NOMEM, _IO (libcurl), store errors. */
cltfs_err hub_tier_new(hf_repo *repo, cltfs_store *remote, cltfs_store *local, cltfs_tier **out);

#endif
