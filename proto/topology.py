"""The topology: every peer's record of its own connections, merged as a CRDT.

Theory of operation
-------------------
Each router owns one ``PeerRecord`` (its name, nickname, per-start ``uid``, a ``version``
it bumps on every change, its connections and a few metadata pairs) and learns everyone
else's by gossip. Records are totally ordered by ``rank = (version, uid, encoded bytes)``;
for every name we keep the highest-ranked record ever seen, so the state (a map name ->
max-rank record) is a join-semilattice: merging is commutative, associative and
idempotent, and peers that have seen the same records hold the same state whatever the
order. ``merge`` returns exactly the records that changed our state: the delta worth
passing on to other neighbours (mesh's ``GossipData`` contract).

Two rules step outside the plain lattice, both from weaveworks/mesh:

* Our own record is authoritative. A record about ourselves that outranks ours (a stale
  copy from our previous incarnation, or our own old record gossiped back after a
  restart) is not stored; we keep our content and jump our version past it, and the new
  self-record joins the delta so it overrides the stale one everywhere.
* ``gc`` drops peers we can no longer reach from ourselves by following, from each
  reached peer, the connections its own record lists (mesh's ``routes(nil, false)``:
  any listed connection, established or not). Direction matters: a crashed peer's last
  record still lists the survivors, but once they stop listing it nobody reaches it.

Costs (a simulator runs 1000 peers each holding 1000 records): ``merge`` costs
O(records in the update x their degree). The digest is an XOR of per-record hashes kept up
to date on every store, so comparing states is O(1). Reachability for ``gc`` is kept
incrementally while links are only added (a new link out of the reached set floods
onwards, each name entering once); a removed link marks it stale and the next ``gc``
recomputes it in O(N + E). Nothing here iterates a dict or set where order could
leak into a result: outputs are sorted by name.

Wire format (msgpack, compact arrays; ``encode_records`` / ``decode_records``)::

    payload := [ record, ... ]                            at most 100000 records
    record  := [ name, nickname, uid, version, [ conn, ... ], [ meta, ... ] ]
    conn    := [ remote, address, flags ]                 strictly ascending by remote
    meta    := [ key, value ]                             strictly ascending by key

    name, remote   uint   1 .. 2^48-1          address   str <= 64 chars ("ip:port")
    uid            uint   0 .. 2^64-1          flags     uint  bit 0 outbound
    version        uint   1 .. 2^63-1                          bit 1 established
    nickname       str   <= 255 chars          key/value str   1..64 / <= 256 chars
    conns <= 4096 per record, none to the owner itself; meta <= 16 pairs

    +------+----------+-----+---------+------------------------------+---------------+
    | name | nickname | uid | version | [[remote, address, flags]..] | [[key, val]..]|
    +------+----------+-----+---------+------------------------------+---------------+

The encoding is canonical (sorted, fixed arity, no optional fields), so equal records
encode to equal bytes and the bytes can break rank ties.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from .errors import LocalProtocolError, RemoteProtocolError
from .framing import pack, unpack
from .peername import MAX_NAME, PeerName

MAX_UID = (1 << 64) - 1
MAX_VERSION = (1 << 63) - 1
MAX_NICKNAME = 255
MAX_CONNECTIONS = 4096
MAX_ADDRESS = 64
MAX_RECORDS = 100_000
MAX_META_PAIRS = 16
MAX_META_KEY = 64
MAX_META_VALUE = 256
DIGEST_SIZE = 16

FLAG_OUTBOUND = 1
FLAG_ESTABLISHED = 2

_HASH_KEY = struct.Struct(">QQQ")


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One connection as its owner reports it."""

    remote: PeerName
    address: str        # "ip:port" of the remote end, as seen from the owner
    outbound: bool      # the owner dialled it
    established: bool   # the handshake completed and the link carries traffic

    def __post_init__(self) -> None:
        reason = _connection_problem(self.remote, self.address, self.outbound, self.established)
        if reason is not None:
            raise _Invalid(f"invalid connection info: {reason}", reason)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer's own account of itself; the unit of topology gossip."""

    name: PeerName
    nickname: str
    uid: int
    version: int
    connections: tuple[ConnectionInfo, ...]
    meta: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        reason = _record_problem(self.name, self.nickname, self.uid, self.version,
                                 self.connections, self.meta)
        if reason is not None:
            raise _Invalid(f"invalid peer record: {reason}", reason)


# --- validation shared by local constructors (LocalProtocolError) and the decoder -----------


class _Invalid(LocalProtocolError):
    """A constructor refused its fields; the decoder turns ``detail`` into a remote error."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _connection_problem(remote: Any, address: Any, outbound: Any, established: Any) -> str | None:
    if type(remote) is not int or not 1 <= remote <= MAX_NAME:
        return "bad remote name"
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        return "bad address"
    if type(outbound) is not bool or type(established) is not bool:
        return "bad connection flags"
    return None


def _record_problem(name: Any, nickname: Any, uid: Any, version: Any, conns: Any,
                    meta: Any) -> str | None:
    if type(name) is not int or not 1 <= name <= MAX_NAME:
        return "bad peer name"
    if not isinstance(nickname, str) or len(nickname) > MAX_NICKNAME:
        return "bad nickname"
    if type(uid) is not int or not 0 <= uid <= MAX_UID:
        return "bad uid"
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        return "bad version"
    if not isinstance(conns, tuple) or len(conns) > MAX_CONNECTIONS:
        return "bad connection list"
    prev = 0
    for c in conns:
        if not isinstance(c, ConnectionInfo):
            return "bad connection list"
        if c.remote <= prev:
            return "connections not sorted by remote, or remotes repeated"
        if c.remote == name:
            return "connection to itself"
        prev = c.remote
    return _meta_problem(meta)


def _meta_problem(meta: Any) -> str | None:
    if not isinstance(meta, tuple) or len(meta) > MAX_META_PAIRS:
        return "bad meta"
    prev = ""
    for pair in meta:
        if not isinstance(pair, tuple) or len(pair) != 2:
            return "bad meta pair"
        key, value = pair
        if not isinstance(key, str) or not 0 < len(key) <= MAX_META_KEY:
            return "bad meta key"
        if not isinstance(value, str) or len(value) > MAX_META_VALUE:
            return "bad meta value"
        if key <= prev:
            return "meta keys not sorted, or repeated"
        prev = key
    return None


# --- codec ----------------------------------------------------------------------------------


def _to_wire(rec: PeerRecord) -> list[Any]:
    return [
        rec.name, rec.nickname, rec.uid, rec.version,
        [[c.remote, c.address, (FLAG_OUTBOUND if c.outbound else 0)
          | (FLAG_ESTABLISHED if c.established else 0)] for c in rec.connections],
        [[k, v] for k, v in rec.meta],
    ]


def encode_record(rec: PeerRecord) -> bytes:
    """The canonical bytes of one record (also the last component of its rank)."""
    return pack(_to_wire(rec))


def encode_records(records: Sequence[PeerRecord]) -> bytes:
    if len(records) > MAX_RECORDS:
        raise LocalProtocolError(f"{len(records)} records exceed the cap of {MAX_RECORDS}")
    return pack([_to_wire(r) for r in records])


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed topology: {what}")


_FLAGS = [(bool(f & FLAG_OUTBOUND), bool(f & FLAG_ESTABLISHED))
          for f in range((FLAG_OUTBOUND | FLAG_ESTABLISHED) + 1)]


def _decode_connection(obj: Any) -> ConnectionInfo:
    if not isinstance(obj, list) or len(obj) != 3:
        raise _malformed("connection is not a 3-array")
    remote, address, flags = obj
    if type(flags) is not int or not 0 <= flags < len(_FLAGS):
        raise _malformed("bad connection flags")
    outbound, established = _FLAGS[flags]
    return ConnectionInfo(remote, address, outbound, established)


def _decode_record(obj: Any) -> PeerRecord:
    if not isinstance(obj, list) or len(obj) != 6:
        raise _malformed("record is not a 6-array")
    name, nickname, uid, version, conns, meta = obj
    if not isinstance(conns, list) or len(conns) > MAX_CONNECTIONS:
        raise _malformed("bad connection list")
    if not isinstance(meta, list) or len(meta) > MAX_META_PAIRS:
        raise _malformed("bad meta")
    pairs: list[tuple[str, str]] = []
    for pair in meta:
        if not isinstance(pair, list) or len(pair) != 2:
            raise _malformed("bad meta pair")
        pairs.append((pair[0], pair[1]))
    # the constructors validate every field once; their refusal is the remote's fault here
    return PeerRecord(name, nickname, uid, version,
                      tuple([_decode_connection(c) for c in conns]), tuple(pairs))


def decode_records(data: bytes) -> list[PeerRecord]:
    """Decode untrusted bytes; raises only RemoteProtocolError("malformed topology: ...")."""
    try:
        obj = unpack(data)
    except RemoteProtocolError:
        raise _malformed("not msgpack") from None
    if not isinstance(obj, list):
        raise _malformed("not an array of records")
    if len(obj) > MAX_RECORDS:
        raise _malformed(f"more than {MAX_RECORDS} records")
    try:
        return [_decode_record(r) for r in obj]
    except _Invalid as exc:
        raise _malformed(exc.detail) from None


# --- order and digest ----------------------------------------------------------------------


def rank(rec: PeerRecord) -> tuple[int, int, bytes]:
    """The total order of records about one peer: the higher rank wins a merge."""
    return (rec.version, rec.uid, encode_record(rec))


def outranks(a: PeerRecord, b: PeerRecord) -> bool:
    """``rank(a) > rank(b)``, encoding only on a (version, uid) tie."""
    if a.version != b.version:
        return a.version > b.version
    if a.uid != b.uid:
        return a.uid > b.uid
    return a != b and encode_record(a) > encode_record(b)


def _record_hash(rec: PeerRecord) -> int:
    key = _HASH_KEY.pack(rec.name, rec.version, rec.uid)
    return int.from_bytes(hashlib.blake2b(key, digest_size=DIGEST_SIZE).digest(), "big")


def digest_of_records(records: Iterable[PeerRecord]) -> bytes:
    """The digest a Topology holding (the max-rank per name of) these records would have."""
    best: dict[PeerName, PeerRecord] = {}
    for rec in records:
        old = best.get(rec.name)
        if old is None or outranks(rec, old):
            best[rec.name] = rec
    acc = 0
    for name in sorted(best):
        acc ^= _record_hash(best[name])
    return acc.to_bytes(DIGEST_SIZE, "big")


# --- the CRDT -------------------------------------------------------------------------------


class Topology:
    """Our view of every peer's record; see the module docstring."""

    def __init__(self, ourself: PeerRecord) -> None:
        if not isinstance(ourself, PeerRecord):
            raise LocalProtocolError("Topology needs our own PeerRecord")
        self._our_name = ourself.name
        self._peers: dict[PeerName, PeerRecord] = {}
        self._view: Mapping[PeerName, PeerRecord] = MappingProxyType(self._peers)
        self._digest = 0
        self._generation = 0
        # names reached from ourselves over listed connections (valid unless _reach_stale),
        # and the names holding records outside it: what the next gc removes
        self._reached: set[PeerName] = {ourself.name}
        self._unreached: set[PeerName] = set()
        self._reach_stale = False
        self._store(ourself)

    # --- reading ---------------------------------------------------------------------------

    @property
    def our_name(self) -> PeerName:
        return self._our_name

    @property
    def ourself(self) -> PeerRecord:
        return self._peers[self._our_name]

    @property
    def peers(self) -> Mapping[PeerName, PeerRecord]:
        """A read-only live view, ourselves included."""
        return self._view

    @property
    def generation(self) -> int:
        """Bumped on every change of state: the key for caches such as routes."""
        return self._generation

    def get(self, name: PeerName) -> PeerRecord | None:
        return self._peers.get(name)

    def digest(self) -> bytes:
        """16 bytes: equal digests mean (but for hash collisions) equal (name, version, uid)s."""
        return self._digest.to_bytes(DIGEST_SIZE, "big")

    def __len__(self) -> int:
        return len(self._peers)

    # --- changing --------------------------------------------------------------------------

    def update_ourself(self, *, connections: Iterable[ConnectionInfo] | None = None,
                       nickname: str | None = None,
                       meta: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                       ) -> PeerRecord | None:
        """Replace parts of our record; returns the new record (the delta), or None if same."""
        old = self.ourself
        conns = old.connections
        if connections is not None:
            conns = tuple(sorted(connections, key=lambda c: c.remote))
        pairs = old.meta
        if meta is not None:
            items = meta.items() if isinstance(meta, Mapping) else meta
            pairs = tuple(sorted((k, v) for k, v in items))
        nick = old.nickname if nickname is None else nickname
        if conns == old.connections and pairs == old.meta and nick == old.nickname:
            return None
        if old.version >= MAX_VERSION:
            raise LocalProtocolError("our topology version is exhausted")
        new = PeerRecord(old.name, nick, old.uid, old.version + 1, conns, pairs)
        self._store(new)
        self._generation += 1
        return new

    def merge(self, records: Iterable[PeerRecord]) -> list[PeerRecord]:
        """Apply records; return those that changed our state (sorted by name)."""
        changed: dict[PeerName, PeerRecord] = {}
        for rec in records:
            if rec.name == self._our_name:
                bumped = self._override(rec)
                if bumped is not None:
                    changed[rec.name] = bumped
                continue
            old = self._peers.get(rec.name)
            if old is None or outranks(rec, old):
                self._store(rec)
                changed[rec.name] = rec
        if not changed:
            return []
        self._generation += 1
        return [changed[n] for n in sorted(changed)]

    def _override(self, rec: PeerRecord) -> PeerRecord | None:
        ours = self.ourself
        if rec == ours or not outranks(rec, ours):
            return None
        if rec.version >= MAX_VERSION:
            # cannot outrank it: keep ours locally; the network keeps the forged copy
            return None
        new = replace(ours, version=rec.version + 1)
        self._store(new)
        return new

    def gc(self) -> list[PeerName]:
        """Drop peers we no longer reach over listed connections; return them sorted."""
        if self._reach_stale:
            self._reached = {self._our_name}
            self._unreached = set(self._peers)
            self._unreached.discard(self._our_name)
            self._flood(self._our_name)
            self._reach_stale = False
        if not self._unreached:
            return []
        removed = sorted(self._unreached)
        self._unreached.clear()
        for name in removed:
            # no path from us runs through an unreached name: reachability is unchanged
            self._digest ^= _record_hash(self._peers.pop(name))
        self._generation += 1
        return removed

    # --- internals -------------------------------------------------------------------------

    def _store(self, new: PeerRecord) -> None:
        name = new.name
        old = self._peers.get(name)
        self._peers[name] = new
        if old is not None:
            self._digest ^= _record_hash(old)
        self._digest ^= _record_hash(new)
        if old is not None and old.connections == new.connections:
            return
        if self._reach_stale:
            return
        new_remotes = [c.remote for c in new.connections]
        if old is not None:
            old_remotes = {c.remote for c in old.connections}
            if not old_remotes.issubset(new_remotes):
                self._reach_stale = True  # a link went away: something may be cut off
                return
        if name not in self._reached:
            self._unreached.add(name)
            return
        for remote in new_remotes:
            if remote not in self._reached:
                self._reached.add(remote)
                self._flood(remote)

    def _flood(self, start: PeerName) -> None:
        """Mark everything reachable from ``start`` (already marked) as reached."""
        reached, unreached, peers = self._reached, self._unreached, self._peers
        unreached.discard(start)
        stack = [start]
        while stack:
            rec = peers.get(stack.pop())
            if rec is None:
                continue
            for c in rec.connections:
                if c.remote not in reached:
                    reached.add(c.remote)
                    unreached.discard(c.remote)
                    stack.append(c.remote)
