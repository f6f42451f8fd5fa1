# cython: language_level=3
"""weavefast's C-accelerated core.

One extension, one concern per included file:
  errors.pxi    errno -> Python exceptions, in one place
  ring.pxi      preallocated packet-buffer arena with headroom
  counters.pxi  counter and drop-reason names of the forwarding threads
  fdb.pxi       MAC forwarding table (over ext/includes/fdb.h) and reassembly
  tap.pxi       TAP device: open, offloads, batched reads and writes
  udp.pxi       UDP: datagram vectors per peer, sealed per datagram, for sendmmsg
  wire.pxi      encap/decap, seal/open and the replay window for Python callers
  pipeline.pxi  the Engine: forwarding threads running without the GIL
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset

from includes.system cimport *
from includes.wf cimport *

include "errors.pxi"
include "ring.pxi"
include "counters.pxi"
include "udp.pxi"
include "wire.pxi"
include "fdb.pxi"
include "tap.pxi"
include "pipeline.pxi"

if wf_aead_global_init():
    raise ImportError("this libcrypto has no AES-256-GCM or ChaCha20-Poly1305 (OpenSSL 3 is needed)")
