"""Path MTU probes: a DF socket per link while its machine probes (router/dataplane/engine.py
hands it the machine's probe sends).

The probe socket shares the data socket's address (udpsock.probe_sender ``shared``), so the
probes leave from the data flow's own address and port and a NAT on the way maps and filters
them exactly as the data: a probe from another port gets a mapping of its own, which an
address-and-port-dependent NAT at the far end drops. While it is open the kernel hands this
connected socket everything the peer sends to that port (it is the better match), so its
reader passes on whatever is not a probe answer, as the data socket's reader would.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable

import trio

from weftnet.proto import ethernet, sleeve
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.link import Send
from weftnet.proto.sleeve import Kind
from weftnet.router.dataplane.links import Link
from weftnet.router.dataplane.ports import Address, ProbePort, TapPort, UdpPort
from weftnet.router.dataplane.tap import PLAIN_VNET_HDR

log = logging.getLogger("weft")

DRAIN_BATCH = 512
READ_SIZE = 65536 + 64


class PathProbes:
    """Opens, feeds and closes the links' probe sockets; the engine's hooks do the rest."""

    def __init__(self, *, port: Callable[[int], UdpPort | None],
                 deliver: Callable[[memoryview, Address, float, int], None],
                 service: Callable[[Link, float], None],
                 flush: Callable[[float], None], lock: threading.RLock) -> None:
        self._port = port          # our socket by index (the link's)
        self._deliver = deliver    # a datagram that is not a probe answer: the data path's
        self._service = service    # the link's machine has news
        self._flush = flush        # send what the deliveries queued
        self._lock = lock          # the engine's: its data thread may be in it (readers.py)
        self.nursery: trio.Nursery | None = None

    def send(self, link: Link, send: Send, now: float) -> None:
        m = link.machine
        udp = self._port(link.sock)
        assert send.probe_id is not None and udp is not None
        if link.probe is None or link.probe_addr != send.addr:
            self.close(link)
            if self.nursery is None:
                m.probe_send_failed(send.probe_id, now, None)
                return
            try:
                probe = udp.open_probe(send.addr)
            except OSError as exc:
                log.debug("cannot probe the path to %s: %s", send.addr, exc)
                m.probe_send_failed(send.probe_id, now, None)
                return
            link.probe, link.probe_addr = probe, send.addr
            self.nursery.start_soon(self._loop, link, probe)
        route: int | None = None
        try:
            link.probe.send(link.session.seal(send.kind, send.body, now))
            return
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                try:
                    route = link.probe.route_mtu()
                except OSError:
                    route = None
        m.probe_send_failed(send.probe_id, now, route)

    def close(self, link: Link) -> None:
        probe, addr = link.probe, link.probe_addr
        link.probe, link.probe_addr = None, None
        if probe is None:
            return
        if self.nursery is None or addr is None:
            probe.close()
            return
        try:
            self.nursery.start_soon(self._last_words, link, probe, addr)
        except RuntimeError:  # the nursery is closing: so is everything else
            probe.close()

    async def _last_words(self, link: Link, probe: ProbePort, addr: Address) -> None:
        """Deliver what the peer sent while the probe port was open and nobody read yet,
        then close it: the connected probe socket got those datagrams, not the data socket,
        and closing it unread would lose them (a peer's own probe, sent just before our
        round ended, went unanswered: its round then found a smaller path MTU). A task of
        its own, so the engine is never re-entered from the service that closed the port."""
        with self._lock:
            now = trio.current_time()
            try:
                for _ in range(DRAIN_BATCH):
                    try:
                        data = probe.recv(READ_SIZE)
                    except OSError:  # BlockingIOError: drained
                        break
                    self._deliver(memoryview(data), addr, now, link.sock)
            finally:
                probe.close()
            self._flush(now)

    async def _loop(self, link: Link, probe: ProbePort) -> None:
        """Answers to one link's probes. The probe port shares the data socket's address
        (so NATs treat probes as the data flow) and, while open, receives everything the
        peer sends there: what is not a probe answer goes the data socket's way."""
        while link.probe is probe:
            try:
                await probe.wait_readable()
            except (trio.ClosedResourceError, OSError):
                return
            with self._lock:
                self._drain(link, probe)
            await trio.sleep(0)

    def _drain(self, link: Link, probe: ProbePort) -> None:
        now = trio.current_time()
        for _ in range(DRAIN_BATCH):
            if link.probe is not probe or link.probe_addr is None:
                break
            try:
                data = probe.recv(READ_SIZE)
            except BlockingIOError:
                break
            except OSError:  # e.g. ICMP port unreachable, reported once
                break
            try:
                answer = sleeve.peek(data)[::2] == (Kind.PROBE_ACK, link.conn_uid)
            except RemoteProtocolError:
                answer = False
            if not answer:
                self._deliver(memoryview(data), link.probe_addr, now, link.sock)
                continue
            try:
                kind, body = link.session.open(data, now)
                link.machine.receive(kind, body, link.probe_addr, now)
            except RemoteProtocolError:
                continue
            self._service(link, now)
        self._flush(now)


def too_big(tap: TapPort, frame: bytes, vnet: int, mtu: int) -> bool:
    """A frame whose IP packets exceed the link MTU: ICMP "fragmentation needed" back to
    the container if DF (True: the frame is dropped), else carry it (False). Only called for
    a frame longer than the MTU (its segments may still fit)."""
    if vnet:
        size = ethernet.frame_segment_size(frame) - ethernet.ETH_HLEN
    else:
        size = len(frame) - ethernet.ETH_HLEN
    if size <= mtu:
        return False
    reply = ethernet.frag_needed_reply(memoryview(frame)[vnet:], mtu, size)
    if reply is None:
        return False  # no DF (or not IPv4): the kernel fragments the datagram
    try:
        if vnet:
            tap.writev((PLAIN_VNET_HDR, reply))
        else:
            tap.write(reply)
    except OSError:
        pass
    return True
