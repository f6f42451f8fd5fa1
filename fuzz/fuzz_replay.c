/* libFuzzer target: the replay window (replay.h) fed a sequence of counters
 * from the input, checked after every step against a plain model of its
 * contract (dataplane.reference.ReplayWindow): a counter is fresh when it is
 * above the highest accepted one, or less than WF_REPLAY_WINDOW below it and
 * never accepted; update accepts exactly the fresh ones. abort() on any
 * disagreement.
 *
 * Input: steps of 9 bytes: a mode byte and 8 bytes, the counter being
 * relative to the highest accepted one (near the window's edges, the block
 * boundaries, 2^64) or absolute, depending on the mode.
 */
#include "fuzz_common.h"
#include "replay.h"

#define MAX_STEPS 2048

static uint64_t seen[MAX_STEPS];
static unsigned nseen;
static uint64_t model_top;

static int model_fresh(uint64_t c) {
    if (c > model_top) return 1;
    if (model_top - c >= WF_REPLAY_WINDOW) return 0;
    for (unsigned i = 0; i < nseen; i++)
        if (seen[i] == c) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static wf_replay r;
    fuzz_in in = {data, size};
    wf_replay_reset(&r, 7);
    nseen = 0;
    model_top = 0;
    while (fuzz_left(&in) >= 9 && nseen < MAX_STEPS) {
        uint8_t mode = fuzz_u8(&in);
        uint64_t v = fuzz_u64(&in), c;
        uint64_t small = v % (3 * WF_REPLAY_WINDOW);
        switch (mode % 6) {
        case 0: c = model_top + (v % 200); break;                        /* just ahead */
        case 1: c = model_top - small; break;                            /* behind, near the edge */
        case 2: c = model_top + small; break;                            /* a jump of up to 3 windows */
        case 3: c = (model_top & ~(uint64_t)63) + (v % 130) * 64 + (v >> 32) % 64; break;   /* blocks */
        case 4: c = UINT64_MAX - (v % 20000); break;                     /* the end of the counter */
        default: c = v; break;                                           /* anywhere */
        }
        int want = model_fresh(c);
        FUZZ_CHECK(wf_replay_fresh(&r, c) == want);
        if (mode & 0x80) {   /* a datagram of a replaced (older) key must not touch the window */
            FUZZ_CHECK(wf_replay_check(&r, 6, c) == -1);
            FUZZ_CHECK(wf_replay_accept(&r, 6, c) == -1);
            continue;
        }
        FUZZ_CHECK(wf_replay_accept(&r, 7, c) == want);
        if (want) {
            seen[nseen++] = c;
            if (c > model_top) model_top = c;
        }
        FUZZ_CHECK(r.top == model_top);
        FUZZ_CHECK(wf_replay_fresh(&r, c) == 0);   /* now a replay */
    }
    return 0;
}
