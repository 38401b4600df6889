"""Sleeve fragments: any message survives being cut up, shuffled and duplicated; junk and
contradictions never produce a wrong message."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto import sleeve_frag
from weftnet.proto.sleeve_frag import HEADER_LEN, Reassembler, fragment


def segments(buf: bytes, seg: int) -> list[bytes]:
    return [buf[i:i + seg] for i in range(0, len(buf), seg)]


@given(st.binary(min_size=1, max_size=20000), st.integers(200, 1472), st.integers(0, 2**32 - 1),
       st.randoms(use_true_random=False), st.integers(0, 5))
def test_any_order_with_duplicates_gives_the_message_once(
        message: bytes, seg: int, msg_id: int, rng: random.Random, dups: int) -> None:
    count = sleeve_frag.fragment_count(len(message), seg)
    if count > sleeve_frag.MAX_FRAGMENTS:
        return
    buf = fragment(message, seg, msg_id)
    parts = segments(buf, seg)
    assert len(parts) == count and all(len(p) == seg for p in parts[:-1])
    if count == 1:
        return  # a message that fits one datagram is sent without fragmenting
    parts += [rng.choice(parts) for _ in range(dups)]
    rng.shuffle(parts)
    r = Reassembler()
    out = [m for p in parts if (m := r.add("peer", p, 0.0)) is not None]
    # duplicates arriving after completion start a new (never completed) reassembly
    assert out == [message]


@given(st.binary(min_size=3000, max_size=9000), st.integers(0, 2**32 - 1))
def test_interleaved_messages_and_senders_stay_apart(message: bytes, msg_id: int) -> None:
    other = bytes(b ^ 0xFF for b in message)
    a = segments(fragment(message, 1000, msg_id), 1000)
    b = segments(fragment(other, 1000, msg_id), 1000)  # same id, another sender
    r = Reassembler()
    got = {}
    for pa, pb in zip(a, b, strict=True):
        for sender, part in (("a", pa), ("b", pb)):
            m = r.add(sender, part, 0.0)
            if m is not None:
                got[sender] = m
    assert got == {"a": message, "b": other}


def test_a_contradicting_fragment_restarts_the_message() -> None:
    message = bytes(range(256)) * 20
    parts = segments(fragment(message, 600, 7), 600)
    r = Reassembler()
    assert r.add("p", parts[0], 0.0) is None
    forged = parts[0][:HEADER_LEN] + bytes(len(parts[0]) - HEADER_LEN)
    assert r.add("p", forged, 0.0) is None
    assert r.restarted == 1  # the genuine chunk is not kept beside the forged one
    # The forged chunk now stands for index 0: fragments are not authenticated, so the
    # message completes wrong, and the AEAD over the whole message is what refuses it.
    done = [m for p in parts[1:] if (m := r.add("p", p, 0.0)) is not None]
    assert len(done) == 1 and done[0] != message and len(done[0]) == len(message)


def test_stale_reassemblies_expire_and_the_table_is_bounded() -> None:
    r = Reassembler(max_pending=4, timeout=1.0)
    for i in range(10):
        r.add("p", segments(fragment(bytes(3000), 1000, i), 1000)[0], float(i) * 0.1)
    assert len(r) == 4 and r.evicted == 6
    assert r.expire(5.0) == 4 and len(r) == 0


@given(st.lists(st.tuples(st.sampled_from(["msg", "raw", "part"]), st.integers(1, 6000)),
                max_size=6),
       st.integers(300, 1472))
def test_a_batch_gives_what_fragment_by_fragment_gives(
        items: list[tuple[str, int]], seg: int) -> None:
    """add_batch (the GRO fast path) against add() applied to each datagram."""
    datagrams: list[bytes] = []
    for i, (what, size) in enumerate(items):
        body = bytes([i % 251]) * size
        if what == "raw":
            datagrams.append(b"\x01\x01" + body[:seg - 2])
        else:
            parts = segments(fragment(body + b"x" * seg, seg, i), seg)
            datagrams += parts if what == "msg" else parts[:-1]
    if not datagrams:
        return
    # a GRO batch holds equal-size datagrams with only the last one shorter
    batch = [d.ljust(seg, b"\0") if len(d) < seg else d for d in datagrams[:-1]] + datagrams[-1:]
    one = Reassembler()
    expected = []
    for d in batch:
        if d[1] != sleeve_frag.FRAGMENT:
            expected.append(d)
        elif (m := one.add("s", d, 0.0)) is not None:
            expected.append(m)
    got = [bytes(x) for x in Reassembler().add_batch("s", memoryview(b"".join(batch)), seg, 0.0)]
    assert got == expected


@given(st.lists(st.tuples(st.integers(2000, 9000), st.sets(st.integers(0, 9), max_size=3)),
                min_size=1, max_size=12),
       st.integers(0, 2**32 - 1), st.booleans())
def test_every_message_missing_a_fragment_is_counted_lost_once(
        plan: list[tuple[int, set[int]]], first_id: int, batch: bool) -> None:
    """A sender's messages in order, some missing fragments: each one that got some of its
    fragments but not all is counted lost exactly once (by a later message completing, or
    by expiry); complete ones come out in order; nothing is counted for another sender."""
    r = Reassembler()
    complete, incomplete = [], 0
    for n, (size, dropped) in enumerate(plan):
        message = bytes([n]) * size
        parts = segments(fragment(message, 1000, first_id + n), 1000)
        kept = [p for i, p in enumerate(parts) if i not in dropped]
        if len(kept) == len(parts):
            complete.append(message)
        elif kept:
            incomplete += 1
        if batch and kept:
            got = [bytes(m) for m in r.add_batch("p", memoryview(b"".join(kept)), 1000, 0.0)]
        else:
            got = [m for p in kept if (m := r.add("p", p, 0.0)) is not None]
        assert got == ([message] if len(kept) == len(parts) else [])
    r.expire(sleeve_frag.TIMEOUT + 1)
    lost = r.take_lost()
    assert lost == ({"p": incomplete} if incomplete else {})
    assert r.take_lost() == {} and len(r) == 0


def reference_fragment(message: bytes, seg: int, msg_id: int) -> bytes:
    """The layout written out one segment at a time: the oracle for the struct-built one."""
    chunk = seg - HEADER_LEN
    count = -(-len(message) // chunk)
    return b"".join(sleeve_frag.HEADER.pack(1, 6, i, count, msg_id & 0xFFFFFFFF)
                    + message[i * chunk:(i + 1) * chunk] for i in range(count))


@given(st.binary(min_size=1, max_size=65000), st.integers(sleeve_frag.MIN_SEGMENT, 9000),
       st.integers(0, 2**33))
def test_fragment_lays_out_what_the_reference_does(message: bytes, seg: int, msg_id: int) -> None:
    if sleeve_frag.fragment_count(len(message), seg) > sleeve_frag.MAX_FRAGMENTS:
        return
    expected = reference_fragment(message, seg, msg_id)
    assert fragment(message, seg, msg_id) == expected
    assert fragment(memoryview(bytearray(message)), seg, msg_id) == expected
    # and a GRO read of it joins back from the buffer (add_batch's fast path)
    if len(expected) > seg:
        got = Reassembler().add_batch("s", memoryview(expected), seg, 0.0)
        assert [bytes(m) for m in got] == [message]


def reference_parity(message: bytes, seg: int, msg_id: int) -> bytes:
    """The parity segment written out byte by byte: XOR of the full-size chunks."""
    chunk = seg - HEADER_LEN
    count = -(-len(message) // chunk)
    acc = bytearray(chunk)
    for i in range(len(message) // chunk):
        for j, b in enumerate(message[i * chunk:(i + 1) * chunk]):
            acc[j] ^= b
    return sleeve_frag.HEADER.pack(1, sleeve_frag.PARITY, 0, count, msg_id) + bytes(acc)


@given(st.binary(min_size=200, max_size=6000), st.integers(sleeve_frag.MIN_SEGMENT, 1500),
       st.integers(0, 2**32 - 1), st.data())
def test_parity_rebuilds_any_one_lost_full_chunk(message: bytes, seg: int, msg_id: int,
                                                 data: st.DataObject) -> None:
    count = sleeve_frag.fragment_count(len(message), seg)
    full = len(message) // (seg - HEADER_LEN)
    if not 2 <= count <= sleeve_frag.MAX_FRAGMENTS or full == count:
        return  # one datagram, or no shorter last fragment (then only a middle one may go)
    buf = fragment(message, seg, msg_id, parity=True)
    assert buf == reference_parity(message, seg, msg_id) + reference_fragment(message, seg, msg_id)
    parts = segments(buf, seg)  # parity first, then the fragments
    lost = data.draw(st.integers(1, full), label="lost")  # a full-size fragment
    kept = [p for i, p in enumerate(parts) if i != lost]
    order = data.draw(st.permutations(kept), label="order")
    r = Reassembler()
    assert [m for p in order if (m := r.add("p", p, 0.0)) is not None] == [message]
    assert r.take_recovered() == {"p": 1} and len(r) == 0
    batch = Reassembler()  # in order, one GRO read
    assert [bytes(m) for m in batch.add_batch("p", memoryview(b"".join(kept)), seg, 0.0)] == [message]
    everything = Reassembler()  # nothing lost: the fast path, and its parity not left behind
    assert [bytes(m) for m in everything.add_batch("p", memoryview(buf), seg, 0.0)] == [message]
    assert len(everything) == 0 and everything.take_recovered() == {}


@given(st.binary(min_size=200, max_size=6000), st.integers(sleeve_frag.MIN_SEGMENT, 1500),
       st.sets(st.integers(0, 64), min_size=1, max_size=3), st.booleans())
def test_parity_never_gives_a_wrong_message_and_the_rest_is_lost(
        message: bytes, seg: int, drop: set[int], batch: bool) -> None:
    count = sleeve_frag.fragment_count(len(message), seg)
    if not 2 <= count <= sleeve_frag.MAX_FRAGMENTS:
        return
    parts = segments(fragment(message, seg, 9, parity=True), seg)
    kept = [p for i, p in enumerate(parts) if i not in drop]
    r = Reassembler()
    if batch and kept:
        got = [bytes(m) for m in r.add_batch("p", memoryview(b"".join(kept)), seg, 0.0)]
    else:
        got = [m for p in kept if (m := r.add("p", p, 0.0)) is not None]
    assert got in ([], [message])
    r.expire(sleeve_frag.TIMEOUT + 1)
    if not got:  # what did not come whole is counted lost (if any of it came)
        assert r.take_lost() == ({"p": 1} if kept else {})
    assert len(r) == 0
