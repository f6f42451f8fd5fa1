# TAP device: open with virtio-net headers (always: they cost nothing and let
# the TAP take super-frames from peers whatever our own offloads) and multiple queues,
# enable offloads, and move frames in batches: read until EAGAIN or the batch
# is full; write one frame (or super-frame) per write, the only way a TAP
# takes them.

OFFLOAD_CSUM = TUN_F_CSUM
OFFLOAD_TSO4 = TUN_F_TSO4
OFFLOAD_TSO6 = TUN_F_TSO6
OFFLOAD_TSO_ECN = TUN_F_TSO_ECN
OFFLOAD_USO4 = TUN_F_USO4
OFFLOAD_USO6 = TUN_F_USO6


def tap_open(str name, bint multi_queue=False):
    """Opens (creating if needed) TAP `name`; returns (fd, name). Non-blocking."""
    cdef ifreq req
    cdef bytes raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"TAP name {name!r}: 1 to {IFNAMSIZ - 1} characters")
    memset(&req, 0, sizeof(req))
    memcpy(req.ifr_name, <char *>raw, len(raw))
    req.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    if multi_queue:
        req.ifr_flags |= IFF_MULTI_QUEUE
    cdef int fd = open(b"/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
    check_errno(fd, "open /dev/net/tun")
    if ioctl(fd, TUNSETIFF, &req) < 0:
        err = errno
        close(fd)
        raise os_error(err, f"TUNSETIFF {name}")
    return fd, req.ifr_name.decode()


def tap_set_offload(int fd, unsigned flags):
    """TUNSETOFFLOAD: the kernel may then hand us (and take from us) GSO super-frames."""
    check_errno(ioctl(fd, TUNSETOFFLOAD, <unsigned long>flags), "TUNSETOFFLOAD")


def close_fd(int fd):
    close(fd)


# Reads up to `limit` frames into the arena's slots. Returns how many were
# read; *err is the errno that stopped the batch (EAGAIN when drained).
cdef unsigned tap_read_batch(int fd, Arena *a, size_t *lens, unsigned limit,
                             int *err) noexcept nogil:
    cdef unsigned n = 0
    cdef ssize_t r
    err[0] = 0
    while n < limit:
        r = read(fd, arena_slot(a, n), FRAME_MAX)
        if r < 0:
            if errno == EINTR:
                continue
            err[0] = errno
            break
        lens[n] = r
        n += 1
    return n


cdef uint8_t ZERO_VNET_HDR[WF_VNET_HDR_LEN]


# Writes one frame; a frame that arrived without a virtio-net header gets an
# all-zero one (no offload requested).
cdef inline int tap_write_frame(int fd, const uint8_t *data, size_t n, bint has_vnet) noexcept nogil:
    cdef iovec iov[2]
    cdef int cnt = 0
    cdef ssize_t r
    if not has_vnet:
        iov[0].iov_base = ZERO_VNET_HDR
        iov[0].iov_len = WF_VNET_HDR_LEN
        cnt = 1
    iov[cnt].iov_base = <void *>data
    iov[cnt].iov_len = n
    while True:
        r = writev(fd, iov, cnt + 1)
        if r >= 0 or errno != EINTR:
            return 0 if r >= 0 else -1
