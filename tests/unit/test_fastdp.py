"""The fast path's pure core: messages, probe frames, the per-connection state machine."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto import fastdp
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.fastdp import (
    MISSES_TO_FALL,
    PROBE_INTERVAL,
    PROBE_TIMEOUT,
    RISE_AFTER,
    FastLink,
    Hello,
    ProbeAck,
    decode_message,
    decode_probe,
    desired_fdb,
    encode_probe,
)

BR = bytes.fromhex("02aa00000001")
MACS = frozenset({bytes.fromhex("020000000001"), bytes.fromhex("020000000002")})
HELLO = Hello(True, BR, MACS)


def new_link(now: float = 0.0) -> FastLink:
    ids = itertools.count(1)
    return FastLink(1450, now, lambda: next(ids))


def run_round(fl: FastLink, now: float, *, full: bool, small: bool) -> float:
    """One probe round at ``now``: answer the chosen probes, conclude; the next round's time."""
    healthy = fl.fast and fl.misses == 0
    probes = fl.probes_due(now)
    # a healthy fast link sends the full-size probe alone (the small one explains losses)
    assert [p.size for p in probes] == ([1450] if healthy else [1450, fastdp.SMALL_PROBE])
    if full:
        assert fl.on_ack(probes[0].probe_id)
    if small and not healthy:
        assert fl.on_ack(probes[1].probe_id)
    fl.handle_timer(now + PROBE_TIMEOUT)
    return now + PROBE_INTERVAL


macs = st.binary(min_size=6, max_size=6)


@given(st.booleans(), macs, st.frozensets(macs, max_size=20), st.text(max_size=50))
def test_hello_round_trip(enabled: bool, bridge: bytes, others: frozenset[bytes], reason: str) -> None:
    hello = Hello(enabled, bridge, others, reason)
    assert decode_message(hello.encode()) == hello


@given(st.integers(0, 2**64 - 1))
def test_probe_ack_round_trip(probe_id: int) -> None:
    assert decode_message(ProbeAck(probe_id).encode()) == ProbeAck(probe_id)


@given(st.integers(1, 2**48 - 1), st.integers(0, 2**64 - 1), st.integers(0, 9000))
def test_probe_frame_round_trip(sender: int, probe_id: int, size: int) -> None:
    frame = encode_probe(BR, BR, sender, probe_id, size)
    assert len(frame) == max(14 + size, fastdp.PROBE_HEADER)
    assert frame[12:14] == b"\x88\xb5"
    assert decode_probe(frame) == (sender, probe_id)


@pytest.mark.parametrize("payload", [b"", b"\x91\x03", b"\x92\x02\xa1x", b"\x95\x01\xc3\xa1x\x90\xa0"])
def test_bad_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)


def test_bad_probes_are_refused() -> None:
    good = encode_probe(BR, BR, 7, 1, 100)
    for bad in (good[:20], good[:12] + b"\x08\x00" + good[14:], good[:14] + b"XXXX" + good[18:],
                encode_probe(BR, BR, 0, 1, 100)):
        with pytest.raises(RemoteProtocolError):
            decode_probe(bad)


def test_first_answered_round_makes_a_fresh_link_fast() -> None:
    fl = new_link()
    assert fl.probes_due(0.0) == [] and not fl.fast      # no hello yet: nothing to probe
    fl.on_hello(HELLO, 0.1)
    assert fl.reason == "probing the VXLAN path"
    run_round(fl, 0.1, full=True, small=True)
    assert fl.fast and fl.reason == "VXLAN probes answered" and fl.changed


def test_reasons_tell_blocked_from_mtu() -> None:
    fl = new_link()
    fl.on_hello(HELLO, 0.0)
    t = run_round(fl, 0.0, full=False, small=False)
    assert not fl.fast and "6784 blocked" in fl.reason
    run_round(fl, t, full=False, small=True)
    assert not fl.fast and fl.reason.startswith("MTU too small") and "1500" in fl.reason


def test_fall_needs_consecutive_misses_and_rise_needs_a_streak() -> None:
    fl = new_link()
    fl.on_hello(HELLO, 0.0)
    t = run_round(fl, 0.0, full=True, small=True)
    for _ in range(MISSES_TO_FALL - 1):
        t = run_round(fl, t, full=False, small=False)
        assert fl.fast                                    # one lost round is not a failure
    t = run_round(fl, t, full=True, small=True)          # an answer resets the count
    for _ in range(MISSES_TO_FALL):
        t = run_round(fl, t, full=False, small=False)
    assert not fl.fast and "timed out" in fl.reason
    for i in range(1, RISE_AFTER):
        t = run_round(fl, t, full=True, small=True)
        assert not fl.fast and f"{i} of {RISE_AFTER}" in fl.reason
    t = run_round(fl, t, full=False, small=False)         # a miss restarts the streak
    for _ in range(RISE_AFTER):
        assert not fl.fast
        t = run_round(fl, t, full=True, small=True)
    assert fl.fast


def test_disabled_peer_and_silent_peer_say_why() -> None:
    fl = new_link()
    fl.handle_timer(fastdp.HELLO_WAIT - 0.01)
    assert "hello" in fl.reason and not fl.reason.startswith("the peer does not offer")
    assert fl.get_timer() == fastdp.HELLO_WAIT
    fl.handle_timer(fastdp.HELLO_WAIT)
    assert fl.reason.startswith("the peer does not offer the fast path")
    assert fl.get_timer() is None  # said once: no timer left to fire again and again
    fl.on_hello(Hello(False, BR, frozenset(), "fast path disabled (--no-fastdp)"), 6.0)
    assert "--no-fastdp" in fl.reason and fl.probes_due(7.0) == []
    assert fl.get_timer() is None


def test_a_peer_turning_the_fast_path_off_ends_it_at_once() -> None:
    fl = new_link()
    fl.on_hello(HELLO, 0.0)
    run_round(fl, 0.0, full=True, small=False)
    assert fl.fast
    fl.on_hello(Hello(False, BR, frozenset(), "no kernel VXLAN here"), 1.5)
    assert not fl.fast and "no kernel VXLAN" in fl.reason


def test_send_errors_and_stray_acks() -> None:
    fl = new_link()
    fl.on_hello(HELLO, 0.0)
    probes = fl.probes_due(0.0)
    assert not fl.on_ack(12345)
    fl.send_failed(probes[0].probe_id, "Message too long")
    fl.handle_timer(PROBE_TIMEOUT)
    assert "cannot send VXLAN probes: Message too long" in fl.reason
    assert fl.get_timer() == PROBE_INTERVAL


def test_desired_fdb_programs_probes_first_and_traffic_only_when_fast() -> None:
    other = Hello(True, bytes.fromhex("02bb00000001"), frozenset({bytes.fromhex("020000000009")}))
    vx, br, flood = desired_fdb([("10.0.0.1", HELLO, False), ("10.0.0.2", other, True),
                                 ("10.0.0.3", None, False),
                                 ("10.0.0.4", Hello(False, BR, MACS), True)])
    assert vx == {"02:aa:00:00:00:01": "10.0.0.1", "02:bb:00:00:00:01": "10.0.0.2",
                  "02:00:00:00:00:09": "10.0.0.2"}
    assert br == {"02:bb:00:00:00:01", "02:00:00:00:00:09"}
    assert flood == {"10.0.0.2"}


# starts where (start + wait) - start < wait in floating point, for HELLO_WAIT and PROBE_TIMEOUT
@pytest.mark.parametrize("start", [0.0, 8189.035009917622, 511.5149660301466])
def test_timers_that_fired_find_their_work_due(start: float) -> None:
    """get_timer and handle_timer use the same sums: at the very time given, the work is due
    (no timer left at or before now, which would spin a timer task)."""
    fl = new_link(start)
    due = fl.get_timer()
    assert due == start + fastdp.HELLO_WAIT
    fl.handle_timer(due)
    assert fl.get_timer() is None
    fl = new_link(start)
    fl.on_hello(Hello(True, BR, frozenset()), start)
    fl.probes_due(start)
    due = min(r.sent + fastdp.PROBE_TIMEOUT for r in fl.rounds)
    fl.handle_timer(due)
    assert not fl.rounds and "timed out" in fl.reason
    later = fl.get_timer()
    assert later is not None and later > due


def test_a_healthy_fast_link_probes_at_the_steady_interval_and_rechecks_a_miss_soon() -> None:
    fl = new_link()
    fl.steady = 7.5
    fl.on_hello(HELLO, 0.0)
    run_round(fl, 0.0, full=True, small=True)
    assert fl.fast and fl.get_timer() == PROBE_INTERVAL  # the round set before it was fast
    run_round(fl, PROBE_INTERVAL, full=True, small=False)
    t = PROBE_INTERVAL + 7.5
    assert fl.get_timer() == t
    probes = fl.probes_due(t)
    assert len(probes) == 1
    fl.handle_timer(t + PROBE_TIMEOUT)                   # unanswered
    assert fl.fast and fl.get_timer() == t + PROBE_INTERVAL  # not t + 7.5
    run_round(fl, t + PROBE_INTERVAL, full=False, small=True)  # both probes: diagnosed
    assert not fl.fast and "MTU too small" in fl.reason


@pytest.mark.parametrize("links", [1, 2, 4, 5, 15, 63, 200])
def test_a_routers_idle_rounds_and_hellos_per_second_do_not_grow_with_its_links(
        links: int) -> None:
    assert links / fastdp.steady_interval(links) <= max(fastdp.ROUNDS_PER_SECOND,
                                                         links / PROBE_INTERVAL)
    assert links / fastdp.steady_interval(links) <= fastdp.ROUNDS_PER_SECOND or links < 4
    assert links / fastdp.hello_refresh(links) <= max(fastdp.HELLOS_PER_SECOND,
                                                       links / fastdp.HELLO_REFRESH)
    assert fastdp.steady_interval(links) >= PROBE_INTERVAL


def test_the_shell_paces_its_links_by_their_number() -> None:
    import random

    from weftnet.proto.mesh import MeshConfig, MeshNode
    from weftnet.router.dataplane.fastpath import HELLO_FAST_FOR, HELLO_RETRY, FastPath

    mesh = MeshNode(MeshConfig(name=1, nickname="a", uid=1), now=0.0,
                    random_bytes=random.Random(1).randbytes, rng=random.Random(1))
    fast = FastPath(mesh=mesh, enabled=True, disabled_reason="", port=6784, mtu=1450)
    for conn_id in range(1, 16):
        fast.follow(conn_id, 0x100 + conn_id, "p", f"10.0.0.{conn_id}", True, 0.0)
    steady = {e.fl.steady for e in fast.entries.values() if e.fl is not None}
    assert steady == {fastdp.steady_interval(15)} and fastdp.steady_interval(15) > PROBE_INTERVAL
    for conn_id in range(2, 16):
        fast.forget(conn_id)
    assert [e.fl.steady for e in fast.entries.values() if e.fl] == [PROBE_INTERVAL]
    # until the peer shows it has our hello (a probe from it), hellos go every HELLO_RETRY
    # (no route to it yet here: its connection is not established)
    entry = fast.entries[1]
    assert entry.fl is not None and not entry.hello_routed and not entry.heard
    entry.fl.hello_overdue = True  # only the hello's timer is left
    assert fast.get_timer() == HELLO_RETRY
    fast.handle_timer(HELLO_RETRY)
    assert entry.hello_sent == HELLO_RETRY and fast.get_timer() == 2 * HELLO_RETRY
    entry.heard = entry.hello_routed = True  # then the refresh interval
    assert fast.get_timer() == HELLO_RETRY + fastdp.hello_refresh(1)
    entry.heard = False  # and not for ever when the peer never probes (6784 blocked)
    entry.hello_sent = HELLO_FAST_FOR
    assert fast.get_timer() == HELLO_FAST_FOR + fastdp.hello_refresh(1)


def test_deciding_until_the_first_verdict() -> None:
    fl = new_link()
    assert fl.deciding                                   # no hello yet, within HELLO_WAIT
    fl.on_hello(HELLO, 0.0)
    assert fl.deciding
    run_round(fl, 0.0, full=True, small=True)
    assert fl.fast and not fl.deciding                   # fast: the VXLAN's MTU holds
    lost = new_link()
    lost.on_hello(HELLO, 0.0)
    run_round(lost, 0.0, full=False, small=True)
    assert not lost.fast and not lost.deciding           # a verdict: the sleeve's MTU holds
    silent = new_link()
    silent.handle_timer(fastdp.HELLO_WAIT)
    assert not silent.deciding
    off = new_link()
    off.on_hello(Hello(False, BR, frozenset(), "disabled"), 0.0)
    assert not off.deciding


def test_fdb_events_are_told_apart_from_the_hosts_neighbours() -> None:
    import struct

    from weftnet.router.dataplane.vxlan import bridge_fdb_changed

    def msg(family: int, extra: int = 12) -> bytes:
        body = bytes([family]) + bytes(extra - 1)   # ndmsg (family first), attributes
        n = 16 + len(body)
        return struct.pack("<IHHII", n, 28, 0, 0, 0) + body + bytes(-n % 4)

    assert not bridge_fdb_changed(msg(2)) and not bridge_fdb_changed(msg(10, 13))  # ARP, ND
    assert bridge_fdb_changed(msg(7))
    assert bridge_fdb_changed(msg(2, 13) + msg(10) + msg(7))
    assert not bridge_fdb_changed(b"") and not bridge_fdb_changed(bytes(16))
    assert not bridge_fdb_changed(struct.pack("<IHHII", 0, 28, 0, 0, 0) + b"\x02")  # bad length
