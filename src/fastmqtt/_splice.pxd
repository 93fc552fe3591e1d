# cython: language_level=3
"""C-level surface of the relay engine (_splice.pyx), for the fast path (_fastpath.pyx) that
accepts and sets up connections on the engine's own threads and then relays them as the
engine relays handed-over pairs: the structs, and the few relay steps it calls."""

from libc.stdint cimport int16_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, write

from fastmqtt.includes.linux cimport pthread_mutex_t, pthread_t


cdef extern from *:
    """
    /* Byte counters are written by an engine thread and read by Python for stats. */
    static inline uint64_t fm_load64(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void fm_add64(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, *p + v, __ATOMIC_RELAXED);
    }
    static inline void fm_sub64(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, *p - v, __ATOMIC_RELAXED);
    }
    """
    uint64_t fm_load64(const uint64_t *p) noexcept nogil
    void fm_add64(uint64_t *p, uint64_t v) noexcept nogil
    void fm_sub64(uint64_t *p, uint64_t v) noexcept nogil


cdef enum:
    NSLOTS = 4096           # wheel slots: 409.6 s of 100 ms ticks before a slot comes round
    TICK_NS = 100000000
    MAX_EVENTS = 256
    MAX_ROUNDS = 16         # reads per direction per turn before yielding to other connections
    PIPE_CAP = 262144       # bulk chunk: fewer splice calls than a default 64 KiB pipe
    MAX_THREADS = 64
    BYE_IDLE_TICKS = 100    # a goodbye waits at most 10 s without progress for its boundaries

# Connection flags; per-direction bits are shifted by the direction (0 client->server).
cdef enum:
    F_RD = 1 << 0           # the side may have unread bytes (edge seen, not yet drained)
    F_EOF = 1 << 2          # the side sent FIN
    F_SHUT = 1 << 4         # FIN forwarded to the other side
    F_BULK = 1 << 6         # direction uses splice
    F_DONE = 1 << 8
    F_QUEUED = 1 << 9       # in the ready list
    F_SERVER_FIRST = 1 << 10  # the server's FIN came first
    F_HUP = 1 << 11         # the side's FIN has arrived (EPOLLRDHUP seen): read until EOF
    # bit 12 is F_HUP of the server side
    F_TRACK = 1 << 13       # follow both streams' packet boundaries (add(track_packets=True))
    F_BYE = 1 << 14         # a goodbye is under way: each stream stops at its next boundary
    F_FAREWELL = 1 << 15    # the server's stream stopped, the goodbye packet (if any) queued

# What Python asked of a connection; guarded by core.lock (one request of each kind at most).
# Conn.kind
cdef enum:
    K_RELAY = 0
    K_FAST = 1

cdef enum:
    ASK_TRACK = 1 << 0      # set before the hand-over: goodbye() is allowed
    ASK_CLOSE = 1 << 1      # a close() is queued
    ASK_BYE = 1 << 2        # a goodbye() is queued

cdef enum Reason:
    R_CLOSED = 0            # + side
    R_RESET = 2             # + side
    R_TIMEOUT = 4           # + side
    R_KILLED = 6
    R_SHUTDOWN = 7
    R_ERROR = 8
    R_DRAINED = 9

# Outcome of one step of a pump.
cdef enum Step:
    STEP_MORE = 0
    STEP_WAIT = 1
    STEP_ENDED = 2


cdef struct Pending:
    uint32_t len
    uint32_t off
    # followed by len bytes


cdef struct Pipe:
    int rfd
    int wfd
    uint32_t used
    Pipe *next


cdef struct Conn:
    Conn *next              # wheel slot list, or inbox/dead/completion queue
    Conn **pprev            # wheel slot list (hlist): NULL when not filed
    int64_t conn_id
    double t                # start (monotonic seconds), then the duration once done
    uint64_t nbytes[2]
    Pending *pend[2]
    Pipe *pipe[2]
    int fd[2]               # 0 client, 1 server
    uint32_t idle[2]        # ticks, 0 = no timeout
    uint32_t last_rx[2]     # tick of the last progress of each side's bytes
    uint32_t pkt_left[2]    # tracked, by direction: body bytes left (in a header: length)
    int16_t err             # errno values fit
    uint16_t flags
    uint8_t pkt_hdr[2]      # tracked: fixed-header bytes seen (0 = in a body or between)
    uint8_t reason
    uint8_t refs            # the engine until drained, plus one per queued close()/goodbye()
    uint8_t asked           # ASK_* bits, under core.lock
    uint8_t worker
    uint8_t kind            # K_RELAY: handed over by add(); K_FAST: accepted by the engine
    uint8_t phase           # K_FAST: its setup step (_fastpath.pyx) while not yet relaying
    bint told               # a goodbye packet was queued: the client closes; end once sent


cdef struct Linger:
    Linger *next            # the worker's lingering sockets, oldest (first to expire) first
    Linger *prev
    int fd
    uint32_t until          # the tick at which it is closed, whatever it still holds
    uint64_t dropped        # bytes read and dropped


# epoll data: a Conn's address | side; a fast-path listener's | LISTENER_TAG; a Linger's |
# LINGER_TAG (malloc'd structs are 16-byte aligned: the low bits are free)
cdef enum:
    LISTENER_TAG = 2
    LINGER_TAG = 4
    TAG_BITS = 7


cdef struct Bye:
    Bye *next
    Conn *conn
    uint32_t len
    # followed by len bytes: the packet for the client


cdef struct Core


cdef struct Worker


# The fast path (_fastpath.pyx) accepts and sets up connections on the engine's threads and
# turns them into relayed ones. The relay knows it only through these calls, all made on a
# worker thread without the GIL.
cdef struct FastHooks:
    # an epoll event whose tag has bit 1 set: a listening socket (obj is the tag without it)
    void (*listener)(Worker *w, void *obj, uint32_t ev) noexcept nogil
    # an event on a K_FAST connection that is still in a setup phase
    void (*setup_event)(Worker *w, Conn *c, int side, uint32_t ev) noexcept nogil
    # the wheel found the deadline of a connection in a setup phase passed
    void (*timer)(Worker *w, Conn *c) noexcept nogil
    # finish() is ending a K_FAST connection (setup or relay), before its record is queued
    void (*ended)(Worker *w, Conn *c) noexcept nogil
    # n more bytes of a relayed K_FAST connection in direction d (0: from the client)
    void (*count_bytes)(Conn *c, int d, size_t n) noexcept nogil
    # once per loop turn, and on every wake-up: requests from Python, alarms
    void (*turn)(Worker *w) noexcept nogil
    # the worker is exiting: give back what the fast path holds on this thread
    void (*exit)(Worker *w) noexcept nogil
    # a relayed K_FAST connection moved to another process (Engine.release): give back what
    # it holds and free it, without a record
    void (*released)(Worker *w, Conn *c) noexcept nogil


cdef struct Worker:
    Core *core
    pthread_t tid
    int epfd
    int wakefd
    char *buf
    Conn **wheel
    Conn *untimed
    uint32_t tick           # last wheel tick processed
    uint32_t now            # current tick
    Conn *dead_head
    Conn *dead_tail
    uint64_t ndead
    Conn **ready
    size_t nready
    size_t capready
    Bye *waiting            # goodbyes of F_BYE connections, until their boundary
    Linger *lingers         # sockets of ended connections, until their peer closes
    Linger *lingers_tail
    uint64_t live
    uint64_t buffered       # bytes held in remainders and pipes (debug/stats)
    # guarded by core.lock:
    Conn *in_head
    Conn *in_tail
    Conn **kills
    size_t nkills
    size_t capkills
    Bye *byes               # goodbye() requests not yet taken
    bint wake_pending
    bint stop
    bint freeze             # with stop: keep the connections for export (Engine.freeze)
    bint running            # its thread was created
    void *fast              # the fast path's per-thread state (_fastpath.pyx), or NULL
    uint32_t alarm          # a tick the fast path wants a turn at even with no connection


cdef struct Core:
    pthread_mutex_t lock
    Worker *workers
    int nworkers
    int donefd
    Conn *done_head
    Conn *done_tail
    uint64_t finished
    Pipe *pipes
    int pipes_made
    int pipes_max
    uint32_t bufsize
    uint32_t threshold
    uint32_t linger_ticks   # 0: close at once
    uint64_t linger_bytes
    int64_t t0
    bint halting            # under lock: stop() has begun, requests are refused
    FastHooks *fast         # set while a fast path is attached (_fastpath.pyx)
    Conn *fast_head         # ended K_FAST connections, for the fast path's drain
    Conn *fast_tail


# ---------------------------------------------------------------- small helpers

cdef inline int64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint32_t tick_of(Core *core) noexcept nogil:
    return <uint32_t>((mono_ns() - core.t0) // TICK_NS)


cdef inline void signal_fd(int fd) noexcept nogil:
    cdef uint64_t one = 1
    write(fd, &one, 8)


cdef inline void close_fd(int *fd) noexcept nogil:
    if fd[0] >= 0:
        close(fd[0])
        fd[0] = -1


# ---------------------------------------------------------------- relay steps

# An exact-size copy of bytes still to send, or NULL if n is 0 or memory ran out.
cdef Pending *pending_new(const char *data, size_t n) noexcept nogil
# Follow direction d's stream for packet boundaries (track_packets).
cdef size_t follow(Conn *c, int d, const uint8_t *data, size_t n, bint stop) noexcept nogil
# Start a goodbye on a tracked connection this thread owns (b: malloc'd, b.conn = c).
cdef void bye_start(Worker *w, Conn *c, Bye *b) noexcept nogil
# End a connection and queue its record; returns STEP_ENDED.
cdef int finish(Worker *w, Conn *c, int reason, int err) noexcept nogil
# File a connection on the wheel by its deadline (or time it out); refile after it moved.
cdef void place(Worker *w, Conn *c) noexcept nogil
cdef void refile(Worker *w, Conn *c) noexcept nogil
# Move direction d until blocked; True if the connection ended.
cdef bint pump(Worker *w, Conn *c, int d) noexcept nogil
# Called with core.lock held: make the worker take its requests.
cdef void wake(Worker *w) noexcept nogil
# Stop every worker, close what they hold and release their resources.
cdef void halt(Core *core) noexcept nogil


cdef class Engine:
    cdef Core *core
    cdef dict _conns  # conn_id -> address of its Conn, until drained
    cdef uint64_t _added
    cdef int _next
    cdef bint _started
    cdef bint _closing
    cdef bint _stopped
    cdef bint _frozen
    cdef dict _exported  # handle -> conn id, from export() until release()

    cdef _check_add(self, int64_t conn_id, int client_fd, int server_fd)
    cdef _queue(self, Conn *c)
    cdef Conn *_new_conn(self, int64_t conn_id, int client_fd, int server_fd,
                         uint32_t client_idle, uint32_t server_idle,
                         const unsigned char[:] to_server,
                         const unsigned char[:] to_client) except NULL
