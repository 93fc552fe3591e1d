# cython: language_level=3
"""The relay engine: moves bytes between the two sockets of each proxied connection.

Python hands over an established (client fd, server fd) pair with ``Engine.add``; from then on
one of the engine's threads owns both fds and relays them in an epoll loop that runs without
the GIL. Closed connections come back as records through ``drain``, signalled by an eventfd.

Design notes (the WHY; the code says the how):
- Edge-triggered epoll. Each fd is registered once, for EPOLLIN|EPOLLOUT, for its whole life:
  backpressure is "stop reading the sender" and needs no epoll_ctl, and EPOLLOUT only fires
  after a send found the socket full. The price of ET is remembering "the sender may still have
  bytes" (the RD flag), and a ready list for connections we stopped serving for fairness.
  A short read means the socket was drained at that instant and any later arrival raises a new
  edge, so small MQTT packets cost one recv and one send per event. The exception is a FIN
  queued behind the data (its edge may have come while we were not reading): EPOLLRDHUP
  marks the side, and from then on we read until recv returns 0.
- Fast path: recv into the thread's buffer and send straight on. Only an unsent remainder is
  kept (malloc'd to its exact size, freed once flushed), and while a remainder exists nothing
  more is read from that sender: memory per direction is bounded by one read.
- Bulk path: after a read of at least ``splice_threshold`` bytes the direction switches to
  splice(2) through a pipe from a shared pool, and returns the pipe when the sender runs dry.
  Measured (bench/bench_splice.py, loopback TCP, kernel 6.18): about 15% less engine CPU
  per MiB than recv/send with the same 64 KiB buffer, so it stays; a 256 KiB copy buffer
  does about as well, but would be held by every thread for small packets too.
- Idle timeouts: a hashed timing wheel of 100 ms ticks. Activity only stores a tick in the
  connection; the wheel re-files a connection when its slot comes round, so there is no scan.
- Packet boundaries: a connection added with ``track_packets`` follows the packet boundaries
  of both streams by fixed headers only (bodies are skipped by length), in two fields per
  direction. ``goodbye`` then ends it between two packets: each stream stops at its next
  boundary (bytes past it are dropped): the given packet (a DISCONNECT) goes out after what the
  client is still owed, and the connection closes once it is delivered (the client was told
  to go); without a packet (clients older than MQTT 5 have no server DISCONNECT) it closes
  once the client's stream is at its boundary too and everything before it is delivered, so
  no packet is cut in half either way. A goodbye waits at most ``BYE_IDLE_TICKS`` without
  progress for that (then the idle timeout ends it). splice never shows us the bytes, so on
  a tracked direction it moves only the rest of a long body (at least ``splice_threshold``)
  and headers go through recv.
- Closing: a side that may still be sending when its connection ends (a drain's goodbye, a
  timeout, a kill) is not closed at once: a close with unread bytes makes the kernel answer with
  a reset, which destroys what we sent and the peer has not read yet (the goodbye itself). As
  HAProxy and NGINX do, its writing is shut down and what still arrives is read and dropped
  until the peer closes, or for ``linger_seconds`` / ``linger_bytes`` at most. Such a
  socket is a small ``Linger`` of its worker, no longer part of the connection, which has been
  reported already. A side that sent FIN is closed at once (nothing more can come from it).
- Moving to another process (takeover.py): ``freeze`` stops the threads but keeps every relayed
  connection; ``export`` reads each one's state (bytes still held either way, pipes emptied
  into them, counters, half-close and packet-boundary state, idle clocks); ``release`` then
  forgets one that the other process holds, closing our fds without a FIN or a reset (a plain
  close of one reference); ``adopt`` is the other side's ``add`` of such a state. Connections
  still in a setup phase or waiting for a goodbye at the freeze end ("shutdown").
- A connection's struct is freed by ``drain`` (which holds the GIL, as do ``counters`` and
  ``close``), so Python may keep its address in a dict while the record is undrained; queued
  ``close`` and ``goodbye`` requests hold a reference so the engine never touches a freed
  struct.
"""

from libc.errno cimport (
    EAGAIN, ECONNABORTED, ECONNRESET, EHOSTDOWN, EHOSTUNREACH, EINTR, ENETDOWN,
    ENETUNREACH, ENOMEM, ENOTCONN, EPIPE, ETIMEDOUT, errno,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.math cimport isfinite
from libc.stdint cimport (
    int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t,
)
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy
from posix.time cimport nanosleep, timespec
from posix.unistd cimport close, read

from fastmqtt.includes.linux cimport (
    EFD_CLOEXEC, EFD_NONBLOCK, EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD,
    EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, F_SETPIPE_SZ, FIONBIO, MSG_MORE,
    MSG_NOSIGNAL, O_CLOEXEC, O_NONBLOCK, SHUT_WR, SIG_SETMASK, SO_ERROR, SO_LINGER, SOL_SOCKET,
    SPLICE_F_MOVE,
    SPLICE_F_NONBLOCK, epoll_create1, epoll_ctl, epoll_event, epoll_wait, eventfd, fcntl,
    getsockopt, ioctl, linger, pipe2, pthread_create, pthread_join, pthread_mutex_destroy,
    pthread_mutex_init, pthread_mutex_lock, pthread_mutex_unlock, pthread_sigmask, recv, send,
    setsockopt, shutdown, sigfillset, sigset_t, socklen_t, splice,
)


REASONS = (
    "client-closed", "server-closed", "client-reset", "server-reset",
    "client-timeout", "server-timeout", "killed", "shutdown", "error", "drained",
)

# bytes the engine keeps per live connection beyond kernel socket buffers, while it is idle
CONN_SIZE = sizeof(Conn)
# the most a direction holds in bulk mode (a read in copy mode holds at most buffer_size)
PIPE_SIZE = PIPE_CAP

# The state bits of export()/adopt(): a stable numbering, not the engine's flag layout.
cdef enum:
    X_CLIENT_EOF = 1 << 0       # the client sent FIN
    X_SERVER_EOF = 1 << 1       # the server sent FIN
    X_CLIENT_FIN_SENT = 1 << 2  # the client's FIN was passed on to the server
    X_SERVER_FIN_SENT = 1 << 3  # the server's FIN was passed on to the client
    X_SERVER_FIRST = 1 << 4     # the server's FIN came first
    X_TRACK = 1 << 5            # both streams' packet boundaries are followed
    X_ALL = (1 << 6) - 1
    MAX_HELD = (1 << 24) + PIPE_CAP  # the most a direction can hold (buffer_size + a pipe)


# ---------------------------------------------------------------- time (mono_ns, tick_of: .pxd)

cdef inline double mono_s() noexcept nogil:
    return <double>mono_ns() / 1e9


cdef void sleep_ms(int ms) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = 0
    ts.tv_nsec = ms * 1000000
    nanosleep(&ts, NULL)


# ---------------------------------------------------------------- small helpers (+ .pxd)

cdef inline void clear_fd(int fd) noexcept nogil:
    cdef uint64_t v
    read(fd, &v, 8)


cdef inline bint is_reset(int err) noexcept nogil:
    return err in (ECONNRESET, EPIPE, ECONNABORTED, ETIMEDOUT, ENOTCONN, EHOSTUNREACH,
                   ENETUNREACH, ENETDOWN, EHOSTDOWN)


cdef Pending *pending_new(const char *data, size_t n) noexcept nogil:
    """An exact-size copy of bytes still to send, or NULL if n is 0 or memory ran out."""
    cdef Pending *p
    if n == 0:
        return NULL
    p = <Pending *>malloc(sizeof(Pending) + n)
    if p == NULL:
        return NULL
    p.len = <uint32_t>n
    p.off = 0
    memcpy(<char *>(p + 1), data, n)
    return p


cdef inline void hlist_add(Conn **head, Conn *c) noexcept nogil:
    c.next = head[0]
    if c.next != NULL:
        c.next.pprev = &c.next
    head[0] = c
    c.pprev = head


cdef inline void hlist_del(Conn *c) noexcept nogil:
    if c.pprev == NULL:
        return
    c.pprev[0] = c.next
    if c.next != NULL:
        c.next.pprev = c.pprev
    c.next = NULL
    c.pprev = NULL


cdef bint push_ptr(Conn ***arr, size_t *n, size_t *cap, Conn *c) noexcept nogil:
    """Append to a growable array; False if memory ran out."""
    cdef size_t newcap
    cdef Conn **grown
    if n[0] == cap[0]:
        newcap = cap[0] * 2 if cap[0] else 16
        grown = <Conn **>realloc(arr[0], newcap * sizeof(Conn *))
        if grown == NULL:
            return False
        arr[0] = grown
        cap[0] = newcap
    arr[0][n[0]] = c
    n[0] += 1
    return True


# ---------------------------------------------------------------- pipe pool

cdef Pipe *pipe_get(Core *core) noexcept nogil:
    """A pipe from the shared pool, a new one while under the cap, else NULL."""
    cdef Pipe *p = NULL
    cdef int fds[2]
    pthread_mutex_lock(&core.lock)
    if core.pipes != NULL:
        p = core.pipes
        core.pipes = p.next
    elif core.pipes_made < core.pipes_max:
        core.pipes_made += 1
    else:
        pthread_mutex_unlock(&core.lock)
        return NULL
    pthread_mutex_unlock(&core.lock)
    if p != NULL:
        return p
    p = <Pipe *>malloc(sizeof(Pipe))
    if p != NULL and pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0:
        # pages are only held while bytes are in flight; if refused, 64 KiB pipes still work
        fcntl(fds[1], F_SETPIPE_SZ, <int>PIPE_CAP)
        p.rfd = fds[0]
        p.wfd = fds[1]
        p.used = 0
        p.next = NULL
        return p
    free(p)
    pthread_mutex_lock(&core.lock)
    core.pipes_made -= 1
    pthread_mutex_unlock(&core.lock)
    return NULL


cdef void pipe_put(Core *core, Pipe *p) noexcept nogil:
    """Return an empty pipe to the pool; a pipe with stale bytes is destroyed instead."""
    if p.used:
        close(p.rfd)
        close(p.wfd)
        free(p)
        pthread_mutex_lock(&core.lock)
        core.pipes_made -= 1
        pthread_mutex_unlock(&core.lock)
        return
    pthread_mutex_lock(&core.lock)
    p.next = core.pipes
    core.pipes = p
    pthread_mutex_unlock(&core.lock)


cdef void pipes_close_all(Core *core) noexcept nogil:
    cdef Pipe *p
    while core.pipes != NULL:
        p = core.pipes
        core.pipes = p.next
        close(p.rfd)
        close(p.wfd)
        free(p)
        core.pipes_made -= 1


# ---------------------------------------------------------------- packet boundaries

cdef inline bint at_boundary(Conn *c, int d) noexcept nogil:
    return c.pkt_hdr[d] == 0 and c.pkt_left[d] == 0


cdef size_t follow(Conn *c, int d, const uint8_t *data, size_t n, bint stop) noexcept nogil:
    """Follow n bytes of direction d's stream (the twin of framing.PacketBoundary.feed);
    return how many were taken: all, or with ``stop`` only up to the first packet end."""
    # the state lives in locals: data may alias the struct, so fields would be stored and
    # reloaded around every byte read
    cdef uint32_t left = c.pkt_left[d]
    cdef uint8_t hdr = c.pkt_hdr[d], byte
    cdef size_t i = 0, step
    while i < n:
        if stop and hdr == 0 and left == 0:
            break
        if hdr == 0 and left:  # skip the body by its length
            step = min(<size_t>left, n - i)
            left -= <uint32_t>step
            i += step
        elif hdr == 0:  # packet type and flags; left now gathers the length
            hdr = 1
            i += 1
        else:  # one byte of the remaining length (7 bits each, at most 4 bytes)
            byte = data[i]
            i += 1
            left |= <uint32_t>(byte & 0x7F) << (7 * (hdr - 1))
            hdr += 1
            if not byte & 0x80 or hdr == 5:  # a malformed length ends it too
                hdr = 0
    c.pkt_left[d] = left
    c.pkt_hdr[d] = hdr
    return i


cdef int check_boundary(str stream, uint32_t left, uint32_t hdr) except -1:
    """Refuse a packet-boundary state that follow() cannot have left (from another process):
    at most 4 length bytes, and no more length than those bytes can carry."""
    if hdr > 4 or left >= (1 << 28) or (hdr and left >= (<uint32_t>1 << (7 * (hdr - 1)))):
        raise ValueError(f"bad packet-boundary state of the {stream}'s stream ({left}, {hdr})")
    return 0


cdef Bye *bye_take(Worker *w, Conn *c) noexcept nogil:
    """Unlink the goodbye waiting for c's server stream to stop from the worker's list."""
    cdef Bye **link = &w.waiting
    cdef Bye *b
    while link[0] != NULL and link[0].conn != c:
        link = &link[0].next
    b = link[0]
    if b != NULL:
        link[0] = b.next
    return b


cdef void bye_start(Worker *w, Conn *c, Bye *b) noexcept nogil:
    """Begin a goodbye (F_BYE): both streams stop at their next boundary; waiting for them is
    bounded by BYE_IDLE_TICKS without progress."""
    cdef int s
    b.next = w.waiting
    w.waiting = b
    c.flags |= F_BYE
    for s in range(2):
        if c.idle[s] == 0 or c.idle[s] > BYE_IDLE_TICKS:
            c.idle[s] = BYE_IDLE_TICKS
        c.last_rx[s] = w.now  # the wait starts now, however idle the connection was
    refile(w, c)
    if not (c.flags & F_DONE) and not pump(w, c, 1):  # at a boundary already: say it now
        pump(w, c, 0)


# ---------------------------------------------------------------- ending a connection

cdef void drop_buffers(Worker *w, Conn *c) noexcept nogil:
    cdef int d
    for d in range(2):
        if c.pend[d] != NULL:
            fm_sub64(&w.buffered, c.pend[d].len - c.pend[d].off)
            free(c.pend[d])
            c.pend[d] = NULL
        if c.pipe[d] != NULL:
            fm_sub64(&w.buffered, c.pipe[d].used)
            pipe_put(w.core, c.pipe[d])
            c.pipe[d] = NULL


cdef bint linger_start(Worker *w, int fd) noexcept nogil:
    """Shut down our writing to fd and keep reading (and dropping) what its peer still sends;
    linger_end closes it. False if lingering is off or cannot be set up (close it at once)."""
    cdef epoll_event ev
    cdef Linger *lg
    if w.core.linger_ticks == 0:
        return False
    lg = <Linger *>malloc(sizeof(Linger))
    if lg == NULL:
        return False
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET  # re-armed: bytes already there raise an event
    ev.data.u64 = <uint64_t><uintptr_t>lg | LINGER_TAG
    if epoll_ctl(w.epfd, EPOLL_CTL_MOD, fd, &ev) < 0 or shutdown(fd, SHUT_WR) < 0:
        free(lg)
        return False
    lg.fd = fd
    lg.until = w.now + w.core.linger_ticks
    lg.dropped = 0
    lg.next = NULL
    lg.prev = w.lingers_tail
    if w.lingers_tail != NULL:
        w.lingers_tail.next = lg
    else:
        w.lingers = lg
    w.lingers_tail = lg
    return True


cdef void linger_end(Worker *w, Linger *lg) noexcept nogil:
    epoll_ctl(w.epfd, EPOLL_CTL_DEL, lg.fd, NULL)
    close(lg.fd)
    if lg.prev != NULL:
        lg.prev.next = lg.next
    else:
        w.lingers = lg.next
    if lg.next != NULL:
        lg.next.prev = lg.prev
    else:
        w.lingers_tail = lg.prev
    free(lg)


cdef void linger_read(Worker *w, Linger *lg) noexcept nogil:
    """Drop what a lingering socket received; close it at EOF, on an error, or once it has
    sent more than linger_bytes."""
    cdef ssize_t n
    while True:
        n = recv(lg.fd, w.buf, w.core.bufsize, 0)
        if n > 0:
            lg.dropped += <uint64_t>n
            if lg.dropped <= w.core.linger_bytes:
                continue
        elif n < 0 and errno == EINTR:
            continue
        elif n < 0 and errno == EAGAIN:
            return
        linger_end(w, lg)
        return


cdef void linger_expire(Worker *w) noexcept nogil:
    """Close the lingering sockets whose time is up (the list is in expiry order)."""
    while w.lingers != NULL and <int32_t>(w.now - w.lingers.until) >= 0:
        linger_end(w, w.lingers)


cdef void release_fds(Worker *w, Conn *c, int reset_side) noexcept nogil:
    """Close both sockets; a reset on one side is passed on as a reset to the other, and a side
    that may still be sending lingers (linger_start)."""
    cdef linger lg
    cdef int s
    lg.l_onoff = 1
    lg.l_linger = 0
    for s in range(2):
        if c.fd[s] < 0:
            continue
        if reset_side < 0 and not (c.flags & (F_EOF << s)) and linger_start(w, c.fd[s]):
            c.fd[s] = -1  # the Linger owns it now
            continue
        if c.kind != K_FAST:  # a dup'd fd would keep us registered; the engine's own never are
            epoll_ctl(w.epfd, EPOLL_CTL_DEL, c.fd[s], NULL)
        if reset_side >= 0 and s != reset_side:
            setsockopt(c.fd[s], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
        close_fd(&c.fd[s])


cdef int finish(Worker *w, Conn *c, int reason, int err) noexcept nogil:
    """End a connection and queue its completion record; returns STEP_ENDED."""
    c.flags |= F_DONE
    hlist_del(c)
    if c.flags & F_BYE and not (c.flags & F_FAREWELL):
        free(bye_take(w, c))
    drop_buffers(w, c)
    release_fds(w, c, reason - R_RESET if R_RESET <= reason < R_TIMEOUT else -1)
    c.reason = <uint8_t>reason
    c.err = <int16_t>err
    c.t = mono_s() - c.t
    if c.kind == K_FAST:
        w.core.fast.ended(w, c)
    c.next = NULL
    if w.dead_tail != NULL:
        w.dead_tail.next = c
    else:
        w.dead_head = c
    w.dead_tail = c
    w.ndead += 1
    w.live -= 1
    return STEP_ENDED


cdef int fail_io(Worker *w, Conn *c, int side, int err) noexcept nogil:
    """A socket call on ``side`` failed with ``err``."""
    return finish(w, c, R_RESET + side if is_reset(err) else R_ERROR, err)


cdef void publish(Worker *w) noexcept nogil:
    """Hand this turn's ended connections to the completion queues (handed-over pairs for
    drain(), K_FAST ones for the fast path's drain) and wake the event loop."""
    cdef Core *core = w.core
    cdef bint was_empty
    cdef size_t i, j = 0
    cdef Conn *c
    cdef Conn *nxt
    if w.dead_head == NULL:
        return
    for i in range(w.nready):  # the ready list must not outlive what drain() may free
        if not (w.ready[i].flags & F_DONE):
            w.ready[j] = w.ready[i]
            j += 1
    w.nready = j
    pthread_mutex_lock(&core.lock)
    was_empty = core.done_head == NULL and core.fast_head == NULL
    c = w.dead_head
    while c != NULL:
        nxt = c.next
        c.next = NULL
        if c.kind == K_FAST:
            queue_append(&core.fast_head, &core.fast_tail, c)
        else:
            queue_append(&core.done_head, &core.done_tail, c)
            core.finished += 1
        c = nxt
    pthread_mutex_unlock(&core.lock)
    w.dead_head = w.dead_tail = NULL
    w.ndead = 0
    if was_empty:
        signal_fd(core.donefd)


cdef inline void queue_append(Conn **head, Conn **tail, Conn *c) noexcept nogil:
    if tail[0] != NULL:
        tail[0].next = c
    else:
        head[0] = c
    tail[0] = c


# ---------------------------------------------------------------- timing wheel

cdef uint32_t deadline(Conn *c, int *side) noexcept nogil:
    """The tick at which the connection times out (0 = never), and which side is to blame.

    +1 so that a timeout never fires early: the last activity happened somewhere inside its tick.
    """
    cdef uint32_t dl = 0, t
    cdef int s
    for s in range(2):
        if c.idle[s] == 0 or c.flags & (F_EOF << s):
            continue
        t = c.last_rx[s] + c.idle[s] + 1
        if dl == 0 or t < dl:
            dl = t
            side[0] = s
    return dl


cdef void place(Worker *w, Conn *c) noexcept nogil:
    """File the connection by its deadline, or time it out if that has passed (a connection
    in a setup phase: the fast path decides what its deadline means)."""
    cdef int side = 0
    cdef uint32_t dl = deadline(c, &side)
    if dl == 0:
        hlist_add(&w.untimed, c)
    elif dl > w.now:
        hlist_add(&w.wheel[dl & (NSLOTS - 1)], c)
    elif c.phase:
        w.core.fast.timer(w, c)
    else:
        finish(w, c, R_TIMEOUT + side, 0)


cdef void refile(Worker *w, Conn *c) noexcept nogil:
    """File again after the deadline moved earlier (the wheel assumes it only moves later)."""
    hlist_del(c)
    place(w, c)


cdef void advance_wheel(Worker *w) noexcept nogil:
    cdef Conn *c
    cdef Conn *nxt
    cdef uint32_t slot
    if w.now - w.tick > NSLOTS:  # we were away longer than a turn: visit every slot once
        w.tick = w.now - NSLOTS
    while w.tick != w.now:
        w.tick += 1
        slot = w.tick & (NSLOTS - 1)
        c = w.wheel[slot]
        w.wheel[slot] = NULL
        while c != NULL:
            nxt = c.next
            c.next = NULL
            c.pprev = NULL
            place(w, c)
            c = nxt


# ---------------------------------------------------------------- relaying

cdef inline void progress(Worker *w, Conn *c, int d) noexcept nogil:
    # Bytes of side d moved: that side is not idle (also when it is only our sending that
    # progressed, so that a slow receiver does not time out a busy sender).
    c.last_rx[d] = w.now


cdef inline void received(Worker *w, Conn *c, int d, size_t n) noexcept nogil:
    fm_add64(&c.nbytes[d], n)
    if c.kind == K_FAST:  # the fast path counts its frontends' and servers' live bytes
        w.core.fast.count_bytes(c, d, n)
    progress(w, c, d)


cdef int flush(Worker *w, Conn *c, int d) noexcept nogil:
    """Send what direction d still holds (remainder, then pipe); STEP_WAIT if it stays."""
    cdef Pending *p = c.pend[d]
    cdef Pipe *pp = c.pipe[d]
    cdef int dst = c.fd[1 - d]
    cdef ssize_t n
    if p != NULL:
        n = send(dst, <char *>(p + 1) + p.off, p.len - p.off, MSG_NOSIGNAL)
        if n < 0:
            return STEP_WAIT if errno == EAGAIN or errno == EINTR else fail_io(w, c, 1 - d, errno)
        p.off += <uint32_t>n
        fm_sub64(&w.buffered, <uint64_t>n)
        progress(w, c, d)
        if p.off < p.len:
            return STEP_WAIT
        free(p)
        c.pend[d] = NULL
    if pp != NULL and pp.used:
        n = splice(pp.rfd, NULL, dst, NULL, pp.used, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n < 0:
            return STEP_WAIT if errno == EAGAIN or errno == EINTR else fail_io(w, c, 1 - d, errno)
        pp.used -= <uint32_t>n
        fm_sub64(&w.buffered, <uint64_t>n)
        progress(w, c, d)
        if pp.used:
            return STEP_WAIT
    if pp != NULL and not (c.flags & (F_BULK << d)):
        pipe_put(w.core, pp)
        c.pipe[d] = NULL
    return STEP_MORE


cdef int read_failed(Worker *w, Conn *c, int d, ssize_t n) noexcept nogil:
    """recv/splice from side d returned 0 (FIN) or -1."""
    if n == 0:
        if d == 1 and not (c.flags & F_EOF):
            c.flags |= F_SERVER_FIRST
        c.flags |= F_EOF << d
    elif errno == EINTR:
        return STEP_MORE
    elif errno != EAGAIN:
        return fail_io(w, c, d, errno)
    c.flags &= ~((F_RD | F_BULK) << d)
    return STEP_MORE


cdef int farewell(Worker *w, Conn *c) noexcept nogil:
    """The client has all the server's bytes up to a packet end and a goodbye waits (F_BYE):
    queue the goodbye packet (none: a close between packets); the server is read no more."""
    cdef Bye *b = bye_take(w, c)
    cdef Pending *p = NULL
    c.flags |= F_FAREWELL
    c.told = b.len != 0
    if b.len:
        p = pending_new(<char *>(b + 1), b.len)
        if p == NULL:
            free(b)
            return finish(w, c, R_ERROR, ENOMEM)
        c.pend[1] = p
        fm_add64(&w.buffered, p.len)
    free(b)
    return STEP_MORE


cdef inline bint delivered(Conn *c, int d) noexcept nogil:
    return c.pend[d] == NULL and (c.pipe[d] == NULL or c.pipe[d].used == 0)


cdef inline bint bye_done(Conn *c) noexcept nogil:
    """A goodbye's end: the goodbye packet delivered (the client was told to go and closes
    by itself), or without one both streams stopped at a boundary, all before it delivered."""
    if not (c.flags & F_FAREWELL and delivered(c, 1)):
        return False
    return c.told or (at_boundary(c, 0) and delivered(c, 0))


cdef int read_copy(Worker *w, Conn *c, int d) noexcept nogil:
    """Fast path: one recv into the thread buffer, sent straight on; keep only the rest.
    A short read from a side whose FIN has arrived (F_HUP) took its last bytes: the FIN is
    passed on right behind them (MSG_MORE, then half_close), in one segment, and no recv is
    spent to see the 0."""
    cdef Core *core = w.core
    cdef ssize_t n = recv(c.fd[d], w.buf, core.bufsize, 0)
    cdef ssize_t m
    cdef int more = 0
    if n <= 0:
        return read_failed(w, c, d, n)
    received(w, c, d, <size_t>n)
    if <size_t>n < core.bufsize:
        if c.flags & (F_HUP << d):
            read_failed(w, c, d, 0)  # the 0 the next recv would return
            more = MSG_MORE
        else:
            c.flags &= ~(F_RD << d)  # drained (see the note on edge triggering)
    if c.flags & F_TRACK:  # bytes past the boundary a goodbye waits for are dropped
        n = <ssize_t>follow(c, d, <uint8_t *>w.buf, <size_t>n, (c.flags & F_BYE) != 0)
    if core.threshold and <size_t>n >= core.threshold:
        c.flags |= F_BULK << d
    m = send(c.fd[1 - d], w.buf, <size_t>n, MSG_NOSIGNAL | more)
    if m < 0:
        if errno != EAGAIN and errno != EINTR:
            return fail_io(w, c, 1 - d, errno)
        m = 0
    if m == n:
        return STEP_MORE
    c.pend[d] = pending_new(w.buf + m, <size_t>(n - m))
    if c.pend[d] == NULL:
        return finish(w, c, R_ERROR, ENOMEM)
    fm_add64(&w.buffered, <uint64_t>(n - m))
    return STEP_WAIT


cdef inline size_t splice_len(Worker *w, Conn *c, int d) noexcept nogil:
    """How much one splice may move; 0 = use recv. On a tracked stream only the rest of a
    long packet body: headers must go through recv to be seen."""
    if not (c.flags & F_TRACK):
        return PIPE_CAP
    if c.pkt_hdr[d] or c.pkt_left[d] < w.core.threshold:
        return 0
    return min(<size_t>c.pkt_left[d], <size_t>PIPE_CAP)


cdef int read_splice(Worker *w, Conn *c, int d) noexcept nogil:
    """Bulk path: socket -> pooled pipe; flush() moves it on. Falls back when no pipe is free
    or splice_len says so."""
    cdef Pipe *p = c.pipe[d]
    cdef size_t want = splice_len(w, c, d)
    cdef ssize_t n
    if want == 0:
        return read_copy(w, c, d)
    if p == NULL:
        p = c.pipe[d] = pipe_get(w.core)
        if p == NULL:
            c.flags &= ~(F_BULK << d)
            return read_copy(w, c, d)
    n = splice(c.fd[d], NULL, p.wfd, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
    if n <= 0:
        n = read_failed(w, c, d, n)
        if n == STEP_MORE and p.used == 0 and not (c.flags & (F_BULK << d)):
            pipe_put(w.core, p)
            c.pipe[d] = NULL
        return <int>n
    received(w, c, d, <size_t>n)
    if c.flags & F_TRACK:
        c.pkt_left[d] -= <uint32_t>n  # body bytes only (splice_len)
    p.used += <uint32_t>n
    fm_add64(&w.buffered, <uint64_t>n)
    return STEP_MORE


cdef int half_close(Worker *w, Conn *c, int d) noexcept nogil:
    """Side d sent FIN and everything before it is delivered: pass the FIN on."""
    if c.flags & (F_SHUT << d):
        return STEP_WAIT
    if c.kind == K_FAST and c.flags & (F_SHUT << (1 - d)):
        # The last FIN: the close that finish() makes sends it (the engine's own fds have no
        # other reference, and nothing is left to read on either side), one syscall less.
        c.flags |= F_SHUT << d
        return finish(w, c, R_CLOSED + (1 if c.flags & F_SERVER_FIRST else 0), 0)
    if shutdown(c.fd[1 - d], SHUT_WR) < 0:
        return fail_io(w, c, 1 - d, errno)
    c.flags |= F_SHUT << d
    if c.flags & (F_SHUT << (1 - d)):
        return finish(w, c, R_CLOSED + (1 if c.flags & F_SERVER_FIRST else 0), 0)
    return STEP_WAIT


cdef void defer(Worker *w, Conn *c) noexcept nogil:
    """Come back to a connection that still has bytes to read (ET raises no new edge)."""
    if c.flags & F_QUEUED:
        return
    if push_ptr(&w.ready, &w.nready, &w.capready, c):
        c.flags |= F_QUEUED
    else:
        finish(w, c, R_ERROR, ENOMEM)


cdef bint pump(Worker *w, Conn *c, int d) noexcept nogil:
    """Move direction d (0 client->server, 1 back) until blocked; True if the connection ended."""
    cdef int rounds = 0
    cdef int r
    while True:
        r = flush(w, c, d)
        if r != STEP_MORE:
            return r == STEP_ENDED
        if c.flags & F_BYE:
            if bye_done(c):
                finish(w, c, R_DRAINED, 0)
                return True
            if d == 1 and not (c.flags & F_FAREWELL) and at_boundary(c, 1):
                if farewell(w, c) == STEP_ENDED:
                    return True
                continue  # flush it
        if c.flags & (F_EOF << d):
            return half_close(w, c, d) == STEP_ENDED
        if not (c.flags & (F_RD << d)):
            return False
        if rounds == MAX_ROUNDS:
            defer(w, c)
            return (c.flags & F_DONE) != 0
        rounds += 1
        if c.flags & (F_BULK << d):
            r = read_splice(w, c, d)
        else:
            r = read_copy(w, c, d)
        if r != STEP_MORE:
            return r == STEP_ENDED


cdef void on_event(Worker *w, Conn *c, int s, uint32_t ev) noexcept nogil:
    """Readiness of side s: read it (direction s) and/or flush towards it (direction 1-s)."""
    cdef int err = 0
    cdef socklen_t len = sizeof(err)
    if c.flags & F_DONE:
        return  # ended earlier in this batch
    if ev & EPOLLERR:
        getsockopt(c.fd[s], SOL_SOCKET, SO_ERROR, &err, &len)
        if err:
            fail_io(w, c, s, err)
            return
    if ev & (EPOLLRDHUP | EPOLLHUP):
        c.flags |= F_HUP << s
    if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):  # the read reports FIN or error
        c.flags |= F_RD << s
        if pump(w, c, s):
            return
    if ev & EPOLLOUT:
        pump(w, c, 1 - s)


cdef void run_ready(Worker *w) noexcept nogil:
    cdef size_t i, n = w.nready
    cdef Conn *c
    for i in range(n):
        c = w.ready[i]
        c.flags &= ~F_QUEUED
        if not (c.flags & F_DONE) and not pump(w, c, 0):
            pump(w, c, 1)
    # connections deferred again during this turn were appended after n
    for i in range(n, w.nready):
        w.ready[i - n] = w.ready[i]
    w.nready -= n


# ---------------------------------------------------------------- hand-over and control

cdef void open_conn(Worker *w, Conn *c) noexcept nogil:
    cdef epoll_event ev
    cdef int one = 1
    cdef int s
    w.live += 1
    for s in range(2):
        if ioctl(c.fd[s], FIONBIO, &one) < 0:
            finish(w, c, R_ERROR, errno)
            return
        # One registration for life; see the note on edge triggering at the top.
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        ev.data.u64 = <uint64_t><uintptr_t>c | <uint64_t>s
        if epoll_ctl(w.epfd, EPOLL_CTL_ADD, c.fd[s], &ev) < 0:
            finish(w, c, R_ERROR, errno)
            return
    for s in range(2):  # until now last_rx held how long ago (0, or adopt()'s quiet time)
        c.last_rx[s] = w.now - c.last_rx[s]
    for s in range(2):
        if c.pend[s] != NULL:
            fm_add64(&w.buffered, c.pend[s].len)
    place(w, c)
    # Only the bytes Python handed over are sent now: EPOLL_CTL_ADD already queued an event
    # for a socket with bytes waiting, so no read is tried on spec.
    if not pump(w, c, 0):
        pump(w, c, 1)


cdef void unref(Worker *w, Conn *c) noexcept nogil:
    """Drop a carried-out request's reference; the last one frees an already drained record."""
    cdef bint last
    pthread_mutex_lock(&w.core.lock)
    c.refs -= 1
    last = c.refs == 0
    pthread_mutex_unlock(&w.core.lock)
    if last:
        free(c)


cdef void kill_conn(Worker *w, Conn *c) noexcept nogil:
    if not (c.flags & F_DONE):
        finish(w, c, R_KILLED, 0)
    unref(w, c)


cdef void take_bye(Worker *w, Bye *b) noexcept nogil:
    """Start a goodbye; a connection that ended, or whose server ended its stream, ends as it
    would without one."""
    cdef Conn *c = b.conn
    if c.flags & (F_DONE | (F_EOF << 1)):
        free(b)
    else:
        bye_start(w, c, b)
    unref(w, c)


cdef bint take_inbox(Worker *w) noexcept nogil:
    """Open handed-over connections and carry out close requests; True once asked to stop."""
    cdef Conn *c
    cdef Conn *nxt
    cdef Conn **kills
    cdef Bye *b
    cdef Bye *bnext
    cdef size_t i, nkills
    cdef bint stop, freeze
    clear_fd(w.wakefd)  # before taking: a later add() then signals again (see add())
    pthread_mutex_lock(&w.core.lock)
    c = w.in_head
    kills = w.kills
    nkills = w.nkills
    b = w.byes
    w.byes = NULL
    w.in_head = w.in_tail = NULL
    w.kills = NULL
    w.nkills = w.capkills = 0
    w.wake_pending = False
    stop = w.stop
    freeze = w.freeze
    pthread_mutex_unlock(&w.core.lock)
    while c != NULL:
        nxt = c.next
        c.next = NULL
        if stop and not freeze:
            w.live += 1
            finish(w, c, R_SHUTDOWN, 0)
        else:
            open_conn(w, c)
        c = nxt
    for i in range(nkills):
        kill_conn(w, kills[i])
    free(kills)
    while b != NULL:
        bnext = b.next
        take_bye(w, b)
        b = bnext
    return stop


cdef void close_all(Worker *w) noexcept nogil:
    cdef int slot
    for slot in range(NSLOTS):
        while w.wheel[slot] != NULL:
            finish(w, w.wheel[slot], R_SHUTDOWN, 0)
    while w.untimed != NULL:
        finish(w, w.untimed, R_SHUTDOWN, 0)


cdef void linger_out(Worker *w) noexcept nogil:
    """Stopping: serve the lingering sockets until the last one is closed (at most the linger
    time); every connection has ended, so only they and the wake fd raise events."""
    cdef epoll_event events[MAX_EVENTS]
    cdef int i, n
    cdef uint64_t tag
    while w.lingers != NULL:
        n = epoll_wait(w.epfd, events, MAX_EVENTS, poll_timeout(w))
        w.now = tick_of(w.core)
        for i in range(n):
            tag = events[i].data.u64
            if tag & LINGER_TAG:
                linger_read(w, <Linger *><uintptr_t>(tag & ~(<uint64_t>TAG_BITS)))
            elif tag == 0:
                clear_fd(w.wakefd)
        linger_expire(w)


cdef void worker_exit(Worker *w) noexcept nogil:
    take_inbox(w)
    if w.core.fast != NULL:
        w.core.fast.exit(w)
    close_all(w)
    w.nready = 0
    publish(w)
    linger_out(w)


cdef void end_unexportable(Worker *w, Conn *c) noexcept nogil:
    """Freezing: end the connections of a list that cannot move (still in a setup phase, or
    waiting for their goodbye); the rest stays filed for export."""
    cdef Conn *nxt
    while c != NULL:
        nxt = c.next
        if c.phase or c.flags & (F_BYE | F_FAREWELL):
            finish(w, c, R_SHUTDOWN, 0)
        c = nxt


cdef void worker_freeze(Worker *w) noexcept nogil:
    """Stop this thread but keep its relayed connections filed (Engine.freeze): the fast
    path lets go of the listeners, what cannot move ends, lingering sockets close."""
    cdef int slot
    if w.core.fast != NULL:
        w.core.fast.exit(w)
    for slot in range(NSLOTS):
        end_unexportable(w, w.wheel[slot])
    end_unexportable(w, w.untimed)
    while w.lingers != NULL:
        linger_end(w, w.lingers)
    publish(w)
    w.nready = 0


cdef int poll_timeout(Worker *w) noexcept nogil:
    if w.nready:
        return 0
    if w.live == 0 and w.alarm == 0 and w.lingers == NULL:
        return -1
    cdef int64_t ns = (<int64_t>w.now + 1) * TICK_NS - (mono_ns() - w.core.t0)
    return <int>(ns // 1000000) + 1 if ns > 0 else 0


cdef void *worker_main(void *arg) noexcept nogil:
    cdef Worker *w = <Worker *>arg
    cdef epoll_event events[MAX_EVENTS]
    cdef FastHooks *fast = w.core.fast
    cdef int i, n
    cdef uint64_t tag
    cdef Conn *c
    while True:
        n = epoll_wait(w.epfd, events, MAX_EVENTS, poll_timeout(w))
        w.now = tick_of(w.core)
        # Requests first: a goodbye() is taken before this turn reads the server bytes after it.
        for i in range(n):
            if events[i].data.u64 == 0 and take_inbox(w):
                if w.freeze:
                    worker_freeze(w)
                else:
                    worker_exit(w)
                return NULL
        for i in range(n):
            tag = events[i].data.u64
            if tag == 0:
                continue
            if tag & LINGER_TAG:
                linger_read(w, <Linger *><uintptr_t>(tag & ~(<uint64_t>TAG_BITS)))
                continue
            if tag & LISTENER_TAG:  # a listening socket of the fast path
                fast.listener(w, <void *><uintptr_t>(tag & ~(<uint64_t>TAG_BITS)),
                              events[i].events)
                continue
            c = <Conn *><uintptr_t>(tag & ~(<uint64_t>1))
            if c.phase and not (c.flags & F_DONE):
                fast.setup_event(w, c, <int>(tag & 1), events[i].events)
            else:  # on_event skips connections that a request ended
                on_event(w, c, <int>(tag & 1), events[i].events)
        run_ready(w)
        advance_wheel(w)
        linger_expire(w)
        if fast != NULL:
            fast.turn(w)
        publish(w)


cdef void wake(Worker *w) noexcept nogil:
    """Called with core.lock held: signal the worker unless a signal is already pending."""
    if not w.wake_pending:
        w.wake_pending = True
        signal_fd(w.wakefd)


cdef void halt(Core *core) noexcept nogil:
    """Stop every worker, close what they hold and release their resources."""
    cdef int i
    cdef Worker *w
    pthread_mutex_lock(&core.lock)
    core.halting = True  # from now on add(), close() and goodbye() queue nothing, wake no one
    for i in range(core.nworkers):
        core.workers[i].stop = True
        wake(&core.workers[i])
    pthread_mutex_unlock(&core.lock)
    for i in range(core.nworkers):
        w = &core.workers[i]
        if w.running:
            pthread_join(w.tid, NULL)
            w.running = False
        if w.wheel != NULL:  # what a never started worker was handed, or a close()/goodbye()
            worker_exit(w)   # queued while the thread was exiting
        close_fd(&w.epfd)
        close_fd(&w.wakefd)
        free(w.buf)
        free(w.wheel)
        free(w.ready)
        w.buf = NULL
        w.wheel = NULL
        w.ready = NULL
    pipes_close_all(core)


cdef void freeze_all(Core *core) noexcept nogil:
    """Stop every worker thread, keeping the connections (worker_freeze)."""
    cdef int i
    pthread_mutex_lock(&core.lock)
    core.halting = True
    for i in range(core.nworkers):
        core.workers[i].stop = True
        core.workers[i].freeze = True
        wake(&core.workers[i])
    pthread_mutex_unlock(&core.lock)
    for i in range(core.nworkers):
        if core.workers[i].running:
            pthread_join(core.workers[i].tid, NULL)
            core.workers[i].running = False


cdef uint32_t state_bits(uint16_t flags) noexcept nogil:
    cdef uint32_t x = 0
    if flags & F_EOF:
        x |= X_CLIENT_EOF
    if flags & (F_EOF << 1):
        x |= X_SERVER_EOF
    if flags & F_SHUT:
        x |= X_CLIENT_FIN_SENT
    if flags & (F_SHUT << 1):
        x |= X_SERVER_FIN_SENT
    if flags & F_SERVER_FIRST:
        x |= X_SERVER_FIRST
    if flags & F_TRACK:
        x |= X_TRACK
    return x


cdef uint16_t flags_of(uint32_t x) noexcept nogil:
    cdef uint16_t f = 0
    if x & X_CLIENT_EOF:
        f |= F_EOF
    if x & X_SERVER_EOF:
        f |= F_EOF << 1
    if x & X_CLIENT_FIN_SENT:
        f |= F_SHUT
    if x & X_SERVER_FIN_SENT:
        f |= F_SHUT << 1
    if x & X_SERVER_FIRST:
        f |= F_SERVER_FIRST
    if x & X_TRACK:
        f |= F_TRACK
    return f


cdef bytes held(Worker *w, Conn *c, int d):
    """What direction d still holds for its receiver (remainder, then pipe), taken out of the
    pipe (a frozen engine: no thread touches it)."""
    cdef Pending *p = c.pend[d]
    cdef Pipe *pp = c.pipe[d]
    cdef size_t first = p.len - p.off if p != NULL else 0
    cdef size_t n = first + (pp.used if pp != NULL else 0)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char *dst = PyBytes_AS_STRING(out)
    cdef ssize_t got
    if first:
        memcpy(dst, <char *>(p + 1) + p.off, first)
    while pp != NULL and pp.used:
        got = read(pp.rfd, dst + n - pp.used, pp.used)
        if got <= 0:
            raise OSError(errno, "reading a relay pipe")
        pp.used -= <uint32_t>got
        fm_sub64(&w.buffered, <uint64_t>got)
    return out


cdef int64_t exported_list(Conn *c, list out) except -1:
    while c != NULL:
        out.append(<uintptr_t>c)
        c = c.next
    return 0


cdef int init_worker(Core *core, Worker *w) noexcept nogil:
    """Allocate a worker's loop; 0 or an errno."""
    cdef epoll_event ev
    w.core = core
    w.epfd = epoll_create1(EPOLL_CLOEXEC)
    if w.epfd < 0:
        return errno
    w.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if w.wakefd < 0:
        return errno
    ev.events = EPOLLIN
    ev.data.u64 = 0
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, w.wakefd, &ev) < 0:
        return errno
    w.buf = <char *>malloc(core.bufsize)
    w.wheel = <Conn **>calloc(NSLOTS, sizeof(Conn *))
    if w.buf == NULL or w.wheel == NULL:
        return ENOMEM
    return 0


cdef void free_conns(Conn *c) noexcept nogil:
    cdef Conn *nxt
    while c != NULL:
        nxt = c.next
        free(c.pend[0])
        free(c.pend[1])
        free(c)
        c = nxt


cdef void close_pair(int a, int b) noexcept nogil:
    if a >= 0:
        close(a)
    if b >= 0 and b != a:
        close(b)


cdef uint32_t idle_ticks(double seconds) except? 0:
    if not seconds >= 0:  # also rejects NaN
        raise ValueError(f"idle timeout must be >= 0 seconds, got {seconds}")
    if seconds * 10 > 0x7FFFFFFF:
        raise ValueError(f"idle timeout too large: {seconds}")
    cdef uint32_t t = <uint32_t>(seconds * 10)
    if t < seconds * 10:
        t += 1
    return t


cdef bint set_pending(Conn *c, int d, const unsigned char[:] data) noexcept:
    """Bytes Python already read for direction d go out first; they count as relayed."""
    cdef size_t n = <size_t>data.shape[0]
    c.nbytes[d] = n
    if n == 0:
        return True
    c.pend[d] = pending_new(<const char *>&data[0], n)
    return c.pend[d] != NULL


cdef void track(Conn *c) noexcept nogil:
    """Follow both streams' packets from the start: bytes Python read count."""
    cdef int d
    c.flags |= F_TRACK
    c.asked |= ASK_TRACK
    for d in range(2):
        if c.pend[d] != NULL:
            follow(c, d, <const uint8_t *>(c.pend[d] + 1), c.pend[d].len, False)


cdef void release_records(Core *core, Conn *c) noexcept nogil:
    """Drop drain()'s reference to each record; free those no queued request still holds."""
    cdef Conn *nxt
    pthread_mutex_lock(&core.lock)
    while c != NULL:
        nxt = c.next
        c.refs -= 1
        if c.refs == 0:
            free(c)
        c = nxt
    pthread_mutex_unlock(&core.lock)


cdef class Engine:
    """Relays established connection pairs in C threads. See the module docstring.

    ``linger_seconds``: how long a side of an ended connection that may still be sending keeps being
    read (and dropped) before it is closed, at most ``linger_bytes`` bytes; 0 closes at once.

    The short critical sections on core.lock are taken with the GIL held: the workers never
    wait for the GIL, so this cannot deadlock, and it saves a GIL release per call.
    """

    # attributes: see _splice.pxd

    def __cinit__(self, int threads=1, int buffer_size=65536, int pipe_pool=64,
                  splice_threshold=None, double linger_seconds=0.0,
                  uint64_t linger_bytes=1 << 20):
        cdef int i, err
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads must be 1..{MAX_THREADS}, got {threads}")
        if not 1024 <= buffer_size <= (1 << 24):
            raise ValueError(f"buffer_size must be 1024..16777216, got {buffer_size}")
        if pipe_pool < 0:
            raise ValueError(f"pipe_pool must be >= 0, got {pipe_pool}")
        if splice_threshold is None:
            splice_threshold = buffer_size
        if not 0 <= splice_threshold <= buffer_size:
            raise ValueError(f"splice_threshold must be 0..buffer_size, got {splice_threshold}")
        if not 0 <= linger_seconds <= 3600:
            raise ValueError(f"linger_seconds must be 0..3600, got {linger_seconds}")
        self._conns = {}
        self.core = <Core *>calloc(1, sizeof(Core))
        if self.core == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.core.lock, NULL)
        self.core.donefd = -1
        self.core.bufsize = <uint32_t>buffer_size
        self.core.threshold = <uint32_t>splice_threshold if pipe_pool else 0
        self.core.pipes_max = pipe_pool
        self.core.linger_ticks = idle_ticks(linger_seconds)
        self.core.linger_bytes = linger_bytes
        self.core.t0 = mono_ns()
        self.core.workers = <Worker *>calloc(threads, sizeof(Worker))
        if self.core.workers == NULL:
            raise MemoryError()
        self.core.nworkers = threads
        for i in range(threads):
            self.core.workers[i].epfd = self.core.workers[i].wakefd = -1
        self.core.donefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.core.donefd < 0:
            raise OSError(errno, "eventfd")
        for i in range(threads):
            err = init_worker(self.core, &self.core.workers[i])
            if err:
                raise OSError(err, "engine worker setup")

    def __dealloc__(self):
        cdef Core *core = self.core
        if core == NULL:
            return
        if core.workers != NULL:
            if not self._stopped:
                with nogil:
                    halt(core)
            free(core.workers)
        free_conns(core.done_head)
        close_fd(&core.donefd)
        pthread_mutex_destroy(&core.lock)
        free(core)
        self.core = NULL

    def start(self) -> None:
        """Spawn the relay threads (each runs its epoll loop without the GIL)."""
        cdef int i, err = 0
        cdef sigset_t all_signals, old
        cdef Worker *w
        if self._started or self._stopped:
            raise RuntimeError("engine already started" if self._started else "engine stopped")
        self._started = True
        with nogil:
            # Signals stay with the Python main thread; relay threads block them all.
            sigfillset(&all_signals)
            pthread_sigmask(SIG_SETMASK, &all_signals, &old)
            for i in range(self.core.nworkers):
                w = &self.core.workers[i]
                w.now = w.tick = tick_of(self.core)
                err = pthread_create(&w.tid, NULL, worker_main, w)
                if err:
                    break
                w.running = True
            pthread_sigmask(SIG_SETMASK, &old, NULL)
        if err:
            self.stop()
            raise OSError(err, "pthread_create")

    def add(self, int64_t conn_id, int client_fd, int server_fd, double client_idle,
            double server_idle, const unsigned char[:] to_server=b"",
            const unsigned char[:] to_client=b"", *, bint track_packets=False) -> None:
        """Hand over a connected pair; the engine owns (and will close) both fds.
        ``track_packets``: follow both streams' MQTT packets so that goodbye() can be used."""
        cdef Conn *c
        try:
            self._check_add(conn_id, client_fd, server_fd)
            c = self._new_conn(conn_id, client_fd, server_fd, idle_ticks(client_idle),
                               idle_ticks(server_idle), to_server, to_client)
            if track_packets:
                track(c)
        except BaseException:
            close_pair(client_fd, server_fd)
            raise
        self._queue(c)

    cdef _queue(self, Conn *c):
        """Give a new connection to the next worker (round robin)."""
        cdef Worker *w = &self.core.workers[self._next]
        cdef bint refused
        cdef int client_fd = c.fd[0], server_fd = c.fd[1]
        cdef int64_t conn_id = c.conn_id
        c.worker = <uint8_t>(w - self.core.workers)
        pthread_mutex_lock(&self.core.lock)
        refused = self.core.halting
        if not refused:
            if w.in_tail != NULL:
                w.in_tail.next = c
            else:
                w.in_head = c
            w.in_tail = c
            wake(w)
        pthread_mutex_unlock(&self.core.lock)
        if refused:  # stop() began meanwhile (it runs in another thread)
            free_conns(c)
            close_pair(client_fd, server_fd)
            raise RuntimeError("engine is stopping; connection closed")
        self._next = (self._next + 1) % self.core.nworkers
        self._conns[conn_id] = <uintptr_t>c
        self._added += 1

    cdef _check_add(self, int64_t conn_id, int client_fd, int server_fd):
        if self._closing:
            raise RuntimeError("engine is stopping; connection closed")
        if client_fd < 0 or server_fd < 0 or client_fd == server_fd:
            raise ValueError(f"bad fd pair ({client_fd}, {server_fd})")
        if conn_id in self._conns:
            raise ValueError(f"connection id {conn_id} is already in the engine")

    cdef Conn *_new_conn(self, int64_t conn_id, int client_fd, int server_fd,
                         uint32_t client_idle, uint32_t server_idle,
                         const unsigned char[:] to_server,
                         const unsigned char[:] to_client) except NULL:
        cdef Conn *c
        cdef bint ok
        if max(to_server.shape[0], to_client.shape[0]) > 0x7FFFFFFF:
            raise ValueError("pending bytes must be under 2 GiB")
        c = <Conn *>calloc(1, sizeof(Conn))
        if c == NULL:
            raise MemoryError()
        c.conn_id = conn_id
        c.t = mono_s()
        c.fd[0] = client_fd
        c.fd[1] = server_fd
        c.idle[0] = client_idle
        c.idle[1] = server_idle
        c.refs = 1
        # bytes Python already read count as relayed by the engine
        ok = set_pending(c, 0, to_server) and set_pending(c, 1, to_client)
        if not ok:
            free(c.pend[0])
            free(c.pend[1])
            free(c)
            raise MemoryError()
        return c

    def close(self, int64_t conn_id) -> None:
        """Ask the engine to end a connection; its record will say "killed"."""
        cdef Conn *c
        cdef Worker *w
        cdef bint ok, queue
        addr = self._conns.get(conn_id)
        if addr is None or self._stopped:
            return
        c = <Conn *><uintptr_t>addr
        w = &self.core.workers[c.worker]
        pthread_mutex_lock(&self.core.lock)
        # one queued close per connection (which also keeps refs in 8 bits); none once the
        # engine is stopping, which closes everything anyway
        queue = not (c.asked & ASK_CLOSE) and not self.core.halting
        ok = not queue or push_ptr(&w.kills, &w.nkills, &w.capkills, c)
        if queue and ok:
            c.asked |= ASK_CLOSE
            c.refs += 1
            wake(w)
        pthread_mutex_unlock(&self.core.lock)
        if not ok:
            raise MemoryError()

    def goodbye(self, int64_t conn_id, const unsigned char[:] packet) -> bool:
        """End a connection between two packets: send ``packet`` (a DISCONNECT) to the client
        at the next packet boundary of the server's stream, dropping the server's bytes after
        it, then close both sides; with b"" (MQTT 3.1.1 has no server DISCONNECT) close once
        the client's stream reached its own boundary too; the record says "drained". Ignored
        for ids that are unknown, drained, not added with ``track_packets`` or already said
        goodbye to; a connection that ends before the boundary ends as it would have. True if
        the goodbye was queued."""
        cdef Conn *c
        cdef Worker *w
        cdef Bye *b
        cdef size_t n = <size_t>packet.shape[0]
        cdef bint queued = False
        if not n < 0x10000000:
            raise ValueError(f"goodbye packet must be under 256 MiB, got {n} bytes")
        addr = self._conns.get(conn_id)
        if addr is None or self._stopped:
            return False
        c = <Conn *><uintptr_t>addr
        w = &self.core.workers[c.worker]
        b = <Bye *>malloc(sizeof(Bye) + n)
        if b == NULL:
            raise MemoryError()
        b.conn = c
        b.len = <uint32_t>n
        if n:
            memcpy(<char *>(b + 1), &packet[0], n)
        pthread_mutex_lock(&self.core.lock)
        if c.asked & ASK_TRACK and not (c.asked & ASK_BYE) and not self.core.halting:
            c.asked |= ASK_BYE
            c.refs += 1
            b.next = w.byes
            w.byes = b
            b = NULL
            queued = True
            wake(w)
        pthread_mutex_unlock(&self.core.lock)
        free(b)
        return queued

    def adopt(self, int64_t conn_id, int client_fd, int server_fd, uint64_t bytes_in,
              uint64_t bytes_out, const unsigned char[:] to_server,
              const unsigned char[:] to_client, uint32_t state, double client_idle,
              double server_idle, double client_quiet, double server_quiet,
              uint32_t client_pkt_left, uint32_t client_pkt_hdr, uint32_t server_pkt_left,
              uint32_t server_pkt_hdr, double age) -> None:
        """Take over a connection another process's engine relayed (an ``export()`` row from
        the bytes onwards, read from another process: every value is checked). The engine
        owns both fds, also when this raises. ``*_quiet``: seconds since each side last made
        progress (its idle clock goes on); ``age``: how long the connection has existed;
        ``client_pkt_*``, ``server_pkt_*``: where each stream is within its packet (body
        bytes left, length bytes read), so that a goodbye waits for the packet the old
        engine was inside, in either direction."""
        cdef Conn *c
        cdef uint32_t shut_without_eof = (state >> 2) & ~state & 3
        try:
            self._check_add(conn_id, client_fd, server_fd)
            if state & ~(<uint32_t>X_ALL) or shut_without_eof or (state & 0xC) == 0xC:
                raise ValueError(f"bad connection state bits {state:#x}")
            check_boundary("client", client_pkt_left, client_pkt_hdr)
            check_boundary("server", server_pkt_left, server_pkt_hdr)
            if max(to_server.shape[0], to_client.shape[0]) > MAX_HELD:
                raise ValueError(f"more than {MAX_HELD} bytes held in a direction")
            for value in (client_quiet, server_quiet, age):
                if not (isfinite(value) and 0 <= value < 1e8):
                    raise ValueError(f"bad duration {value}")
            c = self._new_conn(conn_id, client_fd, server_fd, idle_ticks(client_idle),
                               idle_ticks(server_idle), to_server, to_client)
        except BaseException:
            close_pair(client_fd, server_fd)
            raise
        c.nbytes[0] = bytes_in
        c.nbytes[1] = bytes_out
        c.flags = flags_of(state)
        if state & X_TRACK:
            c.asked |= ASK_TRACK
        c.pkt_left[0] = client_pkt_left
        c.pkt_hdr[0] = <uint8_t>client_pkt_hdr
        c.pkt_left[1] = server_pkt_left
        c.pkt_hdr[1] = <uint8_t>server_pkt_hdr
        c.last_rx[0] = <uint32_t>(client_quiet * 10)  # ticks ago: open_conn() makes it a tick
        c.last_rx[1] = <uint32_t>(server_quiet * 10)
        c.t = mono_s() - age
        self._queue(c)

    def freeze(self) -> None:
        """Stop the relay threads, keeping every relayed connection for ``export()``: the
        fast path stops accepting, connections still in setup or waiting for a goodbye end
        ("shutdown", records in ``drain()``), lingering sockets close, and every request is
        refused from now on. ``stop()`` later closes what was not released."""
        if not self._started or self._stopped or self._frozen:
            raise RuntimeError("only a running engine can be frozen")
        self._closing = True
        with nogil:
            freeze_all(self.core)
        self._frozen = True

    def export(self) -> list:
        """The state of every relayed connection of a frozen engine, one row each: (handle,
        conn id, fast path?, client fd, server fd, bytes client->server, bytes
        server->client, held for the server, held for the client, state bits, client idle s,
        server idle s, client quiet s, server quiet s, then for the client's stream and the
        server's: packet bytes left, length bytes read; age s). The bytes held are taken out
        of the engine's pipes: export once."""
        cdef list handles = [], out = []
        cdef Worker *w
        cdef Conn *c
        cdef uint32_t now = tick_of(self.core)
        cdef double t = mono_s()
        cdef int i, slot
        if not self._frozen or self._stopped:
            raise RuntimeError("export() needs a frozen engine")
        for i in range(self.core.nworkers):
            w = &self.core.workers[i]
            handles.clear()
            exported_list(w.untimed, handles)
            for slot in range(NSLOTS):
                exported_list(w.wheel[slot], handles)
            for handle in handles:
                c = <Conn *><uintptr_t>handle
                out.append((
                    handle, c.conn_id, c.kind == K_FAST, c.fd[0], c.fd[1], c.nbytes[0],
                    c.nbytes[1], held(w, c, 0), held(w, c, 1), state_bits(c.flags),
                    c.idle[0] / 10, c.idle[1] / 10, <uint32_t>(now - c.last_rx[0]) / 10,
                    <uint32_t>(now - c.last_rx[1]) / 10, c.pkt_left[0], c.pkt_hdr[0],
                    c.pkt_left[1], c.pkt_hdr[1], t - c.t,
                ))
        self._exported = {row[0]: row[1] for row in out}
        return out

    def release(self, uintptr_t handle) -> None:
        """Forget an exported connection that another process now relays: our references
        to its sockets close without a FIN or a reset (the other process holds them), its
        buffers are freed, and no record is made."""
        cdef Conn *c
        cdef Worker *w
        cdef int s
        if self._exported is None or self._exported.pop(handle, None) is None:
            raise ValueError("not an exported connection")
        c = <Conn *>handle
        w = &self.core.workers[c.worker]
        for s in range(2):
            epoll_ctl(w.epfd, EPOLL_CTL_DEL, c.fd[s], NULL)
            close_fd(&c.fd[s])
        drop_buffers(w, c)
        hlist_del(c)
        w.live -= 1
        if c.kind == K_FAST:
            self.core.fast.released(w, c)
        else:
            self._conns.pop(c.conn_id, None)
            self._added -= 1
            free(c)

    def completions_fd(self) -> int:
        """An eventfd that becomes readable when drain() has records."""
        return self.core.donefd

    def drain(self) -> list:
        """Records of connections ended since the last drain:
        (conn_id, bytes client->server, bytes server->client, seconds, reason, errno)."""
        cdef Conn *head
        cdef Conn *c
        cdef list out = []
        clear_fd(self.core.donefd)
        pthread_mutex_lock(&self.core.lock)
        head = self.core.done_head
        self.core.done_head = self.core.done_tail = NULL
        pthread_mutex_unlock(&self.core.lock)
        c = head
        while c != NULL:
            out.append((c.conn_id, c.nbytes[0], c.nbytes[1], c.t, REASONS[c.reason], c.err))
            self._conns.pop(c.conn_id, None)
            c = c.next
        release_records(self.core, head)
        return out

    def counters(self, int64_t conn_id):
        """Live (bytes client->server, bytes server->client), or None if unknown/drained."""
        cdef Conn *c
        addr = self._conns.get(conn_id)
        if addr is None:
            return None
        c = <Conn *><uintptr_t>addr
        return (fm_load64(&c.nbytes[0]), fm_load64(&c.nbytes[1]))

    def active(self) -> int:
        """Connections handed over and not yet ended."""
        cdef uint64_t finished
        pthread_mutex_lock(&self.core.lock)
        finished = self.core.finished
        pthread_mutex_unlock(&self.core.lock)
        return self._added - finished

    def buffered(self) -> int:
        """Bytes the engine holds right now (unsent remainders and pipe contents)."""
        cdef int i
        cdef uint64_t total = 0
        for i in range(self.core.nworkers):
            total += fm_load64(&self.core.workers[i].buffered)
        return total

    def stop(self, double grace=0.0) -> None:
        """Refuse new connections, wait up to ``grace`` seconds for the live ones to end,
        close the rest (reason "shutdown") and join the threads. Idempotent."""
        cdef int64_t until
        if self._stopped:
            return
        self._closing = True
        if grace > 0 and self._started:
            until = mono_ns() + <int64_t>(grace * 1e9)
            while self.active() and mono_ns() < until:
                with nogil:
                    sleep_ms(5)
        with nogil:
            halt(self.core)
        self._stopped = True
