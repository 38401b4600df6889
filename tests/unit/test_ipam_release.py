"""A vanished container's addresses: freed after the grace period, not at once.

The allocator is driven by hand in virtual time (``now`` is an argument); the router's
part (watching namespaces, ``WEFT_IPAM_GRACE``) is in tests/netns/test_ipam_hosts.py.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Interface, IPv4Network

import pytest

from weftnet.ipam.allocator import Allocator, Result
from weftnet.ipam.mode import ConsensusInit
from weftnet.ipam.persist import StateError, decode_state, encode_state
from weftnet.ipam.release import RELEASE_GRACE, check_grace
from weftnet.ipam.status import format_status

NAME = (0x02 << 40) | 1
UNIVERSE = IPv4Network("10.32.0.0/12")


def alone(now: float = 0.0, *, grace: float = RELEASE_GRACE, wall_offset: float = 0.0) -> Allocator:
    return Allocator(NAME, "h1", UNIVERSE, None, ConsensusInit(1), now, random.Random(1),
                     grace=grace, wall_offset=wall_offset)


def get(a: Allocator, op: int, ident: str, now: float) -> IPv4Interface:
    a.allocate(op, ident, None, now)
    r = a.next_result()
    assert isinstance(r, Result) and r.address is not None, r
    return r.address


def test_a_vanished_container_keeps_its_addresses_for_the_grace_period() -> None:
    a = alone()
    c1 = get(a, 1, "c1", 0.0)
    get(a, 2, "c2", 0.0)
    assert a.container_died("c1", 10.0) == 1
    assert a.container_died("c1", 12.0) == 1  # seen again: the first deadline stands
    assert a.get_timer() == 10.0 + RELEASE_GRACE
    st = a.status(20.0)
    assert st["releasing"] == [{"container": "c1", "addresses": [str(c1)], "in": 20.0}]
    assert st["allocated"] == 2
    text = format_status(st)
    assert f"releasing: {c1} of c1 (its namespace is gone) in 20s" in text
    assert "`weft detach c1` frees them now" in text
    # nobody else gets it meanwhile
    assert get(a, 3, "c3", 30.0) != c1
    a.handle_timer(10.0 + RELEASE_GRACE)
    assert a.lookup("c1") == [] and a.status()["releasing"] == []
    assert a.stats["released_after_grace"] == 1
    assert get(a, 4, "c4", 41.0) == c1  # the lowest free address again
    assert a.container_died("nobody", 42.0) == 0 and not a.releases


def test_a_container_that_comes_back_keeps_its_address() -> None:
    a = alone()
    c1 = get(a, 1, "c1", 0.0)
    a.container_died("c1", 5.0)
    assert get(a, 2, "c1", 6.0) == c1  # re-attached under the same name
    assert not a.releases and a.get_timer() is None
    a.handle_timer(100.0)
    assert a.lookup("c1") == [c1]


def test_detach_frees_at_once_pending_or_not() -> None:
    a = alone()
    get(a, 1, "c1", 0.0)
    a.container_died("c1", 1.0)
    assert a.free("c1", None, 2.0) == 1
    assert not a.releases and a.lookup("c1") == []
    assert a.dirty


def test_no_grace_frees_at_once_and_bad_graces_are_refused() -> None:
    a = alone(grace=0.0)
    get(a, 1, "c1", 0.0)
    assert a.container_died("c1", 1.0) == 1
    assert a.lookup("c1") == []
    for bad in (-1.0, float("nan"), float("inf"), 1e9):
        with pytest.raises(ValueError, match="grace period"):
            check_grace(bad)


def test_pending_releases_survive_a_restart_in_wall_clock_time() -> None:
    # first run: the monotonic clock reads 100 when the wall clock reads 5000
    a = alone(100.0, wall_offset=4900.0)
    c1 = get(a, 1, "c1", 100.0)
    c2 = get(a, 2, "c2", 100.0)
    a.container_died("c1", 110.0)   # freed at wall 5040
    a.container_died("c2", 100.0)   # freed at wall 5030
    saved = encode_state(a.to_state())
    assert decode_state(saved).releasing == (("c2", 5030.0), ("c1", 5040.0))
    # restarted at wall 5035 (its monotonic clock now reads 7): c2's time has passed
    b = alone(7.0, wall_offset=5028.0)
    b.load_state(decode_state(saved))
    assert b.lookup("c2") == [] and b.lookup("c1") == [c1]
    assert b.get_timer() == pytest.approx(12.0)
    b.handle_timer(12.0)
    assert b.lookup("c1") == []
    assert get(b, 3, "c3", 13.0) in (c1, c2)


def test_malformed_pending_releases_refuse_the_state() -> None:
    a = alone()
    get(a, 1, "c1", 0.0)
    state = a.to_state()
    for bad in ([["c1"]], [["", 1.0]], [["c1", "soon"]], "x", [["c1", True]]):
        with pytest.raises(StateError, match="releasing"):
            decode_state(encode_state({**state, "releasing": bad}))
    older = dict(state)
    del older["releasing"]  # files written before grace periods existed still load
    assert decode_state(encode_state(older)).releasing == ()
