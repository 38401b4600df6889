"""Hole punching's host candidates follow the host's addresses as the kernel announces them
(router/host/nlevents.py), not on a poll: an address added to the underlay is a candidate
within seconds, and gone again when it is removed."""

from __future__ import annotations

import json

from weftnet.router.tools.testbed import Testbed

from .weftctl import launch, wait_for


def candidates(tb: Testbed, host: str) -> list[str]:
    rep = json.loads(tb.weft(host, "report").stdout)
    return list(rep["router"]["punch"]["candidates"]["host"])


def test_host_candidates_follow_address_changes() -> None:
    with Testbed(("h1",)) as tb:
        launch(tb, "h1")
        own = f"{tb.address('h1')}:6783"
        wait_for("the underlay address as a candidate", lambda: own in candidates(tb, "h1"))
        tb.run("h1", ["ip", "addr", "add", "192.0.2.77/24", "dev", "eth0"])
        # the backstop poll is every 300 s: only the address event can make this in time
        wait_for("the new address as a candidate",
                 lambda: "192.0.2.77:6783" in candidates(tb, "h1"), timeout=10)
        tb.run("h1", ["ip", "addr", "del", "192.0.2.77/24", "dev", "eth0"])
        wait_for("the address gone", lambda: "192.0.2.77:6783" not in candidates(tb, "h1"),
                 timeout=10)
        assert own in candidates(tb, "h1")
