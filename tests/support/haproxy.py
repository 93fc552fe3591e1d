"""Run Debian's HAProxy, the reference implementation, as a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from fastmqtt.tools.brokers import BrokerUnavailable, stop_process, wait_for_port


def find_haproxy() -> str:
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(path, os.X_OK):
        raise BrokerUnavailable("haproxy not found: `apt-get install haproxy`")
    return path


@dataclass
class HAProxy:
    """HAProxy running ``config`` in the foreground; ``wait_port`` is probed until it accepts."""

    config: str
    wait_port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = field(default=None, repr=False)
    workdir: str = field(default="", repr=False)

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "haproxy.log")

    def start(self, timeout: float = 10.0) -> HAProxy:
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="fastmqtt-haproxy-")
        cfg = os.path.join(self.workdir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(self.config)
        check = subprocess.run(
            [find_haproxy(), "-c", "-f", cfg], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise BrokerUnavailable(f"haproxy rejected its config: {check.stdout}{check.stderr}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [find_haproxy(), "-db", "-f", cfg],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for_port(self.host, self.wait_port, timeout, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
