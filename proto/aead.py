"""Counter-nonce AEAD: one Sealer per sending direction, one Opener per receiving one.

Theory of operation
-------------------
Every key is used in exactly one direction, so a (key, counter) pair never repeats as
long as the counter only goes up. The nonce is the 64-bit counter behind four zero
bytes (RFC 8439's 96-bit nonce with a zero "sender id")::

    nonce (12 bytes)
    +----------------+--------------------------------------+
    | 00 00 00 00    | counter: u64 little-endian           |
    +----------------+--------------------------------------+

    sealed message
    +--------------------------------------+----------------+
    | ChaCha20 ciphertext (len(plaintext)) | Poly1305 tag 16|
    +--------------------------------------+----------------+

Two ways to pick the counter on the receiving side:

* implicit (``Opener.open``): the TCP control stream is ordered and lossless, so both
  ends count frames; a replayed, reordered, dropped or altered frame is opened under the
  wrong nonce and fails authentication. The counter is never on the wire.
* explicit (``Opener.open_at``): the UDP sleeve carries the counter in each datagram and
  keeps its own replay window; the opener itself stays stateless there.

Counter exhaustion: ``Sealer`` refuses to use 2**64-1 (LocalProtocolError: rekey by
reconnecting); an implicit ``Opener`` that reaches it treats any further frame as
remote misbehaviour, because an honest sealer never gets there.

Failure contract: opening untrusted bytes raises only RemoteProtocolError.
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import LocalProtocolError, RemoteProtocolError

KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
# The last usable counter is 2**64-2: the all-ones value is kept as the "exhausted" mark
# so a counter stored in 8 bytes can never silently wrap to 0.
COUNTER_LIMIT = (1 << 64) - 1

_NONCE_PREFIX = b"\x00\x00\x00\x00"
_COUNTER = struct.Struct("<Q")


def counter_nonce(counter: int) -> bytes:
    """The 12-byte nonce of ``counter`` (0 <= counter < COUNTER_LIMIT)."""
    return _NONCE_PREFIX + _COUNTER.pack(counter)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise LocalProtocolError(f"AEAD key must be {KEY_SIZE} bytes")
    return key


class Sealer:
    """Seals messages of one direction under consecutive counters, starting at ``counter``."""

    __slots__ = ("_aead", "_counter", "_key")

    def __init__(self, key: bytes, counter: int = 0) -> None:
        self._key = _check_key(key)
        self._aead = ChaCha20Poly1305(self._key)
        if not 0 <= counter <= COUNTER_LIMIT:
            raise LocalProtocolError(f"AEAD counter {counter} out of range")
        self._counter = counter

    @property
    def counter(self) -> int:
        """The counter the next ``seal`` will use (the sleeve puts it on the wire)."""
        return self._counter

    def seal(self, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        if self._counter >= COUNTER_LIMIT:
            raise LocalProtocolError("AEAD counter exhausted: reconnect to rekey")
        sealed = self._aead.encrypt(counter_nonce(self._counter), plaintext, associated_data)
        self._counter += 1
        return sealed

    def __deepcopy__(self, memo: dict[int, Any]) -> Sealer:
        # The cipher object cannot be copied; a simulator or fuzz harness snapshotting a
        # connection gets a fresh one over the same key and counter.
        return Sealer(self._key, self._counter)


class Opener:
    """Opens messages of one direction; ``what`` names them in the failure reason."""

    __slots__ = ("_aead", "_counter", "_key", "_what")

    def __init__(self, key: bytes, counter: int = 0, *, what: str = "message") -> None:
        self._key = _check_key(key)
        self._aead = ChaCha20Poly1305(self._key)
        if not 0 <= counter <= COUNTER_LIMIT:
            raise LocalProtocolError(f"AEAD counter {counter} out of range")
        self._counter = counter
        self._what = what

    @property
    def counter(self) -> int:
        """The counter the next implicit ``open`` expects."""
        return self._counter

    def _failure(self) -> RemoteProtocolError:
        return RemoteProtocolError(f"authentication failed: tampered or replayed {self._what}")

    def open(self, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Open the next message of an ordered stream; advance only on success."""
        plaintext = self.open_at(self._counter, sealed, associated_data)
        self._counter += 1
        return plaintext

    def open_at(self, counter: int, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Open a message that names its own counter (the sleeve's replay window decides
        whether the counter is fresh; this only checks authenticity)."""
        if type(counter) is not int or not 0 <= counter < COUNTER_LIMIT:
            raise self._failure()
        if len(sealed) < TAG_SIZE:
            raise self._failure()
        try:
            return self._aead.decrypt(counter_nonce(counter), sealed, associated_data)
        except InvalidTag:
            raise self._failure() from None

    def __deepcopy__(self, memo: dict[int, Any]) -> Opener:
        return Opener(self._key, self._counter, what=self._what)
