"""atheris target: the control-message decoder (dataplane/control/protocol.py).

What a peer, or anyone who reaches the TCP port before the handshake, can
make the router parse: the length-prefixed frame (`read_message`, and
`Channel.read` once sealed), the JSON object (`_parse`), the hello's identity
(`messages.check_hello_identity` and the other `messages.check_*`
validators) and the data-path
heartbeat (`decode_heartbeat`). Nothing but ProtocolError or HandshakeError
may escape (asyncio.IncompleteReadError at the end of a short stream);
decode_heartbeat raises nothing.

    python3 fuzz/fuzz_control.py fuzz/corpus/control -max_total_time=30
"""
import asyncio
import inspect
import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.setrecursionlimit(1000)   # what the router runs with: the default

with atheris.instrument_imports(include=["dataplane"]):
    from dataplane.control import messages, protocol

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

ALLOWED = (protocol.ProtocolError, protocol.HandshakeError)
KEY = bytes(range(32))
LOOP = asyncio.new_event_loop()

def checkers():
    found = []
    for name in sorted(dir(messages)):
        fn = getattr(messages, name)
        if name.startswith("check_") and callable(fn):
            found.append(fn)
    return found


CHECKERS = checkers()


def call_checker(fn, message):
    params = len(inspect.signature(fn).parameters)
    if params == 1:
        fn(message)
    else:
        for flag in (False, True):
            try:
                fn(message, flag)
            except ALLOWED:
                pass


async def read_stream(data, sealed):
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    channel = protocol.Channel(reader, None)
    if sealed:
        channel.secure(KEY, KEY)
    while True:
        await channel.read()


def sealed_frame(body):
    """A frame as a peer with the right control key sends it (message 0)."""
    length = protocol._LENGTH.pack(len(body) + 16)
    return length + ChaCha20Poly1305(KEY).encrypt(protocol._nonce(0), body, length)


def TestOneInput(data):
    # The data-path heartbeat: returns a tuple or None, never raises.
    protocol.decode_heartbeat(data)
    # A whole message body.
    try:
        message = protocol._parse(data)
    except ALLOWED:
        message = None
    if message is not None:
        for fn in CHECKERS:
            try:
                call_checker(fn, message)
            except ALLOWED:
                pass
    # The stream: cleartext (handshake) and sealed.
    for stream, sealed in ((data, False), (sealed_frame(data), True), (data, True)):
        try:
            LOOP.run_until_complete(read_stream(stream, sealed))
        except (asyncio.IncompleteReadError, *ALLOWED):
            pass


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
