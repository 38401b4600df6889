"""The handshake's codec, negotiation, key schedule and frame-level machine."""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import Any

import pytest
from spake2 import SPAKE2_Symmetric

from tests.pairs import ALPHA, BETA, PEER_SEED
from weftnet.proto.aead import COUNTER_LIMIT, Opener, Sealer, counter_nonce
from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.framing import pack
from weftnet.proto.handshake import (
    BAD_SPAKE,
    LABEL_CONTROL_I2R,
    WRONG_PASSWORD,
    Handshake,
    HandshakeStep,
    Hello,
    LocalIdentity,
    confirmation_tag,
    decode_confirm,
    decode_hello,
    derive_keys,
    encode_confirm,
    encode_hello,
    negotiate,
    transcript_hash,
)


def rng(seed: int) -> Any:
    return random.Random(seed).randbytes


def hello(**kw: Any) -> Hello:
    base: dict[str, Any] = dict(vmin=1, vmax=1, name=5, nickname="n", uid=9, nonce=3,
                                password=False)
    base.update(kw)
    return Hello(**base)


def hello_doc(**kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"proto": "weft", "vmin": 1, "vmax": 1, "name": 5, "nick": "n",
                           "uid": 9, "nonce": 3, "pw": False}
    doc.update(kw)
    return {k: v for k, v in doc.items() if v is not ...}


# ------------------------------------------------------------------ codec

def test_hello_round_trip_without_password() -> None:
    h = hello(nickname="x" * 255)
    assert decode_hello(encode_hello(h)) == h


def test_hello_round_trip_with_password() -> None:
    h = hello(password=True, spake=b"S" + bytes(range(32)), x25519=bytes(32))
    assert decode_hello(encode_hello(h)) == h


def test_hello_without_password_omits_key_exchange_fields() -> None:
    import msgpack
    doc = msgpack.unpackb(encode_hello(hello()))
    assert "spake" not in doc and "x25519" not in doc


def test_hello_ignores_unknown_keys() -> None:
    assert decode_hello(pack(hello_doc(future=[1, 2]))) == hello()


@pytest.mark.parametrize("body", [
    b"", b"\xc1", b"GET / HTTP/1.1\r\n", pack([1, 2]), pack({"proto": "http"}),
    pack({"vmin": 1}), pack("weft"), pack({"proto": b"weft"}),
])
def test_not_a_weft_peer(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="^not a weft peer$"):
        decode_hello(body)


@pytest.mark.parametrize("doc", [
    hello_doc(vmin=0), hello_doc(vmin=True), hello_doc(vmin=...), hello_doc(vmin=2, vmax=1),
    hello_doc(vmax=1 << 20), hello_doc(vmax="1"),
    hello_doc(name=0), hello_doc(name=1 << 48), hello_doc(name=-1), hello_doc(name=1.0),
    hello_doc(uid=0), hello_doc(uid=-5), hello_doc(uid=...),
    hello_doc(nonce=-1), hello_doc(nonce=-(1 << 63)), hello_doc(nonce=None),
    hello_doc(nick=b"n"), hello_doc(nick="x" * 256), hello_doc(nick=...),
    hello_doc(pw=1), hello_doc(pw=...), hello_doc(pw=None),
    hello_doc(spake=b"S" * 33), hello_doc(x25519=bytes(32)),
    hello_doc(pw=True), hello_doc(pw=True, x25519=bytes(32)),
    hello_doc(pw=True, spake=b"S" * 32, x25519=bytes(32)),
    hello_doc(pw=True, spake="S" * 33, x25519=bytes(32)),
    hello_doc(pw=True, spake=b"S" * 33, x25519=bytes(31)),
    hello_doc(pw=True, spake=b"S" * 33),
])
def test_malformed_hello(doc: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError, match="^malformed handshake: "):
        decode_hello(pack(doc))


def test_hello_spake_message_for_the_wrong_side_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match=BAD_SPAKE):
        decode_hello(pack(hello_doc(pw=True, spake=b"A" * 33, x25519=bytes(32))))


def test_confirm_round_trip_and_rejections() -> None:
    tag = bytes(range(32))
    assert decode_confirm(encode_confirm(tag)) == tag
    for body in (pack({"confirm": tag[:31]}), pack({"confirm": "x"}), pack([tag]), b"\xc1",
                 encode_hello(hello())):
        with pytest.raises(RemoteProtocolError, match="^malformed"):
            decode_confirm(body)


# ------------------------------------------------------------------ negotiation

def test_negotiate_picks_highest_common_version_and_same_conn_uid() -> None:
    i, r = hello(vmin=1, vmax=4, nonce=0xF0), hello(name=6, uid=10, vmin=2, vmax=3, nonce=0x0F)
    ai = negotiate(i, r, outbound=True)
    ar = negotiate(r, i, outbound=False)
    assert ai == ar
    assert ai.version == 3 and ai.conn_uid == 0xFF and not ai.encrypted


def test_conn_uid_is_never_zero() -> None:
    i, r = hello(nonce=77), hello(name=6, uid=10, nonce=77)
    assert negotiate(i, r, outbound=True).conn_uid == 1


@pytest.mark.parametrize(("ours", "theirs", "message"), [
    ((1, 1), (2, 3), "version mismatch: we speak 1..1, the peer speaks 2..3"),
    ((2, 3), (1, 1), "version mismatch: we speak 2..3, the peer speaks 1..1"),
])
def test_version_mismatch(ours: tuple[int, int], theirs: tuple[int, int], message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=f"^{message}$"):
        negotiate(hello(vmin=ours[0], vmax=ours[1]),
                  hello(name=6, vmin=theirs[0], vmax=theirs[1]), outbound=True)


def test_ourself_and_collision() -> None:
    with pytest.raises(RemoteProtocolError, match="^cannot connect to ourself$"):
        negotiate(hello(), hello(nonce=99), outbound=True)
    with pytest.raises(RemoteProtocolError,
                       match="^peer name collision: 00:00:00:00:00:05 is used by another router$"):
        negotiate(hello(), hello(uid=10), outbound=True)


def test_password_on_one_side_wording() -> None:
    pw = dict(password=True, spake=b"S" * 33, x25519=bytes(32))
    with pytest.raises(RemoteProtocolError, match="this router has a password, the peer has none"):
        negotiate(hello(**pw), hello(name=6), outbound=True)
    with pytest.raises(RemoteProtocolError, match="the peer has a password, this router has none"):
        negotiate(hello(), hello(name=6, **pw), outbound=False)


# ------------------------------------------------------------------ key schedule

def _hkdf_expand(prk: bytes, info: bytes) -> bytes:
    # RFC 5869 with L = 32 = HashLen: T(1) = HMAC(PRK, info || 0x01), an independent oracle
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_key_schedule_matches_rfc5869_by_hand() -> None:
    spake_key, dh, transcript = b"k" * 32, b"d" * 32, transcript_hash(b"hi", b"hr")
    assert transcript == hashlib.sha256(b"hihr").digest()
    prk = hmac.new(transcript, spake_key + dh, hashlib.sha256).digest()
    keys = derive_keys(spake_key, dh, transcript, outbound=True)
    assert keys.control_send == _hkdf_expand(prk, LABEL_CONTROL_I2R)
    assert keys.confirm_send == _hkdf_expand(prk, b"weft v1 confirm i>r")
    assert keys.sleeve.sleeve_recv == _hkdf_expand(prk, b"weft v1 sleeve r>i")


def test_keys_are_mirrored_and_distinct() -> None:
    i = derive_keys(b"k" * 32, b"d" * 32, b"t" * 32, outbound=True)
    r = derive_keys(b"k" * 32, b"d" * 32, b"t" * 32, outbound=False)
    assert (i.confirm_send, i.control_send, i.sleeve.sleeve_send) == (
        r.confirm_recv, r.control_recv, r.sleeve.sleeve_recv)
    assert (i.confirm_recv, i.control_recv, i.sleeve.sleeve_recv) == (
        r.confirm_send, r.control_send, r.sleeve.sleeve_send)
    six = {i.confirm_send, i.confirm_recv, i.control_send, i.control_recv,
           i.sleeve.sleeve_send, i.sleeve.sleeve_recv}
    assert len(six) == 6
    assert "k" * 8 not in repr(i) and repr(i.sleeve) == "SessionKeys(aead='chacha20-poly1305')"


def test_confirmation_tag_binds_transcript() -> None:
    assert confirmation_tag(b"k" * 32, b"t1") != confirmation_tag(b"k" * 32, b"t2")
    assert confirmation_tag(b"k" * 32, b"t1") == hmac.new(
        b"k" * 32, b"weft key confirmation" + b"t1", hashlib.sha256).digest()


# ------------------------------------------------------------------ machine

def _pair(pw_a: bytes | None, pw_b: bytes | None, seed: int = 1) -> tuple[Handshake, Handshake]:
    return (Handshake(outbound=True, local=ALPHA, password=pw_a, random_bytes=rng(seed)),
            Handshake(outbound=False, local=BETA, password=pw_b, random_bytes=rng(seed + PEER_SEED)))


def _run(a: Handshake, b: Handshake) -> tuple[str | None, str | None]:
    """Exchange all frames; return each side's failure reason (None: completed)."""
    errors: list[str | None] = [None, None]
    queues = [[a.hello_body], [b.hello_body]]
    sides = [a, b]
    while queues[0] or queues[1]:
        for me in (0, 1):
            other = 1 - me
            while queues[me]:
                body = queues[me].pop(0)
                if errors[other] is not None or sides[other].step is HandshakeStep.NOTHING:
                    continue
                try:
                    queues[other].extend(sides[other].receive_frame(body))
                except RemoteProtocolError as exc:
                    errors[other] = exc.reason
    return errors[0], errors[1]


def test_machine_with_password_agrees() -> None:
    a, b = _pair(b"pw", b"pw")
    assert _run(a, b) == (None, None)
    assert a.result and b.result and a.result.keys and b.result.keys
    assert a.result.conn_uid == b.result.conn_uid
    assert a.result.keys.control_send == b.result.keys.control_recv
    assert a.result.keys.sleeve.sleeve_send == b.result.keys.sleeve.sleeve_recv
    assert a.result.remote.name == BETA.name and b.result.remote.nickname == "alpha"
    with pytest.raises(LocalProtocolError):
        a.receive_frame(b"")


def test_machine_wrong_password() -> None:
    a, b = _pair(b"pw", b"wrong")
    assert _run(a, b) == (WRONG_PASSWORD, WRONG_PASSWORD)
    assert a.result is None and b.result is None


def test_machine_is_deterministic_given_randomness() -> None:
    a1, _ = _pair(b"pw", b"pw", seed=5)
    a2, _ = _pair(b"pw", b"pw", seed=5)
    a3, _ = _pair(b"pw", b"pw", seed=6)
    assert a1.hello_body == a2.hello_body != a3.hello_body


def _hello_with(a: Handshake, **fields: Any) -> bytes:
    base = Handshake(outbound=False, local=BETA, password=b"pw", random_bytes=rng(9)).hello
    doc = {"proto": "weft", "vmin": 1, "vmax": 1, "name": base.name, "nick": base.nickname,
           "uid": base.uid, "nonce": base.nonce, "pw": True, "spake": base.spake,
           "x25519": base.x25519}
    doc.update(fields)
    return pack(doc)


def test_reflected_spake_message_is_refused() -> None:
    a, _ = _pair(b"pw", b"pw")
    with pytest.raises(RemoteProtocolError, match=BAD_SPAKE):
        a.receive_frame(_hello_with(a, spake=a.hello.spake))


def test_spake_point_off_the_curve_or_identity_is_refused() -> None:
    for point in (b"S" + b"\xff" * 32, b"S" + bytes(32), b"S" + b"\x01" + bytes(31)):
        a, _ = _pair(b"pw", b"pw")
        with pytest.raises(RemoteProtocolError, match=BAD_SPAKE):
            a.receive_frame(_hello_with(a, spake=point))


def test_low_order_x25519_key_is_refused() -> None:
    for point in (bytes(32), b"\x01" + bytes(31)):
        a, _ = _pair(b"pw", b"pw")
        with pytest.raises(RemoteProtocolError, match="bad x25519 public key"):
            a.receive_frame(_hello_with(a, x25519=point))


def test_spake_symmetric_parameters_interoperate_with_the_library() -> None:
    # Our side against a bare spake2 peer using the documented parameters.
    ours = Handshake(outbound=True, local=ALPHA, password=b"pw", random_bytes=rng(3))
    peer = SPAKE2_Symmetric(b"pw", idSymmetric=b"weft-v1", entropy_f=rng(4))
    msg = peer.start()
    assert ours.hello.spake is not None
    assert len(peer.finish(ours.hello.spake)) == 32
    ours.receive_frame(_hello_with(ours, spake=msg))
    assert ours.step is HandshakeStep.CONFIRM


@pytest.mark.parametrize("kwargs", [
    dict(versions=(0, 1)), dict(versions=(2, 1)), dict(password=b""),
    dict(local=LocalIdentity(0, "x", 1)), dict(local=LocalIdentity(1, "x", 0)),
    dict(local=LocalIdentity(1, "x" * 256, 1)),
])
def test_constructor_misuse(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = dict(outbound=True, local=ALPHA, password=None, random_bytes=rng(1))
    args.update(kwargs)
    with pytest.raises(LocalProtocolError):
        Handshake(**args)


# ------------------------------------------------------------------ aead

def test_sealer_opener_counter_nonces() -> None:
    key = bytes(range(32))
    s, o = Sealer(key), Opener(key, what="thing")
    c0, c1 = s.seal(b"m0"), s.seal(b"m1")
    assert s.counter == 2 and c0 != c1
    assert counter_nonce(1) == b"\0\0\0\0\x01" + bytes(7)
    with pytest.raises(RemoteProtocolError, match="tampered or replayed thing"):
        o.open(c1)  # out of order
    assert o.counter == 0  # a failed open does not advance
    assert o.open(c0) == b"m0" and o.open(c1) == b"m1"
    with pytest.raises(RemoteProtocolError):
        o.open(c1)  # replay
    assert o.open_at(0, c0) == b"m0"
    for bad in (b"", b"x" * 15, c0[:-1] + bytes([c0[-1] ^ 1])):
        with pytest.raises(RemoteProtocolError):
            o.open_at(0, bad)


def test_sealer_exhaustion_is_local_error() -> None:
    key = bytes(32)
    s = Sealer(key, counter=COUNTER_LIMIT - 1)
    last = s.seal(b"x")
    with pytest.raises(LocalProtocolError, match="exhausted"):
        s.seal(b"y")
    o = Opener(key, counter=COUNTER_LIMIT - 1)
    assert o.open(last) == b"x"
    with pytest.raises(RemoteProtocolError):
        o.open(last)
    with pytest.raises(LocalProtocolError):
        Sealer(b"short")
    with pytest.raises(LocalProtocolError):
        Sealer(key, counter=COUNTER_LIMIT + 1)
