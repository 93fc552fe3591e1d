# cython: language_level=3
"""Where the engine's fast path chooses a server: backends.Backend.choose and the policies
of balance.py over C arrays, for connections that never reach Python (_fastpath.pyx).

Design notes:
- A ``Pool`` is one backend, a ``Server`` one of its servers. Both outlive reloads by name,
  as their Python twins do (Python keeps one ``PoolRef``/``ServerRef`` per backend/server and
  reconfigures it), and both are reference counted: a connection holds its pool and its
  server until it ends, so a reload that drops either never frees what a connection uses.
- Every pick runs under the pool's mutex. A pick is short (a pass over the servers), the
  engine's threads rarely meet there, and it makes each change Python pushes (states,
  weights, tables, a reload's server list) atomic for them.
- The same arithmetic as balance.py, so the fast path and the event-loop path spread clients
  alike: smooth weighted round robin (10 clients over 3 servers land 4/3/3), leastconn with a
  rotating tie-break, power of two random choices, and weighted Maglev with bounded loads.
  The Maglev tables are built by Python (_balance.maglev_build, balance.Consistent's
  canonical order) and copied here, so keys map to the same servers on both paths and on
  every machine. One difference: balance.Consistent builds a table for each eligible set a
  pick meets; here the tables cover the usable primaries and the usable backups, and a
  server that is full (maxconn) or already failed this client is walked past instead.
- Live counts are the fast path's own (``live``, atomic: its threads update them) plus the
  event-loop path's (``py_live``, pushed by Python), so maxconn, leastconn and bounded loads
  see every connection to a server, whichever path made it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.math cimport ceil
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from fastmqtt._balance cimport MaglevTable, xxh64
from fastmqtt._stick cimport (
    StickDigest, Table, stick_connected, stick_digest, stick_disconnected, stick_get,
    stick_now_ms, stick_put,
)
from fastmqtt.includes.atomic cimport atomic_add32, atomic_inc64, atomic_load32, atomic_load64
from fastmqtt.includes.linux cimport (
    AF_INET, AF_INET6, htons, inet_pton, pthread_mutex_destroy, pthread_mutex_init,
    pthread_mutex_lock, pthread_mutex_unlock, sockaddr_in, sockaddr_in6, sockaddr_storage,
    socklen_t,
)

ALGORITHMS = {"roundrobin": A_ROUNDROBIN, "leastconn": A_LEASTCONN, "random": A_RANDOM,
              "consistent": A_CONSISTENT, "source": A_CONSISTENT}
HASH_KEYS = {"client_id": H_CLIENT_ID, "username": H_USERNAME, "source": H_SOURCE}
SEND_PROXY = {None: 0, "v1": 1, "v2": 2}
STATES = ("UP", "DOWN", "DRAIN", "MAINT")  # backends.ServerState values, by S_* code
MAX_SERVERS = 65535


# ---------------------------------------------------------------- references

cdef void server_unref(Server *s) noexcept nogil:
    if atomic_add32(&s.refs, -1) == 0:
        free(s)


cdef void server_release(Server *s) noexcept nogil:
    """A connection that held ``s`` since pool_pick() lets it go."""
    atomic_add32(&s.live, -1)
    server_unref(s)


cdef void pool_ref(Pool *p) noexcept nogil:
    atomic_add32(&p.refs, 1)


cdef void pool_unref(Pool *p) noexcept nogil:
    cdef int i
    if atomic_add32(&p.refs, -1) != 0:
        return
    for i in range(p.nservers):
        server_unref(p.servers[i])
    free_tables(p)
    free(p.servers)
    free(p.current)
    free(p.scratch)
    pthread_mutex_destroy(&p.lock)
    free(p)


cdef void free_tables(Pool *p) noexcept nogil:
    free(p.home)
    free(p.usable[0])
    free(p.usable[1])
    free(p.order)
    p.home = p.usable[0] = p.usable[1] = p.order = NULL
    p.table_size = 0


# ---------------------------------------------------------------- eligibility

cdef inline uint32_t active(Server *s) noexcept nogil:
    return atomic_load32(&s.live) + atomic_load32(&s.py_live)


cdef inline bint accepts_new(Server *s) noexcept nogil:
    """UP and under its maxconn (backends.Server.accepts_new)."""
    return s.state == S_UP and (s.maxconn == 0 or active(s) < s.maxconn)


cdef inline bint was_tried(Server *s, Server **tried, int ntried) noexcept nogil:
    cdef int i
    for i in range(ntried):
        if tried[i] == s:
            return True
    return False


cdef bint mark_eligible(Pool *p, bint backups, Server **tried, int ntried,
                        uint8_t *ok) noexcept nogil:
    """ok[i] for the servers of one pass (primaries or backups) that may take the client;
    a single standby unless all_backups. True if any may."""
    cdef int i
    cdef bint seen = False
    cdef Server *s
    for i in range(p.nservers):
        s = p.servers[i]
        ok[i] = (s.backup == backups and accepts_new(s) and not was_tried(s, tried, ntried)
                 and not (backups and seen and not p.all_backups))
        seen = seen or ok[i]
    return seen


# ---------------------------------------------------------------- the policies

cdef inline bint lighter(Server *a, Server *b) noexcept nogil:
    """a would be less loaded than b after taking one more connection (by weight)."""
    return (<uint64_t>active(a) + 1) * b.weight < (<uint64_t>active(b) + 1) * a.weight


cdef int round_robin(Pool *p, const uint8_t *ok) noexcept nogil:
    """nginx's smooth weighted round robin (balance.RoundRobin)."""
    cdef int i, best = -1
    cdef int64_t total = 0
    cdef uint32_t w
    for i in range(p.nservers):
        w = p.servers[i].weight
        if w == 0 or not ok[i]:
            continue
        p.current[i] += w
        total += w
        if best < 0 or p.current[i] > p.current[best]:
            best = i
    if best >= 0:
        p.current[best] -= total
    return best


cdef int least_conn(Pool *p, const uint8_t *ok) noexcept nogil:
    """Lowest (active + 1) / weight; ties rotate (balance.LeastConn)."""
    cdef int step, i, best = -1
    for step in range(p.nservers):
        i = (p.next + step) % p.nservers
        if p.servers[i].weight and ok[i] and (
                best < 0 or lighter(p.servers[i], p.servers[best])):
            best = i
    if best >= 0:
        p.next = best + 1
    return best


cdef uint64_t next_random(Pool *p) noexcept nogil:
    # xorshift64* (Vigna): enough to draw servers; the state is never 0
    p.rng ^= p.rng >> 12
    p.rng ^= p.rng << 25
    p.rng ^= p.rng >> 27
    return p.rng * 0x2545F4914F6CDD1DULL


cdef int draw(Pool *p, const uint8_t *ok, int skip) noexcept nogil:
    """A usable server other than ``skip``, drawn in proportion to weight; -1 if none."""
    cdef uint64_t total = 0, r
    cdef int i
    for i in range(p.nservers):
        if ok[i] and i != skip:
            total += p.servers[i].weight
    if total == 0:
        return -1
    r = next_random(p) % total
    for i in range(p.nservers):
        if ok[i] and i != skip:
            if r < p.servers[i].weight:
                return i
            r -= p.servers[i].weight
    return -1


cdef int two_choices(Pool *p, const uint8_t *ok) noexcept nogil:
    """Power of two random choices (balance.PowerOfTwo)."""
    cdef int first = draw(p, ok, -1), second
    if first < 0:
        return -1
    second = draw(p, ok, first)
    if second >= 0 and lighter(p.servers[second], p.servers[first]):
        return second
    return first


cdef void mark_room(Pool *p, const uint8_t *ok, uint8_t *room) noexcept nogil:
    """room[pos] per build position: eligible with weight and, with bounded loads, under
    ceil(factor * (total + 1) * w / W) (balance.Consistent._room)."""
    cdef int pos, i
    cdef uint64_t total_w = 0, total = 1
    cdef Server *s
    for pos in range(p.nservers):
        i = p.order[pos]
        s = p.servers[i]
        room[pos] = ok[i] and s.weight > 0
        if room[pos]:
            total_w += s.weight
            total += active(s)
    if p.factor == 0 or total_w == 0:
        return
    for pos in range(p.nservers):
        s = p.servers[p.order[pos]]
        if room[pos]:
            room[pos] = active(s) < ceil(p.factor * <double>total * s.weight / <double>total_w)


cdef int consistent(Pool *p, const uint8_t *ok, uint8_t *room, uint64_t key_hash,
                    bint backups) noexcept nogil:
    """Weighted Maglev of the key: its home server if it has room, else the next one in the
    table of usable servers that has (balance.Consistent.pick)."""
    cdef int64_t slot, step, s
    cdef int32_t e
    cdef const int32_t *table
    if p.home == NULL:
        return -1
    mark_room(p, ok, room)
    slot = <int64_t>(key_hash % <uint64_t>p.table_size)
    e = p.home[slot]
    if 0 <= e < p.nservers and room[e]:
        return p.order[e]
    table = p.usable[backups] if p.usable[backups] != NULL else p.home
    for step in range(p.table_size):
        s = slot + step
        if s >= p.table_size:
            s -= p.table_size
        e = table[s]
        if 0 <= e < p.nservers and room[e]:
            return p.order[e]
    return -1


cdef int balance(Pool *p, uint64_t key_hash, bint has_key, Server **tried, int ntried,
                 bint backups) noexcept nogil:
    cdef uint8_t *ok = p.scratch
    if not mark_eligible(p, backups, tried, ntried, ok):
        return -1
    if p.algo == A_LEASTCONN:
        return least_conn(p, ok)
    if p.algo == A_RANDOM:
        return two_choices(p, ok)
    if p.algo == A_CONSISTENT and has_key:
        return consistent(p, ok, p.scratch + p.nservers, key_hash, backups)
    return round_robin(p, ok)  # and consistent's clients without a key to hash


cdef int find_stuck(Pool *p, uint32_t stuck, Server **tried, int ntried) noexcept nogil:
    cdef int i
    cdef Server *s
    for i in range(p.nservers):
        s = p.servers[i]
        if s.stick_id == stuck:
            return i if accepts_new(s) and not was_tried(s, tried, ntried) else -1
    return -1


cdef int stuck_server(Pool *p, const StickDigest *d, Server **tried, int ntried) noexcept nogil:
    """The server the stick table holds for the key, if it can take the client; counts the
    hit or miss. Called with the lock held."""
    cdef uint32_t stuck = stick_get(p.stick, d, stick_now_ms())
    cdef int i
    i = find_stuck(p, stuck, tried, ntried) if stuck else -1
    atomic_inc64(&p.n.sticky_hits if i >= 0 else &p.n.sticky_misses, 1)
    return i


cdef Server *pool_pick(Pool *p, uint64_t key_hash, bint has_key, Server **tried, int ntried,
                       const StickDigest *stuck, sockaddr_storage *addr,
                       socklen_t *addrlen) noexcept nogil:
    cdef int i = -1
    cdef Server *s = NULL
    pthread_mutex_lock(&p.lock)
    if p.stick != NULL and stuck != NULL:
        i = stuck_server(p, stuck, tried, ntried)
    if i < 0:
        i = balance(p, key_hash, has_key, tried, ntried, False)
    if i < 0:
        i = balance(p, key_hash, has_key, tried, ntried, True)
    if i >= 0:
        s = p.servers[i]
        atomic_add32(&s.refs, 1)
        atomic_add32(&s.live, 1)
        memcpy(addr, &s.addr, s.addrlen)
        addrlen[0] = s.addrlen
    pthread_mutex_unlock(&p.lock)
    if s == NULL:
        atomic_inc64(&p.n.no_server, 1)
    return s


# The stick table is used under the pool's lock: a reload may hand the pool another table,
# and the old one must stay mapped until no thread uses it (PoolRef.set_stick).

cdef bint pool_stick_digest(Pool *p, const uint8_t *key, size_t n,
                            StickDigest *d) noexcept nogil:
    cdef bint ok
    pthread_mutex_lock(&p.lock)
    ok = p.stick != NULL and n > 0
    if ok:
        stick_digest(p.stick, key, n, d)
    pthread_mutex_unlock(&p.lock)
    return ok


cdef void pool_stick_relayed(Pool *p, const StickDigest *d, Server *s, bint learn) noexcept nogil:
    cdef uint64_t now = stick_now_ms()
    pthread_mutex_lock(&p.lock)
    if p.stick != NULL:
        if learn:
            stick_put(p.stick, d, s.stick_id, now)
        stick_connected(p.stick, d, now)
    pthread_mutex_unlock(&p.lock)


cdef void pool_stick_ended(Pool *p, const StickDigest *d) noexcept nogil:
    pthread_mutex_lock(&p.lock)
    if p.stick != NULL:
        stick_disconnected(p.stick, d, stick_now_ms())
    pthread_mutex_unlock(&p.lock)


# metrics.LATENCY_BUCKETS in nanoseconds
cdef int64_t LATENCY_NS[NBUCKETS - 1]
LATENCY_NS[:] = [500000, 1000000, 2500000, 5000000, 10000000, 25000000, 50000000,
                 100000000, 250000000, 500000000, 1000000000, 2500000000, 5000000000,
                 10000000000]


cdef inline int bucket(int64_t ns) noexcept nogil:
    cdef int i = 0
    while i < NBUCKETS - 1 and ns > LATENCY_NS[i]:
        i += 1
    return i


cdef void observe_latency(Pool *p, int64_t ns) noexcept nogil:
    atomic_inc64(&p.n.latency[bucket(ns)], 1)
    atomic_inc64(&p.n.latency_ns, <uint64_t>ns)


cdef void observe_connack(Pool *p, int64_t ns) noexcept nogil:
    atomic_inc64(&p.n.connack[bucket(ns)], 1)
    atomic_inc64(&p.n.connack_ns, <uint64_t>ns)


# ---------------------------------------------------------------- Python's handles

cdef socklen_t sockaddr_of(int family, str host, int port, uint32_t scope,
                           sockaddr_storage *out) except 0:
    cdef sockaddr_in *v4 = <sockaddr_in *>out
    cdef sockaddr_in6 *v6 = <sockaddr_in6 *>out
    cdef bytes text = host.encode("ascii")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    memset(out, 0, sizeof(sockaddr_storage))
    if family == AF_INET and inet_pton(AF_INET, text, &v4.sin_addr) == 1:
        v4.sin_family = AF_INET
        v4.sin_port = htons(<uint16_t>port)
        return sizeof(sockaddr_in)
    if family == AF_INET6 and inet_pton(AF_INET6, text, &v6.sin6_addr) == 1:
        v6.sin6_family = AF_INET6
        v6.sin6_port = htons(<uint16_t>port)
        v6.sin6_scope_id = scope
        return sizeof(sockaddr_in6)
    raise ValueError(f"not an IPv4/IPv6 address of family {family}: {host!r}")


cdef class ServerRef:
    """One server as the fast path sees it; Python keeps it as long as its Server."""

    def __cinit__(self, uint32_t server_id, int family, str host, int port, uint32_t scope=0,
                  uint32_t stick_id=0):
        self.s = <Server *>calloc(1, sizeof(Server))
        if self.s == NULL:
            raise MemoryError()
        self.s.refs = 1
        self.s.id = server_id
        self.s.stick_id = stick_id
        self.s.state = S_UP
        self.s.weight = 1
        self._address(family, host, port, scope)

    def __dealloc__(self):
        if self.s != NULL:
            server_unref(self.s)

    cdef _address(self, int family, str host, int port, uint32_t scope):
        cdef sockaddr_storage addr
        cdef socklen_t addrlen = sockaddr_of(family, host, port, scope, &addr)
        memcpy(&self.s.addr, &addr, addrlen)
        self.s.addrlen = addrlen

    @property
    def id(self) -> int:
        return self.s.id

    @property
    def live(self) -> int:
        """Connections of the fast path holding this server (chosen and not ended)."""
        return atomic_load32(&self.s.live)

    @property
    def live_bytes(self) -> tuple:
        """(bytes in, bytes out) of its fast-path connections still open."""
        return atomic_load64(&self.s.live_bytes[0]), atomic_load64(&self.s.live_bytes[1])

    def set_python_live(self, uint32_t count) -> None:
        """The event-loop path's live connections to this server."""
        self.s.py_live = count

    def counters(self) -> tuple:
        """(total, connect_errors, response_errors, retries, redispatches, {code: count})."""
        cdef ServerCounters *n = &self.s.n
        codes = {}
        for code in range(256):
            if atomic_load64(&n.connack[code]):
                codes[code] = atomic_load64(&n.connack[code])
        return (atomic_load64(&n.total), atomic_load64(&n.connect_errors),
                atomic_load64(&n.response_errors), atomic_load64(&n.retries),
                atomic_load64(&n.redispatches), codes)


cdef class PoolRef:
    """One backend as the fast path sees it: its servers, policy and balancing state."""

    def __cinit__(self, uint32_t pool_id):
        self.p = <Pool *>calloc(1, sizeof(Pool))
        if self.p == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.p.lock, NULL)
        self.p.refs = 1
        self.p.id = pool_id
        self.p.rng = 0x9E3779B97F4A7C15ULL ^ pool_id
        self._servers = []
        self._stick = None

    def __dealloc__(self):
        if self.p != NULL:
            pool_unref(self.p)

    @property
    def id(self) -> int:
        return self.p.id

    def configure(self, str algorithm, list servers, *, bint all_backups=False,
                  factor=None, str hash_key="client_id", int retries=3, bint redispatch=True,
                  uint32_t timeout_connect=100, uint32_t timeout_server=2400,
                  send_proxy=None, int client_id_tlv=-1) -> None:
        """The policy and the servers in order (a reload): balancing state starts afresh,
        connections keep the servers they hold. Timeouts are in wheel ticks (100 ms)."""
        cdef Py_ssize_t n = len(servers), i
        cdef Server **arr
        cdef int64_t *current
        cdef uint8_t *scratch
        cdef Server **old
        cdef int nold
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown balance algorithm {algorithm!r}")
        if not 0 < n <= MAX_SERVERS:
            raise ValueError(f"a backend needs 1..{MAX_SERVERS} servers, got {n}")
        if hash_key not in HASH_KEYS or send_proxy not in SEND_PROXY or not 0 <= retries <= 100:
            raise ValueError("bad hash_key, send_proxy or retries")
        arr = <Server **>calloc(n, sizeof(Server *))
        current = <int64_t *>calloc(n, sizeof(int64_t))
        scratch = <uint8_t *>calloc(2 * n, 1)
        if arr == NULL or current == NULL or scratch == NULL:
            free(arr)
            free(current)
            free(scratch)
            raise MemoryError()
        for i in range(n):
            arr[i] = (<ServerRef?>servers[i]).s
            atomic_add32(&arr[i].refs, 1)
        pthread_mutex_lock(&self.p.lock)
        old, nold = self.p.servers, self.p.nservers
        free(self.p.current)
        free(self.p.scratch)
        free_tables(self.p)
        self.p.servers, self.p.nservers = arr, <int>n
        self.p.current, self.p.scratch = current, scratch
        self.p.next = 0
        self.p.algo = ALGORITHMS[algorithm]
        self.p.all_backups = all_backups
        self.p.factor = 0.0 if factor is None else factor
        self.p.hash_key = HASH_KEYS["source" if algorithm == "source" else hash_key]
        self.p.retries = retries
        self.p.redispatch = redispatch
        self.p.timeout_connect = max(timeout_connect, 1)
        self.p.timeout_server = max(timeout_server, 1)
        self.p.send_proxy = SEND_PROXY[send_proxy]
        self.p.client_id_tlv = client_id_tlv
        pthread_mutex_unlock(&self.p.lock)
        for i in range(nold):
            server_unref(old[i])
        free(old)
        self._servers = list(servers)

    def update(self, list states, list weights, list maxconns, list backups) -> None:
        """Each server's state (S_* code), balancer weight, maxconn and backup flag, in
        configure() order: applied together. Changed weights restart the round robin, as
        balance.RoundRobin.set_weights does."""
        cdef Py_ssize_t i, n = self.p.nservers
        cdef Server *s
        cdef bint reweighted = False
        if not len(states) == len(weights) == len(maxconns) == len(backups) == n:
            raise ValueError(f"expected {n} entries each")
        for i in range(n):
            if not 0 <= states[i] <= S_MAINT or not 0 <= weights[i] < 2 ** 31:
                raise ValueError(f"bad state or weight for server {i}")
        pthread_mutex_lock(&self.p.lock)
        for i in range(n):
            s = self.p.servers[i]
            reweighted = reweighted or s.weight != <uint32_t>weights[i]
            s.state = <uint8_t>states[i]
            s.weight = <uint32_t>weights[i]
            s.maxconn = <uint32_t>maxconns[i]
            s.backup = <uint8_t>bool(backups[i])
        if reweighted:
            memset(self.p.current, 0, n * sizeof(int64_t))
        pthread_mutex_unlock(&self.p.lock)

    def set_tables(self, MaglevTable home not None, primaries, backups, order) -> None:
        """Consistent hashing: the table over every server with weight, the tables over the
        usable primaries and backups (None: use home), and build position -> server index."""
        cdef Py_ssize_t size = home.size, n = self.p.nservers, i
        cdef int32_t *copies[3]
        cdef int32_t *order_c
        cdef MaglevTable t
        tables = (home, primaries, backups)
        if len(order) != n or sorted(order) != list(range(n)):
            raise ValueError("order must be a permutation of the server indices")
        for t in tables:
            if t is not None and (t.size != size or t.servers != n):
                raise ValueError("tables must share one size and cover every server")
        order_c = <int32_t *>malloc(n * sizeof(int32_t))
        for i in range(3):
            copies[i] = NULL
            if tables[i] is not None:
                copies[i] = <int32_t *>malloc(size * sizeof(int32_t))
                if copies[i] != NULL:
                    memcpy(copies[i], (<MaglevTable>tables[i]).entries, size * sizeof(int32_t))
        if order_c == NULL or copies[0] == NULL or any(
                tables[i] is not None and copies[i] == NULL for i in (1, 2)):
            for i in range(3):
                free(copies[i])
            free(order_c)
            raise MemoryError()
        for i in range(n):
            order_c[i] = order[i]
        pthread_mutex_lock(&self.p.lock)
        free_tables(self.p)
        self.p.home, self.p.usable[0], self.p.usable[1] = copies[0], copies[1], copies[2]
        self.p.order = order_c
        self.p.table_size = size
        pthread_mutex_unlock(&self.p.lock)

    def set_address(self, Py_ssize_t index, int family, str host, int port,
                    uint32_t scope=0) -> None:
        """A reload moved server ``index`` (configure() order): new connections go there."""
        cdef sockaddr_storage addr
        cdef socklen_t addrlen = sockaddr_of(family, host, port, scope, &addr)
        if not 0 <= index < self.p.nservers:
            raise IndexError(index)
        pthread_mutex_lock(&self.p.lock)  # pool_pick copies the address under it
        memcpy(&self.p.servers[index].addr, &addr, addrlen)
        self.p.servers[index].addrlen = addrlen
        pthread_mutex_unlock(&self.p.lock)

    def set_stick(self, Table table, str on="client_id") -> None:
        """The backend's shared stick table (None: none) and what it is keyed on."""
        old = self._stick
        pthread_mutex_lock(&self.p.lock)
        self.p.stick = NULL if table is None else &table.shm
        self.p.stick_on = HASH_KEYS[on]
        pthread_mutex_unlock(&self.p.lock)
        self._stick = table  # the old one may go now: no pick uses it any more
        del old

    def pick(self, key=None, tried=(), stick_key=None) -> int | None:
        """Index of the server pool_pick() chooses (tests and tools; the engine calls the C
        function). The pick is let go of at once, so live counts do not change."""
        cdef bytes k = key
        cdef bytes sk = stick_key or b""
        cdef StickDigest d
        cdef bint sticky
        cdef uint64_t h = 0
        cdef Server *chosen
        cdef Server *failed[64]
        cdef int nfailed = 0, i
        cdef sockaddr_storage addr
        cdef socklen_t addrlen
        if k is not None:
            h = xxh64(<const uint8_t *>PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
        for i in tried:
            if nfailed == 64 or not 0 <= i < self.p.nservers:
                raise ValueError("tried: at most 64 indices of servers")
            failed[nfailed] = self.p.servers[i]
            nfailed += 1
        sticky = pool_stick_digest(self.p, <const uint8_t *>PyBytes_AS_STRING(sk),
                                   PyBytes_GET_SIZE(sk), &d)
        chosen = pool_pick(self.p, h, k is not None, failed, nfailed, &d if sticky else NULL,
                           &addr, &addrlen)
        if chosen == NULL:
            return None
        server_release(chosen)
        return next(i for i in range(self.p.nservers) if self.p.servers[i] == chosen)

    def counters(self) -> tuple:
        """(no_server, sticky_hits, sticky_misses, learned_ids, connect latency buckets and
        seconds, CONNACK latency buckets and seconds)."""
        cdef PoolCounters *n = &self.p.n
        connect = [atomic_load64(&n.latency[i]) for i in range(NBUCKETS)]
        connack = [atomic_load64(&n.connack[i]) for i in range(NBUCKETS)]
        return (atomic_load64(&n.no_server), atomic_load64(&n.sticky_hits),
                atomic_load64(&n.sticky_misses), atomic_load64(&n.learned_ids),
                connect, atomic_load64(&n.latency_ns) / 1e9,
                connack, atomic_load64(&n.connack_ns) / 1e9)
