"""Fuzz the forwarding decision, fed the way the router feeds it.

The input is a program for a network of six routers (a ring with a tail, and a peer on
its own) that each run a Forwarder over the real Routes::

    op byte % 6:  0 local frame  [peer, dst MAC, src MAC]   relayed until quiet
                  1 sleeve body  [length, body...]          decode_entries -> macs ->
                                                            from_remote at router 2
                  2 time passes  [half-seconds]             expire everywhere
                  3 forget_peer  [peer]                     everywhere
                  4 new topology [link to drop]             everywhere
                  5 forget_mac   [MAC]                      everywhere

Invariants: undecodable bodies raise only RemoteProtocolError; every decision is a
known drop reason or well-formed sends; every hop is a usable link; a frame is
delivered at most once per router and relaying it ends within a bounded number of
sends; MAC tables stay within their bound and their timers are consistent.
"""

from __future__ import annotations

import functools

from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.ethernet import BROADCAST, VNET_HDR_LEN, macs
from weftnet.proto.forwarding import DROP_REASONS, Forwarder
from weftnet.proto.routes import Routes
from weftnet.proto.sleeve import FLAG_VNET, decode_entries, encode_entries
from weftnet.proto.topology import ConnectionInfo, PeerRecord

NAMES = (1, 2, 3, 4, 5, 6)
LINKS = ((1, 2), (2, 3), (2, 4), (3, 5), (4, 5))
POOL = tuple(0x0A0000000000 + i for i in range(10)) + (BROADCAST, 0x01005E000001)
MAX_MACS = 6
ME = 2


@functools.cache
def _routes(dropped: int) -> dict[int, Routes]:
    """Every router's routes with link ``dropped`` gone (Routes are immutable: shared)."""
    links = [link for i, link in enumerate(LINKS) if i != dropped]
    peers = {n: PeerRecord(n, "", 1, 1, tuple(
        ConnectionInfo(r, "", True, True) for r in sorted(
            {b for a, b in links if a == n} | {a for a, b in links if b == n})))
        for n in NAMES}
    return {n: Routes.compute(peers, n) for n in NAMES}


FRAME = POOL[3].to_bytes(6, "big") + POOL[7].to_bytes(6, "big") + b"\x08\x00" + bytes(20)
SEEDS = [
    bytes([4, 9, 0, 1, 10, 0, 3, 3, 1, 0, 5, 1, 2, 2, 0, 4, 0]),
    bytes([1, 40]) + encode_entries([(5, 2, 0, FRAME)])[:40] + bytes([0, 1, 3, 7, 2, 250, 0, 1, 3, 7]),
    bytes([1, 60]) + encode_entries([(1, 0, FLAG_VNET, bytes(10) + FRAME)]).ljust(60, b"\x00"),
    bytes([0, 0, 11, 2, 0, 5, 2, 1, 3, 3, 4, 2, 0, 4, 4, 2]),
]


def _check_sends(router: int, sends: object, routes: dict[int, Routes]) -> tuple[tuple[int, int], ...]:
    assert isinstance(sends, tuple)
    for hop, dst in sends:
        assert hop in routes[router].neighbours, (router, hop)
        assert dst == 0 or dst in routes[router].reachable
    return sends


def _relay(nets: dict[int, Forwarder], routes: dict[int, Routes], source: int, dst_mac: int,
           src_mac: int, now: float) -> None:
    decision = nets[source].from_local(dst_mac, src_mac, now)
    if isinstance(decision, str):
        assert decision in DROP_REASONS, decision
        return
    pending = [(source, hop, dst) for hop, dst in _check_sends(source, decision, routes)]
    delivered: set[int] = set()
    sent = 0
    while pending:
        _sender, hop, dst_peer = pending.pop()
        sent += 1
        assert sent <= 2 * len(NAMES), "relaying does not end"
        result = nets[hop].from_remote(source, dst_peer, dst_mac, src_mac, now)
        if isinstance(result, str):
            assert result in DROP_REASONS, result
            continue
        local, relays = result
        if local:
            assert hop not in delivered, "delivered twice"
            delivered.add(hop)
        pending.extend((hop, h, d) for h, d in _check_sends(hop, relays, routes))


def test_one_input(data: bytes) -> None:
    routes = _routes(len(LINKS))
    nets = {n: Forwarder(n, mac_expiry=30.0, max_macs=MAX_MACS) for n in NAMES}
    for n in NAMES:
        nets[n].set_routes(routes[n].unicast, routes[n].broadcast_next_hops)
    now = 0.0
    pos = 0
    while pos < len(data):
        op = data[pos] % 6
        arg = data[pos + 1:pos + 4].ljust(3, b"\x00")
        pos += 2
        if op == 0:
            _relay(nets, routes, NAMES[arg[0] % len(NAMES)], POOL[arg[1] % len(POOL)],
                   POOL[arg[2] % len(POOL)], now)
            pos += 2
        elif op == 1:
            body = data[pos:pos + arg[0]]
            pos += arg[0]
            try:
                entries = decode_entries(body)
            except RemoteProtocolError:
                continue
            for src, dst, flags, frame in entries:
                dst_mac, src_mac = macs(frame, VNET_HDR_LEN if flags & FLAG_VNET else 0)
                result = nets[ME].from_remote(src, dst, dst_mac, src_mac, now)
                if isinstance(result, str):
                    assert result in DROP_REASONS, result
                else:
                    _check_sends(ME, result[1], routes)
        elif op == 2:
            now += arg[0] * 0.5
            for f in nets.values():
                f.expire(now)
                timer = f.get_timer()
                assert timer is None or timer > now
        elif op == 3:
            for f in nets.values():
                f.forget_peer(NAMES[arg[0] % len(NAMES)])
        elif op == 4:
            routes = _routes(arg[0] % (len(LINKS) + 1))
            for n in NAMES:
                nets[n].set_routes(routes[n].unicast, routes[n].broadcast_next_hops)
        else:
            for f in nets.values():
                f.forget_mac(POOL[arg[0] % len(POOL)])
    for f in nets.values():
        table = f.macs(now)
        assert len(table) <= MAX_MACS
        assert all(peer in NAMES or peer > 0 for peer, _ in table.values())
        assert set(DROP_REASONS) <= set(f.stats)


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    # the modules under test are imported above already, where instrument_imports() would
    # no longer see them: instrument every loaded function instead
    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
