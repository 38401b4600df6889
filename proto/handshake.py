r"""The control-connection handshake: hellos, negotiation, key agreement, key confirmation.

Theory of operation
-------------------
Both ends speak at once: neither waits for the other before sending its Hello, so the
handshake costs one round trip without a password and two with one. Every decision is
a function of the two hellos only, so both ends reach the same verdict (same version,
same connection uid, same failure) without a further message::

    initiator (outbound)                       responder (inbound)
    --------------------                       -------------------
    Hello  ------------------------------\ /------------------------------  Hello
                                          X
    <-------------------------------------/ \----------------------------------->
    negotiate(hello_i, hello_r)                      negotiate(hello_i, hello_r)
    -- without a password: done, plaintext control messages follow --
    Confirm(tag i>r) ---------------------\ /----------------------- Confirm(tag r>i)
                                           X
    <-------------------------------------/ \----------------------------------->
    verify tag r>i                                               verify tag i>r
    -- done: ChaCha20-Poly1305 sealed control messages follow --

Hello frame body (msgpack map; keys beyond these are ignored so a later version can
add some)::

    {"proto": "weft", "vmin": int, "vmax": int, "name": int (48 bit), "nick": str (<=255),
     "uid": int (64 bit, per start), "nonce": int (64 bit, per connection), "pw": bool,
     "spake": bytes (33, SPAKE2 message) -- only when pw,
     "x25519": bytes (32, ephemeral public key) -- only when pw}

Confirm frame body::

    {"confirm": bytes (32) = HMAC-SHA256(confirm key of the sender's direction,
                                         b"weft key confirmation" + transcript)}

Key schedule (password on both sides)::

    transcript = SHA-256(initiator hello body || responder hello body)
    prk        = HKDF-Extract(salt=transcript, ikm=spake2_key || x25519_shared)
               = HMAC-SHA256(transcript, spake2_key || x25519_shared)   (RFC 5869 2.2,
                 computed with hmac directly: cryptography exposes Expand alone)
    key(label) = HKDF-Expand(prk, info=label, 32)  for the labels
                 b"weft v1 confirm i>r"  b"weft v1 confirm r>i"
                 b"weft v1 control i>r"  b"weft v1 control r>i"
                 b"weft v1 sleeve i>r"   b"weft v1 sleeve r>i"

SPAKE2 proves both ends know the password without exposing it to offline guessing; the
X25519 exchange adds forward secrecy that does not rest on the password alone; hashing
both hello bodies into the salt binds every field of both hellos (names, nonces,
versions) to the keys, so a tampered hello ends in a failed key confirmation rather than
a session with mismatched keys or a downgraded parameter.

Error contract: ``decode_hello``, ``decode_confirm`` and ``Handshake.receive_frame``
raise only RemoteProtocolError for anything the peer sent; constructor misuse raises
LocalProtocolError.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import spake2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from .errors import LocalProtocolError, RemoteProtocolError
from .framing import HANDSHAKE_MAX_FRAME, pack, unpack
from .peername import MAX_NAME, format_peer_name

RandomBytes = Callable[[int], bytes]

PROTOCOL_NAME = "weft"
# The protocol versions this implementation speaks (spec constants: change them only
# together with the wire format).
PROTOCOL_MIN_VERSION = 1
PROTOCOL_MAX_VERSION = 1
PROTOCOL_VERSIONS = (PROTOCOL_MIN_VERSION, PROTOCOL_MAX_VERSION)
MAX_VERSION_NUMBER = 0xFFFF
HANDSHAKE_TIMEOUT = 10.0
MAX_NICKNAME_LEN = 255
UID_LIMIT = 1 << 64
SPAKE2_ID = b"weft-v1"
SPAKE2_MESSAGE_SIZE = 33  # one side byte (b"S" for the symmetric variant) + a point
X25519_KEY_SIZE = 32
CONFIRM_SIZE = 32
CONFIRM_CONTEXT = b"weft key confirmation"

LABEL_CONFIRM_I2R = b"weft v1 confirm i>r"
LABEL_CONFIRM_R2I = b"weft v1 confirm r>i"
LABEL_CONTROL_I2R = b"weft v1 control i>r"
LABEL_CONTROL_R2I = b"weft v1 control r>i"
LABEL_SLEEVE_I2R = b"weft v1 sleeve i>r"
LABEL_SLEEVE_R2I = b"weft v1 sleeve r>i"

WRONG_PASSWORD = "wrong password (authentication failed)"
BAD_SPAKE = "malformed handshake: bad spake2 message"


# --------------------------------------------------------------------------- identities

@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """Who we are: the stable peer name, a nickname, and this start's uid."""

    name: int
    nickname: str
    uid: int


@dataclass(frozen=True, slots=True)
class RemoteIdentity:
    """Who the peer said it is (authenticated only when the connection is encrypted)."""

    name: int
    nickname: str
    uid: int


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The UDP sleeve's keys of one connection, from our point of view."""

    # repr=False: an event or result that ends up in a log must not carry key material.
    sleeve_send: bytes = field(repr=False)
    sleeve_recv: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DerivedKeys:
    """Everything the key schedule gives one side, already oriented send/recv."""

    confirm_send: bytes = field(repr=False)
    confirm_recv: bytes = field(repr=False)
    control_send: bytes = field(repr=False)
    control_recv: bytes = field(repr=False)
    sleeve: SessionKeys


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    remote: RemoteIdentity
    conn_uid: int
    version: int
    # None without a password; then nothing is encrypted.
    keys: DerivedKeys | None

    @property
    def encrypted(self) -> bool:
        return self.keys is not None


# --------------------------------------------------------------------------- codec

@dataclass(frozen=True, slots=True)
class Hello:
    vmin: int
    vmax: int
    name: int
    nickname: str
    uid: int
    nonce: int
    password: bool
    spake: bytes | None = None
    x25519: bytes | None = None


def encode_hello(hello: Hello) -> bytes:
    doc: dict[str, Any] = {
        "proto": PROTOCOL_NAME, "vmin": hello.vmin, "vmax": hello.vmax, "name": hello.name,
        "nick": hello.nickname, "uid": hello.uid, "nonce": hello.nonce, "pw": hello.password,
    }
    if hello.password:
        doc["spake"] = hello.spake
        doc["x25519"] = hello.x25519
    return pack(doc)


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed handshake: {what}")


def _int_field(doc: dict[Any, Any], key: str, lo: int, hi: int) -> int:
    value = doc.get(key)
    # type() rather than isinstance(): msgpack's True is a bool, and bool is an int.
    if type(value) is not int or not lo <= value <= hi:
        raise _malformed(f"bad {key!r}")
    return value


def _bytes_field(doc: dict[Any, Any], key: str, size: int, what: str) -> bytes:
    value = doc.get(key)
    if not isinstance(value, bytes) or len(value) != size:
        raise _malformed(what)
    return value


def decode_hello(body: bytes) -> Hello:
    """Decode and validate a peer's Hello; only RemoteProtocolError escapes."""
    try:
        doc = unpack(body)
    except RemoteProtocolError:
        raise RemoteProtocolError("not a weft peer") from None
    if not isinstance(doc, dict) or doc.get("proto") != PROTOCOL_NAME:
        raise RemoteProtocolError("not a weft peer")
    vmin = _int_field(doc, "vmin", 1, MAX_VERSION_NUMBER)
    vmax = _int_field(doc, "vmax", vmin, MAX_VERSION_NUMBER)
    name = _int_field(doc, "name", 1, MAX_NAME)
    uid = _int_field(doc, "uid", 1, UID_LIMIT - 1)
    nonce = _int_field(doc, "nonce", 0, UID_LIMIT - 1)
    nick = doc.get("nick")
    if not isinstance(nick, str) or len(nick) > MAX_NICKNAME_LEN:
        raise _malformed("bad 'nick'")
    password = doc.get("pw")
    if type(password) is not bool:
        raise _malformed("bad 'pw'")
    if not password:
        # Keys that only make sense with a password must not smuggle anything in.
        if doc.get("spake") is not None or doc.get("x25519") is not None:
            raise _malformed("key exchange fields without a password")
        return Hello(vmin, vmax, name, nick, uid, nonce, False)
    spake_msg = _bytes_field(doc, "spake", SPAKE2_MESSAGE_SIZE, "bad spake2 message")
    if spake_msg[:1] != b"S":
        # spake2 only asserts this, and asserts vanish under python -O.
        raise RemoteProtocolError(BAD_SPAKE)
    x25519 = _bytes_field(doc, "x25519", X25519_KEY_SIZE, "bad x25519 public key")
    return Hello(vmin, vmax, name, nick, uid, nonce, True, spake_msg, x25519)


def encode_confirm(tag: bytes) -> bytes:
    return pack({"confirm": tag})


def decode_confirm(body: bytes) -> bytes:
    """Decode a Confirm frame into its 32-byte tag; only RemoteProtocolError escapes."""
    doc = unpack(body)
    if not isinstance(doc, dict):
        raise _malformed("expected a key confirmation")
    tag = doc.get("confirm")
    if not isinstance(tag, bytes) or len(tag) != CONFIRM_SIZE:
        raise _malformed("expected a key confirmation")
    return tag


# --------------------------------------------------------------------------- decisions

@dataclass(frozen=True, slots=True)
class Agreement:
    version: int
    conn_uid: int
    encrypted: bool


def negotiate(local: Hello, remote: Hello, *, outbound: bool) -> Agreement:
    """What both ends decide from the two hellos; symmetric, so both decide the same.

    Raises RemoteProtocolError with the reason both ends will show.
    """
    version = min(local.vmax, remote.vmax)
    if version < max(local.vmin, remote.vmin):
        raise RemoteProtocolError(
            f"version mismatch: we speak {local.vmin}..{local.vmax}, "
            f"the peer speaks {remote.vmin}..{remote.vmax}"
        )
    if remote.name == local.name:
        if remote.uid == local.uid:
            raise RemoteProtocolError("cannot connect to ourself")
        raise RemoteProtocolError(
            f"peer name collision: {format_peer_name(remote.name)} is used by another router"
        )
    if local.password and not remote.password:
        raise RemoteProtocolError(
            "password on one side only: this router has a password, the peer has none"
        )
    if remote.password and not local.password:
        raise RemoteProtocolError(
            "password on one side only: the peer has a password, this router has none"
        )
    initiator, responder = (local, remote) if outbound else (remote, local)
    # Zero is kept free to mean "no connection" in tables keyed by conn_uid.
    conn_uid = (initiator.nonce ^ responder.nonce) or 1
    return Agreement(version, conn_uid, local.password)


def transcript_hash(initiator_hello: bytes, responder_hello: bytes) -> bytes:
    return hashlib.sha256(initiator_hello + responder_hello).digest()


def derive_keys(spake_key: bytes, dh_shared: bytes, transcript: bytes, *,
                outbound: bool) -> DerivedKeys:
    """Run the key schedule and orient its output for the initiator or the responder."""
    prk = hmac.new(transcript, spake_key + dh_shared, hashlib.sha256).digest()

    def expand(label: bytes) -> bytes:
        return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=label).derive(prk)

    i2r = (expand(LABEL_CONFIRM_I2R), expand(LABEL_CONTROL_I2R), expand(LABEL_SLEEVE_I2R))
    r2i = (expand(LABEL_CONFIRM_R2I), expand(LABEL_CONTROL_R2I), expand(LABEL_SLEEVE_R2I))
    send, recv = (i2r, r2i) if outbound else (r2i, i2r)
    return DerivedKeys(
        confirm_send=send[0], confirm_recv=recv[0],
        control_send=send[1], control_recv=recv[1],
        sleeve=SessionKeys(sleeve_send=send[2], sleeve_recv=recv[2]),
    )


def confirmation_tag(confirm_key: bytes, transcript: bytes) -> bytes:
    return hmac.new(confirm_key, CONFIRM_CONTEXT + transcript, hashlib.sha256).digest()


# --------------------------------------------------------------------------- machine

class HandshakeStep(enum.Enum):
    """What the handshake waits for next."""

    HELLO = "hello"
    CONFIRM = "confirm"
    NOTHING = "nothing"  # completed or failed


class Handshake:
    """One side of the handshake, over frame bodies (framing is the caller's job).

    Construct it, send ``hello_body`` at once, then feed each received frame body to
    ``receive_frame``, sending whatever bodies it returns. ``result`` is set once the
    handshake completed; a RemoteProtocolError from ``receive_frame`` ends it.
    """

    def __init__(self, *, outbound: bool, local: LocalIdentity, password: bytes | None,
                 random_bytes: RandomBytes,
                 versions: tuple[int, int] = PROTOCOL_VERSIONS) -> None:
        validate_identity(local)
        vmin, vmax = versions
        if not 1 <= vmin <= vmax <= MAX_VERSION_NUMBER:
            raise LocalProtocolError(f"invalid protocol version range {vmin}..{vmax}")
        if password is not None and (not isinstance(password, bytes) or not password):
            raise LocalProtocolError("the password must be non-empty bytes")
        self.outbound = outbound
        self.step = HandshakeStep.HELLO
        self.result: HandshakeResult | None = None
        nonce = int.from_bytes(random_bytes(8), "big")
        self._spake: spake2.SPAKE2_Symmetric | None = None
        self._dh: X25519PrivateKey | None = None
        spake_msg = x25519_pub = None
        if password is not None:
            self._dh = X25519PrivateKey.from_private_bytes(random_bytes(32))
            x25519_pub = self._dh.public_key().public_bytes_raw()
            self._spake = spake2.SPAKE2_Symmetric(
                password, idSymmetric=SPAKE2_ID, entropy_f=random_bytes)
            spake_msg = self._spake.start()
        self.hello = Hello(vmin, vmax, local.name, local.nickname, local.uid, nonce,
                           password is not None, spake_msg, x25519_pub)
        self.hello_body = encode_hello(self.hello)
        if len(self.hello_body) > HANDSHAKE_MAX_FRAME:  # cannot happen with valid fields
            raise LocalProtocolError("hello exceeds the handshake frame cap")
        self._pending: HandshakeResult | None = None
        self._transcript = b""

    def receive_frame(self, body: bytes) -> list[bytes]:
        """Consume one frame body; return the frame bodies to send in reply."""
        if self.step is HandshakeStep.HELLO:
            return self._receive_hello(body)
        if self.step is HandshakeStep.CONFIRM:
            self._receive_confirm(body)
            return []
        raise LocalProtocolError("the handshake is over")

    def _receive_hello(self, body: bytes) -> list[bytes]:
        self.step = HandshakeStep.NOTHING  # whatever happens, no second hello
        remote = decode_hello(body)
        agreement = negotiate(self.hello, remote, outbound=self.outbound)
        identity = RemoteIdentity(remote.name, remote.nickname, remote.uid)
        if not agreement.encrypted:
            self.result = HandshakeResult(identity, agreement.conn_uid, agreement.version, None)
            return []
        assert self._spake is not None and self._dh is not None
        assert remote.spake is not None and remote.x25519 is not None
        spake_key = self._finish_spake(remote.spake)
        dh_shared = self._exchange(remote.x25519)
        initiator, responder = (
            (self.hello_body, body) if self.outbound else (body, self.hello_body))
        self._transcript = transcript_hash(initiator, responder)
        keys = derive_keys(spake_key, dh_shared, self._transcript, outbound=self.outbound)
        # Ephemeral secrets are done with; drop them so a snapshot holds only the keys.
        self._spake = None
        self._dh = None
        self._pending = HandshakeResult(identity, agreement.conn_uid, agreement.version, keys)
        self.step = HandshakeStep.CONFIRM
        return [encode_confirm(confirmation_tag(keys.confirm_send, self._transcript))]

    def _finish_spake(self, message: bytes) -> bytes:
        assert self._spake is not None
        try:
            key = self._spake.finish(message)
        except (SPAKEError, NotOnCurve, ValueError, TypeError, AssertionError):
            # Not on the curve, in a small subgroup, the identity, or our own message
            # reflected back: all of them are the peer's doing.
            raise RemoteProtocolError(BAD_SPAKE) from None
        assert isinstance(key, bytes)
        return key

    def _exchange(self, public: bytes) -> bytes:
        assert self._dh is not None
        try:
            shared = self._dh.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            # OpenSSL refuses low-order points (an all-zero result) with ValueError.
            raise _malformed("bad x25519 public key") from None
        if shared == bytes(len(shared)):
            raise _malformed("bad x25519 public key")
        return shared

    def _receive_confirm(self, body: bytes) -> None:
        self.step = HandshakeStep.NOTHING
        tag = decode_confirm(body)
        pending = self._pending
        assert pending is not None and pending.keys is not None
        expected = confirmation_tag(pending.keys.confirm_recv, self._transcript)
        if not hmac.compare_digest(tag, expected):
            raise RemoteProtocolError(WRONG_PASSWORD)
        self.result = pending
        self._pending = None


def validate_identity(local: LocalIdentity) -> None:
    """Refuse a local identity we could not put in a hello (LocalProtocolError)."""
    if type(local.name) is not int or not 1 <= local.name <= MAX_NAME:
        raise LocalProtocolError(f"invalid peer name {local.name!r}")
    if type(local.uid) is not int or not 1 <= local.uid < UID_LIMIT:
        raise LocalProtocolError(f"invalid peer uid {local.uid!r}")
    if not isinstance(local.nickname, str) or len(local.nickname) > MAX_NICKNAME_LEN:
        raise LocalProtocolError(f"nickname longer than {MAX_NICKNAME_LEN} characters")
