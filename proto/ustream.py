r"""A reliable, ordered byte stream over an unreliable datagram path (sans-IO).

Theory of operation
-------------------
Two routers that reach each other only over a punched UDP path (proto/punchwire.py) run
their ordinary control Connection (proto/connection.py) over this stream. It is TCP in
miniature, carried in punch datagrams of kind STREAM and authenticated under the session's
stream keys. Like aioquic it has three inputs and three outputs, all with ``now``::

    send(data, now)               ─┐                        ┌─▶ datagrams_to_send(now)
    receive_datagram(d, now)      ─┼──▶  DatagramStream  ───┼─▶ read()
    handle_timer(now), close(now) ─┘                        └─▶ get_timer(), failed

Wire format: the body of a STREAM punch datagram (big-endian, 21 bytes and a payload)::

    +------------+------------+---------------+----------+-----------------------+
    | seq u64    | ack u64    | window u32    | flags u8 | payload (<= mss)      |
    +------------+------------+---------------+----------+-----------------------+
    seq:    stream offset of the payload's first byte (of nothing, in an ack-only segment)
    ack:    the next offset the sender expects (everything before it arrived)
    window: bytes the sender can still buffer beyond ack (its right edge is ack + window)
    flags:  HOLE (1): the sender holds bytes beyond ack (a duplicate ack means loss);
            other bits are reserved: sent 0, ignored

Offsets start at 0 in each direction: every session has fresh keys, so a segment of
another session fails authentication instead of landing at a plausible offset.

Sending. ``send`` queues bytes (at most MAX_BUFFERED queued and unacknowledged); each is
cut once into segments of at most ``mss`` bytes, remembered until acknowledged and resent
unchanged. At most SEND_WINDOW_SEGMENTS segments are in flight and none beyond the peer's
right edge (window probe: when nothing is in flight, what fits or else one byte; the peer
trims it and acks with its window, the retransmission timer paces the probes, and a window
that opens resends the probe at once). The retransmission timer follows RFC 6298 (srtt,
rttvar, RTO = srtt + 4 rttvar in [MIN_RTO, MAX_RTO], INITIAL_RTO before a sample, doubling
per expiry until a new sample). A sample is the age of the newest segment an ack covers,
taken only if it was sent once (Karn) and after every resend the ack covers (else it may
have waited at the peer for a hole). Loss recovery is NewReno-like: DUPACK_THRESHOLD acks carrying HOLE and no
progress resend the oldest segment, a timer expiry everything in flight (go-back-N, as TCP
after a timeout); either starts a recovery that lasts until everything then sent is
acknowledged, and each partial ack in it resends the next hole. No congestion control
beyond the window: the stream carries a control connection, a few segments at a time.

Receiving. In-order bytes wait for ``read``; segments beyond a hole wait in a map, all
within the advertised window. The window is RECV_BUFFER minus the unread bytes, so the
right edge (read offset + RECV_BUFFER) never moves back; out-of-order bytes held are
capped at the window too, so one stream holds at most 2 x RECV_BUFFER received bytes even
from a hostile peer (at most RECV_BUFFER from an honest one), in at most OOO_MAX_SEGMENTS
out-of-order pieces (an honest peer has at most SEND_WINDOW_SEGMENTS in flight, so tiny
hostile pieces cannot bloat the map). Every datagram carrying a payload (new, duplicate or
out of window) calls for an ack; acks are sent once per batch: ``datagrams_to_send``
piggybacks the ack on data or sends one ack-only segment, however many datagrams arrived
since. No keepalives: the control connection heartbeats every 5 s.

Trust. ``receive_datagram`` checks length, family, kind, session and tag (proto/punchwire)
before anything else: an unauthenticated datagram only increments ``drops[reason]``.
Directions have separate keys, so our own datagrams reflected back fail authentication. It
returns True only when an authentic datagram moved the stream forward (new bytes, a new
ack, a wider window): only then may the caller follow its source address (NAT rebinding);
a replayed datagram never moves anything and counts as "duplicate".

Drop reasons (``DROP_REASONS``): punchwire's "malformed" (also a short body, an ack of bytes
never sent, a kind other than STREAM), "unknown session", "authentication"; then
"duplicate" (authentic, moved nothing), "out of window" (payload beyond what we buffer),
"stream failed" (authentic, after the failure).

Life cycle::

    open ──close()──▶ closing: send() refused, queued bytes still delivered (``flushed``)
      │                 │
      └─────────────────┴──▶ failed (terminal): nothing authentic received for
          ``dead_after``, or data outstanding with no progress for ``dead_after`` (a full
          peer that answers with a closed window is progress); ``failed`` says which.
          Nothing is sent any more, input only counts, ``send`` discards.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import LocalProtocolError
from .punchwire import (
    OVERHEAD,
    PUNCH_DROP_REASONS,
    PunchDrop,
    PunchKeys,
    PunchKind,
    open_datagram,
    peek_datagram,
    seal_datagram,
)

__all__ = [
    "BODY", "DROP_REASONS", "FLAG_HOLE", "MAX_BUFFERED", "RECV_BUFFER", "DatagramStream",
    "StreamStats",
]

BODY = struct.Struct(">QQIB")  # seq, ack, window, flags
BODY_LEN = BODY.size  # 21
FLAG_HOLE = 0x01
MAX_OFFSET = (1 << 64) - 1
MAX_WINDOW = (1 << 32) - 1
MAX_MSS = 65507 - OVERHEAD - BODY_LEN  # the largest UDP payload over IPv4, less our headers

MAX_BUFFERED = 8 << 20  # bytes queued by send() and not yet acknowledged
RECV_BUFFER = 256 << 10  # unread in-order bytes + advertised window
SEND_WINDOW_SEGMENTS = 64
OOO_MAX_SEGMENTS = 4 * SEND_WINDOW_SEGMENTS
DUPACK_THRESHOLD = 3
INITIAL_RTO = 1.0
MIN_RTO = 0.2
MAX_RTO = 4.0
CLOCK_GRANULARITY = 0.001

DROP_REASONS = PUNCH_DROP_REASONS + ("duplicate", "out of window", "stream failed")


@dataclass(frozen=True, slots=True)
class StreamStats:
    segments_sent: int  # every datagram sent, ack-only ones included
    segments_retransmitted: int
    segments_received: int  # authentic, well-formed datagrams
    bytes_sent: int  # payload bytes sent for the first time
    bytes_received: int  # bytes delivered in order
    srtt: float | None  # None until the first RTT sample
    rto: float


@dataclass(slots=True)
class _Segment:
    """A segment in flight: [seq, end) of the stream."""

    seq: int
    end: int
    sent_at: float
    transmissions: int = 1
    resend: bool = False  # marked lost: datagrams_to_send sends it again


class DatagramStream:
    """One end of a reliable stream over a punched path; see the module docstring."""

    def __init__(self, *, session: int, keys: PunchKeys, now: float, mss: int = 1200,
                 dead_after: float = 15.0) -> None:
        if not 0 <= session <= MAX_OFFSET:
            raise LocalProtocolError("punch session id out of range")
        if not 1 <= mss <= MAX_MSS:
            raise LocalProtocolError(f"mss must be within 1..{MAX_MSS}")
        if not dead_after > 0:
            raise LocalProtocolError("dead_after must be positive")
        self.session = session
        self.mss = mss
        self.dead_after = dead_after
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._keys = keys
        # sending: _sendbuf holds the stream from _snd_una on (unacked, then unsent)
        self._sendbuf = bytearray()
        self._snd_una = 0
        self._snd_nxt = 0  # next offset never sent yet
        self._inflight: list[_Segment] = []
        # the peer's right edge (we may send bytes before it): it starts as ours does (one
        # that buffers less trims what is beyond and says so in its first ack)
        self._peer_right = RECV_BUFFER
        self._rto = INITIAL_RTO
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto_deadline: float | None = None
        self._dupacks = 0
        self._recover: int | None = None  # in recovery until _snd_una reaches it
        self._closing = False
        # receiving
        self._rcv_nxt = 0
        self._unread = bytearray()
        self._ooo: dict[int, bytes] = {}  # out-of-order segments by offset
        self._ooo_bytes = 0
        self._ack_pending = False
        self._advertised = RECV_BUFFER
        # liveness
        self._last_recv = now
        self._last_progress = now
        self._failed: str | None = None
        # counters
        self._sent = self._resent = self._received = self._bytes_sent = self._bytes_received = 0

    # ------------------------------------------------------------------ properties

    @property
    def failed(self) -> str | None:
        return self._failed

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def flushed(self) -> bool:
        """Everything given to ``send`` was acknowledged by the peer."""
        return not self._sendbuf

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet acknowledged."""
        return len(self._sendbuf)

    @property
    def stats(self) -> StreamStats:
        return StreamStats(self._sent, self._resent, self._received, self._bytes_sent,
                           self._bytes_received, self._srtt, self._rto)

    # ------------------------------------------------------------------ inputs

    def send(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Queue bytes. LocalProtocolError after ``close`` or beyond MAX_BUFFERED; after a
        failure the bytes are discarded (the stream is dead, ``failed`` says why)."""
        if self._closing:
            raise LocalProtocolError("cannot send: the stream is closed")
        if self._failed is not None or not data:
            return
        if len(self._sendbuf) + len(data) > MAX_BUFFERED:
            raise LocalProtocolError(
                f"stream send buffer full ({len(self._sendbuf)} bytes queued, cap {MAX_BUFFERED})")
        if not self._sendbuf:
            self._last_progress = now  # the wait for an ack starts now, not when idle began
        self._sendbuf += data

    def close(self, now: float) -> None:
        """Refuse further ``send``; what is queued is still delivered (see ``flushed``)."""
        self._closing = True

    def receive_datagram(self, datagram: bytes | bytearray | memoryview, now: float) -> bool:
        """Take one datagram from the path; True if it was authentic and moved the stream
        forward (the caller may then follow its source address); otherwise it is counted
        in ``drops``."""
        try:
            kind, session = peek_datagram(datagram)
            if kind is not PunchKind.STREAM:
                raise PunchDrop("malformed", "not a stream datagram")
            if session != self.session:
                raise PunchDrop("unknown session", "another session's datagram")
            body = open_datagram(datagram, self._keys.stream_recv)
        except PunchDrop as exc:
            return self._drop(exc.reason)
        if self._failed is not None:
            return self._drop("stream failed")
        if len(body) < BODY_LEN:
            return self._drop("malformed")
        seq, ack, window, flags = BODY.unpack_from(body)
        payload = body[BODY_LEN:]
        if seq + len(payload) > MAX_OFFSET or ack > self._snd_nxt:
            return self._drop("malformed")  # beyond the offset space, or acks unsent bytes
        # authentic and well-formed: from here on the datagram may change state
        self._received += 1
        self._last_recv = now
        moved = self._on_ack(ack, window, flags, now)
        if payload:
            self._ack_pending = True  # duplicates too: our last ack may have been lost
            verdict = self._on_payload(seq, payload)
            if verdict is None:
                moved = True
            elif not moved:
                return self._drop(verdict)
        elif not moved:
            return self._drop("duplicate")
        return True

    def handle_timer(self, now: float) -> None:
        if self._failed is not None:
            return
        if now >= self._last_recv + self.dead_after:
            self._fail(f"no answer over the punched path for {self.dead_after:g} s")
            return
        if self._inflight and now >= self._last_progress + self.dead_after:
            self._fail(f"no acknowledgement over the punched path for {self.dead_after:g} s")
            return
        if self._rto_deadline is not None and now >= self._rto_deadline and self._inflight:
            # RFC 6298 5.4-5.6: resend, back off, restart the timer. Everything in flight
            # is resent, as TCP does from snd_una after a timeout: without selective acks
            # we cannot tell which segments got through, and waiting a round trip per hole
            # on a path lossy enough to time out costs more than a few duplicates
            for seg in self._inflight:
                seg.resend = True
            self._rto = min(self._rto * 2, MAX_RTO)
            self._rto_deadline = now + self._rto
            self._recover = self._snd_nxt
            self._dupacks = 0

    # ------------------------------------------------------------------ outputs

    def read(self) -> bytes:
        """The in-order bytes that arrived since the last call."""
        data = bytes(self._unread)
        self._unread.clear()
        if data and self._advertised < RECV_BUFFER // 2:
            self._ack_pending = True  # the peer may be waiting for room: tell it
        return data

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Sealed datagrams to send now: retransmissions, new data, at most one ack."""
        if self._failed is not None:
            return []
        out: list[bytes] = []
        for seg in self._inflight:
            if seg.resend:
                seg.resend = False
                seg.transmissions += 1
                seg.sent_at = now
                self._resent += 1
                out.append(self._segment(seg.seq, seg.end))
        while len(self._inflight) < SEND_WINDOW_SEGMENTS:
            unsent = self._snd_una + len(self._sendbuf) - self._snd_nxt
            if unsent <= 0:
                break
            room = self._peer_right - self._snd_nxt
            size = min(self.mss, unsent)
            if room < size:
                if self._inflight:
                    break  # wait for acks rather than send a sliver (silly window)
                # nothing in flight: what fits, or a 1-byte window probe paced by the timer
                size = room if room > 0 else 1
            seg = _Segment(self._snd_nxt, self._snd_nxt + size, now)
            self._inflight.append(seg)
            self._snd_nxt = seg.end
            self._bytes_sent += size
            out.append(self._segment(seg.seq, seg.end))
        if self._inflight and self._rto_deadline is None:
            self._rto_deadline = now + self._rto
        if self._ack_pending:
            out.append(self._segment(self._snd_nxt, self._snd_nxt))
        return out

    def get_timer(self) -> float | None:
        if self._failed is not None:
            return None
        timer = self._last_recv + self.dead_after
        if self._inflight:
            timer = min(timer, self._last_progress + self.dead_after)
            if self._rto_deadline is not None:
                timer = min(timer, self._rto_deadline)
        return timer

    # ------------------------------------------------------------------ internals

    def _drop(self, reason: str) -> bool:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return False

    def _fail(self, reason: str) -> None:
        self._failed = reason
        self._sendbuf = bytearray()
        self._inflight.clear()
        self._ooo.clear()
        self._ooo_bytes = 0
        self._rto_deadline = None

    def _segment(self, seq: int, end: int) -> bytes:
        window = min(RECV_BUFFER - len(self._unread), MAX_WINDOW)
        flags = FLAG_HOLE if self._ooo else 0
        payload = self._sendbuf[seq - self._snd_una:end - self._snd_una]
        self._advertised = window
        self._ack_pending = False  # every segment carries the ack
        self._sent += 1
        body = BODY.pack(seq, self._rcv_nxt, window, flags) + payload
        return seal_datagram(PunchKind.STREAM, self.session, body, self._keys.stream_send)

    def _on_ack(self, ack: int, window: int, flags: int, now: float) -> bool:
        """Take the ack and window of an authentic segment; True if either moved."""
        moved = False
        right = ack + window
        if right > self._peer_right:
            if self._inflight and self._peer_right <= self._inflight[0].seq < right:
                self._inflight[0].resend = True  # the window opened: probe at once
            self._peer_right = right
            moved = True
        if ack > self._snd_una:
            moved = True
            self._acked(ack, now)
        elif ack == self._snd_una and self._inflight:
            if self._peer_right <= self._inflight[0].seq:
                self._last_progress = now  # the peer is full, not gone: probes continue
            elif flags & FLAG_HOLE:
                self._dupacks += 1
                if self._dupacks == DUPACK_THRESHOLD and self._recover is None:
                    self._inflight[0].resend = True  # fast retransmit
                    self._recover = self._snd_nxt
        return moved

    def _acked(self, ack: int, now: float) -> None:
        del self._sendbuf[:ack - self._snd_una]
        self._snd_una = ack
        self._last_progress = now
        self._dupacks = 0
        sample: _Segment | None = None
        resent_at = latest = float("-inf")
        done = 0
        for seg in self._inflight:
            if seg.end > ack:
                seg.seq = max(seg.seq, ack)  # the peer trimmed it at its window edge
                break
            done += 1
            sample = seg
            latest = max(latest, seg.sent_at)
            if seg.transmissions > 1:
                resent_at = max(resent_at, seg.sent_at)
        del self._inflight[:done]
        # The newest segment acked times the round trip if it was sent once (Karn: the ack
        # of a resent one may answer either copy) and after every resend this ack covers
        # (else it may have waited at the peer for the hole to be filled)
        if sample is not None and sample.transmissions == 1 and sample.sent_at >= resent_at:
            self._rtt_sample(now - sample.sent_at)
        if self._recover is not None:
            if ack >= self._recover:
                self._recover = None
            elif self._inflight and self._inflight[0].sent_at < latest:
                # a partial ack: the next hole is lost too, unless it was sent after what
                # this ack answers (after a timeout everything was: it is on its way)
                self._inflight[0].resend = True
        self._rto_deadline = now + self._rto if self._inflight else None

    def _rtt_sample(self, r: float) -> None:
        if self._srtt is None:  # RFC 6298 2.2
            self._srtt, self._rttvar = r, r / 2
        else:  # 2.3
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        self._rto = min(max(self._srtt + max(CLOCK_GRANULARITY, 4 * self._rttvar), MIN_RTO),
                        MAX_RTO)

    def _on_payload(self, seq: int, payload: bytes) -> str | None:
        """Buffer what is new of a payload; None if anything was, else the drop reason."""
        window = RECV_BUFFER - len(self._unread)
        right = self._rcv_nxt + window
        end = seq + len(payload)
        if end <= self._rcv_nxt:
            return "duplicate"
        if seq >= right:
            return "out of window"
        start = max(seq, self._rcv_nxt)
        data = payload[start - seq:min(end, right) - seq]
        end = start + len(data)
        if start > self._rcv_nxt:
            held = self._ooo.get(start)
            if held is not None and len(held) >= len(data):
                return "duplicate"
            grow = len(data) - (len(held) if held is not None else 0)
            if self._ooo_bytes + grow > window or (
                    held is None and len(self._ooo) >= OOO_MAX_SEGMENTS):
                return "out of window"  # only overlapping or tiny junk gets here
            self._ooo[start] = data
            self._ooo_bytes += grow
            return None
        self._deliver(data)
        if self._ooo:
            for offset in sorted(self._ooo):
                if offset > self._rcv_nxt:
                    break
                held = self._ooo.pop(offset)
                self._ooo_bytes -= len(held)
                if offset + len(held) > self._rcv_nxt:
                    self._deliver(held[self._rcv_nxt - offset:])
        return None

    def _deliver(self, data: bytes) -> None:
        self._unread += data
        self._rcv_nxt += len(data)
        self._bytes_received += len(data)
