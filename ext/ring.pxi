# Packet-buffer arena: `count` slots allocated once, each large enough for a
# 64 KB GSO super-frame with its virtio-net header and VLAN tag, with HEADROOM
# bytes in front so the datagram and record headers are written in place
# instead of moving the frame.

cdef enum:
    HEADROOM = 64
    FRAME_MAX = 65536 + 64
    SLOT_SIZE = HEADROOM + FRAME_MAX


cdef struct Arena:
    uint8_t *mem
    unsigned count


cdef int arena_init(Arena *a, unsigned count) noexcept nogil:
    a.mem = <uint8_t *>malloc(<size_t>count * SLOT_SIZE)
    a.count = count
    return 0 if a.mem != NULL else -1


cdef void arena_free(Arena *a) noexcept nogil:
    free(a.mem)
    a.mem = NULL


cdef inline uint8_t *arena_slot(Arena *a, unsigned i) noexcept nogil:
    """Start of slot i's data area (HEADROOM bytes follow its start)."""
    return a.mem + <size_t>i * SLOT_SIZE + HEADROOM
