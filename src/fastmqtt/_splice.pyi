"""Stub for the C relay engine (src/fastmqtt/_splice.pyx)."""

# (conn_id, bytes client->server, bytes server->client, duration seconds, end reason, errno)
# end reason: "client-closed", "server-closed", "client-reset", "server-reset",
# "client-timeout", "server-timeout", "killed", "shutdown", "error" or "drained" (goodbye)
Record = tuple[int, int, int, float, str, int]

REASONS: tuple[str, ...]
CONN_SIZE: int  # the engine's own bytes per idle connection
PIPE_SIZE: int  # the most one direction holds in bulk (splice) mode

class Engine:
    def __init__(
        self,
        threads: int = 1,
        buffer_size: int = 65536,
        pipe_pool: int = 64,
        splice_threshold: int | None = None,
        linger_seconds: float = 0.0,
        linger_bytes: int = 1 << 20,
    ) -> None: ...
    def start(self) -> None: ...
    def add(
        self,
        conn_id: int,
        client_fd: int,
        server_fd: int,
        client_idle: float,
        server_idle: float,
        to_server: bytes = b"",
        to_client: bytes = b"",
        *,
        track_packets: bool = False,
    ) -> None: ...
    def adopt(
        self,
        conn_id: int,
        client_fd: int,
        server_fd: int,
        bytes_in: int,
        bytes_out: int,
        to_server: bytes,
        to_client: bytes,
        state: int,
        client_idle: float,
        server_idle: float,
        client_quiet: float,
        server_quiet: float,
        client_pkt_left: int,
        client_pkt_hdr: int,
        server_pkt_left: int,
        server_pkt_hdr: int,
        age: float,
    ) -> None: ...
    def freeze(self) -> None: ...
    # (handle, conn id, fast path?, client fd, server fd, then adopt()'s arguments from bytes_in)
    def export(self) -> list[tuple]: ...
    def release(self, handle: int) -> None: ...
    def close(self, conn_id: int) -> None: ...
    def goodbye(self, conn_id: int, packet: bytes) -> bool: ...
    def completions_fd(self) -> int: ...
    def drain(self) -> list[Record]: ...
    def counters(self, conn_id: int) -> tuple[int, int] | None: ...
    def active(self) -> int: ...
    def buffered(self) -> int: ...
    def stop(self, grace: float = 0.0) -> None: ...
