"""Punch codecs under hypothesis: every rendezvous message and every probe body round-trips,
and a message cut short or with a byte changed either decodes to a valid message or is
refused with RemoteProtocolError (never another exception)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.punch import (
    Candidate,
    CandidateKind,
    decode_probe,
    decode_probe_ack,
    encode_probe,
    encode_probe_ack,
)
from weftnet.proto.rendezvous import (
    KINDS,
    MAX_ATTEMPT,
    MAX_CANDIDATES,
    MAX_REASON,
    Answer,
    Cancel,
    Message,
    Offer,
    Seen,
    decode_message,
    encode_message,
    valid_address,
)

names = st.integers(1, (1 << 48) - 1)
sessions = st.integers(1, (1 << 64) - 1)
ports = st.integers(1, 65535)
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
addresses = st.tuples(ips, ports).filter(lambda a: valid_address(*a) is not None)
candidates = st.lists(st.builds(Candidate, st.sampled_from(CandidateKind), addresses),
                      max_size=MAX_CANDIDATES).map(tuple)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Seen, addresses),
    st.builds(Offer, sessions, st.binary(min_size=32, max_size=32), candidates,
              st.sampled_from(KINDS), st.integers(0, MAX_ATTEMPT)),
    st.builds(Answer, sessions, candidates, st.sampled_from(KINDS)),
    st.builds(Cancel, sessions, st.text(max_size=MAX_REASON)),
)


@given(messages)
def test_messages_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@given(messages, st.data())
def test_damaged_messages_decode_or_are_refused(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode_message(msg))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif raw:
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        got = decode_message(bytes(raw))
    except RemoteProtocolError:
        return
    assert decode_message(encode_message(got)) == got


@given(st.integers(0, (1 << 64) - 1), names, st.one_of(st.ip_addresses(v=4),
                                                       st.ip_addresses(v=6)), ports)
def test_probe_bodies_round_trip(probe_id: int, sender: int,
                                 ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                 port: int) -> None:
    assert decode_probe(encode_probe(probe_id, sender)) == (probe_id, sender, None)
    rtt = (probe_id % 10**7) / 1e6  # any RTT of whole microseconds
    assert decode_probe(encode_probe(probe_id, sender, rtt)) == (probe_id, sender, rtt)
    seen = (str(ip), port)
    assert decode_probe_ack(encode_probe_ack(probe_id, sender, seen)) == (probe_id, sender, seen)
