/* image.h: LLaVA-1.5's image preprocessing, as transformers'
 * CLIPImageProcessor (the PIL one, not the torchvision "fast" one) does it.
 *
 * The pixel values equal, bit for bit, what
 *   CLIPImageProcessor(**preprocessor_config)(Image.open(path))["pixel_values"]
 * gives: decode as PIL's Image.open(path).convert("RGB"), resize as PIL's
 * Image.resize, center crop, rescale and normalize in numpy's float32.
 * tests/capture_image.c checks this against PIL on every kind of PNG and
 * JPEG the decoder accepts.
 */
#ifndef CLTFS_CAPTURE_IMAGE_H
#define CLTFS_CAPTURE_IMAGE_H

#include "codec.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* PIL's resampling filters (Image.Resampling), as preprocessor configs
 * number them.  NEAREST is refused: PIL does it by another algorithm. */
enum {
	CAP_RESAMPLE_NEAREST = 0,
	CAP_RESAMPLE_LANCZOS = 1,
	CAP_RESAMPLE_BILINEAR = 2,
	CAP_RESAMPLE_BICUBIC = 3,
	CAP_RESAMPLE_BOX = 4,
	CAP_RESAMPLE_HAMMING = 5,
};

typedef struct {
	int shortest_edge;        /* size.shortest_edge (336 for llava-1.5) */
	int crop_h, crop_w;       /* crop_size */
	bool do_resize, do_center_crop, do_rescale, do_normalize, do_convert_rgb;
	double rescale_factor;    /* 1/255 */
	float mean[3], std[3];
	int resample;             /* CAP_RESAMPLE_*: 3 (bicubic) for llava-1.5 */
} cap_preproc;

/* Parse preprocessor_config.json text; path names the file in messages.
 * A missing field takes CLIPImageProcessor's default: do_resize,
 * do_center_crop, do_rescale, do_normalize, do_convert_rgb true; size
 * {"shortest_edge": 224}; crop_size {"height": 224, "width": 224};
 * rescale_factor 1/255; resample 3 (bicubic); image_mean OPENAI_CLIP_MEAN
 * (0.48145466, 0.4578275, 0.40821073); image_std OPENAI_CLIP_STD
 * (0.26862954, 0.26130258, 0.27577711).  A null field is a missing one.
 * size and crop_size may also be a bare integer (old CLIPFeatureExtractor
 * configs), crop_size [h, w], image_mean and image_std one number for
 * every channel.  CLTFS_E_FORMAT for bad JSON or a field of the wrong type
 * or range (sides 1-65535, a zero std); CLTFS_E_UNSUPPORTED for what a
 * processor could ask but cltfs does not do: a size of height x width (no
 * aspect ratio kept), a size with a longest_edge (transformers 4 ignores
 * it, 5 does not), NEAREST resampling, a processor type not CLIP's.  *out
 * is untouched on error. */
cltfs_err cap_preproc_parse(const char *json, size_t len, const char *path, cap_preproc *out);

/* Decode path, then resize (size.shortest_edge), center crop (padding with
 * zeros where the image is smaller than the crop, as transformers does),
 * rescale and normalize.  *out is float32 [3][*h][*w] (CHW), malloc'd:
 * *h x *w is crop_h x crop_w, or the resized size without do_center_crop.
 * The image is always made RGB, whatever do_convert_rgb says: the model
 * takes three channels.  Only the pixels the crop keeps are resampled, so
 * an elongated image costs no more than another.  Errors name the file:
 * CLTFS_E_NOTFOUND (missing), CLTFS_E_IO (unreadable, a directory),
 * CLTFS_E_FORMAT (empty, not an image, zero width or height),
 * CLTFS_E_UNSUPPORTED (GIF, WebP and other formats PIL would open; a JPEG
 * of other than 1, 3 or 4 components; more than 65535 pixels a side or 256
 * Mpixel decoded, 2^28 a side resized, 256 Mpixel out), CLTFS_E_CORRUPT
 * (truncated or damaged data), CLTFS_E_NOMEM; CLTFS_E_INVAL for a p that
 * cap_preproc_parse would not give. */
cltfs_err cap_image_load(const char *path, const cap_preproc *p, float **out, int *h, int *w);

/* The first step alone: path (PNG or JPEG, told by content, not by name)
 * as 8-bit RGB, rows top to bottom, *w x *h x 3 bytes, malloc'd, equal to
 * numpy.asarray(Image.open(path).convert("RGB")).  Errors as above. */
cltfs_err cap_image_decode(const char *path, uint8_t **rgb, int *w, int *h);

/* Testing hook: PIL's Image.resize((dw, dh), resample) of an RGB image,
 * whole.  *out is dw x dh x 3 bytes, malloc'd.  CLTFS_E_INVAL for a size
 * out of range or a filter cltfs does not have. */
cltfs_err cap_image_resize_u8(const uint8_t *rgb, int w, int h, int dw, int dh, int resample, uint8_t **out);

#ifdef __cplusplus
}
#endif

#endif
