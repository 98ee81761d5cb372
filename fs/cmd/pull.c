/* pull.c: `cltfs pull hf://datasets/OWNER/NAME[@REV] STORE` (or
 * s3://BUCKET/PREFIX): every chunk of a Hub store repo (an S3 store) that
 * STORE lacks (STORE is created when missing). */
#include "cmd.h"
#include "hub.h"

#include <stdio.h>

int cmd_pull(const char *url, const char *store, bool quiet)
{
	if (!hf_is_remote_url(url)) {
		fprintf(stderr, "cltfs: pull: '%s' is not an hf://datasets/OWNER/NAME[@REV] or s3://BUCKET/PREFIX source\n",
			url);
		return 2;
	}
	hub_source *h = NULL;
	cltfs_store *local = NULL;
	cltfs_err e = hub_open(url, store, &h);
	if (!e)
		e = hub_local_store(h, store, &local);
	if (!e)
		e = hub_pull(h, local, quiet);
	if (e)
		fprintf(stderr, "cltfs: %s%s\n", h && !hub_is_store(h) ? "pull: " : "", cltfs_errmsg());
	store_close(local);
	hub_close(h);
	return e ? 1 : 0;
}
