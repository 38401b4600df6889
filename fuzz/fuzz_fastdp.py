"""Fuzz the fast path's decoders: control-channel messages (hello, probe answer) and probe
frames arriving on the bridge. Any bytes decode or raise RemoteProtocolError; whatever
decodes re-encodes to the same thing."""

from __future__ import annotations

import contextlib

_instrumented: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["weftnet"])
with _instrumented:
    from weftnet.proto.errors import RemoteProtocolError
    from weftnet.proto.fastdp import Hello, ProbeAck, decode_message, decode_probe, encode_probe

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
SEEDS = [
    Hello(True, MAC_A, frozenset({MAC_B}), "").encode(),
    Hello(False, MAC_A, frozenset(), "fast path disabled (--no-fastdp)").encode(),
    ProbeAck(2**63 + 5).encode(),
    encode_probe(MAC_A, MAC_B, 0x1234, 99, 128),
]


def test_one_input(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except RemoteProtocolError:
        pass
    else:
        assert decode_message(msg.encode()) == msg
    try:
        sender, probe_id = decode_probe(data)
    except RemoteProtocolError:
        return
    again = encode_probe(data[:6], data[6:12], sender, probe_id, len(data) - 14)
    assert decode_probe(again) == (sender, probe_id)


if __name__ == "__main__":
    from _harness import fuzz

    fuzz(test_one_input, SEEDS)
