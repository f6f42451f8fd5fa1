# Thin declarations of the C library and kernel interfaces the core uses.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN, EWOULDBLOCK, EINTR, EIO, EINVAL, ENOBUFS, EMSGSIZE

cdef extern from "<string.h>" nogil:
    char *strerror(int errnum)

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)
    int close(int fd)

cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags)
    enum:
        O_RDWR, O_NONBLOCK, O_CLOEXEC

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int n, int flags)
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int n, int flags, void *timeout)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const sockaddr *addr, socklen_t len)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    enum:
        AF_INET, AF_INET6, SOL_SOCKET, MSG_DONTWAIT, MSG_TRUNC

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    enum:
        IPPROTO_UDP

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    enum:
        INET6_ADDRSTRLEN

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN, POLLOUT

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK, EFD_CLOEXEC

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum:
        CLOCK_MONOTONIC, CLOCK_MONOTONIC_COARSE

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_create(pthread_t *t, void *attr, void *(*fn)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)

cdef extern from "<net/if.h>" nogil:
    enum:
        IFNAMSIZ
    struct ifreq:
        char ifr_name[16]
        short ifr_flags

cdef extern from "compat.h" nogil:
    enum:
        TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ
        IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE
        TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_USO4, TUN_F_USO6
        UDP_SEGMENT, UDP_GRO, SOL_UDP, SO_RXQ_OVFL
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE
    struct virtio_net_hdr:
        uint8_t flags
        uint8_t gso_type
        uint16_t hdr_len
        uint16_t gso_size
        uint16_t csum_start
        uint16_t csum_offset
    cmsghdr *wf_cmsg_first(msghdr *m)
    cmsghdr *wf_cmsg_next(msghdr *m, cmsghdr *c)
    unsigned char *wf_cmsg_data(cmsghdr *c)
    size_t wf_cmsg_space(size_t n)
    size_t wf_cmsg_len(size_t n)
    void wf_count(uint64_t *c, uint64_t n)
    uint64_t wf_take(uint64_t *c, uint64_t n)
    uint64_t wf_load(const uint64_t *c)
    uint64_t wf_load_acquire(const uint64_t *c)
    void wf_store_release(uint64_t *c, uint64_t v)
