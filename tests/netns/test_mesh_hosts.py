"""The mesh control plane on real hosts: routers in network namespaces, driven by the CLI
exactly as a user would (``weft launch``, ``status``, ``report``, ``connect``, ``stop``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import established, launch, report, wait_for


@pytest.fixture
def three(testbed_factory: Any) -> Testbed:
    return testbed_factory(hosts=("h1", "h2", "h3", "h4"))  # type: ignore[no-any-return]


def test_encrypted_chain_becomes_triangle_and_survives_a_stopped_peer(three: Testbed) -> None:
    tb = three
    name1 = launch(tb, "h1")
    assert len(name1) == 17 and name1.count(":") == 5
    launch(tb, "h2", tb.address("h1"))
    launch(tb, "h3", tb.address("h2"))
    wait_for("a triangle by discovery", lambda: all(
        established(report(tb, h)) == {"h1", "h2", "h3"} - {h} for h in ("h1", "h2", "h3")))
    rep = report(tb, "h1")
    assert rep["router"]["encryption"] is True
    assert all(c["encrypted"] for c in rep["router"]["connections"])
    assert {p["nickname"] for p in rep["router"]["peers"]} == {"h1", "h2", "h3"}
    status = tb.weft("h1", "status").stdout
    assert "Encryption: enabled" in status and "Peers: 3" in status
    assert tb.weft("h3", "status", "peers").stdout.count("established") == 6

    tb.weft("h2", "stop")
    wait_for("h1 and h3 to drop h2", lambda: established(report(tb, "h1")) == {"h3"}
             and established(report(tb, "h3")) == {"h1"})
    wait_for("h2 garbage-collected", lambda: {p["nickname"] for p in report(tb, "h1")["router"]["peers"]}
             == {"h1", "h3"})
    # the peers were told why h2 went away
    log = (tb.data_dir("h1") / "weft.log").read_text()
    assert "router stopping" in log


def test_wrong_and_missing_passwords_are_refused(three: Testbed) -> None:
    tb = three
    launch(tb, "h1")
    launch(tb, "h2", tb.address("h1"), password="not the password")
    launch(tb, "h3", tb.address("h1"), password=None)

    def info(host: str) -> str:
        conns = report(tb, host)["router"]["connections"]
        return " ".join(c["info"] for c in conns if c["state"] in ("retrying", "failed"))

    wait_for("wrong password reported", lambda: "wrong password" in info("h2"))
    wait_for("password on one side reported", lambda: "password on one side only" in info("h3"))
    assert established(report(tb, "h1")) == set()
    assert {p["nickname"] for p in report(tb, "h1")["router"]["peers"]} == {"h1"}
    # the right password still gets in
    launch(tb, "h4", tb.address("h1"))
    wait_for("h4 joins", lambda: established(report(tb, "h1")) == {"h4"})


def test_no_discovery_keeps_a_chain_and_relays_topology(three: Testbed) -> None:
    tb = three
    launch(tb, "h1", extra=("--no-discovery",))
    launch(tb, "h2", tb.address("h1"), extra=("--no-discovery",))
    launch(tb, "h3", tb.address("h2"), extra=("--no-discovery",))
    wait_for("h1 learns h3 through h2", lambda: {p["nickname"] for p in report(tb, "h1")["router"]["peers"]}
             == {"h1", "h2", "h3"})
    time.sleep(3)
    assert established(report(tb, "h1")) == {"h2"}
    assert established(report(tb, "h3")) == {"h2"}
    assert "PeerDiscovery: disabled" in tb.weft("h1", "status").stdout


def test_targets_persist_and_a_second_router_is_refused(three: Testbed) -> None:
    tb = three
    name = launch(tb, "h1", password=None)
    launch(tb, "h2", password=None)
    second = tb.weft("h1", "launch", check=False)
    assert second.returncode != 0
    assert "already running" in second.stderr and "Traceback" not in second.stderr

    tb.weft("h1", "connect", tb.address("h2"))
    assert tb.weft("h1", "status", "targets").stdout.split() == [f"{tb.address('h2')}:6783"]
    wait_for("h1-h2", lambda: established(report(tb, "h1")) == {"h2"})

    tb.weft("h1", "stop")
    assert launch(tb, "h1", password=None) == name  # the peer name persists
    wait_for("h1 reconnects to its persisted target",
             lambda: established(report(tb, "h1")) == {"h2"})

    tb.weft("h1", "forget", tb.address("h2"))
    assert tb.weft("h1", "status", "targets").stdout.strip() == ""
    bad = tb.weft("h1", "connect", "300.1.2.3:99999", check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
