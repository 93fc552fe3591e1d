"""`fastmqtt serve`: load the config, set up logging, then run one process (or a supervisor of
worker processes) until SIGTERM/SIGINT, draining for the configured grace; SIGHUP reloads."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys

from fastmqtt import logs, notify, takeover, workers
from fastmqtt.config import Config, load_config
from fastmqtt.errors import ConfigError
from fastmqtt.runtime import Runtime

log = logging.getLogger("fastmqtt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path of the TOML config (see examples/lb.toml)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--takeover",
        metavar="PATH",
        default=None,
        help="take the listeners and connections over from the fastmqtt process offering them "
        "on this Unix socket (its [global] takeover_socket); without one, start afresh",
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.config}: {exc.strerror}", file=sys.stderr)
        return 1
    logs.setup(config.global_.log_level, config.global_.log_format, args.worker)
    if args.worker is not None:
        workers.become_worker()
        return serve(config, worker=args.worker, takeover_from=args.takeover)
    for warning in config.warnings:
        log.warning("%s", warning)
    if config.global_.workers > 1:
        return workers.Supervisor(args.config, config, args.takeover).run()
    return serve(config, takeover_from=args.takeover)


def raise_fd_limit() -> None:
    """Use every file descriptor the hard limit allows (the soft limit is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(config: Config, worker: int | None = None, takeover_from: str | None = None) -> int:
    """Run until SIGTERM/SIGINT: then drain for the configured grace; a second signal exits now.
    ``worker`` is set in the processes a supervisor starts (they share the listeners).
    ``takeover_from``: the takeover socket of a running process whose listeners and
    connections this one takes over (takeover.py)."""
    import uvloop

    raise_fd_limit()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(config, loop, worker, takeover_from))
    finally:
        loop.close()


async def _serve(
    config: Config, loop: asyncio.AbstractEventLoop, worker: int | None, takeover_from: str | None
) -> int:
    runtime = Runtime(config, loop, conn_log=sys.stdout, worker=worker)
    await runtime.find_servers()
    incoming = _take_listeners(runtime, takeover_from) if takeover_from else None
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(0)
        name, count = signal.Signals(signum).name, len(runtime.hub)
        log.info(
            "%s: draining %d connections for up to %.0fs",
            name,
            count,
            runtime.config.global_.grace,
            extra={"signal": name, "connections": count},
        )
        notify.stopping()
        stop.set()

    # before the listeners open: a SIGHUP sent once the port answers (or after READY=1) must
    # reload, not kill us; one that comes while start() runs is handled right after it
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload_file)
    try:
        runtime.start()
    except OSError as exc:
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        runtime.discovery.stop()
        log.error("%s", exc.strerror or exc)
        return 1
    if incoming is not None:
        try:
            incoming.connections(runtime)
        except (OSError, takeover.TakeoverError) as exc:
            log.error("takeover: connections not taken over: %s", exc)
    offer = _offer(runtime, stop, worker)
    if worker is None:
        # MAINPID: under systemd, a process started to take over becomes the unit's main one
        notify.ready(f"serving {len(runtime.frontends)} frontends", main_pid=incoming is not None)
        channel = None
    else:
        channel = workers.attach(runtime)
    try:
        await stop.wait()
        if offer is not None:
            offer.close()
        await runtime.shutdown(runtime.config.global_.grace)
    finally:
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if channel is not None:
            channel.cancel()
    log.info("stopped")
    return 0


def _take_listeners(runtime: Runtime, path: str) -> takeover.Incoming | None:
    """The listening sockets of the process at ``path``, placed in ``proxy``; None (logged)
    when there is none to take over from, or it failed: this process then binds its own."""
    incoming = takeover.Incoming(path)
    try:
        return incoming if incoming.listeners(runtime) else None
    except (OSError, takeover.TakeoverError) as exc:
        log.error("takeover from %s failed, starting afresh: %s", path, exc)
        return None


def _offer(runtime: Runtime, stop: asyncio.Event, worker: int | None) -> takeover.Offer | None:
    """Offer this process's sockets on ``[global] takeover_socket``, if set (a worker: on
    its own path beside it, for the new worker of the same index)."""
    path = runtime.config.global_.takeover_socket
    if path is None:
        return None
    if worker is not None:
        path = takeover.worker_path(path, worker)

    def handed_over() -> None:
        notify.stopping()
        stop.set()

    try:
        return takeover.Offer(runtime, path, handed_over)
    except OSError as exc:
        log.error("takeover_socket: %s", exc.strerror or exc)
        return None
