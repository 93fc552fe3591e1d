"""Plain-Python twin of ``_stick.pyx``: same names, same order, the same bytes in the table
after the same operations (tests/unit/test_stick_properties.py compares them).

It is the fallback when extensions are off, the oracle for the property tests and the
baseline for the benchmarks. Python has no compare-and-swap on shared memory, so the bucket
locks are POSIX record locks (``lockf``) on the lock word's bytes of the backing file: the
kernel drops them when their process dies, and the lock word, written exactly as the
compiled module writes it, still tells the next locker that a writer died mid-update. The
twin and the compiled module must never use one table at the same time (each would ignore
the other's locks); ``stick_file`` maps a table with one implementation per process tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from collections.abc import Sequence

# The layout; _stick.pyx has the same numbers (a test compares them).
HEADER_SIZE = 4096
H_MAGIC = 0
H_VERSION = 8
H_HEADER_SIZE = 12
H_WAYS = 16
H_WORKERS = 20
H_NBUCKETS = 24
H_EXPIRE_MS = 32
H_SIZE = 40
H_KEY = 48
H_BOOT_ID = 64
H_BYTE_ORDER = 80
H_ENTRY_SIZE = 88
H_BUCKET_HEADER = 92
BUCKET_HEADER = 32
ENTRY_SIZE = 32
KEY_SIZE = 16
DIGEST_SIZE = 16
MAX_WAYS = 8
MAX_WORKERS = 1024
ROW_MAX = 65535

VERSION = 1
MAGIC = b"FMQSTICK"
BYTE_ORDER_MARK = 0x0102030405060708

SEQ_ONE = 1 << 32
PID_MASK = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF

_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_ENTRY = struct.Struct("=QQQII")  # lo, hi, stamp, server, live
_EMPTY = bytes(ENTRY_SIZE)


# -- geometry ---------------------------------------------------------------------------------


def geometry(size: int, workers: int) -> tuple[int, int]:
    """(ways, nbuckets) for ``size`` entries: buckets of 8, fewer ways for tiny tables."""
    if not 1 <= size <= 2**40 or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"size 1..2**40 and workers 1..{MAX_WORKERS}, got {size}, {workers}")
    ways = min(MAX_WAYS, size)
    return ways, -(-size // ways)


def table_bytes(ways: int, nbuckets: int, workers: int) -> tuple[int, int]:
    """(offset of the live rows, bytes of the whole table) for a geometry."""
    buckets_end = HEADER_SIZE + nbuckets * (BUCKET_HEADER + ways * ENTRY_SIZE)
    rows = -(-buckets_end // 64) * 64
    total = rows + nbuckets * ways * workers * 2
    return rows, -(-total // 4096) * 4096


def _expired(stamp: int, live: int, expire: int, now: int) -> bool:
    # idle for ``expire`` or longer; a stamp ahead of ``now`` is not expired
    return live == 0 and now >= stamp and now - stamp >= expire


class Table:
    """One stick table mapped by this process (``worker``: its live-count column).

    ``mapping`` is a writable buffer (an mmap of the whole file) whose header
    ``stick_file.format_header`` wrote; ``fd`` is the file, whose byte ranges are the locks.
    Digests are 16 bytes (``digest``), server ids 1..2**32-1, times milliseconds.
    """

    def __init__(self, mapping: object, fd: int, worker: int) -> None:
        self.mapping = mapping
        self.mem = memoryview(mapping).cast("B")  # type: ignore[arg-type]
        self.fd = fd
        if self.mem.readonly or len(self.mem) < HEADER_SIZE:
            raise ValueError("a stick table mapping starts page-aligned and holds its header")
        if fd < 0:
            raise ValueError("the plain-Python stick table locks ranges of its file: no fd")
        ways = _U32.unpack_from(self.mem, H_WAYS)[0]
        workers = _U32.unpack_from(self.mem, H_WORKERS)[0]
        nbuckets = _U64.unpack_from(self.mem, H_NBUCKETS)[0]
        if (
            _U32.unpack_from(self.mem, H_HEADER_SIZE)[0] != HEADER_SIZE
            or _U32.unpack_from(self.mem, H_ENTRY_SIZE)[0] != ENTRY_SIZE
            or _U32.unpack_from(self.mem, H_BUCKET_HEADER)[0] != BUCKET_HEADER
            or not 1 <= ways <= MAX_WAYS
            or not 1 <= workers <= MAX_WORKERS
            or not 1 <= nbuckets <= 2**40
        ):
            raise ValueError("not a stick table of this layout")
        rows, total = table_bytes(ways, nbuckets, workers)
        if len(self.mem) < total:
            raise ValueError(f"stick table mapping holds {len(self.mem)} of {total} bytes")
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} outside 0..{workers - 1}")
        self.nbuckets = nbuckets
        self.ways = ways
        self.workers = workers
        self.bucket_size = BUCKET_HEADER + ways * ENTRY_SIZE
        self.rows_offset = rows
        self.worker = worker
        self.pid = os.getpid()
        self.key = bytes(self.mem[H_KEY : H_KEY + KEY_SIZE])

    # -- digest and clock -----------------------------------------------------------------

    def digest(self, key: bytes) -> bytes:
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        return hashlib.blake2b(key, key=self.key, digest_size=DIGEST_SIZE).digest()

    # -- addressing -----------------------------------------------------------------------

    def _word_at(self, b: int) -> int:
        return HEADER_SIZE + b * self.bucket_size

    def _entry_at(self, b: int, k: int) -> int:
        return HEADER_SIZE + b * self.bucket_size + BUCKET_HEADER + k * ENTRY_SIZE

    def _row_at(self, b: int, k: int) -> int:
        return self.rows_offset + (b * self.ways + k) * self.workers * 2

    def _expire_ms(self) -> int:
        return _U64.unpack_from(self.mem, H_EXPIRE_MS)[0]

    def _load(self, b: int, k: int) -> tuple[int, int, int, int, int]:
        return _ENTRY.unpack_from(self.mem, self._entry_at(b, k))

    def _cell(self, b: int, k: int, w: int) -> int:
        return _U16.unpack_from(self.mem, self._row_at(b, k) + 2 * w)[0]

    def _set_cell(self, b: int, k: int, w: int, value: int) -> None:
        _U16.pack_into(self.mem, self._row_at(b, k) + 2 * w, value)

    # -- locks ----------------------------------------------------------------------------

    def _discard(self, b: int) -> None:
        # The lock's owner died holding it: the bucket may be half-written, so its entries go.
        for k in range(self.ways):
            self._clear(b, k)

    def _lock(self, b: int, dead: int) -> None:
        # The kernel gives the range to one process at a time and frees it when its holder
        # dies, so an owner still written in the word (``dead`` or not) died mid-update.
        at = self._word_at(b)
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 8, at)
        seen = _U64.unpack_from(self.mem, at)[0]
        _U64.pack_into(self.mem, at, (((seen & ~PID_MASK) + SEQ_ONE) & _M64) | self.pid)
        if seen & PID_MASK:
            self._discard(b)

    def _unlock(self, b: int) -> None:
        at = self._word_at(b)
        seen = _U64.unpack_from(self.mem, at)[0]
        _U64.pack_into(self.mem, at, ((seen & ~PID_MASK) + SEQ_ONE) & _M64)
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 8, at)

    def _lock2(self, b1: int, b2: int) -> None:
        # in index order, so two writers never wait for each other crosswise
        for b in sorted({b1, b2}):
            self._lock(b, 0)

    def _unlock2(self, b1: int, b2: int) -> None:
        self._unlock(b1)
        if b2 != b1:
            self._unlock(b2)

    # -- reading a bucket under a shared lock --------------------------------------------

    def _copy_slots(self, b: int) -> list[tuple[int, int, int, int, int]]:
        return [self._load(b, k) for k in range(self.ways)]

    def _read_bucket(self, b: int) -> list[tuple[int, int, int, int, int]]:
        at = self._word_at(b)
        fcntl.lockf(self.fd, fcntl.LOCK_SH, 8, at)
        try:
            if not _U64.unpack_from(self.mem, at)[0] & PID_MASK:
                return self._copy_slots(b)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 8, at)
        self._lock(b, 0)  # a writer died here: repair the bucket first
        slots = self._copy_slots(b)
        self._unlock(b)
        return slots

    def _find_slot(self, slots: list, d: tuple[int, int]) -> int:
        for k, (lo, hi, _, server, _) in enumerate(slots):
            if server != 0 and (lo, hi) == d:
                return k
        return -1

    def _any_expired(self, slots: list, expire: int, now: int) -> bool:
        return any(
            server != 0 and _expired(stamp, live, expire, now)
            for _, _, stamp, server, live in slots
        )

    def _peek(self, d: tuple[int, int], now: int) -> tuple[int, int, int] | None:
        b = d[0] % self.nbuckets
        expire = self._expire_ms()
        for _side in range(2):
            slots = self._read_bucket(b)
            k = self._find_slot(slots, d)
            if k >= 0:
                _, _, stamp, server, live = slots[k]
                return None if _expired(stamp, live, expire, now) else (server, live, stamp)
            if d[1] % self.nbuckets == b:
                break
            b = d[1] % self.nbuckets
        return None

    # -- writing, under the bucket locks -------------------------------------------------

    def _clear(self, b: int, k: int) -> None:
        self.mem[self._entry_at(b, k) : self._entry_at(b, k) + ENTRY_SIZE] = _EMPTY
        row = self._row_at(b, k)
        self.mem[row : row + 2 * self.workers] = bytes(2 * self.workers)

    def _find(self, b: int, d: tuple[int, int]) -> int:
        for k in range(self.ways):
            lo, hi, _, server, _ = self._load(b, k)
            if server != 0 and (lo, hi) == d:
                return k
        return -1

    def _locate(self, d: tuple[int, int]) -> tuple[int, int] | None:
        # The digest's entry (expired or not) in either of its buckets, or None.
        b1, b2 = d[0] % self.nbuckets, d[1] % self.nbuckets
        k = self._find(b1, d)
        b = b1
        if k < 0 and b2 != b1:
            k = self._find(b2, d)
            b = b2
        return None if k < 0 else (b, k)

    def _occupied(self, b: int, expire: int, now: int) -> int:
        n = 0
        for k in range(self.ways):
            _, _, stamp, server, live = self._load(b, k)
            n += server != 0 and not _expired(stamp, live, expire, now)
        return n

    def _free_slot(self, b: int, expire: int, now: int) -> int:
        # an empty slot, else an expired entry's (expired ones stay visible to purge meanwhile)
        expired = -1
        for k in range(self.ways):
            _, _, stamp, server, live = self._load(b, k)
            if server == 0:
                return k
            if expired < 0 and _expired(stamp, live, expire, now):
                expired = k
        return expired

    def _place(self, d: tuple[int, int], now: int) -> tuple[int, int] | None:
        # Where a new entry goes, emptied: a free (or expired) slot of the emptier bucket (the
        # digest's lo bucket on a tie), else the least recently used idle entry of both (lo
        # bucket first); None when every entry is live.
        lo, hi, expire = d[0] % self.nbuckets, d[1] % self.nbuckets, self._expire_ms()
        first, second = lo, hi
        if hi != lo and self._occupied(hi, expire, now) < self._occupied(lo, expire, now):
            first, second = hi, lo
        free = self._free_slot(first, expire, now)
        where = (first, free)
        if free < 0 and second != first:
            free = self._free_slot(second, expire, now)
            where = (second, free)
        if free < 0:
            found = None
            oldest = 0
            for b in (lo,) if hi == lo else (lo, hi):
                for k in range(self.ways):
                    _, _, stamp, _, live = self._load(b, k)
                    if live == 0 and (found is None or stamp < oldest):
                        found = (b, k)
                        oldest = stamp
            if found is None:
                return None
            where = found
        self._clear(*where)
        return where

    def _store(self, b: int, k: int, d: tuple[int, int], stamp: int, server: int, live: int):
        _ENTRY.pack_into(self.mem, self._entry_at(b, k), d[0], d[1], stamp, server, live)

    def put(self, digest: bytes, server: int, now_ms: int) -> bool:
        d = _digest_arg(digest)
        b1, b2 = d[0] % self.nbuckets, d[1] % self.nbuckets
        if server == 0:
            return False
        self._lock2(b1, b2)
        try:
            where = self._locate(d)
            if where is None:
                where = self._place(d, now_ms)
                if where is None:
                    return False
                self._store(*where, d, 0, 0, 0)
            _, _, _, _, live = self._load(*where)
            self._store(*where, d, now_ms, server, live)
            return True
        finally:
            self._unlock2(b1, b2)

    def connected(self, digest: bytes, now_ms: int) -> bool:
        d = _digest_arg(digest)
        b1, b2 = d[0] % self.nbuckets, d[1] % self.nbuckets
        self._lock2(b1, b2)
        try:
            where = self._locate(d)
            if where is None:
                return False
            _, _, stamp, server, live = self._load(*where)
            if _expired(stamp, live, self._expire_ms(), now_ms):
                return False
            cell = self._cell(*where, self.worker)
            if cell < ROW_MAX:
                self._set_cell(*where, self.worker, cell + 1)
                live += 1
            self._store(*where, d, now_ms, server, live)
            return True
        finally:
            self._unlock2(b1, b2)

    def disconnected(self, digest: bytes, now_ms: int) -> bool:
        d = _digest_arg(digest)
        b1, b2 = d[0] % self.nbuckets, d[1] % self.nbuckets
        self._lock2(b1, b2)
        try:
            where = self._locate(d)
            if where is None:
                return False
            cell = self._cell(*where, self.worker)
            if cell == 0:  # none of ours: a restart or a forget came in between
                return False
            self._set_cell(*where, self.worker, cell - 1)
            _, _, stamp, server, live = self._load(*where)
            live -= 1
            self._store(*where, d, now_ms if live == 0 else stamp, server, live)
            return True
        finally:
            self._unlock2(b1, b2)

    def remove(self, digest: bytes) -> bool:
        d = _digest_arg(digest)
        b1, b2 = d[0] % self.nbuckets, d[1] % self.nbuckets
        self._lock2(b1, b2)
        try:
            where = self._locate(d)
            if where is not None:
                self._clear(*where)
            return where is not None
        finally:
            self._unlock2(b1, b2)

    def get(self, digest: bytes, now_ms: int) -> int:
        found = self._peek(_digest_arg(digest), now_ms)
        return 0 if found is None else found[0]

    # -- the Python surface ---------------------------------------------------------------

    def peek(self, digest: bytes, now_ms: int) -> tuple[int, int, int] | None:
        """(server, live connections, stamp) of the digest's entry, or None."""
        return self._peek(_digest_arg(digest), now_ms)

    def count(self, now_ms: int) -> int:
        """Entries neither empty nor expired (a scan under shared locks)."""
        expire = self._expire_ms()
        n = 0
        for b in range(self.nbuckets):
            for _, _, stamp, server, live in self._read_bucket(b):
                n += server != 0 and not _expired(stamp, live, expire, now_ms)
        return n

    def forget_server(self, server: int, now_ms: int) -> int:
        """Drop every entry of ``server``; returns how many were unexpired."""
        expire = self._expire_ms()
        n = 0
        for b in range(self.nbuckets):
            self._lock(b, 0)
            for k in range(self.ways):
                _, _, stamp, entry_server, live = self._load(b, k)
                if server != 0 and entry_server == server:
                    n += not _expired(stamp, live, expire, now_ms)
                    self._clear(b, k)
            self._unlock(b)
        return n

    def purge(self, now_ms: int, first: int = 0, count: int | None = None) -> int:
        """Empty the expired entries of ``count`` buckets from ``first`` (all by default);
        returns how many. A bucket with nothing to purge is read, not locked."""
        expire = self._expire_ms()
        start = min(first, self.nbuckets)
        end = self.nbuckets if count is None else min(start + count, self.nbuckets)
        n = 0
        for b in range(start, end):
            if not self._any_expired(self._read_bucket(b), expire, now_ms):
                continue
            self._lock(b, 0)
            for k in range(self.ways):
                _, _, stamp, server, live = self._load(b, k)
                if server != 0 and _expired(stamp, live, expire, now_ms):
                    self._clear(b, k)
                    n += 1
            self._unlock(b)
        return n

    def recover_worker(self, worker: int, dead_pid: int, now_ms: int) -> int:
        """A worker died: drop its live counts (the entries it alone held become idle now) and
        free the locks ``dead_pid`` held. Returns the connections subtracted."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} outside 0..{self.workers - 1}")
        n = 0
        for b in range(self.nbuckets):
            self._lock(b, dead_pid)
            for k in range(self.ways):
                cell = self._cell(b, k, worker)
                if cell == 0:
                    continue
                lo, hi, stamp, server, live = self._load(b, k)
                n += cell
                self._set_cell(b, k, worker, 0)
                live -= cell
                self._store(b, k, (lo, hi), now_ms if live == 0 else stamp, server, live)
            self._unlock(b)
        return n

    def restart(self, now_ms: int, restamp: bool) -> None:
        """Only while no other process maps the table (a fresh start): free every lock (their
        owners are gone; a held one empties its bucket), zero the live counts (no connection
        survived; the entries become idle now) and, after a reboot (``restamp``), restamp
        every entry, whose stamps were another boot's clock."""
        for b in range(self.nbuckets):
            at = self._word_at(b)
            seen = _U64.unpack_from(self.mem, at)[0]
            if seen & PID_MASK:
                self._discard(b)
                _U64.pack_into(self.mem, at, ((seen & ~PID_MASK) + SEQ_ONE) & _M64)
            for k in range(self.ways):
                lo, hi, stamp, server, live = self._load(b, k)
                if server == 0:
                    continue
                self._store(b, k, (lo, hi), now_ms if restamp or live else stamp, server, 0)
                row = self._row_at(b, k)
                self.mem[row : row + 2 * self.workers] = bytes(2 * self.workers)

    def entries(self, now_ms: int) -> list[tuple[bytes, int, int, tuple[int, ...]]]:
        """Every unexpired entry as (digest, server, stamp, per-worker live counts)."""
        expire = self._expire_ms()
        out = []
        for b in range(self.nbuckets):
            self._lock(b, 0)
            slots = self._copy_slots(b)
            rows = [
                tuple(self._cell(b, k, w) for w in range(self.workers)) for k in range(self.ways)
            ]
            self._unlock(b)
            for k, (lo, hi, stamp, server, live) in enumerate(slots):
                if server == 0 or _expired(stamp, live, expire, now_ms):
                    continue
                out.append((_digest_bytes(lo, hi), server, stamp, rows[k]))
        return out

    def load(
        self, digest: bytes, server: int, stamp: int, live: Sequence[int], now_ms: int
    ) -> bool:
        """Copy an entry from another table (a resize): ``live`` holds its live counts per
        worker, cut or padded to this table's workers. False when it finds no room."""
        d = _digest_arg(digest)
        if server == 0:
            return False
        counts = [min(c, ROW_MAX) for c in live[: self.workers]]
        b1, b2 = d[0] % self.nbuckets, d[1] % self.nbuckets
        self._lock2(b1, b2)
        try:
            where = self._locate(d)
            if where is None:
                where = self._place(d, now_ms)
            else:
                self._clear(*where)
            if where is None:
                return False
            for w, c in enumerate(counts):
                self._set_cell(*where, w, c)
            self._store(*where, d, stamp, server, sum(counts))
            return True
        finally:
            self._unlock2(b1, b2)

    def hold_for_test(self, bucket: int) -> None:
        """Take a bucket's lock and keep it, as a writer killed mid-update would."""
        if not 0 <= bucket < self.nbuckets:
            raise IndexError(f"bucket {bucket} outside 0..{self.nbuckets - 1}")
        self._lock(bucket, 0)


def _digest_arg(digest: bytes) -> tuple[int, int]:
    if not isinstance(digest, bytes):
        raise TypeError(f"digest must be bytes, not {type(digest).__name__}")
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"a digest is {DIGEST_SIZE} bytes, got {len(digest)}")
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def _digest_bytes(lo: int, hi: int) -> bytes:
    return lo.to_bytes(8, "little") + hi.to_bytes(8, "little")


LAYOUT = {
    name: globals()[name]
    for name in (
        "HEADER_SIZE", "H_MAGIC", "H_VERSION", "H_HEADER_SIZE", "H_WAYS", "H_WORKERS",
        "H_NBUCKETS", "H_EXPIRE_MS", "H_SIZE", "H_KEY", "H_BOOT_ID", "H_BYTE_ORDER",
        "H_ENTRY_SIZE", "H_BUCKET_HEADER", "BUCKET_HEADER", "ENTRY_SIZE", "KEY_SIZE",
        "DIGEST_SIZE", "MAX_WAYS", "MAX_WORKERS", "ROW_MAX",
    )
}  # fmt: skip
