/* frame.c: chunk frames and index records.
 *
 * A frame is the chunk's raw little-endian values byte-shuffled (byte 0 of
 * every value, then byte 1, ...: the exponent bytes of activations sit
 * together and compress well) and then one zstd frame with its content
 * size and checksum.  A record describes one frame and checksums itself, so
 * a torn or overwritten record is recognised.
 */
#include "codec.h"
#include "codec_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

struct cltfs_zctx {
	ZSTD_CCtx *c;
	ZSTD_DCtx *d;
	uint8_t *scratch, *user;
	size_t cap, ucap;
};

cltfs_zctx *cltfs_zctx_new(void)
{
	cltfs_zctx *z = calloc(1, sizeof *z);
	if (!z)
		return NULL;
	z->c = ZSTD_createCCtx();
	z->d = ZSTD_createDCtx();
	if (!z->c || !z->d) {
		cltfs_zctx_free(z);
		return NULL;
	}
	return z;
}

void cltfs_zctx_free(cltfs_zctx *z)
{
	if (!z)
		return;
	ZSTD_freeCCtx(z->c);
	ZSTD_freeDCtx(z->d);
	free(z->scratch);
	free(z->user);
	free(z);
}

void *cltfs_zctx_buffer(cltfs_zctx *z, size_t n)
{
	return cltfs_reserve(&z->user, &z->ucap, n) ? z->user : NULL;
}

static uint8_t *scratch(cltfs_zctx *z, size_t n)
{
	return cltfs_reserve(&z->scratch, &z->cap, n) ? z->scratch : NULL;
}

void cltfs_shuffle(size_t esize, const void *src, void *dst, size_t len)
{
	const uint8_t *s = src;
	uint8_t *d = dst;
	size_t n = len / esize;
	if (esize == 2) {
		for (size_t i = 0; i < n; i++) {
			d[i] = s[2 * i];
			d[n + i] = s[2 * i + 1];
		}
	} else {
		for (size_t b = 0; b < esize; b++)
			for (size_t i = 0; i < n; i++)
				d[b * n + i] = s[i * esize + b];
	}
	memcpy(d + n * esize, s + n * esize, len - n * esize);
}

void cltfs_unshuffle(size_t esize, const void *src, void *dst, size_t len)
{
	const uint8_t *s = src;
	uint8_t *d = dst;
	size_t n = len / esize;
	if (esize == 2) {
		const uint8_t *lo = s, *hi = s + n;
		size_t i = 0;
#ifdef __SSE2__
		/* 16 low and 16 high bytes interleave into 16 values at a time */
		for (; i + 16 <= n; i += 16) {
			__m128i l = _mm_loadu_si128((const __m128i *)(lo + i));
			__m128i h = _mm_loadu_si128((const __m128i *)(hi + i));
			_mm_storeu_si128((__m128i *)(d + 2 * i), _mm_unpacklo_epi8(l, h));
			_mm_storeu_si128((__m128i *)(d + 2 * i + 16), _mm_unpackhi_epi8(l, h));
		}
#endif
		for (; i < n; i++) {
			d[2 * i] = lo[i];
			d[2 * i + 1] = hi[i];
		}
	} else if (esize == 4) {
		const uint8_t *p0 = s, *p1 = s + n, *p2 = s + 2 * n, *p3 = s + 3 * n;
		for (size_t i = 0; i < n; i++) {
			d[4 * i] = p0[i];
			d[4 * i + 1] = p1[i];
			d[4 * i + 2] = p2[i];
			d[4 * i + 3] = p3[i];
		}
	} else {
		for (size_t b = 0; b < esize; b++)
			for (size_t i = 0; i < n; i++)
				d[i * esize + b] = s[b * n + i];
	}
	memcpy(d + n * esize, s + n * esize, len - n * esize);
}

size_t cltfs_frame_bound(size_t raw_len) { return ZSTD_compressBound(raw_len); }

cltfs_err cltfs_frame_encode(cltfs_zctx *z, int level, size_t esize, const void *raw,
			     size_t raw_len, void *dst, size_t cap, size_t *out_len)
{
	uint8_t *tmp = scratch(z, raw_len ? raw_len : 1);
	if (!tmp)
		return cltfs_fail(CLTFS_E_NOMEM, "frame: no memory for %zu bytes", raw_len);
	cltfs_shuffle(esize, raw, tmp, raw_len);
	ZSTD_CCtx_reset(z->c, ZSTD_reset_session_and_parameters);
	ZSTD_CCtx_setParameter(z->c, ZSTD_c_compressionLevel, level);
	ZSTD_CCtx_setParameter(z->c, ZSTD_c_checksumFlag, 1);
	ZSTD_CCtx_setParameter(z->c, ZSTD_c_contentSizeFlag, 1);
	size_t r = ZSTD_compress2(z->c, dst, cap, tmp, raw_len);
	if (ZSTD_isError(r))
		return cltfs_fail(CLTFS_E_INVAL, "frame: zstd: %s", ZSTD_getErrorName(r));
	*out_len = r;
	return CLTFS_OK;
}

cltfs_err cltfs_frame_decode(cltfs_zctx *z, size_t esize, const void *frame, size_t len,
			     void *raw, size_t raw_len)
{
	/* Check the declared size before touching memory: a damaged frame must
	 * not make us allocate or write what its header claims. */
	unsigned long long declared = ZSTD_getFrameContentSize(frame, len);
	if (declared == ZSTD_CONTENTSIZE_ERROR || declared == ZSTD_CONTENTSIZE_UNKNOWN)
		return cltfs_fail(CLTFS_E_CORRUPT, "not a zstd frame with a content size");
	if (declared != raw_len)
		return cltfs_fail(CLTFS_E_CORRUPT, "frame holds %llu bytes, index says %zu",
				  declared, raw_len);
	uint8_t *tmp = scratch(z, raw_len ? raw_len : 1);
	if (!tmp)
		return cltfs_fail(CLTFS_E_NOMEM, "frame: no memory for %zu bytes", raw_len);
	size_t r = ZSTD_decompressDCtx(z->d, tmp, raw_len, frame, len);
	if (ZSTD_isError(r))
		return cltfs_fail(CLTFS_E_CORRUPT, "zstd: %s", ZSTD_getErrorName(r));
	if (r != raw_len)
		return cltfs_fail(CLTFS_E_CORRUPT, "frame decoded to %zu bytes, expected %zu", r,
				  raw_len);
	cltfs_unshuffle(esize, tmp, raw, raw_len);
	return CLTFS_OK;
}

/* ---- keys and records ---- */

const char *cltfs_key_str(uint64_t k, char *buf, size_t n)
{
	snprintf(buf, n, "%s@%u#%u", cltfs_key_kind(k) == CLTFS_STREAM_X ? "x" : "mlp",
		 cltfs_key_layer(k), cltfs_key_chunk(k));
	return buf;
}

const char CLTFS_PACK_MAGIC[8] = {'C', 'L', 'T', 'F', 'S', 'P', 'K', '1'};
const char CLTFS_IDX_MAGIC[8] = {'C', 'L', 'T', 'F', 'S', 'I', 'X', '1'};
#define REC_MAGIC 0x52544c43u /* "CLTR" */


/* Layout: magic(4) key(8) offset(8) csize(4) rsize(4) crc(4) dtype(1)
 * reserved(3) record-crc(4) = 40 bytes, little-endian. */
void cltfs_rec_encode(const cltfs_rec *r, uint8_t out[CLTFS_REC_SIZE])
{
	memset(out, 0, CLTFS_REC_SIZE);
	put32(out, REC_MAGIC);
	put64(out + 4, r->key);
	put64(out + 12, r->offset);
	put32(out + 20, r->csize);
	put32(out + 24, r->rsize);
	put32(out + 28, r->crc);
	out[32] = r->dtype;
	put32(out + 36, cltfs_crc32(0, out, 36));
}

cltfs_err cltfs_rec_decode(const uint8_t in[CLTFS_REC_SIZE], cltfs_rec *r)
{
	if (get32(in) != REC_MAGIC || get32(in + 36) != cltfs_crc32(0, in, 36))
		return cltfs_fail(CLTFS_E_CORRUPT, "index record fails its checksum");
	r->key = get64(in + 4);
	r->offset = get64(in + 12);
	r->csize = get32(in + 20);
	r->rsize = get32(in + 24);
	r->crc = get32(in + 28);
	r->dtype = in[32];
	if (r->dtype >= CLTFS_NDTYPES)
		return cltfs_fail(CLTFS_E_CORRUPT, "index record has unknown dtype %u", r->dtype);
	return CLTFS_OK;
}

void cltfs_file_header(const char magic[8], uint8_t out[CLTFS_FILE_HEADER])
{
	memcpy(out, magic, 8);
	put32(out + 8, 1);
	put32(out + 12, CLTFS_REC_SIZE);
}

cltfs_err cltfs_file_header_check(const char magic[8], const uint8_t in[CLTFS_FILE_HEADER])
{
	if (memcmp(in, magic, 8))
		return cltfs_fail(CLTFS_E_FORMAT, "not a cltfs %s file (bad magic)",
				  memcmp(magic, CLTFS_PACK_MAGIC, 8) ? "index" : "pack");
	if (get32(in + 8) != 1 || get32(in + 12) != CLTFS_REC_SIZE)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "format version %u is not supported",
				  get32(in + 8));
	return CLTFS_OK;
}
