"""How a UDP GSO send is split into calls (router/dataplane/udpsock.py ``_chunks``): what
the kernel accepts per ``sendmsg`` with ``UDP_SEGMENT`` (at most 64 segments and 65507
bytes), every byte once, in order, each call starting on a segment boundary, and one call
whenever the whole fits one (every fragmented sleeve message)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto import sleeve_frag
from weftnet.router.dataplane.udpsock import MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD, _chunks


@given(st.integers(1, 400_000), st.integers(1, 9000))
def test_calls_cover_the_data_within_the_kernels_limits(total: int, seg: int) -> None:
    calls = _chunks(total, seg)
    assert calls[0][0] == 0 and calls[-1][1] == total
    for (start, end), (nxt, _) in zip(calls, calls[1:] + [(total, 0)], strict=True):
        assert start < end == nxt and start % seg == 0
        assert end - start <= MAX_UDP_PAYLOAD
        assert -(-(end - start) // seg) <= MAX_GSO_SEGMENTS
    if total <= MAX_UDP_PAYLOAD and total <= MAX_GSO_SEGMENTS * seg:
        assert calls == [(0, total)]


@given(st.integers(sleeve_frag.MIN_SEGMENT, 1500))
def test_a_fragmented_message_is_one_call(seg: int) -> None:
    total = len(sleeve_frag.fragment(bytes(sleeve_frag.max_message(seg)), seg, 1))
    assert _chunks(total, seg) == [(0, total)]
