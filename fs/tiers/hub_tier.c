/* hub_tier.c: the Hub store tier (hub.h): the chunks a local store lacks,
 * fetched from a store repo's packs by range requests, checked against
 * their index records, and kept in the local store.
 *
 * Over a real link a request costs a round trip (tens of ms) before its
 * first byte: one request per frame, each waited for, is latency-bound.
 *
 * - Spans.  Frames that follow each other in a pack (adjacent, or at most
 *   GAP_MAX apart) and that the local store lacks go in one range request,
 *   up to SPAN_MAX bytes.  All requests go to one hf_ranges: one thread, one
 *   libcurl multi handle, HTTP/1.1 connections kept alive, up to 8 a host
 *   (ranges.c: one HTTP/2 connection carries at most its TCP window a
 *   round trip).
 * - Frame by frame.  A span's bytes land in its buffer as they arrive; a
 *   load waits for its own frame's bytes only (plus the bytes before them in
 *   the span: what coalescing costs), then checks it (zstd checksum, CRC-32
 *   of the record) and decodes it into the cache on its own thread while
 *   the rest is still arriving.  A frame is checked before it is used or
 *   kept; the append to the local store is left to a background thread.
 * - Readers.  A cursor follows a reader through a pack's index, record by
 *   record (a writer appends frames and records in one order).  A load that
 *   shows the reader going on ahead of what it asked (a frame the cursor
 *   already fetched, or the next while an earlier load still waits: the
 *   engine's readahead at work) doubles the cursor's window, and the frames
 *   up to a window past the last one asked for are requested at once, in
 *   several spans that travel in parallel.  On a Hub on loopback a reader
 *   that asks one frame at a time (-o readahead=0) is fetched one frame at
 *   a time; on S3 every reader starts with a window (S3_SPAN_MIN).
 * - How far ahead.  To never wait on the link, a reader needs in flight
 *   what it reads in a round trip: the bandwidth-delay product.  The
 *   window's cap is that of a reader as fast as local decoding (READER_RATE)
 *   with the shortest round trip seen (hf_stats.rtt_us), at least
 *   AHEAD_FLOOR (S3_FLOOR on S3), at most the memory the tier may hold in
 *   spans (CLTFS_HUB_AHEAD_MB, default 128, shared by all readers): 4 MiB
 *   on loopback, 50 MiB at 50 ms.
 *   Where a round trip costs more than decoding AHEAD_MIN, a new reader's
 *   first load brings a whole window with it: it waits the round trip
 *   anyway, and what follows it in the pack comes in the same wait.
 * - Blobs.  A pack that the HF cache holds whole (huggingface_hub's
 *   snapshot_download of the store repo put it there) is read there, not
 *   fetched: its frames are checked as fetched ones are, not copied into
 *   the local store (the blob is the local copy), and served offline too.
 * - Nothing fetched is lost.  Frames fetched ahead wait in their span's
 *   buffer for a load; those nobody asks for within KEEP_AFTER seconds, and
 *   all at close, are checked and kept by the background thread, which also
 *   makes what was kept durable about once a second.
 */
#include "hub_internal.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SPAN_MAX (16u << 20)  /* bytes of one range request */
#define GAP_MAX (64u << 10)   /* bytes of other frames read through, rather than a request more */
#define AHEAD_MIN (1u << 20)  /* a reader's first window */
#define AHEAD_FLOOR (4u << 20)
/* S3: a GET costs the server far more than its round trip shows (AWS
 * advises 8-16 MB byte ranges; s3rver spends ~2 ms of CPU on each, so 1 MiB
 * ranges halve even curl: 261 vs 487 MB/s, bench probe), so a sequential
 * reader's spans are 8 MiB at least, in a window of two. */
#define S3_SPAN_MIN (8u << 20)
#define S3_FLOOR (2 * S3_SPAN_MIN)
#define READER_RATE 1e9       /* bytes/s: about what one core decodes */
#define AHEAD_SPANS 6         /* spans fetched ahead in flight: leaves connections for loads */
/* Default of CLTFS_HUB_AHEAD_MB.  A CLT step reads several layers at once:
 * several readers, each wanting a round trip's worth in flight, beside the
 * frames that arrived and wait for a load.  24 MB split among the 4
 * readers of s3_bench's batch-major read over 50 ms round trips gave 0.36
 * of curl; 64 MB 0.6, 128 MB 0.7 (CPU-bound beyond: the proxy, the server
 * and cltfs on 2 cores).  Memory held only while readers wait on a link. */
#define AHEAD_MB_DEFAULT 128
#define NCURSORS 8
#define SKIP_MAX 16           /* records a reader's loads may run ahead of its cursor (threads race) */
#define NBUCKETS 1024
#define KEEP_AFTER 2.0        /* seconds a fetched frame waits for a load */
#define PASSED_BY (4u << 20)  /* bytes a reader goes past a frame before it stops waiting for a load */
#define POOL_MAX 16           /* span buffers kept for reuse */
#define BG_NICE 10
#define KEEP_BATCH 64         /* frames the background thread takes per scan of the spans */

/* A frame in the table: its bytes coming or there (F_WAIT); checked and
 * used by a load, to be appended by the background thread (F_TOKEEP);
 * taken by a load or the background thread to check (F_TAKEN). */
enum { F_WAIT, F_TOKEEP, F_TAKEN };

typedef struct hub_tier hub_tier;
typedef struct span span;

typedef struct frame {
	struct frame *hnext; /* the tier's table, by key */
	span *sp;
	cltfs_rec rec;
	uint64_t end;   /* bytes of the span up to this frame's end */
	int state;
	bool hashed;    /* in the table: fetched or coming, not yet kept */
	double arrived; /* when its last byte came; 0 before */
} frame;

/* One range request and the frames in it.  Freed when no frame is left in
 * the table and nobody reads its buffer. */
struct span {
	span *prev, *next; /* the tier's live spans, oldest first */
	hub_tier *t;
	const char *pack;  /* the remote store's name of its pack (cursors compare it) */
	char path[320];
	uint64_t off, len;
	uint64_t got;      /* bytes arrived: written by the ranges' thread only */
	uint8_t *buf;
	uint64_t cap;      /* buf's size */
	frame *f;
	size_t n, left;    /* frames; those still in the table */
	size_t arrivals;   /* frames whose bytes are all there */
	int refs;          /* the request in flight, and each decode of its buffer */
	bool ended, ahead; /* ahead: asked for no load */
	cltfs_err err;     /* how it ended */
	char *msg;
};

/* A reader going through one pack's frames. */
typedef struct {
	const char *pack; /* NULL: unused */
	uint64_t lo;      /* its first record */
	uint64_t recno;   /* the record after the last one looked at */
	uint64_t end;     /* the pack offset past the last frame looked at */
	uint64_t demand;  /* the pack offset past the last frame a load asked for */
	uint64_t window;  /* bytes fetched ahead of demand; 0: only what loads ask */
	int waiting;      /* loads waiting for its frames: it is not reused meanwhile */
	double used;
} cursor;

struct hub_tier {
	cltfs_tier base; /* first: the engine sees a cltfs_tier */
	hf_repo *repo;
	const hf_entry *entries; /* the repo's listing, sorted by path */
	size_t nentries;
	const char **whole;        /* packs whose blob is whole in the HF cache (guarded by mu) */
	size_t nwhole, capwhole;
	atomic_ullong n_blob;      /* frames read from those blobs */
	atomic_ullong n_not_kept;  /* frames served but not appended (a full disk, say) */
	cltfs_store *remote, *local;
	store_writer *w; /* thread-safe: adds and syncs need no lock here */
	hf_ranges *q;
	uint64_t budget; /* bytes of spans held at most (fetching ahead stops there) */
	bool s3;         /* an S3 prefix: windows of S3_FLOOR, spans of S3_SPAN_MIN at least */
	pthread_mutex_t mu; /* guards what follows, and the spans' and frames' fields */
	pthread_cond_t cv;  /* wakes the background thread */
	pthread_cond_t fcv; /* a frame arrived, or a span ended */
	frame *table[NBUCKETS];
	span *live, *last;
	uint64_t alive; /* bytes of live spans */
	int ahead_in_flight;
	cursor cur[NCURSORS];
	struct {
		uint8_t *p;
		uint64_t cap;
	} pool[POOL_MAX]; /* span buffers for reuse: their pages are there */
	int npool;
	uint64_t pooled;
	size_t tokeep; /* frames in F_TOKEEP */
	size_t unsynced;
	double synced;
	bool warned, running, stop;
	pthread_t bg;
	uint64_t n_spans, n_frames, n_ahead_read, n_kept_unread;
};

/* ---- the table of fetched frames ---- */

static size_t bucket(uint64_t key) { return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 54) & (NBUCKETS - 1); }

static frame *find_frame(hub_tier *t, uint64_t key)
{
	for (frame *f = t->table[bucket(key)]; f; f = f->hnext)
		if (f->rec.key == key)
			return f;
	return NULL;
}

static void unhash(hub_tier *t, frame *f)
{
	for (frame **p = &t->table[bucket(f->rec.key)]; *p; p = &(*p)->hnext)
		if (*p == f) {
			*p = f->hnext;
			break;
		}
	f->hashed = false;
	f->sp->left--;
}

static bool arrived(const frame *f) { return f->sp->got >= f->end; }

/* A buffer of at least len bytes for a span: a used one when one fits, so
 * that a reader does not pay for fresh pages (faulted and zeroed) on every
 * span; else a new one, of whole MiB when it is that large, so that it fits
 * later spans. */
static uint8_t *buf_take(hub_tier *t, uint64_t len, uint64_t *cap)
{
	int best = -1;
	for (int i = 0; i < t->npool; i++)
		if (t->pool[i].cap >= len && (best < 0 || t->pool[i].cap < t->pool[best].cap))
			best = i;
	if (best >= 0) {
		uint8_t *p = t->pool[best].p;
		*cap = t->pool[best].cap;
		t->pooled -= *cap;
		t->pool[best] = t->pool[--t->npool];
		return p;
	}
	*cap = len < (1u << 20) ? (len ? len : 1) : (len + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
	return malloc(*cap);
}

/* Keep a span's buffer of a MiB or more for reuse, within the budget. */
static void buf_give(hub_tier *t, uint8_t *p, uint64_t cap)
{
	if (cap >= (1u << 20) && t->npool < POOL_MAX && t->pooled + cap <= t->budget) {
		t->pool[t->npool].p = p;
		t->pool[t->npool++].cap = cap;
		t->pooled += cap;
	} else {
		free(p);
	}
}

static void span_free(hub_tier *t, span *sp)
{
	*(sp->prev ? &sp->prev->next : &t->live) = sp->next;
	*(sp->next ? &sp->next->prev : &t->last) = sp->prev;
	t->alive -= sp->len;
	buf_give(t, sp->buf, sp->cap);
	free(sp->f);
	free(sp->msg);
	free(sp);
}

static void span_unref(hub_tier *t, span *sp)
{
	if (--sp->refs == 0 && sp->left == 0)
		span_free(t, sp);
}

/* A frame leaves the table: kept, or failed. */
static void frame_gone(hub_tier *t, frame *f)
{
	if (f->hashed)
		unhash(t, f);
	if (f->sp->refs == 0 && f->sp->left == 0)
		span_free(t, f->sp);
}

/* ---- keeping ---- */

/* Say once why fetched frames are not kept: the reads are still served. */
static void warn_once(hub_tier *t, const char *msg)
{
	pthread_mutex_lock(&t->mu);
	bool first = !t->warned;
	t->warned = true;
	pthread_mutex_unlock(&t->mu);
	if (first)
		cltfs_log("%s (reads are still served; what they fetch is not kept in the local store)", msg);
}

static void *bg_main(void *arg);

/* Append a checked frame to the local store: readable by this process at
 * once; the background thread makes it durable (visible to other
 * processes) about once a second, off the read path: an fsync per frame
 * would cost more than its transfer, and what a crash loses is only
 * fetched again.  Called without mu. */
static bool keep(hub_tier *t, const cltfs_rec *rec, const void *bytes)
{
	if (!store_writer_add_frame(t->w, rec, bytes))
		return true;
	atomic_fetch_add(&t->n_not_kept, 1);
	warn_once(t, cltfs_errmsg());
	return false;
}

/* The background thread, started at the first frame to keep, not at open:
 * a mount forks into the background after opening its tiers, and threads
 * do not survive the fork.  Called with mu held: is it running? */
static bool start_bg(hub_tier *t)
{
	if (!t->running && !t->stop && !pthread_create(&t->bg, NULL, bg_main, t))
		t->running = true;
	return t->running;
}

/* Has a reader of f's pack gone past it?  A reader that takes some
 * streams of a pack (x alone, say) leaves the frames between its own
 * unread: waiting KEEP_AFTER for a load that will not come, their memory
 * would fill the budget and stop all fetching ahead.  Not just past: the
 * engine's threads load a reader's chunks a little out of order, and a
 * frame kept under a load's feet is fetched again.  Called with mu held. */
static bool passed(const hub_tier *t, const frame *f)
{
	for (int i = 0; i < NCURSORS; i++)
		if (t->cur[i].pack == f->sp->pack && t->cur[i].demand >= f->rec.offset + f->rec.csize + PASSED_BY)
			return true;
	return false;
}

/* Up to KEEP_BATCH frames of the live spans, oldest first, in state (F_TOKEEP:
 * checked and used by a load; F_WAIT: arrived and that no load took, and
 * that a reader went past, that waited KEEP_AFTER, or all of them at
 * close), each taken (F_TAKEN) with a reference on its span (the load's,
 * or one taken here) so that its bytes outlive the unlocked work.  A batch
 * per scan: a scan per frame was quadratic in what the budget holds.
 * Called with mu held. */
static size_t take_frames(hub_tier *t, int state, bool all, frame **out)
{
	size_t n = 0;
	double now = cltfs_now();
	for (span *sp = t->live; sp && n < KEEP_BATCH; sp = sp->next)
		for (size_t i = 0; i < sp->arrivals && n < KEEP_BATCH; i++) {
			frame *f = &sp->f[i];
			if (!f->hashed || f->state != state ||
			    (state == F_WAIT && !all && now - f->arrived < KEEP_AFTER && !passed(t, f)))
				continue;
			f->state = F_TAKEN;
			if (state == F_TOKEEP)
				t->tokeep--;
			else
				sp->refs++;
			out[n++] = f;
		}
	return n;
}

/* The frames take_frames gave, done with.  Called with mu held. */
static void release_frames(hub_tier *t, frame **f, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		f[i]->sp->refs--;
		frame_gone(t, f[i]);
	}
}

static const uint8_t *frame_bytes(const frame *f) { return f->sp->buf + (f->rec.offset - f->sp->off); }

/* Frames that loads checked and used, appended (F_TOKEEP).  Called with mu
 * held; drops it meanwhile. */
static void keep_checked(hub_tier *t)
{
	frame *picks[KEEP_BATCH];
	size_t n;
	while (t->tokeep && (n = take_frames(t, F_TOKEEP, false, picks))) {
		pthread_mutex_unlock(&t->mu);
		size_t kept = 0;
		for (size_t i = 0; i < n; i++)
			kept += keep(t, &picks[i]->rec, frame_bytes(picks[i]));
		pthread_mutex_lock(&t->mu);
		t->unsynced += kept;
		release_frames(t, picks, n);
	}
}

/* Check a frame nobody read (decode it into *buf) and keep it: true when
 * kept.  Called without mu. */
static bool check_and_keep(hub_tier *t, const frame *f, cltfs_zctx *z, uint8_t **buf, size_t *cap)
{
	char k[48];
	cltfs_err e = cltfs_reserve(buf, cap, f->rec.rsize ? f->rec.rsize : 1)
			      ? store_decode(&f->rec, z, frame_bytes(f), *buf)
			      : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (e)
		cltfs_log("%s/%s: chunk %s at offset %llu, fetched ahead, not kept: %s", hf_repo_name(t->repo),
			  f->sp->path, cltfs_key_str(f->rec.key, k, sizeof k), (unsigned long long)f->rec.offset,
			  cltfs_errmsg());
	return !e && keep(t, &f->rec, frame_bytes(f));
}

/* Check and keep frames that arrived and that no load took: those a reader
 * went past, those older than KEEP_AFTER (the reader went elsewhere: their
 * memory is the budget's that other readers wait for), or all at once (at
 * close).  Called with mu held; drops it meanwhile. */
static void keep_unread(hub_tier *t, cltfs_zctx *z, uint8_t **buf, size_t *cap, bool all)
{
	frame *picks[KEEP_BATCH];
	size_t n;
	while ((n = take_frames(t, F_WAIT, all, picks))) {
		pthread_mutex_unlock(&t->mu);
		size_t kept = 0;
		for (size_t i = 0; i < n; i++)
			kept += check_and_keep(t, picks[i], z, buf, cap);
		pthread_mutex_lock(&t->mu);
		t->n_kept_unread += kept;
		t->unsynced += kept;
		release_frames(t, picks, n);
	}
}

/* The background thread, below the readers' priority: appending can wait
 * for the gaps a reader leaves (what waits holds memory, so a reader that
 * leaves none runs into the budget and leaves some).  It appends the frames
 * loads checked, keeps frames nobody read, and makes them durable about
 * once a second. */
static void *bg_main(void *arg)
{
	hub_tier *t = arg;
	setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), BG_NICE);
	cltfs_zctx *z = cltfs_zctx_new();
	uint8_t *buf = NULL;
	size_t cap = 0;
	pthread_mutex_lock(&t->mu);
	while (!t->stop) {
		if (!t->tokeep) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 250000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&t->cv, &t->mu, &ts);
		}
		if (t->stop)
			break;
		keep_checked(t);
		if (z) /* else they wait for close */
			keep_unread(t, z, &buf, &cap, false);
		double now = cltfs_now();
		if (!t->unsynced || now - t->synced < 1.0)
			continue;
		t->unsynced = 0;
		t->synced = now;
		pthread_mutex_unlock(&t->mu);
		cltfs_err e = store_writer_sync(t->w);
		if (e)
			warn_once(t, cltfs_errmsg());
		pthread_mutex_lock(&t->mu);
	}
	pthread_mutex_unlock(&t->mu);
	free(buf);
	cltfs_zctx_free(z);
	return NULL;
}

/* ---- a span's request ---- */

/* On the ranges' thread: bytes into the buffer (past got: nobody reads
 * them yet, so without the lock), then the frames they complete wake their
 * loads. */
static bool span_data(void *arg, const void *p, size_t n)
{
	span *sp = arg;
	hub_tier *t = sp->t;
	if (n > sp->len - sp->got) /* hf_ranges never gives more than asked */
		return false;
	memcpy(sp->buf + sp->got, p, n);
	pthread_mutex_lock(&t->mu);
	sp->got += n;
	size_t before = sp->arrivals;
	double now = cltfs_now();
	while (sp->arrivals < sp->n && sp->f[sp->arrivals].end <= sp->got)
		sp->f[sp->arrivals++].arrived = now;
	if (sp->arrivals != before)
		pthread_cond_broadcast(&t->fcv);
	pthread_mutex_unlock(&t->mu);
	return true;
}

/* The request ended: frames whose bytes did not all come leave the table
 * (a later load asks for them again) and their loads hear why. */
static void span_done(void *arg, cltfs_err e)
{
	span *sp = arg;
	hub_tier *t = sp->t;
	char *msg = e ? strdup(cltfs_errmsg()) : NULL;
	pthread_mutex_lock(&t->mu);
	sp->ended = true;
	sp->err = e;
	sp->msg = msg;
	for (size_t i = sp->arrivals; e && i < sp->n; i++)
		if (sp->f[i].hashed)
			unhash(t, &sp->f[i]);
	t->ahead_in_flight -= sp->ahead;
	pthread_cond_broadcast(&t->fcv);
	span_unref(t, sp);
	pthread_mutex_unlock(&t->mu);
}

/* Is the chunk fetched, coming, or in the local store? */
static bool have(hub_tier *t, uint64_t key)
{
	cltfs_rec r;
	return find_frame(t, key) || store_lookup(t->local, key, &r);
}

/* Collect a span's records from record recno of pack on: lead (when given,
 * the frame a load asked for, at recno) first and always; then frames
 * that the local store lacks and no span holds, neighbours at most GAP_MAX
 * apart, below the pack offset until, up to SPAN_MAX bytes.  *next: the
 * record to look at next; *reach: the pack offset past the last frame
 * looked at. */
static cltfs_err collect(hub_tier *t, const char *pack, uint64_t recno, const cltfs_rec *lead, uint64_t until,
			 cltfs_rec **recs, size_t *n, uint64_t *next, uint64_t *reach)
{
	size_t cap = 0;
	uint64_t off = 0, end = 0, no = recno;
	*n = 0;
	for (;; no++) {
		cltfs_rec r;
		bool first = lead && no == recno;
		if (first)
			r = *lead;
		else if (recno == UINT64_MAX || !store_record_at(t->remote, pack, no, &r))
			break;
		if (!first) {
			bool need = !have(t, r.key);
			if (!*n) { /* looking for the span's first frame */
				if (r.offset >= until)
					break;
				*reach = r.offset + r.csize > *reach ? r.offset + r.csize : *reach;
				if (!need)
					continue;
			} else if (!need || r.offset < end || r.offset - end > GAP_MAX ||
				   r.offset + r.csize - off > SPAN_MAX || r.offset >= until) {
				break;
			}
		}
		if (!cltfs_grow(recs, &cap, *n + 1, sizeof **recs))
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		(*recs)[(*n)++] = r;
		off = *n == 1 ? r.offset : off;
		end = r.offset + r.csize;
		*reach = end > *reach ? end : *reach;
		if (recno == UINT64_MAX) { /* a record with no place in an index: alone */
			no = UINT64_MAX;
			break;
		}
	}
	*next = no;
	return CLTFS_OK;
}

/* A span of the frames collect() finds, in the table and requested; *out
 * NULL when there was nothing to fetch.  ahead: no load waits for it. */
static cltfs_err plan(hub_tier *t, const char *pack, uint64_t recno, const cltfs_rec *lead, uint64_t until,
		      bool ahead, uint64_t *next, uint64_t *reach, span **out)
{
	cltfs_rec *recs = NULL;
	size_t n;
	char path[320];
	*out = NULL;
	cltfs_err e = hub_pack_path(pack, path, sizeof path);
	if (!e)
		e = collect(t, pack, recno, lead, until, &recs, &n, next, reach);
	if (e || !n) {
		free(recs);
		return e;
	}
	span *sp = calloc(1, sizeof *sp);
	uint64_t off = recs[0].offset, len = recs[n - 1].offset + recs[n - 1].csize - off, cap = 0;
	if (sp) {
		sp->f = calloc(n, sizeof *sp->f);
		sp->buf = buf_take(t, len, &cap);
	}
	if (!sp || !sp->f || !sp->buf) {
		if (sp) {
			free(sp->f);
			free(sp->buf);
		}
		free(sp);
		free(recs);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory for %llu bytes of %s", (unsigned long long)len,
				  hf_repo_name(t->repo));
	}
	*sp = (span){.t = t, .pack = pack, .off = off, .len = len, .buf = sp->buf, .cap = cap, .f = sp->f, .n = n,
		     .left = n, .refs = 1, .ahead = ahead};
	memcpy(sp->path, path, sizeof path);
	for (size_t i = 0; i < n; i++) {
		frame *f = &sp->f[i];
		*f = (frame){.sp = sp, .rec = recs[i], .end = recs[i].offset + recs[i].csize - off, .hashed = true};
		f->hnext = t->table[bucket(f->rec.key)];
		t->table[bucket(f->rec.key)] = f;
	}
	free(recs);
	sp->prev = t->last;
	*(t->last ? &t->last->next : &t->live) = sp;
	t->last = sp;
	t->alive += len;
	hf_range_cb cb = {span_data, span_done};
	if ((e = hf_ranges_get(t->q, sp->path, off, len, cb, sp))) {
		for (size_t i = 0; i < n; i++)
			unhash(t, &sp->f[i]);
		span_unref(t, sp);
		return e;
	}
	t->ahead_in_flight += sp->ahead;
	t->n_spans++;
	t->n_frames += n;
	*out = sp;
	return CLTFS_OK;
}

/* ---- readers ---- */

static double rtt_of(hub_tier *t) { return (double)atomic_load(&hf_repo_stats(t->repo)->rtt_us) / 1e6; }

/* The window's cap: the bandwidth-delay product of a reader as fast as
 * local decoding, within [AHEAD_FLOOR or S3_FLOOR, the budget]. */
static uint64_t ahead_cap(hub_tier *t)
{
	double cap = READER_RATE * rtt_of(t);
	double floor = t->s3 ? S3_FLOOR : AHEAD_FLOOR;
	cap = cap < floor ? floor : cap;
	return cap > (double)t->budget ? t->budget : (uint64_t)cap;
}

/* The window a new reader starts with.  Where a round trip costs more than
 * reading AHEAD_MIN locally (a real link, not loopback), a reader's first
 * load waits that round trip anyway, and the frames that follow come in
 * the same wait for little more than their transfer (the link would idle
 * meanwhile): a whole window is fetched with it.  So too on S3, where a
 * request costs more than its round trip shows (S3_SPAN_MIN).  Else only
 * what loads ask, until they show a reader going on. */
static uint64_t first_window(hub_tier *t)
{
	return t->s3 || READER_RATE * rtt_of(t) >= AHEAD_MIN ? ahead_cap(t) : 0;
}

/* The cursor of the reader a load of record recno belongs to (a new one
 * when none has it), its window grown when the load shows the reader going
 * on ahead of what it asked: -1 when every cursor is busy.  The engine's
 * threads take a reader's chunks in parallel, so its loads come a little
 * out of order: a load up to SKIP_MAX records past the cursor is still
 * the same reader's. */
static int reader_of(hub_tier *t, const char *pack, uint64_t recno, const cltfs_rec *rec, bool fetched)
{
	double now = cltfs_now();
	uint64_t end = rec->offset + rec->csize;
	int best = -1;
	for (int i = 0; i < NCURSORS && recno != UINT64_MAX; i++) {
		cursor *c = &t->cur[i];
		if (c->pack == pack && c->recno != UINT64_MAX && c->lo <= recno && recno <= c->recno + SKIP_MAX &&
		    (best < 0 || c->lo > t->cur[best].lo))
			best = i;
	}
	if (best >= 0) {
		cursor *c = &t->cur[best];
		if (fetched || (recno >= c->recno && c->waiting > 0)) {
			uint64_t cap = ahead_cap(t), first = cap / 16 > AHEAD_MIN ? cap / 16 : AHEAD_MIN;
			c->window = c->window ? 2 * c->window : first;
			c->window = c->window > cap ? cap : c->window;
		}
		c->demand = end > c->demand ? end : c->demand;
		c->used = now;
		return best;
	}
	for (int i = 0; i < NCURSORS; i++) {
		cursor *c = &t->cur[i];
		if (!c->waiting && (best < 0 || !c->pack || (t->cur[best].pack && c->used < t->cur[best].used)))
			best = i;
	}
	/* A frame fetched for another reader counts as looked at. */
	if (best >= 0)
		t->cur[best] = fetched ? (cursor){pack, recno, recno + 1, end, end, first_window(t), 0, now}
				       : (cursor){pack, recno, recno, rec->offset, end, first_window(t), 0, now};
	return best;
}

/* Fetch what cursor ci's window holds past its demand and nobody fetched
 * yet, while the budget allows. */
static void top_up(hub_tier *t, int ci)
{
	cursor *c = &t->cur[ci];
	uint64_t until = c->demand + c->window;
	/* Not for every frame a load takes, but once a quarter window (or
	 * S3_SPAN_MIN of it on S3) is missing: spans that large at least, fewer
	 * requests. */
	uint64_t least = t->s3 ? S3_SPAN_MIN : 0, batch = c->window / 4 > least ? c->window / 4 : least;
	if (c->end + (batch < c->window ? batch : c->window) > until)
		return;
	while (c->window && c->end < until && c->recno != UINT64_MAX && t->alive < t->budget &&
	       t->ahead_in_flight < AHEAD_SPANS) {
		uint64_t next = c->recno, reach = c->end;
		span *sp;
		if (plan(t, c->pack, c->recno, NULL, until, true, &next, &reach, &sp))
			break; /* a load that needs these frames will say why */
		c->recno = next;
		c->end = reach;
		if (!sp)
			break;
	}
}

/* ---- the tier ---- */

/* Request the frame of a load that nobody fetched (record recno of pack):
 * at its reader's cursor (or a little past it), from the cursor on, with
 * its window (what the budget allows of it); else alone.  *f: its frame in
 * the table. */
static cltfs_err fetch(hub_tier *t, int c, const char *pack, uint64_t recno, const cltfs_rec *rec, frame **f)
{
	cursor *cu = c >= 0 ? &t->cur[c] : NULL;
	uint64_t until = rec->offset + rec->csize;
	if (cu && recno >= cu->recno) {
		uint64_t room = t->budget > t->alive ? t->budget - t->alive : 0, want = cu->window;
		until = cu->demand + (want < room ? want : room);
		until = until < rec->offset + rec->csize ? rec->offset + rec->csize : until;
	}
	/* Frames the loads of other threads will ask for in a moment, then
	 * this one, in the same span when they are neighbours. */
	while (cu && recno > cu->recno && cu->recno != UINT64_MAX) {
		uint64_t after = cu->recno, reach = cu->end;
		span *sp;
		cltfs_err e = plan(t, pack, cu->recno, NULL, until, false, &after, &reach, &sp);
		if (e)
			return e;
		cu->recno = after;
		cu->end = reach;
		if ((*f = find_frame(t, rec->key)) || !sp)
			break;
	}
	if ((*f = find_frame(t, rec->key)))
		return CLTFS_OK;
	bool next = cu && recno == cu->recno;
	uint64_t after = recno, reach = next ? cu->end : 0;
	span *sp;
	cltfs_err e = plan(t, pack, recno, rec, next ? until : rec->offset + rec->csize, false, &after, &reach, &sp);
	if (!e && next) {
		cu->recno = after;
		cu->end = reach;
	}
	*f = e ? NULL : &sp->f[0];
	return e;
}

/* ---- blobs in the HF cache ---- */

/* Is pack's blob whole in the HF cache?  A blob, once whole, stays so (the
 * remote store keeps it open); one that is not may come at any moment (a
 * snapshot_download running beside the mount): a stat a miss, no more. */
static bool blob_whole(hub_tier *t, const char *pack)
{
	char path[PATH_MAX];
	bool known = false;
	pthread_mutex_lock(&t->mu);
	for (size_t i = 0; i < t->nwhole && !known; i++)
		known = t->whole[i] == pack;
	pthread_mutex_unlock(&t->mu);
	if (known || !hub_pack_blob(t->repo, t->entries, t->nentries, pack, path, sizeof path))
		return known;
	pthread_mutex_lock(&t->mu);
	for (size_t i = 0; i < t->nwhole && !known; i++)
		known = t->whole[i] == pack;
	/* out of memory: only stat it again next time */
	if (!known && cltfs_grow(&t->whole, &t->capwhole, t->nwhole + 1, sizeof *t->whole))
		t->whole[t->nwhole++] = pack;
	pthread_mutex_unlock(&t->mu);
	return true;
}

/* A chunk from its pack's blob in the HF cache: true when it was there and
 * passed its checks.  A frame that fails them is logged and fetched from
 * the Hub instead, as any other; the blob is never trusted unchecked. */
static bool from_blob(hub_tier *t, const char *pack, const cltfs_rec *rec, cltfs_zctx *z, uint8_t *dst)
{
	if (t->s3 || !blob_whole(t, pack)) /* a bucket has no HF cache: no lock taken on its loads */
		return false;
	if (store_read_chunk(t->remote, rec, z, dst)) {
		cltfs_log("%s: fetching it from %s instead", cltfs_errmsg(), hf_repo_name(t->repo));
		return false;
	}
	atomic_fetch_add(&t->n_blob, 1);
	return true;
}

static cltfs_err hub_load(cltfs_tier *tt, uint64_t key, cltfs_zctx *z, uint8_t *dst, size_t len, cltfs_rec *rec)
{
	hub_tier *t = (hub_tier *)tt;
	const char *pack;
	uint64_t recno;
	char k[48];
	cltfs_key_str(key, k, sizeof k);
	if (!store_locate_at(t->remote, key, rec, &pack, &recno))
		return cltfs_fail(CLTFS_E_NOTFOUND, "chunk %s is neither in %s nor in %s", k, store_dir(t->local),
				  hf_repo_name(t->repo));
	if (rec->rsize != len)
		return cltfs_fail(CLTFS_E_CORRUPT, "%s: the index gives chunk %s %u bytes, not %zu",
				  hf_repo_name(t->repo), k, rec->rsize, len);
	if (from_blob(t, pack, rec, z, dst))
		return CLTFS_OK;
	pthread_mutex_lock(&t->mu);
	frame *f = find_frame(t, key);
	bool fetched = f != NULL;
	int c = reader_of(t, pack, recno, rec, fetched);
	cltfs_err e = CLTFS_OK;
	if (!f) {
		cltfs_rec lr;
		if (store_lookup(t->local, key, &lr)) { /* kept meanwhile by the background thread */
			pthread_mutex_unlock(&t->mu);
			*rec = lr;
			return store_read_chunk(t->local, &lr, z, dst);
		}
		e = fetch(t, c, pack, recno, rec, &f);
	}
	if (c >= 0)
		top_up(t, c);
	if (e) {
		pthread_mutex_unlock(&t->mu);
		return cltfs_wrap(e, "chunk %s", k);
	}
	span *sp = f->sp;
	sp->refs++;
	if (c >= 0)
		t->cur[c].waiting++;
	while (!arrived(f) && !sp->ended)
		pthread_cond_wait(&t->fcv, &t->mu);
	if (c >= 0)
		t->cur[c].waiting--;
	if (!arrived(f)) { /* the message names the file and the URL */
		char msg[1024];
		snprintf(msg, sizeof msg, "%s", sp->msg ? sp->msg : "(out of memory for the message)");
		e = sp->err;
		span_unref(t, sp);
		pthread_mutex_unlock(&t->mu);
		return cltfs_fail(e, "chunk %s (bytes %llu..%llu): %s", k, (unsigned long long)rec->offset,
				  (unsigned long long)(rec->offset + rec->csize), msg);
	}
	/* Ours to check, use and keep; unless another has it (the background
	 * thread keeps it): then only checked and used. */
	bool mine = f->state == F_WAIT;
	f->state = mine ? F_TAKEN : f->state;
	t->n_ahead_read += fetched && mine;
	pthread_mutex_unlock(&t->mu);
	const uint8_t *bytes = sp->buf + (f->rec.offset - sp->off);
	*rec = f->rec;
	if ((e = store_decode(rec, z, bytes, dst)))
		e = cltfs_wrap(e, "%s/%s: chunk %s at offset %llu", hf_repo_name(t->repo), sp->path, k,
			       (unsigned long long)rec->offset);
	pthread_mutex_lock(&t->mu);
	if (!e && mine && start_bg(t)) { /* appended by the background thread, with this load's reference */
		f->state = F_TOKEEP;
		t->tokeep++;
		pthread_cond_signal(&t->cv);
		pthread_mutex_unlock(&t->mu);
		return CLTFS_OK;
	}
	if (!e && mine) { /* no background thread: here */
		pthread_mutex_unlock(&t->mu);
		bool ok = keep(t, rec, bytes);
		pthread_mutex_lock(&t->mu);
		t->unsynced += ok;
	}
	sp->refs--;
	if (mine)
		frame_gone(t, f); /* kept, or failed its check: a later load fetches it again */
	else if (sp->refs == 0 && sp->left == 0)
		span_free(t, sp);
	pthread_mutex_unlock(&t->mu);
	return e;
}

static bool hub_lookup(cltfs_tier *t, uint64_t key, cltfs_rec *rec)
{
	return store_lookup(((hub_tier *)t)->remote, key, rec);
}

static void hub_stats(cltfs_tier *tt, char *buf, size_t n)
{
	hub_tier *t = (hub_tier *)tt;
	hf_stats *st = hf_repo_stats(t->repo);
	pthread_mutex_lock(&t->mu);
	snprintf(buf, n,
		 "{\"requests\": %llu, \"bytes\": %llu, \"retries\": %llu, \"failures\": %llu, \"spans\": %llu, "
		 "\"frames\": %llu, \"ahead_read\": %llu, \"kept_unread\": %llu, \"rtt_us\": %llu, "
		 "\"blob_frames\": %llu, \"not_kept\": %llu}",
		 (unsigned long long)st->requests, (unsigned long long)st->bytes, (unsigned long long)st->retries,
		 (unsigned long long)st->failures, (unsigned long long)t->n_spans, (unsigned long long)t->n_frames,
		 (unsigned long long)t->n_ahead_read, (unsigned long long)t->n_kept_unread,
		 (unsigned long long)st->rtt_us, (unsigned long long)atomic_load(&t->n_blob), (unsigned long long)atomic_load(&t->n_not_kept));
	pthread_mutex_unlock(&t->mu);
}

static void hub_tier_close(cltfs_tier *tt)
{
	hub_tier *t = (hub_tier *)tt;
	hf_ranges_close(t->q); /* what is still in flight is dropped */
	pthread_mutex_lock(&t->mu);
	t->stop = true;
	pthread_cond_signal(&t->cv);
	bool running = t->running;
	pthread_mutex_unlock(&t->mu);
	if (running)
		pthread_join(t->bg, NULL);
	/* What arrived and nobody read is kept: no fetched byte is lost. */
	cltfs_zctx *z = cltfs_zctx_new();
	uint8_t *buf = NULL;
	size_t cap = 0;
	pthread_mutex_lock(&t->mu);
	keep_checked(t);
	if (z)
		keep_unread(t, z, &buf, &cap, true);
	while (t->live)
		span_free(t, t->live);
	for (int i = 0; i < t->npool; i++)
		free(t->pool[i].p);
	pthread_mutex_unlock(&t->mu);
	free(buf);
	cltfs_zctx_free(z);
	if (store_writer_close(t->w)) /* the last sync */
		cltfs_log("%s", cltfs_errmsg());
	pthread_mutex_destroy(&t->mu);
	pthread_cond_destroy(&t->cv);
	pthread_cond_destroy(&t->fcv);
	free(t->whole);
	free(t);
}

/* CLTFS_HUB_AHEAD_MB: the memory the tier may hold in spans. */
static uint64_t budget_from_env(void)
{
	const char *v = getenv("CLTFS_HUB_AHEAD_MB");
	char *end;
	long mb = v && *v ? strtol(v, &end, 10) : AHEAD_MB_DEFAULT;
	if (v && *v && (*end || mb < 1 || mb > 65536)) {
		cltfs_log("CLTFS_HUB_AHEAD_MB=%s: not a number of MB in 1..65536, using %d", v, AHEAD_MB_DEFAULT);
		mb = AHEAD_MB_DEFAULT;
	}
	return (uint64_t)mb << 20;
}

cltfs_err hub_tier_new(hf_repo *repo, const hf_entry *entries, size_t n, cltfs_store *remote, cltfs_store *local,
		       cltfs_tier **out)
{
	hub_tier *t = calloc(1, sizeof *t);
	if (!t)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err e = store_writer_open(local, "hub", &t->w);
	if (!e && (e = hf_ranges_open(repo, &t->q)))
		store_writer_close(t->w);
	if (e) {
		free(t);
		return e;
	}
	t->base = (cltfs_tier){"hub", hub_load, hub_lookup, NULL, hub_stats, hub_tier_close};
	t->repo = repo;
	t->entries = entries;
	t->nentries = n;
	t->remote = remote;
	t->local = local;
	t->budget = budget_from_env();
	t->s3 = hf_repo_is_s3(repo);
	t->synced = cltfs_now();
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	pthread_cond_init(&t->fcv, NULL);
	*out = &t->base;
	return CLTFS_OK;
}
