"""Two datagram streams (proto/ustream.py) over a seeded channel that drops, duplicates,
reorders, delays and corrupts datagrams. Whatever the channel and the chunking:

* every byte written arrives exactly once and in order, both ways, and both ends flush;
* every corrupted datagram is dropped and counted (a flipped byte never authenticates);
* the receiver never holds more than it advertised (unread + out of order <= RECV_BUFFER);
* a control Connection (SPAKE2 + X25519 handshake, gossip) runs over the pair unchanged.
"""

from __future__ import annotations

import copy
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pairs import ALPHA, PEER_SEED, connection
from weftnet.proto.connection import Connection, HandshakeCompleted, MessageReceived, drain_events
from weftnet.proto.messages import Gossip, GossipKind
from weftnet.proto.punchwire import PUNCH_DROP_REASONS, derive_keys
from weftnet.proto.ustream import RECV_BUFFER, DatagramStream

SESSION = 77
SECRET = bytes(range(100, 132))
NEVER = 1e9  # dead_after: loss is bounded here by a time limit, not by failure detection
TIME_LIMIT = 3600.0


@dataclass
class Channel:
    """A seeded lossy path: each datagram is dropped, or arrives once or twice after a
    random delay (so in any order), sometimes with one byte flipped."""

    rng: random.Random
    drop: float
    dup: float
    flip: float
    delay: float
    jitter: float
    flight: list[tuple[float, int, bool, bytes]] = field(default_factory=list)
    serial: int = 0
    flipped: list[int] = field(default_factory=lambda: [0, 0])  # arrivals at a, at b

    def carry(self, datagram: bytes, to_b: bool, now: float) -> None:
        if self.rng.random() < self.drop:
            return
        for _ in range(2 if self.rng.random() < self.dup else 1):
            d = datagram
            if self.rng.random() < self.flip:
                i = self.rng.randrange(len(d))
                d = d[:i] + bytes([d[i] ^ self.rng.randrange(1, 256)]) + d[i + 1:]
                self.flipped[to_b] += 1
            self.serial += 1
            at = now + self.delay + self.rng.random() * self.jitter
            heapq.heappush(self.flight, (at, self.serial, to_b, d))

    def next_arrival(self) -> float | None:
        return self.flight[0][0] if self.flight else None

    def arrivals(self, now: float) -> list[tuple[bool, bytes]]:
        out = []
        while self.flight and self.flight[0][0] <= now:
            _, _, to_b, d = heapq.heappop(self.flight)
            out.append((to_b, d))
        return out


CHANNELS = st.builds(
    lambda seed, drop, dup, flip, delay, jitter: Channel(
        random.Random(seed), drop, dup, flip, delay, jitter),
    st.integers(0, 2**32), st.sampled_from([0.0, 0.05, 0.2, 0.35]),
    st.sampled_from([0.0, 0.1, 0.3]), st.sampled_from([0.0, 0.05]),
    st.sampled_from([0.001, 0.02, 0.1]), st.sampled_from([0.0, 0.01, 0.2]))


def stream_pair(mss: int = 1200) -> tuple[DatagramStream, DatagramStream]:
    return (DatagramStream(session=SESSION, keys=derive_keys(SECRET, initiator=True), now=0.0,
                           mss=mss, dead_after=NEVER),
            DatagramStream(session=SESSION, keys=derive_keys(SECRET, initiator=False), now=0.0,
                           mss=mss, dead_after=NEVER))


def run(a: DatagramStream, b: DatagramStream, ch: Channel,
        step: Callable[[float], float | None], done: Callable[[], bool]) -> float:
    """Drive both streams and the channel in virtual time until ``done()``; ``step(now)``
    is the caller's part (write, read, run connections) and returns its next timer."""
    now = 0.0
    while not done():
        assert now < TIME_LIMIT, "the streams never finished"
        wake = step(now)
        for to_b, s in ((True, a), (False, b)):
            for d in s.datagrams_to_send(now):
                ch.carry(d, to_b, now)
        timers = [t for t in (wake, a.get_timer(), b.get_timer(), ch.next_arrival())
                  if t is not None]
        now = max(now, min(timers))
        for to_b, d in ch.arrivals(now):
            (b if to_b else a).receive_datagram(d, now)
        for s in (a, b):
            timer = s.get_timer()
            if timer is not None and timer <= now:
                s.handle_timer(now)
            assert s.failed is None
            assert len(s._unread) + s._ooo_bytes <= RECV_BUFFER  # bounded memory
    while (at := ch.next_arrival()) is not None:  # the stragglers too: all are counted
        for to_b, d in ch.arrivals(at):
            (b if to_b else a).receive_datagram(d, at)
    return now


def punch_drops(s: DatagramStream) -> int:
    return sum(s.drops[r] for r in PUNCH_DROP_REASONS)


@settings(max_examples=150)
@given(ch=CHANNELS, mss=st.sampled_from([1, 7, 1200]),
       chunks_a=st.lists(st.binary(min_size=1, max_size=3000), max_size=12),
       chunks_b=st.lists(st.binary(min_size=1, max_size=300), max_size=6),
       gap=st.sampled_from([0.0, 0.03, 1.0]))
def test_every_byte_arrives_once_in_order(ch: Channel, mss: int, chunks_a: list[bytes],
                                          chunks_b: list[bytes], gap: float) -> None:
    if mss == 1:
        chunks_a = chunks_a[:3]  # a byte per datagram: keep the example small
    a, b = stream_pair(mss)
    got_a, got_b = bytearray(), bytearray()
    pending = sorted([(i * gap, 0, i, c) for i, c in enumerate(chunks_a)]
                     + [(i * gap * 2, 1, i, c) for i, c in enumerate(chunks_b)])

    def step(now: float) -> float | None:
        while pending and pending[0][0] <= now:
            _, to_a, _, chunk = pending.pop(0)
            (b if to_a else a).send(chunk, now)
        got_a.extend(a.read())
        got_b.extend(b.read())
        return pending[0][0] if pending else None

    run(a, b, ch, step, lambda: not pending and a.flushed and b.flushed)
    got_a.extend(a.read())
    got_b.extend(b.read())
    assert bytes(got_b) == b"".join(chunks_a)
    assert bytes(got_a) == b"".join(chunks_b)
    assert a.stats.bytes_received == len(got_a) and b.stats.bytes_received == len(got_b)
    # every flipped byte broke a tag (or the header): dropped and counted, never delivered
    assert punch_drops(a) == ch.flipped[False] and punch_drops(b) == ch.flipped[True]
    if ch.drop == 0 and ch.flip == 0 and ch.jitter == 0:
        assert a.stats.segments_retransmitted == b.stats.segments_retransmitted == 0


# ------------------------------------------------------------------ a control connection

PASSWORD = b"over the punched path"


@cache
def _template(outbound: bool, seed: int) -> Connection:
    """spake2's start() is slow pure Python: make each connection once, then copy it."""
    return connection(outbound, password=PASSWORD, seed=seed, timeout=NEVER,
                      handshake_timeout=NEVER)


def gossip(i: int, src: int) -> Gossip:
    return Gossip("topology", GossipKind.BROADCAST, src, 0, i.to_bytes(2, "big") * (1 + i * 37))


@settings(max_examples=20)
@given(ch=CHANNELS, n_a=st.integers(0, 6), n_b=st.integers(0, 6))
def test_a_control_connection_runs_over_the_stream(ch: Channel, n_a: int, n_b: int) -> None:
    ca = copy.deepcopy(_template(True, 3))  # the offerer dials
    cb = copy.deepcopy(_template(False, 3 + PEER_SEED))
    a, b = stream_pair()
    events: dict[bool, list[object]] = {True: [], False: []}
    sent = [False]

    def step(now: float) -> float | None:
        for conn, s, key in ((ca, a, True), (cb, b, False)):
            conn.receive_data(s.read(), now)
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
            events[key] += drain_events(conn)
        if ca.established and cb.established and not sent[0]:
            sent[0] = True
            for i in range(n_a):
                ca.send_message(gossip(i, ALPHA.name), now)
            for i in range(n_b):
                cb.send_message(gossip(i, 2), now)
        for conn, s in ((ca, a), (cb, b)):
            s.send(conn.data_to_send(), now)
        timers = [t for t in (ca.get_timer(), cb.get_timer()) if t is not None]
        return min(timers) if timers else None

    def done() -> bool:
        return (sent[0] and a.flushed and b.flushed
                and len(events[True]) == 1 + n_b and len(events[False]) == 1 + n_a)

    run(a, b, ch, step, done)
    for key, n, src in ((True, n_b, 2), (False, n_a, ALPHA.name)):
        first, *rest = events[key]
        assert isinstance(first, HandshakeCompleted) and first.encrypted
        assert rest == [MessageReceived(gossip(i, src)) for i in range(n)]
    assert ca.conn_uid == cb.conn_uid
