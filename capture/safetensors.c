/* safetensors.c: the header of a safetensors file, checked so that nothing
 * after it (from_blob on the map in model.cpp) can read past the file.
 *
 * Numbers come from cJSON as doubles: a dimension or an offset must be a
 * whole number in range before it is converted, and every product is
 * checked for overflow, so a hostile header cannot make a small byte count
 * pass for a large shape.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIM_SIZE 1e12 /* a dimension */
#define MAX_OFFSET 1e18   /* an offset: converts to uint64_t exactly */

static bool st_dtype(const char *s, cltfs_dtype *t)
{
	static const struct {
		const char *name;
		cltfs_dtype t;
	} map[] = {{"F32", CLTFS_F32}, {"BF16", CLTFS_BF16}, {"F16", CLTFS_F16}};
	for (size_t i = 0; i < sizeof map / sizeof *map; i++)
		if (!strcmp(s, map[i].name)) {
			*t = map[i].t;
			return true;
		}
	return false;
}

/* A JSON number that is a whole number in [0, max]. */
static bool whole(const cJSON *j, double max, uint64_t *v)
{
	if (!cJSON_IsNumber(j) || !(j->valuedouble >= 0 && j->valuedouble <= max) ||
	    j->valuedouble != floor(j->valuedouble))
		return false;
	*v = (uint64_t)j->valuedouble;
	return true;
}

static bool mul_ok(uint64_t *acc, uint64_t v)
{
	if (v && *acc > UINT64_MAX / v)
		return false;
	*acc *= v;
	return true;
}

/* Shape and offsets: the tensor's bytes lie in [0, dlen) of the data and
 * are exactly numel * element size.  false for anything else. */
static bool read_extent(const cJSON *sh, const cJSON *off, uint64_t dlen, cap_st_tensor *t)
{
	uint64_t numel = 1, b, en;
	const cJSON *d;
	cJSON_ArrayForEach(d, sh) {
		uint64_t v;
		if (!whole(d, MAX_DIM_SIZE, &v) || !mul_ok(&numel, v))
			return false;
		t->shape[t->ndim++] = (int64_t)v;
	}
	if (!mul_ok(&numel, cltfs_dtype_size(t->dtype)))
		return false;
	if (!whole(cJSON_GetArrayItem(off, 0), MAX_OFFSET, &b) || !whole(cJSON_GetArrayItem(off, 1), MAX_OFFSET, &en))
		return false;
	t->offset = b;
	t->bytes = en - b;
	return en >= b && en <= dlen && en - b == numel;
}

static cltfs_err read_tensor(const cJSON *it, uint64_t data_at, uint64_t dlen, const char *path,
			     cap_st_tensor *t)
{
	const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype"),
		    *sh = cJSON_GetObjectItemCaseSensitive(it, "shape"),
		    *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
	if (!cJSON_IsString(dt) || !st_dtype(dt->valuestring, &t->dtype))
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: tensor %s: dtype %s (F32, BF16 and F16 are read)", path,
				  it->string, cJSON_IsString(dt) ? dt->valuestring : "missing");
	int ndim = cJSON_GetArraySize(sh);
	if (cJSON_IsArray(sh) && ndim > CAP_ST_MAX_DIM)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: tensor %s: %d dimensions (at most %d are read)", path,
				  it->string, ndim, CAP_ST_MAX_DIM);
	if (!cJSON_IsArray(sh) || !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
	    !read_extent(sh, off, dlen, t))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: tensor %s: shape or data offsets disagree with the file (%llu "
				  "data bytes): truncated or corrupt", path, it->string, (unsigned long long)dlen);
	t->offset += data_at;
	if (!(t->name = strdup(it->string)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	return CLTFS_OK;
}

static cltfs_err read_header(const cJSON *h, uint64_t data_at, uint64_t dlen, const char *path,
			     cap_st_header *out)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, h) {
		if (!strcmp(it->string, "__metadata__"))
			continue;
		cltfs_err e = read_tensor(it, data_at, dlen, path, &out->t[out->n]);
		if (e)
			return e;
		out->n++;
	}
	return CLTFS_OK;
}

cltfs_err cap_st_parse(const uint8_t *file, size_t file_len, const char *path, cap_st_header **out)
{
	if (file_len < 8)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not a safetensors file (too short or unreadable)", path);
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | file[i];
	if (hlen > file_len - 8 || hlen > CAP_ST_MAX_HEADER)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: header length %llu runs past the file (%zu bytes): truncated or "
				  "not safetensors", path, (unsigned long long)hlen, file_len);
	cJSON *j = cJSON_ParseWithLength((const char *)file + 8, (size_t)hlen);
	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return cltfs_fail(CLTFS_E_FORMAT, "%s: the header is not a JSON object", path);
	}
	cap_st_header *h = calloc(1, sizeof *h);
	int n = cJSON_GetArraySize(j);
	if (h)
		h->t = calloc(n ? (size_t)n : 1, sizeof *h->t);
	cltfs_err e = h && h->t ? read_header(j, 8 + hlen, file_len - 8 - hlen, path, h)
				: cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cJSON_Delete(j);
	if (e) {
		cap_st_free(h);
		return e;
	}
	*out = h;
	return CLTFS_OK;
}

void cap_st_free(cap_st_header *h)
{
	if (!h)
		return;
	for (size_t i = 0; h->t && i < h->n; i++)
		free(h->t[i].name);
	free(h->t);
	free(h);
}
