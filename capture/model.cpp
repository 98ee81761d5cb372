// model.cpp: the LLaVA-1.5 forward pass on libtorch.
//
// The one unit of cltfs that includes libtorch (a unit takes ~25 s to
// compile).  It is built as libcltfs-capture.so and loaded by loader.c on
// the first capture: linking libtorch into cltfs would add 0.7 s to every
// start of every command.  The library stands alone: it links its own
// (hidden) copies of the C code it calls (errors, config, images), exports
// only the capimpl_* functions, and hands its error messages to the host
// through capimpl_errmsg, so any program can load it.  Semantics are transformers'
// LlavaForConditionalGeneration (4.36-4.5x) in eager mode:
//   CLIP:  patch conv (no bias) + class token + positions, pre_layrnorm,
//          layers of LN1 -> attention (q scaled by head_dim^-0.5) ->
//          residual, LN2 -> fc1 -> quick_gelu -> fc2 -> residual; features
//          are hidden_states[vision_feature_layer] without the class token
//   proj:  linear_1 -> GELU (erf) -> linear_2
//   LLaMA: RMSNorm in fp32, rotary (rotate_half), causal softmax in fp32,
//          GQA by repeating key/value heads, SiLU-gated MLP
// Hooks per decoder layer L: resid_pre = hidden_states[L], resid_mid =
// after attention's residual, mlp_in = post_attention_layernorm's output,
// mlp_out = the MLP's output.
#include "capture.h"
#include "image.h"
#include "safetensors.h"
#include "torch_build.h" // build/: what tools/find_torch.sh found

#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <cjson/cJSON.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

using torch::Tensor;

// ---- safetensors: header checked by safetensors.c, data read ----
//
// Read with pread, not mapped: on a mapping, a page its filesystem cannot
// read in (an NFS or Lustre I/O error, a shard cut short while loading, a
// lazily fetched mount that fails) is a SIGBUS that kills the process, the
// mount daemon too when it captures on a miss.  A read returns the error,
// which names the shard and tensor.  Each tensor is read once into its own
// CPU tensor: the one capture keeps when it computes there in that dtype,
// else a staging copy freed once converted or on the GPU.

struct st_tensor {
	uint64_t offset;
	size_t bytes;
	torch::ScalarType dtype;
	std::vector<int64_t> shape;
	std::string file;
	int fd;
};

struct st_file {
	int fd = -1;
	~st_file()
	{
		if (fd >= 0)
			close(fd);
	}
};

static torch::ScalarType st_scalar(cltfs_dtype t)
{
	return t == CLTFS_F32 ? torch::kFloat : t == CLTFS_BF16 ? torch::kBFloat16 : torch::kHalf;
}

// The header of an open shard: its first 8 + header-length bytes, enough
// for cap_st_parse, which checks the length against the file's size.
static cltfs_err st_header(int fd, const std::string &path, size_t len, cap_st_header **h)
{
	uint8_t n8[8] = {0};
	if (len < 8)
		return cap_st_parse(n8, len, path.c_str(), h); /* says: too short */
	int r = cltfs_pread_full(fd, n8, 8, 0);
	if (r)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path.c_str(), r > 0 ? strerror(r) : "the file ends early");
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | n8[i];
	if (hlen > len - 8 || hlen > CAP_ST_MAX_HEADER)
		return cap_st_parse(n8, len, path.c_str(), h); /* says: past the file */
	std::vector<uint8_t> head;
	try {
		head.resize(8 + hlen);
	} catch (const std::bad_alloc &) {
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory", path.c_str());
	}
	if ((r = cltfs_pread_full(fd, head.data(), head.size(), 0)))
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path.c_str(), r > 0 ? strerror(r) : "the file ends early");
	return cap_st_parse(head.data(), len, path.c_str(), h);
}

// Open one shard and add its tensors; safetensors.c checks the header, and
// its messages name the file and tensor.
static cltfs_err st_load(const std::string &path, std::vector<std::unique_ptr<st_file>> &files,
			 std::map<std::string, st_tensor> &out)
{
	auto f = std::make_unique<st_file>();
	f->fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (f->fd < 0)
		return cltfs_fail(errno == ENOENT ? CLTFS_E_NOTFOUND : CLTFS_E_IO, "%s: %s", path.c_str(),
				  strerror(errno));
	struct stat st;
	if (fstat(f->fd, &st) || !S_ISREG(st.st_mode))
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not a regular file", path.c_str());
	cap_st_header *h;
	cltfs_err e = st_header(f->fd, path, (size_t)st.st_size, &h);
	for (size_t i = 0; !e && i < h->n; i++) {
		const cap_st_tensor &s = h->t[i];
		st_tensor t;
		t.offset = s.offset;
		t.bytes = (size_t)s.bytes;
		t.dtype = st_scalar(s.dtype);
		t.shape.assign(s.shape, s.shape + s.ndim);
		t.file = path;
		t.fd = f->fd;
		out[s.name] = std::move(t);
	}
	if (!e)
		cap_st_free(h);
	files.push_back(std::move(f));
	return e;
}

// The shards: model.safetensors.index.json's weight_map, or one file.
static cltfs_err st_load_dir(const std::string &dir, std::vector<std::unique_ptr<st_file>> &files,
			     std::map<std::string, st_tensor> &out)
{
	std::string ipath = dir + "/model.safetensors.index.json";
	char *idx;
	size_t len;
	cltfs_err re = cltfs_read_file(ipath.c_str(), &idx, &len);
	if (re == CLTFS_E_NOTFOUND) /* no index: one file */
		return st_load(dir + "/model.safetensors", files, out);
	if (re)
		return re;
	cJSON *j = cJSON_ParseWithLength(idx, len);
	free(idx);
	const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
	if (!cJSON_IsObject(wm)) {
		cJSON_Delete(j);
		return cltfs_fail(CLTFS_E_FORMAT, "%s: no weight_map object", ipath.c_str());
	}
	std::vector<std::string> shards;
	std::map<std::string, std::string> want;
	const cJSON *it;
	cltfs_err e = CLTFS_OK;
	cJSON_ArrayForEach(it, wm) {
		if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
			e = cltfs_fail(CLTFS_E_FORMAT, "%s: weight_map[%s] is not a file name", ipath.c_str(), it->string);
			break;
		}
		want[it->string] = it->valuestring;
		if (std::find(shards.begin(), shards.end(), it->valuestring) == shards.end())
			shards.push_back(it->valuestring);
	}
	cJSON_Delete(j);
	for (size_t i = 0; !e && i < shards.size(); i++)
		e = st_load(dir + "/" + shards[i], files, out);
	for (auto w = want.begin(); !e && w != want.end(); ++w) {
		auto t = out.find(w->first);
		if (t == out.end() || t->second.file != dir + "/" + w->second)
			e = cltfs_fail(CLTFS_E_FORMAT, "%s: tensor %s is not in %s as the index says", ipath.c_str(),
				       w->first.c_str(), w->second.c_str());
	}
	return e;
}

// ---- the model ----

struct vlayer {
	Tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
};
struct tlayer {
	Tensor in_w, q, k, v, o, post_w, gate, up, down;
};

struct cap_model {
	cap_config c;
	cap_preproc pre;
	std::vector<std::unique_ptr<st_file>> files;
	torch::Device dev = torch::kCPU;
	torch::ScalarType dt = torch::kFloat;
	std::string dev_name, dt_name;
	Tensor patch_w, cls, pos, pre_w, pre_b;
	std::vector<vlayer> vl;
	Tensor p1_w, p1_b, p2_w, p2_b, embed;
	std::vector<tlayer> tl;
	Tensor inv_freq;
};

struct loader {
	std::map<std::string, st_tensor> &t;
	cap_model *m;
	std::string dir;
	cltfs_err e = CLTFS_OK;

	// The tensor under either naming, checked against its expected shape.
	Tensor get(const std::string &old_name, const std::string &new_name, std::vector<int64_t> shape)
	{
		if (e)
			return Tensor();
		auto it = t.find(old_name);
		if (it == t.end())
			it = t.find(new_name);
		if (it == t.end()) {
			e = cltfs_fail(CLTFS_E_FORMAT, "%s: tensor %s (or %s) is missing from the checkpoint", dir.c_str(),
				       old_name.c_str(), new_name.c_str());
			return Tensor();
		}
		const st_tensor &s = it->second;
		if (s.shape != shape) {
			std::string got, want;
			for (auto d : s.shape)
				got += (got.empty() ? "" : ", ") + std::to_string(d);
			for (auto d : shape)
				want += (want.empty() ? "" : ", ") + std::to_string(d);
			e = cltfs_fail(CLTFS_E_FORMAT, "%s: tensor %s has shape [%s], the config implies [%s]",
				       s.file.c_str(), it->first.c_str(), got.c_str(), want.c_str());
			return Tensor();
		}
		// .to() returns raw itself when it is already what capture computes
		// in, else a converted or GPU copy (raw is freed on return).
		Tensor raw = torch::empty(s.shape, torch::TensorOptions().dtype(s.dtype));
		int r = cltfs_pread_full(s.fd, raw.data_ptr(), s.bytes, s.offset);
		if (r) {
			e = cltfs_fail(CLTFS_E_IO, "%s: reading tensor %s: %s", s.file.c_str(), it->first.c_str(),
				       r > 0 ? strerror(r) : "the file ends early");
			return Tensor();
		}
		return raw.to(m->dev, m->dt);
	}
	Tensor lm(const std::string &n, std::vector<int64_t> shape)
	{
		return get("language_model.model." + n, "model.language_model." + n, shape);
	}
	Tensor vis(const std::string &n, std::vector<int64_t> shape)
	{
		return get("vision_tower.vision_model." + n, "model.vision_tower.vision_model." + n, shape);
	}
	Tensor proj(const std::string &n, std::vector<int64_t> shape)
	{
		return get("multi_modal_projector." + n, "model.multi_modal_projector." + n, shape);
	}
};

static void load_vision(loader &L, cap_model *m)
{
	const cap_config &c = m->c;
	int64_t D = c.v_hidden, I = c.v_intermediate, P = c.image_rows + 1;
	m->patch_w = L.vis("embeddings.patch_embedding.weight", {D, 3, c.v_patch, c.v_patch});
	m->cls = L.vis("embeddings.class_embedding", {D});
	m->pos = L.vis("embeddings.position_embedding.weight", {P, D});
	m->pre_w = L.vis("pre_layrnorm.weight", {D});
	m->pre_b = L.vis("pre_layrnorm.bias", {D});
	// Only the layers up to the feature layer ever run.
	int need = c.feature_layer < 0 ? c.v_layers + 1 + c.feature_layer : c.feature_layer;
	for (int i = 0; i < need && !L.e; i++) {
		std::string p = "encoder.layers." + std::to_string(i) + ".";
		vlayer v;
		v.ln1_w = L.vis(p + "layer_norm1.weight", {D});
		v.ln1_b = L.vis(p + "layer_norm1.bias", {D});
		v.q_w = L.vis(p + "self_attn.q_proj.weight", {D, D});
		v.q_b = L.vis(p + "self_attn.q_proj.bias", {D});
		v.k_w = L.vis(p + "self_attn.k_proj.weight", {D, D});
		v.k_b = L.vis(p + "self_attn.k_proj.bias", {D});
		v.v_w = L.vis(p + "self_attn.v_proj.weight", {D, D});
		v.v_b = L.vis(p + "self_attn.v_proj.bias", {D});
		v.o_w = L.vis(p + "self_attn.out_proj.weight", {D, D});
		v.o_b = L.vis(p + "self_attn.out_proj.bias", {D});
		v.ln2_w = L.vis(p + "layer_norm2.weight", {D});
		v.ln2_b = L.vis(p + "layer_norm2.bias", {D});
		v.fc1_w = L.vis(p + "mlp.fc1.weight", {I, D});
		v.fc1_b = L.vis(p + "mlp.fc1.bias", {I});
		v.fc2_w = L.vis(p + "mlp.fc2.weight", {D, I});
		v.fc2_b = L.vis(p + "mlp.fc2.bias", {D});
		m->vl.push_back(std::move(v));
	}
	int64_t H = c.d_model;
	m->p1_w = L.proj("linear_1.weight", {H, D});
	m->p1_b = L.proj("linear_1.bias", {H});
	m->p2_w = L.proj("linear_2.weight", {H, H});
	m->p2_b = L.proj("linear_2.bias", {H});
}

static void load_text(loader &L, cap_model *m)
{
	const cap_config &c = m->c;
	int64_t H = c.d_model, I = c.intermediate, hd = H / c.n_heads, KV = (int64_t)c.n_kv_heads * hd;
	m->embed = L.lm("embed_tokens.weight", {c.vocab_size, H});
	for (int i = 0; i < c.n_layers && !L.e; i++) {
		std::string p = "layers." + std::to_string(i) + ".";
		tlayer t;
		t.in_w = L.lm(p + "input_layernorm.weight", {H});
		t.q = L.lm(p + "self_attn.q_proj.weight", {H, H});
		t.k = L.lm(p + "self_attn.k_proj.weight", {KV, H});
		t.v = L.lm(p + "self_attn.v_proj.weight", {KV, H});
		t.o = L.lm(p + "self_attn.o_proj.weight", {H, H});
		t.post_w = L.lm(p + "post_attention_layernorm.weight", {H});
		t.gate = L.lm(p + "mlp.gate_proj.weight", {I, H});
		t.up = L.lm(p + "mlp.up_proj.weight", {I, H});
		t.down = L.lm(p + "mlp.down_proj.weight", {H, I});
		m->tl.push_back(std::move(t));
	}
	m->inv_freq = 1.0 / torch::pow(c.rope_theta, torch::arange(0, hd, 2, torch::kDouble) / (double)hd);
	m->inv_freq = m->inv_freq.to(torch::kFloat).to(m->dev);
}

static torch::ScalarType torch_dtype(int d)
{
	return d == CLTFS_BF16 ? torch::kBFloat16 : d == CLTFS_F16 ? torch::kHalf : torch::kFloat;
}

static cltfs_err load_preproc(cap_model *m, const std::string &dir)
{
	std::string path = dir + "/preprocessor_config.json";
	char *text;
	size_t len;
	cltfs_err e = cltfs_read_file(path.c_str(), &text, &len);
	if (e == CLTFS_E_NOTFOUND)
		return cltfs_fail(e, "%s: missing (the checkpoint's image preprocessing)", path.c_str());
	if (e)
		return e;
	e = cap_preproc_parse(text, len, path.c_str(), &m->pre);
	free(text);
	if (!e && (m->pre.crop_h != m->c.v_image || m->pre.crop_w != m->c.v_image))
		e = cltfs_fail(CLTFS_E_FORMAT, "%s: crop_size %dx%d, but the vision tower takes %dx%d images", path.c_str(),
			       m->pre.crop_h, m->pre.crop_w, m->c.v_image, m->c.v_image);
	return e;
}

// "cpu", "cuda", "cuda:N", or NULL / "auto" (the first GPU when there is
// one).  CUDA_VISIBLE_DEVICES is the CUDA runtime's: N counts what it shows.
static cltfs_err pick_device(const char *want, torch::Device *dev, std::string *name)
{
	int idx;
	int kind = cap_device_parse(want, &idx);
	if (kind < 0)
		return cltfs_fail(CLTFS_E_INVAL, "device %s: expected cpu, cuda or cuda:N", want);
	if (kind == CAP_DEVICE_CPU || (kind == CAP_DEVICE_AUTO && !torch::cuda::is_available())) {
		*dev = torch::Device(torch::kCPU);
		*name = "cpu";
		return CLTFS_OK;
	}
	if (kind == CAP_DEVICE_CUDA && !CLTFS_TORCH_CUDA)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "device %s: the capture library was built against torch %s from %s, "
				  "which has no CUDA (rebuild it against a CUDA torch: TORCH_DIR=DIR, or a python3 "
				  "whose torch has CUDA)", want, CLTFS_TORCH_VERSION, CLTFS_TORCH_FROM);
	if (kind == CAP_DEVICE_CUDA && !torch::cuda::is_available()) {
		const char *vis = getenv("CUDA_VISIBLE_DEVICES");
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "device %s: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES=%s)", want,
				  vis ? vis : "unset");
	}
	if ((size_t)idx >= torch::cuda::device_count())
		return cltfs_fail(CLTFS_E_INVAL, "device %s: %zu CUDA GPU(s) visible, numbered from 0", want,
				  torch::cuda::device_count());
	*dev = torch::Device(torch::kCUDA, (c10::DeviceIndex)idx);
	*name = "cuda:" + std::to_string(idx);
	return CLTFS_OK;
}

extern "C" cltfs_err capimpl_device_check(const char *device)
{
	torch::Device dev = torch::kCPU;
	std::string name;
	try {
		return pick_device(device, &dev, &name);
	} catch (const std::exception &x) {
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "device %s: %s", device, x.what());
	}
}

extern "C" cltfs_err capimpl_model_load(const cap_load_opts *o, cap_model **out)
{
	auto m = std::make_unique<cap_model>();
	std::string dir = o->dir;
	cltfs_err e = cap_config_load(o->dir, &m->c);
	if (!e)
		e = load_preproc(m.get(), dir);
	if (e)
		return e;
	try {
		if ((e = pick_device(o->device, &m->dev, &m->dev_name)))
			return e;
		bool gpu = m->dev.is_cuda();
		int d = o->dtype >= 0 ? o->dtype : gpu ? CLTFS_BF16 : CLTFS_F32;
		m->dt = torch_dtype(d);
		m->dt_name = cltfs_dtype_name((cltfs_dtype)d);
		if (o->threads > 0)
			torch::set_num_threads(o->threads);
		std::map<std::string, st_tensor> tensors;
		if ((e = st_load_dir(dir, m->files, tensors)))
			return e;
		torch::NoGradGuard ng;
		loader L{tensors, m.get(), dir};
		load_vision(L, m.get());
		load_text(L, m.get());
		if (L.e)
			return L.e;
	} catch (const std::exception &x) {
		return cltfs_fail(CLTFS_E_IO, "%s: loading the model: %s", o->dir, x.what());
	}
	m->files.clear(); // every tensor is read: the shards can close
	*out = m.release();
	return CLTFS_OK;
}

extern "C" void capimpl_model_free(cap_model *m) { delete m; }
// The message of the calling thread's last failure in this library.
extern "C" const char *capimpl_errmsg(void) { return cltfs_errmsg(); }
extern "C" const cap_config *capimpl_model_config(const cap_model *m) { return &m->c; }
extern "C" const char *capimpl_model_device(const cap_model *m) { return m->dev_name.c_str(); }
extern "C" const char *capimpl_model_dtype(const cap_model *m) { return m->dt_name.c_str(); }

extern "C" void capimpl_build_info(char *buf, size_t n)
{
	std::string cuda = "no";
	try {
		if (CLTFS_TORCH_CUDA)
			cuda = torch::cuda::is_available() ? "yes, " + std::to_string(torch::cuda::device_count()) + " GPU(s) visible"
							   : "yes, no GPU visible";
	} catch (const std::exception &x) {
		cuda = std::string("yes, but: ") + x.what();
	}
	snprintf(buf, n, "torch %s from %s, CUDA: %s", CLTFS_TORCH_VERSION, CLTFS_TORCH_FROM, cuda.c_str());
}

// Free memory on the model's GPU, from the CUDA runtime libtorch loaded
// (found by name: the library builds without CUDA headers).
static bool gpu_free_bytes(const cap_model *m, size_t *free_b)
{
	static const char *names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"};
	c10::DeviceGuard guard(m->dev); // cudaMemGetInfo answers for the current device
	for (const char *name : names) {
		void *h = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
		if (!h)
			continue;
		auto fn = (int (*)(size_t *, size_t *))dlsym(h, "cudaMemGetInfo");
		size_t total;
		bool ok = fn && fn(free_b, &total) == 0;
		dlclose(h);
		if (ok)
			return true;
	}
	return false;
}

// Samples per forward pass: 1 on the CPU (padding gains nothing there); on
// a GPU as many samples of `rows` rows as 70% of its free memory holds, by
// the peak of one decoder layer: about 14 H-wide and 3 I-wide rows of the
// compute dtype a row, the attention scores (heads x T x T, in the dtype
// and in fp32), and the outputs on their way to the host.
extern "C" int capimpl_model_batch(cap_model *m, int64_t rows)
{
	size_t free_b;
	if (!m->dev.is_cuda())
		return 1;
	try {
		if (!gpu_free_bytes(m, &free_b))
			return 8;
	} catch (const std::exception &) {
		return 8;
	}
	double T = (double)std::max<int64_t>(rows, 1), es = (double)c10::elementSize(m->dt);
	double per = T * (14.0 * m->c.d_model + 3.0 * m->c.intermediate) * es +
		     (double)m->c.n_heads * T * T * (2 * es + 4) + 8.0 * T * m->c.d_model * 4;
	double n = 0.7 * (double)free_b / per;
	return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

// ---- forward ----

static Tensor dense(const Tensor &x, const Tensor &w, const Tensor &b = Tensor())
{
	return b.defined() ? torch::addmm(b, x, w.t()) : torch::matmul(x, w.t());
}

// softmax(q k^T * scale [+ causal mask]) v over [..., heads, T, hd]; the
// softmax in fp32 as transformers does.
static Tensor attend(const Tensor &q, const Tensor &k, const Tensor &v, double scale, bool causal)
{
	Tensor w = torch::matmul(q, k.transpose(-1, -2)) * scale;
	if (causal) {
		int64_t T = q.size(-2);
		Tensor mask = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(1);
		w = w.masked_fill(mask, -std::numeric_limits<float>::infinity());
	}
	w = torch::softmax(w.to(torch::kFloat), -1).to(q.scalar_type());
	return torch::matmul(w, v);
}

static Tensor vision(cap_model *m, const Tensor &pix)
{
	const cap_config &c = m->c;
	int64_t D = c.v_hidden, hd = D / c.v_heads;
	Tensor x = torch::conv2d(pix, m->patch_w, {}, c.v_patch).flatten(2).transpose(1, 2).squeeze(0); // [P, D]
	x = torch::cat({m->cls.unsqueeze(0), x}, 0) + m->pos;
	x = torch::layer_norm(x, {D}, m->pre_w, m->pre_b, c.v_eps);
	double scale = 1.0 / std::sqrt((double)hd);
	for (auto &l : m->vl) {
		Tensor h = torch::layer_norm(x, {D}, l.ln1_w, l.ln1_b, c.v_eps);
		int64_t T = h.size(0);
		// transformers scales q before the product; the same rounding here
		Tensor q = (dense(h, l.q_w, l.q_b) * scale).view({T, c.v_heads, hd}).transpose(0, 1);
		Tensor k = dense(h, l.k_w, l.k_b).view({T, c.v_heads, hd}).transpose(0, 1);
		Tensor v = dense(h, l.v_w, l.v_b).view({T, c.v_heads, hd}).transpose(0, 1);
		Tensor a = attend(q, k, v, 1.0, false).transpose(0, 1).reshape({T, D});
		x = x + dense(a, l.o_w, l.o_b);
		h = torch::layer_norm(x, {D}, l.ln2_w, l.ln2_b, c.v_eps);
		h = dense(h, l.fc1_w, l.fc1_b);
		h = h * torch::sigmoid(1.702 * h); // quick_gelu
		x = x + dense(h, l.fc2_w, l.fc2_b);
	}
	Tensor f = x.slice(0, 1); // the class token dropped ("default")
	f = torch::gelu(dense(f, m->p1_w, m->p1_b));
	return dense(f, m->p2_w, m->p2_b);
}

static Tensor rmsnorm(const Tensor &x, const Tensor &w, double eps)
{
	Tensor f = x.to(torch::kFloat);
	f = f * torch::rsqrt(f.pow(2).mean(-1, true) + eps);
	return w * f.to(x.scalar_type());
}

static Tensor rotate_half(const Tensor &x)
{
	int64_t h = x.size(-1) / 2;
	return torch::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
}

// The streams on their way out.  On a GPU a layer's output is converted to
// the store's dtype there, copied to pinned host memory asynchronously and
// handed over once its event has fired, while the layers after it already
// run; on the CPU it is handed over at once.  Either way emit sees each
// stream in layer order.
struct emitter {
	cap_emit fn;
	void *arg;
	torch::ScalarType out;
	std::vector<int64_t> rows; // of each sample: the rest of its row is padding
	torch::Device dev = torch::kCPU;
	cltfs_err e = CLTFS_OK;
	struct pending {
		int kind, layer;
		Tensor host;
		std::unique_ptr<c10::Event> done;
	};
	std::deque<pending> q;
	enum { IN_FLIGHT = 4 };

	void deliver(int kind, int layer, const Tensor &c)
	{
		for (size_t i = 0; i < rows.size() && !e; i++)
			e = fn(arg, i, kind, layer, c[(int64_t)i].data_ptr(), rows[i]);
	}
	void operator()(int kind, int layer, const Tensor &t)
	{
		if (e)
			return;
		if (!dev.is_cuda()) {
			deliver(kind, layer, t.to(out).contiguous());
			return;
		}
		Tensor d = t.to(out).contiguous(); // freed on the stream's order: the copy finishes first
		Tensor h = torch::empty(d.sizes(), torch::TensorOptions().dtype(out).pinned_memory(true));
		h.copy_(d, /*non_blocking=*/true);
		auto ev = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
		ev->record(c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(dev));
		q.push_back({kind, layer, h, std::move(ev)});
		drain(IN_FLIGHT);
	}
	// Hand over what has arrived, and wait for the oldest until at most
	// `keep` copies are in flight.
	void drain(size_t keep)
	{
		while (!q.empty() && (q.size() > keep || q.front().done->query())) {
			while (!q.front().done->query())
				usleep(20);
			if (!e)
				deliver(q.front().kind, q.front().layer, q.front().host);
			q.pop_front();
		}
	}
};

// The decoder over x [B, T, H]: samples right-padded to the longest, so
// that with the causal mask no row of a sample sees a padding row, and
// positions are 0.. in every sample as they are alone.
static void decoder(cap_model *m, Tensor x, int hook, emitter &emit)
{
	const cap_config &c = m->c;
	int64_t B = x.size(0), T = x.size(1), H = c.d_model, nh = c.n_heads, kvh = c.n_kv_heads, hd = H / nh;
	Tensor pos = torch::arange(T, torch::TensorOptions().dtype(torch::kFloat).device(m->dev));
	Tensor freqs = torch::outer(pos, m->inv_freq);
	Tensor emb = torch::cat({freqs, freqs}, -1);
	Tensor cos = emb.cos().to(m->dt), sin = emb.sin().to(m->dt);
	double scale = 1.0 / std::sqrt((double)hd);
	for (int L = 0; L < c.n_layers && !emit.e; L++) {
		tlayer &l = m->tl[L];
		if (hook == CAP_HOOK_RESID_PRE)
			emit(0, L, x);
		Tensor h = rmsnorm(x, l.in_w, c.rms_eps);
		Tensor q = dense(h, l.q).view({B, T, nh, hd}).transpose(1, 2);
		Tensor k = dense(h, l.k).view({B, T, kvh, hd}).transpose(1, 2);
		Tensor v = dense(h, l.v).view({B, T, kvh, hd}).transpose(1, 2);
		q = q * cos + rotate_half(q) * sin;
		k = k * cos + rotate_half(k) * sin;
		if (kvh != nh) { // each key/value head serves nh / kvh query heads
			k = k.repeat_interleave(nh / kvh, 1);
			v = v.repeat_interleave(nh / kvh, 1);
		}
		Tensor a = attend(q, k, v, scale, true).transpose(1, 2).reshape({B, T, H});
		x = x + dense(a, l.o);
		if (hook == CAP_HOOK_RESID_MID)
			emit(0, L, x);
		h = rmsnorm(x, l.post_w, c.rms_eps);
		if (hook == CAP_HOOK_MLP_IN)
			emit(0, L, h);
		Tensor mo = dense(torch::silu(dense(h, l.gate)) * dense(h, l.up), l.down);
		emit(1, L, mo);
		x = x + mo;
	}
	emit.drain(0);
}

// The embeddings of ids, each image token replaced by the image's rows.
static cltfs_err embed(cap_model *m, const cap_sample *s, Tensor *out)
{
	const cap_config &c = m->c;
	std::vector<Tensor> parts;
	Tensor ids = torch::from_blob((void *)s->ids, {(int64_t)s->n}, torch::kInt).to(torch::kLong);
	size_t images = 0, start = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (s->ids[i] < 0 || s->ids[i] >= c.vocab_size)
			return cltfs_fail(CLTFS_E_INVAL, "token id %d is outside the vocabulary (%d)", s->ids[i], c.vocab_size);
		images += s->ids[i] == c.image_token;
	}
	if (images != (s->image ? 1u : 0u))
		return cltfs_fail(CLTFS_E_INVAL, "the prompt has %zu <image> tokens for %s image", images,
				  s->image ? "one" : "no");
	Tensor feats;
	if (s->image) {
		float *px;
		int h, w;
		cltfs_err e = cap_image_load(s->image, &m->pre, &px, &h, &w);
		if (e)
			return e;
		// the tensor owns px: .to() is no copy when dtype and device match
		Tensor pix = torch::from_blob(px, {1, 3, h, w}, [](void *p) { free(p); }, torch::kFloat).to(m->dev, m->dt);
		feats = vision(m, pix);
	}
	for (size_t i = 0; i <= s->n; i++) {
		if (i < s->n && s->ids[i] != c.image_token)
			continue;
		if (i > start)
			parts.push_back(m->embed.index_select(0, ids.slice(0, (int64_t)start, (int64_t)i).to(m->dev)));
		if (i < s->n)
			parts.push_back(feats);
		start = i + 1;
	}
	*out = torch::cat(parts, 0);
	return CLTFS_OK;
}

extern "C" cltfs_err capimpl_forward(cap_model *m, const cap_sample *s, size_t n, int input_hook, cltfs_dtype out,
				     cap_emit fn, void *arg)
{
	emitter emit{fn, arg, torch_dtype(out), {}, m->dev, CLTFS_OK, {}};
	try {
		c10::InferenceMode guard; /* no autograd bookkeeping at all */
		std::vector<Tensor> xs(n);
		int64_t T = 0;
		for (size_t i = 0; i < n; i++) {
			cltfs_err e = embed(m, &s[i], &xs[i]);
			if (e)
				return n > 1 ? cltfs_wrap(e, "sample %zu of %zu", i + 1, n) : e;
			emit.rows.push_back(xs[i].size(0));
			T = std::max(T, xs[i].size(0));
		}
		for (auto &x : xs) // right padding with zero rows
			if (x.size(0) < T)
				x = torch::cat({x, torch::zeros({T - x.size(0), x.size(1)}, x.options())}, 0);
		decoder(m, torch::stack(xs, 0), input_hook, emit);
	} catch (const std::exception &x) {
		return cltfs_fail(CLTFS_E_IO, "the forward pass failed: %s", x.what());
	}
	return emit.e;
}
