"""The trio DNS server on loopback: local answers, forwarding, SERVFAIL, TCP, concurrency.

Upstreams are other ``serve_dns`` instances (or silent sockets) on other loopback
addresses; ``upstream_port`` points the forwarder at their port.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dnslib
import pytest
import trio
import trio.testing

from weftnet.dns.codec import StreamDecoder, frame
from weftnet.dns.resolvconf import container_resolv_conf, parse
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.daemon.dns_server import DnsServer, UpstreamSource, load_records, open_sockets, serve_dns

T0 = 1_700_000_000.0
LOCAL = load_records("web.weft.local 10.32.0.1\n" +
                     "".join(f"big.weft.local 10.40.0.{i}\n" for i in range(1, 51)), T0)
OUTSIDE = load_records("www.example.com 192.0.2.80\n", T0)


@asynccontextmanager
async def running(store: Any, address: str, **kw: Any) -> AsyncIterator[DnsServer]:
    async with trio.open_nursery() as nursery:
        server: DnsServer = await nursery.start(lambda task_status: serve_dns(
            lambda: store, address=address, port=kw.pop("port", 0), task_status=task_status, **kw))
        yield server
        nursery.cancel_scope.cancel()


class Where(Protocol):
    address: str
    port: int


@dataclass
class At:
    address: str
    port: int


async def udp_ask(server: Where, name: str, qtype: str = "A") -> dnslib.DNSRecord:
    q = dnslib.DNSRecord.question(name, qtype)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        await s.connect((server.address, server.port))
        await s.send(q.pack())
        r = dnslib.DNSRecord.parse(await s.recv(65535))
    assert r.header.id == q.header.id
    return r


async def tcp_ask(server: Where, *names: str) -> list[dnslib.DNSRecord]:
    """Pipelined queries on one connection; replies by id, in the order of ``names``."""
    queries = [dnslib.DNSRecord.question(n) for n in names]
    stream = await trio.open_tcp_stream(server.address, server.port)
    async with stream:
        await stream.send_all(b"".join(frame(q.pack()) for q in queries))
        d, got = StreamDecoder(), {}
        while len(got) < len(queries):
            data = await stream.receive_some(65536)
            assert data, "server closed early"
            d.feed(data)
            while (m := d.next_message()) is not None:
                r = dnslib.DNSRecord.parse(m)
                got[r.header.id] = r
    return [got[q.header.id] for q in queries]


def conf(tmp_path: Path, *servers: str) -> Path:
    path = tmp_path / "resolv.conf"
    new = tmp_path / "resolv.conf.new"
    new.write_text("".join(f"nameserver {s}\n" for s in servers) + "options timeout:1\n")
    os.replace(new, path)   # a new inode, as editors and resolvconf tools do
    return path


def test_local_answers_over_udp_and_tcp(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(LOCAL, "127.0.0.1", resolv_conf=conf(tmp_path)) as srv:
            r = await udp_ask(srv, "web.weft.local")
            assert [str(rr.rdata) for rr in r.rr] == ["10.32.0.1"]
            r = await udp_ask(srv, "big.weft.local")
            assert r.header.tc == 1
            big, web = await tcp_ask(srv, "big.weft.local", "web.weft.local")
            assert big.header.tc == 0 and len(big.rr) == 50 and len(web.rr) == 1
            stats = srv.statistics()
            assert (stats.udp_queries, stats.tcp_queries, stats.answered) == (2, 2, 4)
    trio.run(main)


def test_forwarding_keeps_the_id_and_rereads_resolv_conf(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(OUTSIDE, "127.0.0.2", domain="example.com") as up:
            path = conf(tmp_path, "127.0.0.2")
            async with running(LOCAL, "127.0.0.1", resolv_conf=path, upstream_port=up.port) as srv:
                r = await udp_ask(srv, "www.example.com")
                assert [str(rr.rdata) for rr in r.rr] == ["192.0.2.80"]
                (t,) = await tcp_ask(srv, "www.example.com")
                assert [str(rr.rdata) for rr in t.rr] == ["192.0.2.80"]
                r = await udp_ask(srv, "nope.example.com")
                assert r.header.rcode == dnslib.RCODE.NXDOMAIN
                conf(tmp_path, "127.0.0.9")            # nothing listens there
                r = await udp_ask(srv, "www.example.com")
                assert r.header.rcode == dnslib.RCODE.SERVFAIL
                conf(tmp_path, "127.0.0.9", "127.0.0.2")   # the second one answers
                r = await udp_ask(srv, "www.example.com")
                assert [str(rr.rdata) for rr in r.rr] == ["192.0.2.80"]
                stats = srv.statistics()
                assert stats.forwarded == 4 and stats.servfail == 1 and stats.resolv_conf_reloads == 3
    trio.run(main)


def test_silent_upstreams_time_out_into_servfail_over_udp_and_tcp(tmp_path: Path) -> None:
    async def main() -> None:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole, \
                trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp_hole:
            await hole.bind(("127.0.0.3", 0))
            port = hole.getsockname()[1]
            await tcp_hole.bind(("127.0.0.3", port))
            tcp_hole.listen(8)              # accepts, never answers
            async with running(LOCAL, "127.0.0.1", resolv_conf=conf(tmp_path, "127.0.0.3"),
                               upstream_port=port, upstream_timeout=0.2) as srv:
                r = await udp_ask(srv, "www.example.com")
                assert r.header.rcode == dnslib.RCODE.SERVFAIL and str(r.q.qname) == "www.example.com."
                (t,) = await tcp_ask(srv, "www.example.com")
                assert t.header.rcode == dnslib.RCODE.SERVFAIL
                assert srv.statistics().upstream_failures == 2
    trio.run(main)


def test_a_slow_upstream_does_not_hold_up_local_answers(tmp_path: Path) -> None:
    async def main() -> None:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
            await hole.bind(("127.0.0.3", 0))
            async with running(LOCAL, "127.0.0.1", resolv_conf=conf(tmp_path, "127.0.0.3"),
                               upstream_port=hole.getsockname()[1], upstream_timeout=600) as srv:
                order: list[str] = []

                async def ask(name: str) -> None:
                    await udp_ask(srv, name)
                    order.append(name)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, "www.example.com")
                    await hole.recv(512)                # the forward reached the upstream ...
                    await ask("web.weft.local")         # ... and the local answer still comes
                    (t,) = await tcp_ask(srv, "web.weft.local")
                    assert len(t.rr) == 1
                    nursery.cancel_scope.cancel()
                assert order == ["web.weft.local"]
    trio.run(main)


def test_garbage_is_dropped_and_formerr_answered(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(LOCAL, "127.0.0.1", resolv_conf=conf(tmp_path)) as srv:
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                await s.connect((srv.address, srv.port))
                await s.send(b"\x01")                                   # dropped
                await s.send(b"\x12\x34\x01\x00\x00\x02" + b"\x00" * 6)   # two questions: FORMERR
                r = dnslib.DNSRecord.parse(await s.recv(65535))
                assert r.header.id == 0x1234 and r.header.rcode == dnslib.RCODE.FORMERR
            stream = await trio.open_tcp_stream(srv.address, srv.port)
            async with stream:
                await stream.send_all(b"\x00\x01x")    # a length below a header: connection closed
                assert await stream.receive_some(100) == b""
            stats = srv.statistics()
            assert stats.dropped == 2 and stats.udp_queries == 2
    trio.run(main)


def test_upstream_source_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    src = UpstreamSource(path)
    assert src.get().nameservers == ()
    conf(tmp_path, "192.0.2.1")
    assert src.get().nameservers == ("192.0.2.1",)
    assert src.get().nameservers == ("192.0.2.1",) and src.reloads == 1
    conf(tmp_path, "192.0.2.2")
    assert src.get().nameservers == ("192.0.2.2",) and src.reloads == 2


def test_resolv_conf_parsing_and_rendering() -> None:
    c = parse("# c\nnameserver 192.0.2.1\nnameserver bogus\nnameserver fe80::1%eth0 ; x\n"
              "nameserver 192.0.2.3\nnameserver 192.0.2.4\nsearch a.example b.example\n"
              "options ndots:2 timeout:3 attempts:9\n")
    assert c.nameservers == ("192.0.2.1", "fe80::1%eth0", "192.0.2.3")
    assert c.search == ("a.example", "b.example") and c.timeout == 3.0 and c.attempts == 5
    assert container_resolv_conf("172.17.0.1", "Weft.Local.") == (
        "nameserver 172.17.0.1\nsearch weft.local\n")
    # the host's search domains follow ours (once, at most six in all, junk left out)
    assert container_resolv_conf("127.0.0.11", "weft.local", (
        "corp.example.", "weft.local", "bad/name", "a.example", "b.example", "c.example",
        "d.example", "e.example")) == (
        "nameserver 127.0.0.11\nsearch weft.local corp.example a.example b.example c.example "
        "d.example\n")


async def ask_at(address: str, port: int, name: str) -> dnslib.DNSRecord:
    return await udp_ask(At(address, port), name)


def test_listeners_come_and_go_while_the_server_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            srv: DnsServer = await nursery.start(lambda task_status: serve_dns(
                lambda: LOCAL, resolv_conf=conf(tmp_path), task_status=task_status))
            assert srv.listeners() == []
            first = open_sockets("127.0.0.4", 0)
            port4 = first[0].getsockname()[1]
            assert first[1].getsockname()[1] == port4
            srv.add_listener("c4", *first)
            srv.add_listener("c5", *open_sockets("127.0.0.5", 0))
            port5 = srv._listeners["c5"].port
            assert srv.listeners() == ["c4", "c5"]
            r = await ask_at("127.0.0.4", port4, "web.weft.local")
            assert [str(rr.rdata) for rr in r.rr] == ["10.32.0.1"]
            (t,) = await tcp_ask(At("127.0.0.5", port5), "big.weft.local")
            assert len(t.rr) == 50
            # removing one closes its sockets (the port is free again), the other still answers
            assert srv.remove_listener("c4") and not srv.remove_listener("c4")
            await trio.testing.wait_all_tasks_blocked()
            assert first[0].fileno() == -1 and first[1].fileno() == -1
            again = open_sockets("127.0.0.4", port4)
            srv.add_listener("c4", *again)
            r = await ask_at("127.0.0.4", port4, "web.weft.local")
            assert len(r.rr) == 1
            # a new listener under a key replaces the old one
            srv.add_listener("c4", *open_sockets("127.0.0.6", 0))
            await trio.testing.wait_all_tasks_blocked()
            assert again[0].fileno() == -1 and srv.listeners() == ["c4", "c5"]
            assert srv.statistics().listeners == 2
            nursery.cancel_scope.cancel()
        # the server's end closes every listener
        assert srv.listeners() == []
    trio.run(main)


def test_a_local_listener_is_never_its_own_upstream(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            # the upstream port is the listener's port: without the rule, a loop
            sockets = open_sockets("127.0.0.7", 0)
            port = sockets[0].getsockname()[1]
            srv: DnsServer = await nursery.start(lambda task_status: serve_dns(
                lambda: LOCAL, resolv_conf=conf(tmp_path, "127.0.0.7"), upstream_port=port,
                upstream_timeout=5, task_status=task_status))
            srv.add_listener("host", *sockets, local=True)
            r = await ask_at("127.0.0.7", port, "www.example.com")
            assert r.header.rcode == dnslib.RCODE.SERVFAIL
            stats = srv.statistics()
            assert stats.udp_queries == 1 and stats.upstream_failures == 0 and stats.servfail == 1
            # not local (a container's namespace): its address is a fine upstream
            srv.remove_listener("host")
            await trio.testing.wait_all_tasks_blocked()
            async with running(OUTSIDE, "127.0.0.7", port=port, domain="example.com"):
                srv.add_listener("c8", *open_sockets("127.0.0.8", port))
                r = await ask_at("127.0.0.8", port, "www.example.com")
                assert [str(rr.rdata) for rr in r.rr] == ["192.0.2.80"]
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_add_listener_needs_a_running_server() -> None:
    srv = DnsServer(lambda: LOCAL, address="", domain="weft.local", ttl=1, resolv_conf="/nonexistent",
                    rng=__import__("random").Random(1), max_udp=4096, upstream_timeout=1,
                    upstream_port=53)
    udp, tcp = open_sockets("127.0.0.1", 0)
    with pytest.raises(LocalProtocolError):
        srv.add_listener("x", udp, tcp)
    assert udp.fileno() == -1 and tcp.fileno() == -1
