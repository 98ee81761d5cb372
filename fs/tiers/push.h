/* push.h: a local store copied to an S3 prefix (prefix push_).
 *
 * What the prefix lacks or holds at another size is uploaded: every pack
 * before any index (an index never names frames that are not there), the
 * sample table, and the manifest last, so that a reader never sees a
 * store whose packs are not all there.  Packs are append-only, so a
 * file's size says whether it changed.  A push killed midway is run
 * again: finished files are skipped, a multipart upload goes on from its
 * finished parts.  No FUSE here.
 */
#ifndef CLTFS_PUSH_H
#define CLTFS_PUSH_H

#include "hfcache.h"
#include "store.h"

/* Copy the store at dir to url (s3://BUCKET/PREFIX); progress on a TTY
 * unless quiet, a summary line on stderr.  CLTFS_E_INVAL (not an S3 URL,
 * credentials refused), _MISMATCH (the prefix holds another store: its
 * cltfs.json differs), store errors (not a store), the errors of
 * hf_upload. */
cltfs_err push_store(const char *dir, const char *url, bool quiet);

#endif
