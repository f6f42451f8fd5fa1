"""atheris target: the pure-Python wire format (dataplane/reference.py), and
the same calls on the Cython core (dataplane._core) compared with it where
the core is built.

`decode_datagram` on the input, `open_datagram` on the input for the three
ciphers with fixed test keys, and `seal_datagram` + `open_datagram` round
trips: only MalformedDatagram (a ValueError) may escape; the core must give
the same result or the same drop reason.

    python3 fuzz/fuzz_reference.py fuzz/corpus/reference -max_total_time=30
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

with atheris.instrument_imports(include=["dataplane"]):
    from dataplane import reference as ref

try:
    from dataplane import _core as core
except ImportError:   # not built: the reference alone
    core = None

KEYS = {
    ref.CIPHER_NONE: bytes(range(16)),
    ref.CIPHER_AES_256_GCM: bytes(range(32)),
    ref.CIPHER_CHACHA20_POLY1305: bytes(range(32, 64)),
}


def outcome(fn, *args):
    """('ok', value) or ('drop', reason); anything else escapes."""
    try:
        return ("ok", fn(*args))
    except ref.MalformedDatagram as exc:
        return ("drop", exc.reason)
    except ValueError as exc:
        if core is not None and isinstance(exc, core.MalformedDatagram):
            return ("drop", exc.reason)
        return ("value", type(exc).__name__)


def same(a, b, what, data):
    if a != b:
        raise AssertionError(f"{what}: reference {a!r} != core {b!r} on {data.hex()}")


def TestOneInput(data):
    got = outcome(ref.decode_datagram, data)
    if core is not None:
        theirs = outcome(core.decode_datagram, data)
        if got[0] == "ok" and theirs[0] == "ok":
            same(tuple(got[1]), tuple(theirs[1]), "decode_datagram", data)
        else:
            same(got, theirs, "decode_datagram", data)
    for cipher, key in KEYS.items():
        opened = outcome(ref.open_datagram, data, cipher, key)
        if core is not None:
            same(opened, outcome(core.open_datagram, data, cipher, key), "open_datagram", data)
        if len(data) >= ref.HEADER_LEN:
            sealed = ref.seal_datagram(data, cipher, key)
            if core is not None:
                same(sealed, core.seal_datagram(data, cipher, key), "seal_datagram", data)
            assert ref.open_datagram(sealed, cipher, key) == data


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
