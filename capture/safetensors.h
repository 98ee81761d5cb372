/* safetensors.h: the header of a safetensors file, parsed and checked in C
 * (inside capture/: model.cpp maps the file and hands its bytes here; the
 * fuzzer feeds arbitrary bytes).
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
 * {...}}, then the data; offsets count from the end of the header.
 */
#ifndef CLTFS_CAP_SAFETENSORS_H
#define CLTFS_CAP_SAFETENSORS_H

#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CAP_ST_MAX_DIM 8          /* LLaVA's tensors have at most 4 */
#define CAP_ST_MAX_HEADER (100u << 20) /* a header is a few hundred KiB at most */

typedef struct {
	char *name;
	cltfs_dtype dtype; /* F32, BF16 or F16 */
	int ndim;
	int64_t shape[CAP_ST_MAX_DIM];
	uint64_t offset; /* of the first byte, from the start of the file */
	uint64_t bytes;  /* numel * element size, all of it inside the file */
} cap_st_tensor;

typedef struct {
	size_t n;
	cap_st_tensor *t; /* in the header's order, __metadata__ left out */
} cap_st_header;

/* Parse and check the header of a file of file_len bytes; file holds its
 * first bytes, 8 + the header length at least (the data is not read; path
 * names the file in messages, with the tensor where one is at fault): every tensor
 * lies inside the file and holds exactly its shape's values.  *out is
 * malloc'd, freed with cap_st_free.  CLTFS_E_FORMAT (too short, a header
 * length past the file, a header that is no JSON object, a shape or data
 * offsets that disagree with the file), _UNSUPPORTED (a dtype other than
 * F32, BF16, F16, or more than CAP_ST_MAX_DIM dimensions), _NOMEM. */
cltfs_err cap_st_parse(const uint8_t *file, size_t file_len, const char *path, cap_st_header **out);
/* NULL is a no-op. */
void cap_st_free(cap_st_header *h);

#ifdef __cplusplus
}
#endif

#endif
