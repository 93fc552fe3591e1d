"""Where a stick table's bytes live: a file (or a memfd) sized, populated and mapped at start,
its header, and taking one over after a restart or a resize (docs/stick-table.md).

A table file is created whole under a temporary name and renamed into place, so a process
that opens the path sees either the old table or the complete new one; processes that still
map a replaced file keep using it until they reopen the path. ``flock`` on the file says who
uses it: every process that maps it holds a shared lock, so a process that gets the exclusive
lock at start knows that nobody else does (and may clear what dead processes left).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType

from fastmqtt._accel import NO_EXTENSIONS

if NO_EXTENSIONS:
    from fastmqtt import _stick_py as _impl
else:
    from fastmqtt import _stick as _impl  # type: ignore[no-redef]

L = _impl.LAYOUT  # the twin's is the same (tests/unit/test_stick_properties.py)


class StickFileError(OSError):
    """A table file that cannot be created, sized or mapped; the text names it."""


class InUse(StickFileError):
    """Another process (another fastmqtt) maps the table file."""


def boot_id() -> bytes:
    """This boot's identity: monotonic stamps from another boot mean nothing."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return uuid.UUID(f.read().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


@dataclass(frozen=True, slots=True)
class Header:
    ways: int
    workers: int
    nbuckets: int
    expire_ms: int
    size: int
    key: bytes
    boot_id: bytes


def format_header(mem: mmap.mmap, header: Header) -> None:
    """Write a new table's header into a zeroed mapping."""
    mem[L["H_MAGIC"] : L["H_MAGIC"] + 8] = _impl.MAGIC
    for field, value in (
        ("H_VERSION", _impl.VERSION),
        ("H_HEADER_SIZE", L["HEADER_SIZE"]),
        ("H_WAYS", header.ways),
        ("H_WORKERS", header.workers),
        ("H_ENTRY_SIZE", L["ENTRY_SIZE"]),
        ("H_BUCKET_HEADER", L["BUCKET_HEADER"]),
    ):
        struct.pack_into("=I", mem, L[field], value)
    for field, value in (
        ("H_NBUCKETS", header.nbuckets),
        ("H_EXPIRE_MS", header.expire_ms),
        ("H_SIZE", header.size),
        ("H_BYTE_ORDER", _impl.BYTE_ORDER_MARK),
    ):
        struct.pack_into("=Q", mem, L[field], value)
    mem[L["H_KEY"] : L["H_KEY"] + L["KEY_SIZE"]] = header.key
    mem[L["H_BOOT_ID"] : L["H_BOOT_ID"] + 16] = header.boot_id


def read_header(data: bytes | mmap.mmap, length: int) -> Header | str:
    """The header of a table file of ``length`` bytes, or why it is not one we can use."""
    if length < L["HEADER_SIZE"] or data[:8] != _impl.MAGIC:
        return "not a fastmqtt stick table"

    def u32(field: str) -> int:
        return struct.unpack_from("=I", data, L[field])[0]

    def u64(field: str) -> int:
        return struct.unpack_from("=Q", data, L[field])[0]

    if u64("H_BYTE_ORDER") != _impl.BYTE_ORDER_MARK:
        return "written on a machine of another byte order"
    if (u32("H_VERSION"), u32("H_HEADER_SIZE"), u32("H_ENTRY_SIZE"), u32("H_BUCKET_HEADER")) != (
        _impl.VERSION,
        L["HEADER_SIZE"],
        L["ENTRY_SIZE"],
        L["BUCKET_HEADER"],
    ):
        return f"layout version {u32('H_VERSION')}, this fastmqtt writes {_impl.VERSION}"
    header = Header(
        ways=u32("H_WAYS"),
        workers=u32("H_WORKERS"),
        nbuckets=u64("H_NBUCKETS"),
        expire_ms=u64("H_EXPIRE_MS"),
        size=u64("H_SIZE"),
        key=bytes(data[L["H_KEY"] : L["H_KEY"] + L["KEY_SIZE"]]),
        boot_id=bytes(data[L["H_BOOT_ID"] : L["H_BOOT_ID"] + 16]),
    )
    try:
        if (header.ways, header.nbuckets) != _impl.geometry(header.size, header.workers):
            return "its geometry does not match its size"
    except ValueError as exc:
        return str(exc)
    if length != _impl.table_bytes(header.ways, header.nbuckets, header.workers)[1]:
        return f"{length} bytes, its header describes another size"
    return header


class TableFile:
    """One mapped table: the file (or memfd), the mapping, and the Table over it. The
    process holds a shared ``flock`` on a named file for as long as it maps it. ``impl``:
    the module whose Table to use (the tests pick one; else the one _accel chose)."""

    def __init__(
        self, fd: int, path: str | None, worker: int, impl: ModuleType | None = None
    ) -> None:
        self.fd = fd
        self.path = path
        try:
            self.length = os.fstat(fd).st_size
            self.inode = os.fstat(fd).st_ino
            self.mapping = mmap.mmap(
                fd,
                self.length,
                flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
            header = read_header(self.mapping, self.length)
            if isinstance(header, str):
                raise StickFileError(f"{self.name}: {header}")
            self.header = header
            self.table = (impl or _impl).Table(self.mapping, fd, worker)
        except BaseException:
            self.close()
            raise

    @property
    def name(self) -> str:
        return self.path or "stick table (memfd)"

    def set_expire(self, expire_ms: int) -> None:
        """A reload changed ``expire``: every process reads it from the header."""
        struct.pack_into("=Q", self.mapping, L["H_EXPIRE_MS"], expire_ms)

    def mark_boot(self) -> None:
        """The stamps are this boot's now (after ``Table.restart``)."""
        self.header = replace(self.header, boot_id=boot_id())
        self.mapping[L["H_BOOT_ID"] : L["H_BOOT_ID"] + 16] = self.header.boot_id

    def close(self) -> None:
        table = getattr(self, "table", None)
        self.table = None
        del table  # releases its view of the mapping
        mapping = getattr(self, "mapping", None)
        if mapping is not None:
            with contextlib.suppress(BufferError):  # still exported: closed when collected
                mapping.close()
        if self.fd >= 0:
            if self.path is not None:  # a mapping still exported would keep it locked
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def create(
    path: str | None,
    size: int,
    expire_ms: int,
    workers: int,
    worker: int,
    key: bytes | None = None,
    impl: ModuleType | None = None,
    fill: Callable[[TableFile], object] | None = None,
) -> TableFile:
    """A new table of ``size`` entries: a memfd when ``path`` is None, else written beside
    ``path`` and renamed over it. All its pages are allocated and mapped now. ``fill`` gets
    it before any other process can see it (a resize copies the old entries in)."""
    ways, nbuckets = _impl.geometry(size, workers)
    length = _impl.table_bytes(ways, nbuckets, workers)[1]
    header = Header(
        ways, workers, nbuckets, expire_ms, size, key or os.urandom(L["KEY_SIZE"]), boot_id()
    )
    if path is None:
        fd = os.memfd_create("fastmqtt-stick", os.MFD_CLOEXEC)
        where = "memfd"
    else:
        where = f"{path}.new-{os.getpid()}"
        try:
            fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StickFileError(f"cannot create {where}: {exc.strerror}") from None
    try:
        try:
            os.posix_fallocate(fd, 0, length)
        except OSError as exc:
            raise StickFileError(
                f"cannot allocate {length} bytes for {path or where}: {exc.strerror}"
            ) from None
        with mmap.mmap(fd, length, flags=mmap.MAP_SHARED) as mem:
            format_header(mem, header)
        if path is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        _unlink_new(path, where)
        raise
    file = TableFile(fd, path, worker, impl)  # closes fd itself if it fails
    try:
        if fill is not None:
            fill(file)
        if path is not None:
            os.rename(where, path)
    except BaseException:
        file.close()
        _unlink_new(path, where)
        raise
    return file


def _unlink_new(path: str | None, where: str) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(where)


def attach(path: str, worker: int, impl: ModuleType | None = None) -> TableFile:
    """Map an existing table file (a worker, or the owner at start); shared flock held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise StickFileError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return TableFile(fd, path, worker, impl)


def take_over(path: str, worker: int, impl: ModuleType | None = None) -> TableFile | None:
    """At start, before any other process of ours maps it: the table file at ``path`` with
    what dead processes left cleared, or None when there is none. Raises InUse if another
    process maps it, StickFileError (naming why) if it is not a table we can use."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StickFileError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InUse(f"{path} is in use by another process (another fastmqtt?)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # keeps it ours: nobody else got in between
    except BaseException:
        os.close(fd)
        raise
    return TableFile(fd, path, worker, impl)


def unused(path: str) -> bool:
    """Whether no process maps the table file (nobody holds its flock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
