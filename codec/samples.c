/* samples.c: the sample table, samples.bin (manifest format version 2).
 *
 * cltfs.json stays small and fixed (the model, layers, dtype, options); what
 * grows with the dataset, every sample's rows and (for a captured store)
 * its id, image and text, and an imported tree's batch shapes, is a binary
 * table beside it: a mount at 10^6 samples reads 4 MB of rows, not a 100 MB
 * JSON document.  It is read with pread, never mapped: the store may sit on
 * NFS or Lustre, where a page the server fails to deliver is a SIGBUS
 * through a mapping (the daemon gone, every reader's mount with it) and an
 * error through a read.  Rows and shapes live in memory (4 and 8 bytes a
 * sample); the strings, which only capture asks for, stay in the file.
 * Little-endian, sections 8-byte aligned:
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
#include <sys/mman.h> /* memfd_create */
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
	if (t->fd >= 0)
		close(t->fd);
	free(t->rows);
	free(t->batches);
	free(t->path);
	free(t);
}

static cltfs_err bad(const char *path, const char *why)
{
	return cltfs_fail(CLTFS_E_CORRUPT, "%s: %s: the sample table is damaged", path, why);
}

static cltfs_err read_error(const char *path, int r, uint64_t off)
{
	return cltfs_fail(r < 0 ? CLTFS_E_CORRUPT : CLTFS_E_IO, "%s: reading the sample table at byte %llu: %s", path,
			  (unsigned long long)off, r < 0 ? "the file ends early (cut short while read?)" : strerror(r));
}

/* len bytes of the file at off, into `into` (NULL: only checksummed), and
 * their CRC-32, which must be want; what names the section in messages. */
static cltfs_err read_section(const cltfs_table *t, const char *path, uint64_t off, uint64_t len, void *into,
			      uint32_t want, const char *what)
{
	enum { STEP = 1 << 20 };
	uint8_t *stage = into || !len ? NULL : malloc(len < STEP ? (size_t)len : STEP);
	if (!into && len && !stage)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	uint32_t crc = 0;
	cltfs_err e = CLTFS_OK;
	for (uint64_t done = 0; !e && done < len;) {
		size_t k = len - done < STEP ? (size_t)(len - done) : STEP;
		uint8_t *p = into ? (uint8_t *)into + done : stage;
		int r = cltfs_pread_full(t->fd, p, k, off + done);
		if (r)
			e = read_error(path, r, off + done);
		crc = cltfs_crc32(crc, p, k);
		done += k;
	}
	free(stage);
	if (!e && crc != want) {
		char why[64];
		snprintf(why, sizeof why, "its %s fail their checksum", what);
		e = bad(path, why);
	}
	return e;
}

/* Check t's header (the file's first bytes) and read its sections. */
static cltfs_err load(cltfs_table *t, const char *path)
{
	uint8_t h[HEADER];
	int r = t->len < HEADER ? 0 : cltfs_pread_full(t->fd, h, HEADER, 0);
	if (t->len < HEADER || r < 0)
		return bad(path, "shorter than its header");
	if (r)
		return read_error(path, r, 0);
	if (memcmp(h, MAGIC, 8))
		return bad(path, "not a cltfs sample table");
	if (get32(h + 124) != cltfs_crc32(0, h, 124))
		return bad(path, "its header fails its checksum");
	if (get32(h + 8) != 1)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: sample table version %u (this cltfs reads 1)", path,
				  get32(h + 8));
	uint32_t flags = get32(h + 12);
	uint64_t n = get64(h + 16), nb = get64(h + 24), blob_len = get64(h + 32);
	if (flags & ~(F_BATCHES | F_STRINGS) || !n || n > MAX_SAMPLES || nb > n || (!(flags & F_BATCHES)) != !nb ||
	    blob_len > t->len)
		return bad(path, "its header holds impossible counts");
	layout l = layout_of(n, nb, flags & F_STRINGS, blob_len);
	if (l.end != t->len)
		return bad(path, t->len < l.end ? "truncated" : "longer than its header says");
	/* the rows section with its padding, so that its CRC covers both */
	if (!(t->rows = malloc(l.batches - l.rows)) || (nb && !(t->batches = malloc(8 * nb))))
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory for %llu samples", path, (unsigned long long)n);
	cltfs_err e = read_section(t, path, l.rows, l.batches - l.rows, t->rows, get32(h + 40), "rows");
	if (!e)
		e = read_section(t, path, l.batches, 8 * nb, t->batches, get32(h + 44), "batch shapes");
	if (!e)
		e = read_section(t, path, l.offsets, l.blob - l.offsets, NULL, get32(h + 48), "string offsets");
	if (!e)
		e = read_section(t, path, l.blob, blob_len, NULL, get32(h + 52), "strings");
	if (e)
		return e;
	t->n = n;
	t->nb = nb;
	t->strings = flags & F_STRINGS;
	t->offsets_at = l.offsets;
	t->blob_at = l.blob;
	t->blob_len = blob_len;
	t->crc = get32(h + 124);
	uint8_t ends[8];
	if (t->strings && ((r = cltfs_pread_full(t->fd, ends, 8, l.offsets)) || get64(ends) ||
			   (r = cltfs_pread_full(t->fd, ends, 8, l.offsets + 8 * n)) || get64(ends) != blob_len))
		return r ? read_error(path, r, l.offsets) : bad(path, "its string offsets do not cover the strings");
	return CLTFS_OK;
}

/* Read and check the regular file fd (kept by the table, closed on error). */
static cltfs_err open_fd(int fd, const char *path, cltfs_table **out)
{
	struct stat st;
	cltfs_err e = fstat(fd, &st) ? cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno))
		      : !S_ISREG(st.st_mode) ? cltfs_fail(CLTFS_E_FORMAT, "%s: not a regular file", path)
		      : (uint64_t)st.st_size > MAX_TABLE ? cltfs_fail(CLTFS_E_FORMAT, "%s: larger than %llu GiB", path,
								       (unsigned long long)(MAX_TABLE >> 30))
					      : CLTFS_OK;
	cltfs_table *t = e ? NULL : calloc(1, sizeof *t);
	if (!e && !t)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (e) {
		close(fd);
		return e;
	}
	t->fd = fd;
	t->len = (uint64_t)st.st_size;
	if (!(t->path = strdup(path)))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (e || (e = load(t, path))) {
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

/* The longest id + image + text a sample may have: a bound on what one
 * damaged offset could make us allocate. */
#define MAX_SAMPLE_STRINGS ((uint64_t)64 << 20)

/* Why sample i's strings cannot be had: a read's result r (an errno, or -1
 * for a file that ends early), or 0 for strings that do not parse. */
static cltfs_err strings_fail(const cltfs_table *t, uint64_t i, int r)
{
	return cltfs_fail(r > 0 ? CLTFS_E_IO : CLTFS_E_CORRUPT, "%s: sample %llu: %s", t->path, (unsigned long long)i,
			  r > 0 ? strerror(r) : r < 0 ? "the file ends early" : "its strings are damaged");
}

cltfs_err cltfs_table_strings(const cltfs_table *t, uint64_t i, char **buf, const char **id, const char **image,
			      const char **text)
{
	*buf = NULL;
	if (!t->strings || i >= t->n)
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: no text for sample %llu", t->path, (unsigned long long)i);
	uint8_t o[16];
	int r = cltfs_pread_full(t->fd, o, sizeof o, t->offsets_at + 8 * i);
	uint64_t a = get64(o), b = get64(o + 8);
	if (r || a > b || b > t->blob_len || b - a > MAX_SAMPLE_STRINGS)
		return strings_fail(t, i, r);
	char *s = malloc(b - a + 1);
	if (!s)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if ((r = cltfs_pread_full(t->fd, s, b - a, t->blob_at + a))) {
		free(s);
		return strings_fail(t, i, r);
	}
	const char *p = s, *end = s + (b - a), *q[3];
	for (int k = 0; k < 3; k++) { /* three NUL-terminated strings, no more */
		const char *z = memchr(p, 0, (size_t)(end - p));
		if (!z)
			break;
		q[k] = p;
		p = z + 1;
		if (k == 2 && p == end) {
			*buf = s;
			*id = q[0];
			*image = q[1];
			*text = q[2];
			return CLTFS_OK;
		}
	}
	free(s);
	return strings_fail(t, i, 0);
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

/* The table in an anonymous file (memfd), read as a file would be. */
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
	return cltfs_write_atomic_from(path, t->fd, t->len);
}

cltfs_err cltfs_table_from_bytes(const void *buf, size_t len, const char *name, cltfs_table **out)
{
	int fd = memfd_create("cltfs-samples", MFD_CLOEXEC);
	int r = fd < 0 ? errno : cltfs_pwrite_full(fd, buf, len, 0);
	if (r) {
		if (fd >= 0)
			close(fd);
		return cltfs_fail(CLTFS_E_NOMEM, "%s: a table in memory: %s", name, strerror(r));
	}
	return open_fd(fd, name, out);
}
