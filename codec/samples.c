/* samples.c: the sample table, samples.bin (manifest format version 2).
 *
 * cltfs.json stays small and fixed (the model, layers, dtype, options); what
 * grows with the dataset, every sample's rows and (for a captured store)
 * its id, image and text, and an imported tree's batch shapes, is a binary
 * table beside it, read with mmap: a mount at 10^6 samples reads 4 MB of
 * rows, not a 100 MB JSON document.  Little-endian, sections 8-byte aligned:
 *
 *   header   128 bytes: "CLTFSSM1", version 1, flags, counts, the CRC-32 of
 *            each section, and the header's own CRC-32 (the last 4 bytes)
 *   rows     u32 per sample (padded to 8 bytes)
 *   batches  u32 S, u32 T per batch (an imported tree's shapes; flag bit 0)
 *   offsets  u64 per sample + 1: where each sample's strings start in blob
 *            (flag bit 1)
 *   blob     per sample "id\0image\0text\0"
 *
 * The file's size follows from the header, so a truncated table is caught
 * before any section is read, and cltfs.json records the header's CRC, so a
 * table from another dataset is too.  The writer streams: rows and shapes
 * stay in memory (4 and 8 bytes each), strings go to temporary files, and
 * the table is assembled at the end and renamed into place.
 */
#include "codec.h"
#include "codec_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the sample table is read in place: cltfs needs a little-endian host"
#endif

#define MAGIC "CLTFSSM1"
#define HEADER 128
#define F_BATCHES 1u
#define F_STRINGS 2u
#define MAX_SAMPLES ((uint64_t)1 << 32)  /* sample numbers are u32 in the batches section */
#define MAX_TABLE ((uint64_t)1 << 40)    /* 1 TiB: far past 10^9 samples of long texts */

static uint64_t pad8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

/* Where each section lies, from the counts. */
typedef struct {
	uint64_t rows, batches, offsets, blob, end;
} layout;

static layout layout_of(uint64_t n, uint64_t nb, bool strings, uint64_t blob_len)
{
	layout l;
	l.rows = HEADER;
	l.batches = l.rows + pad8(4 * n);
	l.offsets = l.batches + 8 * nb;
	l.blob = l.offsets + (strings ? 8 * (n + 1) : 0);
	l.end = l.blob + blob_len;
	return l;
}

/* ---- reading ---- */

void cltfs_table_close(cltfs_table *t)
{
	if (!t)
		return;
	if (t->map)
		munmap((void *)t->map, t->map_len);
	free(t);
}

static cltfs_err bad(const char *path, const char *why)
{
	return cltfs_fail(CLTFS_E_CORRUPT, "%s: %s: the sample table is damaged", path, why);
}

/* Point the table's sections into the map and check every CRC. */
static cltfs_err attach(cltfs_table *t, const uint8_t *m, size_t len, const char *path)
{
	if (len < HEADER || memcmp(m, MAGIC, 8))
		return len < HEADER ? bad(path, "shorter than its header") : bad(path, "not a cltfs sample table");
	if (get32(m + 124) != cltfs_crc32(0, m, 124))
		return bad(path, "its header fails its checksum");
	if (get32(m + 8) != 1)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: sample table version %u (this cltfs reads 1)", path,
				  get32(m + 8));
	uint32_t flags = get32(m + 12);
	uint64_t n = get64(m + 16), nb = get64(m + 24), blob_len = get64(m + 32);
	if (flags & ~(F_BATCHES | F_STRINGS) || !n || n > MAX_SAMPLES || nb > n || (!(flags & F_BATCHES)) != !nb ||
	    blob_len > len)
		return bad(path, "its header holds impossible counts");
	layout l = layout_of(n, nb, flags & F_STRINGS, blob_len);
	if (l.end != len)
		return bad(path, len < l.end ? "truncated" : "longer than its header says");
	const uint32_t want[4] = {get32(m + 40), get32(m + 44), get32(m + 48), get32(m + 52)};
	const uint64_t from[4] = {l.rows, l.batches, l.offsets, l.blob}, to[4] = {l.batches, l.offsets, l.blob, l.end};
	static const char *const what[4] = {"rows", "batch shapes", "string offsets", "strings"};
	for (int i = 0; i < 4; i++)
		if (cltfs_crc32(0, m + from[i], to[i] - from[i]) != want[i]) {
			char why[64];
			snprintf(why, sizeof why, "its %s fail their checksum", what[i]);
			return bad(path, why);
		}
	t->n = n;
	t->nb = nb;
	t->rows = (const uint32_t *)(m + l.rows);
	t->batches = nb ? (const uint32_t *)(m + l.batches) : NULL;
	t->offsets = flags & F_STRINGS ? (const uint64_t *)(m + l.offsets) : NULL;
	t->blob = (const char *)(m + l.blob);
	t->blob_len = blob_len;
	t->crc = get32(m + 124);
	if (t->offsets && (t->offsets[0] || t->offsets[n] != blob_len))
		return bad(path, "its string offsets do not cover the strings");
	return CLTFS_OK;
}

/* Map the regular file fd (closed here) and check it as a table. */
static cltfs_err open_fd(int fd, const char *path, cltfs_table **out)
{
	struct stat st;
	cltfs_err e = fstat(fd, &st) ? cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno))
		      : !S_ISREG(st.st_mode) ? cltfs_fail(CLTFS_E_FORMAT, "%s: not a regular file", path)
		      : st.st_size < HEADER ? bad(path, "shorter than its header")
		      : (uint64_t)st.st_size > MAX_TABLE ? cltfs_fail(CLTFS_E_FORMAT, "%s: larger than %llu GiB", path,
								       (unsigned long long)(MAX_TABLE >> 30))
					      : CLTFS_OK;
	cltfs_table *t = e ? NULL : calloc(1, sizeof *t);
	if (!e && !t)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	void *m = e ? MAP_FAILED : mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (!e && m == MAP_FAILED)
		e = cltfs_fail(CLTFS_E_IO, "%s: mmap: %s", path, strerror(errno));
	close(fd);
	if (!e) {
		t->map = m;
		t->map_len = (size_t)st.st_size;
		e = attach(t, m, (size_t)st.st_size, path);
		/* The check read every page: let them go from this process's
		 * memory (they stay in the page cache), so that a daemon keeps
		 * only what it reads again, the rows mostly. */
		madvise(m, (size_t)st.st_size, MADV_DONTNEED);
	}
	if (e) {
		cltfs_table_close(t);
		return e;
	}
	*out = t;
	return CLTFS_OK;
}

cltfs_err cltfs_table_open(const char *path, cltfs_table **out)
{
	/* O_NONBLOCK: a FIFO in its place must not block the open */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return cltfs_fail(errno == ENOENT ? CLTFS_E_NOTFOUND : CLTFS_E_IO, "%s: %s", path, strerror(errno));
	return open_fd(fd, path, out);
}

bool cltfs_table_strings(const cltfs_table *t, uint64_t i, const char **id, const char **image, const char **text)
{
	if (!t->offsets || i >= t->n)
		return false;
	uint64_t a = t->offsets[i], b = t->offsets[i + 1];
	if (a > b || b > t->blob_len)
		return false;
	const char *s = t->blob + a, *end = t->blob + b;
	const char *p[3];
	for (int k = 0; k < 3; k++) { /* three NUL-terminated strings, no more */
		const char *z = memchr(s, 0, (size_t)(end - s));
		if (!z)
			return false;
		p[k] = s;
		s = z + 1;
	}
	if (s != end)
		return false;
	*id = p[0];
	*image = p[1];
	*text = p[2];
	return true;
}

/* ---- writing ---- */

struct cltfs_table_writer {
	char *tmpdir;      /* where temporary files go; NULL: $TMPDIR */
	bool strings;
	uint32_t *rows;
	size_t n, rcap;
	uint32_t *batches; /* S, T pairs */
	size_t nb, bcap;
	FILE *offsets, *blob; /* strings: temporary files (unlinked at once) */
	uint64_t blob_len;
	uint32_t crc_offsets, crc_blob;
};

/* An unnamed temporary file in dir (O_TMPFILE), else in $TMPDIR. */
static FILE *temp_in(const char *dir)
{
	int fd = dir ? open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600) : -1;
	FILE *f = fd >= 0 ? fdopen(fd, "w+b") : NULL;
	if (!f && fd >= 0)
		close(fd);
	return f ? f : tmpfile();
}

cltfs_err cltfs_table_writer_new(const char *tmpdir, bool strings, cltfs_table_writer **out)
{
	cltfs_table_writer *w = calloc(1, sizeof *w);
	if (!w || (tmpdir && !(w->tmpdir = strdup(tmpdir)))) {
		free(w);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	w->strings = strings;
	if (strings && (!(w->offsets = temp_in(tmpdir)) || !(w->blob = temp_in(tmpdir)))) {
		cltfs_err e = cltfs_fail(CLTFS_E_IO, "a temporary file in %s: %s", tmpdir ? tmpdir : "$TMPDIR",
					 strerror(errno));
		cltfs_table_writer_abort(w);
		return e;
	}
	*out = w;
	return CLTFS_OK;
}

void cltfs_table_writer_abort(cltfs_table_writer *w)
{
	if (!w)
		return;
	if (w->offsets)
		fclose(w->offsets);
	if (w->blob)
		fclose(w->blob);
	free(w->rows);
	free(w->batches);
	free(w->tmpdir);
	free(w);
}

static bool put_u64(FILE *f, uint64_t v, uint32_t *crc)
{
	uint8_t b[8];
	put64(b, v);
	*crc = cltfs_crc32(*crc, b, 8);
	return fwrite(b, 1, 8, f) == 8;
}

static cltfs_err temp_error(const cltfs_table_writer *w)
{
	return cltfs_fail(CLTFS_E_IO, "a temporary file in %s: %s", w->tmpdir ? w->tmpdir : "$TMPDIR",
			  strerror(errno ? errno : EIO));
}

cltfs_err cltfs_table_add(cltfs_table_writer *w, uint32_t rows, const char *id, const char *image, const char *text)
{
	if (w->n >= MAX_SAMPLES)
		return cltfs_fail(CLTFS_E_INVAL, "more than 2^32 samples");
	if (!cltfs_grow(&w->rows, &w->rcap, w->n + 1, sizeof *w->rows))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	w->rows[w->n++] = rows;
	if (!w->strings)
		return CLTFS_OK;
	const char *s[3] = {id ? id : "", image ? image : "", text ? text : ""};
	bool ok = put_u64(w->offsets, w->blob_len, &w->crc_offsets);
	for (int k = 0; ok && k < 3; k++) {
		size_t len = strlen(s[k]) + 1;
		ok = fwrite(s[k], 1, len, w->blob) == len;
		w->crc_blob = cltfs_crc32(w->crc_blob, s[k], len);
		w->blob_len += len;
	}
	return ok ? CLTFS_OK : temp_error(w);
}

cltfs_err cltfs_table_add_batch(cltfs_table_writer *w, uint32_t samples, uint32_t tokens)
{
	if (!cltfs_grow(&w->batches, &w->bcap, 2 * w->nb + 2, sizeof *w->batches))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	w->batches[2 * w->nb] = samples;
	w->batches[2 * w->nb + 1] = tokens;
	w->nb++;
	return CLTFS_OK;
}

/* Append the temporary file f (its whole content) to out. */
static bool copy_file(FILE *f, FILE *out)
{
	char buf[1 << 16];
	size_t k;
	if (fflush(f) || fseek(f, 0, SEEK_SET))
		return false;
	while ((k = fread(buf, 1, sizeof buf, f)) > 0)
		if (fwrite(buf, 1, k, out) != k)
			return false;
	return !ferror(f);
}

/* n bytes at p to out (p may be NULL when n is 0). */
static bool put_bytes(FILE *out, const void *p, size_t n)
{
	return !n || fwrite(p, 1, n, out) == n;
}

/* The table's bytes, in order, to out. */
static bool write_table(cltfs_table_writer *w, FILE *out)
{
	static const uint8_t zeros[8];
	uint8_t h[HEADER] = {0};
	size_t rows_len = 4 * w->n, pad = (size_t)pad8(rows_len) - rows_len;
	memcpy(h, MAGIC, 8);
	put32(h + 8, 1);
	put32(h + 12, (w->nb ? F_BATCHES : 0) | (w->strings ? F_STRINGS : 0));
	put64(h + 16, w->n);
	put64(h + 24, w->nb);
	put64(h + 32, w->blob_len);
	put32(h + 40, cltfs_crc32(cltfs_crc32(0, w->rows, rows_len), zeros, pad));
	put32(h + 44, cltfs_crc32(0, w->batches, 8 * w->nb));
	put32(h + 48, w->crc_offsets);
	put32(h + 52, w->crc_blob);
	put32(h + 124, cltfs_crc32(0, h, 124));
	return put_bytes(out, h, HEADER) && put_bytes(out, w->rows, rows_len) && put_bytes(out, zeros, pad) &&
	       put_bytes(out, w->batches, 8 * w->nb) &&
	       (!w->strings || (copy_file(w->offsets, out) && copy_file(w->blob, out)));
}

/* Write f's table, fsync it, and close f: false with errno on failure. */
static bool write_close(cltfs_table_writer *w, FILE *f)
{
	bool ok = write_table(w, f) && fflush(f) == 0 && fsync(fileno(f)) == 0;
	int err = errno ? errno : EIO;
	ok = fclose(f) == 0 && ok;
	errno = ok ? 0 : err;
	return ok;
}

/* The table in an anonymous file (memfd), mapped as a file would be. */
static cltfs_err finish_in_memory(cltfs_table_writer *w, cltfs_table **out)
{
	int fd = memfd_create("cltfs-samples", MFD_CLOEXEC), fd2 = fd >= 0 ? dup(fd) : -1;
	FILE *f = fd2 >= 0 ? fdopen(fd2, "w+b") : NULL;
	if (!f) {
		cltfs_err e = cltfs_fail(CLTFS_E_NOMEM, "a sample table in memory: %s", strerror(errno));
		if (fd2 >= 0)
			close(fd2);
		if (fd >= 0)
			close(fd);
		return e;
	}
	if (!write_close(w, f)) {
		close(fd);
		return cltfs_fail(CLTFS_E_NOMEM, "a sample table in memory: %s", strerror(errno));
	}
	return open_fd(fd, "(sample table in memory)", out);
}

cltfs_err cltfs_table_writer_finish(cltfs_table_writer *w, const char *path, cltfs_table **out)
{
	cltfs_err e = CLTFS_OK;
	if (!w->n)
		e = cltfs_fail(CLTFS_E_INVAL, "%s: no samples", path ? path : "sample table");
	if (!e && w->strings && !put_u64(w->offsets, w->blob_len, &w->crc_offsets))
		e = temp_error(w);
	if (!e && !path)
		e = finish_in_memory(w, out);
	else if (!e) {
		char tmp[4200];
		snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
		FILE *f = fopen(tmp, "wb");
		if (!f)
			e = cltfs_fail(CLTFS_E_IO, "%s: %s", tmp, strerror(errno));
		else if (!write_close(w, f) || rename(tmp, path))
			e = cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
		if (e && f)
			unlink(tmp);
		if (!e)
			e = cltfs_table_open(path, out);
	}
	cltfs_table_writer_abort(w);
	return e;
}

cltfs_err cltfs_table_save(const cltfs_table *t, const char *path)
{
	return cltfs_write_atomic(path, t->map, t->map_len);
}

cltfs_err cltfs_table_from_bytes(const void *buf, size_t len, const char *name, cltfs_table **out)
{
	int fd = memfd_create("cltfs-samples", MFD_CLOEXEC);
	size_t done = 0;
	while (fd >= 0 && done < len) {
		ssize_t w = write(fd, (const char *)buf + done, len - done);
		if (w <= 0 && errno != EINTR)
			break;
		done += w > 0 ? (size_t)w : 0;
	}
	if (fd < 0 || done < len) {
		cltfs_err e = cltfs_fail(CLTFS_E_NOMEM, "%s: a table in memory: %s", name, strerror(errno ? errno : EIO));
		if (fd >= 0)
			close(fd);
		return e;
	}
	return open_fd(fd, name, out);
}
