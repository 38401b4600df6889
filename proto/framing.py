"""Framing of the TCP control stream, and the msgpack codec of messages.

Wire format of one frame::

    +-----------------+----------------------------+
    | length: u32 BE  | body: `length` bytes       |
    +-----------------+----------------------------+

The body is a msgpack document (handshake, or unencrypted control) or an AEAD
ciphertext of one (encrypted control). The decoder refuses a length over its cap
before buffering the body, so an absurd length prefix costs nothing.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from .errors import LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")
HANDSHAKE_MAX_FRAME = 4096
MESSAGE_MAX_FRAME = 16 * 1024 * 1024


def encode_frame(body: bytes, max_size: int = MESSAGE_MAX_FRAME) -> bytes:
    if len(body) > max_size:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the cap of {max_size}")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Feed bytes in any chunking; take complete frame bodies out, in order."""

    def __init__(self, max_size: int = MESSAGE_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        if len(self._buf) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buf)
        if length > self.max_size:
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds the cap of {self.max_size}"
            )
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return body

    def take_remaining(self) -> bytes:
        """Bytes buffered beyond the frames taken so far (handed on after a handshake)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    @property
    def buffered(self) -> int:
        return len(self._buf)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(body: bytes) -> Any:
    """Decode one msgpack document from untrusted bytes; only RemoteProtocolError escapes.

    msgpack's unpackb bounds every container and string by the input length, so a
    forged element count cannot make it allocate more than the frame already holds.
    """
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"malformed message: {type(exc).__name__}") from None
