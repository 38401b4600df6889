"""Accept limiting before authentication (proto/admission.py): pure, time passed in."""

from __future__ import annotations

from weftnet.proto.admission import (
    REFUSED_PENDING,
    REFUSED_RATE,
    REFUSED_SOURCE,
    AcceptLimiter,
)


def test_a_burst_is_admitted_then_the_rate_limits_and_refills() -> None:
    lim = AcceptLimiter(rate=2.0, burst=4.0)
    got = [lim.admit("10.0.0.9", 0.0, pending=0, pending_from_source=0) for _ in range(6)]
    assert got == [None] * 4 + [REFUSED_RATE] * 2
    # half a second at 2/s gives back one token, exactly one more connection
    assert lim.admit("10.0.0.9", 0.5, pending=0, pending_from_source=0) is None
    assert lim.admit("10.0.0.9", 0.5, pending=0, pending_from_source=0) == REFUSED_RATE
    line = lim.take_log(0.5)
    assert line is not None and "refused 3 inbound connection(s)" in line and "3 over the rate limit" in line


def test_one_flooding_source_does_not_starve_another() -> None:
    lim = AcceptLimiter(rate=1.0, burst=2.0)
    for _ in range(50):
        lim.admit("192.0.2.66", 0.0, pending=0, pending_from_source=0)
    assert lim.admit("192.0.2.7", 0.0, pending=0, pending_from_source=0) is None


def test_pending_handshakes_are_capped_per_source_and_altogether() -> None:
    lim = AcceptLimiter(max_pending_per_source=3, max_pending=5)
    assert lim.admit("a", 0.0, pending=3, pending_from_source=3) == REFUSED_SOURCE
    assert lim.admit("b", 0.0, pending=5, pending_from_source=0) == REFUSED_PENDING
    assert lim.admit("c", 0.0, pending=4, pending_from_source=2) is None
    # a refusal for pending handshakes does not spend a token
    lim2 = AcceptLimiter(burst=1.0, max_pending_per_source=1)
    assert lim2.admit("a", 0.0, pending=1, pending_from_source=1) == REFUSED_SOURCE
    assert lim2.admit("a", 0.0, pending=0, pending_from_source=0) is None


def test_the_table_of_sources_is_bounded_least_recent_first() -> None:
    lim = AcceptLimiter(max_sources=3, burst=1.0, rate=0.001)
    for source in ("a", "b", "c"):
        lim.admit(source, 0.0, pending=0, pending_from_source=0)
    lim.admit("a", 0.0, pending=0, pending_from_source=0)   # refreshes a: b is the oldest
    lim.admit("d", 0.0, pending=0, pending_from_source=0)
    assert lim.sources == 3
    # b was forgotten, so it starts again with a full bucket; a still has none
    assert lim.admit("b", 0.0, pending=0, pending_from_source=0) is None
    assert lim.admit("a", 0.0, pending=0, pending_from_source=0) == REFUSED_RATE


def test_refusals_are_logged_as_one_summary_per_interval() -> None:
    lim = AcceptLimiter(burst=1.0, rate=0.0, log_interval=10.0)
    assert lim.take_log(0.0) is None
    for _ in range(4):
        lim.admit("198.51.100.1", 0.0, pending=0, pending_from_source=0)
    line = lim.take_log(0.0)
    assert line is not None and "refused 3 inbound" in line and "198.51.100.1" in line
    lim.admit("198.51.100.1", 1.0, pending=0, pending_from_source=0)
    assert lim.take_log(5.0) is None          # within the interval: held back
    later = lim.take_log(10.0)
    assert later is not None and "refused 1 inbound" in later
    assert lim.take_log(30.0) is None         # nothing new
