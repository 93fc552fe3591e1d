# Hot half of the balancer: xxh64 and a weighted Maglev lookup table over C arrays.
#
# The policies (round robin, leastconn, which table to use for which eligible set)
# live in balance.py; this module only hashes bytes and owns tables, so a lookup
# allocates nothing but the returned int. _balance_py.py is the plain-Python twin:
# same names, same order, same results (tests/unit/test_balance_properties.py).

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

# xxh64 primes (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md) and
# limits, as C constants so the compiler folds them.
cdef extern from *:
    """
    #define FM_P1 11400714785074694791ULL
    #define FM_P2 14029467366897019727ULL
    #define FM_P3 1609587929392839161ULL
    #define FM_P4 9650029242287828579ULL
    #define FM_P5 2870177450012600261ULL
    """
    const uint64_t P1 "FM_P1"
    const uint64_t P2 "FM_P2"
    const uint64_t P3 "FM_P3"
    const uint64_t P4 "FM_P4"
    const uint64_t P5 "FM_P5"

# A table entry is a server position or EMPTY; 2**31 - 1 bounds the table size.
cdef enum:
    EMPTY = -1
    MAX_SIZE = 2147483647
    MAX_SERVERS = 65535
    MAX_WEIGHT = 1048576


# -- bounded reader over the key bytes -------------------------------------------
# Each reader checks that its bytes are present before touching them and advances
# after; a short read returns 0 and moves nothing (callers test `cur.n` first, so
# this never happens, but no caller mistake can read past the end).

cdef struct _Cursor:
    const uint8_t *p
    Py_ssize_t n


cdef inline uint64_t _read_le(_Cursor *cur, int width) noexcept nogil:
    # little-endian unsigned of ``width`` bytes (4 or 8; constant at every call site)
    cdef uint64_t v = 0
    cdef int i
    if cur.n < width:
        return 0
    for i in range(width):
        v |= (<uint64_t>cur.p[i]) << (8 * i)
    cur.p += width
    cur.n -= width
    return v


cdef inline uint64_t _read_u8(_Cursor *cur) noexcept nogil:
    cdef uint64_t v
    if cur.n < 1:
        return 0
    v = cur.p[0]
    cur.p += 1
    cur.n -= 1
    return v


# -- xxh64 ------------------------------------------------------------------------

cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _round(uint64_t acc, uint64_t lane) noexcept nogil:
    acc += lane * P2
    return _rotl(acc, 31) * P1


cdef inline uint64_t _merge(uint64_t acc, uint64_t v) noexcept nogil:
    acc ^= _round(0, v)
    return acc * P1 + P4


cdef uint64_t _xxh64(_Cursor cur, uint64_t seed) noexcept nogil:
    cdef uint64_t total = <uint64_t>cur.n
    cdef uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1
    cdef uint64_t h
    if cur.n >= 32:
        while cur.n >= 32:
            v1 = _round(v1, _read_le(&cur, 8))
            v2 = _round(v2, _read_le(&cur, 8))
            v3 = _round(v3, _read_le(&cur, 8))
            v4 = _round(v4, _read_le(&cur, 8))
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(_merge(_merge(_merge(h, v1), v2), v3), v4)
    else:
        h = seed + P5
    h += total
    while cur.n >= 8:
        h ^= _round(0, _read_le(&cur, 8))
        h = _rotl(h, 27) * P1 + P4
    if cur.n >= 4:
        h ^= _read_le(&cur, 4) * P1
        h = _rotl(h, 23) * P2 + P3
    while cur.n > 0:
        h ^= _read_u8(&cur) * P5
        h = _rotl(h, 11) * P1
    h ^= h >> 33
    h *= P2
    h ^= h >> 29
    h *= P3
    return h ^ (h >> 32)


cdef uint64_t xxh64(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    return xxh64_seeded(p, n, 0)


cdef uint64_t xxh64_seeded(const uint8_t *p, Py_ssize_t n, uint64_t seed) noexcept nogil:
    cdef _Cursor cur
    cur.p = p
    cur.n = n
    return _xxh64(cur, seed)


cdef inline uint64_t _hash_bytes(bytes key):
    return xxh64(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


def hash64(bytes key not None) -> int:
    """xxh64 of ``key`` with seed 0 (the hash every fastmqtt process agrees on)."""
    return _hash_bytes(key)


# -- Maglev -------------------------------------------------------------------------

cdef inline uint64_t _mix(uint64_t h) noexcept nogil:
    # splitmix64 finalizer: a second, independent-looking hash of the server name
    # for the permutation step, so offset and skip are not correlated.
    h ^= h >> 30
    h *= 0xBF58476D1CE4E5B9ULL
    h ^= h >> 27
    h *= 0x94D049BB133111EBULL
    return h ^ (h >> 31)


cdef bint _is_prime(int64_t n) noexcept nogil:
    cdef int64_t d = 3
    if n < 2 or n % 2 == 0:
        return n == 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


cdef struct _Server:
    int64_t pos        # next candidate slot in this server's permutation
    int64_t skip       # permutation step, 1..size-1 (coprime with the prime size)
    int64_t weight
    int64_t target     # weighted turn-taking: claim a slot when iteration*weight >= target


cdef void _fill(int32_t *entries, _Server *servers, Py_ssize_t n,
                int64_t size, int64_t wmax) noexcept nogil:
    # Maglev population (Eisenbud et al., NSDI'16, Pseudocode 1) with Envoy's weighting:
    # every round the heaviest servers claim a slot, a server of weight w one round in
    # wmax/w. Each claim walks its permutation to the next free slot; the permutation
    # visits every slot (prime size), so the walk ends within `size` steps.
    cdef int64_t filled = 0, iteration = 1, c
    cdef Py_ssize_t i
    while filled < size:
        for i in range(n):
            if filled == size:
                break
            if servers[i].weight == 0 or iteration * servers[i].weight < servers[i].target:
                continue
            servers[i].target += wmax
            c = servers[i].pos
            while entries[c] != EMPTY:
                c += servers[i].skip
                if c >= size:
                    c -= size
            entries[c] = <int32_t>i
            filled += 1
            c += servers[i].skip
            servers[i].pos = c - size if c >= size else c
        iteration += 1


cdef int64_t _check_build(list hashes, list weights, Py_ssize_t size) except -1:
    cdef object h, w
    cdef int64_t wmax = 0
    if len(hashes) != len(weights):
        raise ValueError("name_hashes and weights differ in length")
    if len(hashes) > MAX_SERVERS:
        raise ValueError(f"at most {MAX_SERVERS} servers")
    if not 2 <= size <= MAX_SIZE or not _is_prime(size):
        raise ValueError(f"table size must be a prime below 2**31, got {size}")
    for h in hashes:
        if not isinstance(h, int) or not 0 <= h < 2**64:
            raise ValueError(f"name hash must be an int 0..2**64-1, got {h!r}")
    for w in weights:
        if not isinstance(w, int) or not 0 <= w <= MAX_WEIGHT:
            raise ValueError(f"weight must be an int 0..{MAX_WEIGHT}, got {w!r}")
        wmax = max(wmax, <int64_t>w)
    return wmax


@cython.final
cdef class MaglevTable:
    """Maglev lookup table: slot -> server position (or -1 when no server has weight)."""

    # attributes: see _balance.pxd

    def __cinit__(self):
        self.entries = NULL

    def __init__(self):
        raise TypeError("MaglevTable is built by maglev_build()")

    def __dealloc__(self):
        PyMem_Free(self.entries)

    @staticmethod
    cdef MaglevTable _new(Py_ssize_t size, Py_ssize_t servers):
        cdef MaglevTable t = MaglevTable.__new__(MaglevTable)
        cdef Py_ssize_t i
        t.entries = <int32_t *>PyMem_Malloc(<size_t>size * sizeof(int32_t))
        if t.entries == NULL:
            raise MemoryError()
        for i in range(size):
            t.entries[i] = EMPTY
        t.size = size
        t.servers = servers
        return t

    def lookup(self, bytes key not None) -> int:
        """Server position for ``key``: entry at hash64(key) % size."""
        return self.entries[_hash_bytes(key) % <uint64_t>self.size]

    def entry(self, Py_ssize_t slot) -> int:
        if not 0 <= slot < self.size:
            raise IndexError(f"slot {slot} outside 0..{self.size - 1}")
        return self.entries[slot]

    def walk(self, Py_ssize_t slot, bytes allowed not None) -> int:
        """First server at or after ``slot`` (wrapping) whose ``allowed[pos]`` is non-zero.

        Bounded loads and eligibility use this to move a key past full or unusable
        servers deterministically; -1 when no server in the table is allowed.
        """
        cdef const uint8_t *ok = <const uint8_t *>PyBytes_AS_STRING(allowed)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(allowed), step, s
        cdef int32_t e
        if not 0 <= slot < self.size:
            raise IndexError(f"slot {slot} outside 0..{self.size - 1}")
        for step in range(self.size):
            s = slot + step
            if s >= self.size:
                s -= self.size
            e = self.entries[s]
            if 0 <= e < n and ok[e]:
                return e
        return EMPTY

    def counts(self) -> list:
        """Slots held by each server position (weights show up here)."""
        cdef list out = [0] * self.servers
        cdef Py_ssize_t i
        for i in range(self.size):
            if self.entries[i] != EMPTY:
                out[self.entries[i]] += 1
        return out

    def to_list(self) -> list:
        return [self.entries[i] for i in range(self.size)]


def maglev_build(name_hashes, weights, Py_ssize_t size) -> MaglevTable:
    """Weighted Maglev table of ``size`` (a prime) slots over servers in the given order.

    ``name_hashes[i]`` (hash64 of the server name) seeds server i's permutation;
    ``weights[i]`` is its share of slots, 0 for none. Entries are positions in the
    lists, so callers that want order independence pass servers in a canonical order.
    """
    cdef list hashes = list(name_hashes), ws = list(weights)
    cdef int64_t wmax = _check_build(hashes, ws, size)
    cdef Py_ssize_t n = len(hashes), i
    cdef MaglevTable table = MaglevTable._new(size, n)
    cdef _Server *servers
    cdef uint64_t h
    if wmax == 0:
        return table
    servers = <_Server *>PyMem_Malloc(<size_t>n * sizeof(_Server))
    if servers == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            h = hashes[i]
            servers[i].pos = <int64_t>(h % <uint64_t>size)
            servers[i].skip = <int64_t>(_mix(h) % <uint64_t>(size - 1)) + 1
            servers[i].weight = ws[i]
            servers[i].target = 0
        with nogil:
            _fill(table.entries, servers, n, size, wmax)
    finally:
        PyMem_Free(servers)
    return table
