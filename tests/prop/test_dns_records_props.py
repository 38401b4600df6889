"""CRDT laws of the DNS record store, and convergence of routers that restart, partition,
remove each other and expire tombstones, checked against what each router claims."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet.dns.gossip import Entries
from weftnet.dns.records import Entry, RecordStore, digest_of_entries

OWNER, B, C = 0xA, 0xB, 0xC
T0 = 1_000_000.0
HOSTS = ["a.weft.local.", "b.weft.local.", "x.a.weft.local."]
ADDRS = ["10.32.0.1", "10.32.0.2"]

entries = st.builds(
    Entry, st.sampled_from(HOSTS), st.sampled_from(ADDRS), st.sampled_from(["c1", "c2"]),
    st.sampled_from([B, C]), st.integers(1, 4), st.sampled_from([0, 0, 10, 20]))
batches = st.lists(entries, max_size=12)


def fresh() -> RecordStore:
    # nothing expires and no clamping: the plain lattice
    return RecordStore(OWNER, T0, tombstone_ttl=1e9, max_skew=1e6)


def state(s: RecordStore) -> tuple[list[Entry], bytes]:
    return s.entries(tombstones=True), s.digest()


def merged(*xs: list[Entry]) -> RecordStore:
    s = fresh()
    for x in xs:
        s.merge(x, T0)
    return s


@given(batches, batches)
def test_merge_is_commutative(x: list[Entry], y: list[Entry]) -> None:
    assert state(merged(x, y)) == state(merged(y, x))


@given(batches, batches, batches)
def test_merge_is_associative(x: list[Entry], y: list[Entry], z: list[Entry]) -> None:
    yz = Entries.of(y).merge(Entries.of(z))
    assert isinstance(yz, Entries)
    assert state(merged(x, y, z)) == state(merged(x, list(yz.entries)))


@given(batches, batches)
def test_merge_is_idempotent_and_the_delta_is_the_news(x: list[Entry], y: list[Entry]) -> None:
    s = merged(x)
    before = s.entries(tombstones=True)
    delta = s.merge(y, T0)
    assert state(merged(before, delta)) == state(s)
    assert s.merge(y, T0) == [] and s.merge(delta, T0) == []
    assert s.digest() == digest_of_entries(s.entries(tombstones=True))


@given(batches)
def test_indexes_match_a_naive_oracle(x: list[Entry]) -> None:
    s = merged(x)
    live = [e for e in s.entries(tombstones=True) if not e.tombstone]
    for host in HOSTS + ["weft.local.", "a.weft.local.", "nope.weft.local."]:
        want = sorted({e.address for e in live if e.hostname == host})
        assert sorted(s.lookup(host)) == want
        exists = any(e.hostname == host or e.hostname.endswith("." + host) for e in live)
        assert s.has_name(host) == exists
    for addr in ADDRS:
        assert s.reverse(addr) == sorted({e.hostname for e in live if e.address == addr})


# --- routers over time -----------------------------------------------------------------------

PEERS = [0xA, 0xB, 0xC]
TTL, SKEW = 100.0, 10.0

ops = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(PEERS), st.sampled_from(HOSTS[:2]),
              st.sampled_from(ADDRS), st.sampled_from(["c1", "c2"])),
    st.tuples(st.just("remove"), st.sampled_from(PEERS), st.sampled_from(["c1", "c2"])),
    st.tuples(st.just("sync"), st.sampled_from(PEERS), st.sampled_from(PEERS)),
    st.tuples(st.just("restart"), st.sampled_from(PEERS)),
    st.tuples(st.just("remove_peer"), st.sampled_from(PEERS), st.sampled_from(PEERS)),
    st.tuples(st.just("wait"), st.sampled_from([1.0, 30.0, 150.0])),
)


@settings(max_examples=300)
@given(st.lists(ops, max_size=40))
def test_routers_converge_on_what_each_origin_claims(script: list[tuple]) -> None:  # type: ignore[type-arg]
    now = T0
    stores = {p: RecordStore(p, now, tombstone_ttl=TTL, max_skew=SKEW) for p in PEERS}
    claims: dict[int, set[tuple[str, str, str]]] = {p: set() for p in PEERS}
    for op in script:
        kind = op[0]
        if kind == "add":
            _, p, host, addr, ctr = op
            claims[p].add((host, addr, ctr))
            stores[p].add(host, addr, ctr, now)
        elif kind == "remove":
            _, p, ctr = op
            claims[p] = {c for c in claims[p] if c[2] != ctr}
            stores[p].remove_container(ctr, now)
        elif kind == "sync":
            _, src, dst = op
            stores[dst].merge(stores[src].entries(tombstones=True), now)
        elif kind == "restart":
            _, p = op
            stores[p] = RecordStore(p, now, tombstone_ttl=TTL, max_skew=SKEW)
            stores[p].reconcile(sorted(claims[p]), now)
        elif kind == "remove_peer":
            _, p, gone = op
            if p != gone:
                stores[p].remove_peer(gone, now)
        else:
            now += op[1]
            for s in stores.values():
                s.handle_timer(now)
    # everyone reconnects: full-state exchanges until nothing is news
    for _ in range(10):
        news = False
        for src in PEERS:
            for dst in PEERS:
                if src != dst and stores[dst].merge(stores[src].entries(tombstones=True), now):
                    news = True
        if not news:
            break
    assert not news, "gossip did not settle"
    assert len({s.digest() for s in stores.values()}) == 1
    for s in stores.values():
        for p in PEERS:
            live = {(e.hostname, e.address, e.container) for e in s.entries() if e.origin == p}
            assert live == claims[p], (p, live, claims[p])
