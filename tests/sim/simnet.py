"""A deterministic network simulator for the pure mesh core.

Theory of operation. Many ``MeshNode`` objects live in one process. There is no real
clock: a priority queue of (time, seq, callback) is the only scheduler, and every random
choice (latency jitter, keys, the nodes' own rngs) comes from one seeded ``random.Random``,
so a seed reproduces a run exactly.

::

    node A ──Dial(addr)──▶ sim: after latency, connection_made at both ends (or refused)
    node A ──writes──────▶ sim: batched every FLUSH seconds per node (so gossip coalesces
                           as on a busy link), delivered in order after the link latency
    node A ──Close(c)────▶ sim: the other end sees connection_lost after the bytes in flight

Partitions drop bytes between two groups (connections then time out by heartbeat) and
refuse new connections across them. ``run_until_quiet`` steps until no messages move
and every node's topology digest is equal, then checks routes against an oracle.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from weftnet.proto.connmaker import split_host
from weftnet.proto.mesh import Close, Dial, MeshConfig, MeshNode
from weftnet.router.daemon.connections import DIAL_TIMEOUT  # a dial nobody answers gives up then

FLUSH = 0.005
LATENCY = 0.002


@dataclass(slots=True)
class SimConn:
    node: int
    conn_id: int
    peer_node: int
    peer_conn: int
    open: bool = True


@dataclass(slots=True)
class SimStats:
    messages: int = 0
    bytes: int = 0


@dataclass
class SimNode:
    index: int
    address: str
    mesh: MeshNode
    stats: SimStats = field(default_factory=SimStats)
    conns: dict[int, SimConn] = field(default_factory=dict)
    next_conn: int = 1
    timer_at: float | None = None
    flush_scheduled: bool = False
    up: bool = True


class SimNet:
    def __init__(self, seed: int, *, latency: float = LATENCY) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.nodes: list[SimNode] = []
        self.by_address: dict[str, int] = {}
        self.blocked: set[frozenset[int]] = set()
        self.last_traffic = 0.0

    # --- building -----------------------------------------------------------------------

    def random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def add_node(self, *, targets: Iterable[str] = (), password: bytes | None = None,
                 discovery: bool = True, conn_limit: int = 200,
                 gossip_interval: float = 30.0, require_overlay: bool = False) -> SimNode:
        index = len(self.nodes)
        address = f"10.{index // 250}.{index % 250 + 1}.1:6783"
        name = (0x02 << 40) | (index + 1)
        mesh = MeshNode(
            MeshConfig(name=name, nickname=f"n{index}", uid=self.rng.getrandbits(64) or 1,
                       password=password, discovery=discovery, conn_limit=conn_limit,
                       gossip_interval=gossip_interval, require_overlay=require_overlay),
            now=self.now, random_bytes=self.random_bytes,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node = SimNode(index, address, mesh)
        self.nodes.append(node)
        self.by_address[address] = index
        mesh.add_targets(list(targets), self.now)
        self._after_input(node)
        return node

    # --- scheduling ---------------------------------------------------------------------

    def at(self, when: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn))

    def step(self) -> bool:
        if not self._queue:
            return False
        when, _, fn = heapq.heappop(self._queue)
        self.now = max(self.now, when)
        fn()
        return True

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self._queue and self._queue[0][0] <= end:
            self.step()
        self.now = end

    # --- driving nodes -------------------------------------------------------------------

    def _after_input(self, node: SimNode) -> None:
        mesh = node.mesh
        while (action := mesh.next_action()) is not None:
            if isinstance(action, Dial):
                self._dial(node, action.address)
            elif isinstance(action, Close):
                self._close(node, action.conn_id)
        while mesh.next_event() is not None:
            pass
        if not node.flush_scheduled:
            node.flush_scheduled = True
            self.at(self.now + FLUSH, lambda: self._flush(node))
        t = mesh.get_timer()
        if t is not None and (node.timer_at is None or t < node.timer_at):
            node.timer_at = t
            self.at(t, lambda: self._timer(node, t))

    def _timer(self, node: SimNode, t: float) -> None:
        if node.timer_at != t or not node.up:
            return
        node.timer_at = None
        node.mesh.handle_timer(self.now)
        self._after_input(node)

    def _flush(self, node: SimNode) -> None:
        node.flush_scheduled = False
        if not node.up:
            return
        for conn_id in node.mesh.pending_writes():
            data = node.mesh.data_to_send(conn_id, self.now)
            conn = node.conns.get(conn_id)
            if not data or conn is None or not conn.open:
                continue
            node.stats.messages += 1
            node.stats.bytes += len(data)
            self.last_traffic = self.now
            if frozenset((node.index, conn.peer_node)) in self.blocked:
                continue
            self.at(self.now + self.latency, lambda c=conn, d=data: self._deliver(c, d))

    def _deliver(self, conn: SimConn, data: bytes) -> None:
        peer = self.nodes[conn.peer_node]
        pconn = peer.conns.get(conn.peer_conn)
        if pconn is None or not pconn.open or not peer.up:
            return
        peer.mesh.data_received(conn.peer_conn, data, self.now)
        self._after_input(peer)

    def _dial(self, node: SimNode, address: str) -> None:
        def connect() -> None:
            target = self.by_address.get(address)
            if self._unanswered(node, address, target):
                started = self.now
                self.at(self.now + DIAL_TIMEOUT, lambda: self._timed_out(node, address, started))
                return
            if (target is None or not self.nodes[target].up or not node.up
                    or frozenset((node.index, target)) in self.blocked):
                node.mesh.dial_failed(address, "connection refused", self.now)
                self._after_input(node)
                return
            other = self.nodes[target]
            a_id, b_id = node.next_conn, other.next_conn
            node.next_conn += 1
            other.next_conn += 1
            node.conns[a_id] = SimConn(node.index, a_id, target, b_id)
            other.conns[b_id] = SimConn(target, b_id, node.index, a_id)
            node.mesh.connection_made(a_id, outbound=True, remote_address=address,
                                      target=address, now=self.now)
            other.mesh.connection_made(b_id, outbound=False,
                                       remote_address=self._seen_from(node, a_id, address, target),
                                       target=None, now=self.now)
            self._after_input(node)
            self._after_input(other)

        self.at(self.now + self.latency, connect)

    def _unanswered(self, node: SimNode, address: str, target: int | None) -> bool:
        """A dial whose SYNs nobody answers (it fails after DIAL_TIMEOUT, not at once)."""
        return False

    def _seen_from(self, node: SimNode, conn_id: int, address: str, target: int) -> str:
        """The address the dialled end sees the connection come from."""
        return f"{split_host(node.address)}:{40000 + conn_id}"

    def _timed_out(self, node: SimNode, address: str, started: float) -> None:
        if node.up:
            node.mesh.dial_failed(address, "connection timed out", self.now)
            self._after_input(node)

    def _close(self, node: SimNode, conn_id: int) -> None:
        conn = node.conns.pop(conn_id, None)
        if conn is None:
            return
        data = node.mesh.data_to_send(conn_id, self.now)  # a goodbye, if any
        if data and frozenset((node.index, conn.peer_node)) not in self.blocked:
            self.at(self.now + self.latency, lambda: self._deliver(conn, data))
        conn.open = False

        def lost() -> None:
            peer = self.nodes[conn.peer_node]
            pconn = peer.conns.pop(conn.peer_conn, None)
            if pconn is not None:
                pconn.open = False
                peer.mesh.connection_lost(conn.peer_conn, "connection closed by peer", self.now)
                self._after_input(peer)

        self.at(self.now + self.latency * 1.5, lost)

    # --- faults ------------------------------------------------------------------------------

    def partition(self, group_a: Iterable[int], group_b: Iterable[int]) -> None:
        for a in group_a:
            for b in group_b:
                self.blocked.add(frozenset((a, b)))

    def heal(self) -> None:
        self.blocked.clear()

    def crash(self, index: int) -> None:
        """The process dies: its peers see their TCP connections reset."""
        node = self.nodes[index]
        node.up = False
        for conn_id in list(node.conns):
            conn = node.conns.pop(conn_id)
            conn.open = False

            def lost(c: SimConn = conn) -> None:
                peer = self.nodes[c.peer_node]
                pconn = peer.conns.pop(c.peer_conn, None)
                if pconn is not None:
                    pconn.open = False
                    peer.mesh.connection_lost(c.peer_conn, "connection reset", self.now)
                    self._after_input(peer)

            self.at(self.now + self.latency, lost)

    # --- checks ----------------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up]

    def converged(self) -> bool:
        digests = {n.mesh.topology.digest() for n in self.live()}
        return len(digests) == 1

    def run_until_converged(self, limit: float, check: Callable[[], bool] | None = None,
                            every: float = 0.05) -> float:
        """Run until ``check`` (default: equal digests) holds; the virtual time it took."""
        start = self.now
        check = check or self.converged
        while self.now - start < limit:
            self.run_for(every)
            if check():
                return self.now - start
        digests = {n.mesh.topology.digest() for n in self.live()}
        expected = ("equal topology digests" if check == self.converged
                    else getattr(check, "__doc__", None)
                    or f"{getattr(check, '__name__', 'the check')} to hold")
        raise AssertionError(f"not converged after {limit} virtual seconds: expected "
                             f"{expected}; at t={self.now:.2f} the {len(self.live())} live "
                             f"nodes hold {len(digests)} distinct topology digests")
