# Counters of the forwarding threads: published once per batch, summed when
# Python asks. Drop reasons follow them, indexed by enum wf_drop (wire.h).

cdef enum:  # counters
    C_TAP_RX_FRAMES
    C_TAP_RX_BYTES
    C_TAP_TX_FRAMES
    C_TAP_TX_BYTES
    C_UDP_RX_DATAGRAMS
    C_UDP_RX_BYTES
    C_UDP_TX_DATAGRAMS
    C_UDP_TX_BYTES
    C_FLOODED_FRAMES
    C_RELAYED_DATAGRAMS
    C_SUPER_FRAMES_TX
    C_SUPER_FRAMES_RX
    C_CONTROL_RX
    C_TX_BATCHES
    C_RX_BATCHES
    C_GSO_FALLBACKS
    C_SOCKET_OVERFLOWS
    C_USO_COALESCED
    C_TSO_SEGMENTED
    C_TSO_COALESCED
    C_COUNT

COUNTER_NAMES = ("tap_rx_frames", "tap_rx_bytes", "tap_tx_frames", "tap_tx_bytes",
                 "udp_rx_datagrams", "udp_rx_bytes", "udp_tx_datagrams", "udp_tx_bytes",
                 "flooded_frames", "relayed_datagrams", "super_frames_tx", "super_frames_rx",
                 "control_rx", "tx_batches", "rx_batches", "gso_fallbacks",
                 "socket_overflows", "uso_coalesced", "tso_segmented", "tso_coalesced")

cdef enum:
    N_STATS = C_COUNT + WF_DROP_COUNT

# Index = enum wf_drop value.
DROP_REASONS = ("ok", "short", "bad_magic", "bad_version", "bad_type", "bad_length",
                "bad_fragment", "unknown_peer", "hop_limit", "hairpin", "no_peer",
                "no_route", "reassembly", "tap_write", "udp_send", "control_queue",
                "oversize", "bad_tag", "replayed", "unknown_key", "no_session")
