/* verify.c: `cltfs verify STORE`: decode every frame of every pack and
 * check it against its record; name each bad chunk. */
#include "cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int cmd_verify(const char *dir)
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
	}
	cltfs_zctx_free(v.z);
	free(v.buf);
	free(v.seen);
	store_close(s);
	return rc;
}
