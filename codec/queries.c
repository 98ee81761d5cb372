/* queries.c: a query file read one query at a time (codec.h).
 *
 * A small scanner finds each object's bytes (braces outside strings, with
 * escapes), and only that object goes to cJSON: a buffer of the file's
 * bytes not yet consumed, refilled by read(2) as objects are taken.
 */
#include "codec.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK (1 << 20)
#define MAX_OBJECT (16 << 20) /* one query; far past any prompt */

struct cltfs_queries {
	char *path;
	int fd;
	char *buf;
	size_t cap, start, end; /* unconsumed bytes: buf[start, end) */
	bool eof;
	bool list, closed; /* a JSON list; its ']' seen */
	bool need_comma;   /* in a list, after an element */
	int64_t index, line;
	cJSON *cur;
	char id[64];
};

cltfs_err cltfs_queries_open(const char *path, cltfs_queries **out)
{
	/* O_NONBLOCK: a FIFO must not block the open; fstat then refuses it */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return cltfs_fail(errno == ENOENT ? CLTFS_E_NOTFOUND : CLTFS_E_IO, "%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		close(fd);
		return cltfs_fail(CLTFS_E_FORMAT, "%s: not a regular file", path);
	}
	cltfs_queries *qs = calloc(1, sizeof *qs);
	if (!qs || !(qs->path = strdup(path)) || !(qs->buf = malloc(BLOCK))) {
		if (qs)
			free(qs->path);
		free(qs);
		close(fd);
		return cltfs_fail(CLTFS_E_NOMEM, "out of memory");
	}
	qs->fd = fd;
	qs->cap = BLOCK;
	qs->line = 1;
	*out = qs;
	return CLTFS_OK;
}

void cltfs_queries_close(cltfs_queries *qs)
{
	if (!qs)
		return;
	cJSON_Delete(qs->cur);
	close(qs->fd);
	free(qs->buf);
	free(qs->path);
	free(qs);
}

/* More bytes after end (compacting and growing as needed): false at the
 * end of the file, or on an error (*e). */
static bool refill(cltfs_queries *qs, cltfs_err *e)
{
	if (qs->eof)
		return false;
	if (qs->start) {
		memmove(qs->buf, qs->buf + qs->start, qs->end - qs->start);
		qs->end -= qs->start;
		qs->start = 0;
	}
	if (qs->end == qs->cap) {
		if (qs->cap >= MAX_OBJECT) {
			*e = cltfs_fail(CLTFS_E_FORMAT, "%s: entry %lld (line %lld): larger than %d MiB", qs->path,
					(long long)qs->index, (long long)qs->line, MAX_OBJECT >> 20);
			return false;
		}
		if (!cltfs_reserve(&qs->buf, &qs->cap, qs->cap * 2)) {
			*e = cltfs_fail(CLTFS_E_NOMEM, "out of memory");
			return false;
		}
	}
	ssize_t n;
	while ((n = read(qs->fd, qs->buf + qs->end, qs->cap - qs->end)) < 0 && errno == EINTR)
		;
	if (n < 0) {
		*e = cltfs_fail(CLTFS_E_IO, "%s: %s", qs->path, strerror(errno));
		return false;
	}
	qs->end += (size_t)n;
	qs->eof = n == 0;
	return n > 0;
}

/* The next byte that is not white space (counting lines), not consumed:
 * -1 at the end or on an error (*e). */
static int peek(cltfs_queries *qs, cltfs_err *e)
{
	for (;;) {
		while (qs->start < qs->end) {
			char c = qs->buf[qs->start];
			if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
				return (unsigned char)c;
			qs->line += c == '\n';
			qs->start++;
		}
		if (!refill(qs, e))
			return -1;
	}
}

/* The length of the object starting at buf[start] ('{'), refilling as
 * needed: 0 at a premature end or an error (*e). */
static size_t object_len(cltfs_queries *qs, cltfs_err *e)
{
	size_t i = 0;
	int depth = 0;
	bool str = false, esc = false;
	for (;;) {
		for (; qs->start + i < qs->end; i++) {
			char c = qs->buf[qs->start + i];
			if (str) {
				str = esc || c != '"';
				esc = !esc && c == '\\';
			} else if (c == '"') {
				str = true;
			} else if (c == '{' || c == '[') {
				depth++;
			} else if ((c == '}' || c == ']') && --depth == 0) {
				return i + 1;
			}
		}
		if (!refill(qs, e)) {
			if (!*e)
				*e = cltfs_fail(CLTFS_E_FORMAT, "%s: entry %lld (line %lld): the file ends inside it", qs->path,
						(long long)qs->index, (long long)qs->line);
			return 0;
		}
	}
}

static cltfs_err bad_entry(const cltfs_queries *qs, const char *why)
{
	return cltfs_fail(CLTFS_E_FORMAT, "%s: entry %lld (line %lld): %s", qs->path, (long long)qs->index,
			  (long long)qs->line, why);
}

/* Where the next object starts, past the list's punctuation: false at the
 * end of the queries or on an error (*e). */
static bool next_object(cltfs_queries *qs, cltfs_err *e)
{
	int c = peek(qs, e);
	if (qs->index == 0 && !qs->list && c == '[') {
		qs->list = true;
		qs->start++;
		c = peek(qs, e);
	}
	if (qs->list && !qs->closed && c == ']') {
		qs->closed = true;
		qs->start++;
		c = peek(qs, e);
	}
	if (qs->list && !qs->closed && qs->need_comma && c == ',') {
		qs->start++;
		c = peek(qs, e);
	} else if (qs->list && !qs->closed && qs->need_comma && c >= 0) {
		*e = bad_entry(qs, "expected ',' or ']' before it");
		return false;
	}
	if (c < 0) {
		if (!*e && qs->list && !qs->closed)
			*e = cltfs_fail(CLTFS_E_FORMAT, "%s: the list is not closed (no ']')", qs->path);
		return false;
	}
	if (qs->closed) {
		*e = cltfs_fail(CLTFS_E_FORMAT, "%s: line %lld: bytes after the list's ']'", qs->path, (long long)qs->line);
		return false;
	}
	if (c != '{') {
		*e = qs->index == 0 ? cltfs_fail(CLTFS_E_FORMAT, "%s: expected a JSON list of queries or JSON Lines "
						 "(one {\"id\", \"image\", \"query\"} object a line)", qs->path)
				    : bad_entry(qs, "expected {\"id\": ..., \"image\": \"...\", \"query\": \"...\"}");
		return false;
	}
	/* A .json file holds one JSON document: a list.  An object there is a
	 * mistake, not JSON Lines (whose files are .jsonl or .ndjson). */
	size_t n = strlen(qs->path);
	if (!qs->list && n >= 5 && !strcmp(qs->path + n - 5, ".json")) {
		*e = cltfs_fail(CLTFS_E_FORMAT, "%s: expected a JSON list of queries (JSON Lines go in a .jsonl file)",
				qs->path);
		return false;
	}
	return true;
}

bool cltfs_queries_next(cltfs_queries *qs, cltfs_query *q, cltfs_err *e)
{
	*e = CLTFS_OK;
	cJSON_Delete(qs->cur);
	qs->cur = NULL;
	if (!next_object(qs, e))
		return false;
	size_t n = object_len(qs, e);
	if (!n)
		return false;
	const char *obj = qs->buf + qs->start;
	qs->cur = cJSON_ParseWithLength(obj, n);
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(qs->cur, "id"),
		    *img = cJSON_GetObjectItemCaseSensitive(qs->cur, "image"),
		    *text = cJSON_GetObjectItemCaseSensitive(qs->cur, "query");
	if (!qs->cur || !cJSON_IsString(img) || !cJSON_IsString(text) || !(cJSON_IsNumber(id) || cJSON_IsString(id))) {
		*e = bad_entry(qs, "expected {\"id\": ..., \"image\": \"...\", \"query\": \"...\"}");
		return false;
	}
	if (cJSON_IsNumber(id))
		snprintf(qs->id, sizeof qs->id, "%.0f", id->valuedouble);
	else
		snprintf(qs->id, sizeof qs->id, "%s", id->valuestring);
	*q = (cltfs_query){qs->index, qs->line, qs->id, img->valuestring, text->valuestring};
	for (size_t i = 0; i < n; i++)
		qs->line += obj[i] == '\n';
	qs->start += n;
	qs->index++;
	qs->need_comma = qs->list;
	return true;
}
