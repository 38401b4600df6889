r"""The control-connection handshake: hellos, negotiation, key agreement, key confirmation.

Theory of operation
-------------------
Both ends speak at once: neither waits for the other before sending its Hello, so the
handshake costs one round trip without a password, two with one, and three when either
end holds several (see "Several passwords" below). Every decision is a function of the
frames both ends saw, so both reach the same verdict (same version, same connection uid,
same password, same failure) without a further message::

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
     "spake": bytes (33, SPAKE2 message of the pair (0, 0)) -- only when pw,
     "x25519": bytes (32, ephemeral public key) -- only when pw,
     "cands": int (2..4, how many passwords the sender holds) -- only when pw and > 1,
     "aead": [str, ...] (1..8 names of sleeve AEADs the sender accepts, preferred first)
             -- only when pw; absent = ["chacha20-poly1305"] (what every version speaks)}

Sleeve cipher negotiation
-------------------------
A router lists "aes-256-gcm" first when its CPU has AES instructions (about 4x cheaper
per byte than ChaCha20-Poly1305 there; ``preferred_aeads``), and only "chacha20-poly1305"
otherwise (AES without those instructions is slow and not constant-time). The sleeve of
the connection uses the first name of the *initiator's* list that the responder's list
also holds (``choose_aead``): AES-256-GCM exactly when both ends have AES instructions,
ChaCha20-Poly1305 otherwise and with a peer that sends no list (an older version).
Unknown names are skipped (a later version may add one); no common name fails the
handshake at both ends. The choice cannot be downgraded: the hellos are hashed into the
transcript, from which the keys and the confirmation tags come, so a man in the middle
who edits a list makes the tags fail (WRONG_PASSWORD, as any tampering does). The sleeve
keys of an AES session are also expanded under their own labels (``sleeve_labels``), so
no key is ever used with both ciphers. The control channel stays ChaCha20-Poly1305.

Spake frame body (only when the two ends hold more than one pair of candidates)::

    {"spake": bytes (33 * (pairs - 1)): the SPAKE2 messages of pairs 1.. in order}

Confirm frame body::

    {"confirm": bytes (32 * pairs): for each pair k in order,
                HMAC-SHA256(confirm key of pair k, sender's direction,
                            b"weft key confirmation" + transcript of pair k)}

Several passwords (rotation)
----------------------------
A router holds 1..MAX_CANDIDATES passwords in its order of preference (the first is the
one it prefers; every one is accepted). Each end says in its hello how many it holds: a
count, nothing derived from a password. With ``a`` candidates at the initiator and ``b``
at the responder there are ``a * b`` *pairs* (i, j), numbered k in the initiator's order
first (k = i * b + j). Each pair is a complete, independent SPAKE2 run (fresh ephemeral
scalar on both sides): the initiator runs it with its password i, the responder with its
password j, and the run yields matching keys iff those two passwords are equal. Pair 0's
messages ride in the hellos; with one candidate on each side the handshake is exactly the
single-password one above (two round trips). Otherwise both ends, once they have both
hellos, send a Spake frame with the messages of the other pairs, then a Confirm frame with
one tag per pair. Each end then takes the *first pair in order whose tag verifies*: the
first password of the initiator's list that the responder also holds. Both ends compute
the same verdict from the same frames, and no pair verifying means WRONG_PASSWORD, as
with one password::

    initiator                                           responder
    Hello(cands a, spake of pair 0) ---\   /--- Hello(cands b, spake of pair 0)
    [Spake(pairs 1..ab-1)]          ----X---- [Spake(pairs 1..ab-1)]      (only if ab > 1)
    Confirm(ab tags)                ---/   \--- Confirm(ab tags)
    winner = first k whose tag verifies (same k at both ends)

The verdict of a tampered run: a flipped bit can only break a tag, never forge one, so an
end fails or completes on a pair whose passwords are equal; breaking the winner's tag can
make the ends settle on different pairs, and then the first control message fails (as any
tampering with an established stream does). Nothing testable offline crosses the wire:
before the PAKE only counts; the SPAKE2
messages hide the password (as with one); a tag is keyed by a pair's SPAKE2 + X25519
output, which only a party to that run can compute. Online guessing: a peer that does
not know a password learns, per connection attempt, whether any of the at most
MAX_CANDIDATES guesses it put in its own hello equals any of our (at most MAX_CANDIDATES)
passwords; a hello claiming more candidates is refused as malformed. So one attempt
tests at most 4 guesses (at most 16 guess/password comparisons, 2 x 2 = 4 during a
rotation between two single-password states), and the admission limits
(proto/admission.py) bound how many attempts a source gets, as before.

Transcript and key schedule of a pair with more than one pair in play (with a single pair
the transcript is the one above, unchanged)::

    transcript(k) = SHA-256(initiator hello || responder hello ||
                            initiator Spake body || responder Spake body || u8 i || u8 j)
    keys(k)       = the key schedule above with pair k's SPAKE2 key

Error contract: ``decode_hello``, ``decode_confirm`` and ``Handshake.receive_frame``
raise only RemoteProtocolError for anything the peer sent; constructor misuse raises
LocalProtocolError.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Sequence
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
# Spec constant: the most passwords one router may hold (and a hello may claim). It bounds
# the online guesses one connection attempt gives a stranger, and the SPAKE2 runs (CPU)
# a connection costs: at most MAX_CANDIDATES ** 2.
MAX_CANDIDATES = 4

LABEL_CONFIRM_I2R = b"weft v1 confirm i>r"
LABEL_CONFIRM_R2I = b"weft v1 confirm r>i"
LABEL_CONTROL_I2R = b"weft v1 control i>r"
LABEL_CONTROL_R2I = b"weft v1 control r>i"
LABEL_SLEEVE_I2R = b"weft v1 sleeve i>r"
LABEL_SLEEVE_R2I = b"weft v1 sleeve r>i"

# Sleeve AEADs by wire name (proto/sleeve.py maps them to ciphers).
AEAD_CHACHA = "chacha20-poly1305"
AEAD_AES = "aes-256-gcm"
KNOWN_AEADS = (AEAD_AES, AEAD_CHACHA)
DEFAULT_AEADS = (AEAD_CHACHA,)  # what a hello without the key means (older versions)
MAX_AEADS = 8
MAX_AEAD_NAME = 32
NO_COMMON_AEAD = "no sleeve cipher in common"

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
    aead: str = AEAD_CHACHA  # the sleeve cipher both ends agreed on (KNOWN_AEADS)


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
    # Which of our passwords (index in the list we were given) the winning pair used.
    password_index: int | None = None

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
    candidates: int = 1  # passwords the sender holds (only meaningful with a password)
    aeads: tuple[str, ...] = DEFAULT_AEADS  # sleeve AEADs, preferred first (with a password)


def encode_hello(hello: Hello) -> bytes:
    doc: dict[str, Any] = {
        "proto": PROTOCOL_NAME, "vmin": hello.vmin, "vmax": hello.vmax, "name": hello.name,
        "nick": hello.nickname, "uid": hello.uid, "nonce": hello.nonce, "pw": hello.password,
    }
    if hello.password:
        doc["spake"] = hello.spake
        doc["x25519"] = hello.x25519
        if hello.candidates != 1:
            doc["cands"] = hello.candidates
        if hello.aeads != DEFAULT_AEADS:
            doc["aead"] = list(hello.aeads)
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
        if doc.get("spake") is not None or doc.get("x25519") is not None \
                or doc.get("cands") is not None or doc.get("aead") is not None:
            raise _malformed("key exchange fields without a password")
        return Hello(vmin, vmax, name, nick, uid, nonce, False)
    spake_msg = _bytes_field(doc, "spake", SPAKE2_MESSAGE_SIZE, "bad spake2 message")
    if spake_msg[:1] != b"S":
        # spake2 only asserts this, and asserts vanish under python -O.
        raise RemoteProtocolError(BAD_SPAKE)
    x25519 = _bytes_field(doc, "x25519", X25519_KEY_SIZE, "bad x25519 public key")
    cands = 1 if doc.get("cands") is None else _int_field(doc, "cands", 1, MAX_CANDIDATES)
    aeads = DEFAULT_AEADS if doc.get("aead") is None else _aead_field(doc.get("aead"))
    return Hello(vmin, vmax, name, nick, uid, nonce, True, spake_msg, x25519, cands, aeads)


def _aead_field(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_AEADS or not all(
            isinstance(v, str) and 0 < len(v) <= MAX_AEAD_NAME for v in value):
        raise _malformed("bad 'aead'")
    return tuple(value)


def preferred_aeads(aes_instructions: bool) -> tuple[str, ...]:
    """The sleeve AEADs a router offers, preferred first: AES-256-GCM only when its CPU
    has AES instructions (the host reads them, e.g. the ``aes`` flag of /proc/cpuinfo)."""
    return (AEAD_AES, AEAD_CHACHA) if aes_instructions else (AEAD_CHACHA,)


def choose_aead(initiator: Sequence[str], responder: Sequence[str]) -> str:
    """The sleeve AEAD of a connection: the first of the initiator's names (that we know)
    the responder also offers. RemoteProtocolError when there is none."""
    for name in initiator:
        if name in KNOWN_AEADS and name in responder:
            return name
    raise RemoteProtocolError(NO_COMMON_AEAD)


def sleeve_labels(aead: str) -> tuple[bytes, bytes]:
    """The HKDF labels of the sleeve keys (i>r, r>i) for this AEAD: ChaCha20's are the
    original ones (older peers), any other cipher's name is appended."""
    if aead == AEAD_CHACHA:
        return LABEL_SLEEVE_I2R, LABEL_SLEEVE_R2I
    suffix = b" " + aead.encode()
    return LABEL_SLEEVE_I2R + suffix, LABEL_SLEEVE_R2I + suffix


def validate_aeads(aeads: Sequence[str]) -> None:
    """Refuse a local AEAD list we could not offer (LocalProtocolError)."""
    if not 1 <= len(aeads) <= MAX_AEADS or any(a not in KNOWN_AEADS for a in aeads) \
            or len(set(aeads)) != len(aeads):
        raise LocalProtocolError(f"sleeve ciphers must be distinct names of {KNOWN_AEADS}")


def encode_confirm(tag: bytes) -> bytes:
    """A Confirm frame: one tag, or the tags of every pair concatenated in order."""
    return pack({"confirm": tag})


def decode_confirm(body: bytes) -> bytes:
    """Decode a Confirm frame into its 32-byte tag; only RemoteProtocolError escapes."""
    return decode_confirms(body, 1)[0]


def decode_confirms(body: bytes, pairs: int) -> list[bytes]:
    """Decode a Confirm frame carrying the tags of ``pairs`` pairs; only
    RemoteProtocolError escapes."""
    doc = unpack(body)
    if not isinstance(doc, dict):
        raise _malformed("expected a key confirmation")
    tags = doc.get("confirm")
    if not isinstance(tags, bytes) or len(tags) != CONFIRM_SIZE * pairs:
        raise _malformed("expected a key confirmation")
    return [tags[k:k + CONFIRM_SIZE] for k in range(0, len(tags), CONFIRM_SIZE)]


def encode_spakes(messages: list[bytes]) -> bytes:
    """A Spake frame: the SPAKE2 messages of pairs 1.. concatenated in order."""
    return pack({"spake": b"".join(messages)})


def decode_spakes(body: bytes, count: int) -> list[bytes]:
    """The ``count`` SPAKE2 messages of a Spake frame; only RemoteProtocolError escapes."""
    doc = unpack(body)
    if not isinstance(doc, dict):
        raise _malformed("expected spake2 messages")
    blob = doc.get("spake")
    if not isinstance(blob, bytes) or len(blob) != SPAKE2_MESSAGE_SIZE * count:
        raise _malformed("expected spake2 messages")
    messages = [blob[k:k + SPAKE2_MESSAGE_SIZE]
                for k in range(0, len(blob), SPAKE2_MESSAGE_SIZE)]
    if any(m[:1] != b"S" for m in messages):
        raise RemoteProtocolError(BAD_SPAKE)
    return messages


# --------------------------------------------------------------------------- decisions

@dataclass(frozen=True, slots=True)
class Agreement:
    version: int
    conn_uid: int
    encrypted: bool
    aead: str = AEAD_CHACHA  # the sleeve cipher (meaningful only when encrypted)


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
    aead = choose_aead(initiator.aeads, responder.aeads) if local.password else AEAD_CHACHA
    return Agreement(version, conn_uid, local.password, aead)


def transcript_hash(initiator_hello: bytes, responder_hello: bytes, *more: bytes) -> bytes:
    """SHA-256 of the hellos (and, with several pairs, what ``more`` adds)."""
    return hashlib.sha256(b"".join((initiator_hello, responder_hello, *more))).digest()


def derive_keys(spake_key: bytes, dh_shared: bytes, transcript: bytes, *,
                outbound: bool, aead: str = AEAD_CHACHA) -> DerivedKeys:
    """Run the key schedule and orient its output for the initiator or the responder."""
    prk = hmac.new(transcript, spake_key + dh_shared, hashlib.sha256).digest()

    def expand(label: bytes) -> bytes:
        return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=label).derive(prk)

    sleeve_i2r, sleeve_r2i = sleeve_labels(aead)
    i2r = (expand(LABEL_CONFIRM_I2R), expand(LABEL_CONTROL_I2R), expand(sleeve_i2r))
    r2i = (expand(LABEL_CONFIRM_R2I), expand(LABEL_CONTROL_R2I), expand(sleeve_r2i))
    send, recv = (i2r, r2i) if outbound else (r2i, i2r)
    return DerivedKeys(
        confirm_send=send[0], confirm_recv=recv[0],
        control_send=send[1], control_recv=recv[1],
        sleeve=SessionKeys(sleeve_send=send[2], sleeve_recv=recv[2], aead=aead),
    )


def confirmation_tag(confirm_key: bytes, transcript: bytes) -> bytes:
    return hmac.new(confirm_key, CONFIRM_CONTEXT + transcript, hashlib.sha256).digest()


# --------------------------------------------------------------------------- machine

class HandshakeStep(enum.Enum):
    """What the handshake waits for next."""

    HELLO = "hello"
    SPAKE = "spake"  # only with more than one pair of candidates
    CONFIRM = "confirm"
    NOTHING = "nothing"  # completed or failed


class Handshake:
    """One side of the handshake, over frame bodies (framing is the caller's job).

    Construct it, send ``hello_body`` at once, then feed each received frame body to
    ``receive_frame``, sending whatever bodies it returns. ``result`` is set once the
    handshake completed; a RemoteProtocolError from ``receive_frame`` ends it.
    ``passwords`` (or the single ``password``) are our candidates, preferred first;
    ``aeads`` the sleeve ciphers we offer, preferred first (``preferred_aeads``).
    """

    def __init__(self, *, outbound: bool, local: LocalIdentity, random_bytes: RandomBytes,
                 password: bytes | None = None,
                 versions: tuple[int, int] = PROTOCOL_VERSIONS,
                 passwords: Sequence[bytes] | None = None,
                 aeads: Sequence[str] = DEFAULT_AEADS) -> None:
        validate_identity(local)
        validate_aeads(aeads)
        vmin, vmax = versions
        if not 1 <= vmin <= vmax <= MAX_VERSION_NUMBER:
            raise LocalProtocolError(f"invalid protocol version range {vmin}..{vmax}")
        if passwords is not None and password is not None:
            raise LocalProtocolError("give password or passwords, not both")
        cands = tuple(passwords) if passwords is not None else (
            (password,) if password is not None else ())
        validate_passwords(cands, allow_none=True)
        self.outbound = outbound
        self.step = HandshakeStep.HELLO
        self.result: HandshakeResult | None = None
        self._random_bytes = random_bytes
        self._passwords = cands
        nonce = int.from_bytes(random_bytes(8), "big")
        self._spakes: list[spake2.SPAKE2_Symmetric] = []
        self._dh: X25519PrivateKey | None = None
        spake_msg = x25519_pub = None
        if cands:
            self._dh = X25519PrivateKey.from_private_bytes(random_bytes(32))
            x25519_pub = self._dh.public_key().public_bytes_raw()
            self._spakes.append(spake2.SPAKE2_Symmetric(
                cands[0], idSymmetric=SPAKE2_ID, entropy_f=random_bytes))
            spake_msg = self._spakes[0].start()
        self.hello = Hello(vmin, vmax, local.name, local.nickname, local.uid, nonce,
                           bool(cands), spake_msg, x25519_pub, max(1, len(cands)),
                           tuple(aeads))
        self.hello_body = encode_hello(self.hello)
        if len(self.hello_body) > HANDSHAKE_MAX_FRAME:  # cannot happen with valid fields
            raise LocalProtocolError("hello exceeds the handshake frame cap")
        self._pending: HandshakeResult | None = None
        self._transcript = b""
        # with several pairs: (i, j) of each pair, the peer's hello and our spake bodies
        self._pairs: list[tuple[int, int]] = [(0, 0)]
        self._remote_body = b""
        self._remote_hello: Hello | None = None
        self._identity: RemoteIdentity | None = None
        self._agreement: Agreement | None = None
        self._dh_shared = b""
        self._spake_body = b""
        self._candidates: list[tuple[DerivedKeys, bytes, int]] = []  # keys, transcript, index

    @property
    def passwords(self) -> tuple[bytes, ...]:
        """Our candidates, as given (``result.password_index`` indexes them)."""
        return self._passwords

    def receive_frame(self, body: bytes) -> list[bytes]:
        """Consume one frame body; return the frame bodies to send in reply."""
        if self.step is HandshakeStep.HELLO:
            return self._receive_hello(body)
        if self.step is HandshakeStep.SPAKE:
            return self._receive_spakes(body)
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
        assert self._dh is not None and remote.spake is not None and remote.x25519 is not None
        self._dh_shared = self._exchange(remote.x25519)
        self._dh = None  # ephemeral secrets are dropped as soon as they are used
        self._identity, self._agreement = identity, agreement
        self._remote_body, self._remote_hello = body, remote
        a, b = ((self.hello.candidates, remote.candidates) if self.outbound
                else (remote.candidates, self.hello.candidates))
        self._pairs = [(i, j) for i in range(a) for j in range(b)]
        if len(self._pairs) == 1:
            initiator, responder = self._ordered(self.hello_body, body)
            self._transcript = transcript_hash(initiator, responder)
            spake_key = self._finish_spake(self._spakes[0], remote.spake)
            keys = derive_keys(spake_key, self._dh_shared, self._transcript,
                               outbound=self.outbound, aead=agreement.aead)
            self._spakes = []
            self._candidates = [(keys, self._transcript, 0)]
            self.step = HandshakeStep.CONFIRM
            return [encode_confirm(confirmation_tag(keys.confirm_send, self._transcript))]
        # Several pairs: a fresh SPAKE2 run for every pair but the first (in the hellos).
        messages = []
        for i, j in self._pairs[1:]:
            run = spake2.SPAKE2_Symmetric(self._passwords[i if self.outbound else j],
                                          idSymmetric=SPAKE2_ID, entropy_f=self._random_bytes)
            messages.append(run.start())
            self._spakes.append(run)
        self._spake_body = encode_spakes(messages)
        self.step = HandshakeStep.SPAKE
        return [self._spake_body]

    def _receive_spakes(self, body: bytes) -> list[bytes]:
        self.step = HandshakeStep.NOTHING
        remote = self._remote_hello
        assert remote is not None and remote.spake is not None
        theirs = [remote.spake, *decode_spakes(body, len(self._pairs) - 1)]
        hello_i, hello_r = self._ordered(self.hello_body, self._remote_body)
        spake_i, spake_r = self._ordered(self._spake_body, body)
        tags = []
        for (i, j), run, message in zip(self._pairs, self._spakes, theirs, strict=True):
            transcript = transcript_hash(hello_i, hello_r, spake_i, spake_r, bytes((i, j)))
            assert self._agreement is not None
            keys = derive_keys(self._finish_spake(run, message), self._dh_shared, transcript,
                               outbound=self.outbound, aead=self._agreement.aead)
            self._candidates.append((keys, transcript, i if self.outbound else j))
            tags.append(confirmation_tag(keys.confirm_send, transcript))
        self._spakes = []
        self.step = HandshakeStep.CONFIRM
        return [encode_confirm(b"".join(tags))]

    def _ordered(self, ours: bytes, theirs: bytes) -> tuple[bytes, bytes]:
        return (ours, theirs) if self.outbound else (theirs, ours)

    @staticmethod
    def _finish_spake(run: spake2.SPAKE2_Symmetric, message: bytes) -> bytes:
        try:
            key = run.finish(message)
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
        candidates, self._candidates = self._candidates, []
        tags = decode_confirms(body, len(candidates))
        identity, agreement = self._identity, self._agreement
        assert identity is not None and agreement is not None
        # Every tag is checked (constant work whatever matches); the first that verifies
        # wins, at both ends: the initiator's most preferred password the responder holds.
        verified = [hmac.compare_digest(tag, confirmation_tag(keys.confirm_recv, transcript))
                    for tag, (keys, transcript, _) in zip(tags, candidates, strict=True)]
        if not any(verified):
            raise RemoteProtocolError(WRONG_PASSWORD)
        keys, _, index = candidates[verified.index(True)]
        self.result = HandshakeResult(identity, agreement.conn_uid, agreement.version, keys,
                                      index)


def validate_passwords(passwords: Sequence[bytes], *, allow_none: bool = False) -> None:
    """Refuse a candidate list we could not use (LocalProtocolError): 1..MAX_CANDIDATES
    distinct non-empty byte strings (none at all only if ``allow_none``)."""
    if not passwords and not allow_none:
        raise LocalProtocolError("no password")
    if len(passwords) > MAX_CANDIDATES:
        raise LocalProtocolError(f"at most {MAX_CANDIDATES} passwords, got {len(passwords)}")
    for pw in passwords:
        if not isinstance(pw, bytes) or not pw:
            raise LocalProtocolError("the password must be non-empty bytes")
    if len(set(passwords)) != len(passwords):
        raise LocalProtocolError("the same password is given twice")


def validate_identity(local: LocalIdentity) -> None:
    """Refuse a local identity we could not put in a hello (LocalProtocolError)."""
    if type(local.name) is not int or not 1 <= local.name <= MAX_NAME:
        raise LocalProtocolError(f"invalid peer name {local.name!r}")
    if type(local.uid) is not int or not 1 <= local.uid < UID_LIMIT:
        raise LocalProtocolError(f"invalid peer uid {local.uid!r}")
    if not isinstance(local.nickname, str) or len(local.nickname) > MAX_NICKNAME_LEN:
        raise LocalProtocolError(f"nickname longer than {MAX_NICKNAME_LEN} characters")
