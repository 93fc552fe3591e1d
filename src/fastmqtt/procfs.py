"""What Linux's /proc says about this process: open files and their limit, memory, CPU time and
start time, as Prometheus's own client libraries export them (``process_*`` metrics).

Read the way prometheus_client's ProcessCollector reads them (the tests compare the two), so a
dashboard built for any Prometheus-instrumented process reads fastmqtt's numbers the same way.
"""

from __future__ import annotations

import os
import resource

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = resource.getpagesize()


def _boot_time() -> float:
    """Seconds since the epoch when the machine booted (``btime`` in /proc/stat)."""
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("/proc/stat has no btime line")


_BOOT_TIME = _boot_time()


def read_process() -> dict[str, float]:
    """This process now: the ``process_*`` metric suffixes and their values."""
    with open("/proc/self/stat", "rb") as f:
        # Fields after the command name, which is in parentheses and may itself hold spaces:
        # state is fields[0], so proc(5)'s field n is fields[n - 3].
        fields = f.read().rsplit(b")", 1)[1].split()
    return {
        "open_fds": len(os.listdir("/proc/self/fd")),
        "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "virtual_memory_bytes": int(fields[20]),
        "resident_memory_bytes": int(fields[21]) * _PAGE,
        "cpu_seconds_total": (int(fields[11]) + int(fields[12])) / _TICKS,
        "start_time_seconds": _BOOT_TIME + int(fields[19]) / _TICKS,
    }
