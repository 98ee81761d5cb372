/* Frames, shuffle, CRC combining, records, dtype conversion. */
#include "codec.h"
#include "unit.h"

#include <math.h>
#include <zlib.h>

static void test_shuffle(void)
{
	unsigned long long s = 1;
	for (size_t es = 1; es <= 4; es++)
		for (size_t len = 0; len < 70; len += 7) {
			unsigned char a[80], b[80], c[80];
			for (size_t i = 0; i < len; i++)
				a[i] = (unsigned char)unit_rand(&s);
			cltfs_shuffle(es, a, b, len);
			cltfs_unshuffle(es, b, c, len);
			CHECK(!memcmp(a, c, len));
		}
	/* the high bytes of bf16 values end up together */
	unsigned char v[8] = {1, 0xA0, 2, 0xA1, 3, 0xA2, 4, 0xA3}, w[8];
	cltfs_shuffle(2, v, w, 8);
	CHECK(w[0] == 1 && w[3] == 4 && w[4] == 0xA0 && w[7] == 0xA3);
}

/* Activation-like values: the top byte of each takes a few values (and
 * now and then a rare one, which exp4 escapes), the others are noise. */
static void fill_values(unsigned char *raw, size_t n, size_t es, unsigned long long *s)
{
	for (size_t i = 0; i < n; i++) {
		unsigned long long r = unit_rand(s);
		raw[i] = (unsigned char)(i % es != es - 1 ? r : r % 97 == 0 ? r >> 8 : 0x3c + r % 4);
	}
}

/* Encode and decode with every codec and element size; every damage is
 * refused as CLTFS_E_CORRUPT, never decoded into wrong bytes. */
static void test_frames(void)
{
	cltfs_zctx *z = cltfs_zctx_new();
	CHECK(z != NULL);
	unsigned long long s = 7;
	for (int codec = 0; codec < CLTFS_NCODECS; codec++)
		for (int dt = 0; dt < CLTFS_NDTYPES; dt++) {
			cltfs_codec c = (cltfs_codec)codec;
			size_t es = cltfs_dtype_size((cltfs_dtype)dt), n = 4096 * es + es, cap = cltfs_frame_bound(c, n);
			unsigned char *raw = malloc(n), *back = malloc(n), *frame = malloc(cap);
			fill_values(raw, n, es, &s);
			size_t flen;
			uint32_t crc = 0;
			CHECK(cltfs_frame_encode(z, c, 3, es, raw, n, frame, cap, &flen) == CLTFS_OK);
			CHECK(c == CLTFS_CODEC_RAW ? flen == n + CLTFS_RAW_HEADER : flen < n);
			CHECK(cltfs_frame_decode(z, c, es, frame, flen, back, n, &crc) == CLTFS_OK);
			CHECK(!memcmp(raw, back, n) && crc == cltfs_crc32(0, raw, n));
			/* a wrong expected size is refused before decoding */
			CHECK(cltfs_frame_decode(z, c, es, frame, flen, back, n - 1, NULL) == CLTFS_E_CORRUPT);
			/* every truncation, and a byte too many, fail cleanly */
			for (size_t cut = 0; cut < flen; cut += flen / 7 + 1)
				CHECK(cltfs_frame_decode(z, c, es, frame, cut, back, n, NULL) == CLTFS_E_CORRUPT);
			CHECK(cltfs_frame_decode(z, c, es, frame, flen + 1, back, n, NULL) == CLTFS_E_CORRUPT);
			/* a frame is refused as another codec's, naming what it is */
			cltfs_codec other = (cltfs_codec)((codec + 1) % CLTFS_NCODECS);
			CHECK(cltfs_frame_decode(z, other, es, frame, flen, back, n, NULL) == CLTFS_E_CORRUPT);
			CHECK(strstr(cltfs_errmsg(), cltfs_codec_name(c)) != NULL);
			/* a flipped byte anywhere: in the header, the middle, the end */
			size_t at[] = {1, 5, 9, flen / 3, flen / 2, flen - 1};
			for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
				frame[at[i]] ^= 0x55;
				CHECK(cltfs_frame_decode(z, c, es, frame, flen, back, n, NULL) == CLTFS_E_CORRUPT);
				frame[at[i]] ^= 0x55;
			}
			frame[flen / 2] ^= 0x55;
			CHECK(cltfs_frame_decode(z, c, es, frame, flen, back, n, NULL) == CLTFS_E_CORRUPT);
			CHECK(strstr(cltfs_errmsg(), "zstd") != NULL || strstr(cltfs_errmsg(), "frame") != NULL);
			frame[flen / 2] ^= 0x55;
			/* too small a dst is refused, not overrun */
			CHECK(cltfs_frame_encode(z, c, 1, es, raw, n, frame, c == CLTFS_CODEC_ZSTD ? 8 : flen - 1, &flen) ==
			      CLTFS_E_INVAL);
			free(raw);
			free(back);
			free(frame);
		}
	CHECK(cltfs_frame_decode(z, CLTFS_NCODECS, 2, "x", 1, (char[2]){0}, 2, NULL) == CLTFS_E_INVAL);
	cltfs_zctx_free(z);
}

/* Sizes around exp4's 32-value blocks and odd counts, empty chunks, data
 * that escapes every value, and a raw frame read in place. */
static void test_frame_edges(void)
{
	cltfs_zctx *z = cltfs_zctx_new();
	unsigned long long s = 11;
	static unsigned char raw[4096], back[4096], frame[8192];
	size_t lens[] = {0, 1, 2, 3, 31, 62, 63, 64, 65, 66, 67, 130, 4095, 4096};
	for (int codec = 0; codec < CLTFS_NCODECS; codec++)
		for (size_t es = 1; es <= 4; es++)
			for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
				cltfs_codec c = (cltfs_codec)codec;
				size_t n = lens[i], flen;
				uint32_t crc;
				CHECK(cltfs_frame_bound(c, n) <= sizeof frame);
				for (int noise = 0; noise < 2; noise++) {
					if (noise) /* every top byte distinct from the others' table: all escapes */
						for (size_t k = 0; k < n; k++)
							raw[k] = (unsigned char)unit_rand(&s);
					else
						fill_values(raw, n, es, &s);
					CHECK(cltfs_frame_encode(z, c, 1, es, raw, n, frame, cltfs_frame_bound(c, n), &flen) ==
					      CLTFS_OK);
					CHECK(flen <= cltfs_frame_bound(c, n));
					CHECK(cltfs_frame_decode(z, c, es, frame, flen, back, n, &crc) == CLTFS_OK);
					CHECK(!memcmp(raw, back, n) && crc == cltfs_crc32(0, raw, n));
				}
			}
	/* exp4: an escape the codes do not use, or a code with no escape */
	for (size_t k = 0; k < 64; k++) /* 15 common top bytes fill the table ... */
		raw[k] = (unsigned char)(k % 2 ? 0x30 + k / 2 % 15 : k);
	raw[1] = 0xee; /* ... and one rare one is escaped */
	size_t flen;
	CHECK(cltfs_frame_encode(z, CLTFS_CODEC_EXP4, 1, 2, raw, 64, frame, sizeof frame, &flen) == CLTFS_OK);
	CHECK(frame[12] == 1); /* one escape */
	frame[12] = 0;
	CHECK(cltfs_frame_decode(z, CLTFS_CODEC_EXP4, 2, frame, flen, back, 64, NULL) == CLTFS_E_CORRUPT);
	frame[12] = 1;
	frame[32] = (unsigned char)((frame[32] & 0x0f) | 0x20); /* value 1's code no longer 15 */
	CHECK(cltfs_frame_decode(z, CLTFS_CODEC_EXP4, 2, frame, flen, back, 64, NULL) == CLTFS_E_CORRUPT);
	/* a raw frame checked in place, as the store reads it */
	fill_values(raw, 1000, 2, &s);
	CHECK(cltfs_frame_encode(z, CLTFS_CODEC_RAW, 1, 2, raw, 1000, frame, sizeof frame, &flen) == CLTFS_OK);
	uint32_t crc;
	CHECK(cltfs_frame_check_raw(frame, frame + CLTFS_RAW_HEADER, 1000, &crc) == CLTFS_OK &&
	      crc == cltfs_crc32(0, raw, 1000));
	frame[CLTFS_RAW_HEADER + 500] ^= 1;
	CHECK(cltfs_frame_check_raw(frame, frame + CLTFS_RAW_HEADER, 1000, &crc) == CLTFS_E_CORRUPT);
	CHECK(strstr(cltfs_errmsg(), "CRC-32") != NULL);
	CHECK(cltfs_frame_check_raw(frame, frame + CLTFS_RAW_HEADER, 999, &crc) == CLTFS_E_CORRUPT);
	cltfs_zctx_free(z);
}

static void test_codec_names(void)
{
	cltfs_codec c;
	for (int i = 0; i < CLTFS_NCODECS; i++)
		CHECK(cltfs_codec_parse(cltfs_codec_name((cltfs_codec)i), &c) && c == (cltfs_codec)i &&
		      strstr(CLTFS_CODEC_NAMES, cltfs_codec_name((cltfs_codec)i)));
	CHECK(!cltfs_codec_parse("lz4", &c) && !cltfs_codec_parse("", &c) && !cltfs_codec_parse("ZSTD", &c));
	CHECK(!strcmp(cltfs_codec_name(CLTFS_CODEC_ZSTD), "zstd") && !strcmp(cltfs_codec_name(CLTFS_NCODECS), "unknown"));
}

static void test_crc(void)
{
	unsigned long long s = 3;
	unsigned char buf[10000];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (unsigned char)unit_rand(&s);
	uint32_t whole = (uint32_t)crc32(0, buf, sizeof buf);
	CHECK(cltfs_crc32(0, buf, sizeof buf) == whole);
	for (size_t cut = 0; cut <= sizeof buf; cut += 1234) {
		uint32_t a = cltfs_crc32(0, buf, cut), b = cltfs_crc32(0, buf + cut, sizeof buf - cut);
		CHECK(cltfs_crc32_combine(a, b, sizeof buf - cut) == whole);
	}
	/* every length and alignment around the vector paths' 64 and 16 bytes */
	for (size_t off = 0; off < 16; off++)
		for (size_t n = 0; n + off <= 600; n++)
			CHECK(cltfs_crc32(0x12345678u, buf + off, n) == (uint32_t)crc32(0x12345678u, buf + off, (uInt)n));
	static unsigned char zeros[100000];
	size_t ns[] = {0, 1, 2, 3, 64, 1000, 4095, 65536, 99999};
	for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
		CHECK(cltfs_crc32_zeros(ns[i]) == (uint32_t)crc32(0, zeros, (uInt)ns[i]));
}

static void test_records(void)
{
	cltfs_rec r = {cltfs_key(CLTFS_STREAM_MLP, 31, 12345), 1ull << 40, 777, 1 << 20, 0xdeadbeef, CLTFS_BF16,
		       CLTFS_CODEC_EXP4}, back;
	uint8_t b[CLTFS_REC_SIZE];
	cltfs_rec_encode(&r, b);
	CHECK(cltfs_rec_decode(b, &back) == CLTFS_OK);
	CHECK(back.key == r.key && back.offset == r.offset && back.csize == 777 && back.rsize == (1u << 20) &&
	      back.crc == 0xdeadbeef && back.dtype == CLTFS_BF16 && back.codec == CLTFS_CODEC_EXP4);
	/* the codec is byte 33, which records before codecs left 0: zstd */
	CHECK(b[33] == CLTFS_CODEC_EXP4);
	r.codec = CLTFS_CODEC_ZSTD;
	cltfs_rec_encode(&r, b);
	CHECK(b[33] == 0 && !b[34] && !b[35] && cltfs_rec_decode(b, &back) == CLTFS_OK && back.codec == CLTFS_CODEC_ZSTD);
	b[33] = CLTFS_NCODECS; /* a codec this cltfs does not know, in a record whose checksum holds */
	uint32_t rc = cltfs_crc32(0, b, 36);
	memcpy(b + 36, (uint8_t[4]){(uint8_t)rc, (uint8_t)(rc >> 8), (uint8_t)(rc >> 16), (uint8_t)(rc >> 24)}, 4);
	CHECK(cltfs_rec_decode(b, &back) == CLTFS_E_CORRUPT && strstr(cltfs_errmsg(), "unknown codec"));
	cltfs_rec_encode(&r, b);
	for (int i = 0; i < CLTFS_REC_SIZE; i++) { /* every single-byte flip is caught */
		b[i] ^= 1;
		CHECK(cltfs_rec_decode(b, &back) == CLTFS_E_CORRUPT);
		b[i] ^= 1;
	}
	char k[48];
	CHECK(!strcmp(cltfs_key_str(r.key, k, sizeof k), "mlp@31#12345"));
	uint8_t h[CLTFS_FILE_HEADER];
	cltfs_file_header(CLTFS_PACK_MAGIC, h);
	CHECK(cltfs_file_header_check(CLTFS_PACK_MAGIC, h) == CLTFS_OK);
	CHECK(cltfs_file_header_check(CLTFS_IDX_MAGIC, h) == CLTFS_E_FORMAT);
	CHECK(strstr(cltfs_errmsg(), "not a cltfs index file"));
	cltfs_file_header(CLTFS_IDX_MAGIC, h);
	CHECK(cltfs_file_header_check(CLTFS_PACK_MAGIC, h) == CLTFS_E_FORMAT);
	CHECK(strstr(cltfs_errmsg(), "not a cltfs pack file")); /* each kind named as itself */
}

static uint16_t f32_to(cltfs_dtype t, float f)
{
	uint16_t h;
	cltfs_convert(t, &h, CLTFS_F32, &f, 1);
	return h;
}

static float to_f32(cltfs_dtype t, uint16_t h)
{
	float f;
	cltfs_convert(CLTFS_F32, &f, t, &h, 1);
	return f;
}

static void test_convert(void)
{
	CHECK(f32_to(CLTFS_F16, 1.0f) == 0x3c00);
	CHECK(f32_to(CLTFS_F16, -2.0f) == 0xc000);
	CHECK(f32_to(CLTFS_F16, 65504.0f) == 0x7bff);
	CHECK(f32_to(CLTFS_F16, 65520.0f) == 0x7c00); /* rounds to infinity */
	CHECK(f32_to(CLTFS_F16, ldexpf(1, -24)) == 0x0001);
	CHECK(f32_to(CLTFS_F16, ldexpf(1, -25)) == 0x0000); /* tie to even */
	CHECK(f32_to(CLTFS_F16, ldexpf(3, -25)) == 0x0002);
	CHECK((f32_to(CLTFS_F16, NAN) & 0x7c00) == 0x7c00 && (f32_to(CLTFS_F16, NAN) & 0x3ff));
	CHECK(to_f32(CLTFS_F16, 0x0001) == ldexpf(1, -24));
	CHECK(to_f32(CLTFS_F16, 0x3555) == 0.333251953125f);
	CHECK(f32_to(CLTFS_BF16, 1.0f) == 0x3f80);
	CHECK(f32_to(CLTFS_BF16, 1.00390625f) == 0x3f80); /* halfway, even stays */
	CHECK(f32_to(CLTFS_BF16, 1.01171875f) == 0x3f82); /* halfway, odd rounds up */
	CHECK(to_f32(CLTFS_BF16, 0xc2f7) == -123.5f);
	/* every finite f16 survives f16 -> f32 -> f16 */
	int bad = 0;
	for (uint32_t h = 0; h < 0x10000; h++)
		if ((h & 0x7c00) != 0x7c00 && f32_to(CLTFS_F16, to_f32(CLTFS_F16, (uint16_t)h)) != h)
			bad++;
	CHECK(bad == 0);
	cltfs_dtype t;
	CHECK(cltfs_dtype_parse("bf16", &t) && t == CLTFS_BF16);
	CHECK(cltfs_dtype_parse("Float32", &t) && t == CLTFS_F32);
	CHECK(!cltfs_dtype_parse("int8", &t));
}

int main(void)
{
	RUN(test_shuffle);
	RUN(test_frames);
	RUN(test_frame_edges);
	RUN(test_codec_names);
	RUN(test_crc);
	RUN(test_records);
	RUN(test_convert);
	return unit_done("codec_frame");
}
