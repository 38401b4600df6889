"""One mesh connection as the sleeve data plane sees it: its sessions, its link machine
(proto/link.py), counters, and which socket and probe port it uses. The engine
(router/dataplane/engine.py) owns the links; ``fast`` has one writer there (``_decide``)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from weftnet.proto.connmaker import join_host_port, split_host_port
from weftnet.proto.handshake import AEAD_CHACHA
from weftnet.proto.link import LinkMachine
from weftnet.proto.mesh import PeerConnected
from weftnet.proto.sleeve import SleeveSession
from weftnet.proto.sleeve_rotation import SessionRotation
from weftnet.router.dataplane.ports import Address, ProbePort

Overlay = tuple[bool, str | None, str, int | None]  # ready, overlay, reason, mtu


@dataclass(slots=True)
class Counters:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    acks_thinned: int = 0  # of packets_out: pure TCP ACKs a newer one replaced (outbox.py)
    messages_rebuilt: int = 0  # the peer's messages rebuilt from parity (sleeve_frag.py)

    def as_dict(self) -> dict[str, int]:
        return {"packets_in": self.frames_in, "bytes_in": self.bytes_in,
                "packets_out": self.frames_out, "bytes_out": self.bytes_out,
                "datagrams_in": self.datagrams_in, "datagrams_out": self.datagrams_out,
                "acks_thinned": self.acks_thinned, "messages_rebuilt": self.messages_rebuilt}


@dataclass(slots=True, eq=False)
class Link:
    """The data plane's side of one mesh connection."""

    conn_id: int
    peer: int
    nickname: str
    conn_uid: int
    outbound: bool
    remote_address: str
    report_address: str  # the connection's address in the mesh's report (a target's name)
    session: SleeveSession  # keyed (or plain without a password)
    plain: SleeveSession  # used for DATA when both ends trust each other
    machine: LinkMachine
    fast: bool = False  # the kernel VXLAN carries this peer's traffic: written by _decide only
    published: Overlay | None = None  # what the mesh was (or is about to be) told
    probe: ProbePort | None = None  # open while the machine probes the path MTU
    probe_addr: Address | None = None
    counters: Counters = field(default_factory=Counters)
    punched: bool = False  # carried by a punched UDP path through NAT (no TCP between us)
    sock: int = 0  # which of our UDP sockets reaches the peer (0: the main one)
    # new keys from a rekey (password change): next / old sessions (proto/sleeve_rotation.py)
    rotation: SessionRotation | None = None

    @property
    def clear(self) -> bool:
        """DATA travels unencrypted (both ends trust each other, or no password at all)."""
        return self.machine.clear

    def data_session(self) -> SleeveSession:
        return self.plain if self.session.encrypted and self.clear else self.session

    def report(self, now: float) -> dict[str, Any]:
        """The link's part of its connection in ``weft report``."""
        addr = self.machine.udp_addr
        return {
            "udp_address": join_host_port(*addr) if addr else None,
            "punched": self.punched,
            "heartbeat_answered": self.machine.up,
            "encrypted_data": not self.clear,
            "fastdp": self.fast,
            "path_mtu": self.machine.pmtu,
            "epoch": self.session.epoch_send,
            "cipher": self.session.cipher if not self.clear else None,
            # the peer's messages we lost; whether the peer told us it loses ours
            "messages_lost": self.machine.lost,
            "small_units": self.machine.lossy(now),
            **self.counters.as_dict(),
        }


class Trusted:
    """The subnets whose hosts we trust (``--trusted-subnets``): no encryption with them."""

    def __init__(self, subnets: Iterable[str]) -> None:
        self.nets = [ipaddress.ip_network(s, strict=False) for s in subnets]

    def __call__(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.nets)


def new_link(event: PeerConnected, *, me: int, uid: int, mtu: int, port: int, trusts: Trusted,
             path: Address | None, sock: int, now: float, rng: random.Random) -> Link:
    """The link of a connection the mesh just made (``path``: a punched UDP path to the
    peer, from our socket ``sock``)."""
    keys = event.sleeve_keys
    host, peer_port = split_host_port(event.remote_address)
    session = SleeveSession(conn_uid=event.conn_uid,
                            send_key=keys.sleeve_send if keys else None,
                            recv_key=keys.sleeve_recv if keys else None, now=now,
                            aead=keys.aead if keys else AEAD_CHACHA)
    plain = SleeveSession(conn_uid=event.conn_uid, send_key=None, recv_key=None, now=now)
    machine = LinkMachine(
        me=me, uid=uid, mtu=mtu, port=port, we_trust=trusts(host), encrypted=session.encrypted,
        # the control port is the sleeve port too; the inbound side learns the address,
        # except on a punched path, whose address both ends know already
        addr=path if path is not None else (host, peer_port) if event.outbound else None,
        now=now, rng=rng)
    return Link(conn_id=event.conn_id, peer=event.peer.name, nickname=event.peer.nickname,
                conn_uid=event.conn_uid, outbound=event.outbound,
                remote_address=event.remote_address, report_address=event.report_address,
                session=session, plain=plain, machine=machine, punched=path is not None,
                sock=sock)
