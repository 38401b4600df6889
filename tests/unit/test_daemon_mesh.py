"""Two whole routers (router/daemon/router.py) in one process: real ``Router`` objects with
their pump, timer task, TCP connection tasks and HTTP API, meshing over loopback TCP, with
the data plane's ports replaced by the in-memory doubles (router/dataplane/doubles.py), so
no kernel device is touched. What a user meets is checked through ``report()`` and the
frames the TAP doubles see: the connection is established only once UDP heartbeats cross
both ways, then frames cross TAP -> sealed UDP -> TAP in both directions, and a router that
stops takes its connection out of the other's report.

Real time (sockets cannot run on trio's MockClock): each wait is bounded by ``fail_after``,
a bound on a hang, not a timing claim.
"""

from __future__ import annotations

import argparse
import functools
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from weftnet.router.daemon.config import add_launch_arguments, config_from_args
from weftnet.router.daemon.router import Router
from weftnet.router.dataplane.doubles import MemoryNetwork, MemoryTap
from weftnet.router.host.datadir import DataDir

HOST = "127.0.0.1"
MAC_A, MAC_B = bytes.fromhex("02aa00000001"), bytes.fromhex("02bb00000002")
BOUND = 20.0  # seconds: a hang, not a measurement


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_router(tmp_path: Path, name: int, port: int, targets: list[str]) -> Router:
    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    cfg = config_from_args(parser.parse_args([
        "--data-dir", str(tmp_path), "--host", HOST, "--port", str(port),
        "--http-addr", f"{HOST}:{free_port()}", "--no-fastdp", "--no-dns",
        "--ipalloc-range", "", "--nickname", f"r{name & 0xff}"]))
    return Router(cfg, DataDir(cfg.data_dir), name, targets)


def connection(router: Router) -> dict[str, Any] | None:
    conns = router.report()["router"]["connections"]
    return conns[0] if conns else None


def frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    return dst + src + b"\x08\x00" + payload


async def wait_for(check: Any) -> None:
    with trio.fail_after(BOUND):
        while not check():
            await trio.sleep(0.02)


async def crosses(src: MemoryTap, dst: MemoryTap, data: bytes, routers: tuple[Router, ...]) -> None:
    """``data`` injected at ``src``'s bridge comes out of ``dst``'s. Injected again every
    0.5 s: "established" is the link's verdict, and the peer's routes may still be on their
    way through gossip, so a first frame can be dropped ("no route"), as a container's first
    ARP can be."""
    with trio.move_on_after(BOUND):
        while True:
            src.inject(data)
            with trio.move_on_after(0.5):
                assert await dst.receive() == data
                return
    drops = [r.report()["router"]["dataplane"]["drops"] for r in routers]
    raise AssertionError(f"the frame never crossed in {BOUND:.0f} s; drops: {drops}")


@pytest.mark.parametrize("password", [None, "s3cret"])
def test_two_routers_mesh_and_carry_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           password: str | None) -> None:
    if password is None:
        monkeypatch.delenv("WEFT_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("WEFT_PASSWORD", password)
    port_a, port_b = free_port(), free_port()

    async def main() -> None:
        a = make_router(tmp_path / "a", 0x020000000001, port_a, [])
        b = make_router(tmp_path / "b", 0x020000000002, port_b, [f"{HOST}:{port_a}"])
        net = MemoryNetwork(seed=7)
        tap_a, tap_b = MemoryTap("tap-a"), MemoryTap("tap-b")
        udp_a, udp_b = net.udp((HOST, port_a)), net.udp((HOST, port_b))
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(a.main, ports=(tap_a, udp_a)))
            # before b exists, a has no connection; b dials a as soon as it runs
            assert connection(a) is None
            await nursery.start(functools.partial(b.main, ports=(tap_b, udp_b)))

            def established() -> bool:
                ca, cb = connection(a), connection(b)
                return (ca is not None and cb is not None
                        and ca["state"] == cb["state"] == "established")

            await wait_for(established)
            for router in (a, b):
                conn = connection(router)
                assert conn is not None
                assert conn["overlay"] == "sleeve" and conn["encrypted"] == (password is not None)
                assert conn["sleeve"]["heartbeat_answered"] is True
                peers = {p["nickname"] for p in router.report()["router"]["peers"]}
                assert peers == {"r1", "r2"}

            # a broadcast from a's container side reaches b's bridge, and b's reply to the
            # MAC it learnt comes back to a
            hello = frame(b"\xff" * 6, MAC_A, b"who is there" * 10)
            await crosses(tap_a, tap_b, hello, (a, b))
            reply = frame(MAC_A, MAC_B, b"here" * 300)
            await crosses(tap_b, tap_a, reply, (a, b))
            sleeve_a = connection(a)["sleeve"]  # type: ignore[index]
            assert sleeve_a["packets_out"] >= 1 and sleeve_a["packets_in"] >= 1

            # b stops (a Goodbye on the control connection): a forgets the connection
            b.request_stop()
            await wait_for(lambda: connection(a) is None or connection(a)["state"] != "established")
            a.request_stop()

    trio.run(main)
