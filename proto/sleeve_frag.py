"""Sleeve fragments: one sealed message carried by several UDP datagrams.

Why: a sealed super-frame is up to ~64 KiB. Sent as one UDP datagram, the kernel cuts it
into ~45 IP fragments, and each goes through the whole stack on its own: on this machine
that costs ~190 us per 60 KB. Cut by us into datagrams of the path's size and handed to
the kernel in one ``sendmsg`` with ``UDP_SEGMENT``, the same bytes travel as one GSO packet
wherever the path allows (veth, bridges) and arrive, with ``UDP_GRO``, as one read: ~40 us.
On a real wire they are ordinary datagrams, each within the path MTU.

Layout. ``fragment(message, seg_size, msg_id)`` returns one buffer of equal segments of
``seg_size`` bytes (the last may be shorter), exactly what ``UDP_SEGMENT`` splits::

    segment = ver u8 (=1) | kind u8 (=FRAGMENT, 6) | index u8 | count u8 | msg_id u32 | chunk

The message itself (a sealed sleeve datagram: header, ciphertext, tag) is authenticated as a
whole after reassembly; the fragment header is not. A forged or lost fragment therefore
costs at most the message it claims to belong to: pending reassemblies are bounded in number
and in age, and a fragment that contradicts what is pending (another count, an index seen
twice with other bytes) restarts that message rather than mixing bytes.

Loss: a sender numbers its messages in order, so when one completes, any message of the same
sender with an earlier id still pending lost a fragment on the way (the path does not
reorder whole messages; one that does costs a needless "loss"). Those are dropped and
counted per sender, as are reassemblies that time out: ``take_lost`` hands the counts to
the shell, which tells each sender (proto/link.py ``note_loss``).

Parity (a sender told of loss, ``fragment(..., parity=True)``): the buffer starts with one
more segment, kind PARITY, whose chunk is the XOR of the message's full-size chunks (all
but a shorter last one), so any one of those lost on the way is rebuilt from the others:
at 1% loss per datagram a message of 9 fragments is lost 8.6% of the time without, ~1.4%
with (its short last fragment, or two of ten). A rebuilt message is counted in
``recovered`` (``take_recovered``): its sender keeps hearing of the loss, and so keeps
sending parity, while nothing is lost.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import RemoteProtocolError
from .ethernet import seq_after

VERSION = 1
FRAGMENT = 6
PARITY = 7  # XOR of a message's full-size chunks; index 0, count of the message's fragments
HEADER = struct.Struct(">BBBBI")
HEADER_LEN = HEADER.size  # 8
MAX_FRAGMENTS = 64  # UDP_SEGMENT's limit per call
MIN_SEGMENT = HEADER_LEN + 64
MAX_PENDING = 256
TIMEOUT = 2.0


def is_fragment(datagram: bytes | bytearray | memoryview) -> bool:
    """A fragment or a parity fragment (the reassembler's business)."""
    return len(datagram) >= 2 and datagram[0] == VERSION and datagram[1] in (FRAGMENT, PARITY)


def _xor(chunks: Iterable[bytes], size: int) -> bytes:
    acc = 0
    for c in chunks:
        acc ^= int.from_bytes(c, "little")
    return acc.to_bytes(size, "little")


def fragment_count(length: int, seg_size: int) -> int:
    chunk = seg_size - HEADER_LEN
    return -(-length // chunk)


def max_message(seg_size: int) -> int:
    """The largest message ``fragment`` can carry in one call with this segment size."""
    return min(MAX_FRAGMENTS * (seg_size - HEADER_LEN), 65507 - MAX_FRAGMENTS * HEADER_LEN)


# Cutting and joining with one struct call each, not a Python step per fragment (a 59 KB
# message: ~17 -> ~7 us to cut, ~19 -> ~5 us to join, measured side by side).
_CUTTERS: dict[tuple[int, int, int], tuple[struct.Struct, struct.Struct, list[Any]]] = {}
_JOINERS: dict[tuple[int, int], struct.Struct] = {}
_CACHE_MAX = 512  # (full fragments, count, chunk) of paths in use: a handful in practice


def _cutter(full: int, count: int, chunk: int) -> tuple[struct.Struct, struct.Struct, list[Any]]:
    """Structs that split ``full`` chunks off a message and pack them behind their headers,
    and the arguments (headers' fields; msg_id and chunks still to fill in)."""
    key = (full, count, chunk)
    cut = _CUTTERS.get(key)
    if cut is None:
        if len(_CUTTERS) >= _CACHE_MAX:
            _CUTTERS.clear()
        args: list[Any] = []
        for i in range(full):
            args += [VERSION, FRAGMENT, i, count, 0, b""]
        cut = _CUTTERS[key] = (struct.Struct(">" + f"BBBBI{chunk}s" * full),
                               struct.Struct(f"{chunk}s" * full), args)
    return cut


def fragment(message: bytes | bytearray | memoryview, seg_size: int, msg_id: int, *,
             parity: bool = False) -> bytes:
    """The message as one buffer of ``seg_size`` segments, each led by a fragment header;
    with ``parity``, led by a PARITY segment over its full-size chunks."""
    if seg_size < MIN_SEGMENT:
        raise ValueError(f"segment size {seg_size} below {MIN_SEGMENT}")
    chunk = seg_size - HEADER_LEN
    n = len(message)
    count = -(-n // chunk)
    if not 1 <= count <= MAX_FRAGMENTS:
        raise ValueError(f"a message of {n} bytes needs {count} fragments of {seg_size}")
    msg_id &= 0xFFFFFFFF
    full = n // chunk
    whole, split, template = _cutter(full, count, chunk)
    args = template.copy()
    args[4::6] = [msg_id] * full
    chunks = split.unpack_from(message)
    args[5::6] = chunks
    body = whole.pack(*args)
    head = b""
    if parity and full:
        head = HEADER.pack(VERSION, PARITY, 0, count, msg_id) + _xor(chunks, chunk)
    if full == count:
        return head + body if head else body
    return b"".join((head, body, HEADER.pack(VERSION, FRAGMENT, full, count, msg_id),
                     memoryview(message)[full * chunk:]))


def _join(view: memoryview, seg: int) -> bytes:
    """The chunks of consecutive fragments (``seg`` bytes each but maybe the last, which
    has more than its header), joined."""
    full, rest = divmod(len(view), seg)
    joiner = _JOINERS.get((full, seg))
    if joiner is None:
        if len(_JOINERS) >= _CACHE_MAX:
            _JOINERS.clear()
        joiner = _JOINERS[(full, seg)] = struct.Struct(f"{HEADER_LEN}x{seg - HEADER_LEN}s" * full)
    parts = joiner.unpack_from(view)
    if rest > HEADER_LEN:
        return b"".join((*parts, view[full * seg + HEADER_LEN:]))
    return b"".join(parts)


@dataclass(slots=True)
class _Pending:
    count: int
    started: float
    parts: list[bytes | None]
    got: int = 0
    parity: bytes | None = None

    def rebuilt(self) -> bytes | None:
        """The message, if exactly one full-size chunk is missing, the parity came, and the
        last fragment too (so the missing one is lost, not late)."""
        parts, parity = self.parts, self.parity
        if parity is None or self.got != self.count - 1 or parts[-1] is None:
            return None
        size = len(parity)
        missing = parts.index(None)
        others = [p for i, p in enumerate(parts) if i != missing and p is not None]
        if len(others[-1]) < size:  # the short last chunk is not in the parity
            others.pop()
        if any(len(p) != size for p in others):
            return None  # chunks of another size than the parity's: not this message's
        parts[missing] = _xor([parity, *others], size)
        return b"".join(p for p in parts if p is not None)


class Reassembler:
    """Puts messages back together from fragments, keyed by ``(sender key, msg_id)``."""

    def __init__(self, *, max_pending: int = MAX_PENDING, timeout: float = TIMEOUT) -> None:
        self.max_pending = max_pending
        self.timeout = timeout
        self._pending: OrderedDict[tuple[Hashable, int], _Pending] = OrderedDict()
        self.completed = 0
        self.expired = 0
        self.evicted = 0
        self.restarted = 0
        self.malformed = 0
        self.lost: dict[Hashable, int] = {}  # sender -> messages lost since take_lost
        self.recovered: dict[Hashable, int] = {}  # sender -> rebuilt from parity, likewise

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, sender: Hashable, datagram: bytes | bytearray | memoryview,
            now: float) -> bytes | None:
        """Take one fragment; the whole message once its last fragment arrived.
        RemoteProtocolError("malformed: ...") for a fragment that cannot be one."""
        if len(datagram) <= HEADER_LEN:
            raise RemoteProtocolError("malformed: fragment without payload")
        ver, kind, index, count, msg_id = HEADER.unpack_from(datagram)
        if ver != VERSION or kind not in (FRAGMENT, PARITY):
            raise RemoteProtocolError("malformed: not a fragment")
        if count < 2 or count > MAX_FRAGMENTS or index >= count:
            raise RemoteProtocolError(f"malformed: fragment {index} of {count}")
        chunk = bytes(datagram[HEADER_LEN:])
        key = (sender, msg_id)
        entry = self._pending.get(key)
        known = None if entry is None else entry.parity if kind == PARITY else entry.parts[index]
        if entry is not None and (entry.count != count or now - entry.started > self.timeout or (
                known is not None and known != chunk)):
            del self._pending[key]  # a new message reusing the id, or a contradiction
            self.restarted += 1
            entry = None
        if entry is None:
            if len(self._pending) >= self.max_pending:
                self._pending.popitem(last=False)
                self.evicted += 1
            entry = self._pending[key] = _Pending(count, now, [None] * count)
        if kind == PARITY:
            entry.parity = chunk
        elif entry.parts[index] is None:
            entry.parts[index] = chunk
            entry.got += 1
        if entry.got < count:
            message = entry.rebuilt()
            if message is None:
                return None
            self.recovered[sender] = self.recovered.get(sender, 0) + 1
        else:
            message = b"".join(p for p in entry.parts if p is not None)
        del self._pending[key]
        self.completed += 1
        if self._pending:
            self._older_lost(sender, msg_id)
        return message

    def _older_lost(self, sender: Hashable, msg_id: int) -> None:
        """Message ``msg_id`` of ``sender`` completed: its earlier ones still pending are lost."""
        gone = [key for key in self._pending
                if key[0] == sender and seq_after(msg_id, key[1])]
        for key in gone:
            del self._pending[key]
        if gone:
            self.lost[sender] = self.lost.get(sender, 0) + len(gone)

    def take_lost(self) -> dict[Hashable, int]:
        """Messages lost per sender since the last call."""
        lost, self.lost = self.lost, {}
        return lost

    def take_recovered(self) -> dict[Hashable, int]:
        """Messages rebuilt from parity per sender since the last call."""
        recovered, self.recovered = self.recovered, {}
        return recovered

    def add_batch(self, sender: Hashable, view: memoryview, seg: int,
                  now: float) -> list[memoryview | bytes]:
        """A GRO read: consecutive datagrams of ``seg`` bytes (the last may be shorter).
        Returns, in order, the datagrams that are not fragments and the messages completed.

        Fast path: a message whose fragments all sit in this read, in order, is joined
        straight from the buffer, checking the headers of its first and last fragment only:
        the message is authenticated as a whole afterwards, so a forged middle fragment
        costs that message and nothing else. Anything else goes through ``add``.
        Malformed fragments are skipped and counted in ``malformed``.
        """
        out: list[memoryview | bytes] = []
        n = len(view)
        off = 0
        unpack = HEADER.unpack_from
        while off < n:
            end = min(off + seg, n)
            if view[off] != VERSION or end - off < 2 or view[off + 1] not in (FRAGMENT, PARITY):
                out.append(view[off:end])
                off = end
                continue
            if end - off > HEADER_LEN and view[off + 1] == FRAGMENT:
                _v, _k, index, count, msg_id = unpack(view, off)
                last = off + (count - 1) * seg
                if index == 0 and 2 <= count <= MAX_FRAGMENTS and last + HEADER_LEN < n:
                    lv, lk, lindex, lcount, lmsg = unpack(view, last)
                    pending = self._pending.get((sender, msg_id))
                    if (lv, lk, lindex, lcount, lmsg) == (VERSION, FRAGMENT, count - 1, count,
                                                         msg_id) and (
                            pending is None or pending.got == 0):  # none, or its parity only
                        stop = min(last + seg, n)
                        out.append(_join(view[off:stop], seg))
                        self._pending.pop((sender, msg_id), None)  # its parity, if it came
                        self.completed += 1
                        if self._pending:
                            self._older_lost(sender, msg_id)
                        off = stop
                        continue
            try:
                message = self.add(sender, view[off:end], now)
            except RemoteProtocolError:
                self.malformed += 1
            else:
                if message is not None:
                    out.append(message)
            off = end
        return out

    def expire(self, now: float) -> int:
        """Drop reassemblies older than the timeout; how many."""
        n = 0
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if now - entry.started <= self.timeout:
                break
            del self._pending[key]
            self.lost[key[0]] = self.lost.get(key[0], 0) + 1
            n += 1
        self.expired += n
        return n
