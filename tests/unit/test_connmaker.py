"""ConnectionMaker alone: which addresses it dials and when, in virtual time.

Every test draws jitter from a seeded ``random.Random``; where the exact delay matters a
twin rng with the same seed predicts it, so a failure names the seed and the attempt.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from weftnet.proto.connmaker import (
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    RESET_AFTER,
    ConnectionMaker,
    LiveConnections,
    TargetState,
    join_host_port,
    split_host,
    split_host_port,
)
from weftnet.proto.peername import PeerName

A = "10.0.0.1:6783"
B = "10.0.0.2:6783"
C = "10.0.0.3:6783"
D = "10.0.0.4:6783"
E = "10.0.0.5:6783"
V6 = "[fd00::7]:6783"
PEER_A: PeerName = 0x0200000000A1
REFUSED = "connection refused"


def maker(seed: int = 1, *, conn_limit: int = 100, discovery: bool = True) -> ConnectionMaker:
    return ConnectionMaker(conn_limit=conn_limit, discovery=discovery, rng=random.Random(seed))


def due(cm: ConnectionMaker, now: float, *, connected: Iterable[str] = (),
        inbound_ips: Iterable[str] = (), peers: Iterable[PeerName] = (),
        n: int = 0) -> list[str]:
    return cm.due(now, LiveConnections(frozenset(connected), frozenset(inbound_ips),
                                       frozenset(peers), n))


def state(cm: ConnectionMaker, addr: str) -> TargetState | None:
    target = cm.target(addr)
    return None if target is None else target.state


def next_try(cm: ConnectionMaker, addr: str) -> float:
    target = cm.target(addr)
    assert target is not None
    return target.next_try


def fail_until(cm: ConnectionMaker, addr: str, attempts: int, now: float = 0.0) -> float:
    """Dial and fail ``attempts`` times, each as soon as due; return the time of the last."""
    for _ in range(attempts):
        now = max(now, next_try(cm, addr))
        assert due(cm, now) == [addr]
        cm.attempt_failed(addr, now, REFUSED)
    return now


# --- backoff ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_backoff_doubles_from_one_second_to_the_cap_with_jitter(seed: int) -> None:
    cm = maker(seed)
    twin = random.Random(seed)  # draws exactly what the maker draws, in the same order
    cm.add([A])
    now = 0.0
    nominals = []
    for attempt in range(1, 11):
        assert due(cm, now) == [A], f"seed {seed} attempt {attempt}"
        assert state(cm, A) is TargetState.CONNECTING
        cm.attempt_failed(A, now, REFUSED)
        target = cm.target(A)
        assert target is not None and target.state is TargetState.RETRYING
        assert target.attempt == attempt and target.last_error == REFUSED
        nominal = min(MAX_BACKOFF, INITIAL_BACKOFF * 2 ** (attempt - 1))
        nominals.append(nominal)
        delay = target.next_try - now
        assert 0.5 * nominal <= delay <= nominal, f"seed {seed} attempt {attempt}"
        assert target.next_try == now + nominal * twin.uniform(0.5, 1.0)
        assert cm.get_timer() == target.next_try
        # not a moment early
        assert due(cm, target.next_try - 1e-6) == []
        now = target.next_try
    assert nominals == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


def test_jitter_spreads_simultaneous_failures() -> None:
    """Peers that lose the same neighbour at once do not re-dial in lockstep."""
    cm = maker(7, conn_limit=1000)
    addrs = [f"10.1.{i // 200}.{i % 200 + 1}:6783" for i in range(200)]
    cm.add(addrs)
    assert due(cm, 0.0) == sorted(addrs)
    for addr in addrs:
        cm.attempt_failed(addr, 0.0, REFUSED)
    delays = [next_try(cm, a) for a in addrs]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) == len(delays)
    assert min(delays) < 0.55 and max(delays) > 0.95  # the whole [0.5, 1.0] range is used


def test_backoff_resets_after_a_connection_that_lived_long_enough() -> None:
    cm = maker(3)
    cm.add([A])
    fail_until(cm, A, 4)  # next nominal delay would be 16 s
    now = 1000.0  # a round number: the lifetime below is exactly RESET_AFTER
    assert due(cm, now) == [A]
    cm.connected(A, PEER_A, now)
    assert state(cm, A) is TargetState.CONNECTED and cm.get_timer() is None
    cm.attempt_failed(A, now + RESET_AFTER, "peer timed out")
    target = cm.target(A)
    assert target is not None
    assert target.attempt == 1 and target.last_error == "peer timed out"
    assert 0.5 <= target.next_try - (now + RESET_AFTER) <= INITIAL_BACKOFF


def test_backoff_keeps_growing_after_a_short_lived_connection() -> None:
    cm = maker(3)
    cm.add([A])
    fail_until(cm, A, 4)
    now = next_try(cm, A)
    assert due(cm, now) == [A]
    cm.connected(A, PEER_A, now)
    cm.attempt_failed(A, now + RESET_AFTER - 1.0, "peer timed out")
    target = cm.target(A)
    assert target is not None and target.attempt == 5
    assert 8.0 <= target.next_try - (now + RESET_AFTER - 1.0) <= 16.0


# --- permanent failure ----------------------------------------------------------------------------


def test_permanent_failure_is_never_due_until_added_again() -> None:
    cm = maker(5)
    cm.add([A, B])
    assert due(cm, 0.0) == [A, B]
    cm.attempt_failed(A, 0.5, "cannot connect to ourself", permanent=True)
    cm.attempt_failed(B, 0.5, REFUSED)
    target = cm.target(A)
    assert target is not None and target.state is TargetState.FAILED
    assert target.last_error == "cannot connect to ourself"
    assert cm.get_timer() == next_try(cm, B)  # B's retry only: FAILED sets no timer
    assert [t.address for t in cm.waiting(LiveConnections())] == [A, B]
    for now in (1.0, 100.0, 1e9):
        assert A not in due(cm, now)
    assert state(cm, A) is TargetState.FAILED
    # rediscovering the address does not resurrect it either
    cm.set_discovered([A])
    assert state(cm, A) is TargetState.FAILED and A not in due(cm, 2e9)
    # an explicit connect does
    cm.add([A])
    target = cm.target(A)
    assert target is not None and target.state is TargetState.IDLE and target.attempt == 0
    assert due(cm, 2e9) == [A]


def test_forgetting_a_failed_target_removes_it() -> None:
    cm = maker(5)
    cm.add([A])
    due(cm, 0.0)
    cm.attempt_failed(A, 0.0, "cannot connect to ourself", permanent=True)
    cm.forget([A])
    assert cm.target(A) is None and cm.waiting(LiveConnections()) == [] and cm.get_timer() is None


# --- what is not dialled -------------------------------------------------------------------------


def test_conn_limit_counts_connections_and_dials_in_flight() -> None:
    cm = maker(1, conn_limit=3)
    cm.add([A, B, C, D, E])
    assert due(cm, 0.0, n=1) == [A, B]  # sorted, two more reach the limit
    for addr in (C, D, E):
        target = cm.target(addr)
        assert target is not None and target.state is TargetState.IDLE
        assert target.last_error == "connection limit of 3 reached"
    # A and B are still being dialled: a later look must not hand out more
    assert due(cm, 1.5, n=1) == []
    # both became connections (now counted in n): still full
    cm.connected(A, PEER_A, 2.0)
    cm.connected(B, PEER_A + 1, 2.0)
    assert due(cm, 3.0, connected=[A, B], n=3) == []
    # B's connection ends: one slot, and B (sorted first, due again) takes it
    cm.attempt_failed(B, 5.0, "peer timed out")
    assert due(cm, 10.0, connected=[A], n=2) == [B]
    assert [state(cm, a) for a in (C, D, E)] == [TargetState.IDLE] * 3


def test_limited_targets_are_looked_at_again_not_spun_on() -> None:
    cm = maker(1, conn_limit=1)
    cm.add([A, B])
    assert due(cm, 0.0, n=1) == []
    timer = cm.get_timer()
    assert timer is not None and timer > 0.0  # a deadline in the past would spin the caller
    assert due(cm, timer, n=0) == [A]


def test_already_connected_address_is_not_dialled() -> None:
    cm = maker(1)
    cm.add([A, B])
    assert due(cm, 0.0, connected=[A]) == [B]
    assert state(cm, A) is TargetState.IDLE


@pytest.mark.parametrize("addr,ip", [(B, "10.0.0.2"), (V6, "fd00::7")])
def test_address_of_an_inbound_connection_is_not_dialled(addr: str, ip: str) -> None:
    assert split_host(addr) == ip
    cm = maker(1)
    cm.add([addr, C])
    assert due(cm, 0.0, inbound_ips=[ip]) == [C]
    assert due(cm, 5.0) == [addr]  # once the inbound connection is gone


def test_connected_peer_is_not_dialled_under_its_address() -> None:
    cm = maker(1)
    cm.add([A])
    assert due(cm, 0.0) == [A]
    cm.connected(A, PEER_A, 0.0)
    cm.attempt_failed(A, 10.0, "peer timed out")
    # meanwhile the peer dialled us from another address: A's retry is covered
    assert due(cm, 20.0, peers=[PEER_A]) == []
    assert due(cm, 40.0) == [A]


def test_peer_learned_from_a_failed_attempt_is_remembered() -> None:
    cm = maker(1)
    cm.add([A])
    assert due(cm, 0.0) == [A]
    cm.attempt_failed(A, 0.0, "duplicate", peer=PEER_A)
    assert due(cm, 10.0, peers=[PEER_A]) == []


@pytest.mark.parametrize("live", [
    LiveConnections(targets=frozenset({A})),
    LiveConnections(inbound_ips=frozenset({"10.0.0.1"})),
    LiveConnections(peers=frozenset({PEER_A})),
], ids=["dialled address", "inbound ip", "peer"])
def test_a_covered_target_is_neither_dialled_nor_listed_as_waiting(live: LiveConnections) -> None:
    """``due`` and ``waiting`` (what status shows) judge coverage the same way."""
    cm = maker(1)
    cm.add([A, B])
    assert due(cm, 0.0) == [A, B]
    cm.attempt_failed(A, 0.0, REFUSED, peer=PEER_A)
    cm.attempt_failed(B, 0.0, REFUSED)
    assert [t.address for t in cm.waiting(LiveConnections())] == [A, B]
    assert [t.address for t in cm.waiting(live)] == [B]
    assert cm.due(100.0, live) == [B]
    assert [t.address for t in cm.waiting(live)] == []  # B is being dialled now


@pytest.mark.parametrize("seed", [1, 2])
def test_covered_target_never_leaves_a_deadline_in_the_past(seed: int) -> None:
    """Regression: a retry skipped because the peer is already connected kept its old
    next_try, so get_timer() stayed due forever and the router's timer loop spun."""
    cm = maker(seed)
    cm.add([A])
    fail_until(cm, A, 1)
    now = next_try(cm, A) + 0.25
    for _ in range(5):
        assert due(cm, now, inbound_ips=["10.0.0.1"]) == []
        timer = cm.get_timer()
        assert timer is not None and timer > now, f"seed {seed}"
        now = timer
    assert due(cm, now) == [A]


# --- forget ------------------------------------------------------------------------------------


def test_forget_removes_idle_and_retrying_direct_targets() -> None:
    cm = maker(1)
    cm.add([A, B, C])
    assert due(cm, 0.0) == [A, B, C]
    cm.attempt_failed(B, 0.0, REFUSED)
    cm.forget([B])
    assert cm.target(B) is None
    assert cm.direct_targets() == [A, C]
    cm.forget(["10.9.9.9:6783"])  # unknown: nothing happens
    assert cm.direct_targets() == [A, C]


def test_forget_keeps_a_live_attempt_as_non_direct() -> None:
    cm = maker(1, discovery=False)
    cm.add([A, B])
    assert due(cm, 0.0) == [A, B]
    cm.connected(B, PEER_A, 0.1)
    cm.forget([A, B])
    assert cm.direct_targets() == []
    for addr, st in ((A, TargetState.CONNECTING), (B, TargetState.CONNECTED)):
        target = cm.target(addr)
        assert target is not None and target.state is st and not target.direct
    # the attempt still ends normally, and then (discovery off) the target is gone
    cm.attempt_failed(A, 1.0, REFUSED)
    cm.attempt_failed(B, 1.0, "peer timed out")
    assert cm.target(A) is None and cm.target(B) is None
    assert cm.get_timer() is None and due(cm, 100.0) == []


def test_forget_does_not_touch_discovered_targets() -> None:
    cm = maker(1)
    cm.set_discovered([A])
    cm.forget([A])
    target = cm.target(A)
    assert target is not None and not target.direct


def test_add_replace_swaps_the_direct_set() -> None:
    cm = maker(1)
    cm.add([A, B, C])
    assert due(cm, 0.0) == [A, B, C]
    cm.attempt_failed(B, 0.0, REFUSED)
    cm.add([C, D], replace=True)
    assert cm.direct_targets() == [C, D]
    target = cm.target(A)  # a live attempt is kept, as with forget
    assert target is not None and not target.direct
    assert cm.target(B) is None


# --- discovery ---------------------------------------------------------------------------------


def test_discovered_targets_are_replaced_by_set_discovered() -> None:
    cm = maker(1)
    cm.add([D])
    cm.set_discovered([A, B, D])
    target = cm.target(D)
    assert target is not None and target.direct  # a direct target stays direct
    assert due(cm, 0.0) == [A, B, D]
    cm.attempt_failed(A, 0.0, REFUSED)
    cm.set_discovered([C])
    assert cm.target(A) is None                       # waiting, no longer discovered: gone
    assert state(cm, B) is TargetState.CONNECTING      # a live attempt is kept
    assert state(cm, C) is TargetState.IDLE            # new
    assert state(cm, D) is TargetState.CONNECTING      # direct targets are not discovery's
    assert cm.direct_targets() == [D]
    assert due(cm, 1.0) == [C]
    # the live attempt ends and the address is not rediscovered: dropped on the next set
    cm.attempt_failed(B, 1.0, REFUSED)
    cm.set_discovered([C])
    assert cm.target(B) is None


def test_discovery_off_adds_nothing_and_drops_what_fails() -> None:
    cm = maker(1, discovery=False)
    cm.set_discovered([A, B])
    assert cm.target(A) is None and cm.target(B) is None
    assert due(cm, 0.0) == [] and cm.get_timer() is None


def test_turning_discovery_off_drops_discovered_targets() -> None:
    cm = maker(1)
    cm.add([D])
    cm.set_discovered([A, B])
    assert due(cm, 0.0) == [A, B, D]
    cm.attempt_failed(A, 0.0, REFUSED)
    cm.discovery = False
    cm.set_discovered([A, B])
    assert cm.target(A) is None
    assert state(cm, B) is TargetState.CONNECTING  # live: kept until it ends...
    cm.attempt_failed(B, 0.5, REFUSED)
    assert cm.target(B) is None                    # ...and then dropped, not retried
    assert cm.direct_targets() == [D]


# --- timers and reporting -------------------------------------------------------------------------


def test_get_timer_covers_only_idle_and_retrying_targets() -> None:
    cm = maker(2)
    assert cm.get_timer() is None
    cm.add([A, B, C])
    assert cm.get_timer() == 0.0  # new targets are due at once
    assert due(cm, 0.0) == [A, B, C]
    assert cm.get_timer() is None  # all being dialled
    cm.connected(A, PEER_A, 0.1)
    cm.attempt_failed(B, 0.2, REFUSED)
    cm.attempt_failed(C, 0.2, "cannot connect to ourself", permanent=True)
    assert cm.get_timer() == next_try(cm, B)
    assert [(t.address, t.state) for t in cm.waiting(LiveConnections())] == [
        (B, TargetState.RETRYING), (C, TargetState.FAILED)]


def test_dials_in_flight_are_listed_direct_and_discovered_with_when_they_began() -> None:
    cm = maker(3)
    cm.add([A])
    cm.set_discovered([B, C])
    assert due(cm, 2.0) == [A, B, C]
    cm.attempt_failed(C, 12.0, "connection timed out")
    live = LiveConnections(targets=frozenset([A]))  # A's dial became a connection
    assert [(t.address, t.dialled_at) for t in cm.dialling(live)] == [(B, 2.0)]
    assert [t.address for t in cm.waiting(live)] == [C]
    assert due(cm, next_try(cm, C)) == [C]
    dialling = {t.address: t for t in cm.dialling(live)}
    assert dialling[C].dialled_at == next_try(cm, C)
    assert dialling[C].last_error == "connection timed out"  # what status shows meanwhile


def test_unknown_addresses_are_ignored() -> None:
    cm = maker(1)
    cm.connected(A, PEER_A, 0.0)
    cm.attempt_failed(A, 0.0, REFUSED)
    cm.attempt_failed(A, 0.0, REFUSED)
    assert cm.target(A) is None and cm.get_timer() is None


@pytest.mark.parametrize("seed", [11, 12])
def test_same_seed_same_schedule(seed: int) -> None:
    def schedule() -> list[float]:
        cm = maker(seed)
        cm.add([A, B])
        out = []
        now = 0.0
        for _ in range(8):
            for addr in due(cm, now):
                cm.attempt_failed(addr, now, REFUSED)
            timer = cm.get_timer()
            assert timer is not None
            out.append(timer)
            now = timer
        return out

    assert schedule() == schedule()


@pytest.mark.parametrize("host,port", [("10.0.0.1", 6783), ("fd00::1", 1), ("h1", 65535)])
def test_host_and_port_split_what_join_made(host: str, port: int) -> None:
    address = join_host_port(host, port)
    assert split_host_port(address) == (host, port) and split_host(address) == host
