/* stats.c: `cltfs stats STORE`: the store's normalization statistics
 * (normstats.h) computed in one pass and kept as STORE/norm_stats.json,
 * which every later mount serves as .cltfs/norm_stats.json at once. */
#include "cmd.h"
#include "normstats.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
	bool tty;
	double t0, last;
} progress_state;

/* On a terminal a line redrawn in place; else a line every 30 s, so a
 * batch job's log shows it is alive without filling up. */
static void progress(void *arg, uint64_t done, uint64_t total)
{
	progress_state *p = arg;
	double now = cltfs_now(), dt = now - p->t0;
	if (!p->tty && now - p->last < 30 && done < total)
		return;
	p->last = now;
	double left = done && dt > 0 ? dt * (double)(total - done) / (double)done : 0;
	fprintf(stderr, "%sstats: %llu/%llu chunks (%.0f%%), %.0f s left%s", p->tty ? "\r" : "",
		(unsigned long long)done, (unsigned long long)total, total ? 100.0 * (double)done / (double)total : 100.0,
		left, p->tty ? "   " : "\n");
	fflush(stderr);
}

int cmd_stats(const char *dir, bool force, bool quiet)
{
	cltfs_store *s = NULL;
	cltfs_fs *fs = NULL;
	cltfs_opts o = {.dtype = -1, .cache_mb = 16};
	char *json = NULL, path[4096];
	size_t len = 0;
	cltfs_err e = store_open(dir, &s);
	if (!e)
		e = fs_new(s, &o, &fs);
	if (!e) {
		normstats_path(fs, path, sizeof path);
		cltfs_err le = force ? CLTFS_E_NOTFOUND : normstats_load(fs, &json, &len);
		if (!le) {
			if (!quiet)
				printf("%s: up to date (--force computes it again)\n", path);
			goto done;
		}
		if (le == CLTFS_E_CORRUPT) /* say why it is computed again */
			fprintf(stderr, "cltfs: stats: %s: computing it again\n", cltfs_errmsg());
		progress_state p = {!quiet && isatty(2), cltfs_now(), cltfs_now()};
		e = normstats_compute(fs, quiet ? NULL : progress, &p, &json, &len);
		if (p.tty)
			fputc('\n', stderr);
	}
	if (!e)
		e = normstats_save(fs, json, len);
	if (!e && !quiet)
		printf("%s: %zu bytes, %lld rows per stream, %d streams\n", path, len, (long long)store_manifest(s)->total_rows,
		       store_manifest(s)->n_x_layers + store_manifest(s)->n_mlp_layers);
done:
	if (e)
		fprintf(stderr, "cltfs: stats: %s\n", cltfs_errmsg());
	free(json);
	fs_free(fs);
	store_close(s);
	return e ? 1 : 0;
}
