# cython: language_level=3
"""C-level surface of the shared stick table (``_stick.pyx``; docs/stick-table.md).

The relay engine ``cimport``s these to look up and update entries on the connection-setup
path without the GIL, from any of its threads, while the worker processes use the same
mapping. A :class:`Table` (the Python object) owns the mapping; ``table.shm`` is the handle
the functions take. Keep a reference to the Table for as long as a thread may use its
handle (a reload can replace a backend's Table: release the old one only once no thread
holds its handle).

Keys are client ids (or user names, or source addresses) as bytes: ``stick_digest`` turns
one into the 128-bit keyed digest the entries are keyed on. Servers are 32-bit ids, never 0
(``fastmqtt.stick.server_id(name)``); 0 means "no entry". Times are CLOCK_MONOTONIC
milliseconds (``stick_now_ms``), the clock every process on the machine shares.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef struct StickDigest:
    uint64_t lo              # digest bytes 0..7, little-endian
    uint64_t hi              # digest bytes 8..15


cdef struct StickShm:
    # Process-local view of one mapped table; the geometry is read from its header once.
    uint8_t *base            # start of the mapping (the header)
    uint64_t nbuckets
    uint64_t bucket_size     # bytes per bucket: its header, then `ways` entries
    uint64_t rows_offset     # live counts per worker: u16[nbuckets * ways][workers]
    uint32_t ways
    uint32_t workers         # live-count columns (one per worker process)
    uint32_t worker          # this process's column
    uint32_t pid             # this process: the owner written into bucket locks
    uint64_t keyed[8]        # BLAKE2b chaining value after the key block


# Digest of key[0:n] (keyed BLAKE2b, 16-byte output, the table's own random key).
cdef void stick_digest(const StickShm *t, const uint8_t *key, size_t n,
                       StickDigest *out) noexcept nogil

cdef uint64_t stick_now_ms() noexcept nogil

# The server id stuck to the digest, or 0 when none (unknown or expired). Never blocks on a
# writer: a seqlock read, falling back to the bucket locks only if a writer died mid-update.
cdef uint32_t stick_get(StickShm *t, const StickDigest *d, uint64_t now_ms) noexcept nogil

# Stick the digest to ``server`` (new entry, or the client moved). False when both of its
# buckets are full of entries with live connections (the new entry is then not kept).
cdef bint stick_put(StickShm *t, const StickDigest *d, uint32_t server,
                    uint64_t now_ms) noexcept nogil

# A connection for the digest is live in this process / ended. False when there is no
# entry (or, for disconnected, no live connection of this process on it): nothing changed.
cdef bint stick_connected(StickShm *t, const StickDigest *d, uint64_t now_ms) noexcept nogil
cdef bint stick_disconnected(StickShm *t, const StickDigest *d,
                             uint64_t now_ms) noexcept nogil

# Drop the digest's entry (live or not); False when there was none.
cdef bint stick_remove(StickShm *t, const StickDigest *d) noexcept nogil


cdef class Table:
    cdef StickShm shm
    cdef Py_buffer view      # the mapping, held while the Table lives
    cdef bint has_view
    cdef object mapping      # the object exporting the buffer (an mmap)
    cdef readonly int fd     # the backing file (the twin locks ranges of it; unused here)
