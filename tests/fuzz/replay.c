/* Replays fuzz corpora through the targets, under ASan/UBSan in `make
 * check`: each file of each directory goes to the target its name's prefix
 * names (see prefixes[] and README).  A file with no known prefix fails the
 * run, so a misnamed corpus file is noticed rather than skipped.
 * FUZZ_REPLAY_VERBOSE=1 prints each file before it runs: the last one
 * printed is the one that crashed. */
#include "targets.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
	const char *prefix;
	int (*run)(const uint8_t *data, size_t size);
} prefixes[] = {
	{"frame-", cltfs_fuzz_frame},       {"rec-", cltfs_fuzz_record},  {"json-", cltfs_fuzz_manifest},
	{"pt-", cltfs_fuzz_pt},             {"pkl-", cltfs_fuzz_pickle},  {"tok-", cltfs_fuzz_tokenizer},
	{"st-", cltfs_fuzz_safetensors},    {"hub-", cltfs_fuzz_hub_json}, {"tab-", cltfs_fuzz_table},
	{"q-", cltfs_fuzz_queries},         {"s3-", cltfs_fuzz_s3_list},
};

static int (*target_of(const char *name))(const uint8_t *, size_t)
{
	for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
		if (!strncmp(name, prefixes[i].prefix, strlen(prefixes[i].prefix)))
			return prefixes[i].run;
	return NULL;
}

/* 0 when the file ran, 1 when it could not be read or has no target. */
static int run_file(const char *dir, const char *name, bool verbose)
{
	int (*run)(const uint8_t *, size_t) = target_of(name);
	if (!run) {
		fprintf(stderr, "fuzz_replay: %s/%s: no target has this prefix\n", dir, name);
		return 1;
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		return 1;
	}
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	/* exactly n bytes (never more), so that ASan sees a read past the input */
	uint8_t *buf = n >= 0 ? malloc(n > 0 ? (size_t)n : 1) : NULL;
	size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
	fclose(f);
	if (!buf || got != (size_t)n) {
		fprintf(stderr, "fuzz_replay: %s: cannot read it\n", path);
		free(buf);
		return 1;
	}
	if (verbose)
		fprintf(stderr, "fuzz_replay: %s\n", path);
	run(buf, got);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: fuzz_replay CORPUS_DIR...\n");
		return 2;
	}
	const char *v = getenv("FUZZ_REPLAY_VERBOSE");
	bool verbose = v && *v && strcmp(v, "0");
	int n = 0, failed = 0;
	for (int a = 1; a < argc; a++) {
		DIR *d = opendir(argv[a]);
		if (!d) {
			perror(argv[a]);
			return 2;
		}
		struct dirent *de;
		while ((de = readdir(d)))
			if (de->d_name[0] != '.') {
				failed += run_file(argv[a], de->d_name, verbose);
				n++;
			}
		closedir(d);
	}
	printf("fuzz_replay: %d passed, %d failed\n", n - failed, failed);
	return failed || n == 0;
}
