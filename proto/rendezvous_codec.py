r"""The punch planner's messages (proto/rendezvous.py) and their codec: mesh unicast payloads on
gossip channel ``CHANNEL``, msgpack arrays (proto/framing.py)::

    [1, addr]                                            SEEN    your datagrams come from addr
    [2, session, secret(32), candidates, kind, attempt]  OFFER   let's punch (secret: keys)
    [3, session, candidates, kind]                       ANSWER  yes: here are mine
    [4, session, reason]                                 CANCEL  no, or no more (busy, gave up)

    addr        [ip string (canonical, see valid_address), port 1..65535]
    candidates  [[kind (0 host, 1 reflexive), ip, port], ...], at most MAX_CANDIDATES
    kind        the sender's NAT mapping: 0 unknown, 1 easy, 2 hard
    session     1..2^64-1; attempt: 0..MAX_ATTEMPT; reason: at most MAX_REASON characters

``decode_message`` checks every field's type and range (payloads over MAX_PAYLOAD refused
before decoding) and raises only RemoteProtocolError.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .errors import RemoteProtocolError
from .framing import pack, unpack
from .punch import Address, Candidate, CandidateKind
from .punchwire import SECRET_LEN

CHANNEL = "punch"
MAX_CANDIDATES = 16
MAX_PAYLOAD = 2048
MAX_REASON = 128
KINDS = ("unknown", "easy", "hard")
MAX_ATTEMPT = 255


@dataclass(frozen=True, slots=True)
class Seen:
    addr: Address


@dataclass(frozen=True, slots=True)
class Offer:
    session: int
    secret: bytes
    candidates: tuple[Candidate, ...]
    kind: str  # the offerer's mapping: "unknown" / "easy" / "hard"
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Answer:
    session: int
    candidates: tuple[Candidate, ...]
    kind: str


@dataclass(frozen=True, slots=True)
class Cancel:
    session: int
    reason: str


Message = Seen | Offer | Answer | Cancel


def valid_address(ip: str, port: int) -> Address | None:
    """The address in canonical form if it is one worth probing, else None."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if (str(parsed) != ip or not 1 <= port <= 65535 or parsed.is_unspecified
            or parsed.is_multicast or parsed.is_loopback or parsed.is_link_local
            or ip == "255.255.255.255"):
        return None
    return ip, port


def _cands(cands: tuple[Candidate, ...]) -> list[list[Any]]:
    return [[int(c.kind), c.addr[0], c.addr[1]] for c in cands]


def encode_message(msg: Message) -> bytes:
    if isinstance(msg, Seen):
        return pack([1, [msg.addr[0], msg.addr[1]]])
    if isinstance(msg, Offer):
        return pack([2, msg.session, msg.secret, _cands(msg.candidates), KINDS.index(msg.kind),
                     min(msg.attempt, MAX_ATTEMPT)])
    if isinstance(msg, Answer):
        return pack([3, msg.session, _cands(msg.candidates), KINDS.index(msg.kind)])
    return pack([4, msg.session, msg.reason[:MAX_REASON]])


def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed punch message: {what}")


def _addr(value: Any) -> Address:
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)
            or type(value[1]) is not int):
        raise _bad("bad address")
    addr = valid_address(value[0], value[1])
    if addr is None:
        raise _bad("address not usable")
    return addr


def _session(value: Any) -> int:
    if type(value) is not int or not 0 < value < 1 << 64:
        raise _bad("bad session")
    return value


def _kind(value: Any) -> str:
    if type(value) is not int or not 0 <= value < len(KINDS):
        raise _bad("bad mapping kind")
    return KINDS[value]


def _candidates(value: Any) -> tuple[Candidate, ...]:
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise _bad("bad candidate list")
    out: list[Candidate] = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int
                or item[0] not in CandidateKind._value2member_map_):
            raise _bad("bad candidate")
        out.append(Candidate(CandidateKind(item[0]), _addr(item[1:])))
    return tuple(out)


def decode_message(payload: bytes) -> Message:
    """Decode an untrusted payload; raises only RemoteProtocolError."""
    if len(payload) > MAX_PAYLOAD:
        raise _bad("too long")
    obj = unpack(payload)
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise _bad("not a typed array")
    tag, n = obj[0], len(obj)
    if tag == 1 and n == 2:
        return Seen(_addr(obj[1]))
    if tag == 2 and n == 6:
        if not isinstance(obj[2], bytes) or len(obj[2]) != SECRET_LEN:
            raise _bad("bad secret")
        if type(obj[5]) is not int or not 0 <= obj[5] <= MAX_ATTEMPT:
            raise _bad("bad attempt")
        return Offer(_session(obj[1]), obj[2], _candidates(obj[3]), _kind(obj[4]), obj[5])
    if tag == 3 and n == 4:
        return Answer(_session(obj[1]), _candidates(obj[2]), _kind(obj[3]))
    if tag == 4 and n == 3 and isinstance(obj[2], str):
        return Cancel(_session(obj[1]), obj[2][:MAX_REASON])
    raise _bad(f"unknown type {tag} or wrong arity")
