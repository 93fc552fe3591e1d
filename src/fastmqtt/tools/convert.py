"""`fastmqtt convert haproxy.cfg > lb.toml`: an HAProxy MQTT config, translated.

The file is read the way HAProxy reads it: words, quotes and ``#`` comments, ``${VAR}`` taken
from the environment, times in us/ms/s/m/h/d with bare numbers in milliseconds, sizes with
k = 1024. Every directive is translated into lb.toml, accepted because it is already what
fastmqtt does (``mode tcp``, ``option tcplog``), or reported on stderr with its line number:

    haproxy.cfg:42: unsupported: option httplog
    haproxy.cfg:3: note: daemon: the service manager does this for fastmqtt; ...

Unsupported directives are listed again as comments at the end of the TOML, so the file
carries its own to-do list. Exit status: 0 when everything was converted (notes do not count),
2 when something was left out, 1 when the input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fastmqtt.config.checks import addresses_overlap
from fastmqtt.config.values import _is_ip

# --- reading HAProxy's file: sections of word lists --------------------------------------------

PROXY_SECTIONS = ("defaults", "frontend", "backend", "listen")
OTHER_SECTIONS = (
    "peers", "userlist", "cache", "program", "http-errors", "ring", "mailers", "log-forward",
    "fcgi-app",
)  # fmt: skip
_ENV_REF = re.compile(r"\$\{?[A-Za-z0-9_.]")  # what HAProxy would take for a variable
ENV_DIRECTIVES = ("setenv", "presetenv", "unsetenv", "resetenv")
_ESCAPES = {"r": "\r", "n": "\n", "t": "\t"}


@dataclass
class Line:
    number: int
    words: list[str]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # as this line saw it

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass
class Section:
    kind: str
    name: str
    header: Line
    lines: list[Line] = field(default_factory=list)


@dataclass
class Report:
    """What could not be converted (exit 2), and notes on what changed meaning (exit 0)."""

    label: str
    skipped: list[tuple[int, str]] = field(default_factory=list)
    noted: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line: Line, what: str = "", why: str = "") -> None:
        text = what or line.text
        self.skipped.append((line.number, f"{text} ({why})" if why else text))

    def note(self, line: Line, text: str) -> None:
        self.noted.append((line.number, text))

    @property
    def unsupported(self) -> list[str]:
        """``haproxy.cfg:42: unsupported: option httplog``, in line order."""
        return [f"{self.label}:{n}: unsupported: {text}" for n, text in sorted(self.skipped)]

    @property
    def notes(self) -> list[str]:
        return [f"{self.label}:{n}: note: {text}" for n, text in sorted(self.noted)]


class _Reader:
    """One line into words, as HAProxy 2.6's parse_line() makes them: blanks separate words,
    ``#`` starts a comment, ``\\`` escapes outside single quotes, and ``$NAME``, ``${NAME}``,
    ``${NAME-default}`` and ``${NAME[*]}`` (one word per item) are expanded only inside double
    quotes; elsewhere they stay literal (addresses expand them later, as str2sa_range does).
    A word that ends up empty ends the line for HAProxy: the words after it are dropped too."""

    def __init__(self, env: Mapping[str, str], number: int, label: str, section: str) -> None:
        self.env, self.number, self.label, self.section = env, number, label, section
        self.words: list[str] = []
        self.word: list[str] | None = None
        self.unset: list[str] = []

    def _char(self, char: str) -> None:
        if self.word is None:
            self.word = []
        self.word.append(char)

    def _end_word(self) -> None:
        if self.word is not None:
            self.words.append("".join(self.word))
            self.word = None

    def read(self, text: str) -> list[str]:
        i, quote = 0, ""
        while i < len(text):
            char = text[i]
            if quote != "'" and char == "\\" and i + 1 < len(text):
                i = self._escape(text, i + 1)
                continue
            if char in "\"'" and quote in ("", char):
                quote = "" if quote else char
                self._char("")  # "" is a word too (an empty one)
            elif quote == '"' and char == "$" and (end := self._variable(text, i)) > i:
                i = end
                continue
            elif not quote and char in " \t":
                self._end_word()
            elif not quote and char == "#":
                break
            else:
                self._char(char)
            i += 1
        if quote:
            raise ValueError(f"unmatched {quote}")
        self._end_word()
        return self.words

    def _escape(self, text: str, i: int) -> int:
        char = text[i]
        if char == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", text[i + 1 : i + 3]):
            self._char(chr(int(text[i + 1 : i + 3], 16)))
            return i + 3
        if char not in _ESCAPES and char not in " \\#$'\"":
            self._char("\\")  # not an escape: both characters stay
        self._char(_ESCAPES.get(char, char))
        return i + 1

    def _variable(self, text: str, i: int) -> int:
        """Expands the variable at text[i] ("$"); returns where reading goes on (i: none)."""
        match = re.compile(r"\$(?:\{(\.?\w+)(\[\*\])?(?:-([^}]*))?\}|(\.?\w+))").match(text, i)
        if match is None:
            return i
        name, words, default = match[1] or match[4], match[2], match[3]
        value = self._value(name)
        if value is None:
            value = default
        if value is None:
            self.unset.append(name)
            value = ""
        if not words:
            for char in value:
                self._char(char)
            return match.end()
        for n, item in enumerate(value.split()):  # ${NAME[*]}: one word per item
            if n:
                self._end_word()
            for char in item:
                self._char(char)
        return match.end()

    def _value(self, name: str) -> str | None:
        pseudo = {".LINE": str(self.number), ".FILE": self.label, ".SECTION": self.section}
        return pseudo.get(name) if name.startswith(".") else self.env.get(name)


def env_expand(word: str, env: Mapping[str, str]) -> str:
    """HAProxy's env_expand() for addresses: ``$NAME`` and ``${NAME}`` anywhere, quoted or not;
    an unset name is empty."""
    return re.sub(r"\$(?:\{(\w*)\}?|(\w*))", lambda m: env.get(m[1] or m[2] or "", ""), word)


def apply_env_directive(words: list[str], env: dict[str, str]) -> str:
    """setenv/presetenv/unsetenv/resetenv, as HAProxy applies them while reading ``global``;
    returns the note for the line."""
    directive, args = words[0], words[1:]
    if directive in ("setenv", "presetenv"):
        if len(args) != 2:
            raise Unconvertible(f"{directive} NAME VALUE")
        if directive == "setenv" or args[0] not in env:
            env[args[0]] = args[1]
    elif directive == "unsetenv":
        for name in args:
            env.pop(name, None)
    else:  # resetenv: only the names given survive
        for name in [name for name in env if name not in args]:
            del env[name]
    return (
        f"{directive}: applied while converting, as HAProxy applies it while reading (lb.toml "
        "holds the resulting values; run convert where HAProxy's environment is)"
    )


def read_sections(text: str, report: Report, env: Mapping[str, str] | None = None) -> list[Section]:
    """The sections in file order; lines outside any section, unset variables and empty
    arguments are reported. ``env`` (default os.environ) is changed only in a copy."""
    current = dict(os.environ if env is None else env)
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        kind = sections[-1].kind if sections else ""
        reader = _Reader(current, number, report.label, kind)
        try:
            words = reader.read(raw)
        except ValueError as exc:  # unbalanced quotes
            report.skip(Line(number, [raw.strip()]), why=str(exc))
            continue
        for name in dict.fromkeys(reader.unset):
            report.skip(Line(number, [f"${{{name}}}"]), why="environment variable not set")
        if "" in words:
            empty = words.index("")
            if empty:
                after = len(words) - empty - 1
                dropped = f" and the {after} after it" if after else ""
                text_ = f"argument {empty} is empty: HAProxy ignores it{dropped}"
                report.note(Line(number, words[:empty]), text_)
            words = words[:empty]
        if not words:
            continue
        line = Line(number, words, current)
        if words[0] in ("global", "resolvers", *PROXY_SECTIONS, *OTHER_SECTIONS):
            sections.append(Section(words[0], words[1] if len(words) > 1 else "", line))
        elif sections:
            sections[-1].lines.append(line)
            if kind == "global" and words[0] in ENV_DIRECTIVES:
                current = dict(current)  # earlier lines keep the environment they saw
                try:
                    report.note(line, apply_env_directive(words, current))
                except Unconvertible as exc:
                    report.skip(line, why=str(exc))
        else:
            report.skip(line, why="outside any section")
    return sections


# --- HAProxy values -> lb.toml values ----------------------------------------------------------


class Unconvertible(ValueError):
    """A value HAProxy accepts that has no lb.toml equivalent; the text says why."""


_TIME = re.compile(r"(\d+)(us|ms|s|m|h|d)?")
_US = {"us": 1, "ms": 10**3, "s": 10**6, "m": 60 * 10**6, "h": 3600 * 10**6, "d": 86400 * 10**6}
_SIZE = re.compile(r"(\d+)([kKmMgG])?")
MAX_MS = 7 * 86400 * 1000  # fastmqtt's longest duration, "7d"


def duration(word: str, bare: str = "ms") -> str:
    """An lb.toml duration from an HAProxy time; a bare number is in ``bare`` units.

    Like HAProxy, sub-millisecond values round up to whole milliseconds (500us -> 1ms).
    """
    match = _TIME.fullmatch(word)
    if not match:
        raise Unconvertible(f"not an HAProxy time: {word}")
    number, unit = int(match[1]), match[2] or bare
    if number == 0:
        raise Unconvertible("0 means no timeout in HAProxy; fastmqtt needs a limit")
    ms = math.ceil(number * _US[unit] / 1000)
    if ms > MAX_MS:
        raise Unconvertible('fastmqtt durations are at most "7d"')
    if match[2] in ("s", "m", "h", "d"):
        return word  # the user's own spelling reads the same in lb.toml
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def size(word: str) -> int:
    """HAProxy sizes: k, m, g are powers of 1024 (``size 100k`` holds 102400 entries)."""
    match = _SIZE.fullmatch(word)
    if not match:
        raise Unconvertible(f"not an HAProxy size: {word}")
    return int(match[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[(match[2] or "").lower()]


def integer(word: str) -> int:
    if not word.isdigit():
        raise Unconvertible(f"not a number: {word}")
    return int(word)


def address(word: str, bind: bool) -> str:
    """lb.toml ``host:port`` from HAProxy's ``*:1883``, ``:::1883``, ``ipv6@::1:1883``..."""
    family, _, rest = word.rpartition("@")
    if family not in ("", "ipv4", "ipv6"):
        raise Unconvertible(f"{family}@ addresses: fastmqtt speaks IPv4/IPv6 TCP only")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not port.isdigit():
        raise Unconvertible("needs one port number (no ranges, no +/- offsets)")
    if bind and host in ("", "*"):
        host = "::" if family == "ipv6" else "0.0.0.0"
    if not host:
        raise Unconvertible("a server needs a host")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def name(word: str) -> str:
    """fastmqtt names allow letters, digits, '_', '-', '.'; HAProxy also allows ':'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", word)[:64]


# --- server lines ------------------------------------------------------------------------------


@dataclass
class Server:
    line: Line
    values: dict[str, object] = field(default_factory=dict)  # lb.toml server keys
    check: dict[str, object] = field(default_factory=dict)  # health-check keys it sets
    checked: bool = False
    send_proxy: str | None = None
    check_send_proxy: bool = False
    tlvs: tuple[str, ...] = ()  # lb.toml proxy_tlvs, from send-proxy-v2-ssl[-cn]
    template: bool = False  # a server-template line: values are [[...server_template]] keys

    @property
    def label(self) -> str:
        return f"template {self.values['prefix']}" if self.template else str(self.values["name"])


def _weight(server: Server, word: str) -> None:
    weight = integer(word)
    if not 0 <= weight <= 256:  # 0: no new connections, in both
        raise Unconvertible("fastmqtt weights are 0..256")
    server.values["weight"] = weight


def _only(value: str, key: str, setting: object) -> Callable[[Server, str], None]:
    """An option with exactly one convertible argument."""

    def apply(server: Server, word: str) -> None:
        if word != value:
            raise Unconvertible(f"only {value} is supported")
        server.check[key] = setting

    return apply


def _check_key(key: str, convert: Callable[[str], object]) -> Callable[[Server, str], None]:
    return lambda server, word: server.check.__setitem__(key, convert(word))


def _add_tlvs(server: Server, *tlvs: str) -> None:
    server.tlvs = tuple(sorted({*server.tlvs, *tlvs}))


# proxy-v2-options: what fastmqtt's TLVs carry ("ssl" holds version, CN and cipher alike)
PROXY_V2_OPTIONS = {
    "ssl": "ssl", "cert-cn": "ssl", "ssl-cipher": "ssl", "cert-sig": "ssl", "cert-key": "ssl",
    "authority": "authority",
}  # fmt: skip


def _proxy_v2_options(server: Server, word: str) -> None:
    options = word.split(",")
    unknown = [option for option in options if option not in PROXY_V2_OPTIONS]
    if unknown:
        raise Unconvertible(f"fastmqtt sends no {', '.join(unknown)} TLV")
    _add_tlvs(server, *(PROXY_V2_OPTIONS[option] for option in options))


SERVER_FLAGS: dict[str, Callable[[Server], None]] = {
    "check": lambda s: setattr(s, "checked", True),
    "no-check": lambda s: setattr(s, "checked", False),
    "backup": lambda s: s.values.__setitem__("backup", True),
    "no-backup": lambda s: s.values.pop("backup", None),
    "send-proxy": lambda s: setattr(s, "send_proxy", "v1"),
    "send-proxy-v2": lambda s: setattr(s, "send_proxy", "v2"),
    "no-send-proxy": lambda s: setattr(s, "send_proxy", None),
    "no-send-proxy-v2": lambda s: setattr(s, "send_proxy", None),
    # PP2_TYPE_SSL (with the client certificate's CN for -cn); both imply send-proxy-v2
    "send-proxy-v2-ssl": lambda s: (setattr(s, "send_proxy", "v2"), _add_tlvs(s, "ssl")),
    "send-proxy-v2-ssl-cn": lambda s: (setattr(s, "send_proxy", "v2"), _add_tlvs(s, "ssl")),
    "no-send-proxy-v2-ssl": lambda s: setattr(s, "tlvs", ()),
    "no-send-proxy-v2-ssl-cn": lambda s: setattr(s, "tlvs", ()),
    "check-send-proxy": lambda s: setattr(s, "check_send_proxy", True),
    "no-check-send-proxy": lambda s: setattr(s, "check_send_proxy", False),
}
SERVER_ARGS: dict[str, Callable[[Server, str], None]] = {
    "weight": _weight,
    "maxconn": lambda s, w: s.values.__setitem__("maxconn", integer(w)),
    "inter": _check_key("interval", duration),
    "fastinter": _check_key("fastinter", duration),
    "downinter": _check_key("downinter", duration),
    "rise": _check_key("rise", integer),
    "fall": _check_key("fall", integer),
    "port": _check_key("port", integer),
    "slowstart": _check_key("slowstart", duration),
    "error-limit": _check_key("error_limit", integer),
    "observe": _only("layer4", "observe", True),
    "on-marked-down": _only("shutdown-sessions", "on_marked_down", "shutdown-sessions"),
    "proxy-v2-options": _proxy_v2_options,
    "resolvers": lambda s, w: _by_name(s, "resolvers", name(w)),
    "resolve-prefer": lambda s, w: _by_name(s, "resolve_prefer", _resolve_prefer(w)),
    "init-addr": lambda s, w: _init_addr(s, w),
}
# Options with one argument and no equivalent: reported together with their argument.
SERVER_ARGS_UNSUPPORTED = frozenset(
    {
        "addr", "agent-addr", "agent-inter", "agent-port", "agent-send", "alpn", "ca-file",
        "check-alpn", "check-proto", "check-sni", "ciphers", "cookie", "crt", "id",
        "init-state", "log-proto", "max-reuse", "maxqueue", "minconn", "namespace", "on-error",
        "on-marked-up", "pool-low-conn", "pool-max-conn", "pool-purge-delay", "proto",
        "redir", "resolve-net", "resolve-opts", "shard", "sni", "socks4", "source", "ssl-max-ver",
        "ssl-min-ver", "track", "usesrc", "verify", "verifyhost", "ws",
    }
)  # fmt: skip


def apply_server_options(server: Server, words: list[str], report: Report) -> None:
    i = 0
    while i < len(words):
        option, argument = words[i], words[i + 1] if i + 1 < len(words) else None
        takes_argument = option in SERVER_ARGS or option in SERVER_ARGS_UNSUPPORTED
        shown = f"{option} {argument}" if takes_argument and argument is not None else option
        try:
            if option in SERVER_FLAGS:
                SERVER_FLAGS[option](server)
            elif option in SERVER_ARGS and argument is not None:
                SERVER_ARGS[option](server, argument)
            else:
                report.skip(server.line, f"server option {shown}")
        except Unconvertible as exc:
            report.skip(server.line, f"server option {shown}", str(exc))
        i += 2 if takes_argument else 1


# --- the proxies being built -------------------------------------------------------------------

DEFAULTS_KEYS = ("timeout_connect", "timeout_client", "timeout_server", "maxconn", "inspect_delay")
HAPROXY_CHECK = {"type": "tcp", "interval": "2s", "rise": 2, "fall": 3}  # `check` alone
MQTT_STICK_KEYS = ("client_id", "username")  # stick keys read from the CONNECT
BACKEND_ORDER = (
    "balance", "stick", "send_proxy", "proxy_tlvs", "retries", "redispatch", "all_backups",
    "timeout_connect", "timeout_server", "check", "server", "server_template",
)  # fmt: skip


@dataclass
class Proxy:
    """The lb.toml keys of one defaults/frontend/backend/listen section."""

    section: Section
    front: dict[str, object] = field(default_factory=dict)  # [frontend.NAME] keys
    back: dict[str, object] = field(default_factory=dict)  # [backend.NAME] keys
    check: dict[str, object] = field(default_factory=dict)  # backend-wide check keys
    default_servers: list[Line] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    binds: list[tuple[str, dict[str, object]]] = field(default_factory=list)  # address, keys
    backend: str | None = None
    validates_mqtt: bool = False
    mqtt_acls: set[str] = field(default_factory=set)  # ACL names that test mqtt_is_valid
    mode: tuple[str, Line] | None = None  # `mode` and where it was set (here or in defaults)

    @property
    def name(self) -> str:
        return name(self.section.name)

    def inherit(self, defaults: Proxy) -> None:
        """HAProxy's defaults section applies to the proxies after it; the keys that lb.toml
        has a [defaults] for go there instead of being copied into every section."""
        self.front = {k: v for k, v in defaults.front.items() if k not in DEFAULTS_KEYS}
        self.back = {k: v for k, v in defaults.back.items() if k not in DEFAULTS_KEYS}
        self.check = dict(defaults.check)
        self.default_servers = list(defaults.default_servers)
        self.mode = defaults.mode


Handler = Callable[["Converter", Proxy, Line], None]


def _key(words: list[str]) -> str:
    """The directive: one word, or two/three for families such as ``option X``."""
    if words[0] == "no" and len(words) > 2:
        return " ".join(words[:3])
    if words[0] in ("option", "timeout", "tcp-request", "stats", "stick", "http-check"):
        return " ".join(words[:2])
    return words[0]


def _arg(line: Line, index: int) -> str:
    if len(line.words) <= index:
        raise Unconvertible("missing argument")
    return line.words[index]


def _is_mqtt_is_valid(words: list[str]) -> bool:
    """``{ req.payload(0,0),mqtt_is_valid }``: HAProxy's CONNECT validation."""
    return "".join(w for w in words if w not in ("{", "}")) == "req.payload(0,0),mqtt_is_valid"


_STICK_FIELD = re.compile(r"req\.payload\(0,0\),mqtt_field_value\((?:connect|1),(\w+)\)")
_STICK_ON = {"client_identifier": "client_id", "username": "username"}


def _stick_on(words: list[str]) -> str:
    if words == ["src"]:
        return "source"
    match = _STICK_FIELD.fullmatch("".join(words))
    if not match or match[1] not in _STICK_ON:
        raise Unconvertible("fastmqtt sticks on src, client_identifier or username")
    return _STICK_ON[match[1]]


# --- directive handlers: (converter, proxy, line) ----------------------------------------------


BIND_TLS_OPTIONS = ("crt", "ca-file", "verify", "alpn", "ssl-min-ver", "ciphers")
BIND_FLAGS = ("ssl", "no-sslv3", "no-tlsv10", "no-tlsv11")  # fastmqtt offers TLS 1.2+ only
ACCEPT_ANY_PROXY = {"accept_proxy": True, "trusted_proxies": ["0.0.0.0/0", "::/0"]}


def _bind(conv: Converter, proxy: Proxy, line: Line) -> None:
    """``bind ADDR[,ADDR] [ssl crt PEM [ca-file CA] [verify MODE] ...] [accept-proxy]``."""
    tls: dict[str, object] = {}
    keys: dict[str, object] = {}  # frontend keys this bind line sets
    words, i = line.words, 2
    while i < len(words):
        option, argument = words[i], words[i + 1] if i + 1 < len(words) else None
        if option in BIND_FLAGS:
            i += 1
            continue
        if option == "accept-proxy":
            keys.update(ACCEPT_ANY_PROXY)
            conv.report.note(
                line, "accept-proxy: HAProxy trusts any sender; narrow trusted_proxies"
            )
        elif option in BIND_TLS_OPTIONS and argument is not None:
            conv.bind_tls(tls, option, argument, line)
        else:
            conv.report.skip(line, f"bind option {option}")
        i += 2 if option in BIND_TLS_OPTIONS else 1
    if "ssl" in words and "cert" not in tls:
        raise Unconvertible("ssl without crt")
    if "ssl" not in words and tls:
        raise Unconvertible("crt/ca-file/verify without ssl")
    if tls and conv.min_version:
        tls.setdefault("min_version", conv.min_version)
    if tls and conv.ciphers:
        tls.setdefault("ciphers", conv.ciphers)
    if tls:
        keys["tls"] = tls
    where = env_expand(_arg(line, 1), line.env)  # addresses expand variables, quoted or not
    proxy.binds.extend((address(part, bind=True), keys) for part in where.split(","))


def _use_backend(conv: Converter, proxy: Proxy, line: Line) -> None:
    if len(line.words) != 2:
        raise Unconvertible("conditional routing: one backend per frontend")
    proxy.backend = name(line.words[1])


def _acl(conv: Converter, proxy: Proxy, line: Line) -> None:
    """Only ACLs testing mqtt_is_valid, for ``reject unless NAME``."""
    if len(line.words) < 3 or not _is_mqtt_is_valid(line.words[2:]):
        raise Unconvertible("")
    proxy.mqtt_acls.add(line.words[1])


def _tcp_request_content(conv: Converter, proxy: Proxy, line: Line) -> None:
    """The recipe's rule, ``reject unless { req.payload(0,0),mqtt_is_valid }``, in any
    spelling: ``unless COND``, ``if !COND``, or through an ACL."""
    words = [*line.words[2:], "", ""]
    action, keyword, condition = words[0], words[1], line.words[4:]
    negated = keyword == "unless"
    if keyword == "if" and condition and condition[0].startswith("!"):
        negated, first = True, condition[0][1:]
        condition = ([first] if first else []) + condition[1:]
    via_acl = len(condition) == 1 and condition[0] in proxy.mqtt_acls
    if action != "reject" or not negated or not (via_acl or _is_mqtt_is_valid(condition)):
        raise Unconvertible("")
    proxy.validates_mqtt = True


def _front(key: str, convert: Callable[[str], object], index: int = 1) -> Handler:
    return lambda conv, proxy, line: proxy.front.__setitem__(key, convert(_arg(line, index)))


def _back(key: str, convert: Callable[[str], object], index: int = 1) -> Handler:
    return lambda conv, proxy, line: proxy.back.__setitem__(key, convert(_arg(line, index)))


def _back_flag(key: str, value: bool) -> Handler:
    return lambda conv, proxy, line: proxy.back.__setitem__(key, value)


def _balance(word: str) -> str:
    if word not in ("roundrobin", "leastconn", "source", "random"):
        raise Unconvertible("fastmqtt balances roundrobin, leastconn, source or random")
    return word


def _stick_table(conv: Converter, proxy: Proxy, line: Line) -> None:
    stick = dict(proxy.back.get("stick", {}))  # type: ignore[call-overload]
    words = line.words[1:]
    for option, value in zip(words[::2], words[1::2], strict=False):
        if option == "size":
            stick["size"] = size(value)
        elif option == "expire":
            stick["expire"] = duration(value)
        elif option == "len":
            conv.report.note(line, f"len {value}: fastmqtt keys on the whole client id")
        elif option != "type":
            conv.report.skip(line, f"stick-table {option} {value}")
    if len(words) % 2:
        conv.report.skip(line, f"stick-table {words[-1]}")
    if "expire" not in stick:
        conv.report.note(line, "no expire: fastmqtt forgets an entry 30m after its disconnect")
    proxy.back["stick"] = stick


def _stick(conv: Converter, proxy: Proxy, line: Line) -> None:
    words = line.words[2:]
    if {"table", "if", "unless"} & set(words):
        raise Unconvertible("one stick table per backend, no conditions")
    stick = dict(proxy.back.get("stick", {}))  # type: ignore[call-overload]
    proxy.back["stick"] = {"on": _stick_on(words), **stick}


def _server(conv: Converter, proxy: Proxy, line: Line) -> None:
    """``server NAME ADDRESS [options]``, after the ``default-server`` lines that apply."""
    where = address(env_expand(_arg(line, 2), line.env), False)
    server = Server(line, {"name": name(_arg(line, 1)), "address": where})
    quiet = Report(conv.report.label)  # default-server problems are reported on their own line
    for default in proxy.default_servers:
        apply_server_options(server, default.words[1:], quiet)
    apply_server_options(server, line.words[3:], conv.report)
    proxy.servers.append(server)


def _default_server(conv: Converter, proxy: Proxy, line: Line) -> None:
    apply_server_options(Server(line), line.words[1:], conv.report)
    proxy.default_servers.append(line)


def _check_timeout(conv: Converter, proxy: Proxy, line: Line) -> None:
    proxy.check["timeout"] = duration(_arg(line, 2))


def _httpchk(conv: Converter, proxy: Proxy, line: Line) -> None:
    """``option httpchk [GET] [URI]``: a broker's HTTP health endpoint."""
    args = line.words[2:]
    if args and args[0] not in ("GET", "get") and not args[0].startswith("/"):
        raise Unconvertible("only GET checks")
    path = next((word for word in args if word.startswith("/")), "/")
    proxy.check.update({"type": "http", "path": path})


def _http_check(conv: Converter, proxy: Proxy, line: Line) -> None:
    if line.words[1:3] != ["expect", "status"] or len(line.words) != 4:
        raise Unconvertible("only http-check expect status N")
    proxy.check["expect_status"] = integer(line.words[3])


def _mode(conv: Converter, proxy: Proxy, line: Line) -> None:
    """Judged per proxy: defaults' `mode http` is fine when every proxy sets `mode tcp`."""
    proxy.mode = (_arg(line, 1), line)


def _http_only(conv: Converter, proxy: Proxy, line: Line) -> None:
    """HTTP-mode settings: HAProxy ignores them in a tcp proxy (httplog falls back to tcplog)."""
    where = "tcp proxies" if proxy.section.kind == "defaults" else "a tcp proxy"
    conv.report.note(line, f"{_key(line.words)}: HTTP only, nothing to do in {where}")


def _log(conv: Converter, proxy: Proxy, line: Line) -> None:
    if line.words[1:] != ["global"]:
        raise Unconvertible("fastmqtt logs to stdout; under systemd that is the journal")


def _accepted(conv: Converter, proxy: Proxy, line: Line) -> None:
    """Already fastmqtt's behaviour: nothing to write."""


def _tls13_default(suites: str) -> bool:
    """Whether ``suites`` are exactly the TLS 1.3 suites OpenSSL offers by default (the set;
    Python's ssl cannot choose TLS 1.3 suites, so no other list can be honoured)."""
    import ssl

    offered = {c["name"] for c in ssl.create_default_context().get_ciphers()}
    return set(suites.split(":")) == {name for name in offered if name.startswith("TLS_")}


def _note_dontlognull(conv: Converter, proxy: Proxy, line: Line) -> None:
    text = (
        "fastmqtt logs every connection, the empty ones with why they ended (client-closed-early)"
    )
    conv.report.note(line, f"option dontlognull: nothing to translate; {text}")


def _hash_type(conv: Converter, proxy: Proxy, line: Line) -> None:
    conv.report.note(line, "fastmqtt's source balancing is always a consistent hash")


# --- DNS: resolvers sections, server-template, init-addr (docs/convert.md) ----------------------

RESOLVERS_HOLDS = ("nx", "refused", "timeout", "other", "obsolete")
HAPROXY_RESOLVE = "1s"  # HAProxy 2.6's `timeout resolve` and `timeout retry` when not set


def resolvers_table(section: Section, report: Report) -> dict[str, object]:
    """``resolvers NAME`` -> ``[resolvers.NAME]``. HAProxy looks every name up again each
    `timeout resolve` whatever the last answer: that is fastmqtt's interval and retry both."""
    table: dict[str, object] = {"interval": HAPROXY_RESOLVE, "retry": HAPROXY_RESOLVE}
    nameservers: list[str] = []
    for line in section.lines:
        try:
            _resolvers_line(table, nameservers, line, report)
        except Unconvertible as exc:
            report.skip(line, why=str(exc))
    if nameservers:
        table = {"nameservers": nameservers, **table}
    if not nameservers and not table.get("parse_resolv_conf"):
        report.skip(section.header, why="no nameserver: names would go to the libc's resolver")
    return table


def _resolvers_line(
    table: dict[str, object], nameservers: list[str], line: Line, report: Report
) -> None:
    key = _key(line.words)
    if key == "nameserver":
        nameservers.append(_nameserver(env_expand(_arg(line, 2), line.env), line, report))
    elif key == "parse-resolv-conf":
        table["parse_resolv_conf"] = True
    elif key == "resolve_retries":
        table["attempts"] = integer(_arg(line, 1))
    elif key == "timeout resolve":
        table["interval"] = table["retry"] = duration(_arg(line, 2))
    elif key == "timeout retry":
        table["timeout"] = duration(_arg(line, 2))
    elif key == "hold" and _arg(line, 1) in RESOLVERS_HOLDS:
        table[f"hold_{line.words[1]}"] = duration(_arg(line, 2))
    elif key == "hold" and _arg(line, 1) == "valid":
        text = "hold valid: HAProxy 2.6 applies it to do-resolve actions only, not to servers"
        report.note(line, text)
    elif key == "accepted_payload_size":
        report.note(line, "accepted_payload_size: fastmqtt asks again over TCP when truncated")
    else:
        raise Unconvertible("")


def _nameserver(word: str, line: Line, report: Report) -> str:
    """``udp@10.0.0.2:53`` -> ``"10.0.0.2:53"``: an IP, asked over UDP (and over TCP when an
    answer is truncated)."""
    protocol, _, rest = word.rpartition("@")
    if protocol in ("tcp", "tcp4", "tcp6"):
        report.note(line, f"{word}: asked over UDP (TCP when an answer is truncated)")
    elif protocol not in ("", "udp", "udp4", "udp6", "ipv4", "ipv6"):
        raise Unconvertible(f"{protocol}@ nameservers")
    host_port = address(rest, False)
    if not _is_ip(host_port.rpartition(":")[0].strip("[]")):
        raise Unconvertible("a nameserver given by name: fastmqtt needs its IP")
    return host_port


def _by_name(server: Server, key: str, value: object) -> None:
    """A setting for servers given by name: on a server given by IP it means nothing."""
    host = str(server.values.get("address", "")).rpartition(":")[0].strip("[]")
    if server.template or not _is_ip(host):
        server.values[key] = value


def _resolve_prefer(word: str) -> str:
    if word not in ("ipv4", "ipv6"):
        raise Unconvertible("ipv4 or ipv6")
    return word


def _init_addr(server: Server, word: str) -> None:
    """``init-addr last,libc,none,IP``: an IP becomes init_addr. fastmqtt looks every name up
    at start and never fails on one (as with `none`); it keeps no state file (`last`)."""
    methods = word.split(",")
    unknown = [m for m in methods if m not in ("last", "libc", "none") and not _is_ip(m)]
    if unknown:
        raise Unconvertible(f"not a method or an IP: {', '.join(unknown)}")
    ips = [m for m in methods if _is_ip(m)]
    if ips and server.template:
        raise Unconvertible("one address for every server of a template")
    if ips:
        _by_name(server, "init_addr", ips[0])


def _server_template(conv: Converter, proxy: Proxy, line: Line) -> None:
    """``server-template PREFIX NUM|LOW-HIGH FQDN[:PORT] [options]`` -> a
    [[backend.NAME.server_template]]; a name starting with "_" is an SRV name (the records
    carry the ports)."""
    numbers = re.fullmatch(r"(\d+)(?:-(\d+))?", _arg(line, 2))
    if numbers is None:
        raise Unconvertible("NUM or LOW-HIGH servers")
    first, last = (int(numbers[1]), int(numbers[2])) if numbers[2] else (1, int(numbers[1]))
    if not first <= last:
        raise Unconvertible("an empty range")
    fqdn = env_expand(_arg(line, 3), line.env)  # an address: variables expand, as for server
    where = re.sub(r":\d+$", "", fqdn) if fqdn.startswith("_") else address(fqdn, False)
    values: dict[str, object] = {"prefix": name(_arg(line, 1)), "count": last - first + 1}
    if first != 1:
        values["first"] = first
    server = Server(line, {**values, "address": where}, template=True)
    quiet = Report(conv.report.label)  # default-server problems are reported on their own line
    for default in proxy.default_servers:
        apply_server_options(server, default.words[1:], quiet)
    apply_server_options(server, line.words[4:], conv.report)
    if "resolvers" not in server.values:
        text = f"{fqdn}: HAProxy resolves it once with the libc; fastmqtt asks the libc again"
        conv.report.note(line, f"{text} every 10s, one server per address")
    proxy.servers.append(server)


def _servers_and_templates(servers: list[Server]) -> dict[str, list[Server]]:
    """lb.toml keeps templates apart from servers: ``server`` and ``server_template`` lists,
    each only when it has entries."""
    out = {
        "server": [s for s in servers if not s.template],
        "server_template": [s for s in servers if s.template],
    }
    return {key: items for key, items in out.items() if items}


F, B, D = "frontend", "backend", "defaults"
DIRECTIVES: dict[str, tuple[Handler, frozenset[str]]] = {
    key: (handler, frozenset(kinds))
    for key, handler, kinds in [
        ("bind", _bind, {F}),
        ("default_backend", _use_backend, {F}),
        ("use_backend", _use_backend, {F}),
        ("acl", _acl, {F}),
        ("tcp-request content", _tcp_request_content, {F}),
        ("tcp-request inspect-delay", _front("inspect_delay", duration, 2), {F, D}),
        ("maxconn", _front("maxconn", integer), {F, D}),
        ("timeout client", _front("timeout_client", duration, 2), {F, D}),
        ("timeout connect", _back("timeout_connect", duration, 2), {B, D}),
        ("timeout server", _back("timeout_server", duration, 2), {B, D}),
        ("timeout check", _check_timeout, {B, D}),
        ("balance", _back("balance", _balance), {B, D}),
        ("hash-type", _hash_type, {B, D}),
        ("stick-table", _stick_table, {B}),
        ("stick on", _stick, {B}),
        ("server", _server, {B}),
        ("server-template", _server_template, {B}),
        ("default-server", _default_server, {B, D}),
        ("retries", _back("retries", integer), {B, D}),
        ("option redispatch", _back_flag("redispatch", True), {B, D}),
        ("no option redispatch", _back_flag("redispatch", False), {B, D}),
        ("option allbackups", _back_flag("all_backups", True), {B, D}),
        ("no option allbackups", _back_flag("all_backups", False), {B, D}),
        ("option httpchk", _httpchk, {B, D}),
        ("http-check expect", _http_check, {B, D}),
        ("option tcp-check", _accepted, {B, D}),  # without tcp-check rules: a connect check
        ("option tcplog", _accepted, {F, B, D}),  # fastmqtt logs one line per connection
        ("option dontlognull", _note_dontlognull, {F, D}),
        ("option httplog", _http_only, {F, D}),
        ("errorfile", _http_only, {F, B, D}),
        ("mode", _mode, {F, B, D}),
        ("log", _log, {F, B, D}),
    ]
}
# Whole lines a stats section may hold that need nothing in lb.toml.
STATS_ACCEPTED = (
    "stats enable", "mode http", "mode tcp", "log global", "option httplog", "stats hide-version",
)  # fmt: skip
GLOBAL_BY_SERVICE_MANAGER = ("daemon", "user", "group", "uid", "gid", "chroot", "pidfile")


# --- the conversion ----------------------------------------------------------------------------


@dataclass
class Converter:
    report: Report
    global_: dict[str, object] = field(default_factory=dict)
    defaults: Proxy | None = None
    proxies: list[Proxy] = field(default_factory=list)
    stats: dict[str, object] | None = None
    bases: dict[str, str] = field(default_factory=dict)  # crt-base / ca-base
    min_version: str | None = None  # ssl-default-bind-options ssl-min-ver TLSv1.3
    ciphers: str | None = None  # ssl-default-bind-ciphers
    resolvers: dict[str, dict[str, object]] = field(default_factory=dict)

    def run(self, sections: list[Section]) -> None:
        for section in sections:
            if section.kind == "global":
                self.each_line(section, self.global_line)
            elif section.kind in OTHER_SECTIONS:
                self.report.skip(section.header, why="the whole section")
            elif section.kind == "resolvers":
                self.resolvers[name(section.name)] = resolvers_table(section, self.report)
            elif _is_stats(section):
                self.stats_section(section)
            else:
                self.proxy_section(section)

    def each_line(self, section: Section, handle: Callable[[Line], None]) -> None:
        for line in section.lines:
            try:
                handle(line)
            except Unconvertible as exc:
                why = str(exc)
                if _ENV_REF.search(line.text):
                    literal = 'HAProxy expands variables only inside double quotes ("${NAME}")'
                    why = f"{why}; {literal}" if why else literal
                self.report.skip(line, why=why)

    def global_line(self, line: Line) -> None:
        key = line.words[0]
        if key in ENV_DIRECTIVES:
            return  # applied (and noted) while reading
        if key == "maxconn":
            self.global_["maxconn"] = integer(_arg(line, 1))
        elif key == "nbthread":
            self.global_["workers"] = integer(_arg(line, 1))
            text = "nbthread -> workers: processes sharing the listeners and the stick tables"
            self.report.note(line, text)
        elif key in ("crt-base", "ca-base"):
            self.bases[key] = _arg(line, 1)
        elif key == "log" and _arg(line, 1) in ("stdout", "stderr", "/dev/log"):
            text = "fastmqtt logs each connection to stdout (the journal under systemd)"
            self.report.note(line, f"log {line.words[1]}: {text}")
        elif key == "log":
            raise Unconvertible("fastmqtt logs to stdout; under systemd that is the journal")
        elif key == "ssl-default-bind-options":
            self.default_bind_options(line)
        elif key == "ssl-default-bind-ciphers":
            self.ciphers = _arg(line, 1)  # for TLS binds without their own `ciphers`
        elif key == "ssl-default-bind-ciphersuites" and _tls13_default(_arg(line, 1)):
            self.report.note(line, f"{key}: OpenSSL's default TLS 1.3 suites, which fastmqtt uses")
        elif key == "stats" and _arg(line, 1) == "timeout":
            self.report.note(line, "stats timeout: for the stats socket (see fastmqtt ctl)")
        elif key in GLOBAL_BY_SERVICE_MANAGER:
            text = f"{key}: the service manager does this for fastmqtt (contrib/fastmqtt.service)"
            self.report.note(line, text)
        else:
            raise Unconvertible("")

    def default_bind_options(self, line: Line) -> None:
        """What fastmqtt does anyway (TLS 1.2 and later) is a note; TLS 1.3 only is applied to
        every TLS frontend; the rest is reported."""
        words, i = line.words[1:], 0
        while i < len(words):
            option = words[i]
            value = words[i + 1] if option == "ssl-min-ver" and i + 1 < len(words) else ""
            shown = f"{option} {value}".strip()
            if value == "TLSv1.3":
                self.min_version = value
            elif value == "TLSv1.2" or option in BIND_FLAGS[1:]:
                self.report.note(line, f"{shown}: fastmqtt's default (TLS 1.2 and later)")
            else:
                self.report.skip(line, f"ssl-default-bind-options {shown}")
            i += 2 if value else 1

    def proxy_section(self, section: Section) -> None:
        proxy = Proxy(section)
        if section.kind == "defaults":
            if self.defaults is not None:
                why = "one [defaults] in lb.toml: later defaults sections are merged into it"
                self.report.skip(section.header, why=why)
            proxy = self.defaults = self.defaults or proxy
        elif self.defaults is not None:
            proxy.inherit(self.defaults)
        kinds = {"listen": {F, B}}.get(section.kind, {section.kind})
        self.each_line(section, lambda line: self.directive(proxy, line, kinds))
        if section.kind == "defaults":
            return
        if proxy.mode is not None and proxy.mode[0] != "tcp":
            mode, line = proxy.mode
            inherited = "" if line.number > section.header.number else " (from defaults)"
            self.report.skip(section.header, f"mode {mode}{inherited}", "fastmqtt proxies TCP")
        self.proxies.append(proxy)

    def directive(self, proxy: Proxy, line: Line, kinds: set[str]) -> None:
        handler, allowed = DIRECTIVES.get(_key(line.words), (None, frozenset()))
        if handler is None or not kinds & allowed:
            raise Unconvertible("")
        handler(self, proxy, line)

    def bind_tls(self, tls: dict[str, object], option: str, value: str, line: Line) -> None:
        if option == "crt" and "cert" in tls:
            self.report.skip(line, f"crt {value}", "one certificate per bind (see tls.sni)")
        elif option == "crt":
            tls["cert"] = self.path(value, "crt-base")
        elif option == "ca-file":
            tls["ca"] = self.path(value, "ca-base")
        elif option == "verify" and value in ("none", "optional", "required"):
            tls["verify"] = value
        elif option == "alpn":
            tls["alpn"] = value.split(",")
        elif option == "ssl-min-ver" and value == "TLSv1.2":
            self.report.note(line, "ssl-min-ver TLSv1.2: fastmqtt's default")
        elif option == "ssl-min-ver" and value == "TLSv1.3":
            tls["min_version"] = value
        elif option == "ciphers":
            tls["ciphers"] = value
        elif option == "ssl-min-ver":
            self.report.skip(line, f"{option} {value}", "fastmqtt accepts TLSv1.2 and later")
        else:
            self.report.skip(line, f"{option} {value}")

    def path(self, path: str, base: str) -> str:
        if base in self.bases and not path.startswith("/"):
            return f"{self.bases[base].rstrip('/')}/{path}"
        return path

    def stats_section(self, section: Section) -> None:
        if self.stats is not None:
            self.report.skip(section.header, why="one stats listener")
            return
        stats: dict[str, object] = {}
        self.each_line(section, lambda line: self.stats_line(stats, line))
        if "bind" not in stats:
            self.report.skip(section.header, why="stats without bind")
            return
        self.stats = stats

    def stats_line(self, stats: dict[str, object], line: Line) -> None:
        key = _key(line.words)
        if key == "bind" and "bind" not in stats:
            if len(line.words) > 2:
                self.report.skip(line, f"bind options {' '.join(line.words[2:])}")
            stats["bind"] = address(env_expand(_arg(line, 1), line.env), bind=True)
        elif key == "stats uri":
            stats["uri"] = _arg(line, 2)
        elif key == "stats refresh":
            stats["refresh"] = duration(_arg(line, 2), bare="s")  # seconds here, in HAProxy
        elif key == "stats auth" and "auth" not in stats:
            user = _arg(line, 2).partition(":")[0]
            stats["auth"] = {"user": user, "password_env": "FASTMQTT_STATS_PASSWORD"}
            self.report.note(line, "the password is not copied: export FASTMQTT_STATS_PASSWORD")
        elif line.words[:3] == ["http-request", "use-service", "prometheus-exporter"]:
            self.report.note(line, "fastmqtt serves /metrics on the stats listener")
        elif line.text not in STATS_ACCEPTED:
            raise Unconvertible("")


def _is_stats(section: Section) -> bool:
    return section.kind in ("frontend", "listen") and any(
        _key(line.words) in ("stats enable", "stats uri") for line in section.lines
    )


# --- from proxies to lb.toml tables ------------------------------------------------------------


def backend_table(proxy: Proxy, report: Report) -> dict[str, object]:
    table: dict[str, object] = {"balance": "roundrobin", **proxy.back}
    stick = table.pop("stick", None)
    if isinstance(stick, dict) and "on" in stick:
        table["stick"] = stick
    elif stick:
        report.skip(proxy.section.header, "stick-table", "no `stick on` uses it")
    table.setdefault("retries", 3)
    table.setdefault("redispatch", False)  # HAProxy's default; fastmqtt's is true
    send_proxy = _common(proxy.servers, "send_proxy", report)
    if send_proxy:
        table["send_proxy"] = send_proxy
        tlvs = _common(proxy.servers, "tlvs", report)
        if tlvs:
            table["proxy_tlvs"] = list(tlvs)  # type: ignore[call-overload]
    check = _checks(proxy, send_proxy is not None, report)
    if check:
        table["check"] = check
    for key, servers in _servers_and_templates(proxy.servers).items():
        table[key] = [server.values for server in servers]
    return dict(sorted(table.items(), key=lambda item: BACKEND_ORDER.index(item[0])))


def _common(servers: list[Server], attribute: str, report: Report) -> object:
    """A per-server HAProxy setting that lb.toml holds per backend: the most common value;
    servers that differ are reported."""
    values = Counter(getattr(server, attribute) for server in servers)
    common = values.most_common(1)[0][0]
    for server in servers:
        if getattr(server, attribute) != common:
            what = f"server {server.label}: {attribute.replace('_', '-')}"
            report.skip(server.line, what, "lb.toml sets it for the whole backend")
    return common


def _checks(proxy: Proxy, traffic_proxy: bool, report: Report) -> dict[str, object] | None:
    """The backend's check from its first checked server; servers that differ get overrides
    (``check = false`` for servers HAProxy does not check).

    HAProxy's checks send a PROXY header with check-send-proxy, or when the server's traffic
    does and the check goes to the same port (no ``port``). On that port the converted check
    always does what the converted traffic does: a check with a header the clients do not send
    would show a server UP that refuses every client (or DOWN the other way round)."""
    checked = [server for server in proxy.servers if server.checked]
    if not checked:
        return None
    disagreed: list[Line] = []  # reported once per server line

    def full(server: Server) -> dict[str, object]:
        keys = {**HAPROXY_CHECK, **proxy.check, **server.check}
        haproxy = server.check_send_proxy or (server.send_proxy is not None and "port" not in keys)
        send_proxy = haproxy if "port" in keys else traffic_proxy
        if send_proxy != haproxy and server.checked and server.line not in disagreed:
            disagreed.append(server.line)
            what = f"server {server.label}: PROXY header on checks but not on traffic"
            if not haproxy:
                what = f"server {server.label}: PROXY header on traffic but not on checks"
            report.skip(server.line, what, "converted so that both agree (same port)")
        return {**keys, "send_proxy": send_proxy}

    backend = full(checked[0])
    for server in proxy.servers:
        override = {k: v for k, v in full(server).items() if backend.get(k) != v}
        if not server.checked:
            server.values["check"] = False
        elif override:
            server.values["check"] = override
    if not backend["send_proxy"]:
        del backend["send_proxy"]
    return backend


def frontend_tables(proxy: Proxy, backends: dict, report: Report) -> dict[str, dict]:
    """One [frontend.NAME] per bound address (lb.toml binds one address per frontend)."""
    backend = proxy.backend or (proxy.name if proxy.servers else None)
    header = proxy.section.header
    if not proxy.binds or backend not in backends:
        why = "no bind" if not proxy.binds else f"no usable backend ({backend or 'none'})"
        report.skip(header, why=why)
        return {}
    protocol = _protocol(proxy, backends[backend], report)  # may drop front keys first
    tables = {}
    for i, (bind, keys) in enumerate(_uncovered(proxy.binds, header, report)):
        table = {"bind": bind, **protocol, **proxy.front, "backend": backend, **keys}
        tables[proxy.name if i == 0 else f"{proxy.name}_{i + 1}"] = table
    return tables


def _split(bind: str) -> tuple[str, str]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), port


def _uncovered(binds: list[tuple[str, dict]], header: Line, report: Report) -> list:
    """HAProxy may bind ``:1883`` next to ``:::1883`` (SO_REUSEPORT; [::] is dual-stack) or an
    address twice: fastmqtt could not bind both and needs only the widest, when both lines set
    the same keys (otherwise both stay, and `fastmqtt check` says why they cannot)."""
    widest_first = sorted(
        binds, key=lambda item: -{"::": 2, "0.0.0.0": 1}.get(_split(item[0])[0], 0)
    )
    kept: list[tuple[str, dict]] = []
    for bind, keys in widest_first:
        host, port = _split(bind)
        wider = [
            other for other, other_keys in kept
            if other_keys == keys and _split(other)[1] == port
            and addresses_overlap(_split(other)[0], host)
        ]  # fmt: skip
        if wider:
            report.note(header, f"bind {bind}: already covered by {wider[0]}")
        else:
            kept.append((bind, keys))
    return [item for item in binds if item in kept]


def _protocol(proxy: Proxy, backend: dict, report: Report) -> dict[str, object]:
    """mqtt when HAProxy validated the CONNECT, or read it for stickiness; else tcp."""
    if proxy.validates_mqtt:
        return {"protocol": "mqtt", "reject_invalid": True}
    stick = backend.get("stick")
    if isinstance(stick, dict) and stick.get("on") in MQTT_STICK_KEYS:
        text = "reads the CONNECT for stickiness but does not reject invalid ones"
        report.note(proxy.section.header, f"{proxy.section.name}: {text}")
        return {"protocol": "mqtt", "reject_invalid": False}
    proxy.front.pop("inspect_delay", None)  # inspects nothing without a content rule
    return {"protocol": "tcp"}


def build(converter: Converter) -> dict[str, object]:
    """The whole lb.toml as nested dicts."""
    report = converter.report
    backends = {}
    for proxy in converter.proxies:
        if proxy.servers:
            backends[proxy.name] = backend_table(proxy, report)
        elif proxy.section.kind == "backend":
            report.skip(proxy.section.header, why="a backend without servers")
    frontends: dict[str, dict] = {}
    for proxy in converter.proxies:
        if proxy.section.kind in ("frontend", "listen"):
            frontends |= frontend_tables(proxy, backends, report)
    defaults = converter.defaults
    toml: dict[str, object] = {}
    if converter.global_:
        toml["global"] = converter.global_
    if defaults is not None:
        merged = {**defaults.front, **defaults.back}
        toml["defaults"] = {k: merged[k] for k in DEFAULTS_KEYS if k in merged}
    toml["frontend"] = frontends
    toml["backend"] = backends
    if converter.stats is not None:
        toml["stats"] = converter.stats
    if converter.resolvers:
        toml["resolvers"] = converter.resolvers
    return toml


# --- writing TOML ------------------------------------------------------------------------------

SUBTABLES = ("tls",)  # written as [frontend.NAME.tls]; other tables inline


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _table(path: str, table: dict[str, object], header: str = "[{}]") -> list[str]:
    lines = [header.format(path)]
    lines += [
        f"{_toml_key(k)} = {_toml_value(v)}"
        for k, v in table.items()
        if k not in SUBTABLES and not (isinstance(v, list) and v and isinstance(v[0], dict))
    ]
    for key, value in table.items():
        child = f"{path}.{_toml_key(key)}"
        if key in SUBTABLES:
            lines += ["", *_table(child, value)]  # type: ignore[arg-type]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += ["", *_table(child, item, "[[{}]]")]
    return lines


def to_toml(toml: dict[str, object], source: str, report: Report) -> str:
    lines = [f"# Converted by `fastmqtt convert` from {source}; then run `fastmqtt check` on it."]
    for section, value in toml.items():
        named = section in ("frontend", "backend", "resolvers")
        tables = value.items() if named else [(None, value)]  # type: ignore[union-attr]
        for table_name, table in tables:
            path = f"{section}.{_toml_key(table_name)}" if named else section
            lines += ["", *_table(path, table)]  # type: ignore[arg-type]
    if report.unsupported:
        lines += ["", f"# Not converted ({len(report.unsupported)}):"]
        lines += [f"#   {item}" for item in report.unsupported]
    return "\n".join(lines) + "\n"


def convert(text: str, label: str = "haproxy.cfg") -> tuple[str, Report]:
    """(lb.toml text, what was left out or changed meaning)."""
    report = Report(label)
    converter = Converter(report)
    converter.run(read_sections(text, report))
    return to_toml(build(converter), label, report), report


# --- `fastmqtt convert` ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", help="the HAProxy config, e.g. /etc/haproxy/haproxy.cfg; - reads standard input"
    )
    parser.add_argument("-o", "--output", help="write lb.toml here instead of stdout")
    parser.epilog = (
        "Exit status: 0 everything converted, 2 some directives were left out (listed on "
        "stderr and at the end of the output), 1 the input could not be read."
    )


def run(args: argparse.Namespace) -> int:
    label = "<stdin>" if args.path == "-" else args.path
    try:
        if args.path == "-":
            text = sys.stdin.read()
        else:
            with open(args.path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{label}: cannot read: {exc}", file=sys.stderr)
        return 1
    toml, report = convert(text, label)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(toml)
    else:
        sys.stdout.write(toml)
    for message in (*report.notes, *report.unsupported):
        print(message, file=sys.stderr)
    return 2 if report.unsupported else 0
