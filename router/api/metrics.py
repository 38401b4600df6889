"""Prometheus metrics of one router, read from its state when Prometheus scrapes.

Theory of operation
-------------------
Nothing is counted for metrics on a hot path. The mesh, the data plane, IPAM and the DNS
server already keep what there is to know; at scrape time (``GET /metrics``)
``RouterCollector.collect`` takes one ``Snapshot`` (the router's ``report()`` plus three
counter maps) and ``families`` turns it into metric families: a pure function, tested
with literal snapshots. Each router has a private ``CollectorRegistry`` (many routers
run in one test process; nothing global)::

    GET /metrics ─▶ Router.metrics() ─▶ generate_latest(registry)
                      ─▶ RouterCollector.collect ─▶ RouterMetrics.snapshot()
                           report()            connections, peers, IPAM, DNS, drops
                           mesh.stats          handshake failures, gossip counters
                           dataplane.links     per-link Counters ─▶ TrafficTotals
                      ─▶ families(snapshot) ─▶ text format 0.0.4

Counters must never go down, but the data plane counts per link and a link goes with
its connection. ``TrafficTotals`` keeps the sum of the links that went: each scrape notes
every link's counts and folds in what it last noted of the links gone since, and the
daemon calls ``RouterMetrics.connection_closed`` just before the data plane forgets a
link, which notes them too: a closed link's final counts are kept, one that vanished
unannounced keeps what was noted last.

Data-plane counters are read by name, so new ones appear without work here
(``split_counter``): a key ``[OVERLAY_]BASE[_DIRECTION]`` of ``Counters.as_dict()``
becomes ``weft_BASE_total{overlay=OVERLAY (default sleeve), direction=in|out}``
(``rx``/``tx`` mean in/out), e.g. ``packets_in`` -> ``weft_packets_total{overlay="sleeve",
direction="in"}``, ``fastdp_bytes_out`` -> ``weft_bytes_total{overlay="fastdp",
direction="out"}``. In ``Dataplane.report()``, ``drops`` (reason -> count) are sleeve
drops; a section named after an overlay (``"fastdp": {...}``) adds its integer entries
that have a direction (``packets_in``, ``rx_bytes``: its ports, MTUs and sizes are not
counters), everything in its ``counters`` map, and its own ``drops``.

The metrics (all prefixed ``weft_``): ``build_info``, ``router_info``, ``peers``,
``targets``, ``connections{state}``, ``connections_by_overlay{overlay,encryption}``,
``connection_terminations_total{reason}``, ``handshake_failures_total{reason}``,
``mesh_*_total`` (gossip), data-plane ``*_total{overlay,direction}``,
``drops_total{overlay,reason}``, ``macs``; with IPAM ``ipam_*``; with DNS
``dns_entries{origin}``, ``dns_queries_total{result}`` and friends; network policy
``policy_enforcement_ok``, ``policies``, ``policy_drops_total{policy}``; plus the client
library's ``process_*`` and ``python_info``.

Everything comes from the snapshot: this module imports neither the daemon nor the data
plane (the API room's rule); the DNS results are the ones the report lists.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

import weftnet
from weftnet.router.api.render import connection_encryption

PREFIX = "weft_"
CONNECTION_STATES = ("established", "pending", "retrying", "failed", "connecting")
OVERLAYS = ("sleeve", "fastdp")
DEFAULT_OVERLAY = "sleeve"
DIRECTIONS = {"in": "in", "out": "out", "rx": "in", "tx": "out"}
ENCRYPTIONS = ("encrypted", "unencrypted")   # of render.connection_encryption
# The data plane's per-link counters (``Counters.as_dict()`` of router/dataplane/engine.py),
# shown at zero before the first link comes; one added there later appears once a link counts
# it (tests/unit/test_metrics.py holds this list to the engine's).
LINK_COUNTERS = ("packets_in", "bytes_in", "packets_out", "bytes_out", "datagrams_in",
                 "datagrams_out", "acks_thinned", "messages_rebuilt")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]+")
MESH_DOCS = {  # MeshStats counters; one not listed here gets a generic help text
    "gossip_messages_sent": "Gossip messages sent to direct peers.",
    "gossip_bytes_sent": "Bytes of gossip payload sent to direct peers.",
    "gossip_messages_received": "Gossip messages received from direct peers.",
    "dropped_no_route": "Gossip messages dropped: no route to their destination.",
    "dropped_unknown_channel": "Gossip messages dropped: for a channel this router lacks.",
}


# --- the state the collector reads -------------------------------------------------------


class _AsDict(Protocol):
    def as_dict(self) -> dict[str, int]: ...


class CountedLink(Protocol):
    """What TrafficTotals needs of a data-plane link (``dataplane.Link``)."""

    @property
    def counters(self) -> _AsDict: ...


class _MeshLike(Protocol):
    @property
    def stats(self) -> Any: ...


class _DataplaneLike(Protocol):
    @property
    def links(self) -> Mapping[int, CountedLink]: ...


class RouterLike(Protocol):
    """The parts of ``daemon.Router`` the metrics read (tests pass a fake)."""

    @property
    def mesh(self) -> _MeshLike: ...

    @property
    def dataplane(self) -> _DataplaneLike: ...

    def report(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape shows."""

    report: Mapping[str, Any]                  # the contract's ``weft report`` (+ extras)
    traffic: Mapping[str, int] = field(default_factory=dict)   # Counters keys, since start
    mesh_stats: Mapping[str, Any] = field(default_factory=dict)  # MeshStats as a dict
    terminations: Mapping[str, int] = field(default_factory=dict)  # reason -> count


class TrafficTotals:
    """Monotone sums of per-link counters, over links that come and go.

    ``totals`` (at each scrape, and when a connection closes, just before its link goes)
    notes what every live link has counted so far and folds into the retired sum what it
    last noted of each link that has gone since (or was replaced under its id).
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._retired: Counter[str] = Counter(dict.fromkeys(keys, 0))
        self._seen: dict[int, tuple[CountedLink, dict[str, int]]] = {}

    def totals(self, links: Mapping[int, CountedLink]) -> dict[str, int]:
        current = {conn_id: (link, dict(link.counters.as_dict()))
                   for conn_id, link in links.items()}
        for conn_id, (link, last) in self._seen.items():
            now = current.get(conn_id)
            if now is None or now[0] is not link:
                self._retired.update(last)
        self._seen = current
        total = Counter(self._retired)
        for _, counts in current.values():
            total.update(counts)
        return dict(total)


def _reason_key(reason: str) -> str:
    """A bounded label from a free-text reason: the part before any ``:`` detail."""
    key = reason.split(":", 1)[0].strip()
    return key or "unknown"


class RouterMetrics:
    """A router's metrics: its registry, its collector and the state they keep."""

    def __init__(self, router: RouterLike) -> None:
        self.router = router
        self.traffic = TrafficTotals(LINK_COUNTERS)
        self.terminations: Counter[str] = Counter()
        self.registry = CollectorRegistry()
        self.registry.register(RouterCollector(self.snapshot))
        self.registry.register(ProcessCollector(registry=None))
        self.registry.register(PlatformCollector(registry=None))

    def connection_closed(self, conn_id: int, reason: str) -> None:
        """An established connection ended (the daemon calls this before the data plane
        forgets the connection's link, so its final counts are noted)."""
        self.terminations[_reason_key(reason)] += 1
        self.traffic.totals(self.router.dataplane.links)

    def snapshot(self) -> Snapshot:
        stats = self.router.mesh.stats
        mesh_stats = (dataclasses.asdict(stats) if dataclasses.is_dataclass(stats)
                      and not isinstance(stats, type) else {})
        return Snapshot(report=self.router.report(),
                        traffic=self.traffic.totals(self.router.dataplane.links),
                        mesh_stats=mesh_stats, terminations=dict(self.terminations))

    def exposition(self) -> bytes:
        """The Prometheus text format (0.0.4) of everything, read now."""
        data: bytes = generate_latest(self.registry)
        return data


class RouterCollector(Collector):
    """A custom collector: ``families`` of a fresh snapshot on every scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with the data plane's counters; nothing to check up front

    def collect(self) -> Iterable[Metric]:
        return families(self._snapshot())


# --- the metric families (pure) ------------------------------------------------------------


def _name(*parts: str) -> str:
    return PREFIX + "_".join(_NAME_UNSAFE.sub("_", p).strip("_") for p in parts if p)


def split_counter(key: str, overlay: str = DEFAULT_OVERLAY) -> tuple[str, str, str]:
    """``[OVERLAY_]BASE[_DIRECTION]`` (or ``rx_``/``tx_`` first) -> (overlay, base, direction);
    direction is "" when the key has none."""
    for name in OVERLAYS:
        if key.startswith(name + "_"):
            overlay, key = name, key[len(name) + 1:]
            break
    base, _, last = key.rpartition("_")
    if base and last in DIRECTIONS:
        return overlay, base, DIRECTIONS[last]
    first, _, rest = key.partition("_")
    if rest and first in DIRECTIONS:
        return overlay, rest, DIRECTIONS[first]
    return overlay, key, ""


def _int_items(section: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    for key, value in section.items():
        if isinstance(value, int) and not isinstance(value, bool):
            yield key, value


def families(snap: Snapshot) -> list[Metric]:
    """Every metric family of one snapshot, in a stable order."""
    report = snap.report
    router = report["router"]
    out: list[Metric] = []
    out += _router_families(report, router, snap)
    out += _dataplane_families(router, snap.traffic)
    if report.get("ipam") is not None:
        out += _ipam_families(router, report["ipam"])
    if report.get("dns") is not None:
        out += _dns_families(router, report["dns"])
    if report.get("policy") is not None:
        out += _policy_families(report["policy"])
    return out


def _policy_families(policy: Mapping[str, Any]) -> list[Metric]:
    """Network policy: is it enforced here (1/0; 0 also before the first install), the
    policies, and drops per policy (a policy that selects no container here drops nothing)."""
    enforcement = policy.get("enforcement") or {}
    out: list[Metric] = [
        _gauge("policy_enforcement_ok", "1 when this host's network policy table is installed "
               "as the policies and labels want it, 0 when it could not be (see weft status).",
               1 if enforcement.get("ok") is True else 0),
        _gauge("policies", "NetworkPolicies in force in the mesh.", len(policy.get("policies", []))),
    ]
    if isinstance(enforcement.get("install_seconds"), int | float):
        out.append(_gauge("policy_install_seconds", "How long the last install of the policy table "
                          "took (compile, nft), in seconds.", float(enforcement["install_seconds"])))
    drops = CounterMetricFamily(_name("policy_drops"), "Packets dropped by network policy on this "
                                "host, by the policy that selected the container (a packet no "
                                "policy allowed counts once for each policy selecting it).",
                                labels=["policy"])
    counts = policy.get("drops") or {}
    for p in policy.get("policies", []):
        drops.add_metric([str(p["name"])], int(counts.get(p["name"], 0)))
    for name in sorted(set(counts) - {str(p["name"]) for p in policy.get("policies", [])}):
        drops.add_metric([name], int(counts[name]))   # deleted since: counters never go down
    out.append(drops)
    return out


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_name(name), doc, value=value)


def _router_families(report: Mapping[str, Any], router: Mapping[str, Any],
                     snap: Snapshot) -> list[Metric]:
    out: list[Metric] = []
    build = InfoMetricFamily(_name("build"), "Version of this weft router.")
    build.add_metric([], {"version": str(report.get("version", weftnet.__version__))})
    out.append(build)
    info = InfoMetricFamily(_name("router"), "This router's peer name and nickname.")
    info.add_metric([], {"name": str(router["name"]), "nickname": str(router["nickname"]),
                         "encryption": "enabled" if router["encryption"] else "disabled"})
    out.append(info)
    out.append(_gauge("peers", "Peers known in the mesh's topology, this one included.",
                      len(router["peers"])))
    out.append(_gauge("targets", "Connection targets (weft connect / launch PEER...).",
                      len(router["targets"])))
    api = router.get("api")
    if isinstance(api, Mapping):
        out.append(_gauge("api_connections", "Open connections to the HTTP API.",
                          api["connections"]))
        out.append(CounterMetricFamily(
            _name("api_connections_evicted"),
            "HTTP API connections closed to make room for a new one (at the cap).",
            value=api["evicted"]))

    connections = router["connections"]
    states = Counter(str(c["state"]) for c in connections)
    by_state = GaugeMetricFamily(_name("connections"), "Connections by state.", labels=["state"])
    for state in (*CONNECTION_STATES, *sorted(set(states) - set(CONNECTION_STATES))):
        by_state.add_metric([state], states[state])
    out.append(by_state)

    overlays: Counter[tuple[str, str]] = Counter()
    for c in connections:
        overlays[(str(c.get("overlay") or "none"), connection_encryption(c))] += 1
    by_overlay = GaugeMetricFamily(
        _name("connections_by_overlay"),
        "Connections by overlay carrying their traffic (none: not established) and by "
        "whether that traffic is encrypted.", labels=["overlay", "encryption"])
    names = (*OVERLAYS, "none")
    extra = sorted({o for o, _ in overlays} - set(names))
    for overlay in (*names, *extra):
        for encryption in ENCRYPTIONS:
            by_overlay.add_metric([overlay, encryption], overlays[(overlay, encryption)])
    out.append(by_overlay)

    terminations = CounterMetricFamily(
        _name("connection_terminations"), "Established connections that ended, by reason.",
        labels=["reason"])
    for reason, count in sorted(snap.terminations.items()):
        terminations.add_metric([reason], count)
    out.append(terminations)

    failures = CounterMetricFamily(
        _name("handshake_failures"),
        "Connections that failed before their handshake completed, by reason.",
        labels=["reason"])
    raw = snap.mesh_stats.get("handshake_failures") or {}
    for reason, count in sorted(raw.items()):
        failures.add_metric([_reason_key(str(reason))], count)
    out.append(failures)

    for key, value in sorted(_int_items(snap.mesh_stats)):
        doc = MESH_DOCS.get(key, f"Mesh control plane: {key.replace('_', ' ')}.")
        out.append(CounterMetricFamily(_name("mesh", key), doc, value=value))
    punch = router.get("punch")
    if isinstance(punch, Mapping):
        out += _punch_families(punch)
    return out


def _punch_families(punch: Mapping[str, Any]) -> list[Metric]:
    """Hole punching: attempts, outcomes, probes, refused datagrams and messages."""
    out: list[Metric] = [
        CounterMetricFamily(_name("punch_attempts"),
                            "Hole punches started (a rendezvous through the mesh).",
                            value=int(punch.get("attempts", 0))),
        CounterMetricFamily(_name("punch_probes_sent"),
                            "Authenticated hole-punching probes sent.",
                            value=int(punch.get("probes_sent", 0))),
        _gauge("punch_relayed_peers", "Peers the mesh reaches only through others.",
               len(punch.get("relayed") or {})),
        _gauge("punch_connections", "Control connections over punched UDP paths.",
               int(punch.get("punched_connections", 0))),
    ]
    outcomes = CounterMetricFamily(_name("punch_outcomes"), "Hole punches that ended, by outcome.",
                                   labels=["outcome"])
    for outcome, count in sorted((punch.get("outcomes") or {}).items()):
        outcomes.add_metric([str(outcome)], int(count))
    out.append(outcomes)
    drops = CounterMetricFamily(
        _name("punch_drops"),
        "Punch datagrams and rendezvous messages refused (forged, replayed, unknown, over a "
        "rate limit), by reason.", labels=["reason"])
    for reason, count in sorted((punch.get("drops") or {}).items()):
        drops.add_metric([_reason_key(str(reason))], int(count))
    out.append(drops)
    return out


def _dataplane_families(router: Mapping[str, Any], traffic: Mapping[str, int]) -> list[Metric]:
    dataplane = router.get("dataplane") or {}
    counts: dict[str, dict[tuple[str, str], int]] = {}

    def add(key: str, value: int, overlay: str) -> None:
        overlay, base, direction = split_counter(key, overlay)
        per = counts.setdefault(base, {})
        per[(overlay, direction)] = per.get((overlay, direction), 0) + value

    for key, value in traffic.items():
        add(key, value, DEFAULT_OVERLAY)
    drops: dict[tuple[str, str], int] = {}
    for reason, value in _int_items(dataplane.get("drops") or {}):
        drops[(DEFAULT_OVERLAY, reason)] = value
    for overlay in OVERLAYS:
        section = dataplane.get(overlay)
        if not isinstance(section, Mapping):
            continue
        for key, value in _int_items(section):
            if split_counter(key, overlay)[2]:  # only directed counts: not ports, MTUs...
                add(key, value, overlay)
        for key, value in _int_items(section.get("counters") or {}):
            add(key, value, overlay)
        for reason, value in _int_items(section.get("drops") or {}):
            drops[(overlay, reason)] = drops.get((overlay, reason), 0) + value

    out: list[Metric] = []
    for base in sorted(counts):
        fam = CounterMetricFamily(_name(base), f"Data plane {base.replace('_', ' ')}, by overlay "
                                  "and direction (in: from peers, out: to peers).",
                                  labels=["overlay", "direction"])
        for (overlay, direction), value in sorted(counts[base].items()):
            fam.add_metric([overlay, direction], value)
        out.append(fam)
    fam = CounterMetricFamily(_name("drops"), "Frames or datagrams the data plane dropped, "
                              "by overlay and reason.", labels=["overlay", "reason"])
    for (overlay, reason), value in sorted(drops.items()):
        fam.add_metric([overlay, reason], value)
    out.append(fam)
    if isinstance(dataplane.get("macs"), int):
        out.append(_gauge("macs", "MAC addresses the forwarder has learnt.", dataplane["macs"]))
    return out


def _ipam_families(router: Mapping[str, Any], ipam: Mapping[str, Any]) -> list[Metric]:
    me = router["name"]
    peers = ipam.get("peers") or []
    size = ipaddress.ip_network(str(ipam["range"]), strict=False).num_addresses
    ours = [p for p in peers if p["name"] == me]
    unreachable = [p for p in peers if not p.get("reachable", True) and p["addresses"] > 0]
    lost = sum(int(p["addresses"]) for p in unreachable)
    status = str(ipam.get("status", ""))
    out: list[Metric] = [
        _gauge("ipam_range_addresses", "Addresses in the allocation range.", size),
        _gauge("ipam_addresses_owned", "Addresses of the range this peer owns.",
               sum(int(p["addresses"]) for p in ours)),
        _gauge("ipam_addresses_used", "Addresses allocated to containers on this peer.",
               int(ipam.get("allocated", 0))),
        _gauge("ipam_unreachable_peers", "Peers that own addresses and cannot be reached.",
               len(unreachable)),
        _gauge("ipam_unreachable_ratio", "Share (0..1) of the range owned by unreachable peers.",
               lost / size if size else 0.0),
        _gauge("ipam_ready", "1 once the range is seeded and addresses can be allocated.",
               1 if status.startswith("ready") else 0),
    ]
    if ours and "free" in ours[0]:
        out.insert(3, _gauge("ipam_addresses_free", "Owned addresses not allocated yet.",
                             sum(int(p["free"]) for p in ours)))
    if "pending" in ipam:
        out.append(_gauge("ipam_pending_operations",
                          "Allocations and claims waiting (for consensus or a donation).",
                          int(ipam["pending"])))
    if "problems" in ipam:
        out.append(_gauge("ipam_problems", "Problems `weft status ipam` lists.",
                          len(ipam["problems"])))
    return out


def _dns_families(router: Mapping[str, Any], dns: Mapping[str, Any]) -> list[Metric]:
    me = router["name"]
    origins = Counter("local" if e["origin"] == me else "remote" for e in dns["entries"])
    entries = GaugeMetricFamily(_name("dns_entries"), "Live DNS records, by whether this peer "
                                "or another one made them.", labels=["origin"])
    for origin in ("local", "remote"):
        entries.add_metric([origin], origins[origin])
    out: list[Metric] = [entries]
    stats = dns.get("statistics")
    if not isinstance(stats, Mapping):
        return out
    # Every result the DNS server counts, zeros included, in its order (report's "results").
    results = stats.get("results") or {}
    queries = CounterMetricFamily(_name("dns_queries"), "DNS queries by what became of them "
                                  "(answered, nodata, nxdomain, refused, error: by us; "
                                  "forwarded or servfail: sent upstream; dropped: not a query).",
                                  labels=["result"])
    for result, count in results.items():
        queries.add_metric([str(result)], int(count))
    out.append(queries)
    received = CounterMetricFamily(_name("dns_queries_received"),
                                   "DNS queries received, by transport.", labels=["transport"])
    for transport in ("udp", "tcp"):
        received.add_metric([transport], int(stats.get(f"{transport}_queries", 0)))
    out.append(received)
    for key, doc in (("upstream_failures", "Upstream resolvers that did not answer a forward."),
                     ("send_errors", "Replies that could not be sent."),
                     ("tcp_connections", "TCP clients served."),
                     ("tcp_refused", "TCP clients refused (too many at once)."),
                     ("resolv_conf_reloads", "Times the host's resolv.conf was (re)read.")):
        if key in stats:
            out.append(CounterMetricFamily(_name("dns", key), doc, value=int(stats[key])))
    if "listeners" in stats:
        out.append(_gauge("dns_listeners", "Addresses the DNS server listens on (the host's "
                          "and one per attached container namespace).", int(stats["listeners"])))
    return out
