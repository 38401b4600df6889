"""Messages carried on an established control connection, and their codec.

Each message is one msgpack array whose first element is its type::

    [0]                                       Heartbeat
    [1, channel, kind, src, dst, payload]     Gossip (kind: GossipKind; dst 0 unless unicast)
    [2, reason]                               Goodbye (the sender is closing, and why)
    [3, body]                                 Rekey (a frame body of a new handshake run on
                                              the established connection: proto/connection.py)
    [4]                                       KeySwitch (every later frame from the sender is
                                              sealed with the keys of that new handshake)

Decoding validates every field's type and range and raises only RemoteProtocolError.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .errors import RemoteProtocolError
from .framing import pack, unpack
from .peername import MAX_NAME, PeerName

MAX_CHANNEL_LEN = 64
MAX_REASON_LEN = 512


class GossipKind(enum.IntEnum):
    PERIODIC = 1   # complete state (or its digest), to a random subset of neighbours
    BROADCAST = 2  # relayed along the source's broadcast tree
    UNICAST = 3    # relayed hop by hop to `dst`
    DELTA = 4      # news merged from a neighbour, passed on to our other neighbours
    DIGEST = 5     # a summary of our state; a neighbour that differs answers with PERIODIC


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Gossip:
    channel: str
    kind: GossipKind
    src: PeerName
    dst: PeerName
    payload: bytes


@dataclass(frozen=True, slots=True)
class Goodbye:
    reason: str


@dataclass(frozen=True, slots=True)
class Rekey:
    body: bytes


@dataclass(frozen=True, slots=True)
class KeySwitch:
    pass


Message = Heartbeat | Gossip | Goodbye | Rekey | KeySwitch

MAX_REKEY_BODY = 4096  # a handshake frame (proto/framing.py HANDSHAKE_MAX_FRAME)


def encode_message(msg: Message) -> bytes:
    if isinstance(msg, Heartbeat):
        return pack([0])
    if isinstance(msg, Gossip):
        return pack([1, msg.channel, int(msg.kind), msg.src, msg.dst, msg.payload])
    if isinstance(msg, Rekey):
        return pack([3, msg.body])
    if isinstance(msg, KeySwitch):
        return pack([4])
    return pack([2, msg.reason[:MAX_REASON_LEN]])


def _name(value: Any, allow_zero: bool = False) -> PeerName:
    if type(value) is not int or not (0 if allow_zero else 1) <= value <= MAX_NAME:
        raise RemoteProtocolError("malformed message: bad peer name")
    return value


def decode_message(body: bytes) -> Message:
    obj = unpack(body)
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("malformed message: not a typed array")
    tag = obj[0]
    if tag == 0 and len(obj) == 1:
        return Heartbeat()
    if tag == 1 and len(obj) == 6:
        _, channel, kind, src, dst, payload = obj
        if not isinstance(channel, str) or not 0 < len(channel) <= MAX_CHANNEL_LEN:
            raise RemoteProtocolError("malformed message: bad channel")
        if type(kind) is not int or kind not in GossipKind._value2member_map_:
            raise RemoteProtocolError("malformed message: bad gossip kind")
        if not isinstance(payload, bytes):
            raise RemoteProtocolError("malformed message: payload is not bytes")
        return Gossip(channel, GossipKind(kind), _name(src), _name(dst, allow_zero=True), payload)
    if tag == 2 and len(obj) == 2 and isinstance(obj[1], str):
        return Goodbye(obj[1][:MAX_REASON_LEN])
    if tag == 3 and len(obj) == 2 and isinstance(obj[1], bytes) \
            and len(obj[1]) <= MAX_REKEY_BODY:
        return Rekey(obj[1])
    if tag == 4 and len(obj) == 1:
        return KeySwitch()
    raise RemoteProtocolError(f"malformed message: unknown type {tag} or wrong arity")
