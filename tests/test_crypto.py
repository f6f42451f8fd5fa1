"""The AEAD envelope and the replay window of wire format version 2
(docs/ARCHITECTURE.md), against the reference and the core.

Known answers are computed here with `cryptography`'s AESGCM and
ChaCha20Poly1305 straight from the spec (nonce = 4 zero bytes + the header's
counter, associated data = the 24-byte header, tag appended), so neither
implementation is checked only against itself.
"""
import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from impls import impl  # noqa: F401  (pytest fixture)

HEADER_LEN, TRAILER_LEN, WINDOW = 24, 16, 8192
AES, CHACHA, NONE = 1, 2, 0
AEAD_CIPHERS = {AES: AESGCM, CHACHA: ChaCha20Poly1305}
KEY = bytes(range(0x40, 0x60))
OTHER_KEY = bytes(range(0x41, 0x61))
TOKEN = bytes.fromhex("00112233445566778899aabbccddeeff")
KEYS = {AES: KEY, CHACHA: KEY, NONE: TOKEN}
CIPHER_IDS = {AES: "aes-256-gcm", CHACHA: "chacha20-poly1305", NONE: "none"}
ALL_CIPHERS = pytest.mark.parametrize("cipher", [AES, CHACHA, NONE], ids=CIPHER_IDS.get)
SEALING_CIPHERS = pytest.mark.parametrize("cipher", [AES, CHACHA], ids=CIPHER_IDS.get)


def raw_header(type=1, src_peer=1, dst_peer=2, counter=0, hops=0, key_id=1, lane=0):
    return struct.pack("!HBBBBHIIQ", 0x5746, 2, type, lane, hops, key_id, src_peer, dst_peer, counter)


def eth_record(size, fill=0x5A):
    payload = bytes.fromhex("020000000002 020000000001 0800") + bytes([fill]) * (size - 14)
    return struct.pack("!HBB", len(payload), 0, 0) + payload


def frames_datagram(counter=0x0102030405060708, size=100, **fields):
    return raw_header(counter=counter, **fields) + eth_record(size)


def datagrams():
    """Datagrams before sealing, one of each kind."""
    return {
        "frames": frames_datagram(lane=3, key_id=7),
        "fragment": raw_header(type=2, counter=99) + struct.pack("!III", 5, 3000, 1000) + bytes(1000),
        "control": raw_header(type=3, counter=2**64 - 1) + b"hello",
        "header-only": raw_header(type=3, counter=0),
    }


def nonce(counter):
    return bytes(4) + counter.to_bytes(8, "big")


def library_seal(cipher, key, datagram):
    header, body = datagram[:HEADER_LEN], datagram[HEADER_LEN:]
    counter = int.from_bytes(header[16:24], "big")
    return header + AEAD_CIPHERS[cipher](key).encrypt(nonce(counter), body, header)


def assert_rejected(impl, data, cipher, key, reason="bad_tag"):
    with pytest.raises(impl.MalformedDatagram) as excinfo:
        impl.open_datagram(data, cipher, key)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.reason == reason


def test_constants(impl):
    assert (impl.TRAILER_LEN, impl.KEY_LEN, impl.TOKEN_LEN) == (16, 32, 16)
    assert (impl.CIPHER_NONE, impl.CIPHER_AES_256_GCM, impl.CIPHER_CHACHA20_POLY1305) == (0, 1, 2)
    assert impl.REPLAY_WINDOW == WINDOW


def test_core_drop_reasons_append_the_crypto_ones():
    core = pytest.importorskip("dataplane._core")
    assert core.DROP_REASONS[0] == "ok"
    assert core.DROP_REASONS[1:9] == ("short", "bad_magic", "bad_version", "bad_type", "bad_length",
                                      "bad_fragment", "unknown_peer", "hop_limit")
    assert core.DROP_REASONS[-4:] == ("bad_tag", "replayed", "unknown_key", "no_session")
    assert len(set(core.DROP_REASONS)) == len(core.DROP_REASONS)


# --- seal and open ----------------------------------------------------------

@ALL_CIPHERS
@pytest.mark.parametrize("kind", list(datagrams()))
def test_seal_open_round_trip(impl, cipher, kind):
    datagram = datagrams()[kind]
    sealed = impl.seal_datagram(datagram, cipher, KEYS[cipher])
    assert isinstance(sealed, bytes)
    assert len(sealed) == len(datagram) + TRAILER_LEN
    assert sealed[:HEADER_LEN] == datagram[:HEADER_LEN]  # the header travels in the clear
    opened = impl.open_datagram(sealed, cipher, KEYS[cipher])
    assert isinstance(opened, bytes) and opened == datagram
    if kind != "header-only":
        assert impl.decode_datagram(opened) == impl.decode_datagram(datagram)


@SEALING_CIPHERS
def test_body_is_not_in_the_clear(impl, cipher):
    datagram = frames_datagram(size=200)
    sealed = impl.seal_datagram(datagram, cipher, KEY)
    assert datagram[HEADER_LEN:] not in sealed
    assert sealed[HEADER_LEN:-TRAILER_LEN] != datagram[HEADER_LEN:]


@SEALING_CIPHERS
@pytest.mark.parametrize("kind", list(datagrams()))
def test_known_answer_from_the_library(impl, cipher, kind):
    datagram = datagrams()[kind]
    expected = library_seal(cipher, KEY, datagram)
    assert impl.seal_datagram(datagram, cipher, KEY) == expected
    assert impl.open_datagram(expected, cipher, KEY) == datagram


@SEALING_CIPHERS
def test_known_answer_of_an_encoded_datagram(impl, cipher):
    """What encode_datagrams produces, sealed, is what the library makes of it."""
    records = [(0, eth_record(1000)[4:]), (0, eth_record(60)[4:])]
    datagram = impl.encode_datagrams(3, 4, 0xA1B2C3D4E5F60718, records, 1472)[0]
    assert impl.seal_datagram(datagram, cipher, OTHER_KEY) == library_seal(cipher, OTHER_KEY, datagram)


@SEALING_CIPHERS
def test_nonce_is_the_header_counter(impl, cipher):
    """Same body, other counter: other ciphertext; the tag covers the counter."""
    first, second = frames_datagram(counter=1), frames_datagram(counter=2)
    sealed_first = impl.seal_datagram(first, cipher, KEY)
    sealed_second = impl.seal_datagram(second, cipher, KEY)
    assert sealed_first[HEADER_LEN:] != sealed_second[HEADER_LEN:]
    assert impl.seal_datagram(first, cipher, KEY) == sealed_first  # deterministic
    aead = AEAD_CIPHERS[cipher](KEY)
    assert aead.decrypt(nonce(1), sealed_first[HEADER_LEN:], first[:HEADER_LEN]) == first[HEADER_LEN:]
    # The ciphertext of counter 1 under the header of counter 2 fails.
    assert_rejected(impl, second[:HEADER_LEN] + sealed_first[HEADER_LEN:], cipher, KEY)


@SEALING_CIPHERS
def test_every_single_bit_flip_is_rejected(impl, cipher):
    datagram = frames_datagram(size=30, lane=1, key_id=2)
    sealed = impl.seal_datagram(datagram, cipher, KEY)
    assert len(sealed) == 24 + 4 + 30 + 16  # header, body and tag all covered below
    for bit in range(len(sealed) * 8):
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert_rejected(impl, bytes(flipped), cipher, KEY)
    assert impl.open_datagram(sealed, cipher, KEY) == datagram


@SEALING_CIPHERS
def test_wrong_key_is_rejected(impl, cipher):
    sealed = impl.seal_datagram(frames_datagram(), cipher, KEY)
    assert_rejected(impl, sealed, cipher, OTHER_KEY)
    assert_rejected(impl, sealed, cipher, bytes(32))


@pytest.mark.parametrize("sealed_with,opened_with", [(AES, CHACHA), (CHACHA, AES), (AES, NONE),
                                                     (CHACHA, NONE)],
                         ids=lambda c: CIPHER_IDS[c])
def test_other_cipher_is_rejected(impl, sealed_with, opened_with):
    sealed = impl.seal_datagram(frames_datagram(), sealed_with, KEY)
    assert_rejected(impl, sealed, opened_with, KEYS[opened_with] if opened_with == NONE else KEY)


def test_sealed_datagram_opened_in_clear_mode_with_its_tag_as_token(impl):
    """A tag is no token: the clear mode compares the trailer with its own token."""
    sealed = impl.seal_datagram(frames_datagram(), AES, KEY)
    assert_rejected(impl, sealed, NONE, TOKEN)


@ALL_CIPHERS
def test_truncated_is_short_or_bad_tag(impl, cipher):
    datagram = frames_datagram(size=60)
    sealed = impl.seal_datagram(datagram, cipher, KEYS[cipher])
    for n in range(len(sealed)):
        reason = "short" if n < HEADER_LEN + TRAILER_LEN else "bad_tag"
        if cipher == NONE and n >= HEADER_LEN + TRAILER_LEN:
            continue  # the clear mode reads the last 16 bytes as the token: see below
        assert_rejected(impl, sealed[:n], cipher, KEYS[cipher], reason)


@ALL_CIPHERS
def test_header_and_trailer_alone_is_the_shortest(impl, cipher):
    sealed = impl.seal_datagram(raw_header(type=3), cipher, KEYS[cipher])
    assert len(sealed) == 40
    assert impl.open_datagram(sealed, cipher, KEYS[cipher]) == raw_header(type=3)
    assert_rejected(impl, sealed[:39], cipher, KEYS[cipher], "short")
    assert_rejected(impl, b"", cipher, KEYS[cipher], "short")


@ALL_CIPHERS
def test_seal_of_less_than_a_header_is_short(impl, cipher):
    with pytest.raises(impl.MalformedDatagram) as excinfo:
        impl.seal_datagram(raw_header()[:23], cipher, KEYS[cipher])
    assert excinfo.value.reason == "short"


@pytest.mark.parametrize("cipher,key", [
    (AES, bytes(16)), (AES, bytes(31)), (AES, bytes(33)), (AES, b""),
    (CHACHA, bytes(16)), (CHACHA, bytes(64)),
    (NONE, bytes(32)), (NONE, bytes(15)), (NONE, bytes(17)),
    (3, bytes(32)), (3, bytes(16)), (255, bytes(32)), (-1, bytes(32)),
], ids=lambda v: str(v) if isinstance(v, int) else f"{len(v)}B")
def test_bad_key_length_or_cipher_is_value_error(impl, cipher, key):
    datagram = frames_datagram()
    with pytest.raises(ValueError) as excinfo:
        impl.seal_datagram(datagram, cipher, key)
    assert not isinstance(excinfo.value, impl.MalformedDatagram)
    sealed = impl.seal_datagram(datagram, AES, KEY)
    with pytest.raises(ValueError) as excinfo:
        impl.open_datagram(sealed, cipher, key)
    assert not isinstance(excinfo.value, impl.MalformedDatagram)


def test_clear_mode_keeps_the_body_readable(impl):
    datagram = frames_datagram(size=200)
    sealed = impl.seal_datagram(datagram, NONE, TOKEN)
    assert sealed == datagram + TOKEN
    assert impl.decode_datagram(sealed[:-TRAILER_LEN]) == impl.decode_datagram(datagram)
    assert impl.open_datagram(sealed, NONE, TOKEN) == datagram


def test_clear_mode_rejects_a_wrong_token(impl):
    sealed = impl.seal_datagram(frames_datagram(), NONE, TOKEN)
    assert_rejected(impl, sealed, NONE, bytes(16))
    for bit in range(TRAILER_LEN * 8):
        other = bytearray(TOKEN)
        other[bit // 8] ^= 1 << (bit % 8)
        assert_rejected(impl, sealed, NONE, bytes(other))
        flipped = bytearray(sealed)
        flipped[len(sealed) - TRAILER_LEN + bit // 8] ^= 1 << (bit % 8)
        assert_rejected(impl, bytes(flipped), NONE, TOKEN)


def test_clear_mode_does_not_protect_header_or_body(impl):
    """Without a secret only the token is checked: a changed body still opens."""
    sealed = bytearray(impl.seal_datagram(frames_datagram(), NONE, TOKEN))
    sealed[5] ^= 0xFF  # hops
    sealed[40] ^= 0xFF  # the frame
    assert impl.open_datagram(bytes(sealed), NONE, TOKEN) == bytes(sealed[:-TRAILER_LEN])


@ALL_CIPHERS
def test_encoded_datagrams_fit_max_payload_once_sealed(impl, cipher):
    records = [(0, eth_record(size)[4:]) for size in (60, 700, 1300, 1500, 9000, 64)]
    max_payload = 1472
    datagrams_ = impl.encode_datagrams(1, 2, 0, records, max_payload)
    sealed = [impl.seal_datagram(d, cipher, KEYS[cipher]) for d in datagrams_]
    assert all(len(s) <= max_payload for s in sealed)
    assert any(len(s) == max_payload for s in sealed)
    assert [impl.open_datagram(s, cipher, KEYS[cipher]) for s in sealed] == datagrams_


@ALL_CIPHERS
def test_seal_accepts_bytes_like_datagrams(impl, cipher):
    datagram = frames_datagram()
    expected = impl.seal_datagram(datagram, cipher, KEYS[cipher])
    assert impl.seal_datagram(bytearray(datagram), cipher, KEYS[cipher]) == expected
    assert impl.seal_datagram(memoryview(datagram), cipher, KEYS[cipher]) == expected
    assert impl.open_datagram(bytearray(expected), cipher, KEYS[cipher]) == datagram


@ALL_CIPHERS
def test_random_input_opens_or_raises_malformed(impl, cipher):
    rng = random.Random(4242 + cipher)
    valid = impl.seal_datagram(frames_datagram(size=40), cipher, KEYS[cipher])
    for _ in range(300):
        data = rng.randbytes(rng.randrange(0, 100))
        corrupted = bytearray(valid)
        corrupted[rng.randrange(len(corrupted))] ^= 1 + rng.randrange(255)
        for case in (data, bytes(corrupted), valid[:rng.randrange(len(valid))]):
            try:
                impl.open_datagram(case, cipher, KEYS[cipher])
            except impl.MalformedDatagram as err:
                assert err.reason in ("short", "bad_tag")


# --- across implementations -------------------------------------------------

@pytest.fixture
def both():
    from dataplane import reference
    core = pytest.importorskip("dataplane._core")
    return reference, core


@ALL_CIPHERS
@pytest.mark.parametrize("kind", list(datagrams()))
def test_sealed_by_one_implementation_opens_with_the_other(both, cipher, kind):
    reference, core = both
    datagram = datagrams()[kind]
    by_reference = reference.seal_datagram(datagram, cipher, KEYS[cipher])
    by_core = core.seal_datagram(datagram, cipher, KEYS[cipher])
    assert by_reference == by_core
    assert core.open_datagram(by_reference, cipher, KEYS[cipher]) == datagram
    assert reference.open_datagram(by_core, cipher, KEYS[cipher]) == datagram


@SEALING_CIPHERS
def test_implementations_reject_the_same_forgeries(both, cipher):
    reference, core = both
    sealed = reference.seal_datagram(frames_datagram(size=20), cipher, KEY)
    rng = random.Random(99)
    for _ in range(200):
        forged = bytearray(sealed)
        forged[rng.randrange(len(forged))] ^= 1 + rng.randrange(255)
        for impl in both:
            assert_rejected(impl, bytes(forged), cipher, KEY)


@SEALING_CIPHERS
def test_large_datagram_across_implementations(both, cipher):
    reference, core = both
    datagram = raw_header(counter=2**63 + 5) + eth_record(1400 - HEADER_LEN - 4 - TRAILER_LEN)
    assert len(datagram) + TRAILER_LEN == 1400
    sealed = core.seal_datagram(datagram, cipher, OTHER_KEY)
    assert sealed == library_seal(cipher, OTHER_KEY, datagram)
    assert reference.open_datagram(sealed, cipher, OTHER_KEY) == datagram


# --- replay window ----------------------------------------------------------

class ModelWindow:
    """The spec, spelled out: above top is fresh; at or below it, fresh when
    less than WINDOW below top and never accepted."""

    def __init__(self):
        self.top = 0
        self.seen = set()

    def fresh(self, counter):
        return counter > self.top or (self.top - counter < WINDOW and counter not in self.seen)

    def update(self, counter):
        if not self.fresh(counter):
            return False
        self.top = max(self.top, counter)
        self.seen.add(counter)
        return True


def test_new_window(impl):
    window = impl.ReplayWindow()
    assert window.top == 0
    assert window.fresh(0) and window.fresh(1) and window.fresh(2**64 - 1)
    assert window.update(0)
    assert not window.fresh(0) and not window.update(0)
    assert window.top == 0


def test_in_order(impl):
    window = impl.ReplayWindow()
    for counter in range(1, 3000):
        assert window.fresh(counter)
        assert window.update(counter)
        assert window.top == counter
    for counter in range(1, 3000, 7):
        assert not window.fresh(counter) and not window.update(counter)
    assert window.top == 2999
    assert window.fresh(0)  # never accepted, and within the window


def test_duplicates_are_rejected(impl):
    window = impl.ReplayWindow()
    for counter in (5, 9, 7, 100, 50):
        assert window.update(counter)
    for counter in (5, 9, 7, 100, 50):
        assert not window.fresh(counter)
        assert not window.update(counter)
    assert window.top == 100
    assert window.fresh(6) and window.fresh(8) and window.fresh(101)


def test_reordering_within_the_window_is_accepted(impl):
    window = impl.ReplayWindow()
    top = 20000
    assert window.update(top)
    below = list(range(top - WINDOW + 1, top))
    random.Random(3).shuffle(below)
    for counter in below:
        assert window.fresh(counter)
        assert window.update(counter)
    assert window.top == top
    for counter in below[::97]:
        assert not window.update(counter)


def test_exactly_at_the_window_boundary(impl):
    window = impl.ReplayWindow()
    top = 100000
    assert window.update(top)
    assert window.fresh(top - (WINDOW - 1))
    assert not window.fresh(top - WINDOW)
    assert not window.update(top - WINDOW)
    assert window.update(top - (WINDOW - 1))
    assert not window.update(top - (WINDOW - 1))
    # Moving top by one pushes the oldest counter out.
    assert window.update(top + 1)
    assert not window.fresh(top + 1 - WINDOW)
    assert window.fresh(top + 2 - WINDOW)


@pytest.mark.parametrize("top", [WINDOW - 1, WINDOW, WINDOW + 1, 64 * 129, 64 * 129 + 63, 2**32, 2**64 - 1])
def test_boundary_at_interesting_tops(impl, top):
    window = impl.ReplayWindow()
    assert window.update(top)
    assert window.fresh(top - (WINDOW - 1))
    if top >= WINDOW:
        assert not window.fresh(top - WINDOW)
    assert not window.fresh(top)


def test_huge_jumps(impl):
    window = impl.ReplayWindow()
    for counter in range(1, 200):
        assert window.update(counter)
    jump = 2**63
    assert window.update(jump)
    assert window.top == jump
    assert not window.fresh(199) and not window.fresh(5)
    assert window.fresh(jump - 1) and window.fresh(jump - (WINDOW - 1))
    assert not window.fresh(jump - WINDOW)
    assert window.update(jump - 1)
    assert window.update(2**64 - 1)
    assert window.top == 2**64 - 1
    assert not window.fresh(2**64 - 1) and not window.fresh(jump)
    assert window.fresh(2**64 - 2) and window.fresh(2**64 - WINDOW)
    assert not window.fresh(2**64 - 1 - WINDOW)


def test_jump_by_less_than_the_window_keeps_what_it_still_covers(impl):
    window = impl.ReplayWindow()
    for counter in range(1000, 1100):
        assert window.update(counter)
    assert window.update(1000 + WINDOW - 1)  # 1000 is still inside
    assert not window.fresh(1000) and not window.fresh(1099)
    assert window.fresh(1100) and window.fresh(998 + WINDOW)
    assert not window.fresh(999 + WINDOW)  # the top itself
    assert window.update(1000 + WINDOW)  # now 1000 falls out, 1001 stays
    assert not window.fresh(1000) and not window.fresh(1001)
    assert window.fresh(1100)


def test_top_moving_through_the_ring_slot_of_old_counters(impl):
    """The core keeps the window in a ring of 129 blocks of 64 counters: blocks
    b and b + 129 share a slot. Move the top so that a block still half inside
    the window, then just outside it, then its ring slot's next user, is probed."""
    model, window = ModelWindow(), impl.ReplayWindow()
    for counter in range(64, 128, 2):  # block 1, every other counter
        assert window.update(counter) == model.update(counter)
    for top in (128 * 64 + 63, 129 * 64, 129 * 64 + 1, 130 * 64, 130 * 64 + 63, 259 * 64):
        assert window.update(top) == model.update(top) is True
        for counter in list(range(0, 200)) + list(range(top - WINDOW - 70, top + 70)):
            if counter >= 0:
                assert window.fresh(counter) == model.fresh(counter), (top, counter)
    assert not window.fresh(259 * 64 - WINDOW) and window.fresh(259 * 64 - WINDOW + 1)


def test_fresh_does_not_change_the_window(impl):
    window = impl.ReplayWindow()
    assert window.update(100)
    for _ in range(3):
        assert window.fresh(200) and window.fresh(99) and not window.fresh(100)
    assert window.top == 100
    assert window.update(99)


def test_update_after_a_rejected_check_leaves_the_state_unchanged(impl):
    window = impl.ReplayWindow()
    accepted = [50000, 49990, 45000, 50001, 42000]
    for counter in accepted:
        assert window.update(counter)
    probe = list(range(50001 - WINDOW - 5, 50010))

    def state():
        return window.top, [window.fresh(c) for c in probe]

    before = state()
    for counter in accepted + [50001 - WINDOW, 0, 1, 50001 - WINDOW - 1000]:
        assert not window.fresh(counter)
        assert not window.update(counter)
        assert state() == before


def test_sparse_counters_across_many_ring_turns(impl):
    model, window = ModelWindow(), impl.ReplayWindow()
    for counter in range(0, 5 * WINDOW, 13):
        assert window.update(counter) == model.update(counter)
    assert window.top == model.top
    for counter in range(model.top - WINDOW - 70, model.top + 3):
        assert window.fresh(counter) == model.fresh(counter), counter


def random_counters(seed, n=20000):
    """Mostly increasing counters with reordering, duplicates, stale ones and jumps."""
    rng = random.Random(seed)
    top, issued, out = 0, [], []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.55 or not issued:
            top += rng.choice((1, 1, 1, 2, 3, 17, 64, 65, 200))
            counter = top
        elif roll < 0.75:
            counter = rng.choice(issued[-64:])  # a duplicate, or late
        elif roll < 0.90:
            counter = top - rng.randrange(0, WINDOW + 64)  # around the window's bottom
        elif roll < 0.97:
            counter = top - rng.choice((WINDOW - 1, WINDOW, WINDOW + 1))
        elif roll < 0.995:
            top += rng.choice((WINDOW - 1, WINDOW, WINDOW + 1, 64 * 129, 10 * WINDOW))
            counter = top
        else:
            top += rng.randrange(2**40)
            counter = top
        counter = max(counter, 0)
        issued.append(counter)
        out.append(counter)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_random_counters_against_the_spec(impl, seed):
    model, window = ModelWindow(), impl.ReplayWindow()
    rng = random.Random(seed)
    for i, counter in enumerate(random_counters(seed, 5000)):
        assert window.fresh(counter) == model.fresh(counter), (i, counter)
        if rng.random() < 0.1:
            continue  # checked but dropped (bad tag): no update
        assert window.update(counter) == model.update(counter), (i, counter)
        assert window.top == model.top


def test_reference_and_core_agree_on_20000_random_counters(both):
    reference, core = both
    windows = reference.ReplayWindow(), core.ReplayWindow()
    rng = random.Random(8192)
    counters = random_counters(20240611)
    assert len(counters) == 20000
    assert len(set(counters)) < len(counters)  # duplicates
    assert any(b < a for a, b in zip(counters, counters[1:]))  # reordering
    for i, counter in enumerate(counters):
        fresh = [w.fresh(counter) for w in windows]
        assert fresh[0] == fresh[1], (i, counter)
        if rng.random() < 0.1:
            continue  # checked but dropped (bad tag): no update
        updated = [w.update(counter) for w in windows]
        assert updated[0] == updated[1], (i, counter)
        assert updated[0] == fresh[0], (i, counter)
        assert windows[0].top == windows[1].top, (i, counter)
