"""The weftDNS server: UDP and TCP on one address, forwarding what is not ours (trio).

Theory of operation. This is the only module of ``dns/`` that does I/O; every decision
is ``answer()``'s. The pipeline::

    UDP  1. wait until the socket is readable          TCP  1. one task per connection
         2. drain up to UDP_BATCH datagrams                  2. read length-prefixed
            without awaiting (non-blocking socket)              queries (pipelining ok)
         3. answer() each: reply at once, drop, or           3. answer() each; replies
            start a forward task (4)                            go out as they are ready
                                                                (RFC 7766 allows any order)
    4. forward: the client's query bytes, unchanged (so the query id is kept), to each
       resolver of the resolv.conf in turn (UDP for UDP clients, TCP for TCP clients),
       ``min(upstream_timeout, resolv.conf timeout)`` seconds each; the first reply that
       matches (same id and question) and is not SERVFAIL/REFUSED/NOTIMP is relayed.
       When none answers: the best error reply seen, else our own SERVFAIL. A forward
       therefore ends within 3 x timeout (resolv.conf holds at most three resolvers).

Listeners. One server answers on any number of address pairs (a UDP socket and a
listening TCP socket on the same address and port), added and removed while it runs
(``add_listener`` / ``remove_listener``): the router gives it one pair per attached
container, made inside that container's network namespace (``open_sockets`` makes plain
sockets, so any thread that joined a namespace can make them), and one in its own. A
listener runs as its own task under its own cancel scope; removing it cancels that task
(its TCP clients and pending forwards with it) and closes both sockets. Forwarding always
happens from the router's namespace; a listener marked ``local`` lives there, and its
address and port are never used as an upstream (no forwarding loops).

Local answers never wait for upstreams: forwards run as their own tasks, at most
``MAX_FORWARDS`` at once (beyond that a query gets SERVFAIL at once, rather than memory
growing under a flood). At most ``MAX_TCP_CLIENTS`` TCP connections are served; one idle
for ``TCP_IDLE`` seconds is closed. The resolv.conf is re-read whenever its inode, size
or mtime changes (checked on each forward: one ``stat``).

``python3 -m weftnet.router.daemon.dns_server --address A --records FILE ...`` serves a fixed set of
records: the stand-in for tests and benchmarks.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

import trio

from weftnet.dns.answer import DEFAULT_MAX_UDP, answer
from weftnet.dns.codec import (
    HEADER,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    StreamDecoder,
    error_reply,
    frame,
    matches_query,
    parse_query,
)
from weftnet.dns.names import DEFAULT_DOMAIN, normalize_domain
from weftnet.dns.records import RecordStore
from weftnet.dns.resolvconf import ResolvConf, parse
from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError

DEFAULT_TTL = 1
UDP_BATCH = 64
MAX_FORWARDS = 256
MAX_TCP_CLIENTS = 128
TCP_IDLE = 10.0
UPSTREAM_TIMEOUT = 2.0
UPSTREAM_PORT = 53

StoreGetter = Callable[[], RecordStore]


# What became of a query: answered by us with records / with none (the name exists, not
# that type) / NXDOMAIN / REFUSED / another error (FORMERR, NOTIMP, BADVERS...); relayed
# from an upstream; our own SERVFAIL (no upstream answered, too many forwards); dropped
# (not a query at all).
QUERY_RESULTS = ("answered", "nodata", "nxdomain", "refused", "error", "forwarded",
                 "servfail", "dropped")


def local_result(reply: bytes) -> str:
    """The result name of a reply ``answer()`` made."""
    rcode = _rcode(reply)
    if rcode == NOERROR:  # (a rare BADVERS, 0 in the header's four bits, counts as nodata)
        return "answered" if reply[6:8] != b"\x00\x00" else "nodata"
    return {NXDOMAIN: "nxdomain", REFUSED: "refused"}.get(rcode, "error")


@dataclass(slots=True)
class DnsStatistics:
    udp_queries: int = 0
    tcp_queries: int = 0
    answered: int = 0            # by us, from the store
    dropped: int = 0             # not a query at all: no reply
    forwarded: int = 0           # relayed an upstream's reply
    upstream_failures: int = 0   # one upstream did not answer (timeout, refused, bad reply)
    servfail: int = 0            # our own SERVFAIL: no upstream answered, or too many forwards
    send_errors: int = 0
    tcp_connections: int = 0
    tcp_refused: int = 0         # over MAX_TCP_CLIENTS
    resolv_conf_reloads: int = 0
    listeners: int = 0
    # --- queries by result (weft_dns_queries_total{result}); each query counts once ---
    results: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUERY_RESULTS, 0))


class UpstreamSource:
    """The parsed resolv.conf at ``path``, re-read when its inode, size or mtime changes.

    A missing or unreadable file means no upstreams (every forward fails: SERVFAIL).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._signature: tuple[int, int, int] | None = None
        self._conf = ResolvConf()
        self.reloads = 0

    def get(self) -> ResolvConf:
        try:
            st = os.stat(self.path)
        except OSError:
            self._signature, self._conf = None, ResolvConf()
            return self._conf
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature != self._signature:
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    self._conf = parse(f.read(65536))
            except OSError:
                self._conf = ResolvConf()
            self._signature = signature
            self.reloads += 1
        return self._conf


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _rcode(message: bytes) -> int:
    return message[3] & 0xF


PICKS = 8  # port 0: the free UDP ports the kernel picks tried for TCP too


def open_sockets(address: str, port: int = 53) -> tuple[socket.socket, socket.socket]:
    """A bound non-blocking UDP socket and a listening TCP socket on ``address``:``port``.

    ``port=0`` picks a free port (the same for both: the UDP port the kernel picks may be
    taken for TCP, so a few picks are tried). Plain sockets, no trio: call this in whichever
    network namespace they should live in, then pass them to ``add_listener``. Raises
    OSError (the sockets made so far are closed).
    """
    for _ in range(PICKS - 1 if port == 0 else 0):
        try:
            return _open_pair(address, 0)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    return _open_pair(address, port)


def _open_pair(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    family = _family(address)
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp: socket.socket | None = None
    try:
        udp.setblocking(False)
        udp.bind((address, port))
        bound = udp.getsockname()[1]
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, bound))
        tcp.listen(128)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        if tcp is not None:
            tcp.close()
        raise
    return udp, tcp


@dataclass(slots=True)
class _Listener:
    key: str
    address: str
    port: int
    local: bool
    udp: socket.socket
    tcp: socket.socket
    scope: trio.CancelScope


class DnsServer:
    """A running server; ``serve_dns`` hands it to ``task_status.started``."""

    def __init__(self, store_getter: StoreGetter, *, address: str, domain: str, ttl: int,
                 resolv_conf: str | os.PathLike[str], rng: random.Random, max_udp: int,
                 upstream_timeout: float, upstream_port: int) -> None:
        self.store_getter = store_getter
        self.address = address
        self.port = 0
        self.domain = normalize_domain(domain)
        self.ttl = ttl
        self.rng = rng
        self.max_udp = max_udp
        self.upstream_timeout = upstream_timeout
        self.upstream_port = upstream_port
        self.upstreams = UpstreamSource(resolv_conf)
        self.stats = DnsStatistics()
        self._forwarding = 0
        self._tcp_clients = 0
        self._listeners: dict[str, _Listener] = {}
        self._nursery: trio.Nursery | None = None

    def statistics(self) -> DnsStatistics:
        """A snapshot of the counters."""
        self.stats.resolv_conf_reloads = self.upstreams.reloads
        self.stats.listeners = len(self._listeners)
        return DnsStatistics(**asdict(self.stats))

    # --- listeners -------------------------------------------------------------------------

    def add_listener(self, key: str, udp: socket.socket, tcp: socket.socket, *,
                     local: bool = False) -> None:
        """Serve a socket pair from ``open_sockets`` under ``key`` until it is removed.

        The server owns the sockets from now on (it closes them). A listener already
        under ``key`` is removed first. ``local``: the sockets live in the namespace
        forwards are sent from, so their address is never used as an upstream.
        """
        if self._nursery is None:
            udp.close()
            tcp.close()
            raise LocalProtocolError("the DNS server is not running")
        self.remove_listener(key)
        address, port = udp.getsockname()[:2]
        listener = _Listener(key, address, port, local, udp, tcp, trio.CancelScope())
        self._listeners[key] = listener
        self._nursery.start_soon(self._serve_listener, listener)

    def remove_listener(self, key: str) -> bool:
        """Stop serving ``key`` and close its sockets; False when there is no such listener."""
        listener = self._listeners.pop(key, None)
        if listener is None:
            return False
        listener.scope.cancel()
        return True

    def listeners(self) -> list[str]:
        """The keys of the listeners, sorted."""
        return sorted(self._listeners)

    async def _serve_listener(self, listener: _Listener) -> None:
        tcp = trio.socket.from_stdlib_socket(listener.tcp)
        try:
            with listener.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._udp_loop, listener.udp, nursery)
                    nursery.start_soon(trio.serve_listeners, self._tcp_client,
                                       [trio.SocketListener(tcp)])
        finally:
            tcp.close()
            listener.udp.close()
            if self._listeners.get(listener.key) is listener:
                del self._listeners[listener.key]

    def _is_ours(self, server: str) -> bool:
        return any(lst.local and lst.address == server and lst.port == self.upstream_port
                   for lst in self._listeners.values())

    # --- answering -------------------------------------------------------------------------

    def _count(self, result: str) -> None:
        """One query more with this result (``QUERY_RESULTS``), and in its total: forwarded,
        servfail, dropped, or else answered (by us, whatever the rcode)."""
        self.stats.results[result] = self.stats.results.get(result, 0) + 1
        if result == "forwarded":
            self.stats.forwarded += 1
        elif result == "servfail":
            self.stats.servfail += 1
        elif result == "dropped":
            self.stats.dropped += 1
        else:
            self.stats.answered += 1

    def _answer(self, query: bytes, max_udp: int | None) -> bytes | None:
        return answer(query, store=self.store_getter(), domain=self.domain, ttl=self.ttl,
                      rng=self.rng, max_udp=max_udp)

    def _start_forward(self, nursery: trio.Nursery, query: bytes, tcp: bool,
                       deliver: Callable[[bytes], Awaitable[None]]) -> bytes | None:
        """Start forwarding ``query``; returns an immediate SERVFAIL when too busy."""
        if self._forwarding >= MAX_FORWARDS:
            self._count("servfail")
            return error_reply(parse_query(query), SERVFAIL, self.max_udp)
        self._forwarding += 1
        nursery.start_soon(self._forward_task, query, tcp, deliver)
        return None

    async def _forward_task(self, query: bytes, tcp: bool,
                            deliver: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            await deliver(await self.forward(query, tcp=tcp))
        finally:
            self._forwarding -= 1

    async def forward(self, query: bytes, *, tcp: bool) -> bytes:
        """The upstreams' reply to ``query`` (a parseable query), or our SERVFAIL."""
        conf = self.upstreams.get()
        timeout = min(self.upstream_timeout, conf.timeout)
        fallback: bytes | None = None
        for server in conf.nameservers:
            if self._is_ours(server):
                continue
            reply = None
            with trio.move_on_after(timeout):
                try:
                    exchange = self._exchange_tcp if tcp else self._exchange_udp
                    reply = await exchange(server, query)
                except (OSError, trio.BrokenResourceError):
                    reply = None
            if reply is None:
                self.stats.upstream_failures += 1
            elif _rcode(reply) in (SERVFAIL, REFUSED, NOTIMP):
                self.stats.upstream_failures += 1
                fallback = reply
            else:
                self._count("forwarded")
                return reply
        if fallback is not None:
            self._count("forwarded")
            return fallback
        self._count("servfail")
        return error_reply(parse_query(query), SERVFAIL, self.max_udp)

    async def _exchange_udp(self, server: str, query: bytes) -> bytes | None:
        with trio.socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
            await sock.connect((server, self.upstream_port))
            await sock.send(query)
            while True:
                reply: bytes = await sock.recv(65535)
                if matches_query(query, reply):
                    return reply

    async def _exchange_tcp(self, server: str, query: bytes) -> bytes | None:
        with trio.socket.socket(_family(server), socket.SOCK_STREAM) as sock:
            await sock.connect((server, self.upstream_port))
            stream = trio.SocketStream(sock)
            await stream.send_all(frame(query))
            decoder = StreamDecoder()
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                decoder.feed(data)
                try:
                    reply = decoder.next_message()
                except RemoteProtocolError:
                    return None
                if reply is not None:
                    return reply if matches_query(query, reply) else None

    # --- UDP -------------------------------------------------------------------------------

    async def _udp_loop(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(UDP_BATCH):
                try:
                    query, client = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError:
                    self.stats.send_errors += 1  # e.g. an ICMP error queued on the socket
                    continue
                self._on_datagram(sock, query, client, nursery)

    def _on_datagram(self, sock: socket.socket, query: bytes, client: tuple[str, int],
                     nursery: trio.Nursery) -> None:
        self.stats.udp_queries += 1
        try:
            reply = self._answer(query, self.max_udp)
        except RemoteProtocolError:
            self._count("dropped")
            return
        if reply is None:

            async def deliver(forwarded: bytes) -> None:
                self._udp_send(sock, forwarded, client)

            reply = self._start_forward(nursery, query, False, deliver)
            if reply is None:
                return
        else:
            self._count(local_result(reply))
        self._udp_send(sock, reply, client)

    def _udp_send(self, sock: socket.socket, reply: bytes, client: tuple[str, int]) -> None:
        try:
            sock.sendto(reply, client)
        except OSError:  # a full socket buffer drops the reply, as the network might
            self.stats.send_errors += 1

    # --- TCP -------------------------------------------------------------------------------

    async def _tcp_client(self, stream: trio.SocketStream) -> None:
        if self._tcp_clients >= MAX_TCP_CLIENTS:
            self.stats.tcp_refused += 1
            await stream.aclose()
            return
        self._tcp_clients += 1
        self.stats.tcp_connections += 1
        lock = trio.Lock()

        async def send(reply: bytes) -> None:
            async with lock:
                try:
                    await stream.send_all(frame(reply))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        try:
            async with stream, trio.open_nursery() as nursery:
                decoder = StreamDecoder()
                while True:
                    data = b""
                    with trio.move_on_after(TCP_IDLE):
                        try:
                            data = await stream.receive_some(65536)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                    if not data:
                        break
                    decoder.feed(data)
                    try:
                        while (query := decoder.next_message()) is not None:
                            await self._on_tcp_query(query, nursery, send)
                    except RemoteProtocolError:
                        self._count("dropped")
                        break
        finally:
            self._tcp_clients -= 1

    async def _on_tcp_query(self, query: bytes, nursery: trio.Nursery,
                            send: Callable[[bytes], Awaitable[None]]) -> None:
        self.stats.tcp_queries += 1
        try:
            reply = self._answer(query, None)
        except RemoteProtocolError:
            self._count("dropped")
            return
        if reply is None:
            reply = self._start_forward(nursery, query, True, send)
            if reply is None:
                return
        else:
            self._count(local_result(reply))
        await send(reply)


async def serve_dns(store_getter: StoreGetter, *, address: str | None = None, port: int = 53,
                    domain: str = DEFAULT_DOMAIN, ttl: int = DEFAULT_TTL,
                    resolv_conf: str | os.PathLike[str] = "/etc/resolv.conf",
                    task_status: trio.TaskStatus[DnsServer] = trio.TASK_STATUS_IGNORED,
                    rng: random.Random | None = None, max_udp: int = DEFAULT_MAX_UDP,
                    upstream_timeout: float = UPSTREAM_TIMEOUT,
                    upstream_port: int = UPSTREAM_PORT) -> None:
    """Serve DNS until cancelled: on ``address``:``port`` (UDP and TCP) when given, and on
    whatever listeners are added to the ``DnsServer`` later.

    ``store_getter()`` is called for every query (so the router may swap stores).
    ``port=0`` picks a free port (the same for UDP and TCP); ``task_status.started``
    receives the ``DnsServer`` (its ``address`` and ``port``, ``statistics()``,
    ``add_listener``). ``address`` is served as the local listener ``"main"``.
    ``upstream_port`` is for tests: real resolvers listen on 53.
    """
    if not 0 <= ttl < 2**31:
        raise LocalProtocolError("DNS ttl must be between 0 and 2^31-1 seconds")
    if not HEADER.size < max_udp <= 65535:
        raise LocalProtocolError("max_udp must be between 13 and 65535")
    server = DnsServer(store_getter, address=address or "", domain=domain, ttl=ttl,
                       resolv_conf=resolv_conf, rng=rng or random.Random(), max_udp=max_udp,
                       upstream_timeout=upstream_timeout, upstream_port=upstream_port)
    sockets = open_sockets(address, port) if address is not None else None
    try:
        async with trio.open_nursery() as nursery:
            server._nursery = nursery
            if sockets is not None:
                server.port = sockets[0].getsockname()[1]
                server.add_listener("main", *sockets, local=True)
                sockets = None
            task_status.started(server)
            await trio.sleep_forever()
    finally:
        server._nursery = None
        if sockets is not None:
            for sock in sockets:
                sock.close()


# --- a stand-alone server with fixed records (tests, benchmarks) ---------------------------


def load_records(text: str, now: float) -> RecordStore:
    """A store holding the records of ``text``: lines ``hostname address [container]``."""
    store = RecordStore(1, now)
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) not in (2, 3):
            raise LocalProtocolError(f"line {number}: expected 'hostname address [container]'")
        store.add(words[0], words[1], words[2] if len(words) == 3 else "weft:extern", now)
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m weftnet.router.daemon.dns_server",
                                     description="serve fixed DNS records the way weftDNS does")
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--domain", default=DEFAULT_DOMAIN)
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL)
    parser.add_argument("--resolv-conf", default="/etc/resolv.conf")
    parser.add_argument("--records", help="file of lines 'hostname address [container]'")
    parser.add_argument("--upstream-timeout", type=float, default=UPSTREAM_TIMEOUT)
    args = parser.parse_args(argv)
    try:
        text = ""
        if args.records:
            with open(args.records, encoding="utf-8") as f:
                text = f.read()
        store = load_records(text, time.time())
    except (OSError, LocalProtocolError) as exc:
        print(f"weftdns: {exc}", file=sys.stderr)
        return 1

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lambda task_status: serve_dns(
                lambda: store, address=args.address, port=args.port, domain=args.domain,
                ttl=args.ttl, resolv_conf=args.resolv_conf,
                upstream_timeout=args.upstream_timeout, task_status=task_status))
            print(f"weftdns ready {args.address} {server.port} {len(store)} records", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"weftdns: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
