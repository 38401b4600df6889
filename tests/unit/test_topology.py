"""Topology CRDT: records, merge rules, ourselves-override, gc, digest and the codec."""

from __future__ import annotations

from dataclasses import replace

import pytest

from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.framing import pack
from weftnet.proto.peername import MAX_NAME
from weftnet.proto.topology import (
    MAX_CONNECTIONS,
    MAX_RECORDS,
    MAX_VERSION,
    ConnectionInfo,
    PeerRecord,
    Topology,
    decode_records,
    digest_of_records,
    encode_record,
    encode_records,
    outranks,
    rank,
)

ME = 1


def conn(remote: int, established: bool = True, outbound: bool = True) -> ConnectionInfo:
    return ConnectionInfo(remote, f"10.0.0.{remote % 250}:6783", outbound, established)


def rec(name: int, version: int = 1, links: tuple[int, ...] = (), uid: int = 7,
        nickname: str = "") -> PeerRecord:
    return PeerRecord(name, nickname or f"n{name}", uid, version,
                      tuple(conn(r) for r in sorted(links)))


def topo(links: tuple[int, ...] = ()) -> Topology:
    return Topology(rec(ME, links=links, uid=99))


# --- records ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, reason", [
    ({"name": 0}, "bad peer name"),
    ({"name": MAX_NAME + 1}, "bad peer name"),
    ({"nickname": "x" * 256}, "bad nickname"),
    ({"uid": -1}, "bad uid"),
    ({"uid": 1 << 64}, "bad uid"),
    ({"version": 0}, "bad version"),
    ({"version": MAX_VERSION + 1}, "bad version"),
    ({"connections": (conn(3), conn(2))}, "not sorted"),
    ({"connections": (conn(3), conn(3, False))}, "not sorted"),
    ({"connections": (conn(5),)}, "connection to itself"),
    ({"meta": (("b", "1"), ("a", "2"))}, "meta keys not sorted"),
    ({"meta": (("", "1"),)}, "bad meta key"),
    ({"meta": (("k", "v" * 257),)}, "bad meta value"),
    ({"meta": tuple((f"k{i:02}", "") for i in range(17))}, "bad meta"),
])
def test_record_rejects_invalid_fields(kwargs: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {"name": 5, "nickname": "n", "uid": 1, "version": 1,
                                 "connections": ()}
    fields.update(kwargs)
    with pytest.raises(LocalProtocolError, match=reason):
        PeerRecord(**fields)  # type: ignore[arg-type]


def test_connection_info_rejects_invalid_fields() -> None:
    with pytest.raises(LocalProtocolError, match="bad address"):
        ConnectionInfo(2, "x" * 65, True, True)
    with pytest.raises(LocalProtocolError, match="bad remote"):
        ConnectionInfo(0, "", True, True)
    with pytest.raises(LocalProtocolError, match="flags"):
        ConnectionInfo(2, "", 1, True)  # type: ignore[arg-type]


def test_rank_orders_by_version_then_uid_then_bytes() -> None:
    a = rec(2, version=1, uid=100)
    assert outranks(rec(2, version=2, uid=0), a)
    assert outranks(rec(2, version=1, uid=101), a)
    b = rec(2, version=1, uid=100, nickname="zzz")
    assert outranks(b, a) == (encode_record(b) > encode_record(a))
    assert outranks(a, b) != outranks(b, a)
    assert not outranks(a, a)
    assert rank(b) > rank(a) if outranks(b, a) else rank(a) > rank(b)


# --- merge --------------------------------------------------------------------------------


def test_merge_keeps_highest_rank_and_returns_only_news() -> None:
    t = topo()
    assert t.merge([rec(2, 2), rec(3, 1)]) == [rec(2, 2), rec(3, 1)]
    gen = t.generation
    assert t.merge([rec(2, 1), rec(3, 1)]) == []          # stale and duplicate
    assert t.generation == gen
    assert t.merge([rec(3, 5), rec(2, 3), rec(3, 4)]) == [rec(2, 3), rec(3, 5)]
    assert t.get(3) == rec(3, 5)
    assert t.generation == gen + 1
    assert set(t.peers) == {ME, 2, 3}


def test_merge_delta_is_sorted_by_name() -> None:
    t = topo()
    delta = t.merge([rec(9), rec(4), rec(6)])
    assert [r.name for r in delta] == [4, 6, 9]


def test_peers_is_a_read_only_view() -> None:
    t = topo()
    with pytest.raises(TypeError):
        t.peers[5] = rec(5)  # type: ignore[index]
    t.merge([rec(5)])
    assert 5 in t.peers


def test_update_ourself_bumps_version_only_on_change() -> None:
    t = topo()
    assert t.update_ourself(connections=[]) is None
    new = t.update_ourself(connections=[conn(3), conn(2)])
    assert new is not None and new.version == 2
    assert [c.remote for c in new.connections] == [2, 3]
    assert t.ourself == new and t.get(ME) == new
    assert t.update_ourself(connections=[conn(2), conn(3)]) is None
    renamed = t.update_ourself(nickname="box", meta={"underlay": "192.168.1.5"})
    assert renamed is not None and renamed.version == 3
    assert renamed.meta == (("underlay", "192.168.1.5"),)
    assert renamed.nickname == "box"
    with pytest.raises(LocalProtocolError):
        t.update_ourself(connections=[conn(2), conn(2, False)])


def test_stale_record_about_ourselves_is_overridden() -> None:
    t = topo(links=(2,))
    ours = t.ourself
    # our previous incarnation (another uid) got to version 10 before a restart
    stale = PeerRecord(ME, "old", 5, 10, (conn(4),))
    delta = t.merge([stale, rec(2)])
    bumped = t.ourself
    assert bumped.version == 11
    assert (bumped.nickname, bumped.uid, bumped.connections) == (
        ours.nickname, ours.uid, ours.connections)
    assert delta == [bumped, rec(2)]
    assert t.merge([stale]) == []                         # now outranked
    assert t.merge([replace(ours, version=1)]) == []      # our own old record


def test_equal_version_conflict_about_ourselves_is_overridden_only_if_it_outranks() -> None:
    t = topo()
    ours = t.ourself
    lower, higher = sorted([replace(ours, nickname="a"), replace(ours, nickname="zz")],
                           key=rank)
    for other in (lower, higher):
        if outranks(other, ours):
            assert t.merge([other]) == [t.ourself]
            assert t.ourself.version == ours.version + 1
        else:
            assert t.merge([other]) == []
    assert t.merge([ours]) == []


def test_record_at_max_version_about_ourselves_cannot_be_overridden() -> None:
    t = topo()
    assert t.merge([PeerRecord(ME, "x", 0, MAX_VERSION, ())]) == []
    assert t.ourself.nickname == f"n{ME}"


# --- gc -----------------------------------------------------------------------------------


def test_gc_removes_peers_we_do_not_reach_over_listed_connections() -> None:
    t = topo(links=(2,))
    # 2 lists 3 (unestablished links count too); 4 only lists 3, so nobody reaches 4;
    # 5 and 6 only know each other
    t.merge([PeerRecord(2, "n2", 7, 1, (conn(3, established=False),)), rec(3),
             rec(4, links=(3,)), rec(5, links=(6,)), rec(6, links=(5,))])
    gen = t.generation
    assert t.gc() == [4, 5, 6]
    assert sorted(t.peers) == [ME, 2, 3]
    assert t.generation == gen + 1
    assert t.gc() == []
    assert t.generation == gen + 1


def test_gc_removes_a_crashed_peer_whose_last_record_still_lists_us() -> None:
    # 1 - 2 - 3 and 1 - 3; then 2 crashes: 1 and 3 drop it, its last record stays as it was
    t = topo(links=(2, 3))
    t.merge([rec(2, links=(ME, 3)), rec(3, links=(ME, 2))])
    assert t.gc() == []
    t.update_ourself(connections=[conn(3)])
    t.merge([rec(3, version=2, links=(ME,))])
    assert t.gc() == [2]
    assert sorted(t.peers) == [ME, 3]


def test_gc_after_a_link_goes_away() -> None:
    t = topo(links=(2,))
    t.merge([rec(2, links=(3,)), rec(3, links=(4,)), rec(4)])
    assert t.gc() == []
    t.merge([rec(2, version=2)])                          # 2 dropped its link to 3
    assert t.gc() == [3, 4]
    t.update_ourself(connections=[])
    assert t.gc() == [2]
    assert list(t.peers) == [ME]


def test_gc_reaches_a_late_joiner_through_a_later_record() -> None:
    t = topo(links=(2,))
    t.merge([rec(5, links=(6,)), rec(6, links=(7,)), rec(7)])   # not reached yet
    t.merge([rec(2, links=(5,))])                                # now they are
    assert t.gc() == []
    assert sorted(t.peers) == [ME, 2, 5, 6, 7]


def test_gc_never_removes_ourselves() -> None:
    t = topo()
    t.merge([rec(2), rec(3)])
    assert t.gc() == [2, 3]
    assert list(t.peers) == [ME]


def test_gc_then_the_removed_record_may_come_back() -> None:
    t = topo()
    t.merge([rec(2, version=4)])
    assert t.gc() == [2]
    assert t.merge([rec(2, version=1)]) == [rec(2, version=1)]


# --- digest -------------------------------------------------------------------------------


def test_digest_tracks_name_version_uid_and_order_does_not_matter() -> None:
    a, b = topo(), topo()
    assert a.digest() == b.digest() and len(a.digest()) == 16
    a.merge([rec(2), rec(3, 2)])
    assert a.digest() != b.digest()
    b.merge([rec(3, 2)])
    b.merge([rec(2)])
    assert a.digest() == b.digest()
    assert a.digest() == digest_of_records(a.peers.values())
    assert digest_of_records([rec(3, 1), rec(3, 2), b.ourself, rec(2)]) == a.digest()
    a.gc()
    assert a.digest() == digest_of_records(a.peers.values())


# --- codec --------------------------------------------------------------------------------


def test_round_trip() -> None:
    records = [
        PeerRecord(MAX_NAME, "x" * 255, (1 << 64) - 1, MAX_VERSION,
                   (ConnectionInfo(1, "a" * 64, False, False),
                    ConnectionInfo(2, "[::1]:6783", True, False),
                    ConnectionInfo(3, "", False, True)),
                   (("k" * 64, "v" * 256), ("z", ""))),
        rec(2, links=(3, 4)),
        rec(2, links=(3, 4)),
    ]
    assert decode_records(encode_records(records)) == records
    assert decode_records(encode_records([])) == []


def _wire(name: object = 2, nickname: object = "n", uid: object = 0, version: object = 1,
          conns: object = None, meta: object = None) -> list[object]:
    return [name, nickname, uid, version, [] if conns is None else conns,
            [] if meta is None else meta]


@pytest.mark.parametrize("doc, reason", [
    ({"a": 1}, "not an array"),
    ([[2, "n", 0, 1, []]], "6-array"),
    ([_wire(name=0)], "bad peer name"),
    ([_wire(name=1 << 48)], "bad peer name"),
    ([_wire(name=True)], "bad peer name"),
    ([_wire(name=-3)], "bad peer name"),
    ([_wire(nickname=b"n")], "bad nickname"),
    ([_wire(nickname="é" * 256)], "bad nickname"),
    ([_wire(uid=-1)], "bad uid"),
    ([_wire(uid=1.0)], "bad uid"),
    ([_wire(version=0)], "bad version"),
    ([_wire(version=1 << 63)], "bad version"),
    ([_wire(conns="x")], "bad connection list"),
    ([_wire(conns=[[3, "", 2]] * (MAX_CONNECTIONS + 1))], "bad connection list"),
    ([_wire(conns=[[3, ""]])], "3-array"),
    ([_wire(conns=[[3, "", 4]])], "flags"),
    ([_wire(conns=[[3, "", -1]])], "flags"),
    ([_wire(conns=[[3, "", False]])], "flags"),
    ([_wire(conns=[[3, 7, 1]])], "bad address"),
    ([_wire(conns=[[3, "a" * 65, 1]])], "bad address"),
    ([_wire(conns=[[0, "", 1]])], "bad remote"),
    ([_wire(conns=[[4, "", 1], [3, "", 1]])], "not sorted"),
    ([_wire(conns=[[3, "", 1], [3, "", 3]])], "repeated"),
    ([_wire(conns=[[2, "", 3]])], "itself"),
    ([_wire(meta=[["k"]])], "bad meta pair"),
    ([_wire(meta="k")], "bad meta"),
    ([_wire(meta=[["k", 1]])], "bad meta value"),
    ([_wire(meta=[[1, "v"]])], "bad meta key"),
    ([_wire(meta=[["b", ""], ["a", ""]])], "meta keys not sorted"),
    ([_wire(meta=[["a", ""]] * 17)], "bad meta"),
])
def test_decode_rejects_malformed_records(doc: object, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=f"malformed topology: .*{reason}"):
        decode_records(pack(doc))


def test_decode_rejects_garbage_and_too_many_records() -> None:
    with pytest.raises(RemoteProtocolError, match="malformed topology: not msgpack"):
        decode_records(b"\xc1")
    with pytest.raises(RemoteProtocolError, match="malformed topology: not msgpack"):
        decode_records(pack([]) + b"\x00")
    with pytest.raises(RemoteProtocolError, match="more than"):
        decode_records(pack([0] * (MAX_RECORDS + 1)))


def test_encode_refuses_too_many_records() -> None:
    with pytest.raises(LocalProtocolError):
        encode_records([rec(2)] * (MAX_RECORDS + 1))
