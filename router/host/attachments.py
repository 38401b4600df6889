"""Containers on the bridge: ``weft attach``, ``detach`` and ``ps``.

A container is a network namespace (a name under /var/run/netns, a PID or a path). Attaching
gives it an ``ethwe`` interface, one end of a veth pair whose other end is a port of the
``weft`` bridge, and the addresses asked for. What is attached is recorded in the data dir
(state key ``"attached"``: container -> MAC and CIDRs) so that a restarted router puts back
what went missing (a pair deleted by hand, addresses flushed) and ``ps`` survives restarts;
the kernel stays the authority on what exists: a container whose namespace is gone is
dropped from the record. The CNI plugin asks for another interface name (``eth0``): the
record keeps it (``ifname``, absent for ``ethwe``), one interface per container.

Resolver config. With DNS, attaching a *named* namespace (one under /var/run/netns) also
writes ``/etc/netns/NAME/resolv.conf`` (the text the daemon passes: our DNS server, our
domain as search domain), which ``ip netns exec NAME`` bind-mounts over /etc/resolv.conf
for everything started in the container. The file starts with ``RESOLV_MARKER``; the
record keeps its path (``resolv_conf``), and detaching the container (or finding its
namespace gone) removes it again. A file of someone else's found there is kept aside as
``resolv.conf.weft-saved`` and put back on detach. A file without our marker is never
removed. A router that was killed and lost its data dir cannot remember its files:
``sweep_resolv_confs`` (run at launch) removes ours whose namespace no longer exists.
``weft reset`` forgets every container with its file (``forget_all``); deleting the host
ends of the veth pairs (``netdev.remove_all``) takes their ``ethwe`` away.

netlink work runs in a worker thread: it takes milliseconds, and the data path must not
stall meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.host import netdev
from weftnet.router.host.datadir import DataDir

log = logging.getLogger("weft")

GSO_MAX_SIZE = 60000  # a super-frame plus our headers must fit one UDP datagram (65507)
NETNS_ETC = Path("/etc/netns")
RESOLV_MARKER = "# written by weft attach; weft detach removes it\n"
SAVED_SUFFIX = ".weft-saved"

AddressSpec = (ipaddress.IPv4Interface | ipaddress.IPv6Interface | ipaddress.IPv4Network
               | ipaddress.IPv6Network | None)   # see parse_address_specs


def refuse_host_namespace(ref: netdev.NetnsRef) -> None:
    """A container is not the host: attaching the router's own namespace (or init's, the
    machine's, e.g. ``weft attach 1``) would put container plumbing on the host itself."""
    for host in ("/proc/self/ns/net", "/proc/1/ns/net"):
        try:
            st = os.stat(host)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ref.key:
            raise LocalProtocolError(f"{ref.name} is the host's own network namespace, not a "
                                     "container's (to put the host on the network: weft expose)")


@dataclass(slots=True)
class Record:
    container: str
    mac: str
    cidrs: list[str]
    resolv_conf: str | None = None   # the resolv.conf we wrote for it
    ifname: str = netdev.CONTAINER_IFNAME   # its interface (CNI asks for eth0 and the like)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mac": self.mac, "cidrs": list(self.cidrs)}
        if self.resolv_conf is not None:
            out["resolv_conf"] = self.resolv_conf
        if self.ifname != netdev.CONTAINER_IFNAME:
            out["ifname"] = self.ifname
        return out

    @property
    def ips(self) -> list[str]:
        return [str(ipaddress.ip_interface(c).ip) for c in self.cidrs]


@dataclass(slots=True)
class AttachResult:
    ref: netdev.NetnsRef
    cidrs: list[str]                 # as asked for
    record: Record                   # everything the container has now


@dataclass(slots=True)
class DetachResult:
    container: str                   # the record's key (the namespace's display name)
    removed: list[str]               # CIDRs taken off the container
    gone: bool                       # the container is no longer attached at all
    ips: list[str] = field(default_factory=list)   # addresses it no longer has
    mac: str | None = None           # the MAC of its interface, when that is gone


def named_netns(ref: netdev.NetnsRef) -> str | None:
    """The name of a namespace under /var/run/netns (however it was given), else None."""
    path = Path(ref.path)
    try:
        if path.parent.resolve() == netdev.NETNS_RUN_DIR.resolve():
            return path.name
    except OSError:
        pass
    return None


def write_resolv_conf(etc: Path, netns: str, text: str) -> Path:
    """Write ``RESOLV_MARKER + text`` as ``etc/NETNS/resolv.conf``; returns its path.

    Written in place (not renamed over), so processes already running in the container,
    whose /etc/resolv.conf is a bind mount of this very inode, see the new text too.
    """
    directory = etc / netns
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "resolv.conf"
    content = RESOLV_MARKER + text
    try:
        old = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        old = None
    if old == content:
        return path
    if old is not None and not old.startswith(RESOLV_MARKER):
        saved = path.with_name(path.name + SAVED_SUFFIX)
        if not saved.exists():
            os.replace(path, saved)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    return path


def remove_resolv_conf(path_text: str) -> None:
    """Undo ``write_resolv_conf``: our file goes (a saved one comes back), then the
    directory if that left it empty. Never removes a file without our marker."""
    path = Path(path_text)
    try:
        ours = path.read_text(encoding="utf-8", errors="replace").startswith(RESOLV_MARKER)
    except OSError:
        ours = False
    if ours:
        with contextlib.suppress(OSError):
            path.unlink()
    saved = path.with_name(path.name + SAVED_SUFFIX)
    if saved.exists() and not path.exists():
        with contextlib.suppress(OSError):
            os.replace(saved, path)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when empty


def parse_address_specs(texts: list[str]) -> list[AddressSpec]:
    """``attach``'s ADDR arguments: ``IP/LEN`` (that address, claimed from IPAM when inside
    its range), ``net:CIDR`` (allocate one inside that subnet), ``net:default`` (allocate
    one from the default subnet of each family with IPAM, ``None`` here); no argument at
    all means ``net:default``. IPv4 and IPv6 alike."""
    if not texts:
        return [None]
    out: list[AddressSpec] = []
    for text in texts:
        if text == "net:default":
            out.append(None)
        elif text.startswith("net:"):
            out.append(parse_subnet(text))
        else:
            out.extend(parse_cidrs([text]))
    return out


def parse_subnet(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``net:CIDR``: a subnet of either family, host bits zero."""
    body = text.removeprefix("net:")
    try:
        net = ipaddress.ip_network(body)
    except ValueError:
        raise LocalProtocolError(f"{text}: not a subnet (net:CIDR with the host bits zero, "
                                 "e.g. net:10.32.1.0/24 or net:fd00:1:2:3::/64)") from None
    if "/" not in body:
        raise LocalProtocolError(f"{text}: give the subnet with its prefix length, "
                                 "e.g. net:10.32.1.0/24 or net:fd00:1:2:3::/64")
    return net


def parse_cidrs(texts: list[str]) -> list[netdev.Cidr]:
    """ADDR arguments that are addresses: ``IP/LEN``, IPv4 or IPv6. ``net:CIDR`` /
    ``net:default`` ask IPAM for one (``parse_address_specs``) and are refused here."""
    out: list[netdev.Cidr] = []
    for text in texts:
        if text.startswith("net:"):
            raise LocalProtocolError(f"{text}: allocating an address needs IPAM (attach); "
                                     "give an address as IP/LEN")
        if "/" not in text:
            raise LocalProtocolError(f"{text}: give the address with its prefix length, "
                                     "e.g. 10.2.1.1/24 or fd00:1:2:3::1/64")
        out.append(parse_cidr(text))
    return out


def parse_cidr(text: str) -> netdev.Cidr:
    """One ``IP/LEN`` a container (or the host, with expose) can use; a one-line error
    saying why not otherwise."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise LocalProtocolError(f"{text}: not an IP address with prefix length "
                                 "(IPv4 or IPv6, e.g. 10.2.1.1/24 or fd00:1:2:3::1/64)") from None
    net = iface.network
    ip = iface.ip
    if isinstance(ip, ipaddress.IPv4Address):
        if net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
            which = "network" if ip == net.network_address else "broadcast"
            raise LocalProtocolError(f"{text}: that is the {which} address of {net}")
    else:
        if "%" in text:
            raise LocalProtocolError(f"{text}: a zone (%...) has no meaning here")
        if net.prefixlen < 127 and ip == net.network_address:
            raise LocalProtocolError(f"{text}: that is the subnet-router anycast address of {net}")
        if ip.is_link_local:
            raise LocalProtocolError(f"{text}: a link-local address (the kernel gives every "
                                     "interface its own fe80:: address)")
        if ip.ipv4_mapped is not None:
            raise LocalProtocolError(f"{text}: an IPv4-mapped address; give the IPv4 address "
                                     f"{ip.ipv4_mapped}/LEN instead")
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        raise LocalProtocolError(f"{text}: not a usable host address")
    return iface


def _ip_order(text: str) -> tuple[int, int]:
    """IPv4 before IPv6, each in numeric order (the two families do not compare)."""
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)


def sweep_resolv_confs(etc: Path = NETNS_ETC, run_dir: Path = netdev.NETNS_RUN_DIR) -> list[str]:
    """Remove the resolv.conf files we wrote for namespaces that no longer exist (their
    router was killed, its data dir lost): a namespace made later under that name must not
    inherit them. Returns the namespace names cleaned up."""
    cleaned: list[str] = []
    try:
        names = sorted(p.name for p in etc.iterdir() if p.is_dir())
    except OSError:
        return cleaned
    for name in names:
        path = etc / name / "resolv.conf"
        try:
            ours = path.read_text(encoding="utf-8", errors="replace").startswith(RESOLV_MARKER)
        except OSError:
            continue
        if ours and not (run_dir / name).exists():
            remove_resolv_conf(str(path))
            cleaned.append(name)
    return cleaned


def load_records(datadir: DataDir) -> dict[str, Record]:
    """What is attached, by container, as persisted (state key ``"attached"``)."""
    raw = datadir.load_state().get("attached", {})
    out: dict[str, Record] = {}
    if isinstance(raw, dict):
        for container, rec in raw.items():
            if (isinstance(rec, dict) and isinstance(rec.get("mac"), str)
                    and isinstance(rec.get("cidrs"), list)):
                resolv = rec.get("resolv_conf")
                ifname = rec.get("ifname")
                out[container] = Record(container, rec["mac"],
                                        [c for c in rec["cidrs"] if isinstance(c, str)],
                                        resolv if isinstance(resolv, str) else None,
                                        ifname if isinstance(ifname, str) and ifname
                                        else netdev.CONTAINER_IFNAME)
    return out


def forget_all(datadir: DataDir) -> list[str]:
    """``reset``: forget every attached container and remove the resolv.conf written for
    it; the containers forgotten. (Their veth pairs go with ``netdev.remove_all``.)"""
    records = load_records(datadir)
    if not records:
        return []
    for rec in records.values():
        if rec.resolv_conf is not None:
            remove_resolv_conf(rec.resolv_conf)
    state = datadir.load_state()
    state.pop("attached", None)
    datadir.save_state(state)
    return sorted(records)


class Attachments:
    def __init__(self, datadir: DataDir, *, mtu: int, netns_etc: Path = NETNS_ETC) -> None:
        self.datadir = datadir
        self.mtu = mtu
        self.netns_etc = netns_etc
        self._lock = trio.Lock()

    # --- the record ----------------------------------------------------------------------

    def records(self) -> dict[str, Record]:
        """What is attached, by container (as persisted)."""
        return load_records(self.datadir)

    def _save(self, records: dict[str, Record]) -> None:
        state = self.datadir.load_state()
        state["attached"] = {k: records[k].as_json() for k in sorted(records)}
        self.datadir.save_state(state)

    # --- commands --------------------------------------------------------------------------

    async def attach(self, container: str, addresses: list[str], *,
                     resolv_conf: str | None = None,
                     ifname: str = netdev.CONTAINER_IFNAME) -> AttachResult:
        """Attach with ``addresses`` as interface ``ifname``; with ``resolv_conf`` (text),
        also write it for a named namespace (see the module docstring)."""
        cidrs = parse_cidrs(addresses)
        if not cidrs:
            raise LocalProtocolError("no address given, and allocating one needs IPAM, which "
                                     "is off (--ipalloc-range ''); give IP/LEN")
        async with self._lock:
            ref = await trio.to_thread.run_sync(netdev.resolve_netns, container)
            refuse_host_namespace(ref)
            records = self.records()
            old = records.get(ref.name)
            if old is not None and old.ifname != ifname:  # one interface per container
                raise LocalProtocolError(f"container {ref.name} is already attached as "
                                         f"{old.ifname}, not {ifname}")
            for other in records.values():
                if other.container == ref.name:
                    continue
                for cidr in cidrs:
                    if any(ipaddress.ip_interface(c).ip == cidr.ip for c in other.cidrs):
                        raise LocalProtocolError(
                            f"{cidr.ip} is already attached to {other.container}")
            attached = await trio.to_thread.run_sync(
                self._attach_sync, ref, cidrs, ifname, old.mac if old is not None else None)
            record = Record(ref.name, attached.mac, [str(c) for c in attached.cidrs],
                            old.resolv_conf if old is not None else None, ifname)
            netns = named_netns(ref)
            if resolv_conf is not None and netns is not None:
                try:
                    record.resolv_conf = str(write_resolv_conf(self.netns_etc, netns, resolv_conf))
                except OSError as exc:
                    log.warning("cannot write the resolv.conf of %s: %s", ref.name, exc)
            records[ref.name] = record
            self._save(records)
            log.info("attached %s (%s): %s", ref.name, attached.mac,
                     " ".join(str(c) for c in attached.cidrs))
            return AttachResult(ref, [str(c) for c in cidrs], record)

    def _attach_sync(self, ref: netdev.NetnsRef, cidrs: list[netdev.Cidr],
                     ifname: str = netdev.CONTAINER_IFNAME, mac: str | None = None) -> netdev.Attached:
        # The MAC (used only when the veth pair is created) is the one recorded for this
        # container, so an interface re-created after a restart keeps it; else a random
        # one: one derived from the namespace's inode number would repeat across hosts
        # and over time (the kernel reuses freed namespaces' inode numbers).
        return netdev.attach(ref, cidrs, mtu=self.mtu, mac=mac or netdev.random_mac(),
                             gso_max_size=GSO_MAX_SIZE, ifname=ifname)

    async def detach(self, container: str, addresses: list[str], *, ifname: str | None = None,
                     missing_ok: bool = False) -> DetachResult:
        """Take ``addresses`` (all when empty) off the container. ``ifname``: only if it is
        attached as that interface (else nothing happens). ``missing_ok`` (CNI DEL): a
        namespace that no longer exists is detached already, not an error."""
        cidrs = parse_cidrs(addresses) if addresses else None
        async with self._lock:
            records = self.records()
            try:
                ref = await trio.to_thread.run_sync(netdev.resolve_netns, container)
                key = ref.name
            except netdev.NetdevError:
                # the namespace is gone: forget what we recorded about it
                if container in records:
                    rec = self._forget(records, container)
                    return DetachResult(container, [], True, rec.ips, rec.mac)
                if missing_ok:
                    return DetachResult(container.strip(), [], True)
                raise
            held = records.get(key)
            if held is not None and ifname is not None and ifname != held.ifname:
                return DetachResult(key, [], False)  # attached under another interface
            which = held.ifname if held is not None else ifname or netdev.CONTAINER_IFNAME
            removed = await trio.to_thread.run_sync(
                functools.partial(netdev.detach, ref, cidrs, ifname=which))
            ips = {str(c.ip) for c in removed}
            gone = True
            if held is not None:
                if cidrs is None:
                    ips |= set(held.ips)
                    self._forget(records, key)
                else:
                    asked = {str(c.ip) for c in cidrs}
                    ips |= asked & set(held.ips)
                    kept = [c for c in held.cidrs if str(ipaddress.ip_interface(c).ip) not in ips]
                    if kept:
                        held.cidrs = kept
                        gone = False
                        self._save(records)
                    else:
                        self._forget(records, key)
            result = DetachResult(key, [str(c) for c in removed], gone,
                                  sorted(ips, key=_ip_order),
                                  held.mac if gone and held is not None else None)
            log.info("detached %s: %s", key, " ".join(result.removed) or "nothing")
            return result

    async def forget(self, container: str) -> Record | None:
        """Drop the record of a container whose namespace went away (and its resolv.conf)."""
        async with self._lock:
            records = self.records()
            if container not in records:
                return None
            return self._forget(records, container)

    def _forget(self, records: dict[str, Record], key: str) -> Record:
        rec = records.pop(key)
        self._save(records)
        if rec.resolv_conf is not None:
            remove_resolv_conf(rec.resolv_conf)
        return rec

    async def ps(self) -> list[dict[str, Any]]:
        records = self.records()
        return [{"container": r.container, "mac": r.mac, "cidrs": r.cidrs, "ifname": r.ifname}
                for r in sorted(records.values(), key=lambda r: r.container)]

    async def restore(self) -> list[tuple[Record, netdev.NetnsRef]]:
        """Put back what went missing while we were away (the kernel keeps veths and
        addresses across a router restart; a host reboot or a hand-deleted pair does not).
        Returns the containers still there, with their namespaces."""
        alive: list[tuple[Record, netdev.NetnsRef]] = []
        async with self._lock:
            records = self.records()
            for key, rec in list(records.items()):
                try:
                    ref = await trio.to_thread.run_sync(netdev.resolve_netns, rec.container)
                except netdev.NetdevError:
                    log.info("container %s is gone: forgetting it", rec.container)
                    self._forget(records, key)
                    continue
                alive.append((rec, ref))
                cidrs = [ipaddress.ip_interface(c) for c in rec.cidrs]
                try:
                    await trio.to_thread.run_sync(self._attach_sync, ref, cidrs, rec.ifname, rec.mac)
                except (netdev.NetdevError, OSError) as exc:
                    log.warning("cannot restore %s: %s", rec.container, exc)
        return alive
