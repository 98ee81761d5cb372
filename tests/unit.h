/* unit.h: a minimal test harness.  CHECK records a failure and goes on;
 * each program ends with "N passed, N failed" and exits non-zero on any. */
#ifndef CLTFS_UNIT_H
#define CLTFS_UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int unit_pass, unit_fail;
static const char *unit_name = "?";

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (cond)                                                                    \
			unit_pass++;                                                         \
		else {                                                                       \
			unit_fail++;                                                         \
			fprintf(stderr, "FAIL %s: %s:%d: %s\n", unit_name, __FILE__, __LINE__, #cond); \
		}                                                                            \
	} while (0)

#define RUN(fn)                                                                              \
	do {                                                                                 \
		unit_name = #fn;                                                             \
		fn();                                                                        \
	} while (0)

static inline int unit_done(const char *prog)
{
	printf("%s: %d passed, %d failed\n", prog, unit_pass, unit_fail);
	return unit_fail ? 1 : 0;
}

/* A file holding text (a failure to write it is a failed check). */
static inline void unit_write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

/* Deterministic pseudo-random bytes (xorshift). */
static inline unsigned long long unit_rand(unsigned long long *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

#endif
