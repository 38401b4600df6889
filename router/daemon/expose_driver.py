"""``weft expose`` / ``weft hide`` in the daemon: the host's addresses with IPAM and DNS.

Theory of operation. ``router/host/expose.py`` (``Exposer``) puts addresses on the bridge
and keeps our nftables table and the record; this driver wraps each command in IPAM (the
addresses come from the allocator under the identifier ``EXPOSE_IDENT``, like Weave's
``weave:expose``) and DNS (one record for the host's name), under the exposer's lock so
two commands never interleave. What IPAM gave for a call that then fails is given back.
``reset`` takes it all away: addresses, table, forwarding, then the IPAM addresses (before
the daemon's handoff) and the DNS record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv6Interface

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.daemon.dns_driver import DnsDriver, need_dns
from weftnet.router.daemon.ipam_driver import IpamDriver, check_specs
from weftnet.router.host.attachments import Attachments, parse_address_specs
from weftnet.router.host.expose import EXPOSE_IDENT, Exposer, Record

log = logging.getLogger("weft")


class ExposeDriver:
    def __init__(self, exposer: Exposer, attachments: Attachments, ipam: IpamDriver | None,
                 dns: DnsDriver | None, pump: Callable[[], None]) -> None:
        self.exposer = exposer
        self.attachments = attachments
        self.ipam = ipam
        self.dns = dns
        self._pump = pump

    async def expose(self, addresses: list[str], name: str | None) -> list[str]:
        """Give the host addresses on the network (ADDR as for attach; IPAM identifier
        EXPOSE_IDENT), masquerading for containers' traffic out; with ``name``, a DNS
        record for them. Idempotent: the same ADDR gives the same address."""
        specs = parse_address_specs(addresses)
        hostname = None if name is None else need_dns(self.dns).qualify(name)
        check_specs(specs, self.ipam)
        given = [spec for spec in specs if isinstance(spec, IPv4Interface | IPv6Interface)]
        for rec in self.attachments.records().values():
            for iface in given:
                if str(iface.ip) in rec.ips:
                    raise LocalProtocolError(f"{iface.ip} is already attached to {rec.container}")
        async with self.exposer.lock:
            self.exposer.check(given)
            got: list[IPv4Interface | IPv6Interface] = list(dict.fromkeys(given))
            fresh: list[IPv4Interface | IPv6Interface] = []   # IPAM's for this call: undone on failure
            if self.ipam is not None:
                got, fresh = await self.ipam.get_all(EXPOSE_IDENT, specs)
            try:
                before = await self.exposer.expose(got, hostname)
            except BaseException:
                if self.ipam is not None:
                    self.ipam.release(EXPOSE_IDENT, fresh)
                raise
            if self.dns is not None:
                self._name(self.dns, before)
        self._pump()
        return [str(iface) for iface in got]

    def _name(self, dns: DnsDriver, before: Record) -> None:
        rec = self.exposer.record()
        if rec.name is None:
            return
        if before.name is not None and before.name != rec.name:
            dns.unregister(EXPOSE_IDENT)   # renamed: the old name goes
        dns.register(EXPOSE_IDENT, rec.name, [str(c.ip) for c in rec.cidrs])

    async def hide(self, addresses: list[str]) -> list[str]:
        """Take exposed addresses away (all when none given), with their DNS record, their
        IPAM addresses and the rules no address needs any more. Idempotent."""
        default = self.ipam.alloc.default_subnet if self.ipam is not None else None
        default6 = (self.ipam.alloc6.default_subnet
                    if self.ipam is not None and self.ipam.alloc6 is not None else None)
        async with self.exposer.lock:
            gone, after = await self.exposer.hide(addresses, default, default6)
            if self.dns is not None and gone:
                self.dns.unregister(EXPOSE_IDENT,
                                    None if not after.cidrs else [str(c.ip) for c in gone])
            if self.ipam is not None:
                self.ipam.free(EXPOSE_IDENT, [iface.ip for iface in gone])
        self._pump()
        return [str(iface) for iface in gone]

    def reset(self) -> None:
        """``reset``: addresses, our nftables table and forwarding go; so do the IPAM
        addresses (before the handoff) and the DNS record."""
        removed = self.exposer.teardown()
        if removed:
            log.info("reset: hid %s", " ".join(removed))
        if self.dns is not None:
            self.dns.unregister(EXPOSE_IDENT)
        if self.ipam is not None:
            self.ipam.free(EXPOSE_IDENT, None)
