/* s3.h: a prefix of an S3 bucket as an object source (prefix s3_).
 *
 * What the Hub gives a store repo by its resolve URLs, an S3-compatible
 * server gives by object URLs: the same files, fetched whole or by range,
 * retried the same way.  This module only knows what differs: where the
 * objects are (endpoint, addressing, bucket, prefix), how requests are
 * signed (libcurl's SigV4, credentials found as the AWS CLI finds them),
 * how a prefix is listed (ListObjectsV2) and how a file is uploaded
 * (PutObject, or a multipart upload resumed from a journal).  hfcache's
 * repo.c makes an hf_repo of it, so that everything above (the Hub store
 * tier, pull) runs unchanged over S3.
 */
#ifndef CLTFS_S3_H
#define CLTFS_S3_H

#include "hfcache_internal.h"
#include "http.h"

typedef struct s3_target s3_target;

/* Does s name an S3 prefix: "s3://BUCKET[/PREFIX]"? */
bool s3_is_url(const char *s);

/* Parse url and find, as the AWS CLI does: the credentials
 * (AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY [+ AWS_SESSION_TOKEN], else
 * the profile AWS_PROFILE (default "default") of AWS_SHARED_CREDENTIALS_FILE
 * (~/.aws/credentials) or AWS_CONFIG_FILE (~/.aws/config), else none:
 * unsigned requests), the region (AWS_REGION, AWS_DEFAULT_REGION, the
 * profile's region, us-east-1), the endpoint (AWS_ENDPOINT_URL_S3,
 * AWS_ENDPOINT_URL, the profile's endpoint_url, else AWS's own for the
 * region).  Addressing: CLTFS_S3_ADDRESSING=path|virtual, else path-style
 * with an endpoint URL (S3-compatible servers) and virtual-hosted on AWS.
 * CLTFS_E_INVAL (a bad URL, bucket, endpoint or addressing: the message
 * names it), _NOMEM. */
cltfs_err s3_open(const char *url, s3_target **out);
void s3_close(s3_target *t);

/* The signing of every request to the target. */
const http_aws *s3_aws(const s3_target *t);
/* "s3://bucket/prefix": how messages name it. */
const char *s3_name(const s3_target *t);
/* The URL of the prefix, with a '/' at its end: an object's URL is this
 * plus its escaped path. */
const char *s3_base(const s3_target *t);
/* Where this process keeps what it fetched whole (the manifest, indexes)
 * and its upload journals: $XDG_CACHE_HOME/cltfs/s3/<host>/<bucket>/<prefix>
 * (~/.cache/...). */
const char *s3_cache(const s3_target *t);

/* The objects under the prefix (ListObjectsV2, every page), their paths
 * relative to it, appended to l; the target remembers their sizes and
 * ETags for s3_get_file.  The errors of http_get; CLTFS_E_FORMAT
 * for an answer that is not a listing or a key that would leave the
 * folder it is kept in. */
cltfs_err s3_list(s3_target *t, const http_ctx *c, hf_entries *l);

/* One object of a listing: its path relative to the prefix, size and
 * ETag (as S3 gives it, quotes and all; "" when it gave none). */
typedef struct {
	char *path;
	uint64_t size;
	char etag[96];
} s3_object;
typedef struct {
	s3_object *e;
	size_t n, cap;
} s3_objects;
void s3_objects_free(s3_objects *l);

/* One page of a ListObjectsV2 answer (NUL-terminated XML) of the keys
 * under prefix (no '/' at its ends; "" for a whole bucket): each object
 * appended to l ("folder/" markers skipped), *token the next page's
 * continuation token (malloc'd) or NULL at the last page.
 * No I/O, for s3_list and the fuzzers; what names the prefix in messages.
 * CLTFS_E_FORMAT (not a listing, an object without Key or Size, a key not
 * under the prefix or whose path would leave the folder it is kept in, a
 * truncated page without a token), _NOMEM; entries appended stay in l. */
cltfs_err s3_parse_listing(const char *prefix, const char *what, const char *xml, s3_objects *l, char **token);

/* The object at path, whole, into the file dst (written aside, then
 * renamed), unless dst is what the last s3_list says the object is: its
 * size, and the ETag that this function recorded when it fetched dst (in
 * s3_cache/etags/).  Metadata grows with a store (samples.bin, indexes):
 * a mount fetches again only what changed.  The errors of http_get; CLTFS_E_IO for the file. */
cltfs_err s3_get_file(const s3_target *t, const http_ctx *c, const char *path, const char *dst);

/* Bytes a part of a multipart upload holds (the last one fewer), unless
 * CLTFS_S3_PART_MB says otherwise. */
#define S3_PART_SIZE (16u << 20)

/* Upload size bytes of the file at local to path under the prefix: one
 * PUT when one part holds it, else a multipart upload, parts in parallel,
 * with a journal (under s3_cache) of its upload id and its finished parts:
 * an upload killed midway goes on from the parts it finished.  done (may
 * be NULL) is added the bytes as they are sent.  http_send's errors,
 * CLTFS_E_IO for the file or the journal, _FORMAT for an answer S3 would
 * not give. */
cltfs_err s3_upload(const s3_target *t, const http_ctx *c, const char *path, const char *local, uint64_t size,
		    atomic_ullong *done);

#endif
