/* loader.c: the model half of capture.h, from libcltfs-capture.so.
 *
 * libtorch costs 0.7 s at every start of a binary linked with it, and only
 * a capture needs it: the library is opened on the first cap_model_load.
 * It is found at $CLTFS_CAPTURE_LIB, else beside the binary, else in
 * ../lib/cltfs/ from the binary (make install puts it there).  The library
 * has its own copy of cltfs's error message: a failed call's message is
 * copied from it (capimpl_errmsg) into this thread's.
 */
#include "capture.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LIB "libcltfs-capture.so"

static struct {
	cltfs_err (*load)(const cap_load_opts *, cap_model **);
	void (*free)(cap_model *);
	const cap_config *(*config)(const cap_model *);
	const char *(*device)(const cap_model *);
	const char *(*dtype)(const cap_model *);
	cltfs_err (*forward)(cap_model *, const cap_sample *, size_t, int, cltfs_dtype, cap_emit, void *);
	const char *(*errmsg)(void);
	int (*batch)(cap_model *, int64_t);
	void (*build_info)(char *, size_t);
	cltfs_err (*device_check)(const char *);
} impl;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char failure[2048]; /* why the library could not be loaded */

static void *try_open(const char *path, char *why, size_t n)
{
	if (access(path, F_OK))
		return NULL;
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		snprintf(why, n, "%s", dlerror());
	return h;
}

static void open_lib(void)
{
	char exe[PATH_MAX], path[PATH_MAX + 64], why[1024] = "";
	const char *env = getenv("CLTFS_CAPTURE_LIB");
	void *h = NULL;
	if (env && *env) {
		h = try_open(env, why, sizeof why);
		if (!h && !*why)
			snprintf(why, sizeof why, "%s: no such file ($CLTFS_CAPTURE_LIB)", env);
	} else {
		ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
		exe[n > 0 ? n : 0] = 0;
		char *slash = strrchr(exe, '/');
		if (slash)
			*slash = 0;
		snprintf(path, sizeof path, "%s/" LIB, exe);
		h = try_open(path, why, sizeof why);
		if (!h && !*why) {
			snprintf(path, sizeof path, "%s/../lib/cltfs/" LIB, exe);
			h = try_open(path, why, sizeof why);
		}
		if (!h && !*why)
			snprintf(why, sizeof why, "%s not found beside %s or in %s/../lib/cltfs (set CLTFS_CAPTURE_LIB)",
				 LIB, exe, exe);
	}
	if (!h) {
		snprintf(failure, sizeof failure, "the capture library: %s", why);
		return;
	}
	const char *names[] = {"capimpl_model_load", "capimpl_model_free",  "capimpl_model_config",
			       "capimpl_model_device", "capimpl_model_dtype", "capimpl_forward",
			       "capimpl_errmsg",       "capimpl_model_batch", "capimpl_build_info",
			       "capimpl_device_check"};
	void **slots[] = {(void **)&impl.load,   (void **)&impl.free,    (void **)&impl.config,
			  (void **)&impl.device, (void **)&impl.dtype,   (void **)&impl.forward,
			  (void **)&impl.errmsg, (void **)&impl.batch,   (void **)&impl.build_info,
			  (void **)&impl.device_check};
	for (size_t i = 0; i < sizeof names / sizeof *names; i++)
		if (!(*slots[i] = dlsym(h, names[i]))) {
			snprintf(failure, sizeof failure, "the capture library lacks %s: %s", names[i], dlerror());
			impl.load = NULL;
			return;
		}
}

static bool ready(void)
{
	pthread_once(&once, open_lib);
	if (!impl.load)
		cltfs_fail(CLTFS_E_UNSUPPORTED, "%s", failure);
	return impl.load != NULL;
}

/* The library's message for its error e, as this thread's. */
static cltfs_err from_lib(cltfs_err e)
{
	return e ? cltfs_fail(e, "%s", impl.errmsg()) : CLTFS_OK;
}

cltfs_err cap_model_load(const cap_load_opts *o, cap_model **out)
{
	return ready() ? from_lib(impl.load(o, out)) : CLTFS_E_UNSUPPORTED;
}

/* A model exists only if the library loaded: impl is set. */
void cap_model_free(cap_model *m)
{
	if (m)
		impl.free(m);
}
const cap_config *cap_model_config(const cap_model *m) { return impl.config(m); }
const char *cap_model_device(const cap_model *m) { return impl.device(m); }
const char *cap_model_dtype(const cap_model *m) { return impl.dtype(m); }
int cap_model_batch(cap_model *m, int64_t rows) { return impl.batch(m, rows); }

cltfs_err cap_device_check(const char *device)
{
	int idx;
	int kind = cap_device_parse(device, &idx);
	if (kind < 0)
		return cltfs_fail(CLTFS_E_INVAL, "device %s: expected cpu, cuda or cuda:N", device);
	if (kind != CAP_DEVICE_CUDA) /* the CPU, or a GPU if there is one: always possible */
		return CLTFS_OK;
	return ready() ? from_lib(impl.device_check(device)) : CLTFS_E_UNSUPPORTED;
}

void cap_build_info(char *buf, size_t n)
{
	if (ready())
		impl.build_info(buf, n);
	else
		snprintf(buf, n, "unavailable: %s", failure);
}

/* The caller's emit, noting whether it failed: its message is this
 * thread's already, and the library returns its error as it is. */
typedef struct {
	cap_emit fn;
	void *arg;
	bool failed;
} emit_ref;

static cltfs_err emit_through(void *arg, size_t i, int kind, int layer, const void *rows, int64_t nrows)
{
	emit_ref *r = arg;
	cltfs_err e = r->fn(r->arg, i, kind, layer, rows, nrows);
	r->failed |= e != CLTFS_OK;
	return e;
}

cltfs_err cap_forward(cap_model *m, const cap_sample *s, size_t n, int input_hook, cltfs_dtype out, cap_emit emit,
		      void *arg)
{
	emit_ref r = {emit, arg, false};
	cltfs_err e = impl.forward(m, s, n, input_hook, out, emit_through, &r);
	return r.failed ? e : from_lib(e);
}
