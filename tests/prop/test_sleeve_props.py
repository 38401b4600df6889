"""Sleeve properties: body codecs round-trip, and two sessions over a hostile channel.

The channel simulator (virtual time, one seed per run) loses, duplicates and delays
datagrams (so they arrive reordered), and an attacker on the path replays datagrams
already delivered and injects bit-flipped copies of fresh ones before the original
arrives. Both directions run at once, rekeying many times by count and by time.

Invariants:
* every datagram's body is delivered at most once, unaltered;
* the first intact copy of each datagram is accepted: reordering within the window and
  across epoch boundaries, and the epoch changes themselves, never drop fresh traffic;
* a replay is refused as "replay" (its epoch is current or previous) or "stale epoch";
* a bit-flipped datagram is never accepted (encrypted), and is refused with the reason
  that its flipped field implies.
"""

from __future__ import annotations

import heapq
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pairs import sleeve_pair
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.sleeve import (
    HEADER_LEN,
    MAX_PEER,
    Kind,
    SleeveDrop,
    SleeveSession,
    decode_entries,
    decode_heartbeat,
    decode_probe,
    encode_entries,
    encode_heartbeat,
    encode_probe,
    peek,
)

peers = st.integers(1, MAX_PEER)
frames = st.binary(min_size=24, max_size=200)


@given(st.lists(st.tuples(peers, st.integers(0, MAX_PEER), st.sampled_from([0, 1]), frames),
                min_size=1, max_size=8).filter(lambda es: all(s != d for s, d, _, _ in es)))
def test_entries_round_trip(entries: list[tuple[int, int, int, bytes]]) -> None:
    decoded = decode_entries(encode_entries(entries))
    assert [(s, d, f, bytes(fr)) for s, d, f, fr in decoded] == entries


@given(st.lists(st.tuples(peers, st.integers(0, MAX_PEER), st.sampled_from([0, 1]), frames),
                min_size=1, max_size=4).filter(lambda es: all(s != d for s, d, _, _ in es)),
       st.integers(0, 10_000), st.integers(1, 255))
def test_any_single_byte_change_decodes_strictly_or_not_at_all(
        entries: list[tuple[int, int, int, bytes]], where: int, xor: int) -> None:
    body = bytearray(encode_entries(entries))
    body[where % len(body)] ^= xor
    try:
        decoded = decode_entries(bytes(body))
    except RemoteProtocolError:
        return
    assert encode_entries(decoded) == bytes(body)      # whatever decodes is canonical


@given(peers, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 65535),
       st.integers(0, 255))
def test_heartbeat_round_trip(sender: int, uid: int, nonce: int, mtu: int, flags: int) -> None:
    got = decode_heartbeat(encode_heartbeat(sender, uid, nonce, mtu, flags))
    assert got == (sender, uid, nonce, mtu, flags)


@given(st.integers(0, 2**64 - 1), st.integers(8, 9000))
def test_probe_round_trip(probe_id: int, size: int) -> None:
    assert decode_probe(encode_probe(probe_id, size)) == (probe_id, size)


@given(st.booleans(), st.lists(st.tuples(st.sampled_from(list(Kind)), st.binary(max_size=2000)),
                               min_size=1, max_size=20), st.integers(0, 2**64 - 1))
def test_seal_open_round_trip(encrypted: bool, messages: list[tuple[Kind, bytes]],
                              uid: int) -> None:
    a, b = sleeve_pair(encrypted, conn_uid=uid, rekey_after=3)
    for i, (kind, body) in enumerate(messages):
        datagram = a.seal(kind, body, float(i))
        assert peek(datagram)[0] == kind and peek(datagram)[2] == uid
        assert b.open(datagram, float(i)) == (kind, body)
        if encrypted:
            assert len(datagram) == HEADER_LEN + len(body) + 16
            assert len(body) < 16 or body not in datagram     # never in clear
        else:
            assert datagram[HEADER_LEN:] == body


# -- the channel simulator ------------------------------------------------------------------

TICK = 0.001            # one datagram per direction per tick
MAX_DELAY = 0.020       # reordering depth: at most ~20 datagrams, far inside the window
EPOCH_MODULUS = 1 << 16


class Receiver:
    """One session's receiving side plus what the test knows about it."""

    def __init__(self, session: SleeveSession, interval: float) -> None:
        self.session = session
        self.interval = interval
        self.delivered: set[int] = set()
        self.epoch_since = 0.0          # when epoch_recv last changed (observable)

    def expected_replay_reason(self, epoch: int, now: float) -> str:
        behind = (self.session.epoch_recv - epoch) % EPOCH_MODULUS
        if behind == 0 or (behind == 1 and now - self.epoch_since < self.interval):
            return "replay"
        return "stale epoch"

    def open(self, datagram: bytes, now: float) -> tuple[Kind, bytes]:
        before = self.session.epoch_recv
        result = self.session.open(datagram, now)
        if self.session.epoch_recv != before:
            self.epoch_since = now
        return result


def flip_expectation(original: bytes, bit: int) -> set[str]:
    """Reasons a datagram with ``bit`` flipped may be refused with (encrypted session)."""
    byte = bit // 8
    if byte == 0:
        return {"malformed"}                          # version
    if byte == 1:
        kind = original[1] ^ (1 << (bit % 8))
        return {"authentication"} if 1 <= kind <= 5 else {"malformed"}
    if byte in (2, 3):                                # epoch: may land anywhere
        return {"authentication", "stale epoch", "replay"}
    if 4 <= byte < 12:
        return {"wrong connection"}
    if 12 <= byte < 20:                               # counter: maybe an old one, or too big
        return {"authentication", "replay", "malformed"}
    return {"authentication"}                         # body and tag


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), encrypted=st.booleans(),
       by_time=st.booleans())
def test_sessions_over_a_lossy_reordering_duplicating_channel(
        seed: int, encrypted: bool, by_time: bool) -> None:
    rng = random.Random(seed)
    interval, after = (0.15, 2**32) if by_time else (120.0, 37)
    k1, k2 = rng.randbytes(32), rng.randbytes(32)
    uid = rng.getrandbits(64)
    a, b = sleeve_pair(encrypted, conn_uid=uid, keys=(k1, k2), rekey_interval=interval,
                       rekey_after=after, window=256)
    ends = {"a": (a, Receiver(b, interval)), "b": (b, Receiver(a, interval))}
    # (arrival time, sequence, direction, datagram, packet id, what it is)
    queue: list[tuple[float, int, str, bytes, int, str]] = []
    seq = 0
    sent_ok: dict[str, dict[int, bytes]] = {"a": {}, "b": {}}   # delivered, for replays
    lost: set[tuple[str, int]] = set()
    stats = {"accepted": 0, "replays": 0, "flips": 0, "dups": 0}

    def push(at: float, direction: str, datagram: bytes, pid: int, what: str) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, (at, seq, direction, datagram, pid, what))

    now = 0.0
    packets = 1500
    for i in range(packets):
        now = i * TICK
        for direction, (sender, _) in ends.items():
            body = encode_entries([(1 if direction == "a" else 2, 0, 0,
                                    struct.pack(">Q", i) + rng.randbytes(rng.randrange(16, 64)))])
            d = sender.seal(Kind.DATA, body, now)
            if rng.random() < 0.1:
                lost.add((direction, i))
            else:
                push(now + rng.uniform(0, MAX_DELAY), direction, d, i, "original")
                if rng.random() < 0.1:
                    push(now + rng.uniform(0, MAX_DELAY), direction, d, i, "duplicate")
            if rng.random() < 0.1:              # attacker: a flipped copy, usually first
                bit = rng.randrange(len(d) * 8)
                bad = bytearray(d)
                bad[bit // 8] ^= 1 << (bit % 8)
                push(now, direction, bytes(bad), bit, "flipped")
            if sent_ok[direction] and rng.random() < 0.05:   # attacker: a replay
                old = rng.choice(sorted(sent_ok[direction]))
                push(now, direction, sent_ok[direction][old], old, "replay")
        while queue and queue[0][0] <= now:
            at, _, direction, d, pid, what = heapq.heappop(queue)
            receiver = ends[direction][1]
            if what == "flipped":
                stats["flips"] += 1
                if not encrypted:
                    continue                    # nothing authenticates a plain body
                original_kind = peek_kind_byte(d, pid)
                with_reason = flip_expectation(original_kind, pid)
                try:
                    receiver.open(d, at)
                except SleeveDrop as drop:
                    assert drop.reason in with_reason, (seed, pid, drop.reason)
                    continue
                raise AssertionError(f"seed {seed}: a flipped datagram was accepted")
            if what == "replay" or pid in receiver.delivered:
                stats["replays"] += what == "replay"
                stats["dups"] += what != "replay"
                expected = receiver.expected_replay_reason(peek(d)[1], at)
                try:
                    receiver.open(d, at)
                except SleeveDrop as drop:
                    assert drop.reason == expected, (seed, pid, drop.reason, expected)
                    continue
                raise AssertionError(f"seed {seed}: packet {pid} delivered twice")
            kind, body = receiver.open(d, at)     # fresh: must be accepted
            (entry,) = decode_entries(body)
            assert kind == Kind.DATA and struct.unpack(">Q", entry[3][:8])[0] == pid
            receiver.delivered.add(pid)
            sent_ok[direction][pid] = d
            stats["accepted"] += 1
    for direction, (sender, receiver) in ends.items():
        assert receiver.delivered.isdisjoint(i for d, i in lost if d == direction)
        # everything not lost (and not still in flight at the end) arrived
        missing = {i for i in range(packets - 30) if (direction, i) not in lost} \
            - receiver.delivered
        assert not missing, (seed, direction, sorted(missing)[:5])
        assert sender.stats.rekeys_send >= 8, "the run must cross several epochs"
        assert receiver.session.stats.opened == len(receiver.delivered)
    assert stats["replays"] and stats["flips"] and stats["dups"]


def peek_kind_byte(flipped: bytes, bit: int) -> bytes:
    """The original datagram's header bytes as far as ``flip_expectation`` needs them."""
    original = bytearray(flipped[:HEADER_LEN])
    if bit // 8 < HEADER_LEN:
        original[bit // 8] ^= 1 << (bit % 8)
    return bytes(original)
