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

/* Is url a destination push takes: s3://BUCKET/PREFIX (not the Hub). */
bool push_url_ok(const char *url);

/* Which writer pairs (packs/<w>.{pack,idx}) a push takes: a capture
 * pushes only the pairs of its own shard that it will not append to. */
typedef bool (*push_pick_fn)(const char *writer, void *arg);

typedef struct {
	push_pick_fn pick;   /* NULL: every pair */
	void *pick_arg;
	/* The sample table and the manifest only while the prefix has no
	 * manifest, and only once it holds a pack: a capture filling a prefix
	 * makes it a store after its first packs, and never uploads the
	 * manifest again. */
	bool meta_once;
	bool quiet;          /* no progress line, no summary line */
	size_t files;        /* out: files uploaded */
	uint64_t bytes;      /* out: their bytes */
} push_opts;

/* push_store without opening the store first (the caller has it open),
 * as o says.  push_store's errors. */
cltfs_err push_some(const char *dir, const char *url, push_opts *o);

/* push_some on a thread of its own, each time it is kicked, so that the
 * caller (a capture) goes on while files upload.  A push that fails is
 * logged and left for the next kick: nothing local is lost, the next
 * push finds what the prefix lacks. */
typedef struct push_bg push_bg;
/* o is copied (its pick_arg must outlive the pusher).  CLTFS_E_NOMEM,
 * _IO (no thread). */
cltfs_err push_bg_start(const char *dir, const char *url, const push_opts *o, push_bg **out);
/* Push soon (a push running now is followed by another). */
void push_bg_kick(push_bg *b);
/* Did the last push fail (or none ran yet after a kick)? */
bool push_bg_behind(push_bg *b);
/* Wait for the thread's push, stop it, push once more on the caller's
 * thread and free: that last push's error; *last counts the files and
 * bytes of every push that completed, this one too. */
cltfs_err push_bg_finish(push_bg *b, push_opts *last);

#endif
