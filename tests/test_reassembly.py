"""Reassembler of FRAGMENT datagrams, against the reference and the core.

A fragment is `(msg, total_len, offset, chunk)` as decode_datagram returns it:
`msg` is the u32 message id shared by all fragments of one record.
"""
import pytest

from impls import impl  # noqa: F401  (pytest fixture)

MESSAGE = bytes(i % 256 for i in range(3000))


def fragments(message=MESSAGE, size=1000):
    """(total_len, offset, chunk) of `message` cut into `size`-byte pieces."""
    return [(len(message), offset, message[offset:offset + size])
            for offset in range(0, len(message), size)]


def feed_all(reassembler, src_peer, msg, pieces):
    """Feed pieces in the given order; return what each call returned."""
    return [reassembler.feed(src_peer, msg, *piece) for piece in pieces]


def test_in_order_fragments_give_the_message_on_the_last(impl):
    reassembler = impl.Reassembler()
    assert feed_all(reassembler, 1, 7, fragments()) == [None, None, MESSAGE]
    assert reassembler.dropped == 0


def test_feed_takes_keyword_msg(impl):
    reassembler = impl.Reassembler()
    total_len, offset, chunk = fragments()[0]
    assert reassembler.feed(src_peer=1, msg=7, total_len=total_len, offset=offset, chunk=chunk) is None
    assert feed_all(reassembler, 1, 7, fragments()[1:]) == [None, MESSAGE]


def test_single_fragment_message(impl):
    assert impl.Reassembler().feed(1, 7, 10, 0, b"0123456789") == b"0123456789"


@pytest.mark.parametrize("msg", [0, 1, 2**31, 2**32 - 1])
def test_any_u32_message_id(impl, msg):
    reassembler = impl.Reassembler()
    assert feed_all(reassembler, 1, msg, fragments()) == [None, None, MESSAGE]
    assert reassembler.dropped == 0


def test_message_ids_differing_only_above_16_bits_are_distinct(impl):
    reassembler = impl.Reassembler()
    old, new = fragments(), fragments(MESSAGE[::-1])
    assert reassembler.feed(1, 0x00010005, *old[0]) is None
    assert reassembler.feed(1, 0x00020005, *new[0]) is None
    assert reassembler.dropped == 1


def test_decoded_fragments_reassemble(impl):
    """What encode_datagrams cuts and decode_datagram parses feeds straight in."""
    record = (0, bytes(range(256)) * 20)
    datagrams = impl.encode_datagrams(4, 5, 100, [record], 1000, msg=0xABCDEF01)
    reassembler = impl.Reassembler()
    results = [reassembler.feed(4, *impl.decode_datagram(d).fragment) for d in datagrams]
    assert results[:-1] == [None] * (len(datagrams) - 1)
    payload = results[-1]
    assert impl.decode_datagram(impl.encode_header(impl.TYPE_FRAMES, 4, 5, 0) + payload).records == [record]
    assert reassembler.dropped == 0


def test_messages_of_different_peers_interleave(impl):
    reassembler = impl.Reassembler()
    other = MESSAGE[::-1]
    results = []
    for mine, theirs in zip(fragments(), fragments(other)):
        results.append(reassembler.feed(1, 7, *mine))
        results.append(reassembler.feed(2, 7, *theirs))
    assert results == [None] * 4 + [MESSAGE, other]
    assert reassembler.dropped == 0


@pytest.mark.parametrize("order,dropped", [([0, 2, 1], 2), ([0, 0, 1, 2], 3), ([0, 1, 1, 2], 2)],
                         ids=["skip-ahead", "repeat-first", "repeat-middle"])
def test_out_of_order_fragment_drops_the_message(impl, order, dropped):
    """The out-of-order fragment drops the partial message; what follows of it
    no longer matches the bytes held (none) and is dropped too."""
    reassembler = impl.Reassembler()
    pieces = fragments()
    results = feed_all(reassembler, 1, 7, [pieces[i] for i in order])
    assert MESSAGE not in results
    assert reassembler.dropped == dropped


def test_message_whose_first_fragment_is_lost_never_completes(impl):
    reassembler = impl.Reassembler()
    assert feed_all(reassembler, 1, 7, fragments()[1:]) == [None, None]
    assert reassembler.dropped == 2


def test_new_msg_replaces_unfinished_message(impl):
    reassembler = impl.Reassembler()
    old, new = fragments(), fragments(MESSAGE[::-1])
    assert reassembler.feed(1, 7, *old[0]) is None
    assert reassembler.feed(1, 8, *new[0]) is None
    assert reassembler.dropped == 1
    assert reassembler.feed(1, 7, *old[1]) is None
    assert reassembler.dropped == 2
    assert feed_all(reassembler, 1, 8, new[1:]) == [None, MESSAGE[::-1]]
    assert reassembler.dropped == 2


def test_all_slots_busy_reuses_the_least_recently_fed(impl):
    reassembler = impl.Reassembler(slots=2)
    pieces = fragments()
    assert reassembler.feed(1, 7, *pieces[0]) is None
    assert reassembler.feed(2, 7, *pieces[0]) is None
    assert reassembler.feed(1, 7, *pieces[1]) is None  # peer 1 is now the more recent
    assert reassembler.feed(3, 7, *pieces[0]) is None
    assert reassembler.dropped == 1
    assert reassembler.feed(2, 7, *pieces[1]) is None
    assert reassembler.feed(1, 7, *pieces[2]) == MESSAGE
    assert feed_all(reassembler, 3, 7, pieces[1:]) == [None, MESSAGE]
    assert reassembler.dropped == 2


def test_single_fragment_message_while_all_slots_busy_takes_no_slot(impl):
    """A message whole in one fragment needs no slot: it must not evict another
    peer's partial message."""
    reassembler = impl.Reassembler(slots=1)
    pieces = fragments()
    assert reassembler.feed(1, 7, *pieces[0]) is None
    assert reassembler.feed(2, 9, 10, 0, b"0123456789") == b"0123456789"
    assert reassembler.dropped == 0
    assert feed_all(reassembler, 1, 7, pieces[1:]) == [None, MESSAGE]
    assert reassembler.dropped == 0


def test_completed_message_frees_its_slot(impl):
    reassembler = impl.Reassembler(slots=1)
    for peer in (1, 2, 3):
        assert feed_all(reassembler, peer, 7, fragments()) == [None, None, MESSAGE]
    assert reassembler.dropped == 0


def test_same_msg_again_after_completion_is_a_new_message(impl):
    reassembler = impl.Reassembler()
    assert feed_all(reassembler, 1, 7, fragments()) == [None, None, MESSAGE]
    assert feed_all(reassembler, 1, 7, fragments()) == [None, None, MESSAGE]
    assert reassembler.dropped == 0


def test_default_has_16_slots(impl):
    reassembler = impl.Reassembler()
    first = fragments()[0]
    for peer in range(1, 17):
        reassembler.feed(peer, 1, *first)
    assert reassembler.dropped == 0
    reassembler.feed(17, 1, *first)
    assert reassembler.dropped == 1


def test_fragment_disagreeing_on_total_length_drops_the_message(impl):
    reassembler = impl.Reassembler()
    total_len, offset, chunk = fragments()[1]
    assert reassembler.feed(1, 7, *fragments()[0]) is None
    assert reassembler.feed(1, 7, total_len + 1000, offset, chunk) is None
    assert reassembler.dropped == 1
    assert feed_all(reassembler, 1, 7, fragments()[2:]) == [None]
