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

static void test_frames(void)
{
	cltfs_zctx *z = cltfs_zctx_new();
	CHECK(z != NULL);
	unsigned long long s = 7;
	for (int dt = 0; dt < CLTFS_NDTYPES; dt++) {
		size_t es = cltfs_dtype_size((cltfs_dtype)dt), n = 4096 * es + es;
		unsigned char *raw = malloc(n), *back = malloc(n), *frame = malloc(cltfs_frame_bound(n));
		for (size_t i = 0; i < n; i++) /* activation-like: few distinct high bytes */
			raw[i] = (unsigned char)(i % es == es - 1 ? 0x3c + unit_rand(&s) % 4 : unit_rand(&s));
		size_t flen;
		CHECK(cltfs_frame_encode(z, 3, es, raw, n, frame, cltfs_frame_bound(n), &flen) == CLTFS_OK);
		CHECK(flen < n);
		CHECK(cltfs_frame_decode(z, es, frame, flen, back, n) == CLTFS_OK);
		CHECK(!memcmp(raw, back, n));
		/* a wrong expected size is refused before decoding */
		CHECK(cltfs_frame_decode(z, es, frame, flen, back, n - 1) == CLTFS_E_CORRUPT);
		/* every truncation fails cleanly */
		for (size_t cut = 0; cut < flen; cut += flen / 7 + 1)
			CHECK(cltfs_frame_decode(z, es, frame, cut, back, n) == CLTFS_E_CORRUPT);
		/* a flipped byte in the payload fails the checksum or the decoder */
		frame[flen / 2] ^= 0x55;
		CHECK(cltfs_frame_decode(z, es, frame, flen, back, n) == CLTFS_E_CORRUPT);
		CHECK(strstr(cltfs_errmsg(), "zstd") != NULL || strstr(cltfs_errmsg(), "frame") != NULL);
		free(raw);
		free(back);
		free(frame);
	}
	cltfs_zctx_free(z);
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
	static unsigned char zeros[100000];
	size_t ns[] = {0, 1, 2, 3, 64, 1000, 4095, 65536, 99999};
	for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
		CHECK(cltfs_crc32_zeros(ns[i]) == (uint32_t)crc32(0, zeros, (uInt)ns[i]));
}

static void test_records(void)
{
	cltfs_rec r = {cltfs_key(CLTFS_STREAM_MLP, 31, 12345), 1ull << 40, 777, 1 << 20, 0xdeadbeef, CLTFS_BF16}, back;
	uint8_t b[CLTFS_REC_SIZE];
	cltfs_rec_encode(&r, b);
	CHECK(cltfs_rec_decode(b, &back) == CLTFS_OK);
	CHECK(back.key == r.key && back.offset == r.offset && back.csize == 777 && back.rsize == (1u << 20) &&
	      back.crc == 0xdeadbeef && back.dtype == CLTFS_BF16);
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
	RUN(test_crc);
	RUN(test_records);
	RUN(test_convert);
	return unit_done("codec_frame");
}
