"""Plain-Python twin of ``_balance.pyx``: same names, same order, same results.

It is the fallback when extensions are off, the oracle for the property tests and
the baseline for the benchmarks. Keep it a line-by-line reading of the Cython file.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

_M64 = 0xFFFFFFFFFFFFFFFF

# xxh64 primes (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md).
P1 = 11400714785074694791
P2 = 14029467366897019727
P3 = 1609587929392839161
P4 = 9650029242287828579
P5 = 2870177450012600261

# A table entry is a server position or EMPTY; 2**31 - 1 bounds the table size.
EMPTY = -1
MAX_SIZE = 2147483647
MAX_SERVERS = 65535
MAX_WEIGHT = 1048576


# -- xxh64 ------------------------------------------------------------------------


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * P2) & _M64
    return (_rotl(acc, 31) * P1) & _M64


def _merge(acc: int, v: int) -> int:
    acc ^= _round(0, v)
    return (acc * P1 + P4) & _M64


def _xxh64(data: bytes, seed: int = 0) -> int:
    n = len(data)
    p = 0
    if n >= 32:
        v1, v2, v3, v4 = (seed + P1 + P2) & _M64, (seed + P2) & _M64, seed, (seed - P1) & _M64
        while n - p >= 32:
            v1 = _round(v1, int.from_bytes(data[p : p + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[p + 8 : p + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[p + 16 : p + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[p + 24 : p + 32], "little"))
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M64
        h = _merge(_merge(_merge(_merge(h, v1), v2), v3), v4)
    else:
        h = (seed + P5) & _M64
    h = (h + n) & _M64
    while n - p >= 8:
        h ^= _round(0, int.from_bytes(data[p : p + 8], "little"))
        h = (_rotl(h, 27) * P1 + P4) & _M64
        p += 8
    if n - p >= 4:
        h ^= (int.from_bytes(data[p : p + 4], "little") * P1) & _M64
        h = (_rotl(h, 23) * P2 + P3) & _M64
        p += 4
    while p < n:
        h ^= (data[p] * P5) & _M64
        h = (_rotl(h, 11) * P1) & _M64
        p += 1
    h ^= h >> 33
    h = (h * P2) & _M64
    h ^= h >> 29
    h = (h * P3) & _M64
    return h ^ (h >> 32)


def _hash_bytes(key: bytes) -> int:
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    return _xxh64(key)


def hash64(key: bytes) -> int:
    """xxh64 of ``key`` with seed 0 (the hash every fastmqtt process agrees on)."""
    return _hash_bytes(key)


# -- Maglev -------------------------------------------------------------------------


def _mix(h: int) -> int:
    # splitmix64 finalizer: a second, independent-looking hash of the server name
    # for the permutation step, so offset and skip are not correlated.
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


class _Server:
    __slots__ = ("pos", "skip", "target", "weight")

    def __init__(self, h: int, weight: int, size: int) -> None:
        self.pos = h % size  # next candidate slot in this server's permutation
        self.skip = _mix(h) % (size - 1) + 1  # permutation step, coprime with the prime size
        self.weight = weight
        self.target = 0  # weighted turn-taking: claim a slot when iteration*weight >= target


def _fill(entries: list[int], servers: list[_Server], size: int, wmax: int) -> None:
    # Maglev population (Eisenbud et al., NSDI'16, Pseudocode 1) with Envoy's weighting:
    # every round the heaviest servers claim a slot, a server of weight w one round in
    # wmax/w. Each claim walks its permutation to the next free slot; the permutation
    # visits every slot (prime size), so the walk ends within `size` steps.
    filled = 0
    iteration = 1
    while filled < size:
        for i, srv in enumerate(servers):
            if filled == size:
                break
            if srv.weight == 0 or iteration * srv.weight < srv.target:
                continue
            srv.target += wmax
            c = srv.pos
            while entries[c] != EMPTY:
                c += srv.skip
                if c >= size:
                    c -= size
            entries[c] = i
            filled += 1
            c += srv.skip
            srv.pos = c - size if c >= size else c
        iteration += 1


def _check_build(hashes: list[int], weights: list[int], size: int) -> int:
    if len(hashes) != len(weights):
        raise ValueError("name_hashes and weights differ in length")
    if len(hashes) > MAX_SERVERS:
        raise ValueError(f"at most {MAX_SERVERS} servers")
    if not 2 <= size <= MAX_SIZE or not _is_prime(size):
        raise ValueError(f"table size must be a prime below 2**31, got {size}")
    for h in hashes:
        if not isinstance(h, int) or not 0 <= h < 2**64:
            raise ValueError(f"name hash must be an int 0..2**64-1, got {h!r}")
    wmax = 0
    for w in weights:
        if not isinstance(w, int) or not 0 <= w <= MAX_WEIGHT:
            raise ValueError(f"weight must be an int 0..{MAX_WEIGHT}, got {w!r}")
        wmax = max(wmax, w)
    return wmax


class MaglevTable:
    """Maglev lookup table: slot -> server position (or -1 when no server has weight)."""

    __slots__ = ("entries", "servers", "size")

    def __init__(self, entries: list[int], servers: int, *, _token: object = None) -> None:
        if _token is not _BUILD:
            raise TypeError("MaglevTable is built by maglev_build()")
        self.entries = entries
        self.size = len(entries)
        self.servers = servers

    def lookup(self, key: bytes) -> int:
        """Server position for ``key``: entry at hash64(key) % size."""
        return self.entries[_hash_bytes(key) % self.size]

    def entry(self, slot: int) -> int:
        slot = operator.index(slot)
        if not 0 <= slot < self.size:
            raise IndexError(f"slot {slot} outside 0..{self.size - 1}")
        return self.entries[slot]

    def walk(self, slot: int, allowed: bytes) -> int:
        """First server at or after ``slot`` (wrapping) whose ``allowed[pos]`` is non-zero.

        Bounded loads and eligibility use this to move a key past full or unusable
        servers deterministically; -1 when no server in the table is allowed.
        """
        if not isinstance(allowed, bytes):
            raise TypeError(f"allowed must be bytes, not {type(allowed).__name__}")
        slot = operator.index(slot)
        if not 0 <= slot < self.size:
            raise IndexError(f"slot {slot} outside 0..{self.size - 1}")
        n = len(allowed)
        for step in range(self.size):
            s = slot + step
            if s >= self.size:
                s -= self.size
            e = self.entries[s]
            if 0 <= e < n and allowed[e]:
                return e
        return EMPTY

    def counts(self) -> list[int]:
        """Slots held by each server position (weights show up here)."""
        out = [0] * self.servers
        for e in self.entries:
            if e != EMPTY:
                out[e] += 1
        return out

    def to_list(self) -> list[int]:
        return list(self.entries)


_BUILD = object()


def maglev_build(name_hashes: Sequence[int], weights: Sequence[int], size: int) -> MaglevTable:
    """Weighted Maglev table of ``size`` (a prime) slots over servers in the given order.

    ``name_hashes[i]`` (hash64 of the server name) seeds server i's permutation;
    ``weights[i]`` is its share of slots, 0 for none. Entries are positions in the
    lists, so callers that want order independence pass servers in a canonical order.
    """
    hashes, ws, size = list(name_hashes), list(weights), operator.index(size)
    wmax = _check_build(hashes, ws, size)
    entries = [EMPTY] * size
    if wmax:
        _fill(entries, [_Server(h, w, size) for h, w in zip(hashes, ws, strict=True)], size, wmax)
    return MaglevTable(entries, len(hashes), _token=_BUILD)
