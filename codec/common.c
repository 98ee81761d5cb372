/* common.c: the error message, dtypes and CRC-32 helpers. */
#include "codec.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

/* One message per thread: FUSE worker threads fail independently. */
static _Thread_local char errbuf[1024];

cltfs_err cltfs_fail(cltfs_err e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof errbuf, fmt, ap);
	va_end(ap);
	return e;
}

cltfs_err cltfs_wrap(cltfs_err e, const char *fmt, ...)
{
	char prefix[512], old[sizeof errbuf], both[sizeof prefix + sizeof old + 2];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	memcpy(old, errbuf, sizeof old);
	snprintf(both, sizeof both, "%s: %s", prefix, old);
	memcpy(errbuf, both, sizeof errbuf - 1); /* truncate long chains */
	errbuf[sizeof errbuf - 1] = 0;
	return e;
}

const char *cltfs_errmsg(void) { return errbuf; }

cltfs_err cltfs_mkdirs(const char *path, size_t len)
{
	char buf[4096];
	if (len >= sizeof buf)
		return cltfs_fail(CLTFS_E_INVAL, "%.*s...: path too long", 64, path);
	memcpy(buf, path, len);
	buf[len] = 0;
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || !*p) {
			char c = *p;
			*p = 0;
			if (mkdir(buf, 0755) < 0 && errno != EEXIST)
				return cltfs_fail(CLTFS_E_IO, "%s: %s", buf, strerror(errno));
			if (!c)
				return CLTFS_OK;
			*p = c;
		}
	}
}

/* len bytes of src from its start to fd: 0, an errno of either side, or -1
 * when src ends first (its message is the caller's to say). */
static int copy_fd(int fd, int src, uint64_t len)
{
	char buf[1 << 16];
	for (uint64_t done = 0; done < len;) {
		size_t k = len - done < sizeof buf ? (size_t)(len - done) : sizeof buf;
		int r = cltfs_pread_full(src, buf, k, done);
		if (r || (r = cltfs_pwrite_full(fd, buf, k, done)))
			return r;
		done += k;
	}
	return 0;
}

/* Replace path, by way of a temporary file beside it, with len bytes of
 * data or, when data is NULL, the first len bytes of the file src. */
static cltfs_err write_atomic(const char *path, const void *data, int src, uint64_t len)
{
	char tmp[4096];
	/* the thread's id too: threads of one process may write one path at
	 * once (the HF cache's CACHEDIR.TAG, by a mount's metadata fetches) */
	snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%ld", path, (long)getpid(), (long)gettid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", tmp, strerror(errno));
	int r = data || !len ? cltfs_pwrite_full(fd, data, (size_t)len, 0) : copy_fd(fd, src, len);
	if (!r && fsync(fd) < 0)
		r = errno;
	if (r) {
		close(fd);
		unlink(tmp);
		return cltfs_fail(CLTFS_E_IO, "%s: %s", tmp, r < 0 ? "its source ended early" : strerror(r));
	}
	close(fd);
	if (rename(tmp, path) < 0) {
		int err = errno;
		unlink(tmp);
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(err));
	}
	/* Make the rename durable: fsync the directory. */
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	int dfd = open(slash ? (*dir ? dir : "/") : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return CLTFS_OK;
}

cltfs_err cltfs_write_atomic(const char *path, const void *data, size_t len)
{
	return write_atomic(path, data, -1, len);
}

cltfs_err cltfs_write_atomic_from(const char *path, int src, uint64_t len)
{
	return write_atomic(path, NULL, src, len);
}

double cltfs_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

typedef struct {
	cltfs_err (*fn)(void *arg, size_t i);
	void *arg;
	size_t n;
	pthread_mutex_t mu; /* guards what follows */
	size_t next;        /* the next item to take */
	size_t failed;      /* the item of err */
	cltfs_err err;
	char msg[1024];
} par_run;

static void *par_main(void *arg)
{
	par_run *r = arg;
	for (;;) {
		pthread_mutex_lock(&r->mu);
		size_t i = r->err ? r->n : r->next;
		r->next += i < r->n;
		pthread_mutex_unlock(&r->mu);
		if (i >= r->n)
			return NULL;
		cltfs_err e = r->fn(r->arg, i);
		if (!e)
			continue;
		/* items are taken in order: every one below the first failure
		 * recorded was taken, so the lowest failing one lands here too */
		pthread_mutex_lock(&r->mu);
		if (!r->err || i < r->failed) {
			r->err = e;
			r->failed = i;
			snprintf(r->msg, sizeof r->msg, "%s", cltfs_errmsg());
		}
		pthread_mutex_unlock(&r->mu);
	}
}

cltfs_err cltfs_parallel(size_t n, int threads, cltfs_err (*fn)(void *arg, size_t i), void *arg)
{
	enum { MAX_THREADS = 64 };
	par_run r = {.fn = fn, .arg = arg, .n = n};
	pthread_t t[MAX_THREADS];
	size_t nt = 0, want = threads < 1 ? 0 : threads > MAX_THREADS ? MAX_THREADS - 1 : (size_t)threads - 1;
	pthread_mutex_init(&r.mu, NULL);
	while (nt < want && nt + 1 < n && !pthread_create(&t[nt], NULL, par_main, &r))
		nt++;
	par_main(&r);
	for (size_t i = 0; i < nt; i++)
		pthread_join(t[i], NULL);
	pthread_mutex_destroy(&r.mu);
	return r.err ? cltfs_fail(r.err, "%s", r.msg) : CLTFS_OK;
}

cltfs_err cltfs_read_file(const char *path, char **out, size_t *len)
{
	/* O_NONBLOCK and fstat first: a FIFO named cltfs.json hung every
	 * command, and a link to /dev/zero grew memory without end */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return cltfs_fail(errno == ENOENT ? CLTFS_E_NOTFOUND : CLTFS_E_IO, "%s: %s", path, strerror(errno));
	struct stat st;
	cltfs_err e = fstat(fd, &st) ? cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno))
		      : !S_ISREG(st.st_mode) ? cltfs_fail(CLTFS_E_FORMAT, "%s: not a regular file", path)
		      : st.st_size > CLTFS_READ_FILE_MAX
			      ? cltfs_fail(CLTFS_E_FORMAT, "%s: %lld bytes, more than the %d MiB cltfs reads whole", path,
					   (long long)st.st_size, CLTFS_READ_FILE_MAX >> 20)
			      : CLTFS_OK;
	size_t n = 0, cap = e ? 0 : (size_t)st.st_size + 1;
	char *buf = e ? NULL : malloc(cap);
	if (!e && !buf)
		e = cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory for %zu bytes", path, cap);
	while (!e && n < cap - 1) { /* the size fstat gave: a file that grows meanwhile is cut there */
		ssize_t k = read(fd, buf + n, cap - 1 - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			e = cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	if (e) {
		free(buf);
		return e;
	}
	buf[n] = 0;
	*out = buf;
	*len = n;
	return CLTFS_OK;
}

const char *cltfs_errname(cltfs_err e)
{
	static const char *const names[] = {
		"ok", "out of memory", "I/O error", "corrupt data", "bad format",
		"invalid argument", "not found", "mismatch", "unsupported",
	};
	return (unsigned)e < sizeof names / sizeof *names ? names[e] : "unknown error";
}

int cltfs_pread_full(int fd, void *buf, size_t n, uint64_t off)
{
	for (size_t done = 0; done < n;) {
		ssize_t k = pread(fd, (char *)buf + done, n - done, (off_t)(off + done));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? errno : -1;
		done += (size_t)k;
	}
	return 0;
}

int cltfs_pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
	for (size_t done = 0; done < n;) {
		ssize_t k = pwrite(fd, (const char *)buf + done, n - done, (off_t)(off + done));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? errno : EIO; /* 0 bytes written with room asked: never progress */
		done += (size_t)k;
	}
	return 0;
}

bool cltfs_grow(void *array, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t nc = *cap ? *cap : 16;
	while (nc < need)
		nc *= 2;
	/* memcpy, not *(void **)array: the pointer is a T *, not a void * */
	void *old, *np;
	memcpy(&old, array, sizeof old);
	np = nc > SIZE_MAX / elem ? NULL : realloc(old, nc * elem);
	if (!np)
		return false;
	memcpy(array, &np, sizeof np);
	*cap = nc;
	return true;
}

bool cltfs_reserve(void *buf, size_t *cap, size_t n)
{
	if (n <= *cap)
		return true;
	void *old, *np;
	memcpy(&old, buf, sizeof old);
	if (!(np = realloc(old, n)))
		return false;
	memcpy(buf, &np, sizeof np);
	*cap = n;
	return true;
}

/* ---- dtypes ---- */

static const struct {
	const char *name, *storage;
	size_t size;
} dtypes[CLTFS_NDTYPES] = {
	[CLTFS_BF16] = {"bfloat16", "BFloat16Storage", 2},
	[CLTFS_F16] = {"float16", "HalfStorage", 2},
	[CLTFS_F32] = {"float32", "FloatStorage", 4},
};

size_t cltfs_dtype_size(cltfs_dtype t) { return dtypes[t].size; }
const char *cltfs_dtype_name(cltfs_dtype t) { return dtypes[t].name; }
const char *cltfs_dtype_storage(cltfs_dtype t) { return dtypes[t].storage; }

bool cltfs_dtype_parse(const char *s, cltfs_dtype *out)
{
	static const struct { const char *s; cltfs_dtype t; } alias[] = {
		{"bfloat16", CLTFS_BF16}, {"bf16", CLTFS_BF16},
		{"float16", CLTFS_F16}, {"fp16", CLTFS_F16}, {"half", CLTFS_F16},
		{"float32", CLTFS_F32}, {"fp32", CLTFS_F32}, {"float", CLTFS_F32},
	};
	for (size_t i = 0; i < sizeof alias / sizeof *alias; i++)
		if (!strcasecmp(s, alias[i].s)) {
			*out = alias[i].t;
			return true;
		}
	return false;
}

static float bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static uint16_t f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1); /* round to nearest even */
	return (uint16_t)(u >> 16);
}

static float f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
	if (exp == 0x1f) {
		u = sign | 0x7f800000u | (man << 13);
	} else if (exp) {
		u = sign | ((exp + 112) << 23) | (man << 13);
	} else if (man) { /* subnormal: normalise */
		int e = -1;
		do {
			e++;
			man <<= 1;
		} while (!(man & 0x400));
		u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
	} else {
		u = sign;
	}
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static uint16_t f32_to_f16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
	uint32_t a = u & 0x7fffffffu;
	if (a > 0x7f800000u)
		return sign | 0x7e00; /* NaN */
	if (a >= 0x477ff000u)     /* rounds to >= 65520: infinity */
		return sign | 0x7c00;
	if (a < 0x38800000u) { /* below the smallest normal half */
		if (a < 0x33000000u)
			return sign;
		uint32_t man = (a & 0x7fffff) | 0x800000, shift = 126 - (a >> 23);
		uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
		if (rem > mid || (rem == mid && (half & 1)))
			half++;
		return sign | (uint16_t)half;
	}
	uint32_t r = a - 0x38000000u; /* rebias exponent 127 -> 15 */
	r += 0xfffu + ((r >> 13) & 1);
	return sign | (uint16_t)(r >> 13);
}

static float load_f32(cltfs_dtype t, const uint8_t *p, size_t i)
{
	uint16_t h;
	float f;
	switch (t) {
	case CLTFS_BF16:
		memcpy(&h, p + 2 * i, 2);
		return bf16_to_f32(h);
	case CLTFS_F16:
		memcpy(&h, p + 2 * i, 2);
		return f16_to_f32(h);
	default:
		memcpy(&f, p + 4 * i, 4);
		return f;
	}
}

void cltfs_convert(cltfs_dtype to, void *dst, cltfs_dtype from, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;
	if (to == from) {
		memmove(d, s, n * cltfs_dtype_size(to));
		return;
	}
	for (size_t i = 0; i < n; i++) {
		float f = load_f32(from, s, i);
		uint16_t h;
		switch (to) {
		case CLTFS_BF16:
			h = f32_to_bf16(f);
			memcpy(d + 2 * i, &h, 2);
			break;
		case CLTFS_F16:
			h = f32_to_f16(f);
			memcpy(d + 2 * i, &h, 2);
			break;
		default:
			memcpy(d + 4 * i, &f, 4);
		}
	}
}

/* ---- CRC-32 ---- */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CRC_CLMUL_MIN 64

/* CRC-32 of len bytes (at least 64, a multiple of 16) by carry-less
 * multiplication: four 128-bit lanes are folded forward 64 bytes at a time,
 * then into one, then Barrett-reduced (Intel, "Fast CRC Computation for
 * Generic Polynomials Using PCLMULQDQ", 2009; the bit-reflected constants
 * of zlib's polynomial, as in Linux's crc32-pclmul and Chromium's zlib).
 * crc is the pre-inverted running value, as zlib keeps it inside.  Why:
 * zlib 1.2's table CRC runs at 4 GB/s, which made the CRC check cost more
 * than copying a stored-raw chunk; this runs at memory speed. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc32_clmul(uint32_t crc, const uint8_t *buf, size_t len)
{
	const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
	const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
	const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
	const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
	const __m128i mask32 = _mm_setr_epi32(~0, 0, ~0, 0);
	__m128i x1 = _mm_loadu_si128((const __m128i *)buf), x2 = _mm_loadu_si128((const __m128i *)(buf + 16));
	__m128i x3 = _mm_loadu_si128((const __m128i *)(buf + 32)), x4 = _mm_loadu_si128((const __m128i *)(buf + 48));
	x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
	buf += 64;
	len -= 64;
	for (; len >= 64; buf += 64, len -= 64) {
		__m128i t1 = _mm_clmulepi64_si128(x1, k1k2, 0x00), t2 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
		__m128i t3 = _mm_clmulepi64_si128(x3, k1k2, 0x00), t4 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
		x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k1k2, 0x11), t1);
		x2 = _mm_xor_si128(_mm_clmulepi64_si128(x2, k1k2, 0x11), t2);
		x3 = _mm_xor_si128(_mm_clmulepi64_si128(x3, k1k2, 0x11), t3);
		x4 = _mm_xor_si128(_mm_clmulepi64_si128(x4, k1k2, 0x11), t4);
		x1 = _mm_xor_si128(x1, _mm_loadu_si128((const __m128i *)buf));
		x2 = _mm_xor_si128(x2, _mm_loadu_si128((const __m128i *)(buf + 16)));
		x3 = _mm_xor_si128(x3, _mm_loadu_si128((const __m128i *)(buf + 32)));
		x4 = _mm_xor_si128(x4, _mm_loadu_si128((const __m128i *)(buf + 48)));
	}
	/* four lanes into one, then the remaining 16-byte blocks */
	__m128i lanes[3] = {x2, x3, x4};
	for (int i = 0; i < 3; i++) {
		__m128i t = _mm_clmulepi64_si128(x1, k3k4, 0x00);
		x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), lanes[i]), t);
	}
	for (; len >= 16; buf += 16, len -= 16) {
		__m128i t = _mm_clmulepi64_si128(x1, k3k4, 0x00);
		x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), _mm_loadu_si128((const __m128i *)buf)),
				   t);
	}
	/* 128 bits to 64, then Barrett reduction to 32 */
	x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
	x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
	x2 = _mm_srli_si128(x1, 4);
	x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5k0, 0x00), x2);
	x2 = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x10);
	x2 = _mm_clmulepi64_si128(_mm_and_si128(x2, mask32), poly, 0x00);
	return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x1, x2), 1);
}

static bool have_clmul(void)
{
	return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}
#else
#define CRC_CLMUL_MIN SIZE_MAX
static uint32_t crc32_clmul(uint32_t crc, const uint8_t *buf, size_t len) { return crc; }
static bool have_clmul(void) { return false; }
#endif

uint32_t cltfs_crc32(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;
	if (n >= CRC_CLMUL_MIN && have_clmul()) {
		size_t whole = n & ~(size_t)15;
		crc = ~crc32_clmul(~crc, b, whole);
		b += whole;
		n -= whole;
	}
	while (n) { /* zlib takes uInt lengths */
		uInt step = n > (1u << 30) ? (1u << 30) : (uInt)n;
		crc = (uint32_t)crc32(crc, b, step);
		b += step;
		n -= step;
	}
	return crc;
}

uint32_t cltfs_crc32_combine(uint32_t a, uint32_t b, uint64_t len_b)
{
	return (uint32_t)crc32_combine64(a, b, (z_off64_t)len_b);
}

uint32_t cltfs_crc32_zeros(uint64_t n)
{
	/* z(2^k) by doubling, combined over the set bits of n. */
	uint8_t zero = 0;
	uint32_t pow = (uint32_t)crc32(0, &zero, 1), acc = 0;
	uint64_t powlen = 1;
	bool have = false;
	while (n) {
		if (n & 1) {
			acc = have ? cltfs_crc32_combine(acc, pow, powlen) : pow;
			have = true;
		}
		n >>= 1;
		if (n) {
			pow = cltfs_crc32_combine(pow, pow, powlen);
			powlen <<= 1;
		}
	}
	return acc;
}

/* ---- names ---- */

bool cltfs_parse_dec(const char *s, size_t n, int64_t *v)
{
	if (!n || n > 18 || (n > 1 && s[0] == '0'))
		return false;
	int64_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		x = x * 10 + (s[i] - '0');
	}
	*v = x;
	return true;
}

bool cltfs_parse_batch_name(const char *name, int64_t *k, int *is_y)
{
	size_t n = strlen(name);
	/* "batch_" k "_x.pt": 6 + at least one digit + 5 */
	if (n < 12 || strncmp(name, "batch_", 6) || strcmp(name + n - 3, ".pt") || name[n - 5] != '_')
		return false;
	char which = name[n - 4];
	if ((which != 'x' && which != 'y') || !cltfs_parse_dec(name + 6, n - 11, k))
		return false;
	*is_y = which == 'y';
	return true;
}
