"""The router's IPAM glue that needs no namespaces: ADDR parsing for attach, the mapping of
``--ipalloc-init`` to the core's InitMode, and the IPAM driver over a real Allocator, a fake
mesh and the daemon's timer loop, in virtual time."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
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
from weftnet.router.host.datadir import IPAM6_FILE, IPAM_FILE, DataDir


def launch_ns(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    return parser.parse_args(list(args))


def test_address_specs() -> None:
    assert parse_address_specs([]) == [None]
    assert parse_address_specs(["net:default", "net:10.40.1.0/24", "10.2.1.1/24"]) == [
        None, IPv4Network("10.40.1.0/24"), IPv4Interface("10.2.1.1/24")]
    assert parse_address_specs(["net:fd32:1:2:3::/64", "fd32::7/64"]) == [
        IPv6Network("fd32:1:2:3::/64"), IPv6Interface("fd32::7/64")]


@pytest.mark.parametrize(("text", "message"), [
    ("net:10.40.1.1/24", "not a subnet"),
    ("net:nonsense", "not a subnet"),
    ("net:fd32::1/64", "not a subnet"),
    ("net:fd32::", "prefix length"),
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


# --- IPv6: a second allocator (--ipalloc-range-v6), its own channel and file ------------------

RANGE6 = IPv6Network("fd32:7765:6674::/48")


def driver6_for(data: Path) -> IpamDriver:
    seed = f"seed={format_peer_name(ME)}"
    cfg = config_from_args(launch_ns("--nickname", "h1", "--data-dir", str(data),
                                     "--ipalloc-init", seed, "--ipalloc-range-v6", str(RANGE6),
                                     "--ipalloc-default-subnet-v6", "fd32:7765:6674:1::/64"))
    now = trio.current_time()
    alloc = load_allocator(cfg, data / IPAM_FILE, ME, now, wall_offset=1e9, grace=30.0)
    alloc6 = load_allocator(cfg, data / IPAM6_FILE, ME, now, wall_offset=1e9, grace=30.0, v6=True)
    driver = IpamDriver(alloc, FakeMesh(), DataDir(data),  # type: ignore[arg-type]
                        lambda: driver.pump(trio.current_time()), alloc6)
    return driver


def test_no_address_gives_one_of_each_family_and_detach_frees_both(tmp_path: Path) -> None:
    async def main() -> None:
        driver = driver6_for(tmp_path)
        got, fresh = await driver.get_all("c1", [None])
        assert [g.version for g in got] == [4, 6] and set(fresh) == set(got)
        assert got[0].ip in RANGE and got[1].network == IPv6Network("fd32:7765:6674:1::/64")
        sub, _ = await driver.get_all("c2", [IPv6Network("fd32:7765:6674:9::/64"),
                                             IPv6Interface("fd32:7765:6674:1::77/64"),
                                             IPv6Interface("2001:db8::5/64")])
        assert sub[0].network == IPv6Network("fd32:7765:6674:9::/64")
        assert sub[1:] == [IPv6Interface("fd32:7765:6674:1::77/64"), IPv6Interface("2001:db8::5/64")]
        assert (tmp_path / IPAM6_FILE).exists() and driver.status()["ipv6"]["range"] == str(RANGE6)
        restarted = driver6_for(tmp_path)   # both files read back
        assert restarted.alloc6 is not None
        assert sorted(map(str, restarted.alloc6.lookup("c2"))) == sorted(map(str, sub[:2]))
        driver.free("c1", None)
        driver.free("c2", ["fd32:7765:6674:1::77"])
        assert driver.alloc.lookup("c1") == [] and driver.alloc6 is not None
        assert driver.alloc6.lookup("c1") == [] and driver.alloc6.lookup("c2") == sub[:1]

    in_virtual_time(main)


def test_ipv6_allocation_without_ipv6_ipam_says_what_to_do(tmp_path: Path) -> None:
    async def main() -> None:
        driver, _ = driver_for(tmp_path)
        got, _ = await driver.get_all("c1", [None, IPv6Interface("fd32::5/64")])
        assert [g.version for g in got] == [4, 6]   # an IPv6 IP/LEN is simply not managed
        with pytest.raises(LocalProtocolError, match="--ipalloc-range-v6") as info:
            await driver.get_all("c1", [IPv6Network("fd32::/64")])
        assert "\n" not in info.value.reason

    in_virtual_time(main)


@pytest.mark.parametrize(("args", "message"), [
    (["--ipalloc-range-v6", "10.0.0.0/8"], "--ipalloc-range-v6: 10.0.0.0/8 is not an IPv6 range"),
    (["--ipalloc-range-v6", "fe80::/64"], "--ipalloc-range-v6: fe80::/64 is not a unicast range"),
    (["--ipalloc-range-v6", "fd32::/127"], "too small"),
    (["--ipalloc-range-v6", "fd32::/48", "--ipalloc-default-subnet-v6", "10.1.0.0/16"],
     "--ipalloc-default-subnet-v6: 10.1.0.0/16 is not inside"),
    (["--ipalloc-default-subnet-v6", "fd32::/64"], "needs --ipalloc-range-v6"),
    (["--ipalloc-range", "", "--ipalloc-range-v6", "fd32::/48"], "needs IPv4 IPAM too"),
])
def test_ipv6_ipam_options_are_checked_in_one_line(args: list[str], message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        config_from_args(launch_ns(*args))
    assert message in info.value.reason and "\n" not in info.value.reason


def test_ipv6_ipam_is_off_by_default_and_round_trips_through_launch_args() -> None:
    from weftnet.router.daemon.config import config_to_args
    assert config_from_args(launch_ns()).ipalloc_range_v6 == ""
    cfg = config_from_args(launch_ns("--ipalloc-range-v6", "fd32:7765:6674::/48",
                                     "--ipalloc-default-subnet-v6", "fd32:7765:6674:1::/64"))
    assert config_from_args(launch_ns(*config_to_args(cfg))) == cfg


def test_rmpeer_covers_the_ipv6_ring_too(tmp_path: Path) -> None:
    async def main() -> None:
        seeds = f"seed={format_peer_name(ME)},{format_peer_name(PEER)}"
        cfg = config_from_args(launch_ns("--nickname", "h1", "--data-dir", str(tmp_path),
                                         "--ipalloc-init", seeds, "--ipalloc-range-v6", str(RANGE6)))
        now = trio.current_time()
        alloc = load_allocator(cfg, tmp_path / IPAM_FILE, ME, now, wall_offset=1e9, grace=30.0)
        alloc6 = load_allocator(cfg, tmp_path / IPAM6_FILE, ME, now, wall_offset=1e9, grace=30.0,
                                v6=True)
        mesh = FakeMesh()
        driver = IpamDriver(alloc, mesh, DataDir(tmp_path),  # type: ignore[arg-type]
                            lambda: driver.pump(trio.current_time()), alloc6)
        mesh.routes.reachable = {ME, PEER}
        mesh.nicknames[PEER] = "h2"
        driver.pump(trio.current_time())
        assert alloc6.alive == {ME: "h1", PEER: "h2"}   # the same peers as the IPv4 ring
        mesh.routes.reachable = {ME}
        driver.pump(trio.current_time())
        half6 = RANGE6.num_addresses // 2
        assert driver.rmpeer("h2") == {"taken": 1 << 19, "peer": "h2", "taken_ipv6": half6}
        assert alloc6.owned_ranges() == [(int(RANGE6.network_address),
                                          int(RANGE6.network_address) + RANGE6.num_addresses)]

    in_virtual_time(main)
