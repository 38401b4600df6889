"""resolv.conf: reading the host's upstream resolvers, writing a container's.

Theory of operation. weftDNS forwards names that are not ours to the resolvers the host
itself uses, read from its ``/etc/resolv.conf`` (resolv.conf(5)): at most three
``nameserver`` lines, in order, plus ``options timeout:N attempts:N``. Parsing is pure
(text in, ``ResolvConf`` out) and lenient like glibc's: unknown lines and bad addresses
are skipped, never fatal. Reading the file (and noticing that it changed) is the
server's job: this module does no I/O.

A container attached with DNS gets ``container_resolv_conf``: our server as its only
nameserver and the DNS domain as its search domain, so ``getent hosts c2`` finds
``c2.weft.local``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from weftnet.proto.errors import LocalProtocolError

from .names import DEFAULT_DOMAIN, normalize_domain

MAX_NAMESERVERS = 3        # glibc's MAXNS: further lines are ignored
MAX_SEARCH = 6             # glibc's MAXDNSRCH
DEFAULT_TIMEOUT = 5.0      # resolv.conf(5) defaults
DEFAULT_ATTEMPTS = 2
MAX_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    options: tuple[str, ...] = field(default=())


def _address(text: str) -> str | None:
    host, _, scope = text.partition("%")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if scope and ip.version != 6:
        return None
    return str(ip) + (f"%{scope}" if scope else "")


def parse(text: str) -> ResolvConf:
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    options: list[str] = []
    timeout, attempts = DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        keyword, args = words[0], words[1:]
        if keyword == "nameserver" and args and len(nameservers) < MAX_NAMESERVERS:
            address = _address(args[0])
            if address is not None:
                nameservers.append(address)
        elif keyword in ("search", "domain"):
            search = tuple(args)        # the last of search/domain wins, as in glibc
        elif keyword == "options":
            for opt in args:
                options.append(opt)
                name, _, value = opt.partition(":")
                if name == "timeout" and value.isdigit():
                    timeout = min(MAX_TIMEOUT, max(1.0, float(value)))
                elif name == "attempts" and value.isdigit():
                    attempts = min(5, max(1, int(value)))
    return ResolvConf(tuple(nameservers), search, timeout, attempts, tuple(options))


def container_resolv_conf(server: str, domain: str = DEFAULT_DOMAIN,
                          search: tuple[str, ...] = ()) -> str:
    """The resolv.conf of an attached container: our server, our domain first in the search
    list, then ``search`` (e.g. the host's own search domains; glibc reads at most six)."""
    address = _address(server)
    if address is None:
        raise LocalProtocolError(f"not an IP address: {server!r}")
    ours = normalize_domain(domain).rstrip(".")
    domains = [ours]
    for extra in search:
        name = extra.strip().rstrip(".").lower()
        if name and name not in domains and all(c.isalnum() or c in "-_." for c in name):
            domains.append(name)
    return f"nameserver {address}\nsearch {' '.join(domains[:MAX_SEARCH])}\n"
