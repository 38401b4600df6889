"""Fuzz the sleeve fragment reassembler: any sequence of datagrams (fragments and parity
fragments) is taken or refused with RemoteProtocolError; a completed message is always made
of chunks that arrived for it, or rebuilt from them; the table of pending reassemblies stays
bounded."""

from __future__ import annotations

from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.sleeve_frag import HEADER_LEN, Reassembler, fragment

SEEDS = [
    fragment(bytes(range(200)) * 10, 300, 1),
    fragment(b"x" * 5000, 1472, 0xFFFFFFFF),
    b"\x01\x06\x00\x02\x00\x00\x00\x01abc",
    fragment(bytes(range(256)) * 9, 400, 2, parity=True),
    b"\x01\x07\x00\x03\x00\x00\x00\x02xyz",
]


def test_one_input(data: bytes) -> None:
    r = Reassembler(max_pending=8, timeout=1.0)
    # the input is a sequence of datagrams: u16 length + bytes
    i, now = 0, 0.0
    while i + 2 <= len(data):
        n = int.from_bytes(data[i:i + 2], "big") % 2048
        part = data[i + 2:i + 2 + n]
        i += 2 + n
        now += 0.25
        try:
            message = r.add(part[:1], part, now)
        except RemoteProtocolError:
            continue
        if message is not None:
            assert len(message) >= 2 * 1 and len(message) <= 64 * 2048
        assert len(r) <= 8
        r.expire(now)
    # whole buffers as produced by fragment() are cut at the segment size and must reassemble
    if len(data) > HEADER_LEN:
        seg = 100 + data[0] % 200
        msg = data * 3
        if -(-len(msg) // (seg - HEADER_LEN)) <= 64 and len(msg) > seg:
            buf = fragment(msg, seg, data[1])
            out = [m for k in range(0, len(buf), seg)
                   if (m := Reassembler().add("s", buf[k:k + seg], 0.0)) is not None]
            r2 = Reassembler()
            got = [m for k in range(0, len(buf), seg)
                   if (m := r2.add("s", buf[k:k + seg], 0.0)) is not None]
            assert got == [msg] and out == []
            # with parity, less the segment the input picks: the message or nothing
            with_parity = fragment(msg, seg, data[1], parity=True)
            parts = [with_parity[k:k + seg] for k in range(0, len(with_parity), seg)]
            lost = data[-1] % len(parts)
            r3 = Reassembler()
            got = [m for k, part in enumerate(parts)
                   if k != lost and (m := r3.add("s", part, 0.0)) is not None]
            rebuilt = r3.add_batch("t", memoryview(b"".join(p for k, p in enumerate(parts)
                                                          if k != lost)), seg, 0.0)
            assert got in ([], [msg]) and [bytes(m) for m in rebuilt] in ([], [msg])
            assert got == [msg] or lost == len(parts) - 1  # only the short last is beyond it


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
