/* config.c: config.json of a LLaVA checkpoint, and prompts.
 *
 * The real llava-hf/llava-1.5-7b-hf config leaves most sizes out of
 * text_config and vision_config: a missing field is transformers' default
 * (LlamaConfig: 4096 hidden, 11008 intermediate, 32 layers, 32 heads, kv
 * heads = heads, rms_norm_eps 1e-6, rope_theta 10000; CLIPVisionConfig:
 * 768 hidden, 3072 intermediate, 12 layers, 12 heads, image 224, patch 32,
 * layer_norm_eps 1e-5), so reading only what is written would build
 * another model.
 */
#include "capture.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cap_hook_parse(const char *name)
{
	static const char *const names[] = {"mlp_in", "resid_pre", "resid_mid"};
	for (int i = 0; i < 3; i++)
		if (name && !strcmp(name, names[i]))
			return i;
	return -1;
}

int cap_device_parse(const char *name, int *index)
{
	*index = 0;
	if (!name || !*name || !strcmp(name, "auto"))
		return CAP_DEVICE_AUTO;
	if (!strcmp(name, "cpu"))
		return CAP_DEVICE_CPU;
	if (strncmp(name, "cuda", 4))
		return -1;
	if (!name[4])
		return CAP_DEVICE_CUDA;
	int64_t v;
	if (name[4] != ':' || !cltfs_parse_dec(name + 5, strlen(name + 5), &v) || v > 1024)
		return -1;
	*index = (int)v;
	return CAP_DEVICE_CUDA;
}

/* A whole number field, or def when absent; a wrong type is an error. */
static cltfs_err get_int(const cJSON *o, const char *key, int def, int lo, int hi, int *out, const char *path,
			 const char *where)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!v || cJSON_IsNull(v)) {
		*out = def;
		return CLTFS_OK;
	}
	if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble || v->valuedouble < lo ||
	    v->valuedouble > hi)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: %s%s must be a whole number from %d to %d", path, where, key, lo,
				  hi);
	*out = (int)v->valuedouble;
	return CLTFS_OK;
}

static cltfs_err get_num(const cJSON *o, const char *key, double def, double *out, const char *path,
			 const char *where)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!v || cJSON_IsNull(v)) {
		*out = def;
		return CLTFS_OK;
	}
	if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: %s%s must be a positive number", path, where, key);
	*out = v->valuedouble;
	return CLTFS_OK;
}

static cltfs_err check_str(const cJSON *o, const char *key, const char *want, const char *path, const char *where)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (v && (!cJSON_IsString(v) || strcmp(v->valuestring, want)))
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: %s%s is %s%s%s; cltfs runs \"%s\"", path, where, key,
				  cJSON_IsString(v) ? "\"" : "", cJSON_IsString(v) ? v->valuestring : "not a string",
				  cJSON_IsString(v) ? "\"" : "", want);
	return CLTFS_OK;
}

static cltfs_err text_config(const cJSON *t, cap_config *c, const char *path)
{
	const char *w = "text_config.";
	cltfs_err e;
	if ((e = check_str(t, "model_type", "llama", path, w)) || (e = check_str(t, "hidden_act", "silu", path, w)) ||
	    (e = get_int(t, "hidden_size", 4096, 1, 1 << 16, &c->d_model, path, w)) ||
	    (e = get_int(t, "intermediate_size", 11008, 1, 1 << 20, &c->intermediate, path, w)) ||
	    (e = get_int(t, "num_hidden_layers", 32, 1, 4096, &c->n_layers, path, w)) ||
	    (e = get_int(t, "num_attention_heads", 32, 1, 4096, &c->n_heads, path, w)) ||
	    (e = get_int(t, "num_key_value_heads", c->n_heads, 1, 4096, &c->n_kv_heads, path, w)) ||
	    (e = get_int(t, "vocab_size", 32000, 1, 1 << 24, &c->vocab_size, path, w)) ||
	    (e = get_num(t, "rms_norm_eps", 1e-6, &c->rms_eps, path, w)) ||
	    (e = get_num(t, "rope_theta", 10000.0, &c->rope_theta, path, w)))
		return e;
	const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(t, "rope_scaling");
	if (scaling && !cJSON_IsNull(scaling))
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: text_config.rope_scaling is not supported", path);
	if (c->d_model % c->n_heads || c->n_heads % c->n_kv_heads || (c->d_model / c->n_heads) % 2)
		return cltfs_fail(CLTFS_E_FORMAT,
				  "%s: text_config: hidden_size %d does not split into %d heads (%d key/value heads) of "
				  "an even size",
				  path, c->d_model, c->n_heads, c->n_kv_heads);
	return CLTFS_OK;
}

static cltfs_err vision_config(const cJSON *v, cap_config *c, const char *path)
{
	const char *w = "vision_config.";
	cltfs_err e;
	if ((e = check_str(v, "hidden_act", "quick_gelu", path, w)) ||
	    (e = get_int(v, "hidden_size", 768, 1, 1 << 16, &c->v_hidden, path, w)) ||
	    (e = get_int(v, "intermediate_size", 3072, 1, 1 << 20, &c->v_intermediate, path, w)) ||
	    (e = get_int(v, "num_hidden_layers", 12, 1, 4096, &c->v_layers, path, w)) ||
	    (e = get_int(v, "num_attention_heads", 12, 1, 4096, &c->v_heads, path, w)) ||
	    (e = get_int(v, "image_size", 224, 1, 8192, &c->v_image, path, w)) ||
	    (e = get_int(v, "patch_size", 32, 1, 8192, &c->v_patch, path, w)) ||
	    (e = get_num(v, "layer_norm_eps", 1e-5, &c->v_eps, path, w)))
		return e;
	if (c->v_hidden % c->v_heads || c->v_image % c->v_patch)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: vision_config: sizes do not divide (hidden %d, heads %d, image %d, "
				  "patch %d)", path, c->v_hidden, c->v_heads, c->v_image, c->v_patch);
	int side = c->v_image / c->v_patch;
	c->image_rows = side * side;
	return CLTFS_OK;
}

cltfs_err cap_config_load(const char *dir, cap_config *c)
{
	char path[4096];
	size_t len;
	snprintf(path, sizeof path, "%s/config.json", dir);
	memset(c, 0, sizeof *c);
	char *text;
	cltfs_err re = cltfs_read_file(path, &text, &len);
	if (re) /* the message names the file and the cause */
		return re;
	cJSON *root = cJSON_ParseWithLength(text, len);
	free(text);
	if (!root || !cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not a JSON object", path);
	}
	cltfs_err e = check_str(root, "model_type", "llava", path, "");
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "text_config"),
		    *v = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
	if (!e && (!cJSON_IsObject(t) || !cJSON_IsObject(v)))
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: no text_config or vision_config: not a LLaVA checkpoint", path);
	if (!e)
		e = text_config(t, c, path);
	if (!e)
		e = vision_config(v, c, path);
	if (!e)
		e = get_int(root, "vision_feature_layer", -2, -c->v_layers - 1, c->v_layers, &c->feature_layer, path, "");
	if (!e)
		e = get_int(root, "image_token_index", 32000, 0, c->vocab_size - 1, &c->image_token, path, "");
	if (!e)
		e = check_str(root, "vision_feature_select_strategy", "default", path, "");
	if (!e)
		e = check_str(root, "projector_hidden_act", "gelu", path, "");
	const cJSON *dt = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
	if (!cJSON_IsString(dt))
		dt = cJSON_GetObjectItemCaseSensitive(t, "torch_dtype");
	snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", cJSON_IsString(dt) ? dt->valuestring : "float32");
	cJSON_Delete(root);
	return e;
}

int64_t cap_rows(const cap_config *c, const int32_t *ids, size_t n)
{
	int64_t rows = 0;
	for (size_t i = 0; i < n; i++)
		rows += ids[i] == c->image_token ? c->image_rows : 1;
	return rows;
}

char *cap_prompt(const char *tmpl, const char *query)
{
	if (!tmpl)
		tmpl = CAP_DEFAULT_TEMPLATE;
	const char *at = strstr(tmpl, "{query}");
	size_t tl = strlen(tmpl), ql = strlen(query);
	char *out = malloc(tl + ql + 1);
	if (!out)
		return NULL;
	if (!at) {
		memcpy(out, tmpl, tl + 1);
		return out;
	}
	size_t pre = (size_t)(at - tmpl);
	memcpy(out, tmpl, pre);
	memcpy(out + pre, query, ql);
	memcpy(out + pre + ql, at + 7, tl - pre - 7 + 1);
	return out;
}
