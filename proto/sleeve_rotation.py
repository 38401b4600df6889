r"""The sleeve sessions of one connection across a change of keys (make before break).

Theory of operation
-------------------
A connection that runs a new handshake (proto/connection.py, "Rekeying") gets a new
sleeve session: new keys, and a new ``sleeve_uid`` in the datagram header
(proto/sleeve.py), so a receiver tells the sessions apart by the header alone. The switch
happens in two steps at each end, driven by the control connection's events::

    RekeyCompleted (agreed)      next := new session: it OPENS datagrams, seals nothing
                                 (the peer may already seal with it)
    PeerSwitchedKeys (switched)  old := current, current := next: SEAL with the new keys
                                 now (the peer opens them: it told us so); the old
                                 session still opens until OVERLAP has passed, for the
                                 datagrams the peer sealed before it switched, then it is
                                 erased (dropped references, as with rekeying)

    ends:  A                                     B
           agreed  ── KeySwitch ──▶  ... ◀── KeySwitch ──  agreed
           switched (seal new)                           switched (seal new)
           old erased after OVERLAP                      old erased after OVERLAP

Between the two steps either end opens both the old and the new session's datagrams, so
nothing sealed by either end in any order is refused for its key; each session keeps its
own replay window, so nothing is delivered twice. ``session_for(uid)`` finds the session
of a datagram; ``uids`` lists every uid the connection was ever known by (the data plane
indexes them all until the connection goes, so a late datagram of an erased session is a
counted drop, not an unknown connection).
"""

from __future__ import annotations

from .handshake import SessionKeys
from .sleeve import SleeveSession

OVERLAP = 10.0  # seconds the old session still opens after we switched (spec: generous)


class SessionRotation:
    """Current, next and old sleeve sessions of one connection; pure (``now`` given)."""

    __slots__ = ("current", "next", "old", "old_until", "uids", "rekey_interval")

    def __init__(self, current: SleeveSession) -> None:
        self.current = current
        self.next: SleeveSession | None = None
        self.old: SleeveSession | None = None
        self.old_until = 0.0
        self.uids: list[int] = [current.conn_uid]
        self.rekey_interval = current.rekey_interval

    def agreed(self, sleeve_uid: int, keys: SessionKeys, now: float) -> SleeveSession:
        """The new keys are agreed on our side: open with them from now on."""
        self.next = SleeveSession(conn_uid=sleeve_uid, send_key=keys.sleeve_send,
                                  recv_key=keys.sleeve_recv, now=now,
                                  rekey_interval=self.rekey_interval, aead=keys.aead)
        if sleeve_uid not in self.uids:
            self.uids.append(sleeve_uid)
        return self.next

    def switched(self, now: float) -> SleeveSession:
        """The peer opens the new keys: seal with them; the old ones go after OVERLAP.
        Returns the session to seal with (unchanged if nothing was agreed)."""
        if self.next is not None:
            self.old, self.current, self.next = self.current, self.next, None
            self.old_until = now + OVERLAP
        return self.current

    def session_for(self, uid: int) -> SleeveSession | None:
        """The session that opens datagrams named ``uid``, if one still does."""
        for session in (self.current, self.next, self.old):
            if session is not None and session.conn_uid == uid:
                return session
        return None

    def get_timer(self) -> float | None:
        times = [t for t in (self.next.get_timer() if self.next else None,
                             self.old.get_timer() if self.old else None,
                             self.old_until if self.old else None) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Erase the old session when its overlap is over; run the others' timers (the
        current session's are its owner's to run)."""
        if self.old is not None and now >= self.old_until:
            self.old = None
        for session in (self.next, self.old):
            if session is not None:
                session.handle_timer(now)
