"""Clock skew: what in weftnet reads the wall clock, and that skew between hosts (or a
clock stepped back across a restart) breaks nothing. The pure cores are driven with
skewed ``now`` values here; tests/netns/test_faults.py runs real routers under faketime.

Where the router reads ``time.time()`` (everything else uses trio's monotonic clock, which
never crosses the wire):

* the topology's initial version of our own record (``int(time.time() * 1e6)``): only a
  head start; a restart with a clock set back starts below its old record, which comes
  back from a neighbour and is overridden (our own record is authoritative);
* weftDNS ``now`` values: tombstone ``deleted_at`` stamps and their expiry (30 min), the
  skew guard clamps received stamps to our clock + 60 s; versions are counters, so a
  wrong clock never makes an old entry win;
* IPAM's ``wall_offset``: only to persist vanished containers' release deadlines across a
  restart; nothing on the IPAM wire carries a time.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Interface, IPv4Network

import pytest

from weftnet.dns.records import MAX_SKEW, TOMBSTONE_TTL, Entry, RecordStore
from weftnet.ipam.allocator import Allocator, Result
from weftnet.ipam.codec import decode_gossip, encode_gossip
from weftnet.ipam.mode import ConsensusInit
from weftnet.ipam.persist import decode_state, encode_state
from weftnet.proto.topology import ConnectionInfo, PeerRecord, Topology

A, B, C = ((0x02 << 40) | i for i in (1, 2, 3))
HOUR = 3600.0
WALL = 1.8e9                                  # "now" on the host with the right clock
SKEWS = {A: 0.0, B: +2 * HOUR, C: -2 * HOUR}  # B runs 2 h ahead, C 2 h behind
UNIVERSE = IPv4Network("10.32.0.0/12")


# --- weftDNS ---------------------------------------------------------------------------------


class DnsHosts:
    """Three record stores whose wall clocks disagree by hours, wired by hand."""

    def __init__(self) -> None:
        self.t = WALL
        self.stores = {n: RecordStore(n, self.t + s) for n, s in SKEWS.items()}

    def now(self, name: int) -> float:
        return self.t + SKEWS[name]

    def tick(self, seconds: float) -> None:
        self.t += seconds
        for n, store in self.stores.items():
            store.handle_timer(self.now(n))

    def flood(self, src: int, delta: list[Entry], to: tuple[int, ...] | None = None) -> None:
        """News from ``src`` to the others (all of them, or ``to``), onward until quiet."""
        queue = [(src, d, dst) for d in [delta] for dst in (to or tuple(self.stores))
                 if dst != src]
        while queue:
            frm, entries, dst = queue.pop(0)
            store = self.stores[dst]
            store.handle_timer(self.now(dst))
            news = store.merge(entries, self.now(dst)) + store.take_overrides()
            if news:
                queue += [(dst, news, n) for n in self.stores if n not in (dst, frm)]
                if any(e.origin == dst for e in news):
                    queue.append((dst, news, frm))   # origin authority answers the sender too

    def anti_entropy(self) -> None:
        """Every pair exchanges full state once (the periodic digest exchange)."""
        for a in self.stores:
            for b in self.stores:
                if a != b:
                    self.flood(a, self.stores[a].entries(tombstones=True), to=(b,))

    def live(self, name: int) -> set[tuple[str, str]]:
        return {(e.hostname, e.address) for e in self.stores[name].entries()}


def test_names_added_and_removed_on_skewed_clocks_converge_everywhere() -> None:
    h = DnsHosts()
    for n, host in ((A, "a"), (B, "b"), (C, "c")):
        h.flood(n, h.stores[n].add(f"{host}.weft.local", f"10.32.0.{n & 0xff}", host, h.now(n)))
        h.flood(n, h.stores[n].add(f"x{host}.weft.local", f"10.32.1.{n & 0xff}", f"x{host}",
                                   h.now(n)))
    everything = {(f"{p}{x}.weft.local.", f"10.32.{i}.{n & 0xff}")
                  for n, x in ((A, "a"), (B, "b"), (C, "c")) for p, i in (("", 0), ("x", 1))}
    assert all(h.live(n) == everything for n in SKEWS)
    # each host removes its x-name: a tombstone stamped 2 h ahead, right, 2 h behind
    for n, host in ((A, "a"), (B, "b"), (C, "c")):
        h.flood(n, h.stores[n].remove_container(f"x{host}", h.now(n)))
    kept = {e for e in everything if not e[0].startswith("x")}
    assert all(h.live(n) == kept for n in SKEWS)
    # and they stay removed through full exchanges and tombstone expiry on every clock
    for _ in range(3):
        h.tick(TOMBSTONE_TTL / 2)
        h.anti_entropy()
        assert all(h.live(n) == kept for n in SKEWS)
    assert not [e for n in SKEWS for e in h.stores[n].entries(tombstones=True) if e.tombstone], \
        "every tombstone expired on every clock"


def test_a_tombstone_from_a_fast_clock_is_clamped_and_expires() -> None:
    h = DnsHosts()
    a, b = h.stores[A], h.stores[B]
    a.merge(b.add("b.weft.local", "10.32.0.2", "b", h.now(B)), h.now(A))
    removed = b.remove_container("b", h.now(B))
    assert removed[0].deleted_at == pytest.approx(h.now(B), abs=1)   # 2 h in A's future
    assert a.merge(removed, h.now(A)) and a.lookup("b.weft.local.") == ()
    held = a.entries(tombstones=True)
    # kept as if deleted at most MAX_SKEW ahead of A's clock, so it is not immortal
    assert len(held) == 1 and held[0].deleted_at == pytest.approx(h.now(A) + MAX_SKEW, abs=1)
    h.tick(TOMBSTONE_TTL + MAX_SKEW + 1)
    assert a.entries(tombstones=True) == []


def test_clocks_hours_apart_shorten_tombstones_and_the_origin_still_defends_removals() -> None:
    """Relayed through C (2 h behind), B's tombstone ends up stamped in everyone's past
    (the skew guard clamps, and of two tombstones the earlier deletion wins), so nobody
    keeps it. A stale live copy brought back later is still removed everywhere: it reaches
    B, the origin, which tombstones again what it no longer claims."""
    h = DnsHosts()
    h.flood(B, h.stores[B].add("b.weft.local", "10.32.0.2", "b", h.now(B)))
    stale = h.stores[A].entries()
    h.flood(B, h.stores[B].remove_container("b", h.now(B)))
    assert all(h.live(n) == set() for n in SKEWS)
    h.flood(A, stale)     # e.g. from a router that was partitioned meanwhile
    assert all(h.live(n) == set() for n in SKEWS)
    h.anti_entropy()
    assert all(h.live(n) == set() for n in SKEWS)


def test_a_tombstone_from_a_slow_clock_removes_the_name_though_it_arrives_expired() -> None:
    """C's clock is 2 h behind: its tombstones are older than the 30 min TTL by everyone
    else's clock, so they remove the live entry but are not stored. A stale live copy
    that a partitioned router brings back later is taken in by a router without the
    tombstone; the next full exchange with C (the origin, which still holds it by its own
    clock) removes it again. With clocks within MAX_SKEW this window does not exist."""
    h = DnsHosts()
    h.flood(C, h.stores[C].add("c.weft.local", "10.32.0.3", "c", h.now(C)))
    stale = h.stores[B].entries()          # B is cut off before the removal
    h.flood(C, h.stores[C].remove_container("c", h.now(C)), to=(A,))
    assert h.live(A) == set() and h.stores[A].entries(tombstones=True) == []
    assert h.stores[C].entries(tombstones=True)[0].tombstone
    # the partition heals: B's stale live copy reaches A (and C, which ignores it)
    h.flood(B, stale)
    assert h.live(C) == set()
    h.anti_entropy()
    assert all(h.live(n) == set() for n in SKEWS)


# --- topology: our own record after a restart with the clock set back -----------------------


def test_a_restart_with_the_clock_set_back_still_wins_the_topology() -> None:
    def rec(name: int, uid: int, wall: float, *links: int) -> PeerRecord:
        conns = tuple(ConnectionInfo(n, "172.31.1.9:6783", True, True) for n in links)
        return PeerRecord(name, f"n{name & 0xff}", uid, int(wall * 1e6), conns)

    old = rec(A, 111, WALL, B)
    peer = Topology(rec(B, 222, WALL, A))
    assert peer.merge([old]) == [old]
    peer.merge([rec(A, 111, WALL, B)])
    # A restarts with a clock 2 h behind: a new uid, a version far below the old one
    restarted = Topology(rec(A, 333, WALL - 2 * HOUR))
    fresh = restarted.update_ourself(connections=[ConnectionInfo(B, "172.31.1.2:6783", True,
                                                                 True)])
    assert fresh is not None and peer.merge([fresh]) == []     # the old record outranks it
    # on connecting, B sends what it holds; A sees its old self and jumps past it
    back = restarted.merge(peer.peers.values())
    bumped = [r for r in back if r.name == A]
    assert len(bumped) == 1 and bumped[0].version == old.version + 1
    assert peer.merge(bumped) == bumped
    assert peer.get(A) == restarted.ourself and peer.get(A).uid == 333  # type: ignore[union-attr]


# --- IPAM ------------------------------------------------------------------------------------


def test_ipam_peers_with_unrelated_clocks_agree_and_never_hand_out_twice() -> None:
    """Each allocator's ``now`` is its own router's monotonic clock; nothing on the wire
    carries a time, so peers whose clocks are 10^9 s apart seed and allocate as usual."""
    base = {A: 0.0, B: 1e9}
    allocs = {n: Allocator(n, f"h{n & 0xff}", UNIVERSE, None, ConsensusInit(2), base[n],
                           random.Random(n)) for n in base}
    results: dict[int, IPv4Interface] = {}

    def pump(t: float) -> None:
        for _ in range(50):
            moved = False
            for n, a in allocs.items():
                other = B if n == A else A
                news = a.take_news()
                if news is not None:
                    moved = True
                    allocs[other].on_gossip(decode_gossip(encode_gossip(news)), base[other] + t)
                for dst, payload in a.messages_to_send():
                    moved = True
                    allocs[other if dst in (None, other) else dst].on_unicast(n, payload,
                                                                             base[other] + t)
                while (r := a.next_result()) is not None:
                    assert isinstance(r, Result) and r.address is not None, r
                    results[r.op_id] = r.address
            if not moved:
                return
        raise AssertionError("the allocators never went quiet")

    def run_until(t_end: float) -> None:
        """Virtual time in 50 ms steps: each allocator's timers on its own clock."""
        t = now[0]
        while t < t_end:
            t = round(t + 0.05, 2)
            for n, a in allocs.items():
                timer = a.get_timer()
                if timer is not None and timer <= base[n] + t:
                    a.handle_timer(base[n] + t)
            pump(t)
        now[0] = t

    now = [0.0]
    names = {n: f"h{n & 0xff}" for n in allocs}
    for n, a in allocs.items():
        a.peers_changed(names, base[n])
    for n, a in allocs.items():   # connected: each sends the other its full state
        other = B if n == A else A
        allocs[other].on_gossip(decode_gossip(encode_gossip(a.full_gossip())), base[other])
    op = 1
    for _ in range(3):
        for n, a in allocs.items():
            a.allocate(op, f"c{op}", None, base[n] + now[0])
            op += 1
        run_until(now[0] + 2.0)
    assert len(results) == 6 and len(set(results.values())) == 6, results
    assert all(a.status(base[n] + now[0])["status"] == "ready" for n, a in allocs.items())


def test_a_release_deadline_survives_a_clock_stepped_back_across_a_restart() -> None:
    """A vanished container's addresses are freed ``grace`` seconds after it went, even
    when the wall clock was set back 2 h while the router was down: never later than
    ``grace`` after the restart (a clock set forward only frees them sooner)."""
    grace = 30.0
    a = Allocator(A, "h1", UNIVERSE, None, ConsensusInit(1), 100.0, random.Random(1),
                  grace=grace, wall_offset=WALL - 100.0)
    a.allocate(1, "c1", None, 100.0)
    assert a.next_result() is not None
    a.container_died("c1", 110.0)
    saved = decode_state(encode_state(a.to_state()))
    for step, due in ((-2 * HOUR, 5.0 + grace), (+2 * HOUR, 5.0)):
        # restarted 20 s later by the real clock; its monotonic clock now reads 5
        b = Allocator(A, "h1", UNIVERSE, None, ConsensusInit(1), 5.0, random.Random(1),
                      grace=grace, wall_offset=WALL + 30.0 + step - 5.0)
        b.load_state(saved)
        if b.lookup("c1"):
            timer = b.get_timer()
            assert timer is not None and timer <= due, (step, timer)
            b.handle_timer(due)
        assert b.lookup("c1") == [], step
