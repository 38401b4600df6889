"""Error types of the pure core.

As in h11: misuse by our own code raises ``LocalProtocolError``; anything wrong with
bytes or behaviour of the remote side raises ``RemoteProtocolError``. Decoders of
untrusted bytes raise only ``RemoteProtocolError`` (fuzz harnesses check exactly that).
The message of either is a short human-readable reason, shown to users as is.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of both; ``reason`` is the one-line message shown to users."""

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class LocalProtocolError(ProtocolError):
    """Our own code used an object wrongly (a bug, or an invalid API/CLI argument)."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something malformed, oversized or not allowed now."""
