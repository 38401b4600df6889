r"""One control connection to a peer, as a sans-IO state machine.

Theory of operation
-------------------
The router owns the TCP socket; this object owns everything else. Three inputs, three
outputs, as in aioquic::

    receive_data(bytes, now) ─┐                       ┌─▶ data_to_send() -> bytes
    send_message(msg, now)  ──┼──▶  Connection  ──────┼─▶ next_event() -> Event | None
    close(reason, now)      ──┤                       └─▶ get_timer() -> float | None
    handle_timer(now)       ──┘

It never reads a clock (``now`` is an argument, in seconds) and draws randomness only
through the ``random_bytes`` it is given, so the same object runs in the router, in
the simulator under virtual time, and in fuzz harnesses.

Wire format: a stream of frames (proto/framing.py), capped at HANDSHAKE_MAX_FRAME until
the handshake completes and at MESSAGE_MAX_FRAME after::

    +-------------+--------------------------------------------------------------+
    | len: u32 BE | body                                                         |
    +-------------+--------------------------------------------------------------+
    handshake:        body = Hello / Confirm msgpack map (proto/handshake.py)
    plaintext:        body = encode_message(msg)              (no password)
    encrypted:        body = ChaCha20-Poly1305(control key of the sender's direction,
                             nonce = 0^4 || frame counter u64 LE, encode_message(msg))

The counter is implicit: both ends count frames from 0, so a replayed, reordered,
dropped or altered frame fails to open and ends the connection.

State machine (the state is named for what the connection waits for)::

                     hello in, no password
    AWAITING_HELLO ───────────────────────────────────────────┐
         │ hello in, password: send Confirm                   ▼
         │  (several candidates: send Spake, AWAITING_SPAKE, spake in: send Confirm)
         └────────────▶ AWAITING_CONFIRM ──confirm ok──▶ ESTABLISHED ◀─┐ Gossip (event),
                             │                                │   └────┘ Heartbeat (absorbed)
                             │ bad frame, wrong password,     │ bad frame, Goodbye in,
                             │ handshake timeout              │ idle timeout, close()
                             ▼                                ▼
                          CLOSED ◀──────────────────────────────

Every failure emits exactly one ConnectionFailed(reason) and moves to CLOSED, where
input is ignored; ``close()`` is local and emits no event. A failure found on an
established connection queues a Goodbye(reason) first, so the peer's log says why.

Rekeying an established connection (make before break)
-------------------------------------------------------
``rekey(passwords, now)`` runs a whole new handshake (proto/handshake.py: new hellos, new
ephemeral X25519 and SPAKE2 runs, the same candidate rules, the dialler still the
initiator) *inside* the established connection: each of its frame bodies travels as a
``Rekey`` message, sealed under the current keys. Either end may start one (when its
password file changed); an end that receives a Rekey hello while idle answers with its own
hello, so two ends starting at once simply run the one handshake both speak first in.
The peer's name, uid and protocol version must not change. When our side of it completes
(the peer's confirmation verified)::

    us:   RekeyCompleted(sleeve_uid, sleeve_keys) event (the data plane can now OPEN
          datagrams under the new sleeve keys), then send KeySwitch under the old control
          key; every later frame we send is sealed with the new control key
    peer's KeySwitch arrives (it completed too, and opens our new datagrams):
          PeerSwitchedKeys event (the data plane may now SEAL with the new sleeve keys);
          every later frame from the peer opens with the new control key

The new sleeve session is named by the new handshake's connection uid (``sleeve_uid``),
so a receiver tells old datagrams from new ones by their header during the overlap. The
connection's ``conn_uid`` (duplicate tie-break) stays the first handshake's. A run that
finds no common password ends with RekeyFailed(WRONG_PASSWORD) at both ends and the
connection goes on with the keys it had (the mesh decides whether that is acceptable); any
other fault in a run is the authenticated peer's bug and ends the connection. A
``rekey`` call during a run is remembered and starts another run when this one ends.

Timers: the handshake must finish within ``handshake_timeout`` of construction; once
established a Heartbeat goes out after ``heartbeat_interval`` of send-silence, and
``timeout`` without any received byte ends the connection. The owner may change both at
any time (the mesh slows an idle connection down while its data link proves the peer
alive), give a fresh ``grace`` before the timeout, and have a Heartbeat answered by one
of ours when we were silent for ``answer_after`` (a peer on a short timeout then hears from
us as often as it asks; its Heartbeat arrives right after it sent, so it never answers
back: no ping-pong).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .aead import TAG_SIZE, Opener, Sealer
from .errors import LocalProtocolError, RemoteProtocolError
from .framing import HANDSHAKE_MAX_FRAME, MESSAGE_MAX_FRAME, FrameDecoder, encode_frame
from .handshake import (
    DEFAULT_AEADS,
    HANDSHAKE_TIMEOUT,
    PROTOCOL_VERSIONS,
    WRONG_PASSWORD,
    Handshake,
    HandshakeResult,
    HandshakeStep,
    LocalIdentity,
    RandomBytes,
    RemoteIdentity,
    SessionKeys,
    validate_passwords,
)
from .messages import (
    Goodbye,
    Gossip,
    Heartbeat,
    KeySwitch,
    Message,
    Rekey,
    decode_message,
    encode_message,
)

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL", "DEFAULT_TIMEOUT", "Connection", "ConnectionFailed",
    "ConnectionState", "Event", "HandshakeCompleted", "LocalIdentity", "MessageReceived",
    "PeerSwitchedKeys", "RekeyCompleted", "RekeyFailed", "RemoteIdentity", "SessionKeys",
    "ConnectionPair", "drain_events",
]

DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 15.0


class ConnectionState(enum.Enum):
    AWAITING_HELLO = "awaiting hello"
    AWAITING_SPAKE = "awaiting spake"  # several password candidates: their SPAKE2 runs
    AWAITING_CONFIRM = "awaiting confirm"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    remote: RemoteIdentity
    conn_uid: int
    version: int
    encrypted: bool
    sleeve_keys: SessionKeys | None
    password_index: int | None = None  # which of our passwords (index) won


@dataclass(frozen=True, slots=True)
class RekeyCompleted:
    """A rekey run completed on our side: open datagrams of ``sleeve_uid`` with the new
    keys from now on (keep sealing with the old until PeerSwitchedKeys)."""

    sleeve_uid: int
    sleeve_keys: SessionKeys
    password_index: int


@dataclass(frozen=True, slots=True)
class PeerSwitchedKeys:
    """The peer completed the rekey run too: seal with the new sleeve keys now."""


@dataclass(frozen=True, slots=True)
class RekeyFailed:
    """A rekey run found no common password; the connection keeps its keys."""

    reason: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A Gossip message arrived (heartbeats are absorbed, goodbyes end the connection)."""

    message: Message


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """Terminal: the connection is CLOSED and ignores further input."""

    reason: str


Event = (HandshakeCompleted | MessageReceived | ConnectionFailed | RekeyCompleted
         | PeerSwitchedKeys | RekeyFailed)

_STATE_OF_STEP = {
    HandshakeStep.HELLO: ConnectionState.AWAITING_HELLO,
    HandshakeStep.SPAKE: ConnectionState.AWAITING_SPAKE,
    HandshakeStep.CONFIRM: ConnectionState.AWAITING_CONFIRM,
}


class Connection:
    """The control connection to one peer; see the module docstring."""

    def __init__(
        self,
        *,
        outbound: bool,
        local: LocalIdentity,
        password: bytes | None = None,
        now: float,
        random_bytes: RandomBytes,
        versions: tuple[int, int] = PROTOCOL_VERSIONS,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        passwords: Sequence[bytes] | None = None,
        aeads: Sequence[str] = DEFAULT_AEADS,
    ) -> None:
        if not heartbeat_interval > 0 or not timeout > 0 or not handshake_timeout > 0:
            raise LocalProtocolError("heartbeat interval and timeouts must be positive")
        self.outbound = outbound
        self.local = local
        self._heartbeat_interval = heartbeat_interval
        self._timeout = timeout
        self.answer_after = math.inf  # answer a Heartbeat when silent this long
        self._random_bytes = random_bytes
        self._versions = versions
        self._handshake: Handshake | None = Handshake(
            outbound=outbound, local=local, password=password, random_bytes=random_bytes,
            versions=versions, passwords=passwords, aeads=aeads)
        self._aeads = tuple(aeads)
        self._passwords: tuple[bytes, ...] = self._handshake.passwords
        self._password: bytes | None = None  # the one the last completed handshake used
        self._rekey: Handshake | None = None
        self._rekey_again = False
        self._next_opener: Opener | None = None  # until the peer's KeySwitch
        self._handshake_deadline = now + handshake_timeout
        self._state = ConnectionState.AWAITING_HELLO
        self._decoder = FrameDecoder(max_size=HANDSHAKE_MAX_FRAME)
        self._out = bytearray()
        self._events: list[Event] = []
        self._result: HandshakeResult | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._failure_reason: str | None = None
        self._bytes_sent = 0
        self._bytes_received = 0
        self._last_send = now
        self._last_recv = now
        # Speak first: the hello needs nothing from the peer (one round trip saved).
        self._queue_frame(self._handshake.hello_body, now, HANDSHAKE_MAX_FRAME)

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def established(self) -> bool:
        return self._state is ConnectionState.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self._state is ConnectionState.CLOSED

    @property
    def remote(self) -> RemoteIdentity | None:
        """The peer, once the handshake completed (never from an unconfirmed hello)."""
        return self._result.remote if self._result else None

    @property
    def encrypted(self) -> bool:
        return self._result is not None and self._result.encrypted

    @property
    def conn_uid(self) -> int | None:
        return self._result.conn_uid if self._result else None

    @property
    def version(self) -> int | None:
        return self._result.version if self._result else None

    @property
    def password(self) -> bytes | None:
        """The password the connection's current keys came from (None: unencrypted or
        not established yet). Secret: for comparisons only, never for logs."""
        return self._password

    @property
    def passwords(self) -> tuple[bytes, ...]:
        """The candidates the next handshake run uses (the last ``rekey``'s or the
        constructor's)."""
        return self._passwords

    @property
    def rekeying(self) -> bool:
        """A rekey run is in progress, or the peer's KeySwitch is awaited."""
        return self._rekey is not None or self._next_opener is not None

    @property
    def failure_reason(self) -> str | None:
        return self._failure_reason

    @property
    def bytes_sent(self) -> int:
        """Bytes queued for sending so far (handshake included)."""
        return self._bytes_sent

    @property
    def bytes_received(self) -> int:
        """Bytes handed to receive_data while the connection was open."""
        return self._bytes_received

    # ------------------------------------------------------------------ inputs

    def receive_data(self, data: bytes, now: float) -> None:
        """Consume bytes from the peer. Remote garbage becomes ConnectionFailed, never
        an exception."""
        if self._state is ConnectionState.CLOSED or not data:
            return
        if self._handshake is not None and now >= self._handshake_deadline:
            # The driver was late with handle_timer: the deadline still wins, so the
            # outcome does not depend on how timers and reads interleave.
            self._fail("handshake timed out", now)
            return
        self._bytes_received += len(data)
        self._last_recv = now
        self._decoder.feed(data)
        while not self.closed:  # a frame may have ended it
            try:
                body = self._decoder.next_frame()
            except RemoteProtocolError as exc:
                reason = exc.reason
                if self._state is ConnectionState.AWAITING_HELLO:
                    reason = f"not a weft peer: {reason}"
                self._fail(reason, now)
                return
            if body is None:
                return
            try:
                self._handle_frame(body, now)
            except RemoteProtocolError as exc:
                self._fail(exc.reason, now)

    def send_message(self, msg: Message, now: float) -> None:
        if self._state is not ConnectionState.ESTABLISHED:
            raise LocalProtocolError(
                f"cannot send a message: the connection is {self._state.value}")
        self._send_message(msg, now)

    def rekey(self, passwords: Sequence[bytes], now: float) -> None:
        """Run a new handshake on this established encrypted connection with these
        candidates (see the module docstring); during a run, run again after it."""
        if self._state is not ConnectionState.ESTABLISHED or not self.encrypted:
            raise LocalProtocolError("only an established encrypted connection can rekey")
        validate_passwords(passwords)
        self._passwords = tuple(passwords)
        if self._rekey is not None:
            self._rekey_again = True
            return
        self._start_rekey(now)

    def close(self, reason: str, now: float) -> None:
        """Close locally: tell an established peer why, then CLOSED. Emits no event."""
        if self._state is ConnectionState.CLOSED:
            return
        if self._state is ConnectionState.ESTABLISHED:
            self._try_goodbye(reason, now)
        self._enter_closed()

    @property
    def heartbeat_interval(self) -> float:
        return self._heartbeat_interval

    @property
    def timeout(self) -> float:
        return self._timeout

    def set_timers(self, *, heartbeat_interval: float, timeout: float) -> None:
        """New heartbeat interval and timeout, from now on."""
        if not heartbeat_interval > 0 or not timeout > 0:
            raise LocalProtocolError("heartbeat interval and timeouts must be positive")
        self._heartbeat_interval, self._timeout = heartbeat_interval, timeout

    def grace(self, now: float, seconds: float) -> None:
        """At least ``seconds`` from now before the timeout may end the connection."""
        self._last_recv = max(self._last_recv, now - self._timeout + seconds)

    def handle_timer(self, now: float) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        if self._handshake is not None:
            if now >= self._handshake_deadline:
                self._fail("handshake timed out", now)
            return
        if now >= self._last_recv + self._timeout:
            self._fail(f"peer timed out: nothing received for {self._timeout:g} s", now)
            return
        if now >= self._last_send + self._heartbeat_interval:
            self._send_message(Heartbeat(), now)

    # ------------------------------------------------------------------ outputs

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        if self._state is ConnectionState.CLOSED:
            return None
        if self._handshake is not None:
            return self._handshake_deadline
        return min(self._last_send + self._heartbeat_interval, self._last_recv + self._timeout)

    # ------------------------------------------------------------------ internals

    def _handle_frame(self, body: bytes, now: float) -> None:
        if self._handshake is not None:
            self._handle_handshake_frame(self._handshake, body, now)
            return
        plaintext = self._opener.open(body) if self._opener is not None else body
        msg = decode_message(plaintext)
        if isinstance(msg, Gossip):
            self._events.append(MessageReceived(msg))
        elif isinstance(msg, Goodbye):
            # The peer is gone: answering it with a Goodbye of our own would be noise.
            self._fail(f"peer closed the connection: {msg.reason}", now, notify_peer=False)
        elif isinstance(msg, Rekey):
            self._on_rekey_frame(msg.body, now)
        elif isinstance(msg, KeySwitch):
            if self._next_opener is None:
                raise RemoteProtocolError("unexpected key switch")
            self._opener, self._next_opener = self._next_opener, None
            self._events.append(PeerSwitchedKeys())
        elif isinstance(msg, Heartbeat) and now - self._last_send >= self.answer_after:
            self._send_message(Heartbeat(), now)  # the peer waits on a shorter timeout
        # Otherwise a Heartbeat only proves liveness, which receive_data already noted.

    # ------------------------------------------------------------------ rekeying

    def _start_rekey(self, now: float) -> None:
        self._rekey_again = False
        self._rekey = Handshake(outbound=self.outbound, local=self.local,
                                passwords=self._passwords, random_bytes=self._random_bytes,
                                versions=self._versions, aeads=self._aeads)
        self._send_message(Rekey(self._rekey.hello_body), now)

    def _on_rekey_frame(self, body: bytes, now: float) -> None:
        if not self.encrypted:
            raise RemoteProtocolError("rekey on an unencrypted connection")
        if self._rekey is None:
            if self._next_opener is not None:
                raise RemoteProtocolError("rekey before the key switch")
            self._start_rekey(now)  # the peer started one: answer with our hello
        run = self._rekey
        assert run is not None
        try:
            replies = run.receive_frame(body)
        except RemoteProtocolError as exc:
            if exc.reason != WRONG_PASSWORD:
                raise  # an authenticated peer sent garbage: the connection ends
            self._rekey = None
            self._events.append(RekeyFailed(exc.reason))
            if self._rekey_again:
                self._start_rekey(now)
            return
        for reply in replies:
            self._send_message(Rekey(reply), now)
        if run.result is not None:
            self._rekey_completed(run, run.result, now)

    def _rekey_completed(self, run: Handshake, result: HandshakeResult, now: float) -> None:
        current = self._result
        assert current is not None and result.keys is not None
        assert result.password_index is not None
        if result.remote.name != current.remote.name or result.remote.uid != current.remote.uid \
                or result.version != current.version:
            raise RemoteProtocolError("rekey by another peer or version")
        self._rekey = None
        self._send_message(KeySwitch(), now)  # the last frame under the old key
        self._sealer = Sealer(result.keys.control_send)
        self._next_opener = Opener(result.keys.control_recv, what="control message")
        self._password = run.passwords[result.password_index]
        self._events.append(RekeyCompleted(result.conn_uid, result.keys.sleeve,
                                           result.password_index))
        if self._rekey_again:
            self._start_rekey(now)

    def _handle_handshake_frame(self, handshake: Handshake, body: bytes, now: float) -> None:
        for reply in handshake.receive_frame(body):
            self._queue_frame(reply, now, HANDSHAKE_MAX_FRAME)
        result = handshake.result
        if result is None:
            self._state = _STATE_OF_STEP[handshake.step]
            return
        self._result = result
        self._handshake = None  # drops the ephemeral secrets with it
        if result.keys is not None:
            self._sealer = Sealer(result.keys.control_send)
            self._opener = Opener(result.keys.control_recv, what="control message")
            assert result.password_index is not None
            self._password = handshake.passwords[result.password_index]
        self._decoder.max_size = MESSAGE_MAX_FRAME
        self._state = ConnectionState.ESTABLISHED
        # Timers restart at establishment: the handshake's frames are not heartbeats.
        self._last_send = self._last_recv = now
        self._events.append(HandshakeCompleted(
            remote=result.remote, conn_uid=result.conn_uid, version=result.version,
            encrypted=result.encrypted,
            sleeve_keys=result.keys.sleeve if result.keys is not None else None,
            password_index=result.password_index))

    def _send_message(self, msg: Message, now: float) -> None:
        body = encode_message(msg)
        if self._sealer is not None:
            # Check the cap before sealing: a refused frame must not consume a counter,
            # or every later frame would open under the wrong nonce.
            if len(body) + TAG_SIZE > MESSAGE_MAX_FRAME:
                raise LocalProtocolError(
                    f"message of {len(body)} bytes exceeds the cap of {MESSAGE_MAX_FRAME}")
            body = self._sealer.seal(body)
        self._queue_frame(body, now, MESSAGE_MAX_FRAME)

    def _queue_frame(self, body: bytes, now: float, cap: int) -> None:
        frame = encode_frame(body, cap)
        self._out += frame
        self._bytes_sent += len(frame)
        self._last_send = now

    def _try_goodbye(self, reason: str, now: float) -> None:
        try:
            self._send_message(Goodbye(reason), now)
        except LocalProtocolError:
            pass  # counter exhausted: the peer will see the connection drop instead

    def _fail(self, reason: str, now: float, *, notify_peer: bool = True) -> None:
        if self._state is ConnectionState.ESTABLISHED and notify_peer:
            self._try_goodbye(reason, now)
        self._enter_closed()
        self._failure_reason = reason
        self._events.append(ConnectionFailed(reason))

    def _enter_closed(self) -> None:
        self._state = ConnectionState.CLOSED
        self._handshake = None
        self._rekey = None
        self._next_opener = None
        self._sealer = None
        self._opener = None
        self._decoder.take_remaining()  # free whatever a misbehaving peer left buffered


class ConnectionPair:
    """Two connections wired back to back in memory: an in-process "TCP" for tests,
    fuzz harnesses and the simulator (a test double shipped with the code it doubles).

    ``pump`` carries bytes both ways until neither side has anything to send, in chunks
    of ``chunk_size`` bytes (None: whole). Everything carried is kept in ``sent_by_a`` /
    ``sent_by_b`` so tests can look at the wire; ``carry`` is the hook a test overrides
    to tamper with, drop or record bytes in flight.
    """

    def __init__(self, a: Connection, b: Connection) -> None:
        self.a = a
        self.b = b
        self.sent_by_a = bytearray()
        self.sent_by_b = bytearray()

    def carry(self, data: bytes, offset: int, from_a: bool) -> bytes:
        """Bytes ``data`` leave one side at stream ``offset``; return what arrives."""
        return data

    def pump(self, now: float, chunk_size: int | None = None) -> int:
        """Carry bytes until both sides are quiet; return how many bytes were sent."""
        moved = 0
        while True:
            from_a = self.a.data_to_send()
            from_b = self.b.data_to_send()
            if not from_a and not from_b:
                return moved
            moved += len(from_a) + len(from_b)
            arriving_at_b = self.carry(from_a, len(self.sent_by_a), True)
            arriving_at_a = self.carry(from_b, len(self.sent_by_b), False)
            self.sent_by_a += from_a
            self.sent_by_b += from_b
            _deliver(self.b, arriving_at_b, now, chunk_size)
            _deliver(self.a, arriving_at_a, now, chunk_size)

    def events(self) -> tuple[list[Event], list[Event]]:
        """Drain both sides' events."""
        return drain_events(self.a), drain_events(self.b)

    def next_timer(self) -> float | None:
        timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
        return min(timers) if timers else None

    def handle_timers(self, now: float) -> None:
        for conn in (self.a, self.b):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)


def _deliver(conn: Connection, data: bytes, now: float, chunk_size: int | None) -> None:
    if chunk_size is None:
        conn.receive_data(data, now)
        return
    for start in range(0, len(data), chunk_size):
        conn.receive_data(data[start:start + chunk_size], now)


def drain_events(conn: Connection) -> list[Event]:
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events
