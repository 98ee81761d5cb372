/* frame.c: chunk frames and index records.
 *
 * A frame holds one chunk in one of three codecs (codec.h says each
 * layout).  zstd: the chunk's values byte-shuffled (byte 0 of every value,
 * then byte 1, ...: the exponent bytes of activations sit together) and
 * one zstd frame with its content size and checksum.  raw: the bytes as
 * they are behind a header with their CRC-32.  exp4: the top byte of each
 * value (bf16: sign and 7 exponent bits, about 3 bits of information in
 * activations) as a 4-bit code, the other bytes as they are.  Why exp4:
 * on bench.py's tree zstd frames decode (checks included) at ~1.6 GB/s a
 * core, almost all of it zstd's entropy decoding; exp4's table lookups (32
 * codes at a time, pshufb) decode at ~6 GB/s, for frames 8% larger (0.75
 * of the raw bytes against 0.69).  zstd on the exponent bytes alone, the
 * mantissa bytes stored as they are, was measured too: 0.69 and 1.9 GB/s,
 * not worth a format.  Every frame carries its own check (zstd's checksum,
 * or the CRC-32 of the raw bytes) besides its record's CRC, and a frame
 * that is not of the codec its record names is refused.
 *
 * A record describes one frame and checksums itself, so a torn or
 * overwritten record is recognised.
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
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <tmmintrin.h>
#define HAVE_X86_SIMD 1
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

/* n 2-byte values from their low and high bytes (two planes anywhere). */
static void unshuffle2(const uint8_t *lo, const uint8_t *hi, uint8_t *d, size_t n)
{
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
}

void cltfs_unshuffle(size_t esize, const void *src, void *dst, size_t len)
{
	const uint8_t *s = src;
	uint8_t *d = dst;
	size_t n = len / esize;
	if (esize == 2) {
		unshuffle2(s, s + n, d, n);
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

/* ---- codecs ---- */

static const char *const codec_names[CLTFS_NCODECS] = {"zstd", "raw", "exp4"};
static const uint8_t ZSTD_MAGIC[4] = {0x28, 0xb5, 0x2f, 0xfd};
static const uint8_t RAW_MAGIC[4] = {'C', 'L', 'R', 'W'};
static const uint8_t EXP4_MAGIC[4] = {'C', 'L', 'X', '4'};
#define EXP4_HEADER 32 /* magic(4) raw length(4) crc(4) escapes(4) table(16) */
#define EXP4_ESCAPE 15

const char *cltfs_codec_name(cltfs_codec c)
{
	return (unsigned)c < CLTFS_NCODECS ? codec_names[c] : "unknown";
}

bool cltfs_codec_parse(const char *s, cltfs_codec *out)
{
	for (int c = 0; c < CLTFS_NCODECS; c++)
		if (!strcmp(s, codec_names[c])) {
			*out = (cltfs_codec)c;
			return true;
		}
	return false;
}

/* A frame that does not start with its codec's magic: say what it looks
 * like instead, since the likely cause is a record naming the wrong codec. */
static cltfs_err not_a(cltfs_codec want, const uint8_t *f, size_t len)
{
	const uint8_t *magic[CLTFS_NCODECS] = {ZSTD_MAGIC, RAW_MAGIC, EXP4_MAGIC};
	for (int c = 0; len >= 4 && c < CLTFS_NCODECS; c++)
		if (!memcmp(f, magic[c], 4))
			return cltfs_fail(CLTFS_E_CORRUPT, "not a frame of codec %s (it starts as codec %s's frames do)",
					  codec_names[want], codec_names[c]);
	return cltfs_fail(CLTFS_E_CORRUPT, "not a frame of codec %s (bad magic)", codec_names[want]);
}

size_t cltfs_frame_bound(cltfs_codec codec, size_t raw_len)
{
	switch (codec) {
	case CLTFS_CODEC_RAW:
		return CLTFS_RAW_HEADER + raw_len;
	case CLTFS_CODEC_EXP4: /* at worst every top byte escaped: half a byte of code a value on top */
		return EXP4_HEADER + raw_len + (raw_len + 1) / 2;
	default:
		return ZSTD_compressBound(raw_len);
	}
}

/* ---- zstd ---- */

static cltfs_err zstd_encode(cltfs_zctx *z, int level, size_t esize, const void *raw, size_t raw_len, void *dst,
			     size_t cap, size_t *out_len)
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

static cltfs_err zstd_decode(cltfs_zctx *z, size_t esize, const void *frame, size_t len, void *raw, size_t raw_len)
{
	/* Check the declared size before touching memory: a damaged frame must
	 * not make us allocate or write what its header claims. */
	unsigned long long declared = ZSTD_getFrameContentSize(frame, len);
	if (declared == ZSTD_CONTENTSIZE_ERROR || declared == ZSTD_CONTENTSIZE_UNKNOWN)
		return len >= 4 && memcmp(frame, ZSTD_MAGIC, 4) ? not_a(CLTFS_CODEC_ZSTD, frame, len)
			: cltfs_fail(CLTFS_E_CORRUPT, "not a zstd frame with a content size");
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

/* ---- raw ---- */

static cltfs_err raw_encode(const void *raw, size_t raw_len, uint8_t *dst, size_t cap, size_t *out_len)
{
	if (raw_len > UINT32_MAX || cap < CLTFS_RAW_HEADER + raw_len)
		return cltfs_fail(CLTFS_E_INVAL, "frame: %zu raw bytes do not fit in %zu", raw_len, cap);
	memcpy(dst, RAW_MAGIC, 4);
	put32(dst + 4, (uint32_t)raw_len);
	put32(dst + 8, cltfs_crc32(0, raw, raw_len));
	memcpy(dst + CLTFS_RAW_HEADER, raw, raw_len);
	*out_len = CLTFS_RAW_HEADER + raw_len;
	return CLTFS_OK;
}

cltfs_err cltfs_frame_check_raw(const void *header, const void *raw, size_t raw_len, uint32_t *crc)
{
	const uint8_t *h = header;
	if (memcmp(h, RAW_MAGIC, 4))
		return not_a(CLTFS_CODEC_RAW, h, CLTFS_RAW_HEADER);
	if (get32(h + 4) != raw_len)
		return cltfs_fail(CLTFS_E_CORRUPT, "frame holds %u bytes, index says %zu", get32(h + 4), raw_len);
	uint32_t c = cltfs_crc32(0, raw, raw_len);
	if (c != get32(h + 8))
		return cltfs_fail(CLTFS_E_CORRUPT, "raw frame fails its CRC-32");
	if (crc)
		*crc = c;
	return CLTFS_OK;
}

static cltfs_err raw_decode(const uint8_t *frame, size_t len, void *raw, size_t raw_len, uint32_t *crc)
{
	if (len < CLTFS_RAW_HEADER)
		return len >= 4 && memcmp(frame, RAW_MAGIC, 4) ? not_a(CLTFS_CODEC_RAW, frame, len)
			: cltfs_fail(CLTFS_E_CORRUPT, "raw frame of %zu bytes is shorter than its header", len);
	if (len != CLTFS_RAW_HEADER + raw_len)
		return memcmp(frame, RAW_MAGIC, 4) ? not_a(CLTFS_CODEC_RAW, frame, len)
			: cltfs_fail(CLTFS_E_CORRUPT, "raw frame is %zu bytes, expected %zu for %zu raw bytes", len,
				     CLTFS_RAW_HEADER + raw_len, raw_len);
	memcpy(raw, frame + CLTFS_RAW_HEADER, raw_len);
	return cltfs_frame_check_raw(frame, raw, raw_len, crc);
}

/* ---- exp4 ---- */

/* Bytes of an exp4 frame of n values of esize bytes, raw_len in all, with
 * n_esc escapes: header, codes (two a byte), escapes, lower planes, tail. */
static size_t exp4_size(size_t esize, size_t raw_len, size_t n_esc)
{
	size_t n = raw_len / esize;
	return EXP4_HEADER + (n + 1) / 2 + n_esc + (raw_len - n);
}

static cltfs_err exp4_encode(cltfs_zctx *z, size_t esize, const void *raw, size_t raw_len, uint8_t *dst, size_t cap,
			     size_t *out_len)
{
	size_t n = raw_len / esize, count[256] = {0};
	if (raw_len > UINT32_MAX)
		return cltfs_fail(CLTFS_E_INVAL, "frame: %zu raw bytes are too many", raw_len);
	uint8_t *sh = scratch(z, raw_len ? raw_len : 1);
	if (!sh)
		return cltfs_fail(CLTFS_E_NOMEM, "frame: no memory for %zu bytes", raw_len);
	cltfs_shuffle(esize, raw, sh, raw_len);
	const uint8_t *top = sh + (esize - 1) * n;
	for (size_t i = 0; i < n; i++)
		count[top[i]]++;
	/* the 15 most common top bytes (ties: the lower byte) get codes 0..14 */
	uint8_t table[16] = {0}, code[256];
	memset(code, EXP4_ESCAPE, sizeof code);
	size_t coded = 0;
	for (int k = 0; k < EXP4_ESCAPE; k++) {
		int best = 0;
		for (int v = 1; v < 256; v++)
			if (count[v] > count[best])
				best = v;
		if (!count[best])
			break;
		table[k] = (uint8_t)best;
		code[best] = (uint8_t)k;
		coded += count[best];
		count[best] = 0;
	}
	size_t n_esc = n - coded, size = exp4_size(esize, raw_len, n_esc);
	if (cap < size)
		return cltfs_fail(CLTFS_E_INVAL, "frame: %zu bytes do not fit in %zu", size, cap);
	memcpy(dst, EXP4_MAGIC, 4);
	put32(dst + 4, (uint32_t)raw_len);
	put32(dst + 8, cltfs_crc32(0, raw, raw_len));
	put32(dst + 12, (uint32_t)n_esc);
	memcpy(dst + 16, table, 16);
	uint8_t *codes = dst + EXP4_HEADER, *esc = codes + (n + 1) / 2;
	memset(codes, 0, (n + 1) / 2);
	for (size_t i = 0; i < n; i++) {
		uint8_t c = code[top[i]];
		codes[i / 2] |= (uint8_t)(i & 1 ? c << 4 : c);
		if (c == EXP4_ESCAPE)
			*esc++ = top[i];
	}
	/* the lower planes, then the tail: everything of sh but the top plane */
	memcpy(esc, sh, (esize - 1) * n);
	memcpy(esc + (esize - 1) * n, sh + esize * n, raw_len - esize * n);
	*out_len = size;
	return CLTFS_OK;
}

#ifdef HAVE_X86_SIMD
/* exp4_unpack's first values, 32 at a time: 16 bytes of codes become 32
 * top bytes by two table lookups (pshufb); escapes are patched after.
 * Returns how many values it did, SIZE_MAX when the escapes ran out. */
__attribute__((target("ssse3"))) static size_t exp4_unpack_ssse3(const uint8_t tab[16], const uint8_t *codes, size_t n,
								const uint8_t *esc, size_t n_esc, size_t *used,
								uint8_t *out)
{
	const __m128i t = _mm_loadu_si128((const __m128i *)tab), nib = _mm_set1_epi8(0x0f);
	const __m128i escape = _mm_set1_epi8(EXP4_ESCAPE);
	size_t i = 0, k = 0;
	for (; i + 32 <= n; i += 32) {
		__m128i v = _mm_loadu_si128((const __m128i *)(codes + i / 2));
		__m128i even = _mm_and_si128(v, nib), odd = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
		__m128i c0 = _mm_unpacklo_epi8(even, odd), c1 = _mm_unpackhi_epi8(even, odd); /* value order */
		_mm_storeu_si128((__m128i *)(out + i), _mm_shuffle_epi8(t, c0));
		_mm_storeu_si128((__m128i *)(out + i + 16), _mm_shuffle_epi8(t, c1));
		uint32_t m = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(c0, escape)) |
			     (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(c1, escape)) << 16;
		for (; m; m &= m - 1) {
			if (k == n_esc)
				return SIZE_MAX;
			out[i + (size_t)__builtin_ctz(m)] = esc[k++];
		}
	}
	*used = k;
	return i;
}

static bool have_ssse3(void) { return __builtin_cpu_supports("ssse3"); }
#endif

/* The top bytes of n values from their codes, escapes taken in order:
 * false when the codes ask for more escapes than the frame has, or fewer. */
static bool exp4_unpack(const uint8_t tab[16], const uint8_t *codes, size_t n, const uint8_t *esc, size_t n_esc,
			uint8_t *out)
{
	size_t i = 0, k = 0;
#ifdef HAVE_X86_SIMD
	if (have_ssse3() && (i = exp4_unpack_ssse3(tab, codes, n, esc, n_esc, &k, out)) == SIZE_MAX)
		return false;
#endif
	for (; i < n; i++) {
		unsigned c = i & 1 ? codes[i / 2] >> 4 : codes[i / 2] & 0x0f;
		if (c != EXP4_ESCAPE)
			out[i] = tab[c];
		else if (k < n_esc)
			out[i] = esc[k++];
		else
			return false;
	}
	return k == n_esc;
}

static cltfs_err exp4_decode(cltfs_zctx *z, size_t esize, const uint8_t *f, size_t len, uint8_t *raw, size_t raw_len,
			     uint32_t *crc)
{
	if (len < EXP4_HEADER || memcmp(f, EXP4_MAGIC, 4))
		return len >= 4 && memcmp(f, EXP4_MAGIC, 4) ? not_a(CLTFS_CODEC_EXP4, f, len)
			: cltfs_fail(CLTFS_E_CORRUPT, "exp4 frame of %zu bytes is shorter than its header", len);
	if (get32(f + 4) != raw_len)
		return cltfs_fail(CLTFS_E_CORRUPT, "frame holds %u bytes, index says %zu", get32(f + 4), raw_len);
	size_t n = raw_len / esize, n_esc = get32(f + 12);
	if (n_esc > n || len != exp4_size(esize, raw_len, n_esc))
		return cltfs_fail(CLTFS_E_CORRUPT, "exp4 frame is %zu bytes, its header (%zu escapes of %zu values) "
				  "says %zu", len, n_esc, n, n_esc > n ? 0 : exp4_size(esize, raw_len, n_esc));
	const uint8_t *tab = f + 16, *codes = f + EXP4_HEADER, *esc = codes + (n + 1) / 2, *lower = esc + n_esc;
	/* what no decoder reads must be as the encoder left it: a flipped
	 * bit anywhere in a frame is an error, not silently ignored */
	if (tab[EXP4_ESCAPE] || (n & 1 && codes[n / 2] >> 4))
		return cltfs_fail(CLTFS_E_CORRUPT, "exp4 frame has bits set where none may be");
	uint8_t *sh = scratch(z, raw_len ? raw_len : 1);
	if (!sh)
		return cltfs_fail(CLTFS_E_NOMEM, "frame: no memory for %zu bytes", raw_len);
	if (esize == 2) { /* the top plane apart, then both interleaved into place */
		if (!exp4_unpack(tab, codes, n, esc, n_esc, sh))
			return cltfs_fail(CLTFS_E_CORRUPT, "exp4 frame's codes and escapes disagree");
		unshuffle2(lower, sh, raw, n);
		memcpy(raw + 2 * n, lower + n, raw_len - 2 * n);
	} else { /* the shuffled chunk in scratch, then unshuffled */
		if (!exp4_unpack(tab, codes, n, esc, n_esc, sh + (esize - 1) * n))
			return cltfs_fail(CLTFS_E_CORRUPT, "exp4 frame's codes and escapes disagree");
		memcpy(sh, lower, (esize - 1) * n);
		memcpy(sh + esize * n, lower + (esize - 1) * n, raw_len - esize * n);
		cltfs_unshuffle(esize, sh, raw, raw_len);
	}
	uint32_t c = cltfs_crc32(0, raw, raw_len);
	if (c != get32(f + 8))
		return cltfs_fail(CLTFS_E_CORRUPT, "exp4 frame fails its CRC-32");
	if (crc)
		*crc = c;
	return CLTFS_OK;
}

/* ---- any codec ---- */

cltfs_err cltfs_frame_encode(cltfs_zctx *z, cltfs_codec codec, int level, size_t esize, const void *raw,
			     size_t raw_len, void *dst, size_t cap, size_t *out_len)
{
	if (!esize)
		return cltfs_fail(CLTFS_E_INVAL, "frame: element size 0");
	switch (codec) {
	case CLTFS_CODEC_ZSTD:
		return zstd_encode(z, level, esize, raw, raw_len, dst, cap, out_len);
	case CLTFS_CODEC_RAW:
		return raw_encode(raw, raw_len, dst, cap, out_len);
	case CLTFS_CODEC_EXP4:
		return exp4_encode(z, esize, raw, raw_len, dst, cap, out_len);
	default:
		return cltfs_fail(CLTFS_E_INVAL, "frame: unknown codec %d (cltfs knows " CLTFS_CODEC_NAMES ")", (int)codec);
	}
}

cltfs_err cltfs_frame_decode(cltfs_zctx *z, cltfs_codec codec, size_t esize, const void *frame, size_t len,
			     void *raw, size_t raw_len, uint32_t *crc)
{
	cltfs_err e;
	if (!esize)
		return cltfs_fail(CLTFS_E_INVAL, "frame: element size 0");
	switch (codec) {
	case CLTFS_CODEC_ZSTD:
		e = zstd_decode(z, esize, frame, len, raw, raw_len);
		if (!e && crc)
			*crc = cltfs_crc32(0, raw, raw_len);
		return e;
	case CLTFS_CODEC_RAW:
		return raw_decode(frame, len, raw, raw_len, crc);
	case CLTFS_CODEC_EXP4:
		return exp4_decode(z, esize, frame, len, raw, raw_len, crc);
	default:
		return cltfs_fail(CLTFS_E_INVAL, "frame: unknown codec %d (cltfs knows " CLTFS_CODEC_NAMES ")", (int)codec);
	}
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
 * codec(1) reserved(2) record-crc(4) = 40 bytes, little-endian.  The codec
 * took a byte that was always written 0, zstd's number: older records are
 * zstd frames as they always were. */
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
	out[33] = r->codec;
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
	r->codec = in[33];
	if (r->dtype >= CLTFS_NDTYPES)
		return cltfs_fail(CLTFS_E_CORRUPT, "index record has unknown dtype %u", r->dtype);
	if (r->codec >= CLTFS_NCODECS)
		return cltfs_fail(CLTFS_E_CORRUPT, "index record has unknown codec %u", r->codec);
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
