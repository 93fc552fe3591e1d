"""A listening Unix socket whose file mode and owner decide who may connect (as HAProxy's
``stats socket PATH mode 600 user U group G``), and who is on the other end of a connection.

The socket is bound under a temporary name, given its mode and owner, made to listen, and only
then renamed into place, so nobody can connect while its permissions are still the umask's. A
socket file left by a process that died is replaced; one that another process still listens on
is not (two fastmqtt on one path would steal each other's admin socket).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import grp
import os
import pwd
import socket
import stat
import struct

from fastmqtt.config import StatsSocketConfig

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class UnixListener:
    """The bound, listening socket at ``config.path``. Whoever serves on ``sock`` closes it;
    remove() takes the file away."""

    def __init__(self, config: StatsSocketConfig, backlog: int = 128) -> None:
        self.path = config.path
        uid, gid = _id(config.user, "user"), _id(config.group, "group")
        _refuse_if_in_use(self.path)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(temporary)
            os.chmod(temporary, config.mode)
            if uid != -1 or gid != -1:
                os.chown(temporary, uid, gid)
            self.sock.listen(backlog)
            os.rename(temporary, self.path)
            self.inode = os.stat(self.path).st_ino
            atexit.register(self.remove)  # also when a second signal ends the process at once
        except OSError as exc:
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise OSError(exc.errno, f"{self.path}: {exc.strerror}") from None

    @classmethod
    def adopt(cls, path: str, sock: socket.socket) -> UnixListener:
        """The socket listening at ``path`` that another process gave us (takeover.py)."""
        self = cls.__new__(cls)
        self.path = path
        self.sock = sock
        self.inode = os.stat(path).st_ino
        atexit.register(self.remove)
        return self

    def handed_over(self) -> None:
        """Another process serves this path now (takeover.py): never remove the file."""
        atexit.unregister(self.remove)
        self.inode = -1

    def remove(self) -> None:
        """Remove the file, unless another process has put its own socket there meanwhile."""
        atexit.unregister(self.remove)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)


def _id(owner: str | int | None, what: str) -> int:
    if owner is None:
        return -1  # os.chown: leave as it is
    if isinstance(owner, int):
        return owner
    try:
        return pwd.getpwnam(owner).pw_uid if what == "user" else grp.getgrnam(owner).gr_gid
    except KeyError:
        raise OSError(errno.EINVAL, f"no {what} {owner!r} on this machine") from None


def _refuse_if_in_use(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket: not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return  # nobody listens: left by a process that died
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another process is listening on it")


def peer(sock: socket.socket) -> str:
    """Who connected, from the kernel (SO_PEERCRED), for logs: "uid 1000 pid 4242"."""
    pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return f"uid {uid} pid {pid}"
