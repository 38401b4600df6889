r"""The punch family of UDP datagrams: hole-punching probes and the control stream over a
punched path, on the sleeve's own socket, told apart from sleeve datagrams by the first byte.

Wire format (big-endian)::

    +-----------+---------+--------------+------------------------+-----------+
    | fam u8    | kind u8 | session u64  | body ...               | tag (16)  |
    | = 2       |         |              |                        |           |
    +-----------+---------+--------------+------------------------+-----------+
    tag = HMAC-SHA256(key of the sender's direction, every byte before the tag)[:16]
    kinds: PROBE 1, PROBE_ACK 2, STREAM 3   (sleeve datagrams and fragments start with 1)

Keys. The two peers of a punch agree on a 32-byte random ``secret`` through the mesh: the
offer that carries it travels only on authenticated, encrypted control connections (hop by
hop), so only holders of the mesh password ever see it. Every datagram of the session is
authenticated under a key derived from it, one per purpose and direction, so a datagram
cannot be reflected back to its sender or moved from probing to the stream::

    key(label) = HKDF-Expand(SHA-256, secret, b"weft punch v1 " + label, 32)
    labels: b"probe i>r" b"probe r>i" b"stream i>r" b"stream r>i"    (i: the offerer)

The control connection that then runs over the stream does the usual SPAKE2 + X25519
handshake: the punch keys only keep strangers from steering probes or injecting segments.

``open_datagram`` checks the length, family, kind, session and tag, cheapest first, and
raises only ``RemoteProtocolError`` (reason in ``PUNCH_DROP_REASONS``).
"""

from __future__ import annotations

import enum
import hmac
import struct
from dataclasses import dataclass
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .errors import LocalProtocolError, RemoteProtocolError

FAMILY = 2
HEADER = struct.Struct(">BBQ")
HEADER_LEN = HEADER.size  # 10
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
SECRET_LEN = 32
MAX_SESSION = (1 << 64) - 1

PUNCH_DROP_REASONS = ("malformed", "unknown session", "authentication")


class PunchKind(enum.IntEnum):
    PROBE = 1
    PROBE_ACK = 2
    STREAM = 3


class PunchDrop(RemoteProtocolError):
    """A punch datagram refused; ``reason`` is one of PUNCH_DROP_REASONS."""


@dataclass(frozen=True, slots=True)
class PunchKeys:
    """One direction's keys: what we seal with (send) and what the peer seals with (recv)."""

    probe_send: bytes
    probe_recv: bytes
    stream_send: bytes
    stream_recv: bytes


def _expand(secret: bytes, label: bytes) -> bytes:
    return HKDFExpand(hashes.SHA256(), 32, b"weft punch v1 " + label).derive(secret)


def derive_keys(secret: bytes, *, initiator: bool) -> PunchKeys:
    """The keys of one end of a session (``initiator``: the end that sent the offer)."""
    if len(secret) != SECRET_LEN:
        raise LocalProtocolError(f"a punch secret is {SECRET_LEN} bytes")
    pi, pr = _expand(secret, b"probe i>r"), _expand(secret, b"probe r>i")
    si, sr = _expand(secret, b"stream i>r"), _expand(secret, b"stream r>i")
    if initiator:
        return PunchKeys(probe_send=pi, probe_recv=pr, stream_send=si, stream_recv=sr)
    return PunchKeys(probe_send=pr, probe_recv=pi, stream_send=sr, stream_recv=si)


def is_punch(datagram: bytes | bytearray | memoryview) -> bool:
    return len(datagram) >= 1 and datagram[0] == FAMILY


def seal_datagram(kind: PunchKind, session: int, body: bytes | bytearray | memoryview,
                  key: bytes) -> bytes:
    if not 0 <= session <= MAX_SESSION:
        raise LocalProtocolError("punch session id out of range")
    msg = HEADER.pack(FAMILY, int(kind), session) + bytes(body)
    return msg + hmac.new(key, msg, sha256).digest()[:TAG_LEN]


def peek_datagram(datagram: bytes | bytearray | memoryview) -> tuple[PunchKind, int]:
    """Kind and session of a punch datagram, unauthenticated (to find the key)."""
    if len(datagram) < OVERHEAD:
        raise PunchDrop("malformed", "shorter than a punch header and tag")
    fam, kind, session = HEADER.unpack_from(datagram)
    if fam != FAMILY or kind not in PunchKind._value2member_map_:
        raise PunchDrop("malformed", "not a punch datagram")
    return PunchKind(kind), session


def open_datagram(datagram: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """The body of an authentic datagram (sealed under ``key``); PunchDrop otherwise."""
    peek_datagram(datagram)
    data = bytes(datagram)
    msg, tag = data[:-TAG_LEN], data[-TAG_LEN:]
    if not hmac.compare_digest(hmac.new(key, msg, sha256).digest()[:TAG_LEN], tag):
        raise PunchDrop("authentication", "tag does not verify")
    return msg[HEADER_LEN:]
