# cython: language_level=3
"""Structs of the engine's fast path (_fastpath.pyx): a listening frontend and a connection
from accept until it relays."""

from libc.stdint cimport int16_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastmqtt._admit cimport Admission, Source
from fastmqtt._choose cimport Pool, Server
from fastmqtt._parse cimport R_COUNT
from fastmqtt._splice cimport Conn, Core, Pending
from fastmqtt._stick cimport StickDigest
from fastmqtt.includes.linux cimport pthread_mutex_t, sockaddr_in6, sockaddr_storage, socklen_t


cdef enum:
    MAX_LISTENERS = 256
    MAX_ROUTES = 64

# Listener.track: which relayed connections follow packet boundaries (a goodbye needs it)
cdef enum:
    TRACK_NONE = 0
    TRACK_V5 = 1                # drain_disconnect alone: MQTT 5 clients
    TRACK_ALL = 2               # track_packets: every MQTT client


# Counters of one frontend (atomics), added to its metrics.FrontendCounters by Python.
cdef struct ListenerCounters:
    uint64_t accepted
    uint64_t accept_errors
    uint32_t accept_errno           # the last one
    uint64_t by_version[8]          # CONNECTs by protocol level
    uint64_t invalid[R_COUNT]       # forwarded as is (reject_invalid = false), by reason


# One frontend on the fast path. Python writes the settings (ints: read without a lock);
# ``lock`` guards the pointers a connection takes a reference to.
cdef struct Listener:
    uint32_t refs               # its FastPath slot, each thread watching it, each connection
    uint32_t id
    int fd                      # the engine's own dup of the listening socket
    int watchers                # threads that have fd in their epoll set (under Fast.lock)
    bint removed                # FastPath.remove(): fd closes once no thread watches it
    pthread_mutex_t lock
    Pool *pool                  # the frontend's backend
    Pool *routes[MAX_ROUTES]    # route rules' backends, by rule index
    Admission *admission        # access rules and limits (_admit.pyx), or NULL
    uint8_t *refusals           # CONNACKs to send when refusing (see FastPath.frontend), or NULL
    # settings
    uint32_t inspect_ticks
    uint32_t max_connect
    uint32_t maxconn
    bint reject_invalid
    bint allow_bridge
    uint8_t track               # TRACK_*: whose packets the relay follows from the start
    bint client_auto            # timeout_client = "auto": 1.5 x keepalive in [min, max]
    double client_s
    double client_min
    double client_max
    # state
    uint32_t live               # its connections (accepted .. ended), atomic
    uint64_t live_bytes[2]      # bytes in, out of its relayed connections still open, atomic
    uint32_t paused             # P_* bits, under Fast.lock
    uint32_t backoff_until      # tick, with P_BACKOFF
    ListenerCounters n


# What a connection needs only until it relays.
cdef struct Setup:
    Pending *block              # holds buf after a Pending header: it becomes what is sent
    uint8_t *buf                # the client's bytes (CONNECT first) while more may come
    uint32_t have
    uint32_t cap
    uint8_t *ack                # the server's first bytes while its CONNACK is incomplete
    uint32_t ack_have
    uint32_t data_len           # client bytes in the to-server Pending (after any header)
    uint32_t route              # the backend chosen by a route rule: routes[route - 1]
    int failures                # connect errors and hang-ups so far (the retry budget)
    int ntried
    Server **tried              # servers that failed this client (referenced), retries + 1
    uint64_t key_hash           # the balancer's key
    bint has_key


# A connection of the fast path: the relay's Conn first, so a Conn * of kind K_FAST is one.
cdef struct FastConn:
    Conn c
    Listener *listener
    Pool *pool
    Server *server
    Setup *setup
    char *ids                   # client id then username (exact size), or NULL
    uint16_t cid_len
    uint16_t user_len
    uint32_t listener_id        # for the record, which outlives the pointers
    uint32_t pool_id
    uint32_t server_id
    int64_t accepted_ns         # monotonic
    int64_t wall_ns             # realtime, for the log line
    int64_t inspected_ns        # 0 until the CONNECT was read
    int64_t connected_ns        # 0 until a server accepted the connection
    sockaddr_in6 peer           # IPv4 clients as IPv4-mapped IPv6 (FC_PEER_V6: it was v6)
    StickDigest stick_key       # with FC_STICKY: its stick-table key
    Source source               # the client address as rules and limits see it
    Admission *admission        # with FC_COUNTED: holds a per-source slot there
    uint16_t keepalive
    int16_t connack             # -1: none read
    uint16_t why                # W_* code when the fast path ended it, else 0
    uint16_t why_arg            # rule index, parse reason or errno
    uint8_t version             # 0 until a valid CONNECT was read
    uint8_t state               # FC_* bits
    uint8_t clean_start         # the CONNECT's clean start / clean session flag
    bint has_expiry             # a v5 CONNECT's session expiry interval (seconds) was given
    uint32_t session_expiry
