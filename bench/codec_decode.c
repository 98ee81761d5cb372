/* codec_decode.c: how fast cltfs's own decoder turns a store's frames back
 * into chunks, on one core and on several.
 *
 *     codec_decode STORE [--threads N] [--rounds R]
 *
 * Every frame of every pack (packs/<w>.idx and .pack, read with codec/'s
 * record and header functions, so this links libcltfs_codec.a alone) is
 * read into memory first; then each round decodes all of them as a read
 * does (cltfs_frame_decode, then the CRC-32 against the index record), on 1
 * thread and on N (default: every online CPU), each thread with its own
 * context and output buffer, frames dealt round-robin.  Best of R rounds
 * (default 3).  One line of JSON on stdout: frames and bytes per codec,
 * and the decode rate in GB/s of raw bytes out.  bench/codec_bench.py runs
 * it once per codec's store.
 */
#include "codec.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
	cltfs_rec rec;
	uint8_t *frame;
} item;

typedef struct {
	item *v;
	size_t n, cap;
	uint64_t raw, frames, count[CLTFS_NCODECS];
} corpus;

typedef struct {
	const corpus *c;
	size_t first, step;
	cltfs_err err;
	char msg[256];
} worker;

static int die(const char *what)
{
	fprintf(stderr, "codec_decode: %s: %s\n", what, cltfs_errmsg());
	return 1;
}

static cltfs_err read_at(int fd, void *buf, size_t n, uint64_t off, const char *path)
{
	uint8_t *b = buf;
	while (n) {
		ssize_t r = pread(fd, b, n, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return cltfs_fail(CLTFS_E_IO, "%s: %s", path, r < 0 ? strerror(errno) : "ends before a frame");
		b += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return CLTFS_OK;
}

/* Every valid record of one writer's index, with its frame. */
static cltfs_err load_pair(const char *dir, const char *name, corpus *c)
{
	char ipath[4096], ppath[4096];
	snprintf(ipath, sizeof ipath, "%s/packs/%.*s.idx", dir, (int)(strlen(name) - 4), name);
	snprintf(ppath, sizeof ppath, "%s/packs/%.*s.pack", dir, (int)(strlen(name) - 4), name);
	char *idx;
	size_t len;
	cltfs_err e = cltfs_read_file(ipath, &idx, &len);
	if (e)
		return e;
	int fd = open(ppath, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		e = cltfs_fail(CLTFS_E_IO, "%s: %s", ppath, strerror(errno));
	if (!e && (len < CLTFS_FILE_HEADER || cltfs_file_header_check(CLTFS_IDX_MAGIC, (const uint8_t *)idx)))
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: not an index file", ipath);
	for (size_t off = CLTFS_FILE_HEADER; !e && off + CLTFS_REC_SIZE <= len; off += CLTFS_REC_SIZE) {
		item it;
		if (cltfs_rec_decode((const uint8_t *)idx + off, &it.rec))
			continue; /* a torn tail, as readers ignore it */
		if (!(it.frame = malloc(it.rec.csize ? it.rec.csize : 1)) || !cltfs_grow(&c->v, &c->cap, c->n + 1, sizeof *c->v)) {
			free(it.frame);
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			break;
		}
		if ((e = read_at(fd, it.frame, it.rec.csize, it.rec.offset, ppath))) {
			free(it.frame);
			break;
		}
		c->v[c->n++] = it;
		c->raw += it.rec.rsize;
		c->frames += it.rec.csize;
		c->count[it.rec.codec]++;
	}
	if (fd >= 0)
		close(fd);
	free(idx);
	return e;
}

static cltfs_err load(const char *dir, corpus *c)
{
	char packs[4096];
	snprintf(packs, sizeof packs, "%s/packs", dir);
	DIR *d = opendir(packs);
	if (!d)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", packs, strerror(errno));
	struct dirent *de;
	cltfs_err e = CLTFS_OK;
	while (!e && (de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (n > 4 && !strcmp(de->d_name + n - 4, ".idx"))
			e = load_pair(dir, de->d_name, c);
	}
	closedir(d);
	if (!e && !c->n)
		e = cltfs_fail(CLTFS_E_NOTFOUND, "%s: no frames", packs);
	return e;
}

/* Decode this worker's frames as a read does: frame, then record CRC. */
static void *run(void *arg)
{
	worker *w = arg;
	cltfs_zctx *z = cltfs_zctx_new();
	size_t cap = 0;
	uint8_t *out = NULL;
	w->err = z ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (size_t i = w->first; !w->err && i < w->c->n; i += w->step) {
		const cltfs_rec *r = &w->c->v[i].rec;
		uint32_t crc;
		if (!cltfs_reserve(&out, &cap, r->rsize ? r->rsize : 1))
			w->err = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		else if (!(w->err = cltfs_frame_decode(z, (cltfs_codec)r->codec, cltfs_dtype_size((cltfs_dtype)r->dtype),
						      w->c->v[i].frame, r->csize, out, r->rsize, &crc)) &&
			 crc != r->crc)
			w->err = cltfs_fail(CLTFS_E_CORRUPT, "CRC-32 differs from the index record");
	}
	if (w->err)
		snprintf(w->msg, sizeof w->msg, "%s", cltfs_errmsg());
	free(out);
	cltfs_zctx_free(z);
	return NULL;
}

/* Seconds to decode every frame on n threads; < 0 on an error. */
static double timed(const corpus *c, int n)
{
	worker *w = calloc((size_t)n, sizeof *w);
	pthread_t *t = calloc((size_t)n, sizeof *t);
	if (!w || !t) {
		free(w);
		free(t);
		cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		return -1;
	}
	double t0 = cltfs_now(), dt;
	int started = 0;
	for (; started < n; started++) {
		w[started] = (worker){c, (size_t)started, (size_t)n, CLTFS_OK, ""};
		if (pthread_create(&t[started], NULL, run, &w[started]))
			break;
	}
	for (int i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	dt = cltfs_now() - t0;
	for (int i = 0; i < started; i++)
		if (w[i].err) {
			cltfs_fail(w[i].err, "%s", w[i].msg);
			dt = -1;
		}
	if (started < n) {
		cltfs_fail(CLTFS_E_NOMEM, "cannot start %d threads", n);
		dt = -1;
	}
	free(w);
	free(t);
	return dt;
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	long threads = sysconf(_SC_NPROCESSORS_ONLN), rounds = 3;
	bool bad = false;
	for (int i = 1; i < argc && !bad; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
			rounds = strtol(argv[++i], NULL, 10);
		else if (argv[i][0] != '-' && !dir)
			dir = argv[i];
		else
			bad = true;
	}
	if (bad || !dir || threads < 1 || threads > 1024 || rounds < 1) {
		fprintf(stderr, "usage: codec_decode STORE [--threads N] [--rounds R]\n");
		return 2;
	}
	corpus c = {0};
	if (load(dir, &c))
		return die(dir);
	double best1 = 0, bestn = 0;
	for (long r = 0; r < rounds; r++) {
		double a = timed(&c, 1), b = timed(&c, (int)threads);
		if (a < 0 || b < 0)
			return die(dir);
		best1 = !r || a < best1 ? a : best1;
		bestn = !r || b < bestn ? b : bestn;
	}
	printf("{\"frames\": %zu, \"raw_bytes\": %llu, \"frame_bytes\": %llu, \"codecs\": {", c.n,
	       (unsigned long long)c.raw, (unsigned long long)c.frames);
	for (int k = 0, first = 1; k < CLTFS_NCODECS; k++)
		if (c.count[k]) {
			printf("%s\"%s\": %llu", first ? "" : ", ", cltfs_codec_name((cltfs_codec)k),
			       (unsigned long long)c.count[k]);
			first = 0;
		}
	printf("}, \"threads\": %ld, \"rounds\": %ld, \"decode_gbs_1\": %.4f, \"decode_gbs_all\": %.4f, "
	       "\"seconds_1\": %.6f, \"seconds_all\": %.6f}\n",
	       threads, rounds, (double)c.raw / best1 / 1e9, (double)c.raw / bestn / 1e9, best1, bestn);
	for (size_t i = 0; i < c.n; i++)
		free(c.v[i].frame);
	free(c.v);
	return 0;
}
