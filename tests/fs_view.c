/* The engine without FUSE: this program links the core and the codec only
 * (the Makefile gives it no libfuse), builds a filesystem over a store,
 * reads whole views through view_read and parses them back with the
 * codec's .pt reader.  Also: the aliasing of y views (every target its own
 * storage unless -o share_zero_targets), and every allocation of fs_new,
 * view_open and store_open failing in turn (wrapped malloc): each failure
 * is a clean error, nothing leaks (ASan), and no thread key but the
 * filesystem's own is touched. */
#include "view.h"
#include "unit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

/* ---- allocation failures (-Wl,--wrap=malloc,...) ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

static atomic_long fail_in = 0; /* the n-th allocation from now fails; 0: none */
static atomic_long failed = 0;

static bool fail_now(void)
{
	long n = atomic_load(&fail_in);
	if (n <= 0)
		return false;
	if (atomic_fetch_sub(&fail_in, 1) == 1) {
		atomic_fetch_add(&failed, 1);
		return true;
	}
	return false;
}

void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) { return fail_now() ? NULL : __real_calloc(n, m); }
void *__wrap_realloc(void *p, size_t n) { return fail_now() ? NULL : __real_realloc(p, n); }
char *__wrap_strdup(const char *s) { return fail_now() ? NULL : __real_strdup(s); }

/* ---- a store ---- */

/* 3 layers, d=16, bf16; x layers 0 and 1, mlp layers 1 and 2; 3 targets
 * with zero padding, so L1's y has two zero targets (layers 3 and 4).
 * Samples of 20 and 12 rows, one per batch, chunks of 8 rows. */
static const char *manifest =
	"{\"format\":\"cltfs\",\"version\":1,\"model\":{\"n_layers\":3,\"d_model\":16},"
	"\"dtype\":\"bfloat16\",\"n_targets\":3,\"chunk_rows\":8,\"x_layers\":[0,1],"
	"\"mlp_layers\":[1,2],\"samples\":[{\"rows\":20},{\"rows\":12}]}";

#define ROW 32 /* bytes: 16 bf16 values */
static char dir[64];

/* Byte i of row r of stream (kind, layer): a function of all four. */
static uint8_t value(unsigned kind, unsigned layer, int64_t row, size_t i)
{
	return (uint8_t)(kind * 101 + layer * 37 + (unsigned)row * 7 + i * 3);
}

static void make_store(void)
{
	snprintf(dir, sizeof dir, "/tmp/cltfs-unit-XXXXXX");
	CHECK(mkdtemp(dir) != NULL);
	cltfs_manifest *m;
	CHECK(cltfs_manifest_parse(manifest, strlen(manifest), "m", &m) == CLTFS_OK);
	CHECK(store_create(dir, m) == CLTFS_OK);
	cltfs_store *s;
	CHECK(store_open(dir, &s) == CLTFS_OK);
	store_writer *w;
	CHECK(store_writer_open(s, "unit", &w) == CLTFS_OK);
	const unsigned streams[4][2] = {{CLTFS_STREAM_X, 0}, {CLTFS_STREAM_X, 1}, {CLTFS_STREAM_MLP, 1}, {CLTFS_STREAM_MLP, 2}};
	for (int k = 0; k < 4; k++)
		for (int64_t c = 0; c < m->n_chunks; c++) {
			uint8_t buf[8 * ROW];
			int64_t r0 = cltfs_manifest_chunk_start(m, c), n = cltfs_manifest_chunk_rows(m, c);
			for (int64_t r = 0; r < n; r++)
				for (size_t i = 0; i < ROW; i++)
					buf[r * ROW + (int64_t)i] = value(streams[k][0], streams[k][1], r0 + r, i);
			CHECK(store_writer_add(w, cltfs_key(streams[k][0], streams[k][1], (uint32_t)c), buf,
					       (size_t)n * ROW) == CLTFS_OK);
		}
	CHECK(store_writer_close(w) == CLTFS_OK);
	store_close(s);
	cltfs_manifest_free(m);
}

/* The whole file of a view, composed as a mount would serve it. */
static uint8_t *read_view(cltfs_fs *fs, int li, int64_t k, int is_y, size_t *len)
{
	view *v;
	if (view_get(fs, li, k, is_y, &v))
		return NULL;
	*len = (size_t)view_size(v);
	uint8_t *out = malloc(*len);
	size_t at = 0;
	for (uint64_t off = 0; out && off < *len;) { /* in odd pieces, as reads come */
		view_buf b;
		if (view_read(fs, v, off, 100000 + (size_t)off % 777, &b)) {
			free(out);
			out = NULL;
			break;
		}
		for (size_t i = 0; i < b.niov; i++) {
			memcpy(out + at, b.iov[i].iov_base, b.iov[i].iov_len);
			at += b.iov[i].iov_len;
		}
		off += b.total;
		view_buf_release(fs, &b);
	}
	view_put(v);
	return out;
}

/* A tensor holds rows [r0, r0+n) of stream (kind, layer), or zeros. */
static bool tensor_is(const pt_archive *ar, const pt_obj *t, int kind, unsigned layer, int64_t r0, int64_t n)
{
	size_t bytes = (size_t)pt_tensor_numel(t) * 2;
	uint8_t *got = malloc(bytes);
	bool ok = got && bytes == (size_t)n * ROW && pt_tensor_read(ar, t, got) == CLTFS_OK;
	for (int64_t r = 0; ok && r < n; r++)
		for (size_t i = 0; ok && i < ROW; i++)
			ok = got[r * ROW + (int64_t)i] == (kind < 0 ? 0 : value((unsigned)kind, layer, r0 + r, i));
	free(got);
	return ok;
}

static void test_views(bool share_zero)
{
	cltfs_store *s;
	cltfs_fs *fs;
	CHECK(store_open(dir, &s) == CLTFS_OK);
	cltfs_opts o = {.dtype = -1, .cache_mb = 4, .share_zero_targets = share_zero};
	CHECK(fs_new(s, &o, &fs) == CLTFS_OK);
	CHECK(fs_nlayers(fs) == 2 && fs_nbatches(fs) == 2);
	size_t len;
	pt_archive *ar;
	/* L0/batch_0_x.pt: {'x': x@0 rows 0..19 as [1, 20, 16]} */
	uint8_t *x = read_view(fs, 0, 0, 0, &len);
	CHECK(x && pt_open_mem(x, len, "L0/batch_0_x.pt", &ar) == CLTFS_OK && pt_check_crcs(ar, "x") == CLTFS_OK);
	const pt_obj *t = pt_get(pt_root(ar), "x");
	CHECK(t && t->u.t.ndim == 3 && t->u.t.shape[1] == 20 && tensor_is(ar, t, CLTFS_STREAM_X, 0, 0, 20));
	pt_close(ar);
	free(x);
	/* L1/batch_1_y.pt: y is targets[0] = mlp@2 rows 20..31; targets[1],
	 * [2] are zeros, each its own storage unless shared */
	uint8_t *y = read_view(fs, 1, 1, 1, &len);
	CHECK(y && pt_open_mem(y, len, "L1/batch_1_y.pt", &ar) == CLTFS_OK && pt_check_crcs(ar, "y") == CLTFS_OK);
	const pt_obj *tg = pt_get(pt_root(ar), "targets"), *yy = pt_get(pt_root(ar), "y");
	CHECK(tg && tg->kind == PT_LIST && tg->u.seq.n == 3 && yy);
	if (tg && tg->u.seq.n == 3 && yy) {
		const pt_obj *t0 = tg->u.seq.v[0], *t1 = tg->u.seq.v[1], *t2 = tg->u.seq.v[2];
		CHECK(!strcmp(yy->u.t.key, t0->u.t.key)); /* y is targets[0] */
		CHECK(tensor_is(ar, t0, CLTFS_STREAM_MLP, 2, 20, 12));
		CHECK(tensor_is(ar, t1, -1, 0, 0, 12) && tensor_is(ar, t2, -1, 0, 0, 12));
		CHECK(strcmp(t0->u.t.key, t1->u.t.key) && strcmp(t0->u.t.key, t2->u.t.key));
		CHECK(!strcmp(t1->u.t.key, t2->u.t.key) == share_zero);
	}
	pt_close(ar);
	free(y);
	fs_free(fs);
	store_close(s);
}

static void test_views_own(void) { test_views(false); }
static void test_views_shared(void) { test_views(true); }

/* Open the store, build the filesystem, read one view: the n-th
 * allocation fails, for every n until none does. */
static pthread_key_t mine; /* made first: likely key 0, the one a bad fs_free would delete */
static int sentinel = 42;

static void test_allocation_failures(void)
{
	long n;
	for (n = 1; n < 100000; n++) {
		atomic_store(&failed, 0);
		atomic_store(&fail_in, n);
		cltfs_store *s = NULL;
		cltfs_fs *fs = NULL;
		cltfs_opts o = {.dtype = -1, .cache_mb = 4};
		cltfs_err e = store_open(dir, &s);
		if (!e)
			e = fs_new(s, &o, &fs);
		view *v = NULL;
		if (!e)
			e = view_open(fs, 1, 1, 1, &v);
		atomic_store(&fail_in, 0);
		if (e)
			CHECK(e == CLTFS_E_NOMEM || e == CLTFS_E_IO || e == CLTFS_E_FORMAT);
		view_close(v);
		fs_free(fs);
		store_close(s);
		if (!atomic_load(&failed)) {
			CHECK(e == CLTFS_OK); /* every allocation succeeded: so did the whole */
			break;
		}
		/* another library's key (here, the test's) is never touched */
		CHECK(pthread_getspecific(mine) == &sentinel);
	}
	CHECK(n > 10 && n < 100000);
	pthread_key_delete(mine);
}

/* A chunk that fails its checksum when the readahead threads load it
 * ahead of a reader: the failure is logged (naming the pack and the chunk)
 * and counted, not dropped. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char logged[8192];

static void capture_line(void *arg, const char *line)
{
	pthread_mutex_lock(&log_mu);
	size_t n = strlen(logged);
	snprintf(logged + n, sizeof logged - n, "%s\n", line);
	pthread_mutex_unlock(&log_mu);
}

static void test_readahead_failure_logged(void)
{
	cltfs_store *s;
	CHECK(store_open(dir, &s) == CLTFS_OK);
	cltfs_rec r;
	const char *pack;
	CHECK(store_locate(s, cltfs_key(CLTFS_STREAM_X, 0, 1), &r, &pack));
	char path[256];
	snprintf(path, sizeof path, "%s/packs/%s.pack", dir, pack);
	FILE *f = fopen(path, "r+b");
	CHECK(f && fseek(f, (long)(r.offset + r.csize / 2), SEEK_SET) == 0);
	int c = f ? fgetc(f) : 0;
	CHECK(f && fseek(f, (long)(r.offset + r.csize / 2), SEEK_SET) == 0 && fputc(c ^ 0x5a, f) != EOF);
	if (f)
		fclose(f);
	cltfs_fs *fs;
	cltfs_opts o = {.dtype = -1, .cache_mb = 4, .readahead = 4};
	CHECK(fs_new(s, &o, &fs) == CLTFS_OK && fs_start(fs) == CLTFS_OK);
	cltfs_log_set(capture_line, NULL);
	view *v;
	CHECK(view_get(fs, 0, 0, 0, &v) == CLTFS_OK); /* L0/batch_0_x.pt: x@0 chunks 0, 1, 2 */
	for (uint64_t off = 0; off < view_size(v); off += 64)
		view_readahead(fs, v, off);
	for (int i = 0; i < 500 && !atomic_load(&fs_stats(fs)->readahead_errors); i++)
		usleep(10000);
	CHECK(atomic_load(&fs_stats(fs)->readahead_errors) >= 1);
	pthread_mutex_lock(&log_mu);
	CHECK(strstr(logged, "readahead: ") && strstr(logged, "x@0#1") && strstr(logged, ".pack"));
	pthread_mutex_unlock(&log_mu);
	view_put(v);
	fs_free(fs);
	cltfs_log_set(NULL, NULL);
	store_close(s);
}

int main(void)
{
	CHECK(pthread_key_create(&mine, NULL) == 0 && pthread_setspecific(mine, &sentinel) == 0);
	make_store();
	RUN(test_views_own);
	RUN(test_views_shared);
	RUN(test_allocation_failures);
	RUN(test_readahead_failure_logged); /* last: it damages the store */
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return unit_done("fs_view");
}
