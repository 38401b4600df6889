"""The DNS driver (router/daemon/dns_driver.py) without a server or namespaces: a real
``DnsService``, a fake mesh, the daemon's timer loop, virtual time."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from weftnet.dns.gossip import CHANNEL
from weftnet.dns.records import TOMBSTONE_TTL
from weftnet.dns.service import EXTERN, DnsService
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.peername import PeerName
from weftnet.router.daemon.dns_driver import TOPOLOGY_CHECK, DnsDriver
from weftnet.router.daemon.timers import TimerLoop
from weftnet.router.host.attachments import Attachments
from weftnet.router.host.datadir import DataDir

ME = 0x020000000001
OFFSET = 1_700_000_000.0   # wall clock minus trio's, as the router takes it at start


class Recording(DnsService):
    """The real service, noting the times and peers ``handle_timer`` is given."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.calls: list[tuple[float, set[PeerName]]] = []

    def handle_timer(self, now: float, peers: Iterable[PeerName]) -> list[PeerName]:
        peers = set(peers)
        self.calls.append((now, peers))
        return super().handle_timer(now, peers)


class FakeMesh:
    def __init__(self) -> None:
        self.topology = SimpleNamespace(peers={ME: object()})
        self.news: list[tuple[str, object]] = []

    def gossip_news(self, channel: str, news: object) -> None:
        self.news.append((channel, news))


def run(tmp_path: Path, test: Callable[[DnsDriver, Recording, FakeMesh], Awaitable[None]]) -> None:
    async def main() -> None:
        datadir = DataDir(tmp_path)
        service = Recording(ME, trio.current_time() + OFFSET, wall_offset=OFFSET)
        mesh = FakeMesh()
        driver = DnsDriver(service, mesh, datadir, Attachments(datadir, mtu=1376),  # type: ignore[arg-type]
                           lambda: driver.pump(), ttl=1)
        await test(driver, service, mesh)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def claims(tmp_path: Path) -> list[list[str]]:
    state = json.loads((tmp_path / "state.json").read_text())
    return state["dns"]["claims"]  # type: ignore[no-any-return]


def test_the_pump_floods_news_and_persists_our_claims(tmp_path: Path) -> None:
    async def test(driver: DnsDriver, service: Recording, mesh: FakeMesh) -> None:
        driver.register("c1", "web.weft.local.", ["10.32.0.1"])
        driver.pump()
        assert [channel for channel, _ in mesh.news] == [CHANNEL]
        assert claims(tmp_path) == [["web.weft.local.", "10.32.0.1", "c1"]]
        assert driver.lookup("web") == {"name": "web.weft.local.", "addresses": ["10.32.0.1"]}
        driver.pump()
        assert len(mesh.news) == 1   # nothing new: nothing said
        # the entry carries the wall clock, not trio's
        (entry,) = service.store.entries()
        assert entry.deleted_at == 0 and service.store.now >= OFFSET

    run(tmp_path, test)


def test_dns_commands(tmp_path: Path) -> None:
    async def test(driver: DnsDriver, service: Recording, mesh: FakeMesh) -> None:
        assert await driver.add(["10.9.9.9"], None, "ext") == 1
        assert claims(tmp_path) == [["ext.weft.local.", "10.9.9.9", EXTERN]]
        with pytest.raises(LocalProtocolError, match="needs IP addresses"):
            await driver.add([], None, "ext")
        with pytest.raises(LocalProtocolError, match="no network namespace"):
            await driver.add([], "weft-test-no-such-namespace", "ext")
        assert await driver.remove([], "weft-test-no-such-namespace", None) == 0
        assert await driver.remove([], None, "ext") == 1
        assert driver.lookup("ext")["addresses"] == [] and claims(tmp_path) == []

    run(tmp_path, test)


def test_a_container_gone_or_detached_loses_its_names(tmp_path: Path) -> None:
    async def test(driver: DnsDriver, service: Recording, mesh: FakeMesh) -> None:
        driver.register("c1", "a.weft.local.", ["10.32.0.1", "10.32.0.2"])
        driver.register("c2", "b.weft.local.", ["10.32.0.3"])
        driver.detached("c1", ["10.32.0.2"])          # some of its addresses
        assert driver.lookup("a")["addresses"] == ["10.32.0.1"]
        driver.namespace_gone("c1", replaced=True)
        assert driver.lookup("a")["addresses"] == []
        driver.detached("c2", None)                   # all of it
        assert driver.lookup("b")["addresses"] == []
        driver.register("c3", "c.weft.local.", ["10.32.0.4"])
        await driver.add(["10.9.9.9"], None, "ext")
        driver.forget_all()                           # reset
        assert service.claims() == []

    run(tmp_path, test)


def test_the_timer_source_speaks_trio_time_and_hands_over_the_topology(tmp_path: Path) -> None:
    async def test(driver: DnsDriver, service: Recording, mesh: FakeMesh) -> None:
        start = trio.current_time()
        assert driver.get_timer() == start + TOPOLOGY_CHECK
        driver.register("c1", "a.weft.local.", ["10.32.0.1"])
        driver.unregister("c1")
        assert len(service.store.entries(tombstones=True)) == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(TimerLoop([driver], driver.pump).run)
            await trio.sleep_until(start + 3.5)
            assert [now - OFFSET for now, _ in service.calls] == pytest.approx(
                [start + 1, start + 2, start + 3])
            assert [peers for _, peers in service.calls] == [{ME}] * 3
            await trio.sleep_until(start + TOMBSTONE_TTL + 2)   # tombstones expire
            assert service.store.entries(tombstones=True) == []
            nursery.cancel_scope.cancel()

    run(tmp_path, test)


def test_the_report_without_a_server(tmp_path: Path) -> None:
    async def test(driver: DnsDriver, service: Recording, mesh: FakeMesh) -> None:
        driver.register("c1", "a.weft.local.", ["10.32.0.1"])
        report = driver.report()
        assert {k: report[k] for k in ("domain", "address", "ttl")} == {
            "domain": "weft.local.", "address": "127.0.0.11", "ttl": 1}
        assert [e["hostname"] for e in report["entries"]] == ["a.weft.local."]

    run(tmp_path, test)
