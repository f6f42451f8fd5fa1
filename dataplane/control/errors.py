"""The errors of the control protocol, shared by the protocol and its validation."""


class ProtocolError(Exception):
    """The other side sent something that is not a valid message here."""


class HandshakeError(Exception):
    """The connection was refused; `by_peer` tells which side refused it,
    `itself` that the router reached its own listening port."""

    def __init__(self, reason, by_peer=False, itself=False):
        super().__init__(reason)
        self.reason = reason
        self.by_peer = by_peer
        self.itself = itself
