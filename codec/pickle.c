/* pickle.c: the object model, a protocol-2 pickler that writes only what
 * torch's weights_only unpickler accepts, and a restricted unpickler.
 *
 * The unpickler is a stack machine over a closed set of opcodes.  GLOBAL
 * resolves only to a fixed table (the tensor rebuild function, OrderedDict
 * and the typed storage classes); nothing is imported, called or executed.
 * Persistent ids become storage references; REDUCE applies only the two
 * allowed callables.  Sizes and depths are bounded so that hostile input
 * costs at most linear time and memory.
 */
#include "codec.h"

#include <stdlib.h>
#include <string.h>

/* ---- arena ---- */

struct pt_arena {
	struct block { struct block *next; size_t used, cap; unsigned char data[]; } *head;
};

pt_arena *pt_arena_new(void) { return calloc(1, sizeof(pt_arena)); }

void pt_arena_free(pt_arena *a)
{
	if (!a)
		return;
	for (struct block *b = a->head, *n; b; b = n) {
		n = b->next;
		free(b);
	}
	free(a);
}

void *pt_alloc(pt_arena *a, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	if (!a->head || a->head->cap - a->head->used < n) {
		size_t cap = n > 65536 ? n : 65536;
		struct block *b = malloc(sizeof *b + cap);
		if (!b)
			return NULL;
		b->next = a->head;
		b->used = 0;
		b->cap = cap;
		a->head = b;
	}
	void *p = a->head->data + a->head->used;
	a->head->used += n;
	memset(p, 0, n);
	return p;
}

pt_obj *pt_new(pt_arena *a, pt_kind k)
{
	pt_obj *o = pt_alloc(a, sizeof *o);
	if (o)
		o->kind = k;
	return o;
}

static pt_obj *str_n(pt_arena *a, const char *s, size_t n)
{
	pt_obj *o = pt_new(a, PT_STR);
	char *c = o ? pt_alloc(a, n + 1) : NULL;
	if (!c)
		return NULL;
	memcpy(c, s, n);
	o->u.str.s = c;
	o->u.str.len = n;
	return o;
}

pt_obj *pt_str(pt_arena *a, const char *s) { return str_n(a, s, strlen(s)); }

pt_obj *pt_int(pt_arena *a, int64_t v)
{
	pt_obj *o = pt_new(a, PT_INT);
	if (o)
		o->u.i = v;
	return o;
}

static bool grow(pt_arena *a, pt_obj ***v, size_t n, size_t *cap)
{
	if (n < *cap)
		return true;
	size_t nc = *cap ? *cap * 2 : 8;
	pt_obj **nv = pt_alloc(a, nc * sizeof *nv);
	if (!nv)
		return false;
	if (n)
		memcpy(nv, *v, n * sizeof *nv);
	*v = nv;
	*cap = nc;
	return true;
}

cltfs_err pt_append(pt_arena *a, pt_obj *seq, pt_obj *item)
{
	if (!grow(a, &seq->u.seq.v, seq->u.seq.n, &seq->u.seq.cap))
		return cltfs_fail(CLTFS_E_NOMEM, "pickle: out of memory");
	seq->u.seq.v[seq->u.seq.n++] = item;
	return CLTFS_OK;
}

static bool str_eq(const pt_obj *o, const char *s)
{
	return o->kind == PT_STR && o->u.str.len == strlen(s) && !memcmp(o->u.str.s, s, o->u.str.len);
}

static bool key_eq(const pt_obj *x, const pt_obj *y)
{
	if (x->kind != y->kind)
		return false;
	switch (x->kind) {
	case PT_STR:
		return x->u.str.len == y->u.str.len && !memcmp(x->u.str.s, y->u.str.s, x->u.str.len);
	case PT_INT:
		return x->u.i == y->u.i;
	case PT_BOOL:
		return x->u.b == y->u.b;
	case PT_NONE:
		return true;
	default:
		return x == y;
	}
}

cltfs_err pt_set(pt_arena *a, pt_obj *d, pt_obj *key, pt_obj *val)
{
	for (size_t i = 0; i < d->u.dict.n; i++)
		if (key_eq(d->u.dict.k[i], key)) {
			d->u.dict.v[i] = val;
			return CLTFS_OK;
		}
	size_t cap = d->u.dict.cap;
	if (!grow(a, &d->u.dict.k, d->u.dict.n, &cap) ||
	    !grow(a, &d->u.dict.v, d->u.dict.n, &d->u.dict.cap))
		return cltfs_fail(CLTFS_E_NOMEM, "pickle: out of memory");
	d->u.dict.k[d->u.dict.n] = key;
	d->u.dict.v[d->u.dict.n++] = val;
	return CLTFS_OK;
}

pt_obj *pt_get(const pt_obj *d, const char *key)
{
	if (!d || d->kind != PT_DICT)
		return NULL;
	for (size_t i = 0; i < d->u.dict.n; i++)
		if (str_eq(d->u.dict.k[i], key))
			return d->u.dict.v[i];
	return NULL;
}

int64_t pt_tensor_numel(const pt_obj *t)
{
	int64_t n = 1;
	for (int i = 0; i < t->u.t.ndim; i++)
		n *= t->u.t.shape[i];
	return n;
}

bool pt_tensor_contiguous(const pt_obj *t)
{
	int64_t want = 1;
	for (int i = t->u.t.ndim - 1; i >= 0; i--) {
		if (t->u.t.shape[i] != 1 && t->u.t.stride[i] != want)
			return false;
		want *= t->u.t.shape[i];
	}
	return true;
}

/* ---- pickler ---- */

enum {
	OP_MARK = '(', OP_STOP = '.', OP_BININT = 'J', OP_BININT1 = 'K', OP_BININT2 = 'M',
	OP_NONE = 'N', OP_BINPERSID = 'Q', OP_REDUCE = 'R', OP_BINUNICODE = 'X',
	OP_APPEND = 'a', OP_BUILD = 'b', OP_GLOBAL = 'c', OP_DICT = 'd', OP_EMPTY_DICT = '}',
	OP_APPENDS = 'e', OP_BINGET = 'h', OP_LONG_BINGET = 'j', OP_LIST = 'l',
	OP_EMPTY_LIST = ']', OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's',
	OP_TUPLE = 't', OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
	OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86,
	OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a,
	OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_STACK_GLOBAL = 0x93,
	OP_MEMOIZE = 0x94, OP_FRAME = 0x95, OP_SHORT_BINSTRING = 'U',
	OP_BINSTRING = 'T', OP_SHORT_BINBYTES = 'C', OP_BINBYTES = 'B',
};

typedef struct {
	uint8_t *p;
	size_t n, cap;
	bool oom;
	const pt_obj **memo; /* tensors already written, by memo index */
	size_t nmemo, memocap;
} wbuf;

static void put(wbuf *w, const void *src, size_t n)
{
	if (w->oom)
		return;
	if (w->n + n > w->cap) {
		size_t nc = w->cap ? w->cap * 2 : 256;
		while (nc < w->n + n)
			nc *= 2;
		uint8_t *np = realloc(w->p, nc);
		if (!np) {
			w->oom = true;
			return;
		}
		w->p = np;
		w->cap = nc;
	}
	memcpy(w->p + w->n, src, n);
	w->n += n;
}

static void op(wbuf *w, uint8_t o) { put(w, &o, 1); }

static void le(wbuf *w, uint64_t v, int bytes)
{
	uint8_t b[8];
	for (int i = 0; i < bytes; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put(w, b, (size_t)bytes);
}

static void w_int(wbuf *w, int64_t v)
{
	if (v >= 0 && v < 256) {
		op(w, OP_BININT1);
		le(w, (uint64_t)v, 1);
	} else if (v >= 0 && v < 65536) {
		op(w, OP_BININT2);
		le(w, (uint64_t)v, 2);
	} else if (v >= INT32_MIN && v <= INT32_MAX) {
		op(w, OP_BININT);
		le(w, (uint64_t)v, 4);
	} else { /* LONG1: minimal two's complement, as Python writes it */
		int n = 8;
		while (n > 1) {
			int64_t top = v >> (8 * (n - 1) - 1); /* sign of the shorter form */
			if (top != 0 && top != -1)
				break;
			n--;
		}
		op(w, OP_LONG1);
		le(w, (uint64_t)n, 1);
		le(w, (uint64_t)v, n);
	}
}

static void w_str(wbuf *w, const char *s, size_t n)
{
	op(w, OP_BINUNICODE);
	le(w, n, 4);
	put(w, s, n);
}

static void w_global(wbuf *w, const char *mod, const char *name)
{
	op(w, OP_GLOBAL);
	put(w, mod, strlen(mod));
	op(w, '\n');
	put(w, name, strlen(name));
	op(w, '\n');
}

static void w_ints_tuple(wbuf *w, const int64_t *v, int n)
{
	if (n == 0) {
		op(w, OP_EMPTY_TUPLE);
		return;
	}
	if (n > 3)
		op(w, OP_MARK);
	for (int i = 0; i < n; i++)
		w_int(w, v[i]);
	op(w, n == 1 ? OP_TUPLE1 : n == 2 ? OP_TUPLE2 : n == 3 ? OP_TUPLE3 : OP_TUPLE);
}

static void w_memo_put(wbuf *w, const pt_obj *o)
{
	if (!cltfs_grow(&w->memo, &w->memocap, w->nmemo + 1, sizeof *w->memo)) {
		w->oom = true;
		return;
	}
	size_t i = w->nmemo;
	w->memo[w->nmemo++] = o;
	if (i < 256) {
		op(w, OP_BINPUT);
		le(w, i, 1);
	} else {
		op(w, OP_LONG_BINPUT);
		le(w, i, 4);
	}
}

static bool w_memo_get(wbuf *w, const pt_obj *o)
{
	for (size_t i = 0; i < w->nmemo; i++)
		if (w->memo[i] == o) {
			if (i < 256) {
				op(w, OP_BINGET);
				le(w, i, 1);
			} else {
				op(w, OP_LONG_BINGET);
				le(w, i, 4);
			}
			return true;
		}
	return false;
}

static void w_tensor(wbuf *w, const pt_obj *t)
{
	if (w_memo_get(w, t))
		return;
	w_global(w, "torch._utils", "_rebuild_tensor_v2");
	op(w, OP_MARK);
	/* the storage, as a persistent id */
	op(w, OP_MARK);
	w_str(w, "storage", 7);
	w_global(w, "torch", cltfs_dtype_storage(t->u.t.dtype));
	w_str(w, t->u.t.key, strlen(t->u.t.key));
	w_str(w, "cpu", 3);
	w_int(w, t->u.t.numel);
	op(w, OP_TUPLE);
	op(w, OP_BINPERSID);
	w_int(w, t->u.t.offset);
	w_ints_tuple(w, t->u.t.shape, t->u.t.ndim);
	w_ints_tuple(w, t->u.t.stride, t->u.t.ndim);
	op(w, OP_NEWFALSE); /* requires_grad */
	w_global(w, "collections", "OrderedDict"); /* backward hooks */
	op(w, OP_EMPTY_TUPLE);
	op(w, OP_REDUCE);
	op(w, OP_TUPLE);
	op(w, OP_REDUCE);
	w_memo_put(w, t);
}

static cltfs_err w_obj(wbuf *w, const pt_obj *o, int depth)
{
	if (depth > 64)
		return cltfs_fail(CLTFS_E_INVAL, "pickle: objects nested too deep");
	switch (o->kind) {
	case PT_NONE:
		op(w, OP_NONE);
		break;
	case PT_BOOL:
		op(w, o->u.b ? OP_NEWTRUE : OP_NEWFALSE);
		break;
	case PT_INT:
		w_int(w, o->u.i);
		break;
	case PT_STR:
		w_str(w, o->u.str.s, o->u.str.len);
		break;
	case PT_TENSOR:
		w_tensor(w, o);
		break;
	case PT_TUPLE:
		op(w, OP_MARK);
		for (size_t i = 0; i < o->u.seq.n; i++)
			if (w_obj(w, o->u.seq.v[i], depth + 1))
				return CLTFS_E_INVAL;
		op(w, OP_TUPLE);
		break;
	case PT_LIST:
		op(w, OP_EMPTY_LIST);
		if (o->u.seq.n) {
			op(w, OP_MARK);
			for (size_t i = 0; i < o->u.seq.n; i++)
				if (w_obj(w, o->u.seq.v[i], depth + 1))
					return CLTFS_E_INVAL;
			op(w, OP_APPENDS);
		}
		break;
	case PT_DICT:
		op(w, OP_EMPTY_DICT);
		if (o->u.dict.n) {
			op(w, OP_MARK);
			for (size_t i = 0; i < o->u.dict.n; i++)
				if (w_obj(w, o->u.dict.k[i], depth + 1) ||
				    w_obj(w, o->u.dict.v[i], depth + 1))
					return CLTFS_E_INVAL;
			op(w, OP_SETITEMS);
		}
		break;
	default:
		return cltfs_fail(CLTFS_E_INVAL, "pickle: cannot write object kind %d", o->kind);
	}
	return CLTFS_OK;
}

cltfs_err pt_pickle(const pt_obj *root, uint8_t **out, size_t *out_len)
{
	wbuf w = {0};
	op(&w, OP_PROTO);
	le(&w, 2, 1);
	cltfs_err e = w_obj(&w, root, 0);
	op(&w, OP_STOP);
	free(w.memo);
	if (!e && w.oom)
		e = cltfs_fail(CLTFS_E_NOMEM, "pickle: out of memory");
	if (e) {
		free(w.p);
		return e;
	}
	*out = w.p;
	*out_len = w.n;
	return CLTFS_OK;
}

/* ---- restricted unpickler ---- */

enum { G_REBUILD_V2 = 1, G_ODICT, G_STORAGE_BASE = 16 };

#define MAX_STACK (1 << 20)
#define MAX_MEMO (1 << 20)

typedef struct {
	pt_arena *a;
	const uint8_t *p, *end;
	pt_obj **stack;
	size_t sp, scap;
	size_t *marks;
	size_t nmarks, mcap;
	pt_obj **memo;
	size_t memocap, memolen; /* memolen: defined entries, for MEMOIZE */
} rd;

static cltfs_err bad(const char *why, size_t at)
{
	return cltfs_fail(CLTFS_E_FORMAT, "data.pkl: %s at byte %zu", why, at);
}

static cltfs_err push(rd *r, pt_obj *o)
{
	if (!o)
		return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
	if (r->sp >= MAX_STACK)
		return cltfs_fail(CLTFS_E_FORMAT, "data.pkl: stack too deep");
	if (!cltfs_grow(&r->stack, &r->scap, r->sp + 1, sizeof *r->stack))
		return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
	r->stack[r->sp++] = o;
	return CLTFS_OK;
}

static pt_obj *pop(rd *r) { return r->sp ? r->stack[--r->sp] : NULL; }

/* Pop to the last mark: returns the index where the marked items start. */
static bool pop_mark(rd *r, size_t *start)
{
	if (!r->nmarks || r->marks[r->nmarks - 1] > r->sp)
		return false;
	*start = r->marks[--r->nmarks];
	return true;
}

static bool need(rd *r, size_t n) { return (size_t)(r->end - r->p) >= n; }

static uint64_t rdle(rd *r, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)r->p[i] << (8 * i);
	r->p += n;
	return v;
}

static int storage_global(const char *name, size_t n)
{
	for (int t = 0; t < CLTFS_NDTYPES; t++) {
		const char *s = cltfs_dtype_storage((cltfs_dtype)t);
		if (strlen(s) == n && !memcmp(s, name, n))
			return G_STORAGE_BASE + t;
	}
	return 0;
}

static int resolve_global(const char *mod, size_t ml, const char *name, size_t nl)
{
#define IS(s, l, lit) ((l) == sizeof(lit) - 1 && !memcmp((s), (lit), (l)))
	if (IS(mod, ml, "torch._utils") && IS(name, nl, "_rebuild_tensor_v2"))
		return G_REBUILD_V2;
	if (IS(mod, ml, "collections") && IS(name, nl, "OrderedDict"))
		return G_ODICT;
	if (IS(mod, ml, "torch"))
		return storage_global(name, nl);
#undef IS
	return 0;
}

static cltfs_err push_global(rd *r, const char *mod, size_t ml, const char *name, size_t nl,
			     size_t at)
{
	int g = resolve_global(mod, ml, name, nl);
	if (!g)
		return cltfs_fail(CLTFS_E_FORMAT,
				  "data.pkl: refusing global %.*s.%.*s at byte %zu (only tensors, "
				  "dicts, lists and numbers are accepted)",
				  (int)(ml > 100 ? 100 : ml), mod, (int)(nl > 100 ? 100 : nl), name, at);
	pt_obj *o = pt_new(r->a, PT_GLOBAL);
	if (o)
		o->u.global = g;
	return push(r, o);
}

static bool as_int(const pt_obj *o, int64_t *v)
{
	if (o->kind == PT_INT) {
		*v = o->u.i;
		return true;
	}
	if (o->kind == PT_BOOL) {
		*v = o->u.b;
		return true;
	}
	return false;
}

static bool int_tuple(const pt_obj *o, int64_t *v, int *n)
{
	if (o->kind != PT_TUPLE || o->u.seq.n > PT_MAX_DIM)
		return false;
	for (size_t i = 0; i < o->u.seq.n; i++)
		if (!as_int(o->u.seq.v[i], &v[i]) || v[i] < 0)
			return false;
	*n = (int)o->u.seq.n;
	return true;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) */
static cltfs_err rebuild_tensor(rd *r, const pt_obj *args, size_t at)
{
	if (args->kind != PT_TUPLE || args->u.seq.n < 4 || args->u.seq.v[0]->kind != PT_STORAGE)
		return bad("malformed _rebuild_tensor_v2 arguments", at);
	pt_obj *t = pt_new(r->a, PT_TENSOR);
	if (!t)
		return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
	t->u.t = args->u.seq.v[0]->u.t;
	int ns, nst;
	int64_t st[PT_MAX_DIM];
	if (!as_int(args->u.seq.v[1], &t->u.t.offset) || t->u.t.offset < 0 ||
	    !int_tuple(args->u.seq.v[2], t->u.t.shape, &ns) || !int_tuple(args->u.seq.v[3], st, &nst) ||
	    ns != nst)
		return bad("malformed tensor offset, size or stride", at);
	t->u.t.ndim = ns;
	memcpy(t->u.t.stride, st, sizeof st);
	/* The highest element touched must lie inside the storage. */
	int64_t last = t->u.t.offset;
	bool empty = false;
	for (int i = 0; i < ns; i++) {
		if (t->u.t.shape[i] == 0)
			empty = true;
		else if (__builtin_mul_overflow(t->u.t.shape[i] - 1, st[i], &st[i]) ||
			 __builtin_add_overflow(last, st[i], &last))
			return bad("tensor size overflows", at);
	}
	if (!empty && last >= t->u.t.numel)
		return bad("tensor reaches past its storage", at);
	return push(r, t);
}

static cltfs_err persid(rd *r, size_t at)
{
	pt_obj *pid = pop(r);
	if (!pid || pid->kind != PT_TUPLE || pid->u.seq.n != 5 || !str_eq(pid->u.seq.v[0], "storage") ||
	    pid->u.seq.v[1]->kind != PT_GLOBAL || pid->u.seq.v[1]->u.global < G_STORAGE_BASE ||
	    pid->u.seq.v[2]->kind != PT_STR || pid->u.seq.v[4]->kind != PT_INT)
		return bad("persistent id is not a typed storage", at);
	const pt_obj *key = pid->u.seq.v[2];
	if (key->u.str.len == 0 || key->u.str.len >= sizeof(((pt_obj *)0)->u.t.key) ||
	    memchr(key->u.str.s, '/', key->u.str.len) || memchr(key->u.str.s, 0, key->u.str.len))
		return bad("bad storage key", at);
	pt_obj *s = pt_new(r->a, PT_STORAGE);
	if (!s)
		return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
	memcpy(s->u.t.key, key->u.str.s, key->u.str.len);
	s->u.t.dtype = (cltfs_dtype)(pid->u.seq.v[1]->u.global - G_STORAGE_BASE);
	s->u.t.numel = pid->u.seq.v[4]->u.i;
	if (s->u.t.numel < 0)
		return bad("negative storage size", at);
	return push(r, s);
}

static cltfs_err reduce(rd *r, size_t at)
{
	pt_obj *args = pop(r), *fn = pop(r);
	if (!args || !fn || fn->kind != PT_GLOBAL || args->kind != PT_TUPLE)
		return bad("REDUCE of something that is not an allowed callable", at);
	if (fn->u.global == G_REBUILD_V2)
		return rebuild_tensor(r, args, at);
	if (fn->u.global == G_ODICT && args->u.seq.n == 0)
		return push(r, pt_new(r->a, PT_DICT));
	return bad("REDUCE of a storage class or with unexpected arguments", at);
}

static cltfs_err seq_from_mark(rd *r, pt_kind k, size_t at)
{
	size_t start;
	if (!pop_mark(r, &start))
		return bad("no MARK", at);
	pt_obj *t = pt_new(r->a, k);
	if (!t)
		return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
	for (size_t i = start; i < r->sp; i++)
		if (pt_append(r->a, t, r->stack[i]))
			return CLTFS_E_NOMEM;
	r->sp = start;
	return push(r, t);
}

static cltfs_err small_tuple(rd *r, size_t n, size_t at)
{
	if (r->sp < n)
		return bad("stack underflow", at);
	pt_obj *t = pt_new(r->a, PT_TUPLE);
	if (!t)
		return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
	for (size_t i = r->sp - n; i < r->sp; i++)
		if (pt_append(r->a, t, r->stack[i]))
			return CLTFS_E_NOMEM;
	r->sp -= n;
	return push(r, t);
}

static cltfs_err add_items(rd *r, bool many, size_t at)
{
	size_t start = r->sp - 1;
	if (many && !pop_mark(r, &start))
		return bad("no MARK", at);
	if (start == 0 || start > r->sp)
		return bad("stack underflow", at);
	pt_obj *c = r->stack[start - 1];
	if (c->kind == PT_LIST) {
		for (size_t i = start; i < r->sp; i++)
			if (pt_append(r->a, c, r->stack[i]))
				return CLTFS_E_NOMEM;
	} else if (c->kind == PT_DICT) {
		if ((r->sp - start) % 2)
			return bad("odd number of dict items", at);
		for (size_t i = start; i < r->sp; i += 2) {
			pt_kind kk = r->stack[i]->kind;
			if (kk != PT_STR && kk != PT_INT && kk != PT_BOOL && kk != PT_NONE)
				return bad("dict key is not a string or number", at);
			if (pt_set(r->a, c, r->stack[i], r->stack[i + 1]))
				return CLTFS_E_NOMEM;
		}
	} else {
		return bad("items added to something that is not a list or dict", at);
	}
	r->sp = start;
	return CLTFS_OK;
}

static cltfs_err memo_put(rd *r, uint64_t i, size_t at)
{
	if (!r->sp)
		return bad("memo of an empty stack", at);
	if (i >= MAX_MEMO)
		return bad("memo index too large", at);
	if (i >= r->memocap) {
		size_t nc = r->memocap ? r->memocap : 64;
		while (nc <= i)
			nc *= 2;
		pt_obj **nm = realloc(r->memo, nc * sizeof *nm);
		if (!nm)
			return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
		memset(nm + r->memocap, 0, (nc - r->memocap) * sizeof *nm);
		r->memo = nm;
		r->memocap = nc;
	}
	if (!r->memo[i])
		r->memolen++;
	r->memo[i] = r->stack[r->sp - 1];
	return CLTFS_OK;
}

static cltfs_err memo_get(rd *r, uint64_t i, size_t at)
{
	if (i >= r->memocap || !r->memo[i])
		return bad("memo entry not defined", at);
	return push(r, r->memo[i]);
}

static cltfs_err push_string(rd *r, uint64_t n, size_t at)
{
	if (!need(r, n))
		return bad("truncated string", at);
	pt_obj *s = str_n(r->a, (const char *)r->p, n);
	r->p += n;
	return push(r, s);
}

static cltfs_err text_global(rd *r, size_t at)
{
	const uint8_t *m = r->p, *e1 = memchr(m, '\n', (size_t)(r->end - m));
	if (!e1)
		return bad("truncated GLOBAL", at);
	const uint8_t *n = e1 + 1, *e2 = memchr(n, '\n', (size_t)(r->end - n));
	if (!e2)
		return bad("truncated GLOBAL", at);
	r->p = e2 + 1;
	return push_global(r, (const char *)m, (size_t)(e1 - m), (const char *)n, (size_t)(e2 - n), at);
}

static cltfs_err run(rd *r, const uint8_t *base, pt_obj **out)
{
	for (;;) {
		if (!need(r, 1))
			return bad("truncated (no STOP)", (size_t)(r->p - base));
		size_t at = (size_t)(r->p - base);
		uint8_t o = *r->p++;
		cltfs_err e = CLTFS_OK;
		pt_obj *x;
		switch (o) {
		case OP_PROTO:
			if (!need(r, 1) || *r->p > 5)
				return bad("unsupported protocol", at);
			r->p++;
			break;
		case OP_FRAME:
			if (!need(r, 8))
				return bad("truncated FRAME", at);
			r->p += 8;
			break;
		case OP_STOP:
			if (r->sp != 1 || r->nmarks)
				return bad("STOP with an unbalanced stack", at);
			*out = r->stack[0];
			return CLTFS_OK;
		case OP_MARK:
			if (r->nmarks >= MAX_STACK)
				return bad("too many MARKs", at);
			if (!cltfs_grow(&r->marks, &r->mcap, r->nmarks + 1, sizeof *r->marks))
				return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
			r->marks[r->nmarks++] = r->sp;
			break;
		case OP_EMPTY_DICT:
			e = push(r, pt_new(r->a, PT_DICT));
			break;
		case OP_EMPTY_LIST:
			e = push(r, pt_new(r->a, PT_LIST));
			break;
		case OP_EMPTY_TUPLE:
			e = push(r, pt_new(r->a, PT_TUPLE));
			break;
		case OP_NONE:
			e = push(r, pt_new(r->a, PT_NONE));
			break;
		case OP_NEWTRUE:
		case OP_NEWFALSE:
			x = pt_new(r->a, PT_BOOL);
			if (x)
				x->u.b = o == OP_NEWTRUE;
			e = push(r, x);
			break;
		case OP_BININT:
			if (!need(r, 4))
				return bad("truncated int", at);
			e = push(r, pt_int(r->a, (int32_t)(uint32_t)rdle(r, 4)));
			break;
		case OP_BININT1:
			if (!need(r, 1))
				return bad("truncated int", at);
			e = push(r, pt_int(r->a, (int64_t)rdle(r, 1)));
			break;
		case OP_BININT2:
			if (!need(r, 2))
				return bad("truncated int", at);
			e = push(r, pt_int(r->a, (int64_t)rdle(r, 2)));
			break;
		case OP_LONG1: {
			if (!need(r, 1))
				return bad("truncated long", at);
			unsigned n = *r->p++;
			if (n > 8 || !need(r, n))
				return bad("long too large or truncated", at);
			uint64_t u = n ? rdle(r, (int)n) : 0;
			if (n && n < 8 && (u >> (8 * n - 1)) & 1)
				u |= ~(uint64_t)0 << (8 * n); /* sign extend */
			e = push(r, pt_int(r->a, (int64_t)u));
			break;
		}
		case OP_BINFLOAT: {
			if (!need(r, 8))
				return bad("truncated float", at);
			uint64_t u = 0;
			for (int i = 0; i < 8; i++)
				u = u << 8 | r->p[i]; /* big-endian */
			r->p += 8;
			x = pt_new(r->a, PT_FLOAT);
			if (x)
				memcpy(&x->u.f, &u, 8);
			e = push(r, x);
			break;
		}
		case OP_BINUNICODE:
		case OP_BINSTRING:
		case OP_BINBYTES:
			if (!need(r, 4))
				return bad("truncated string", at);
			e = push_string(r, rdle(r, 4), at);
			break;
		case OP_SHORT_BINUNICODE:
		case OP_SHORT_BINSTRING:
		case OP_SHORT_BINBYTES:
			if (!need(r, 1))
				return bad("truncated string", at);
			e = push_string(r, rdle(r, 1), at);
			break;
		case OP_BINUNICODE8:
			if (!need(r, 8))
				return bad("truncated string", at);
			e = push_string(r, rdle(r, 8), at);
			break;
		case OP_GLOBAL:
			e = text_global(r, at);
			break;
		case OP_STACK_GLOBAL: {
			pt_obj *name = pop(r), *mod = pop(r);
			if (!name || !mod || name->kind != PT_STR || mod->kind != PT_STR)
				return bad("STACK_GLOBAL without two strings", at);
			e = push_global(r, mod->u.str.s, mod->u.str.len, name->u.str.s, name->u.str.len, at);
			break;
		}
		case OP_TUPLE:
			e = seq_from_mark(r, PT_TUPLE, at);
			break;
		case OP_TUPLE1:
		case OP_TUPLE2:
		case OP_TUPLE3:
			e = small_tuple(r, (size_t)(o - OP_TUPLE1 + 1), at);
			break;
		case OP_LIST:
			e = seq_from_mark(r, PT_LIST, at);
			break;
		case OP_DICT: {
			size_t start;
			if (!pop_mark(r, &start) || (r->sp - start) % 2)
				return bad("malformed DICT", at);
			x = pt_new(r->a, PT_DICT);
			if (!x)
				return cltfs_fail(CLTFS_E_NOMEM, "data.pkl: out of memory");
			for (size_t i = start; i < r->sp; i += 2)
				if (pt_set(r->a, x, r->stack[i], r->stack[i + 1]))
					return CLTFS_E_NOMEM;
			r->sp = start;
			e = push(r, x);
			break;
		}
		case OP_APPEND:
		case OP_SETITEM:
			if (r->sp < (o == OP_SETITEM ? 3u : 2u))
				return bad("stack underflow", at);
			if (o == OP_SETITEM) { /* treat as a mark two below the top */
				size_t start = r->sp - 2;
				x = r->stack[start - 1];
				if (x->kind != PT_DICT)
					return bad("SETITEM on something that is not a dict", at);
				pt_kind kk = r->stack[start]->kind;
				if (kk != PT_STR && kk != PT_INT && kk != PT_BOOL && kk != PT_NONE)
					return bad("dict key is not a string or number", at);
				e = pt_set(r->a, x, r->stack[start], r->stack[start + 1]);
				r->sp = start;
			} else {
				e = add_items(r, false, at);
			}
			break;
		case OP_APPENDS:
		case OP_SETITEMS:
			e = add_items(r, true, at);
			break;
		case OP_BINPUT:
			if (!need(r, 1))
				return bad("truncated BINPUT", at);
			e = memo_put(r, rdle(r, 1), at);
			break;
		case OP_LONG_BINPUT:
			if (!need(r, 4))
				return bad("truncated BINPUT", at);
			e = memo_put(r, rdle(r, 4), at);
			break;
		case OP_MEMOIZE:
			e = memo_put(r, r->memolen, at);
			break;
		case OP_BINGET:
			if (!need(r, 1))
				return bad("truncated BINGET", at);
			e = memo_get(r, rdle(r, 1), at);
			break;
		case OP_LONG_BINGET:
			if (!need(r, 4))
				return bad("truncated BINGET", at);
			e = memo_get(r, rdle(r, 4), at);
			break;
		case OP_BINPERSID:
			e = persid(r, at);
			break;
		case OP_REDUCE:
			e = reduce(r, at);
			break;
		default:
			return cltfs_fail(CLTFS_E_FORMAT,
					  "data.pkl: opcode 0x%02x at byte %zu is not accepted "
					  "(only what torch.save writes for tensors and containers)",
					  o, at);
		}
		if (e)
			return e;
	}
}

cltfs_err pt_unpickle(pt_arena *a, const uint8_t *p, size_t n, pt_obj **out)
{
	rd r = {.a = a, .p = p, .end = p + n};
	cltfs_err e = run(&r, p, out);
	free(r.stack);
	free(r.marks);
	free(r.memo);
	return e;
}
