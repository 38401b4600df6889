"""ACK thinning (proto/ackfilter.py, router/dataplane/outbox.py): only the last of a run of
cumulative pure ACKs of a flow crosses; everything that says more than that passes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.gsoframes import ack_frame, super_frame
from weftnet.proto import ackfilter, sleeve
from weftnet.proto.ethernet import VNET_HDR_LEN, seq_after
from weftnet.router.dataplane.outbox import Outbox

SACK = b"\x01\x01\x05\x0a" + bytes(8)  # NOP NOP SACK with one block
VNET = sleeve.FLAG_VNET


def ack(n: int, **kw: object) -> tuple[int, int, int, bytes]:
    return (1, 2, VNET, ack_frame(False, n, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("v6", [False, True])
def test_a_pure_ack_is_recognised_with_its_flow_and_number(v6: bool) -> None:
    got = ackfilter.pure_ack(ack_frame(v6, 123456), VNET_HDR_LEN)
    assert got is not None and got[1] == 123456
    assert ackfilter.pure_ack(ack_frame(v6, 123456, options=b""), VNET_HDR_LEN) == got
    other_port = ackfilter.pure_ack(ack_frame(v6, 1, ports=(5202, 40000)), VNET_HDR_LEN)
    assert other_port is not None and other_port[0] != got[0]
    plain = ack_frame(v6, 5)[VNET_HDR_LEN:]  # without the virtio-net header
    assert ackfilter.pure_ack(plain) == (got[0], 5)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("what", ["sack", "payload", "fin", "psh", "ece", "syn", "rst",
                                  "data", "unknown option"])
def test_anything_that_says_more_than_an_ack_is_not_one(v6: bool, what: str) -> None:
    frame = {
        "sack": lambda: ack_frame(v6, 9, options=SACK),
        "payload": lambda: ack_frame(v6, 9, payload=b"x"),
        "fin": lambda: ack_frame(v6, 9, tcp_flags=0x11),
        "psh": lambda: ack_frame(v6, 9, tcp_flags=0x18),
        "ece": lambda: ack_frame(v6, 9, tcp_flags=0x50),
        "syn": lambda: ack_frame(v6, 9, tcp_flags=0x12),
        "rst": lambda: ack_frame(v6, 9, tcp_flags=0x14),
        "data": lambda: super_frame(v6, bytes(3000), 1448),
        "unknown option": lambda: ack_frame(v6, 9, options=b"\x1e\x04\x00\x00"),
    }[what]()
    assert ackfilter.pure_ack(frame, VNET_HDR_LEN) is None


def test_fragments_and_ip_options_are_not_parsed() -> None:
    frame = bytearray(ack_frame(False, 9))
    ip = VNET_HDR_LEN + 14
    frame[ip + 6] |= 0x20  # more fragments
    assert ackfilter.pure_ack(frame, VNET_HDR_LEN) is None
    frame = bytearray(ack_frame(False, 9))
    frame[ip] = 0x46  # an IPv4 header with options
    assert ackfilter.pure_ack(frame, VNET_HDR_LEN) is None


def test_seq_after_wraps_around() -> None:
    assert seq_after(5, 0xFFFFFFF0) and not seq_after(0xFFFFFFF0, 5)
    assert not seq_after(7, 7)


def test_a_newer_ack_replaces_the_older_one_and_order_is_kept() -> None:
    box = Outbox()
    data = (1, 2, VNET, super_frame(False, bytes(100), 1448, ports=(5201, 40000)))
    assert box.add(7, ack(100)) and box.add(7, data)  # data of the same connection, after
    assert not box.add(7, ack(200)) and not box.add(7, ack(300))
    assert box.take(7) == [data, ack(300)]  # the data never falls behind a later ACK
    assert box.take(7) is None


def test_duplicates_sacks_other_flows_and_peers_all_cross() -> None:
    box = Outbox()
    entries = [ack(100), ack(100), ack(100, options=SACK), ack(90),
               (1, 3, VNET, ack_frame(False, 200)[:]),  # another destination peer
               ack(100, ports=(5202, 40000)), (1, 2, 0, ack_frame(False, 300)[VNET_HDR_LEN:])]
    for e in entries[:-1]:
        assert box.add(1, e)
    # the plain frame (no virtio-net header) is the same flow, acknowledging more: it
    # replaces the flow's latest pure ACK (90); the duplicates before it stay
    assert not box.add(1, entries[-1])
    assert box.take(1) == entries[:3] + entries[4:]


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30))
def test_the_latest_ack_always_crosses_and_the_size_is_what_crosses(numbers: list[int]) -> None:
    box = Outbox()
    for n in numbers:
        box.add(3, ack(n))
    taken = box.take(3)
    assert taken is not None
    crossing = [ackfilter.pure_ack(e[3], VNET_HDR_LEN) for e in taken]
    assert numbers[-1] in [c[1] for c in crossing if c is not None]
    pairs = zip(numbers, numbers[1:], strict=False)
    assert len(taken) == 1 + sum(not seq_after(b, a) for a, b in pairs)
    size = sum(sleeve.ENTRY_OVERHEAD + len(e[3]) for e in taken)
    for n in numbers:
        box.add(4, ack(n))
    assert box.room(4, 0, size) and not box.room(4, 1, size)
