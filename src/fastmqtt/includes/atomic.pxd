# Atomic counters shared by an engine thread that writes and Python (or another engine thread)
# that reads or writes too: the GCC builtins, relaxed (counters order nothing else).

from libc.stdint cimport uint32_t, uint64_t


cdef extern from *:
    """
    static inline uint64_t fm_atomic_load64(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void fm_atomic_inc64(uint64_t *p, uint64_t v) {
        __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
    }
    static inline uint32_t fm_atomic_load32(const uint32_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void fm_atomic_store32(uint32_t *p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    /* the value after adding (a reference count reaching 0 frees: acquire-release) */
    static inline uint32_t fm_atomic_add32(uint32_t *p, int32_t v) {
        return __atomic_add_fetch(p, (uint32_t)v, __ATOMIC_ACQ_REL);
    }
    """
    uint64_t atomic_load64 "fm_atomic_load64" (const uint64_t *p) noexcept nogil
    void atomic_inc64 "fm_atomic_inc64" (uint64_t *p, uint64_t v) noexcept nogil
    uint32_t atomic_load32 "fm_atomic_load32" (const uint32_t *p) noexcept nogil
    void atomic_store32 "fm_atomic_store32" (uint32_t *p, uint32_t v) noexcept nogil
    uint32_t atomic_add32 "fm_atomic_add32" (uint32_t *p, int v) noexcept nogil
