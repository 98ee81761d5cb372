/* codec.h: cltfs's formats as a library with no FUSE and no network in it.
 *
 * Errors, dtypes, CRC-32, chunk frames (zstd, raw, exp4), index records,
 * the manifest (cltfs.json), and the .pt (torch.save zip) writer and reader.
 * The daemon, the CLI, the tests and the benchmarks link it.
 *
 * Every function that can fail returns a cltfs_err and leaves a message in a
 * thread-local buffer (cltfs_errmsg) that names the file and the cause.
 */
#ifndef CLTFS_CODEC_H
#define CLTFS_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* for capture/'s C++ */
#endif

/* ---- errors ---------------------------------------------------------- */

typedef enum {
	CLTFS_OK = 0,
	CLTFS_E_NOMEM,       /* an allocation failed */
	CLTFS_E_IO,          /* a system call on a file failed */
	CLTFS_E_CORRUPT,     /* stored bytes fail a checksum or are truncated */
	CLTFS_E_FORMAT,      /* input is not in an accepted format */
	CLTFS_E_INVAL,       /* a bad argument or option */
	CLTFS_E_NOTFOUND,    /* a named thing does not exist */
	CLTFS_E_MISMATCH,    /* two inputs that must agree do not */
	CLTFS_E_UNSUPPORTED, /* valid input that cltfs does not handle */
} cltfs_err;

/* Set the thread's message from a printf format and return e. */
cltfs_err cltfs_fail(cltfs_err e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Prefix the thread's current message with "<formatted>: " and return e. */
cltfs_err cltfs_wrap(cltfs_err e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
const char *cltfs_errmsg(void);
const char *cltfs_errname(cltfs_err e);

/* Make *array (elements of elem bytes, *cap of them) hold at least need
 * elements, doubling.  false when out of memory; the array is then as it was. */
bool cltfs_grow(void *array, size_t *cap, size_t need, size_t elem);
/* Make the reusable byte buffer *buf (*cap bytes) at least n bytes, to the
 * byte: for buffers sized by a chunk or a tensor.  false when out of memory. */
bool cltfs_reserve(void *buf, size_t *cap, size_t n);
/* n bytes of fd at off, across short reads and EINTR: 0, an errno, or -1
 * when the file ends first.  The caller says which file and what it means. */
int cltfs_pread_full(int fd, void *buf, size_t n, uint64_t off);
/* n bytes to fd at off, across short writes and EINTR: 0 or an errno (EIO
 * for a write that makes no progress). */
int cltfs_pwrite_full(int fd, const void *buf, size_t n, uint64_t off);

/* A whole regular file into memory, NUL-terminated (malloc'd, length in
 * *len), at most CLTFS_READ_FILE_MAX bytes; a FIFO or device is refused
 * without blocking.  CLTFS_E_NOTFOUND, _FORMAT (not a regular file, too
 * large), _IO or _NOMEM with the path in the message. */
#define CLTFS_READ_FILE_MAX (256 << 20)
cltfs_err cltfs_read_file(const char *path, char **out, size_t *len);
/* Replace path with data durably and atomically: a temporary file,
 * fsync, rename, fsync of the directory.  No reader sees half a file. */
cltfs_err cltfs_write_atomic(const char *path, const void *data, size_t len);
/* The same with the first len bytes of the file src (read with pread). */
cltfs_err cltfs_write_atomic_from(const char *path, int src, uint64_t len);
/* mkdir -p of the first len bytes of path (strlen(path): all of it). */
cltfs_err cltfs_mkdirs(const char *path, size_t len);
/* Seconds on the monotonic clock, for rates and progress. */
double cltfs_now(void);
/* fn(arg, i) for every i in [0, n), taken in order by up to threads
 * threads (the caller's among them; fewer when a thread cannot start).
 * Once an item fails no further one is taken; what is returned is the
 * failure of the lowest item that failed, its message kept: the same
 * whatever the threads' timing, when fn's failures are. */
cltfs_err cltfs_parallel(size_t n, int threads, cltfs_err (*fn)(void *arg, size_t i), void *arg);

/* ---- log --------------------------------------------------------------- */

/* A line for the user (no newline): by default "cltfs: <line>" on stderr. */
void cltfs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Where lines go from now on: fn(arg, line), called one line at a time
 * (never concurrently); NULL: back to stderr. */
typedef void (*cltfs_log_fn)(void *arg, const char *line);
void cltfs_log_set(cltfs_log_fn fn, void *arg);
/* Lines go to syslog (facility daemon, "cltfs[pid]"): a daemonized mount,
 * whose stderr is /dev/null. */
void cltfs_log_to_syslog(void);

/* ---- names ------------------------------------------------------------- */

/* The n bytes at s as a decimal: digits only, no sign, no leading zero
 * (so every number has one spelling, as a file name needs), at most 18
 * digits.  false for anything else; *v is set only on success. */
bool cltfs_parse_dec(const char *s, size_t n, int64_t *v);
/* "batch_<k>_x.pt" or "batch_<k>_y.pt" (k as cltfs_parse_dec reads it):
 * *k and *is_y; false for any other name. */
bool cltfs_parse_batch_name(const char *name, int64_t *k, int *is_y);

/* ---- dtypes ---------------------------------------------------------- */

typedef enum { CLTFS_BF16 = 0, CLTFS_F16 = 1, CLTFS_F32 = 2, CLTFS_NDTYPES } cltfs_dtype;

size_t cltfs_dtype_size(cltfs_dtype t);
const char *cltfs_dtype_name(cltfs_dtype t);    /* "bfloat16" */
const char *cltfs_dtype_storage(cltfs_dtype t); /* "BFloat16Storage" */
/* Accepts torch names and short forms (bf16, fp16, half, fp32, float). */
bool cltfs_dtype_parse(const char *s, cltfs_dtype *out);
/* Convert n values; from == to is a copy.  Rounds to nearest even. */
void cltfs_convert(cltfs_dtype to, void *dst, cltfs_dtype from, const void *src, size_t n);

/* ---- CRC-32 (zlib's polynomial, as zip uses) ------------------------- */

uint32_t cltfs_crc32(uint32_t crc, const void *p, size_t n);
/* CRC of A||B from crc(A), crc(B) and len(B), without the bytes. */
uint32_t cltfs_crc32_combine(uint32_t a, uint32_t b, uint64_t len_b);
/* CRC of n zero bytes. */
uint32_t cltfs_crc32_zeros(uint64_t n);

/* ---- chunk frames ---------------------------------------------------- */

/* How a chunk's bytes are stored in its frame.  A store's manifest names the
 * codec its writers use; every index record names its own frame's, so frames
 * of different codecs (another writer's, or copied from a Hub store as they
 * are) live in one store and each is decoded as what it is.
 *   zstd  byte-shuffled, then one zstd frame with its content size and
 *         checksum (the format of every store before codecs were chosen)
 *   raw   a 12-byte header (magic "CLRW", raw length, CRC-32 of the bytes),
 *         then the bytes as they are: decoding is a copy and the check
 *   exp4  byte-shuffled; the top byte of each value (for bf16 the sign and
 *         exponent) as a 4-bit code into a table of the chunk's 15 most
 *         common top bytes (code 15: the next byte of an escape list); the
 *         lower bytes as they are; a 32-byte header (magic "CLX4", raw
 *         length, CRC-32 of the raw bytes, escapes, the table)
 * Numbers are what records hold: never renumber one. */
typedef enum { CLTFS_CODEC_ZSTD = 0, CLTFS_CODEC_RAW = 1, CLTFS_CODEC_EXP4 = 2, CLTFS_NCODECS } cltfs_codec;
/* The valid names, for messages. */
#define CLTFS_CODEC_NAMES "zstd, raw, exp4"
/* "zstd", "raw", "exp4"; "unknown" for anything else. */
const char *cltfs_codec_name(cltfs_codec c);
/* A codec by its name: false for any other string. */
bool cltfs_codec_parse(const char *s, cltfs_codec *out);

/* A context for one thread at a time: zstd contexts and scratch buffers,
 * reused from call to call (never made per call on a hot path).  NULL when
 * out of memory; free takes NULL. */
typedef struct cltfs_zctx cltfs_zctx;
cltfs_zctx *cltfs_zctx_new(void);
void cltfs_zctx_free(cltfs_zctx *z);
/* A second buffer of at least n bytes, kept for reuse (frames read from a
 * pack): reusing it avoids faulting in fresh pages on every chunk.  NULL
 * when out of memory. */
void *cltfs_zctx_buffer(cltfs_zctx *z, size_t n);

/* The largest frame of codec raw_len bytes can make (any element size): a
 * dst of this size always fits. */
size_t cltfs_frame_bound(cltfs_codec codec, size_t raw_len);
/* Encode raw (elements of esize bytes, little-endian) as one frame of codec
 * (level: zstd's, ignored by the others); *out_len is the frame's size.
 * CLTFS_E_INVAL (dst too small, a bad level or codec), _NOMEM. */
cltfs_err cltfs_frame_encode(cltfs_zctx *z, cltfs_codec codec, int level, size_t esize, const void *raw,
			     size_t raw_len, void *dst, size_t cap, size_t *out_len);
/* Decode a frame of codec into raw, which must be exactly raw_len bytes.
 * When crc is not NULL it gets the CRC-32 of the raw bytes (raw and exp4
 * frames compute it anyway: it is their check), for comparing with the
 * index record.  CLTFS_E_CORRUPT for a frame that is not of this codec, or
 * whose declared size, checksum, length or structure disagrees (the message
 * says which); _NOMEM; _INVAL for an unknown codec. */
cltfs_err cltfs_frame_decode(cltfs_zctx *z, cltfs_codec codec, size_t esize, const void *frame, size_t len,
			     void *raw, size_t raw_len, uint32_t *crc);
/* A raw frame is this header, then the raw bytes: a reader may read the
 * bytes straight into place and check them with cltfs_frame_check_raw
 * (header: the frame's first CLTFS_RAW_HEADER bytes), which is what
 * cltfs_frame_decode does after its copy: the same errors, *crc likewise. */
#define CLTFS_RAW_HEADER 12
cltfs_err cltfs_frame_check_raw(const void *header, const void *raw, size_t raw_len, uint32_t *crc);
/* The byte shuffle of len bytes of esize-byte values: byte 0 (the low byte:
 * values are little-endian) of every value, then byte 1, and so on; a tail
 * of len % esize bytes is copied as it is.  unshuffle undoes it. */
void cltfs_shuffle(size_t esize, const void *src, void *dst, size_t len);
void cltfs_unshuffle(size_t esize, const void *src, void *dst, size_t len);

/* ---- streams, chunk keys, index records ----------------------------- */

enum { CLTFS_STREAM_X = 0, CLTFS_STREAM_MLP = 1 };

/* A chunk key packs (stream kind, layer, chunk number). */
static inline uint64_t cltfs_key(unsigned kind, unsigned layer, uint32_t chunk)
{
	return ((uint64_t)kind << 48) | ((uint64_t)(layer & 0xffff) << 32) | chunk;
}
static inline unsigned cltfs_key_kind(uint64_t k) { return (unsigned)(k >> 48); }
static inline unsigned cltfs_key_layer(uint64_t k) { return (unsigned)(k >> 32) & 0xffff; }
static inline uint32_t cltfs_key_chunk(uint64_t k) { return (uint32_t)k; }
/* "x@3#12" or "mlp@4#0" into buf (n bytes); returns buf. */
const char *cltfs_key_str(uint64_t k, char *buf, size_t n);

#define CLTFS_FILE_HEADER 16 /* magic(8) version(4) record size(4) */
#define CLTFS_REC_SIZE 40
extern const char CLTFS_PACK_MAGIC[8];
extern const char CLTFS_IDX_MAGIC[8];

typedef struct {
	uint64_t key;    /* cltfs_key() */
	uint64_t offset; /* of the frame in its pack */
	uint32_t csize;  /* frame bytes */
	uint32_t rsize;  /* raw bytes */
	uint32_t crc;    /* CRC-32 of the raw, unshuffled bytes */
	uint8_t dtype;
	uint8_t codec;   /* cltfs_codec of the frame (0, zstd, in every record older than codecs) */
} cltfs_rec;

/* A record's 40 bytes, its own checksum included. */
void cltfs_rec_encode(const cltfs_rec *r, uint8_t out[CLTFS_REC_SIZE]);
/* CLTFS_E_CORRUPT when the magic or the record's own checksum is wrong. */
cltfs_err cltfs_rec_decode(const uint8_t in[CLTFS_REC_SIZE], cltfs_rec *r);
/* The 16-byte header of a pack (CLTFS_PACK_MAGIC) or index file. */
void cltfs_file_header(const char magic[8], uint8_t out[CLTFS_FILE_HEADER]);
/* CLTFS_E_FORMAT when it is not a header of this kind (the message names
 * the kind expected), _UNSUPPORTED for another format version. */
cltfs_err cltfs_file_header_check(const char magic[8], const uint8_t in[CLTFS_FILE_HEADER]);

/* ---- manifest -------------------------------------------------------- */

enum { CLTFS_PAD_ZERO = 0, CLTFS_PAD_CLIP = 1 };
enum { CLTFS_SHAPE_STD = 0, CLTFS_SHAPE_S1TD = 1, CLTFS_SHAPE_FLAT = 2 };

/* The sample table, samples.bin (samples.c): every sample's rows, an
 * imported tree's batch shapes, a captured store's sample strings; every
 * section checked against its CRC at open.  Rows and shapes are read into
 * memory; the strings stay in the file and are read when asked for.  No
 * part is mapped: a page that the file's filesystem (NFS, Lustre, a FUSE
 * mount) fails to read in is a SIGBUS through a mapping, an error here. */
typedef struct {
	int fd;                  /* the file (a memfd for a table built in memory) */
	char *path;              /* its name, for messages */
	uint64_t len;            /* its size */
	uint64_t n;              /* samples */
	uint64_t nb;             /* explicit batches (an imported tree's shapes), or 0 */
	uint32_t *rows;          /* n: rows of each sample */
	uint32_t *batches;       /* nb pairs (S, T), or NULL */
	bool strings;            /* has each sample's id, image and text */
	uint64_t offsets_at;     /* where the n + 1 string offsets lie in the file */
	uint64_t blob_at, blob_len; /* where the strings lie */
	uint32_t crc;            /* the header's CRC-32: cltfs.json records it */
} cltfs_table;
/* Read and check path: CLTFS_E_NOTFOUND, _IO (naming the file and the
 * failed read), _CORRUPT (a bad header, a truncated file, a section that
 * fails its CRC: the message says which), _UNSUPPORTED (another version),
 * _FORMAT (not a regular file), _NOMEM. */
cltfs_err cltfs_table_open(const char *path, cltfs_table **out);
void cltfs_table_close(cltfs_table *t);
/* Sample i's id, image and text, read from the file into *buf (malloc'd,
 * NUL-terminated strings the three point into; the caller frees it):
 * CLTFS_E_NOTFOUND (the table has no strings), _CORRUPT (malformed), _IO,
 * _NOMEM, each message naming the file and the sample. */
cltfs_err cltfs_table_strings(const cltfs_table *t, uint64_t i, char **buf, const char **id, const char **image,
			      const char **text);
/* Write t's bytes to path atomically: CLTFS_E_IO. */
cltfs_err cltfs_table_save(const cltfs_table *t, const char *path);
/* A table from len bytes in memory (copied; name is for messages): what a
 * Hub reply or a fuzzer gives.  cltfs_table_open's errors. */
cltfs_err cltfs_table_from_bytes(const void *buf, size_t len, const char *name, cltfs_table **out);

/* Building a table sample by sample in bounded memory: rows and shapes are
 * kept (4 and 8 bytes each), strings go to temporary files in tmpdir (NULL:
 * $TMPDIR).  finish writes path atomically and opens it, or (path NULL)
 * makes the table in memory; the writer is freed either way.  Errors:
 * CLTFS_E_IO (a temporary file, the table), _INVAL (no samples, more than
 * 2^32), _NOMEM. */
typedef struct cltfs_table_writer cltfs_table_writer;
cltfs_err cltfs_table_writer_new(const char *tmpdir, bool strings, cltfs_table_writer **out);
cltfs_err cltfs_table_add(cltfs_table_writer *w, uint32_t rows, const char *id, const char *image, const char *text);
cltfs_err cltfs_table_add_batch(cltfs_table_writer *w, uint32_t samples, uint32_t tokens);
cltfs_err cltfs_table_writer_finish(cltfs_table_writer *w, const char *path, cltfs_table **out);
void cltfs_table_writer_abort(cltfs_table_writer *w);

/* One batch of the store, computed from the table. */
typedef struct {
	int64_t first_sample, samples; /* S */
	int64_t tokens;                /* T: the longest sample, or an imported tree's T */
	int64_t first_row, rows;       /* stored rows (no padding) */
	int64_t first_chunk, chunks;
} cltfs_batch;

typedef struct {
	int version;
	char *model_id, *model_revision; /* NULL when unknown */
	char *model_arch;                /* "LlavaForConditionalGeneration", or NULL */
	int n_layers, d_model;
	cltfs_dtype dtype;
	char *input_hook; /* mlp_in | resid_pre | resid_mid */
	int target_offset, n_targets, padding;
	int64_t chunk_rows;
	cltfs_codec codec;     /* what this store's writers encode new frames with */
	int64_t batch_samples; /* default grouping S */
	char *prompt_template;
	int n_x_layers, *x_layers;     /* ascending */
	int n_mlp_layers, *mlp_layers; /* ascending */
	/* how the views are pickled */
	char x_key[8];  /* "x", "data", or "" for a bare tensor */
	int shape;      /* CLTFS_SHAPE_* */
	char y_keys[3][10];
	/* where the data came from: kind "import" (path: the tree) or
	 * "capture" (path: the model folder, images: the image folder) */
	char *source_kind, *source_path, *source_images;
	cltfs_table *table;   /* the samples (owned) */
	char *table_path;     /* the file it was opened from, or NULL */
	/* derived by cltfs_manifest_finish */
	int64_t n_samples, n_batches, total_rows, n_chunks;
	int64_t max_batch_rows;
	int64_t *sp_sample, *sp_row, *sp_chunk; /* every 16th batch's first sample, row, chunk */
} cltfs_manifest;

/* An empty manifest with every optional field at its default (input hook
 * mlp_in, target offset 1, 16 targets, zero padding, one sample per batch,
 * the reference layout), for building one in code: fill it, give it a
 * table (cltfs_manifest_set_table), then cltfs_manifest_finish.  NULL when
 * out of memory. */
cltfs_manifest *cltfs_manifest_new(void);
/* m owns t from now on; path is where t lies on disk (NULL: in memory). */
void cltfs_manifest_set_table(cltfs_manifest *m, cltfs_table *t, const char *path);
/* Parse and validate; path names the file in every message, and a version
 * 2 manifest's table is the samples.bin beside it.  CLTFS_E_FORMAT (not
 * JSON, a field missing, of the wrong type or out of range, or
 * inconsistent: the message names the field), the table's errors
 * (CLTFS_E_CORRUPT, ...), _MISMATCH (a table other than the one named),
 * _NOMEM. */
cltfs_err cltfs_manifest_parse(const char *json, size_t len, const char *path,
			       cltfs_manifest **out);
/* Read and parse path: CLTFS_E_NOTFOUND, _IO, and parse's errors. */
cltfs_err cltfs_manifest_load(const char *path, cltfs_manifest **out);
/* Fill the derived fields and check ranges and consistency, in one pass
 * over the table (called by parse; call it after building a manifest in
 * code).  CLTFS_E_FORMAT naming path and the inconsistency, _NOMEM. */
cltfs_err cltfs_manifest_finish(cltfs_manifest *m, const char *path);
/* The manifest as version 4 JSON, without its checksum, malloc'd, NULL
 * on allocation failure. */
char *cltfs_manifest_dump(const cltfs_manifest *m);
/* What cltfs.json holds: the dump with its "checksum" (the CRC-32 of
 * these bytes, its own digits read as zeros) and a newline; malloc'd, NULL
 * on allocation failure. */
char *cltfs_manifest_text(const cltfs_manifest *m);
/* The same dataset: equal dumps (which include the table's CRC), the codec
 * and the source aside: frames name their own codec, so stores of one
 * dataset in different codecs hold interchangeable frames; a tree moved or
 * copied is the same tree. */
bool cltfs_manifest_same(const cltfs_manifest *a, const cltfs_manifest *b);
/* Write samples.bin beside path (unless the table is that file already),
 * then path, each atomically: temporary file, fsync, rename, fsync dir.
 * CLTFS_E_IO, _NOMEM. */
cltfs_err cltfs_manifest_save(const cltfs_manifest *m, const char *path);
/* NULL is a no-op. */
void cltfs_manifest_free(cltfs_manifest *m);
/* Is layer in layers[0..n)? */
bool cltfs_manifest_has_layer(const int *layers, int n, int layer);
/* Does the store keep stream (kind, layer): x@L for an x layer, mlp@L for
 * an mlp layer?  (kind: CLTFS_STREAM_X or CLTFS_STREAM_MLP.) */
bool cltfs_manifest_has_stream(const cltfs_manifest *m, unsigned kind, int layer);
/* The default chunk_rows: about 1 MiB of raw rows, at least one row. */
int64_t cltfs_default_chunk_rows(int d_model, cltfs_dtype dtype);
/* Batch b (b < n_batches), from the sparse index and at most 15 batches. */
cltfs_batch cltfs_manifest_batch(const cltfs_manifest *m, int64_t b);
/* Rows of sample i, and its first row in the row stream. */
int64_t cltfs_manifest_sample_rows(const cltfs_manifest *m, int64_t i);
int64_t cltfs_manifest_sample_row(const cltfs_manifest *m, int64_t i);
/* Sample i's id, image and text: cltfs_table_strings. */
cltfs_err cltfs_manifest_sample_text(const cltfs_manifest *m, int64_t i, char **buf, const char **id,
				     const char **image, const char **text);
/* The chunk containing row (row < total_rows). */
int64_t cltfs_manifest_chunk_of(const cltfs_manifest *m, int64_t row);
/* The first row of chunk c (c <= n_chunks: n_chunks gives total_rows), its
 * rows, and its batch. */
int64_t cltfs_manifest_chunk_start(const cltfs_manifest *m, int64_t c);
int64_t cltfs_manifest_chunk_rows(const cltfs_manifest *m, int64_t c);
int64_t cltfs_manifest_batch_of_chunk(const cltfs_manifest *m, int64_t c);
/* The first rows of chunks 0, step, 2 step, ... (ceil(n_chunks / step) of
 * them), then total_rows, into out: one pass over the batches, where a
 * cltfs_manifest_chunk_start each would search (10^7 samples: 0.1 s
 * against 20 s). */
void cltfs_manifest_chunk_starts(const cltfs_manifest *m, int64_t step, int64_t *out);
/* The layer of target j of x layer L, or -1 for a zero padding target. */
int cltfs_manifest_target_layer(const cltfs_manifest *m, int layer, int j);
/* Number of targets the y file of layer L holds (clip drops padding). */
int cltfs_manifest_targets_of(const cltfs_manifest *m, int layer);

/* ---- query files -------------------------------------------------------- */

/* A query file read one query at a time: AMBER's format, {"id": 1,
 * "image": "AMBER_1.jpg", "query": "..."}, as a JSON list or as JSON Lines
 * (one object a line), told by the first byte; a file named *.json must be
 * a list.  The file is read in blocks and only the current object is
 * parsed, so a list of 10^7 queries costs no more memory than one of ten. */
typedef struct cltfs_queries cltfs_queries;

/* One query: strings valid until the next cltfs_queries_next. */
typedef struct {
	int64_t index;      /* 0-based, in file order */
	int64_t line;       /* where the object starts, 1-based */
	const char *id;     /* a number's decimal form, or the string */
	const char *image, *text;
} cltfs_query;

/* Open path.  CLTFS_E_NOTFOUND, _IO, _FORMAT (a FIFO or a directory),
 * _NOMEM. */
cltfs_err cltfs_queries_open(const char *path, cltfs_queries **out);
/* The next query into *q: true; false at the end (*e CLTFS_OK) or on an
 * error (*e: CLTFS_E_FORMAT naming the file, the entry and the line, or
 * saying the file is neither a JSON list nor JSON Lines; CLTFS_E_IO;
 * _NOMEM). */
bool cltfs_queries_next(cltfs_queries *qs, cltfs_query *q, cltfs_err *e);
/* NULL is a no-op. */
void cltfs_queries_close(cltfs_queries *qs);

/* ---- pickled objects (shared by the .pt writer and reader) ----------- */

typedef enum {
	PT_NONE, PT_BOOL, PT_INT, PT_FLOAT, PT_STR, PT_TUPLE, PT_LIST, PT_DICT,
	PT_TENSOR, PT_STORAGE, PT_GLOBAL,
} pt_kind;

#define PT_MAX_DIM 8

typedef struct pt_obj pt_obj;
struct pt_obj {
	pt_kind kind;
	union {
		bool b;
		int64_t i;
		double f;
		struct { char *s; size_t len; } str;
		struct { pt_obj **v; size_t n, cap; } seq;          /* tuple, list */
		struct { pt_obj **k, **v; size_t n, cap; } dict;
		struct {
			char key[24];        /* storage key: data/<key> */
			cltfs_dtype dtype;
			int64_t numel;       /* of the storage */
			int64_t offset;      /* in elements */
			int ndim;
			int64_t shape[PT_MAX_DIM], stride[PT_MAX_DIM];
		} t;                         /* PT_TENSOR and PT_STORAGE */
		int global;                  /* PT_GLOBAL: which allowed global */
	} u;
};

/* Objects live in an arena freed at once.  Every allocator returns NULL
 * when out of memory (pt_arena_free takes NULL). */
typedef struct pt_arena pt_arena;
pt_arena *pt_arena_new(void);
void pt_arena_free(pt_arena *a);
void *pt_alloc(pt_arena *a, size_t n); /* zeroed */
pt_obj *pt_new(pt_arena *a, pt_kind k);
pt_obj *pt_str(pt_arena *a, const char *s);
pt_obj *pt_int(pt_arena *a, int64_t v);
/* Append to a list/tuple, or set key -> value in a dict (insertion order).
 * CLTFS_E_NOMEM; pt_set: CLTFS_E_INVAL when dict is not a dict. */
cltfs_err pt_append(pt_arena *a, pt_obj *seq, pt_obj *item);
cltfs_err pt_set(pt_arena *a, pt_obj *dict, pt_obj *key, pt_obj *val);
/* The value of a string key in a dict, NULL when absent. */
pt_obj *pt_get(const pt_obj *dict, const char *key);
int64_t pt_tensor_numel(const pt_obj *t);
bool pt_tensor_contiguous(const pt_obj *t);

/* Pickle (protocol 2, only opcodes torch's weights_only unpickler accepts)
 * into a malloc'd buffer.  The same tensor object referenced twice is
 * written once and referenced through the memo, as Python's pickler does.
 * CLTFS_E_INVAL (an object it cannot write, nesting too deep), _NOMEM. */
cltfs_err pt_pickle(const pt_obj *root, uint8_t **out, size_t *out_len);
/* Restricted unpickler: tensors, dicts, lists, tuples, ints, floats,
 * strings, bools, None; any other global is refused, nothing is run.
 * CLTFS_E_FORMAT (malformed, or a refused global: the message says which
 * and where), _NOMEM. */
cltfs_err pt_unpickle(pt_arena *a, const uint8_t *p, size_t n, pt_obj **out);

/* ---- .pt writer: a virtual zip file, any byte range on demand -------- */

typedef struct pt_file pt_file;

/* Records are laid out as torch 2.x writes them: data.pkl,
 * .storage_alignment, byteorder, data/<key> for each storage, version.
 * storage_keys[i] names data/<key>; sizes[i] is its byte length.  Every
 * record's data is 64-byte aligned; ZIP64 where an offset or size needs it.
 * CLTFS_E_INVAL (a bad archive name or key), _NOMEM. */
cltfs_err pt_file_new(const char *archive, const uint8_t *pickle, size_t plen,
		      size_t nstorages, const char *const *storage_keys,
		      const uint64_t *sizes, pt_file **out);
void pt_file_free(pt_file *f);
uint64_t pt_file_size(const pt_file *f);
/* The pickle (data.pkl) the file holds. */
const uint8_t *pt_file_pickle(const pt_file *f, size_t *len);
/* Storage CRCs must be set before the headers that hold them are read. */
void pt_file_set_crc(pt_file *f, size_t storage, uint32_t crc);
bool pt_file_has_crc(const pt_file *f, size_t storage);
/* Which storages' CRCs the header bytes in [off, off+len) need: sets
 * need[i] (nstorages bools) and returns how many are missing. */
size_t pt_file_crcs_needed(const pt_file *f, uint64_t off, uint64_t len, bool *need);

typedef struct {
	int storage;     /* -1: literal bytes of the file, else a storage index */
	uint64_t off;    /* literal: file offset; storage: offset in the storage */
	uint64_t len;
} pt_piece;

/* Split [off, off+len) into pieces in file order; returns the count (at
 * most max; call again from where it stopped if more remain). */
size_t pt_file_map(const pt_file *f, uint64_t off, uint64_t len, pt_piece *out, size_t max);
/* Produce literal bytes [off, off+len) (headers, pickle, small records,
 * central directory). */
void pt_file_literal(const pt_file *f, uint64_t off, uint64_t len, uint8_t *dst);

/* ---- .pt reader ------------------------------------------------------ */

typedef struct pt_archive pt_archive;

/* Open a torch.save zip (torch 1.13 and 2.x), parse and validate data.pkl.
 * The file is mapped, not read.  CLTFS_E_NOTFOUND, _IO, _FORMAT (not a
 * torch.save archive, or its pickle: the message says why), _UNSUPPORTED
 * (a valid zip torch could write but cltfs does not read, e.g. deflated
 * records), _NOMEM. */
cltfs_err pt_open(const char *path, pt_archive **out);
/* The same from a buffer the caller keeps alive; name is for messages. */
cltfs_err pt_open_mem(const void *buf, size_t len, const char *name, pt_archive **out);
/* Check every record's CRC-32 against the central directory:
 * CLTFS_E_CORRUPT naming the record. */
cltfs_err pt_check_crcs(const pt_archive *ar, const char *name);
void pt_close(pt_archive *ar);
const pt_obj *pt_root(const pt_archive *ar);
/* The archive's bytes (the mapping pt_open made, or pt_open_mem's buffer). */
const uint8_t *pt_bytes(const pt_archive *ar, size_t *len);
/* The tensor's values, contiguous, into dst (numel * dtype size bytes).
 * CLTFS_E_FORMAT when its storage does not hold them. */
cltfs_err pt_tensor_read(const pt_archive *ar, const pt_obj *t, void *dst);
/* Where the tensor's values lie contiguous in the map, or NULL when they do
 * not (strided); then use pt_tensor_read. */
const void *pt_tensor_data(const pt_archive *ar, const pt_obj *t);

#ifdef __cplusplus
}
#endif

#endif
