"""From policies and workloads to the ruleset of one host, and to nftables text.

Theory of operation
-------------------
A *workload* is a container anywhere in the mesh: its labels and addresses (``store``
gossips them). A host enforces the policies of its *local* workloads only: ingress where
a packet is delivered, egress where it is sent, so every packet is judged by the host of
each container it concerns, whatever path it took (sleeve, fast path, the same bridge).

``compile_ruleset`` applies the Kubernetes rules:

* a workload selected by no policy of a type (Ingress, Egress) gets no chain for it:
  everything passes in that direction;
* a selected workload gets one chain per direction: the union, over every selecting
  policy of that type, of its rules; a packet passes when one rule allows it (its peer
  is in the rule's addresses and its protocol/port is in the rule's ports), else it is
  dropped and counted against every policy that selected the workload in that direction;
* a peer ``podSelector`` stands for the addresses of the workloads it matches, at the
  time of compilation (the driver recompiles when labels, addresses or policies change);
  ``ipBlock`` for its CIDR minus its ``except`` blocks; a rule whose peers come to no
  address allows nothing.

Chains with equal contents are shared. ``evaluate`` runs a ruleset on one packet the way
the kernel runs the rendered table; tests hold it against a direct oracle of the
Kubernetes semantics over random policies and labels.

The nftables table (``render``; one ``inet`` table so IPv4 and IPv6 are one ruleset)::

    table inet weft-policy {
      counter p0 { }  ...                         one per policy: its drops
      chain forward { type filter hook forward priority filter - 5; policy accept;
        ct state established,related accept       replies of allowed connections
        icmpv6 type { nd-* } accept               neighbour discovery (ARP never gets here)
        iifname "weft" ip saddr vmap { LOCAL-IP : jump e0, ... }     egress of the sender
        oifname "weft" ip daddr vmap { LOCAL-IP : jump i0, ... } }   ingress of the receiver
      chain input  { ... hook input ...  iifname "weft" ip saddr vmap { ... } }   to the host
      chain output { ... hook output ... oifname "weft" ip daddr vmap { ... } }   from the host
      chain i0 {
        ip saddr { 10.32.0.7, 192.168.0.0/16 } tcp dport { 5432 } return      allowed: go on
        counter name "p0" counter name "p3" drop }                           no rule allowed
    }

Bridged frames reach the ``inet`` hooks because the router turns on the bridge's own
``nf_call_iptables`` / ``nf_call_ip6tables`` (per bridge, not the global sysctl); their
``iifname``/``oifname`` is then the bridge, so containers are told apart by address. The
host's own traffic to and from exposed addresses passes ``output`` / ``input``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .documents import Network, NetworkPolicy, Peer, Port, Rule

TABLE = "weft-policy"
FAMILY = "inet"
BRIDGE = "weft"
PRIORITY = "filter - 5"    # before other filter chains of the host: our drops come first
LOG_PREFIX = "weft-policy drop: "
ND_TYPES = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
            "nd-neighbor-advert", "nd-redirect")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Workload:
    """A container of the mesh: ``key`` is unique (origin and container)."""

    key: str
    labels: Mapping[str, str]
    ips: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Allow:
    """Packets whose peer is in ``peers`` (None: any) on one of ``ports`` (empty: any)."""

    peers: tuple[Network, ...] | None
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True, slots=True)
class Chain:
    direction: str                 # "Ingress" (peer = source) or "Egress" (peer = destination)
    allows: tuple[Allow, ...]
    policies: tuple[str, ...]      # the selecting policies, sorted: charged with drops


@dataclass(frozen=True, slots=True)
class Ruleset:
    chains: tuple[Chain, ...] = ()
    ingress: tuple[tuple[str, int], ...] = ()     # (local address, chain index), sorted
    egress: tuple[tuple[str, int], ...] = ()
    selected: Mapping[str, tuple[str, ...]] = field(default_factory=dict)   # policy -> local keys

    @property
    def empty(self) -> bool:
        return not self.chains

    def counter_names(self) -> dict[str, str]:
        """nft counter name -> policy name (``p0``, ``p1``... in policy-name order)."""
        names = sorted({p for c in self.chains for p in c.policies})
        return {f"p{i}": name for i, name in enumerate(names)}


def _addr_key(text: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(text)
    return (ip.version, int(ip))


def _collapse(nets: Iterable[Network]) -> tuple[Network, ...]:
    nets = list(nets)
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    out: list[Network] = list(ipaddress.collapse_addresses(v4))
    out += list(ipaddress.collapse_addresses(v6))
    return tuple(out)


def _block_networks(peer: Peer) -> list[Network]:
    assert peer.block is not None
    nets: list[Network] = [peer.block.cidr]
    for exc in peer.block.excepts:
        rest: list[Network] = []
        for n in nets:
            if exc.subnet_of(n):   # type: ignore[arg-type]
                rest += list(n.address_exclude(exc))   # type: ignore[arg-type]
            elif not n.subnet_of(exc):   # type: ignore[arg-type]
                rest.append(n)
        nets = rest
    return nets


def _peer_networks(peer: Peer, workloads: Sequence[Workload]) -> list[Network]:
    if peer.selector is not None:
        return [ipaddress.ip_network(ip) for w in workloads if peer.selector.matches(w.labels)
                for ip in w.ips]
    return _block_networks(peer)


def _allows(rules: Sequence[Rule], workloads: Sequence[Workload]) -> list[Allow]:
    out = []
    for rule in rules:
        if rule.peers is None:
            out.append(Allow(None, rule.ports))
            continue
        nets = _collapse(n for p in rule.peers for n in _peer_networks(p, workloads))
        if nets:
            out.append(Allow(nets, rule.ports))
    return out


def compile_ruleset(policies: Sequence[NetworkPolicy], workloads: Sequence[Workload],
                    local: Iterable[str]) -> Ruleset:
    """The ruleset of the host whose workloads are those with keys in ``local``."""
    policies = sorted(policies, key=lambda p: p.name)
    workloads = sorted(workloads, key=lambda w: w.key)
    local_keys = set(local)
    chains: list[Chain] = []
    index: dict[Chain, int] = {}
    maps: dict[str, list[tuple[str, int]]] = {"Ingress": [], "Egress": []}
    selected: dict[str, list[str]] = {}
    for w in workloads:
        if w.key not in local_keys:
            continue
        for direction in ("Ingress", "Egress"):
            chosen = [p for p in policies if direction in p.types and p.selector.matches(w.labels)]
            if not chosen:
                continue
            allows: list[Allow] = []
            for p in chosen:
                allows += _allows(p.ingress if direction == "Ingress" else p.egress, workloads)
                selected.setdefault(p.name, [])
                if w.key not in selected[p.name]:
                    selected[p.name].append(w.key)
            chain = Chain(direction, tuple(allows), tuple(p.name for p in chosen))
            if chain not in index:
                index[chain] = len(chains)
                chains.append(chain)
            for ip in w.ips:
                maps[direction].append((ip, index[chain]))
    for p in policies:
        selected.setdefault(p.name, [])

    def table(entries: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
        best: dict[str, int] = {}
        for ip, i in entries:   # an address held twice (a stale record): the first chain
            best.setdefault(ip, i)
        return tuple(sorted(best.items(), key=lambda e: _addr_key(e[0])))

    return Ruleset(tuple(chains), table(maps["Ingress"]), table(maps["Egress"]),
                   {k: tuple(v) for k, v in sorted(selected.items())})


# --- the kernel's view, in Python (for tests and for `weft policy` explanations) ------------


def _chain_allows(chain: Chain, peer: Address, protocol: str, port: int) -> bool:
    for allow in chain.allows:
        if allow.peers is not None and not any(peer in n for n in allow.peers):
            continue
        if allow.ports and not any(p.matches(protocol, port) for p in allow.ports):
            continue
        return True
    return False


def evaluate(ruleset: Ruleset, src: str, dst: str, protocol: str, port: int) -> bool:
    """Whether a new connection ``src -> dst`` (``protocol``/``port``) passes this host."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    egress = dict(ruleset.egress)
    ingress = dict(ruleset.ingress)
    if src in egress and not _chain_allows(ruleset.chains[egress[src]], d, protocol, port):
        return False
    return not (dst in ingress and not _chain_allows(ruleset.chains[ingress[dst]], s, protocol, port))


# --- nftables text -----------------------------------------------------------------------


def _set(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _port_text(port: Port) -> str | None:
    if port.port is None:
        return None
    if port.end_port is not None and port.end_port != port.port:
        return f"{port.port}-{port.end_port}"
    return str(port.port)


def _allow_lines(allow: Allow, peer_field: str) -> list[str]:
    addr_matches: list[str] = []
    if allow.peers is None:
        addr_matches.append("")
    else:
        for family, nets in (("ip", [n for n in allow.peers if n.version == 4]),
                             ("ip6", [n for n in allow.peers if n.version == 6])):
            if nets:
                addr_matches.append(f"{family} {peer_field} {_set([_net_text(n) for n in nets])} ")
    proto_matches: list[str] = []
    if not allow.ports:
        proto_matches.append("")
    else:
        by_proto: dict[str, list[str] | None] = {}
        for p in allow.ports:
            text = _port_text(p)
            held = by_proto.setdefault(p.protocol, [])
            if text is None or held is None:
                by_proto[p.protocol] = None    # every port of the protocol
            else:
                held.append(text)
        for proto in sorted(by_proto):
            ports = by_proto[proto]
            l4 = f"meta l4proto {proto.lower()} "
            if ports is None:
                proto_matches.append(l4)
            else:
                proto_matches.append(l4 + f"th dport {_set(sorted(set(ports), key=_port_sort))} ")
    return [f"{a}{p}return" for a in addr_matches for p in proto_matches]


def _port_sort(text: str) -> int:
    return int(text.split("-")[0])


def _net_text(n: Network) -> str:
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _vmap(entries: Sequence[tuple[str, int]], prefix: str, version: int) -> list[str]:
    items = [f"{ip} : jump {prefix}{i}" for ip, i in entries if ipaddress.ip_address(ip).version == version]
    return items


def render(ruleset: Ruleset, *, log_drops: bool = False, bridge: str = BRIDGE,
           table: str = TABLE) -> str:
    """The whole table as ``nft -f`` text that replaces any previous one atomically."""
    counters = {name: c for c, name in ruleset.counter_names().items()}
    lines = [f"table {FAMILY} {table} {{}}", f"delete table {FAMILY} {table}",
             f"table {FAMILY} {table} {{"]
    for cname in sorted(counters.values(), key=lambda n: int(n[1:])):
        lines.append(f"  counter {cname} {{ }}")
    nd = f"    icmpv6 type {{ {', '.join(ND_TYPES)} }} accept"
    head = ["    ct state established,related accept", nd]

    def maps(field_name: str, entries: Sequence[tuple[str, int]], prefix: str, guard: str) -> list[str]:
        out = []
        for family, version in (("ip", 4), ("ip6", 6)):
            items = _vmap(entries, prefix, version)
            if items:
                addr_field = "saddr" if field_name == "s" else "daddr"
                out.append(f"    {guard} {family} {addr_field} vmap {{ {', '.join(items)} }}")
        return out

    ingress_c = {i for _, i in ruleset.ingress}
    egress_c = {i for _, i in ruleset.egress}
    forward = maps("s", ruleset.egress, "c", f'iifname "{bridge}"') + \
        maps("d", ruleset.ingress, "c", f'oifname "{bridge}"')
    for name, hook, body in (("forward", "forward", forward),
                             ("input", "input", maps("s", ruleset.egress, "c", f'iifname "{bridge}"')),
                             ("output", "output", maps("d", ruleset.ingress, "c", f'oifname "{bridge}"'))):
        lines.append(f"  chain {name} {{")
        lines.append(f"    type filter hook {hook} priority {PRIORITY}; policy accept;")
        lines += head + body
        lines.append("  }")
    for i, chain in enumerate(ruleset.chains):
        assert i in ingress_c or i in egress_c
        peer_field = "saddr" if chain.direction == "Ingress" else "daddr"
        lines.append(f"  chain c{i} {{")
        for allow in chain.allows:
            lines += ["    " + line for line in _allow_lines(allow, peer_field)]
        charge = " ".join(f'counter name "{counters[p]}"' for p in chain.policies)
        if log_drops:
            lines.append(f'    limit rate 10/second burst 20 packets log prefix "{LOG_PREFIX}"')
            # the log rule does not end the chain: the drop below still runs
        lines.append(f"    {charge} drop")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delete(table: str = TABLE) -> str:
    """``nft -f`` text that removes our table whether or not it exists."""
    return f"table {FAMILY} {table} {{}}\ndelete table {FAMILY} {table}\n"
