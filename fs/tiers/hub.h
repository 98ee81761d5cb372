/* hub.h: a Hugging Face Hub repo as a source (prefix hub_).
 *
 * A repo with cltfs.json at its root is a cltfs store: its manifest and
 * indexes come into the HF cache at open (they are small) and make a
 * read-only "remote" store whose packs are never downloaded whole.  The
 * Hub tier fetches a missing chunk's frame by range request, checks it and
 * appends it to the local store; `cltfs pull` fetches every missing one.
 * Any other repo is served file by file (plain.h).  No FUSE here.
 */
#ifndef CLTFS_HUB_H
#define CLTFS_HUB_H

#include "hfcache.h"
#include "store.h"
#include "tier.h"

typedef struct hub_source hub_source;

/* hf://datasets/owner/name[@rev] (or hf://owner/name, a model): resolve
 * the revision to one commit, list the repo, and for a store repo fetch
 * its manifest and indexes, and learn where its first packs are served
 * from unless local (the local store the source will fill; NULL: the
 * default one, hub_local_store's) holds them already.  The errors of
 * hfcache.h (CLTFS_E_NOTFOUND for a repo, revision or file that does not
 * exist, _IO, ...), _FORMAT for a bad manifest or index. */
cltfs_err hub_open(const char *url, const char *local, hub_source **out);
void hub_close(hub_source *h);
/* Has the repo a cltfs.json at its root? */
bool hub_is_store(const hub_source *h);
hf_repo *hub_repo(hub_source *h);
/* The repo's files (sorted by path), as listed at open. */
const hf_entry *hub_entries(const hub_source *h, size_t *n);

/* The local store that keeps what a store repo's tier fetches: dir, or
 * (dir NULL) one per repo and commit under $XDG_CACHE_HOME/cltfs/hub
 * (~/.cache/cltfs/hub).  Created from the repo's manifest when missing; an
 * existing one must hold the same manifest (CLTFS_E_MISMATCH), or its
 * chunks would be another dataset's.  Store errors otherwise. */
cltfs_err hub_local_store(hub_source *h, const char *dir, cltfs_store **out);
/* The Hub tier of a store repo over local, a store with the same manifest
 * (hub_local_store, or one the caller checked): the source and the store
 * must outlive the tier.  Fetched frames are appended through the tier's
 * own writer and made durable about once a second.  CLTFS_E_INVAL for a
 * repo that is not a store, _MISMATCH for another manifest, store errors. */
cltfs_err hub_tier_open(hub_source *h, cltfs_store *local, cltfs_tier **out);
/* Every chunk local lacks, in parallel range requests (neighbouring frames
 * in one request), each checked before it is kept; progress on a TTY
 * unless quiet.  What arrived is kept also after an error.  hfcache.h's
 * errors, CLTFS_E_CORRUPT for a frame that fails its check, store errors. */
cltfs_err hub_pull(hub_source *h, cltfs_store *local, bool quiet);

/* A model given by its Hub id (owner/name[@rev]): its checkpoint files
 * (config and tokenizer files, safetensors shards) in the HF cache, fetched
 * when missing (each named on stderr unless quiet), or offline from refs/.
 * The snapshot folder and the commit, malloc'd.  hfcache.h's errors. */
cltfs_err hub_model_dir(const char *id, char **dir, char **commit, bool quiet);

#endif
