"""NAT gateways for the testbed: what a cloud's NAT gateway does, in a namespace of its own.

Theory of operation (measured facts: ``/work/shared/notes/multicloud-lab.md``). A host behind
NAT does not sit on its segment itself: its gateway does. The gateway namespace has two legs,
``pub`` on the segment (the address the host would have had there) and ``priv`` on a veth to
the host, whose only underlay interface ``eth0`` gets an address in a private /24 of its own
and a default route via the gateway. IP forwarding is on in the gateway only. One nftables
table (``ip weft_nat``) in the gateway masquerades the private subnet out of ``pub`` and
drops whatever arrives on ``pub`` unasked (not part of a connection the inside started), in
both the forward and the input hooks, as cloud gateways do; without that drop, hole punching
fails on Linux (an early punch datagram leaves a conntrack entry that moves the host's later
mapping to a random port). Linux keeps the source port when it is free, so the plain mapping
is endpoint-independent and port-preserving; ``symmetric=True`` takes a fresh random port per
destination (``masquerade random,fully-random``).

Rebinding (the mapping changes under a flow) is simulated by flushing the gateway's
conntrack table, or by shortening its UDP timeouts (per-namespace sysctls) and going quiet.
This module only says what to run; ``Testbed`` runs it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["NAT_TABLE", "Nat", "gateway_sysctls", "nat_ruleset", "private_net",
           "timeout_sysctls", "FLUSH_CONNTRACK_PY"]

NAT_TABLE = "weft_nat"
PRIVATE_BASE = ipaddress.IPv4Network("172.20.0.0/16")

# conntrack -F without the conntrack tool: pyroute2 is a dependency of weftnet, so the
# interpreter running the tests has it; run inside the gateway namespace.
FLUSH_CONNTRACK_PY = "from pyroute2 import NFCTSocket\nwith NFCTSocket() as s:\n    s.flush()\n"


@dataclass(frozen=True, slots=True)
class Nat:
    """How a host's NAT gateway maps: ``symmetric`` = a new random port per destination."""

    symmetric: bool = False


def private_net(host_number: int) -> ipaddress.IPv4Network:
    """The private /24 behind the gateway of host number ``host_number`` (1-based):
    ``172.20.<n>.0/24``; the gateway's ``priv`` is ``.1``, the host's ``eth0`` is ``.2``."""
    if not 1 <= host_number <= 254:
        raise ValueError(f"host number {host_number} out of 1..254")
    return ipaddress.IPv4Network(f"172.20.{host_number}.0/24")


def nat_ruleset(subnet: ipaddress.IPv4Network, *, symmetric: bool = False,
                ports: tuple[int, int] | None = None, pin: Mapping[int, int] | None = None) -> str:
    """The gateway's nftables script (for ``nft -f -``): masquerade ``subnet`` out of
    ``pub``; accept on ``pub`` only what belongs to connections the inside started.
    ``ports``: public ports only from this range (a rebinding moves mappings into a new one);
    Linux then picks a random port of the range per flow (endpoint-dependent), so ``pin``
    keeps UDP from an inside port on one public port for every destination, as a plain
    (endpoint-independent) NAT does after a rebinding."""
    if not subnet.subnet_of(PRIVATE_BASE):
        raise ValueError(f"{subnet} is not inside {PRIVATE_BASE}")
    if ports is not None and not 1024 <= ports[0] <= ports[1] <= 65535:
        raise ValueError(f"port range {ports[0]}-{ports[1]} not within 1024-65535")
    how = " random,fully-random" if symmetric else ""
    rule = f'        ip saddr {subnet} oifname "pub" masquerade{how}\n'
    if ports is not None:  # a port range needs a transport match; ICMP keeps the plain rule
        rule = (f'        ip saddr {subnet} oifname "pub" meta l4proto {{ tcp, udp }} '
                f"masquerade to :{ports[0]}-{ports[1]}{how}\n" + rule)
    for inside, public in sorted((pin or {}).items()):
        if not 1 <= inside <= 65535 or not 1024 <= public <= 65535:
            raise ValueError(f"cannot pin UDP port {inside} to {public}")
        rule = (f'        ip saddr {subnet} oifname "pub" udp sport {inside} '
                f"masquerade to :{public}\n" + rule)
    guard = ('        iifname "pub" ct state established,related accept\n'
             '        iifname "pub" drop\n')
    return (
        f"table ip {NAT_TABLE} {{\n"
        f"    chain postrouting {{\n"
        f"        type nat hook postrouting priority srcnat; policy accept;\n"
        f"{rule}"
        f"    }}\n"
        f"    chain forward {{\n"
        f"        type filter hook forward priority filter; policy accept;\n"
        f"{guard}"
        f"    }}\n"
        f"    chain input {{\n"
        f"        type filter hook input priority filter; policy accept;\n"
        f"{guard}"
        f"    }}\n"
        f"}}\n"
    )


def gateway_sysctls() -> dict[str, str]:
    """Set inside the gateway only: it forwards; nothing in a host or the machine does."""
    return {"net.ipv4.ip_forward": "1"}


def timeout_sysctls(udp: int | None = None, udp_stream: int | None = None) -> dict[str, str]:
    """conntrack's UDP timeouts (seconds; per network namespace) to set in a gateway: how
    long an idle mapping lives (``udp``: seen one way only; ``udp_stream``: seen both ways)."""
    out: dict[str, str] = {}
    for key, value in (("nf_conntrack_udp_timeout", udp),
                       ("nf_conntrack_udp_timeout_stream", udp_stream)):
        if value is not None:
            if not 1 <= value <= 86400:
                raise ValueError(f"{key} must be 1..86400 s, not {value}")
            out[f"net.netfilter.{key}"] = str(value)
    return out
