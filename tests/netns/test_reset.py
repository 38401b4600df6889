"""``weft reset`` takes away everything the router made on its host, driven by the CLI.

    h1 ── lan ── h2
    c1, c2 ┘            (containers attached to h1; c1 with a DNS name)

What a router makes in its host namespace: the ``weft`` bridge, ``weft-tap``,
``weft-vxlan`` (fast path), one ``vethwepl…`` per container (whose other end is the
container's ``ethwe``), our nftables table when something is exposed, a resolv.conf under
/etc/netns/CONTAINER, and the data dir. After ``reset`` none of it is left, whether the
router was running (it hands off its IPAM space, tombstones its names and removes it all as
it exits) or had been killed (the CLI removes what it left). A second reset finds nothing
to do; a reset that cannot know which router runs here refuses with one line. Waits are
bounded liveness checks only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from weftnet.router.host.attachments import NETNS_ETC
from weftnet.router.tools.testbed import Testbed

from .weftctl import attach, kill9, launch, meshed, one_line_error, report, wait_for

INIT = ("--ipalloc-init", "consensus=2")


def links(tb: Testbed, host: str) -> list[str]:
    """The interface names in ``host``'s namespace (``ethwe@if12`` -> ``ethwe``)."""
    out = tb.run(host, ["ip", "-o", "link", "show"]).stdout
    return [line.split(":", 2)[1].strip().split("@", 1)[0] for line in out.splitlines()]


def ours(names: list[str]) -> list[str]:
    return [n for n in names if n == "weft" or n.startswith(("weft-", "vethwepl"))]


def ruleset(tb: Testbed, host: str) -> str:
    if shutil.which("nft") is None:
        return ""
    return tb.run(host, ["nft", "list", "ruleset"]).stdout


def resolv_conf(tb: Testbed, container: str) -> Path:
    return NETNS_ETC / tb.ns(container) / "resolv.conf"


def nothing_left(tb: Testbed, host: str, containers: tuple[str, ...]) -> None:
    assert ours(links(tb, host)) == [], links(tb, host)
    for c in containers:
        assert links(tb, c) == ["lo"], (c, links(tb, c))
        assert not resolv_conf(tb, c).exists()
    assert "table ip weft" not in ruleset(tb, host)
    assert not tb.data_dir(host).exists()


@pytest.fixture
def pair(testbed_factory: Any) -> Testbed:
    tb: Testbed = testbed_factory(hosts=("h1", "h2"))
    launch(tb, "h1", extra=INIT)
    launch(tb, "h2", tb.address("h1"), extra=INIT)
    wait_for("h1 and h2 meshed", lambda: meshed(tb, ("h1", "h2")))
    return tb


def test_reset_of_a_running_router_removes_everything(pair: Testbed) -> None:
    tb = pair
    attach(tb, "h1", "c1", "--name", "c1")
    attach(tb, "h1", "c2")
    if shutil.which("nft") is not None:
        tb.weft("h1", "expose", timeout=90)
        assert "table ip weft" in ruleset(tb, "h1")
    made = ours(links(tb, "h1"))
    assert {"weft", "weft-tap"} <= set(made) and sum(n.startswith("vethwepl") for n in made) == 2
    assert links(tb, "c1") == ["lo", "ethwe"] and resolv_conf(tb, "c1").exists()
    wait_for("c1's name on h2", lambda: tb.weft("h2", "dns-lookup", "c1",
                                                check=False).returncode == 0)

    done = tb.weft("h1", "reset")
    assert (done.stdout, done.stderr) == ("", "")
    nothing_left(tb, "h1", ("c1", "c2"))
    # its names were tombstoned before it left (a router that just goes away keeps them
    # for 30 s), and h2 holds the address space now
    wait_for("c1's name gone on h2", lambda: tb.weft("h2", "dns-lookup", "c1",
                                                     check=False).returncode != 0, timeout=20)
    wait_for("h2 holding all the space", lambda: [
        p["nickname"] for p in report(tb, "h2")["ipam"]["peers"] if p["addresses"]] == ["h2"])

    again = tb.weft("h1", "reset")   # idempotent: nothing left to do, nothing to say
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert ours(links(tb, "h2")) != []   # the peer's own plumbing is untouched


def test_reset_after_a_crash_removes_what_the_router_left(pair: Testbed) -> None:
    tb = pair
    attach(tb, "h1", "c1")
    kill9(tb, "h1")
    # the TAP went with the process; the bridge, the veth pair (and the VXLAN) stay
    assert "weft" in links(tb, "h1") and links(tb, "c1") == ["lo", "ethwe"]
    done = tb.weft("h1", "reset")
    assert (done.stdout, done.stderr) == ("", "")
    nothing_left(tb, "h1", ("c1",))


def test_reset_refuses_a_router_it_cannot_reach(pair: Testbed) -> None:
    tb = pair
    attach(tb, "h1", "c1")
    before = ours(links(tb, "h1"))
    # the API is elsewhere and the data dir is the router's own: it is locked
    assert "already running" in one_line_error(
        tb.weft("h1", "reset", "--http-addr", "127.0.0.1:9", check=False))
    # the API is elsewhere and the data dir another: the router's TAP says it runs here
    other = tb.tmpdir / "elsewhere"
    assert "a router runs in this network namespace" in one_line_error(
        tb.weft("h1", "reset", "--http-addr", "127.0.0.1:9", "--data-dir", str(other),
                check=False))
    assert ours(links(tb, "h1")) == before and links(tb, "c1") == ["lo", "ethwe"]
    assert tb.data_dir("h1").exists()
