"""The router's IPAM glue that needs no namespaces: ADDR parsing for attach, the mapping of
``--ipalloc-init`` to the core's InitMode, and the IPAM driver over a real Allocator, a fake
mesh and the daemon's timer loop, in virtual time."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from weftnet.ipam.mode import ConsensusInit, ObserverInit, SeedInit
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.peername import format_peer_name
from weftnet.router.daemon.config import add_launch_arguments, config_from_args, ipalloc_init_mode
from weftnet.router.daemon.ipam_driver import (
    IPAM_ANSWER_SLACK,
    IpamDriver,
    ipam_grace,
    load_allocator,
)
from weftnet.router.daemon.timers import TimerLoop
from weftnet.router.host.attachments import parse_address_specs
from weftnet.router.host.datadir import IPAM_FILE, DataDir


def launch_ns(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    return parser.parse_args(list(args))


def test_address_specs() -> None:
    assert parse_address_specs([]) == [None]
    assert parse_address_specs(["net:default", "net:10.40.1.0/24", "10.2.1.1/24"]) == [
        None, IPv4Network("10.40.1.0/24"), IPv4Interface("10.2.1.1/24")]


@pytest.mark.parametrize(("text", "message"), [
    ("net:10.40.1.1/24", "not an IPv4 subnet"),
    ("net:nonsense", "not an IPv4 subnet"),
    ("10.2.1.1", "prefix length"),
    ("10.2.1.0/24", "network address"),
])
def test_bad_address_specs(text: str, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        parse_address_specs([text])


def test_init_mode_defaults_to_consensus_of_the_initial_peers() -> None:
    assert ipalloc_init_mode(None, 0) == ConsensusInit(1)
    assert ipalloc_init_mode(None, 2) == ConsensusInit(3)
    assert ipalloc_init_mode("consensus", 1) == ConsensusInit(2)
    assert ipalloc_init_mode("consensus=5", 1) == ConsensusInit(5)
    assert ipalloc_init_mode("observer", 3) == ObserverInit()
    seeds = ipalloc_init_mode("seed=02:00:00:00:00:02,02:00:00:00:00:01", 0)
    assert seeds == SeedInit((0x020000000001, 0x020000000002))


def test_init_mode_from_launch_options() -> None:
    cfg = config_from_args(launch_ns("--ipalloc-init", "consensus=3", "10.0.0.2"))
    assert ipalloc_init_mode(cfg.ipalloc_init, len(cfg.peers)) == ConsensusInit(3)
    cfg = config_from_args(launch_ns("10.0.0.2", "10.0.0.3"))
    assert ipalloc_init_mode(cfg.ipalloc_init, len(cfg.peers)) == ConsensusInit(3)


def test_grace_period_from_the_environment() -> None:
    assert ipam_grace({}) == 30.0  # Weave's containerDiedTimeout
    assert ipam_grace({"WEFT_IPAM_GRACE": " 2.5 "}) == 2.5
    assert ipam_grace({"WEFT_IPAM_GRACE": "0"}) == 0.0
    for bad in ("-1", "soon", "nan", "1e9"):
        with pytest.raises(LocalProtocolError, match=r"invalid WEFT_IPAM_GRACE=.*0 to 604800"):
            ipam_grace({"WEFT_IPAM_GRACE": bad})


# --- the IPAM driver (router/daemon/ipam_driver.py): a real Allocator, a fake mesh ---------

ME, PEER = 0x020000000001, 0x020000000002
RANGE = IPv4Network("10.32.0.0/12")


class FakeMesh:
    """What the driver reads of the mesh (reachable peers, their nicknames); what it asks
    of it (gossip) goes nowhere: the tests look at the allocator, not at the messages."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(name=ME)
        self.routes = SimpleNamespace(reachable={ME})
        self.nicknames: dict[int, str] = {ME: "h1"}
        self.topology = SimpleNamespace(get=lambda peer: (
            SimpleNamespace(nickname=self.nicknames[peer]) if peer in self.nicknames else None))

    def gossip_news(self, channel: str, news: object) -> None:
        return None

    def gossip_unicast(self, channel: str, dst: int, payload: bytes, now: float) -> None:
        return None


def driver_for(data: Path, *args: str, grace: float = 30.0) -> tuple[IpamDriver, FakeMesh]:
    """A driver over a fresh allocator (``--ipalloc-init seed=ME``: it owns the whole range
    at once, unless ``args`` say otherwise) persisting in ``data``; inside trio."""
    cfg = config_from_args(launch_ns("--nickname", "h1", "--data-dir", str(data),
                                     *(args or ("--ipalloc-init", f"seed={format_peer_name(ME)}"))))
    now = trio.current_time()
    alloc = load_allocator(cfg, data / IPAM_FILE, ME, now, wall_offset=1e9, grace=grace)
    mesh = FakeMesh()
    driver = IpamDriver(alloc, mesh, DataDir(data),  # type: ignore[arg-type]
                        lambda: driver.pump(trio.current_time()))
    return driver, mesh


def in_virtual_time(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def with_timers(driver: IpamDriver, body: Callable[[], Awaitable[None]]) -> None:
    """``body()`` while the daemon's timer task serves the driver."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(TimerLoop([driver], lambda: driver.pump(trio.current_time())).run)
        await body()
        nursery.cancel_scope.cancel()


def test_driver_allocates_claims_and_a_restart_keeps_them(tmp_path: Path) -> None:
    async def main() -> None:
        driver, _ = driver_for(tmp_path)
        got, fresh = await driver.get_all("c1", [None, IPv4Interface("10.32.5.5/12"),
                                                 IPv4Interface("192.168.1.1/24"), None])
        assert got[0].ip in RANGE and got[1:] == [IPv4Interface("10.32.5.5/12"),
                                               IPv4Interface("192.168.1.1/24")]
        assert set(fresh) == set(got[:2])   # outside the range: not IPAM's to give back
        again, fresh = await driver.get_all("c1", [None])
        assert again == got[:1] and fresh == []   # idempotent: nothing taken afresh
        # a restart reads the persisted state back
        restarted, _ = driver_for(tmp_path)
        assert sorted(restarted.alloc.lookup("c1")) == sorted(got[:2])
        restarted.free("c1", ["10.32.5.5"])
        assert restarted.alloc.lookup("c1") == got[:1]

    in_virtual_time(main)


def test_a_refused_claim_gives_back_what_the_call_took(tmp_path: Path) -> None:
    async def main() -> None:
        driver, _ = driver_for(tmp_path)
        (taken,), _ = await driver.get_all("c1", [None])
        with pytest.raises(LocalProtocolError):
            await driver.get_all("c2", [None, taken])
        assert driver.alloc.lookup("c2") == []
        got, fresh = await driver.get_all("c3", [None])
        driver.release("c3", fresh)   # what attach does when plumbing fails
        assert driver.alloc.lookup("c3") == []

    in_virtual_time(main)


def test_without_consensus_an_allocation_fails_in_time_with_one_line(tmp_path: Path) -> None:
    async def main() -> None:
        driver, _ = driver_for(tmp_path, "10.0.0.2")   # consensus of two: nobody answers
        start = trio.current_time()

        async def body() -> None:
            with pytest.raises(LocalProtocolError, match="timed out") as info:
                await driver.get_all("c1", [None])
            assert "\n" not in info.value.reason
            assert trio.current_time() - start <= driver.alloc.timeout + IPAM_ANSWER_SLACK

        await with_timers(driver, body)

    in_virtual_time(main)


def test_a_vanished_container_keeps_its_addresses_for_the_grace_period(tmp_path: Path) -> None:
    async def main() -> None:
        driver, _ = driver_for(tmp_path, grace=5.0)
        got, _ = await driver.get_all("c1", [None])
        driver.namespace_gone("c1", replaced=True)    # back under its name: kept
        assert "c1" not in driver.alloc.releases
        start = trio.current_time()
        driver.namespace_gone("c1", replaced=False)
        assert "c1" in driver.alloc.releases

        async def body() -> None:
            await trio.sleep_until(start + 4.0)
            assert driver.alloc.lookup("c1") == got
            await trio.sleep_until(start + 6.0)
            assert driver.alloc.lookup("c1") == []

        await with_timers(driver, body)
        restarted, _ = driver_for(tmp_path)
        assert restarted.alloc.lookup("c1") == []     # persisted

    in_virtual_time(main)


def test_detach_frees_a_vanished_container_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        driver, _ = driver_for(tmp_path)
        got, _ = await driver.get_all("c1", [None])
        assert driver.free_released("c1") is None      # not vanished: detach's own job
        driver.namespace_gone("c1", replaced=False)
        assert driver.free_released("c1") == [str(got[0])]
        assert driver.alloc.lookup("c1") == [] and "c1" not in driver.alloc.releases

    in_virtual_time(main)


def test_reconcile_starts_the_grace_of_containers_gone_while_away(tmp_path: Path) -> None:
    async def main() -> None:
        driver, _ = driver_for(tmp_path)
        for c in ("c1", "c2"):
            await driver.get_all(c, [None])
        driver.reconcile({"c1"})
        assert "c2" in driver.alloc.releases and "c1" not in driver.alloc.releases

    in_virtual_time(main)


def test_the_pump_tells_the_allocator_who_is_reachable(tmp_path: Path) -> None:
    async def main() -> None:
        driver, mesh = driver_for(tmp_path)
        mesh.routes.reachable = {ME, PEER}
        mesh.nicknames[PEER] = "h2"
        driver.pump(trio.current_time())
        assert driver.alloc.alive == {ME: "h1", PEER: "h2"}
        with pytest.raises(LocalProtocolError, match="reachable"):
            driver.rmpeer("h2")
        mesh.routes.reachable = {ME}
        driver.pump(trio.current_time())
        assert driver.alloc.alive == {ME: "h1"}
        # reset with nobody left to take it: the allocations are forgotten all the same
        await driver.get_all("c1", [None])
        driver.handoff()
        assert driver.alloc.lookup("c1") == []

    in_virtual_time(main)
