"""systemd service notifications (sd_notify) without libsystemd.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines sent to the
socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names a socket in the abstract namespace.
With ``Type=notify`` systemd holds ``systemctl start`` until READY=1 arrives, so a unit that
depends on fastmqtt starts only once its listeners are bound. Outside systemd (no
``$NOTIFY_SOCKET``) every function here does nothing and returns False.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("fastmqtt.notify")


def _address(env: str) -> str | None:
    if env.startswith("@"):
        return "\0" + env[1:]
    if env.startswith("/"):
        return env
    return None  # vsock and other transports of newer systemd: not needed here


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments in one datagram; True if it was sent.

    A failure is logged, never raised: a service must not die because its supervisor's
    socket went away.
    """
    env = os.environ.get("NOTIFY_SOCKET", "")
    if not env:
        return False
    address = _address(env)
    if address is None:
        log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX address; not notifying", env)
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", env, exc)
        return False
    return True


def _status(text: str) -> str:
    # A newline would start a new assignment: keep STATUS one line.
    return "STATUS=" + " ".join(text.splitlines())


def _state(assignments: list[str], status: str | None) -> bool:
    return notify(*assignments, *([_status(status)] if status else []))


def ready(status: str | None = None, main_pid: bool = False) -> bool:
    """Startup (or a reload) is complete: listeners are bound and serving. ``main_pid``: this
    process is the service's main process from now on (it took over from the one systemd
    started; the unit needs ``NotifyAccess=all`` for systemd to take it)."""
    return _state(["READY=1", *([f"MAINPID={os.getpid()}"] if main_pid else [])], status)


def reloading(status: str | None = None) -> bool:
    """A reload started; systemd shows "reloading" until the next ready().

    MONOTONIC_USEC is required with Type=notify-reload (systemd 253+) and ignored before.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return _state(["RELOADING=1", f"MONOTONIC_USEC={usec}"], status)


def stopping(status: str | None = None) -> bool:
    """Shutdown started (draining); systemd stops waiting for readiness."""
    return _state(["STOPPING=1"], status)


def status(text: str) -> bool:
    """Free-form one-line status shown by ``systemctl status``."""
    return notify(_status(text))
