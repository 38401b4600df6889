"""Fuzz the control message decoder: any bytes decode or raise RemoteProtocolError,
and whatever decodes re-encodes to something that decodes to the same message."""

from __future__ import annotations

import contextlib
import os
import sys

# Under atheris, give coverage feedback for our code only (msgpack is a C extension and
# the standard library is noise); imported normally, e.g. by the hypothesis runner.
_instrumented: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["weftnet"])
with _instrumented:
    from weftnet.proto.errors import RemoteProtocolError
    from weftnet.proto.messages import (
        Goodbye,
        Gossip,
        GossipKind,
        Heartbeat,
        decode_message,
        encode_message,
    )

SEEDS = [
    encode_message(Heartbeat()),
    encode_message(Gossip("topology", GossipKind.BROADCAST, 5, 0, b"abc")),
    encode_message(Goodbye("bye")),
]


def test_one_input(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except RemoteProtocolError:
        return
    assert decode_message(encode_message(msg)) == msg


if __name__ == "__main__":
    # The seeds go into every corpus folder named on the command line, so mutation
    # starts from valid encodings rather than from nothing.
    for arg in sys.argv[1:]:
        if not arg.startswith("-") and os.path.isdir(arg):
            for i, seed in enumerate(SEEDS):
                with open(os.path.join(arg, f"seed-{i}"), "wb") as f:
                    f.write(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
