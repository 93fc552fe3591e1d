"""Where a server is chosen: the balancing policies of a backend.

``make_balancer(algorithm, names, weights)`` returns a :class:`Balancer` whose
``pick(key, eligible, active)`` gives the index of the server for one new
connection, or ``None`` when no server may take it. The caller owns server state:
``eligible[i]`` says whether server i may be used now (up, not in maintenance, not
full, not already tried for this connection) and ``active[i]`` is its live
connection count. Weights are mutable (admin, slow start); 0 takes no new traffic.

Algorithms:

- ``roundrobin``: nginx's smooth weighted round robin. Equal weights go 1,2,3,1,2,3,
  so 10 connections over 3 servers land 4/3/3 (the recipe's quick start); weights
  5/2/3 give exactly 5/2/3 of every 10 picks, interleaved. Ineligible servers are
  skipped and keep their state, so the others' proportions are undisturbed.
- ``leastconn``: lowest ``(active + 1) / weight`` (the load a server would have after
  taking this connection, as HAProxy orders it; with equal weights that is lowest
  ``active``). Ties go round robin, not always to the first server.
- ``random``: power of two choices: two distinct servers drawn in proportion to
  weight, the less loaded (same measure as leastconn) wins.
- ``consistent`` and ``source``: weighted Maglev consistent hashing of ``key``
  (the client id, or for ``source`` the client address). See :class:`Consistent`.

The hash and the Maglev table come from ``_balance`` (Cython) or, with
``FASTMQTT_NO_EXTENSIONS=1``, from its plain-Python twin ``_balance_py``;
``_accel`` decides, once.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from fastmqtt._accel import NO_EXTENSIONS

if NO_EXTENSIONS:
    from fastmqtt import _balance_py as _impl
else:
    from fastmqtt import _balance as _impl

hash64 = _impl.hash64
maglev_build = _impl.maglev_build
MaglevTable = _impl.MaglevTable

ALGORITHMS = ("roundrobin", "leastconn", "source", "consistent", "random")
DEFAULT_TABLE_SIZE = 65537  # prime; ~650 slots per server at 100 servers keeps shares within ~1%
TABLE_CACHE = 8  # Maglev tables kept per balancer, one per recently seen eligible set


class Balancer:
    """Base class: weights, argument checks, and the ``pick`` contract."""

    algorithm = ""

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights: list[int] = []
        self.set_weights(weights)

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(self._weights)

    def set_weights(self, weights: Sequence[int]) -> None:
        """Replace the weights (same server count); 0 means take no new traffic."""
        new = list(weights)
        if self._weights and len(new) != len(self._weights):
            raise ValueError(f"expected {len(self._weights)} weights, got {len(new)}")
        for w in new:
            if not isinstance(w, int) or w < 0:
                raise ValueError(f"weight must be a non-negative int, got {w!r}")
        self._weights = new

    def pick(
        self, key: bytes | None, eligible: Sequence[bool], active: Sequence[int]
    ) -> int | None:
        """Index of the server for a new connection, or None when none is usable."""
        raise NotImplementedError

    def _check(self, eligible: Sequence[bool], active: Sequence[int]) -> None:
        n = len(self._weights)
        if len(eligible) != n or len(active) != n:
            raise ValueError(f"eligible and active must have {n} entries")

    def _usable(self, eligible: Sequence[bool]) -> list[int]:
        return [i for i, w in enumerate(self._weights) if w > 0 and eligible[i]]

    def _lighter(self, i: int, j: int, active: Sequence[int]) -> bool:
        """True when server i would be less loaded than j after taking a connection."""
        return (active[i] + 1) * self._weights[j] < (active[j] + 1) * self._weights[i]


class RoundRobin(Balancer):
    """Smooth weighted round robin (nginx ``ngx_http_upstream_get_peer``)."""

    algorithm = "roundrobin"

    def __init__(self, weights: Sequence[int]) -> None:
        super().__init__(weights)
        self._current = [0] * len(self._weights)

    def set_weights(self, weights: Sequence[int]) -> None:
        super().set_weights(weights)
        # credit earned under the old weights would skew the next rounds (slow start ramps)
        self._current = [0] * len(self._weights)

    def pick(
        self, key: bytes | None, eligible: Sequence[bool], active: Sequence[int]
    ) -> int | None:
        self._check(eligible, active)
        best, total = None, 0
        for i in self._usable(eligible):
            self._current[i] += self._weights[i]
            total += self._weights[i]
            if best is None or self._current[i] > self._current[best]:
                best = i
        if best is not None:
            self._current[best] -= total
        return best


class LeastConn(Balancer):
    """Weighted least connections; ties rotate so equal servers share new clients."""

    algorithm = "leastconn"

    def __init__(self, weights: Sequence[int]) -> None:
        super().__init__(weights)
        self._next = 0

    def pick(
        self, key: bytes | None, eligible: Sequence[bool], active: Sequence[int]
    ) -> int | None:
        self._check(eligible, active)
        n = len(self._weights)
        best = None
        for step in range(n):
            i = (self._next + step) % n
            usable = self._weights[i] > 0 and eligible[i]
            if usable and (best is None or self._lighter(i, best, active)):
                best = i
        if best is not None:
            self._next = best + 1
        return best


class PowerOfTwo(Balancer):
    """Power of two random choices, drawn by weight; ``seed`` makes tests repeatable."""

    algorithm = "random"

    def __init__(self, weights: Sequence[int], seed: int | None = None) -> None:
        super().__init__(weights)
        self._rng = random.Random(seed)

    def pick(
        self, key: bytes | None, eligible: Sequence[bool], active: Sequence[int]
    ) -> int | None:
        self._check(eligible, active)
        usable = self._usable(eligible)
        if len(usable) < 2:
            return usable[0] if usable else None
        first = self._draw(usable)
        usable.remove(first)
        second = self._draw(usable)
        return second if self._lighter(second, first, active) else first

    def _draw(self, usable: list[int]) -> int:
        return self._rng.choices(usable, [self._weights[i] for i in usable])[0]


class Consistent(Balancer):
    """Weighted Maglev consistent hashing of the key, with optional bounded loads.

    Same names and weights give the same table in every process: servers enter the
    table build sorted by (hash64(name), name), so neither list order nor
    PYTHONHASHSEED matters. A key maps to slot ``hash64(key) % table_size``.

    Ineligible servers: a key whose server (in the table of every server with
    weight) is eligible stays there, so no other key ever moves; a key whose server
    is not eligible is looked up in the table built from the eligible servers only,
    which spreads those keys by weight. Tables are cached per eligible set (LRU of
    ``TABLE_CACHE``), so health changes cost one build (~1-3 ms in Cython), not one
    per connection. Changing the weights or the server list rebuilds the table;
    Maglev keeps that change small but not minimal (removing one of 3 servers from
    the config also moves ~0.01% of the other servers' keys).

    Bounded loads (``balance_factor`` c >= 1, "consistent hashing with bounded
    loads", Mirrokni et al.): server i may take a new connection only while
    ``active[i] < ceil(c * (total_active + 1) * w_i / W)`` over eligible servers,
    which is ``ceil(c * (total_active + 1) / n)`` with equal weights. A key whose
    server is at its bound walks the table forward to the next server under it.

    ``key=None`` (nothing to hash, e.g. an empty client id) falls back to smooth
    round robin, so such clients are not piled onto one server.
    """

    algorithm = "consistent"
    # The implementation, as attributes so the property tests can run the twin too.
    _hash = staticmethod(hash64)
    _build = staticmethod(maglev_build)

    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[int],
        balance_factor: float | None = None,
        table_size: int = DEFAULT_TABLE_SIZE,
    ) -> None:
        names = list(names)
        if len(set(names)) != len(names):
            raise ValueError("consistent hashing needs distinct server names")
        if len(names) != len(weights):
            raise ValueError("names and weights differ in length")
        if balance_factor is not None and not 1.0 <= balance_factor < math.inf:
            raise ValueError(f"balance_factor must be >= 1.0, got {balance_factor!r}")
        hashes = [self._hash(name.encode()) for name in names]
        # Canonical build order: table position p holds server self._order[p].
        self._order = sorted(range(len(names)), key=lambda i: (hashes[i], names[i]))
        self._hashes = [hashes[i] for i in self._order]
        self._factor = balance_factor
        self._size = table_size
        self._tables: OrderedDict[tuple[int, ...], MaglevTable] = OrderedDict()
        self._fallback = RoundRobin(weights)
        super().__init__(weights)

    def set_weights(self, weights: Sequence[int]) -> None:
        super().set_weights(weights)
        self._fallback.set_weights(weights)

    def pick(
        self, key: bytes | None, eligible: Sequence[bool], active: Sequence[int]
    ) -> int | None:
        self._check(eligible, active)
        if key is None:
            return self._fallback.pick(None, eligible, active)
        weights = [self._weights[i] for i in self._order]
        live = [w if eligible[i] else 0 for w, i in zip(weights, self._order, strict=True)]
        if not any(live):
            return None
        load = [active[i] for i in self._order]
        room = self._room(live, load)
        slot = self._hash(key) % self._size
        home = self._table(tuple(weights)).entry(slot)
        if home >= 0 and room[home]:
            return self._order[home]
        pos = self._table(tuple(live)).walk(slot, bytes(room))
        return self._order[pos] if pos >= 0 else None

    @property
    def order(self) -> list[int]:
        """Server index at each table position (the canonical build order)."""
        return list(self._order)

    def table_for(self, weights: tuple[int, ...]) -> MaglevTable:
        """The table over these weights, given in build order (cached as pick() does): the
        engine's fast path uses the very tables the event-loop path hashes with."""
        return self._table(weights)

    def _room(self, live: list[int], load: list[int]) -> list[bool]:
        """Per table position: eligible and, with bounded loads, under its bound."""
        if self._factor is None:
            return [w > 0 for w in live]
        total_w = sum(live)
        total = sum(n for n, w in zip(load, live, strict=True) if w > 0) + 1
        return [
            w > 0 and n < math.ceil(self._factor * total * w / total_w)
            for n, w in zip(load, live, strict=True)
        ]

    def _table(self, weights: tuple[int, ...]) -> MaglevTable:
        table = self._tables.get(weights)
        if table is None:
            table = self._build(self._hashes, weights, self._size)
            self._tables[weights] = table
            if len(self._tables) > TABLE_CACHE:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(weights)
        return table


def make_balancer(
    algorithm: str,
    names: Sequence[str],
    weights: Sequence[int],
    balance_factor: float | None = None,
    seed: int | None = None,
    *,
    table_size: int = DEFAULT_TABLE_SIZE,
) -> Balancer:
    """The balancer for one backend; ``names`` and ``weights`` are in server order."""
    if len(names) != len(weights):
        raise ValueError("names and weights differ in length")
    if algorithm == "roundrobin":
        return RoundRobin(weights)
    if algorithm == "leastconn":
        return LeastConn(weights)
    if algorithm == "random":
        return PowerOfTwo(weights, seed)
    if algorithm in ("consistent", "source"):
        balancer = Consistent(names, weights, balance_factor, table_size)
        balancer.algorithm = algorithm  # same policy; the caller hashes the client address
        return balancer
    raise ValueError(f"unknown balance algorithm {algorithm!r}; expected one of {ALGORITHMS}")


_ID_SPACE = 0xFFFFFFFF


def server_id(name: str) -> int:
    """A server's id in table entries: the same in every process and after restarts."""
    return hash64(name.encode()) % _ID_SPACE + 1


def id_collisions(names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of server names (of one backend) that would share an id."""
    seen: dict[int, str] = {}
    pairs = []
    for name in names:
        other = seen.setdefault(server_id(name), name)
        if other != name:
            pairs.append((other, name))
    return pairs
