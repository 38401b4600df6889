"""A dial that cannot succeed (router/daemon/connections.py with a real MeshNode), in trio's
virtual time: the peer's NAT gateway drops the SYN, so the connect never completes.

Measured in a NAT lab (tests/netns/test_nat_hosts.py): each such dial gives up after
DIAL_TIMEOUT (5 s) and is retried after the maker's backoff (1, 2, 4 s ... with jitter);
a discovered target used to vanish from the report for the whole of each try, so status
showed "connection timed out" only in the short gaps between tries. Here the dial is shown
as connecting for all of its DIAL_TIMEOUT, then as retrying with the reason and the retry
time, then connecting again with the last try's reason.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from weftnet.proto.connmaker import INITIAL_BACKOFF
from weftnet.proto.mesh import Dial, MeshConfig, MeshNode
from weftnet.router.daemon import connections as connections_mod
from weftnet.router.daemon.connections import DIAL_TIMEOUT, Connections

GATEWAY = "172.31.1.3:6783"  # the other NATed peer's gateway, as our peers saw it


def node(seed: int) -> MeshNode:
    rng = random.Random(seed)
    cfg = MeshConfig(name=0x020000000002, nickname="h2", uid=rng.getrandbits(64) or 1)
    return MeshNode(cfg, now=0.0, random_bytes=rng.randbytes, rng=random.Random(seed))


def entry(mesh: MeshNode, now: float) -> tuple[str, str] | None:
    rows = [(c["state"], c["info"]) for c in mesh.report(now)["connections"]
            if c["address"] == GATEWAY]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_dropped_dial_gives_up_after_dial_timeout_and_status_shows_it_throughout(
        monkeypatch: pytest.MonkeyPatch, seed: int, direct: bool) -> None:
    started: list[float] = []

    async def never_answers(host: str, port: int, **kw: Any) -> trio.SocketStream:
        started.append(trio.current_time())
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(connections_mod.trio, "open_tcp_stream", never_answers)
    mesh = node(seed)

    def pump() -> None:
        while (action := mesh.next_action()) is not None:
            assert isinstance(action, Dial), action
            conns.dial(action.address)

    conns = Connections(mesh, pump)
    seen: list[tuple[float, tuple[str, str] | None]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            conns.nursery = nursery
            t0 = trio.current_time()
            if direct:
                mesh.add_targets([GATEWAY], t0)
            else:  # what discovery does with the address a peer saw h3 at (after the
                mesh.handle_timer(t0)  # mesh's own look at its still empty topology)
                mesh.maker.set_discovered([GATEWAY])
            mesh.handle_timer(t0)
            pump()
            # the timer loop of the router, in short steps so the report is sampled often
            while trio.current_time() < t0 + 40:
                now = trio.current_time()
                timer = mesh.get_timer()
                if timer is not None and timer <= now:
                    mesh.handle_timer(now)
                    pump()
                seen.append((now - t0, entry(mesh, now)))
                await trio.sleep(0.25)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert len(started) >= 3, started
    # each try ends exactly DIAL_TIMEOUT after it began, then the maker's backoff follows
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    for attempt, gap in enumerate(gaps, 1):
        backoff = INITIAL_BACKOFF * 2 ** (attempt - 1)
        assert DIAL_TIMEOUT + backoff * 0.5 - 0.25 <= gap <= DIAL_TIMEOUT + backoff + 0.25, gaps
    # never out of the report: connecting during each try, retrying with the reason between
    assert all(e is not None for _, e in seen), [t for t, e in seen if e is None][:5]
    first_try = [e for t, e in seen if t < DIAL_TIMEOUT - 0.25]
    assert first_try and all(e is not None and e[0] == "connecting"
                             and e[1].startswith("dialling for") for e in first_try)
    states = {e[0] for _, e in seen if e is not None}
    assert states == {"connecting", "retrying"}
    retrying = [e[1] for _, e in seen if e is not None and e[0] == "retrying"]
    assert all(i.startswith("connection timed out; retry in ") for i in retrying), retrying
    later = [e[1] for t, e in seen if e is not None and e[0] == "connecting"
             and t > started[1] - started[0] + 0.25]
    assert later and all(i.endswith("; last try: connection timed out") for i in later), later
