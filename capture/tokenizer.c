/* tokenizer.c: the checkpoint's tokenizer: a SentencePiece BPE model
 * (tokenizer.model) plus the added tokens of tokenizer_config.json /
 * added_tokens.json, with no library.
 *
 * Why not libsentencepiece: Debian's carries its own protobuf 3.14, which
 * cannot live in one process with libtorch's protobuf 3.21 (a crash or an
 * abort when the capture library loads).  What is read of the model is
 * small: the pieces (string, score, type), the normalizer's flags and the
 * special ids.  Encoding follows SentencePiece's bpe_model.cc: characters,
 * then the adjacent pair whose concatenation is a piece with the highest
 * score merged first (the leftmost on ties), until none is; a symbol that
 * is no piece becomes its bytes (<0xNN>) with byte_fallback, else <unk>.
 * Normalizers other than "identity" (LLaMA's) are refused.
 */
#include "capture.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { P_NORMAL = 1, P_UNKNOWN = 2, P_CONTROL = 3, P_USER = 4, P_UNUSED = 5, P_BYTE = 6 };

typedef struct {
	char *s;
	uint32_t len;
	float score;
	int type;
} piece;

typedef struct {
	char *s;
	int id;
} added;

struct cap_tokenizer {
	piece *p;
	size_t np, pcap;
	int32_t *table; /* open addressing: piece index + 1, 0 empty */
	size_t tcap;
	int unk_id, bos_id, byte_id[256];
	bool byte_fallback, dummy_prefix, remove_ws, escape_ws, ws_suffix, add_bos;
	added *added;
	size_t nadded;
	bool cacheable;   /* no merge can cross a word's start: words may be cached */
	struct wentry *wc; /* the word cache, WCACHE slots (NULL until first used) */
	size_t wc_n;
};

static void wc_clear(cap_tokenizer *t);
static void check_cacheable(cap_tokenizer *t);

/* ---- the pieces' table ---- */

static uint64_t hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
	return h;
}

/* The id of a piece, or -1: as SentencePiece's PieceToId (every type). */
static int find_piece(const cap_tokenizer *t, const char *s, size_t n)
{
	for (size_t i = hash(s, n) & (t->tcap - 1);; i = (i + 1) & (t->tcap - 1)) {
		int32_t v = t->table[i];
		if (!v)
			return -1;
		const piece *p = &t->p[v - 1];
		if (p->len == n && !memcmp(p->s, s, n))
			return v - 1;
	}
}

static cltfs_err build_table(cap_tokenizer *t)
{
	t->tcap = 16;
	while (t->tcap < t->np * 2)
		t->tcap *= 2;
	if (!(t->table = calloc(t->tcap, sizeof *t->table)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	for (size_t k = 0; k < t->np; k++) {
		if (find_piece(t, t->p[k].s, t->p[k].len) >= 0)
			continue; /* the first of duplicates, as SentencePiece keeps */
		size_t i = hash(t->p[k].s, t->p[k].len) & (t->tcap - 1);
		while (t->table[i])
			i = (i + 1) & (t->tcap - 1);
		t->table[i] = (int32_t)k + 1;
	}
	for (int b = 0; b < 256; b++) {
		char name[8];
		snprintf(name, sizeof name, "<0x%02X>", b);
		t->byte_id[b] = find_piece(t, name, 6);
	}
	return CLTFS_OK;
}

/* ---- the model file: protobuf, the few fields used ---- */

typedef struct {
	const uint8_t *p, *end;
	bool bad;
} pb;

static uint64_t varint(pb *b)
{
	uint64_t v = 0;
	for (int sh = 0; sh < 64 && b->p < b->end; sh += 7) {
		uint8_t c = *b->p++;
		v |= (uint64_t)(c & 0x7f) << sh;
		if (!(c & 0x80))
			return v;
	}
	b->bad = true;
	return 0;
}

/* The next field: its number and wire type; a length-delimited or fixed
 * field's bytes in *sub.  false at the end or on a malformed field. */
static bool field(pb *b, int *num, int *wt, uint64_t *val, pb *sub)
{
	if (b->p >= b->end || b->bad)
		return false;
	uint64_t key = varint(b);
	*num = (int)(key >> 3);
	*wt = (int)(key & 7);
	*sub = (pb){b->p, b->p, false};
	if (*wt == 0) {
		*val = varint(b);
	} else if (*wt == 2 || *wt == 5 || *wt == 1) {
		uint64_t n = *wt == 2 ? varint(b) : *wt == 5 ? 4 : 8;
		if (n > (uint64_t)(b->end - b->p))
			b->bad = true;
		else {
			*sub = (pb){b->p, b->p + n, false};
			b->p += n;
		}
	} else {
		b->bad = true;
	}
	return !b->bad;
}

static cltfs_err read_piece(cap_tokenizer *t, pb *m)
{
	piece p = {NULL, 0, 0, P_NORMAL};
	pb sub;
	int num, wt;
	uint64_t v;
	while (field(m, &num, &wt, &v, &sub)) {
		if (num == 1 && wt == 2) {
			/* all len bytes, not strndup's: a piece may hold a NUL, and
			 * find_piece compares len bytes */
			free(p.s);
			p.len = (uint32_t)(sub.end - sub.p);
			if (!(p.s = malloc((size_t)p.len + 1)))
				return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			memcpy(p.s, sub.p, p.len);
			p.s[p.len] = 0;
		} else if (num == 2 && wt == 5) {
			memcpy(&p.score, sub.p, 4);
		} else if (num == 3 && wt == 0) {
			p.type = (int)v;
		}
	}
	if (m->bad || !p.s || !p.len) {
		free(p.s);
		return CLTFS_E_FORMAT;
	}
	if (!cltfs_grow(&t->p, &t->pcap, t->np + 1, sizeof *t->p)) {
		free(p.s);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	t->p[t->np++] = p;
	return CLTFS_OK;
}

static cltfs_err read_model(cap_tokenizer *t, const uint8_t *data, size_t len, const char *path)
{
	pb b = {data, data + len, false}, sub;
	int num, wt, model_type = 0; /* 0: no trainer spec seen */
	uint64_t v;
	bool identity = true;
	t->unk_id = 0;
	t->bos_id = 1;
	t->dummy_prefix = t->remove_ws = t->escape_ws = true;
	while (field(&b, &num, &wt, &v, &sub)) {
		if (num == 1 && wt == 2) {
			cltfs_err e = read_piece(t, &sub);
			if (e)
				return e == CLTFS_E_FORMAT ? cltfs_fail(e, "%s: a malformed piece", path) : e;
		} else if (num == 2 && wt == 2) { /* trainer_spec */
			while (field(&sub, &num, &wt, &v, &(pb){0})) {
				if (wt != 0)
					continue;
				if (num == 3)
					model_type = (int)v;
				else if (num == 24)
					t->ws_suffix = v;
				else if (num == 35)
					t->byte_fallback = v;
				else if (num == 40)
					t->unk_id = (int)v;
				else if (num == 41)
					t->bos_id = (int)(int32_t)v;
			}
		} else if (num == 3 && wt == 2) { /* normalizer_spec */
			pb f;
			while (field(&sub, &num, &wt, &v, &f)) {
				if (num == 1 && wt == 2)
					identity = (f.end - f.p == 8 && !memcmp(f.p, "identity", 8)) || f.end == f.p;
				else if (num == 2 && wt == 2 && f.end != f.p)
					identity = false; /* a precompiled character map: another normalizer */
				else if (num == 3 && wt == 0)
					t->dummy_prefix = v;
				else if (num == 4 && wt == 0)
					t->remove_ws = v;
				else if (num == 5 && wt == 0)
					t->escape_ws = v;
			}
		}
	}
	if (b.bad || !t->np)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not a SentencePiece model (truncated or another format)", path);
	if (!model_type)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: no trainer spec (truncated, or not a SentencePiece model)", path);
	if (model_type != 2)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: a SentencePiece model of type %d; cltfs encodes BPE (2), as "
				  "LLaMA's", path, model_type);
	if (!identity)
		return cltfs_fail(CLTFS_E_UNSUPPORTED, "%s: its normalizer is not \"identity\" (LLaMA's); cltfs does "
				  "not apply character maps", path);
	if (t->unk_id < 0 || (size_t)t->unk_id >= t->np)
		return cltfs_fail(CLTFS_E_FORMAT, "%s: unk_id %d is not a piece", path, t->unk_id);
	cltfs_err e = build_table(t);
	if (!e)
		check_cacheable(t);
	return e;
}

/* ---- added tokens ---- */

static cltfs_err add_token(cap_tokenizer *t, const char *s, int id)
{
	for (size_t i = 0; i < t->nadded; i++)
		if (!strcmp(t->added[i].s, s))
			return CLTFS_OK;
	added *na = realloc(t->added, (t->nadded + 1) * sizeof *na);
	if (!na)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	t->added = na;
	if (!*s)
		return CLTFS_OK;
	if (!(na[t->nadded].s = strdup(s)))
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	na[t->nadded++].id = id;
	return CLTFS_OK;
}

static cltfs_err read_added(cap_tokenizer *t, const char *dir)
{
	char path[4096];
	size_t len;
	cltfs_err e = CLTFS_OK;
	snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
	char *text;
	if ((e = cltfs_read_file(path, &text, &len)) == CLTFS_E_NOTFOUND)
		e = CLTFS_OK; /* optional */
	else if (!e) {
		cJSON *j = cJSON_ParseWithLength(text, len);
		free(text);
		if (!cJSON_IsObject(j)) {
			cJSON_Delete(j);
			return cltfs_fail(CLTFS_E_FORMAT, "%s: not a JSON object", path);
		}
		const cJSON *it, *dec = cJSON_GetObjectItemCaseSensitive(j, "added_tokens_decoder"),
				 *bos = cJSON_GetObjectItemCaseSensitive(j, "add_bos_token");
		cJSON_ArrayForEach(it, dec) {
			const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
			char *end;
			long id = strtol(it->string, &end, 10);
			if (!e && cJSON_IsString(c) && !*end && id >= 0 && id < INT32_MAX)
				e = add_token(t, c->valuestring, (int)id);
		}
		if (cJSON_IsBool(bos))
			t->add_bos = cJSON_IsTrue(bos);
		cJSON_Delete(j);
	}
	snprintf(path, sizeof path, "%s/added_tokens.json", dir);
	cltfs_err re = e ? e : cltfs_read_file(path, &text, &len);
	if (re == CLTFS_E_NOTFOUND)
		re = CLTFS_OK;
	else if (re)
		return re;
	else {
		cJSON *j = cJSON_ParseWithLength(text, len), *it;
		free(text);
		if (!cJSON_IsObject(j)) {
			cJSON_Delete(j);
			return cltfs_fail(CLTFS_E_FORMAT, "%s: not a JSON object", path);
		}
		cJSON_ArrayForEach(it, j)
			if (!e && cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble < INT32_MAX)
				e = add_token(t, it->string, (int)it->valuedouble);
		cJSON_Delete(j);
	}
	return e;
}

cltfs_err cap_tokenizer_parse(const uint8_t *buf, size_t len, const char *name, cap_tokenizer **out)
{
	cap_tokenizer *t = calloc(1, sizeof *t);
	if (!t)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	t->add_bos = true;
	cltfs_err e = read_model(t, buf, len, name);
	if (e) {
		cap_tokenizer_free(t);
		return e;
	}
	*out = t;
	return CLTFS_OK;
}

cltfs_err cap_tokenizer_load(const char *dir, cap_tokenizer **out)
{
	char path[4096];
	size_t len;
	snprintf(path, sizeof path, "%s/tokenizer.model", dir);
	char *data;
	cltfs_err e = cltfs_read_file(path, &data, &len);
	if (e == CLTFS_E_NOTFOUND)
		return cltfs_fail(e, "%s: missing (the checkpoint's SentencePiece model)", path);
	if (e)
		return e;
	cap_tokenizer *t;
	e = cap_tokenizer_parse((const uint8_t *)data, len, path, &t);
	free(data);
	if (e)
		return e;
	if ((e = read_added(t, dir))) {
		cap_tokenizer_free(t);
		return e;
	}
	*out = t;
	return CLTFS_OK;
}

void cap_tokenizer_free(cap_tokenizer *t)
{
	if (!t)
		return;
	wc_clear(t);
	free(t->wc);
	for (size_t i = 0; i < t->np; i++)
		free(t->p[i].s);
	for (size_t i = 0; i < t->nadded; i++)
		free(t->added[i].s);
	free(t->p);
	free(t->table);
	free(t->added);
	free(t);
}

/* ---- encoding ---- */

typedef struct {
	int32_t *v;
	size_t n, cap;
} ids_t;

static bool push(ids_t *o, int id)
{
	if (!cltfs_grow(&o->v, &o->cap, o->n + 1, sizeof *o->v))
		return false;
	o->v[o->n++] = id;
	return true;
}

typedef struct {
	const char *s;
	size_t len;
	int prev, next;
} sym;

typedef struct {
	float score;
	int left, right;
	size_t size;
} pair;

/* A max-heap of pairs: higher score first, then the leftmost. */
static bool before(const pair *a, const pair *b)
{
	return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct {
	pair *h;
	size_t n, cap;
} heap;

static bool heap_push(heap *q, pair p)
{
	if (!cltfs_grow(&q->h, &q->cap, q->n + 1, sizeof *q->h))
		return false;
	size_t i = q->n++;
	while (i && before(&p, &q->h[(i - 1) / 2])) {
		q->h[i] = q->h[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	q->h[i] = p;
	return true;
}

static pair heap_pop(heap *q)
{
	pair top = q->h[0], last = q->h[--q->n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= q->n)
			break;
		if (c + 1 < q->n && before(&q->h[c + 1], &q->h[c]))
			c++;
		if (!before(&q->h[c], &last))
			break;
		q->h[i] = q->h[c];
		i = c;
	}
	if (q->n)
		q->h[i] = last;
	return top;
}

/* A pair whose concatenation is a mergeable piece (normal, user-defined
 * or unused, as SentencePiece's pieces_ holds). */
static bool add_pair(const cap_tokenizer *t, const sym *sy, int l, int r, heap *q)
{
	if (l < 0 || r < 0)
		return true;
	size_t n = sy[l].len + sy[r].len;
	int id = find_piece(t, sy[l].s, n);
	if (id < 0 || (t->p[id].type != P_NORMAL && t->p[id].type != P_USER && t->p[id].type != P_UNUSED))
		return true;
	return heap_push(q, (pair){t->p[id].score, l, r, n});
}

/* One symbol out: its piece's id, else its bytes, else <unk>. */
static bool emit(const cap_tokenizer *t, const char *s, size_t n, ids_t *out)
{
	int id = find_piece(t, s, n);
	if (id >= 0 && t->p[id].type != P_UNUSED)
		return push(out, id);
	if (!t->byte_fallback)
		return push(out, t->unk_id);
	for (size_t i = 0; i < n; i++)
		if (!push(out, t->byte_id[(uint8_t)s[i]] >= 0 ? t->byte_id[(uint8_t)s[i]] : t->unk_id))
			return false;
	return true;
}

static size_t utf8_len(uint8_t c)
{
	return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

/* identity normalization: extra whitespace, the dummy prefix, "▁" for ' '. */
static char *normalize(const cap_tokenizer *t, const char *in, size_t *len)
{
	size_t n = strlen(in);
	char *out = malloc(3 * n + 8), *o = out;
	if (!out)
		return NULL;
	const char *p = in, *end = in + n;
	if (t->remove_ws) {
		while (p < end && *p == ' ')
			p++;
		while (end > p && end[-1] == ' ')
			end--;
	}
	if (p == end) {
		*len = 0;
		return out;
	}
	const char *ws = t->escape_ws ? "\xe2\x96\x81" : " ";
	size_t wl = strlen(ws);
	if (t->dummy_prefix && !t->ws_suffix)
		o += (memcpy(o, ws, wl), wl);
	for (; p < end; p++) {
		if (*p == ' ') {
			if (t->remove_ws && p > in && p[-1] == ' ')
				continue;
			o += (memcpy(o, ws, wl), wl);
		} else {
			*o++ = *p;
		}
	}
	if (t->dummy_prefix && t->ws_suffix)
		o += (memcpy(o, ws, wl), wl);
	*len = (size_t)(o - out);
	return out;
}

/* BPE over the normalized bytes s[0, n): the merges by score, then the
 * symbols out. */
static bool encode_bpe(const cap_tokenizer *t, const char *s, size_t n, ids_t *out)
{
	sym *sy = malloc((n + 1) * sizeof *sy);
	heap q = {0};
	bool ok = sy != NULL;
	int ns = 0;
	for (size_t i = 0; ok && i < n; ns++) {
		size_t k = utf8_len((uint8_t)s[i]);
		k = k > n - i ? n - i : k;
		sy[ns] = (sym){s + i, k, ns - 1, i + k < n ? ns + 1 : -1};
		i += k;
	}
	for (int i = 1; ok && i < ns; i++)
		ok = add_pair(t, sy, i - 1, i, &q);
	while (ok && q.n) {
		pair top = heap_pop(&q);
		/* stale: one side was merged away since */
		if (!sy[top.left].len || !sy[top.right].len || sy[top.left].len + sy[top.right].len != top.size)
			continue;
		sy[top.left].len += sy[top.right].len;
		sy[top.left].next = sy[top.right].next;
		if (sy[top.right].next >= 0)
			sy[sy[top.right].next].prev = top.left;
		sy[top.right].len = 0;
		ok = add_pair(t, sy, sy[top.left].prev, top.left, &q) && add_pair(t, sy, top.left, sy[top.left].next, &q);
	}
	for (int i = ns ? 0 : -1; ok && i >= 0; i = sy[i].next)
		ok = emit(t, sy[i].s, sy[i].len, out);
	free(q.h);
	free(sy);
	return ok;
}

/* ---- the word cache ----
 *
 * When no mergeable piece has whitespace after another character (checked
 * at load: true of LLaMA's, which keeps "▁" at a piece's start or in runs
 * of it), no merge crosses the start of a "word" (whitespace, then what
 * follows up to the next whitespace), and merges of different words never
 * compete: encoding a text is encoding its words one by one.  Texts repeat
 * their words, so a word's ids are kept; `init` of 10^6 queries spends
 * most of its time here otherwise. */

#define WCACHE 65536 /* slots; the cache is emptied when 3/4 full */

struct wentry {
	char *w;
	size_t len;
	int32_t *ids;
	size_t n;
};

static void wc_clear(cap_tokenizer *t)
{
	for (size_t i = 0; t->wc && i < WCACHE; i++) {
		free(t->wc[i].w);
		free(t->wc[i].ids);
		t->wc[i] = (struct wentry){0};
	}
	t->wc_n = 0;
}

/* The whitespace symbol of normalized text. */
static const char *ws_of(const cap_tokenizer *t) { return t->escape_ws ? "\xe2\x96\x81" : " "; }

/* Does piece s[0, n) hold whitespace right after another character? */
static bool ws_after_char(const char *s, size_t n, const char *ws, size_t wl)
{
	for (size_t k = wl; k + wl <= n; k++)
		if (!memcmp(s + k, ws, wl) && memcmp(s + k - wl, ws, wl))
			return true;
	return false;
}

static void check_cacheable(cap_tokenizer *t)
{
	const char *ws = ws_of(t);
	size_t wl = strlen(ws);
	t->cacheable = true;
	for (size_t i = 0; i < t->np && t->cacheable; i++)
		if (t->p[i].type == P_NORMAL || t->p[i].type == P_USER || t->p[i].type == P_UNUSED)
			t->cacheable = !ws_after_char(t->p[i].s, t->p[i].len, ws, wl);
}

static struct wentry *wc_slot(cap_tokenizer *t, const char *w, size_t len)
{
	size_t i = hash(w, len) & (WCACHE - 1);
	while (t->wc[i].w && (t->wc[i].len != len || memcmp(t->wc[i].w, w, len)))
		i = (i + 1) & (WCACHE - 1);
	return &t->wc[i];
}

/* One word: its cached ids, or BPE and the ids kept. */
static bool encode_word(cap_tokenizer *t, const char *w, size_t len, ids_t *out)
{
	struct wentry *e = wc_slot(t, w, len);
	if (e->w) {
		for (size_t i = 0; i < e->n; i++)
			if (!push(out, e->ids[i]))
				return false;
		return true;
	}
	size_t first = out->n;
	if (!encode_bpe(t, w, len, out))
		return false;
	if (t->wc_n >= WCACHE / 4 * 3) {
		wc_clear(t);
		e = wc_slot(t, w, len);
	}
	size_t n = out->n - first;
	char *key = malloc(len ? len : 1);
	int32_t *ids = malloc(n ? n * sizeof *ids : 1);
	if (!key || !ids) { /* a cache that cannot grow is only slower */
		free(key);
		free(ids);
		return true;
	}
	memcpy(key, w, len);
	memcpy(ids, out->v + first, n * sizeof *ids);
	*e = (struct wentry){key, len, ids, n};
	t->wc_n++;
	return true;
}

/* The normalized text word by word (see above). */
static bool encode_words(cap_tokenizer *t, const char *s, size_t n, ids_t *out)
{
	const char *ws = ws_of(t);
	size_t wl = strlen(ws), a = 0;
	if (!t->wc && !(t->wc = calloc(WCACHE, sizeof *t->wc)))
		return encode_bpe(t, s, n, out);
	for (size_t i = 1; i <= n; i++) {
		bool starts = i == n || (i >= wl && i + wl <= n && !memcmp(s + i, ws, wl) && memcmp(s + i - wl, ws, wl));
		if (!starts)
			continue;
		if (!encode_word(t, s + a, i - a, out))
			return false;
		a = i;
	}
	return true;
}

static cltfs_err encode(cap_tokenizer *t, const char *text, ids_t *out)
{
	size_t n;
	char *s = normalize(t, text, &n);
	if (!s)
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	bool ok = t->cacheable ? encode_words(t, s, n, out) : encode_bpe(t, s, n, out);
	free(s);
	return ok ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}

/* Added tokens split the text; each piece between them is encoded on its
 * own, with the dummy prefix: the ids the fast tokenizer gives (a "▁" on
 * both sides of <image>, DESIGN.md section 6). */
cltfs_err cap_tokenize(cap_tokenizer *t, const char *text, int32_t **ids, size_t *n)
{
	ids_t out = {0};
	cltfs_err e = CLTFS_OK;
	if (t->add_bos && t->bos_id >= 0 && !push(&out, t->bos_id))
		e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	const char *p = text;
	while (!e && *p) {
		const char *best = NULL;
		const added *tok = NULL;
		for (size_t i = 0; i < t->nadded; i++) {
			const char *at = strstr(p, t->added[i].s);
			if (at && (!best || at < best || (at == best && strlen(t->added[i].s) > strlen(tok->s)))) {
				best = at;
				tok = &t->added[i];
			}
		}
		size_t seg = best ? (size_t)(best - p) : strlen(p);
		char *part = strndup(p, seg);
		e = part ? encode(t, part, &out) : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		free(part);
		if (e || !tok)
			break;
		if (!push(&out, tok->id))
			e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
		p = best + strlen(tok->s);
	}
	if (e) {
		free(out.v);
		return e;
	}
	*ids = out.v ? out.v : malloc(sizeof **ids);
	*n = out.n;
	return *ids ? CLTFS_OK : cltfs_fail(CLTFS_E_NOMEM, "out of memory");
}
