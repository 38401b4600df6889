r"""The sleeve: UDP datagram codec and the per-connection crypto session.

Theory of operation
-------------------
Frames travel between routers in UDP datagrams on the control port. Each datagram
carries a 20-byte header, which is also the AEAD associated data, then the body::

    datagram (big-endian)
    +--------+---------+-----------+----------------+----------------+----------------+
    | ver u8 | kind u8 | epoch u16 | conn_uid u64   | counter u64    | body ...       |
    |  = 1   |         |           |                |                | (+ tag 16)     |
    +--------+---------+-----------+----------------+----------------+----------------+
    kinds: DATA 1, HEARTBEAT 2, HEARTBEAT_ACK 3, PROBE 4, PROBE_ACK 5

    DATA body: one or more entries
    +----------------+----------------+----------+--------------+------------------+
    | src_peer u48   | dst_peer u48   | flags u8 | length u32   | frame (length)   |
    +----------------+----------------+----------+--------------+------------------+
    dst_peer 0 = flood along src_peer's broadcast tree; flags bit 0: the frame starts
    with a 10-byte virtio-net header (proto/ethernet.py); bit 1: relay only, do not deliver
    (the fast path's VXLAN delivered this broadcast to the hop already)

    HEARTBEAT / HEARTBEAT_ACK body                    PROBE / PROBE_ACK body
    +------------+---------+-----------+---------+----------+  +--------------+--------------+
    | sender u48 | uid u64 | nonce u64 | mtu u16 | flags u8 |  | probe_id u64 | zero padding |
    +------------+---------+-----------+---------+----------+  +--------------+--------------+
    heartbeat flags are the router's own (e.g. "I trust your subnet"); unknown bits are
    carried, not refused, so either end can add one without breaking the other

``conn_uid`` names the control connection the session belongs to, so the receiver finds
the session with ``peek`` whatever UDP address the datagram came from (NAT rebinding).

Encrypted sessions seal the body with the connection's AEAD, ChaCha20-Poly1305 or
AES-256-GCM (the handshake negotiates it, proto/handshake.py), under the key of the
sender's direction (from the handshake, separate from the control keys), nonce = 4 zero
bytes + counter u64 little-endian (both take a 12-byte nonce). A session without keys
(no password, or trusted subnets) sends the body in clear but keeps counters, epochs and
the replay window, so a duplicated datagram is still delivered at most once.

Rekeying, without any message exchange, with forward secrecy
------------------------------------------------------------
Each direction's keys form a one-way ratchet::

    key[0] = handshake key     key[e+1] = HKDF-Expand(SHA-256, key[e], "weft sleeve ratchet", 32)

The sender moves to epoch e+1 (counter back to 0) when the epoch is ``rekey_interval``
old, its counter reached ``rekey_after`` or it sealed ``REKEY_BYTES`` (AES-GCM's
per-key data limit, with a wide margin), and forgets key[e]: a later compromise of
the session reveals nothing sealed before. ``handle_timer`` does the same for an idle
sender, once: a key that sealed nothing is not rotated again (its clock restarts at the
next seal), so consecutive datagrams never differ by more than one epoch and a receiver
only has to catch up across epochs that were lost entirely. The receiver holds openers
for epochs e-1 and e, each with its own replay window::

        datagram epoch p, compared with our e (serial arithmetic mod 2**16)
        p == e-1  -> previous opener (reordered across the boundary; kept at most
                     rekey_interval after e started, then erased)
        p == e    -> current opener
        e < p <= e+MAX_EPOCH_SKIP -> derive key[p] from key[e]; only if the datagram
                     verifies under it: previous := p-1, current := p, e-1.. erased
        otherwise -> "stale epoch"

Derived-ahead keys are cached, so garbage claiming a future epoch costs one failed tag
check, not a KDF. Keys erased means dropped references (CPython cannot wipe bytes).

Drops
-----
``open`` raises ``SleeveDrop(reason)``, a RemoteProtocolError whose ``reason`` is one of
``DROP_REASONS``; the checks run cheapest first (length, version, connection, epoch,
replay window, then the tag) and the window is updated only after the tag verified.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .errors import LocalProtocolError, RemoteProtocolError
from .ethernet import ETH_HLEN, VNET_HDR_LEN
from .handshake import AEAD_AES, AEAD_CHACHA
from .replay import ReplayWindow

VERSION = 1
HEADER_LEN = 20
TAG_LEN = 16
KEY_LEN = 32
MAX_DATAGRAM = 65507                  # largest UDP payload over IPv4
EPOCH_MODULUS = 1 << 16
MAX_EPOCH_SKIP = 4                    # epochs a receiver may catch up in one step
COUNTER_LIMIT = (1 << 64) - 1         # never used as a nonce (as in proto/aead.py)
RATCHET_INFO = b"weft sleeve ratchet"
# Bytes one key seals at most (2**36 = 64 GiB, i.e. 2**32 AES blocks): far inside
# AES-GCM's confidentiality bound for 64 KiB messages; ChaCha20 keeps it for simplicity.
REKEY_BYTES = 1 << 36
AEADS: Mapping[str, type[ChaCha20Poly1305] | type[AESGCM]] = MappingProxyType(
    {AEAD_CHACHA: ChaCha20Poly1305, AEAD_AES: AESGCM})

FLAG_VNET = 1
FLAG_RELAY_ONLY = 2  # a broadcast the kernel VXLAN delivered to this hop already: relay only
_KNOWN_ENTRY_FLAGS = FLAG_VNET | FLAG_RELAY_ONLY
MAX_PEER = (1 << 48) - 1
MAX_FRAME = (1 << 32) - 1

DROP_REASONS = ("malformed", "authentication", "replay", "stale epoch", "wrong connection")


class Kind(enum.IntEnum):
    DATA = 1
    HEARTBEAT = 2
    HEARTBEAT_ACK = 3
    PROBE = 4
    PROBE_ACK = 5


_KINDS: tuple[Kind | None, ...] = (None, *Kind)
_KIND_END = len(_KINDS)

_HEADER = struct.Struct(">BBHQQ")
_NONCE = struct.Struct("<IQ")          # 4 zero bytes + counter u64 LE
_ENTRY = struct.Struct(">HIHIBI")      # src hi16 lo32, dst hi16 lo32, flags, length
_HEARTBEAT = struct.Struct(">HIQQHB")  # sender hi16 lo32, uid, nonce, mtu, flags
_PROBE = struct.Struct(">Q")
ENTRY_OVERHEAD = _ENTRY.size
HEARTBEAT_LEN = _HEARTBEAT.size
PROBE_MIN = _PROBE.size

assert _HEADER.size == HEADER_LEN


class SleeveDrop(RemoteProtocolError):
    """A datagram the session refused; ``reason`` is one of DROP_REASONS (for counters),
    ``detail`` says more for logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)

    @property
    def detail(self) -> str:
        return str(self.args[1])

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.args[1]}" if self.args[1] else str(self.args[0])


def max_body(encrypted: bool) -> int:
    """The largest body (all DATA entries with their headers) one datagram can carry."""
    return MAX_DATAGRAM - HEADER_LEN - (TAG_LEN if encrypted else 0)


def peek(datagram: bytes | bytearray | memoryview) -> tuple[Kind, int, int, int]:
    """(kind, epoch, conn_uid, counter) of a datagram, unauthenticated: only to find its
    session. Raises SleeveDrop("malformed") (a RemoteProtocolError)."""
    try:
        ver, kind, epoch, conn_uid, counter = _HEADER.unpack_from(datagram)
    except struct.error:
        raise SleeveDrop("malformed", f"datagram of {len(datagram)} bytes") from None
    if ver != VERSION:
        raise SleeveDrop("malformed", f"version {ver}")
    k = _KINDS[kind] if kind < len(_KINDS) else None
    if k is None:
        raise SleeveDrop("malformed", f"unknown kind {kind}")
    return k, epoch, conn_uid, counter


def ratchet(key: bytes) -> bytes:
    """The next epoch's key: HKDF-Expand(SHA-256, key, info=RATCHET_INFO, 32 bytes)."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=KEY_LEN, info=RATCHET_INFO).derive(key)


@dataclass(frozen=True, slots=True)
class SleeveStats:
    """A snapshot of one session's counters."""

    sealed: int
    opened: int
    sealed_bytes: int             # body bytes (plaintext) sealed
    opened_bytes: int             # body bytes delivered by open
    epoch_send: int
    epoch_recv: int
    rekeys_send: int
    rekeys_recv: int
    drops: Mapping[str, int]      # by reason, every reason of DROP_REASONS present


class _Epoch:
    """Receive state of one epoch: its key, cipher object and replay window."""

    __slots__ = ("key", "aead", "window", "started")

    def __init__(self, key: bytes | None, window: int, started: float,
                 cipher: type[ChaCha20Poly1305] | type[AESGCM] = ChaCha20Poly1305) -> None:
        self.key = key
        self.aead = cipher(key) if key is not None else None
        self.window = ReplayWindow(window)
        self.started = started


class SleeveSession:
    """Seals datagrams towards one peer and opens datagrams from it (one connection)."""

    __slots__ = (
        "conn_uid", "rekey_interval", "rekey_after", "cipher", "_cipher", "_window", "_max_body",
        "_send_key", "_send_aead", "_send_epoch", "_send_counter", "_send_started",
        "_send_bytes",
        "_cur", "_prev", "_recv_epoch", "_ahead",
        "_sealed", "_opened", "_sealed_bytes", "_opened_bytes", "_rekeys_send", "_rekeys_recv",
        "_drops",
    )

    def __init__(self, *, conn_uid: int, send_key: bytes | None, recv_key: bytes | None,
                 now: float, rekey_interval: float = 120.0, rekey_after: int = 2**32,
                 window: int = 8192, aead: str = AEAD_CHACHA) -> None:
        if aead not in AEADS:
            raise LocalProtocolError(f"unknown sleeve cipher {aead!r}")
        if (send_key is None) != (recv_key is None):
            raise LocalProtocolError("sleeve keys: give both or neither")
        for key in (send_key, recv_key):
            if key is not None and (not isinstance(key, bytes) or len(key) != KEY_LEN):
                raise LocalProtocolError(f"sleeve keys must be {KEY_LEN} bytes")
        if not 0 <= conn_uid < 1 << 64:
            raise LocalProtocolError(f"conn_uid {conn_uid} out of range")
        if not 1 <= rekey_after < COUNTER_LIMIT:
            raise LocalProtocolError(f"rekey_after {rekey_after} out of range")
        if not rekey_interval > 0:
            raise LocalProtocolError("rekey_interval must be positive")
        self.conn_uid = conn_uid
        self.rekey_interval = rekey_interval
        self.rekey_after = rekey_after
        # the AEAD's wire name (None without keys: nothing is sealed)
        self.cipher: str | None = aead if send_key is not None else None
        self._cipher = AEADS[aead]
        self._window = window
        self._max_body = max_body(send_key is not None)
        self._send_key = send_key
        self._send_aead = self._cipher(send_key) if send_key is not None else None
        self._send_epoch = 0
        self._send_counter = 0
        self._send_bytes = 0
        self._send_started = now
        self._cur = _Epoch(recv_key, window, now, self._cipher)
        self._prev: _Epoch | None = None
        self._recv_epoch = 0
        self._ahead: list[_Epoch] = []    # derived keys for epochs e+1, e+2, ... (lazily)
        self._sealed = self._opened = self._sealed_bytes = self._opened_bytes = 0
        self._rekeys_send = self._rekeys_recv = 0
        self._drops = dict.fromkeys(DROP_REASONS, 0)

    # -- properties ---------------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self._send_aead is not None

    @property
    def epoch_send(self) -> int:
        return self._send_epoch

    @property
    def epoch_recv(self) -> int:
        return self._recv_epoch

    @property
    def stats(self) -> SleeveStats:
        return SleeveStats(self._sealed, self._opened, self._sealed_bytes, self._opened_bytes,
                           self._send_epoch, self._recv_epoch, self._rekeys_send,
                           self._rekeys_recv, MappingProxyType(dict(self._drops)))

    # -- sending ------------------------------------------------------------------------

    def seal(self, kind: Kind, body: bytes | bytearray | memoryview,
             now: float) -> bytes | bytearray:
        """The whole datagram carrying ``body``; rekeys first when the epoch is due."""
        if self._send_counter >= self.rekey_after or self._send_bytes >= REKEY_BYTES or \
                now - self._send_started >= self.rekey_interval:
            if self._send_counter:
                self._rekey_send(now)
            else:
                # rotated while idle and not used since: this key is as fresh as a new one
                self._send_started = now
        n = len(body)
        if n > self._max_body:
            raise LocalProtocolError(f"sleeve body of {n} bytes exceeds one datagram")
        if not 1 <= kind <= 5:
            raise LocalProtocolError(f"unknown sleeve kind {kind}")
        counter = self._send_counter
        self._send_counter = counter + 1
        header = _HEADER.pack(VERSION, kind, self._send_epoch, self.conn_uid, counter)
        self._sealed += 1
        self._sealed_bytes += n
        self._send_bytes += n
        aead = self._send_aead
        if aead is None:
            return header + body
        # sealed in place behind the header: no second copy of a ~64 KiB message
        out = bytearray(HEADER_LEN + n + TAG_LEN)
        out[:HEADER_LEN] = header
        aead.encrypt_into(_NONCE.pack(0, counter), body, header, memoryview(out)[HEADER_LEN:])
        return out

    def _rekey_send(self, now: float) -> None:
        if self._send_key is not None:
            self._send_key = ratchet(self._send_key)   # the old key is no longer referenced
            self._send_aead = self._cipher(self._send_key)
        self._send_epoch = (self._send_epoch + 1) % EPOCH_MODULUS
        self._send_counter = 0
        self._send_bytes = 0
        self._send_started = now
        self._rekeys_send += 1

    # -- receiving ----------------------------------------------------------------------

    def _drop(self, reason: str, detail: str) -> SleeveDrop:
        self._drops[reason] += 1
        return SleeveDrop(reason, detail)

    def open(self, datagram: bytes | bytearray | memoryview,
             now: float) -> tuple[Kind, bytes | memoryview]:
        """(kind, body) of an authentic, fresh datagram of this connection, else raise
        SleeveDrop with the reason (counted in ``stats``). Without keys the body is a view
        into ``datagram`` (no copy): keep it no longer than the caller keeps that buffer."""
        try:
            ver, kind, epoch, conn_uid, counter = _HEADER.unpack_from(datagram)
        except struct.error:
            raise self._drop("malformed", f"datagram of {len(datagram)} bytes") from None
        if ver != VERSION or not 0 < kind < _KIND_END:
            raise self._drop("malformed", f"version {ver} kind {kind}")
        if conn_uid != self.conn_uid:
            raise self._drop("wrong connection", f"conn_uid {conn_uid:#x}")
        if counter >= COUNTER_LIMIT:
            raise self._drop("malformed", "counter out of range")
        if epoch == self._recv_epoch:
            slot = self._cur
            ahead = 0
        else:
            slot, ahead = self._other_epoch(epoch, now)
        window = slot.window
        if not window.check(counter):
            raise self._drop("replay", f"epoch {epoch} counter {counter}")
        aead = slot.aead
        body: bytes | memoryview
        if aead is None:
            body = memoryview(datagram)[HEADER_LEN:]
        else:
            if len(datagram) < HEADER_LEN + TAG_LEN:
                raise self._drop("malformed", "no room for the tag")
            view = memoryview(datagram)
            try:
                body = aead.decrypt(_NONCE.pack(0, counter), view[HEADER_LEN:],
                                    view[:HEADER_LEN])
            except InvalidTag:
                raise self._drop("authentication", f"epoch {epoch} counter {counter}") from None
        if ahead:
            self._advance(ahead, now)
        window.update(counter)
        self._opened += 1
        self._opened_bytes += len(body)
        return _KINDS[kind], body

    def _other_epoch(self, epoch: int, now: float) -> tuple[_Epoch, int]:
        """The receive state for a datagram not of the current epoch, and how many
        epochs ahead it is (0 for the previous one); raises "stale epoch"."""
        skip = (epoch - self._recv_epoch) % EPOCH_MODULUS
        if skip == EPOCH_MODULUS - 1:
            prev = self._prev
            if prev is not None and now - self._cur.started >= self.rekey_interval:
                self._prev = prev = None                 # nothing this late is honest
            if prev is not None:
                return prev, 0
        elif skip <= MAX_EPOCH_SKIP:
            return self._ahead_epoch(skip, now), skip
        raise self._drop("stale epoch", f"epoch {epoch}, ours {self._recv_epoch}")

    def _ahead_epoch(self, skip: int, now: float) -> _Epoch:
        """The receive state of epoch e+skip, deriving keys once per epoch."""
        ahead = self._ahead
        while len(ahead) < skip:
            base = ahead[-1].key if ahead else self._cur.key
            ahead.append(_Epoch(ratchet(base) if base is not None else None, self._window, now,
                                self._cipher))
        return ahead[skip - 1]

    def _advance(self, skip: int, now: float) -> None:
        """A datagram of epoch e+skip verified: it becomes current, its predecessor
        previous, and every older key is erased."""
        ahead = self._ahead
        if skip >= 2:
            self._prev = ahead[skip - 2]
        else:
            self._prev = self._cur
        self._cur = ahead[skip - 1]
        self._cur.started = now
        del ahead[:skip]
        self._recv_epoch = (self._recv_epoch + skip) % EPOCH_MODULUS
        self._rekeys_recv += skip

    # -- timers -------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has work: rotating a send key that sealed something, or
        erasing the previous receive key; None if neither is pending."""
        due = None
        if self._send_counter:
            due = self._send_started + self.rekey_interval
        if self._prev is not None:
            erase = self._cur.started + self.rekey_interval
            due = erase if due is None else min(due, erase)
        return due

    def handle_timer(self, now: float) -> None:
        """Erase keys that are due even when no traffic flows (forward secrecy). An idle
        sender rotates once, not once per interval: the key it moves to has sealed
        nothing, so the receiver never has to catch up more than one epoch."""
        # the same sums as get_timer's, so a timer that fired finds its work due
        if self._send_counter and now >= self._send_started + self.rekey_interval:
            self._rekey_send(now)
        if self._prev is not None and now >= self._cur.started + self.rekey_interval:
            self._prev = None


# -- DATA bodies ------------------------------------------------------------------------

def encode_entries(entries: Iterable[tuple[int, int, int, bytes | bytearray | memoryview]]
                   ) -> bytes:
    """The DATA body carrying ``(src_peer, dst_peer, flags, frame)`` entries in order."""
    pack = _ENTRY.pack
    parts: list[bytes | bytearray | memoryview] = []
    for src, dst, flags, frame in entries:
        n = len(frame)
        if not 0 < src <= MAX_PEER or not 0 <= dst <= MAX_PEER or src == dst:
            raise LocalProtocolError(f"bad sleeve entry peers {src:#x} -> {dst:#x}")
        if flags & ~_KNOWN_ENTRY_FLAGS or not 0 < n <= MAX_FRAME:
            raise LocalProtocolError(f"bad sleeve entry: flags {flags:#x}, {n} bytes")
        parts.append(pack(src >> 32, src & 0xFFFFFFFF, dst >> 32, dst & 0xFFFFFFFF, flags, n))
        parts.append(frame)
    if not parts:
        raise LocalProtocolError("a DATA body needs at least one entry")
    return b"".join(parts)


def decode_entries(body: bytes | bytearray | memoryview
                   ) -> list[tuple[int, int, int, memoryview]]:
    """Entries ``(src_peer, dst_peer, flags, frame)`` of a DATA body; the frames are
    views into ``body``. Strict: RemoteProtocolError on anything but a whole number of
    well-formed entries (each frame at least an Ethernet header, after the virtio-net
    header when flagged)."""
    view = memoryview(body)
    end = len(view)
    if end == 0:
        raise RemoteProtocolError("malformed: DATA without entries")
    unpack = _ENTRY.unpack_from
    out: list[tuple[int, int, int, memoryview]] = []
    pos = 0
    while pos < end:
        if end - pos < ENTRY_OVERHEAD:
            raise RemoteProtocolError("malformed: truncated entry header")
        sh, sl, dh, dl, flags, n = unpack(view, pos)
        src = (sh << 32) | sl
        dst = (dh << 32) | dl
        pos += ENTRY_OVERHEAD
        if src == 0 or src == dst:
            raise RemoteProtocolError(f"malformed: entry from {src:#x} to {dst:#x}")
        if flags & ~_KNOWN_ENTRY_FLAGS:
            raise RemoteProtocolError(f"malformed: unknown entry flags {flags:#x}")
        if n < (ETH_HLEN + VNET_HDR_LEN if flags & FLAG_VNET else ETH_HLEN):
            raise RemoteProtocolError(f"malformed: frame of {n} bytes")
        if n > end - pos:
            raise RemoteProtocolError("malformed: truncated frame")
        out.append((src, dst, flags, view[pos:pos + n]))
        pos += n
    return out


# -- HEARTBEAT / PROBE bodies ----------------------------------------------------------

class Heartbeat(NamedTuple):
    """A decoded HEARTBEAT / HEARTBEAT_ACK body."""

    sender: int
    uid: int
    nonce: int
    mtu: int
    flags: int = 0


def encode_heartbeat(sender: int, uid: int, nonce: int, mtu: int, flags: int = 0) -> bytes:
    try:
        if not 0 < sender <= MAX_PEER:
            raise struct.error("sender")
        return _HEARTBEAT.pack(sender >> 32, sender & 0xFFFFFFFF, uid, nonce, mtu, flags)
    except struct.error as exc:
        raise LocalProtocolError(f"heartbeat field out of range: {exc}") from None


def decode_heartbeat(body: bytes | bytearray | memoryview) -> Heartbeat:
    """The fields of a HEARTBEAT or HEARTBEAT_ACK body."""
    if len(body) != HEARTBEAT_LEN:
        raise RemoteProtocolError(f"malformed: heartbeat of {len(body)} bytes")
    sh, sl, uid, nonce, mtu, flags = _HEARTBEAT.unpack_from(body)
    sender = (sh << 32) | sl
    if sender == 0:
        raise RemoteProtocolError("malformed: heartbeat from peer 0")
    return Heartbeat(sender, uid, nonce, mtu, flags)


def encode_probe(probe_id: int, size: int) -> bytes:
    """A PROBE/PROBE_ACK body of exactly ``size`` bytes (path MTU discovery)."""
    if not PROBE_MIN <= size <= max_body(False):
        raise LocalProtocolError(f"probe size {size} out of range")
    if not 0 <= probe_id < 1 << 64:
        raise LocalProtocolError(f"probe id {probe_id} out of range")
    return _PROBE.pack(probe_id) + bytes(size - PROBE_MIN)


def decode_probe(body: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(probe_id, size) of a PROBE/PROBE_ACK body."""
    n = len(body)
    if n < PROBE_MIN:
        raise RemoteProtocolError(f"malformed: probe of {n} bytes")
    view = memoryview(body)
    if view[PROBE_MIN:] != bytes(n - PROBE_MIN):
        raise RemoteProtocolError("malformed: probe padding is not zero")
    (probe_id,) = _PROBE.unpack_from(view)
    return probe_id, n
