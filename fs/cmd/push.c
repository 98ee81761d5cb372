/* push.c: `cltfs push STORE s3://BUCKET/PREFIX`: what the prefix lacks of
 * STORE, the manifest last (tiers/push.h). */
#include "cmd.h"
#include "push.h"

#include <stdio.h>

int cmd_push(const char *store, const char *url, bool quiet)
{
	if (!push_url_ok(url)) {
		fprintf(stderr, "cltfs: push: '%s' is not an s3://BUCKET/PREFIX destination\n", url);
		return 2;
	}
	if (push_store(store, url, quiet)) {
		fprintf(stderr, "cltfs: push: %s\n", cltfs_errmsg());
		return 1;
	}
	return 0;
}
