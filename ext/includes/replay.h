/* Replay window (RFC 6479): a ring of 64-bit blocks holding which of the
 * last WF_REPLAY_WINDOW counters below the highest one were accepted.
 *
 * Check before opening a datagram (cheap rejection), update only after its
 * tag verified, so a forged counter can never move the window. Several
 * receive threads may open datagrams of one key, so both take a small spin
 * lock. `gen` is the install number of the key the window belongs to: a
 * datagram of a newer key empties it first, one of an older key is refused.
 */
#ifndef WF_REPLAY_H
#define WF_REPLAY_H

#include <stdint.h>
#include <string.h>

#define WF_REPLAY_BLOCKS 129                       /* one more than the window needs */
#define WF_REPLAY_WINDOW ((WF_REPLAY_BLOCKS - 1) * 64)   /* 8192 counters */

typedef struct {
    unsigned char lock;
    uint32_t gen;
    uint64_t top;       /* highest counter accepted */
    uint64_t blocks[WF_REPLAY_BLOCKS];
} wf_replay;

static inline void wf_replay_reset(wf_replay *r, uint32_t gen) {
    memset(r->blocks, 0, sizeof(r->blocks));
    r->top = 0;
    r->gen = gen;
}

/* 1: the counter has not been seen and is not too old. */
static inline int wf_replay_fresh(const wf_replay *r, uint64_t c) {
    if (c > r->top) return 1;
    if (r->top - c >= WF_REPLAY_WINDOW) return 0;
    return !((r->blocks[(c >> 6) % WF_REPLAY_BLOCKS] >> (c & 63)) & 1);
}

/* Marks the counter seen; 0 when it was not fresh (a replay). */
static inline int wf_replay_update(wf_replay *r, uint64_t c) {
    if (!wf_replay_fresh(r, c)) return 0;
    if (c > r->top) {
        uint64_t block = r->top >> 6, target = c >> 6, steps = target - block;
        if (steps > WF_REPLAY_BLOCKS) steps = WF_REPLAY_BLOCKS;
        for (uint64_t i = 1; i <= steps; i++) r->blocks[(block + i) % WF_REPLAY_BLOCKS] = 0;
        r->top = c;
    }
    r->blocks[(c >> 6) % WF_REPLAY_BLOCKS] |= (uint64_t)1 << (c & 63);
    return 1;
}

static inline void wf_replay_lock(wf_replay *r) {
    while (__atomic_test_and_set(&r->lock, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&r->lock, __ATOMIC_RELAXED)) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
}
static inline void wf_replay_unlock(wf_replay *r) { __atomic_clear(&r->lock, __ATOMIC_RELEASE); }

/* The receive path, before opening: 1 fresh, 0 replayed, -1 the key was replaced. */
static inline int wf_replay_check(wf_replay *r, uint32_t gen, uint64_t c) {
    int ok;
    wf_replay_lock(r);
    ok = r->gen > gen ? -1 : r->gen < gen ? 1 : wf_replay_fresh(r, c);
    wf_replay_unlock(r);
    return ok;
}

/* After the tag verified: 1 when the counter is now marked, 0 for a replay (a
 * copy another thread opened meanwhile), -1 when the key was replaced.
 * *gap tells the loss estimate what this counter says about the path: the
 * counters it skipped above the highest one (datagrams lost, or late), -1
 * for a late one filling a hole, 0 otherwise (also for the first of a key). */
static inline int wf_replay_accept_gap(wf_replay *r, uint32_t gen, uint64_t c, int64_t *gap) {
    int ok = -1;
    *gap = 0;
    wf_replay_lock(r);
    if (r->gen <= gen) {
        if (r->gen < gen) wf_replay_reset(r, gen);
        uint64_t top = r->top;
        ok = wf_replay_update(r, c);
        if (ok == 1 && top != 0)
            *gap = c > top ? (int64_t)(c - top - 1 < WF_REPLAY_WINDOW ? c - top - 1 : WF_REPLAY_WINDOW)
                           : -1;
    }
    wf_replay_unlock(r);
    return ok;
}

static inline int wf_replay_accept(wf_replay *r, uint32_t gen, uint64_t c) {
    int64_t gap;
    return wf_replay_accept_gap(r, gen, c, &gap);
}

#endif
