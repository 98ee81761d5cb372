/* verify.c: `cltfs verify STORE`: decode every frame of every pack and
 * check it against its record; name each bad chunk.  `cltfs verify
 * --repair STORE [SOURCE]`: rebuild the store from what verifies, then
 * fill what is missing from a source. */
#include "cmd.h"
#include "hfcache.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
	cltfs_zctx *z;
	uint8_t *buf;
	size_t cap;
	uint64_t ok, bad, dup;
	uint8_t *seen; /* one bit per (stream, chunk) present */
	const cltfs_manifest *m;
} verify_state;

static size_t slot_of(const cltfs_manifest *m, uint64_t key)
{
	/* x@L and mlp@L each have n_chunks slots, per layer */
	size_t stream = (size_t)cltfs_key_layer(key) * 2 + cltfs_key_kind(key);
	return stream * (size_t)m->n_chunks + cltfs_key_chunk(key);
}

static cltfs_err verify_one(void *arg, const store_entry *ent)
{
	verify_state *v = arg;
	char k[48];
	if (!ent->valid) {
		fprintf(stderr, "cltfs: %s: record at offset %llu fails its checksum or names no chunk of this store\n",
			ent->idx_path, (unsigned long long)ent->idx_offset);
		v->bad++;
		return CLTFS_OK;
	}
	if (!cltfs_reserve(&v->buf, &v->cap, ent->rec.rsize))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (store_check_entry(ent, v->z, v->buf)) {
		fprintf(stderr, "cltfs: %s: chunk %s at offset %llu: %s\n", ent->pack_path,
			cltfs_key_str(ent->rec.key, k, sizeof k), (unsigned long long)ent->rec.offset, cltfs_errmsg());
		v->bad++;
		return CLTFS_OK;
	}
	size_t slot = slot_of(v->m, ent->rec.key);
	if (v->seen[slot / 8] & (1u << (slot % 8)))
		v->dup++;
	v->seen[slot / 8] |= (uint8_t)(1u << (slot % 8));
	v->ok++;
	return CLTFS_OK;
}

/* verify; whole: a chunk missing is an error too (after a repair). */
static int verify_store(const char *dir, bool whole)
{
	cltfs_store *s;
	if (store_open(dir, &s)) {
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
		return 1;
	}
	const cltfs_manifest *m = store_manifest(s);
	verify_state v = {.z = cltfs_zctx_new(), .m = m};
	size_t slots = (size_t)(m->n_layers + 1) * 2 * (size_t)m->n_chunks;
	v.seen = calloc(slots / 8 + 1, 1);
	int rc = 1;
	if (!v.z || !v.seen)
		fprintf(stderr, "cltfs: out of memory\n");
	else if (store_foreach(s, verify_one, &v))
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
	else {
		uint64_t present = v.ok - v.dup;
		uint64_t need = (uint64_t)(m->n_x_layers + m->n_mlp_layers) * (uint64_t)m->n_chunks;
		/* what fills the rest depends on where the store came from */
		bool captured = m->source_kind && !strcmp(m->source_kind, "capture");
		printf("%s: %llu chunks checked, %llu bad; %llu of %llu chunks present%s\n", dir,
		       (unsigned long long)(v.ok + v.bad), (unsigned long long)v.bad, (unsigned long long)present,
		       (unsigned long long)need,
		       present >= need ? ""
		       : captured  ? " (the rest: `cltfs capture`, or a read under a mount captures it)"
				   : " (the rest: run the same `cltfs import` again, or `cltfs pull` from the Hub)");
		rc = v.bad ? 1 : 0;
		if (whole && present < need) {
			fprintf(stderr, "cltfs: %s: %llu chunks still missing after the repair\n", dir,
				(unsigned long long)(need - present));
			rc = 1;
		}
	}
	cltfs_zctx_free(v.z);
	free(v.buf);
	free(v.seen);
	store_close(s);
	return rc;
}

int cmd_verify(const char *dir) { return verify_store(dir, false); }

/* ---- verify --repair ----
 *
 * Pass 1 checks every record and frame, as verify does, and notes for
 * each writer pair whether it is clean: no damaged record or frame, no
 * chunk a pair before it holds already, and no byte of its pack that no
 * record names.  Clean pairs stay as they are (a flipped byte in a 1 TB
 * store rewrites one pair, not the store); pass 2 copies the first good
 * copy of each chunk of the other pairs into a new pair, and only then are
 * those pairs removed, index first.  Killed anywhere, the store still
 * verifies, or shows what a second --repair fixes. */

typedef struct {
	char *idx, *pack;
	uint64_t bad, dup, refbytes;
	bool clean;
} pair_info;

typedef struct {
	verify_state v;
	pair_info *pairs;
	size_t npairs, cap;
	int pass;               /* 1: check; 2: copies among clean pairs; 3: their chunks; 4: copy the rest */
	const char *dir;
	char tag[64];
	store_writer *w;        /* the new pair, opened on the first copy */
	cltfs_store *s;
	uint8_t *frame;
	size_t framecap;
	uint64_t kept, damaged, copies, unsynced;
	bool quiet;
} repair_state;

static pair_info *pair_of(repair_state *r, const store_entry *ent)
{
	if (r->npairs && !strcmp(r->pairs[r->npairs - 1].idx, ent->idx_path))
		return &r->pairs[r->npairs - 1];
	for (size_t i = 0; i < r->npairs; i++)
		if (!strcmp(r->pairs[i].idx, ent->idx_path))
			return &r->pairs[i];
	if (r->pass != 1 || !cltfs_grow(&r->pairs, &r->cap, r->npairs + 1, sizeof *r->pairs))
		return NULL;
	pair_info *p = &r->pairs[r->npairs];
	*p = (pair_info){strdup(ent->idx_path), strdup(ent->pack_path), 0, 0, 0, false};
	if (!p->idx || !p->pack) {
		free(p->idx);
		free(p->pack);
		return NULL;
	}
	r->npairs++;
	return p;
}

/* The frame of ent into r->frame, decoded and checked against its record. */
static bool frame_good(repair_state *r, const store_entry *ent)
{
	if (!ent->valid || !cltfs_reserve(&r->v.buf, &r->v.cap, ent->rec.rsize) ||
	    !cltfs_reserve(&r->frame, &r->framecap, ent->rec.csize ? ent->rec.csize : 1))
		return false;
	FILE *f = fopen(ent->pack_path, "rb");
	bool read = f && fseeko(f, (off_t)ent->rec.offset, SEEK_SET) == 0 &&
		    fread(r->frame, 1, ent->rec.csize, f) == ent->rec.csize;
	if (f)
		fclose(f);
	return read && !store_decode(&ent->rec, r->v.z, r->frame, r->v.buf);
}

static bool seen_set(verify_state *v, uint64_t key)
{
	size_t slot = slot_of(v->m, key);
	bool was = v->seen[slot / 8] & (1u << (slot % 8));
	v->seen[slot / 8] |= (uint8_t)(1u << (slot % 8));
	return was;
}

static cltfs_err repair_one(void *arg, const store_entry *ent)
{
	repair_state *r = arg;
	char k[48];
	pair_info *p = pair_of(r, ent);
	if (!p)
		return r->pass == 1 ? cltfs_fail(CLTFS_E_NOMEM, "out of memory") : CLTFS_OK; /* a pair made since */
	if (r->pass == 1) {
		if (!frame_good(r, ent)) {
			if (!r->quiet)
				fprintf(stderr, "cltfs: dropping a record of %s at offset %llu%s%s: %s\n", ent->idx_path,
					(unsigned long long)ent->idx_offset, ent->valid ? ", chunk " : "",
					ent->valid ? cltfs_key_str(ent->rec.key, k, sizeof k) : "",
					ent->valid ? cltfs_errmsg() : "fails its checksum or names no chunk of this store");
			p->bad++;
			r->damaged++;
			return CLTFS_OK;
		}
		p->refbytes += ent->rec.csize;
		return CLTFS_OK;
	}
	if (r->pass == 2) { /* a clean pair holding a chunk an earlier clean pair holds is not clean */
		if (p->clean && seen_set(&r->v, ent->rec.key))
			p->dup++;
		return CLTFS_OK;
	}
	if (r->pass == 3) { /* what the clean pairs keep */
		if (p->clean && !seen_set(&r->v, ent->rec.key))
			r->kept++;
		return CLTFS_OK;
	}
	size_t slot = ent->valid ? slot_of(r->v.m, ent->rec.key) : 0;
	if (p->clean || !ent->valid)
		return CLTFS_OK;
	if (r->v.seen[slot / 8] & (1u << (slot % 8))) {
		r->copies++;
		return CLTFS_OK;
	}
	if (!frame_good(r, ent))
		return CLTFS_OK;
	cltfs_err e = r->w ? CLTFS_OK : store_writer_open(r->s, r->tag, &r->w);
	if (!e)
		e = store_writer_add_frame(r->w, &ent->rec, r->frame);
	if (e)
		return e;
	seen_set(&r->v, ent->rec.key);
	r->kept++;
	r->unsynced += ent->rec.csize;
	if (r->unsynced >= (256u << 20)) { /* durable every 256 MiB, not at the end only */
		r->unsynced = 0;
		return store_writer_sync(r->w);
	}
	return CLTFS_OK;
}

/* A pair is clean when nothing in it is damaged or a copy of a chunk a
 * clean pair before it holds, and every byte of its pack past the header
 * is a frame a record names. */
static void judge(repair_state *r)
{
	for (size_t i = 0; i < r->npairs; i++) {
		pair_info *p = &r->pairs[i];
		struct stat st;
		p->clean = !p->bad && !p->dup && !stat(p->pack, &st) &&
			   (uint64_t)st.st_size == CLTFS_FILE_HEADER + p->refbytes;
	}
}

/* Remove the pairs that are not clean, and packs no index goes with:
 * indexes first (their records go), then packs (their frames, now
 * unreferenced); the new pair stays. */
static cltfs_err remove_unclean(repair_state *r, const char *keep)
{
	cltfs_err e = CLTFS_OK;
	for (int pass = 0; pass < 2 && !e; pass++)
		for (size_t i = 0; i < r->npairs && !e; i++) {
			const char *f = pass ? r->pairs[i].pack : r->pairs[i].idx;
			if (!r->pairs[i].clean && unlink(f) < 0 && errno != ENOENT)
				e = cltfs_fail(CLTFS_E_IO, "%s: %s", f, strerror(errno));
		}
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/packs", r->dir);
	DIR *d = e ? NULL : opendir(dir);
	struct dirent *de;
	while (d && !e && (de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (n <= 5 || strcmp(de->d_name + n - 5, ".pack") || (keep && !strncmp(de->d_name, keep, n - 5) &&
									  strlen(keep) == n - 5))
			continue;
		char pack[8192], idx[8192];
		snprintf(pack, sizeof pack, "%s/%s", dir, de->d_name);
		snprintf(idx, sizeof idx, "%s/%.*s.idx", dir, (int)(n - 5), de->d_name);
		if (access(idx, F_OK) && unlink(pack) < 0) /* a pack without its index: bytes nothing names */
			e = cltfs_fail(CLTFS_E_IO, "%s: %s", pack, strerror(errno));
	}
	if (d)
		closedir(d);
	return e;
}

/* A writer tag no pair in the store has.  A writer appends to a pair of
 * its name, and a repair killed within the same second left one: pass 1
 * may judge it unclean, and removing it would take this repair's copies
 * with it (the store then verified with chunks missing). */
static void fresh_tag(const cltfs_store *s, char *tag, size_t n)
{
	long t = (long)time(NULL);
	for (int k = 0;; k++) {
		snprintf(tag, n, k ? "repair-%ld-%d" : "repair-%ld", t, k);
		if (!store_has_writer(s, tag))
			return;
	}
}

static cltfs_err compact(const char *dir, bool quiet, uint64_t *missing, char **kind, char **path, int *offset)
{
	cltfs_store *s;
	cltfs_err e = store_open(dir, &s);
	if (e)
		return e;
	const cltfs_manifest *m = store_manifest(s);
	repair_state r = {.v = {.z = cltfs_zctx_new(), .m = m}, .quiet = quiet, .dir = dir, .s = s, .pass = 1};
	fresh_tag(s, r.tag, sizeof r.tag);
	size_t slots = (size_t)(m->n_layers + 1) * 2 * (size_t)m->n_chunks, bytes = slots / 8 + 1;
	r.v.seen = calloc(bytes, 1);
	*kind = m->source_kind ? strdup(m->source_kind) : NULL;
	*path = m->source_path ? strdup(m->source_path) : NULL;
	*offset = m->target_offset;
	if (!r.v.z || !r.v.seen)
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	if (!e)
		e = store_foreach(s, repair_one, &r);
	judge(&r);
	for (int pass = 2; !e && pass <= 4; pass++) {
		if (pass <= 3)
			memset(r.v.seen, 0, bytes);
		r.pass = pass;
		e = store_foreach(s, repair_one, &r);
		if (pass == 2)
			judge(&r);
	}
	if (!e && r.w) /* the new pair durable before anything goes */
		e = store_writer_sync(r.w);
	if (!e)
		e = remove_unclean(&r, r.w ? store_writer_name(r.w) : NULL);
	if (r.w) {
		cltfs_err ce = store_writer_close(r.w);
		e = e ? e : ce;
	}
	size_t clean = 0;
	for (size_t i = 0; i < r.npairs; i++)
		clean += r.pairs[i].clean;
	uint64_t need = (uint64_t)(m->n_x_layers + m->n_mlp_layers) * (uint64_t)m->n_chunks;
	*missing = need - r.kept;
	if (!e && !quiet)
		fprintf(stderr, "repair: %zu of %zu writer pairs clean and kept as they are; %llu chunks kept, %llu "
			"damaged records dropped, %llu extra copies dropped; %llu of %llu chunks missing\n", clean,
			r.npairs, (unsigned long long)r.kept, (unsigned long long)r.damaged,
			(unsigned long long)r.copies, (unsigned long long)*missing, (unsigned long long)need);
	for (size_t i = 0; i < r.npairs; i++) {
		free(r.pairs[i].idx);
		free(r.pairs[i].pack);
	}
	free(r.pairs);
	cltfs_zctx_free(r.v.z);
	free(r.v.buf);
	free(r.v.seen);
	free(r.frame);
	store_close(s);
	return e;
}

int cmd_repair(const char *dir, const char *source, bool quiet)
{
	uint64_t missing = 0;
	char *kind = NULL, *path = NULL;
	int offset = 1;
	cltfs_err e = compact(dir, quiet, &missing, &kind, &path, &offset);
	int rc = 0;
	if (e) {
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
		rc = 1;
	} else if (missing && source && hf_is_remote_url(source)) {
		rc = cmd_pull(source, dir, quiet);
	} else if (missing && (source || (kind && !strcmp(kind, "import") && path))) {
		import_opts io = {.target_offset = offset, .level = 1, .codec = -1, .quiet = quiet};
		rc = cmd_import(dir, source ? source : path, &io);
	} else if (missing && kind && !strcmp(kind, "capture")) {
		capture_opts co = {.cfg = {.load = {.dtype = -1}}, .quiet = quiet};
		rc = cmd_capture(dir, &co);
	} else if (missing) {
		fprintf(stderr, "cltfs: %s: %llu chunks missing and no source to fill them from: give SOURCE "
			"(a materialized tree, hf://datasets/OWNER/NAME or s3://BUCKET/PREFIX)\n",
			dir, (unsigned long long)missing);
		rc = 1;
	}
	free(kind);
	free(path);
	return rc ? rc : verify_store(dir, true);
}
