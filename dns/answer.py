"""Answering queries from the record store (pure: bytes in, bytes out).

Theory of operation. ``answer`` decides, for one query, whether it is ours and what the
reply is; the server only moves bytes. The decision table (names compared without
regard to ASCII case, answers echo the question as asked)::

    question name                      condition                    reply
    ─────────────                      ─────────                    ─────
    NAME under DOMAIN (or DOMAIN)      NAME has live addresses      A records: every IPv4
                                       of the family, qtype A,      address (AAAA: IPv6;
                                       AAAA or ANY                  ANY: both), shuffled by
                                                                    ``rng``
                                       NAME exists (has records,    NOERROR, no records
                                       is DOMAIN, or has names
                                       under it), other qtype
                                       otherwise                    NXDOMAIN
    a single label L                   L.DOMAIN exists              as for L.DOMAIN
                                       otherwise                    not ours (forward)
    d.c.b.a.in-addr.arpa, or the 32    the address has live names,  PTR records, one per name
    nibbles of n...ip6.arpa            qtype PTR or ANY
                                       ... other qtype              NOERROR, no records
                                       no live names                not ours (forward)
    anything else, or a class          -                            not ours (forward)
    other than IN/ANY

Replies to our names are authoritative (AA). Over UDP a reply holds at most 512 bytes,
or the client's EDNS0 payload size, capped at ``max_udp``; whole records that do not fit
are left out and TC is set, so the client asks again over TCP, where the reply is
complete (up to a DNS message's 65535 bytes). A query carrying EDNS0 gets an OPT record
back; an EDNS version other than 0 gets BADVERS.

Malformed queries: a readable header with a bad body gets FORMERR (or NOTIMP for other
opcodes); bytes that are not a query at all raise ``RemoteProtocolError``, and the
server drops them. Nothing else escapes.
"""

from __future__ import annotations

import functools
import random

from .codec import (
    BADVERS,
    CLASS_ANY,
    CLASS_IN,
    MAX_MESSAGE,
    MIN_UDP,
    NOERROR,
    NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_PTR,
    Query,
    Refused,
    a_record,
    encode_name,
    parse_query,
    ptr_record,
    reply,
)
from .names import (
    DEFAULT_DOMAIN,
    address_of_reverse,
    labels_of,
    name_of_labels,
    normalize_domain,
    packed_address,
)
from .records import RecordStore

DEFAULT_MAX_UDP = 4096


@functools.lru_cache(maxsize=16)
def _domain_labels(domain: str) -> tuple[bytes, ...]:
    return labels_of(normalize_domain(domain))


def answer(query_bytes: bytes, *, store: RecordStore, domain: str = DEFAULT_DOMAIN, ttl: int,
           rng: random.Random, max_udp: int | None) -> bytes | None:
    """The reply to a query, or None when it is not ours (forward it upstream).

    ``max_udp`` is our own UDP payload cap; None means the query came over TCP.
    Raises only RemoteProtocolError, for bytes that deserve no reply.
    """
    try:
        query = parse_query(query_bytes)
    except Refused as refused:
        return refused.reply
    if query.qclass not in (CLASS_IN, CLASS_ANY):
        return None
    if max_udp is None:
        limit, udp_size = MAX_MESSAGE, DEFAULT_MAX_UDP
    else:
        client = MIN_UDP if query.edns is None else max(MIN_UDP, query.edns.udp_size)
        limit, udp_size = min(max_udp, client), max_udp
    if query.edns is not None and query.edns.version != 0:
        return reply(query, BADVERS, [], authoritative=False, limit=limit, udp_size=udp_size)

    labels = query.labels
    zone = _domain_labels(domain)
    name: str | None
    if len(labels) >= len(zone) and labels[len(labels) - len(zone):] == zone:
        name = name_of_labels(labels)
        exists = name is not None and (labels == zone or store.has_name(name))
    elif len(labels) == 1:
        name = name_of_labels(labels + zone)
        if name is None or not store.has_name(name):
            return None
        exists = True
    else:
        return _reverse(query, store, ttl, limit, udp_size)

    if not exists or name is None:
        return reply(query, NXDOMAIN, [], authoritative=True, limit=limit, udp_size=udp_size)
    records: list[bytes] = []
    if query.qtype in (TYPE_A, TYPE_AAAA, TYPE_ANY):
        addresses = list(store.lookup(name))
        rng.shuffle(addresses)
        packed = [packed_address(a) for a in addresses]
        if query.qtype != TYPE_ANY:
            size = 4 if query.qtype == TYPE_A else 16
            packed = [p for p in packed if len(p) == size]
        records = [a_record(p, ttl) for p in packed]
    return reply(query, NOERROR, records, authoritative=True, limit=limit, udp_size=udp_size)


def _reverse(query: Query, store: RecordStore, ttl: int, limit: int, udp_size: int) -> bytes | None:
    address = address_of_reverse(query.labels)
    if address is None:
        return None
    names = store.reverse(address)
    if not names:
        return None
    records: list[bytes] = []
    if query.qtype in (TYPE_PTR, TYPE_ANY):
        for name in names:
            target = encode_name(labels_of(name))
            if target is not None:
                records.append(ptr_record(target, ttl))
    return reply(query, NOERROR, records, authoritative=True, limit=limit, udp_size=udp_size)

