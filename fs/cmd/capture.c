/* capture.c: `cltfs capture STORE [--rows A:B | --shard I/N]`: run the model
 * on the batches of a store made by init that lack chunks; the shard of a
 * Slurm array task; `capture --status`.
 *
 * Shard i of N (1-based) is batches [n*(i-1)/N, n*i/N) and writes the pair
 * <host>-capture-<i>of<N>, so the status of an array is read from the
 * store alone: the pack names say how it was split, the index says which
 * batches are whole.
 *
 * With --push, the shard seals its pair every --push-every seconds (once
 * it holds --push-min-mb) and goes on in the next one,
 * <host>-capture-<i>of<N>-<seq>, while a thread uploads the sealed pairs:
 * S3 objects are immutable, so a pack is uploaded once, when it is
 * whole, and the traffic is what was captured, not a growing pack again
 * and again. */
#include "cmd.h"
#include "push.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The batches of shard i of n. */
static void shard_range(const cltfs_manifest *m, int i, int n, int64_t *b0, int64_t *b1)
{
	*b0 = m->n_batches * (i - 1) / n;
	*b1 = m->n_batches * i / n;
}

/* The batches of --shard i/N, or of --rows a:b, or all. */
static cltfs_err batch_range(const cltfs_manifest *m, const capture_opts *o, int64_t *b0, int64_t *b1)
{
	*b0 = 0;
	*b1 = m->n_batches;
	if (o->shards > 0) {
		shard_range(m, o->shard, o->shards, b0, b1);
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

/* ---- the writer pairs in a store ---- */

/* What a writer's pair name says: shard i of n, or n 0 for a writer of no
 * shard (a whole capture, a mount).  <host>-capture-<i>of<n>[-<seq>][-<pid>]
 * (<seq>: a pair sealed and pushed by capture --push); the
 * host may hold dashes, so the last "-capture-" counts.  A count past
 * max_n is no shard (a name no capture wrote must not make --status print
 * a line for each of 2^31 shards). */
static void shard_of_pack(const char *name, int64_t max_n, int *i, int *n)
{
	*i = *n = 0;
	const char *p = NULL;
	for (const char *q = name; (q = strstr(q, "-capture-")); q++)
		p = q;
	if (!p)
		return;
	p += strlen("-capture-");
	const char *of = strstr(p, "of");
	if (!of)
		return;
	const char *end = of + 2 + strcspn(of + 2, "-");
	int64_t a, b;
	if (cltfs_parse_dec(p, (size_t)(of - p), &a) && cltfs_parse_dec(of + 2, (size_t)(end - of - 2), &b) && a >= 1 &&
	    a <= b && b <= max_n) {
		*i = (int)a;
		*n = (int)b;
	}
}

typedef struct {
	char name[256];
	int shard, shards;
	int64_t records; /* index records: chunks, durable */
} status_pack;


/* Every index file under packs/: its name, shard and durable records. */
static cltfs_err list_packs(const char *dir, int64_t max_n, status_pack **out, size_t *n)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/packs", dir);
	DIR *d = opendir(path);
	if (!d)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
	status_pack *v = NULL, *p;
	size_t cap = 0;
	*n = 0;
	cltfs_err e = CLTFS_OK;
	for (struct dirent *de; !e && (de = readdir(d));) {
		size_t len = strlen(de->d_name);
		if (len < 5 || len - 4 >= sizeof p->name || strcmp(de->d_name + len - 4, ".idx"))
			continue;
		if (!cltfs_grow(&v, &cap, *n + 1, sizeof *v)) {
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			break;
		}
		p = &v[(*n)++];
		snprintf(p->name, sizeof p->name, "%.*s", (int)(len - 4), de->d_name);
		shard_of_pack(p->name, max_n, &p->shard, &p->shards);
		struct stat st;
		snprintf(path, sizeof path, "%s/packs/%s", dir, de->d_name);
		p->records = stat(path, &st) || st.st_size < CLTFS_FILE_HEADER ? 0
			     : (st.st_size - CLTFS_FILE_HEADER) / CLTFS_REC_SIZE;
	}
	closedir(d);
	if (e) {
		free(v);
		return e;
	}
	*out = v;
	return CLTFS_OK;
}

/* ---- pushing as it goes ---- */

/* The pairs of one capture (or shard): <host>-<base>, its earlier pairs
 * without --push, and <host>-<base>-<seq>[-<pid>]. */
typedef struct {
	char base[64];        /* "capture-<i>of<n>" or "capture" */
	atomic_llong sealed;  /* the highest <seq> that no writer appends to */
	int64_t seq;          /* the pair being written */
	push_bg *bg;
	double last;          /* when the pair was last looked at */
	const char *dir, *url;
} pushing;

/* Is writer one of base's pairs, and its <seq> (-1: none)? */
static bool seq_of(const char *writer, const char *base, int64_t *seq)
{
	size_t n = strlen(base);
	const char *at = NULL;
	for (const char *q = writer; (q = strstr(q, base)); q++)
		if (q > writer && q[-1] == '-' && (q[n] == '\0' || q[n] == '-'))
			at = q + n;
	if (!at)
		return false;
	*seq = -1;
	if (!*at)
		return true;
	at++;
	return cltfs_parse_dec(at, strcspn(at, "-"), seq);
}

/* push_pick_fn: this shard's pairs that are sealed, as they stand now. */
static bool pick_sealed(const char *writer, void *arg)
{
	pushing *p = arg;
	int64_t seq;
	return seq_of(writer, p->base, &seq) && seq <= atomic_load(&p->sealed);
}

/* The first <seq> after every pair of base in the store: a restarted
 * shard never appends to a pair that an earlier run may have pushed. */
static cltfs_err next_seq(pushing *p)
{
	status_pack *v;
	size_t n;
	cltfs_err e = list_packs(p->dir, 0, &v, &n);
	p->seq = 1;
	for (size_t i = 0; !e && i < n; i++) {
		int64_t seq;
		if (seq_of(v[i].name, p->base, &seq) && seq >= p->seq)
			p->seq = seq + 1;
	}
	if (!e)
		free(v);
	return e;
}

static void pair_tag(const pushing *p, char *tag, size_t n)
{
	snprintf(tag, n, "%s-%lld", p->base, (long long)p->seq);
}

static cltfs_err push_begin(cltfs_store *s, const capture_opts *o, const char *base, pushing *p)
{
	*p = (pushing){.dir = store_dir(s), .url = o->push, .last = cltfs_now()};
	snprintf(p->base, sizeof p->base, "%s", base);
	cltfs_err e = next_seq(p);
	atomic_store(&p->sealed, p->seq - 1); /* every earlier pair: a killed run's, pushed or not */
	push_opts po = {.pick = pick_sealed, .pick_arg = p, .meta_once = true};
	if (!e)
		e = push_bg_start(p->dir, p->url, &po, &p->bg);
	if (!e)
		push_bg_kick(p->bg); /* what an earlier run sealed and did not push */
	return e;
}

/* Bytes of the file packs/<w><ext> (0: none). */
static int64_t pair_bytes(const pushing *p, const char *w, const char *ext)
{
	char path[4096];
	struct stat st;
	snprintf(path, sizeof path, "%s/packs/%s%s", p->dir, w, ext);
	return stat(path, &st) ? 0 : (int64_t)st.st_size;
}

/* After a durable capture: every --push-every seconds, seal the pair once
 * it holds --push-min-mb and push it; a push that failed is tried again. */
static cltfs_err push_tick(pushing *p, capturer *c, const capture_opts *o)
{
	if (cltfs_now() - p->last < o->push_every)
		return CLTFS_OK;
	p->last = cltfs_now();
	const char *w = capturer_writer(c);
	if (pair_bytes(p, w, ".idx") <= CLTFS_FILE_HEADER || pair_bytes(p, w, ".pack") < o->push_min) {
		if (push_bg_behind(p->bg))
			push_bg_kick(p->bg);
		return CLTFS_OK;
	}
	char tag[96];
	p->seq++;
	pair_tag(p, tag, sizeof tag);
	cltfs_err e = capturer_rotate(c, tag);
	if (!e) {
		atomic_store(&p->sealed, p->seq - 1);
		push_bg_kick(p->bg);
	}
	return e;
}

/* The end: seal the last pair (a pair left empty goes: there is nothing
 * to upload), then push what the prefix lacks, here.  Its error, naming
 * the bucket: the captured batches are safe in the store. */
static cltfs_err push_end(pushing *p, capturer *c, const capture_opts *o)
{
	char w[256];
	snprintf(w, sizeof w, "%s", c ? capturer_writer(c) : "");
	cltfs_err e = c ? capturer_rotate(c, NULL) : CLTFS_OK;
	if (e)
		cltfs_log("sealing %s: %s", w, cltfs_errmsg());
	else if (*w && pair_bytes(p, w, ".idx") <= CLTFS_FILE_HEADER) {
		char path[4096];
		snprintf(path, sizeof path, "%s/packs/%s.pack", p->dir, w);
		unlink(path);
		snprintf(path, sizeof path, "%s/packs/%s.idx", p->dir, w);
		unlink(path);
	}
	if (!e)
		atomic_store(&p->sealed, p->seq);
	push_opts last;
	cltfs_err pe = push_bg_finish(p->bg, &last);
	if (pe)
		return cltfs_wrap(pe, "the last push to %s failed (the captured batches are in %s: run this "
				  "capture again, or `cltfs push`, to upload them)", p->url, p->dir);
	if (!o->quiet)
		fprintf(stderr, "capture: pushed to %s: %zu files (%.1f MB)\n", p->url, last.files,
			(double)last.bytes / 1e6);
	return e;
}

static cltfs_err run(cltfs_store *s, const capture_opts *o)
{
	const cltfs_manifest *m = store_manifest(s);
	int64_t b0, b1;
	char tag[96] = "capture";
	if (o->shards > 0)
		snprintf(tag, sizeof tag, "capture-%dof%d", o->shard, o->shards);
	capturer *c = NULL;
	pushing push = {0};
	cltfs_err e = batch_range(m, o, &b0, &b1);
	if (!e && o->push && !(e = push_begin(s, o, tag, &push)))
		pair_tag(&push, tag, sizeof tag);
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
		if (tty && !st.device) /* a 7B checkpoint takes a while: say what the wait is */
			fprintf(stderr, "\rcapture: loading the model   ");
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
		if (!e && durable && push.bg)
			e = push_tick(&push, c, o);
		for (; b < end; b++, done++)
			rows += cltfs_manifest_batch(m, b).rows;
		if (tty && !e) { /* the rate of the model's work, as the summary's: loading left out */
			double dt = cltfs_now() - t0 - st.load_s;
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
	if (push.bg) { /* after a failed capture too: what it captured is kept, and uploaded */
		char why[1024];
		snprintf(why, sizeof why, "%s", e ? cltfs_errmsg() : "");
		cltfs_err pe = push_end(&push, c, o);
		if (e && pe)
			cltfs_log("%s", cltfs_errmsg());
		e = e ? cltfs_fail(e, "%s", why) : pe;
	}
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

/* ---- a Slurm array task ---- */

/* SLURM_ARRAY_TASK_<name> as a number (at most INT32_MAX); def when it is
 * unset and def >= 0, else an error naming the variable. */
static cltfs_err slurm_var(const char *name, int64_t def, int64_t *v)
{
	char var[64];
	snprintf(var, sizeof var, "SLURM_ARRAY_TASK_%s", name);
	const char *s = getenv(var);
	if (!s && def >= 0) {
		*v = def;
		return CLTFS_OK;
	}
	if (!s)
		return cltfs_fail(CLTFS_E_INVAL, "SLURM_ARRAY_TASK_ID is set but %s is not: not a Slurm array task? "
				  "give --shard I/N", var);
	if (!cltfs_parse_dec(s, strlen(s), v) || *v > INT32_MAX)
		return cltfs_fail(CLTFS_E_INVAL, "%s=%s: not a task number of a Slurm array", var, s);
	return CLTFS_OK;
}

cltfs_err cmd_slurm_shard(int *shard, int *shards, char *said, size_t n)
{
	*shards = 0;
	if (!getenv("SLURM_ARRAY_TASK_ID"))
		return CLTFS_OK;
	int64_t id, count, min, step;
	cltfs_err e = slurm_var("ID", -1, &id);
	if (!e)
		e = slurm_var("COUNT", -1, &count);
	if (!e)
		e = slurm_var("MIN", 0, &min);
	if (!e)
		e = slurm_var("STEP", 1, &step);
	if (e)
		return e;
	if (count < 1)
		return cltfs_fail(CLTFS_E_INVAL, "SLURM_ARRAY_TASK_COUNT=%lld: an array has at least one task",
				  (long long)count);
	if (step < 1)
		return cltfs_fail(CLTFS_E_INVAL, "SLURM_ARRAY_TASK_STEP=%lld: a step is at least 1", (long long)step);
	/* --array=A-B[:S]: task ID is shard (ID - A) / S.  A list with holes
	 * (--array=0,1,7: Slurm says MIN 0, STEP 1, COUNT 3) has no such
	 * numbering: its last task lands outside, and fails saying so */
	int64_t k = id - min;
	if (k < 0 || k % step || k / step >= count)
		return cltfs_fail(CLTFS_E_INVAL, "SLURM_ARRAY_TASK_ID=%lld is outside the array "
				  "(SLURM_ARRAY_TASK_MIN=%lld, SLURM_ARRAY_TASK_STEP=%lld, SLURM_ARRAY_TASK_COUNT=%lld): "
				  "submit a range such as --array=0-%lld, or give --shard I/N", (long long)id,
				  (long long)min, (long long)step, (long long)count, (long long)count - 1);
	*shard = (int)(k / step) + 1;
	*shards = (int)count;
	snprintf(said, n, "shard %d/%d from SLURM_ARRAY_TASK_ID=%lld (SLURM_ARRAY_TASK_MIN=%lld, "
		 "SLURM_ARRAY_TASK_COUNT=%lld)", *shard, *shards, (long long)id, (long long)min, (long long)count);
	return CLTFS_OK;
}

/* ---- capture --status ---- */

static int pack_order(const void *a, const void *b)
{
	const status_pack *p = a, *q = b;
	if (p->shards != q->shards)
		return p->shards < q->shards ? -1 : 1;
	if (p->shard != q->shard)
		return p->shard < q->shard ? -1 : 1;
	return strcmp(p->name, q->name);
}

/* Batches [b0, b1) that are whole, and their samples, of all of them. */
static void count_done(const cltfs_manifest *m, const bool *done, int64_t b0, int64_t b1, int64_t c[4])
{
	c[0] = c[1] = c[2] = c[3] = 0;
	for (int64_t b = b0; b < b1; b++) {
		int64_t s = cltfs_manifest_batch(m, b).samples;
		c[0] += done[b];
		c[2] += done[b] ? s : 0;
		c[3] += s;
	}
	c[1] = b1 - b0;
}

static void print_progress(const char *what, const int64_t c[4])
{
	printf("%s: %lld/%lld batches, %lld/%lld samples, %.1f%%", what, (long long)c[0], (long long)c[1],
	       (long long)c[2], (long long)c[3], c[3] ? 100.0 * (double)c[2] / (double)c[3] : 100.0);
}

/* One line a shard of each way the store was split (the shards of i of n
 * for every n a pack name shows), then the writers of no shard, then all. */
static void print_status(const cltfs_manifest *m, const bool *done, const status_pack *p, size_t np)
{
	int64_t c[4];
	char what[64];
	size_t k = 0;
	for (; k < np && !p[k].shards; k++)
		;
	for (size_t j = k; j < np; j++) {
		if (j > k && p[j].shards == p[j - 1].shards)
			continue;
		int n = p[j].shards;
		size_t at = j;
		for (int i = 1; i <= n; i++) {
			int64_t b0, b1;
			shard_range(m, i, n, &b0, &b1);
			count_done(m, done, b0, b1, c);
			snprintf(what, sizeof what, "shard %d/%d", i, n);
			print_progress(what, c);
			const char *sep = "  (";
			for (; at < np && p[at].shards == n && p[at].shard == i; at++, sep = ", ")
				printf("%s%s: %lld chunks", sep, p[at].name, (long long)p[at].records);
			printf("%s\n", strcmp(sep, "  (") ? ")" : "  (no pack yet)");
		}
	}
	for (size_t j = 0; j < k; j++)
		printf("other writer %s: %lld chunks\n", p[j].name, (long long)p[j].records);
	count_done(m, done, 0, m->n_batches, c);
	print_progress("all", c);
	printf("\n");
}

static cltfs_err status(cltfs_store *s)
{
	const cltfs_manifest *m = store_manifest(s);
	if (!m->source_kind || strcmp(m->source_kind, "capture"))
		return cltfs_fail(CLTFS_E_INVAL, "%s: not a store made by `cltfs init` (nothing is captured into it)",
				  store_dir(s));
	status_pack *p = NULL;
	size_t np = 0;
	bool *done = calloc((size_t)m->n_batches + 1, sizeof *done);
	/* an array of more tasks than batches is possible (its last shards
	 * are empty), one of thousands more is not */
	int64_t max_n = m->n_batches + 4096;
	cltfs_err e = done ? list_packs(store_dir(s), max_n, &p, &np) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e) {
		if (np)
			qsort(p, np, sizeof *p, pack_order);
		for (int64_t b = 0; b < m->n_batches; b++)
			done[b] = capture_batch_stored(s, b);
		print_status(m, done, p, np);
	}
	free(p);
	free(done);
	return e;
}

int cmd_capture_status(const char *store)
{
	cltfs_store *s;
	cltfs_err e = store_open(store, &s);
	if (!e) {
		e = status(s);
		store_close(s);
	}
	if (e)
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
	return e ? 1 : 0;
}
