"""The handshake's key schedule (dataplane/control/protocol.py): HKDF as RFC 5869
specifies it, both ends deriving matching keys, and keys that change with
everything they are supposed to depend on. A handshake between two real
Channels over a socket pair checks the whole exchange, both ciphers' choice
and the refusals."""
import asyncio
import hashlib
import hmac
import socket

import pytest

from dataplane.control import protocol


def test_hkdf_matches_rfc5869_test_case_1():
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = protocol._hkdf(salt, ikm, info, 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_hkdf_is_extract_then_expand_with_hmac_sha256():
    """An independent HKDF written from RFC 5869 with hmac, for other inputs."""
    def hkdf(salt, ikm, info, length):
        prk = hmac.new(salt, ikm, hashlib.sha256).digest()
        okm, block = b"", b""
        for counter in range(1, -(-length // 32) + 1):
            block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
            okm += block
        return okm[:length]
    for salt, ikm, info in ((bytes(32), b"k" * 32, b"weavefast v2 session"), (b"s" * 32, b"x" * 32, b"")):
        assert protocol._hkdf(salt, ikm, info, 224) == hkdf(salt, ikm, info, 224)


def test_session_keys_are_distinct_and_bound_to_the_secret_the_exchange_and_the_transcript():
    shared, transcript = b"d" * 32, protocol.transcript_hash(b'{"a":1}', b'{"b":2}')
    keys = protocol.session_keys(protocol.network_psk(b"secret"), shared, transcript)
    assert len(set(keys.values())) == len(keys) == 8
    assert {len(v) for k, v in keys.items() if not k.startswith("token")} == {32}
    for other in (protocol.session_keys(protocol.network_psk(b"Secret"), shared, transcript),
                  protocol.session_keys(protocol.network_psk(None), shared, transcript),
                  protocol.session_keys(protocol.network_psk(b"secret"), b"e" * 32, transcript),
                  protocol.session_keys(protocol.network_psk(b"secret"), shared,
                                        protocol.transcript_hash(b'{"a":1}', b'{"b":3}'))):
        assert not set(other.values()) & set(keys.values())


def test_transcript_hash_frames_each_hello():
    """Moving bytes from one hello to the other changes the transcript."""
    assert protocol.transcript_hash(b"ab", b"c") != protocol.transcript_hash(b"a", b"bc")
    assert protocol.transcript_hash(b"a", b"b") != protocol.transcript_hash(b"b", b"a")


def test_rekeyed_keys_mirror_between_the_sides_and_change_per_epoch():
    psk, shared, transcript = protocol.network_psk(b"s"), b"r" * 32, b"t" * 32
    for cipher, size in (("aes-256-gcm", 32), ("chacha20-poly1305", 32), ("none", 16)):
        client = protocol.rekey_keys(psk, shared, transcript, 3, cipher, client=True)
        server = protocol.rekey_keys(psk, shared, transcript, 3, cipher, client=False)
        assert (client.send, client.receive) == (server.receive, server.send)
        assert len(client.send) == size and client.send != client.receive
        assert protocol.rekey_keys(psk, shared, transcript, 4, cipher, client=True).send != client.send
    assert "DataKeys(aes-256-gcm)" == repr(protocol.rekey_keys(psk, shared, transcript, 1, "aes-256-gcm", True))


def test_cipher_choice():
    aes, chacha = "aes-256-gcm", "chacha20-poly1305"
    assert protocol.choose_cipher([aes, chacha], [aes, chacha]) == aes
    assert protocol.choose_cipher([aes, chacha], [chacha, aes]) == chacha
    assert protocol.choose_cipher([chacha], [aes, chacha]) == chacha
    assert protocol.choose_cipher([aes], [aes, chacha]) == aes
    assert protocol.choose_cipher([aes], [chacha]) is None
    assert protocol.choose_cipher(["rot13"], ["rot13"]) is None


def handshake_pair(client_secret, server_secret, client_ciphers=None, server_ciphers=None):
    """Runs both ends of a handshake over a socket pair; returns (client, server)
    results, each a Handshake or the exception raised."""
    async def run():
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        client = protocol.handshake(protocol.Channel(ra, wa), protocol.Identity("c", 1, 6783, "aa" * 8),
                                    client_secret, True, ciphers=client_ciphers)
        server = protocol.handshake(protocol.Channel(rb, wb), protocol.Identity("s", 2, 6783, "bb" * 8),
                                    server_secret, False, ciphers=server_ciphers)
        try:
            return await asyncio.wait_for(asyncio.gather(client, server, return_exceptions=True), 5)
        finally:
            wa.close()
            wb.close()
    return asyncio.run(run())


@pytest.mark.parametrize("secret, ciphers, cipher", [
    (b"k", None, None), (b"k", ["chacha20-poly1305"], "chacha20-poly1305"), (None, None, "none")])
def test_both_ends_derive_mirrored_keys(secret, ciphers, cipher):
    client, server = handshake_pair(secret, secret, ciphers, None)
    assert isinstance(client, protocol.Handshake) and isinstance(server, protocol.Handshake), (client, server)
    assert client.cipher == server.cipher == (cipher or protocol.preferred_ciphers()[0])
    assert client.data.send == server.data.receive and client.data.receive == server.data.send
    assert client.transcript == server.transcript and client.psk == server.psk
    assert (client.identity.name, server.identity.name) == ("s", "c")


def test_a_wrong_secret_derives_nothing_and_is_refused():
    client, server = handshake_pair(b"right", b"wrong")
    assert isinstance(server, protocol.HandshakeError)
    assert server.reason == ("wrong network secret: c (peer id 1) failed authentication "
                             "(its --password/--key-file differs from s's)")
    assert isinstance(client, protocol.HandshakeError) and client.by_peer


def test_no_common_cipher_is_refused_naming_both_offers():
    client, server = handshake_pair(b"k", b"k", ["aes-256-gcm"], ["chacha20-poly1305"])
    refused = client if isinstance(client, protocol.HandshakeError) and not client.by_peer else server
    assert "no common cipher" in refused.reason and "(--cipher)" in refused.reason
