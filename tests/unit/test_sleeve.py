"""Sleeve codec and session: wire layout, AEAD, replay, epochs and the ratchet, bodies."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tests.pairs import SLEEVE_KEYS, SLEEVE_UID, sleeve_pair
from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.sleeve import (
    DROP_REASONS,
    ENTRY_OVERHEAD,
    HEADER_LEN,
    MAX_DATAGRAM,
    TAG_LEN,
    Kind,
    SleeveDrop,
    SleeveSession,
    decode_entries,
    decode_heartbeat,
    decode_probe,
    encode_entries,
    encode_heartbeat,
    encode_probe,
    max_body,
    peek,
)

K1, K2 = SLEEVE_KEYS  # a seals with K1, b with K2
UID = SLEEVE_UID


def drop_reason(session: SleeveSession, datagram: bytes, now: float = 0.0) -> str:
    with pytest.raises(SleeveDrop) as info:
        session.open(datagram, now)
    assert isinstance(info.value, RemoteProtocolError)
    return info.value.reason


def independent_ratchet(key: bytes, steps: int) -> bytes:
    for _ in range(steps):
        key = HKDFExpand(hashes.SHA256(), 32, b"weft sleeve ratchet").derive(key)
    return key


def test_wire_layout_and_nonce() -> None:
    a, b = sleeve_pair()
    d0 = a.seal(Kind.DATA, b"hello", 0.0)
    d1 = a.seal(Kind.HEARTBEAT, b"again", 0.0)
    assert len(d0) == HEADER_LEN + 5 + TAG_LEN
    assert d0[:HEADER_LEN] == struct.pack(">BBHQQ", 1, 1, 0, UID, 0)
    assert d1[:HEADER_LEN] == struct.pack(">BBHQQ", 1, 2, 0, UID, 1)
    assert peek(d1) == (Kind.HEARTBEAT, 0, UID, 1)
    # independently: ChaCha20-Poly1305, nonce 0^4 || counter LE, header as associated data
    nonce = b"\x00" * 4 + (1).to_bytes(8, "little")
    assert ChaCha20Poly1305(K1).decrypt(nonce, d1[HEADER_LEN:], d1[:HEADER_LEN]) == b"again"
    assert b.open(d0, 0.0) == (Kind.DATA, b"hello")
    assert b.open(memoryview(d1), 0.0) == (Kind.HEARTBEAT, b"again")
    assert a.encrypted and b.encrypted


def test_plain_session_carries_the_body_in_clear() -> None:
    a, b = sleeve_pair(encrypted=False)
    d = a.seal(Kind.DATA, memoryview(b"payload"), 0.0)
    assert d == struct.pack(">BBHQQ", 1, 1, 0, UID, 0) + b"payload"
    assert b.open(d, 0.0) == (Kind.DATA, b"payload")
    assert drop_reason(b, d) == "replay"
    assert not a.encrypted


@pytest.mark.parametrize("encrypted", [True, False])
def test_replay_and_reorder(encrypted: bool) -> None:
    a, b = sleeve_pair(encrypted)
    ds = [a.seal(Kind.DATA, bytes([i]), 0.0) for i in range(10)]
    for i in [3, 0, 9, 1, 2, 8, 4, 5, 7, 6]:
        assert b.open(ds[i], 0.0) == (Kind.DATA, bytes([i]))
    for d in ds:
        assert drop_reason(b, d) == "replay"
    assert b.stats.opened == 10 and b.stats.drops["replay"] == 10
    assert a.stats.sealed == 10 and a.stats.sealed_bytes == 10


def test_tampering_is_refused_and_does_not_burn_the_counter() -> None:
    a, b = sleeve_pair()
    d = a.seal(Kind.DATA, b"secret frame", 0.0)
    for i in [1, 4, 12, 19, 20, 25, len(d) - 1]:
        bad = bytearray(d)
        bad[i] ^= 0x04                      # kind 1 -> 5, conn_uid, counter, body, tag
        expected = "wrong connection" if 4 <= i < 12 else "authentication"
        assert drop_reason(b, bytes(bad)) == expected, i
    assert b.open(d, 0.0) == (Kind.DATA, b"secret frame")
    assert b.stats.drops["authentication"] == 6


@pytest.mark.parametrize("datagram,why", [
    (b"", "empty"),
    (bytes(19), "short"),
    (struct.pack(">BBHQQ", 2, 1, 0, UID, 0) + bytes(16), "version"),
    (struct.pack(">BBHQQ", 1, 0, 0, UID, 0) + bytes(16), "kind 0"),
    (struct.pack(">BBHQQ", 1, 6, 0, UID, 0) + bytes(16), "kind 6"),
    (struct.pack(">BBHQQ", 1, 1, 0, UID, 0) + bytes(15), "no tag"),
    (struct.pack(">BBHQQ", 1, 1, 0, UID, 2**64 - 1) + bytes(16), "counter"),
])
def test_malformed(datagram: bytes, why: str) -> None:
    _, b = sleeve_pair()
    assert drop_reason(b, datagram) == "malformed", why


def test_peek_rejects_with_remote_errors() -> None:
    for bad in [b"", bytes(19), b"\x02" + bytes(19), b"\x01\x07" + bytes(18)]:
        with pytest.raises(RemoteProtocolError) as info:
            peek(bad)
        assert str(info.value).startswith("malformed")


def test_wrong_connection() -> None:
    a = SleeveSession(conn_uid=1, send_key=K1, recv_key=K2, now=0.0)
    b = SleeveSession(conn_uid=2, send_key=K2, recv_key=K1, now=0.0)
    assert drop_reason(b, a.seal(Kind.DATA, b"x", 0.0)) == "wrong connection"


def test_rekey_by_time_follows_the_ratchet() -> None:
    a, b = sleeve_pair(rekey_interval=10.0)
    assert b.open(a.seal(Kind.DATA, b"e0", 0.0), 0.0) == (Kind.DATA, b"e0")
    d = a.seal(Kind.DATA, b"e1", 10.0)
    assert peek(d) == (Kind.DATA, 1, UID, 0)          # new epoch, counter from 0
    assert a.epoch_send == 1 and a.stats.rekeys_send == 1
    key1 = independent_ratchet(K1, 1)
    nonce = bytes(12)
    assert ChaCha20Poly1305(key1).decrypt(nonce, d[HEADER_LEN:], d[:HEADER_LEN]) == b"e1"
    assert b.open(d, 10.0) == (Kind.DATA, b"e1")
    assert b.epoch_recv == 1 and b.stats.rekeys_recv == 1


def test_rekey_by_count() -> None:
    a, b = sleeve_pair(rekey_after=3)
    ds = [a.seal(Kind.DATA, bytes([i]), 0.0) for i in range(10)]
    assert [peek(d)[1:4:2] for d in ds] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2),
                                            (2, 0), (2, 1), (2, 2), (3, 0)]
    for i, d in enumerate(ds):
        assert b.open(d, 0.0) == (Kind.DATA, bytes([i]))
    assert b.epoch_recv == 3


def test_reordering_across_an_epoch_boundary() -> None:
    a, b = sleeve_pair(rekey_after=2)
    ds = [a.seal(Kind.DATA, bytes([i]), 0.0) for i in range(4)]   # epochs 0 0 1 1
    assert b.open(ds[2], 0.0)[1] == b"\x02"                       # epoch 1 first
    assert b.open(ds[0], 0.0)[1] == b"\x00"                       # previous epoch still opens
    assert b.open(ds[3], 0.0)[1] == b"\x03"
    assert b.open(ds[1], 0.0)[1] == b"\x01"
    assert drop_reason(b, ds[0]) == "replay"
    e2 = a.seal(Kind.DATA, b"\x04", 0.0)                          # epoch 2: 0 is erased
    assert b.open(e2, 0.0)[1] == b"\x04"
    assert drop_reason(b, ds[1]) == "stale epoch"
    assert drop_reason(b, ds[3]) == "replay"                      # epoch 1 is previous now


def test_previous_epoch_is_erased_after_the_interval() -> None:
    a, b = sleeve_pair(rekey_interval=10.0)
    old = a.seal(Kind.DATA, b"old", 0.0)
    new = a.seal(Kind.DATA, b"new", 10.0)
    assert b.open(new, 10.5)[1] == b"new"
    assert b.get_timer() == 20.5
    assert drop_reason(b, old, 20.5) == "stale epoch"


def test_handle_timer_erases_the_previous_key() -> None:
    a, b = sleeve_pair(rekey_interval=10.0)
    old = a.seal(Kind.DATA, b"old", 0.0)
    assert b.open(a.seal(Kind.DATA, b"new", 10.0), 10.0)[1] == b"new"
    timer = b.get_timer()
    assert timer is not None
    b.handle_timer(timer)
    assert drop_reason(b, old, timer) == "stale epoch"


def test_idle_sender_rotates_once() -> None:
    a, b = sleeve_pair(rekey_interval=10.0)
    assert a.get_timer() is None                   # nothing sealed: nothing to erase
    b.open(a.seal(Kind.DATA, b"0", 1.0), 1.0)
    assert a.get_timer() == 10.0
    a.handle_timer(10.0)                           # the used key is erased while idle
    assert a.epoch_send == 1 and a.get_timer() is None
    for t in (20.0, 30.0, 40.0):
        a.handle_timer(t)
    d = a.seal(Kind.DATA, b"later", 100.0)         # no second rotation for an unused key
    assert peek(d)[1] == 1
    assert b.open(d, 100.0)[1] == b"later"


def test_catching_up_lost_epochs() -> None:
    a, b = sleeve_pair(rekey_after=1)
    ds = [a.seal(Kind.DATA, bytes([i]), 0.0) for i in range(12)]  # one epoch each
    assert b.open(ds[0], 0.0)[1] == b"\x00"
    assert b.open(ds[4], 0.0)[1] == b"\x04"        # 4 epochs ahead: derived and verified
    assert b.open(ds[3], 0.0)[1] == b"\x03"        # its predecessor is kept
    assert drop_reason(b, ds[2]) == "stale epoch"
    assert drop_reason(b, ds[10]) == "stale epoch"  # 6 ahead is beyond MAX_EPOCH_SKIP
    assert b.epoch_recv == 4


def test_a_forged_future_epoch_moves_nothing() -> None:
    a, b = sleeve_pair()
    d = a.seal(Kind.DATA, b"x", 0.0)
    forged = struct.pack(">BBHQQ", 1, 1, 1, UID, 0) + bytes(40)
    assert drop_reason(b, forged) == "authentication"
    assert b.epoch_recv == 0
    assert b.open(d, 0.0)[1] == b"x"


def test_epoch_numbers_wrap() -> None:
    a, b = sleeve_pair(encrypted=False, rekey_after=1)
    last = None
    for i in range(65536 + 5):
        d = a.seal(Kind.DATA, i.to_bytes(4, "big"), 0.0)
        assert b.open(d, 0.0)[1] == i.to_bytes(4, "big")
        if i == 65535:
            last = d
    assert a.epoch_send == b.epoch_recv == 4
    assert last is not None and peek(last)[1] == 65535
    assert drop_reason(b, last) == "stale epoch"


def test_encrypted_ratchet_across_the_wrap() -> None:
    a, b = sleeve_pair(rekey_after=1)
    for _ in range(65536 + 2):
        d = a.seal(Kind.DATA, b"x", 0.0)
        b.open(d, 0.0)
    assert peek(d)[1] == 1
    key = independent_ratchet(K1, 65537)
    assert ChaCha20Poly1305(key).decrypt(bytes(12), d[HEADER_LEN:], d[:HEADER_LEN]) == b"x"


def test_body_limits() -> None:
    for encrypted in (True, False):
        a, b = sleeve_pair(encrypted)
        d = a.seal(Kind.DATA, bytes(max_body(encrypted)), 0.0)
        assert len(d) == MAX_DATAGRAM
        assert b.open(d, 0.0)[1] == bytes(max_body(encrypted))
        with pytest.raises(LocalProtocolError):
            a.seal(Kind.DATA, bytes(max_body(encrypted) + 1), 0.0)


def test_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        SleeveSession(conn_uid=1, send_key=K1, recv_key=None, now=0.0)
    with pytest.raises(LocalProtocolError):
        SleeveSession(conn_uid=1, send_key=b"short", recv_key=K1, now=0.0)
    with pytest.raises(LocalProtocolError):
        SleeveSession(conn_uid=1, send_key=K1, recv_key=K2, now=0.0, rekey_after=0)
    a, _ = sleeve_pair()
    with pytest.raises(LocalProtocolError):
        a.seal(7, b"", 0.0)  # type: ignore[arg-type]


def test_stats_snapshot() -> None:
    a, b = sleeve_pair()
    b.open(a.seal(Kind.DATA, b"abc", 0.0), 0.0)
    drop_reason(b, b"")
    s = b.stats
    assert (s.opened, s.opened_bytes, s.epoch_recv) == (1, 3, 0)
    assert set(s.drops) == set(DROP_REASONS) and s.drops["malformed"] == 1
    drop_reason(b, b"")
    assert s.drops["malformed"] == 1 and b.stats.drops["malformed"] == 2


# -- bodies -------------------------------------------------------------------------------

def frame(n: int, fill: int = 0xAB) -> bytes:
    return bytes([fill]) * n


def test_entries_round_trip() -> None:
    entries = [(5, 7, 0, frame(60)), (5, 0, 1, frame(24 + 100, 0xCD)), (9, 5, 1, frame(24))]
    body = encode_entries(entries)
    assert len(body) == sum(ENTRY_OVERHEAD + len(f) for *_, f in entries)
    assert body[:ENTRY_OVERHEAD] == bytes([0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 60])
    got = decode_entries(body)
    assert [(s, d, f, bytes(fr)) for s, d, f, fr in got] == entries
    assert all(isinstance(fr, memoryview) for *_, fr in got)
    big = (1 << 48) - 1
    assert decode_entries(encode_entries([(big, big - 1, 0, memoryview(frame(14)))]))[0][:2] \
        == (big, big - 1)


def entry(src: int, dst: int, flags: int, n: int, payload: bytes | None = None) -> bytes:
    head = struct.pack(">HIHIBI", src >> 32, src & 0xFFFFFFFF, dst >> 32, dst & 0xFFFFFFFF,
                       flags, n)
    return head + (payload if payload is not None else bytes(n))


@pytest.mark.parametrize("body,why", [
    (b"", "no entries"),
    (entry(1, 2, 0, 60)[:16], "truncated header"),
    (entry(1, 2, 0, 60)[:-1], "truncated frame"),
    (entry(1, 2, 0, 60) + b"\x00", "trailing byte"),
    (entry(1, 2, 0, 0), "zero length"),
    (entry(1, 2, 0, 13), "shorter than Ethernet"),
    (entry(1, 2, 1, 23), "shorter than vnet + Ethernet"),
    (entry(3, 3, 0, 60), "to itself"),
    (entry(0, 3, 0, 60), "from peer 0"),
    (entry(1, 2, 4, 60), "unknown flag"),  # bits 0 (vnet) and 1 (relay only) are known
    (entry(1, 2, 0, 60, bytes(10)), "length beyond the body"),
])
def test_entries_are_strict(body: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_entries(body)


def test_encode_entries_refuses_misuse() -> None:
    for bad in [[], [(1, 1, 0, frame(20))], [(0, 1, 0, frame(20))], [(1, 2, 4, frame(20))],
                [(1, 2, 0, b"")], [(1, 1 << 48, 0, frame(20))]]:
        with pytest.raises(LocalProtocolError):
            encode_entries(bad)


def test_heartbeat_and_probe_bodies() -> None:
    hb = encode_heartbeat(0xAABBCCDDEEFF, 2**64 - 1, 12345, 1410)
    assert len(hb) == 25 and hb[-3:] == bytes([0x05, 0x82, 0])
    assert decode_heartbeat(hb) == (0xAABBCCDDEEFF, 2**64 - 1, 12345, 1410, 0)
    assert decode_heartbeat(memoryview(hb)) == decode_heartbeat(hb)
    got = decode_heartbeat(encode_heartbeat(7, 8, 9, 1400, flags=0x81))
    assert (got.sender, got.uid, got.nonce, got.mtu, got.flags) == (7, 8, 9, 1400, 0x81)
    for bad in [hb[:-1], hb + b"\x00", bytes(len(hb))]:
        with pytest.raises(RemoteProtocolError):
            decode_heartbeat(bad)
    with pytest.raises(LocalProtocolError):
        encode_heartbeat(0, 1, 1, 1400)
    with pytest.raises(LocalProtocolError):
        encode_heartbeat(1, 1, 1, 70000)
    with pytest.raises(LocalProtocolError):
        encode_heartbeat(1, 1, 1, 1400, flags=256)
    probe = encode_probe(77, 1400)
    assert len(probe) == 1400 and decode_probe(probe) == (77, 1400)
    assert decode_probe(encode_probe(1, 8)) == (1, 8)
    for bad in [probe[:7], probe[:-1] + b"\x01"]:
        with pytest.raises(RemoteProtocolError):
            decode_probe(bad)
    with pytest.raises(LocalProtocolError):
        encode_probe(1, max_body(False) + 1)
    with pytest.raises(LocalProtocolError):
        encode_probe(1, 7)


@pytest.mark.parametrize("start", [0.0, 4002.353689016469])  # (start + 120) - start < 120
def test_a_timer_that_fired_finds_its_work_due(start: float) -> None:
    """get_timer and handle_timer use the same sums: at the very time given, the key
    rotates (no timer left at or before now, which would spin a timer task)."""
    a, _b = sleeve_pair(now=start)
    a.seal(Kind.DATA, b"x", start)
    due = a.get_timer()
    assert due is not None
    a.handle_timer(due)
    assert a.epoch_send == 1
    later = a.get_timer()
    assert later is None or later > due
