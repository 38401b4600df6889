"""Netlink for the fast path: the kernel VXLAN device on the bridge and its forwarding entries.

The device ``weft-vxlan`` (VNI ``VNI``, UDP ``port``, address learning off, DF set on the
outer packets so probes measure the path) is a port of the ``weft`` bridge. So is the
sleeve's TAP; both ports are *isolated* (a bridge never forwards between two isolated
ports), so a frame that came out of one tunnel never goes back into the other: no loops,
no frame delivered twice. Containers' ports are not isolated and reach both.

The bridge port of the VXLAN device does not learn and does not flood unknown unicast:
it carries only what the router programmed, in two tables::

    bridge (master) entries   MAC -> weft-vxlan, static,     which frames take the VXLAN
                              sticky (a frame relayed over
                              sleeve must not move it)
    VXLAN  (self)   entries   MAC -> dst underlay IP         where the device sends them
                              00:00:00:00:00:00 -> each IP   head-end replication of
                                                             broadcast and multicast

Everything else (unknown unicast, and MACs of peers reached over sleeve) goes to the TAP.
``FdbState`` remembers what we programmed, so a change costs only its difference.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from pyroute2.netlink.exceptions import NetlinkError

from weftnet.router.host import netdev
from weftnet.router.host.netdev import BRIDGE, TAP, VXLAN, NetdevError

VNI = 0x7765
NTF_SELF = 0x02
NTF_MASTER = 0x04
NTF_STICKY = 0x40  # learning on another port (the TAP) must not move our entries
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
ZERO_MAC = "00:00:00:00:00:00"


def ensure_vxlan(mtu: int, port: int) -> int:
    """(Re)create the VXLAN device on the bridge with no forwarding entries; its ifindex.

    Also isolates the TAP's bridge port. Starting from a fresh device means no entry of a
    previous run survives to send traffic where it no longer belongs."""
    remove_vxlan()
    with netdev._ipr() as ipr:
        try:
            bridge = netdev._lookup(ipr, BRIDGE)
            if bridge is None:
                raise NetdevError(f"bridge {BRIDGE} is missing")
            ipr.link("add", ifname=VXLAN, kind="vxlan", vxlan_id=VNI, vxlan_port=port,
                     vxlan_learning=0, vxlan_df=1, mtu=mtu)
            index = netdev._lookup(ipr, VXLAN)
            if index is None:
                raise NetdevError(f"{VXLAN} vanished right after it was created")
            ipr.link("set", index=index, master=bridge, state="up")
            ipr.brport("set", index=index, learning=0, unicast_flood=0, isolated=1)
            tap = netdev._lookup(ipr, TAP)
            if tap is not None:
                ipr.brport("set", index=tap, isolated=1)
        except NetlinkError as exc:
            if exc.code == errno.EADDRINUSE:
                raise NetdevError(f"cannot create {VXLAN}: UDP port {port} is in use") from None
            raise netdev._fail(f"cannot create {VXLAN} on UDP port {port}", exc) from None
        return index


def remove_vxlan() -> bool:
    return netdev._delete_link(VXLAN, None)


def bridge_mac() -> str:
    with netdev._ipr() as ipr:
        index = netdev._lookup(ipr, BRIDGE)
        if index is None:
            raise NetdevError(f"bridge {BRIDGE} is missing")
        return str(netdev._link(ipr, index).get("address"))


# local_macs runs every second: its three interface lookups cost twice the FDB dump
# through pyroute2 (~1.4 of ~2 ms CPU here), so it keeps the indexes and looks them up
# again only every LOOKUP_EVERY calls (the devices live as long as the router)
LOOKUP_EVERY = 30
_indexes: dict[str, int | None] = {}
_calls = 0


def local_macs() -> set[str]:
    """MACs the bridge learnt on container ports (not the TAP's, not the VXLAN's)."""
    global _calls
    out: set[str] = set()
    with netdev._ipr() as ipr:
        if _calls % LOOKUP_EVERY == 0 or not _indexes:
            _indexes.update({name: netdev._lookup(ipr, name) for name in (BRIDGE, TAP, VXLAN)})
        _calls += 1
        bridge = _indexes[BRIDGE]
        skip = {_indexes[TAP], _indexes[VXLAN], bridge}
        for entry in ipr.fdb("dump"):
            if (entry.get("NDA_MASTER") != bridge or entry["ifindex"] in skip
                    or entry["state"] & (NUD_PERMANENT | NUD_NOARP)):
                continue
            mac = entry.get("NDA_LLADDR")
            if mac and not int(mac[:2], 16) & 1:
                out.add(str(mac))
    return out


@dataclass(slots=True)
class FdbState:
    """What we programmed: VXLAN entries mac -> ip, bridge entries, flood destinations."""

    vxlan: dict[str, str] = field(default_factory=dict)
    bridge: set[str] = field(default_factory=set)
    flood: set[str] = field(default_factory=set)

    def copy(self) -> FdbState:
        return FdbState(dict(self.vxlan), set(self.bridge), set(self.flood))


def sync_fdb(state: FdbState, vxlan: dict[str, str], bridge: set[str], flood: set[str]) -> list[str]:
    """Make the tables hold exactly ``vxlan``/``bridge``/``flood``; update ``state`` as it
    goes. Returns one line per entry that failed (the next sync retries it)."""
    errors: list[str] = []
    with netdev._ipr() as ipr:
        index = netdev._lookup(ipr, VXLAN)
        if index is None:
            return [f"{VXLAN} is missing"]

        def do(what: str, *args: object, **kw: object) -> bool:
            try:
                ipr.fdb(*args, ifindex=index, **kw)
                return True
            except NetlinkError as exc:
                if exc.code in (errno.ENOENT, errno.EEXIST) and args[0] in ("del", "append"):
                    return True
                errors.append(f"{what}: {netdev._fail('fdb', exc)}")
                return False

        for ip in sorted(state.flood - flood):
            if do(f"flood to {ip}", "del", lladdr=ZERO_MAC, dst=ip, flags=NTF_SELF):
                state.flood.discard(ip)
        for mac in sorted(state.bridge - bridge):
            if do(f"bridge entry {mac}", "del", lladdr=mac, flags=NTF_MASTER):
                state.bridge.discard(mac)
        for mac in sorted(set(state.vxlan) - set(vxlan)):
            if do(f"vxlan entry {mac}", "del", lladdr=mac, dst=state.vxlan[mac], flags=NTF_SELF):
                del state.vxlan[mac]
        for mac, ip in sorted(vxlan.items()):
            if state.vxlan.get(mac) != ip and do(f"vxlan entry {mac}", "replace", lladdr=mac, dst=ip,
                                                  flags=NTF_SELF, state=NUD_PERMANENT | NUD_NOARP):
                state.vxlan[mac] = ip
        for mac in sorted(bridge - state.bridge):
            if do(f"bridge entry {mac}", "replace", lladdr=mac, flags=NTF_MASTER | NTF_STICKY,
                  state=NUD_NOARP):
                state.bridge.add(mac)
        for ip in sorted(flood - state.flood):
            if do(f"flood to {ip}", "append", lladdr=ZERO_MAC, dst=ip, flags=NTF_SELF,
                  state=NUD_PERMANENT | NUD_NOARP):
                state.flood.add(ip)
    return errors


def probe_sockets(ethertype: int) -> tuple[socket.socket, socket.socket]:
    """(sender bound to the VXLAN device, receiver of ``ethertype`` frames on the bridge).

    Probes leave through the VXLAN device itself and arrive addressed to the peer's bridge
    MAC, so the peer's kernel delivers them to the bridge device, where a socket for our
    EtherType sees them (and nothing else: no tap on the data path)."""
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        tx.bind((VXLAN, 0))
        tx.setblocking(False)
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    except OSError:
        tx.close()
        raise
    try:
        rx.bind((BRIDGE, ethertype))
        rx.setblocking(False)
    except OSError:
        rx.close()
        tx.close()
        raise
    return tx, rx


RTNLGRP_NEIGH = 3
_NLMSG_HDR = 16  # nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32; ndmsg follows
AF_BRIDGE = 7


def fdb_events_socket() -> socket.socket:
    """A non-blocking netlink socket told of neighbour changes (``bridge monitor fdb``'s
    group): what the bridge learns or forgets arrives as an AF_BRIDGE message."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 1 << (RTNLGRP_NEIGH - 1)))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bridge_fdb_changed(data: bytes) -> bool:
    """Whether a batch of netlink messages from ``fdb_events_socket`` holds a bridge FDB
    change (not the host's ARP/ND neighbours, which change as routers talk)."""
    pos = 0
    while pos + _NLMSG_HDR < len(data):
        length = int.from_bytes(data[pos:pos + 4], "little")
        if data[pos + _NLMSG_HDR] == AF_BRIDGE:
            return True
        if length < _NLMSG_HDR:
            return False
        pos += (length + 3) & ~3
    return False


def underlay_mtu() -> int | None:
    """The MTU of the interface our default route leaves by, else the largest MTU of an up
    interface that is not ours (loopback, the bridge and its ports excluded)."""
    with netdev._ipr() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            oif = route.get("RTA_OIF")
            if oif is not None:
                return int(netdev._link(ipr, oif).get("mtu"))
        best = None
        for link in ipr.get_links():
            name = str(link.get("ifname"))
            if (name == "lo" or name == BRIDGE or name.startswith(("weft", netdev.VETH_PREFIX))
                    or link.get("master") is not None or not link["flags"] & 1):
                continue
            mtu = int(link.get("mtu"))
            best = mtu if best is None else max(best, mtu)
        return best


def device_stats() -> dict[str, int] | None:
    """The VXLAN device's kernel counters (what the fast path carried), or None."""
    with netdev._ipr() as ipr:
        index = netdev._lookup(ipr, VXLAN)
        if index is None:
            return None
        stats = netdev._link(ipr, index).get("IFLA_STATS64") or {}
        return {key: int(stats.get(key, 0)) for key in
                ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_dropped", "tx_dropped",
                 "rx_errors", "tx_errors")}
