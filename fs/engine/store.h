/* store.h: a store directory (prefix store_).
 *
 *   cltfs.json       the manifest (codec.h)
 *   packs/<w>.pack   16-byte header, then chunk frames, append-only
 *   packs/<w>.idx    16-byte header, then 40-byte index records, append-only
 *
 * Each writer <w> appends only to its own pair, so writers on a shared
 * filesystem need no locks between them; readers merge every index.
 *
 * Errors: every function that returns cltfs_err leaves a message naming
 * the file and the cause (cltfs_errmsg).  A cltfs_store is safe to use from
 * many threads; a store_writer is too (adds and syncs may overlap).
 */
#ifndef CLTFS_STORE_H
#define CLTFS_STORE_H

#include "codec.h"

typedef struct cltfs_store cltfs_store;

/* Open an existing store: load and validate cltfs.json, merge every index
 * (each index file stays open: records are read back from it).
 * CLTFS_E_NOTFOUND (no such directory, or no cltfs.json), _INVAL (not a
 * directory), _FORMAT (a bad manifest or index header), _IO, _NOMEM. */
cltfs_err store_open(const char *dir, cltfs_store **out);
/* Create dir (and packs/) if needed and write the manifest atomically.
 * CLTFS_E_IO, _NOMEM. */
cltfs_err store_create(const char *dir, const cltfs_manifest *m);
/* Close a store (NULL is a no-op).  Every writer must be closed first. */
void store_close(cltfs_store *s);
const cltfs_manifest *store_manifest(const cltfs_store *s);
/* The store's absolute path. */
const char *store_dir(const cltfs_store *s);
/* Raw bytes of chunk c of any stream (rows * d * dtype size); 0 past the end. */
uint64_t store_chunk_raw(const cltfs_store *s, uint32_t chunk);

/* The record of a chunk: true and *rec when the store has it.  On a miss
 * the indexes are rescanned (at most once a second), since other writers
 * may be appending to the store. */
bool store_lookup(cltfs_store *s, uint64_t key, cltfs_rec *rec);
/* store_lookup, and the name <w> of the pack that holds the frame (valid
 * as long as the store is open). */
bool store_locate(cltfs_store *s, uint64_t key, cltfs_rec *rec, const char **pack);
/* store_locate, and the record's number in its pack's index (UINT64_MAX
 * for this process's records not yet synced to an index file). */
bool store_locate_at(cltfs_store *s, uint64_t key, cltfs_rec *rec, const char **pack, uint64_t *recno);
/* Record recno of the index of pack (a name store_locate gave): a writer
 * appends frames and their records in the same order, so records recno,
 * recno + 1, ... are the pack's frames as they follow each other, for a
 * reader that fetches neighbours together.  false past what was merged,
 * for a bad record, and for a record that is not the copy the store
 * answers for its chunk. */
bool store_record_at(cltfs_store *s, const char *pack, uint64_t recno, cltfs_rec *rec);
/* Merge what other writers appended since the last scan, now. */
void store_rescan(cltfs_store *s);
/* Read one chunk's frame, decode it into dst (rec->rsize bytes) and check
 * its CRC.  CLTFS_E_NOTFOUND (no such chunk), _CORRUPT (checksum, CRC or a
 * short pack: the message names pack, chunk and offset), _IO, _NOMEM. */
cltfs_err store_read_chunk(cltfs_store *s, const cltfs_rec *rec, cltfs_zctx *z, void *dst);
/* Start reading key's frame from disk into the page cache, not waiting
 * (readahead: the disk works while earlier chunks decode).  Nothing when
 * the store has no such chunk. */
void store_prefetch(cltfs_store *s, uint64_t key);
/* Decode a frame read from anywhere into dst and check it against its
 * record: CLTFS_E_CORRUPT when it does not match. */
cltfs_err store_decode(const cltfs_rec *rec, cltfs_zctx *z, const void *frame, void *dst);

/* Every record of every index file, in file order, for verify and stat. */
typedef struct {
	const char *idx_path, *pack_path;
	uint64_t idx_offset; /* of the record */
	bool valid;          /* record checksum ok and it names a chunk of this store */
	cltfs_rec rec;
} store_entry;
/* Called for each record; an error stops the walk and is returned. */
typedef cltfs_err (*store_visit)(void *arg, const store_entry *e);
/* Walk every record (after a rescan).  CLTFS_E_CORRUPT for a bad index
 * header, _IO, _NOMEM, or the visitor's error. */
cltfs_err store_foreach(cltfs_store *s, store_visit fn, void *arg);
/* Read, decode and CRC-check the frame of one entry from its own pack
 * (not the merged table's copy): CLTFS_E_CORRUPT, _IO, _NOMEM. */
cltfs_err store_check_entry(const store_entry *e, cltfs_zctx *z, void *dst);
/* The in-memory index: the chunks it knows, and the bytes it holds: 32 KiB
 * for each run of 4096 chunk numbers of a stream that holds any of them (8
 * bytes a chunk when a stream is filled), plus this process's unsynced
 * records. */
void store_index_usage(cltfs_store *s, uint64_t *chunks, uint64_t *bytes);
/* The first whole index record that disagrees with the manifest (another
 * row count, chunk size, stream, dtype), as "IDX: record N (chunk K):
 * why"; NULL when none does.  A mount refuses such a store (a record that
 * fails its own checksum only loses its chunk); verify lists them all. */
const char *store_first_bad(const cltfs_store *s);
/* Bytes of the manifest plus every pack and index file. */
uint64_t store_disk_bytes(cltfs_store *s);

/* ---- appending ---- */

/* One writer per (host, tag): frames are appended to the pack at once and
 * are readable by this process; their records are written to the index
 * only by store_writer_sync, after the pack is fsynced, so no other
 * process ever sees a record whose frame is not durable. */
typedef struct store_writer store_writer;
/* Open (or continue) the pair <host>-<tag> (or <host>-<tag>-<pid> when
 * another process holds it), cutting off a torn last record.
 * CLTFS_E_FORMAT (an existing file of the pair has a bad header), _IO,
 * _NOMEM. */
cltfs_err store_writer_open(cltfs_store *s, const char *tag, store_writer **out);
/* Is there a pair (either file) that store_writer_open(s, tag) would
 * first append to? */
bool store_has_writer(const cltfs_store *s, const char *tag);
/* The pair's name <w>: packs/<w>.pack and packs/<w>.idx. */
const char *store_writer_name(const store_writer *w);
/* zstd level of the frames this writer adds (default 1). */
void store_writer_level(store_writer *w, int level);
/* The codec of the frames this writer adds (default: the manifest's).
 * Each record names its frame's codec, so a store may hold several. */
void store_writer_codec(store_writer *w, cltfs_codec codec);
/* Encode (the writer's codec) and append one chunk's raw bytes (len bytes,
 * as the manifest says).  CLTFS_E_IO, _NOMEM. */
cltfs_err store_writer_add(store_writer *w, uint64_t key, const void *raw, size_t len);
/* store_writer_add, compressing with the caller's z outside the writer's
 * lock: threads with a zctx each compress in parallel. */
cltfs_err store_writer_add_with(store_writer *w, cltfs_zctx *z, uint64_t key, const void *raw, size_t len);
/* Append a frame as it came from another store, no re-encoding (the caller
 * checked it with store_decode).  CLTFS_E_MISMATCH when the record does not
 * fit this store's manifest, _IO, _NOMEM. */
cltfs_err store_writer_add_frame(store_writer *w, const cltfs_rec *rec, const void *frame);
/* Make what was added durable and visible to other processes: fsync the
 * pack, append the pending records, fsync the index.  Adds may run while a
 * sync waits on the disk.  CLTFS_E_IO (the records stay pending), _NOMEM. */
cltfs_err store_writer_sync(store_writer *w);
/* Forget the pending records: they leave the lookup table and are never
 * written (their frames stay as unreferenced bytes in the pack).  For what
 * turned out to be wrong. */
void store_writer_abandon(store_writer *w);
/* Sync, then close (NULL is a no-op): the sync's error, if any. */
cltfs_err store_writer_close(store_writer *w);

#endif
