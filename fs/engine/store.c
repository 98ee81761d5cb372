/* store.c: a store directory.
 *
 *   cltfs.json       the manifest
 *   packs/<w>.pack   16-byte header, then zstd frames, append-only
 *   packs/<w>.idx    16-byte header, then 40-byte records, append-only
 *
 * Each writer <w> appends only to its own pair, so jobs on a shared
 * filesystem need no locks between them.  Readers merge every index into
 * one chunk map at open (the map below) and rescan on a miss: a record is only ever
 * appended after its frame is durable, so a record seen is a frame readable.
 * A torn last record (a crash mid-append) is ignored, and cut off by the
 * next writer that opens that index; so are frames that were never
 * recorded (a crash or ENOSPC before the sync).
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

typedef struct {
	char *name;     /* <w> */
	int pack_fd;    /* -1 until first needed */
	int idx_fd;     /* -1 until the index is first merged; records are read back through it */
	uint64_t idx_consumed; /* bytes of the index merged so far */
	uint64_t frames_end;   /* the furthest end of a frame that a merged record names */
} pack;

/* A record not yet in an index file: this process's writers' unsynced adds. */
typedef struct {
	uint64_t key; /* 0 marks an empty slot; real keys are stored +1 */
	cltfs_rec rec;
	int pack;
} slot;

/* The chunk map: for each stream, blocks of MAP_BLOCK entries, one per
 * chunk number, allocated when a chunk of the block first arrives.  An
 * entry is 0 (absent) or (pack + 1) << RECNO_BITS | record number in that
 * pack's index file; the 40-byte record itself is read back from the file
 * (the page cache keeps the hot ones).  8 bytes a stored chunk, where a
 * hash table of whole records took about 96. */
#define MAP_BITS 12
#define MAP_BLOCK (1u << MAP_BITS)
#define RECNO_BITS 40
#define MAX_PACKS ((1u << (64 - RECNO_BITS)) - 2)

struct cltfs_store {
	char *dir;
	cltfs_manifest *m;
	pthread_rwlock_t lock; /* guards packs, the map, the pending table, last_scan */
	pack *packs;
	size_t npacks, packcap;
	int *stream_of;   /* [kind * layer_span + layer]: the stream's number, or -1 */
	int layer_span, n_streams;
	uint64_t ***map;  /* [stream][block][chunk % MAP_BLOCK] */
	size_t n_blocks;  /* per stream */
	size_t map_bytes;
	uint64_t map_count;
	slot *table;      /* pending records, by key */
	size_t tcap, tcount;
	time_t last_scan;
	uint64_t bad_records;
	uint64_t disagreeing; /* whole records the manifest contradicts */
	char first_bad[512];  /* the first of those: where and why, for a refused mount */
};

const cltfs_manifest *store_manifest(const cltfs_store *s) { return s->m; }
const char *store_dir(const cltfs_store *s) { return s->dir; }

uint64_t store_chunk_raw(const cltfs_store *s, uint32_t c)
{
	const cltfs_manifest *m = s->m;
	if (c >= m->n_chunks)
		return 0;
	return (uint64_t)cltfs_manifest_chunk_rows(m, c) * (uint64_t)m->d_model * cltfs_dtype_size(m->dtype);
}

static size_t hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return (size_t)k;
}

static slot *find(const cltfs_store *s, uint64_t key)
{
	if (!s->tcap)
		return NULL;
	for (size_t i = hash(key) & (s->tcap - 1);; i = (i + 1) & (s->tcap - 1)) {
		if (s->table[i].key == key + 1)
			return &s->table[i];
		if (!s->table[i].key)
			return NULL;
	}
}

/* Take key out of the table: later slots of its probe run move back into
 * the hole (backward shift), so that no lookup stops early. */
static void table_remove(cltfs_store *s, slot *hole)
{
	size_t mask = s->tcap - 1, i = (size_t)(hole - s->table);
	s->table[i].key = 0;
	s->tcount--;
	for (size_t j = (i + 1) & mask; s->table[j].key; j = (j + 1) & mask) {
		size_t home = hash(s->table[j].key - 1) & mask;
		/* j's entry may fill the hole at i when its home is not in (i, j] */
		bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!between) {
			s->table[i] = s->table[j];
			s->table[j].key = 0;
			i = j;
		}
	}
}

static cltfs_err insert(cltfs_store *s, const cltfs_rec *r, int packno)
{
	if ((s->tcount + 1) * 2 > s->tcap) {
		size_t ncap = s->tcap ? s->tcap * 2 : 1024;
		slot *nt = calloc(ncap, sizeof *nt);
		if (!nt)
			return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory for the index", s->dir);
		for (size_t i = 0; i < s->tcap; i++)
			if (s->table[i].key) {
				size_t j = hash(s->table[i].key - 1) & (ncap - 1);
				while (nt[j].key)
					j = (j + 1) & (ncap - 1);
				nt[j] = s->table[i];
			}
		free(s->table);
		s->table = nt;
		s->tcap = ncap;
	}
	size_t j = hash(r->key) & (s->tcap - 1);
	while (s->table[j].key)
		j = (j + 1) & (s->tcap - 1);
	s->table[j] = (slot){r->key + 1, *r, packno};
	s->tcount++;
	return CLTFS_OK;
}

/* Number the streams the manifest keeps, for the map. */
static cltfs_err map_init(cltfs_store *s)
{
	const cltfs_manifest *m = s->m;
	int top = 0;
	for (int i = 0; i < m->n_x_layers; i++)
		top = m->x_layers[i] > top ? m->x_layers[i] : top;
	for (int i = 0; i < m->n_mlp_layers; i++)
		top = m->mlp_layers[i] > top ? m->mlp_layers[i] : top;
	s->layer_span = top + 1;
	s->n_blocks = (size_t)((m->n_chunks + MAP_BLOCK - 1) >> MAP_BITS);
	s->stream_of = malloc(2 * (size_t)s->layer_span * sizeof *s->stream_of);
	s->map = calloc(2 * (size_t)s->layer_span, sizeof *s->map);
	if (!s->stream_of || !s->map)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory for the index", s->dir);
	for (unsigned kind = 0; kind < 2; kind++)
		for (int L = 0; L < s->layer_span; L++)
			s->stream_of[kind * (unsigned)s->layer_span + (unsigned)L] =
				cltfs_manifest_has_stream(m, kind, L) ? s->n_streams++ : -1;
	return CLTFS_OK;
}

/* The map's entry for key, NULL when the key names no chunk of the store,
 * or its block is not there (and create is false, or memory ran out). */
static uint64_t *map_entry(cltfs_store *s, uint64_t key, bool create)
{
	unsigned kind = cltfs_key_kind(key), layer = cltfs_key_layer(key);
	uint32_t c = cltfs_key_chunk(key);
	if (kind > 1 || layer >= (unsigned)s->layer_span || c >= (uint64_t)s->m->n_chunks)
		return NULL;
	int st = s->stream_of[kind * (unsigned)s->layer_span + layer];
	if (st < 0)
		return NULL;
	uint64_t **blocks = s->map[st];
	if (!blocks) {
		if (!create || !(blocks = calloc(s->n_blocks, sizeof *blocks)))
			return NULL;
		s->map[st] = blocks;
		s->map_bytes += s->n_blocks * sizeof *blocks;
	}
	uint64_t *b = blocks[c >> MAP_BITS];
	if (!b) {
		if (!create || !(b = calloc(MAP_BLOCK, sizeof *b)))
			return NULL;
		blocks[c >> MAP_BITS] = b;
		s->map_bytes += MAP_BLOCK * sizeof *b;
	}
	return &b[c & (MAP_BLOCK - 1)];
}

static uint64_t recno_of(uint64_t idx_offset) { return (idx_offset - CLTFS_FILE_HEADER) / CLTFS_REC_SIZE; }

/* Point key at record recno of pack p's index. */
static cltfs_err map_put(cltfs_store *s, uint64_t key, int p, uint64_t recno)
{
	uint64_t *ent = map_entry(s, key, true);
	if (!ent)
		return cltfs_fail(CLTFS_E_NOMEM, "%s: out of memory for the index", s->dir);
	if (!*ent)
		s->map_count++;
	*ent = (uint64_t)(p + 1) << RECNO_BITS | recno;
	return CLTFS_OK;
}

/* Is key in the store (pending or in the map)?  Called with the lock held. */
static bool known(cltfs_store *s, uint64_t key)
{
	uint64_t *ent = map_entry(s, key, false);
	return (ent && *ent) || find(s, key);
}

/* key's record and pack, pending first: the pending copy, once visible,
 * stays the one answered (commit moves it to the map), so a reader's record
 * always names the frame it will read.  *recno: the record's number in the
 * pack's index, UINT64_MAX for a pending one.  Called with the lock held. */
static bool find_rec_at(cltfs_store *s, uint64_t key, cltfs_rec *rec, int *packno, uint64_t *recno)
{
	slot *hit = find(s, key);
	if (hit) {
		*rec = hit->rec;
		*packno = hit->pack;
		*recno = UINT64_MAX;
		return true;
	}
	uint64_t *ent = map_entry(s, key, false);
	if (!ent || !*ent)
		return false;
	int p = (int)(*ent >> RECNO_BITS) - 1;
	*recno = *ent & ((1ULL << RECNO_BITS) - 1);
	uint64_t off = CLTFS_FILE_HEADER + *recno * CLTFS_REC_SIZE;
	uint8_t b[CLTFS_REC_SIZE];
	/* The file was checked when merged; one replaced since reads as a miss. */
	if (pread(s->packs[p].idx_fd, b, sizeof b, (off_t)off) != (ssize_t)sizeof b || cltfs_rec_decode(b, rec) ||
	    rec->key != key)
		return false;
	*packno = p;
	return true;
}

static bool find_rec(cltfs_store *s, uint64_t key, cltfs_rec *rec, int *packno)
{
	uint64_t recno;
	return find_rec_at(s, key, rec, packno, &recno);
}

/* Open a store file for reading without blocking on a FIFO or a device
 * (whoever can write the store's folder could put one there): -1 and
 * errno (EINVAL for what is not a regular file). */
static int open_regular(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	struct stat st;
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
		close(fd);
		errno = EINVAL;
		return -1;
	}
	return fd;
}

static void path_of(const cltfs_store *s, const char *name, const char *ext, char *buf, size_t n)
{
	snprintf(buf, n, "%s/packs/%s%s", s->dir, name, ext);
}

static int pack_of(cltfs_store *s, const char *name)
{
	for (size_t i = 0; i < s->npacks; i++)
		if (!strcmp(s->packs[i].name, name))
			return (int)i;
	if (s->npacks >= MAX_PACKS || !cltfs_grow(&s->packs, &s->packcap, s->npacks + 1, sizeof *s->packs))
		return -1;
	char *dup = strdup(name);
	if (!dup)
		return -1;
	s->packs[s->npacks] = (pack){dup, -1, -1, 0, 0};
	return (int)s->npacks++;
}

/* A record is plausible when its chunk exists and its sizes fit. */
/* Why a record cannot be one of this store's chunks, or NULL when it can;
 * buf holds the reason's details. */
static const char *implausible(const cltfs_store *s, const cltfs_rec *r, char *buf, size_t n)
{
	const cltfs_manifest *m = s->m;
	uint32_t c = cltfs_key_chunk(r->key);
	if (!cltfs_manifest_has_stream(m, cltfs_key_kind(r->key), (int)cltfs_key_layer(r->key)))
		return "a stream the manifest does not have";
	if (r->dtype != m->dtype || r->codec >= CLTFS_NCODECS)
		return "another dtype than the manifest's, or an unknown codec";
	if (c >= m->n_chunks) {
		snprintf(buf, n, "a chunk number past the manifest's %lld chunks", (long long)m->n_chunks);
		return buf;
	}
	if (r->rsize != store_chunk_raw(s, c)) {
		snprintf(buf, n, "%u raw bytes where the manifest's rows make %llu", r->rsize,
			 (unsigned long long)store_chunk_raw(s, c));
		return buf;
	}
	return r->offset < CLTFS_FILE_HEADER ? "an offset inside the pack's header" : NULL;
}

static bool plausible(const cltfs_store *s, const cltfs_rec *r)
{
	char why[128];
	return !implausible(s, r, why, sizeof why);
}

/* Merge new records of one index file, from where we stopped last time.
 * The file stays open: the map's records are read back through it. */
static cltfs_err merge_index(cltfs_store *s, int p)
{
	char path[4096];
	path_of(s, s->packs[p].name, ".idx", path, sizeof path);
	pack *pk = &s->packs[p];
	if (pk->idx_fd < 0 && (pk->idx_fd = open_regular(path)) < 0)
		return errno == ENOENT ? CLTFS_OK
		       : errno == EINVAL ? cltfs_fail(CLTFS_E_FORMAT, "%s: not a regular file", path)
					 : cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
	uint8_t hdr[CLTFS_FILE_HEADER];
	if (pk->idx_consumed == 0) {
		ssize_t n = pread(pk->idx_fd, hdr, sizeof hdr, 0);
		if (n < (ssize_t)sizeof hdr) /* a writer creating it right now */
			return CLTFS_OK;
		cltfs_err e = cltfs_file_header_check(CLTFS_IDX_MAGIC, hdr);
		if (e)
			return cltfs_wrap(e, "%s", path);
		pk->idx_consumed = CLTFS_FILE_HEADER;
	}
	/* A writer writes each chunk once; copies come from retries and other
	 * writers.  Four records a chunk the store can hold, and some: an index
	 * longer than that is not an index of this store. */
	uint64_t cap = CLTFS_FILE_HEADER + CLTFS_REC_SIZE * (4 * (uint64_t)s->n_streams * (uint64_t)s->m->n_chunks + 65536);
	uint8_t buf[CLTFS_REC_SIZE * 256];
	for (;;) {
		if (pk->idx_consumed > cap)
			return cltfs_fail(CLTFS_E_FORMAT, "%s: more records than a store of this manifest can need (%llu)",
					  path, (unsigned long long)((cap - CLTFS_FILE_HEADER) / CLTFS_REC_SIZE));
		ssize_t n = pread(pk->idx_fd, buf, sizeof buf, (off_t)pk->idx_consumed);
		if (n < 0)
			return cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
		size_t whole = (size_t)n / CLTFS_REC_SIZE;
		for (size_t i = 0; i < whole; i++) {
			cltfs_rec r;
			char detail[128];
			bool torn = cltfs_rec_decode(buf + i * CLTFS_REC_SIZE, &r) != CLTFS_OK;
			if (torn && i + 1 == whole && (size_t)n < sizeof buf) /* possibly still being written */
				return CLTFS_OK;
			if (!torn && r.offset + r.csize > pk->frames_end) /* plausible or not: its bytes stay */
				pk->frames_end = r.offset + r.csize;
			const char *why = torn ? "fails its checksum" : implausible(s, &r, detail, sizeof detail);
			if (why) {
				s->bad_records++;
				/* damage (a flipped byte) loses one chunk: EIO for it; a whole
				 * record that disagrees with the manifest says one of the two
				 * is not what was written */
				if (!torn && !s->disagreeing++) {
					char k[48];
					snprintf(s->first_bad, sizeof s->first_bad, "%s: record %llu (chunk %s): %s", path,
						 (unsigned long long)recno_of(pk->idx_consumed),
						 cltfs_key_str(r.key, k, sizeof k), why);
				}
			} else if (!known(s, r.key)) { /* else another copy: either is valid */
				cltfs_err e = map_put(s, r.key, p, recno_of(pk->idx_consumed));
				if (e)
					return e;
			}
			pk->idx_consumed += CLTFS_REC_SIZE;
		}
		if ((size_t)n < sizeof buf)
			return CLTFS_OK;
	}
}

static cltfs_err scan(cltfs_store *s)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/packs", s->dir);
	DIR *d = opendir(path);
	if (!d)
		return errno == ENOENT ? CLTFS_OK : cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
	cltfs_err e = CLTFS_OK;
	struct dirent *de;
	while (!e && (de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (n <= 4 || strcmp(de->d_name + n - 4, ".idx"))
			continue;
		char name[256];
		snprintf(name, sizeof name, "%.*s", (int)(n - 4), de->d_name);
		int p = pack_of(s, name);
		e = p < 0 ? cltfs_fail(CLTFS_E_NOMEM, "out of memory") : merge_index(s, p);
	}
	closedir(d);
	s->last_scan = time(NULL);
	return e;
}

cltfs_err store_open(const char *dir, cltfs_store **out)
{
	struct stat st;
	if (stat(dir, &st) < 0)
		return cltfs_fail(errno == ENOENT ? CLTFS_E_NOTFOUND : CLTFS_E_IO, "store %s: %s", dir,
				  strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return cltfs_fail(CLTFS_E_INVAL, "store %s: not a directory", dir);
	/* Absolute: a daemonized mount changes its directory to /. */
	char abs[PATH_MAX];
	if (!realpath(dir, abs))
		return cltfs_fail(CLTFS_E_IO, "store %s: %s", dir, strerror(errno));
	cltfs_store *s = calloc(1, sizeof *s);
	if (!s || !(s->dir = strdup(abs))) {
		free(s);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	pthread_rwlock_init(&s->lock, NULL);
	char path[4096];
	snprintf(path, sizeof path, "%s/cltfs.json", dir);
	cltfs_err e = cltfs_manifest_load(path, &s->m);
	if (e == CLTFS_E_NOTFOUND && access(path, F_OK)) /* not its table: the manifest itself */
		e = cltfs_fail(e, "store %s: no cltfs.json (create one with `cltfs import` or `cltfs init`)", dir);
	if (!e)
		e = map_init(s);
	if (!e)
		e = scan(s);
	if (e) {
		store_close(s);
		return e;
	}
	*out = s;
	return CLTFS_OK;
}

cltfs_err store_create(const char *dir, const cltfs_manifest *m)
{
	char path[4096];
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return cltfs_fail(CLTFS_E_IO, "store %s: %s", dir, strerror(errno));
	snprintf(path, sizeof path, "%s/packs", dir);
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
	snprintf(path, sizeof path, "%s/cltfs.json", dir);
	return cltfs_manifest_save(m, path);
}

void store_close(cltfs_store *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->npacks; i++) {
		if (s->packs[i].pack_fd >= 0)
			close(s->packs[i].pack_fd);
		if (s->packs[i].idx_fd >= 0)
			close(s->packs[i].idx_fd);
		free(s->packs[i].name);
	}
	free(s->packs);
	for (int st = 0; s->map && st < s->n_streams; st++) {
		for (size_t b = 0; s->map[st] && b < s->n_blocks; b++)
			free(s->map[st][b]);
		free(s->map[st]);
	}
	free(s->map);
	free(s->stream_of);
	free(s->table);
	cltfs_manifest_free(s->m);
	pthread_rwlock_destroy(&s->lock);
	free(s->dir);
	free(s);
}

bool store_lookup(cltfs_store *s, uint64_t key, cltfs_rec *rec)
{
	int p;
	pthread_rwlock_rdlock(&s->lock);
	bool hit = find_rec(s, key, rec, &p);
	bool stale = !hit && time(NULL) != s->last_scan;
	pthread_rwlock_unlock(&s->lock);
	if (hit || !stale)
		return hit;
	pthread_rwlock_wrlock(&s->lock);
	if (time(NULL) != s->last_scan)
		scan(s); /* a failed rescan leaves the index as it was */
	hit = find_rec(s, key, rec, &p);
	pthread_rwlock_unlock(&s->lock);
	return hit;
}

static int pack_fd(cltfs_store *s, int p, const char **name)
{
	pthread_rwlock_rdlock(&s->lock);
	int fd = s->packs[p].pack_fd;
	*name = s->packs[p].name;
	pthread_rwlock_unlock(&s->lock);
	if (fd >= 0)
		return fd;
	char path[4096];
	path_of(s, *name, ".pack", path, sizeof path);
	int nfd = open_regular(path);
	if (nfd < 0)
		return -1;
	pthread_rwlock_wrlock(&s->lock);
	if (s->packs[p].pack_fd < 0)
		s->packs[p].pack_fd = nfd;
	else
		close(nfd);
	fd = s->packs[p].pack_fd;
	pthread_rwlock_unlock(&s->lock);
	return fd;
}

static cltfs_err read_full(int fd, void *buf, size_t n, uint64_t off)
{
	int r = cltfs_pread_full(fd, buf, n, off);
	return !r ? CLTFS_OK
	       : r > 0 ? cltfs_fail(CLTFS_E_IO, "%s", strerror(r))
		       : cltfs_fail(CLTFS_E_CORRUPT, "pack ends before the frame does");
}

void store_rescan(cltfs_store *s)
{
	pthread_rwlock_wrlock(&s->lock);
	scan(s); /* a failed rescan leaves the table as it was */
	pthread_rwlock_unlock(&s->lock);
}

bool store_locate(cltfs_store *s, uint64_t key, cltfs_rec *rec, const char **packname)
{
	uint64_t recno;
	return store_locate_at(s, key, rec, packname, &recno);
}

bool store_locate_at(cltfs_store *s, uint64_t key, cltfs_rec *rec, const char **packname, uint64_t *recno)
{
	if (!store_lookup(s, key, rec))
		return false;
	int p;
	pthread_rwlock_rdlock(&s->lock);
	bool hit = find_rec_at(s, key, rec, &p, recno);
	*packname = hit ? s->packs[p].name : NULL; /* names live as long as the store */
	pthread_rwlock_unlock(&s->lock);
	return hit;
}

bool store_record_at(cltfs_store *s, const char *packname, uint64_t recno, cltfs_rec *rec)
{
	bool ok = false;
	pthread_rwlock_rdlock(&s->lock);
	for (size_t p = 0; p < s->npacks && !ok; p++) {
		pack *pk = &s->packs[p];
		if (pk->name != packname)
			continue;
		uint64_t off = CLTFS_FILE_HEADER + recno * CLTFS_REC_SIZE;
		uint8_t b[CLTFS_REC_SIZE];
		/* Only what was merged: a record past it may be torn or not yet
		 * backed by a durable frame.  And only the copy the store answers
		 * for its chunk, so that the caller's record is the one a lookup
		 * gives. */
		if (recno >= (UINT64_C(1) << RECNO_BITS) || pk->idx_fd < 0 || off + sizeof b > pk->idx_consumed ||
		    pread(pk->idx_fd, b, sizeof b, (off_t)off) != (ssize_t)sizeof b || cltfs_rec_decode(b, rec) ||
		    !plausible(s, rec))
			break;
		uint64_t *ent = map_entry(s, rec->key, false);
		ok = ent && *ent == ((uint64_t)(p + 1) << RECNO_BITS | recno) && !find(s, rec->key);
	}
	pthread_rwlock_unlock(&s->lock);
	return ok;
}

/* The raw bytes' CRC (the decoder computes it) against the record's. */
static cltfs_err check_crc(const cltfs_rec *rec, uint32_t crc)
{
	return crc == rec->crc ? CLTFS_OK : cltfs_fail(CLTFS_E_CORRUPT, "CRC-32 differs from the index record");
}

cltfs_err store_decode(const cltfs_rec *rec, cltfs_zctx *z, const void *frame, void *dst)
{
	uint32_t crc;
	cltfs_err e = cltfs_frame_decode(z, (cltfs_codec)rec->codec, cltfs_dtype_size((cltfs_dtype)rec->dtype), frame,
					 rec->csize, dst, rec->rsize, &crc);
	return e ? e : check_crc(rec, crc);
}

/* A raw frame's bytes go from the pack straight into dst (its header into
 * a small buffer beside them), one system call and no copy: for the raw
 * codec a read is the page cache's copy and the CRC. */
static cltfs_err read_raw(int fd, const cltfs_rec *rec, void *dst)
{
	uint8_t hdr[CLTFS_RAW_HEADER];
	if (rec->csize != CLTFS_RAW_HEADER + (uint64_t)rec->rsize)
		return cltfs_fail(CLTFS_E_CORRUPT, "raw frame of %u bytes cannot hold %u", rec->csize, rec->rsize);
	struct iovec iov[2] = {{hdr, sizeof hdr}, {dst, rec->rsize}};
	ssize_t r;
	while ((r = preadv(fd, iov, 2, (off_t)rec->offset)) < 0 && errno == EINTR)
		;
	if (r < 0)
		return cltfs_fail(CLTFS_E_IO, "%s", strerror(errno));
	if ((size_t)r < rec->csize) { /* short: the rest one piece at a time, as read_full would */
		cltfs_err e = (size_t)r < sizeof hdr ? read_full(fd, hdr + r, sizeof hdr - (size_t)r, rec->offset + (uint64_t)r)
						      : CLTFS_OK;
		size_t got = (size_t)r < sizeof hdr ? 0 : (size_t)r - sizeof hdr;
		if (!e)
			e = read_full(fd, (uint8_t *)dst + got, rec->rsize - got, rec->offset + sizeof hdr + got);
		if (e)
			return e;
	}
	uint32_t crc;
	cltfs_err e = cltfs_frame_check_raw(hdr, dst, rec->rsize, &crc);
	return e ? e : check_crc(rec, crc);
}

cltfs_err store_read_chunk(cltfs_store *s, const cltfs_rec *rec, cltfs_zctx *z, void *dst)
{
	cltfs_rec cur;
	int p;
	pthread_rwlock_rdlock(&s->lock);
	if (!find_rec(s, rec->key, &cur, &p))
		p = -1;
	pthread_rwlock_unlock(&s->lock);
	char k[48];
	cltfs_key_str(rec->key, k, sizeof k);
	if (p < 0)
		return cltfs_fail(CLTFS_E_NOTFOUND, "%s: chunk %s is not in the store", s->dir, k);
	const char *name;
	int fd = pack_fd(s, p, &name);
	if (fd < 0)
		return cltfs_fail(CLTFS_E_IO, "%s/packs/%s.pack: %s", s->dir, name, strerror(errno));
	cltfs_err e;
	if (rec->codec == CLTFS_CODEC_RAW) {
		e = read_raw(fd, rec, dst);
	} else {
		uint8_t *frame = cltfs_zctx_buffer(z, rec->csize ? rec->csize : 1);
		if (!frame)
			return cltfs_fail(CLTFS_E_NOMEM, "out of memory for chunk %s", k);
		e = read_full(fd, frame, rec->csize, rec->offset);
		if (!e)
			e = store_decode(rec, z, frame, dst);
	}
	if (e)
		return cltfs_wrap(e, "%s/packs/%s.pack: chunk %s at offset %llu", s->dir, name, k,
				  (unsigned long long)rec->offset);
	return CLTFS_OK;
}

void store_prefetch(cltfs_store *s, uint64_t key)
{
	cltfs_rec rec;
	int p;
	pthread_rwlock_rdlock(&s->lock);
	bool have = find_rec(s, key, &rec, &p);
	pthread_rwlock_unlock(&s->lock);
	const char *name;
	int fd = have ? pack_fd(s, p, &name) : -1;
	if (fd >= 0)
		(void)posix_fadvise(fd, (off_t)rec.offset, (off_t)rec.csize, POSIX_FADV_WILLNEED);
}

cltfs_err store_check_entry(const store_entry *ent, cltfs_zctx *z, void *dst)
{
	int fd = open_regular(ent->pack_path);
	if (fd < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", ent->pack_path, strerror(errno));
	uint8_t *frame = malloc(ent->rec.csize ? ent->rec.csize : 1);
	cltfs_err e = frame ? read_full(fd, frame, ent->rec.csize, ent->rec.offset)
			    : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	close(fd);
	if (!e)
		e = store_decode(&ent->rec, z, frame, dst);
	free(frame);
	return e;
}

cltfs_err store_foreach(cltfs_store *s, store_visit fn, void *arg)
{
	pthread_rwlock_wrlock(&s->lock);
	cltfs_err e = scan(s);
	size_t np = s->npacks;
	char **names = calloc(np + 1, sizeof *names);
	for (size_t i = 0; !e && names && i < np; i++)
		names[i] = strdup(s->packs[i].name);
	pthread_rwlock_unlock(&s->lock);
	if (!e && !names)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (size_t p = 0; !e && p < np; p++) {
		char ipath[4096], ppath[4096];
		if (!names[p]) {
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			break;
		}
		path_of(s, names[p], ".idx", ipath, sizeof ipath);
		path_of(s, names[p], ".pack", ppath, sizeof ppath);
		int ifd = open_regular(ipath);
		FILE *f = ifd >= 0 ? fdopen(ifd, "rb") : NULL;
		if (!f && ifd >= 0)
			close(ifd);
		if (!f) {
			e = cltfs_fail(CLTFS_E_IO, "%s: %s", ipath, strerror(errno));
			break;
		}
		uint8_t hdr[CLTFS_FILE_HEADER], rec[CLTFS_REC_SIZE];
		size_t got = fread(hdr, 1, sizeof hdr, f);
		if (got < sizeof hdr && !ferror(f)) { /* no records: a writer killed or creating it now, as merge_index */
			fclose(f);
			continue;
		}
		if (got < sizeof hdr || cltfs_file_header_check(CLTFS_IDX_MAGIC, hdr)) {
			e = cltfs_fail(CLTFS_E_CORRUPT, "%s: bad index header", ipath);
			fclose(f);
			break;
		}
		uint64_t off = CLTFS_FILE_HEADER;
		while (!e && fread(rec, 1, sizeof rec, f) == sizeof rec) {
			store_entry ent = {ipath, ppath, off, false, {0}};
			ent.valid = !cltfs_rec_decode(rec, &ent.rec) && plausible(s, &ent.rec);
			e = fn(arg, &ent);
			off += CLTFS_REC_SIZE;
		}
		fclose(f);
	}
	for (size_t i = 0; names && i < np; i++)
		free(names[i]);
	free(names);
	return e;
}

const char *store_first_bad(const cltfs_store *s) { return s->disagreeing ? s->first_bad : NULL; }

void store_index_usage(cltfs_store *s, uint64_t *chunks, uint64_t *bytes)
{
	pthread_rwlock_rdlock(&s->lock);
	*chunks = s->map_count + s->tcount;
	*bytes = s->map_bytes + s->tcap * sizeof *s->table + (size_t)s->layer_span * 2 * (sizeof *s->stream_of + sizeof *s->map) +
		 s->packcap * sizeof *s->packs;
	pthread_rwlock_unlock(&s->lock);
}

uint64_t store_disk_bytes(cltfs_store *s)
{
	char path[4096];
	struct stat st;
	uint64_t total = 0;
	snprintf(path, sizeof path, "%s/cltfs.json", s->dir);
	if (!stat(path, &st))
		total += (uint64_t)st.st_size;
	snprintf(path, sizeof path, "%s/samples.bin", s->dir);
	if (!stat(path, &st))
		total += (uint64_t)st.st_size;
	pthread_rwlock_rdlock(&s->lock);
	for (size_t i = 0; i < s->npacks; i++) {
		path_of(s, s->packs[i].name, ".pack", path, sizeof path);
		if (!stat(path, &st))
			total += (uint64_t)st.st_size;
		path_of(s, s->packs[i].name, ".idx", path, sizeof path);
		if (!stat(path, &st))
			total += (uint64_t)st.st_size;
	}
	pthread_rwlock_unlock(&s->lock);
	return total;
}

/* ---- writer ---- */

struct store_writer {
	cltfs_store *s;
	char name[256];
	char pack_path[4096], idx_path[4096];
	int pack_fd, idx_fd;
	int level;
	cltfs_codec codec;
	pthread_mutex_t mu;      /* guards what follows, to sync_mu */
	uint64_t pack_end;
	cltfs_zctx *z;
	uint8_t *frame;
	size_t framecap;
	cltfs_rec *pend;         /* added, not yet in the index */
	size_t npend, pendcap;
	pthread_mutex_t sync_mu; /* one sync at a time; guards idx_end */
	uint64_t idx_end;
};

static cltfs_err write_full(int fd, const void *buf, size_t n, uint64_t off, const char *path)
{
	int r = cltfs_pwrite_full(fd, buf, n, off);
	return r ? cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(r)) : CLTFS_OK;
}

/* Open (or create) one file of the pair, check or write its header, and
 * take the writer's lock so two processes never share a writer id. */
static cltfs_err open_part(const char *path, const char *magic, bool lock, int *fd, uint64_t *end)
{
	*fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (*fd < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
	if (lock && flock(*fd, LOCK_EX | LOCK_NB) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: in use by another writer", path);
	struct stat st;
	if (fstat(*fd, &st) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: %s", path, strerror(errno));
	uint8_t hdr[CLTFS_FILE_HEADER];
	if (st.st_size < CLTFS_FILE_HEADER) {
		cltfs_file_header(magic, hdr);
		*end = CLTFS_FILE_HEADER;
		return write_full(*fd, hdr, sizeof hdr, 0, path);
	}
	if (pread(*fd, hdr, sizeof hdr, 0) != sizeof hdr)
		return cltfs_fail(CLTFS_E_IO, "%s: cannot read header", path);
	cltfs_err e = cltfs_file_header_check(magic, hdr);
	*end = (uint64_t)st.st_size;
	return e ? cltfs_wrap(e, "%s", path) : CLTFS_OK;
}

/* Cut a torn tail off the index: whole records whose checksum holds stay. */
static cltfs_err trim_index(store_writer *w, const char *path)
{
	uint64_t end = CLTFS_FILE_HEADER + (w->idx_end - CLTFS_FILE_HEADER) / CLTFS_REC_SIZE * CLTFS_REC_SIZE;
	while (end > CLTFS_FILE_HEADER) {
		uint8_t rec[CLTFS_REC_SIZE];
		cltfs_rec r;
		if (pread(w->idx_fd, rec, sizeof rec, (off_t)(end - CLTFS_REC_SIZE)) == (ssize_t)sizeof rec &&
		    !cltfs_rec_decode(rec, &r))
			break;
		end -= CLTFS_REC_SIZE;
	}
	if (end != w->idx_end) {
		if (ftruncate(w->idx_fd, (off_t)end) < 0 || fsync(w->idx_fd) < 0)
			return cltfs_fail(CLTFS_E_IO, "%s: cannot cut torn tail: %s", path, strerror(errno));
		w->idx_end = end;
	}
	return CLTFS_OK;
}

/* Cut the pack back to the end of its last indexed frame.  Frames past it
 * were appended by a writer that never recorded them (killed, or out of
 * disk space before its sync): nothing refers to them, and left there they
 * would stay dead forever (a retry after ENOSPC could not use the space
 * they hold).  The end is the furthest any record of the pair names (not
 * the last record's, though records follow their frames: a wrong guess
 * would cut referenced frames), as merged at open and from the records
 * written since (merge_index reads only those).  Called with the pack
 * locked: no other writer can add to it now. */
static cltfs_err trim_pack(store_writer *w)
{
	cltfs_store *s = w->s;
	pthread_rwlock_wrlock(&s->lock);
	int p = pack_of(s, w->name);
	cltfs_err e = p < 0 ? cltfs_fail(CLTFS_E_NOMEM, "out of memory") : merge_index(s, p);
	uint64_t end = p < 0 ? 0 : s->packs[p].frames_end;
	pthread_rwlock_unlock(&s->lock);
	if (e)
		return e;
	if (end < CLTFS_FILE_HEADER)
		end = CLTFS_FILE_HEADER;
	if (end >= w->pack_end)
		return CLTFS_OK; /* nothing past it (or a pack shorter than its index: verify says so) */
	if (ftruncate(w->pack_fd, (off_t)end) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: cannot cut unrecorded tail: %s", w->pack_path, strerror(errno));
	w->pack_end = end;
	return CLTFS_OK;
}

/* The writer name of tag: <host>-<tag>, and -<pid> unless pid is 0. */
static void writer_name(const char *tag, long pid, char *buf, size_t n)
{
	char host[128] = "host";
	gethostname(host, sizeof host - 1);
	if (pid)
		snprintf(buf, n, "%s-%s-%ld", host, tag, pid);
	else
		snprintf(buf, n, "%s-%s", host, tag);
}

bool store_has_writer(const cltfs_store *s, const char *tag)
{
	char name[256], path[4096];
	writer_name(tag, 0, name, sizeof name);
	path_of(s, name, ".pack", path, sizeof path);
	if (!access(path, F_OK))
		return true;
	path_of(s, name, ".idx", path, sizeof path);
	return !access(path, F_OK);
}

cltfs_err store_writer_open(cltfs_store *s, const char *tag, store_writer **out)
{
	store_writer *w = calloc(1, sizeof *w);
	if (!w || !(w->z = cltfs_zctx_new())) {
		free(w);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	w->s = s;
	w->pack_fd = w->idx_fd = -1;
	w->level = 1; /* measured: decodes faster than 3, and as small on activations */
	w->codec = s->m->codec;
	pthread_mutex_init(&w->mu, NULL);
	pthread_mutex_init(&w->sync_mu, NULL);
	cltfs_err e = CLTFS_E_IO;
	/* host-tag, or host-tag-pid when another process holds that writer */
	for (int attempt = 0; attempt < 2 && e; attempt++) {
		if (w->pack_fd >= 0)
			close(w->pack_fd);
		w->pack_fd = -1;
		writer_name(tag, attempt ? (long)getpid() : 0, w->name, sizeof w->name);
		path_of(s, w->name, ".pack", w->pack_path, sizeof w->pack_path);
		e = open_part(w->pack_path, CLTFS_PACK_MAGIC, true, &w->pack_fd, &w->pack_end);
	}
	path_of(s, w->name, ".idx", w->idx_path, sizeof w->idx_path);
	if (!e)
		e = open_part(w->idx_path, CLTFS_IDX_MAGIC, false, &w->idx_fd, &w->idx_end);
	if (!e)
		e = trim_index(w, w->idx_path);
	if (!e)
		e = trim_pack(w);
	if (e) {
		store_writer_close(w);
		return e;
	}
	*out = w;
	return CLTFS_OK;
}

void store_writer_level(store_writer *w, int level) { w->level = level; }
const char *store_writer_name(const store_writer *w) { return w->name; }

void store_writer_codec(store_writer *w, cltfs_codec codec) { w->codec = codec; }

/* Append a frame and note its record (at its new offset) as pending;
 * called with w->mu held. */
static cltfs_err append_frame(store_writer *w, cltfs_rec rec, const void *frame)
{
	if (!cltfs_grow(&w->pend, &w->pendcap, w->npend + 1, sizeof *w->pend))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err e = write_full(w->pack_fd, frame, rec.csize, w->pack_end, w->pack_path);
	if (e)
		return e;
	rec.offset = w->pack_end;
	w->pend[w->npend++] = rec;
	w->pack_end += rec.csize;
	/* Visible to this process at once (its reads see the pack through the
	 * page cache), durable for others only at store_writer_sync. */
	pthread_rwlock_wrlock(&w->s->lock);
	int p = pack_of(w->s, w->name);
	e = p < 0 ? cltfs_fail(CLTFS_E_NOMEM, "out of memory")
		  : known(w->s, rec.key) ? CLTFS_OK /* another copy is visible already: it stays */
					 : insert(w->s, &rec, p);
	pthread_rwlock_unlock(&w->s->lock);
	return e;
}

cltfs_err store_writer_add_with(store_writer *w, cltfs_zctx *z, uint64_t key, const void *raw, size_t len)
{
	const cltfs_manifest *m = w->s->m;
	size_t bound = cltfs_frame_bound(w->codec, len), clen;
	uint8_t *frame = cltfs_zctx_buffer(z, bound);
	if (!frame)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	cltfs_err e = cltfs_frame_encode(z, w->codec, w->level, cltfs_dtype_size(m->dtype), raw, len, frame, bound, &clen);
	if (e)
		return e;
	cltfs_rec rec = {key, 0, (uint32_t)clen, (uint32_t)len, cltfs_crc32(0, raw, len), (uint8_t)m->dtype,
			 (uint8_t)w->codec};
	pthread_mutex_lock(&w->mu);
	e = append_frame(w, rec, frame);
	pthread_mutex_unlock(&w->mu);
	return e;
}

cltfs_err store_writer_add(store_writer *w, uint64_t key, const void *raw, size_t len)
{
	const cltfs_manifest *m = w->s->m;
	pthread_mutex_lock(&w->mu);
	size_t clen;
	cltfs_err e = cltfs_reserve(&w->frame, &w->framecap, cltfs_frame_bound(w->codec, len))
			      ? cltfs_frame_encode(w->z, w->codec, w->level, cltfs_dtype_size(m->dtype), raw, len,
						   w->frame, w->framecap, &clen)
			      : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e) {
		cltfs_rec rec = {key, 0, (uint32_t)clen, (uint32_t)len, cltfs_crc32(0, raw, len), (uint8_t)m->dtype,
				 (uint8_t)w->codec};
		e = append_frame(w, rec, w->frame);
	}
	pthread_mutex_unlock(&w->mu);
	return e;
}

cltfs_err store_writer_add_frame(store_writer *w, const cltfs_rec *rec, const void *frame)
{
	if (!plausible(w->s, rec))
		return cltfs_fail(CLTFS_E_MISMATCH, "%s: a frame that does not fit this store's manifest", w->s->dir);
	pthread_mutex_lock(&w->mu);
	cltfs_err e = append_frame(w, *rec, frame);
	pthread_mutex_unlock(&w->mu);
	return e;
}

/* Put records that could not be written back in front of the pending ones. */
static cltfs_err restore_pending(store_writer *w, cltfs_rec *recs, size_t n)
{
	pthread_mutex_lock(&w->mu);
	bool ok = cltfs_grow(&w->pend, &w->pendcap, w->npend + n, sizeof *w->pend);
	if (ok) {
		memmove(w->pend + n, w->pend, w->npend * sizeof *w->pend);
		memcpy(w->pend, recs, n * sizeof *recs);
		w->npend += n;
	}
	pthread_mutex_unlock(&w->mu);
	return ok ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}

/* Records recs[0..n) are now first, first + 1, ... of pack p's index, which
 * ends at end: their pending entries move to the map.  What cannot move (no
 * memory, the file not open) stays pending, as correct, only larger. */
static void to_map(cltfs_store *s, int p, const cltfs_rec *recs, size_t n, uint64_t first, uint64_t end)
{
	pack *pk = &s->packs[p];
	/* records of this pair written before this writer opened it come first */
	if (pk->idx_consumed < CLTFS_FILE_HEADER + first * CLTFS_REC_SIZE && merge_index(s, p))
		return;
	for (size_t i = 0; i < n; i++)
		if (recs[i].offset + recs[i].csize > pk->frames_end)
			pk->frames_end = recs[i].offset + recs[i].csize;
	if (pk->idx_consumed < end)
		pk->idx_consumed = end;
	if (pk->idx_fd < 0) {
		char path[4096];
		path_of(s, pk->name, ".idx", path, sizeof path);
		if ((pk->idx_fd = open_regular(path)) < 0)
			return;
	}
	for (size_t i = 0; i < n; i++) {
		slot *hit = find(s, recs[i].key);
		if (hit && hit->pack == p && hit->rec.offset == recs[i].offset && !map_put(s, recs[i].key, p, first + i))
			table_remove(s, hit);
	}
	if (!s->tcount) { /* a bulk fill's table goes with its last sync */
		free(s->table);
		s->table = NULL;
		s->tcap = 0;
	}
}

/* Write records after the pack is durable: fsync the pack, append, fsync
 * the index.  Runs under sync_mu only, so adds go on meanwhile. */
static cltfs_err commit(store_writer *w, const cltfs_rec *recs, size_t n)
{
	if (fsync(w->pack_fd) < 0)
		return cltfs_fail(CLTFS_E_IO, "%s: fsync: %s", w->pack_path, strerror(errno));
	uint8_t *buf = malloc(n * CLTFS_REC_SIZE);
	if (!buf)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		cltfs_rec_encode(&recs[i], buf + i * CLTFS_REC_SIZE);
	cltfs_err e = write_full(w->idx_fd, buf, n * CLTFS_REC_SIZE, w->idx_end, w->idx_path);
	free(buf);
	if (!e && fsync(w->idx_fd) < 0)
		e = cltfs_fail(CLTFS_E_IO, "%s: fsync: %s", w->idx_path, strerror(errno));
	if (e) /* a torn write is cut off by the next writer of this index */
		return e;
	uint64_t first = recno_of(w->idx_end);
	w->idx_end += n * CLTFS_REC_SIZE;
	pthread_rwlock_wrlock(&w->s->lock);
	int p = pack_of(w->s, w->name);
	if (p >= 0)
		to_map(w->s, p, recs, n, first, w->idx_end);
	pthread_rwlock_unlock(&w->s->lock);
	return p < 0 ? cltfs_fail(CLTFS_E_NOMEM, "out of memory") : CLTFS_OK;
}

cltfs_err store_writer_sync(store_writer *w)
{
	pthread_mutex_lock(&w->sync_mu);
	pthread_mutex_lock(&w->mu);
	cltfs_rec *recs = w->pend; /* the frames of these are in the pack already */
	size_t n = w->npend;
	w->pend = NULL;
	w->npend = w->pendcap = 0;
	pthread_mutex_unlock(&w->mu);
	cltfs_err e = n ? commit(w, recs, n) : CLTFS_OK;
	if (e && restore_pending(w, recs, n)) /* keep the first error's message */
		cltfs_fail(e, "%s: %s", w->idx_path, "records lost: out of memory");
	free(recs);
	pthread_mutex_unlock(&w->sync_mu);
	return e;
}

void store_writer_abandon(store_writer *w)
{
	pthread_mutex_lock(&w->mu);
	pthread_rwlock_wrlock(&w->s->lock);
	int p = pack_of(w->s, w->name);
	for (size_t i = 0; p >= 0 && i < w->npend; i++) {
		slot *hit = find(w->s, w->pend[i].key);
		if (hit && hit->pack == p && hit->rec.offset == w->pend[i].offset)
			table_remove(w->s, hit);
	}
	pthread_rwlock_unlock(&w->s->lock);
	w->npend = 0;
	pthread_mutex_unlock(&w->mu);
}

cltfs_err store_writer_close(store_writer *w)
{
	if (!w)
		return CLTFS_OK;
	cltfs_err e = w->pack_fd >= 0 && w->idx_fd >= 0 ? store_writer_sync(w) : CLTFS_OK;
	if (w->pack_fd >= 0)
		close(w->pack_fd);
	if (w->idx_fd >= 0)
		close(w->idx_fd);
	pthread_mutex_destroy(&w->mu);
	pthread_mutex_destroy(&w->sync_mu);
	cltfs_zctx_free(w->z);
	free(w->frame);
	free(w->pend);
	free(w);
	return e;
}
