"""Containers on the bridge: ``weft attach``, ``detach`` and ``ps``.

A container is a network namespace (a name under /var/run/netns, a PID or a path). Attaching
gives it an ``ethwe`` interface, one end of a veth pair whose other end is a port of the
``weft`` bridge, and the addresses asked for. What is attached is recorded in the data dir
(state key ``"attached"``: container -> MAC and CIDRs) so that a restarted router puts back
what went missing (a pair deleted by hand, addresses flushed) and ``ps`` survives restarts;
the kernel stays the authority on what exists: a container whose namespace is gone is
dropped from the record.

netlink work runs in a worker thread: it takes milliseconds, and the data path must not
stall meanwhile.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import trio

from weftnet.proto.errors import LocalProtocolError

from . import netdev
from .datadir import DataDir

log = logging.getLogger("weft")

GSO_MAX_SIZE = 60000  # a super-frame plus our headers must fit one UDP datagram (65507)


@dataclass(slots=True)
class Record:
    container: str
    mac: str
    cidrs: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"mac": self.mac, "cidrs": list(self.cidrs)}


def parse_cidrs(texts: list[str]) -> list[ipaddress.IPv4Interface]:
    """ADDR arguments: ``IP/LEN``. ``net:CIDR``/``net:default`` and no address at all ask
    IPAM for one, which this router cannot serve yet: a clear error, nothing half-done."""
    out: list[ipaddress.IPv4Interface] = []
    for text in texts:
        if text.startswith("net:"):
            raise LocalProtocolError(f"{text}: allocating addresses needs IPAM, which this "
                                     "router does not run yet; give an address as IP/LEN")
        if "/" not in text:
            raise LocalProtocolError(f"{text}: give the address with its prefix length, "
                                     "e.g. 10.2.1.1/24")
        try:
            iface = ipaddress.IPv4Interface(text)
        except ValueError:
            raise LocalProtocolError(f"{text}: not an IPv4 address with prefix length") from None
        net = iface.network
        if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
            which = "network" if iface.ip == net.network_address else "broadcast"
            raise LocalProtocolError(f"{text}: that is the {which} address of {net}")
        if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
            raise LocalProtocolError(f"{text}: not a usable host address")
        out.append(iface)
    return out


class Attachments:
    def __init__(self, datadir: DataDir, *, mtu: int) -> None:
        self.datadir = datadir
        self.mtu = mtu
        self._lock = trio.Lock()

    # --- the record ----------------------------------------------------------------------

    def _load(self) -> dict[str, Record]:
        raw = self.datadir.load_state().get("attached", {})
        out: dict[str, Record] = {}
        if isinstance(raw, dict):
            for container, rec in raw.items():
                if (isinstance(rec, dict) and isinstance(rec.get("mac"), str)
                        and isinstance(rec.get("cidrs"), list)):
                    out[container] = Record(container, rec["mac"],
                                            [c for c in rec["cidrs"] if isinstance(c, str)])
        return out

    def _save(self, records: dict[str, Record]) -> None:
        state = self.datadir.load_state()
        state["attached"] = {k: records[k].as_json() for k in sorted(records)}
        self.datadir.save_state(state)

    # --- commands --------------------------------------------------------------------------

    async def attach(self, container: str, addresses: list[str]) -> list[str]:
        cidrs = parse_cidrs(addresses)
        if not cidrs:
            raise LocalProtocolError("no address given, and allocating one needs IPAM, which "
                                     "this router does not run yet; give IP/LEN")
        async with self._lock:
            ref = await trio.to_thread.run_sync(netdev.resolve_netns, container)
            records = self._load()
            for other in records.values():
                if other.container == ref.name:
                    continue
                for cidr in cidrs:
                    if any(ipaddress.IPv4Interface(c).ip == cidr.ip for c in other.cidrs):
                        raise LocalProtocolError(
                            f"{cidr.ip} is already attached to {other.container}")
            attached = await trio.to_thread.run_sync(self._attach_sync, ref, cidrs)
            records[ref.name] = Record(ref.name, attached.mac,
                                       [str(c) for c in attached.cidrs])
            self._save(records)
            log.info("attached %s (%s): %s", ref.name, attached.mac,
                     " ".join(str(c) for c in attached.cidrs))
            return [str(c) for c in cidrs]

    def _attach_sync(self, ref: netdev.NetnsRef,
                     cidrs: list[ipaddress.IPv4Interface]) -> netdev.Attached:
        return netdev.attach(ref, cidrs, mtu=self.mtu, gso_max_size=GSO_MAX_SIZE)

    async def detach(self, container: str, addresses: list[str]) -> list[str]:
        cidrs = parse_cidrs(addresses) if addresses else None
        async with self._lock:
            records = self._load()
            try:
                ref = await trio.to_thread.run_sync(netdev.resolve_netns, container)
                key = ref.name
            except netdev.NetdevError:
                # the namespace is gone: forget what we recorded about it
                if container in records:
                    del records[container]
                    self._save(records)
                    return []
                raise
            removed = await trio.to_thread.run_sync(netdev.detach, ref, cidrs)
            rec = records.get(key)
            if rec is not None:
                if cidrs is None:
                    del records[key]
                else:
                    gone = {str(c) for c in removed} | {str(c) for c in cidrs}
                    rec.cidrs = [c for c in rec.cidrs if c not in gone]
                    if not rec.cidrs:
                        del records[key]
                self._save(records)
            log.info("detached %s: %s", key, " ".join(str(c) for c in removed) or "nothing")
            return [str(c) for c in removed]

    async def ps(self) -> list[dict[str, Any]]:
        records = self._load()
        return [{"container": r.container, "mac": r.mac, "cidrs": r.cidrs}
                for r in sorted(records.values(), key=lambda r: r.container)]

    async def restore(self) -> None:
        """Put back what went missing while we were away (the kernel keeps veths and
        addresses across a router restart; a host reboot or a hand-deleted pair does not)."""
        async with self._lock:
            records = self._load()
            changed = False
            for key, rec in list(records.items()):
                try:
                    ref = await trio.to_thread.run_sync(netdev.resolve_netns, rec.container)
                except netdev.NetdevError:
                    log.info("container %s is gone: forgetting it", rec.container)
                    del records[key]
                    changed = True
                    continue
                cidrs = [ipaddress.IPv4Interface(c) for c in rec.cidrs]
                try:
                    await trio.to_thread.run_sync(self._attach_sync, ref, cidrs)
                except (netdev.NetdevError, OSError) as exc:
                    log.warning("cannot restore %s: %s", rec.container, exc)
            if changed:
                self._save(records)
