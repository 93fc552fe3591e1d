# cython: language_level=3
"""C-level surface of _choose.pyx: a backend's servers with their live state, and the
balancing policies of balance.py over C arrays, for the engine's fast path (_fastpath.pyx)."""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

from fastmqtt._stick cimport StickDigest, StickShm
from fastmqtt.includes.linux cimport pthread_mutex_t, sockaddr_storage, socklen_t


# Server states, in the order of backends.ServerState.
cdef enum:
    S_UP = 0
    S_DOWN = 1
    S_DRAIN = 2
    S_MAINT = 3

cdef enum:
    A_ROUNDROBIN = 0
    A_LEASTCONN = 1
    A_RANDOM = 2
    A_CONSISTENT = 3        # "consistent" and "source": Maglev over the key's hash
    NBUCKETS = 15           # metrics.LATENCY_BUCKETS and the +Inf slot

# What the balancer hashes (config.HASH_KEYS; "source" also for balance = "source").
cdef enum:
    H_CLIENT_ID = 0
    H_USERNAME = 1
    H_SOURCE = 2


# Counters of one server, added to its metrics.ServerCounters by Python (atomics).
cdef struct ServerCounters:
    uint64_t total          # clients relayed through it
    uint64_t connect_errors
    uint64_t response_errors  # no CONNACK, or not a valid one
    uint64_t retries
    uint64_t redispatches
    uint64_t connack[256]   # by return / reason code


cdef struct Server:
    uint32_t refs           # its ServerRef, the pool listing it, each connection holding it
    uint32_t id             # Python's name for it in records
    uint32_t stick_id       # its name in stick-table entries (stick.server_id)
    uint32_t live           # fast-path connections holding it (chosen .. ended), atomic
    uint32_t py_live        # the event-loop path's connections to it (pushed by Python)
    uint64_t live_bytes[2]  # bytes in, out of its fast-path connections still open, atomic
    # written by Python under the lock of the pool that lists it:
    uint8_t state
    uint8_t backup
    uint32_t weight         # the balancer's weight now (slow start scales it)
    uint32_t maxconn        # 0 = no limit
    socklen_t addrlen
    sockaddr_storage addr
    ServerCounters n


# Counters of one backend (atomics), added to its metrics.BackendCounters by Python.
cdef struct PoolCounters:
    uint64_t no_server
    uint64_t sticky_hits
    uint64_t sticky_misses
    uint64_t learned_ids
    uint64_t latency[NBUCKETS]  # CONNECT inspected -> server connected
    uint64_t latency_ns       # their sum
    uint64_t connack[NBUCKETS]  # CONNECT inspected -> the server's CONNACK read
    uint64_t connack_ns


cdef struct Pool:
    pthread_mutex_t lock    # taken by every pick and every change
    uint32_t refs           # its PoolRef, each frontend using it, each connection holding it
    uint32_t id
    int algo
    bint all_backups
    double factor           # bounded loads (consistent); 0 = none
    int nservers
    Server **servers
    int64_t *current        # smooth weighted round robin (and consistent's key-less fallback)
    int next                # leastconn: where the rotation that breaks ties starts
    uint64_t rng            # random: xorshift64* state
    # consistent: tables Python built with _balance (copies); entries are build positions
    int64_t table_size
    int32_t *home           # over every server with weight
    int32_t *usable[2]      # over the usable primaries (0) and the usable backups (1)
    int32_t *order          # build position -> server index
    uint8_t *scratch        # 2 x nservers bytes for one pick (under the lock)
    StickShm *stick         # the backend's shared stick table (in its _stick.Table), or NULL
    uint8_t stick_on        # H_*: what it is keyed on
    PoolCounters n
    # the backend's connect policy, for the fast path (ints Python writes, read unlocked)
    int retries
    bint redispatch
    uint32_t timeout_connect  # wheel ticks
    uint32_t timeout_server   # wheel ticks: the CONNACK wait, then the server's idle time
    uint8_t hash_key          # H_*
    uint8_t send_proxy        # 0, 1 (v1) or 2 (v2)
    int client_id_tlv         # PROXY v2 TLV type that carries the client id; -1: none


# The server for a new client, or NULL (counted as no_server) (backends.Backend.choose):
# with a stick key's digest ``stuck`` (pool_stick_digest) the server the table holds for it
# when that can take the client (a hit; else a miss), then the balancer's pick among
# primaries, else backups. ``tried``: servers that failed this client. The result is held
# (live and refs + 1) until server_release(); its address is copied to *addr / *addrlen
# under the lock.
cdef Server *pool_pick(Pool *p, uint64_t key_hash, bint has_key, Server **tried, int ntried,
                       const StickDigest *stuck, sockaddr_storage *addr,
                       socklen_t *addrlen) noexcept nogil
# The stick table's side of a connection: its digest (False: the backend has no table or the
# key is empty); a client relayed through ``s`` (``learn``: remember it there) and now live;
# a live client ended.
cdef bint pool_stick_digest(Pool *p, const uint8_t *key, size_t n,
                            StickDigest *d) noexcept nogil
cdef void pool_stick_relayed(Pool *p, const StickDigest *d, Server *s, bint learn) noexcept nogil
cdef void pool_stick_ended(Pool *p, const StickDigest *d) noexcept nogil
cdef void server_release(Server *s) noexcept nogil
cdef void server_unref(Server *s) noexcept nogil
cdef void pool_ref(Pool *p) noexcept nogil
cdef void pool_unref(Pool *p) noexcept nogil
# metrics.LATENCY_BUCKETS: CONNECT -> server connected, CONNECT -> CONNACK
cdef void observe_latency(Pool *p, int64_t ns) noexcept nogil
cdef void observe_connack(Pool *p, int64_t ns) noexcept nogil


cdef class ServerRef:
    cdef Server *s
    cdef _address(self, int family, str host, int port, uint32_t scope)


cdef class PoolRef:
    cdef Pool *p
    cdef list _servers  # the ServerRefs listed, in order
    cdef object _stick  # the _stick.Table whose handle p.stick is
