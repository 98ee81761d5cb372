/* capture/image.c against PIL and numpy: tests/image_ref.py writes images
 * of every kind the decoder takes, and what PIL's decode, PIL's resize and
 * transformers' CLIPImageProcessor steps make of them; every byte must be
 * equal, every float within 1e-6 (in practice equal).  Then the files that
 * must fail, and preprocessor_config.json parsing.  Runs from the repo
 * root (it calls /usr/bin/python3 tests/image_ref.py). */
#include "image.h"
#include "unit.h"

#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jpeglib.h>

#define MAX_CONFIGS 8

typedef struct {
	char name[32];
	cap_preproc p;
	float table[3][256]; /* numpy's final value of each byte, per channel */
} config;

static char dir[64];
static config configs[MAX_CONFIGS];
static int n_configs;

static struct {
	int decode, decode_ok, resize, resize_ok, pixels, pixels_ok, u8, u8_ok, bad, bad_ok;
	double max_err;
} st;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The whole file, which must be n bytes (n == 0: any). */
static void *slurp(const char *path, size_t n, size_t *got)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = len >= 0 && (n == 0 || (size_t)len == n) ? malloc((size_t)len + 1) : NULL;
	if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	if (buf) {
		buf[len] = 0;
		if (got)
			*got = (size_t)len;
	}
	return buf;
}

static bool same_bytes(const uint8_t *a, const char *ref, size_t n, const char *what)
{
	uint8_t *b = slurp(ref, n, NULL);
	bool ok = b && !memcmp(a, b, n);
	if (!ok && b) {
		size_t i = 0;
		while (a[i] == b[i])
			i++;
		fprintf(stderr, "%s: byte %zu of %zu: %d, PIL %d\n", what, i, n, a[i], b[i]);
	} else if (!b)
		fprintf(stderr, "%s: no reference %s of %zu bytes\n", what, ref, n);
	free(b);
	return ok;
}

static config *find_config(const char *name)
{
	for (int i = 0; i < n_configs; i++)
		if (!strcmp(configs[i].name, name))
			return &configs[i];
	return NULL;
}

/* ---- the cases of manifest.txt ---- */

static void case_decode(const char *file, int w, int h, const char *ref)
{
	uint8_t *rgb;
	int gw, gh;
	cltfs_err e = cap_image_decode(file, &rgb, &gw, &gh);
	st.decode++;
	if (e)
		fprintf(stderr, "decode %s: %s\n", file, cltfs_errmsg());
	bool ok = !e && gw == w && gh == h && same_bytes(rgb, ref, (size_t)w * h * 3, file);
	st.decode_ok += ok;
	CHECK(ok);
	if (!e)
		free(rgb);
}

/* PIL decodes it (ref is its RGB) or fails (ref "-"): do the same. */
static void case_agree(const char *file, const char *ref)
{
	uint8_t *rgb;
	int w, h;
	cltfs_err e = cap_image_decode(file, &rgb, &w, &h);
	if (!strcmp(ref, "-")) {
		if (!e)
			fprintf(stderr, "%s: decoded, but PIL fails\n", file);
		CHECK(e != CLTFS_OK);
	} else {
		if (e)
			fprintf(stderr, "%s: %s, but PIL decodes it\n", file, cltfs_errmsg());
		CHECK(!e && same_bytes(rgb, ref, (size_t)w * h * 3, file));
	}
	if (!e)
		free(rgb);
}

/* PIL's resize of PIL's decode: the resampler alone. */
static void case_resize(const char *ref_rgb, int w, int h, int flt, int dw, int dh, const char *ref)
{
	uint8_t *rgb = slurp(ref_rgb, (size_t)w * h * 3, NULL), *out = NULL;
	char what[700];
	snprintf(what, sizeof what, "%s filter %d to %dx%d", ref_rgb, flt, dw, dh);
	st.resize++;
	bool ok = rgb && !cap_image_resize_u8(rgb, w, h, dw, dh, flt, &out) &&
		  same_bytes(out, ref, (size_t)dw * dh * 3, what);
	st.resize_ok += ok;
	CHECK(ok);
	free(rgb);
	free(out);
}

static void case_config(const char *name, const char *json_path, const char *table)
{
	CHECK(n_configs < MAX_CONFIGS);
	if (n_configs >= MAX_CONFIGS)
		return;
	config *c = &configs[n_configs];
	size_t len = 0;
	char *json = slurp(json_path, 0, &len);
	float *t = slurp(table, sizeof c->table, NULL);
	cltfs_err e = json ? cap_preproc_parse(json, len, json_path, &c->p) : CLTFS_E_IO;
	if (e)
		fprintf(stderr, "%s: %s\n", json_path, cltfs_errmsg());
	CHECK(!e && t);
	if (!e && t) {
		snprintf(c->name, sizeof c->name, "%s", name);
		memcpy(c->table, t, sizeof c->table);
		n_configs++;
	}
	free(json);
	free(t);
}

/* Our resize of our decode, whole, against transformers' resized image. */
static void check_resized(const config *c, const char *file, int rw, int rh, const char *u8)
{
	uint8_t *rgb, *out = NULL;
	int w, h;
	char what[700];
	snprintf(what, sizeof what, "%s resized for %s", file, c->name);
	st.u8++;
	bool ok = !cap_image_decode(file, &rgb, &w, &h);
	if (ok) {
		ok = !cap_image_resize_u8(rgb, w, h, rw, rh, c->p.resample, &out) &&
		     same_bytes(out, u8, (size_t)rw * rh * 3, what);
		free(rgb);
	}
	st.u8_ok += ok;
	CHECK(ok);
	free(out);
}

static bool same_floats(const config *c, const float *px, const uint8_t *crop, size_t n, const char *file)
{
	size_t exact = 0;
	double worst = 0;
	for (int ch = 0; ch < 3; ch++)
		for (size_t i = 0; i < n; i++) {
			float want = c->table[ch][crop[ch * n + i]], got = px[ch * n + i];
			double d = fabs((double)got - want);
			exact += memcmp(&got, &want, sizeof got) == 0;
			worst = d > worst || d != d ? d : worst;
		}
	if (worst > st.max_err || worst != worst)
		st.max_err = worst;
	if (exact != 3 * n)
		fprintf(stderr, "%s (%s): %zu of %zu floats differ, by up to %g\n", file, c->name, 3 * n - exact, 3 * n,
			worst);
	return worst <= 1e-6;
}

static void case_pixels(const char *name, const char *file, int rw, int rh, const char *u8, int oh, int ow,
			const char *crop_file)
{
	const config *c = find_config(name);
	float *px = NULL;
	int h = 0, w = 0;
	CHECK(c != NULL);
	if (!c)
		return;
	if (strcmp(u8, "-"))
		check_resized(c, file, rw, rh, u8);
	cltfs_err e = cap_image_load(file, &c->p, &px, &h, &w);
	if (e)
		fprintf(stderr, "%s (%s): %s\n", file, name, cltfs_errmsg());
	uint8_t *crop = slurp(crop_file, (size_t)3 * oh * ow, NULL);
	st.pixels++;
	bool ok = !e && h == oh && w == ow && crop && same_floats(c, px, crop, (size_t)oh * ow, file);
	st.pixels_ok += ok;
	CHECK(ok);
	free(crop);
	free(px);
}

static cltfs_err code_of(const char *s)
{
	static const struct { const char *name; cltfs_err e; } codes[] = {
		{"NOTFOUND", CLTFS_E_NOTFOUND}, {"IO", CLTFS_E_IO}, {"FORMAT", CLTFS_E_FORMAT},
		{"CORRUPT", CLTFS_E_CORRUPT}, {"UNSUPPORTED", CLTFS_E_UNSUPPORTED},
	};
	for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
		if (!strcmp(s, codes[i].name))
			return codes[i].e;
	return CLTFS_OK;
}

static void case_bad(const char *file, const char *code, const char *text)
{
	float *px = NULL;
	int h, w;
	cltfs_err want = code_of(code), e = cap_image_load(file, &configs[0].p, &px, &h, &w);
	const char *msg = cltfs_errmsg();
	bool ok = want && e == want && strstr(msg, file) && (!strcmp(text, "-") || strstr(msg, text));
	if (!ok)
		fprintf(stderr, "%s: want %s (%s), got %s: %s\n", file, code, text, cltfs_errname(e), e ? msg : "");
	else if (getenv("CAPTURE_IMAGE_VERBOSE"))
		printf("  %-12s %s\n", code, msg);
	st.bad++;
	st.bad_ok += ok;
	CHECK(ok);
	CHECK(px == NULL);
	free(px);
}

/* 1x20000: resized, 336x6720000, which is never made whole. */
static void case_tall(const char *file)
{
	float *px = NULL;
	int h, w;
	double t = now();
	cltfs_err e = cap_image_load(file, &configs[0].p, &px, &h, &w);
	t = now() - t;
	CHECK(!e && h == 336 && w == 336 && t < 2.0);
	printf("  1x20000 image: %s in %.3f s\n", e ? cltfs_errmsg() : "preprocessed", t);
	free(px);
}

static void run_line(const char *line)
{
	char kind[16], name[32], a[512], b[512], c[512];
	int w, h, f, dw, dh;
	if (sscanf(line, "%15s", kind) != 1)
		return;
	if (!strcmp(kind, "decode") && sscanf(line, "%*s %511s %d %d %511s", a, &w, &h, b) == 4)
		case_decode(a, w, h, b);
	else if (!strcmp(kind, "agree") && sscanf(line, "%*s %511s %511s", a, b) == 2)
		case_agree(a, b);
	else if (!strcmp(kind, "resize") && sscanf(line, "%*s %511s %d %d %d %d %d %511s", a, &w, &h, &f, &dw, &dh, b) == 7)
		case_resize(a, w, h, f, dw, dh, b);
	else if (!strcmp(kind, "config") && sscanf(line, "%*s %511s %511s %511s", a, b, c) == 3)
		case_config(a, b, c);
	else if (!strcmp(kind, "pixels") &&
		 sscanf(line, "%*s %31s %511s %d %d %511s %d %d %511s", name, a, &w, &h, b, &dh, &dw, c) == 8)
		case_pixels(name, a, w, h, b, dh, dw, c);
	else if (!strcmp(kind, "bad") && sscanf(line, "%*s %511s %31s %511s", a, name, b) == 3)
		case_bad(a, name, b);
	else if (!strcmp(kind, "tall") && sscanf(line, "%*s %511s", a) == 1)
		case_tall(a);
	else {
		fprintf(stderr, "manifest: cannot read: %s", line);
		CHECK(0);
	}
}

/* JPEGs PIL does not write, made with libjpeg for image_ref.py to decode
 * with PIL: YCCK (Adobe transform 2), RGB stored as RGB (transform 0),
 * arithmetic coding with restart markers, 4:1:1 sampling. */
typedef struct {
	const char *name;
	J_COLOR_SPACE in, jpeg;
	int comps;
	bool arith;
	int restart, h0;
} jpeg_variant;

static void write_jpeg(const char *path, const jpeg_variant *v, int w, int h)
{
	struct jpeg_compress_struct c;
	struct jpeg_error_mgr err; /* its error_exit ends the test: fine for a fixture */
	FILE *f = fopen(path, "wb");
	uint8_t *row = malloc((size_t)w * v->comps);
	CHECK(f && row);
	if (!f || !row) {
		free(row);
		if (f)
			fclose(f);
		return;
	}
	c.err = jpeg_std_error(&err);
	jpeg_create_compress(&c);
	jpeg_stdio_dest(&c, f);
	c.image_width = (JDIMENSION)w;
	c.image_height = (JDIMENSION)h;
	c.input_components = v->comps;
	c.in_color_space = v->in;
	jpeg_set_defaults(&c);
	jpeg_set_colorspace(&c, v->jpeg);
	jpeg_set_quality(&c, 90, TRUE);
	c.arith_code = v->arith;
	c.restart_interval = (unsigned)v->restart;
	if (v->h0)
		c.comp_info[0].h_samp_factor = v->h0, c.comp_info[0].v_samp_factor = 1;
	jpeg_start_compress(&c, TRUE);
	unsigned long long seed = 88172645463325252ull;
	for (int y = 0; y < h; y++) {
		for (int i = 0; i < w * v->comps; i++)
			row[i] = (uint8_t)(128 + 100 * sin(i / 9.0 + y / 7.0) + (int)(unit_rand(&seed) % 40) - 20);
		jpeg_write_scanlines(&c, &row, 1);
	}
	jpeg_finish_compress(&c);
	jpeg_destroy_compress(&c);
	fclose(f);
	free(row);
}

static void write_extra_jpegs(void)
{
	static const jpeg_variant vs[] = {
		{"ycck", JCS_CMYK, JCS_YCCK, 4, false, 0, 0},
		{"adobe_rgb", JCS_RGB, JCS_RGB, 3, false, 0, 0},
		{"arith_restart", JCS_RGB, JCS_YCbCr, 3, true, 3, 0},
		{"s411", JCS_RGB, JCS_YCbCr, 3, false, 1, 4},
	};
	char path[160];
	snprintf(path, sizeof path, "%s/extra", dir);
	CHECK(mkdir(path, 0755) == 0);
	for (size_t i = 0; i < sizeof vs / sizeof *vs; i++) {
		snprintf(path, sizeof path, "%s/extra/%s_75x49.jpg", dir, vs[i].name);
		write_jpeg(path, &vs[i], 75, 49);
	}
}

static void test_reference(void)
{
	char cmd[256], path[128], line[2048];
	write_extra_jpegs();
	double t0 = now();
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 -W ignore tests/image_ref.py %s", dir);
	CHECK(system(cmd) == 0);
	double t1 = now();
	snprintf(path, sizeof path, "%s/manifest.txt", dir);
	FILE *m = fopen(path, "r");
	CHECK(m != NULL);
	while (m && fgets(line, sizeof line, m))
		run_line(line);
	if (m)
		fclose(m);
	CHECK(n_configs == 6 && st.decode > 150 && st.pixels > 1000 && st.bad >= 19);
	printf("  decoded as PIL: %d of %d images\n", st.decode_ok, st.decode);
	printf("  resized as PIL: %d of %d (5 filters), whole resized images %d of %d\n", st.resize_ok, st.resize,
	       st.u8_ok, st.u8);
	printf("  pixel values within 1e-6: %d of %d (%d configs), largest difference %g\n", st.pixels_ok,
	       st.pixels, n_configs, st.max_err);
	printf("  failed as they should: %d of %d bad files\n", st.bad_ok, st.bad);
	printf("  image_ref.py %.1f s, checks %.1f s\n", t1 - t0, now() - t1);
}

/* Time the llava-1.5 path on a 1024x768 JPEG. */
static void test_speed(void)
{
	char path[128];
	snprintf(path, sizeof path, "%s/img/photo_1024x768.jpg", dir);
	double t = now();
	int n = 0;
	for (; n < 20; n++) {
		float *px;
		int h, w;
		CHECK(cap_image_load(path, &configs[0].p, &px, &h, &w) == CLTFS_OK);
		free(px);
	}
	printf("  1024x768 JPEG to 3x336x336: %.1f ms each\n", (now() - t) / n * 1e3);
}

static void test_unreadable(void)
{
	char path[128];
	float *px = NULL;
	int h, w;
	snprintf(path, sizeof path, "%s/img/rgb_80x60.png", dir);
	CHECK(chmod(path, 0) == 0);
	if (geteuid() != 0) { /* root reads it anyway */
		CHECK(cap_image_load(path, &configs[0].p, &px, &h, &w) == CLTFS_E_IO);
		CHECK(strstr(cltfs_errmsg(), path) != NULL);
	}
	chmod(path, 0644);
}

/* Damaged copies of good files: flipped bytes, cut ends.  Each must give
 * an image or an error naming the file; ASan watches the error paths. */
static void test_mutations(void)
{
	static const char *const seeds[] = {"q95_80x60.jpg", "prog_80x60.jpg", "cmyk_80x60.jpg", "rgb_80x60.png",
					    "p16_80x60.png", "g4i_37x23.png", "c6d16i_37x23.png"};
	unsigned long long seed = 1;
	char src[160], dst[160];
	int ok = 0, failed = 0;
	snprintf(dst, sizeof dst, "%s/mutant", dir);
	for (size_t s = 0; s < sizeof seeds / sizeof *seeds; s++) {
		size_t n = 0;
		snprintf(src, sizeof src, "%s/img/%s", dir, seeds[s]);
		uint8_t *orig = slurp(src, 0, &n), *buf = malloc(n + 1);
		CHECK(orig && buf && n > 64);
		for (int i = 0; orig && buf && n > 64 && i < 80; i++) {
			size_t len = n;
			memcpy(buf, orig, n);
			if (i % 4 == 3)
				len = 8 + unit_rand(&seed) % (n - 8);
			else
				for (int k = 0; k < 1 + i % 6; k++)
					buf[16 + unit_rand(&seed) % (n - 16)] ^= (uint8_t)(1 + unit_rand(&seed) % 255);
			FILE *f = fopen(dst, "wb");
			CHECK(f && fwrite(buf, 1, len, f) == len);
			if (f)
				fclose(f);
			float *px = NULL;
			int h, w;
			cltfs_err e = cap_image_load(dst, &configs[1].p, &px, &h, &w);
			CHECK(e ? px == NULL && strstr(cltfs_errmsg(), dst) != NULL : px != NULL);
			ok += !e;
			failed += e != CLTFS_OK;
			free(px);
		}
		free(orig);
		free(buf);
	}
	printf("  damaged files: %d decoded, %d refused, none crashed\n", ok, failed);
}

static cltfs_err parse(const char *json, cap_preproc *p)
{
	return cap_preproc_parse(json, strlen(json), "/m/preprocessor_config.json", p);
}

static void test_parse_defaults(void)
{
	cap_preproc p;
	CHECK(parse("{}", &p) == CLTFS_OK);
	CHECK(p.shortest_edge == 224 && p.crop_h == 224 && p.crop_w == 224 && p.resample == 3);
	CHECK(p.do_resize && p.do_center_crop && p.do_rescale && p.do_normalize && p.do_convert_rgb);
	CHECK(p.rescale_factor == 1.0 / 255);
	CHECK(p.mean[0] == (float)0.48145466 && p.mean[1] == (float)0.4578275 && p.mean[2] == (float)0.40821073);
	CHECK(p.std[0] == (float)0.26862954 && p.std[1] == (float)0.26130258 && p.std[2] == (float)0.27577711);
	CHECK(parse("{\"size\": 336, \"crop_size\": [300, 200], \"image_mean\": 0.5, \"do_resize\": null}", &p) ==
	      CLTFS_OK);
	CHECK(p.shortest_edge == 336 && p.crop_h == 300 && p.crop_w == 200 && p.mean[2] == 0.5f && p.do_resize);
	CHECK(parse("{\"size\": {\"shortest_edge\": 336}, \"crop_size\": {\"height\": 336, \"width\": 330},"
		    "\"resample\": 2, \"do_normalize\": false, \"rescale_factor\": 0.5}",
		    &p) == CLTFS_OK);
	CHECK(p.crop_w == 330 && p.resample == 2 && !p.do_normalize && p.rescale_factor == 0.5);
}

static void test_parse_errors(void)
{
	static const struct { const char *json; cltfs_err e; const char *text; } cases[] = {
		{"{", CLTFS_E_FORMAT, "JSON"},
		{"[1]", CLTFS_E_FORMAT, "object"},
		{"{\"do_resize\": 1}", CLTFS_E_FORMAT, "do_resize"},
		{"{\"size\": {\"height\": 336, \"width\": 336}}", CLTFS_E_UNSUPPORTED, "size"},
		{"{\"size\": [336, 336]}", CLTFS_E_UNSUPPORTED, "size"},
		{"{\"size\": {\"shortest_edge\": 336, \"longest_edge\": 600}}", CLTFS_E_UNSUPPORTED, "longest_edge"},
		{"{\"size\": {\"longest_edge\": 600}}", CLTFS_E_FORMAT, "size"},
		{"{\"size\": 0}", CLTFS_E_FORMAT, "size"},
		{"{\"size\": 33.5}", CLTFS_E_FORMAT, "size"},
		{"{\"crop_size\": {\"shortest_edge\": 224}}", CLTFS_E_FORMAT, "crop_size"},
		{"{\"crop_size\": {\"height\": 70000, \"width\": 2}}", CLTFS_E_FORMAT, "crop_size.height"},
		{"{\"resample\": 0}", CLTFS_E_UNSUPPORTED, "NEAREST"},
		{"{\"resample\": 6}", CLTFS_E_FORMAT, "resample"},
		{"{\"image_mean\": [0.5, 0.5]}", CLTFS_E_FORMAT, "image_mean"},
		{"{\"image_std\": [0.5, 0, 0.5]}", CLTFS_E_FORMAT, "image_std"},
		{"{\"rescale_factor\": \"1/255\"}", CLTFS_E_FORMAT, "rescale_factor"},
		{"{\"image_processor_type\": \"SiglipImageProcessor\"}", CLTFS_E_UNSUPPORTED, "Siglip"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		cap_preproc p = {.shortest_edge = -7};
		cltfs_err e = parse(cases[i].json, &p);
		bool ok = e == cases[i].e && strstr(cltfs_errmsg(), "/m/preprocessor_config.json") &&
			  strstr(cltfs_errmsg(), cases[i].text) && p.shortest_edge == -7;
		if (!ok)
			fprintf(stderr, "%s: %s: %s\n", cases[i].json, cltfs_errname(e), cltfs_errmsg());
		CHECK(ok);
	}
}

static void test_misuse(void)
{
	uint8_t rgb[12] = {0}, *out = (uint8_t *)1;
	float *px = (float *)1;
	int h, w;
	CHECK(cap_image_resize_u8(rgb, 2, 2, 4, 4, 0, &out) == CLTFS_E_INVAL && out == NULL);
	CHECK(cap_image_resize_u8(rgb, 2, 2, 0, 4, 3, &out) == CLTFS_E_INVAL && out == NULL);
	cap_preproc p = configs[0].p;
	p.resample = 9;
	CHECK(cap_image_load("/nonexistent.png", &p, &px, &h, &w) == CLTFS_E_INVAL && px == NULL);
	p = configs[0].p;
	p.crop_h = 0;
	CHECK(cap_image_load("/nonexistent.png", &p, &px, &h, &w) == CLTFS_E_INVAL);
}

int main(void)
{
	snprintf(dir, sizeof dir, "/tmp/cltfs-image-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_parse_defaults);
	RUN(test_parse_errors);
	RUN(test_reference);
	if (n_configs > 0) {
		RUN(test_speed);
		RUN(test_unreadable);
		RUN(test_mutations);
		RUN(test_misuse);
	}
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return unit_done("capture_image");
}
