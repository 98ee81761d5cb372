/* means.c: STORE/means/L<n>.bin, one record a sample (means.h).
 *
 *   header (32 bytes): "cltfsMN1", u32 d, u32 manifest tag, u64 samples,
 *                      u32 CRC-32 of the 24 bytes before, u32 0
 *   record i at 32 + i * (4d + 4): d float32, CRC-32 of them
 *
 * Files are opened on first use, one descriptor per layer, and written
 * with pwrite: concurrent mounts write the same bytes to the same place.
 */
#include "means.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HDR 32
#define MAX_LAYERS 1024

struct means {
	char dir[4096];
	int d;
	int64_t n;
	uint32_t tag;
	pthread_mutex_t mu; /* guards fd, tried, warned */
	int fd[MAX_LAYERS];
	bool tried[MAX_LAYERS];
	bool warned;
};

static void header(const means *mn, uint8_t h[HDR])
{
	memset(h, 0, HDR);
	memcpy(h, "cltfsMN1", 8);
	uint32_t d = (uint32_t)mn->d;
	uint64_t n = (uint64_t)mn->n;
	memcpy(h + 8, &d, 4);
	memcpy(h + 12, &mn->tag, 4);
	memcpy(h + 16, &n, 8);
	uint32_t crc = cltfs_crc32(0, h, 24);
	memcpy(h + 24, &crc, 4);
}

static void warn_once(means *mn, const char *what, const char *path)
{
	if (!mn->warned)
		cltfs_log("means: %s %s: %s; means are kept in memory only", what, path, strerror(errno));
	mn->warned = true;
}

/* The file of layer, opened (made, or replaced when of another manifest)
 * on first use; -1 when it cannot be.  Called under mu. */
static int layer_fd(means *mn, int layer)
{
	if (layer < 0 || layer >= MAX_LAYERS)
		return -1;
	if (mn->tried[layer])
		return mn->fd[layer];
	mn->tried[layer] = true;
	char path[4200];
	snprintf(path, sizeof path, "%s/means", mn->dir);
	if (mkdir(path, 0755) && errno != EEXIST) {
		warn_once(mn, "cannot make", path);
		return -1;
	}
	snprintf(path, sizeof path, "%s/means/L%d.bin", mn->dir, layer);
	uint8_t want[HDR], have[HDR];
	header(mn, want);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW); /* a read-only store still serves what it has */
		if (fd < 0 || pread(fd, have, HDR, 0) != HDR || memcmp(have, want, HDR)) {
			if (fd >= 0)
				close(fd);
			warn_once(mn, "cannot open", path);
			return -1;
		}
		return mn->fd[layer] = fd;
	}
	struct stat st;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		close(fd);
		return -1;
	}
	if (pread(fd, have, HDR, 0) != HDR || memcmp(have, want, HDR)) {
		/* new, or of another manifest: start over */
		if (ftruncate(fd, 0) || pwrite(fd, want, HDR, 0) != HDR) {
			warn_once(mn, "cannot write", path);
			close(fd);
			return -1;
		}
	}
	return mn->fd[layer] = fd;
}

means *means_new(const char *dir, const cltfs_manifest *m, uint32_t tag)
{
	means *mn = calloc(1, sizeof *mn);
	if (!mn)
		return NULL;
	snprintf(mn->dir, sizeof mn->dir, "%s", dir);
	mn->d = m->d_model;
	mn->n = m->n_samples;
	mn->tag = tag;
	pthread_mutex_init(&mn->mu, NULL);
	for (int i = 0; i < MAX_LAYERS; i++)
		mn->fd[i] = -1;
	return mn;
}

void means_free(means *mn)
{
	if (!mn)
		return;
	for (int i = 0; i < MAX_LAYERS; i++)
		if (mn->fd[i] >= 0)
			close(mn->fd[i]);
	pthread_mutex_destroy(&mn->mu);
	free(mn);
}

static int fd_of(means *mn, int layer)
{
	pthread_mutex_lock(&mn->mu);
	int fd = layer_fd(mn, layer);
	pthread_mutex_unlock(&mn->mu);
	return fd;
}

bool means_get(means *mn, int layer, int64_t i, float *out)
{
	int fd = mn && i >= 0 && i < mn->n ? fd_of(mn, layer) : -1;
	if (fd < 0)
		return false;
	size_t vb = (size_t)mn->d * 4;
	off_t at = HDR + (off_t)i * (off_t)(vb + 4);
	uint32_t crc;
	if (pread(fd, out, vb, at) != (ssize_t)vb || pread(fd, &crc, 4, at + (off_t)vb) != 4)
		return false;
	return crc == cltfs_crc32(0, out, vb);
}

void means_put(means *mn, int layer, int64_t i, const float *vals)
{
	int fd = mn && i >= 0 && i < mn->n ? fd_of(mn, layer) : -1;
	if (fd < 0)
		return;
	size_t vb = (size_t)mn->d * 4;
	uint8_t *rec = malloc(vb + 4);
	if (!rec)
		return;
	memcpy(rec, vals, vb);
	uint32_t crc = cltfs_crc32(0, vals, vb);
	memcpy(rec + vb, &crc, 4);
	/* one write: a crash leaves a record whole or failing its CRC */
	if (pwrite(fd, rec, vb + 4, HDR + (off_t)i * (off_t)(vb + 4)) != (ssize_t)(vb + 4)) {
		pthread_mutex_lock(&mn->mu);
		warn_once(mn, "cannot write", mn->dir);
		pthread_mutex_unlock(&mn->mu);
	}
	free(rec);
}
