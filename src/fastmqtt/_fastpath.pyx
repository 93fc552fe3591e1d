# cython: language_level=3
"""The engine's fast path: connection setup on the relay engine's threads, from accept to
relay, without the GIL and without a Python object per connection.

For a plain-TCP MQTT frontend the engine's threads accept from its listening socket, read the
CONNECT under inspect_delay on the engine's timing wheel, inspect it with the scanner that
``inspect_connect`` wraps (_parse.pxd), admit it (_admit.pyx), choose a server (_choose.pyx),
connect without blocking, send the PROXY header and the CONNECT, read the CONNACK and turn the
connection into a relayed one: the same ``Conn`` the relay engine (_splice.pyx) runs for pairs
Python hands over. Python configures it (``FastPath``) and hears what happened from one
completion record per connection, rejected or relayed, drained in batches.

Design notes (the WHY):
- A connection is a ``FastConn``, the relay's ``Conn`` followed by what the log line needs.
  Its phase (``Conn.phase``) says which setup step it is in; 0 means it relays. Both fds are
  registered once, for the relay's edge-triggered mask, so going from setup to relay needs no
  epoll_ctl; setup only keeps the relay's "may have unread bytes" flags right.
- Deadlines (inspect_delay, timeout_connect, timeout_server, a reconnect delay) use the
  relay's timing wheel: a setup phase sets the client side's idle ticks to its timeout and
  the wheel calls back here (FastHooks.timer) instead of timing the connection out.
- Memory a stranger controls is bounded: the CONNECT buffer by max_connect_size (nothing past
  it is read before the relay starts), pending connections by maxconn and inspect_delay; the
  broker's first bytes by the engine's buffer size.
- Listening: every engine thread watches each listening socket with EPOLLEXCLUSIVE (one
  thread is woken per connection). Limits (maxconn of the frontend and of the process, which
  counts the event-loop path's connections too) and EMFILE leave connections in the kernel's
  backlog: the listener is paused (its bit in ``Listener.paused``), every thread drops it from
  its epoll set at its next turn, and takes it back once a slot frees.
- One retry loop: a connect error, a connect timeout and a server that closes before its
  CONNACK (HAProxy's retry-on empty-response) all spend the backend's ``retries``; with
  ``redispatch`` each retry goes to another server.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport (
    EAGAIN, ECONNABORTED, ECONNREFUSED, ECONNRESET, EHOSTDOWN, EHOSTUNREACH, EINPROGRESS,
    EINTR, EMFILE, EMSGSIZE, ENETDOWN, ENETUNREACH, ENFILE, ENOBUFS, ENOMEM, ENOTCONN, EPIPE,
    ETIMEDOUT, errno,
)
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_REALTIME, clock_gettime, nanosleep, timespec
from posix.unistd cimport close, dup

from fastmqtt._admit cimport (
    NO_RULE, V_DENIED, V_EMPTY_ID, V_OK, Admission, AdmissionRef, Source, admission_ref,
    admission_unref, admit_connect, admit_source, release_source,
)
from fastmqtt._balance cimport xxh64
from fastmqtt._choose cimport (
    H_CLIENT_ID, H_SOURCE, H_USERNAME, Pool, PoolRef, Server, observe_connack,
    observe_latency, pool_pick,
    pool_ref, pool_stick_digest, pool_stick_ended, pool_stick_relayed, pool_unref,
    server_release, server_unref,
)
from fastmqtt._parse cimport (
    R_COUNT, ConnackScan, ConnectScan, Span, connack_scan, connect_peek, connect_scan,
    property_span,
)
from fastmqtt._splice cimport (
    F_BYE, F_DONE, F_EOF, F_HUP, F_RD, F_TRACK, K_FAST, LISTENER_TAG, NSLOTS, R_KILLED, TICK_NS,
    Bye, Conn,
    Core, Engine, FastHooks, Pending, Worker, bye_start, close_fd, finish, fm_add64, fm_load64,
    follow,
    halt, mono_ns, pending_new, pump, refile, wake,
)
from fastmqtt.includes.atomic cimport (
    atomic_add32, atomic_inc64, atomic_load32, atomic_load64, atomic_store32,
)
from fastmqtt.includes.linux cimport (
    AF_INET, AF_INET6, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLLERR, EPOLLET, EPOLLEXCLUSIVE, EPOLLHUP,
    EPOLLIN, EPOLLOUT, EPOLLRDHUP, FIONBIO, INET6_ADDRSTRLEN, IPPROTO_TCP, MSG_NOSIGNAL, SHUT_WR,
    SO_ERROR, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, TCP_NODELAY, accept4,
    connect, epoll_ctl, epoll_event, getsockname, getsockopt, inet_ntop, ioctl, ntohs,
    pthread_mutex_destroy, pthread_mutex_init, pthread_mutex_lock, pthread_mutex_unlock, recv,
    send, setsockopt, shutdown, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socket,
    socklen_t,
)

from fastmqtt import mqtt_spec as spec
from fastmqtt._admit import VERDICT_WORDS
from fastmqtt._parse import REASON_WORDS
from fastmqtt._splice import REASONS


cdef enum:
    ACCEPT_BATCH = 64           # accepts per wake-up, so one busy listener cannot starve
    CONN_MASK = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET   # the relay's, for life
    MAX_TRIED = 101             # retries is at most 100
    MAX_BYE = 64                # a goodbye packet (a DISCONNECT) is a few bytes
    MAX_KILLS = 16              # close_server() requests a thread has not carried out yet
    MAX_UNDRAINED = 16384       # records waiting for Python's drain() ...
    MAX_UNDRAINED_BYTES = 1 << 20   # ... or client ids and user names in them: stop accepting
    MAX_FOUND = 100000          # connections one find() returns at most
    MAX_KEYS = 4096             # client ids one find() asks for at most (callers split more) ...
    MAX_KEY_BYTES = 1 << 20     # ... and their bytes
    MAX_KEY_LEN = 0xFFFF        # a client id's (an MQTT string)
    MAX_LEAVE = 1 << 20         # connection ids one leave() names at most

# Query.kind: what Python asked every thread (answered at its next turn)
cdef enum:
    Q_FIND = 1
    Q_LEAVE = 2

# Conn.phase: the setup step (0: relaying)
cdef enum:
    PH_CONNECT = 1              # reading the CONNECT (inspect_delay)
    PH_HOLD = 2                 # held by a per-client-id reconnect delay
    PH_DIAL = 3                 # connecting to a server (timeout_connect)
    PH_CONNACK = 4              # sending PROXY header + CONNECT, reading the CONNACK

# Listener.paused
cdef enum:
    P_CLOSED = 1 << 0           # not asked to listen (yet, or any more)
    P_FULL = 1 << 1             # the frontend's maxconn
    P_GLOBAL = 1 << 2           # the process's maxconn, or records Python has not drained
    P_BACKOFF = 1 << 3          # out of fds or memory: wait a tick

# FastConn.state
cdef enum:
    FC_INVALID = 1 << 0         # not a valid CONNECT, forwarded as is
    FC_RELAYED = 1 << 1         # reached the relay (counted in the server's total)
    FC_USERNAME = 1 << 2        # the CONNECT has a user name (maybe empty)
    FC_BYE = 1 << 3             # told goodbye()
    FC_STICKY = 1 << 4          # has a stick key (the backend has a stick table)
    FC_STUCK = 1 << 5           # counted live in the stick table (disconnect at the end)
    FC_PEER_V6 = 1 << 6         # accepted on an IPv6 socket (mapped IPv4 reads ::ffff:...)
    FC_COUNTED = 1 << 7         # holds a per-source slot in fc.admission

# FastConn.why: how the fast path ended a connection (0: the relay's reason)
cdef enum:
    W_NONE = 0
    W_PARSE = 1                 # + arg: the scanner's reason code (counted as denied)
    W_INSPECT_TIMEOUT = 2
    W_CLOSED_EARLY = 3
    W_NO_SERVER = 4
    W_SERVER_TIMEOUT = 5
    W_SERVER_CLOSED = 6         # hung up before its CONNACK, no retry left (not denied)
    W_ERRNO = 7                 # + arg: errno (not denied)
    W_DENIED = 8                # + arg: rule index, or NO_RULE for access_default
    W_ADMISSION = 9             # + arg: an _admit verdict (V_*), by _admit.VERDICT_WORDS

# words of the W_* codes that have no argument, by code
WHY_WORDS = (None, None, "inspect-timeout", "client-closed-early", "no-server",
             "server-timeout", "server-closed", None, None, None)
DENIED = frozenset({W_PARSE, W_INSPECT_TIMEOUT, W_CLOSED_EARLY, W_NO_SERVER, W_SERVER_TIMEOUT,
                    W_DENIED, W_ADMISSION})


# A find() or leave() that every thread answers at its next turn, under Fast.lock; Python
# reads the answers once all threads have (or its wait ran out: it closes the query first,
# and a late thread then finds it closed).
cdef struct Query:
    uint32_t gen                # bumped per query (atomic reads by the threads)
    bint open
    int kind
    uint32_t answered           # threads that answered this gen
    # find: relayed connections of backend pool_id and server server_id (0: any) whose client
    # id is one of the keys (by_id; with prefix, the one key starts it)
    bint by_id
    bint prefix
    Key *keys                   # sorted by hash
    uint32_t nkeys
    char *key_bytes             # the keys' bytes, end to end
    uint32_t pool_id
    uint32_t server_id
    uint32_t limit
    View *views
    uint32_t nviews
    # leave: sorted ids; v5 clients get packet, older ones are closed between two packets
    int64_t *ids
    uint32_t nids
    uint8_t packet[MAX_BYE]
    uint32_t packet_len
    int64_t *asked              # the ids found (nids of room)
    uint32_t nasked


# One client id a find() asks for: key_bytes[offset:offset + len].
cdef struct Key:
    uint64_t hash               # xxh64 of the id: each connection's id is looked up by it
    uint32_t offset
    uint32_t len


# One relayed connection as find() returns it (a copy: the thread owns the connection).
cdef struct View:
    int64_t conn_id
    uint32_t listener_id
    uint32_t pool_id
    uint32_t server_id
    int64_t wall_ns
    uint64_t nbytes[2]
    sockaddr_in6 peer
    uint32_t session_expiry
    uint8_t version
    uint8_t state
    uint8_t clean_start
    bint has_expiry
    bint tracked
    uint16_t cid_len
    uint16_t user_len
    char *ids                   # malloc'd: client id then username, cid_len + user_len bytes


cdef struct Fast:
    Core *core
    pthread_mutex_t lock        # the listener table and pause bits
    Listener *listeners[MAX_LISTENERS]
    uint32_t maxconn            # the process's (global.maxconn)
    uint32_t live               # fast-path connections (accepted .. ended), atomic
    uint32_t py_live            # the event-loop path's connections, pushed by Python
    uint32_t epoch              # bumped when threads should re-check what they watch
    uint32_t paused             # listeners paused by a limit: check on every end
    # ended connections whose records Python has not drained yet, and the bytes of client ids
    # and user names they hold (atomic): past MAX_UNDRAINED(_BYTES) the listeners wait for
    # Python, as the event loop's own accepts wait for its logging
    uint32_t undrained
    uint64_t undrained_bytes
    uint64_t next_id
    PerThread *threads
    # goodbye(): a DISCONNECT for tracked v5 clients, a quota per thread (under lock)
    uint32_t bye_gen
    uint32_t bye_len
    uint8_t bye_packet[MAX_BYE]
    Query query


cdef struct PerThread:         # Worker.fast
    Fast *fast
    uint32_t epoch              # the Fast.epoch this thread last reconciled
    uint32_t query_gen          # the Query.gen this thread last answered
    uint32_t bye_gen            # the Fast.bye_gen this thread last carried out
    uint32_t bye_quota          # goodbyes it may still say for that request
    uint32_t kills[MAX_KILLS]   # close_server() requests: server ids (under Fast.lock)
    int nkills
    Listener *watching[MAX_LISTENERS]   # in its epoll set (referenced), by Fast's slot


cdef FastHooks HOOKS
cdef uint32_t ASSIGNED_ID = spec.ASSIGNED_CLIENT_IDENTIFIER
cdef uint32_t SESSION_EXPIRY = spec.SESSION_EXPIRY_INTERVAL
cdef uint8_t CLEAN_START = spec.FLAG_CLEAN_START
# fast-path connection ids start here, so that they never meet the event loop's Session ids
cdef int64_t FAST_BASE = <int64_t>1 << 48
FAST_IDS = FAST_BASE
MAX_FIND_KEYS = MAX_KEYS
MAX_FIND_KEY_BYTES = MAX_KEY_BYTES


# ---------------------------------------------------------------- small helpers

cdef inline Fast *fast_of(Worker *w) noexcept nogil:
    return (<PerThread *>w.fast).fast


cdef inline PerThread *thread_of(Worker *w) noexcept nogil:
    return <PerThread *>w.fast


cdef inline int64_t wall_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint32_t ticks(double seconds) noexcept nogil:
    """Whole wheel ticks covering ``seconds`` (at least one)."""
    cdef double t = seconds * 1e9 / TICK_NS
    cdef uint32_t n = <uint32_t>t
    if n < t:
        n += 1
    return n if n else 1


cdef inline bint is_reset(int err) noexcept nogil:
    return err in (ECONNRESET, EPIPE, ECONNABORTED, ETIMEDOUT, ENOTCONN, EHOSTUNREACH,
                   ENETUNREACH, ENETDOWN, EHOSTDOWN)


cdef inline void set_deadline(Worker *w, Conn *c, uint32_t after) noexcept nogil:
    """A setup phase's deadline: ``after`` ticks from now (the relay's wheel times it)."""
    c.idle[0] = after
    c.idle[1] = 0
    c.last_rx[0] = w.now
    refile(w, c)


cdef void listener_unref(Listener *lst) noexcept nogil:
    cdef int i
    if atomic_add32(&lst.refs, -1) != 0:
        return
    close_fd(&lst.fd)
    if lst.pool != NULL:
        pool_unref(lst.pool)
    for i in range(MAX_ROUTES):
        if lst.routes[i] != NULL:
            pool_unref(lst.routes[i])
    if lst.admission != NULL:
        admission_unref(lst.admission)
    free(lst.refusals)
    pthread_mutex_destroy(&lst.lock)
    free(lst)


# ---------------------------------------------------------------- listening

cdef inline bint over_limits(Fast *f, Listener *lst) noexcept nogil:
    return (atomic_load32(&lst.live) >= lst.maxconn
            or atomic_load32(&f.live) + atomic_load32(&f.py_live) >= f.maxconn
            or atomic_load32(&f.undrained) >= MAX_UNDRAINED
            or atomic_load64(&f.undrained_bytes) >= MAX_UNDRAINED_BYTES)


cdef void wake_all(Fast *f) noexcept nogil:
    """Every thread re-checks what it watches at its next turn (called without locks)."""
    cdef int i
    atomic_add32(&f.epoch, 1)
    pthread_mutex_lock(&f.core.lock)
    for i in range(f.core.nworkers):
        wake(&f.core.workers[i])
    pthread_mutex_unlock(&f.core.lock)


cdef void pause(Fast *f, Listener *lst, uint32_t why) noexcept nogil:
    pthread_mutex_lock(&f.lock)
    lst.paused |= why
    if why & (P_FULL | P_GLOBAL):
        f.paused = 1
    pthread_mutex_unlock(&f.lock)
    wake_all(f)


cdef void resume_freed(Fast *f) noexcept nogil:
    """A connection ended or Python's count fell: take back listeners a limit paused."""
    cdef int i
    cdef Listener *lst
    cdef bint changed = False, still = False
    if not atomic_load32(&f.paused):
        return
    pthread_mutex_lock(&f.lock)
    for i in range(MAX_LISTENERS):
        lst = f.listeners[i]
        if lst == NULL or not (lst.paused & (P_FULL | P_GLOBAL)):
            continue
        if not over_limits(f, lst):
            lst.paused &= ~(P_FULL | P_GLOBAL)
            changed = True
        else:
            still = True
    f.paused = still
    pthread_mutex_unlock(&f.lock)
    if changed:
        wake_all(f)


cdef void watch(Worker *w, int i, Listener *lst) noexcept nogil:
    """Make listener ``lst`` (or none) the one this thread watches for slot ``i``."""
    cdef PerThread *t = thread_of(w)
    cdef Listener *old = t.watching[i]
    cdef epoll_event ev
    if lst == old:
        return
    if old != NULL:
        epoll_ctl(w.epfd, EPOLL_CTL_DEL, old.fd, NULL)
        old.watchers -= 1
        if old.removed and old.watchers == 0:
            close_fd(&old.fd)  # the port stops accepting; its connections go on
        listener_unref(old)
        t.watching[i] = NULL
    if lst != NULL:
        ev.events = EPOLLIN | EPOLLEXCLUSIVE
        ev.data.u64 = <uint64_t><uintptr_t>lst | LISTENER_TAG
        if epoll_ctl(w.epfd, EPOLL_CTL_ADD, lst.fd, &ev) == 0:
            atomic_add32(&lst.refs, 1)
            lst.watchers += 1
            t.watching[i] = lst


cdef void reconcile(Worker *w, bint stopping) noexcept nogil:
    """Watch exactly the listeners that are open and not paused (none when stopping)."""
    cdef Fast *f = fast_of(w)
    cdef PerThread *t = thread_of(w)
    cdef Listener *lst
    cdef int i
    cdef bint backoff = False
    pthread_mutex_lock(&f.lock)
    t.epoch = atomic_load32(&f.epoch)
    for i in range(MAX_LISTENERS):
        lst = f.listeners[i]
        if lst != NULL and lst.paused & P_BACKOFF:
            if w.now >= lst.backoff_until:
                lst.paused &= ~P_BACKOFF
                atomic_add32(&f.epoch, 1)  # the other threads take it back too
            else:
                backoff = True
        watch(w, i, lst if lst != NULL and not stopping and lst.paused == 0 else NULL)
    pthread_mutex_unlock(&f.lock)
    w.alarm = w.now + 1 if backoff else 0


cdef void on_turn(Worker *w) noexcept nogil:
    cdef Fast *f = fast_of(w)
    if thread_of(w).epoch != atomic_load32(&f.epoch) or (w.alarm and w.now >= w.alarm):
        reconcile(w, False)
    if thread_of(w).bye_gen != atomic_load32(&f.bye_gen):
        say_goodbyes(w)
    if thread_of(w).nkills:
        close_servers(w)
    if thread_of(w).query_gen != atomic_load32(&f.query.gen):
        answer_query(w)


# ---------------------------------------------------------------- find() and leave()

cdef inline bint relaying(Conn *c) noexcept nogil:
    return (c.kind == K_FAST and c.phase == 0 and not (c.flags & F_DONE)
            and (<FastConn *>c).state & FC_RELAYED)


cdef void answer_query(Worker *w) noexcept nogil:
    """This thread's part of the open query: views of its matching connections (find), or
    the goodbyes of the named ones, started after the lock is let go (leave)."""
    cdef Fast *f = fast_of(w)
    cdef Query *q = &f.query
    cdef Conn **leaving = NULL
    cdef uint32_t nleaving = 0, n = 0
    cdef uint8_t packet[MAX_BYE]
    cdef int slot
    pthread_mutex_lock(&f.lock)
    thread_of(w).query_gen = q.gen
    if q.open:
        if q.kind == Q_LEAVE:
            n = q.packet_len
            memcpy(packet, q.packet, n)
            leaving = <Conn **>malloc(q.nids * sizeof(Conn *)) if q.nids else NULL
        for slot in range(NSLOTS + 1):
            query_list(q, w.wheel[slot] if slot < NSLOTS else w.untimed, leaving, &nleaving)
        q.answered += 1
    pthread_mutex_unlock(&f.lock)
    for slot in range(<int>nleaving):
        leave(w, leaving[slot], packet, n)
    free(leaving)


cdef void query_list(Query *q, Conn *c, Conn **leaving, uint32_t *nleaving) noexcept nogil:
    while c != NULL:
        if relaying(c):
            if q.kind == Q_FIND:
                if q.nviews < q.limit and matches(q, <FastConn *>c):
                    view_of(&q.views[q.nviews], <FastConn *>c)
                    q.nviews += 1
            elif leaving != NULL and named(q, c.conn_id):
                leaving[nleaving[0]] = c
                nleaving[0] += 1
                q.asked[q.nasked] = c.conn_id
                q.nasked += 1
        c = c.next


cdef bint matches(Query *q, FastConn *fc) noexcept nogil:
    if q.pool_id and fc.pool_id != q.pool_id or q.server_id and fc.server_id != q.server_id:
        return False
    if not q.by_id:
        return True
    if q.prefix:
        return fc.cid_len >= q.keys[0].len and memcmp(fc.ids, q.key_bytes, q.keys[0].len) == 0
    return is_key(q, fc.ids, fc.cid_len)


cdef bint is_key(Query *q, const char *cid, uint32_t n) noexcept nogil:
    """cid[:n] is one of the query's keys: the first key of its hash by binary search, then
    each key of that hash compared byte for byte."""
    cdef uint64_t h = xxh64(<const uint8_t *>cid, n)
    cdef uint32_t lo = 0, hi = q.nkeys, mid
    cdef Key *k
    while lo < hi:
        mid = (lo + hi) // 2
        if q.keys[mid].hash < h:
            lo = mid + 1
        else:
            hi = mid
    while lo < q.nkeys and q.keys[lo].hash == h:
        k = &q.keys[lo]
        if k.len == n and (n == 0 or memcmp(q.key_bytes + k.offset, cid, n) == 0):
            return True
        lo += 1
    return False


cdef bint named(Query *q, int64_t conn_id) noexcept nogil:
    """conn_id is in the query's sorted ids."""
    cdef uint32_t lo = 0, hi = q.nids, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if q.ids[mid] < conn_id:
            lo = mid + 1
        else:
            hi = mid
    return lo < q.nids and q.ids[lo] == conn_id


cdef void view_of(View *v, FastConn *fc) noexcept nogil:
    cdef Conn *c = &fc.c
    cdef uint32_t n = fc.cid_len + fc.user_len
    v.conn_id = c.conn_id
    v.listener_id = fc.listener_id
    v.pool_id = fc.pool_id
    v.server_id = fc.server_id
    v.wall_ns = fc.wall_ns
    v.nbytes[0] = fm_load64(&c.nbytes[0])
    v.nbytes[1] = fm_load64(&c.nbytes[1])
    v.peer = fc.peer
    v.session_expiry = fc.session_expiry
    v.has_expiry = fc.has_expiry
    v.version = fc.version
    v.state = fc.state
    v.clean_start = fc.clean_start
    v.tracked = (c.flags & F_TRACK) != 0
    v.ids = <char *>malloc(n) if n else NULL
    v.cid_len = fc.cid_len if v.ids != NULL else 0
    v.user_len = fc.user_len if v.ids != NULL else 0
    if v.ids != NULL:
        memcpy(v.ids, fc.ids, n)


cdef void leave(Worker *w, Conn *c, const uint8_t *packet, uint32_t n) noexcept nogil:
    """A v5 client gets ``packet`` at its next boundary, an older one is closed between two
    packets; an untracked connection is closed at once ("killed")."""
    cdef Bye *b
    if c.flags & (F_DONE | F_BYE):
        return
    if not (c.flags & F_TRACK) or c.flags & (F_EOF << 1):
        finish(w, c, R_KILLED, 0)
        return
    if (<FastConn *>c).version & 0x7F != 5:
        n = 0
    b = <Bye *>malloc(sizeof(Bye) + n)
    if b == NULL:
        finish(w, c, R_KILLED, 0)
        return
    b.conn = c
    b.len = n
    memcpy(<uint8_t *>(b + 1), packet, n)
    (<FastConn *>c).state |= FC_BYE
    bye_start(w, c, b)


# ---------------------------------------------------------------- closing a server's clients

cdef void close_servers(Worker *w) noexcept nogil:
    """FastPath.close_server(): end the relayed connections of those servers ("killed")."""
    cdef Fast *f = fast_of(w)
    cdef PerThread *t = thread_of(w)
    cdef uint32_t ids[MAX_KILLS]
    cdef int n, slot
    pthread_mutex_lock(&f.lock)
    n = t.nkills
    memcpy(ids, t.kills, n * sizeof(uint32_t))
    t.nkills = 0
    pthread_mutex_unlock(&f.lock)
    for slot in range(NSLOTS):
        kill_list(w, w.wheel[slot], ids, n)
    kill_list(w, w.untimed, ids, n)


cdef void kill_list(Worker *w, Conn *c, const uint32_t *ids, int n) noexcept nogil:
    cdef Conn *nxt
    cdef int i
    while c != NULL:
        nxt = c.next  # finish() unlinks c
        if c.kind == K_FAST and c.phase == 0:
            for i in range(n):
                if (<FastConn *>c).server_id == ids[i]:
                    finish(w, c, R_KILLED, 0)
                    break
        c = nxt


# ---------------------------------------------------------------- goodbyes (drain_disconnect)

cdef void say_goodbyes(Worker *w) noexcept nogil:
    """FastPath.goodbye(): up to this thread's quota of relayed, tracked connections get the
    goodbye packet at their next packet boundary (the relay's F_BYE)."""
    cdef Fast *f = fast_of(w)
    cdef PerThread *t = thread_of(w)
    cdef uint8_t packet[MAX_BYE]
    cdef uint32_t n
    cdef int slot
    pthread_mutex_lock(&f.lock)
    t.bye_gen = f.bye_gen
    n = f.bye_len
    memcpy(packet, f.bye_packet, n)
    pthread_mutex_unlock(&f.lock)
    for slot in range(NSLOTS):
        if t.bye_quota == 0:
            return
        goodbye_list(w, w.wheel[slot], packet, n)
    goodbye_list(w, w.untimed, packet, n)


cdef void goodbye_list(Worker *w, Conn *c, const uint8_t *packet, uint32_t n) noexcept nogil:
    cdef PerThread *t = thread_of(w)
    cdef Conn *nxt
    cdef Bye *b
    while c != NULL and t.bye_quota:
        nxt = c.next  # pump() may end c
        if (c.kind == K_FAST and c.phase == 0 and c.flags & F_TRACK
                and (<FastConn *>c).version & 0x7F == 5
                and not ((<FastConn *>c).state & FC_BYE)
                and not (c.flags & (F_DONE | F_BYE | (F_EOF << 1)))):
            b = <Bye *>malloc(sizeof(Bye) + n)
            if b == NULL:
                return
            b.conn = c
            b.len = n
            memcpy(<uint8_t *>(b + 1), packet, n)
            (<FastConn *>c).state |= FC_BYE
            t.bye_quota -= 1
            bye_start(w, c, b)
        c = nxt


cdef void on_exit(Worker *w) noexcept nogil:
    reconcile(w, True)


cdef void on_listener(Worker *w, void *obj, uint32_t ev) noexcept nogil:
    cdef Listener *lst = <Listener *>obj
    cdef Fast *f = fast_of(w)
    cdef sockaddr_in6 peer
    cdef socklen_t len
    cdef int fd, _
    for _ in range(ACCEPT_BATCH):
        if lst.paused:
            return
        if over_limits(f, lst):
            pause(f, lst, P_FULL if atomic_load32(&lst.live) >= lst.maxconn else P_GLOBAL)
            return
        len = sizeof(peer)
        fd = accept4(lst.fd, <sockaddr *>&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno in (EMFILE, ENFILE, ENOBUFS, ENOMEM):
                atomic_store32(&lst.n.accept_errno, errno)
                atomic_inc64(&lst.n.accept_errors, 1)
                lst.backoff_until = w.now + 1
                pause(f, lst, P_BACKOFF)
            if errno not in (EINTR, ECONNABORTED):  # those: that client is gone, go on
                return
            continue
        accepted(w, lst, fd, &peer)


cdef void accepted(Worker *w, Listener *lst, int fd, sockaddr_in6 *peer) noexcept nogil:
    cdef Fast *f = fast_of(w)
    cdef FastConn *fc = <FastConn *>calloc(1, sizeof(FastConn))
    cdef Conn *c = &fc.c
    cdef epoll_event ev
    if fc == NULL:
        close(fd)
        atomic_inc64(&lst.n.accept_errors, 1)
        return
    atomic_add32(&lst.refs, 1)
    atomic_add32(&lst.live, 1)
    atomic_add32(&f.live, 1)
    atomic_inc64(&lst.n.accepted, 1)
    fc.listener = lst
    fc.listener_id = lst.id
    fc.accepted_ns = mono_ns()
    fc.wall_ns = wall_ns()
    fc.connack = -1
    as_v6(peer, &fc.peer)
    if peer.sin6_family == AF_INET6:
        fc.state |= FC_PEER_V6
    c.kind = K_FAST
    c.refs = 1
    c.worker = <uint8_t>(w - w.core.workers)
    c.conn_id = FAST_BASE + <int64_t>atomic_add32(<uint32_t *>&f.next_id, 1)
    c.t = <double>fc.accepted_ns / 1e9
    c.fd[0] = fd
    c.fd[1] = -1
    c.phase = PH_CONNECT
    w.live += 1
    source_of(&fc.peer, &fc.source)
    if not admitted_source(w, c):
        return
    ev.events = CONN_MASK
    ev.data.u64 = <uint64_t><uintptr_t>c
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        end(w, c, W_ERRNO, errno)
        return
    set_deadline(w, c, lst.inspect_ticks)
    # A client sends its CONNECT right after connecting: it is usually here already. Reading
    # now saves a turn of the loop (and costs one recv when it is not).
    c.flags |= F_RD
    read_connect(w, c)


cdef void source_of(const sockaddr_in6 *peer, Source *out) noexcept nogil:
    """The address rules compare (access.client_ip): a mapped IPv4 address is IPv4."""
    cdef const uint8_t *a = &peer.sin6_addr.s6_addr[0]
    memset(out, 0, sizeof(Source))
    out.v6 = not is_mapped(a)
    memcpy(out.addr, a if out.v6 else a + 12, 16 if out.v6 else 4)


cdef bint admitted_source(Worker *w, Conn *c) noexcept nogil:
    """Per-source limits and source-only rules, before anything is read (Guard.admit_source);
    a refused client is closed at once."""
    cdef FastConn *fc = <FastConn *>c
    cdef Listener *lst = fc.listener
    cdef Admission *adm
    cdef uint16_t rule
    cdef bint counted
    cdef int verdict
    pthread_mutex_lock(&lst.lock)
    adm = lst.admission
    if adm != NULL:
        admission_ref(adm)
    pthread_mutex_unlock(&lst.lock)
    if adm == NULL:
        return True
    fc.admission = adm  # the connection's admission from here on, even across a reload
    verdict = admit_source(adm, &fc.source, fc.accepted_ns, &rule, &counted)
    if counted:
        fc.state |= FC_COUNTED
    if verdict == V_OK:
        return True
    end(w, c, W_DENIED if verdict == V_DENIED else W_ADMISSION,
        rule if verdict == V_DENIED else verdict)
    return False


cdef void as_v6(const sockaddr_in6 *src, sockaddr_in6 *dst) noexcept nogil:
    """The client address as IPv6 (IPv4 as ::ffff:a.b.c.d), so records have one shape."""
    cdef const sockaddr_in *v4 = <const sockaddr_in *>src
    if src.sin6_family == AF_INET6:
        dst[0] = src[0]
        return
    memset(dst, 0, sizeof(sockaddr_in6))
    dst.sin6_family = AF_INET6
    dst.sin6_port = v4.sin_port
    dst.sin6_addr.s6_addr[10] = 0xFF
    dst.sin6_addr.s6_addr[11] = 0xFF
    memcpy(&dst.sin6_addr.s6_addr[12], &v4.sin_addr, 4)


# ---------------------------------------------------------------- ending

cdef int end(Worker *w, Conn *c, int why, int arg) noexcept nogil:
    """End a connection in a setup phase; its record says why."""
    cdef FastConn *fc = <FastConn *>c
    fc.why = <uint16_t>why
    fc.why_arg = <uint16_t>arg
    return finish(w, c, R_KILLED, arg if why == W_ERRNO else 0)


cdef void refuse(Worker *w, Conn *c, int why, int arg, const uint8_t *packet,
                 size_t n) noexcept nogil:
    """Tell the client why (a CONNACK), send the FIN behind it, and end (access.send_last)."""
    if packet != NULL and n:
        send(c.fd[0], packet, n, MSG_NOSIGNAL)
        shutdown(c.fd[0], SHUT_WR)
    end(w, c, why, arg)


cdef void free_setup(FastConn *fc) noexcept nogil:
    cdef Setup *st = fc.setup
    cdef int i
    if st == NULL:
        return
    for i in range(st.ntried):
        server_unref(st.tried[i])
    free(st.tried)
    free(st.block)
    free(st.ack)
    free(st)
    fc.setup = NULL


cdef void on_received(Conn *c, int d, size_t n) noexcept nogil:
    """Live bytes of a relayed connection, for its frontend's and server's stats rows."""
    cdef FastConn *fc = <FastConn *>c
    atomic_inc64(&fc.listener.live_bytes[d], n)
    atomic_inc64(&fc.server.live_bytes[d], n)


cdef void on_ended(Worker *w, Conn *c) noexcept nogil:
    """finish() is ending a fast-path connection: give back what it holds; its record waits
    for drain()."""
    cdef FastConn *fc = <FastConn *>c
    cdef Fast *f = fast_of(w)
    atomic_add32(&f.undrained, 1)  # until drain() took its record
    atomic_inc64(&f.undrained_bytes, fc.cid_len + fc.user_len)
    give_back(w, c)


cdef void on_released(Worker *w, Conn *c) noexcept nogil:
    """A relayed connection moved to another process (Engine.release): give back what it
    holds, and free it without a record."""
    give_back(w, c)
    free_record(<FastConn *>c)


cdef void give_back(Worker *w, Conn *c) noexcept nogil:
    cdef FastConn *fc = <FastConn *>c
    cdef Fast *f = fast_of(w)
    cdef int d
    c.phase = 0
    free_setup(fc)
    if fc.state & FC_RELAYED:  # from here on its record counts these bytes
        for d in range(2):
            atomic_inc64(&fc.listener.live_bytes[d], 0 - c.nbytes[d])
            atomic_inc64(&fc.server.live_bytes[d], 0 - c.nbytes[d])
    if fc.state & FC_STUCK:
        pool_stick_ended(fc.pool, &fc.stick_key)
    if fc.admission != NULL:
        if fc.state & FC_COUNTED:
            release_source(fc.admission, &fc.source)
        admission_unref(fc.admission)
        fc.admission = NULL
    if fc.server != NULL:
        server_release(fc.server)
        fc.server = NULL
    if fc.pool != NULL:
        pool_unref(fc.pool)
        fc.pool = NULL
    atomic_add32(&fc.listener.live, -1)
    atomic_add32(&f.live, -1)
    listener_unref(fc.listener)
    fc.listener = NULL
    resume_freed(f)


# ---------------------------------------------------------------- reading the CONNECT

cdef Setup *setup_of(FastConn *fc) noexcept nogil:
    if fc.setup == NULL:
        fc.setup = <Setup *>calloc(1, sizeof(Setup))
    return fc.setup


cdef bint keep_bytes(Setup *st, const uint8_t *data, uint32_t n, uint32_t cap) noexcept nogil:
    """Bytes read into the thread's buffer move to the connection's own (``cap`` >= n),
    after room for a Pending header: without a PROXY header they are sent from there."""
    st.block = <Pending *>malloc(sizeof(Pending) + cap)
    if st.block == NULL:
        return False
    st.buf = <uint8_t *>(st.block + 1)
    memcpy(st.buf, data, n)
    st.have = n
    st.cap = cap
    return True


cdef bint grow(Setup *st, uint32_t cap) noexcept nogil:
    cdef Pending *bigger
    if cap <= st.cap:
        return True
    bigger = <Pending *>realloc(st.block, sizeof(Pending) + cap)
    if bigger == NULL:
        return False
    st.block = bigger
    st.buf = <uint8_t *>(bigger + 1)
    st.cap = cap
    return True


cdef void read_connect(Worker *w, Conn *c) noexcept nogil:
    """The client's bytes until a whole CONNECT (or an invalid one) is there; what came with
    it is kept and forwarded after it."""
    cdef FastConn *fc = <FastConn *>c
    cdef Listener *lst = fc.listener
    cdef Setup *st = setup_of(fc)
    cdef ConnectScan scan
    cdef const uint8_t *p
    cdef uint32_t want, total
    cdef ssize_t n
    cdef int rc
    if st == NULL:
        end(w, c, W_ERRNO, ENOMEM)
        return
    while c.flags & F_RD:
        if st.buf == NULL:  # first bytes: into the thread's buffer, often the whole CONNECT
            p = <const uint8_t *>w.buf
            want = min(w.core.bufsize, lst.max_connect)
            n = recv(c.fd[0], w.buf, want, 0)
        else:
            p = st.buf
            want = st.cap - st.have
            n = recv(c.fd[0], st.buf + st.have, want, 0)
        if n == 0:
            end(w, c, W_CLOSED_EARLY, 0)
            return
        if n < 0:
            if errno == EAGAIN:
                c.flags &= ~F_RD
            elif errno != EINTR:
                end(w, c, W_ERRNO, errno)
            return
        if <uint32_t>n < want:
            c.flags &= ~F_RD  # drained at that instant: a later byte raises a new edge
        total = st.have + <uint32_t>n if st.buf != NULL else <uint32_t>n
        rc = connect_scan(p, total, lst.max_connect, lst.allow_bridge, &scan)
        if rc != 0:
            if st.buf == NULL and not keep_bytes(st, p, total, total):
                end(w, c, W_ERRNO, ENOMEM)
                return
            st.have = total
            connect_read(w, c, rc, &scan)
            return
        # incomplete: room for the whole packet when its length is known, else double
        if st.buf == NULL:
            if not keep_bytes(st, p, total, room_for(&scan, total, lst.max_connect)):
                end(w, c, W_ERRNO, ENOMEM)
                return
        else:
            st.have = total
            if st.have == st.cap and not grow(st, room_for(&scan, total, lst.max_connect)):
                end(w, c, W_ERRNO, ENOMEM)
                return


cdef inline uint32_t room_for(const ConnectScan *scan, uint32_t have,
                              uint32_t limit) noexcept nogil:
    if scan.packet_length > <Py_ssize_t>have:
        return <uint32_t>scan.packet_length
    return min(max(2 * have, 256), limit)


cdef void connect_read(Worker *w, Conn *c, int rc, const ConnectScan *scan) noexcept nogil:
    """A whole CONNECT arrived (rc 1) or the bytes are not one (rc -1)."""
    cdef FastConn *fc = <FastConn *>c
    cdef Listener *lst = fc.listener
    cdef Setup *st = fc.setup
    cdef Span expiry
    fc.inspected_ns = mono_ns()
    if rc < 0:
        if lst.reject_invalid:
            refuse_malformed(w, c, scan)
            return
        atomic_inc64(&lst.n.invalid[scan.reason], 1)
        fc.state |= FC_INVALID
        st.data_len = st.have
        admit(w, c)
        return
    fc.version = <uint8_t>scan.protocol_version
    fc.keepalive = <uint16_t>scan.keepalive
    fc.clean_start = (scan.flags & CLEAN_START) != 0
    expiry = property_span(st.buf, scan.properties, SESSION_EXPIRY)
    if expiry.start >= 0 and expiry.length == 4:
        fc.has_expiry = True
        fc.session_expiry = ((<uint32_t>st.buf[expiry.start] << 24)
                             | (<uint32_t>st.buf[expiry.start + 1] << 16)
                             | (<uint32_t>st.buf[expiry.start + 2] << 8)
                             | st.buf[expiry.start + 3])
    atomic_inc64(&lst.n.by_version[scan.protocol_version & 7], 1)
    if not keep_ids(fc, st.buf, &scan.client_id, &scan.username):
        end(w, c, W_ERRNO, ENOMEM)
        return
    st.data_len = st.have
    admit(w, c)


cdef void admit(Worker *w, Conn *c) noexcept nogil:
    """Every rule, empty ids, the CONNECT rate, the reconnect delay (Guard.admit): refused
    clients hear why when the frontend answers with a CONNACK; a held one waits on the
    wheel; a route rule picks the backend."""
    cdef FastConn *fc = <FastConn *>c
    cdef uint16_t rule, route
    cdef int64_t delay
    cdef int verdict, kind
    cdef const uint8_t *packet = NULL
    if fc.admission == NULL:
        choose(w, c)
        return
    verdict = admit_connect(fc.admission, &fc.source, not (fc.state & FC_INVALID),
                            <const uint8_t *>fc.ids, fc.cid_len, mono_ns(), &rule, &route,
                            &delay)
    if verdict != V_OK:
        kind = RF_DENIED if verdict == V_DENIED else (
            RF_EMPTY_ID if verdict == V_EMPTY_ID else RF_RATE)
        if fc.listener.refusals != NULL and not (fc.state & FC_INVALID):
            packet = refusal(fc.listener, kind + ((fc.version & 0x7F) == 5))
        refuse(w, c, W_DENIED if verdict == V_DENIED else W_ADMISSION,
               rule if verdict == V_DENIED else verdict,
               packet + 1 if packet != NULL else NULL, packet[0] if packet != NULL else 0)
        return
    if route != NO_RULE:
        fc.setup.route = route + 1
    if delay > 0:  # held, not refused: the device retries less often
        c.phase = PH_HOLD
        set_deadline(w, c, ticks(<double>delay / 1e9))
        return
    choose(w, c)


cdef bint keep_ids(FastConn *fc, const uint8_t *p, const Span *cid,
                   const Span *user) noexcept nogil:
    """Client id and username for the record (and the keys), exactly their size."""
    cdef size_t n = (cid.length if cid.start >= 0 else 0) + (
        user.length if user.start >= 0 else 0)
    cdef char *ids = <char *>malloc(n) if n else NULL
    if n and ids == NULL:
        return False
    free(fc.ids)
    fc.ids = ids
    fc.cid_len = <uint16_t>(cid.length if cid.start >= 0 else 0)
    fc.user_len = <uint16_t>(user.length if user.start >= 0 else 0)
    if fc.cid_len:
        memcpy(ids, p + cid.start, fc.cid_len)
    if fc.user_len:
        memcpy(ids + fc.cid_len, p + user.start, fc.user_len)
    if user.start >= 0:
        fc.state |= FC_USERNAME
    return True


cdef void refuse_malformed(Worker *w, Conn *c, const ConnectScan *scan) noexcept nogil:
    """reject_invalid: close, after the CONNACK that says why when the frontend sends those
    and the spec has one for this reason and level (access.malformed_connack's table)."""
    cdef FastConn *fc = <FastConn *>c
    cdef Listener *lst = fc.listener
    cdef Setup *st = fc.setup
    cdef uint32_t level = 0
    cdef Py_ssize_t at = 0
    cdef uint32_t length
    cdef bint inside = False
    cdef const uint8_t *packet = NULL
    if lst.refusals != NULL and connect_peek(st.buf, st.have, &level, &at):
        if at + 2 <= <Py_ssize_t>st.have:
            length = (<uint32_t>st.buf[at] << 8) | st.buf[at + 1]
            inside = at + 2 <= scan.offset < at + 2 + <Py_ssize_t>length
        packet = refusal(lst, RF_MALFORMED + (scan.reason * 128 + (level & 0x7F)) * 2 + inside)
    refuse(w, c, W_PARSE, scan.reason, packet + 1 if packet != NULL else NULL,
           packet[0] if packet != NULL else 0)


# Listener.refusals: an index (RF_* + ...) of one byte per case into packets that follow it,
# each a length byte then the CONNACK; index 0 = none.
cdef enum:
    RF_DENIED = 0               # + is v5
    RF_EMPTY_ID = 2
    RF_RATE = 4
    RF_MALFORMED = 6            # + (reason * 128 + level) * 2 + inside the client id
    RF_INDEX = RF_MALFORMED + R_COUNT * 128 * 2


cdef inline const uint8_t *refusal(Listener *lst, int i) noexcept nogil:
    cdef const uint8_t *packets = lst.refusals + RF_INDEX
    cdef int k = lst.refusals[i], _
    if k == 0:
        return NULL
    for _ in range(k - 1):  # a handful of packets: walking is fine
        packets += 1 + packets[0]
    return packets


# ---------------------------------------------------------------- choosing and connecting

cdef void choose(Worker *w, Conn *c) noexcept nogil:
    """The backend (the frontend's, or a route rule's), then a server, then dial it."""
    cdef FastConn *fc = <FastConn *>c
    cdef Listener *lst = fc.listener
    cdef Setup *st = fc.setup
    if fc.pool == NULL:
        pthread_mutex_lock(&lst.lock)
        fc.pool = lst.routes[st.route - 1] if st.route else lst.pool
        if fc.pool != NULL:
            pool_ref(fc.pool)
        pthread_mutex_unlock(&lst.lock)
        if fc.pool == NULL:
            end(w, c, W_NO_SERVER, 0)
            return
        fc.pool_id = fc.pool.id
        if not to_server(w, c):
            return
        hash_key(fc)
        stick_key(fc)
    dial_next(w, c)


cdef void stick_key(FastConn *fc) noexcept nogil:
    """The stick table's key (listener.Frontend._stick_key): the client id, the user name
    or the source address; none when empty (broker-assigned ids must not all stick)."""
    cdef char text[INET6_ADDRSTRLEN + 8]
    cdef const uint8_t *key = <const uint8_t *>fc.ids
    cdef size_t n = fc.cid_len
    if fc.pool.stick_on == H_SOURCE:
        n = peer_text(&fc.peer, fc.state, text, False)
        key = <const uint8_t *>text
    elif fc.pool.stick_on == H_USERNAME:
        key += fc.cid_len
        n = fc.user_len
    if pool_stick_digest(fc.pool, key, n, &fc.stick_key):
        fc.state |= FC_STICKY
    else:
        fc.state &= ~FC_STICKY


cdef void hash_key(FastConn *fc) noexcept nogil:
    """The balancer's key, the bytes listener.Frontend._hash_key hashes (consistent hashing
    must agree with the event-loop path and other machines): the client's address for
    "source", else its client id or user name, else its address and port."""
    cdef Setup *st = fc.setup
    cdef char text[INET6_ADDRSTRLEN + 8]
    cdef size_t n
    cdef uint8_t key = fc.pool.hash_key
    if key == H_CLIENT_ID and fc.cid_len:
        st.key_hash = xxh64(<const uint8_t *>fc.ids, fc.cid_len)
    elif key == H_USERNAME and fc.user_len:
        st.key_hash = xxh64(<const uint8_t *>fc.ids + fc.cid_len, fc.user_len)
    else:
        n = peer_text(&fc.peer, fc.state, text, key != H_SOURCE)
        st.key_hash = xxh64(<const uint8_t *>text, <Py_ssize_t>n)
    st.has_key = True


cdef size_t peer_text(const sockaddr_in6 *peer, uint8_t state, char *out,
                      bint with_port) noexcept nogil:
    """The client address (a FastConn's peer and state) as Python's socket module spells it
    for the accepted socket (inet_ntop), optionally ":port"."""
    cdef const uint8_t *a = peer.sin6_addr.s6_addr
    cdef size_t n
    cdef int port = ntohs(peer.sin6_port)
    if is_mapped(a) and not (state & FC_PEER_V6):
        inet_ntop(AF_INET, a + 12, out, INET6_ADDRSTRLEN)
    else:
        inet_ntop(AF_INET6, a, out, INET6_ADDRSTRLEN)
    n = 0
    while out[n]:
        n += 1
    if with_port:
        out[n] = b':'
        n += 1
        n += put_uint(out + n, port)
    return n


cdef inline bint is_mapped(const uint8_t *a) noexcept nogil:
    cdef int i
    for i in range(10):
        if a[i]:
            return False
    return a[10] == 0xFF and a[11] == 0xFF


cdef size_t put_uint(char *out, uint32_t v) noexcept nogil:
    """Decimal digits of v at out; how many."""
    cdef char digits[10]
    cdef size_t n = 0, i
    while True:
        digits[n] = <char>(48 + v % 10)  # '0'
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = digits[n - 1 - i]
    return n


cdef void dial_next(Worker *w, Conn *c) noexcept nogil:
    """Pick a server (not one that failed this client) and connect to it."""
    cdef FastConn *fc = <FastConn *>c
    cdef Setup *st = fc.setup
    cdef sockaddr_storage addr
    cdef socklen_t addrlen
    cdef bint first = st.ntried == 0 and st.failures == 0  # the table only on the first pick
    fc.server = pool_pick(fc.pool, st.key_hash, st.has_key, st.tried, st.ntried,
                          &fc.stick_key if first and fc.state & FC_STICKY else NULL,
                          &addr, &addrlen)
    if fc.server == NULL:
        end(w, c, W_NO_SERVER, 0)
        return
    fc.server_id = fc.server.id
    dial(w, c, &addr, addrlen)


cdef void dial(Worker *w, Conn *c, sockaddr_storage *addr, socklen_t addrlen) noexcept nogil:
    cdef FastConn *fc = <FastConn *>c
    cdef epoll_event ev
    cdef Pending *p
    cdef ssize_t n
    cdef int one = 1
    cdef int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        end(w, c, W_ERRNO, errno)  # our own limit, not the server's fault: no retry
        return
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    c.fd[1] = fd
    c.phase = PH_DIAL
    if connect(fd, <sockaddr *>addr, addrlen) < 0 and errno != EINPROGRESS:
        connect_failed(w, c, errno)
        return
    ev.events = CONN_MASK
    ev.data.u64 = <uint64_t><uintptr_t>c | 1
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        end(w, c, W_ERRNO, errno)
        return
    set_deadline(w, c, fc.pool.timeout_connect)
    # Near servers (loopback, a LAN) have often finished the handshake by now: sending at
    # once saves waiting for the EPOLLOUT that says so. EAGAIN: still connecting.
    if c.flags & F_DONE:
        return
    p = c.pend[0]
    n = send(fd, <char *>(p + 1) + p.off, p.len - p.off, MSG_NOSIGNAL)
    if n >= 0:
        p.off += <uint32_t>n
        on_connected(w, c)
    elif errno not in (EAGAIN, EINTR):
        connect_failed(w, c, errno)


cdef void drop_server(Worker *w, Conn *c) noexcept nogil:
    """This attempt failed: close its socket and remember the server as tried."""
    cdef FastConn *fc = <FastConn *>c
    cdef Setup *st = fc.setup
    close(c.fd[1])  # never dup'd: closing also drops it from the epoll set
    c.fd[1] = -1
    c.flags &= ~((F_RD | F_HUP) << 1)
    atomic_add32(&fc.server.live, -1)
    if st.tried == NULL:
        st.tried = <Server **>malloc(MAX_TRIED * sizeof(Server *))
    if st.tried != NULL and st.ntried < MAX_TRIED:
        st.tried[st.ntried] = fc.server  # keeps the reference the pick took
        st.ntried += 1
    else:
        server_unref(fc.server)
    fc.server = NULL


cdef void connect_failed(Worker *w, Conn *c, int err) noexcept nogil:
    """A connect error or timeout: retry (another server with redispatch) while the backend's
    retries allow (backends.Backend.connect)."""
    cdef FastConn *fc = <FastConn *>c
    atomic_inc64(&fc.server.n.connect_errors, 1)
    if err in (EMFILE, ENFILE):
        end(w, c, W_ERRNO, err)
        return
    retry(w, c, True)


cdef void retry(Worker *w, Conn *c, bint connect_error) noexcept nogil:
    cdef FastConn *fc = <FastConn *>c
    cdef Setup *st = fc.setup
    cdef Server *s = fc.server
    cdef Pool *p = fc.pool
    cdef sockaddr_storage addr
    cdef socklen_t addrlen
    cdef bint again
    st.failures += 1
    again = st.failures <= p.retries and (connect_error or p.redispatch)
    if again:
        atomic_inc64(&s.n.retries, 1)
        if p.redispatch:
            atomic_inc64(&s.n.redispatches, 1)
    if not again or p.redispatch:
        drop_server(w, c)
        if not again:
            end(w, c, W_NO_SERVER if connect_error else W_SERVER_CLOSED, 0)
            return
        rewind(c)
        dial_next(w, c)
        return
    # no redispatch: the same server again, keeping the hold the pick took
    close(c.fd[1])
    c.fd[1] = -1
    c.flags &= ~((F_RD | F_HUP) << 1)
    rewind(c)
    memcpy(&addr, &s.addr, s.addrlen)
    addrlen = s.addrlen
    dial(w, c, &addr, addrlen)


cdef inline void rewind(Conn *c) noexcept nogil:
    """A new attempt sends the PROXY header and the client's bytes from the start."""
    cdef FastConn *fc = <FastConn *>c
    if c.pend[0] != NULL:
        c.pend[0].off = 0
    fc.setup.ack_have = 0


# ---------------------------------------------------------------- the server's side

cdef void connected(Worker *w, Conn *c, uint32_t ev) noexcept nogil:
    """The server answered the connect (or refused it)."""
    cdef int err = 0
    cdef socklen_t len = sizeof(err)
    if ev & (EPOLLERR | EPOLLHUP):
        getsockopt(c.fd[1], SOL_SOCKET, SO_ERROR, &err, &len)
        connect_failed(w, c, err if err else ECONNREFUSED)
        return
    if ev & EPOLLOUT:
        on_connected(w, c)


cdef void on_connected(Worker *w, Conn *c) noexcept nogil:
    """The server accepted the connection: send it the PROXY header and the client's bytes."""
    cdef FastConn *fc = <FastConn *>c
    fc.connected_ns = mono_ns()
    observe_latency(fc.pool, fc.connected_ns - fc.inspected_ns)
    c.phase = PH_CONNACK
    set_deadline(w, c, fc.pool.timeout_server)
    if c.flags & F_DONE:
        return
    if send_to_server(w, c) and fc.state & FC_INVALID:
        relay(w, c, NULL, 0)  # nothing to inspect: no CONNACK is awaited


cdef bint send_to_server(Worker *w, Conn *c) noexcept nogil:
    """Send what is left of the PROXY header and the client's bytes; True once all is out
    (False: wait for EPOLLOUT, or the attempt failed and was handled)."""
    cdef Pending *p = c.pend[0]
    cdef ssize_t n
    while p.off < p.len:
        n = send(c.fd[1], <char *>(p + 1) + p.off, p.len - p.off, MSG_NOSIGNAL)
        if n < 0:
            if errno == EAGAIN or errno == EINTR:
                return False
            if is_reset(errno):
                hung_up(w, c)
            else:
                end(w, c, W_ERRNO, errno)
            return False
        p.off += <uint32_t>n
    return True


cdef void hung_up(Worker *w, Conn *c) noexcept nogil:
    """The server closed before a CONNACK: another server may take the client (HAProxy's
    retry-on empty-response, listener._HungUp)."""
    retry(w, c, False)


cdef void read_connack(Worker *w, Conn *c) noexcept nogil:
    """The server's first bytes until its CONNACK; they all go to the client, with it."""
    cdef FastConn *fc = <FastConn *>c
    cdef Setup *st = fc.setup
    cdef ConnackScan scan
    cdef const uint8_t *p
    cdef uint32_t cap = w.core.bufsize, want, total
    cdef ssize_t n
    cdef int rc
    cdef bint eof = False
    while c.flags & (F_RD << 1):
        if st.ack_have == 0:
            p = <const uint8_t *>w.buf
            want = cap
            n = recv(c.fd[1], w.buf, want, 0)
        else:
            p = st.ack
            want = cap - st.ack_have
            n = recv(c.fd[1], st.ack + st.ack_have, want, 0)
        if n < 0:
            if errno == EAGAIN:
                c.flags &= ~(F_RD << 1)
            elif is_reset(errno):
                hung_up(w, c)
            elif errno != EINTR:
                end(w, c, W_ERRNO, errno)
            return
        if n == 0:
            if st.ack_have == 0:
                hung_up(w, c)
                return
            eof = True  # it said something, then closed: relay that, the relay sees the EOF
            p = st.ack
            total = st.ack_have
            rc = -1
        else:
            if <uint32_t>n < want:
                c.flags &= ~(F_RD << 1)
            total = st.ack_have + <uint32_t>n if st.ack_have else <uint32_t>n
            rc = connack_scan(p, total, cap, fc.version, &scan)
            if rc == 0 and total == cap:
                rc = -1  # a CONNACK larger than the engine's buffer: not ours to judge
        if rc == 0:
            if st.ack_have == 0:
                st.ack = <uint8_t *>malloc(cap)
                if st.ack == NULL:
                    end(w, c, W_ERRNO, ENOMEM)
                    return
                memcpy(st.ack, p, total)
            st.ack_have = total
            continue
        if rc > 0:
            connack_read(w, c, p, &scan)
        else:
            atomic_inc64(&fc.server.n.response_errors, 1)
        if eof:
            c.flags |= (F_RD | F_HUP) << 1
        relay(w, c, p, total)
        return


cdef void connack_read(Worker *w, Conn *c, const uint8_t *p,
                       const ConnackScan *scan) noexcept nogil:
    cdef FastConn *fc = <FastConn *>c
    cdef Span assigned
    fc.connack = <int16_t>scan.reason_code
    observe_connack(fc.pool, mono_ns() - fc.inspected_ns)
    atomic_inc64(&fc.server.n.connack[scan.reason_code & 0xFF], 1)
    if fc.cid_len == 0 and scan.properties.start >= 0:
        assigned = property_span(p, scan.properties, ASSIGNED_ID)
        if assigned.start >= 0 and assigned.length:
            learn_id(fc, p + assigned.start, <uint16_t>assigned.length)
            if fc.pool.stick_on == H_CLIENT_ID:  # stick to where the broker keeps it
                stick_key(fc)
                if fc.state & FC_STICKY:
                    atomic_inc64(&fc.pool.n.learned_ids, 1)


cdef void learn_id(FastConn *fc, const uint8_t *cid, uint16_t n) noexcept nogil:
    """A v5 client without an id got one from the broker: the record shows it."""
    cdef char *ids = <char *>malloc(n + fc.user_len)
    if ids == NULL:
        return
    memcpy(ids, cid, n)
    if fc.user_len:
        memcpy(ids + n, fc.ids, fc.user_len)
    free(fc.ids)
    fc.ids = ids
    fc.cid_len = n


# ---------------------------------------------------------------- relaying

cdef void relay(Worker *w, Conn *c, const uint8_t *to_client, uint32_t n) noexcept nogil:
    """Setup is over: the same connection relays from here (_splice.pyx)."""
    cdef FastConn *fc = <FastConn *>c
    cdef Listener *lst = fc.listener
    cdef Setup *st = fc.setup
    cdef ssize_t sent = send(c.fd[0], to_client, n, MSG_NOSIGNAL) if n else 0
    # The CONNACK first, the bookkeeping after: the client waits for it. An error is left
    # for the relay's own send to meet and report.
    if sent < 0:
        sent = 0
    if <uint32_t>sent < n:
        c.pend[1] = pending_new(<const char *>to_client + sent, n - <uint32_t>sent)
        if c.pend[1] == NULL:
            end(w, c, W_ERRNO, ENOMEM)
            return
        fm_add64(&w.buffered, n - <uint32_t>sent)
    if fc.version and (lst.track == TRACK_ALL or lst.track == TRACK_V5 and fc.version == 5):
        c.flags |= F_TRACK  # from the start: the client's bytes (its CONNECT first), the
        follow(c, 1, to_client, n, False)  # server's from its CONNACK
        if c.pend[0] != NULL:
            follow(c, 0, <const uint8_t *>(c.pend[0] + 1) + c.pend[0].len - st.data_len,
                   st.data_len, False)
    if c.pend[0] != NULL and c.pend[0].off == c.pend[0].len:
        free(c.pend[0])
        c.pend[0] = NULL
    elif c.pend[0] != NULL:  # the relay holds the rest now (Engine.buffered counts it)
        fm_add64(&w.buffered, c.pend[0].len - c.pend[0].off)
    c.nbytes[0] = st.data_len  # the client's bytes (a PROXY header is ours)
    c.nbytes[1] = n
    atomic_inc64(&fc.server.n.total, 1)
    fc.state |= FC_RELAYED
    on_received(c, 0, st.data_len)
    on_received(c, 1, n)
    if fc.state & FC_STICKY:  # the server holds its session now (when the CONNACK says so)
        pool_stick_relayed(fc.pool, &fc.stick_key, fc.server, fc.connack <= 0)
        fc.state |= FC_STUCK
    free_setup(fc)
    c.phase = 0
    c.idle[0] = client_ticks(lst, fc)
    c.idle[1] = fc.pool.timeout_server
    c.last_rx[0] = c.last_rx[1] = w.now
    refile(w, c)
    if not (c.flags & F_DONE) and not pump(w, c, 0):
        pump(w, c, 1)


cdef uint32_t client_ticks(Listener *lst, FastConn *fc) noexcept nogil:
    """timeout_client (config.ClientTimeout.for_keepalive)."""
    cdef double s
    if not lst.client_auto:
        return ticks(lst.client_s)
    if fc.keepalive == 0:
        return ticks(lst.client_max)
    s = 1.5 * fc.keepalive
    return ticks(min(max(s, lst.client_min), lst.client_max))


# ---------------------------------------------------------------- PROXY header

cdef const uint8_t *V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


cdef inline const uint8_t *ip_of(const sockaddr_in6 *a, bint *v4) noexcept nogil:
    """The address bytes, IPv4-mapped ones as IPv4 (proxy_protocol._ip)."""
    cdef const uint8_t *bytes16 = &a.sin6_addr.s6_addr[0]
    v4[0] = is_mapped(bytes16)
    return bytes16 + 12 if v4[0] else bytes16


cdef size_t ipv6_text(const uint8_t *a, char *out) noexcept nogil:
    """An IPv6 address as str(ipaddress.IPv6Address) writes it (RFC 5952: lower-case hex,
    the first longest run of two or more zero groups as "::"), for PROXY v1."""
    cdef int best = -1, best_len = 0, run = 0, i, g
    cdef uint32_t v
    cdef size_t n = 0
    cdef const char *hexd = b"0123456789abcdef"
    for i in range(8):
        if a[2 * i] == 0 and a[2 * i + 1] == 0:
            run += 1
            if run > best_len:
                best_len = run
                best = i - run + 1
        else:
            run = 0
    if best_len < 2:
        best = -1
    i = 0
    while i < 8:
        if i == best:
            out[n] = b':'
            n += 1
            if i == 0:
                out[n] = b':'
                n += 1
            i += best_len
            continue
        v = (<uint32_t>a[2 * i] << 8) | a[2 * i + 1]
        for g in range(12, -4, -4):
            if v >> g or g == 0:
                out[n] = hexd[(v >> g) & 15]
                n += 1
        if i < 7:
            out[n] = b':'
            n += 1
        i += 1
    return n


cdef size_t ip_text(const uint8_t *a, bint v4, char *out) noexcept nogil:
    cdef size_t n = 0
    cdef int i
    if not v4:
        return ipv6_text(a, out)
    for i in range(4):
        n += put_uint(out + n, a[i])
        if i < 3:
            out[n] = b'.'
            n += 1
    return n


cdef Py_ssize_t proxy_v1(const sockaddr_in6 *src, const sockaddr_in6 *dst,
                         char *out) noexcept nogil:
    """proxy_protocol.encode_v1 (at most 107 bytes)."""
    cdef bint sv4, dv4
    cdef const uint8_t *s = ip_of(src, &sv4)
    cdef const uint8_t *d = ip_of(dst, &dv4)
    cdef size_t n
    if sv4 != dv4:
        memcpy(out, b"PROXY UNKNOWN\r\n", 15)
        return 15
    memcpy(out, b"PROXY TCP4 " if sv4 else b"PROXY TCP6 ", 11)
    n = 11
    n += ip_text(s, sv4, out + n)
    out[n] = b' '
    n += 1
    n += ip_text(d, dv4, out + n)
    out[n] = b' '
    n += 1
    n += put_uint(out + n, ntohs(src.sin6_port))
    out[n] = b' '
    n += 1
    n += put_uint(out + n, ntohs(dst.sin6_port))
    out[n] = b'\r'
    out[n + 1] = b'\n'
    return <Py_ssize_t>n + 2


cdef inline void put16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef Py_ssize_t proxy_v2(const sockaddr_in6 *src, const sockaddr_in6 *dst, int tlv,
                         const char *cid, size_t cid_len, uint8_t *out) noexcept nogil:
    """proxy_protocol.encode_v2 with at most the client id TLV; -1 when longer than v2
    allows (out has room for 16 + 36 + 3 + 65535 bytes)."""
    cdef bint sv4, dv4
    cdef const uint8_t *s = ip_of(src, &sv4)
    cdef const uint8_t *d = ip_of(dst, &dv4)
    cdef size_t body, n
    cdef bint with_tlv = tlv >= 0 and cid_len > 0
    memcpy(out, V2_SIGNATURE, 12)
    out[12] = 0x21  # version 2, PROXY
    n = 16
    if sv4 and dv4:
        out[13] = 0x11  # TCP over IPv4
        memcpy(out + n, s, 4)
        memcpy(out + n + 4, d, 4)
        n += 8
    else:
        out[13] = 0x21  # TCP over IPv6: an IPv4 side is mapped
        memcpy(out + n, src.sin6_addr.s6_addr, 16)
        memcpy(out + n + 16, dst.sin6_addr.s6_addr, 16)
        n += 32
    memcpy(out + n, &src.sin6_port, 2)  # both network order already
    memcpy(out + n + 2, &dst.sin6_port, 2)
    n += 4
    if with_tlv:
        if cid_len > 0xFFFF:
            return -1
        out[n] = <uint8_t>tlv
        put16(out + n + 1, <uint32_t>cid_len)
        memcpy(out + n + 3, cid, cid_len)
        n += 3 + cid_len
    body = n - 16
    if body > 0xFFFF:
        return -1
    put16(out + 14, <uint32_t>body)
    return <Py_ssize_t>n


cdef bint to_server(Worker *w, Conn *c) noexcept nogil:
    """What goes to every server tried: the backend's PROXY header, then the client's bytes.
    False if the connection ended."""
    cdef FastConn *fc = <FastConn *>c
    cdef Setup *st = fc.setup
    cdef Pending *out = NULL
    if fc.pool.send_proxy:
        if not proxy_header_first(w, c, &out):
            return False
    elif st.block != NULL:  # the bytes as read: their buffer is sent as it is
        out = st.block
        out.len = 0
        st.block = NULL
    st.buf = NULL
    st.have = st.cap = 0
    if out != NULL:
        out.len += st.data_len
        out.off = 0
        c.pend[0] = out
    return True


cdef bint proxy_header_first(Worker *w, Conn *c, Pending **result) noexcept nogil:
    """A Pending of the PROXY header then the client's bytes (its ``len``: the header's)."""
    cdef FastConn *fc = <FastConn *>c
    cdef Setup *st = fc.setup
    cdef Pool *p = fc.pool
    cdef sockaddr_storage local
    cdef sockaddr_in6 dst
    cdef socklen_t len = sizeof(local)
    cdef size_t room = 107 if p.send_proxy == 1 else 16 + 36 + 3 + fc.cid_len
    cdef Py_ssize_t h
    cdef Pending *out
    if getsockname(c.fd[0], <sockaddr *>&local, &len) < 0:
        end(w, c, W_ERRNO, errno)
        return False
    as_v6(<sockaddr_in6 *>&local, &dst)
    out = <Pending *>malloc(sizeof(Pending) + room + st.data_len)
    if out == NULL:
        end(w, c, W_ERRNO, ENOMEM)
        return False
    if p.send_proxy == 1:
        h = proxy_v1(&fc.peer, &dst, <char *>(out + 1))
    else:
        h = proxy_v2(&fc.peer, &dst, p.client_id_tlv, fc.ids, fc.cid_len, <uint8_t *>(out + 1))
    if h < 0:
        free(out)
        end(w, c, W_ERRNO, EMSGSIZE)
        return False
    memcpy(<char *>(out + 1) + h, st.buf, st.data_len)
    out.len = <uint32_t>h
    free(st.block)  # the bytes live on after the header
    st.block = NULL
    result[0] = out
    return True


def proxy_header(int version, src, dst, bytes client_id=b"", int tlv=-1) -> bytes:
    """The PROXY header the fast path sends (to compare with fastmqtt.proxy_protocol):
    ``src``/``dst`` are (ip, port) pairs."""
    cdef sockaddr_in6 s, d
    cdef uint8_t out[16 + 36 + 3 + 65535]
    cdef Py_ssize_t n
    _sockaddr(src, &s)
    _sockaddr(dst, &d)
    if version == 1:
        n = proxy_v1(&s, &d, <char *>out)
    else:
        n = proxy_v2(&s, &d, tlv, PyBytes_AS_STRING(client_id), PyBytes_GET_SIZE(client_id),
                     out)
    if n < 0:
        raise ValueError("PROXY v2 header longer than 65535 bytes")
    return out[:n]


cdef _sockaddr(addr, sockaddr_in6 *out):
    import ipaddress
    ip = ipaddress.ip_address(addr[0])
    memset(out, 0, sizeof(sockaddr_in6))
    out.sin6_family = AF_INET6
    packed = ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed
    memcpy(out.sin6_addr.s6_addr, <const char *>packed, 16)
    out.sin6_port = ((addr[1] & 0xFF) << 8) | (addr[1] >> 8)


# ---------------------------------------------------------------- events and deadlines

cdef void on_setup_event(Worker *w, Conn *c, int side, uint32_t ev) noexcept nogil:
    cdef FastConn *fc = <FastConn *>c
    if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        c.flags |= F_RD << side
    if ev & (EPOLLRDHUP | EPOLLHUP):
        c.flags |= F_HUP << side
    if side == 0:
        if c.phase == PH_CONNECT and c.flags & F_RD:
            read_connect(w, c)
        return  # later phases leave the client's bytes to the relay
    if c.phase == PH_DIAL:
        connected(w, c, ev)
        return
    if c.phase != PH_CONNACK:
        return
    if ev & EPOLLOUT and c.pend[0] != NULL and c.pend[0].off < c.pend[0].len:
        if not send_to_server(w, c):
            return
        if fc.state & FC_INVALID:
            relay(w, c, NULL, 0)
            return
    if c.flags & (F_RD << 1) and not (c.flags & F_DONE):
        read_connack(w, c)


cdef void on_timer(Worker *w, Conn *c) noexcept nogil:
    cdef FastConn *fc = <FastConn *>c
    if c.phase == PH_CONNECT:
        end(w, c, W_INSPECT_TIMEOUT, 0)
    elif c.phase == PH_HOLD:
        choose(w, c)
    elif c.phase == PH_DIAL:
        connect_failed(w, c, ETIMEDOUT)
    else:
        atomic_inc64(&fc.server.n.response_errors, 1)
        end(w, c, W_SERVER_TIMEOUT, 0)


HOOKS.listener = on_listener
HOOKS.setup_event = on_setup_event
HOOKS.timer = on_timer
HOOKS.ended = on_ended
HOOKS.count_bytes = on_received
HOOKS.turn = on_turn
HOOKS.exit = on_exit
HOOKS.released = on_released


# ---------------------------------------------------------------- Python's side

cdef class FastPath:
    """The fast path of one engine: its frontends, and the records of their connections.

    Attach it before the engine starts; it lives as long as the engine (dropping it stops
    the engine). Frontends are added with ``frontend()`` (again to change their settings),
    watched with ``listen()``, and their connections come back through ``drain()``.
    """

    cdef Engine engine
    cdef Fast *f
    cdef dict _slots  # frontend id -> its Listener's slot
    cdef dict _pools  # frontend id -> the PoolRefs its Listener holds (kept alive)

    def __cinit__(self, Engine engine not None, uint32_t maxconn):
        cdef Core *core = engine.core
        cdef int i
        if engine._started or engine._stopped or core.fast != NULL:
            raise RuntimeError("attach the fast path to a new engine, before start()")
        self._slots = {}
        self._pools = {}
        self.f = <Fast *>calloc(1, sizeof(Fast))
        if self.f == NULL:
            raise MemoryError()
        self.f.threads = <PerThread *>calloc(core.nworkers, sizeof(PerThread))
        if self.f.threads == NULL:
            free(self.f)
            self.f = NULL
            raise MemoryError()
        pthread_mutex_init(&self.f.lock, NULL)
        self.f.core = core
        self.f.maxconn = maxconn
        for i in range(core.nworkers):
            self.f.threads[i].fast = self.f
            core.workers[i].fast = &self.f.threads[i]
        core.fast = &HOOKS
        self.engine = engine

    def __dealloc__(self):
        cdef int i
        cdef Fast *f = self.f
        if f == NULL:
            return
        if self.engine is not None and self.engine.core != NULL:
            with nogil:
                halt(f.core)  # no thread may run our hooks past this point
        for i in range(MAX_LISTENERS):
            if f.listeners[i] != NULL:
                listener_unref(f.listeners[i])
        free_query(&f.query)
        pthread_mutex_destroy(&f.lock)
        free(f.threads)
        free(f)

    # -- frontends -------------------------------------------------------------------

    def frontend(self, uint32_t frontend_id, int fd, PoolRef pool not None, list routes, *,
                 double inspect_delay, uint32_t max_connect_size, uint32_t maxconn,
                 bint reject_invalid=True, bint allow_bridge=True, int track=TRACK_NONE,
                 client_timeout=(False, 240.0, 30.0, 3600.0), bytes refusals=None,
                 AdmissionRef admission=None) -> None:
        """Add a frontend listening on ``fd`` (the engine keeps a dup of it), or change the
        settings of one added before (``fd`` is then ignored). ``routes[i]``: the backend of
        rule i when it is a route rule, else None. ``client_timeout``: (auto, seconds, min,
        max) as config.ClientTimeout. ``refusals``: FastPath.refusal_table()'s bytes, to
        answer refusals with a CONNACK (reject_with_connack), or None. ``admission``: the
        frontend's rules and limits, or None (connections holding the old ones keep them).
        ``track``: 0 none, 1 MQTT 5 clients (drain_disconnect), 2 every MQTT client
        (track_packets): their relayed streams follow packet boundaries from the start."""
        cdef Listener *lst
        cdef Admission *old
        cdef int slot
        cdef uint8_t *table = NULL
        if len(routes) > MAX_ROUTES:
            raise ValueError(f"at most {MAX_ROUTES} rules per frontend on the fast path")
        if not 64 <= max_connect_size <= 0x10000000 or maxconn == 0 or inspect_delay <= 0:
            raise ValueError("bad max_connect_size, maxconn or inspect_delay")
        if refusals is not None:
            table = <uint8_t *>malloc(PyBytes_GET_SIZE(refusals))
            if table == NULL:
                raise MemoryError()
            memcpy(table, PyBytes_AS_STRING(refusals), PyBytes_GET_SIZE(refusals))
        lst = self._listener(frontend_id, fd)
        if lst == NULL:
            free(table)
            raise OSError(errno, "dup of the listening socket")
        auto, seconds, low, high = client_timeout
        lst.inspect_ticks = ticks(inspect_delay)
        lst.max_connect = max_connect_size
        lst.maxconn = maxconn
        lst.reject_invalid = reject_invalid
        lst.allow_bridge = allow_bridge
        lst.track = <uint8_t>track
        lst.client_auto, lst.client_s, lst.client_min, lst.client_max = auto, seconds, low, high
        self._pools[frontend_id] = [pool, *routes]
        pthread_mutex_lock(&lst.lock)
        swap_pool(&lst.pool, pool.p)
        for slot in range(MAX_ROUTES):
            route = routes[slot] if slot < len(routes) else None
            swap_pool(&lst.routes[slot], pool_of(route))
        table, lst.refusals = lst.refusals, table
        old = lst.admission
        lst.admission = NULL if admission is None else admission.a
        if lst.admission != NULL:
            admission_ref(lst.admission)
        pthread_mutex_unlock(&lst.lock)
        if old != NULL:
            admission_unref(old)
        free(table)
        resume_freed(self.f)  # a raised maxconn

    cdef Listener *_listener(self, uint32_t frontend_id, int fd) except? NULL:
        cdef Listener *lst
        cdef int slot, one = 1
        if frontend_id in self._slots:
            return self.f.listeners[self._slots[frontend_id]]
        slot = next((i for i in range(MAX_LISTENERS) if self.f.listeners[i] == NULL), -1)
        if slot < 0:
            raise ValueError(f"at most {MAX_LISTENERS} frontends on the fast path")
        lst = <Listener *>calloc(1, sizeof(Listener))
        if lst == NULL:
            raise MemoryError()
        lst.fd = dup(fd)
        if lst.fd < 0 or ioctl(lst.fd, FIONBIO, &one) < 0:  # accept must never block a thread
            close_fd(&lst.fd)
            free(lst)
            return NULL
        # Accepted sockets inherit TCP_NODELAY from the listening one (Linux): a setsockopt
        # here instead of one per connection.
        setsockopt(lst.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        lst.refs = 1
        lst.id = frontend_id
        lst.paused = P_CLOSED
        pthread_mutex_init(&lst.lock, NULL)
        pthread_mutex_lock(&self.f.lock)
        self.f.listeners[slot] = lst
        pthread_mutex_unlock(&self.f.lock)
        self._slots[frontend_id] = slot
        return lst

    def listen(self, uint32_t frontend_id, bint on) -> None:
        """Start or stop accepting on a frontend (stopped: new clients wait in the backlog)."""
        cdef Listener *lst = self.f.listeners[self._slots[frontend_id]]
        pthread_mutex_lock(&self.f.lock)
        lst.paused = (lst.paused & ~P_CLOSED) if on else (lst.paused | P_CLOSED)
        pthread_mutex_unlock(&self.f.lock)
        wake_all(self.f)

    def remove(self, uint32_t frontend_id) -> None:
        """Forget a frontend: its connections go on, but its port closes before this returns
        (once every thread has let go of the engine's dup of it, at its next turn)."""
        cdef int slot = self._slots.pop(frontend_id)
        cdef Listener *lst = self.f.listeners[slot]
        cdef int64_t until = mono_ns() + 2000000000
        pthread_mutex_lock(&self.f.lock)
        lst.paused |= P_CLOSED
        lst.removed = True
        if lst.watchers == 0:
            close_fd(&lst.fd)
        self.f.listeners[slot] = NULL
        pthread_mutex_unlock(&self.f.lock)
        wake_all(self.f)
        with nogil:
            while not closed(self.f, lst) and mono_ns() < until:
                sleep_ms(1)
        listener_unref(lst)
        self._pools.pop(frontend_id, None)

    def set_limits(self, uint32_t maxconn, uint32_t python_live) -> None:
        """The process's maxconn, and the event-loop path's live connections (they count
        against it too): call when either changes."""
        self.f.maxconn = maxconn
        atomic_store32(&self.f.py_live, python_live)
        resume_freed(self.f)

    @property
    def live(self) -> int:
        """Connections of the fast path, from accept to their end."""
        return atomic_load32(&self.f.live)

    def close_server(self, uint32_t server_id) -> bool:
        """End every relayed connection to that server (on_marked_down = "shutdown-sessions";
        their records say "killed"). False when a thread has too many requests queued: ask
        again a little later."""
        cdef int i
        cdef PerThread *t
        cdef bint ok = True
        pthread_mutex_lock(&self.f.lock)
        for i in range(self.f.core.nworkers):
            ok = ok and self.f.threads[i].nkills < MAX_KILLS
        if ok:
            for i in range(self.f.core.nworkers):
                t = &self.f.threads[i]
                t.kills[t.nkills] = server_id
                t.nkills += 1
        pthread_mutex_unlock(&self.f.lock)
        if ok:
            wake_all(self.f)
        return ok

    def goodbye(self, bytes packet not None, uint32_t count) -> None:
        """Send ``packet`` (a DISCONNECT) to at most ``count`` more MQTT 5 clients relayed
        with packet tracking, each at its next packet boundary, then close them (the record
        says "drained"). Call again for more: a rate is the caller's."""
        cdef int i, n = self.f.core.nworkers
        if not 0 < len(packet) <= MAX_BYE:
            raise ValueError(f"goodbye packet must be 1..{MAX_BYE} bytes")
        pthread_mutex_lock(&self.f.lock)
        memcpy(self.f.bye_packet, PyBytes_AS_STRING(packet), len(packet))
        self.f.bye_len = len(packet)
        for i in range(n):  # threads hold about equal shares of the connections
            self.f.threads[i].bye_quota = (count + n - 1 - i) // n
        self.f.bye_gen += 1
        pthread_mutex_unlock(&self.f.lock)
        wake_all(self.f)

    # -- find() and leave(): a query every thread answers at its next turn ---------------

    def find(self, keys=None, bint prefix=False, uint32_t pool_id=0,
             uint32_t server_id=0, uint32_t limit=1000) -> None:
        """Ask every thread for its relayed connections whose client id is one of ``keys``
        (bytes; with ``prefix``, the one key it starts with; None: any id), of backend
        ``pool_id`` and server ``server_id`` (0: any), ``limit`` at most; ``answered()`` says
        when ``found()`` has them all. At most MAX_FIND_KEYS keys, MAX_FIND_KEY_BYTES bytes
        in all, each a client id's length at most: callers split larger sets."""
        cdef bytes key
        cdef Key *table = NULL
        cdef char *blob = NULL
        cdef View *views
        cdef uint32_t i, offset = 0
        hashed = []
        for key in keys or ():
            if len(key) > MAX_KEY_LEN:
                raise ValueError(f"a client id is {MAX_KEY_LEN} bytes at most")
            offset += len(key)  # checked below each time: it stays far from 2**32
            hashed.append((xxh64(<const uint8_t *>PyBytes_AS_STRING(key), len(key)), key))
            if len(hashed) > MAX_KEYS or offset > MAX_KEY_BYTES:
                raise ValueError(f"at most {MAX_KEYS} client ids, {MAX_KEY_BYTES} bytes")
        if prefix and len(hashed) != 1:
            raise ValueError("a prefix find names one prefix")
        hashed.sort()
        limit = min(limit, MAX_FOUND)
        table = <Key *>malloc(max(len(hashed), 1) * sizeof(Key))
        blob = <char *>malloc(max(offset, 1))
        views = <View *>calloc(max(limit, 1), sizeof(View))
        if table == NULL or blob == NULL or views == NULL:
            free(table)
            free(blob)
            free(views)
            raise MemoryError()
        offset = 0
        for i in range(len(hashed)):
            key = hashed[i][1]
            table[i].hash = hashed[i][0]
            table[i].offset = offset
            table[i].len = len(key)
            memcpy(blob + offset, PyBytes_AS_STRING(key), len(key))
            offset += len(key)
        self._open_query(Q_FIND)
        self.f.query.by_id = keys is not None
        self.f.query.prefix = prefix
        self.f.query.keys = table
        self.f.query.nkeys = len(hashed)
        self.f.query.key_bytes = blob
        self.f.query.pool_id = pool_id
        self.f.query.server_id = server_id
        self.f.query.limit = limit
        self.f.query.views = views
        self._post()

    def leave(self, ids, bytes packet not None) -> None:
        """Ask every thread to end the named connections between two packets: MQTT 5 clients
        get ``packet`` (a DISCONNECT) first, older ones none; untracked ones are closed at
        once. ``answered()`` says when ``left()`` knows which ids were found."""
        cdef int64_t *sorted_ids
        cdef int64_t *asked
        cdef uint32_t i
        wanted = sorted(set(ids))
        if len(wanted) > MAX_LEAVE or len(packet) > MAX_BYE:
            raise ValueError(f"at most {MAX_LEAVE} ids and a {MAX_BYE}-byte packet")
        sorted_ids = <int64_t *>malloc(max(len(wanted), 1) * sizeof(int64_t))
        asked = <int64_t *>malloc(max(len(wanted), 1) * sizeof(int64_t))
        if sorted_ids == NULL or asked == NULL:
            free(sorted_ids)
            free(asked)
            raise MemoryError()
        for i in range(len(wanted)):
            sorted_ids[i] = wanted[i]
        self._open_query(Q_LEAVE)
        self.f.query.ids = sorted_ids
        self.f.query.nids = len(wanted)
        self.f.query.asked = asked
        memcpy(self.f.query.packet, PyBytes_AS_STRING(packet), len(packet))
        self.f.query.packet_len = len(packet)
        self._post()

    def answered(self) -> bool:
        """Every engine thread has answered the last find() or leave()."""
        cdef bint done
        pthread_mutex_lock(&self.f.lock)
        done = self.f.query.answered >= <uint32_t>self.f.core.nworkers
        pthread_mutex_unlock(&self.f.lock)
        return done

    def found(self) -> tuple:
        """(complete, views) of the last find(), which this closes: a view is (conn id,
        frontend id, backend id, server id, client ip, client port, client id, MQTT version,
        start (epoch seconds), bytes in, bytes out, clean start, session expiry or None,
        tracked, username or None). ``complete`` is False when a thread had not answered (it
        never will now)."""
        cdef Query *q = &self.f.query
        cdef View *v
        cdef char text[INET6_ADDRSTRLEN + 8]
        cdef size_t n
        cdef uint32_t i
        complete = self._close_query()
        out = []
        for i in range(q.nviews):
            v = &q.views[i]
            n = peer_text(&v.peer, v.state, text, False)
            out.append((
                v.conn_id, v.listener_id, v.pool_id, v.server_id, text[:n].decode("ascii"),
                ntohs(v.peer.sin6_port), PyUnicode_DecodeUTF8(v.ids, v.cid_len, "replace"),
                v.version & 0x7F, v.wall_ns / 1e9, v.nbytes[0], v.nbytes[1],
                bool(v.clean_start), v.session_expiry if v.has_expiry else None,
                bool(v.tracked),
                PyUnicode_DecodeUTF8(v.ids + v.cid_len, v.user_len, "replace")
                if v.user_len else None,
            ))
        free_query(q)
        return complete, out

    def left(self) -> tuple:
        """(complete, ids found) of the last leave(), which this closes."""
        cdef Query *q = &self.f.query
        complete = self._close_query()
        out = [q.asked[i] for i in range(q.nasked)]
        free_query(q)
        return complete, out

    cdef int _open_query(self, int kind) except -1:
        """A new query, filled in while closed (no thread reads a closed query)."""
        self._close_query()  # one never read back: its caller gave up on it
        free_query(&self.f.query)
        self.f.query.kind = kind
        return 0

    cdef void _post(self):
        """Open the filled-in query; every thread answers it at its next turn."""
        pthread_mutex_lock(&self.f.lock)
        self.f.query.answered = 0
        self.f.query.open = True
        self.f.query.gen += 1
        pthread_mutex_unlock(&self.f.lock)
        wake_all(self.f)

    cdef bint _close_query(self):
        cdef bint complete
        pthread_mutex_lock(&self.f.lock)
        self.f.query.open = False
        complete = self.f.query.answered >= <uint32_t>self.f.core.nworkers
        pthread_mutex_unlock(&self.f.lock)
        return complete

    def live_bytes(self, uint32_t frontend_id) -> tuple:
        """(bytes in, bytes out) of the frontend's relayed connections still open."""
        cdef Listener *lst = self.f.listeners[self._slots[frontend_id]]
        return atomic_load64(&lst.live_bytes[0]), atomic_load64(&lst.live_bytes[1])

    def counters(self, uint32_t frontend_id) -> tuple:
        """(accepted, accept errors, live, {version: CONNECTs}, {reason: forwarded invalid},
        errno of the last accept error)."""
        cdef Listener *lst = self.f.listeners[self._slots[frontend_id]]
        versions = {v: atomic_load64(&lst.n.by_version[v]) for v in range(8)
                    if atomic_load64(&lst.n.by_version[v])}
        invalid = {REASON_WORDS[r]: atomic_load64(&lst.n.invalid[r]) for r in range(1, R_COUNT)
                   if atomic_load64(&lst.n.invalid[r])}
        return (atomic_load64(&lst.n.accepted), atomic_load64(&lst.n.accept_errors),
                atomic_load32(&lst.live), versions, invalid,
                atomic_load32(&lst.n.accept_errno))

    # -- records ---------------------------------------------------------------------

    def facts(self, uintptr_t handle) -> tuple:
        """A relayed connection of the frozen engine (a fast-path row of Engine.export()) as
        drain() would record it now, total time -1 (it goes on elsewhere)."""
        cdef Conn *c = <Conn *>handle
        if not self.engine._frozen or self.engine._exported is None or (
                handle not in self.engine._exported) or c.kind != K_FAST:
            raise ValueError("not an exported fast-path connection")
        return record(<FastConn *>c, -1)

    def drain(self) -> list:
        """One record per ended connection since the last drain (the relay's drain() clears
        the completion eventfd; call that first):
        (frontend id, backend id, server id (0: none), client ip, client port, client id,
        username, MQTT version (0: none), keepalive, CONNACK code (None: none), start
        (epoch seconds), wait ms, connect ms, total ms (-1: not reached), bytes in, bytes out,
        end reason, denied (counts as a refusal), errno, connection id)."""
        cdef Core *core = self.f.core
        cdef Conn *head
        cdef Conn *nxt
        cdef list out = []
        cdef uint32_t n = 0
        cdef uint64_t held = 0
        pthread_mutex_lock(&core.lock)
        head = core.fast_head
        core.fast_head = core.fast_tail = NULL
        pthread_mutex_unlock(&core.lock)
        error = None
        while head != NULL:
            nxt = head.next
            n += 1
            held += (<FastConn *>head).cid_len + (<FastConn *>head).user_len
            if error is None:
                try:
                    out.append(record(<FastConn *>head, <int>(head.t * 1000)))
                except BaseException as e:  # noqa: B036 (raised below, once all are freed)
                    error = e
            free_record(<FastConn *>head)
            head = nxt
        atomic_add32(&self.f.undrained, -<int>n)
        atomic_inc64(&self.f.undrained_bytes, 0 - held)
        resume_freed(self.f)
        if error is not None:
            raise error
        return out


cdef Pool *pool_of(route) except? NULL:
    return NULL if route is None else (<PoolRef?>route).p


cdef bint closed(Fast *f, Listener *lst) noexcept nogil:
    cdef bint done
    pthread_mutex_lock(&f.lock)
    done = lst.fd < 0
    pthread_mutex_unlock(&f.lock)
    return done


cdef void sleep_ms(int ms) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = 0
    ts.tv_nsec = ms * 1000000
    nanosleep(&ts, NULL)


cdef inline void swap_pool(Pool **slot, Pool *p) noexcept:
    if p != NULL:
        pool_ref(p)
    if slot[0] != NULL:
        pool_unref(slot[0])
    slot[0] = p


cdef void free_query(Query *q) noexcept nogil:
    """Free what a closed query holds (the threads no longer touch a closed query)."""
    cdef uint32_t i
    if q.views != NULL:
        for i in range(q.nviews):
            free(q.views[i].ids)
    free(q.views)
    free(q.keys)
    free(q.key_bytes)
    free(q.ids)
    free(q.asked)
    q.views = NULL
    q.keys = NULL
    q.key_bytes = NULL
    q.ids = NULL
    q.asked = NULL
    q.nviews = q.nids = q.nasked = q.nkeys = 0
    q.by_id = q.prefix = False


cdef void free_record(FastConn *fc) noexcept nogil:
    free(fc.ids)
    free(fc)


cdef inline int ms_between(int64_t start, int64_t t):
    return -1 if t == 0 else <int>((t - start) // 1000000)


cdef tuple record(FastConn *fc, int total_ms):
    cdef Conn *c = &fc.c
    cdef char text[INET6_ADDRSTRLEN + 8]
    cdef size_t n = peer_text(&fc.peer, fc.state, text, False)
    cdef bint valid = fc.version != 0
    client_id = PyUnicode_DecodeUTF8(fc.ids, fc.cid_len, NULL) if valid or fc.cid_len else None
    username = (PyUnicode_DecodeUTF8(fc.ids + fc.cid_len, fc.user_len, NULL)
                if fc.state & FC_USERNAME else None)
    return (
        fc.listener_id, fc.pool_id, fc.server_id, text[:n].decode("ascii"),
        ntohs(fc.peer.sin6_port), client_id, username, fc.version, fc.keepalive,
        None if fc.connack < 0 else fc.connack, fc.wall_ns / 1e9,
        ms_between(fc.accepted_ns, fc.inspected_ns), ms_between(fc.accepted_ns, fc.connected_ns),
        total_ms, c.nbytes[0], c.nbytes[1], why_word(fc), fc.why in DENIED, c.err, c.conn_id,
    )


cdef str why_word(FastConn *fc):
    import errno as errno_names
    if fc.why == W_NONE:
        return REASONS[fc.c.reason]
    if fc.why == W_PARSE:
        return REASON_WORDS[fc.why_arg]
    if fc.why == W_ERRNO:
        return "error:" + errno_names.errorcode.get(fc.why_arg, "EIO")
    if fc.why == W_DENIED:
        return "denied-default" if fc.why_arg == NO_RULE else f"denied-rule-{fc.why_arg}"
    if fc.why == W_ADMISSION:
        return VERDICT_WORDS[fc.why_arg]
    return WHY_WORDS[fc.why]
