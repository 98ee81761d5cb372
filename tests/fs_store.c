/* The store (append, reopen, torn tail, corruption, abandon, concurrent
 * writers and syncs) and the chunk cache (single flight, refcounts, the
 * memory bound, a failed load's message for every waiter). */
#include "cache.h"
#include "store.h"
#include "unit.h"

#include <pthread.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *manifest =
	"{\"format\":\"cltfs\",\"version\":1,\"model\":{\"n_layers\":3,\"d_model\":16},"
	"\"dtype\":\"bfloat16\",\"n_targets\":1,\"chunk_rows\":8,\"x_layers\":[0,1],"
	"\"mlp_layers\":[1,2],\"samples\":[{\"rows\":20},{\"rows\":12}]}";

static char dir[64];

static void fill(uint8_t *b, size_t n, unsigned seed)
{
	unsigned long long s = seed + 1;
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)unit_rand(&s);
}

/* A new store in a fresh dir (the global) with the manifest json. */
static cltfs_store *make_store_of(const char *json)
{
	snprintf(dir, sizeof dir, "/tmp/cltfs-unit-XXXXXX");
	CHECK(mkdtemp(dir) != NULL);
	cltfs_manifest *m;
	CHECK(cltfs_manifest_parse(json, strlen(json), "m", &m) == CLTFS_OK);
	CHECK(store_create(dir, m) == CLTFS_OK);
	cltfs_manifest_free(m);
	cltfs_store *s;
	CHECK(store_open(dir, &s) == CLTFS_OK);
	return s;
}

static cltfs_store *make_store(void) { return make_store_of(manifest); }

static void write_chunks(cltfs_store *s, int n)
{
	store_writer *w;
	CHECK(store_writer_open(s, "unit", &w) == CLTFS_OK);
	for (int c = 0; c < n; c++) {
		uint8_t buf[8 * 32];
		size_t len = store_chunk_raw(s, (uint32_t)c);
		fill(buf, len, (unsigned)c);
		CHECK(store_writer_add(w, cltfs_key(CLTFS_STREAM_X, 0, (uint32_t)c), buf, len) == CLTFS_OK);
	}
	CHECK(store_writer_close(w) == CLTFS_OK);
}

/* Chunks 0..n-1 of x@layer read back as fill(seed0 + c) made them. */
static void check_chunks(cltfs_store *s, cltfs_zctx *z, int layer, uint32_t n, unsigned seed0)
{
	for (uint32_t c = 0; c < n; c++) {
		cltfs_rec r;
		uint8_t want[256], got[256];
		CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, (uint32_t)layer, c), &r));
		fill(want, r.rsize, seed0 + c);
		CHECK(store_read_chunk(s, &r, z, got) == CLTFS_OK && !memcmp(want, got, r.rsize));
	}
}

/* Bytes nobody recorded appended to pack, then a writer opened on s:
 * the pack is back at its recorded size. */
static void cut_on_open(cltfs_store *s, const char *pack, off_t recorded)
{
	int fd = open(pack, O_WRONLY | O_APPEND);
	CHECK(fd >= 0 && write(fd, "unrecorded frame bytes", 22) == 22);
	close(fd);
	write_chunks(s, 0);
	struct stat st;
	CHECK(stat(pack, &st) == 0 && st.st_size == recorded);
}

static void test_roundtrip(void)
{
	cltfs_store *s = make_store();
	/* chunks: sample 0 (batch 0) 20 rows -> 8, 8, 4; batch 1: 8, 4 */
	CHECK(store_chunk_raw(s, 2) == 4 * 32 && store_chunk_raw(s, 4) == 4 * 32);
	write_chunks(s, 5);
	store_close(s);
	CHECK(store_open(dir, &s) == CLTFS_OK);
	cltfs_zctx *z = cltfs_zctx_new();
	check_chunks(s, z, 0, 5, 0);
	cltfs_rec r;
	CHECK(!store_lookup(s, cltfs_key(CLTFS_STREAM_MLP, 1, 0), &r));
	/* a torn record at the end of the index is ignored, then cut off */
	char idx[256];
	snprintf(idx, sizeof idx, "%s/packs/", dir);
	char host[128] = "host";
	gethostname(host, sizeof host - 1);
	snprintf(idx, sizeof idx, "%s/packs/%s-unit.idx", dir, host);
	int fd = open(idx, O_WRONLY | O_APPEND);
	CHECK(fd >= 0 && write(fd, "CLTRgarbage", 11) == 11);
	close(fd);
	store_close(s);
	CHECK(store_open(dir, &s) == CLTFS_OK);
	CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, 4), &r));
	write_chunks(s, 0); /* a writer opening the index trims the tail */
	struct stat st;
	CHECK(stat(idx, &st) == 0 && st.st_size == CLTFS_FILE_HEADER + 5 * CLTFS_REC_SIZE);
	/* so is the pack: bytes past the last recorded frame (a writer killed,
	 * or out of space, before its sync) are cut off, the frames kept */
	char pack[256];
	snprintf(pack, sizeof pack, "%s/packs/%s-unit.pack", dir, host);
	struct stat sp;
	CHECK(stat(pack, &sp) == 0);
	cut_on_open(s, pack, sp.st_size);
	check_chunks(s, z, 0, 5, 0);
	/* frames another process recorded after this one merged the index
	 * are kept: the cut goes by the index as it is now */
	cltfs_store *s2;
	store_writer *w2;
	CHECK(store_open(dir, &s2) == CLTFS_OK && store_writer_open(s2, "unit", &w2) == CLTFS_OK);
	for (uint32_t c = 0; c < 3; c++) {
		uint8_t buf[256];
		size_t len = store_chunk_raw(s2, c);
		fill(buf, len, 100 + c);
		CHECK(store_writer_add(w2, cltfs_key(CLTFS_STREAM_X, 1, c), buf, len) == CLTFS_OK);
	}
	CHECK(store_writer_close(w2) == CLTFS_OK);
	store_close(s2);
	off_t before = sp.st_size;
	CHECK(stat(pack, &sp) == 0 && sp.st_size > before);
	cut_on_open(s, pack, sp.st_size);
	check_chunks(s, z, 1, 3, 100);
	/* a flipped byte in a frame is an error naming the pack and chunk */
	CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, 1), &r));
	fd = open(pack, O_RDWR);
	uint8_t b;
	CHECK(pread(fd, &b, 1, (off_t)(r.offset + r.csize / 2)) == 1);
	b ^= 0xff;
	CHECK(pwrite(fd, &b, 1, (off_t)(r.offset + r.csize / 2)) == 1);
	close(fd);
	uint8_t got[256];
	CHECK(store_read_chunk(s, &r, z, got) == CLTFS_E_CORRUPT);
	CHECK(strstr(cltfs_errmsg(), "x@0#1") && strstr(cltfs_errmsg(), ".pack"));
	cltfs_zctx_free(z);
	store_close(s);
	/* a malformed manifest is refused with its path */
	char mpath[256];
	snprintf(mpath, sizeof mpath, "%s/cltfs.json", dir);
	FILE *f = fopen(mpath, "w");
	fputs("{\"format\": \"cltfs\", \"version\": 1}", f);
	fclose(f);
	CHECK(store_open(dir, &s) == CLTFS_E_FORMAT && strstr(cltfs_errmsg(), "cltfs.json"));
	CHECK(store_open("/nonexistent/store", &s) == CLTFS_E_IO || store_open("/nonexistent/store", &s) == CLTFS_E_NOTFOUND);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

/* Flip one byte of the pack at off. */
static void flip(const char *pack, uint64_t off)
{
	int fd = open(pack, O_RDWR);
	uint8_t b;
	CHECK(fd >= 0 && pread(fd, &b, 1, (off_t)off) == 1);
	b ^= 0x10;
	CHECK(pwrite(fd, &b, 1, (off_t)off) == 1);
	close(fd);
}

/* Each codec as a store's own (the manifest names it): frames written in
 * it, read back (raw: straight into place), and a flipped byte anywhere in
 * a frame refused naming the pack, the chunk and the offset. */
static void test_codecs(void)
{
	static const char *names[] = {"zstd", "raw", "exp4"};
	char host[128] = "host";
	gethostname(host, sizeof host - 1);
	for (int c = 0; c < CLTFS_NCODECS; c++) {
		char json[600], pack[256], cmd[300];
		const char *at = strstr(manifest, "\"chunk_rows\"");
		snprintf(json, sizeof json, "%.*s\"codec\":\"%s\",%s", (int)(at - manifest), manifest, names[c], at);
		cltfs_store *s = make_store_of(json);
		CHECK(store_manifest(s)->codec == (cltfs_codec)c);
		write_chunks(s, 5);
		store_close(s);
		CHECK(store_open(dir, &s) == CLTFS_OK);
		cltfs_zctx *z = cltfs_zctx_new();
		uint8_t want[256], got[256];
		cltfs_rec r;
		for (int k = 0; k < 5; k++) {
			CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, (uint32_t)k), &r) && r.codec == c);
			fill(want, r.rsize, (unsigned)k);
			memset(got, 0, sizeof got);
			CHECK(store_read_chunk(s, &r, z, got) == CLTFS_OK && !memcmp(want, got, r.rsize));
		}
		snprintf(pack, sizeof pack, "%s/packs/%s-unit.pack", dir, host);
		CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, 1), &r));
		uint64_t where[] = {r.offset + 1, r.offset + 6, r.offset + r.csize / 2, r.offset + r.csize - 1};
		for (size_t i = 0; i < sizeof where / sizeof *where; i++) {
			flip(pack, where[i]);
			char off[32];
			snprintf(off, sizeof off, "offset %llu", (unsigned long long)r.offset);
			CHECK(store_read_chunk(s, &r, z, got) == CLTFS_E_CORRUPT);
			CHECK(strstr(cltfs_errmsg(), "x@0#1") && strstr(cltfs_errmsg(), pack) && strstr(cltfs_errmsg(), off));
			flip(pack, where[i]);
			CHECK(store_read_chunk(s, &r, z, got) == CLTFS_OK);
		}
		/* a pack cut short inside the frame */
		CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, 4), &r));
		CHECK(truncate(pack, (off_t)(r.offset + r.csize - 3)) == 0);
		CHECK(store_read_chunk(s, &r, z, got) == CLTFS_E_CORRUPT && strstr(cltfs_errmsg(), "x@0#4"));
		cltfs_zctx_free(z);
		store_close(s);
		snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
		CHECK(system(cmd) == 0);
	}
}

/* Writers that disagree: one store (zstd by its manifest) filled by a
 * writer of each codec, and frames copied as they are from those into a
 * second store, as the Hub tier copies them; every chunk reads back as what
 * its record names, and verify's walk checks each. */
static cltfs_err check_one(void *arg, const store_entry *e)
{
	uint8_t got[256];
	CHECK(e->valid && store_check_entry(e, arg, got) == CLTFS_OK);
	return CLTFS_OK;
}

static void test_mixed_codecs(void)
{
	cltfs_store *s = make_store();
	char first[64], cmd[300];
	store_writer *w[CLTFS_NCODECS];
	uint8_t buf[256], got[256];
	for (int c = 0; c < CLTFS_NCODECS; c++) {
		char tag[16];
		snprintf(tag, sizeof tag, "w%d", c);
		CHECK(store_writer_open(s, tag, &w[c]) == CLTFS_OK);
		store_writer_codec(w[c], (cltfs_codec)c);
	}
	for (int k = 0; k < 5; k++) { /* chunk k of each stream from writer (k + stream) % 3 */
		size_t len = store_chunk_raw(s, (uint32_t)k);
		fill(buf, len, (unsigned)k);
		CHECK(store_writer_add(w[k % 3], cltfs_key(CLTFS_STREAM_X, 0, (uint32_t)k), buf, len) == CLTFS_OK);
		CHECK(store_writer_add(w[(k + 1) % 3], cltfs_key(CLTFS_STREAM_X, 1, (uint32_t)k), buf, len) == CLTFS_OK);
	}
	for (int c = 0; c < CLTFS_NCODECS; c++)
		CHECK(store_writer_close(w[c]) == CLTFS_OK);
	store_close(s);
	snprintf(first, sizeof first, "%s", dir);
	CHECK(store_open(first, &s) == CLTFS_OK);
	cltfs_store *d = make_store(); /* another dir; copies go here */
	store_writer *cw;
	CHECK(store_writer_open(d, "copy", &cw) == CLTFS_OK);
	cltfs_zctx *z = cltfs_zctx_new();
	for (int k = 0; k < 5; k++)
		for (unsigned L = 0; L < 2; L++) {
			cltfs_rec r;
			const char *pname;
			CHECK(store_locate(s, cltfs_key(CLTFS_STREAM_X, L, (uint32_t)k), &r, &pname));
			CHECK(r.codec == (k + L) % 3);
			fill(buf, r.rsize, (unsigned)k);
			CHECK(store_read_chunk(s, &r, z, got) == CLTFS_OK && !memcmp(buf, got, r.rsize));
			char path[300];
			snprintf(path, sizeof path, "%s/packs/%s.pack", first, pname);
			uint8_t frame[600];
			int fd = open(path, O_RDONLY);
			CHECK(fd >= 0 && r.csize <= sizeof frame && pread(fd, frame, r.csize, (off_t)r.offset) == r.csize);
			close(fd);
			CHECK(store_decode(&r, z, frame, got) == CLTFS_OK && store_writer_add_frame(cw, &r, frame) == CLTFS_OK);
		}
	CHECK(store_writer_close(cw) == CLTFS_OK);
	store_close(d);
	CHECK(store_open(dir, &d) == CLTFS_OK);
	for (int k = 0; k < 5; k++) {
		cltfs_rec r;
		CHECK(store_lookup(d, cltfs_key(CLTFS_STREAM_X, 1, (uint32_t)k), &r) && r.codec == (k + 1) % 3);
		fill(buf, r.rsize, (unsigned)k);
		CHECK(store_read_chunk(d, &r, z, got) == CLTFS_OK && !memcmp(buf, got, r.rsize));
	}
	CHECK(store_foreach(s, check_one, z) == CLTFS_OK && store_foreach(d, check_one, z) == CLTFS_OK);
	cltfs_zctx_free(z);
	store_close(d);
	store_close(s);
	snprintf(cmd, sizeof cmd, "rm -rf %s %s", dir, first);
	CHECK(system(cmd) == 0);
}

/* Abandoned chunks leave the lookup table at once, and only they: the
 * others of the same probe runs are still found. */
static void test_abandon(void)
{
	cltfs_store *s = make_store();
	store_writer *w;
	uint8_t buf[8 * 32];
	CHECK(store_writer_open(s, "unit", &w) == CLTFS_OK);
	/* kept: x@0 and x@1, every chunk */
	for (unsigned L = 0; L < 2; L++)
		for (uint32_t c = 0; c < 5; c++) {
			fill(buf, store_chunk_raw(s, c), c);
			CHECK(store_writer_add(w, cltfs_key(CLTFS_STREAM_X, L, c), buf, store_chunk_raw(s, c)) == CLTFS_OK);
		}
	CHECK(store_writer_sync(w) == CLTFS_OK);
	/* abandoned: mlp@1 and mlp@2 */
	for (unsigned L = 1; L < 3; L++)
		for (uint32_t c = 0; c < 5; c++) {
			fill(buf, store_chunk_raw(s, c), c);
			CHECK(store_writer_add(w, cltfs_key(CLTFS_STREAM_MLP, L, c), buf, store_chunk_raw(s, c)) == CLTFS_OK);
		}
	cltfs_rec r;
	CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_MLP, 2, 4), &r)); /* readable before the sync */
	store_writer_abandon(w);
	for (unsigned L = 1; L < 3; L++)
		for (uint32_t c = 0; c < 5; c++)
			CHECK(!store_lookup(s, cltfs_key(CLTFS_STREAM_MLP, L, c), &r));
	for (unsigned L = 0; L < 2; L++)
		for (uint32_t c = 0; c < 5; c++)
			CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, L, c), &r));
	/* adding an abandoned chunk again works, and is kept */
	fill(buf, store_chunk_raw(s, 0), 0);
	CHECK(store_writer_add(w, cltfs_key(CLTFS_STREAM_MLP, 1, 0), buf, store_chunk_raw(s, 0)) == CLTFS_OK);
	CHECK(store_writer_close(w) == CLTFS_OK);
	store_close(s);
	CHECK(store_open(dir, &s) == CLTFS_OK);
	CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_MLP, 1, 0), &r));
	CHECK(!store_lookup(s, cltfs_key(CLTFS_STREAM_MLP, 1, 1), &r));
	store_close(s);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

/* Several threads add frames to one writer while another syncs: every
 * chunk ends up in the index once, readable after a reopen. */
typedef struct {
	store_writer *w;
	cltfs_store *s;
	unsigned layer;
	atomic_bool *stop;
} adder;

static void *add_layer(void *arg)
{
	adder *a = arg;
	uint8_t buf[8 * 32];
	for (uint32_t c = 0; c < 5; c++) {
		/* layers 0, 1: x@0, x@1; 2, 3: mlp@1, mlp@2 */
		uint64_t key = a->layer < 2 ? cltfs_key(CLTFS_STREAM_X, a->layer, c)
					    : cltfs_key(CLTFS_STREAM_MLP, a->layer - 1, c);
		fill(buf, store_chunk_raw(a->s, c), c + 10 * a->layer);
		if (store_writer_add(a->w, key, buf, store_chunk_raw(a->s, c)))
			abort();
	}
	return NULL;
}

static void *syncer(void *arg)
{
	adder *a = arg;
	while (!atomic_load(a->stop))
		if (store_writer_sync(a->w))
			abort();
	return NULL;
}

static void test_concurrent_writer(void)
{
	cltfs_store *s = make_store();
	store_writer *w;
	CHECK(store_writer_open(s, "unit", &w) == CLTFS_OK);
	atomic_bool stop = false;
	adder a[4], sy = {w, s, 0, &stop};
	pthread_t t[4], st;
	pthread_create(&st, NULL, syncer, &sy);
	for (unsigned i = 0; i < 4; i++) {
		a[i] = (adder){w, s, i, &stop};
		pthread_create(&t[i], NULL, add_layer, &a[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	atomic_store(&stop, true);
	pthread_join(st, NULL);
	CHECK(store_writer_close(w) == CLTFS_OK);
	store_close(s);
	CHECK(store_open(dir, &s) == CLTFS_OK);
	cltfs_zctx *z = cltfs_zctx_new();
	for (unsigned i = 0; i < 4; i++)
		for (uint32_t c = 0; c < 5; c++) {
			cltfs_rec r;
			uint8_t want[256], got[256];
			uint64_t key = cltfs_key(i < 2 ? CLTFS_STREAM_X : CLTFS_STREAM_MLP, i < 2 ? i : i - 1, c);
			CHECK(store_lookup(s, key, &r));
			fill(want, r.rsize, c + 10 * i);
			CHECK(store_read_chunk(s, &r, z, got) == CLTFS_OK && !memcmp(want, got, r.rsize));
		}
	char idx[300], host[128] = "host";
	gethostname(host, sizeof host - 1);
	snprintf(idx, sizeof idx, "%s/packs/%s-unit.idx", dir, host);
	struct stat stt;
	CHECK(stat(idx, &stt) == 0 && stt.st_size == CLTFS_FILE_HEADER + 20 * CLTFS_REC_SIZE); /* each once */
	cltfs_zctx_free(z);
	store_close(s);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

/* The index at scale: 8 bytes a chunk once synced (a table of whole
 * records took ~96), a record read before a sync still reads after it, and
 * a second writer's copy of a chunk does not replace the first. */
static void test_index(void)
{
	enum { N = 40000 };
	static const char *big =
		"{\"format\":\"cltfs\",\"version\":1,\"model\":{\"n_layers\":2,\"d_model\":16},"
		"\"dtype\":\"bfloat16\",\"n_targets\":1,\"chunk_rows\":1,\"x_layers\":[0,1],"
		"\"mlp_layers\":[1],\"samples\":[{\"rows\":40000}]}";
	cltfs_store *s = make_store_of(big);
	store_writer *w, *w2;
	CHECK(store_writer_open(s, "a", &w) == CLTFS_OK);
	CHECK(store_writer_open(s, "b", &w2) == CLTFS_OK);
	uint8_t buf[32], got[32];
	for (uint32_t c = 0; c < N; c++) {
		fill(buf, sizeof buf, c);
		CHECK(store_writer_add(w, cltfs_key(CLTFS_STREAM_X, 0, c), buf, sizeof buf) == CLTFS_OK);
	}
	fill(buf, sizeof buf, 7);
	CHECK(store_writer_add(w, cltfs_key(CLTFS_STREAM_MLP, 1, 9), buf, sizeof buf) == CLTFS_OK);
	cltfs_rec before, after;
	CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, 12345), &before));
	/* b's copy of a chunk a has (pending) is written but not answered */
	fill(buf, sizeof buf, 99);
	CHECK(store_writer_add(w2, cltfs_key(CLTFS_STREAM_X, 0, 12345), buf, sizeof buf) == CLTFS_OK);
	CHECK(store_writer_close(w2) == CLTFS_OK);
	CHECK(store_writer_close(w) == CLTFS_OK);
	uint64_t chunks, bytes;
	store_index_usage(s, &chunks, &bytes);
	CHECK(chunks == N + 1);
	CHECK(bytes < 10 * chunks + 80000); /* 10 blocks for x@0, one for mlp@1, the block tables */
	cltfs_zctx *z = cltfs_zctx_new();
	CHECK(z && store_read_chunk(s, &before, z, got) == CLTFS_OK);
	fill(buf, sizeof buf, 12345);
	CHECK(!memcmp(buf, got, sizeof buf));
	CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, 12345), &after) && after.offset == before.offset &&
	      after.crc == before.crc);
	store_close(s);
	/* reopened: every chunk from the map, through the index files */
	CHECK(store_open(dir, &s) == CLTFS_OK);
	store_index_usage(s, &chunks, &bytes);
	CHECK(chunks == N + 1 && bytes < 10 * chunks + 80000);
	for (uint32_t c = 0; c < N; c += 997) {
		cltfs_rec r;
		CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, c), &r) && r.rsize == sizeof buf);
		CHECK(store_read_chunk(s, &r, z, got) == CLTFS_OK);
		fill(buf, sizeof buf, c);
		CHECK(!memcmp(buf, got, sizeof buf));
	}
	cltfs_rec r;
	CHECK(store_lookup(s, cltfs_key(CLTFS_STREAM_MLP, 1, 9), &r));
	CHECK(!store_lookup(s, cltfs_key(CLTFS_STREAM_MLP, 1, 10), &r));
	CHECK(!store_lookup(s, cltfs_key(CLTFS_STREAM_X, 1, 0), &r));
	CHECK(!store_lookup(s, cltfs_key(CLTFS_STREAM_MLP, 0, 0), &r)); /* no such stream */
	CHECK(!store_lookup(s, cltfs_key(CLTFS_STREAM_X, 0, N), &r));   /* past the end */
	cltfs_zctx_free(z);
	store_close(s);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

/* ---- cache ---- */

static atomic_int loads;

static cltfs_err slow_loader(void *arg, uint64_t key, uint8_t *buf, size_t cap, size_t *len, uint32_t *crc)
{
	atomic_fetch_add(&loads, 1);
	usleep(20000);
	if (key == 999)
		return cltfs_fail(CLTFS_E_CORRUPT, "bad chunk");
	*len = 1000;
	if (cap < *len)
		abort();
	memset(buf, (int)key, *len);
	*crc = 0;
	return CLTFS_OK;
}

static chunk_cache *cache;

/* A reader of a chunk whose load fails, waiting on another reader's load. */
static void *failing_reader(void *arg)
{
	chunk *ch;
	bool hit;
	char *msg = arg;
	if (cache_get(cache, 999, &ch, &hit) == CLTFS_E_CORRUPT)
		snprintf(msg, 256, "%s", cltfs_errmsg());
	return NULL;
}

static void *reader(void *arg)
{
	chunk *ch;
	bool hit;
	if (cache_get(cache, 7, &ch, &hit) == CLTFS_OK) {
		if (ch->data[999] != 7)
			abort();
		cache_put(cache, ch);
	}
	return NULL;
}

static void test_cache(void)
{
	cache = cache_new(1 << 20, 1000, slow_loader, NULL);
	pthread_t t[8];
	for (int i = 0; i < 8; i++)
		pthread_create(&t[i], NULL, reader, NULL);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	CHECK(atomic_load(&loads) == 1); /* single flight */
	chunk *ch;
	bool hit;
	CHECK(cache_get(cache, 999, &ch, &hit) == CLTFS_E_CORRUPT);
	CHECK(cache_get(cache, 999, &ch, &hit) == CLTFS_E_CORRUPT); /* retried, not cached */
	CHECK(atomic_load(&loads) == 3);
	/* readers that waited on a failed load get the loader's message */
	char msg[4][256] = {"", "", "", ""};
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, failing_reader, msg[i]);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 4; i++)
		CHECK(!strcmp(msg[i], "bad chunk"));
	cache_free(cache);

	/* the bound: 64 chunks of 1000 bytes through a 16000-byte cache */
	cache = cache_new(16000, 1000, slow_loader, NULL);
	chunk *held;
	CHECK(cache_get(cache, 1, &held, &hit) == CLTFS_OK);
	for (uint64_t k = 2; k < 40; k++) {
		CHECK(cache_get(cache, k, &ch, &hit) == CLTFS_OK);
		cache_put(cache, ch);
		size_t bytes, entries, limit;
		cache_usage(cache, &bytes, &entries, &limit);
		CHECK(bytes <= limit + 1000); /* the held chunk may overshoot its shard */
	}
	CHECK(held->data[0] == 1 && held->data[999] == 1); /* still valid while referenced */
	cache_put(cache, held);
	cache_free(cache);

	/* the prefault: up to its budget on an idle cache (whole 32 MiB
	 * regions), and not past the first load (its zeroing would compete
	 * with the reader) */
	enum { MB = 1 << 20 };
	atomic_bool stop = false;
	cache = cache_new(64 * MB, MB, slow_loader, NULL);
	cache_reserve(cache, 40 * MB, &stop);
	CHECK(cache_buffers(cache) == 32 * MB);
	cache_free(cache);
	cache = cache_new(64 * MB, MB, slow_loader, NULL);
	CHECK(cache_get(cache, 1, &ch, &hit) == CLTFS_OK);
	cache_put(cache, ch);
	cache_reserve(cache, 40 * MB, &stop);
	CHECK(cache_buffers(cache) == MB);
	cache_free(cache);
	cache = cache_new(64 * MB, MB, slow_loader, NULL);
	atomic_store(&stop, true);
	cache_reserve(cache, 40 * MB, &stop);
	CHECK(cache_buffers(cache) == 0);
	cache_free(cache);
}

int main(void)
{
	RUN(test_roundtrip);
	RUN(test_codecs);
	RUN(test_mixed_codecs);
	RUN(test_abandon);
	RUN(test_concurrent_writer);
	RUN(test_index);
	RUN(test_cache);
	return unit_done("fs_store");
}
