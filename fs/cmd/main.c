/* main.c: the command line: a subcommand (cmd.h), or a mount (edge.h). */
#include "cmd.h"
#include "edge.h"
#include "push.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static int usage_error(const char *msg)
{
	fprintf(stderr, "cltfs: %s (see cltfs --help)\n", msg);
	return 2;
}

static bool parse_int(const char *s, long lo, long hi, int *out)
{
	int64_t v;
	if (!cltfs_parse_dec(s, strlen(s), &v) || v < lo || v > hi)
		return false;
	*out = (int)v;
	return true;
}

/* "A<sep>B": two numbers as cltfs_parse_dec reads them. */
static bool parse_pair(const char *s, char sep, int64_t *a, int64_t *b)
{
	const char *mid = strchr(s, sep);
	return mid && cltfs_parse_dec(s, (size_t)(mid - s), a) && cltfs_parse_dec(mid + 1, strlen(mid + 1), b);
}

/* --codec NAME: a usage error names the valid ones. */
static bool parse_codec(const char *s, int *out)
{
	cltfs_codec c;
	if (!cltfs_codec_parse(s, &c)) {
		fprintf(stderr, "cltfs: --codec %s: unknown codec; valid: " CLTFS_CODEC_NAMES " (see cltfs --help)\n", s);
		return false;
	}
	*out = (int)c;
	return true;
}

static int main_import(int argc, char **argv)
{
	import_opts o = {.target_offset = 1, .level = 1, .codec = -1};
	static const struct option lo[] = {
		{"chunk-rows", required_argument, 0, 'c'}, {"target-offset", required_argument, 0, 't'},
		{"level", required_argument, 0, 'l'},      {"codec", required_argument, 0, 'C'},
		{"quiet", no_argument, 0, 'q'},            {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
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
		case 'C':
			if (!parse_codec(optarg, &o.codec))
				return 2;
			break;
		case 'q':
			o.quiet = true;
			break;
		case 'h':
			cmd_usage(stdout);
			return 0;
		default:
			return 2;
		}
	}
	if (argc - optind != 2)
		return usage_error("import takes STORE and SRC_DIR");
	return cmd_import(argv[optind], argv[optind + 1], &o);
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

/* SOURCE DEST [--quiet], for pull and push: 0 with arg[] set, -1 after
 * --help, else the usage error's status. */
static int two_args(int argc, char **argv, const char *what, const char *arg[2], bool *quiet)
{
	int n = 0;
	*quiet = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q"))
			*quiet = true;
		else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			cmd_usage(stdout);
			return -1;
		} else if (argv[i][0] == '-' || n == 2)
			return usage_error(what);
		else
			arg[n++] = argv[i];
	}
	return n == 2 ? 0 : usage_error(what);
}

static int main_pull(int argc, char **argv)
{
	const char *arg[2];
	bool quiet;
	int rc = two_args(argc, argv, "pull takes SOURCE STORE [--quiet]", arg, &quiet);
	return rc ? (rc < 0 ? 0 : rc) : cmd_pull(arg[0], arg[1], quiet);
}

static int main_push(int argc, char **argv)
{
	const char *arg[2];
	bool quiet;
	int rc = two_args(argc, argv, "push takes STORE s3://BUCKET/PREFIX [--quiet]", arg, &quiet);
	return rc ? (rc < 0 ? 0 : rc) : cmd_push(arg[0], arg[1], quiet);
}

static int main_init(int argc, char **argv)
{
	init_opts o = {.input_hook = "mlp_in", .n_targets = 16, .target_offset = 1, .dtype = CLTFS_BF16,
		       .batch_samples = 1, .codec = CLTFS_CODEC_ZSTD};
	static const struct option lo[] = {
		{"model", required_argument, 0, 'm'},        {"dataset", required_argument, 0, 'q'},
		{"image-dir", required_argument, 0, 'i'},    {"n-targets", required_argument, 0, 'n'},
		{"target-offset", required_argument, 0, 't'}, {"padding", required_argument, 0, 'p'},
		{"dtype", required_argument, 0, 'd'},        {"input-hook", required_argument, 0, 'k'},
		{"chunk-rows", required_argument, 0, 'c'},   {"batch-samples", required_argument, 0, 'b'},
		{"template", required_argument, 0, 'T'},     {"model-id", required_argument, 0, 'M'},
		{"codec", required_argument, 0, 'C'},        {"quiet", no_argument, 0, 'Q'},
		{"help", no_argument, 0, 'h'},               {0, 0, 0, 0},
	};
	int ch, v;
	cltfs_dtype dt;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (ch) {
		case 'm': o.model = optarg; break;
		case 'q': o.dataset = optarg; break;
		case 'i': o.image_dir = optarg; break;
		case 'k': o.input_hook = optarg; break;
		case 'T': o.template_ = optarg; break;
		case 'M': o.model_id = optarg; break;
		case 'Q': o.quiet = true; break;
		case 'C':
			if (!parse_codec(optarg, &o.codec))
				return 2;
			break;
		case 'n':
			if (!parse_int(optarg, 1, 4096, &o.n_targets))
				return usage_error("--n-targets takes a number from 1 to 4096");
			break;
		case 't':
			if (!parse_int(optarg, 0, 1, &o.target_offset))
				return usage_error("--target-offset takes 0 or 1");
			break;
		case 'p':
			if (strcmp(optarg, "zero") && strcmp(optarg, "clip"))
				return usage_error("--padding takes zero or clip");
			o.clip = !strcmp(optarg, "clip");
			break;
		case 'd':
			if (!cltfs_dtype_parse(optarg, &dt))
				return usage_error("--dtype takes bfloat16, float16 or float32");
			o.dtype = (int)dt;
			break;
		case 'c':
			if (!parse_int(optarg, 1, 1 << 24, &v))
				return usage_error("--chunk-rows takes a number from 1 to 16777216");
			o.chunk_rows = v;
			break;
		case 'b':
			if (!parse_int(optarg, 1, 1 << 20, &o.batch_samples))
				return usage_error("--batch-samples takes a number from 1 to 1048576");
			break;
		case 'h': cmd_usage(stdout); return 0;
		default: return 2;
		}
	}
	if (argc - optind != 1)
		return usage_error("init takes one STORE");
	if (!o.model || !o.dataset || !o.image_dir)
		return usage_error("init needs --model DIR, --dataset QUERIES.json and --image-dir DIR");
	return cmd_init(argv[optind], &o);
}

/* Without --shard or --rows, a Slurm array task captures its own shard
 * (cmd_slurm_shard), and says so first: the job's log shows which.  An
 * explicit --shard or --rows wins.  0, or 2 for a bad variable. */
static int capture_shard_from_env(capture_opts *o)
{
	int shard, shards;
	char said[256];
	const char *id = getenv("SLURM_ARRAY_TASK_ID");
	if (id && (o->shards || o->row1)) {
		if (!o->quiet)
			fprintf(stderr, "cltfs: capture: %s given, SLURM_ARRAY_TASK_ID=%s ignored\n",
				o->shards ? "--shard" : "--rows", id);
		return 0;
	}
	if (cmd_slurm_shard(&shard, &shards, said, sizeof said)) {
		fprintf(stderr, "cltfs: capture: %s\n", cltfs_errmsg());
		return 2;
	}
	if (shards) {
		o->shard = shard;
		o->shards = shards;
		if (!o->quiet)
			fprintf(stderr, "cltfs: capture: %s\n", said);
	}
	return 0;
}

static int main_capture(int argc, char **argv)
{
	capture_opts o = {.cfg = {.load = {.dtype = -1}}, .push_every = 300, .push_min = 64 << 20};
	bool push_knobs = false;
	int dev_index;
	static const struct option lo[] = {
		{"rows", required_argument, 0, 'r'},  {"shard", required_argument, 0, 's'},
		{"dtype", required_argument, 0, 'd'}, {"threads", required_argument, 0, 'j'},
		{"cpu", no_argument, 0, 'C'},         {"quiet", no_argument, 0, 'Q'},
		{"batch", required_argument, 0, 'B'}, {"model", required_argument, 0, 'm'},
		{"image-dir", required_argument, 0, 'i'}, {"device", required_argument, 0, 'D'},
		{"compress-threads", required_argument, 0, 'T'},
		{"status", no_argument, 0, 'S'},
		{"push", required_argument, 0, 'P'}, {"push-every", required_argument, 0, 'E'},
		{"push-min-mb", required_argument, 0, 'M'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	int ch;
	int64_t a, b;
	cltfs_dtype dt;
	bool status = false;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (ch) {
		case 'r':
			if (!parse_pair(optarg, ':', &a, &b) || b <= a)
				return usage_error("--rows takes A:B with 0 <= A < B");
			o.row0 = a;
			o.row1 = b;
			break;
		case 's':
			if (!parse_pair(optarg, '/', &a, &b) || b < 1 || b > INT32_MAX || a < 1 || a > b)
				return usage_error("--shard takes I/N with 1 <= I <= N");
			o.shard = (int)a;
			o.shards = (int)b;
			break;
		case 'd':
			if (!cltfs_dtype_parse(optarg, &dt))
				return usage_error("--dtype takes bfloat16, float16 or float32");
			o.cfg.load.dtype = (int)dt;
			break;
		case 'j':
			if (!parse_int(optarg, 1, 1024, &o.cfg.load.threads))
				return usage_error("--threads takes a number from 1 to 1024");
			break;
		case 'C': o.cfg.load.device = "cpu"; break;
		case 'T':
			if (!parse_int(optarg, 1, 256, &o.cfg.compress_threads))
				return usage_error("--compress-threads takes a number from 1 to 256");
			break;
		case 'D':
			if (cap_device_parse(optarg, &dev_index) < 0)
				return usage_error("--device takes cpu, cuda or cuda:N");
			o.cfg.load.device = optarg;
			break;
		case 'B':
			if (!parse_int(optarg, 1, 64, &o.cfg.load.batch))
				return usage_error("--batch takes a number of samples from 1 to 64");
			break;
		case 'm': o.cfg.model = optarg; break;
		case 'i': o.cfg.images = optarg; break;
		case 'Q': o.quiet = true; break;
		case 'S': status = true; break;
		case 'P':
			if (!push_url_ok(optarg))
				return usage_error("--push takes s3://BUCKET/PREFIX");
			o.push = optarg;
			break;
		case 'E':
			push_knobs = true;
			if (!parse_int(optarg, 0, 7 * 86400, &o.push_every))
				return usage_error("--push-every takes seconds from 0 to 604800");
			break;
		case 'M': {
			int mb;
			push_knobs = true;
			if (!parse_int(optarg, 0, 1 << 20, &mb))
				return usage_error("--push-min-mb takes megabytes from 0 to 1048576");
			o.push_min = (int64_t)mb << 20;
			break;
		}
		case 'h': cmd_usage(stdout); return 0;
		default: return 2;
		}
	}
	if (o.shards && o.row1)
		return usage_error("--rows and --shard exclude each other");
	if (argc - optind != 1)
		return usage_error(status ? "capture --status takes one STORE" : "capture takes one STORE");
	if (status && (o.shards || o.row1 || o.push))
		return usage_error("capture --status shows every shard: it takes no --shard, --rows or --push");
	if (push_knobs && !o.push)
		return usage_error("--push-every and --push-min-mb go with --push s3://BUCKET/PREFIX");
	if (status)
		return cmd_capture_status(argv[optind]);
	int rc = capture_shard_from_env(&o);
	return rc ? rc : cmd_capture(argv[optind], &o);
}

static int main_verify(int argc, char **argv)
{
	static const struct option lo[] = {
		{"repair", no_argument, 0, 'R'}, {"quiet", no_argument, 0, 'Q'}, {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	bool repair = false, quiet = false;
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (ch) {
		case 'R': repair = true; break;
		case 'Q': quiet = true; break;
		case 'h': cmd_usage(stdout); return 0;
		default: return 2;
		}
	}
	int n = argc - optind;
	if (n < 1 || n > (repair ? 2 : 1))
		return usage_error(repair ? "verify --repair takes STORE [SOURCE]" : "verify takes STORE");
	return repair ? cmd_repair(argv[optind], n == 2 ? argv[optind + 1] : NULL, quiet) : cmd_verify(argv[optind]);
}

static int main_stats(int argc, char **argv)
{
	static const struct option lo[] = {
		{"force", no_argument, 0, 'F'}, {"quiet", no_argument, 0, 'Q'}, {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	bool force = false, quiet = false;
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "hq", lo, NULL)) != -1) {
		switch (ch) {
		case 'F': force = true; break;
		case 'Q':
		case 'q': quiet = true; break;
		case 'h': cmd_usage(stdout); return 0;
		default: return 2;
		}
	}
	if (argc - optind != 1)
		return usage_error("stats takes one STORE");
	return cmd_stats(argv[optind], force, quiet);
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
	return edge_mount_main(n, argv, cmd_usage);
}

/* A store keeps two files open per writer pair that ever wrote to it, and
 * a store filled by a cluster has thousands: the soft limit (often 1024)
 * is raised to the hard one. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	raise_fd_limit();
	const char *base = strrchr(argv[0], '/');
	base = base ? base + 1 : argv[0];
	if (!strncmp(base, "mount.", 6))
		return as_mount_helper(argc, argv);
	if (argc < 2) {
		cmd_usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "import"))
		return main_import(argc - 1, argv + 1);
	if (!strcmp(cmd, "stat"))
		return main_stat(argc - 1, argv + 1);
	if (!strcmp(cmd, "init"))
		return main_init(argc - 1, argv + 1);
	if (!strcmp(cmd, "capture"))
		return main_capture(argc - 1, argv + 1);
	if (!strcmp(cmd, "pull"))
		return main_pull(argc - 1, argv + 1);
	if (!strcmp(cmd, "stats"))
		return main_stats(argc - 1, argv + 1);
	if (!strcmp(cmd, "push"))
		return main_push(argc - 1, argv + 1);
	if (!strcmp(cmd, "verify"))
		return main_verify(argc - 1, argv + 1);
	return edge_mount_main(argc, argv, cmd_usage);
}
