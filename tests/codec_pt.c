/* The pickler, the restricted unpickler, the .pt writer and reader. */
#include "codec.h"
#include "unit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static pt_obj *tensor(pt_arena *a, const char *key, cltfs_dtype dt, int64_t s0, int64_t s1)
{
	pt_obj *t = pt_new(a, PT_TENSOR);
	snprintf(t->u.t.key, sizeof t->u.t.key, "%s", key);
	t->u.t.dtype = dt;
	t->u.t.ndim = 2;
	t->u.t.shape[0] = s0;
	t->u.t.shape[1] = s1;
	t->u.t.stride[0] = s1;
	t->u.t.stride[1] = 1;
	t->u.t.numel = s0 * s1;
	return t;
}

/* {'y': t0, 'targets': [t0, t1, z, z], 'n_targets': 4, 'big': 2^40, 'neg': -5} */
static pt_obj *sample_obj(pt_arena *a)
{
	pt_obj *d = pt_new(a, PT_DICT), *l = pt_new(a, PT_LIST);
	pt_obj *t0 = tensor(a, "0", CLTFS_BF16, 3, 4), *t1 = tensor(a, "1", CLTFS_BF16, 3, 4);
	pt_obj *z1 = tensor(a, "2", CLTFS_BF16, 3, 4), *z2 = tensor(a, "2", CLTFS_BF16, 3, 4);
	pt_append(a, l, t0);
	pt_append(a, l, t1);
	pt_append(a, l, z1);
	pt_append(a, l, z2);
	pt_set(a, d, pt_str(a, "y"), t0);
	pt_set(a, d, pt_str(a, "targets"), l);
	pt_set(a, d, pt_str(a, "n_targets"), pt_int(a, 4));
	pt_set(a, d, pt_str(a, "big"), pt_int(a, 1LL << 40));
	pt_set(a, d, pt_str(a, "neg"), pt_int(a, -5));
	return d;
}

static void test_pickle_roundtrip(void)
{
	pt_arena *a = pt_arena_new(), *b = pt_arena_new();
	uint8_t *p;
	size_t n;
	CHECK(pt_pickle(sample_obj(a), &p, &n) == CLTFS_OK);
	pt_obj *r;
	CHECK(pt_unpickle(b, p, n, &r) == CLTFS_OK);
	CHECK(r->kind == PT_DICT && r->u.dict.n == 5);
	pt_obj *y = pt_get(r, "y"), *tg = pt_get(r, "targets");
	CHECK(y && tg && tg->kind == PT_LIST && tg->u.seq.n == 4);
	CHECK(y == tg->u.seq.v[0]); /* the same object through the memo */
	CHECK(tg->u.seq.v[2] != tg->u.seq.v[3] && !strcmp(tg->u.seq.v[3]->u.t.key, "2"));
	CHECK(y->u.t.shape[0] == 3 && y->u.t.shape[1] == 4 && y->u.t.dtype == CLTFS_BF16 && y->u.t.numel == 12);
	CHECK(pt_get(r, "big")->u.i == (1LL << 40) && pt_get(r, "neg")->u.i == -5);
	CHECK(pt_get(r, "n_targets")->u.i == 4);
	/* Every strict prefix fails cleanly (ASan watches the reads). */
	for (size_t cut = 0; cut < n; cut++) {
		pt_arena *c = pt_arena_new();
		pt_obj *x;
		CHECK(pt_unpickle(c, p, cut, &x) != CLTFS_OK);
		pt_arena_free(c);
	}
	free(p);
	pt_arena_free(a);
	pt_arena_free(b);
}

static void test_unpickle_refuses(void)
{
	/* pickle.dumps(os.system) style: GLOBAL 'posix system' */
	static const uint8_t evil[] = "\x80\x02" "cposix\nsystem\n" "X\x02\x00\x00\x00id" "\x85R.";
	static const uint8_t builtins[] = "\x80\x02" "cbuiltins\neval\n" ".";
	static const uint8_t stack_global[] = "\x80\x04" "\x8c\x02os\x8c\x06system\x93.";
	static const uint8_t bad_op[] = "\x80\x02" "i__main__\nX\n.";
	static const uint8_t storage_reduce[] = "\x80\x02" "ctorch\nFloatStorage\n)R.";
	const struct { const uint8_t *p; size_t n; const char *why; } cases[] = {
		{evil, sizeof evil - 1, "refusing global posix.system"},
		{builtins, sizeof builtins - 1, "refusing global builtins.eval"},
		{stack_global, sizeof stack_global - 1, "refusing global os.system"},
		{bad_op, sizeof bad_op - 1, "not accepted"},
		{storage_reduce, sizeof storage_reduce - 1, "REDUCE"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		pt_arena *a = pt_arena_new();
		pt_obj *r;
		CHECK(pt_unpickle(a, cases[i].p, cases[i].n, &r) == CLTFS_E_FORMAT);
		CHECK(strstr(cltfs_errmsg(), cases[i].why) != NULL);
		pt_arena_free(a);
	}
}

/* Produce every byte of a pt_file, storages filled by fill(). */
static uint8_t *render(pt_file *f, const uint8_t *const *data)
{
	uint64_t size = pt_file_size(f);
	uint8_t *out = malloc(size);
	pt_piece pc[64];
	uint64_t pos = 0;
	while (pos < size) {
		size_t n = pt_file_map(f, pos, size - pos, pc, 64);
		for (size_t i = 0; i < n; i++) {
			if (pc[i].storage < 0)
				pt_file_literal(f, pc[i].off, pc[i].len, out + pos);
			else
				memcpy(out + pos, data[pc[i].storage] + pc[i].off, pc[i].len);
			pos += pc[i].len;
		}
	}
	return out;
}

static void test_writer_reader(void)
{
	pt_arena *a = pt_arena_new();
	uint8_t *pkl;
	size_t plen;
	CHECK(pt_pickle(sample_obj(a), &pkl, &plen) == CLTFS_OK);
	uint8_t s0[24], s1[24], s2[24] = {0};
	for (int i = 0; i < 24; i++) {
		s0[i] = (uint8_t)i;
		s1[i] = (uint8_t)(100 + i);
	}
	const uint8_t *data[] = {s0, s1, s2};
	const char *keys[] = {"0", "1", "2"};
	uint64_t sizes[] = {24, 24, 24};
	pt_file *f;
	CHECK(pt_file_new("batch_0_y", pkl, plen, 3, keys, sizes, &f) == CLTFS_OK);
	bool need[3];
	CHECK(pt_file_crcs_needed(f, 0, pt_file_size(f), need) == 3);
	CHECK(pt_file_crcs_needed(f, 0, 10, need) == 0); /* data.pkl's header needs none */
	for (int i = 0; i < 3; i++)
		pt_file_set_crc(f, (size_t)i, cltfs_crc32(0, data[i], 24));
	uint8_t *file = render(f, data);
	uint64_t size = pt_file_size(f);
	/* ranges give the same bytes as the whole */
	unsigned long long s = 5;
	for (int i = 0; i < 200; i++) {
		uint64_t off = unit_rand(&s) % size, len = unit_rand(&s) % (size - off) + 1;
		uint8_t *part = malloc(len);
		pt_piece pc[64];
		uint64_t pos = off;
		while (pos < off + len) {
			size_t n = pt_file_map(f, pos, off + len - pos, pc, 64);
			for (size_t j = 0; j < n; j++) {
				if (pc[j].storage < 0)
					pt_file_literal(f, pc[j].off, pc[j].len, part + (pos - off));
				else
					memcpy(part + (pos - off), data[pc[j].storage] + pc[j].off, pc[j].len);
				pos += pc[j].len;
			}
		}
		CHECK(!memcmp(part, file + off, len));
		free(part);
	}
	pt_archive *ar;
	CHECK(pt_open_mem(file, size, "mem", &ar) == CLTFS_OK);
	CHECK(pt_check_crcs(ar, "mem") == CLTFS_OK);
	const pt_obj *r = pt_root(ar), *tg = pt_get(r, "targets");
	CHECK(tg && tg->u.seq.n == 4);
	const uint8_t *d1 = pt_tensor_data(ar, tg->u.seq.v[1]);
	CHECK(d1 && !memcmp(d1, s1, 24));
	CHECK(((uintptr_t)(d1 - file)) % 64 == 0); /* storages are 64-byte aligned */
	pt_close(ar);
	/* a wrong CRC is found */
	pt_file_set_crc(f, 1, 0x1234);
	uint8_t *bad = render(f, data);
	CHECK(pt_open_mem(bad, size, "bad", &ar) == CLTFS_OK);
	CHECK(pt_check_crcs(ar, "bad") == CLTFS_E_CORRUPT);
	pt_close(ar);
	/* every truncation of the archive is refused cleanly */
	for (uint64_t cut = 0; cut < size; cut += 13)
		if (pt_open_mem(file, cut, "cut", &ar) == CLTFS_OK) {
			pt_close(ar);
			CHECK(!"a truncated archive opened");
		}
	free(bad);
	free(file);
	free(pkl);
	pt_file_free(f);
	pt_arena_free(a);
}

/* A 5 GiB storage needs ZIP64: write the literal parts into a sparse file,
 * read it back with our reader and Python's zipfile. */
static void test_zip64(void)
{
	pt_arena *a = pt_arena_new();
	pt_obj *t = tensor(a, "0", CLTFS_F32, 5, 1LL << 28); /* 5 GiB of float32 */
	pt_obj *d = pt_new(a, PT_DICT);
	pt_set(a, d, pt_str(a, "x"), t);
	uint8_t *pkl;
	size_t plen;
	CHECK(pt_pickle(d, &pkl, &plen) == CLTFS_OK);
	const char *keys[] = {"0"};
	uint64_t sizes[] = {5ull << 30};
	pt_file *f;
	CHECK(pt_file_new("big", pkl, plen, 1, keys, sizes, &f) == CLTFS_OK);
	pt_file_set_crc(f, 0, cltfs_crc32_zeros(sizes[0]));
	char path[] = "/tmp/cltfs-zip64-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0 && ftruncate(fd, (off_t)pt_file_size(f)) == 0);
	pt_piece pc[16];
	uint64_t pos = 0, size = pt_file_size(f);
	while (pos < size) {
		size_t n = pt_file_map(f, pos, size - pos, pc, 16);
		for (size_t i = 0; i < n; i++) {
			if (pc[i].storage < 0) {
				uint8_t *b = malloc(pc[i].len);
				pt_file_literal(f, pc[i].off, pc[i].len, b);
				CHECK(pwrite(fd, b, pc[i].len, (off_t)pos) == (ssize_t)pc[i].len);
				free(b);
			}
			pos += pc[i].len;
		}
	}
	close(fd);
	pt_archive *ar;
	CHECK(pt_open(path, &ar) == CLTFS_OK);
	if (ar) {
		const pt_obj *x = pt_get(pt_root(ar), "x");
		CHECK(x && x->u.t.numel == 5LL << 28);
		pt_close(ar);
	}
	char cmd[512];
	snprintf(cmd, sizeof cmd,
		 "python3 -c \"import zipfile,sys; z=zipfile.ZipFile('%s'); i=z.getinfo('big/data/0'); "
		 "sys.exit(0 if i.file_size==5<<30 and i.header_offset<2**32 else 1)\"",
		 path);
	CHECK(system(cmd) == 0);
	unlink(path);
	free(pkl);
	pt_file_free(f);
	pt_arena_free(a);
}

int main(void)
{
	RUN(test_pickle_roundtrip);
	RUN(test_unpickle_refuses);
	RUN(test_writer_reader);
	RUN(test_zip64);
	return unit_done("codec_pt");
}
