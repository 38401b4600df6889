"""The namespace watcher (router/daemon/watcher.py): with fake namespace refs, and
``namespace_exists`` on plain files standing in for nsfs files."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing

from weftnet.router.daemon.watcher import NamespaceWatcher, namespace_exists
from weftnet.router.host.netdev import NetnsRef


def ref(name: str, ino: int) -> NetnsRef:
    return NetnsRef(path=f"/var/run/netns/{name}", name=name, key=(3, ino))


class User:
    def __init__(self) -> None:
        self.told: list[tuple[str, bool]] = []

    def namespace_gone(self, container: str, *, replaced: bool) -> None:
        self.told.append((container, replaced))


class Fixture:
    def __init__(self) -> None:
        self.alive: set[NetnsRef] = set()
        self.forgotten: list[str] = []
        self.dns, self.ipam = User(), User()
        self.watcher = NamespaceWatcher([self.dns, self.ipam], self.forget,
                                        exists=self.alive.__contains__)

    async def forget(self, container: str) -> None:
        await trio.lowlevel.checkpoint()
        self.forgotten.append(container)

    def attach(self, r: NetnsRef) -> None:
        self.alive.add(r)
        self.watcher.watch(r.name, r)


def test_a_namespace_gone_is_told_to_every_user_once_and_forgotten() -> None:
    f = Fixture()
    c1, c2 = ref("c1", 11), ref("c2", 12)
    f.attach(c1)
    f.attach(c2)

    async def main() -> None:
        assert await f.watcher.check() == []
        f.alive.discard(c1)
        assert await f.watcher.check() == ["c1"]
        assert await f.watcher.check() == []          # once
    trio.run(main)
    assert f.dns.told == f.ipam.told == [("c1", False)]
    assert f.forgotten == ["c1"]
    assert f.watcher.watched() == {"c2": c2}


def test_a_detached_container_is_no_longer_watched() -> None:
    f = Fixture()
    c1 = ref("c1", 11)
    f.attach(c1)
    f.watcher.unwatch("c1")
    f.alive.clear()
    assert trio.run(f.watcher.check) == []
    assert f.dns.told == [] and f.forgotten == []


def test_a_name_attached_in_a_new_namespace_means_the_old_one_is_gone() -> None:
    f = Fixture()
    old, new = ref("c1", 11), ref("c1", 99)
    f.attach(old)
    f.attach(old)                                     # the same namespace again: nothing
    assert f.dns.told == []
    f.alive.discard(old)
    f.attach(new)                                     # told at once, the record stays
    assert f.dns.told == f.ipam.told == [("c1", True)]
    assert trio.run(f.watcher.check) == [] and f.forgotten == []
    assert f.watcher.watched() == {"c1": new}


def test_the_loop_checks_every_interval_and_pumps_only_after_news() -> None:
    f = Fixture()
    c1 = ref("c1", 11)
    f.attach(c1)
    pumps: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(f.watcher.run, lambda: pumps.append(trio.current_time()))
            await trio.sleep_until(3.5)
            assert pumps == [] and f.dns.told == []
            f.alive.clear()
            await trio.sleep_until(10.0)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert pumps == [4.0] and f.dns.told == [("c1", False)]


def test_namespace_exists_compares_the_identity_behind_the_path(tmp_path: Path) -> None:
    path = tmp_path / "ns"
    path.write_text("")
    st = os.stat(path)
    r = NetnsRef(path=str(path), name="ns", key=(st.st_dev, st.st_ino))
    assert namespace_exists(r)
    other = tmp_path / "other"
    other.write_text("")                              # made while the first one lives:
    os.replace(other, path)                           # another inode, under the same name
    assert not namespace_exists(r)
    path.unlink()
    assert not namespace_exists(r)
