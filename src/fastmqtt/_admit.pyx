# cython: language_level=3
"""Who may connect through a frontend of the fast path: access.Guard and ratelimit.RateLimiter
over C tables, for connections that never reach Python (_fastpath.pyx).

Design notes:
- The same decisions, in the same order, with the same reason words: per-source limits and
  source-only rules before anything is read; after the CONNECT every rule, empty client ids,
  the CONNECT rate and the per-client-id reconnect delay (held, not refused, up to
  max_delay). Rules the C side cannot match (client id regular expressions, user names,
  globs other than an exact id or a prefix followed by "*") keep the frontend on the event
  loop (fastpath.fast_path_reason).
- Memory is fixed when the frontend is configured: per-source and per-client-id token buckets
  live in tables of ``tracked`` entries (sets of 4, the least recently used of a full set
  goes: as ratelimit's LRU, an evicted key starts again with a full bucket, which only ever
  errs towards letting a client in), keyed by 64-bit digests seeded at random (a client
  cannot aim its ids at another's bucket); live counts per source in an open-addressing table
  of twice the frontend's connection limit, which therefore never fills.
- IPv4 clients of a dual-stack listener count as IPv4; IPv6 sources are grouped by their
  first ``ipv6_prefix`` bits (/64 by default) for per-source limits (ratelimit.source_key).
- Every call takes the admission's mutex: a few table lookups, called twice per connection.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from fastmqtt._balance cimport xxh64_seeded
from fastmqtt.includes.atomic cimport atomic_add32
from fastmqtt.includes.linux cimport (
    AF_INET, AF_INET6, inet_pton, pthread_mutex_destroy, pthread_mutex_init,
    pthread_mutex_lock, pthread_mutex_unlock,
)

import os

ACTIONS = {"allow": ALLOW, "deny": DENY, "route": ROUTE}
# the connection log's end reason for each verdict (V_DENIED: "denied-rule-N"/"denied-default")
VERDICT_WORDS = (None, None, "rate-per-source", "max-per-source", "empty-client-id",
                 "rate-global", "reconnect-too-fast")

cdef enum:
    WAYS = 4
    MAX_LIVE = 1 << 22          # live-count slots: enough for 2 x any maxconn fds allow


# ---------------------------------------------------------------- rules (access.decide)

cdef bint in_net(const Net *n, const Source *s) noexcept nogil:
    cdef int full = n.prefix // 8, rest = n.prefix % 8
    cdef uint8_t mask
    if n.v6 != s.v6 or memcmp(n.addr, s.addr, full) != 0:
        return False
    if rest == 0:
        return True
    mask = <uint8_t>(0xFF << (8 - rest))
    return (n.addr[full] ^ s.addr[full]) & mask == 0


cdef bint matches_source(const Rule *r, const Source *s) noexcept nogil:
    cdef uint32_t i
    if r.nnets == 0:
        return True
    for i in range(r.nnets):
        if in_net(&r.nets[i], s):
            return True
    return False


cdef bint matches_id(const Rule *r, const uint8_t *cid, size_t n) noexcept nogil:
    if r.id_prefix:
        return n >= r.id_len and memcmp(cid, r.id, r.id_len) == 0
    return n == r.id_len and memcmp(cid, r.id, n) == 0


cdef int decide(Admission *a, const Source *src, bint has_connect, const uint8_t *cid,
                size_t n, bint final, uint16_t *rule) noexcept nogil:
    """The first matching rule's action (access.decide); without a CONNECT a rule that reads
    one stops the search (UNDECIDED) unless ``final``, where it cannot match."""
    cdef int i
    cdef const Rule *r
    for i in range(a.nrules):
        r = &a.rules[i]
        if not matches_source(r, src):
            continue
        if r.reads_id:
            if not has_connect:
                if final:
                    continue
                return UNDECIDED
            if not matches_id(r, cid, n):
                continue
        rule[0] = <uint16_t>i
        return r.action
    rule[0] = NO_RULE
    return a.default_action


# ---------------------------------------------------------------- token buckets

cdef inline void refill(Bucket *b, double rate, double burst, int64_t now) noexcept nogil:
    if b.stamp >= 0:  # a bucket made before the first call starts full at that call
        b.level = min(burst, b.level + <double>(now - b.stamp) / 1e9 * rate)
    b.stamp = now


cdef bint take(Bucket *b, double rate, double burst, int64_t now) noexcept nogil:
    """One token now, or False (ratelimit.TokenBucket.take)."""
    refill(b, rate, burst, now)
    if b.level < 1.0:
        return False
    b.level -= 1.0
    return True


cdef double reserve(Bucket *b, double rate, double burst, double max_wait,
                    int64_t now) noexcept nogil:
    """Seconds to wait for a token taken now, or -1 beyond max_wait (TokenBucket.reserve)."""
    cdef double wait
    refill(b, rate, burst, now)
    wait = max(0.0, (1.0 - b.level) / rate)
    if wait > max_wait:
        return -1.0
    b.level -= 1.0
    return wait


cdef Bucket *bucket_for(Keyed *table, uint32_t sets, uint64_t key, double burst,
                        int64_t now) noexcept nogil:
    """The key's bucket, new (full) when absent; the set's least recently used goes."""
    cdef Keyed *base = table + (key & (sets - 1)) * WAYS
    cdef Keyed *victim = base
    cdef int i
    for i in range(WAYS):
        if base[i].key == key:
            return &base[i].b
        if base[i].key == 0 or (victim.key != 0 and base[i].b.stamp < victim.b.stamp):
            victim = &base[i]
    victim.key = key
    victim.b.level = burst
    victim.b.stamp = now
    return &victim.b


# ---------------------------------------------------------------- live counts per source

cdef inline uint64_t nonzero(uint64_t h) noexcept nogil:
    return h if h else 1


cdef uint64_t source_key(Admission *a, const Source *s) noexcept nogil:
    """IPv4 address, or the first ipv6_prefix bits of an IPv6 one (ratelimit.source_key)."""
    cdef uint8_t key[17]
    cdef int bits = a.ipv6_prefix, i
    memset(key, 0, sizeof(key))
    key[0] = s.v6
    if not s.v6:
        memcpy(key + 1, s.addr, 4)
    else:
        for i in range(16):
            if bits >= 8:
                key[1 + i] = s.addr[i]
            elif bits > 0:
                key[1 + i] = s.addr[i] & <uint8_t>(0xFF << (8 - bits))
            bits -= 8
    return nonzero(xxh64_seeded(key, sizeof(key), <uint64_t>a.ipv6_prefix ^ SEED))


cdef Live *live_slot(Admission *a, uint64_t key, bint add) noexcept nogil:
    """The key's live count (linear probing), a new one when ``add``; NULL if absent/full."""
    cdef uint32_t i = <uint32_t>key & a.live_mask, _
    for _ in range(a.live_mask + 1):
        if a.live[i].key == key:
            return &a.live[i]
        if a.live[i].key == 0:
            if not add:
                return NULL
            a.live[i].key = key
            a.live[i].count = 0
            return &a.live[i]
        i = (i + 1) & a.live_mask
    return NULL


cdef void live_remove(Admission *a, Live *slot) noexcept nogil:
    """Delete with backward shift: later entries of the run move up so lookups still work."""
    cdef uint32_t i = <uint32_t>(slot - a.live), j = i, k
    a.live[i].key = 0
    while True:
        j = (j + 1) & a.live_mask
        if a.live[j].key == 0:
            return
        k = <uint32_t>a.live[j].key & a.live_mask
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            a.live[i] = a.live[j]
            a.live[j].key = 0
            i = j


# ---------------------------------------------------------------- the two admissions

cdef int admit_source(Admission *a, const Source *src, int64_t now, uint16_t *rule,
                      bint *counted) noexcept nogil:
    cdef uint64_t key
    cdef Live *live = NULL
    cdef int verdict = V_OK
    counted[0] = False
    rule[0] = NO_RULE
    pthread_mutex_lock(&a.lock)
    if a.max_per_source or a.source_rate:
        key = source_key(a, src)
        if a.max_per_source:
            live = live_slot(a, key, True)
            if live != NULL and live.count >= a.max_per_source:
                verdict = V_MAX_SOURCE
        if verdict == V_OK and a.source_rate and not take(
                bucket_for(a.sources, a.source_sets, key, a.source_burst, now),
                a.source_rate, a.source_burst, now):
            verdict = V_RATE_SOURCE
        if live != NULL:
            if verdict == V_OK:
                live.count += 1
                counted[0] = True
            elif live.count == 0:
                live_remove(a, live)
    if verdict == V_OK and decide(a, src, False, NULL, 0, False, rule) == DENY:
        verdict = V_DENIED  # after counting, as access.Guard does: released at the end
    pthread_mutex_unlock(&a.lock)
    return verdict


cdef int admit_connect(Admission *a, const Source *src, bint has_connect, const uint8_t *cid,
                       size_t cid_len, int64_t now, uint16_t *rule, uint16_t *route,
                       int64_t *delay_ns) noexcept nogil:
    cdef int action, verdict = V_OK
    cdef double wait
    route[0] = NO_RULE
    delay_ns[0] = 0
    pthread_mutex_lock(&a.lock)
    action = decide(a, src, has_connect, cid, cid_len, True, rule)
    if action == DENY:
        verdict = V_DENIED
    elif has_connect and cid_len == 0 and a.deny_empty_id:
        verdict = V_EMPTY_ID
    elif a.connect_rate and not take(&a.connect_bucket, a.connect_rate, a.connect_burst, now):
        verdict = V_RATE_GLOBAL
    elif has_connect and a.id_rate and cid_len:
        wait = reserve(
            bucket_for(a.ids, a.id_sets, nonzero(xxh64_seeded(cid, cid_len, SEED)),
                       a.id_burst, now),
            a.id_rate, a.id_burst, a.max_delay, now)
        if wait < 0:
            verdict = V_RECONNECT
        else:
            delay_ns[0] = <int64_t>(wait * 1e9)
    if verdict == V_OK and action == ROUTE:
        route[0] = rule[0]
    pthread_mutex_unlock(&a.lock)
    return verdict


cdef void release_source(Admission *a, const Source *src) noexcept nogil:
    cdef Live *live
    if a.live == NULL:  # no max_per_source: nothing counted
        return
    pthread_mutex_lock(&a.lock)
    live = live_slot(a, source_key(a, src), False)
    if live != NULL:
        live.count -= 1
        if live.count == 0:
            live_remove(a, live)
    pthread_mutex_unlock(&a.lock)


cdef void admission_ref(Admission *a) noexcept nogil:
    atomic_add32(&a.refs, 1)


cdef void admission_unref(Admission *a) noexcept nogil:
    if atomic_add32(&a.refs, -1) != 0:
        return
    free_rules(a.rules, a.nrules)
    free(a.sources)
    free(a.ids)
    free(a.live)
    pthread_mutex_destroy(&a.lock)
    free(a)


cdef void free_rules(Rule *rules, int n) noexcept nogil:
    cdef int i
    if rules == NULL:
        return
    for i in range(n):
        free(rules[i].nets)
        free(rules[i].id)
    free(rules)


cdef uint64_t SEED = int.from_bytes(os.urandom(8), "little")


# ---------------------------------------------------------------- Python's handle

cdef int source_of(str ip, Source *out) except -1:
    """An address as rules and limits see it (access.client_ip): IPv4-mapped is IPv4."""
    cdef bytes text = ip.partition("%")[0].encode("ascii")
    memset(out, 0, sizeof(Source))
    if inet_pton(AF_INET, text, out.addr) == 1:
        return 0
    if inet_pton(AF_INET6, text, out.addr) != 1:
        raise ValueError(f"not an IP address: {ip!r}")
    out.v6 = True
    if out.addr[:12] == b"\0" * 10 + b"\xff\xff":
        memcpy(out.addr, out.addr + 12, 4)
        memset(out.addr + 4, 0, 12)
        out.v6 = False
    return 0


cdef int build_rules(list rules, Rule **out) except -1:
    """``rules`` (see AdmissionRef) as C rules in ``out[0]``; returns how many."""
    cdef Rule *built = <Rule *>calloc(max(len(rules), 1), sizeof(Rule))
    cdef Rule *r
    cdef Net *n
    cdef int count = 0
    if built == NULL:
        raise MemoryError()
    try:
        for action, nets, client_id, is_prefix in rules:
            r = &built[count]
            count += 1
            r.action = ACTIONS[action]
            r.nets = <Net *>calloc(max(len(nets), 1), sizeof(Net))
            if r.nets == NULL:
                raise MemoryError()
            for v6, prefix, packed in nets:
                if len(packed) != 16 or not 0 <= prefix <= (128 if v6 else 32):
                    raise ValueError(f"bad network {packed!r}/{prefix}")
                n = &r.nets[r.nnets]
                r.nnets += 1
                n.v6 = v6
                n.prefix = prefix
                memcpy(n.addr, PyBytes_AS_STRING(packed), 16)
            if client_id is not None:
                r.reads_id = True
                r.id_prefix = is_prefix
                r.id_len = len(client_id)
                r.id = <uint8_t *>malloc(max(r.id_len, 1))
                if r.id == NULL:
                    raise MemoryError()
                memcpy(r.id, PyBytes_AS_STRING(client_id), r.id_len)
    except BaseException:
        free_rules(built, count)
        raise
    out[0] = built
    return count


cdef void *table(size_t n, size_t size) noexcept:
    """A zeroed table, its pages touched now: its memory is spent when the frontend is
    configured, not bit by bit as strangers' keys land in it."""
    cdef void *t = malloc(n * size)
    if t != NULL:
        memset(t, 0, n * size)
    return t


cdef uint32_t sets_for(uint32_t entries):
    cdef uint32_t sets = 1
    while sets * WAYS < entries:
        sets <<= 1
    return sets


cdef class AdmissionRef:
    """One frontend's rules and limits, as the fast path applies them.

    ``rules``: (action, [(is_v6, prefix, 16 address bytes)], client id or None, is_prefix)
    per ``[[frontend.NAME.rule]]`` the C side can match, in file order. Rates are
    (per second, burst) or None. ``live_capacity``: the most connections that may be live at
    once (sizes the per-source live counts). Decisions are the C functions'; the methods
    below run them for tests and tools, with an explicit monotonic time in seconds.
    """

    def __cinit__(self, str default, list rules, *, bint deny_empty_client_id=False,
                  per_source=None, uint32_t max_per_source=0, connect_rate=None,
                  per_client_id=None, double max_delay=5.0, uint32_t tracked=100000,
                  int ipv6_prefix=64, uint32_t live_capacity=10000):
        cdef Admission *a = <Admission *>calloc(1, sizeof(Admission))
        if a == NULL:
            raise MemoryError()
        self.a = a
        a.refs = 1
        pthread_mutex_init(&a.lock, NULL)
        a.default_action = ACTIONS[default]
        a.deny_empty_id = deny_empty_client_id
        a.ipv6_prefix = ipv6_prefix
        a.max_delay = max_delay
        a.max_per_source = max_per_source
        if not 0 <= ipv6_prefix <= 128 or tracked == 0:
            raise ValueError("ipv6_prefix must be 0..128 and tracked positive")
        a.nrules = build_rules(rules, &a.rules)
        if per_source is not None:
            a.source_rate, a.source_burst = per_source
            a.source_sets = sets_for(tracked)
            a.sources = <Keyed *>table(a.source_sets * WAYS, sizeof(Keyed))
        if per_client_id is not None:
            a.id_rate, a.id_burst = per_client_id
            a.id_sets = sets_for(tracked)
            a.ids = <Keyed *>table(a.id_sets * WAYS, sizeof(Keyed))
        if connect_rate is not None:
            a.connect_rate, a.connect_burst = connect_rate
            a.connect_bucket.level = a.connect_burst
            a.connect_bucket.stamp = -1
        if max_per_source:
            a.live_mask = min(sets_for(2 * max(live_capacity, 1)) * <uint32_t>WAYS,
                              <uint32_t>MAX_LIVE) - 1
            a.live = <Live *>table(a.live_mask + 1, sizeof(Live))
        if ((per_source is not None and a.sources == NULL)
                or (per_client_id is not None and a.ids == NULL)
                or (max_per_source and a.live == NULL)):
            raise MemoryError()

    def set_rules(self, str default, list rules, *, bint deny_empty_client_id=False) -> None:
        """A reload that kept the limits: new rules at once, the limiters' state kept
        (access.Guard.reconfigure)."""
        cdef Admission *a = self.a
        cdef uint8_t action = ACTIONS[default]
        cdef Rule *fresh = NULL
        cdef int n = build_rules(rules, &fresh)
        cdef Rule *old = a.rules
        cdef int nold = a.nrules
        pthread_mutex_lock(&a.lock)
        old = a.rules
        nold = a.nrules
        a.rules = fresh
        a.nrules = n
        a.default_action = action
        a.deny_empty_id = deny_empty_client_id
        pthread_mutex_unlock(&a.lock)
        free_rules(old, nold)

    def __dealloc__(self):
        if self.a != NULL:
            admission_unref(self.a)

    def admit_source(self, str ip, double now) -> tuple:
        """(verdict word or None, rule index or None); an admitted source holds a slot
        until release()."""
        cdef Source src
        cdef uint16_t rule
        cdef bint counted
        source_of(ip, &src)
        verdict = admit_source(self.a, &src, <int64_t>(now * 1e9), &rule, &counted)
        return _word(verdict, rule), None if rule == NO_RULE else rule

    def admit_connect(self, str ip, client_id, double now) -> tuple:
        """(verdict word or None, rule index or None, route rule index or None, seconds
        to hold the client first); ``client_id`` None: no valid CONNECT."""
        cdef Source src
        cdef uint16_t rule, route
        cdef int64_t delay
        cdef bytes cid = client_id or b""
        source_of(ip, &src)
        verdict = admit_connect(self.a, &src, client_id is not None,
                                <const uint8_t *>PyBytes_AS_STRING(cid), PyBytes_GET_SIZE(cid),
                                <int64_t>(now * 1e9), &rule, &route, &delay)
        return (_word(verdict, rule), None if rule == NO_RULE else rule,
                None if route == NO_RULE else route, delay / 1e9)

    def release(self, str ip) -> None:
        cdef Source src
        source_of(ip, &src)
        release_source(self.a, &src)


def _word(int verdict, uint16_t rule):
    if verdict == V_DENIED:
        return "denied-default" if rule == NO_RULE else f"denied-rule-{rule}"
    return VERDICT_WORDS[verdict]
