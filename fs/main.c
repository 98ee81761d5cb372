/* main.c: the command line: subcommands, or a mount. */
#include "fs.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage_error(const char *msg)
{
	fprintf(stderr, "cltfs: %s (see cltfs --help)\n", msg);
	return 2;
}

static bool parse_int(const char *s, long lo, long hi, int *out)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (!*s || *end || v < lo || v > hi)
		return false;
	*out = (int)v;
	return true;
}

static int main_import(int argc, char **argv)
{
	import_opts o = {.target_offset = 1, .level = 1};
	static const struct option lo[] = {
		{"chunk-rows", required_argument, 0, 'c'}, {"target-offset", required_argument, 0, 't'},
		{"level", required_argument, 0, 'l'},      {"quiet", no_argument, 0, 'q'},
		{"help", no_argument, 0, 'h'},             {0, 0, 0, 0},
	};
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "qh", lo, NULL)) != -1) {
		switch (ch) {
		case 'c':
			if (!parse_int(optarg, 1, 1 << 24, &o.chunk_rows))
				return usage_error("--chunk-rows takes a number from 1 to 16777216");
			break;
		case 't':
			if (!parse_int(optarg, 0, 1, &o.target_offset))
				return usage_error("--target-offset takes 0 or 1");
			break;
		case 'l':
			if (!parse_int(optarg, 1, 19, &o.level))
				return usage_error("--level takes a zstd level from 1 to 19");
			break;
		case 'q':
			o.quiet = true;
			break;
		case 'h':
			cltfs_usage(stdout);
			return 0;
		default:
			return 2;
		}
	}
	if (argc - optind != 2)
		return usage_error("import takes STORE and SRC_DIR");
	if (cmd_import(argv[optind], argv[optind + 1], &o)) {
		fprintf(stderr, "cltfs: %s\n", cltfs_errmsg());
		return 1;
	}
	return 0;
}

static int main_stat(int argc, char **argv)
{
	bool json = false;
	const char *store = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (argv[i][0] == '-')
			return usage_error("stat takes STORE [--json]");
		else if (store)
			return usage_error("stat takes one STORE");
		else
			store = argv[i];
	}
	return store ? cmd_stat(store, json) : usage_error("stat takes STORE");
}

static int main_pull(int argc, char **argv)
{
	bool quiet = false;
	const char *arg[2];
	int n = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q"))
			quiet = true;
		else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			cltfs_usage(stdout);
			return 0;
		} else if (argv[i][0] == '-' || n == 2)
			return usage_error("pull takes SOURCE STORE [--quiet]");
		else
			arg[n++] = argv[i];
	}
	return n == 2 ? cmd_pull(arg[0], arg[1], quiet) : usage_error("pull takes SOURCE STORE");
}

/* As a mount helper (mount.cltfs), mount(8) passes "-n", "-v", "-s" (sloppy)
 * and "-f" (fake): drop them, they are not ours. */
static int as_mount_helper(int argc, char **argv)
{
	int n = 1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-f"))
			return 0;
		if (!strcmp(argv[i], "-n") || !strcmp(argv[i], "-v") || !strcmp(argv[i], "-s"))
			continue;
		if (!strcmp(argv[i], "-t") || !strcmp(argv[i], "-N")) {
			i++;
			continue;
		}
		argv[n++] = argv[i];
	}
	argv[n] = NULL;
	return fuse_main_cltfs(n, argv);
}

int main(int argc, char **argv)
{
	const char *base = strrchr(argv[0], '/');
	base = base ? base + 1 : argv[0];
	if (!strncmp(base, "mount.", 6))
		return as_mount_helper(argc, argv);
	if (argc < 2) {
		cltfs_usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "import"))
		return main_import(argc - 1, argv + 1);
	if (!strcmp(cmd, "stat"))
		return main_stat(argc - 1, argv + 1);
	if (!strcmp(cmd, "pull"))
		return main_pull(argc - 1, argv + 1);
	if (!strcmp(cmd, "verify")) {
		if (argc != 3 || argv[2][0] == '-')
			return usage_error("verify takes STORE");
		return cmd_verify(argv[2]);
	}
	return fuse_main_cltfs(argc, argv);
}
