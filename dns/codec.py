"""DNS messages on the wire: reading queries, writing replies, TCP framing.

Theory of operation. weftDNS reads only queries and writes only replies, so it needs a
small part of RFC 1035. Almost every query has one shape (one question, an optional EDNS0
OPT record, nothing else); ``parse_query`` reads that shape directly, and hands anything
else (compression pointers, other records, trailing bytes) to ``dnslib``, the general
decoder, so rare forms cost more but are read the same way (the property tests hold
the two readers to the same results). Replies are assembled from pre-encoded records
that point back at the question (offset 12), which keeps answering cheap.

Query (RFC 1035 4.1, RFC 6891 6.1)::

    +----+-------+---------+---------+---------+---------+
    | id | flags | qdcount | ancount | nscount | arcount |   12 bytes, big-endian u16s
    +----+-------+---------+---------+---------+---------+
    | qname (labels, 0-terminated) | qtype u16 | qclass u16 |   the question
    +-----------------------------------------------------+
    | OPT: 0x00 | type 41 | udp size | ext-rcode u8 | version u8 | flags u16 | rdlen | rdata |
    +-----------------------------------------------------+

    flags: QR(15) opcode(11-14) AA(10) TC(9) RD(8) RA(7) Z AD CD(4) rcode(0-3)

Errors: bytes that cannot be answered at all (shorter than a header, or a response
rather than a query) raise ``RemoteProtocolError`` and are dropped; a query with a
readable header but a bad body raises ``Refused`` carrying the FORMERR/NOTIMP reply.

TCP (RFC 1035 4.2.2, RFC 7766): each message is preceded by its length as a u16.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dnslib

from weftnet.proto.errors import RemoteProtocolError

HEADER = struct.Struct(">HHHHHH")
QTAIL = struct.Struct(">HH")
RR_HEAD = struct.Struct(">HHIH")
OPT_HEAD = struct.Struct(">HHBBHH")
TCP_LENGTH = struct.Struct(">H")

QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
OPCODE_MASK = 0x7800

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16                       # extended rcode: upper 8 bits in OPT, lower 4 in header

TYPE_A, TYPE_PTR, TYPE_AAAA, TYPE_OPT, TYPE_ANY = 1, 12, 28, 41, 255
CLASS_IN, CLASS_ANY = 1, 255

MIN_UDP = 512                      # the payload every DNS client accepts over UDP
MAX_MESSAGE = 65535                # a DNS message over TCP (u16 length prefix)
MAX_NAME_WIRE = 255
POINTER_TO_QUESTION = b"\xc0\x0c"  # the question's name always starts at offset 12


@dataclass(frozen=True, slots=True)
class Edns:
    udp_size: int
    version: int
    dnssec_ok: bool


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    labels: tuple[bytes, ...]      # the question name, ASCII-lowercased
    qtype: int
    qclass: int
    question: bytes                # the question section to echo (original case)
    edns: Edns | None


class Refused(RemoteProtocolError):
    """A query we answer with an error code and no records; ``reply`` is that answer."""

    def __init__(self, reason: str, reply: bytes) -> None:
        super().__init__(reason)
        self.reply = reply


def header_reply(query_id: int, query_flags: int, rcode: int) -> bytes:
    """A reply with no sections, for queries whose question we could not read."""
    flags = QR | RA | (query_flags & (OPCODE_MASK | RD | CD)) | rcode
    return HEADER.pack(query_id, flags, 0, 0, 0, 0)


def _refuse(qid: int, flags: int, rcode: int, reason: str) -> Refused:
    return Refused(reason, header_reply(qid, flags, rcode))


def parse_query(data: bytes) -> Query:
    """Read a query; raises RemoteProtocolError (drop it) or Refused (send ``reply``)."""
    if len(data) < HEADER.size:
        raise RemoteProtocolError("shorter than a DNS header")
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & QR:
        raise RemoteProtocolError("a DNS response, not a query")
    if flags & OPCODE_MASK:
        raise _refuse(qid, flags, NOTIMP, "opcode is not QUERY")
    if qd != 1:
        raise _refuse(qid, flags, FORMERR, "not exactly one question")
    end = len(data)
    pos = HEADER.size
    labels = []
    while True:
        if pos >= end:
            raise _refuse(qid, flags, FORMERR, "question name runs past the end")
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n > 63 or pos + 1 + n > end:
            return _parse_general(data, qid, flags)
        labels.append(data[pos + 1:pos + 1 + n].lower())
        pos += 1 + n
    if pos - HEADER.size > MAX_NAME_WIRE or pos + QTAIL.size > end:
        return _parse_general(data, qid, flags)
    qtype, qclass = QTAIL.unpack_from(data, pos)
    pos += QTAIL.size
    question = data[HEADER.size:pos]
    if an or ns or ar > 1:
        return _parse_general(data, qid, flags)
    if ar == 0:
        if pos != end:
            return _parse_general(data, qid, flags)
        return Query(qid, flags, tuple(labels), qtype, qclass, question, None)
    if pos + 1 + OPT_HEAD.size > end or data[pos] != 0:
        return _parse_general(data, qid, flags)
    rtype, size, _ext, version, oflags, rdlen = OPT_HEAD.unpack_from(data, pos + 1)
    if rtype != TYPE_OPT or pos + 1 + OPT_HEAD.size + rdlen != end:
        return _parse_general(data, qid, flags)
    return Query(qid, flags, tuple(labels), qtype, qclass, question,
                 Edns(size, version, bool(oflags & 0x8000)))


def _parse_general(data: bytes, qid: int, flags: int) -> Query:
    """Any other shape, read by dnslib (the slow, general reader)."""
    try:
        record = dnslib.DNSRecord.parse(data)
        questions = record.questions
        opts = [rr for rr in record.ar if rr.rtype == TYPE_OPT]
        if len(questions) != 1 or len(opts) > 1:
            raise ValueError("not one question, or several OPT records")
        q = questions[0]
        labels = tuple(bytes(label) for label in q.qname.label)
        qtype, qclass = int(q.qtype), int(q.qclass)
        edns = None
        if opts:
            ttl = int(opts[0].ttl)
            edns = Edns(int(opts[0].rclass), (ttl >> 16) & 0xFF, bool(ttl & 0x8000))
    # dnslib's parser raises many types (DNSError, struct/Index/Unicode errors...) on bad input
    except Exception as exc:  # noqa: BLE001
        raise _refuse(qid, flags, FORMERR, f"malformed query ({type(exc).__name__})") from None
    name = encode_name(labels)
    if name is None:
        raise _refuse(qid, flags, FORMERR, "question name too long")
    question = name + QTAIL.pack(qtype, qclass)
    return Query(qid, flags, tuple(label.lower() for label in labels), qtype, qclass, question, edns)


def encode_name(labels: tuple[bytes, ...]) -> bytes | None:
    """Uncompressed wire form of a name (None if a label or the whole is too long)."""
    out = bytearray()
    for label in labels:
        if not 0 < len(label) <= 63:
            return None
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out) if len(out) <= MAX_NAME_WIRE else None


def a_record(packed_address: bytes, ttl: int) -> bytes:
    """An A record for the question's name (4-byte address), or an AAAA record for a
    16-byte one."""
    rtype = TYPE_A if len(packed_address) == 4 else TYPE_AAAA
    return POINTER_TO_QUESTION + RR_HEAD.pack(rtype, CLASS_IN, ttl, len(packed_address)) + packed_address


def ptr_record(target: bytes, ttl: int) -> bytes:
    """A PTR record for the question's name; ``target`` is an encoded name."""
    return POINTER_TO_QUESTION + RR_HEAD.pack(TYPE_PTR, CLASS_IN, ttl, len(target)) + target


def opt_record(udp_size: int, ext_rcode: int = 0) -> bytes:
    return b"\x00" + OPT_HEAD.pack(TYPE_OPT, udp_size, ext_rcode, 0, 0, 0)


def reply(query: Query, rcode: int, answers: list[bytes], *, authoritative: bool, limit: int,
          udp_size: int) -> bytes:
    """Assemble a reply: as many whole ``answers`` as fit in ``limit`` bytes, TC if not all.

    ``rcode`` may be extended (> 15, e.g. BADVERS); that needs EDNS in the query.
    """
    flags = QR | RA | (query.flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
    if authoritative:
        flags |= AA
    opt = b"" if query.edns is None else opt_record(udp_size, rcode >> 4)
    size = HEADER.size + len(query.question) + len(opt)
    taken = 0
    for rr in answers:
        if size + len(rr) > limit:
            flags |= TC
            break
        size += len(rr)
        taken += 1
    head = HEADER.pack(query.id, flags, 1, taken, 0, 1 if opt else 0)
    return b"".join([head, query.question, *answers[:taken], opt])


def error_reply(query: Query, rcode: int, udp_size: int = 1232) -> bytes:
    """An answer-less reply (SERVFAIL when every upstream failed, REFUSED, ...)."""
    return reply(query, rcode, [], authoritative=False, limit=MAX_MESSAGE, udp_size=udp_size)


def matches_query(query: bytes, response: bytes) -> bool:
    """True when ``response`` (untrusted) answers ``query``: same id and question, QR set."""
    if len(response) < HEADER.size or len(query) < HEADER.size or response[:2] != query[:2]:
        return False
    (flags,) = struct.unpack_from(">H", response, 2)
    if not flags & QR:
        return False
    try:
        asked = parse_query(query)
    except RemoteProtocolError:
        return False
    return response[HEADER.size:HEADER.size + len(asked.question)].lower() == asked.question.lower()


class StreamDecoder:
    """DNS over TCP: feed bytes in any chunking, take whole messages out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> bytes | None:
        if len(self._buf) < TCP_LENGTH.size:
            return None
        (length,) = TCP_LENGTH.unpack_from(self._buf)
        if length < HEADER.size:
            raise RemoteProtocolError(f"DNS message of {length} bytes is shorter than a header")
        end = TCP_LENGTH.size + length
        if len(self._buf) < end:
            return None
        message = bytes(self._buf[TCP_LENGTH.size:end])
        del self._buf[:end]
        return message

    @property
    def buffered(self) -> int:
        return len(self._buf)


def frame(message: bytes) -> bytes:
    """A message with its TCP length prefix."""
    return TCP_LENGTH.pack(len(message)) + message

