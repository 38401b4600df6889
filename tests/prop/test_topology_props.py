"""Properties of the topology CRDT: lattice laws, exact deltas, convergence, gc, codec."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto.peername import MAX_NAME, PeerName
from weftnet.proto.topology import (
    MAX_UID,
    MAX_VERSION,
    ConnectionInfo,
    PeerRecord,
    Topology,
    decode_records,
    digest_of_records,
    encode_records,
    outranks,
    rank,
)

ME = 1
OTHERS = [2, 3, 4, 5, 6]


ADDRESSES = ["", "10.0.0.1:6783"]
META = [(), (("underlay", "10.1.0.1"),)]


def _conns(owner: PeerName, raw: list[tuple[PeerName, int]]) -> tuple[ConnectionInfo, ...]:
    picked = {remote: flags for remote, flags in raw if remote != owner}
    return tuple(ConnectionInfo(r, ADDRESSES[picked[r] & 1], bool(picked[r] & 2),
                                bool(picked[r] & 4)) for r in sorted(picked))


def connections(owner: PeerName, pool: Sequence[PeerName]) -> st.SearchStrategy[
        tuple[ConnectionInfo, ...]]:
    raw = st.lists(st.tuples(st.sampled_from(pool), st.integers(0, 7)), max_size=3)
    return raw.map(lambda r: _conns(owner, r))


def records(names: Sequence[PeerName] = OTHERS,
            pool: Sequence[PeerName] = (ME, *OTHERS)) -> st.SearchStrategy[list[PeerRecord]]:
    """Small value ranges, so equal versions, equal uids and conflicts are common."""
    raw = st.tuples(st.sampled_from(names), st.integers(0, 1), st.integers(0, 2),
                    st.integers(1, 4),
                    st.lists(st.tuples(st.sampled_from(pool), st.integers(0, 7)), max_size=3),
                    st.integers(0, 1))
    one = raw.map(lambda t: PeerRecord(t[0], "ab"[t[1]], t[2], t[3], _conns(t[0], t[4]),
                                       META[t[5]]))
    return st.lists(one, max_size=12)


def fresh() -> Topology:
    return Topology(PeerRecord(ME, "me", 1, 1, ()))


def state(t: Topology) -> dict[PeerName, PeerRecord]:
    return dict(t.peers)


def merged(*batches: Iterable[PeerRecord]) -> Topology:
    t = fresh()
    for batch in batches:
        t.merge(batch)
    return t


def best(recs: Iterable[PeerRecord]) -> dict[PeerName, PeerRecord]:
    out: dict[PeerName, PeerRecord] = {}
    for r in recs:
        if r.name not in out or rank(r) > rank(out[r.name]):
            out[r.name] = r
    return out


# --- lattice laws ------------------------------------------------------------------------


@given(records(), records())
def test_merge_is_commutative(a: list[PeerRecord], b: list[PeerRecord]) -> None:
    assert state(merged(a, b)) == state(merged(b, a))


@given(records(), records(), records())
def test_merge_is_associative(a: list[PeerRecord], b: list[PeerRecord],
                              c: list[PeerRecord]) -> None:
    # (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c), where b ⊔ c is merged elsewhere and shipped as its state
    bc = merged(b, c)
    shipped = [r for n, r in sorted(bc.peers.items()) if n != ME]
    assert state(merged(a, b, c)) == state(merged(a, shipped)) == state(merged(a + b + c))


@given(records())
def test_merge_is_idempotent(a: list[PeerRecord]) -> None:
    t = merged(a)
    before, gen, digest = state(t), t.generation, t.digest()
    assert t.merge(a) == []
    assert t.merge(list(t.peers.values())) == []
    assert (state(t), t.generation, t.digest()) == (before, gen, digest)
    assert state(merged(a + a)) == before


@given(records(), st.randoms(use_true_random=False))
def test_order_within_a_batch_does_not_matter(a: list[PeerRecord], rnd: object) -> None:
    shuffled = list(a)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert state(merged(a)) == state(merged(shuffled))


@given(records())
def test_state_is_the_max_rank_record_per_name(a: list[PeerRecord]) -> None:
    t = merged(a)
    expected = best(a)
    expected[ME] = fresh().ourself
    assert state(t) == expected
    for r in a:
        assert not outranks(r, t.peers[r.name])   # never store less than we have seen


@given(records(), records())
def test_delta_is_exactly_what_changed(a: list[PeerRecord], b: list[PeerRecord]) -> None:
    t = merged(a)
    before, gen = state(t), t.generation
    delta = t.merge(b)
    after = state(t)
    changed = sorted(n for n in after if before.get(n) != after[n])
    assert [r.name for r in delta] == changed
    assert all(r == after[r.name] for r in delta)
    assert t.generation == gen + (1 if delta else 0)
    # forwarding the delta alone brings a copy of the old state to the new one
    copy = merged(a)
    copy.merge(delta)
    assert state(copy) == after


@given(records(), records())
def test_digest_is_maintained_incrementally(a: list[PeerRecord], b: list[PeerRecord]) -> None:
    t = merged(a)
    t.merge(b)
    assert t.digest() == digest_of_records(t.peers.values())
    assert t.digest() == digest_of_records(list(t.peers.values()) + a + b + [fresh().ourself])
    t.gc()
    assert t.digest() == digest_of_records(t.peers.values())


# --- ourselves ---------------------------------------------------------------------------


self_ops = st.lists(st.one_of(
    st.tuples(st.just("merge"), records(names=[ME, *OTHERS])),
    st.tuples(st.just("self"), connections(ME, [ME, *OTHERS])),
), max_size=8)


@given(self_ops)
def test_our_record_is_authoritative(ops: list[tuple[str, object]]) -> None:
    t = fresh()
    original = t.ourself
    content = original.connections
    seen: list[PeerRecord] = []
    for op, arg in ops:
        if op == "merge":
            batch: list[PeerRecord] = arg  # type: ignore[assignment]
            delta = t.merge(batch)
            seen += [r for r in batch if r.name == ME]
            mine = [r for r in delta if r.name == ME]
            assert mine in ([], [t.ourself])
        else:
            content = arg  # type: ignore[assignment]
            new = t.update_ourself(connections=content)
            assert new is None or new == t.ourself
        ours = t.ourself
        assert (ours.name, ours.nickname, ours.uid, ours.connections, ours.meta) == (
            original.name, original.nickname, original.uid, content, original.meta)
        assert all(r == ours or outranks(ours, r) for r in seen)


# --- convergence by delta forwarding -----------------------------------------------------


@st.composite
def networks(draw: st.DrawFn) -> tuple[list[PeerName], list[tuple[int, int]]]:
    """A connected random graph of topology holders, named 1..n."""
    n = draw(st.integers(2, 7))
    edges = [(draw(st.integers(0, i - 1)), i) for i in range(1, n)]   # a random tree
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=6))
    edges += [(a, b) for a, b in extra if a != b]
    return list(range(1, n + 1)), sorted({(min(e), max(e)) for e in edges})


@given(networks(), st.data())
def test_delta_forwarding_converges(net: tuple[list[PeerName], list[tuple[int, int]]],
                                    data: st.DataObject) -> None:
    names, edges = net
    pool = [*names, 8, 9]
    adj: dict[int, list[int]] = {i: [] for i in range(len(names))}
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    nodes = [Topology(PeerRecord(n, f"n{n}", 100 + n, 1, ())) for n in names]
    for i, node in enumerate(nodes):
        # each starts knowing a little, possibly stale records about the others or itself
        node.merge(data.draw(records(names=pool, pool=pool)))
        node.update_ourself(connections=[ConnectionInfo(names[j], "", True, True)
                                         for j in sorted(adj[i])])
    rnd = data.draw(st.randoms(use_true_random=False))
    # in flight: (to, from, records); the first round is everyone's full state
    queue = [(j, i, list(node.peers.values())) for i, node in enumerate(nodes) for j in adj[i]]
    steps = 0
    while queue:
        steps += 1
        assert steps < 10_000
        to, frm, batch = queue.pop(rnd.randrange(len(queue)))
        delta = nodes[to].merge(batch)
        if delta:
            queue += [(j, to, delta) for j in adj[to] if j != frm or any(
                r.name == names[to] for r in delta)]
    digests = {node.digest() for node in nodes}
    assert len(digests) == 1
    assert all(state(node) == state(nodes[0]) for node in nodes)


# --- gc against an oracle ----------------------------------------------------------------


def reachable_oracle(t: Topology) -> set[PeerName]:
    """Names reached from us following each reached record's own listed connections."""
    edges = {(r.name, c.remote) for r in t.peers.values() for c in r.connections}
    seen = {ME}
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            if a in seen and b not in seen:
                seen.add(b)
                changed = True
    return seen


POOL = [ME, *OTHERS, 7, 8]
operation = st.one_of(
    st.tuples(st.just("merge"), records(names=POOL[1:], pool=POOL)),
    st.tuples(st.just("self"), connections(ME, POOL)),
    st.tuples(st.just("gc"), st.none()),
)


@given(st.lists(operation, max_size=12))
def test_gc_matches_a_full_reachability_oracle(ops: list[tuple[str, object]]) -> None:
    t = fresh()
    for op, arg in ops:
        if op == "merge":
            t.merge(arg)  # type: ignore[arg-type]
        elif op == "self":
            t.update_ourself(connections=arg)  # type: ignore[arg-type]
        else:
            expected = sorted(set(t.peers) - reachable_oracle(t))
            gen = t.generation
            assert t.gc() == expected
            assert t.generation == gen + (1 if expected else 0)
            assert set(t.peers) <= reachable_oracle(t)
    expected = sorted(set(t.peers) - reachable_oracle(t))
    assert t.gc() == expected
    assert ME in t.peers
    assert t.digest() == digest_of_records(t.peers.values())


# --- codec -------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=8)


@st.composite
def any_record(draw: st.DrawFn) -> PeerRecord:
    name = draw(st.integers(1, MAX_NAME))
    remotes = draw(st.lists(st.integers(1, MAX_NAME).filter(lambda r: r != name),
                            unique=True, max_size=5))
    conns = tuple(ConnectionInfo(r, draw(st.text(max_size=64)), draw(st.booleans()),
                                 draw(st.booleans())) for r in sorted(remotes))
    keys = draw(st.lists(st.text(min_size=1, max_size=64), unique=True, max_size=16))
    meta = tuple((k, draw(st.text(max_size=256))) for k in sorted(keys))
    return PeerRecord(name, draw(st.text(max_size=255)), draw(st.integers(0, MAX_UID)),
                      draw(st.integers(1, MAX_VERSION)), conns, meta)


@given(st.lists(any_record(), max_size=5))
def test_encode_decode_round_trip(recs: list[PeerRecord]) -> None:
    data = encode_records(recs)
    assert decode_records(data) == recs
    assert encode_records(decode_records(data)) == data


@given(any_record(), any_record())
def test_rank_is_a_total_order(a: PeerRecord, b: PeerRecord) -> None:
    b = replace(b, name=a.name,
                connections=tuple(c for c in b.connections if c.remote != a.name))
    assert outranks(a, b) == (rank(a) > rank(b))
    assert (rank(a) == rank(b)) == (a == b)
