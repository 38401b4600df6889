"""What a mesh node hands its host (proto/mesh.py): actions to carry out (dial, close) and
events about its peers and their keys."""

from __future__ import annotations

from dataclasses import dataclass

from .connection import RemoteIdentity, SessionKeys


@dataclass(frozen=True, slots=True)
class Dial:
    address: str


@dataclass(frozen=True, slots=True)
class Close:
    conn_id: int
    reason: str


Action = Dial | Close


@dataclass(frozen=True, slots=True)
class PeerConnected:
    conn_id: int
    peer: RemoteIdentity
    conn_uid: int
    outbound: bool
    remote_address: str
    encrypted: bool
    sleeve_keys: SessionKeys | None
    target: str | None = None  # the address dialled, as given (a name, perhaps)

    @property
    def report_address(self) -> str:
        """The address ``report`` shows for this connection: the target dialled, else where
        the peer is."""
        return self.target if self.outbound and self.target else self.remote_address


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    conn_id: int
    peer: RemoteIdentity
    reason: str


@dataclass(frozen=True, slots=True)
class KeysAgreed:
    """A connection's new handshake completed on our side: its datagrams named
    ``sleeve_uid`` open with ``sleeve_keys``; keep sealing with the old ones for now."""

    conn_id: int
    sleeve_uid: int
    sleeve_keys: SessionKeys


@dataclass(frozen=True, slots=True)
class KeysSwitched:
    """The peer holds the new keys too: seal with them; drop the old after an overlap."""

    conn_id: int


MeshEvent = PeerConnected | PeerDisconnected | KeysAgreed | KeysSwitched
