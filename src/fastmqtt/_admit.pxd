# cython: language_level=3
"""C-level surface of _admit.pyx: one frontend's access rules and admission limits (access.py,
ratelimit.py) for the engine's fast path (_fastpath.pyx)."""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastmqtt.includes.linux cimport pthread_mutex_t


cdef enum:
    NO_RULE = 0xFFFF            # a decision of access_default
    # actions
    ALLOW = 0
    DENY = 1
    ROUTE = 2
    UNDECIDED = 3               # a rule that reads the CONNECT comes first (source stage)
    # verdicts of admit_source() / admit_connect(), word by VERDICT_WORDS
    V_OK = 0
    V_DENIED = 1                # by a rule or access_default (the rule says which)
    V_RATE_SOURCE = 2
    V_MAX_SOURCE = 3
    V_EMPTY_ID = 4
    V_RATE_GLOBAL = 5
    V_RECONNECT = 6


# An address as rules and limits see it: IPv4 (also when mapped into IPv6) or IPv6.
cdef struct Source:
    bint v6
    uint8_t addr[16]            # IPv4 in the first 4 bytes


cdef struct Net:
    bint v6
    uint8_t prefix
    uint8_t addr[16]


cdef struct Rule:
    uint8_t action              # ALLOW, DENY or ROUTE
    bint reads_id               # has a client_id pattern
    bint id_prefix              # the pattern ends with "*": a prefix, else the exact id
    uint16_t route              # ROUTE: which of the frontend's route backends (rule index)
    uint32_t nnets              # 0: any source
    Net *nets
    uint32_t id_len
    uint8_t *id


cdef struct Bucket:
    double level
    int64_t stamp               # ns; also what the least recently used is judged by


cdef struct Keyed:
    uint64_t key                # 0: free
    Bucket b


cdef struct Live:
    uint64_t key                # 0: free
    uint32_t count


cdef struct Admission:
    uint32_t refs               # its AdmissionRef, each frontend and connection using it
    pthread_mutex_t lock
    uint8_t default_action
    bint deny_empty_id
    int nrules
    Rule *rules
    # limits; a rate of 0 means none
    double source_rate
    double source_burst
    uint32_t max_per_source     # 0: none
    double connect_rate
    double connect_burst
    Bucket connect_bucket
    double id_rate
    double id_burst
    double max_delay
    int ipv6_prefix
    Keyed *sources              # per-source buckets: 4-way sets, least recently used goes
    uint32_t source_sets
    Keyed *ids                  # per-client-id buckets
    uint32_t id_sets
    Live *live                  # live connections per source (max_per_source)
    uint32_t live_mask


# Before anything is read: per-source limits, then rules on the source alone. On V_OK the
# source holds a slot (*counted) to give back with release_source().
cdef int admit_source(Admission *a, const Source *src, int64_t now, uint16_t *rule,
                      bint *counted) noexcept nogil

# Once the CONNECT is read (``has_connect`` False: forwarded as is, no CONNECT): every rule,
# empty client ids, the CONNECT rate and the client id's reconnect delay (*delay_ns: hold it
# that long first). *route: the rule index of a ROUTE decision, else NO_RULE.
cdef int admit_connect(Admission *a, const Source *src, bint has_connect, const uint8_t *cid,
                       size_t cid_len, int64_t now, uint16_t *rule, uint16_t *route,
                       int64_t *delay_ns) noexcept nogil

cdef void release_source(Admission *a, const Source *src) noexcept nogil
cdef void admission_ref(Admission *a) noexcept nogil
cdef void admission_unref(Admission *a) noexcept nogil


cdef class AdmissionRef:
    cdef Admission *a
