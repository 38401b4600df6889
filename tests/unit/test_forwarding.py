"""Forwarding decisions: learning, unicast, floods along trees, relays, drops, expiry."""

from __future__ import annotations

import pytest

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.ethernet import BROADCAST
from weftnet.proto.forwarding import DROP_REASONS, Forwarder
from weftnet.proto.routes import Routes
from weftnet.proto.topology import ConnectionInfo, PeerRecord

US, P2, P3, P4 = 1, 2, 3, 4
M_LOCAL, M_LOCAL2, M_REMOTE, M_OTHER = 0x0A0000000001, 0x0A0000000002, 0x0A0000000003, 0x0A0000000004
MCAST = 0x01005E000001


def line_routes(us: int) -> Routes:
    """1 - 2 - 3 - 4, and the real route computation over it."""
    edges = {1: [2], 2: [1, 3], 3: [2, 4], 4: [3]}
    peers = {n: PeerRecord(n, f"n{n}", 1, 1, tuple(ConnectionInfo(r, "", True, True)
                                                   for r in edges[n])) for n in edges}
    return Routes.compute(peers, us)


def forwarder(us: int = US, **kw: float) -> Forwarder:
    f = Forwarder(us, **kw)  # type: ignore[arg-type]
    r = line_routes(us)
    f.set_routes(r.unicast, r.broadcast_next_hops)
    return f


def test_alone_a_flood_goes_nowhere() -> None:
    f = Forwarder(US)
    assert f.from_local(BROADCAST, M_LOCAL, 0.0) == ()
    assert f.from_local(M_REMOTE, M_LOCAL, 0.0) == ()


def test_local_frames() -> None:
    f = forwarder()
    assert f.from_local(BROADCAST, M_LOCAL, 0.0) == ((P2, 0),)     # flood on our tree
    assert f.from_local(M_REMOTE, M_LOCAL, 0.0) == ((P2, 0),)      # unknown: flood
    assert f.from_remote(P4, US, M_LOCAL, M_REMOTE, 0.0) == (True, ())
    assert f.from_local(M_REMOTE, M_LOCAL, 1.0) == ((P2, P4),)     # learned at 4, via 2
    assert f.from_local(MCAST, M_LOCAL, 1.0) == ((P2, 0),)
    assert f.from_local(M_LOCAL2, M_LOCAL, 1.0) == ((P2, 0),)
    # the bridge delivers local-to-local frames itself; one reaching us is dropped
    assert f.from_local(M_LOCAL, M_LOCAL2, 1.0) == "local destination"
    assert f.from_local(M_LOCAL2, M_LOCAL, 1.0) == "local destination"
    assert f.stats["local destination"] == 2


def test_remote_frames_and_relays() -> None:
    f = forwarder(us=P2)                        # the middle of 1 - 2 - 3 - 4
    assert f.from_remote(US, 0, BROADCAST, M_LOCAL, 0.0) == (True, ((P3, 0),))
    assert f.from_remote(P4, 0, BROADCAST, M_REMOTE, 0.0) == (True, ((US, 0),))
    assert f.from_remote(P3, 0, BROADCAST, M_OTHER, 0.0) == (True, ((US, 0),))
    assert f.from_remote(US, P4, M_REMOTE, M_LOCAL, 0.0) == (False, ((P3, P4),))
    assert f.from_remote(P4, P2, M_LOCAL2, M_REMOTE, 0.0) == (True, ())
    assert f.from_remote(US, 9, M_REMOTE, M_LOCAL, 0.0) == "no route"
    assert f.from_remote(P2, 0, BROADCAST, M_LOCAL, 0.0) == "loop"
    assert f.from_remote(US, 0, BROADCAST, MCAST, 0.0) == "invalid source"
    assert f.stats["no route"] == 1 and f.stats["loop"] == 1
    # what the relays taught it
    assert {m: p for m, (p, _) in f.macs().items()} == {M_LOCAL: US, M_REMOTE: P4, M_OTHER: P3}


def test_no_route_to_a_known_mac() -> None:
    f = forwarder()
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 0.0)
    f.set_routes({}, lambda source: ())         # 4 became unreachable
    assert f.from_local(M_REMOTE, M_LOCAL, 0.0) == "no route"


def test_route_changes_take_effect() -> None:
    f = forwarder()
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 0.0)
    assert f.from_local(M_REMOTE, M_LOCAL, 0.0) == ((P2, P4),)
    f.set_routes({P3: P3, P4: P3, P2: P3}, lambda source: (P3,) if source == US else ())
    assert f.from_local(M_REMOTE, M_LOCAL, 0.0) == ((P3, P4),)
    assert f.from_local(BROADCAST, M_LOCAL, 0.0) == ((P3, 0),)


def test_mac_conflict_keeps_the_local_claim() -> None:
    f = forwarder(us=P2)
    f.from_local(BROADCAST, M_LOCAL, 0.0)
    # a remote peer claims our local MAC: not learned, not delivered, still relayed
    assert f.from_remote(US, 0, BROADCAST, M_LOCAL, 1.0) == (False, ((P3, 0),))
    assert f.from_remote(P4, P2, M_LOCAL2, M_LOCAL, 1.0) == "mac conflict"
    assert f.from_remote(P4, US, M_LOCAL2, M_LOCAL, 1.0) == (False, ((US, US),))
    assert f.stats["mac conflict"] == 3
    assert f.macs()[M_LOCAL][0] == P2
    # once the local claim expired, the remote one wins (the container moved)
    assert f.from_remote(US, 0, BROADCAST, M_LOCAL, 301.0) == (True, ((P3, 0),))
    assert f.macs()[M_LOCAL][0] == US
    # and a local frame takes it back at once
    f.from_local(BROADCAST, M_LOCAL, 302.0)
    assert f.macs()[M_LOCAL][0] == P2 and f.stats["mac moved"] == 2


def test_forget_mac_and_peer() -> None:
    f = forwarder()
    f.from_local(BROADCAST, M_LOCAL, 0.0)
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 0.0)
    f.from_remote(P4, 0, BROADCAST, M_OTHER, 0.0)
    assert f.forget_peer(P4) == 2
    assert f.from_local(M_REMOTE, M_LOCAL, 0.0) == ((P2, 0),)      # unknown again: flood
    assert f.forget_mac(M_LOCAL) and not f.forget_mac(M_LOCAL)
    assert f.from_remote(P4, 0, BROADCAST, M_LOCAL, 0.0) == (True, ())   # no conflict now


def test_expiry_and_timer() -> None:
    f = forwarder(mac_expiry=10.0, refresh=0.0)
    assert f.get_timer() is None
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 0.0)
    f.from_remote(P3, 0, BROADCAST, M_OTHER, 4.0)
    assert f.get_timer() == 10.0
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 5.0)     # refreshed: now the newest
    assert f.get_timer() == 14.0
    assert f.expire(13.9) == 0
    assert f.expire(14.0) == 1
    assert list(f.macs(14.0)) == [M_REMOTE] and f.macs(14.0)[M_REMOTE] == (P4, 9.0)
    assert f.from_local(M_OTHER, M_LOCAL, 14.0) == ((P2, 0),)      # expired: flood
    # expiry is also checked on lookup, without waiting for expire()
    assert f.from_local(M_REMOTE, M_LOCAL, 14.9) == ((P2, P4),)
    assert f.from_local(M_REMOTE, M_LOCAL, 15.0) == ((P2, 0),)


def test_refresh_granularity() -> None:
    f = forwarder(mac_expiry=10.0, refresh=1.0)
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 0.0)
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 0.5)      # within refresh: not moved
    assert f.get_timer() == 10.0
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 1.0)
    assert f.get_timer() == 11.0


def test_cache_is_bounded_and_evicts_the_oldest() -> None:
    f = forwarder(max_macs=3)
    for i, mac in enumerate([M_LOCAL, M_LOCAL2, M_REMOTE]):
        f.from_local(BROADCAST, mac, float(i))
    f.from_local(BROADCAST, M_LOCAL, 5.0)               # refreshed: M_LOCAL2 is oldest
    f.from_remote(P4, 0, BROADCAST, M_OTHER, 6.0)
    assert sorted(f.macs()) == sorted([M_LOCAL, M_REMOTE, M_OTHER])
    assert f.stats["mac evicted"] == 1


def test_macs_ages_and_stats_keys() -> None:
    f = forwarder()
    f.from_remote(P4, 0, BROADCAST, M_REMOTE, 2.0)
    f.from_local(BROADCAST, M_LOCAL, 5.0)
    assert f.macs() == {M_LOCAL: (US, 0.0), M_REMOTE: (P4, 3.0)}
    assert set(DROP_REASONS) <= set(f.stats)


def test_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        Forwarder(0)
    with pytest.raises(LocalProtocolError):
        Forwarder(1, mac_expiry=1.0, refresh=1.0)
