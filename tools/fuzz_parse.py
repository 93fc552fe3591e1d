#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of every parser that reads untrusted bytes.

Targets, chosen by the first byte of each input (the second byte picks options):

* ``inspect_connect`` and ``inspect_connack``: the compiled ``fastmqtt._parse`` against its
  plain-Python twin ``fastmqtt._parse_py``: same verdict, same fields, same error reason and
  offset, for any max_size / accept_bridge / protocol version;
* ``proxy_protocol.parse``: only ProxyHeader, None or MalformedPacket, a length within the data;
* ``fastmqtt._ws`` (``parse_frame_header``, ``unmask``) against ``fastmqtt._ws_py``.

Anything else (another exception, a disagreement, an AddressSanitizer report) is a crash:
libFuzzer stops and writes the input to ``crash-<sha1>``.

Coverage feedback comes from the Python twins and proxy_protocol (atheris instruments their
bytecode); the compiled modules are not instrumented (that needs clang's -fsanitize=fuzzer,
and only gcc is here). gcc's libasan also takes over the coverage hooks libFuzzer needs, so
``--sanitize`` works in two phases: libFuzzer grows the corpus on the normal build for
``--grow`` seconds, then the AddressSanitizer + UBSan build replays every corpus input and
``--mutations`` random mutations of them (bit flips, byte edits, splices, length-field
pokes) through the same harness.

    python tools/fuzz_parse.py --sanitize --grow 600 --mutations 2000000 tests/corpus/fuzz_parse
    python tools/fuzz_parse.py -runs=50000 /tmp/new tests/corpus/fuzz_parse   # normal build
    python tools/fuzz_parse.py --seed tests/corpus/fuzz_parse                   # (re)write seeds
    python tools/fuzz_parse.py crash-abc123                                     # replay one input

libFuzzer writes new interesting inputs into the FIRST corpus directory: give it a scratch
directory first and the checked-in corpus second, unless you mean to grow the corpus.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import pathlib
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from types import ModuleType
from typing import Any

try:
    import atheris
except ImportError:  # the harness, --seed and --replay work without it (extra "fuzz")
    atheris = None

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASAN_BUILD = pathlib.Path(os.environ.get("FASTMQTT_ASAN_BUILD", "/tmp/fastmqtt-asan"))
EXT_DIR_ENV = "FASTMQTT_FUZZ_EXT_DIR"  # set in the re-executed, sanitized child

with atheris.instrument_imports(include=["fastmqtt"]) if atheris else contextlib.nullcontext():
    from fastmqtt import _parse_py, _ws_py, packets, proxy_protocol
    from fastmqtt.errors import MalformedPacket

CONNECT_FIELDS = (
    "packet_length", "protocol_name", "protocol_version", "bridge", "flags", "clean_start",
    "keepalive", "client_id", "username", "password", "will_topic", "will_payload", "will_qos",
    "will_retain", "properties", "will_properties",
)  # fmt: skip
CONNACK_FIELDS = ("packet_length", "session_present", "reason_code", "properties")
TARGETS = ("connect", "connack", "proxy", "ws")
MAX_SIZES = (64, 1024, 65536, 1 << 28)


def load_compiled(ext_dir: pathlib.Path | None) -> tuple[ModuleType, ModuleType]:
    """fastmqtt._parse and fastmqtt._ws: the installed ones, or those built in ``ext_dir``
    (registered under their real names first: _ws cimports _parse)."""
    if ext_dir is None:
        from fastmqtt import _parse, _ws

        return _parse, _ws
    modules = []
    for name in ("_parse", "_ws"):
        (path,) = (ext_dir / "fastmqtt").glob(f"{name}.cpython-*.so")
        spec = importlib.util.spec_from_file_location(f"fastmqtt.{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


def outcome(call: Callable[..., Any], fields: tuple[str, ...], *args: Any, **kwargs: Any) -> tuple:
    """A comparable summary of one call; exceptions other than MalformedPacket propagate."""
    try:
        result = call(*args, **kwargs)
    except MalformedPacket as exc:
        return ("error", exc.reason, exc.offset)
    if result is None:
        return ("incomplete",)
    if not fields:
        return ("valid", tuple(result))
    return ("valid", tuple(getattr(result, name) for name in fields))


class Harness:
    def __init__(self, parse: ModuleType, ws: ModuleType) -> None:
        self.parse = parse
        self.ws = ws

    def __call__(self, data: bytes) -> None:
        if len(data) < 2:
            return
        target, options, payload = TARGETS[data[0] % len(TARGETS)], data[1], data[2:]
        getattr(self, f"_{target}")(options, payload)

    def _agree(
        self, pair: tuple[Callable, Callable], fields: tuple, *args: Any, **kw: Any
    ) -> tuple:
        compiled, twin = (outcome(call, fields, *args, **kw) for call in pair)
        if compiled != twin:
            raise AssertionError(f"compiled {compiled!r} != twin {twin!r}")
        return compiled

    def _connect(self, options: int, payload: bytes) -> None:
        kwargs = {"max_size": MAX_SIZES[options & 3], "accept_bridge": bool(options & 4)}
        pair = (self.parse.inspect_connect, _parse_py.inspect_connect)
        verdict = self._agree(pair, CONNECT_FIELDS, payload, **kwargs)
        if verdict[0] == "valid" and not 0 < verdict[1][0] <= len(payload):
            raise AssertionError(f"packet_length {verdict[1][0]} outside {len(payload)} bytes")

    def _connack(self, options: int, payload: bytes) -> None:
        version = 3 + options % 3
        pair = (self.parse.inspect_connack, _parse_py.inspect_connack)
        self._agree(pair, CONNACK_FIELDS, payload, version)

    def _proxy(self, options: int, payload: bytes) -> None:
        verdict = outcome(proxy_protocol.parse, ("length",), payload)
        if verdict[0] == "valid" and not 0 < verdict[1][0] <= len(payload):
            raise AssertionError(f"header length {verdict[1][0]} outside {len(payload)} bytes")

    def _ws(self, options: int, payload: bytes) -> None:
        pos, masked = options >> 2, bool(options & 1)
        pair = (self.ws.parse_frame_header, _ws_py.parse_frame_header)
        self._agree(pair, (), payload, pos, masked)
        mask, phase = payload[:4].ljust(4, b"\0"), options % 4
        if self.ws.unmask(payload, mask, phase) != _ws_py.unmask(payload, mask, phase):
            raise AssertionError("unmask differs")


# --- seeds ------------------------------------------------------------------------------------


def seeds() -> list[bytes]:
    """Small valid inputs of every kind, each behind its target/option bytes."""
    connects = [
        packets.connect("dev-1", version=v, username="u", password=b"p") for v in (3, 4, 5)
    ] + [packets.connect("", version=4), packets.connect("\u00e9t\u00e9", version=5)]
    connacks = [packets.connack(0, 4), packets.connack(0x87, 5), packets.connack(0, 5, True)]
    address = (("192.0.2.1", 4242), ("198.51.100.2", 1883))
    headers = [
        proxy_protocol.encode_v1(*address),
        proxy_protocol.encode_v2(*address),
        proxy_protocol.encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2)),
        proxy_protocol.encode_v2_local(),
    ]
    frames = [
        b"\x82\x85abcd" + bytes(x ^ y for x, y in zip(b"hello", b"abcda", strict=True)),
        b"\x82\xfe\x01\x00abcd",
        b"\x82\xff" + (70000).to_bytes(8, "big") + b"abcd",
        b"\x88\x80abcd",
    ]
    return (
        [bytes([0, 2]) + c for c in connects]
        + [bytes([1, i]) + c for i, c in enumerate(connacks)]
        + [bytes([2, 0]) + h + packets.connect("x") for h in headers]
        + [bytes([3, 1]) + f for f in frames]
    )


def write_seeds(directory: pathlib.Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for data in seeds():
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(seeds())


# --- running ----------------------------------------------------------------------------------


def build_sanitized(build_dir: pathlib.Path) -> None:
    """Every extension with AddressSanitizer + UBSan, into build_dir (not the source tree)."""
    env = {**os.environ, "FASTMQTT_SANITIZE": "1"}
    command = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(build_dir)]
    command += ["--build-temp", str(build_dir / "tmp")]
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def grow_corpus(seconds: int, work: pathlib.Path, corpus: list[str]) -> None:
    """Phase 1: coverage-guided libFuzzer on the normal build; new inputs go to ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, f"-max_total_time={seconds}", "-max_len=8192"]
    subprocess.run([*command, str(work), *corpus], check=True, cwd=work)


def reexec_sanitized(argv: list[str]) -> int:
    """ASan must be the first library loaded: run this script again with it preloaded."""
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        EXT_DIR_ENV: str(ASAN_BUILD),
        # CPython's own allocations are never freed at exit: leak reports would be noise
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    return subprocess.run([sys.executable, __file__, *argv], env=env, check=False).returncode


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One random edit of the kinds that break parsers: flip, set, insert, cut, splice, and
    poke a length-sized value (0, 0x7f, 0x80, 0xff, 0xffff) somewhere."""
    out = bytearray(data)
    pos = rng.randrange(len(out) + 1)
    kind = rng.randrange(6)
    if kind == 0 and out:
        out[pos % len(out)] ^= 1 << rng.randrange(8)
    elif kind == 1 and out:
        out[pos % len(out)] = rng.randrange(256)
    elif kind == 2:
        out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif kind == 3:
        del out[pos : pos + rng.randrange(1, 17)]
    elif kind == 4:
        other = rng.choice(pool)
        out = out[:pos] + other[rng.randrange(len(other) + 1) :]
    else:
        out[pos : pos + 2] = rng.choice((0, 0x7F, 0x80, 0xFF, 0xFFFF)).to_bytes(2, "big")
    return bytes(out[:8192])


def replay_and_mutate(harness: Harness, corpus: list[str], mutations: int, seed: int) -> int:
    """Phase 2 (inside the sanitized process): every corpus input, then random mutations."""
    pool = [p.read_bytes() for d in corpus for p in sorted(pathlib.Path(d).iterdir())]
    for data in pool:
        harness(data)
    rng = random.Random(seed)
    for _ in range(mutations):
        data = rng.choice(pool)
        for _ in range(rng.randrange(1, 5)):
            data = mutate(rng, data, pool)
        harness(data)
    asan = "libasan" in pathlib.Path("/proc/self/maps").read_text()
    print(f"{len(pool)} corpus inputs + {mutations} mutations, no crash (ASan loaded: {asan})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sanitize", action="store_true", help="grow, then replay under ASan")
    parser.add_argument("--grow", type=int, default=600, help="seconds of phase 1 (0: skip)")
    parser.add_argument("--mutations", type=int, default=1_000_000, help="phase 2 inputs")
    parser.add_argument("--random-seed", type=int, default=1)
    parser.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)  # phase 2
    parser.add_argument("--seed", metavar="DIR", help="write the seed inputs to DIR and exit")
    args, rest = parser.parse_known_args()
    if args.seed:
        print(f"{write_seeds(pathlib.Path(args.seed))} seeds written to {args.seed}")
        return 0
    if args.sanitize:
        rest = [arg if arg.startswith("-") else str(pathlib.Path(arg).resolve()) for arg in rest]
        work = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-parse-"))
        (work / "grown").mkdir()
        if args.grow:
            grow_corpus(args.grow, work / "grown", rest)
        build_sanitized(ASAN_BUILD)
        phase2 = ["--replay", f"--mutations={args.mutations}", f"--random-seed={args.random_seed}"]
        return reexec_sanitized([*phase2, str(work / "grown"), *rest])
    ext_dir = os.environ.get(EXT_DIR_ENV)
    parse, ws = load_compiled(pathlib.Path(ext_dir) if ext_dir else None)
    print(f"fuzzing {parse.__file__} and {ws.__file__}", file=sys.stderr)
    if args.replay:
        return replay_and_mutate(Harness(parse, ws), rest, args.mutations, args.random_seed)
    if atheris is None:
        print("fuzzing needs atheris: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    atheris.Setup([sys.argv[0], *rest], Harness(parse, ws))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
