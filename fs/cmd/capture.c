/* capture.c: `cltfs capture STORE [--rows A:B | --shard I/N]`: run the model
 * on the batches of a store made by init that lack chunks. */
#include "cmd.h"

#include <stdio.h>
#include <unistd.h>

/* The batches of --shard i/N, or of --rows a:b, or all. */
static cltfs_err batch_range(const cltfs_manifest *m, const capture_opts *o, int64_t *b0, int64_t *b1)
{
	*b0 = 0;
	*b1 = m->n_batches;
	if (o->shards > 0) {
		*b0 = m->n_batches * (o->shard - 1) / o->shards;
		*b1 = m->n_batches * o->shard / o->shards;
	} else if (o->row1 > o->row0) {
		if (o->row0 >= m->total_rows)
			return cltfs_fail(CLTFS_E_INVAL, "--rows %lld:%lld: the store has %lld rows", (long long)o->row0,
					  (long long)o->row1, (long long)m->total_rows);
		int64_t last = (o->row1 < m->total_rows ? o->row1 : m->total_rows) - 1;
		*b0 = cltfs_manifest_batch_of_chunk(m, cltfs_manifest_chunk_of(m, o->row0));
		*b1 = cltfs_manifest_batch_of_chunk(m, cltfs_manifest_chunk_of(m, last)) + 1;
	}
	return CLTFS_OK;
}

static cltfs_err run(cltfs_store *s, const capture_opts *o)
{
	const cltfs_manifest *m = store_manifest(s);
	int64_t b0, b1;
	char tag[64] = "capture";
	if (o->shards > 0)
		snprintf(tag, sizeof tag, "capture-%dof%d", o->shard, o->shards);
	capturer *c = NULL;
	cltfs_err e = batch_range(m, o, &b0, &b1);
	if (!e)
		e = capturer_new(s, &o->cfg, tag, &c);
	bool tty = !o->quiet && isatty(2);
	double t0 = cltfs_now(), synced = t0;
	int64_t rows = 0, done = 0;
	capturer_stats st = {0};
	for (int64_t b = b0; !e && b < b1;) {
		if (capturer_batch_stored(c, b)) {
			b++;
			continue;
		}
		if ((e = capturer_load(c)))
			break;
		capturer_get_stats(c, &st);
		/* consecutive missing batches, as many samples as a forward pass takes */
		int64_t end = b + 1, n = cltfs_manifest_batch(m, b).samples;
		for (int64_t k; end < b1 && n + (k = cltfs_manifest_batch(m, end).samples) <= st.per_pass &&
				!capturer_batch_stored(c, end);
		     end++)
			n += k;
		/* durable about once a second, not per batch (an fsync can cost
		 * more than a small batch): a kill loses at most that second */
		bool durable = cltfs_now() - synced >= 1.0 || end == b1;
		e = capturer_run(c, b, end, durable);
		if (durable)
			synced = cltfs_now();
		for (; b < end; b++, done++)
			rows += cltfs_manifest_batch(m, b).rows;
		if (tty && !e) {
			double dt = cltfs_now() - t0;
			fprintf(stderr, "\rcapture: batch %lld/%lld, %lld rows captured, %.0f tokens/s   ",
				(long long)(b - b0), (long long)(b1 - b0), (long long)rows, dt > 0 ? (double)rows / dt : 0.0);
		}
	}
	if (tty)
		fputc('\n', stderr);
	if (c)
		capturer_get_stats(c, &st);
	double secs = cltfs_now() - t0 - st.load_s;
	if (!e && !o->quiet && st.device)
		fprintf(stderr, "capture: %lld of %lld batches captured: %lld rows in %.2f s, %.0f tokens/s on %s (%s), "
			"after %.2f s loading the model\n", (long long)done, (long long)(b1 - b0), (long long)rows, secs,
			secs > 0 ? (double)rows / secs : 0.0, st.device, st.dtype, st.load_s);
	else if (!e && !o->quiet)
		fprintf(stderr, "capture: all %lld batches were stored already\n", (long long)(b1 - b0));
	capturer_free(c);
	return e;
}

int cmd_capture(const char *store, const capture_opts *o)
{
	cltfs_store *s;
	cltfs_err e = store_open(store, &s);
	if (!e) {
		e = run(s, o);
		store_close(s);
	}
	if (e)
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
	return e ? 1 : 0;
}
