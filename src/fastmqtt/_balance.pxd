# cython: language_level=3
# C-level surface of _balance.pyx, for the engine's fast path (_choose.pyx): the hash every
# fastmqtt process agrees on, and read access to Maglev tables that Python built.

cimport cython
from libc.stdint cimport int32_t, uint8_t, uint64_t


# xxh64 with seed 0 of p[0:n]; hash64() is this with the GIL.
cdef uint64_t xxh64(const uint8_t *p, Py_ssize_t n) noexcept nogil
# With a seed: keys of tables a client fills, which it must not be able to aim at.
cdef uint64_t xxh64_seeded(const uint8_t *p, Py_ssize_t n, uint64_t seed) noexcept nogil


@cython.final
cdef class MaglevTable:
    cdef int32_t *entries      # size entries: a server position, or -1
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t servers

    @staticmethod
    cdef MaglevTable _new(Py_ssize_t size, Py_ssize_t servers)
