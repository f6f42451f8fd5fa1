/* libFuzzer target: reassembly (reasm.h) driven by a sequence of fragments
 * decoded from the input, each checked with wf_check_fragment first as the RX
 * path does, every completed message then parsed with wf_check_records (as
 * rx_reassemble does). Checked against a small model of the documented
 * semantics (docs/ARCHITECTURE.md, dataplane.reference.Reassembler): what
 * comes out, when, and the drop count; abort() on any disagreement.
 *
 * Input: 1 byte of slot count (1..4), then fragments of 7 bytes each:
 * src (0..5), msg (0..3), total (u16, scaled), offset (u16), length (u8,
 * scaled); chunk contents are a pattern of the fragment's position, so the
 * model can tell every byte apart.
 */
#include "fuzz_common.h"
#include "reasm.h"

#define NSRC 6

typedef struct {
    int busy;
    uint32_t msg, total, have;
    uint64_t used;
    uint8_t *data;
} model_partial;

static model_partial model[NSRC];
static uint64_t model_dropped, model_clock;

static void model_drop(unsigned src) {
    model[src].busy = 0;
    model_dropped++;
}

/* dataplane.reference.Reassembler.feed */
static const uint8_t *model_feed(unsigned nslots, unsigned src, uint32_t msg, uint32_t total,
                                 uint32_t offset, const uint8_t *chunk, uint32_t len,
                                 const uint8_t **single) {
    model_partial *m = &model[src];
    *single = NULL;
    model_clock++;
    if (!m->busy || m->msg != msg) {
        if (offset != 0) { model_dropped++; return NULL; }
        if (m->busy) model_drop(src);
        if (len == total) { *single = chunk; return chunk; }
        unsigned busy = 0;
        int oldest = -1;
        for (unsigned i = 0; i < NSRC; i++)
            if (model[i].busy) {
                busy++;
                if (oldest < 0 || model[i].used < model[oldest].used) oldest = (int)i;
            }
        if (busy >= nslots) model_drop((unsigned)oldest);
        m->busy = 1;
        m->msg = msg;
        m->total = total;
        m->have = 0;
    } else if (offset != m->have || total != m->total) {
        model_drop(src);
        return NULL;
    }
    memcpy(m->data + m->have, chunk, len);
    m->have += len;
    m->used = model_clock;
    if (m->have < total) return NULL;
    m->busy = 0;
    return m->data;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t *chunkbuf, *fragbuf, *pattern;
    fuzz_in in = {data, size};
    static wf_reasm pool[5];
    wf_reasm *r;
    uint64_t dropped = 0;
    unsigned nslots = 1 + fuzz_u8(&in) % 4, seq = 0;
    if (!chunkbuf) {
        chunkbuf = malloc(WF_MAX_MESSAGE);
        fragbuf = malloc(WF_FRAG_HDR_LEN + WF_MAX_MESSAGE);
        for (unsigned i = 0; i < NSRC; i++) model[i].data = malloc(WF_MAX_MESSAGE);
        pattern = malloc(WF_MAX_MESSAGE + 256);   /* pattern[i] = i mod 256 */
        for (unsigned i = 0; i < WF_MAX_MESSAGE + 256; i++) pattern[i] = (uint8_t)i;
    }
    for (unsigned i = 0; i < NSRC; i++) model[i].busy = 0;
    model_dropped = model_clock = 0;
    /* One reassembler per slot count, made once (each slot reserves
     * WF_MAX_MESSAGE bytes) and emptied before each input. */
    if (!pool[nslots].slots && wf_reasm_init(&pool[nslots], nslots)) abort();
    r = &pool[nslots];
    for (unsigned i = 0; i < nslots; i++) {
        r->slots[i].have = 0;
        r->slots[i].stamp = 0;
    }
    r->clock = 0;
    while (fuzz_left(&in) >= 7) {
        unsigned src = fuzz_u8(&in) % NSRC;
        uint32_t msg = fuzz_u8(&in) % 4;
        uint16_t t = fuzz_u16(&in), o = fuzz_u16(&in);
        uint8_t l = fuzz_u8(&in);
        /* Mostly small messages (fast), sometimes up to and past WF_MAX_MESSAGE. */
        uint32_t total = (t & 0x8000) ? (uint32_t)(t & 0x7fff) * 9 : (t & 0x7fff) % 600;
        uint32_t offset = (o & 0x8000) ? (uint32_t)(o & 0x7fff) * 9 : (o & 0x7fff) % 600;
        uint32_t len = l < 0xf0 ? l : (uint32_t)(l - 0xef) * 16500;
        uint32_t m_, tot_, off_;
        const uint8_t *single, *got, *want;
        seq++;
        if (len > WF_MAX_MESSAGE) len = WF_MAX_MESSAGE;
        /* The FRAGMENT body as it arrives; wf_check_fragment decides. */
        wf_put32(fragbuf, msg);
        wf_put32(fragbuf + 4, total);
        wf_put32(fragbuf + 8, offset);
        memcpy(fragbuf + WF_FRAG_HDR_LEN, pattern + (seq * 31 + offset) % 256, len);
        if (wf_check_fragment(fragbuf, WF_FRAG_HDR_LEN + len, &m_, &tot_, &off_) != WF_OK) continue;
        FUZZ_CHECK(m_ == msg && tot_ == total && off_ == offset);
        memcpy(chunkbuf, fragbuf + WF_FRAG_HDR_LEN, len);
        got = wf_reasm_feed(r, src, msg, total, offset, chunkbuf, len, &dropped);
        want = model_feed(nslots, src, msg, total, offset, chunkbuf, len, &single);
        FUZZ_CHECK((got == NULL) == (want == NULL));
        if (got) {
            unsigned count;
            FUZZ_CHECK(memcmp(got, want, total) == 0);
            (void)wf_check_records(got, total, &count);   /* rx_reassemble */
        }
        FUZZ_CHECK(dropped == model_dropped);
    }
    return 0;
}
