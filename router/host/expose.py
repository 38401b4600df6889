"""``weft expose`` / ``weft hide``: the host on the mesh, and masquerading for containers.

Theory of operation
-------------------
Exposing gives the host itself addresses on the network: they go on the ``weft`` bridge,
so the kernel routes each exposed subnet to the bridge and the host reaches containers on
every peer (local ports directly, remote ones through the TAP/VXLAN ports). The other
direction, containers reaching what lies beyond the host, needs forwarding and NAT, which
live in an nftables table of our own, ``table ip weft``::

    table ip weft {
      chain postrouting { type nat hook postrouting priority srcnat; policy accept;
        ip saddr S ip daddr != S oifname != "weft" masquerade   comment "weft-expose S" }
      chain forward { type filter hook forward priority filter; policy accept;
        iifname "weft" ip saddr S oifname != "weft" accept      comment "weft-expose S"
        oifname "weft" ip daddr S ct state established,related accept  comment ... }
    }

one set of three rules per exposed subnet S (the network of an exposed CIDR; several
addresses in one subnet share it). The rules are found again by their comment, so hide
deletes exactly ours (by handle), and the table goes once no rule is left in it. All of
it is programmed with ``nft -j -f -`` (one JSON batch is one kernel transaction), never
iptables. Exposing also turns on ``net.ipv4.ip_forward`` in this namespace when it was
off, and records that it did: hiding the last address (or ``reset``) turns it off again.

The pure part (``subnet_rules``, ``parse_table``, ``plan``, ``select``) decides; ``Host``
carries it out in the kernel (rtnetlink for addresses, ``nft`` for rules, /proc/sys for
forwarding); ``Exposer`` keeps the record in the data dir (state key ``"exposed"``:
CIDRs in the order exposed, the DNS name, whether we turned forwarding on) and drives
``Host`` from a worker thread. The record is written *before* expose changes the kernel
and *after* hide does, so after a crash it never holds less than the kernel does; a
restarted router puts back what the record holds (``restore``).

IPAM (the addresses come from the allocator under the identifier ``EXPOSE_IDENT``, like
Weave's ``weave:expose``) and DNS stay with the daemon, which calls in here.

IPv6. An exposed IPv6 subnet gets the same three rules in a table of its own,
``table ip6 weft`` (the IPv4 table stays as it was), and ``net.ipv6.conf.all.forwarding``
is turned on (and recorded, and off again) like ``ip_forward``. Whether its traffic out
is NATed depends on the prefix: a unique local subnet (fc00::/7, the usual overlay) is
masqueraded, because nothing beyond the host routes ULAs back and the containers are to
reach out as with IPv4; a global subnet is *routed* (forward rules only, no masquerade):
its addresses are meant to be reachable end to end, and NAT would hide them behind the
host's for no gain; routing it to the hosts is the upstream network's part. (Linux
ignores router advertisements on interfaces with ``accept_ra=1`` while forwarding is on:
a host that takes its own IPv6 address by SLAAC wants ``accept_ra=2`` on its uplink.)
"""

from __future__ import annotations

import copy
import errno
import functools
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.host.datadir import DataDir
from weftnet.router.host.nftrun import run_nft

log = logging.getLogger("weft")

EXPOSE_IDENT = "weft:expose"      # IPAM identifier and DNS "container" of the host's addresses
STATE_KEY = "exposed"
BRIDGE = "weft"                    # netdev.BRIDGE, without importing netlink into the CLI
FAMILY = "ip"
FAMILY6 = "ip6"                     # IPv6 subnets: a table of their own, same name
FAMILIES = (FAMILY, FAMILY6)
TABLE = "weft"
POSTROUTING = "postrouting"
FORWARD = "forward"
COMMENT_PREFIX = "weft-expose "
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP6_FORWARD = Path("/proc/sys/net/ipv6/conf/all/forwarding")
ULA = IPv6Network("fc00::/7")

# the base chains of our table: name -> (type, hook, priority)
CHAINS: dict[str, tuple[str, str, int]] = {
    POSTROUTING: ("nat", "postrouting", 100),   # srcnat
    FORWARD: ("filter", "forward", 0),          # filter
}

T = TypeVar("T")
Command = dict[str, Any]   # one nft JSON command: {"add": {"rule": {...}}}
Net = IPv4Network | IPv6Network
Cidr = IPv4Interface | IPv6Interface


class ExposeError(LocalProtocolError):
    """Programming the host failed; the message is one line for users."""


# --- the pure part: rules, listings, plans --------------------------------------------------


def comment_of(net: Net) -> str:
    return COMMENT_PREFIX + str(net)


def family_of(net: Net | Cidr) -> str:
    return FAMILY6 if net.version == 6 else FAMILY


def masqueraded(net: Net) -> bool:
    """IPv4 and unique local IPv6 subnets are NATed on their way out; global IPv6 ones
    are routed (see the module docstring)."""
    return isinstance(net, IPv4Network) or net.subnet_of(ULA)


def _prefix(net: Net) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _match(op: str, left: Any, right: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def subnet_rules(net: Net) -> list[tuple[str, list[dict[str, Any]]]]:
    """The rules for one exposed subnet: (chain, nft JSON expressions), in order."""
    proto = "ip6" if net.version == 6 else "ip"
    saddr = {"payload": {"protocol": proto, "field": "saddr"}}
    daddr = {"payload": {"protocol": proto, "field": "daddr"}}
    iif, oif = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}
    pfx = _prefix(net)
    nat = [(POSTROUTING, [_match("==", saddr, pfx), _match("!=", daddr, pfx),
                          _match("!=", oif, BRIDGE), {"masquerade": None}])]
    return [
        *(nat if masqueraded(net) else []),
        (FORWARD, [_match("==", iif, BRIDGE), _match("==", saddr, pfx),
                   _match("!=", oif, BRIDGE), {"accept": None}]),
        (FORWARD, [_match("==", oif, BRIDGE), _match("==", daddr, pfx),
                   _match("in", {"ct": {"key": "state"}}, ["established", "related"]),
                   {"accept": None}]),
    ]


@dataclass(frozen=True, slots=True)
class RuleView:
    chain: str
    handle: int
    comment: str


@dataclass(frozen=True, slots=True)
class TableView:
    """What ``nft -j list table ip weft`` shows that matters here."""

    chains: frozenset[str]
    rules: tuple[RuleView, ...]

    def ours(self) -> dict[str, list[RuleView]]:
        """Our rules by the subnet text in their comment."""
        out: dict[str, list[RuleView]] = {}
        for rule in self.rules:
            if rule.comment.startswith(COMMENT_PREFIX):
                out.setdefault(rule.comment.removeprefix(COMMENT_PREFIX), []).append(rule)
        return out

    def foreign(self) -> list[RuleView]:
        return [r for r in self.rules if not r.comment.startswith(COMMENT_PREFIX)]


def parse_table(listing: Any) -> TableView:
    """The chains and rules of our table in an ``nft -j list table`` answer."""
    items = listing.get("nftables") if isinstance(listing, dict) else None
    if not isinstance(items, list):
        raise ExposeError("nft listed the table in a form not understood")
    chains: set[str] = set()
    rules: list[RuleView] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        chain = item.get("chain")
        if isinstance(chain, dict) and chain.get("table") == TABLE:
            chains.add(str(chain.get("name")))
        rule = item.get("rule")
        if isinstance(rule, dict) and rule.get("table") == TABLE:
            handle = rule.get("handle")
            if isinstance(handle, int):
                rules.append(RuleView(str(rule.get("chain")), handle, str(rule.get("comment", ""))))
    return TableView(frozenset(chains), tuple(rules))


def _table_ref(family: str = FAMILY) -> dict[str, Any]:
    return {"family": family, "name": TABLE}


def plan(table: TableView | None, wanted: Iterable[Net], family: str = FAMILY) -> list[Command]:
    """The nft commands that make our table of ``family`` hold exactly the rules of
    ``wanted`` (subnets of that family).

    Our rules of other subnets (and incomplete sets) are deleted by handle, missing sets
    added; with nothing wanted, the table goes too unless someone else's rules are in it.
    ``[]`` when there is nothing to do."""
    want = sorted(set(wanted), key=lambda n: (int(n.network_address), n.prefixlen))
    if table is None:
        if not want:
            return []
        table = TableView(frozenset(), ())
        commands: list[Command] = [{"add": {"table": _table_ref(family)}}]
    else:
        commands = []
    if not want and not table.foreign():
        return [{"delete": {"table": _table_ref(family)}}]
    for name, (kind, hook, prio) in CHAINS.items():
        if want and name not in table.chains:
            commands.append({"add": {"chain": {
                "family": family, "table": TABLE, "name": name, "type": kind, "hook": hook,
                "prio": prio, "policy": "accept"}}})
    ours = table.ours()
    keep: set[str] = set()
    for net in want:   # a complete set stays; an incomplete one is replaced
        have = Counter(rule.chain for rule in ours.get(str(net), []))
        if have == Counter(chain for chain, _ in subnet_rules(net)):
            keep.add(str(net))
    for text in sorted(ours):
        if text not in keep:
            for rule in ours[text]:
                commands.append({"delete": {"rule": {
                    "family": family, "table": TABLE, "chain": rule.chain,
                    "handle": rule.handle}}})
    for net in want:
        if str(net) not in keep:
            for chain, expr in subnet_rules(net):
                commands.append({"add": {"rule": {
                    "family": family, "table": TABLE, "chain": chain,
                    "comment": comment_of(net), "expr": expr}}})
    return commands


def subnets(cidrs: Iterable[Cidr], family: str | None = None) -> list[Net]:
    """The subnets of ``cidrs`` (only those of ``family``, when given), in order."""
    return sorted({c.network for c in cidrs if family in (None, family_of(c))},
                  key=lambda n: (n.version, int(n.network_address), n.prefixlen))


def select(exposed: list[Cidr], texts: list[str],
           default_subnet: Net | None) -> list[Cidr]:
    """The exposed addresses ``hide`` ADDR arguments name: none given means all;
    ``IP/LEN`` or ``IP`` that address; ``net:CIDR`` / ``net:default`` those exposed in that
    subnet. Naming an address not exposed is not an error (hide is idempotent)."""
    if not texts:
        return list(exposed)
    chosen: list[Cidr] = []
    for text in texts:
        word = text.strip()
        if word.startswith("net:"):
            if word == "net:default":
                if default_subnet is None:
                    raise LocalProtocolError("net:default needs IPAM, which is off; "
                                             "give the address as IP/LEN")
                net = default_subnet
            else:
                try:
                    net = ipaddress.ip_network(word.removeprefix("net:"))
                except ValueError:
                    raise LocalProtocolError(f"{word}: not a subnet (net:CIDR with the host bits "
                                             "zero, e.g. net:10.32.1.0/24 or net:fd00:1::/64)") from None
            chosen += [c for c in exposed if c.network == net]
        elif "/" in word:
            try:
                iface = ipaddress.ip_interface(word)
            except ValueError:
                raise LocalProtocolError(f"{word}: not an IP address with prefix length") from None
            chosen += [c for c in exposed if c == iface]
        else:
            try:
                ip = ipaddress.ip_address(word)
            except ValueError:
                raise LocalProtocolError(f"{word}: not an IP address (give IP/LEN, IP, "
                                         "net:CIDR or net:default)") from None
            chosen += [c for c in exposed if c.ip == ip]
    return list(dict.fromkeys(chosen))


# --- the record --------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """What is exposed (persisted as state key ``"exposed"``)."""

    cidrs: list[Cidr] = field(default_factory=list)
    name: str | None = None            # the DNS name registered for them
    forward_changed: bool = False      # we turned ip_forward on
    forward6_changed: bool = False     # we turned IPv6 forwarding on

    @classmethod
    def from_json(cls, obj: Any) -> Record:
        rec = cls()
        if not isinstance(obj, dict):
            return rec
        for text in obj.get("cidrs", []) if isinstance(obj.get("cidrs"), list) else []:
            try:
                if not isinstance(text, str):
                    raise ValueError(text)
                iface = ipaddress.ip_interface(text)
            except ValueError:
                log.warning("expose: ignoring a bad address in the data dir: %r", text)
                continue
            if iface not in rec.cidrs:
                rec.cidrs.append(iface)
        name = obj.get("name")
        rec.name = name if isinstance(name, str) and name else None
        rec.forward_changed = obj.get("forward_changed") is True
        rec.forward6_changed = obj.get("forward6_changed") is True
        return rec

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cidrs": [str(c) for c in self.cidrs], "name": self.name,
                               "forward_changed": self.forward_changed}
        if self.forward6_changed:
            out["forward6_changed"] = True
        return out

    def changed(self, version: int) -> bool:
        """Whether we turned forwarding of IP ``version`` on."""
        return self.forward6_changed if version == 6 else self.forward_changed

    def mark_changed(self, version: int, value: bool) -> None:
        if version == 6:
            self.forward6_changed = value
        else:
            self.forward_changed = value

    def versions(self) -> set[int]:
        return {c.version for c in self.cidrs}

    @property
    def empty(self) -> bool:
        return (not self.cidrs and not self.forward_changed and not self.forward6_changed
                and self.name is None)


def load_record(datadir: DataDir) -> Record:
    return Record.from_json(datadir.load_state().get(STATE_KEY))


def save_record(datadir: DataDir, rec: Record) -> None:
    state = datadir.load_state()
    if rec.empty:
        state.pop(STATE_KEY, None)
    else:
        state[STATE_KEY] = rec.as_json()
    datadir.save_state(state)


# --- the kernel --------------------------------------------------------------------------


class HostOps(Protocol):
    """What ``Exposer`` needs from the host namespace (``Host``; tests fake it)."""

    def add_address(self, iface: Cidr) -> None: ...

    def remove_address(self, iface: Cidr) -> None: ...

    def addresses(self) -> list[Cidr]: ...

    def forwarding(self, version: int = 4) -> bool: ...

    def set_forwarding(self, on: bool, version: int = 4) -> None: ...

    def table(self, family: str = FAMILY) -> TableView | None: ...

    def nft(self, commands: list[Command]) -> None: ...


class Host:
    """The namespace this process runs in: rtnetlink, ``nft``, /proc/sys."""

    def __init__(self, *, ip_forward: Path = IP_FORWARD, ip6_forward: Path = IP6_FORWARD,
                 nft: str = "nft") -> None:
        self.ip_forward = ip_forward
        self.ip6_forward = ip6_forward
        self.nft_command = nft

    # addresses on the bridge

    def _bridge(self, ipr: Any) -> int | None:
        found = ipr.link_lookup(ifname=BRIDGE)
        return int(found[0]) if found else None

    def add_address(self, iface: Cidr) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute(groups=0) as ipr:
            index = self._bridge(ipr)
            if index is None:
                raise ExposeError(f"no bridge {BRIDGE} (the router creates it on launch)")
            # IPv6: no duplicate address detection (IFA_F_NODAD), usable at once
            extra = {"flags": 0x02} if iface.version == 6 else {}
            try:
                ipr.addr("add", index=index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen, **extra)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise ExposeError(f"cannot add {iface} to {BRIDGE}: "
                                      f"{errno_text(exc.code)}") from None

    def remove_address(self, iface: Cidr) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute(groups=0) as ipr:
            index = self._bridge(ipr)
            if index is None:
                return
            try:
                ipr.addr("del", index=index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)
            except NetlinkError as exc:
                if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                    raise ExposeError(f"cannot remove {iface} from {BRIDGE}: "
                                      f"{errno_text(exc.code)}") from None

    def addresses(self) -> list[Cidr]:
        import socket

        from pyroute2 import IPRoute

        with IPRoute(groups=0) as ipr:
            index = self._bridge(ipr)
            if index is None:
                return []
            out: list[Cidr] = [IPv4Interface(f"{m.get('address')}/{m['prefixlen']}")
                               for m in ipr.get_addr(family=socket.AF_INET, index=index)]
            out += [IPv6Interface(f"{m.get('address')}/{m['prefixlen']}")
                    for m in ipr.get_addr(family=socket.AF_INET6, index=index)
                    if m.get("scope") == 0]   # not the kernel's own fe80::
            return out

    # forwarding

    def _forward_path(self, version: int) -> Path:
        return self.ip6_forward if version == 6 else self.ip_forward

    def forwarding(self, version: int = 4) -> bool:
        path = self._forward_path(version)
        try:
            return path.read_text().strip() != "0"
        except OSError as exc:
            raise ExposeError(f"cannot read {path}: {exc.strerror or exc}") from None

    def set_forwarding(self, on: bool, version: int = 4) -> None:
        path = self._forward_path(version)
        try:
            path.write_text("1\n" if on else "0\n")
        except OSError as exc:
            raise ExposeError(f"cannot write {path}: {exc.strerror or exc}") from None

    # nftables

    def _run_nft(self, args: list[str], data: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_nft(self.nft_command, args, data, fail=ExposeError,
                       needed_for="expose programs masquerading")

    @staticmethod
    def _error(what: str, proc: subprocess.CompletedProcess[str]) -> ExposeError:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        return ExposeError(f"{what}: {lines[0] if lines else f'nft exited with {proc.returncode}'}")

    def table(self, family: str = FAMILY) -> TableView | None:
        """Our table, None when there is none (or no ``nft`` that could have made one)."""
        if shutil.which(self.nft_command) is None:
            return None
        proc = self._run_nft(["-j", "list", "tables", family])
        if proc.returncode != 0:
            raise self._error("cannot list the nftables tables", proc)
        try:
            items = json.loads(proc.stdout).get("nftables", [])
        except (ValueError, AttributeError):
            raise ExposeError("nft listed its tables in a form not understood") from None
        if not any(isinstance(i, dict) and isinstance(i.get("table"), dict)
                   and i["table"].get("name") == TABLE for i in items):
            return None
        proc = self._run_nft(["-j", "list", "table", family, TABLE])
        if proc.returncode != 0:
            raise self._error(f"cannot list table {family} {TABLE}", proc)
        try:
            return parse_table(json.loads(proc.stdout))
        except ValueError:
            raise ExposeError("nft listed the table in a form not understood") from None

    def nft(self, commands: list[Command]) -> None:
        if not commands:
            return
        proc = self._run_nft(["-j", "-f", "-"], json.dumps({"nftables": commands}))
        if proc.returncode != 0:
            raise self._error(f"cannot program table {TABLE}", proc)


def errno_text(code: int) -> str:
    return os.strerror(code) if code else "unknown error"


# --- synchronous steps (run in a worker thread, or directly by reset) ------------------------


def converge_rules(host: HostOps, cidrs: Iterable[Cidr]) -> None:
    """Make our tables (``ip weft``, ``ip6 weft``) hold exactly the rules for the subnets
    of ``cidrs``; a family with nothing wanted and no table costs one listing."""
    cidrs = list(cidrs)
    for family in FAMILIES:
        want = subnets(cidrs, family)
        commands = plan(host.table(family), want, family)
        if commands:
            host.nft(commands)


def apply(host: HostOps, rec: Record, turn_forwarding_on: bool) -> None:
    """Put what ``rec`` holds into the kernel (idempotent)."""
    have = set(host.addresses())
    for iface in rec.cidrs:
        if iface not in have:
            host.add_address(iface)
    if turn_forwarding_on:
        for version in sorted(rec.versions()):
            if not host.forwarding(version):
                host.set_forwarding(True, version)
    converge_rules(host, rec.cidrs)


def take_away(host: HostOps, gone: list[Cidr], rec: Record) -> None:
    """Remove ``gone`` from the bridge, keep what ``rec`` still holds (deleting a primary
    address can take its secondaries with it: they are put back), converge the rules, and
    turn forwarding of a family off again when none of its addresses is left and we
    turned it on."""
    for iface in gone:
        host.remove_address(iface)
    apply(host, rec, turn_forwarding_on=False)
    for version in (4, 6):
        if version not in rec.versions() and rec.changed(version):
            host.set_forwarding(False, version)


def teardown(datadir: DataDir, host: HostOps | None = None, *, table: bool = True) -> list[str]:
    """``reset``: remove every exposed address, our table (when ``table``; else only when
    the record says there is something) and the forwarding we turned on; forget the
    record. Returns the CIDRs removed. Errors are logged, never raised: reset goes on."""
    try:
        rec = load_record(datadir)
    except LocalProtocolError as exc:   # a damaged state file: the table still goes
        log.warning("reset: %s", exc.reason)
        rec = Record()
    if not table and rec.empty:
        return []
    ops: HostOps = host if host is not None else Host()
    removed: list[str] = []
    for iface in rec.cidrs:
        try:
            ops.remove_address(iface)
            removed.append(str(iface))
        except LocalProtocolError as exc:
            log.warning("reset: %s", exc.reason)
    for family in FAMILIES:
        try:
            if ops.table(family) is not None:
                ops.nft([{"delete": {"table": _table_ref(family)}}])
        except LocalProtocolError as exc:
            if table or rec.cidrs:
                log.warning("reset: %s", exc.reason)
    for version in (4, 6):
        if rec.changed(version):
            try:
                ops.set_forwarding(False, version)
            except LocalProtocolError as exc:
                log.warning("reset: %s", exc.reason)
    if not rec.empty:
        try:
            save_record(datadir, Record())
        except LocalProtocolError as exc:
            log.warning("reset: %s", exc.reason)
    return removed


# --- the daemon's side -----------------------------------------------------------------------


class Exposer:
    """The record and the kernel together; the daemon adds IPAM and DNS around it.

    Callers hold ``lock`` around a whole command (IPAM waits included), so two commands
    never interleave. The record is read and written on the trio thread only (the data
    dir's state file is shared with the rest of the daemon); kernel work runs in a
    worker thread."""

    def __init__(self, datadir: DataDir, host: HostOps | None = None) -> None:
        self.datadir = datadir
        self.host: HostOps = host if host is not None else Host()
        self.lock = trio.Lock()

    def record(self) -> Record:
        return load_record(self.datadir)

    def idents(self) -> set[str]:
        """The IPAM/DNS identifiers in use: ``{EXPOSE_IDENT}`` while anything is exposed."""
        return {EXPOSE_IDENT} if self.record().cidrs else set()

    async def _run(self, fn: Callable[[], T]) -> T:
        result: T = await trio.to_thread.run_sync(fn)
        return result

    def check(self, cidrs: list[Cidr]) -> None:
        """Refuse an address exposed already with another prefix length."""
        held = self.record().cidrs
        for iface in cidrs:
            for other in held:
                if other.ip == iface.ip and other != iface:
                    raise LocalProtocolError(f"{iface.ip} is exposed already as {other}; "
                                             f"hide {other} first")

    async def expose(self, cidrs: list[Cidr], name: str | None) -> Record:
        """Add ``cidrs`` (and the DNS ``name``, when given) to the record and the kernel;
        on failure, undo this call's changes and raise. Returns the record before."""
        self.check(cidrs)
        before = self.record()
        rec = copy.deepcopy(before)
        rec.cidrs += [c for c in cidrs if c not in rec.cidrs]
        if name is not None:
            rec.name = name
        versions = sorted(rec.versions())
        was_on = {v: await self._run(functools.partial(self.host.forwarding, v)) for v in versions}
        for v in versions:
            if not was_on[v]:
                rec.mark_changed(v, True)
        save_record(self.datadir, rec)   # before the kernel: a crash leaves no orphans
        try:
            await self._run(lambda: apply(self.host, rec, turn_forwarding_on=True))
        except BaseException:
            with trio.CancelScope(shield=True):
                added = [c for c in rec.cidrs if c not in before.cidrs]
                try:
                    await self._run(lambda: self._undo(added, before, was_on))
                except LocalProtocolError as exc:
                    log.warning("expose: undoing a failed expose: %s", exc.reason)
                save_record(self.datadir, before)
            raise
        log.info("exposed %s", " ".join(str(c) for c in rec.cidrs))
        return before

    def _undo(self, added: list[Cidr], before: Record, was_on: dict[int, bool]) -> None:
        for iface in added:
            self.host.remove_address(iface)
        converge_rules(self.host, before.cidrs)
        for v, on in sorted(was_on.items()):
            if not on and self.host.forwarding(v):
                self.host.set_forwarding(False, v)

    async def hide(self, texts: list[str], default_subnet: Net | None,
                   default_subnet6: Net | None = None) -> tuple[list[Cidr], Record]:
        """Take away the addresses ``texts`` name (all when none): (removed, record after)."""
        rec = self.record()
        gone = select(rec.cidrs, texts, default_subnet)
        if default_subnet6 is not None and "net:default" in [t.strip() for t in texts]:
            gone += [c for c in select(rec.cidrs, ["net:default"], default_subnet6) if c not in gone]
        after = copy.deepcopy(rec)
        after.cidrs = [c for c in rec.cidrs if c not in gone]
        if not after.cidrs:
            after.name = None
        left = after.versions()
        stale = [v for v in (4, 6) if v not in left and rec.changed(v)]
        if not gone and not stale:
            return [], rec   # nothing to take away (an earlier hide finished the job)
        await self._run(lambda: take_away(self.host, gone, after))
        for v in stale:
            after.mark_changed(v, False)
        save_record(self.datadir, after)   # after the kernel: the record never holds less
        if gone:
            log.info("hid %s", " ".join(str(c) for c in gone))
        return gone, after

    async def restore(self) -> None:
        """At launch: put back what the record holds (a reboot or a hand took it away)."""
        rec = self.record()
        if not rec.cidrs:
            return
        try:
            for v in sorted(rec.versions()):
                if not await self._run(functools.partial(self.host.forwarding, v)) and not rec.changed(v):
                    rec.mark_changed(v, True)
                    save_record(self.datadir, rec)
            await self._run(lambda: apply(self.host, rec, turn_forwarding_on=True))
        except LocalProtocolError as exc:
            log.warning("cannot restore the exposed addresses %s: %s",
                        " ".join(str(c) for c in rec.cidrs), exc.reason)
            return
        log.info("exposed %s (restored)", " ".join(str(c) for c in rec.cidrs))

    def teardown(self) -> list[str]:
        """``reset`` (synchronous: the router is going away)."""
        return teardown(self.datadir, self.host)
