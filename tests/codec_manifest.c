/* Manifest parsing, validation messages, derived chunk geometry; the
 * sample table (version 2): round trips, the sparse batch index against a
 * brute-force walk, and every kind of damage refused; names. */
#include "codec.h"
#include "unit.h"

#include <stdatomic.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

static const char *good =
	"{\"format\":\"cltfs\",\"version\":1,\"model\":{\"id\":\"m\",\"n_layers\":4,\"d_model\":8},"
	"\"dtype\":\"bfloat16\",\"n_targets\":2,\"chunk_rows\":4,\"x_layers\":[0,1,2],"
	"\"mlp_layers\":[1,2,3],\"samples\":[{\"rows\":5},{\"rows\":3},{\"rows\":9}],"
	"\"batches\":[[2,5],[1,9]]}";

/* The saved file's checksum: it parses as saved; a byte changed (a field's
 * value, as a hand edit would) is CLTFS_E_CORRUPT naming the file; trailing
 * bytes and a NUL are refused; a version 4 file without it is refused. */
static void test_checksum(const char *path)
{
	char *text;
	size_t len;
	CHECK(cltfs_read_file(path, &text, &len) == CLTFS_OK);
	cltfs_manifest *m = NULL;
	CHECK(strstr(text, "\"checksum\":\"") && text[len - 1] == '\n');
	CHECK(cltfs_manifest_parse(text, len, path, &m) == CLTFS_OK);
	cltfs_manifest_free(m);
	char *nt = strstr(text, "\"n_targets\":");
	CHECK(nt != NULL);
	if (nt) {
		char keep = nt[12];
		nt[12] = nt[12] == '1' ? '2' : '1'; /* n_targets 16 -> 26 or 1x -> 1y */
		CHECK(cltfs_manifest_parse(text, len, path, &m) == CLTFS_E_CORRUPT);
		CHECK(strstr(cltfs_errmsg(), path) && strstr(cltfs_errmsg(), "changed after cltfs wrote it"));
		nt[12] = keep;
	}
	char *more = malloc(len + 8);
	memcpy(more, text, len);
	memcpy(more + len, "{}", 2);
	CHECK(cltfs_manifest_parse(more, len + 2, path, &m) == CLTFS_E_FORMAT &&
	      strstr(cltfs_errmsg(), "bytes after the JSON value"));
	more[len] = 0;
	CHECK(cltfs_manifest_parse(more, len + 1, path, &m) == CLTFS_E_FORMAT && strstr(cltfs_errmsg(), "NUL"));
	free(more);
	char *sum = strstr(text, ",\"checksum\"");
	if (sum) {
		memcpy(sum, "}\n", 3);
		CHECK(cltfs_manifest_parse(text, strlen(text), path, &m) == CLTFS_E_FORMAT &&
		      strstr(cltfs_errmsg(), "'checksum': missing"));
	}
	free(text);
}

static void test_good(void)
{
	cltfs_manifest *m;
	CHECK(cltfs_manifest_parse(good, strlen(good), "cltfs.json", &m) == CLTFS_OK);
	if (!m)
		return;
	CHECK(m->n_layers == 4 && m->d_model == 8 && m->dtype == CLTFS_BF16 && m->target_offset == 1);
	CHECK(m->total_rows == 17 && m->n_batches == 2 && cltfs_manifest_batch(m, 0).rows == 8 &&
	      cltfs_manifest_batch(m, 1).first_row == 8);
	/* chunks split at chunk_rows and at each batch end, never across */
	CHECK(m->n_chunks == 5);
	int64_t want[] = {0, 4, 8, 12, 16, 17};
	for (int i = 0; i <= 5; i++)
		CHECK(cltfs_manifest_chunk_start(m, i) == want[i]);
	CHECK(cltfs_manifest_chunk_of(m, 0) == 0 && cltfs_manifest_chunk_of(m, 7) == 1 &&
	      cltfs_manifest_chunk_of(m, 8) == 2 && cltfs_manifest_chunk_of(m, 16) == 4);
	CHECK(cltfs_manifest_target_layer(m, 2, 0) == 3 && cltfs_manifest_target_layer(m, 2, 1) == -1);
	CHECK(cltfs_manifest_targets_of(m, 2) == 2);
	/* saved (version 4 and its table) and loaded again: the same text, the
	 * same dataset as the version 1 it came from */
	char path[128];
	snprintf(path, sizeof path, "%s/cltfs.json", dir);
	CHECK(cltfs_manifest_save(m, path) == CLTFS_OK);
	cltfs_manifest *m2 = NULL;
	CHECK(cltfs_manifest_load(path, &m2) == CLTFS_OK);
	char *a = cltfs_manifest_dump(m), *b = m2 ? cltfs_manifest_dump(m2) : NULL;
	CHECK(a && b && !strcmp(a, b) && strstr(a, "\"version\":4") && strstr(a, "samples.bin"));
	CHECK(m2 && m2->version == 4 && m2->total_rows == 17 && m2->n_chunks == 5 && cltfs_manifest_same(m, m2));
	free(a);
	free(b);
	cltfs_manifest_free(m2);
	test_checksum(path);
	/* a codec: "codec" in the manifest; zstd, the default, is left out */
	CHECK(m->codec == CLTFS_CODEC_ZSTD && !strstr((a = cltfs_manifest_dump(m)), "codec"));
	free(a);
	m->codec = CLTFS_CODEC_RAW;
	CHECK(cltfs_manifest_save(m, path) == CLTFS_OK && cltfs_manifest_load(path, &m2) == CLTFS_OK);
	a = cltfs_manifest_dump(m2);
	CHECK(m2 && m2->codec == CLTFS_CODEC_RAW && m2->version == 4);
	CHECK(a && strstr(a, "\"version\":4") && strstr(a, "\"codec\":\"raw\""));
	free(a);
	/* the same dataset whatever the codec: frames name their own */
	m->codec = CLTFS_CODEC_ZSTD;
	CHECK(cltfs_manifest_same(m, m2));
	m->codec = (cltfs_codec)CLTFS_NCODECS;
	CHECK(cltfs_manifest_finish(m, "built") == CLTFS_E_FORMAT);
	m->codec = CLTFS_CODEC_ZSTD;
	cltfs_manifest_free(m2);
	cltfs_manifest_free(m);
}

/* Replace the first `from` in good by `to` and expect a message with `why`. */
static void refuse(const char *from, const char *to, const char *why)
{
	char buf[2048];
	const char *at = strstr(good, from);
	CHECK(at != NULL);
	if (!at)
		return;
	snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - good), good, to, at + strlen(from));
	cltfs_manifest *m = NULL;
	cltfs_err e = cltfs_manifest_parse(buf, strlen(buf), "/s/cltfs.json", &m);
	CHECK(e == CLTFS_E_FORMAT);
	CHECK(strstr(cltfs_errmsg(), "/s/cltfs.json") != NULL);
	if (!strstr(cltfs_errmsg(), why)) {
		fprintf(stderr, "  message was: %s (wanted %s)\n", cltfs_errmsg(), why);
		CHECK(0);
	}
	cltfs_manifest_free(m);
}

static void test_refused(void)
{
	cltfs_manifest *m = NULL;
	CHECK(cltfs_manifest_parse("[1, 2]", 6, "/s/cltfs.json", &m) == CLTFS_E_FORMAT);
	CHECK(strstr(cltfs_errmsg(), "expected a JSON object") != NULL);
	refuse("\"version\":1", "\"version\":\"1\"", "'version': expected an integer");
	refuse("\"version\":1", "\"version\":5", "format versions 1 to 4");
	/* strict JSON, known keys only */
	refuse("{", "\xEF\xBB\xBF{", "byte-order mark");
	refuse("\"format\"", "\"format\":\"cltfs\",\"format\"", "key \"format\" twice in one object");
	refuse("\"n_layers\"", "\"d_model\":8,\"n_layers\"", "key \"d_model\" twice");
	refuse("\"chunk_rows\":4", "\"chunk_rows\":4,\"layuot\":{}", "unknown key \"layuot\"");
	refuse("\"n_layers\"", "\"nlayers\":3,\"n_layers\"", "unknown key \"nlayers\"");
	refuse("\"chunk_rows\":4", "\"chunk_rows\":4.5", "'chunk_rows': expected an integer");
	refuse("\"chunk_rows\":4", "\"chunk_rows\":4,\"checksum\":\"0000000\"", "'checksum': expected 8");
	refuse("\"chunk_rows\":4", "\"chunk_rows\":4,\"codec\":\"lz4\"",
	       "field 'codec': unknown codec \"lz4\": this cltfs reads zstd, raw, exp4");
	refuse("\"chunk_rows\":4", "\"chunk_rows\":4,\"codec\":2", "field 'codec': expected a string");
	refuse("\"format\":\"cltfs\"", "\"format\":\"zip\"", "not a cltfs manifest");
	refuse("\"dtype\":\"bfloat16\"", "\"dtype\":\"int8\"", "'dtype': unknown value");
	refuse("\"d_model\":8", "\"d_model\":0", "'d_model': 0 is out of range");
	refuse("\"chunk_rows\":4,", "", "'chunk_rows': missing");
	refuse("[0,1,2]", "[0,2,1]", "strictly ascending");
	refuse("[1,2,3]", "[1,2]", "mlp_layers lacks");
	refuse("[[2,5],[1,9]]", "[[2,5],[2,9]]", "more samples");
	refuse("[[2,5],[1,9]]", "[[2,4],[1,9]]", "shorter than one of its samples");
	refuse("[[2,5],[1,9]]", "[[2,5]]", "batches hold 2 samples");
	refuse("{\"rows\":5}", "{\"rows\":-5}", "/s/cltfs.json: field 'samples[0].rows': -5 is out of range");
	refuse("{\"rows\":3}", "3", "field 'samples[1]': expected an object");
	refuse("\"x_layers\":[0,1,2]", "\"x_layers\":[0,1,7]", "not below n_layers");
	refuse("}", "", "not valid JSON");
}

/* A store's manifest of n samples (rows 1 + i % 7), S per batch (or
 * explicit batches of 1 to 3 samples, T the longest), saved into dir. */
static cltfs_manifest *make(int64_t n, int64_t S, bool explicit_batches, bool strings)
{
	cltfs_manifest *m = cltfs_manifest_new();
	cltfs_table_writer *w;
	cltfs_table *t = NULL;
	CHECK(m && cltfs_table_writer_new(dir, strings, &w) == CLTFS_OK);
	for (int64_t i = 0; i < n; i++) {
		char id[32], text[64];
		snprintf(id, sizeof id, "%lld", (long long)i);
		snprintf(text, sizeof text, "query number %lld", (long long)i);
		CHECK(cltfs_table_add(w, (uint32_t)(1 + i % 7), id, "img.jpg", text) == CLTFS_OK);
	}
	for (int64_t i = 0; explicit_batches && i < n;) {
		int64_t k = 1 + i % 3 < n - i ? 1 + i % 3 : n - i;
		CHECK(cltfs_table_add_batch(w, (uint32_t)k, 7) == CLTFS_OK);
		i += k;
	}
	CHECK(cltfs_table_writer_finish(w, NULL, &t) == CLTFS_OK);
	m->n_layers = 2;
	m->d_model = 4;
	m->n_targets = 1;
	m->chunk_rows = 3;
	m->batch_samples = S;
	m->n_x_layers = m->n_mlp_layers = 1;
	m->x_layers = calloc(1, sizeof(int));
	m->mlp_layers = calloc(1, sizeof(int));
	m->mlp_layers[0] = 1;
	cltfs_manifest_set_table(m, t, NULL);
	CHECK(cltfs_manifest_finish(m, "built") == CLTFS_OK);
	return m;
}

/* Every batch, chunk and sample lookup against a walk of the table. */
static void check_geometry(const cltfs_manifest *m)
{
	int64_t s = 0, row = 0, chunk = 0, bad = 0;
	for (int64_t b = 0; b < m->n_batches; b++) {
		cltfs_batch x = cltfs_manifest_batch(m, b);
		bad += x.first_sample != s || x.first_row != row || x.first_chunk != chunk;
		int64_t rows = 0, T = 0;
		for (int64_t i = s; i < s + x.samples; i++) {
			bad += cltfs_manifest_sample_row(m, i) != row + rows;
			rows += cltfs_manifest_sample_rows(m, i);
			T = cltfs_manifest_sample_rows(m, i) > T ? cltfs_manifest_sample_rows(m, i) : T;
		}
		bad += x.rows != rows || x.chunks != (rows + m->chunk_rows - 1) / m->chunk_rows;
		bad += m->table->batches ? x.tokens != 7 : x.tokens != T;
		for (int64_t c = chunk; c < chunk + x.chunks; c++) {
			int64_t start = row + (c - chunk) * m->chunk_rows;
			bad += cltfs_manifest_chunk_start(m, c) != start || cltfs_manifest_batch_of_chunk(m, c) != b;
			bad += cltfs_manifest_chunk_rows(m, c) != (row + rows - start < m->chunk_rows ? row + rows - start
												  : m->chunk_rows);
			bad += cltfs_manifest_chunk_of(m, start) != c;
		}
		s += x.samples;
		row += rows;
		chunk += x.chunks;
	}
	CHECK(bad == 0 && s == m->n_samples && row == m->total_rows && chunk == m->n_chunks);
	CHECK(cltfs_manifest_chunk_start(m, m->n_chunks) == m->total_rows);
	/* the same starts in one pass, every step */
	int64_t steps[] = {1, 2, 3, 7, 16, m->n_chunks - 1, m->n_chunks, m->n_chunks + 5};
	for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
		int64_t step = steps[i] > 0 ? steps[i] : 1, n = (m->n_chunks + step - 1) / step;
		int64_t *out = malloc((size_t)(n + 2) * sizeof *out);
		CHECK(out != NULL);
		if (!out)
			continue;
		out[n + 1] = -7; /* nothing is written past total_rows */
		cltfs_manifest_chunk_starts(m, step, out);
		bad = out[n] != m->total_rows || out[n + 1] != -7;
		for (int64_t w = 0; w < n; w++)
			bad += out[w] != cltfs_manifest_chunk_start(m, w * step);
		CHECK(bad == 0);
		free(out);
	}
}

static void test_geometry(void)
{
	int64_t ns[] = {1, 15, 16, 17, 1000};
	for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
		for (int64_t S = 1; S <= 4; S++) {
			cltfs_manifest *m = make(ns[i], S, false, S == 2);
			if (m)
				check_geometry(m);
			cltfs_manifest_free(m);
		}
	cltfs_manifest *m = make(1000, 1, true, false);
	if (m) {
		CHECK(m->n_batches > 16 * 20); /* many sparse blocks */
		check_geometry(m);
	}
	cltfs_manifest_free(m);
	m = make(5, 1, false, true);
	const char *id, *image, *text;
	char *buf = NULL;
	CHECK(m && !cltfs_manifest_sample_text(m, 3, &buf, &id, &image, &text) && !strcmp(id, "3") &&
	      !strcmp(image, "img.jpg") && !strcmp(text, "query number 3"));
	free(buf);
	cltfs_manifest_free(m);
}

static void write_bytes(const char *path, const uint8_t *b, size_t n)
{
	FILE *f = fopen(path, "wb");
	CHECK(f && fwrite(b, 1, n, f) == n);
	if (f)
		fclose(f);
}

/* The table is read, not mapped: cut short in place after it loaded (as a
 * failing or changing filesystem can), its rows and shapes stay in memory
 * and its strings are an error naming the file, not a SIGBUS. */
static void test_table_cut_while_open(const char *path, const char *tpath, const char *tab, size_t n)
{
	write_bytes(tpath, (const uint8_t *)tab, n);
	cltfs_manifest *x = NULL;
	CHECK(cltfs_manifest_load(path, &x) == CLTFS_OK);
	if (!x)
		return;
	char *buf;
	const char *id, *image, *text;
	CHECK(!cltfs_manifest_sample_text(x, 39, &buf, &id, &image, &text) && !strcmp(id, "39"));
	free(buf);
	CHECK(truncate(tpath, (off_t)n - 40) == 0);
	CHECK(cltfs_manifest_sample_text(x, 39, &buf, &id, &image, &text) == CLTFS_E_CORRUPT && !buf &&
	      strstr(cltfs_errmsg(), "samples.bin: sample 39: the file ends early"));
	CHECK(truncate(tpath, 0) == 0);
	CHECK(cltfs_manifest_sample_text(x, 0, &buf, &id, &image, &text) == CLTFS_E_CORRUPT && !buf);
	int64_t rows = 0;
	for (int64_t i = 0; i < 40; i++)
		rows += cltfs_manifest_sample_rows(x, i);
	CHECK(rows == x->total_rows);
	CHECK(cltfs_manifest_sample_text(x, 40, &buf, &id, &image, &text) == CLTFS_E_NOTFOUND && !buf);
	cltfs_manifest_free(x);
	/* a table without strings has no text for any sample */
	cltfs_manifest *m = make(3, 1, false, false);
	CHECK(m && cltfs_manifest_sample_text(m, 0, &buf, &id, &image, &text) == CLTFS_E_NOTFOUND &&
	      strstr(cltfs_errmsg(), "no text for sample 0"));
	cltfs_manifest_free(m);
}

/* Every flipped byte of a saved table (or a table cut short, or another
 * table) is refused at load, naming samples.bin. */
static void test_table_damage(void)
{
	cltfs_manifest *m = make(40, 2, false, true);
	char path[128], tpath[128];
	snprintf(path, sizeof path, "%s/cltfs.json", dir);
	snprintf(tpath, sizeof tpath, "%s/samples.bin", dir);
	CHECK(m && cltfs_manifest_save(m, path) == CLTFS_OK);
	cltfs_manifest_free(m);
	char *good_tab;
	size_t n;
	CHECK(cltfs_read_file(tpath, &good_tab, &n) == CLTFS_OK);
	int refused = 0, tried = 0;
	for (size_t i = 0; i < n; i += 1 + i / 64) {
		uint8_t *b = malloc(n);
		memcpy(b, good_tab, n);
		b[i] ^= 0x10;
		write_bytes(tpath, b, n);
		free(b);
		cltfs_manifest *x = NULL;
		cltfs_err e = cltfs_manifest_load(path, &x);
		tried++;
		refused += (e == CLTFS_E_CORRUPT || e == CLTFS_E_MISMATCH || e == CLTFS_E_UNSUPPORTED) &&
			   strstr(cltfs_errmsg(), "samples.bin");
		cltfs_manifest_free(x);
	}
	CHECK(refused == tried);
	cltfs_manifest *x = NULL;
	write_bytes(tpath, (const uint8_t *)good_tab, n - 8);
	CHECK(cltfs_manifest_load(path, &x) == CLTFS_E_CORRUPT && strstr(cltfs_errmsg(), "truncated"));
	write_bytes(tpath, (const uint8_t *)good_tab, 100);
	CHECK(cltfs_manifest_load(path, &x) == CLTFS_E_CORRUPT && strstr(cltfs_errmsg(), "shorter than its header"));
	unlink(tpath);
	CHECK(cltfs_manifest_load(path, &x) == CLTFS_E_NOTFOUND && strstr(cltfs_errmsg(), "missing"));
	/* a good table of another dataset: the manifest names another CRC */
	cltfs_manifest *other = make(41, 2, false, true);
	CHECK(other && cltfs_table_save(other->table, tpath) == CLTFS_OK);
	CHECK(cltfs_manifest_load(path, &x) == CLTFS_E_MISMATCH && strstr(cltfs_errmsg(), "not the sample table"));
	cltfs_manifest_free(other);
	CHECK(mkfifo(tpath, 0644) == 0 || unlink(tpath) == 0); /* a FIFO does not hang the load */
	unlink(tpath);
	CHECK(mkfifo(tpath, 0644) == 0);
	CHECK(cltfs_manifest_load(path, &x) == CLTFS_E_FORMAT && strstr(cltfs_errmsg(), "not a regular file"));
	unlink(tpath);
	test_table_cut_while_open(path, tpath, good_tab, n);
	free(good_tab);
}

static void test_names(void)
{
	int64_t v, k;
	int y;
	CHECK(cltfs_parse_dec("0", 1, &v) && v == 0 && cltfs_parse_dec("123456789012345678", 18, &v));
	CHECK(!cltfs_parse_dec("", 0, &v) && !cltfs_parse_dec("01", 2, &v) && !cltfs_parse_dec("-1", 2, &v) &&
	      !cltfs_parse_dec("1234567890123456789", 19, &v) && !cltfs_parse_dec("1a", 2, &v));
	CHECK(cltfs_parse_batch_name("batch_12_y.pt", &k, &y) && k == 12 && y == 1);
	CHECK(cltfs_parse_batch_name("batch_0_x.pt", &k, &y) && k == 0 && y == 0);
	CHECK(!cltfs_parse_batch_name("batch_01_x.pt", &k, &y) && !cltfs_parse_batch_name("batch__x.pt", &k, &y) &&
	      !cltfs_parse_batch_name("batch_1_z.pt", &k, &y) && !cltfs_parse_batch_name("batch_1_x.pth", &k, &y) &&
	      !cltfs_parse_batch_name("xbatch_1_x.pt", &k, &y));
}

/* The write helpers every store file goes through: an errno out of a
 * write that fails, the temporary file's name and the cause out of an
 * atomic replace that cannot finish, and the old file left as it was. */
/* cltfs_parallel: every item once; the lowest failing item's error and
 * message, whichever failure came first; every item below it taken. */
typedef struct {
	atomic_int seen[200];
	size_t fail_a, fail_b;
} par_probe;

static cltfs_err par_item(void *arg, size_t i)
{
	par_probe *p = arg;
	atomic_fetch_add(&p->seen[i], 1);
	if (i == p->fail_b) /* the later failure comes first */
		return cltfs_fail(CLTFS_E_IO, "item %zu failed", i);
	if (i == p->fail_a) {
		usleep(20000);
		return cltfs_fail(CLTFS_E_FORMAT, "item %zu failed", i);
	}
	return CLTFS_OK;
}

static void test_parallel(void)
{
	for (int threads = 1; threads <= 8; threads *= 2) {
		par_probe p = {.fail_a = SIZE_MAX, .fail_b = SIZE_MAX};
		CHECK(cltfs_parallel(200, threads, par_item, &p) == CLTFS_OK);
		size_t once = 0;
		for (size_t i = 0; i < 200; i++)
			once += atomic_load(&p.seen[i]) == 1;
		CHECK(once == 200);
		par_probe q = {.fail_a = 37, .fail_b = 39};
		CHECK(cltfs_parallel(200, threads, par_item, &q) == CLTFS_E_FORMAT);
		CHECK(strstr(cltfs_errmsg(), "item 37 failed") != NULL);
		size_t taken = 0;
		for (size_t i = 0; i < 200; i++)
			taken += atomic_load(&q.seen[i]) != 0;
		CHECK(taken >= 38);
	}
	CHECK(cltfs_parallel(0, 8, par_item, NULL) == CLTFS_OK);
}

static void test_writes(void)
{
	int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
	CHECK(fd >= 0 && cltfs_pwrite_full(fd, "abc", 3, 0) == ENOSPC);
	close(fd);
	char path[128];
	snprintf(path, sizeof path, "%s/w", dir);
	fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
	CHECK(fd >= 0 && cltfs_pwrite_full(fd, "abc", 3, 0) == EBADF);
	CHECK(cltfs_pwrite_full(fd, "", 0, 0) == 0);
	close(fd);
	CHECK(cltfs_write_atomic(path, "hello", 5) == CLTFS_OK);
	char buf[8] = {0};
	fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0 && cltfs_pread_full(fd, buf, 5, 0) == 0 && !memcmp(buf, "hello", 5));
	CHECK(cltfs_pread_full(fd, buf, 6, 0) == -1);
	/* A source shorter than asked: refused, the file keeps its bytes. */
	CHECK(cltfs_write_atomic_from(path, fd, 9) == CLTFS_E_IO && strstr(cltfs_errmsg(), "ended early") &&
	      strstr(cltfs_errmsg(), "w.tmp."));
	CHECK(cltfs_pread_full(fd, buf, 5, 0) == 0 && !memcmp(buf, "hello", 5));
	close(fd);
	snprintf(path, sizeof path, "%s/no/such/dir", dir);
	CHECK(cltfs_write_atomic(path, "x", 1) == CLTFS_E_IO && strstr(cltfs_errmsg(), "No such file"));
}

int main(void)
{
	snprintf(dir, sizeof dir, "/tmp/cltfs-unit-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	RUN(test_good);
	RUN(test_refused);
	RUN(test_geometry);
	RUN(test_table_damage);
	RUN(test_names);
	RUN(test_writes);
	RUN(test_parallel);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return unit_done("codec_manifest");
}
