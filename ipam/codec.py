"""Wire formats of the "ipam" gossip channel: ring gossip and unicast messages.

Gossip payload (msgpack array; DELTA/PERIODIC on channel "ipam")::

    gossip := [ 1, start, end, [n_seeds, tag], [entry, ...], [claim, ...], [value, ...] ]
    entry  := [ token, end, owner, version, free ]      strictly ascending by token
    claim  := [ node, p_round, p_proposer, a_round, a_proposer, value_index ]
                                                        strictly ascending by node
    value  := [ name, ... ]                             strictly ascending names

    +---+-------+-----+----------+--------------------------+-----------------------+--------+
    | 1 | start | end | [n, tag] | [[tok,end,own,ver,free]] | [[node,pr,pp,ar,ap,v]]| [[..]] |
    +---+-------+-----+----------+--------------------------+-----------------------+--------+

    start < end <= LIMIT (2^32 on channel "ipam", 2^128 on "ipam6", the IPv6 ring);
    start <= token < entry end <= end; owner/names 1..2^48-1;
    version 1..2^63-1; free <= entry end - token; ring id (0, 0) = unseeded, which holds
    no entries, else n 1..65535 and tag 1..2^64-1; value_index 0 = no value, i = values[i-1]
    (every accepted claim carries a value; acceptors of one ballot share it, so each
    distinct value crosses the wire once per payload); at most 64 values.

Unicast payload (UNICAST on channel "ipam", from ``src`` to us)::

    [ 1, req, start, end ]             RequestSpace: donate some free space in [start, end)
    [ 2, req, gossip ]                 Donation: ring entries granting space to us (req 0:
                                       unsolicited, e.g. a handoff)
    [ 3, req, reason ]                 Refused: no space to give / claim refused, and why
    [ 4, req, addr, ident ]            RequestClaim: give us ``addr``, for ``ident``
    [ 5, req, addr, ident ]            RequestClaim (reclaim): the same, for an address we
                                       have in use since before our ring gave way to yours
                                       (a refusal is a duplicate: both sides report it)
    [ 6, addr ]                        Released: we no longer use ``addr`` (a duplicate is
                                       settled: re-claim it now, or forget the conflict)

Addresses, range bounds and free counts beyond 64 bits (IPv6 rings only; msgpack integers
stop at 2^64 - 1) travel as a binary string: the value big-endian in 9..17 bytes, no leading
zero byte (so every value has exactly one encoding). An IPv4 ring never has one, so its
bytes are what they always were.

Decoders validate every field's type and range and raise only RemoteProtocolError.
Overlapping entries are *not* refused here: a peer's honest view may hold them after an
admin mistake, and refusing would drop the connection; the allocator reports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.framing import pack, unpack
from weftnet.proto.peername import MAX_NAME, PeerName

from .consensus import MAX_ROUND, NO_BALLOT, Claim
from .ring import MAX_SEEDS, MAX_VERSION, NO_RING, Entry, RingUpdate

FORMAT = 1
MAX_VALUES = 64
MAX_VALUE_NAMES = 65535
MAX_ENTRIES = 500_000
MAX_CLAIMS = 65535
MAX_IDENT = 256
MAX_REASON = 512
MAX_REQ = (1 << 63) - 1
LIMIT_V4 = 1 << 32
LIMIT_V6 = 1 << 128


@dataclass(frozen=True, slots=True)
class IpamGossip:
    """One gossip payload: (part of) a ring and (while unseeded) consensus claims."""

    ring: RingUpdate
    claims: tuple[Claim, ...] = ()

    def encode(self) -> bytes:
        return encode_gossip(self)

    def merge(self, other: Any) -> IpamGossip:
        assert isinstance(other, IpamGossip)
        ring = self.ring.merge(other.ring)
        if not other.claims or not self.claims:
            return IpamGossip(ring, self.claims or other.claims)
        best = {c.node: c for c in self.claims}
        for c in other.claims:
            old = best.get(c.node)
            if old is None or c.rank() > old.rank():
                best[c.node] = c
        return IpamGossip(ring, tuple(best[n] for n in sorted(best)))


@dataclass(frozen=True, slots=True)
class RequestSpace:
    req: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Donation:
    req: int
    ring: RingUpdate


@dataclass(frozen=True, slots=True)
class Refused:
    req: int
    reason: str


@dataclass(frozen=True, slots=True)
class RequestClaim:
    req: int
    addr: int
    ident: str
    reclaim: bool = False


@dataclass(frozen=True, slots=True)
class Released:
    addr: int


Unicast = RequestSpace | Donation | Refused | RequestClaim | Released


# --- encoding -------------------------------------------------------------------------------

def _w(v: int) -> int | bytes:
    """An integer msgpack can carry: as is below 2^64, else big-endian bytes (see above)."""
    return v if v < 1 << 64 else v.to_bytes((v.bit_length() + 7) // 8, "big")


def ring_wire(ring: RingUpdate, claims: tuple[Claim, ...], *, packable: bool = True) -> list[Any]:
    """The gossip array; ``packable=False`` keeps wide integers as integers (for JSON)."""
    w = _w if packable else int
    values: dict[tuple[PeerName, ...], int] = {}
    wire_claims = []
    for c in claims:
        index = 0
        if c.value:
            index = values.setdefault(c.value, len(values) + 1)
        wire_claims.append([c.node, c.promise[0], c.promise[1], c.accepted[0], c.accepted[1], index])
    return [FORMAT, w(ring.start), w(ring.end), list(ring.ring_id),
            [[w(e.token), w(e.end), e.owner, e.version, w(e.free)] for e in ring.entries],
            wire_claims, [list(v) for v in values]]


def encode_gossip(g: IpamGossip) -> bytes:
    return pack(ring_wire(g.ring, g.claims))


def encode_unicast(msg: Unicast) -> bytes:
    if isinstance(msg, RequestSpace):
        return pack([1, msg.req, _w(msg.start), _w(msg.end)])
    if isinstance(msg, Donation):
        return pack([2, msg.req, ring_wire(msg.ring, ())])
    if isinstance(msg, Refused):
        return pack([3, msg.req, msg.reason[:MAX_REASON]])
    if isinstance(msg, Released):
        return pack([6, _w(msg.addr)])
    return pack([5 if msg.reclaim else 4, msg.req, _w(msg.addr), msg.ident])


# --- decoding -------------------------------------------------------------------------------

def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed ipam message: {what}")


def _uint(v: Any, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(what)
    return v


def _wide(v: Any, lo: int, hi: int, what: str) -> int:
    """An address-sized integer: an int, or (beyond 64 bits) its canonical bytes."""
    if type(v) is bytes:
        if not 9 <= len(v) <= 17 or v[0] == 0:
            raise _bad(what)
        v = int.from_bytes(v, "big")
    return _uint(v, lo, hi, what)


def _names(v: Any, limit: int, what: str) -> tuple[PeerName, ...]:
    if not isinstance(v, list) or len(v) > limit:
        raise _bad(what)
    if not all(type(n) is int for n in v):
        raise _bad(what)
    if v and not (1 <= v[0] and v[-1] <= MAX_NAME and all(a < b for a, b in zip(v, v[1:], strict=False))):
        raise _bad(f"{what} out of range or not strictly ascending")
    return tuple(v)


def decode_ring_obj(obj: Any, limit: int = LIMIT_V4) -> tuple[RingUpdate, tuple[Claim, ...]]:
    """Validate an already unpacked gossip array (also used for persisted state); ring
    bounds at most ``limit`` (``LIMIT_V4`` or ``LIMIT_V6``)."""
    if not isinstance(obj, list) or len(obj) != 7:
        raise _bad("gossip is not a 7-array")
    fmt, start, end, rid, entries, claims, values = obj
    if fmt != FORMAT or type(fmt) is not int:
        raise _bad("unknown gossip format")
    start = _wide(start, 0, limit - 1, "range start")
    end = _wide(end, start + 1, limit, "range end")
    if not isinstance(rid, list) or len(rid) != 2:
        raise _bad("ring id")
    ring_id = (_uint(rid[0], 0, MAX_SEEDS, "ring id"), _uint(rid[1], 0, (1 << 64) - 1, "ring id"))
    if (ring_id[0] == 0) != (ring_id[1] == 0):
        raise _bad("half-empty ring id")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise _bad("entry list")
    if entries and ring_id == NO_RING:
        raise _bad("entries of an unseeded ring")
    if not isinstance(values, list) or len(values) > MAX_VALUES:
        raise _bad("value list")
    value_table = [_names(v, MAX_VALUE_NAMES, "claim value") for v in values]
    if any(not v for v in value_table):
        raise _bad("empty claim value")
    out: list[Entry] = []
    prev = -1
    for item in entries:  # hot path: checks inlined
        if type(item) is not list or len(item) != 5:
            raise _bad("entry is not a 5-array")
        token, e_end, owner, version, free = item
        if limit > LIMIT_V4 and bytes in (type(token), type(e_end), type(free)):
            token = _wide(token, 0, limit, "entry token")
            e_end = _wide(e_end, 0, limit, "entry end")
            free = _wide(free, 0, limit, "entry free count")
        if not (type(token) is int and type(e_end) is int and type(owner) is int
                and type(version) is int and type(free) is int):
            raise _bad("entry field is not an integer")
        if not (start <= token < e_end <= end and token > prev):
            raise _bad("entry range out of the ring, or entries not strictly ascending")
        if not (1 <= owner <= MAX_NAME and 1 <= version <= MAX_VERSION and 0 <= free <= e_end - token):
            raise _bad("entry owner, version or free count out of range")
        prev = token
        out.append(Entry(token, e_end, owner, version, free))
    if not isinstance(claims, list) or len(claims) > MAX_CLAIMS:
        raise _bad("claim list")
    cl: list[Claim] = []
    prev = 0
    n_values = len(value_table)
    for item in claims:
        if type(item) is not list or len(item) != 6:
            raise _bad("claim is not a 6-array")
        node, pr, pp, ar, ap, index = item
        if not (type(node) is int and type(pr) is int and type(pp) is int and type(ar) is int
                and type(ap) is int and type(index) is int):
            raise _bad("claim field is not an integer")
        if not (prev < node <= MAX_NAME and 0 <= pr <= MAX_ROUND and 0 <= ar <= MAX_ROUND
                and 0 <= pp <= MAX_NAME and 0 <= ap <= MAX_NAME and 0 <= index <= n_values):
            raise _bad("claim field out of range, or claims not strictly ascending")
        if (pr == 0) != (pp == 0) or (ar == 0) != (ap == 0):
            raise _bad("half-empty ballot")
        promise, accepted = (pr, pp), (ar, ap)
        if accepted > promise:
            raise _bad("claim accepted above its promise")
        value = value_table[index - 1] if index else ()
        if (accepted == NO_BALLOT) != (not value):
            raise _bad("claim value without acceptance, or acceptance without value")
        prev = node
        cl.append(Claim(node, promise, accepted, value))
    return RingUpdate(start, end, ring_id, tuple(out)), tuple(cl)


def decode_gossip(data: bytes, limit: int = LIMIT_V4) -> IpamGossip:
    ring, claims = decode_ring_obj(unpack(data), limit)
    return IpamGossip(ring, claims)


def decode_unicast(data: bytes, limit: int = LIMIT_V4) -> Unicast:
    obj = unpack(data)
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise _bad("not a typed array")
    tag = obj[0]
    if tag == 1 and len(obj) == 4:
        req = _uint(obj[1], 1, MAX_REQ, "request id")
        start = _wide(obj[2], 0, limit - 1, "space start")
        end = _wide(obj[3], start + 1, limit, "space end")
        return RequestSpace(req, start, end)
    if tag == 2 and len(obj) == 3:
        req = _uint(obj[1], 0, MAX_REQ, "request id")
        ring, claims = decode_ring_obj(obj[2], limit)
        if claims or ring.ring_id == NO_RING:
            raise _bad("donation with claims or without a seeded ring")
        return Donation(req, ring)
    if tag == 3 and len(obj) == 3:
        req = _uint(obj[1], 1, MAX_REQ, "request id")
        if not isinstance(obj[2], str) or len(obj[2]) > MAX_REASON:
            raise _bad("reason")
        return Refused(req, obj[2])
    if tag in (4, 5) and len(obj) == 4:
        req = _uint(obj[1], 1, MAX_REQ, "request id")
        addr = _wide(obj[2], 0, limit - 1, "claimed address")
        if not isinstance(obj[3], str) or not 0 < len(obj[3]) <= MAX_IDENT:
            raise _bad("claim identifier")
        return RequestClaim(req, addr, obj[3], tag == 5)
    if tag == 6 and len(obj) == 2:
        return Released(_wide(obj[1], 0, limit - 1, "released address"))
    raise _bad(f"unknown type {tag} or wrong arity")
