/* image.c: CLIPImageProcessor's preprocessing, bit for bit, without Python.
 *
 * transformers feeds LLaVA-1.5 the pixels of
 *   PIL.Image.open(path).convert("RGB")  ->  resize (PIL, shortest edge)
 *   -> center crop (numpy slicing, zero padding) -> rescale (float64
 *   multiply, cast to float32) -> normalize ((x - mean) / std in float32).
 * Each step here is the same arithmetic, so the floats are equal, not close:
 *
 *   decode  - JPEG through the libjpeg-turbo PIL itself links, with PIL's
 *             settings (the library's defaults: islow DCT, fancy
 *             upsampling); PNG through libpng, with PIL's conversions to
 *             RGB: alpha dropped (not composited), palette entries past the
 *             PLTE a grey ramp, 16-bit samples by their high byte except
 *             16-bit grey, which PIL opens as mode "I" and clips at 255.
 *   resize  - Pillow's ImagingResample: per output pixel, filter weights
 *             normalised to sum 1, rounded to 22-bit fixed point, a
 *             horizontal pass then a vertical one, a pass skipped when its
 *             side keeps its size.  Every output pixel depends only on its
 *             own weights, so only the pixels the crop keeps are computed:
 *             the result is the same, and a 1x60000 image does not become a
 *             336x20M intermediate.
 *   floats  - per channel a 256-entry table of the float32 numpy computes.
 *
 * libjpeg and libpng report errors by longjmp.  The functions that call
 * setjmp keep everything they allocate in a job struct owned by their
 * caller, never in their own locals, so nothing is clobbered and the
 * caller frees it on every path.
 */
#include "image.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#if defined(__clang__)
/* A fused multiply-add would change the filter weights; GCC does not fuse
 * in -std=c11 mode, clang needs telling. */
#pragma STDC FP_CONTRACT OFF
#endif

#define MAX_SIDE 65535              /* a decoded image, a crop */
#define MAX_PIXELS (256u << 20)     /* a decoded image, an output */
#define MAX_RESIZED (1 << 28)       /* a side after resizing (only the crop is made) */
#define MAX_SCANS 1000              /* a progressive JPEG's; real ones have about 10 */
#define PRECISION_BITS (32 - 8 - 2) /* Pillow's fixed point for 8-bit images */

/* ---- preprocessor_config.json ---- */

/* transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, as doubles: numpy makes
 * float32 of the Python floats, and so does the cast. */
static const double clip_mean[3] = {0.48145466, 0.4578275, 0.40821073};
static const double clip_std[3] = {0.26862954, 0.26130258, 0.27577711};

static cltfs_err bad_field(const char *path, const char *field, const char *why)
{
	return cltfs_fail(CLTFS_E_FORMAT, "%s: field '%s': %s", path, field, why);
}

/* A field, or NULL when absent or null: transformers treats None as unset. */
static const cJSON *field(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNull(v) ? NULL : v;
}

static cltfs_err get_bool(const cJSON *o, const char *k, bool *out, const char *path)
{
	const cJSON *v = field(o, k);
	if (!v)
		return CLTFS_OK;
	if (!cJSON_IsBool(v))
		return bad_field(path, k, "expected true or false");
	*out = cJSON_IsTrue(v);
	return CLTFS_OK;
}

/* A side length: an integer in [1, MAX_SIDE]. */
static cltfs_err get_side(const cJSON *v, const char *k, int *out, const char *path)
{
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
		return bad_field(path, k, "expected an integer");
	if (v->valuedouble < 1 || v->valuedouble > MAX_SIDE)
		return bad_field(path, k, "out of range [1, 65535]");
	*out = (int)v->valuedouble;
	return CLTFS_OK;
}

/* size: {"shortest_edge": n} or n.  A longest_edge beside it is refused:
 * transformers 4's CLIP resize ignores it, 5's caps the long side by it. */
static cltfs_err get_size(const cJSON *o, int *se, const char *path)
{
	const cJSON *v = field(o, "size");
	if (!v)
		return CLTFS_OK;
	if (cJSON_IsNumber(v))
		return get_side(v, "size", se, path);
	const cJSON *s = cJSON_IsObject(v) ? field(v, "shortest_edge") : NULL;
	if (s && field(v, "longest_edge"))
		return cltfs_fail(CLTFS_E_UNSUPPORTED,
				  "%s: field 'size': longest_edge is not supported (transformers versions differ on it)",
				  path);
	if (s)
		return get_side(s, "size.shortest_edge", se, path);
	if (cJSON_IsArray(v) || (cJSON_IsObject(v) && field(v, "height")))
		return cltfs_fail(CLTFS_E_UNSUPPORTED,
				  "%s: field 'size': a fixed height and width (no aspect ratio kept) is not supported; "
				  "cltfs resizes by size.shortest_edge",
				  path);
	return bad_field(path, "size", "expected {\"shortest_edge\": n} or an integer");
}

/* crop_size: {"height": h, "width": w}, [h, w] or n. */
static cltfs_err get_crop(const cJSON *o, int *h, int *w, const char *path)
{
	const cJSON *v = field(o, "crop_size");
	if (!v)
		return CLTFS_OK;
	if (cJSON_IsNumber(v)) {
		cltfs_err e = get_side(v, "crop_size", h, path);
		*w = *h;
		return e;
	}
	const cJSON *vh = NULL, *vw = NULL;
	if (cJSON_IsObject(v)) {
		vh = field(v, "height");
		vw = field(v, "width");
	} else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2) {
		vh = cJSON_GetArrayItem(v, 0);
		vw = cJSON_GetArrayItem(v, 1);
	}
	if (!vh || !vw)
		return bad_field(path, "crop_size", "expected {\"height\": h, \"width\": w} or an integer");
	cltfs_err e = get_side(vh, "crop_size.height", h, path);
	return e ? e : get_side(vw, "crop_size.width", w, path);
}

/* image_mean / image_std: three numbers, or one for every channel. */
static cltfs_err get_triple(const cJSON *o, const char *k, float out[3], const char *path)
{
	const cJSON *v = field(o, k);
	if (!v)
		return CLTFS_OK;
	if (cJSON_IsNumber(v)) {
		out[0] = out[1] = out[2] = (float)v->valuedouble;
		return CLTFS_OK;
	}
	if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 3)
		return bad_field(path, k, "expected 3 numbers (one per RGB channel) or a number");
	for (int c = 0; c < 3; c++) {
		const cJSON *x = cJSON_GetArrayItem(v, c);
		if (!cJSON_IsNumber(x))
			return bad_field(path, k, "expected 3 numbers (one per RGB channel) or a number");
		out[c] = (float)x->valuedouble;
	}
	return CLTFS_OK;
}

static cltfs_err get_numbers(const cJSON *o, cap_preproc *p, const char *path)
{
	const cJSON *v = field(o, "rescale_factor");
	if (v && (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)))
		return bad_field(path, "rescale_factor", "expected a number");
	if (v)
		p->rescale_factor = v->valuedouble;
	cltfs_err e = get_triple(o, "image_mean", p->mean, path);
	if (!e)
		e = get_triple(o, "image_std", p->std, path);
	for (int c = 0; !e && c < 3; c++)
		if (p->std[c] == 0 || !isfinite(p->std[c]) || !isfinite(p->mean[c]))
			e = bad_field(path, "image_std", "a zero or non-finite value");
	return e;
}

static cltfs_err get_resample(const cJSON *o, int *out, const char *path)
{
	const cJSON *v = field(o, "resample");
	if (!v)
		return CLTFS_OK;
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
	    v->valuedouble > CAP_RESAMPLE_HAMMING)
		return bad_field(path, "resample", "expected a PIL filter number 0-5");
	if (v->valuedouble == CAP_RESAMPLE_NEAREST)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: field 'resample': NEAREST (0) is not supported", path);
	*out = (int)v->valuedouble;
	return CLTFS_OK;
}

/* Another processor (SigLIP, LLaVA-NeXT's any-resolution) would need
 * other steps: refuse it rather than feed the model wrong pixels. */
static cltfs_err check_type(const cJSON *o, const char *path)
{
	const char *keys[] = {"image_processor_type", "feature_extractor_type"};
	for (int i = 0; i < 2; i++) {
		const cJSON *v = field(o, keys[i]);
		if (v && (!cJSON_IsString(v) || strncmp(v->valuestring, "CLIP", 4)))
			return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: field '%s': %s, but cltfs does CLIPImageProcessor's steps only",
					  path, keys[i], cJSON_IsString(v) ? v->valuestring : "not a string");
	}
	return CLTFS_OK;
}

static void preproc_defaults(cap_preproc *p)
{
	*p = (cap_preproc){
		.shortest_edge = 224, .crop_h = 224, .crop_w = 224,
		.do_resize = true, .do_center_crop = true, .do_rescale = true,
		.do_normalize = true, .do_convert_rgb = true,
		.rescale_factor = 1.0 / 255, .resample = CAP_RESAMPLE_BICUBIC,
	};
	for (int c = 0; c < 3; c++) {
		p->mean[c] = (float)clip_mean[c];
		p->std[c] = (float)clip_std[c];
	}
}

static cltfs_err parse_fields(const cJSON *o, const char *path, cap_preproc *p)
{
	static const char *const flags[] = {"do_resize", "do_center_crop", "do_rescale", "do_normalize",
					    "do_convert_rgb"};
	bool *dst[] = {&p->do_resize, &p->do_center_crop, &p->do_rescale, &p->do_normalize, &p->do_convert_rgb};
	cltfs_err e = check_type(o, path);
	for (int i = 0; !e && i < 5; i++)
		e = get_bool(o, flags[i], dst[i], path);
	if (!e)
		e = get_size(o, &p->shortest_edge, path);
	if (!e)
		e = get_crop(o, &p->crop_h, &p->crop_w, path);
	if (!e)
		e = get_numbers(o, p, path);
	return e ? e : get_resample(o, &p->resample, path);
}

cltfs_err cap_preproc_parse(const char *json, size_t len, const char *path, cap_preproc *out)
{
	cap_preproc p;
	preproc_defaults(&p);
	cJSON *o = cJSON_ParseWithLength(json, len);
	if (!o)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not valid JSON", path);
	cltfs_err e = cJSON_IsObject(o) ? parse_fields(o, path, &p)
					: cltfs_fail(CLTFS_E_FORMAT, "%s: expected a JSON object", path);
	cJSON_Delete(o);
	if (!e)
		*out = p;
	return e;
}

/* ---- opening a file: which format, by its first bytes ---- */

#define HEAD_LEN 24 /* a PNG's signature and IHDR up to the height */

static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static cltfs_err open_image(const char *path, FILE **out, uint8_t head[HEAD_LEN], size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return cltfs_fail(errno == ENOENT ? CLTFS_E_NOTFOUND : CLTFS_E_IO, "%s: cannot open: %s", path,
				  strerror(errno));
	struct stat st;
	cltfs_err e = CLTFS_OK;
	if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode))
		e = cltfs_fail(CLTFS_E_IO, "%s: is a directory, not an image", path);
	else if ((*n = fread(head, 1, HEAD_LEN, f)) < HEAD_LEN && ferror(f))
		e = cltfs_fail(CLTFS_E_IO, "%s: read failed: %s", path, strerror(errno));
	else if (*n == 0)
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: empty file, not an image", path);
	else if (fseek(f, 0, SEEK_SET) != 0)
		e = cltfs_fail(CLTFS_E_IO, "%s: cannot seek: %s", path, strerror(errno));
	if (e) {
		fclose(f);
		return e;
	}
	*out = f;
	return CLTFS_OK;
}

/* Formats PIL would open but cltfs does not: say so, not "not an image". */
static cltfs_err unknown_format(const char *path, const uint8_t *h, size_t n)
{
	static const struct {
		const char *magic;
		size_t len;
		const char *name;
	} known[] = {
		{"GIF8", 4, "GIF"}, {"BM", 2, "BMP"}, {"II*\0", 4, "TIFF"}, {"MM\0*", 4, "TIFF"},
		{"\0\0\0\fjP  ", 8, "JPEG 2000"}, {"\xff\x4f\xff\x51", 4, "JPEG 2000"},
	};
	for (size_t i = 0; i < sizeof known / sizeof *known; i++)
		if (n >= known[i].len && !memcmp(h, known[i].magic, known[i].len))
			return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: a %s image; cltfs reads PNG and JPEG only", path,
					  known[i].name);
	if (n >= 12 && !memcmp(h, "RIFF", 4) && !memcmp(h + 8, "WEBP", 4))
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: a WebP image; cltfs reads PNG and JPEG only", path);
	return cltfs_fail(CLTFS_E_FORMAT, "%s: not an image (neither PNG nor JPEG by its first bytes)", path);
}

static cltfs_err check_size(const char *path, uint32_t w, uint32_t h)
{
	if (w == 0 || h == 0)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: the image has zero width or height (%ux%u)", path, w, h);
	if (w > MAX_SIDE || h > MAX_SIDE || (uint64_t)w * h > MAX_PIXELS)
		return cltfs_fail(CLTFS_E_UNSUPPORTED,
				  "%s: the image is %ux%u; cltfs takes at most 65535 pixels a side and 256 Mpixel", path,
				  w, h);
	return CLTFS_OK;
}

static cltfs_err alloc_rgb(const char *path, int w, int h, uint8_t **rgb)
{
	*rgb = malloc((size_t)w * h * 3);
	return *rgb ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory for a %dx%d image", path, w, h);
}

/* ---- JPEG ---- */

typedef struct {
	struct jpeg_error_mgr pub;
	jmp_buf jb;
	bool eof;   /* the data ended: libjpeg made up the rest */
	bool scans; /* too many progressive scans */
} jpeg_fail;

typedef struct {
	struct jpeg_decompress_struct ci;
	jpeg_fail err;
	struct jpeg_progress_mgr prog;
	bool created;
	uint8_t *rgb, *row;
} jpeg_job;

static void jpeg_on_error(j_common_ptr ci)
{
	longjmp(((jpeg_fail *)ci->err)->jb, 1);
}

/* PIL ignores libjpeg's warnings except one in effect: where the file
 * ends, libjpeg's stdio source warns and invents an end of image, but
 * PIL's source suspends and PIL reports "image file is truncated". */
static void jpeg_on_message(j_common_ptr ci, int level)
{
	if (level < 0 && ci->err->msg_code == JWRN_JPEG_EOF)
		((jpeg_fail *)ci->err)->eof = true;
}

/* Each scan of a progressive JPEG re-reads the whole coefficient buffer:
 * a crafted file with thousands of tiny scans would take minutes. */
static void jpeg_on_progress(j_common_ptr ci)
{
	jpeg_fail *f = (jpeg_fail *)ci->err;
	if (((j_decompress_ptr)ci)->input_scan_number > MAX_SCANS) {
		f->scans = true;
		longjmp(f->jb, 1);
	}
}

static cltfs_err jpeg_truncated(FILE *f, const char *path)
{
	if (ferror(f))
		return cltfs_fail(CLTFS_E_IO, "%s: read failed", path);
	return cltfs_fail(CLTFS_E_CORRUPT, "%s: truncated JPEG data (the file ends inside the image)", path);
}

static cltfs_err jpeg_failed(jpeg_job *j, FILE *f, const char *path)
{
	char msg[JMSG_LENGTH_MAX];
	if (j->err.scans)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: a progressive JPEG of more than %d scans", path, MAX_SCANS);
	if (ferror(f) || j->err.eof) /* libjpeg gave up on the end it invented */
		return jpeg_truncated(f, path);
	if (j->err.pub.msg_code == JERR_EMPTY_IMAGE)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: the image has zero width or height", path);
	j->err.pub.format_message((j_common_ptr)&j->ci, msg);
	return cltfs_fail(CLTFS_E_CORRUPT, "%s: corrupt JPEG data: %s", path, msg);
}

/* The output colour space PIL asks for, by the number of components
 * (JpegImagePlugin: 1 "L", 3 "RGB", 4 "CMYK"). */
static cltfs_err jpeg_setup(jpeg_job *j, const char *path)
{
	switch (j->ci.num_components) {
	case 1: j->ci.out_color_space = JCS_GRAYSCALE; break;
	case 3: j->ci.out_color_space = JCS_RGB; break;
	case 4: j->ci.out_color_space = JCS_CMYK; break;
	default:
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: a JPEG of %d components; PIL reads 1, 3 or 4", path,
				  j->ci.num_components);
	}
	return check_size(path, j->ci.image_width, j->ci.image_height);
}

/* PIL reads CMYK JPEGs as Adobe writes them, inverted (rawmode "CMYK;I"),
 * then converts with Convert.c's cmyk2rgb: nk - nk * c / 255, rounded by
 * its MULDIV255. */
static uint8_t cmyk_channel(int c, int k)
{
	int ci = 255 - c, ki = 255 - k; /* as PIL holds them */
	int nk = 255 - ki, t = ci * nk + 128;
	int v = nk - (((t >> 8) + t) >> 8);
	return (uint8_t)(v <= 0 ? 0 : v < 256 ? v : 255);
}

static void jpeg_row_to_rgb(const uint8_t *in, int comps, int w, uint8_t *out)
{
	for (int x = 0; x < w; x++, out += 3, in += comps) {
		if (comps == 1)
			out[0] = out[1] = out[2] = in[0];
		else if (comps == 3)
			memcpy(out, in, 3);
		else
			for (int c = 0; c < 3; c++)
				out[c] = cmyk_channel(in[c], in[3]);
	}
}

/* The part that may longjmp.  Only j (caller-owned) changes. */
static cltfs_err jpeg_run(jpeg_job *j, FILE *f, const char *path)
{
	if (setjmp(j->err.jb))
		return jpeg_failed(j, f, path);
	jpeg_create_decompress(&j->ci);
	j->created = true;
	j->ci.progress = &j->prog;
	jpeg_stdio_src(&j->ci, f);
	jpeg_read_header(&j->ci, TRUE);
	cltfs_err e = jpeg_setup(j, path);
	if (e)
		return e;
	jpeg_start_decompress(&j->ci);
	if (j->err.eof) /* a multi-scan file is read whole here */
		return jpeg_truncated(f, path);
	int w = (int)j->ci.output_width, h = (int)j->ci.output_height, comps = j->ci.output_components;
	if ((e = alloc_rgb(path, w, h, &j->rgb)))
		return e;
	if (!(j->row = malloc((size_t)w * comps)))
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	while (j->ci.output_scanline < j->ci.output_height) {
		uint8_t *out = j->rgb + (size_t)j->ci.output_scanline * w * 3;
		jpeg_read_scanlines(&j->ci, &j->row, 1);
		if (j->err.eof)
			return jpeg_truncated(f, path);
		jpeg_row_to_rgb(j->row, comps, w, out);
	}
	/* Every row is in: PIL no longer needs the end marker either. */
	jpeg_finish_decompress(&j->ci);
	return CLTFS_OK;
}

static cltfs_err jpeg_decode(FILE *f, const char *path, uint8_t **rgb, int *w, int *h)
{
	jpeg_job j;
	memset(&j, 0, sizeof j);
	j.ci.err = jpeg_std_error(&j.err.pub);
	j.err.pub.error_exit = jpeg_on_error;
	j.err.pub.emit_message = jpeg_on_message;
	j.prog.progress_monitor = jpeg_on_progress;
	cltfs_err e = jpeg_run(&j, f, path);
	if (!e) {
		*rgb = j.rgb;
		*w = (int)j.ci.output_width;
		*h = (int)j.ci.output_height;
	} else
		free(j.rgb);
	free(j.row);
	if (j.created)
		jpeg_destroy_decompress(&j.ci);
	return e;
}

/* ---- PNG ---- */

/* libpng's progressive reader, fed the file a piece at a time: like PIL's
 * decoder it has every row that the bytes present hold, and stops at the
 * last one.  So a file cut or damaged after its last row (the zlib
 * checksum, the last IDAT's CRC, IEND) gives the image, as PIL gives it,
 * and one cut before it is truncated.  Interlaced rows arrive as the rows
 * of each pass's sub-image; they are put in place here. */
typedef struct {
	png_structp png;
	png_infop info;
	const char *path;
	uint32_t w, h;
	int depth, type, channels, interlace;
	uint8_t palette[256 * 3];
	uint8_t *rgb;
	uint64_t rows_left; /* sub-image rows yet to come */
	bool ended;         /* IEND came */
	cltfs_err failed;   /* why a callback stopped libpng */
	char msg[200];      /* libpng's error */
	char warning[200];  /* libpng's last warning */
} png_job;

static bool png_complete(const png_job *j)
{
	return j->rgb && j->rows_left == 0;
}

static void png_on_error(png_structp png, png_const_charp msg)
{
	png_job *j = png_get_error_ptr(png);
	snprintf(j->msg, sizeof j->msg, "%s", msg);
	png_longjmp(png, 1);
}

/* PIL does not stop for these either; the last one may say why an image
 * is short. */
static void png_on_warning(png_structp png, png_const_charp msg)
{
	png_job *j = png_get_error_ptr(png);
	snprintf(j->warning, sizeof j->warning, "%s", msg);
}

/* Stop libpng from a callback with a cltfs error. */
static void png_stop(png_job *j, cltfs_err e)
{
	j->failed = e;
	png_error(j->png, "stopped");
}

/* PIL's palette: PLTE's entries, then its grey ramp up to 256. */
static void png_palette(png_job *j)
{
	png_colorp pal = NULL;
	int n = 0;
	for (int i = 0; i < 256; i++)
		j->palette[3 * i] = j->palette[3 * i + 1] = j->palette[3 * i + 2] = (uint8_t)i;
	if (png_get_PLTE(j->png, j->info, &pal, &n) == PNG_INFO_PLTE)
		for (int i = 0; i < n && i < 256; i++) {
			j->palette[3 * i] = pal[i].red;
			j->palette[3 * i + 1] = pal[i].green;
			j->palette[3 * i + 2] = pal[i].blue;
		}
}

/* Sample c of pixel x of a row, 8 bits as PIL makes it: the high byte of a
 * 16-bit sample ("RGB;16B" and the like), except 16-bit grey, which PIL
 * opens as mode "I" and i2rgb clips. */
static uint8_t png_sample(const png_job *j, const uint8_t *row, uint32_t x, int c)
{
	if (j->depth < 16)
		return row[x * j->channels + c];
	const uint8_t *s = row + 2 * (x * j->channels + c);
	if (j->type != PNG_COLOR_TYPE_GRAY)
		return s[0];
	return s[0] ? 255 : s[1];
}

/* n pixels of a row to RGB, step pixels apart in out. */
static void png_row_to_rgb(const png_job *j, const uint8_t *row, uint32_t n, uint8_t *out, size_t step)
{
	for (uint32_t x = 0; x < n; x++, out += 3 * step) {
		if (j->type == PNG_COLOR_TYPE_PALETTE)
			memcpy(out, j->palette + 3 * row[x], 3);
		else if (j->channels >= 3) /* RGB, RGBA: alpha dropped */
			for (int c = 0; c < 3; c++)
				out[c] = png_sample(j, row, x, c);
		else /* grey, grey + alpha */
			out[0] = out[1] = out[2] = png_sample(j, row, x, 0);
	}
}

static uint64_t png_rows_expected(const png_job *j)
{
	if (j->interlace == PNG_INTERLACE_NONE)
		return j->h;
	uint64_t n = 0;
	for (int p = 0; p < 7; p++) /* libpng skips a pass with no pixels */
		if (PNG_PASS_COLS(j->w, p) && PNG_PASS_ROWS(j->h, p))
			n += PNG_PASS_ROWS(j->h, p);
	return n;
}

/* The header is in.  Transforms: indices and grey samples of 1, 2 or 4
 * bits to a byte each (grey scaled up as PIL's "L;2" / "L;4" unpackers
 * do); nothing else. */
static void png_on_info(png_structp png, png_infop info)
{
	png_job *j = png_get_progressive_ptr(png);
	j->w = png_get_image_width(png, info);
	j->h = png_get_image_height(png, info);
	j->type = png_get_color_type(png, info);
	j->interlace = png_get_interlace_type(png, info);
	cltfs_err e = check_size(j->path, j->w, j->h);
	if (e)
		png_stop(j, e);
	if (j->type == PNG_COLOR_TYPE_PALETTE) {
		png_set_packing(png);
		png_palette(j);
	} else if (png_get_bit_depth(png, info) < 8)
		png_set_expand_gray_1_2_4_to_8(png);
	png_read_update_info(png, info);
	j->depth = png_get_bit_depth(png, info);
	j->channels = png_get_channels(png, info);
	j->rows_left = png_rows_expected(j);
	if ((e = alloc_rgb(j->path, (int)j->w, (int)j->h, &j->rgb)))
		png_stop(j, e);
}

static void png_on_row(png_structp png, png_bytep row, png_uint_32 y, int pass)
{
	png_job *j = png_get_progressive_ptr(png);
	if (!row || !j->rows_left)
		return;
	if (j->interlace == PNG_INTERLACE_NONE)
		png_row_to_rgb(j, row, j->w, j->rgb + (size_t)y * j->w * 3, 1);
	else
		png_row_to_rgb(j, row, PNG_PASS_COLS(j->w, pass),
			       j->rgb + ((size_t)PNG_ROW_FROM_PASS_ROW(y, pass) * j->w + PNG_PASS_START_COL(pass)) * 3,
			       PNG_PASS_COL_OFFSET(pass));
	j->rows_left--;
}

static void png_on_end(png_structp png, png_infop info)
{
	(void)info;
	((png_job *)png_get_progressive_ptr(png))->ended = true;
}

/* Until the last row, as PIL reads. */
static cltfs_err png_feed(png_job *j, FILE *f)
{
	uint8_t buf[16384];
	size_t n;
	while (!png_complete(j) && (n = fread(buf, 1, sizeof buf, f)) > 0)
		png_process_data(j->png, j->info, buf, n);
	if (png_complete(j))
		return CLTFS_OK;
	if (ferror(f))
		return cltfs_fail(CLTFS_E_IO, "%s: read failed", j->path);
	if (j->ended)
		return cltfs_fail(CLTFS_E_CORRUPT, "%s: corrupt PNG data: the image data ends before the last row (%s)",
				  j->path, j->warning[0] ? j->warning : "no reason given");
	return cltfs_fail(CLTFS_E_CORRUPT, "%s: truncated PNG data (the file ends inside the image)", j->path);
}

static cltfs_err png_run(png_job *j, FILE *f)
{
	if (setjmp(png_jmpbuf(j->png))) {
		if (png_complete(j)) /* past the last row: PIL does not read that far */
			return CLTFS_OK;
		return j->failed ? j->failed : cltfs_fail(CLTFS_E_CORRUPT, "%s: corrupt PNG data: %s", j->path, j->msg);
	}
	/* PIL checks the CRC of every chunk before the image data. */
	png_set_crc_action(j->png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
	png_set_benign_errors(j->png, 1);
	png_set_progressive_read_fn(j->png, j, png_on_info, png_on_row, png_on_end);
	return png_feed(j, f);
}

/* Refuse a size before libpng sees it: its own limits would call a merely
 * large image corrupt. */
static cltfs_err png_precheck(const char *path, const uint8_t *head, size_t n)
{
	if (n < HEAD_LEN || memcmp(head + 12, "IHDR", 4))
		return CLTFS_OK; /* libpng says what is wrong */
	uint32_t w = (uint32_t)head[16] << 24 | head[17] << 16 | head[18] << 8 | head[19];
	uint32_t h = (uint32_t)head[20] << 24 | head[21] << 16 | head[22] << 8 | head[23];
	return check_size(path, w, h);
}

static cltfs_err png_decode(FILE *f, const char *path, const uint8_t *head, size_t n, uint8_t **rgb, int *w,
			    int *h)
{
	cltfs_err e = png_precheck(path, head, n);
	if (e)
		return e;
	png_job j;
	memset(&j, 0, sizeof j);
	j.path = path;
	j.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &j, png_on_error, png_on_warning);
	if (!j.png || !(j.info = png_create_info_struct(j.png)))
		e = cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	else
		e = png_run(&j, f);
	if (!e) {
		*rgb = j.rgb;
		*w = (int)j.w;
		*h = (int)j.h;
	} else
		free(j.rgb);
	png_destroy_read_struct(&j.png, &j.info, NULL);
	return e;
}

cltfs_err cap_image_decode(const char *path, uint8_t **rgb, int *w, int *h)
{
	FILE *f = NULL;
	uint8_t head[HEAD_LEN];
	size_t n = 0;
	*rgb = NULL;
	cltfs_err e = open_image(path, &f, head, &n);
	if (e)
		return e;
	if (n >= 8 && !memcmp(head, png_magic, 8))
		e = png_decode(f, path, head, n, rgb, w, h);
	else if (n >= 3 && head[0] == 0xff && head[1] == 0xd8 && head[2] == 0xff)
		e = jpeg_decode(f, path, rgb, w, h);
	else
		e = unknown_format(path, head, n);
	fclose(f);
	return e;
}

/* ---- resampling, as Pillow's Resample.c ---- */

typedef struct {
	double (*fn)(double);
	double support;
} filter;

static double box_fn(double x)
{
	return x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
}

static double bilinear_fn(double x)
{
	x = x < 0.0 ? -x : x;
	return x < 1.0 ? 1.0 - x : 0.0;
}

static double hamming_fn(double x)
{
	x = x < 0.0 ? -x : x;
	if (x == 0.0)
		return 1.0;
	if (x >= 1.0)
		return 0.0;
	x = x * M_PI;
	return sin(x) / x * (0.54f + 0.46f * cos(x)); /* float constants, as Pillow has them */
}

static double bicubic_fn(double x)
{
	const double a = -0.5;
	x = x < 0.0 ? -x : x;
	if (x < 1.0)
		return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
	if (x < 2.0)
		return (((x - 5) * x + 8) * x - 4) * a;
	return 0.0;
}

static double sinc_fn(double x)
{
	if (x == 0.0)
		return 1.0;
	x = x * M_PI;
	return sin(x) / x;
}

static double lanczos_fn(double x)
{
	return -3.0 <= x && x < 3.0 ? sinc_fn(x) * sinc_fn(x / 3) : 0.0;
}

static const filter *filter_of(int resample)
{
	static const filter lanczos = {lanczos_fn, 3.0}, bilinear = {bilinear_fn, 1.0},
			    bicubic = {bicubic_fn, 2.0}, box = {box_fn, 0.5}, hamming = {hamming_fn, 1.0};
	switch (resample) {
	case CAP_RESAMPLE_LANCZOS: return &lanczos;
	case CAP_RESAMPLE_BILINEAR: return &bilinear;
	case CAP_RESAMPLE_BICUBIC: return &bicubic;
	case CAP_RESAMPLE_BOX: return &box;
	case CAP_RESAMPLE_HAMMING: return &hamming;
	default: return NULL;
	}
}

/* One axis's weights for the output indices [first, first + n): source
 * start lo[i], count cnt[i], and ksize fixed-point weights each. */
typedef struct {
	int ksize;
	int *lo, *cnt;
	int32_t *k;
	double *pre; /* scratch: one index's weights before rounding */
} axis_w;

static void axis_free(axis_w *a)
{
	free(a->lo);
	free(a->cnt);
	free(a->k);
	free(a->pre);
}

/* precompute_coeffs and normalize_coeffs_8bpc for output index xx, with
 * Pillow's expressions in Pillow's order (the box starts at 0). */
static void weights_at(const axis_w *a, int i, int xx, int in_size, double scale, double support,
		       const filter *f)
{
	double filterscale = scale < 1.0 ? 1.0 : scale, ss = 1.0 / filterscale;
	double center = (xx + 0.5) * scale, ww = 0.0;
	int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
	xmin = xmin < 0 ? 0 : xmin;
	xmax = (xmax > in_size ? in_size : xmax) - xmin;
	for (int x = 0; x < xmax; x++) {
		a->pre[x] = f->fn((x + xmin - center + 0.5) * ss);
		ww += a->pre[x];
	}
	int32_t *k = a->k + (size_t)i * a->ksize;
	for (int x = 0; x < a->ksize; x++) {
		double w = x < xmax ? (ww != 0.0 ? a->pre[x] / ww : a->pre[x]) : 0.0;
		k[x] = w < 0 ? (int)(-0.5 + w * (1 << PRECISION_BITS)) : (int)(0.5 + w * (1 << PRECISION_BITS));
	}
	a->lo[i] = xmin;
	a->cnt[i] = xmax;
}

static cltfs_err axis_new(int in_size, int out_size, const filter *f, int first, int n, axis_w *a)
{
	/* Pillow: (double)(in1 - in0) / outSize, in0 and in1 floats; sizes
	 * below 2^24 are exact as floats */
	double scale = (double)(float)in_size / out_size;
	double support = f->support * (scale < 1.0 ? 1.0 : scale);
	a->ksize = (int)ceil(support) * 2 + 1;
	a->lo = malloc((size_t)n * sizeof *a->lo);
	a->cnt = malloc((size_t)n * sizeof *a->cnt);
	a->k = malloc((size_t)n * a->ksize * sizeof *a->k);
	a->pre = malloc((size_t)a->ksize * sizeof *a->pre);
	if (!a->lo || !a->cnt || !a->k || !a->pre)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory for resampling weights");
	for (int i = 0; i < n; i++)
		weights_at(a, i, first + i, in_size, scale, support, f);
	return CLTFS_OK;
}

static uint8_t clip8(int32_t v)
{
	if (v < 0)
		return 0;
	v >>= PRECISION_BITS;
	return (uint8_t)(v > 255 ? 255 : v);
}

/* A view of RGB rows: row r of it is at p + (r - r0) * stride. */
typedef struct {
	const uint8_t *p;
	size_t stride;
	int r0;
} rows_view;

/* ImagingResampleHorizontal_8bpc: rows [r0, r1) of src, the columns of ax
 * (n of them), into dst (n * 3 bytes a row). */
static void pass_h(rows_view src, int r0, int r1, const axis_w *ax, int n, uint8_t *dst)
{
	for (int y = r0; y < r1; y++) {
		const uint8_t *in = src.p + (size_t)(y - src.r0) * src.stride;
		uint8_t *out = dst + (size_t)(y - r0) * n * 3;
		for (int i = 0; i < n; i++) {
			const int32_t *k = ax->k + (size_t)i * ax->ksize;
			const uint8_t *s = in + (size_t)ax->lo[i] * 3;
			int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
			for (int x = 0; x < ax->cnt[i]; x++, s += 3) {
				s0 += s[0] * k[x];
				s1 += s[1] * k[x];
				s2 += s[2] * k[x];
			}
			out[3 * i] = clip8(s0);
			out[3 * i + 1] = clip8(s1);
			out[3 * i + 2] = clip8(s2);
		}
	}
}

/* ImagingResampleVertical_8bpc: m output rows from src (bytes bytes a row
 * used), into dst rows dstride apart.  Channels are independent. */
static void pass_v(rows_view src, size_t bytes, const axis_w *ay, int m, uint8_t *dst, size_t dstride)
{
	for (int j = 0; j < m; j++) {
		const int32_t *k = ay->k + (size_t)j * ay->ksize;
		const uint8_t *in = src.p + (size_t)(ay->lo[j] - src.r0) * src.stride;
		uint8_t *out = dst + (size_t)j * dstride;
		for (size_t x = 0; x < bytes; x++) {
			int32_t s = 1 << (PRECISION_BITS - 1);
			for (int y = 0; y < ay->cnt[j]; y++)
				s += in[(size_t)y * src.stride + x] * k[y];
			out[x] = clip8(s);
		}
	}
}

typedef struct {
	const uint8_t *src;
	int sw, sh; /* source size */
	int dw, dh; /* resized size */
	int x0, x1, y0, y1; /* the window of the resized image wanted */
	uint8_t *dst;
	size_t dstride;
} window_job;

/* The two passes over the window only; a pass is skipped, as in
 * ImagingResampleInner, when its side keeps its size. */
static cltfs_err resample_window(const window_job *w, const filter *f)
{
	bool need_h = w->dw != w->sw, need_v = w->dh != w->sh;
	int nx = w->x1 - w->x0, ny = w->y1 - w->y0;
	axis_w ax = {0}, ay = {0};
	uint8_t *tmp = NULL;
	cltfs_err e = CLTFS_OK;
	if (need_h)
		e = axis_new(w->sw, w->dw, f, w->x0, nx, &ax);
	if (!e && need_v)
		e = axis_new(w->sh, w->dh, f, w->y0, ny, &ay);
	/* the source rows the vertical pass reads */
	int r0 = need_v && !e ? ay.lo[0] : w->y0, r1 = need_v && !e ? ay.lo[ny - 1] + ay.cnt[ny - 1] : w->y1;
	rows_view mid = {w->src + (size_t)w->x0 * 3, (size_t)w->sw * 3, 0};
	if (!e && need_h) {
		if ((tmp = malloc((size_t)(r1 - r0) * nx * 3))) {
			pass_h((rows_view){w->src, (size_t)w->sw * 3, 0}, r0, r1, &ax, nx, tmp);
			mid = (rows_view){tmp, (size_t)nx * 3, r0};
		} else
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory for resampling");
	}
	if (!e && need_v)
		pass_v(mid, (size_t)nx * 3, &ay, ny, w->dst, w->dstride);
	for (int y = w->y0; !e && !need_v && y < w->y1; y++)
		memcpy(w->dst + (size_t)(y - w->y0) * w->dstride, mid.p + (size_t)(y - mid.r0) * mid.stride,
		       (size_t)nx * 3);
	axis_free(&ax);
	axis_free(&ay);
	free(tmp);
	return e;
}

cltfs_err cap_image_resize_u8(const uint8_t *rgb, int w, int h, int dw, int dh, int resample, uint8_t **out)
{
	const filter *f = filter_of(resample);
	*out = NULL;
	if (!f)
		return cltfs_fail(CLTFS_E_INVAL, "resampling filter %d is not supported", resample);
	if (w < 1 || h < 1 || dw < 1 || dh < 1 || w > MAX_SIDE || h > MAX_SIDE || dw > MAX_RESIZED ||
	    dh > MAX_RESIZED || (uint64_t)dw * dh > MAX_PIXELS)
		return cltfs_fail(CLTFS_E_INVAL, "cannot resize %dx%d to %dx%d", w, h, dw, dh);
	if (!(*out = malloc((size_t)dw * dh * 3)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory for a %dx%d image", dw, dh);
	window_job j = {rgb, w, h, dw, dh, 0, dw, 0, dh, *out, (size_t)dw * 3};
	cltfs_err e = resample_window(&j, f);
	if (e) {
		free(*out);
		*out = NULL;
	}
	return e;
}

/* ---- the whole processor ---- */

typedef struct {
	int rw, rh;      /* after resizing */
	int ow, oh;      /* output */
	int top, left;   /* output (0, 0) is resized (top, left); below 0: zero padding */
} geometry;

/* Python's floor division by 2. */
static int floor_half(int a)
{
	return a >= 0 ? a / 2 : -((-a + 1) / 2);
}

/* get_resize_output_image_size(default_to_square=False):
 * int(size * long / short), a float64 division truncated; then
 * center_crop's top = (h - crop_h) // 2, which padding keeps (the image
 * goes at ceil((crop_h - h) / 2) of a zero canvas). */
static cltfs_err plan(const cap_preproc *p, int w, int h, geometry *g, const char *path)
{
	g->rw = w;
	g->rh = h;
	if (p->do_resize) {
		int s = w <= h ? w : h, l = w <= h ? h : w;
		double nl = (double)((int64_t)p->shortest_edge * l) / s;
		if (nl > MAX_RESIZED)
			return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: a %dx%d image is too elongated to resize", path, w, h);
		g->rw = w <= h ? p->shortest_edge : (int)nl;
		g->rh = w <= h ? (int)nl : p->shortest_edge;
	}
	g->ow = p->do_center_crop ? p->crop_w : g->rw;
	g->oh = p->do_center_crop ? p->crop_h : g->rh;
	g->top = p->do_center_crop ? floor_half(g->rh - g->oh) : 0;
	g->left = p->do_center_crop ? floor_half(g->rw - g->ow) : 0;
	if ((uint64_t)g->ow * g->oh > MAX_PIXELS)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: resized to %dx%d, more than 256 Mpixel", path, g->rw,
				  g->rh);
	return CLTFS_OK;
}

/* The output's uint8 pixels: the part of the window inside the resized
 * image, zeros around it. */
static cltfs_err render(const uint8_t *rgb, int w, int h, const cap_preproc *p, const geometry *g, uint8_t **out,
			const char *path)
{
	if (!(*out = calloc((size_t)g->ow * g->oh, 3)))
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	int y0 = g->top < 0 ? 0 : g->top, y1 = g->top + g->oh > g->rh ? g->rh : g->top + g->oh;
	int x0 = g->left < 0 ? 0 : g->left, x1 = g->left + g->ow > g->rw ? g->rw : g->left + g->ow;
	if (y0 >= y1 || x0 >= x1)
		return CLTFS_OK;
	size_t stride = (size_t)g->ow * 3;
	window_job j = {rgb, w, h, g->rw, g->rh, x0, x1, y0, y1,
			*out + (size_t)(y0 - g->top) * stride + (size_t)(x0 - g->left) * 3, stride};
	cltfs_err e = resample_window(&j, filter_of(p->resample));
	return e ? cltfs_wrap(e, "%s", path) : CLTFS_OK;
}

/* rescale: float32(float64(v) * factor); normalize: (x - float32(mean)) /
 * float32(std) in float32; without either, float32(v). */
static void float_table(const cap_preproc *p, int c, float t[256])
{
	for (int v = 0; v < 256; v++) {
		float x = p->do_rescale ? (float)(v * p->rescale_factor) : (float)v;
		t[v] = p->do_normalize ? (x - p->mean[c]) / p->std[c] : x;
	}
}

static cltfs_err to_chw(const uint8_t *px, const geometry *g, const cap_preproc *p, float **out, const char *path)
{
	size_t n = (size_t)g->ow * g->oh;
	if (!(*out = malloc(n * 3 * sizeof **out)))
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path);
	for (int c = 0; c < 3; c++) {
		float t[256], *dst = *out + (size_t)c * n;
		float_table(p, c, t);
		for (size_t i = 0; i < n; i++)
			dst[i] = t[px[3 * i + c]];
	}
	return CLTFS_OK;
}

static cltfs_err check_preproc(const cap_preproc *p)
{
	if (p->do_resize && (p->shortest_edge < 1 || p->shortest_edge > MAX_SIDE))
		return cltfs_fail(CLTFS_E_INVAL, "shortest_edge %d is out of range", p->shortest_edge);
	if (p->do_center_crop && (p->crop_h < 1 || p->crop_w < 1 || p->crop_h > MAX_SIDE || p->crop_w > MAX_SIDE))
		return cltfs_fail(CLTFS_E_INVAL, "crop size %dx%d is out of range", p->crop_h, p->crop_w);
	if (!filter_of(p->resample))
		return cltfs_fail(CLTFS_E_INVAL, "resampling filter %d is not supported", p->resample);
	return CLTFS_OK;
}

cltfs_err cap_image_load(const char *path, const cap_preproc *p, float **out, int *h, int *w)
{
	uint8_t *rgb = NULL, *px = NULL;
	int sw = 0, sh = 0;
	geometry g = {0};
	*out = NULL;
	cltfs_err e = check_preproc(p);
	if (!e)
		e = cap_image_decode(path, &rgb, &sw, &sh);
	if (!e)
		e = plan(p, sw, sh, &g, path);
	if (!e)
		e = render(rgb, sw, sh, p, &g, &px, path);
	free(rgb);
	if (!e)
		e = to_chw(px, &g, p, out, path);
	free(px);
	if (!e) {
		*h = g.oh;
		*w = g.ow;
	}
	return e;
}
