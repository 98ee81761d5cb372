/* queries.h: a query file read one query at a time (prefix queries_).
 *
 * AMBER's format, {"id": 1, "image": "AMBER_1.jpg", "query": "..."}, as a
 * JSON list or as JSON Lines (one object a line), told by the first byte;
 * a file named *.json must be a list.
 * The file is read in blocks and only the current object is parsed, so a
 * list of 10^7 queries costs no more memory than one of ten.
 */
#ifndef CLTFS_QUERIES_H
#define CLTFS_QUERIES_H

#include "codec.h"

typedef struct queries queries;

/* One query: strings valid until the next queries_next. */
typedef struct {
	int64_t index;      /* 0-based, in file order */
	int64_t line;       /* where the object starts, 1-based */
	const char *id;     /* a number's decimal form, or the string */
	const char *image, *text;
} query;

/* Open path.  CLTFS_E_NOTFOUND, _IO, _FORMAT (neither a JSON list nor
 * JSON Lines, or a FIFO or directory), _NOMEM. */
cltfs_err queries_open(const char *path, queries **out);
/* The next query into *q: true; false at the end (*e CLTFS_OK) or on an
 * error (*e: CLTFS_E_FORMAT naming the file, the entry and the line;
 * CLTFS_E_IO; _NOMEM). */
bool queries_next(queries *qs, query *q, cltfs_err *e);
void queries_close(queries *qs);

#endif
