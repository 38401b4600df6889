"""``weft status [VIEW]``: the report JSON rendered in Weave's layout.

Theory of operation
-------------------
A pure function of the report (the contract's ``weft report`` schema), so it is tested
with literal dicts and exact expected text. The summary prints ``Key: value`` lines with
keys right-aligned to one column, one block per service, as ``weave status`` does::

            Version: 0.1.0

            Service: router
           Protocol: weft 1..1
               Name: 02:00:00:00:00:01(host1)
         Encryption: disabled
      PeerDiscovery: enabled
            Targets: 1
        Connections: 2 (1 established, 1 failed)
              Peers: 2 (with 2 established connections)
     TrustedSubnets: none

The other views follow ``weave status connections|peers|targets|ipam|dns``; ``connections``
gives one line per connection, columns aligned to the longest entry::

    -> 10.0.0.2:6783         established sleeve 02:00:00:00:00:02(host2) encrypted mtu=1376 (why sleeve)
    <- 10.0.0.3:41234        pending     02:00:00:00:00:03(host3) no answer to UDP heartbeats yet
    -> 10.0.0.9:6783         failed      connection refused; retry never
    .. 02:00:00:00:00:04(h4) relayed     via 02:00:00:00:00:02(host2); both NATs symmetric; next try in 40s

With several passwords (``--password-file``) an encrypted connection also shows which of
ours it uses (``password=N``: the line of the password file it is on; nothing secret),
and the summary gets a ``PasswordFile`` line: the file, how many passwords, and a problem
reading it if there is one (``router.password_file`` of the report).

``render_ps`` is ``weft ps``: ``CONTAINER MAC CIDR... [LABELS]``, the name column aligned,
the container's labels (``app=web,tier=db``) last when it has any. Besides the
contract's keys, a few optional ones are shown when present: ``router.discovery``
(bool), ``router.trusted_subnets`` (list of CIDRs), ``router.protocol_min_version`` /
``protocol_max_version``, ``dns.ttl``, ``dns.upstream`` and ``ipam.peers[].active``.
A report missing a required key raises LocalProtocolError (one line), never KeyError.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.render_policy import labels_text, policy_section, policy_view

VIEWS = ("targets", "connections", "peers", "dns", "ipam", "policy")
KEY_WIDTH = 15
PROTOCOL = "weft"
PROTOCOL_MIN_VERSION = 1
PROTOCOL_MAX_VERSION = 1
# Weave's order for the per-state counts of `Connections: N (...)`.
CONNECTION_STATES = ("established", "pending", "retrying", "failed", "connecting")
ADDRESS_WIDTH = 21   # narrowest address column (Weave's), wider when an address needs it
STATE_WIDTH = 11     # "established"
PEER_WIDTH = 32      # narrowest peer column of `status peers`


def render_status(report: Mapping[str, Any], view: str | None = None) -> str:
    """The text of ``weft status [view]``; empty or newline-terminated."""
    renderers: dict[str | None, Callable[[Mapping[str, Any]], list[str]]] = {
        None: _summary,
        "targets": _targets,
        "connections": _connections,
        "peers": _peers,
        "ipam": _ipam,
        "dns": _dns,
        "policy": policy_view,
    }
    renderer = renderers.get(view)
    if renderer is None:
        raise LocalProtocolError(
            f"unknown status view {view!r}: expected one of {', '.join(VIEWS)}"
        )
    try:
        lines = renderer(report)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise LocalProtocolError(f"the router's report is malformed: {detail}") from None
    return "".join(line.rstrip() + "\n" for line in lines)


def _kv(key: str, value: object) -> str:
    return f"{key:>{KEY_WIDTH}}: {value}"


def _peer_label(name: str, nickname: str) -> str:
    return f"{name}({nickname})"


def _enabled(flag: bool) -> str:
    return "enabled" if flag else "disabled"


def _counts(counter: Counter[str], order: tuple[str, ...]) -> str:
    return ", ".join(f"{counter[state]} {state}" for state in order if counter[state])


# -- summary ------------------------------------------------------------------------------


def _summary(report: Mapping[str, Any]) -> list[str]:
    router = report["router"]
    lines = [_kv("Version", report["version"]), ""]
    lines += _router_section(router)
    if report.get("ipam") is not None:
        lines += ["", *_ipam_section(report["ipam"])]
    if report.get("dns") is not None:
        lines += ["", *_dns_section(report["dns"])]
    if report.get("policy") is not None:
        lines += ["", *policy_section(report["policy"])]
    return lines


def _router_section(router: Mapping[str, Any]) -> list[str]:
    connections = router["connections"]
    conn_counts = _counts(Counter(c["state"] for c in connections), CONNECTION_STATES)
    peer_conn_counter: Counter[str] = Counter(
        "established" if c["established"] else "pending"
        for p in router["peers"]
        for c in p["connections"]
    )
    peer_counts = _counts(peer_conn_counter, ("established", "pending"))
    low = router.get("protocol_min_version", PROTOCOL_MIN_VERSION)
    high = router.get("protocol_max_version", PROTOCOL_MAX_VERSION)
    lines = [
        _kv("Service", "router"),
        _kv("Protocol", f"{PROTOCOL} {low}..{high}"),
        _kv("Name", _peer_label(router["name"], router["nickname"])),
        _kv("Encryption", _enabled(router["encryption"])),
    ]
    if "discovery" in router:
        lines.append(_kv("PeerDiscovery", _enabled(router["discovery"])))
    lines += [
        _kv("Targets", len(router["targets"])),
        _kv("Connections", f"{len(connections)}" + (f" ({conn_counts})" if conn_counts else "")),
        _kv(
            "Peers",
            f"{len(router['peers'])}"
            + (f" (with {peer_counts} connections)" if peer_counts else ""),
        ),
    ]
    punch = router.get("punch")
    if isinstance(punch, Mapping):
        lines.append(_kv("NATTraversal", _nat_traversal(punch)))
    if "trusted_subnets" in router:
        subnets = router["trusted_subnets"]
        lines.append(_kv("TrustedSubnets", ", ".join(subnets) if subnets else "none"))
    if router.get("password_file"):
        lines.append(_kv("PasswordFile", password_file_summary(router["password_file"])))
    return lines


def _nat_traversal(punch: Mapping[str, Any]) -> str:
    """``enabled, mapping easy, 1 punched, 1 relayed``: hole punching at a glance."""
    parts = ["enabled"]
    if punch.get("mapping"):
        parts.append(f"mapping {punch['mapping']}")
    parts.append(f"{punch.get('punched_connections', 0)} punched")
    parts.append(f"{len(punch.get('relayed') or {})} relayed")
    return ", ".join(parts)


def password_file_summary(info: Mapping[str, Any]) -> str:
    """``/etc/weft/pw (2 passwords)``, or the problem reading it (nothing changed)."""
    count = int(info["passwords"])
    text = f"{info['path']} ({count} password{'' if count == 1 else 's'})"
    return f"{text}; {info['problem']}" if info.get("problem") else text


def _ipam_section(ipam: Mapping[str, Any]) -> list[str]:
    lines = [
        _kv("Service", "ipam"),
        _kv("Status", ipam["status"]),
        _kv("Range", ipam["range"]),
        _kv("DefaultSubnet", ipam["default_subnet"]),
    ]
    v6 = ipam.get("ipv6")   # --ipalloc-range-v6: the IPv6 allocator's status
    if isinstance(v6, Mapping):
        lines += [_kv("Status6", v6["status"]), _kv("Range6", v6["range"]),
                  _kv("DefaultSubnet6", v6["default_subnet"])]
    return lines


def _dns_section(dns: Mapping[str, Any]) -> list[str]:
    lines = [_kv("Service", "dns"), _kv("Domain", dns["domain"]), _kv("Address", dns["address"])]
    if "upstream" in dns:
        upstream = dns["upstream"]
        lines.append(_kv("Upstream", ", ".join(upstream) if upstream else "none"))
    if "ttl" in dns:
        lines.append(_kv("TTL", dns["ttl"]))
    lines.append(_kv("Entries", len(dns["entries"])))
    return lines


# -- views --------------------------------------------------------------------------------


def _targets(report: Mapping[str, Any]) -> list[str]:
    return [str(t) for t in report["router"]["targets"]]


def _connections(report: Mapping[str, Any]) -> list[str]:
    """``weave status connections``: arrow, address, state, then what we know. Established
    connections show the overlay carrying their traffic, the peer, whether the data is
    encrypted (and with which cipher), the MTU and why this overlay (``overlay_reason``); the others show why
    they are not established (``info``). Columns widen to the longest entry."""
    conns = report["router"]["connections"]
    if not conns:
        return []
    addr_w = max(ADDRESS_WIDTH, *(len(str(c["address"])) for c in conns))
    state_w = max(STATE_WIDTH, *(len(str(c["state"])) for c in conns))
    up = [c for c in conns if c["state"] == "established"]
    overlay_w = max([0, *(len(str(c.get("overlay") or "")) for c in up)])
    peer_w = max([0, *(len(_conn_peer(c)) for c in up)])
    enc_w = max([0, *(len(connection_encryption(c)) for c in up)])
    lines = []
    for c in conns:
        details: list[str] = []
        if c["state"] == "established":
            details += [f"{c.get('overlay') or '':<{overlay_w}}", f"{_conn_peer(c):<{peer_w}}",
                        f"{connection_encryption(c):<{enc_w}}"]
            if c.get("password") is not None:
                details.append(f"password={c['password']}")
            sleeve = c.get("sleeve")
            if connection_encryption(c) == "encrypted" and isinstance(sleeve, Mapping) \
                    and sleeve.get("cipher"):
                details.append(f"cipher={sleeve['cipher']}")
            if c.get("mtu") is not None:
                details.append(f"mtu={c['mtu']}")
            if str(c.get("how") or "").startswith("punched"):
                details.append(str(c["how"]))
            if c.get("overlay_reason"):
                details.append(f"({c['overlay_reason']})")
        else:
            if c.get("peer"):
                details.append(_conn_peer(c))
            if c.get("info"):
                details.append(str(c["info"]))
        arrow = "->" if c["outbound"] else "<-"
        lines.append(f"{arrow} {c['address']:<{addr_w}} {c['state']:<{state_w}} "
                     + " ".join(details))
    return lines + _relayed(report["router"], addr_w, state_w)


def _relayed(router: Mapping[str, Any], addr_w: int, state_w: int) -> list[str]:
    """Peers reached only through others (hole punching's report), after the connections:
    ``.. PEER relayed via HOP; why not direct; next try``."""
    punch = router.get("punch")
    relayed = punch.get("relayed") if isinstance(punch, Mapping) else None
    if not isinstance(relayed, Mapping):
        return []
    lines = []
    for peer, entry in relayed.items():
        details = [f"via {entry.get('via') or 'nobody (unreachable)'}"]
        if entry.get("reason"):
            details.append(str(entry["reason"]))
        if entry.get("retry_in") is not None:
            details.append(f"next try in {entry['retry_in']:.0f}s")
        lines.append(f".. {peer:<{addr_w}} {'relayed':<{state_w}} " + "; ".join(details))
    return lines


def _conn_peer(conn: Mapping[str, Any]) -> str:
    peer = conn.get("peer")
    return _peer_label(peer["name"], peer["nickname"]) if peer else ""


def connection_encryption(conn: Mapping[str, Any]) -> str:
    """Whether a connection's data is encrypted ("encrypted" or "unencrypted"): the
    connection's setting, unless the fast path carries it (VXLAN encrypts nothing) or the
    sleeve carries it in the clear (both ends trust each other's subnet). The metrics'
    ``encryption`` label too."""
    sleeve = conn.get("sleeve")
    clear = ((isinstance(sleeve, Mapping) and sleeve.get("encrypted_data") is False)
             or conn.get("overlay") == "fastdp")
    return "encrypted" if conn.get("encrypted") and not clear else "unencrypted"


def _peers(report: Mapping[str, Any]) -> list[str]:
    """``weave status peers``: each peer, then its connections indented."""
    peers = report["router"]["peers"]
    conns = [c for p in peers for c in p["connections"]]
    addr_w = max([ADDRESS_WIDTH, *(len(str(c["address"])) for c in conns)])
    label_w = max([PEER_WIDTH, *(len(_peer_label(c["name"], c["nickname"])) for c in conns)])
    lines = []
    for p in peers:
        lines.append(_peer_label(p["name"], p["nickname"]))
        for c in p["connections"]:
            arrow = "->" if c["outbound"] else "<-"
            label = _peer_label(c["name"], c["nickname"])
            state = "established" if c["established"] else "pending"
            lines.append(f"   {arrow} {c['address']:<{addr_w}} {label:<{label_w}} {state}")
    return lines


def _ipam(report: Mapping[str, Any]) -> list[str]:
    """``weave status ipam``: each peer's share of the range, then what needs doing
    (``weftnet.ipam.status.format_status``)."""
    from weftnet.ipam.status import format_status

    ipam = report.get("ipam")
    if ipam is None:
        raise LocalProtocolError("IPAM is disabled")
    lines = format_status(ipam).splitlines()
    v6 = ipam.get("ipv6")   # --ipalloc-range-v6: the IPv6 ring, laid out the same way
    if isinstance(v6, dict):
        lines += ["", "IPv6:", *format_status(v6).splitlines()]
    return lines


def _dns(report: Mapping[str, Any]) -> list[str]:
    """``weave status dns``: one line per record (name, address, container, origin); the
    columns are Weave's widths, wider when an entry needs it."""
    dns = report.get("dns")
    if dns is None:
        raise LocalProtocolError("DNS is disabled")
    entries = dns["entries"]
    widths = [max([minimum, *(len(str(e[key])) for e in entries)])
              for key, minimum in (("hostname", 15), ("address", 15), ("container", 12))]
    return [
        f"{e['hostname']:<{widths[0]}} {e['address']:<{widths[1]}} "
        f"{e['container']:<{widths[2]}} {e['origin']}"
        for e in entries
    ]


# -- weft ps --------------------------------------------------------------------------------


def render_ps(containers: Sequence[Mapping[str, Any]]) -> str:
    """``weft ps``: ``CONTAINER MAC CIDR...`` per attached container (the API's ``/ps``
    list), the container column as wide as the longest name; empty or newline-terminated.
    A malformed entry raises LocalProtocolError (one line)."""
    try:
        rows = [(str(c["container"]), str(c["mac"]), [str(x) for x in c["cidrs"]]
                 + ([labels_text(c["labels"])] if c.get("labels") else []))
                for c in containers]
    except (KeyError, TypeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise LocalProtocolError(f"the router's container list is malformed: {detail}") from None
    width = max([0, *(len(name) for name, _, _ in rows)])
    return "".join(" ".join([f"{name:<{width}}", mac, *cidrs]).rstrip() + "\n"
                   for name, mac, cidrs in rows)
