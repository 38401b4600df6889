"""Fuzz the control-stream frame decoder and msgpack codec.

Invariant (h11's): garbage either decodes or raises RemoteProtocolError, and feeding it
in one chunk or byte by byte gives identical results.
"""

from __future__ import annotations

import contextlib

# Under atheris, give coverage feedback for our code only (msgpack is a C extension and
# the standard library is noise); imported normally, e.g. by the hypothesis runner.
_instrumented: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["weftnet"])
with _instrumented:
    from weftnet.proto.errors import RemoteProtocolError
    from weftnet.proto.framing import FrameDecoder, encode_frame, pack, unpack

SEEDS = [encode_frame(pack([1, "topology", 1, 0, b"x"])), encode_frame(b"") + encode_frame(b"\x90")]


def _decode_all(chunks: list[bytes]) -> tuple[list[object], str | None]:
    decoder = FrameDecoder(max_size=1024)
    out: list[object] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (body := decoder.next_frame()) is not None:
                try:
                    out.append(unpack(body))
                except RemoteProtocolError as exc:
                    out.append(("bad", exc.reason))
    except RemoteProtocolError as exc:
        return out, exc.reason
    return out, None


def test_one_input(data: bytes) -> None:
    whole = _decode_all([data])
    bytewise = _decode_all([data[i:i + 1] for i in range(len(data))])
    assert repr(whole) == repr(bytewise), (whole, bytewise)  # repr: NaN != NaN


if __name__ == "__main__":
    from _harness import fuzz

    fuzz(test_one_input, SEEDS)
