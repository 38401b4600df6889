"""Peer names: 48-bit integers shown as MAC addresses (``ce:31:e0:06:45:1a``).

As in Weave, every router has a stable name (persisted in its data dir) and a
per-start random UID that tells a restarted router apart from its earlier self.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import LocalProtocolError

PeerName = int
NAME_BITS = 48
MAX_NAME = (1 << NAME_BITS) - 1
UID_BITS = 64

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def format_peer_name(name: PeerName) -> str:
    raw = name.to_bytes(6, "big")
    return ":".join(f"{b:02x}" for b in raw)


def parse_peer_name(text: str) -> PeerName:
    """Parse ``aa:bb:cc:dd:ee:ff``; raises LocalProtocolError with a one-line reason."""
    text = text.strip()
    if not _MAC.match(text):
        raise LocalProtocolError(f"invalid peer name {text!r}: expected a MAC like 0a:1b:2c:3d:4e:5f")
    name = int(text.replace(":", ""), 16)
    if name == 0:
        raise LocalProtocolError("invalid peer name 00:00:00:00:00:00")
    return name


def random_peer_name(random_bytes: Callable[[int], bytes]) -> PeerName:
    """A random locally administered unicast MAC (like Weave's random names)."""
    raw = bytearray(random_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return int.from_bytes(bytes(raw), "big")


def random_uid(random_bytes: Callable[[int], bytes]) -> int:
    return int.from_bytes(random_bytes(8), "big") or 1


def describe_peer(name: PeerName, nickname: str) -> str:
    """The ``name(nickname)`` form Weave's status uses."""
    return f"{format_peer_name(name)}({nickname})"
