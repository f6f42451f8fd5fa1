"""A lossy underlay (issue 13): 10 % of the overlay's datagrams dropped, each on its
own. TCP still arrives intact, because the routers switch to segments mode (TCP
super-frames cut into MSS-sized segments, one datagram each) instead of losing a
whole 64 KB super-frame with any one of its ~44 fragments; a path clean again
goes back to fragments."""
import time

import pytest

pytestmark = pytest.mark.root

TRANSFER_BYTES = 4 << 20


def peer_status(tb, host):
    [peer] = tb.status(host)["peers"]
    return peer


@pytest.fixture
def tb(testbed_factory):
    with testbed_factory(hosts=2, containers_per_host=1, switch=True) as tb:
        tb.start_routers()
        yield tb


def test_tcp_through_ten_percent_loss_arrives_intact_in_segments_mode(tb):
    c1, c2 = tb.containers
    h1, h2 = tb.hosts
    assert peer_status(tb, h1)["segments"] == {"mode": "auto", "sending": "fragments", "loss_reported": False}
    tb.set_loss(10)

    result = tb.tcp_transfer(c1, c2, TRANSFER_BYTES, timeout=50)

    assert result.bytes_received == TRANSFER_BYTES and result.intact
    assert tb.loss_dropped() > 0, "the underlay dropped nothing"
    sender, receiver = peer_status(tb, h1), peer_status(tb, h2)
    # The receiver saw h1's datagrams go missing and told h1, which cut its
    # super-frames into segments from then on.
    assert receiver["counters"]["rx_lost_datagrams"] > 0, receiver
    assert sender["segments"]["sending"] == "segments", sender
    assert sender["counters"]["tx_segmented"] > 0, sender
    assert tb.status(h1)["counters"]["tso_segmented"] > 0
    assert tb.status(h2)["counters"]["tso_coalesced"] > 0

    # A clean path goes back to fragments once it has been clean for a while.
    tb.clear_loss()
    tb.wait_for(lambda: peer_status(tb, h1)["segments"]["sending"] == "fragments", timeout=20,
                what="h1 back to fragments")
    segmented = peer_status(tb, h1)["counters"]["tx_segmented"]
    assert tb.tcp_transfer(c1, c2, TRANSFER_BYTES).intact
    assert peer_status(tb, h1)["counters"]["tx_segmented"] == segmented
