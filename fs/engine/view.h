/* view.h: the bytes of one .pt view (prefix view_).
 *
 * A view (L<n>/batch_<k>_{x,y}.pt) is a pure function of the manifest and
 * the chunks: its object (dict, tensors, ints), pickle and zip layout are
 * built from the manifest alone (so its size needs no chunk), and a read
 * is composed from literal bytes and rows of cached chunks.
 */
#ifndef CLTFS_VIEW_H
#define CLTFS_VIEW_H

#include "cltfs_fs.h"

#include <sys/uio.h>

typedef struct view view;

/* Build a view for the caller alone; view_close frees it.  layer_idx is a
 * directory index (fs_nlayers), batch below fs_nbatches.  CLTFS_E_NOMEM. */
cltfs_err view_open(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, view **out);
void view_close(view *v);
/* A shared, referenced view from the filesystem's view cache (built on a
 * miss); view_put drops the reference.  CLTFS_E_NOMEM. */
cltfs_err view_get(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, view **out);
void view_put(view *v);
uint64_t view_size(const view *v);

/* samples/sample_NNNN.pt of sample i (below the manifest's n_samples), as
 * the seed wrote them: {'activations': {L: tensor, ...}} over the x layers
 * in order, the tensor each layer's last row [d], mean over the sample's
 * rows [d] or every row [T, d] (-o sample_reduce), in -o sample_dtype. */
cltfs_err view_get_sample(cltfs_fs *fs, int64_t i, view **out);
/* Its size, from the manifest alone. */
cltfs_err view_sample_size(cltfs_fs *fs, int64_t i, uint64_t *size);
/* The zero-padded width of the sample numbers in the names: 4, or more
 * past 10,000 samples. */
int view_sample_digits(const cltfs_fs *fs);
/* A view's file size through the view cache, for getattr and lookup:
 * reads no chunk.  CLTFS_E_NOMEM. */
cltfs_err view_size_of(cltfs_fs *fs, int layer_idx, int64_t batch, int is_y, uint64_t *size);

/* The bytes of [off, off+len) (clipped to the file): iovecs into chunk
 * buffers, a zero page and literal bytes, with references held until
 * view_buf_release.  A buffer is released before its thread reads again. */
typedef struct {
	struct iovec *iov;
	size_t niov, iovcap;
	struct chunk **refs;
	size_t nrefs, refcap;
	uint8_t *lit;
	size_t total; /* bytes in iov */
} view_buf;
/* CLTFS_E_NOTFOUND (a chunk no tier has), _CORRUPT, _IO, _NOMEM: the
 * message names the pack or the source. */
cltfs_err view_read(cltfs_fs *fs, view *v, uint64_t off, size_t len, view_buf *out);
void view_buf_release(cltfs_fs *fs, view_buf *b);
/* Note a read of n bytes at off: true when it starts where the view's
 * last read ended (a sequential reader, whichever open file it is on). */
bool view_sequential(view *v, uint64_t off, size_t n);
/* Queue the chunks behind the next readahead=N chunks' worth of bytes from
 * off for the readahead threads (a sequential reader). */
void view_readahead(cltfs_fs *fs, view *v, uint64_t off);

/* What import compares with a source file, tensor by tensor: the view's
 * pickle, and bytes [off, off+len) of its storage i (data/<i>).
 * view_storage_pread: CLTFS_E_INVAL for bytes the storage lacks, or
 * view_read's errors. */
const uint8_t *view_pickle(const view *v, size_t *len);
cltfs_err view_storage_pread(cltfs_fs *fs, view *v, size_t i, uint64_t off, size_t len, uint8_t *dst);

#endif
