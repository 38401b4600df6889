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

One device per underlay family: a VXLAN device sends over one family only (the kernel
refuses an IPv6 ``dst`` on an IPv4 device, EAFNOSUPPORT), so ``weft-vxlan6`` (``local ::``:
any address, the route picks the source) sits beside ``weft-vxlan`` on the same VNI and
port (the kernel keys its sockets by family too), both isolated ports of the bridge. Each
entry goes to the device of its ``dst``'s family, so a dual-stack host reaches IPv4 peers
through one and IPv6 peers through the other, and a peer that moves across families moves
device. Broadcasts reach both; each replicates them to its own flood list only.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from pyroute2.netlink.exceptions import NetlinkError

from weftnet.proto.fastdp import VXLAN6_OVERHEAD, VXLAN_OVERHEAD
from weftnet.router.host import netdev, nlevents
from weftnet.router.host.netdev import BRIDGE, TAP, VXLAN, VXLAN6, NetdevError

VNI = 0x7765
NTF_SELF = 0x02
NTF_MASTER = 0x04
NTF_STICKY = 0x40  # learning on another port (the TAP) must not move our entries
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
ZERO_MAC = "00:00:00:00:00:00"


def device(ipv6: bool) -> str:
    """The VXLAN device for an underlay of that family."""
    return VXLAN6 if ipv6 else VXLAN


def ensure_vxlan(mtu: int, port: int, *, ipv6: bool = False) -> int:
    """(Re)create the family's VXLAN device on the bridge with no forwarding entries; its
    ifindex.

    Also isolates the TAP's bridge port. Starting from a fresh device means no entry of a
    previous run survives to send traffic where it no longer belongs."""
    name = device(ipv6)
    remove_vxlan(ipv6=ipv6)
    # IPv4: DF on the outer packets; IPv6 has no DF, and is never fragmented on the way
    family = {"vxlan_local6": "::"} if ipv6 else {"vxlan_df": 1}
    with netdev._ipr() as ipr:
        try:
            bridge = netdev._lookup(ipr, BRIDGE)
            if bridge is None:
                raise NetdevError(f"bridge {BRIDGE} is missing")
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=VNI, vxlan_port=port,
                     vxlan_learning=0, mtu=mtu, **family)
            index = netdev._lookup(ipr, name)
            if index is None:
                raise NetdevError(f"{name} vanished right after it was created")
            ipr.link("set", index=index, master=bridge, state="up")
            ipr.brport("set", index=index, learning=0, unicast_flood=0, isolated=1)
            tap = netdev._lookup(ipr, TAP)
            if tap is not None:
                ipr.brport("set", index=tap, isolated=1)
        except NetlinkError as exc:
            if exc.code == errno.EADDRINUSE:
                raise NetdevError(f"cannot create {name}: UDP port {port} is in use") from None
            raise netdev._fail(f"cannot create {name} on UDP port {port}", exc) from None
        return index


def remove_vxlan(*, ipv6: bool = False) -> bool:
    return netdev._delete_link(device(ipv6), None)


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
            _indexes.update({name: netdev._lookup(ipr, name)
                             for name in (BRIDGE, TAP, VXLAN, VXLAN6)})
        _calls += 1
        bridge = _indexes[BRIDGE]
        skip = {_indexes[TAP], _indexes[VXLAN], _indexes[VXLAN6], bridge}
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
    """What we programmed: VXLAN entries mac -> ip, bridge entries mac -> whether on the
    IPv6 device, flood destinations. An entry's device is its ip's family's."""

    vxlan: dict[str, str] = field(default_factory=dict)
    bridge: dict[str, bool] = field(default_factory=dict)
    flood: set[str] = field(default_factory=set)

    def copy(self) -> FdbState:
        return FdbState(dict(self.vxlan), dict(self.bridge), set(self.flood))


def _v6(ip: str) -> bool:
    return ":" in ip


def sync_fdb(state: FdbState, vxlan: dict[str, str], bridge: set[str], flood: set[str]) -> list[str]:
    """Make the tables hold exactly ``vxlan``/``bridge``/``flood``; update ``state`` as it
    goes. A bridge entry goes to the device of its MAC's ``vxlan`` destination. Returns one
    line per entry that failed (the next sync retries it)."""
    errors: list[str] = []
    on6 = {mac: _v6(vxlan[mac]) for mac in bridge if mac in vxlan}
    with netdev._ipr() as ipr:
        index = {v6: netdev._lookup(ipr, device(v6)) for v6 in (False, True)}

        def do(what: str, v6: bool, *args: object, **kw: object) -> bool:
            if index[v6] is None:
                errors.append(f"{what}: {device(v6)} is missing")
                return False
            try:
                ipr.fdb(*args, ifindex=index[v6], **kw)
                return True
            except NetlinkError as exc:
                if exc.code in (errno.ENOENT, errno.EEXIST) and args[0] in ("del", "append"):
                    return True
                errors.append(f"{what}: {netdev._fail('fdb', exc)}")
                return False

        for ip in sorted(state.flood - flood):
            if do(f"flood to {ip}", _v6(ip), "del", lladdr=ZERO_MAC, dst=ip, flags=NTF_SELF):
                state.flood.discard(ip)
        for mac, v6 in sorted(state.bridge.items()):
            if (mac not in bridge or on6.get(mac) != v6) and do(
                    f"bridge entry {mac}", v6, "del", lladdr=mac, flags=NTF_MASTER):
                del state.bridge[mac]
        for mac, ip in sorted(state.vxlan.items()):
            if (mac not in vxlan or _v6(vxlan[mac]) != _v6(ip)) and do(
                    f"vxlan entry {mac}", _v6(ip), "del", lladdr=mac, dst=ip, flags=NTF_SELF):
                del state.vxlan[mac]
        for mac, ip in sorted(vxlan.items()):
            if state.vxlan.get(mac) != ip and do(f"vxlan entry {mac}", _v6(ip), "replace",
                                                  lladdr=mac, dst=ip, flags=NTF_SELF,
                                                  state=NUD_PERMANENT | NUD_NOARP):
                state.vxlan[mac] = ip
        for mac, v6 in sorted(on6.items()):
            if mac not in state.bridge and do(f"bridge entry {mac}", v6, "replace", lladdr=mac,
                                              flags=NTF_MASTER | NTF_STICKY, state=NUD_NOARP):
                state.bridge[mac] = v6
        for ip in sorted(flood - state.flood):
            if do(f"flood to {ip}", _v6(ip), "append", lladdr=ZERO_MAC, dst=ip, flags=NTF_SELF,
                  state=NUD_PERMANENT | NUD_NOARP):
                state.flood.add(ip)
    return errors


def probe_sender(ipv6: bool) -> socket.socket:
    """A raw sender bound to the family's VXLAN device (probes leave through it)."""
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        tx.bind((device(ipv6), 0))
        tx.setblocking(False)
    except OSError:
        tx.close()
        raise
    return tx


def probe_sockets(ethertype: int) -> tuple[socket.socket, socket.socket]:
    """(sender bound to the IPv4 VXLAN device, receiver of ``ethertype`` frames on the bridge).

    Probes leave through the VXLAN device itself and arrive addressed to the peer's bridge
    MAC, so the peer's kernel delivers them to the bridge device, where a socket for our
    EtherType sees them (and nothing else: no tap on the data path). The IPv6 device's
    sender is ``probe_sender(True)``; one receiver serves both."""
    tx = probe_sender(False)
    try:
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


_NLMSG_HDR = 16  # nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32; ndmsg follows
AF_BRIDGE = 7


def fdb_events_socket() -> socket.socket:
    """A non-blocking netlink socket told of neighbour changes (``bridge monitor fdb``'s
    group): what the bridge learns or forgets arrives as an AF_BRIDGE message."""
    return nlevents.events_socket((nlevents.RTNLGRP_NEIGH,))


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
    """The largest inner frame the VXLAN carries over the underlay: the MTU of the
    interface our default route leaves by less the VXLAN overhead of that route's family
    (IPv4 first, else IPv6), else of the largest up interface that is not ours (loopback,
    the bridge and its ports excluded) less the IPv4 overhead, or the IPv6 one on a host
    with global IPv6 addresses only."""
    with netdev._ipr() as ipr:
        for family, overhead in ((socket.AF_INET, VXLAN_OVERHEAD),
                                 (socket.AF_INET6, VXLAN6_OVERHEAD)):
            for route in ipr.get_default_routes(family=family):
                oif = route.get("RTA_OIF")
                if oif is not None:
                    return int(netdev._link(ipr, oif).get("mtu")) - overhead
        best = None
        for link in ipr.get_links():
            name = str(link.get("ifname"))
            if (name == "lo" or name == BRIDGE or name.startswith(("weft", netdev.VETH_PREFIX))
                    or link.get("master") is not None or not link["flags"] & 1):
                continue
            mtu = int(link.get("mtu"))
            best = mtu if best is None else max(best, mtu)
    if best is None:
        return None
    return best - (VXLAN6_OVERHEAD if ipv6_only_underlay() else VXLAN_OVERHEAD)


def ipv6_only_underlay() -> bool:
    """This host can reach peers over IPv6 only: global IPv6 addresses, no IPv4 one."""
    return (not netdev.host_addresses(family=socket.AF_INET)
            and bool(netdev.host_addresses(family=socket.AF_INET6)))


def device_stats() -> dict[str, int] | None:
    """The VXLAN devices' kernel counters (what the fast path carried, both families
    summed), or None when there is none."""
    keys = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_dropped", "tx_dropped",
            "rx_errors", "tx_errors")
    out: dict[str, int] | None = None
    with netdev._ipr() as ipr:
        for name in (VXLAN, VXLAN6):
            index = netdev._lookup(ipr, name)
            if index is None:
                continue
            stats = netdev._link(ipr, index).get("IFLA_STATS64") or {}
            out = out or dict.fromkeys(keys, 0)
            for key in keys:
                out[key] += int(stats.get(key, 0))
    return out
