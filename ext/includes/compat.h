/* Kernel constants that Debian 12's glibc headers may not define yet, and the
 * few macros and builtins Cython cannot call directly. */
#ifndef WF_COMPAT_H
#define WF_COMPAT_H

#include <stdint.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <netinet/udp.h>
#include <sys/socket.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif
#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

static inline struct cmsghdr *wf_cmsg_first(struct msghdr *m) { return CMSG_FIRSTHDR(m); }
static inline struct cmsghdr *wf_cmsg_next(struct msghdr *m, struct cmsghdr *c) { return CMSG_NXTHDR(m, c); }
static inline unsigned char *wf_cmsg_data(struct cmsghdr *c) { return CMSG_DATA(c); }
static inline size_t wf_cmsg_space(size_t n) { return CMSG_SPACE(n); }
static inline size_t wf_cmsg_len(size_t n) { return CMSG_LEN(n); }

/* Counters are written by the forwarding threads and read by Python. */
static inline void wf_count(uint64_t *c, uint64_t n) { __atomic_fetch_add(c, n, __ATOMIC_RELAXED); }
/* Reserves n values of a counter that several threads draw from; returns the first. */
static inline uint64_t wf_take(uint64_t *c, uint64_t n) { return __atomic_fetch_add(c, n, __ATOMIC_RELAXED); }
static inline uint64_t wf_load(const uint64_t *c) { return __atomic_load_n(c, __ATOMIC_RELAXED); }
static inline uint64_t wf_load_acquire(const uint64_t *c) { return __atomic_load_n(c, __ATOMIC_ACQUIRE); }
static inline void wf_store_release(uint64_t *c, uint64_t v) { __atomic_store_n(c, v, __ATOMIC_RELEASE); }

#endif
