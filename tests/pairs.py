"""Both ends of one connection, made the same way by unit tests, properties and fuzz harnesses.

``ConnectionPair`` (proto/connection.py) wires two control connections back to back; the
helpers here make those connections with fixed identities and seeded randomness, so a test
names only what it varies. ``sleeve_pair`` makes the two sleeve sessions of one connection,
one end's send key being the other's receive key.

The fuzz harnesses import this module too (``fuzz/`` runs under hypothesis in the suite and
under atheris as scripts), so it holds nothing but plain constructors.
"""

from __future__ import annotations

import random
from typing import Any

from weftnet.proto.connection import Connection, ConnectionPair, HandshakeCompleted, LocalIdentity
from weftnet.proto.sleeve import SleeveSession

ALPHA = LocalIdentity(name=0x0A0000000001, nickname="alpha", uid=111)  # dials (outbound)
BETA = LocalIdentity(name=0x0B0000000002, nickname="beta", uid=222)  # answers (inbound)
# The answering end draws from seed + PEER_SEED: never the dialler's randomness, which a
# connection takes for its own hello reflected and refuses.
PEER_SEED = 1000

SLEEVE_UID = 0x1122334455667788
SLEEVE_KEYS = (bytes(range(32)), bytes(range(100, 132)))


def connection(outbound: bool, *, local: LocalIdentity | None = None, password: bytes | None = None,
               seed: int = 0, now: float = 0.0, **kw: Any) -> Connection:
    """A fresh connection whose randomness all comes from ``seed``; ALPHA dials and BETA
    answers unless ``local`` says otherwise. ``kw`` goes to ``Connection``."""
    if local is None:
        local = ALPHA if outbound else BETA
    return Connection(outbound=outbound, local=local, password=password, now=now,
                      random_bytes=random.Random(seed).randbytes, **kw)


def connection_pair(pw_a: bytes | None = None, pw_b: bytes | None = None, *, seed: int = 1,
                    cls: type[ConnectionPair] = ConnectionPair, **kw: Any) -> ConnectionPair:
    """ALPHA (``a``, seeded ``seed``) dialling BETA (``b``, seeded ``seed + PEER_SEED``),
    nothing pumped yet; ``cls`` may be a ConnectionPair that tampers with the wire."""
    return cls(connection(True, password=pw_a, seed=seed, **kw),
               connection(False, password=pw_b, seed=seed + PEER_SEED, **kw))


def established_pair(password: bytes | None = None, *, seed: int = 1, **kw: Any) -> ConnectionPair:
    """A pair pumped through its handshake at time 0, both completions drained."""
    pair = connection_pair(password, password, seed=seed, **kw)
    pair.pump(0.0)
    ea, eb = pair.events()
    assert [type(e) for e in ea + eb] == [HandshakeCompleted, HandshakeCompleted], (ea, eb)
    return pair


def sleeve_pair(encrypted: bool = True, *, conn_uid: int = SLEEVE_UID,
                keys: tuple[bytes, bytes] = SLEEVE_KEYS, now: float = 0.0,
                **kw: Any) -> tuple[SleeveSession, SleeveSession]:
    """The sessions of both ends of one connection: ``a`` seals with ``keys[0]``, which
    ``b`` opens with, and the other way round (no keys at all unless ``encrypted``).
    ``kw`` (rekeying, window) goes to both."""
    ka, kb = keys if encrypted else (None, None)
    a = SleeveSession(conn_uid=conn_uid, send_key=ka, recv_key=kb, now=now, **kw)
    b = SleeveSession(conn_uid=conn_uid, send_key=kb, recv_key=ka, now=now, **kw)
    return a, b
