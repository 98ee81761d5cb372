/* ptzip.c: the zip container of a .pt file, written lazily and read.
 *
 * Writer.  A pt_file is the layout of a virtual torch.save archive: every
 * offset and size is fixed when it is built, from the pickle and the storage
 * sizes alone, so a file's size is known without touching any data.  Bytes
 * are produced on demand: pt_file_map splits a range into literal pieces
 * (headers, pickle, small records, central directory; rendered by
 * pt_file_literal) and storage pieces that the caller fills.  Headers carry
 * the storages' CRC-32s, which the caller sets (typically combined from the
 * chunk CRCs of the index) before reading them.
 *
 * Reader.  Maps the file, walks the central directory with every offset
 * bounds-checked, and unpickles data.pkl with the restricted unpickler.
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

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_END 0x06054b50u
#define SIG_END64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define LOCAL_SIZE 30
#define CENTRAL_SIZE 46
#define END_SIZE 22
#define END64_SIZE 56
#define LOC64_SIZE 20
#define ALIGN 64
#define U32MAX 0xffffffffu
#define DOS_DATE 0x0021 /* 1980-01-01: fixed, so bytes never depend on time */

typedef struct {
	char *name;
	size_t nlen;
	int storage; /* -1 for a literal record */
	const uint8_t *lit;
	uint64_t size, lh_off, data_off;
	uint32_t crc;
	uint16_t lextra;  /* local extra length: zip64 + alignment padding */
	bool z64size;     /* sizes >= 4 GiB: in zip64 extras */
	bool z64off;      /* local header offset >= 4 GiB */
} entry;

struct pt_file {
	size_t n, nst;
	entry *e;
	size_t *st_entry; /* storage index -> entry index */
	bool *have_crc;
	uint8_t *lits; /* literal contents, concatenated */
	uint64_t cd_off, cd_size, tail_off, size;
	bool z64end;
};


static size_t cextra_len(const entry *e)
{
	size_t n = (e->z64size ? 16 : 0) + (e->z64off ? 8 : 0);
	return n ? 4 + n : 0;
}

void pt_file_free(pt_file *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->n; i++)
		free(f->e[i].name);
	free(f->e);
	free(f->st_entry);
	free(f->have_crc);
	free(f->lits);
	free(f);
}

static cltfs_err add_entry(pt_file *f, const char *archive, const char *name, int storage,
			   const uint8_t *lit, uint64_t size)
{
	entry *e = &f->e[f->n++];
	size_t n = strlen(archive) + 1 + strlen(name);
	e->name = malloc(n + 1);
	if (!e->name)
		return cltfs_fail(CLTFS_E_NOMEM, "pt: out of memory");
	snprintf(e->name, n + 1, "%s/%s", archive, name);
	e->nlen = n;
	e->storage = storage;
	e->lit = lit;
	e->size = size;
	if (lit)
		e->crc = cltfs_crc32(0, lit, (size_t)size);
	return CLTFS_OK;
}

/* Offsets of every record, then of the central directory and the end. */
static void layout(pt_file *f)
{
	uint64_t off = 0;
	for (size_t i = 0; i < f->n; i++) {
		entry *e = &f->e[i];
		e->lh_off = off;
		e->z64size = e->size >= U32MAX;
		e->z64off = off >= U32MAX;
		uint64_t base = off + LOCAL_SIZE + e->nlen + (e->z64size ? 20 : 0);
		uint64_t pad = (ALIGN - base % ALIGN) % ALIGN;
		if (pad && pad < 4) /* an extra field needs 4 bytes of header */
			pad += ALIGN;
		e->lextra = (uint16_t)((e->z64size ? 20 : 0) + pad);
		e->data_off = base + pad;
		off = e->data_off + e->size;
	}
	f->cd_off = off;
	f->cd_size = 0;
	for (size_t i = 0; i < f->n; i++)
		f->cd_size += CENTRAL_SIZE + f->e[i].nlen + cextra_len(&f->e[i]);
	f->tail_off = f->cd_off + f->cd_size;
	f->z64end = f->n >= 0xffff || f->cd_off >= U32MAX || f->cd_size >= U32MAX ||
		    f->tail_off >= U32MAX;
	f->size = f->tail_off + (f->z64end ? END64_SIZE + LOC64_SIZE : 0) + END_SIZE;
}

cltfs_err pt_file_new(const char *archive, const uint8_t *pickle, size_t plen,
		      size_t nst, const char *const *keys, const uint64_t *sizes, pt_file **out)
{
	/* Small records as torch 2.x writes them; torch 1.13 ignores them.
	 * .format_version is left out on purpose: "1" there tells torch >= 2.7
	 * (with offset calculation on) that the file has miniz's exact layout,
	 * data descriptors included, which a composed file does not. */
	static const char *const align = "64", *const order = "little", *const version = "3\n";
	if (strlen(archive) > 200 || !*archive)
		return cltfs_fail(CLTFS_E_INVAL, "pt: archive name must be 1 to 200 bytes");
	pt_file *f = calloc(1, sizeof *f);
	if (!f)
		return cltfs_fail(CLTFS_E_NOMEM, "pt: out of memory");
	f->nst = nst;
	f->e = calloc(nst + 4, sizeof *f->e);
	f->st_entry = calloc(nst + 1, sizeof *f->st_entry);
	f->have_crc = calloc(nst + 1, sizeof *f->have_crc);
	f->lits = malloc(plen + 16);
	if (!f->e || !f->st_entry || !f->have_crc || !f->lits) {
		pt_file_free(f);
		return cltfs_fail(CLTFS_E_NOMEM, "pt: out of memory");
	}
	memcpy(f->lits, pickle, plen);
	cltfs_err e = add_entry(f, archive, "data.pkl", -1, f->lits, plen);
	if (!e)
		e = add_entry(f, archive, ".storage_alignment", -1, (const uint8_t *)align, 2);
	if (!e)
		e = add_entry(f, archive, "byteorder", -1, (const uint8_t *)order, 6);
	for (size_t i = 0; !e && i < nst; i++) {
		char name[64];
		snprintf(name, sizeof name, "data/%s", keys[i]);
		f->st_entry[i] = f->n;
		e = add_entry(f, archive, name, (int)i, NULL, sizes[i]);
	}
	if (!e)
		e = add_entry(f, archive, "version", -1, (const uint8_t *)version, 2);
	if (e) {
		pt_file_free(f);
		return e;
	}
	layout(f);
	*out = f;
	return CLTFS_OK;
}

uint64_t pt_file_size(const pt_file *f) { return f->size; }

const uint8_t *pt_file_pickle(const pt_file *f, size_t *len)
{
	*len = (size_t)f->e[0].size; /* data.pkl is the first record */
	return f->e[0].lit;
}

void pt_file_set_crc(pt_file *f, size_t s, uint32_t crc)
{
	f->e[f->st_entry[s]].crc = crc;
	f->have_crc[s] = true;
}

bool pt_file_has_crc(const pt_file *f, size_t s) { return f->have_crc[s]; }

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

size_t pt_file_crcs_needed(const pt_file *f, uint64_t off, uint64_t len, bool *need)
{
	size_t missing = 0;
	memset(need, 0, f->nst * sizeof *need);
	bool tail = overlaps(off, len, f->cd_off, f->size - f->cd_off);
	for (size_t i = 0; i < f->n; i++) {
		const entry *e = &f->e[i];
		if (e->storage < 0)
			continue;
		if (tail || overlaps(off, len, e->lh_off, e->data_off - e->lh_off)) {
			need[e->storage] = true;
			missing += !f->have_crc[e->storage];
		}
	}
	return missing;
}

size_t pt_file_map(const pt_file *f, uint64_t off, uint64_t len, pt_piece *out, size_t max)
{
	size_t n = 0;
	uint64_t end = off + len > f->size ? f->size : off + len;
	while (off < end && n < max) {
		/* Find the region holding off: a storage's data, or literal bytes up
		 * to the next storage's data (or the end). */
		uint64_t lit_end = f->size;
		const entry *hit = NULL;
		for (size_t i = 0; i < f->n; i++) {
			const entry *e = &f->e[i];
			if (e->storage < 0 || e->data_off + e->size <= off)
				continue;
			if (off >= e->data_off && e->size) {
				hit = e;
				break;
			}
			if (e->size) {
				lit_end = e->data_off;
				break;
			}
		}
		uint64_t stop;
		if (hit) {
			stop = hit->data_off + hit->size < end ? hit->data_off + hit->size : end;
			out[n++] = (pt_piece){hit->storage, off - hit->data_off, stop - off};
		} else {
			stop = lit_end < end ? lit_end : end;
			out[n++] = (pt_piece){-1, off, stop - off};
		}
		off = stop;
	}
	return n;
}

static size_t local_header(const pt_file *f, const entry *e, uint8_t *b)
{
	bool z = e->z64size;
	put32(b, SIG_LOCAL);
	put16(b + 4, z ? 45 : 20);
	put16(b + 6, 0);
	put16(b + 8, 0); /* stored */
	put16(b + 10, 0);
	put16(b + 12, DOS_DATE);
	put32(b + 14, e->crc);
	put32(b + 18, z ? U32MAX : (uint32_t)e->size);
	put32(b + 22, z ? U32MAX : (uint32_t)e->size);
	put16(b + 26, (uint16_t)e->nlen);
	put16(b + 28, e->lextra);
	memcpy(b + LOCAL_SIZE, e->name, e->nlen);
	uint8_t *x = b + LOCAL_SIZE + e->nlen;
	size_t pad = e->lextra;
	if (z) {
		put16(x, 1);
		put16(x + 2, 16);
		put64(x + 4, e->size);
		put64(x + 12, e->size);
		x += 20;
		pad -= 20;
	}
	if (pad) { /* alignment padding, as torch's writer does it: id "FB" */
		put16(x, 0x4246);
		put16(x + 2, (uint16_t)(pad - 4));
		memset(x + 4, 'Z', pad - 4);
	}
	(void)f;
	return LOCAL_SIZE + e->nlen + e->lextra;
}

static size_t central_header(const entry *e, uint8_t *b)
{
	bool z = e->z64size || e->z64off;
	size_t xl = cextra_len(e);
	put32(b, SIG_CENTRAL);
	put16(b + 4, 0x0300 | (z ? 45 : 20)); /* made by: unix */
	put16(b + 6, z ? 45 : 20);
	put16(b + 8, 0);
	put16(b + 10, 0);
	put16(b + 12, 0);
	put16(b + 14, DOS_DATE);
	put32(b + 16, e->crc);
	put32(b + 20, e->z64size ? U32MAX : (uint32_t)e->size);
	put32(b + 24, e->z64size ? U32MAX : (uint32_t)e->size);
	put16(b + 28, (uint16_t)e->nlen);
	put16(b + 30, (uint16_t)xl);
	put16(b + 32, 0);
	put16(b + 34, 0);
	put16(b + 36, 0);
	put32(b + 38, 0644u << 16); /* external attributes: a regular file */
	put32(b + 42, e->z64off ? U32MAX : (uint32_t)e->lh_off);
	memcpy(b + CENTRAL_SIZE, e->name, e->nlen);
	uint8_t *x = b + CENTRAL_SIZE + e->nlen;
	if (xl) {
		put16(x, 1);
		put16(x + 2, (uint16_t)(xl - 4));
		x += 4;
		if (e->z64size) {
			put64(x, e->size);
			put64(x + 8, e->size);
			x += 16;
		}
		if (e->z64off)
			put64(x, e->lh_off);
	}
	return CENTRAL_SIZE + e->nlen + xl;
}

static void end_records(const pt_file *f, uint8_t *b)
{
	if (f->z64end) {
		put32(b, SIG_END64);
		put64(b + 4, END64_SIZE - 12);
		put16(b + 12, 0x032d);
		put16(b + 14, 45);
		put32(b + 16, 0);
		put32(b + 20, 0);
		put64(b + 24, f->n);
		put64(b + 32, f->n);
		put64(b + 40, f->cd_size);
		put64(b + 48, f->cd_off);
		b += END64_SIZE;
		put32(b, SIG_LOC64);
		put32(b + 4, 0);
		put64(b + 8, f->tail_off);
		put32(b + 16, 1);
		b += LOC64_SIZE;
	}
	put32(b, SIG_END);
	put16(b + 4, 0);
	put16(b + 6, 0);
	put16(b + 8, f->n >= 0xffff ? 0xffff : (uint16_t)f->n);
	put16(b + 10, f->n >= 0xffff ? 0xffff : (uint16_t)f->n);
	put32(b + 12, f->z64end ? U32MAX : (uint32_t)f->cd_size);
	put32(b + 16, f->z64end ? U32MAX : (uint32_t)f->cd_off);
	put16(b + 20, 0);
}

/* Copy the part of region [start, start+n) that falls in [off, off+len). */
static void clip(const uint8_t *src, uint64_t start, uint64_t n, uint64_t off, uint64_t len,
		 uint8_t *dst)
{
	uint64_t a = start > off ? start : off;
	uint64_t b = start + n < off + len ? start + n : off + len;
	if (a < b)
		memcpy(dst + (a - off), src + (a - start), b - a);
}

void pt_file_literal(const pt_file *f, uint64_t off, uint64_t len, uint8_t *dst)
{
	uint8_t hdr[LOCAL_SIZE + 512 + 20 + 2 * ALIGN];
	for (size_t i = 0; i < f->n; i++) {
		const entry *e = &f->e[i];
		if (e->lh_off >= off + len)
			break;
		if (overlaps(off, len, e->lh_off, e->data_off - e->lh_off))
			clip(hdr, e->lh_off, local_header(f, e, hdr), off, len, dst);
		if (e->lit && overlaps(off, len, e->data_off, e->size))
			clip(e->lit, e->data_off, e->size, off, len, dst);
	}
	if (!overlaps(off, len, f->cd_off, f->size - f->cd_off))
		return;
	uint8_t cd[CENTRAL_SIZE + 512 + 28];
	uint64_t pos = f->cd_off;
	for (size_t i = 0; i < f->n; i++) {
		size_t n = central_header(&f->e[i], cd);
		clip(cd, pos, n, off, len, dst);
		pos += n;
	}
	uint8_t end[END64_SIZE + LOC64_SIZE + END_SIZE];
	end_records(f, end);
	clip(end, f->tail_off, f->size - f->tail_off, off, len, dst);
}

/* ---- reader ---- */

typedef struct {
	const char *name;
	size_t nlen;
	const uint8_t *data;
	uint64_t size;
	uint32_t crc;
} rentry;

struct pt_archive {
	char *path;
	uint8_t *map;
	size_t len;
	bool borrowed; /* map is the caller's buffer */
	rentry *e;
	size_t n;
	char prefix[256];
	size_t plen;
	pt_arena *arena;
	pt_obj *root;
};

void pt_close(pt_archive *ar)
{
	if (!ar)
		return;
	if (ar->map && ar->len && !ar->borrowed)
		munmap(ar->map, ar->len);
	free(ar->e);
	free(ar->path);
	pt_arena_free(ar->arena);
	free(ar);
}

const pt_obj *pt_root(const pt_archive *ar) { return ar->root; }

const uint8_t *pt_bytes(const pt_archive *ar, size_t *len)
{
	*len = ar->len;
	return ar->map;
}

static cltfs_err zbad(const char *why) { return cltfs_fail(CLTFS_E_FORMAT, "zip: %s", why); }

static cltfs_err find_end(pt_archive *ar, uint64_t *cd_off, uint64_t *cd_size, uint64_t *count)
{
	const uint8_t *m = ar->map;
	if (ar->len < END_SIZE)
		return zbad("file too short to be a torch.save archive");
	size_t lo = ar->len > END_SIZE + 65535 ? ar->len - END_SIZE - 65535 : 0;
	size_t at = ar->len - END_SIZE + 1;
	do {
		at--;
		if (get32(m + at) == SIG_END && at + END_SIZE + get16(m + at + 20) == ar->len)
			break;
	} while (at > lo);
	if (get32(m + at) != SIG_END)
		return zbad("no end of central directory record");
	*count = get16(m + at + 10);
	*cd_size = get32(m + at + 12);
	*cd_off = get32(m + at + 16);
	if (*count == 0xffff || *cd_size == U32MAX || *cd_off == U32MAX) {
		if (at < LOC64_SIZE || get32(m + at - LOC64_SIZE) != SIG_LOC64)
			return zbad("ZIP64 end locator missing");
		uint64_t e64 = get64(m + at - LOC64_SIZE + 8);
		if (ar->len < END64_SIZE || e64 > ar->len - END64_SIZE || get32(m + e64) != SIG_END64)
			return zbad("ZIP64 end record missing");
		*count = get64(m + e64 + 32);
		*cd_size = get64(m + e64 + 40);
		*cd_off = get64(m + e64 + 48);
	}
	if (*cd_off > ar->len || *cd_size > ar->len - *cd_off)
		return zbad("central directory lies outside the file");
	if (*count > *cd_size / CENTRAL_SIZE)
		return zbad("central directory holds fewer entries than it claims");
	return CLTFS_OK;
}

/* Sizes and offset of a central entry, from its zip64 extra where needed. */
static cltfs_err zip64_fields(const uint8_t *x, size_t xl, uint64_t *usize, uint64_t *csize,
			      uint64_t *off)
{
	while (xl >= 4) {
		uint16_t id = get16(x), n = get16(x + 2);
		if ((size_t)n + 4 > xl)
			return zbad("extra field overruns its header");
		if (id == 1) {
			const uint8_t *p = x + 4, *end = p + n;
			uint64_t *f[3] = {usize, csize, off};
			for (int i = 0; i < 3; i++)
				if (*f[i] == U32MAX) {
					if (end - p < 8)
						return zbad("ZIP64 extra field too short");
					*f[i] = get64(p);
					p += 8;
				}
			return CLTFS_OK;
		}
		x += 4 + n;
		xl -= 4 + (size_t)n;
	}
	if (*usize == U32MAX || *csize == U32MAX || *off == U32MAX)
		return zbad("ZIP64 sizes announced but no ZIP64 extra field");
	return CLTFS_OK;
}

static cltfs_err read_central(pt_archive *ar, uint64_t cd_off, uint64_t cd_size, uint64_t count)
{
	const uint8_t *m = ar->map, *p = m + cd_off, *end = p + cd_size;
	ar->e = calloc(count ? count : 1, sizeof *ar->e);
	if (!ar->e)
		return cltfs_fail(CLTFS_E_NOMEM, "zip: out of memory");
	for (uint64_t i = 0; i < count; i++) {
		if (end - p < CENTRAL_SIZE || get32(p) != SIG_CENTRAL)
			return zbad("bad central directory entry");
		uint16_t flags = get16(p + 8), method = get16(p + 10);
		size_t nl = get16(p + 28), xl = get16(p + 30), cl = get16(p + 32);
		if ((size_t)(end - p) < CENTRAL_SIZE + nl + xl + cl)
			return zbad("central directory entry overruns the directory");
		uint64_t csize = get32(p + 20), usize = get32(p + 24), lh = get32(p + 42);
		cltfs_err e = zip64_fields(p + CENTRAL_SIZE + nl, xl, &usize, &csize, &lh);
		if (e)
			return e;
		rentry *r = &ar->e[ar->n++];
		r->name = (const char *)p + CENTRAL_SIZE;
		r->nlen = nl;
		if (flags & 1)
			return cltfs_fail(CLTFS_E_FORMAT, "zip: record %.*s is encrypted", (int)nl, r->name);
		if (method != 0 || csize != usize)
			return cltfs_fail(CLTFS_E_UNSUPPORTED,
					  "zip: record %.*s is compressed (method %u); torch.save "
					  "stores records uncompressed",
					  (int)nl, r->name, method);
		if (lh > ar->len - LOCAL_SIZE || get32(m + lh) != SIG_LOCAL)
			return cltfs_fail(CLTFS_E_FORMAT, "zip: local header of %.*s is missing",
					  (int)nl, r->name);
		uint64_t data = lh + LOCAL_SIZE + get16(m + lh + 26) + get16(m + lh + 28);
		if (data > ar->len || usize > ar->len - data)
			return cltfs_fail(CLTFS_E_FORMAT, "zip: record %.*s reaches past the end of the file",
					  (int)nl, r->name);
		r->data = m + data;
		r->size = usize;
		r->crc = get32(p + 16);
		p += CENTRAL_SIZE + nl + xl + cl;
	}
	return CLTFS_OK;
}

static const rentry *lookup(const pt_archive *ar, const char *rel)
{
	size_t rl = strlen(rel);
	for (size_t i = 0; i < ar->n; i++) {
		const rentry *r = &ar->e[i];
		if (r->nlen == ar->plen + rl && !memcmp(r->name, ar->prefix, ar->plen) &&
		    !memcmp(r->name + ar->plen, rel, rl))
			return r;
	}
	return NULL;
}

/* The archive's prefix is the folder of its data.pkl, as torch finds it. */
static cltfs_err find_prefix(pt_archive *ar)
{
	for (size_t i = 0; i < ar->n; i++) {
		const rentry *r = &ar->e[i];
		const char *slash = memchr(r->name, '/', r->nlen);
		if (!slash)
			continue;
		size_t pl = (size_t)(slash - r->name) + 1;
		if (r->nlen == pl + 8 && !memcmp(slash + 1, "data.pkl", 8) && pl < sizeof ar->prefix) {
			memcpy(ar->prefix, r->name, pl);
			ar->plen = pl;
			return CLTFS_OK;
		}
	}
	return zbad("no data.pkl record: not a torch.save archive");
}

/* Every tensor's storage record must exist and be large enough; one storage
 * key must always name one dtype and size. */
/* A tensor's shape and strides against its storage, before anything is
 * allocated for it: every element it names lies in the storage, and it
 * names no more elements than the storage holds (a stride-0 or otherwise
 * overlapping view, such as .expand() saves, would make a copy of it
 * larger than the file; an 11 KB file claimed 2 GB so).  The bound: a
 * reader of a tensor never needs more memory than its file's storage. */
static cltfs_err check_view(const pt_obj *o, const char *rel)
{
	const int64_t *shape = o->u.t.shape, *stride = o->u.t.stride;
	int64_t offset = o->u.t.offset, numel = o->u.t.numel;
	uint64_t n = 1, last = (uint64_t)offset;
	if (offset < 0)
		return cltfs_fail(CLTFS_E_FORMAT, "data.pkl: the tensor of %s has a negative offset", rel);
	for (int i = 0; i < o->u.t.ndim; i++) {
		if (shape[i] < 0 || stride[i] < 0)
			return cltfs_fail(CLTFS_E_FORMAT, "data.pkl: the tensor of %s has a negative size or stride", rel);
		if (!shape[i])
			return CLTFS_OK; /* no element */
		uint64_t reach;
		if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n) ||
		    __builtin_mul_overflow((uint64_t)(shape[i] - 1), (uint64_t)stride[i], &reach) ||
		    __builtin_add_overflow(last, reach, &last))
			return cltfs_fail(CLTFS_E_FORMAT, "data.pkl: the tensor of %s has a shape too large", rel);
	}
	if (last >= (uint64_t)numel)
		return cltfs_fail(CLTFS_E_FORMAT, "data.pkl: the tensor of %s reaches element %llu of a storage of %lld",
				  rel, (unsigned long long)last, (long long)numel);
	if (n > (uint64_t)numel)
		return cltfs_fail(CLTFS_E_FORMAT, "data.pkl: the tensor of %s has %llu elements in a storage of %lld "
				  "(a stride-0 or overlapping view, as .expand() makes): save it .contiguous()",
				  rel, (unsigned long long)n, (long long)numel);
	return CLTFS_OK;
}

static cltfs_err check_tensors(const pt_archive *ar, const pt_obj *o, int depth)
{
	if (depth > 64)
		return cltfs_fail(CLTFS_E_FORMAT, "data.pkl: objects nested too deep");
	if (o->kind == PT_TENSOR) {
		char rel[64];
		snprintf(rel, sizeof rel, "data/%s", o->u.t.key);
		const rentry *r = lookup(ar, rel);
		uint64_t want = (uint64_t)o->u.t.numel * cltfs_dtype_size(o->u.t.dtype);
		if (!r)
			return cltfs_fail(CLTFS_E_FORMAT, "zip: storage record %s is missing", rel);
		if (r->size < want)
			return cltfs_fail(CLTFS_E_FORMAT,
					  "zip: storage %s holds %llu bytes, its tensor needs %llu", rel,
					  (unsigned long long)r->size, (unsigned long long)want);
		return check_view(o, rel);
	}
	if (o->kind == PT_LIST || o->kind == PT_TUPLE) {
		for (size_t i = 0; i < o->u.seq.n; i++)
			if (check_tensors(ar, o->u.seq.v[i], depth + 1))
				return CLTFS_E_FORMAT;
	} else if (o->kind == PT_DICT) {
		for (size_t i = 0; i < o->u.dict.n; i++)
			if (check_tensors(ar, o->u.dict.v[i], depth + 1))
				return CLTFS_E_FORMAT;
	} else if (o->kind == PT_STORAGE || o->kind == PT_GLOBAL) {
		return cltfs_fail(CLTFS_E_UNSUPPORTED,
				  "data.pkl: holds a bare storage or class, not tensors");
	}
	return CLTFS_OK;
}

static cltfs_err open_map(const char *path, pt_archive *ar)
{
	/* O_NONBLOCK: a FIFO or a device opens at once, and fstat refuses it */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return cltfs_fail(errno == ENOENT ? CLTFS_E_NOTFOUND : CLTFS_E_IO, "%s", strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return cltfs_fail(CLTFS_E_FORMAT, "not a regular file");
	}
	ar->len = (size_t)st.st_size;
	if (ar->len) {
		ar->map = mmap(NULL, ar->len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (ar->map == MAP_FAILED) {
			ar->map = NULL;
			ar->len = 0;
			close(fd);
			return cltfs_fail(CLTFS_E_IO, "mmap: %s", strerror(errno));
		}
		madvise(ar->map, ar->len, MADV_SEQUENTIAL);
	}
	close(fd);
	return CLTFS_OK;
}

static cltfs_err parse_archive(pt_archive *ar)
{
	uint64_t cd_off = 0, cd_size = 0, count = 0;
	cltfs_err e;
	if (ar->len >= 2 && ar->map[0] == 0x80)
		return cltfs_fail(CLTFS_E_UNSUPPORTED,
				  "legacy (pre-zip) torch.save format; re-save it with a torch >= 1.6 default");
	if (ar->len < 4 || get32(ar->map) != SIG_LOCAL)
		return zbad("not a zip archive (torch.save writes one)");
	if ((e = find_end(ar, &cd_off, &cd_size, &count)) || (e = read_central(ar, cd_off, cd_size, count)) ||
	    (e = find_prefix(ar)))
		return e;
	const rentry *pkl = lookup(ar, "data.pkl");
	if (!(ar->arena = pt_arena_new()))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if ((e = pt_unpickle(ar->arena, pkl->data, (size_t)pkl->size, &ar->root)))
		return e;
	return check_tensors(ar, ar->root, 0);
}

static cltfs_err open_archive(const char *path, pt_archive *ar)
{
	cltfs_err e = open_map(path, ar);
	return e ? e : parse_archive(ar);
}

cltfs_err pt_open_mem(const void *buf, size_t len, const char *name, pt_archive **out)
{
	pt_archive *ar = calloc(1, sizeof *ar);
	if (!ar)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", name);
	ar->map = (uint8_t *)buf;
	ar->len = len;
	ar->borrowed = true;
	cltfs_err e = parse_archive(ar);
	if (e) {
		pt_close(ar);
		return cltfs_wrap(e, "%s", name);
	}
	*out = ar;
	return CLTFS_OK;
}

cltfs_err pt_check_crcs(const pt_archive *ar, const char *name)
{
	for (size_t i = 0; i < ar->n; i++)
		if (cltfs_crc32(0, ar->e[i].data, (size_t)ar->e[i].size) != ar->e[i].crc)
			return cltfs_fail(CLTFS_E_CORRUPT, "%s: zip record %.*s fails its CRC-32", name,
					  (int)ar->e[i].nlen, ar->e[i].name);
	return CLTFS_OK;
}

cltfs_err pt_open(const char *path, pt_archive **out)
{
	pt_archive *ar = calloc(1, sizeof *ar);
	if (!ar)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	cltfs_err e = open_archive(path, ar);
	if (e) {
		pt_close(ar);
		return cltfs_wrap(e, "%s", path);
	}
	*out = ar;
	return CLTFS_OK;
}

const void *pt_tensor_data(const pt_archive *ar, const pt_obj *t)
{
	if (!pt_tensor_contiguous(t))
		return NULL;
	char rel[64];
	snprintf(rel, sizeof rel, "data/%s", t->u.t.key);
	const rentry *r = lookup(ar, rel);
	return r ? r->data + (uint64_t)t->u.t.offset * cltfs_dtype_size(t->u.t.dtype) : NULL;
}

/* Gather a strided tensor: recurse over dims, copying element runs. */
static void gather(const uint8_t *base, const pt_obj *t, int dim, int64_t off, uint8_t **dst,
		   size_t es)
{
	if (dim == t->u.t.ndim) {
		memcpy(*dst, base + (uint64_t)off * es, es);
		*dst += es;
		return;
	}
	for (int64_t i = 0; i < t->u.t.shape[dim]; i++)
		gather(base, t, dim + 1, off + i * t->u.t.stride[dim], dst, es);
}

cltfs_err pt_tensor_read(const pt_archive *ar, const pt_obj *t, void *dst)
{
	size_t es = cltfs_dtype_size(t->u.t.dtype);
	const void *p = pt_tensor_data(ar, t);
	if (p) {
		memcpy(dst, p, (size_t)pt_tensor_numel(t) * es);
		return CLTFS_OK;
	}
	char rel[64];
	snprintf(rel, sizeof rel, "data/%s", t->u.t.key);
	const rentry *r = lookup(ar, rel);
	if (!r)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: storage %s missing", ar->path ? ar->path : "", rel);
	uint8_t *d = dst;
	if (pt_tensor_numel(t))
		gather(r->data, t, 0, t->u.t.offset, &d, es);
	return CLTFS_OK;
}
