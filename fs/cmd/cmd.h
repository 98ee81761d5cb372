/* cmd.h: cltfs's commands (prefix cmd_): each takes its parsed options and
 * returns the process's exit status (0 success, 1 an error, whose message
 * naming the file and the cause is already on stderr, 2 a usage error).
 * main.c parses the command line; the mount is fuse/'s (edge.h).
 */
#ifndef CLTFS_CMD_H
#define CLTFS_CMD_H

#include "capturer.h"

#include <stdio.h>

/* The usage text of every command. */
void cmd_usage(FILE *f);

typedef struct {
	int chunk_rows;    /* 0: about 1 MiB of raw rows */
	int target_offset; /* 1 as the reference */
	int level;         /* zstd level */
	int codec;         /* a cltfs_codec, or -1: an existing store's, else zstd */
	bool quiet;
} import_opts;
/* A materialized tree (L<n>/batch_<k>_{x,y}.pt) into a store, every value
 * verified; a re-run resumes. */
int cmd_import(const char *store, const char *src, const import_opts *o);

typedef struct {
	const char *model, *dataset, *image_dir; /* the checkpoint folder or Hub id, the queries, the images */
	const char *model_id;  /* recorded as the model's id (default: the folder) */
	const char *template_; /* NULL: the model card's */
	const char *input_hook;
	int n_targets, target_offset, dtype, batch_samples;
	int codec;             /* a cltfs_codec: what capture will write */
	int64_t chunk_rows;    /* 0: about 1 MiB of raw rows */
	bool clip, quiet;
} init_opts;
/* A store whose every sample's rows come from the tokenizer: no chunk yet. */
int cmd_init(const char *store, const init_opts *o);

typedef struct {
	capture_cfg cfg;
	int shard, shards;  /* --shard i/N (1-based); 0: off */
	int64_t row0, row1; /* --rows a:b; equal: all */
	const char *push;   /* --push s3://BUCKET/PREFIX; NULL: off */
	int push_every;     /* seconds between seals of the writer pair */
	int64_t push_min;   /* bytes a pair holds at least before it is sealed (but the last) */
	bool quiet;
} capture_opts;
/* Run the model on the store's batches that lack chunks. */
int cmd_capture(const char *store, const capture_opts *o);
/* The shard of a Slurm array task (1-based *shard of *shards): task
 * SLURM_ARRAY_TASK_ID of an array of SLURM_ARRAY_TASK_COUNT from
 * SLURM_ARRAY_TASK_MIN by SLURM_ARRAY_TASK_STEP (default 0 and 1) is shard
 * (ID - MIN) / STEP + 1; said (n bytes) says so.  *shards 0 when
 * SLURM_ARRAY_TASK_ID is unset; CLTFS_E_INVAL naming the variable for a
 * value that is not a number or falls outside the array. */
cltfs_err cmd_slurm_shard(int *shard, int *shards, char *said, size_t n);
/* capture --status: each shard's batches and samples stored of its own,
 * the other writers, and all, from the index files alone (no writer is
 * opened, so a running capture is not disturbed). */
int cmd_capture_status(const char *store);

/* Every chunk of a Hub store repo (or an S3 store) that STORE lacks. */
int cmd_pull(const char *url, const char *store, bool quiet);
/* What an S3 prefix lacks of STORE, the manifest last (push.h). */
int cmd_push(const char *store, const char *url, bool quiet);
/* Rows, layers, chunks present, bytes on disk and served. */
int cmd_stat(const char *store, bool json);
/* The normalization statistics into STORE/norm_stats.json (kept when
 * intact and of this manifest, unless force), with a progress line. */
int cmd_stats(const char *store, bool force, bool quiet);
/* Decode and check every frame against its record. */
int cmd_verify(const char *store);
/* verify --repair: keep every frame that verifies (its first good copy) in
 * a new writer pair, remove every other pair (reclaiming damaged, duplicate
 * and unreferenced frames), then fill what is missing from source: a
 * materialized tree (import), an hf:// store repo (pull), or, when NULL,
 * the manifest's own source (the tree it was imported from, or a capture
 * for a store made by init); verify at the end. */
int cmd_repair(const char *store, const char *source, bool quiet);

#endif
