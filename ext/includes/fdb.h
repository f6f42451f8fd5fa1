/* MAC forwarding table: (VLAN, MAC) -> peer, with aging.
 *
 * Fixed capacity, allocated once: buckets of four 16-byte entries (one cache
 * line), so a lookup touches one line and learning never allocates. A full
 * bucket replaces its oldest entry, which also bounds memory under a MAC
 * flood. Not thread-safe: the engine holds its state lock around calls.
 */
#ifndef WF_FDB_H
#define WF_FDB_H

#include <stdint.h>
#include <stdlib.h>

#define WF_FDB_WAYS 4
#define WF_FDB_USED (1ull << 63)   /* keys use 60 bits; bit 63 marks a used slot */
#define WF_PEER_LOCAL 0u

typedef struct {
    uint64_t key;     /* WF_FDB_USED | VLAN << 48 | MAC, or 0 when free */
    uint32_t peer;    /* peer id, WF_PEER_LOCAL for the TAP side */
    uint32_t seen;    /* seconds, the engine's clock */
} wf_fdb_entry;

typedef struct {
    wf_fdb_entry *entries;
    uint32_t bucket_mask;
    uint32_t capacity;
    uint32_t max_age;
    uint32_t count;
    uint64_t generation;  /* bumped on every change of a key's peer: flow caches compare it */
} wf_fdb;

static inline int wf_fdb_init(wf_fdb *t, uint32_t capacity, uint32_t max_age) {
    uint32_t cap = WF_FDB_WAYS;
    while (cap < capacity && cap < (1u << 30)) cap <<= 1;
    t->entries = (wf_fdb_entry *)calloc(cap, sizeof(wf_fdb_entry));
    if (!t->entries) return -1;
    t->capacity = cap;
    t->bucket_mask = cap / WF_FDB_WAYS - 1;
    t->max_age = max_age;
    t->count = 0;
    t->generation = 1;
    return 0;
}

static inline void wf_fdb_free(wf_fdb *t) { free(t->entries); t->entries = NULL; }

static inline wf_fdb_entry *wf_fdb_bucket(const wf_fdb *t, uint64_t key) {
    uint32_t h = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32);
    return t->entries + (size_t)(h & t->bucket_mask) * WF_FDB_WAYS;
}

static inline int wf_fdb_expired(const wf_fdb *t, const wf_fdb_entry *e, uint32_t now) {
    return now - e->seen > t->max_age;
}

/* Returns the entry's peer, or -1 when absent or aged out. */
static inline int64_t wf_fdb_lookup(const wf_fdb *t, uint64_t key, uint32_t now) {
    const wf_fdb_entry *b = wf_fdb_bucket(t, key);
    key |= WF_FDB_USED;
    for (int i = 0; i < WF_FDB_WAYS; i++)
        if (b[i].key == key) return wf_fdb_expired(t, &b[i], now) ? -1 : (int64_t)b[i].peer;
    return -1;
}

/* Learns key -> peer. Multicast sources (bit 0 of the MAC's first byte) are
 * not real stations and are never learned. */
static inline void wf_fdb_learn(wf_fdb *t, uint64_t key, uint32_t peer, uint32_t now) {
    wf_fdb_entry *b = wf_fdb_bucket(t, key), *victim = NULL;
    if ((key >> 40) & 1) return;
    key |= WF_FDB_USED;
    for (int i = 0; i < WF_FDB_WAYS; i++) {
        if (b[i].key == key) {
            if (b[i].peer != peer) { b[i].peer = peer; t->generation++; }
            b[i].seen = now;
            return;
        }
    }
    for (int i = 0; i < WF_FDB_WAYS && !victim; i++)
        if (!b[i].key) victim = &b[i];
    for (int i = 0; i < WF_FDB_WAYS && !victim; i++)
        if (wf_fdb_expired(t, &b[i], now)) victim = &b[i];
    if (!victim) {
        victim = &b[0];
        for (int i = 1; i < WF_FDB_WAYS; i++)
            if ((int32_t)(b[i].seen - victim->seen) < 0) victim = &b[i];
    }
    if (!victim->key) t->count++;
    else t->generation++;
    victim->key = key;
    victim->peer = peer;
    victim->seen = now;
}

/* Removes aged-out entries (all_peer < 0) or every entry of one peer. */
static inline uint32_t wf_fdb_sweep(wf_fdb *t, uint32_t now, int64_t only_peer) {
    uint32_t removed = 0;
    for (uint32_t i = 0; i < t->capacity; i++) {
        wf_fdb_entry *e = &t->entries[i];
        if (!e->key) continue;
        if (only_peer >= 0 ? e->peer == (uint32_t)only_peer : wf_fdb_expired(t, e, now)) {
            e->key = 0;
            removed++;
        }
    }
    t->count -= removed;
    if (removed) t->generation++;
    return removed;
}

#endif
