# cython: language_level=3
"""The stick table's entries in shared memory: one mapping used by every worker process and
by the relay engine's threads (docs/stick-table.md says why it is built this way).

Layout (all fields native-endian, every offset aligned to its width):

    header      HEADER_SIZE bytes: magic, version, geometry, expire, the digest key
    buckets     nbuckets x (BUCKET_HEADER + ways x ENTRY_SIZE)
                  bucket header: u64 lock word (low 32 bits: owner pid, 0 = free;
                                 high 32 bits: sequence, odd while held)
                  entry: u64 digest lo, u64 digest hi, u64 stamp (ms), u32 server, u32 live
    live rows   u16[nbuckets * ways][workers]: each worker's live connections per entry

A key may live in either of two buckets (digest lo and hi modulo nbuckets); a new one goes
to the emptier. Writers take both buckets' locks in index order; readers take none (a
seqlock read of one bucket at a time). A lock whose owner died is taken over and its
bucket emptied, since the dead writer may have left it half-written.

``stick_file.py`` creates, sizes and validates the mapping; ``stick.py`` gives it client
ids and server names. ``_stick_py.py`` is the plain-Python twin: same names, same order,
the same bytes in the table after the same operations (tests/unit/test_stick_properties.py).
"""

cimport cython
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport ESRCH, errno
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset
from posix.signal cimport kill
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport getpid

cdef extern from "<sched.h>" nogil:
    int sched_yield()

# Shared-memory accesses: relaxed atomics for fields (a seqlock reader may race a writer and
# must see whole values), acquire/release on the lock word, a pause hint while spinning.
# BLAKE2b's constants (RFC 7693).
cdef extern from *:
    """
    static inline uint64_t fm_stk_ld64(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline uint64_t fm_stk_ld64_acquire(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline uint32_t fm_stk_ld32(const uint32_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline uint16_t fm_stk_ld16(const uint16_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void fm_stk_st64(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    static inline void fm_stk_st32(uint32_t *p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    static inline void fm_stk_st16(uint16_t *p, uint16_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    /* Take the lock word from `seen` to `want`; a release fence after it orders the
       entry writes that follow after the odd sequence for any seqlock reader. */
    static inline int fm_stk_take(uint64_t *p, uint64_t seen, uint64_t want) {
        if (!__atomic_compare_exchange_n(p, &seen, want, 0, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED))
            return 0;
        __atomic_thread_fence(__ATOMIC_RELEASE);
        return 1;
    }
    static inline void fm_stk_release(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline void fm_stk_fence_acquire(void) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
    }
    static inline void fm_stk_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    static const uint64_t fm_b2_iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
        0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
        0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};
    static const uint8_t fm_b2_sigma[10][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0}};
    """
    uint64_t fm_stk_ld64(const uint64_t *p) noexcept nogil
    uint64_t fm_stk_ld64_acquire(const uint64_t *p) noexcept nogil
    uint32_t fm_stk_ld32(const uint32_t *p) noexcept nogil
    uint16_t fm_stk_ld16(const uint16_t *p) noexcept nogil
    void fm_stk_st64(uint64_t *p, uint64_t v) noexcept nogil
    void fm_stk_st32(uint32_t *p, uint32_t v) noexcept nogil
    void fm_stk_st16(uint16_t *p, uint16_t v) noexcept nogil
    bint fm_stk_take(uint64_t *p, uint64_t seen, uint64_t want) noexcept nogil
    void fm_stk_release(uint64_t *p, uint64_t v) noexcept nogil
    void fm_stk_fence_acquire() noexcept nogil
    void fm_stk_pause() noexcept nogil
    const uint64_t fm_b2_iv[8]
    const uint8_t fm_b2_sigma[10][16]


# The layout; _stick_py.py has the same numbers (a test compares them).
cdef enum:
    HEADER_SIZE = 4096
    H_MAGIC = 0           # 8 bytes
    H_VERSION = 8         # u32
    H_HEADER_SIZE = 12    # u32
    H_WAYS = 16           # u32
    H_WORKERS = 20        # u32
    H_NBUCKETS = 24       # u64
    H_EXPIRE_MS = 32      # u64, changed in place by a reload
    H_SIZE = 40           # u64, the configured size
    H_KEY = 48            # 16 bytes: the digest key
    H_BOOT_ID = 64        # 16 bytes: the boot the stamps belong to
    H_BYTE_ORDER = 80     # u64 BYTE_ORDER_MARK as this machine stores it
    H_ENTRY_SIZE = 88     # u32
    H_BUCKET_HEADER = 92  # u32
    BUCKET_HEADER = 32
    ENTRY_SIZE = 32
    E_LO = 0
    E_HI = 8
    E_STAMP = 16
    E_SERVER = 24
    E_LIVE = 28
    KEY_SIZE = 16
    DIGEST_SIZE = 16
    MAX_WAYS = 8
    MAX_WORKERS = 1024
    ROW_MAX = 65535       # live connections of one key counted per worker
    SPINS = 64            # pauses before a waiter yields and checks the owner
    READ_TRIES = 64       # seqlock attempts before a reader takes the locks

VERSION = 1
MAGIC = b"FMQSTICK"
BYTE_ORDER_MARK = 0x0102030405060708

cdef uint64_t SEQ_ONE = 1ULL << 32
cdef uint64_t PID_MASK = 0xFFFFFFFFULL


# -- geometry ---------------------------------------------------------------------------------

def geometry(size: int, workers: int) -> tuple:
    """(ways, nbuckets) for ``size`` entries: buckets of 8, fewer ways for tiny tables."""
    if not 1 <= size <= 2**40 or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"size 1..2**40 and workers 1..{MAX_WORKERS}, got {size}, {workers}")
    ways = min(MAX_WAYS, size)
    return ways, -(-size // ways)


def table_bytes(ways: int, nbuckets: int, workers: int) -> tuple:
    """(offset of the live rows, bytes of the whole table) for a geometry."""
    buckets_end = HEADER_SIZE + nbuckets * (BUCKET_HEADER + ways * ENTRY_SIZE)
    rows = -(-buckets_end // 64) * 64
    total = rows + nbuckets * ways * workers * 2
    return rows, -(-total // 4096) * 4096


# -- BLAKE2b (RFC 7693), keyed, 16-byte output ---------------------------------------------

cdef inline uint64_t _rotr(uint64_t x, int r) noexcept nogil:
    return (x >> r) | (x << (64 - r))


cdef inline uint64_t _le64(const uint8_t *p) noexcept nogil:
    # p[0:8] is in bounds: every caller passes a full 128-byte block or a 16-byte digest
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16)
            | (<uint64_t>p[3] << 24) | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40)
            | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56))


cdef inline void _put_le64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (8 * i))


cdef inline void _g(uint64_t *v, int a, int b, int c, int d, uint64_t x,
                    uint64_t y) noexcept nogil:
    v[a] = v[a] + v[b] + x
    v[d] = _rotr(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 63)


cdef void _compress(uint64_t *h, const uint8_t *block, uint64_t t, bint last) noexcept nogil:
    cdef uint64_t v[16]
    cdef uint64_t m[16]
    cdef const uint8_t *s
    cdef int i, r
    for i in range(16):
        m[i] = _le64(block + 8 * i)
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = fm_b2_iv[i]
    v[12] ^= t  # the byte counter's high word stays 0: keys are far below 2**64 bytes
    if last:
        v[14] = ~v[14]
    for r in range(12):
        s = fm_b2_sigma[r % 10]
        _g(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _g(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _g(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _g(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _g(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _g(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _g(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _g(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


cdef void _key_block(const uint8_t *key, uint64_t *h, bint last) noexcept nogil:
    # h = the parameter block for a 16-byte key and output, then the key's padded block
    cdef uint8_t block[128]
    cdef int i
    memset(block, 0, 128)
    for i in range(KEY_SIZE):
        block[i] = key[i]
    for i in range(8):
        h[i] = fm_b2_iv[i]
    h[0] ^= 0x01010000 | (KEY_SIZE << 8) | DIGEST_SIZE
    _compress(h, block, 128, last)


cdef void stick_digest(const StickShm *t, const uint8_t *key, size_t n,
                       StickDigest *out) noexcept nogil:
    cdef uint64_t h[8]
    cdef uint8_t block[128]
    cdef size_t done = 0, i
    cdef uint64_t counter = 128
    if n == 0:  # the key block is the last one
        _key_block(t.base + H_KEY, h, True)
    else:
        for i in range(8):
            h[i] = t.keyed[i]
        while n - done > 128:
            counter += 128
            _compress(h, key + done, counter, False)
            done += 128
        memset(block, 0, 128)
        for i in range(n - done):
            block[i] = key[done + i]
        counter += n - done
        _compress(h, block, counter, True)
    out.lo = h[0]
    out.hi = h[1]


cdef uint64_t stick_now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>ts.tv_nsec // 1000000


# -- addressing -------------------------------------------------------------------------------

cdef inline uint64_t *_word(const StickShm *t, uint64_t b) noexcept nogil:
    return <uint64_t *>(t.base + HEADER_SIZE + b * t.bucket_size)


cdef inline uint8_t *_entry(const StickShm *t, uint64_t b, uint32_t k) noexcept nogil:
    return t.base + HEADER_SIZE + b * t.bucket_size + BUCKET_HEADER + k * ENTRY_SIZE


cdef inline uint16_t *_row(const StickShm *t, uint64_t b, uint32_t k) noexcept nogil:
    return <uint16_t *>(t.base + t.rows_offset) + (b * t.ways + k) * t.workers


cdef inline uint64_t *_f64(uint8_t *e, int field) noexcept nogil:
    return <uint64_t *>(e + field)


cdef inline uint32_t *_f32(uint8_t *e, int field) noexcept nogil:
    return <uint32_t *>(e + field)


cdef inline uint64_t _expire_ms(const StickShm *t) noexcept nogil:
    return fm_stk_ld64(<uint64_t *>(t.base + H_EXPIRE_MS))


cdef inline bint _expired(uint64_t stamp, uint32_t live, uint64_t expire,
                          uint64_t now) noexcept nogil:
    # idle for ``expire`` or longer; a stamp ahead of ``now`` (another process's clock
    # read a moment later) is not expired
    return live == 0 and now >= stamp and now - stamp >= expire


# -- locks ------------------------------------------------------------------------------------

cdef bint _owner_dead(uint32_t pid) noexcept nogil:
    return kill(<int>pid, 0) == -1 and errno == ESRCH


cdef void _discard(StickShm *t, uint64_t b) noexcept nogil:
    # The lock's owner died holding it: the bucket may be half-written, so its entries go.
    cdef uint32_t k
    for k in range(t.ways):
        _clear(t, b, k)


cdef void _lock(StickShm *t, uint64_t b, uint32_t dead) noexcept nogil:
    # Spin, then yield, until the word is free; an owner that no longer exists (or is
    # ``dead``, a pid the caller knows is gone) loses the lock and its bucket's entries.
    cdef uint64_t *w = _word(t, b)
    cdef uint64_t seen
    cdef uint32_t owner
    cdef unsigned spins = 0
    while True:
        seen = fm_stk_ld64(w)
        owner = <uint32_t>(seen & PID_MASK)
        if owner == 0:
            if fm_stk_take(w, seen, ((seen & ~PID_MASK) + SEQ_ONE) | t.pid):
                return
            continue
        if owner == dead or (spins >= SPINS and spins % SPINS == 0 and owner != t.pid
                             and _owner_dead(owner)):
            if fm_stk_take(w, seen, ((seen & ~PID_MASK) + SEQ_ONE) | t.pid):
                _discard(t, b)
                return
            continue
        spins += 1
        if spins < SPINS:
            fm_stk_pause()
        else:
            sched_yield()


cdef inline void _unlock(StickShm *t, uint64_t b) noexcept nogil:
    cdef uint64_t *w = _word(t, b)
    fm_stk_release(w, (fm_stk_ld64(w) & ~PID_MASK) + SEQ_ONE)


cdef inline void _lock2(StickShm *t, uint64_t b1, uint64_t b2) noexcept nogil:
    # in index order, so two writers never wait for each other crosswise
    if b1 == b2:
        _lock(t, b1, 0)
    elif b1 < b2:
        _lock(t, b1, 0)
        _lock(t, b2, 0)
    else:
        _lock(t, b2, 0)
        _lock(t, b1, 0)


cdef inline void _unlock2(StickShm *t, uint64_t b1, uint64_t b2) noexcept nogil:
    _unlock(t, b1)
    if b2 != b1:
        _unlock(t, b2)


# -- reading a bucket without its lock --------------------------------------------------------

cdef struct _Slot:
    uint64_t lo
    uint64_t hi
    uint64_t stamp
    uint32_t server
    uint32_t live


cdef void _copy_slots(const StickShm *t, uint64_t b, _Slot *out) noexcept nogil:
    cdef uint32_t k
    cdef uint8_t *e
    for k in range(t.ways):
        e = _entry(t, b, k)
        out[k].lo = fm_stk_ld64(_f64(e, E_LO))
        out[k].hi = fm_stk_ld64(_f64(e, E_HI))
        out[k].stamp = fm_stk_ld64(_f64(e, E_STAMP))
        out[k].server = fm_stk_ld32(_f32(e, E_SERVER))
        out[k].live = fm_stk_ld32(_f32(e, E_LIVE))


cdef void _read_bucket(StickShm *t, uint64_t b, _Slot *out) noexcept nogil:
    # A seqlock read: copy the entries between two equal, even readings of the lock word.
    # A writer that stays (or died) in the way sends the reader through the lock instead.
    cdef uint64_t *w = _word(t, b)
    cdef uint64_t before
    cdef int _attempt
    for _attempt in range(READ_TRIES):
        before = fm_stk_ld64_acquire(w)
        if before & PID_MASK:
            fm_stk_pause()
            continue
        _copy_slots(t, b, out)
        fm_stk_fence_acquire()
        if fm_stk_ld64(w) == before:
            return
    _lock(t, b, 0)
    _copy_slots(t, b, out)
    _unlock(t, b)


cdef int _find_slot(const _Slot *slots, uint32_t ways, const StickDigest *d) noexcept nogil:
    cdef uint32_t k
    for k in range(ways):
        if slots[k].server != 0 and slots[k].lo == d.lo and slots[k].hi == d.hi:
            return <int>k
    return -1


cdef bint _any_expired(const _Slot *slots, uint32_t ways, uint64_t expire,
                       uint64_t now) noexcept nogil:
    cdef uint32_t k
    for k in range(ways):
        if slots[k].server != 0 and _expired(slots[k].stamp, slots[k].live, expire, now):
            return True
    return False


cdef bint _peek(StickShm *t, const StickDigest *d, uint64_t now, _Slot *found) noexcept nogil:
    # The digest's live (unexpired) entry, copied into ``found``.
    cdef _Slot slots[MAX_WAYS]
    cdef uint64_t b = d.lo % t.nbuckets, expire = _expire_ms(t)
    cdef int k, _side
    for _side in range(2):
        _read_bucket(t, b, slots)
        k = _find_slot(slots, t.ways, d)
        if k >= 0:
            found[0] = slots[k]
            return not _expired(slots[k].stamp, slots[k].live, expire, now)
        if d.hi % t.nbuckets == b:
            break
        b = d.hi % t.nbuckets
    return False


# -- writing, under the bucket locks ---------------------------------------------------------

cdef void _clear(StickShm *t, uint64_t b, uint32_t k) noexcept nogil:
    cdef uint8_t *e = _entry(t, b, k)
    cdef uint16_t *row = _row(t, b, k)
    cdef uint32_t w
    fm_stk_st64(_f64(e, E_LO), 0)
    fm_stk_st64(_f64(e, E_HI), 0)
    fm_stk_st64(_f64(e, E_STAMP), 0)
    fm_stk_st32(_f32(e, E_SERVER), 0)
    fm_stk_st32(_f32(e, E_LIVE), 0)
    for w in range(t.workers):
        fm_stk_st16(&row[w], 0)


cdef int _find(const StickShm *t, uint64_t b, const StickDigest *d) noexcept nogil:
    cdef uint32_t k
    cdef uint8_t *e
    for k in range(t.ways):
        e = _entry(t, b, k)
        if (fm_stk_ld32(_f32(e, E_SERVER)) != 0 and fm_stk_ld64(_f64(e, E_LO)) == d.lo
                and fm_stk_ld64(_f64(e, E_HI)) == d.hi):
            return <int>k
    return -1


cdef uint8_t *_locate(StickShm *t, const StickDigest *d, uint64_t *bucket,
                      uint32_t *slot) noexcept nogil:
    # The digest's entry (expired or not) in either of its buckets, or NULL.
    cdef uint64_t b1 = d.lo % t.nbuckets, b2 = d.hi % t.nbuckets
    cdef int k = _find(t, b1, d)
    bucket[0] = b1
    if k < 0 and b2 != b1:
        k = _find(t, b2, d)
        bucket[0] = b2
    if k < 0:
        return NULL
    slot[0] = <uint32_t>k
    return _entry(t, bucket[0], slot[0])


cdef uint32_t _occupied(StickShm *t, uint64_t b, uint64_t expire, uint64_t now) noexcept nogil:
    cdef uint32_t k, n = 0
    cdef uint8_t *e
    for k in range(t.ways):
        e = _entry(t, b, k)
        if fm_stk_ld32(_f32(e, E_SERVER)) != 0 and not _expired(
            fm_stk_ld64(_f64(e, E_STAMP)), fm_stk_ld32(_f32(e, E_LIVE)), expire, now
        ):
            n += 1
    return n


cdef int _free_slot(StickShm *t, uint64_t b, uint64_t expire, uint64_t now) noexcept nogil:
    # an empty slot, else an expired entry's (expired ones stay visible to purge meanwhile)
    cdef uint32_t k
    cdef uint8_t *e
    cdef int expired = -1
    for k in range(t.ways):
        e = _entry(t, b, k)
        if fm_stk_ld32(_f32(e, E_SERVER)) == 0:
            return <int>k
        if expired < 0 and _expired(fm_stk_ld64(_f64(e, E_STAMP)), fm_stk_ld32(_f32(e, E_LIVE)),
                                    expire, now):
            expired = <int>k
    return expired


cdef uint8_t *_place(StickShm *t, const StickDigest *d, uint64_t now, uint64_t *bucket,
                     uint32_t *slot) noexcept nogil:
    # Where a new entry goes, emptied: a free (or expired) slot of the emptier bucket (the
    # digest's lo bucket on a tie), else the least recently used idle entry of both (lo
    # bucket first); NULL when every entry is live.
    cdef uint64_t lo = d.lo % t.nbuckets, hi = d.hi % t.nbuckets, expire = _expire_ms(t)
    cdef uint64_t first = lo, second = hi, b, oldest = 0
    cdef uint8_t *e
    cdef uint32_t k
    cdef int _side, free
    cdef bint found = False
    if hi != lo and _occupied(t, hi, expire, now) < _occupied(t, lo, expire, now):
        first, second = hi, lo
    free = _free_slot(t, first, expire, now)
    bucket[0] = first
    if free < 0 and second != first:
        free = _free_slot(t, second, expire, now)
        bucket[0] = second
    if free >= 0:
        slot[0] = <uint32_t>free
    else:
        b = lo
        for _side in range(2):
            for k in range(t.ways):
                e = _entry(t, b, k)
                if fm_stk_ld32(_f32(e, E_LIVE)) == 0 and (
                    not found or fm_stk_ld64(_f64(e, E_STAMP)) < oldest
                ):
                    found = True
                    oldest = fm_stk_ld64(_f64(e, E_STAMP))
                    bucket[0] = b
                    slot[0] = k
            if hi == lo:
                break
            b = hi
        if not found:
            return NULL
    _clear(t, bucket[0], slot[0])
    return _entry(t, bucket[0], slot[0])


cdef bint stick_put(StickShm *t, const StickDigest *d, uint32_t server,
                    uint64_t now_ms) noexcept nogil:
    cdef uint64_t b1 = d.lo % t.nbuckets, b2 = d.hi % t.nbuckets, b
    cdef uint32_t k
    cdef uint8_t *e
    if server == 0:
        return False
    _lock2(t, b1, b2)
    e = _locate(t, d, &b, &k)
    if e == NULL:
        e = _place(t, d, now_ms, &b, &k)
        if e == NULL:
            _unlock2(t, b1, b2)
            return False
        fm_stk_st64(_f64(e, E_LO), d.lo)
        fm_stk_st64(_f64(e, E_HI), d.hi)
    fm_stk_st32(_f32(e, E_SERVER), server)
    fm_stk_st64(_f64(e, E_STAMP), now_ms)
    _unlock2(t, b1, b2)
    return True


cdef bint stick_connected(StickShm *t, const StickDigest *d, uint64_t now_ms) noexcept nogil:
    cdef uint64_t b1 = d.lo % t.nbuckets, b2 = d.hi % t.nbuckets, b
    cdef uint32_t k, live
    cdef uint16_t *cell
    cdef uint8_t *e
    _lock2(t, b1, b2)
    e = _locate(t, d, &b, &k)
    if e == NULL:
        _unlock2(t, b1, b2)
        return False
    live = fm_stk_ld32(_f32(e, E_LIVE))
    if _expired(fm_stk_ld64(_f64(e, E_STAMP)), live, _expire_ms(t), now_ms):
        _unlock2(t, b1, b2)
        return False
    cell = &_row(t, b, k)[t.worker]
    if fm_stk_ld16(cell) < ROW_MAX:
        fm_stk_st16(cell, fm_stk_ld16(cell) + 1)
        fm_stk_st32(_f32(e, E_LIVE), live + 1)
    fm_stk_st64(_f64(e, E_STAMP), now_ms)
    _unlock2(t, b1, b2)
    return True


cdef bint stick_disconnected(StickShm *t, const StickDigest *d,
                             uint64_t now_ms) noexcept nogil:
    cdef uint64_t b1 = d.lo % t.nbuckets, b2 = d.hi % t.nbuckets, b
    cdef uint32_t k, live
    cdef uint16_t *cell
    cdef uint8_t *e
    _lock2(t, b1, b2)
    e = _locate(t, d, &b, &k)
    if e == NULL:
        _unlock2(t, b1, b2)
        return False
    cell = &_row(t, b, k)[t.worker]
    if fm_stk_ld16(cell) == 0:  # none of ours: a restart or a forget came in between
        _unlock2(t, b1, b2)
        return False
    fm_stk_st16(cell, fm_stk_ld16(cell) - 1)
    live = fm_stk_ld32(_f32(e, E_LIVE)) - 1
    fm_stk_st32(_f32(e, E_LIVE), live)
    if live == 0:
        fm_stk_st64(_f64(e, E_STAMP), now_ms)  # expiry counts from the last disconnect
    _unlock2(t, b1, b2)
    return True


cdef bint stick_remove(StickShm *t, const StickDigest *d) noexcept nogil:
    cdef uint64_t b1 = d.lo % t.nbuckets, b2 = d.hi % t.nbuckets, b
    cdef uint32_t k
    cdef bint found
    _lock2(t, b1, b2)
    found = _locate(t, d, &b, &k) != NULL
    if found:
        _clear(t, b, k)
    _unlock2(t, b1, b2)
    return found


cdef uint32_t stick_get(StickShm *t, const StickDigest *d, uint64_t now_ms) noexcept nogil:
    cdef _Slot found
    return found.server if _peek(t, d, now_ms, &found) else 0


# -- the Python surface -----------------------------------------------------------------------

cdef int _digest_arg(bytes digest, StickDigest *d) except -1:
    cdef const uint8_t *p
    if PyBytes_GET_SIZE(digest) != DIGEST_SIZE:
        raise ValueError(f"a digest is {DIGEST_SIZE} bytes, got {PyBytes_GET_SIZE(digest)}")
    p = <const uint8_t *>PyBytes_AS_STRING(digest)
    d.lo = _le64(p)
    d.hi = _le64(p + 8)
    return 0


cdef bytes _digest_bytes(uint64_t lo, uint64_t hi):
    cdef uint8_t out[DIGEST_SIZE]
    _put_le64(out, lo)
    _put_le64(out + 8, hi)
    return PyBytes_FromStringAndSize(<char *>out, DIGEST_SIZE)


cdef uint64_t _header_u64(const uint8_t *base, int offset) noexcept nogil:
    return (<const uint64_t *>(base + offset))[0]


cdef uint32_t _header_u32(const uint8_t *base, int offset) noexcept nogil:
    return (<const uint32_t *>(base + offset))[0]


@cython.final
cdef class Table:
    """One stick table mapped by this process (``worker``: its live-count column).

    ``mapping`` is a writable buffer (an mmap of the whole file) whose header
    ``stick_file.format_header`` wrote; ``fd`` is the file (unused here: the twin locks ranges
    of it). Digests are 16 bytes (``digest``), servers ids 1..2**32-1, times milliseconds.
    """

    def __cinit__(self):
        self.has_view = False
        self.fd = -1

    def __init__(self, mapping, int fd, int worker):
        cdef const uint8_t *base
        cdef uint64_t nbuckets
        cdef uint32_t ways, workers
        if self.has_view:
            raise TypeError("a Table is initialised once")
        PyObject_GetBuffer(mapping, &self.view, PyBUF_WRITABLE)
        self.has_view = True
        self.mapping = mapping
        self.fd = fd
        base = <const uint8_t *>self.view.buf
        if self.view.len < HEADER_SIZE or (<uintptr_t>base) % 64:
            raise ValueError("a stick table mapping starts page-aligned and holds its header")
        ways = _header_u32(base, H_WAYS)
        workers = _header_u32(base, H_WORKERS)
        nbuckets = _header_u64(base, H_NBUCKETS)
        if (_header_u32(base, H_HEADER_SIZE) != HEADER_SIZE
                or _header_u32(base, H_ENTRY_SIZE) != ENTRY_SIZE
                or _header_u32(base, H_BUCKET_HEADER) != BUCKET_HEADER
                or not 1 <= ways <= MAX_WAYS or not 1 <= workers <= MAX_WORKERS
                or not 1 <= nbuckets <= 2**40):
            raise ValueError("not a stick table of this layout")
        rows, total = table_bytes(ways, nbuckets, workers)
        if self.view.len < total:
            raise ValueError(f"stick table mapping holds {self.view.len} of {total} bytes")
        if worker < 0 or <uint32_t>worker >= workers:
            raise ValueError(f"worker {worker} outside 0..{workers - 1}")
        self.shm.base = <uint8_t *>self.view.buf
        self.shm.nbuckets = nbuckets
        self.shm.ways = ways
        self.shm.workers = workers
        self.shm.bucket_size = BUCKET_HEADER + ways * ENTRY_SIZE
        self.shm.rows_offset = rows
        self.shm.worker = worker
        self.shm.pid = <uint32_t>getpid()
        _key_block(self.shm.base + H_KEY, self.shm.keyed, False)

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)

    @property
    def nbuckets(self) -> int:
        return self.shm.nbuckets

    @property
    def ways(self) -> int:
        return self.shm.ways

    @property
    def workers(self) -> int:
        return self.shm.workers

    @property
    def worker(self) -> int:
        return self.shm.worker

    def digest(self, bytes key not None) -> bytes:
        cdef StickDigest d
        stick_digest(&self.shm, <const uint8_t *>PyBytes_AS_STRING(key),
                     <size_t>PyBytes_GET_SIZE(key), &d)
        return _digest_bytes(d.lo, d.hi)

    def get(self, bytes digest not None, uint64_t now_ms) -> int:
        cdef StickDigest d
        _digest_arg(digest, &d)
        return stick_get(&self.shm, &d, now_ms)

    def peek(self, bytes digest not None, uint64_t now_ms):
        """(server, live connections, stamp) of the digest's entry, or None."""
        cdef StickDigest d
        cdef _Slot found
        _digest_arg(digest, &d)
        if not _peek(&self.shm, &d, now_ms, &found):
            return None
        return found.server, found.live, found.stamp

    def put(self, bytes digest not None, uint32_t server, uint64_t now_ms) -> bool:
        cdef StickDigest d
        _digest_arg(digest, &d)
        return stick_put(&self.shm, &d, server, now_ms)

    def connected(self, bytes digest not None, uint64_t now_ms) -> bool:
        cdef StickDigest d
        _digest_arg(digest, &d)
        return stick_connected(&self.shm, &d, now_ms)

    def disconnected(self, bytes digest not None, uint64_t now_ms) -> bool:
        cdef StickDigest d
        _digest_arg(digest, &d)
        return stick_disconnected(&self.shm, &d, now_ms)

    def remove(self, bytes digest not None) -> bool:
        cdef StickDigest d
        _digest_arg(digest, &d)
        return stick_remove(&self.shm, &d)

    def count(self, uint64_t now_ms) -> int:
        """Entries neither empty nor expired (a scan without locks)."""
        cdef _Slot slots[MAX_WAYS]
        cdef uint64_t b, n = 0, expire = _expire_ms(&self.shm)
        cdef uint32_t k
        with nogil:
            for b in range(self.shm.nbuckets):
                _read_bucket(&self.shm, b, slots)
                for k in range(self.shm.ways):
                    n += slots[k].server != 0 and not _expired(
                        slots[k].stamp, slots[k].live, expire, now_ms
                    )
        return n

    def forget_server(self, uint32_t server, uint64_t now_ms) -> int:
        """Drop every entry of ``server``; returns how many were unexpired."""
        cdef uint64_t b, n = 0, expire = _expire_ms(&self.shm)
        cdef uint32_t k
        cdef uint8_t *e
        with nogil:
            for b in range(self.shm.nbuckets):
                _lock(&self.shm, b, 0)
                for k in range(self.shm.ways):
                    e = _entry(&self.shm, b, k)
                    if server != 0 and fm_stk_ld32(_f32(e, E_SERVER)) == server:
                        n += not _expired(fm_stk_ld64(_f64(e, E_STAMP)),
                                          fm_stk_ld32(_f32(e, E_LIVE)), expire, now_ms)
                        _clear(&self.shm, b, k)
                _unlock(&self.shm, b)
        return n

    def purge(self, uint64_t now_ms, first: int = 0, count: int | None = None) -> int:
        """Empty the expired entries of ``count`` buckets from ``first`` (all by default);
        returns how many. A bucket with nothing to purge is read, not locked."""
        cdef _Slot slots[MAX_WAYS]
        cdef uint64_t b, n = 0, expire = _expire_ms(&self.shm)
        cdef uint64_t start = min(first, self.shm.nbuckets)
        cdef uint64_t end = self.shm.nbuckets if count is None else min(
            start + count, self.shm.nbuckets
        )
        cdef uint32_t k
        cdef uint8_t *e
        with nogil:
            for b in range(start, end):
                _read_bucket(&self.shm, b, slots)
                if not _any_expired(slots, self.shm.ways, expire, now_ms):
                    continue
                _lock(&self.shm, b, 0)
                for k in range(self.shm.ways):
                    e = _entry(&self.shm, b, k)
                    if fm_stk_ld32(_f32(e, E_SERVER)) != 0 and _expired(
                        fm_stk_ld64(_f64(e, E_STAMP)), fm_stk_ld32(_f32(e, E_LIVE)),
                        expire, now_ms
                    ):
                        _clear(&self.shm, b, k)
                        n += 1
                _unlock(&self.shm, b)
        return n

    def recover_worker(self, uint32_t worker, uint32_t dead_pid, uint64_t now_ms) -> int:
        """A worker died: drop its live counts (the entries it alone held become idle now) and
        free the locks ``dead_pid`` held. Returns the connections subtracted."""
        cdef uint64_t b, n = 0
        cdef uint32_t k, live
        cdef uint16_t *cell
        cdef uint8_t *e
        if worker >= self.shm.workers:
            raise ValueError(f"worker {worker} outside 0..{self.shm.workers - 1}")
        with nogil:
            for b in range(self.shm.nbuckets):
                _lock(&self.shm, b, dead_pid)
                for k in range(self.shm.ways):
                    cell = &_row(&self.shm, b, k)[worker]
                    if fm_stk_ld16(cell) == 0:
                        continue
                    e = _entry(&self.shm, b, k)
                    live = fm_stk_ld32(_f32(e, E_LIVE)) - fm_stk_ld16(cell)
                    n += fm_stk_ld16(cell)
                    fm_stk_st16(cell, 0)
                    fm_stk_st32(_f32(e, E_LIVE), live)
                    if live == 0:
                        fm_stk_st64(_f64(e, E_STAMP), now_ms)
                _unlock(&self.shm, b)
        return n

    def restart(self, uint64_t now_ms, bint restamp) -> None:
        """Only while no other process maps the table (a fresh start): free every lock (their
        owners are gone; a held one empties its bucket), zero the live counts (no connection
        survived; the entries become idle now) and, after a reboot (``restamp``), restamp
        every entry, whose stamps were another boot's clock."""
        cdef uint64_t b, seen
        cdef uint64_t *w
        cdef uint32_t k
        cdef uint8_t *e
        cdef uint16_t *row
        with nogil:
            for b in range(self.shm.nbuckets):
                w = _word(&self.shm, b)
                seen = fm_stk_ld64(w)
                if seen & PID_MASK:
                    _discard(&self.shm, b)
                    fm_stk_st64(w, (seen & ~PID_MASK) + SEQ_ONE)
                for k in range(self.shm.ways):
                    e = _entry(&self.shm, b, k)
                    if fm_stk_ld32(_f32(e, E_SERVER)) == 0:
                        continue
                    if restamp or fm_stk_ld32(_f32(e, E_LIVE)) != 0:
                        fm_stk_st64(_f64(e, E_STAMP), now_ms)
                    fm_stk_st32(_f32(e, E_LIVE), 0)
                    row = _row(&self.shm, b, k)
                    memset(row, 0, self.shm.workers * sizeof(uint16_t))

    def entries(self, uint64_t now_ms) -> list:
        """Every unexpired entry as (digest, server, stamp, per-worker live counts)."""
        cdef uint64_t b, expire = _expire_ms(&self.shm)
        cdef uint32_t k, w, n
        cdef uint32_t ways = self.shm.ways, workers = self.shm.workers
        cdef _Slot slots[MAX_WAYS]
        cdef uint16_t *rows = <uint16_t *>PyMem_Malloc(ways * workers * sizeof(uint16_t))
        cdef list out = []
        if rows == NULL:
            raise MemoryError()
        try:
            for b in range(self.shm.nbuckets):
                with nogil:  # copy under the lock, build Python objects after it
                    _lock(&self.shm, b, 0)
                    _copy_slots(&self.shm, b, slots)
                    for n in range(ways * workers):
                        rows[n] = fm_stk_ld16(&_row(&self.shm, b, 0)[n])
                    _unlock(&self.shm, b)
                for k in range(ways):
                    if slots[k].server == 0 or _expired(slots[k].stamp, slots[k].live,
                                                        expire, now_ms):
                        continue
                    out.append((
                        _digest_bytes(slots[k].lo, slots[k].hi),
                        slots[k].server,
                        slots[k].stamp,
                        tuple([rows[k * workers + w] for w in range(workers)]),
                    ))
        finally:
            PyMem_Free(rows)
        return out

    def load(self, bytes digest not None, uint32_t server, uint64_t stamp, live,
             uint64_t now_ms) -> bool:
        """Copy an entry from another table (a resize): ``live`` holds its live counts per
        worker, cut or padded to this table's workers. False when it finds no room."""
        cdef StickDigest d
        cdef uint64_t b1, b2, b
        cdef uint32_t k, w, total = 0
        cdef uint32_t n = min(len(live), self.shm.workers)
        cdef uint16_t counts[MAX_WORKERS]
        cdef uint8_t *e
        cdef uint16_t *row
        _digest_arg(digest, &d)
        if server == 0:
            return False
        for w in range(n):
            counts[w] = min(live[w], ROW_MAX)
        b1 = d.lo % self.shm.nbuckets
        b2 = d.hi % self.shm.nbuckets
        with nogil:
            _lock2(&self.shm, b1, b2)
            e = _locate(&self.shm, &d, &b, &k)
            if e == NULL:
                e = _place(&self.shm, &d, now_ms, &b, &k)
            else:
                _clear(&self.shm, b, k)
            if e != NULL:
                row = _row(&self.shm, b, k)
                for w in range(n):
                    fm_stk_st16(&row[w], counts[w])
                    total += counts[w]
                fm_stk_st64(_f64(e, E_LO), d.lo)
                fm_stk_st64(_f64(e, E_HI), d.hi)
                fm_stk_st64(_f64(e, E_STAMP), stamp)
                fm_stk_st32(_f32(e, E_SERVER), server)
                fm_stk_st32(_f32(e, E_LIVE), total)
            _unlock2(&self.shm, b1, b2)
        return e != NULL

    def hold_for_test(self, uint64_t bucket) -> None:
        """Take a bucket's lock and keep it, as a writer killed mid-update would."""
        if bucket >= self.shm.nbuckets:
            raise IndexError(f"bucket {bucket} outside 0..{self.shm.nbuckets - 1}")
        _lock(&self.shm, bucket, 0)


LAYOUT = {
    "HEADER_SIZE": HEADER_SIZE, "H_MAGIC": H_MAGIC, "H_VERSION": H_VERSION,
    "H_HEADER_SIZE": H_HEADER_SIZE, "H_WAYS": H_WAYS, "H_WORKERS": H_WORKERS,
    "H_NBUCKETS": H_NBUCKETS, "H_EXPIRE_MS": H_EXPIRE_MS, "H_SIZE": H_SIZE, "H_KEY": H_KEY,
    "H_BOOT_ID": H_BOOT_ID, "H_BYTE_ORDER": H_BYTE_ORDER, "H_ENTRY_SIZE": H_ENTRY_SIZE,
    "H_BUCKET_HEADER": H_BUCKET_HEADER, "BUCKET_HEADER": BUCKET_HEADER,
    "ENTRY_SIZE": ENTRY_SIZE, "KEY_SIZE": KEY_SIZE, "DIGEST_SIZE": DIGEST_SIZE,
    "MAX_WAYS": MAX_WAYS, "MAX_WORKERS": MAX_WORKERS, "ROW_MAX": ROW_MAX,
}
