"""Fuzz the topology decoder and merge: any bytes decode or raise RemoteProtocolError;
whatever decodes re-encodes to the same records and merges into a small topology
without breaking its invariants (our record stays ours, the digest stays consistent,
merging the same records again changes nothing)."""

from __future__ import annotations

from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.routes import Routes
from weftnet.proto.topology import (
    ConnectionInfo,
    PeerRecord,
    Topology,
    decode_records,
    digest_of_records,
    encode_records,
    outranks,
)

ME = 1


def _start() -> Topology:
    t = Topology(PeerRecord(ME, "me", 5, 3, (ConnectionInfo(2, "10.0.0.2:6783", True, True),)))
    t.merge([PeerRecord(2, "two", 9, 2, (ConnectionInfo(ME, "10.0.0.1:6783", False, True),
                                         ConnectionInfo(3, "10.0.0.3:6783", True, True))),
             PeerRecord(3, "three", 1, 1, (ConnectionInfo(2, "10.0.0.2:6783", False, True),))])
    return t


SEEDS = [
    encode_records([]),
    encode_records(list(_start().peers.values())),
    encode_records([PeerRecord(ME, "old", 4, 7, ()),
                    PeerRecord(4, "four", 0, 1, (ConnectionInfo(3, "", True, False),),
                               (("underlay", "192.168.0.4"),))]),
]


def test_one_input(data: bytes) -> None:
    try:
        records = decode_records(data)
    except RemoteProtocolError:
        return
    assert decode_records(encode_records(records)) == records
    t = _start()
    ours = t.ourself
    delta = t.merge(records)
    assert [r.name for r in delta] == sorted({r.name for r in delta})
    now = t.ourself
    assert (now.nickname, now.uid, now.connections) == (ours.nickname, ours.uid, ours.connections)
    for rec in records:
        held = t.get(rec.name)
        assert held is not None and not outranks(rec, held) or rec.name == ME
    assert t.merge(records) == []
    assert t.digest() == digest_of_records(t.peers.values())
    routes = Routes.compute(t.peers, ME)
    for name in sorted(routes.reachable):
        routes.broadcast_next_hops(name)
    removed = t.gc()
    assert ME not in removed and t.digest() == digest_of_records(t.peers.values())


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()  # coverage feedback for the already imported decoder and CRDT
    fuzz(test_one_input, SEEDS)
