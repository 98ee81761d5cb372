/* Replays a fuzz corpus through the targets: files named pt-*, pkl-* and
 * json-* go to the .pt, pickle and manifest targets. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cltfs_fuzz_pt(const uint8_t *data, size_t size);
int cltfs_fuzz_pickle(const uint8_t *data, size_t size);
int cltfs_fuzz_manifest(const uint8_t *data, size_t size);

static int run_file(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "rb");
	if (!f)
		return 1;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
	size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
	fclose(f);
	if (!buf || got != (size_t)n) {
		free(buf);
		return 1;
	}
	if (!strncmp(name, "pt-", 3))
		cltfs_fuzz_pt(buf, got);
	else if (!strncmp(name, "pkl-", 4))
		cltfs_fuzz_pickle(buf, got);
	else if (!strncmp(name, "json-", 5))
		cltfs_fuzz_manifest(buf, got);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: fuzz_replay CORPUS_DIR...\n");
		return 2;
	}
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
				failed += run_file(argv[a], de->d_name);
				n++;
			}
		closedir(d);
	}
	printf("fuzz_replay: %d passed, %d failed\n", n - failed, failed);
	return failed || n == 0;
}
