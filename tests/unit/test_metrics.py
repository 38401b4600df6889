"""Prometheus metrics: the families of literal snapshots, read back with the Prometheus
text parser; monotone traffic totals over links that come and go (against an oracle,
seeded); the router's wiring; the DNS server's query results."""

from __future__ import annotations

import argparse
import copy
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dnslib
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from weftnet.proto.mesh import MeshStats
from weftnet.router.api.metrics import (
    LINK_COUNTERS,
    RouterMetrics,
    Snapshot,
    TrafficTotals,
    families,
    split_counter,
)
from weftnet.router.daemon.dns_server import QUERY_RESULTS, DnsServer, load_records, local_result, serve_dns
from weftnet.router.dataplane.links import Counters

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

ME = "02:00:00:00:00:01"


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and each family's type, as Prometheus reads them."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples, types


def exposition(snap: Snapshot) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    from weftnet.router.api.metrics import RouterCollector

    registry = CollectorRegistry()
    registry.register(RouterCollector(lambda: snap))
    return generate_latest(registry).decode()


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def conn(address: str, state: str, **kw: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"address": address, "outbound": True, "state": state, "info": "",
                         "peer": None, "encrypted": True, "overlay": None, "overlay_reason": "",
                         "mtu": None}
    c.update(kw)
    return c


def peer(name: str, nick: str) -> dict[str, Any]:
    return {"name": name, "nickname": nick}


REPORT: dict[str, Any] = {
    "version": "0.1.0",
    "router": {
        "name": ME, "nickname": "host1", "encryption": True,
        "peers": [{"name": ME, "nickname": "host1", "connections": []},
                  {"name": "02:00:00:00:00:02", "nickname": "host2", "connections": []},
                  {"name": "02:00:00:00:00:03", "nickname": "host3", "connections": []}],
        "connections": [
            conn("10.0.0.2:6783", "established", peer=peer("02:00:00:00:00:02", "host2"),
                 overlay="sleeve", mtu=1376, sleeve={"encrypted_data": True}),
            conn("10.0.0.3:6783", "established", peer=peer("02:00:00:00:00:03", "host3"),
                 overlay="sleeve", mtu=1376, sleeve={"encrypted_data": False}),  # trusted
            conn("10.0.0.4:41000", "pending", outbound=False, peer=peer("02:00:00:00:00:04", "h4")),
            conn("10.0.0.9:6783", "failed", info="connection refused; retry never"),
            conn("10.0.0.8:6783", "retrying", info="connection refused; retry in 3s"),
        ],
        "targets": ["10.0.0.2:6783", "10.0.0.9:6783", "10.0.0.8:6783"],
        "api": {"connections": 2, "max_connections": 64, "accepted": 90, "evicted": 7},
        "dataplane": {"drops": {"no route": 3, "replay": 2}, "macs": 5, "udp_port": 6783,
                      "mtu": 1376},
    },
    "ipam": {
        "range": "10.32.0.0/12", "default_subnet": "10.32.0.0/12", "status": "ready",
        "allocated": 3, "pending": 1, "problems": ["host3 is unreachable"],
        "peers": [
            {"name": ME, "nickname": "host1", "addresses": 524288, "free": 524285,
             "reachable": True},
            {"name": "02:00:00:00:00:02", "nickname": "host2", "addresses": 262144, "free": 0,
             "reachable": True},
            {"name": "02:00:00:00:00:03", "nickname": "host3", "addresses": 262144, "free": 0,
             "reachable": False},
        ],
    },
    "dns": {
        "domain": "weft.local.", "address": "127.0.0.11",
        "entries": [
            {"hostname": "a.weft.local.", "address": "10.32.0.1", "container": "a", "origin": ME},
            {"hostname": "b.weft.local.", "address": "10.32.0.2", "container": "b", "origin": ME},
            {"hostname": "c.weft.local.", "address": "10.40.0.1", "container": "c",
             "origin": "02:00:00:00:00:02"},
        ],
        "statistics": {"udp_queries": 7, "tcp_queries": 1, "upstream_failures": 2,
                       "send_errors": 0, "tcp_connections": 1, "tcp_refused": 0,
                       "resolv_conf_reloads": 1, "listeners": 3,
                       # as the DNS server lists them: every result, zeros included
                       "results": dict.fromkeys(QUERY_RESULTS, 0) | {
                           "answered": 4, "nxdomain": 1, "forwarded": 2, "servfail": 1}},
    },
}

TRAFFIC = {"packets_in": 10, "bytes_in": 1000, "packets_out": 12, "bytes_out": 1300,
           "datagrams_in": 8, "datagrams_out": 9}


def test_the_families_of_a_report() -> None:
    snap = Snapshot(REPORT, traffic=TRAFFIC,
                    mesh_stats={"gossip_messages_sent": 40, "dropped_no_route": 1,
                                "handshake_failures": {"wrong password (authentication failed)": 2,
                                                       "handshake timed out": 1}},
                    terminations={"peer restarted": 1})
    samples, types = parse(exposition(snap))
    assert value(samples, "weft_build_info", version="0.1.0") == 1
    assert value(samples, "weft_router_info", name=ME, nickname="host1", encryption="enabled") == 1
    assert value(samples, "weft_peers") == 3 and value(samples, "weft_targets") == 3
    assert value(samples, "weft_api_connections") == 2
    assert value(samples, "weft_api_connections_evicted_total") == 7
    # by state: every state present, zeros included
    assert {s: value(samples, "weft_connections", state=s) for s in
            ("established", "pending", "retrying", "failed", "connecting")} == {
        "established": 2, "pending": 1, "retrying": 1, "failed": 1, "connecting": 0}
    assert types["weft_connections"] == "gauge"
    # by overlay and encryption: the trusted link carries data in the clear
    assert value(samples, "weft_connections_by_overlay", overlay="sleeve", encryption="encrypted") == 1
    assert value(samples, "weft_connections_by_overlay", overlay="sleeve",
                 encryption="unencrypted") == 1
    assert value(samples, "weft_connections_by_overlay", overlay="none", encryption="encrypted") == 3
    assert value(samples, "weft_connections_by_overlay", overlay="fastdp",
                 encryption="unencrypted") == 0
    assert value(samples, "weft_handshake_failures_total",
                 reason="wrong password (authentication failed)") == 2
    assert value(samples, "weft_handshake_failures_total", reason="handshake timed out") == 1
    assert types["weft_handshake_failures"] == "counter"
    assert value(samples, "weft_connection_terminations_total", reason="peer restarted") == 1
    assert value(samples, "weft_mesh_gossip_messages_sent_total") == 40
    assert value(samples, "weft_mesh_dropped_no_route_total") == 1
    # data plane
    for base, direction, expected in (("packets", "in", 10), ("packets", "out", 12),
                                      ("bytes", "in", 1000), ("bytes", "out", 1300),
                                      ("datagrams", "in", 8), ("datagrams", "out", 9)):
        assert value(samples, f"weft_{base}_total", overlay="sleeve", direction=direction) == expected
    assert value(samples, "weft_drops_total", overlay="sleeve", reason="no route") == 3
    assert value(samples, "weft_drops_total", overlay="sleeve", reason="replay") == 2
    assert value(samples, "weft_macs") == 5
    assert not any(name.startswith(("weft_udp_port", "weft_mtu")) for name, _ in samples)
    # IPAM
    assert value(samples, "weft_ipam_range_addresses") == 2**20
    assert value(samples, "weft_ipam_addresses_owned") == 524288
    assert value(samples, "weft_ipam_addresses_used") == 3
    assert value(samples, "weft_ipam_addresses_free") == 524285
    assert value(samples, "weft_ipam_unreachable_peers") == 1
    assert value(samples, "weft_ipam_unreachable_ratio") == 0.25
    assert value(samples, "weft_ipam_ready") == 1
    assert value(samples, "weft_ipam_pending_operations") == 1
    assert value(samples, "weft_ipam_problems") == 1
    # DNS
    assert value(samples, "weft_dns_entries", origin="local") == 2
    assert value(samples, "weft_dns_entries", origin="remote") == 1
    results = {r: value(samples, "weft_dns_queries_total", result=r) for r in QUERY_RESULTS}
    assert results == {"answered": 4, "nodata": 0, "nxdomain": 1, "refused": 0, "error": 0,
                       "forwarded": 2, "servfail": 1, "dropped": 0}
    assert value(samples, "weft_dns_queries_received_total", transport="udp") == 7
    assert value(samples, "weft_dns_upstream_failures_total") == 2
    assert value(samples, "weft_dns_listeners") == 3


def test_dns_results_are_the_ones_the_report_lists() -> None:
    """The metrics name no DNS result of their own: a result the server adds shows up, and
    a report without statistics has no query families."""
    report = copy.deepcopy(REPORT)
    report["dns"]["statistics"]["results"] = {"answered": 3, "truncated": 2}
    samples, _ = parse(exposition(Snapshot(report)))
    shown = {dict(labels)["result"]: v for (name, labels), v in samples.items()
             if name == "weft_dns_queries_total"}
    assert shown == {"answered": 3, "truncated": 2}
    del report["dns"]["statistics"]
    samples, _ = parse(exposition(Snapshot(report)))
    assert not any(name.startswith("weft_dns_queries") for name, _ in samples)
    assert value(samples, "weft_dns_entries", origin="local") == 2


def test_link_counters_are_the_engines() -> None:
    """The counters shown at zero before any link are exactly the data plane's."""
    assert LINK_COUNTERS == tuple(Counters().as_dict())
    samples, _ = parse(RouterMetrics(fake_router({})).exposition().decode())
    for key in LINK_COUNTERS:
        overlay, base, direction = split_counter(key)
        assert value(samples, f"weft_{base}_total", overlay=overlay, direction=direction) == 0


def test_family_names_are_unique_and_prefixed() -> None:
    report = copy.deepcopy(REPORT)
    report["router"]["dataplane"]["fastdp"] = {"rx_packets": 1, "drops": {"x": 1}}
    names = [f.name for f in families(Snapshot(report, traffic=TRAFFIC | {"fastdp_bytes_in": 1},
                                               mesh_stats={"gossip_bytes_sent": 1}))]
    assert len(names) == len(set(names)) and all(n.startswith("weft_") for n in names)


def test_without_ipam_and_dns_their_families_are_absent() -> None:
    report = copy.deepcopy(REPORT) | {"ipam": None, "dns": None}
    samples, _ = parse(exposition(Snapshot(report)))
    assert not any(name.startswith(("weft_ipam", "weft_dns")) for name, _ in samples)
    assert value(samples, "weft_connections", state="established") == 2


def test_ipam_still_waiting_for_consensus_is_not_ready() -> None:
    report = copy.deepcopy(REPORT)
    report["ipam"] |= {"status": "awaiting consensus: 1 of 3 peers known", "peers": []}
    samples, _ = parse(exposition(Snapshot(report)))
    assert value(samples, "weft_ipam_ready") == 0
    assert value(samples, "weft_ipam_addresses_owned") == 0
    assert value(samples, "weft_ipam_unreachable_ratio") == 0


@pytest.mark.parametrize(("key", "expected"), [
    ("packets_in", ("sleeve", "packets", "in")),
    ("bytes_out", ("sleeve", "bytes", "out")),
    ("fastdp_packets_in", ("fastdp", "packets", "in")),
    ("sleeve_bytes_out", ("sleeve", "bytes", "out")),
    ("rx_bytes", ("sleeve", "bytes", "in")),
    ("fastdp_tx_packets", ("fastdp", "packets", "out")),
    ("rekeys", ("sleeve", "rekeys", "")),
    ("heartbeats_sent_out", ("sleeve", "heartbeats_sent", "out")),
])
def test_split_counter(key: str, expected: tuple[str, str, str]) -> None:
    assert split_counter(key) == expected


def test_new_data_plane_counters_appear_without_changes() -> None:
    """Fast path counters on the links (``fastdp_*``) or in an overlay section of the data
    plane's report ({"fastdp": {...}}) appear with overlay="fastdp"; ports, MTUs and sizes
    in that section are not taken for counters."""
    report = copy.deepcopy(REPORT)
    report["router"]["dataplane"]["fastdp"] = {
        "enabled": True, "udp_port": 6784, "mtu": 1410, "forwarding_entries": 4,
        "rx_packets": 70, "tx_packets": 71, "counters": {"probes_sent": 9},
        "drops": {"no flood entry": 2},
    }
    report["router"]["connections"][0]["overlay"] = "fastdp"
    traffic = TRAFFIC | {"fastdp_packets_in": 5, "fastdp_bytes_in": 500, "frames_relayed": 3}
    samples, types = parse(exposition(Snapshot(report, traffic=traffic)))
    assert value(samples, "weft_packets_total", overlay="fastdp", direction="in") == 75
    assert value(samples, "weft_packets_total", overlay="fastdp", direction="out") == 71
    assert value(samples, "weft_bytes_total", overlay="fastdp", direction="in") == 500
    assert value(samples, "weft_packets_total", overlay="sleeve", direction="in") == 10
    assert value(samples, "weft_probes_sent_total", overlay="fastdp", direction="") == 9
    assert value(samples, "weft_frames_relayed_total", overlay="sleeve", direction="") == 3
    assert types["weft_frames_relayed"] == "counter"
    assert value(samples, "weft_drops_total", overlay="fastdp", reason="no flood entry") == 2
    assert not any(name.startswith(("weft_udp_port", "weft_mtu", "weft_forwarding_entries"))
                   for name, _ in samples)
    assert value(samples, "weft_connections_by_overlay", overlay="fastdp",
                 encryption="unencrypted") == 1


# --- traffic totals over links that come and go --------------------------------------------


@dataclass
class FakeLink:
    counters: Counters = field(default_factory=Counters)


def test_traffic_totals_never_go_down_and_lose_nothing_announced() -> None:
    """Random link lives (seeded); an oracle sums every count. Totals are monotone; with
    every close announced they equal the oracle; a link that vanishes unannounced keeps
    what the last scrape or announcement noted of it."""
    for seed in range(20):
        rng = random.Random(seed)
        totals = TrafficTotals(Counters().as_dict())
        links: dict[int, FakeLink] = {}
        exact: dict[str, int] = dict.fromkeys(Counters().as_dict(), 0)
        lost = 0
        seen_at_scrape: dict[int, int] = {}
        previous: dict[str, int] = {}
        next_id = 1
        for _ in range(300):
            op = rng.random()
            if op < 0.15 or not links:
                links[next_id] = FakeLink()
                next_id += 1
            elif op < 0.6:
                link = links[rng.choice(sorted(links))]
                n, size = rng.randrange(1, 5), rng.randrange(60, 9000)
                link.counters.frames_in += n
                link.counters.bytes_in += n * size
                exact["packets_in"] += n
                exact["bytes_in"] += n * size
            elif op < 0.75:
                conn_id = rng.choice(sorted(links))
                totals.totals(links)              # as connection_closed does, before the link goes
                if rng.random() < 0.3:            # announced twice: counted once
                    totals.totals(links)
                seen_at_scrape = {c: link.counters.frames_in for c, link in links.items()}
                del links[conn_id]
            elif op < 0.8:
                conn_id = rng.choice(sorted(links))           # gone without a word
                lost += links[conn_id].counters.frames_in - seen_at_scrape.get(conn_id, 0)
                del links[conn_id]
            else:
                now = totals.totals(links)
                assert all(now[k] >= previous.get(k, 0) for k in now), f"seed {seed}"
                assert now["packets_in"] == exact["packets_in"] - lost, f"seed {seed}"
                previous = now
                seen_at_scrape = {c: link.counters.frames_in for c, link in links.items()}
        assert totals.totals(links)["packets_in"] == exact["packets_in"] - lost


def test_a_link_replaced_under_the_same_id_is_a_new_link() -> None:
    totals = TrafficTotals()
    old, new = FakeLink(), FakeLink()
    old.counters.frames_out = 5
    assert totals.totals({1: old})["packets_out"] == 5
    new.counters.frames_out = 2
    assert totals.totals({1: new})["packets_out"] == 7


# --- the router's metrics object ----------------------------------------------------------------


def fake_router(links: dict[int, FakeLink]) -> Any:
    stats = MeshStats(gossip_messages_sent=4, handshake_failures={"handshake timed out": 1})
    return SimpleNamespace(mesh=SimpleNamespace(stats=stats),
                           dataplane=SimpleNamespace(links=links),
                           report=lambda: copy.deepcopy(REPORT))


def test_router_metrics_keep_the_counts_of_closed_connections() -> None:
    links = {7: FakeLink(Counters(frames_in=3, bytes_in=300))}
    metrics = RouterMetrics(fake_router(links))
    samples, _ = parse(metrics.exposition().decode())
    assert value(samples, "weft_packets_total", overlay="sleeve", direction="in") == 3
    assert value(samples, "weft_handshake_failures_total", reason="handshake timed out") == 1
    assert value(samples, "weft_mesh_gossip_messages_sent_total") == 4
    assert ("process_resident_memory_bytes", frozenset()) in samples  # the library's own
    assert any(name == "python_info" for name, _ in samples)
    links[7].counters.frames_in = 5                     # after the scrape, before the close
    metrics.connection_closed(7, "connection error: [Errno 104] Connection reset by peer")
    del links[7]
    links[8] = FakeLink(Counters(frames_in=1))
    samples, _ = parse(metrics.exposition().decode())
    assert value(samples, "weft_packets_total", overlay="sleeve", direction="in") == 6
    assert value(samples, "weft_connection_terminations_total", reason="connection error") == 1


def test_each_router_has_its_own_registry() -> None:
    a, b = RouterMetrics(fake_router({})), RouterMetrics(fake_router({}))
    assert a.registry is not b.registry
    a.connection_closed(1, "peer restarted")
    sa, _ = parse(a.exposition().decode())
    sb, _ = parse(b.exposition().decode())
    assert value(sa, "weft_connection_terminations_total", reason="peer restarted") == 1
    assert not any(name == "weft_connection_terminations_total" for name, _ in sb)


def test_a_router_serves_its_metrics(tmp_path: Path) -> None:
    """The daemon's ``metrics()`` (what GET /metrics serves), on a router not started."""
    from weftnet.router.daemon.config import add_launch_arguments, config_from_args
    from weftnet.router.daemon.router import Router
    from weftnet.router.host.datadir import DataDir

    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--data-dir", str(tmp_path), "--nickname", "h1"]))

    async def main() -> bytes:
        router = Router(cfg, DataDir(cfg.data_dir), 0x020000000001, [])
        data: bytes = router.metrics()
        return data

    samples, _ = parse(trio.run(main).decode())
    assert value(samples, "weft_router_info", name=ME, nickname="h1", encryption="disabled") == 1
    assert value(samples, "weft_peers") == 1
    assert value(samples, "weft_connections", state="established") == 0
    assert value(samples, "weft_packets_total", overlay="sleeve", direction="in") == 0
    assert value(samples, "weft_ipam_range_addresses") == 2**20
    assert value(samples, "weft_dns_entries", origin="local") == 0
    assert value(samples, "weft_api_connections_evicted_total") == 0


# --- the DNS server's query results ------------------------------------------------------------


def test_local_result_of_replies() -> None:
    q = dnslib.DNSRecord.question("web.weft.local")
    with_answer = q.reply()
    with_answer.add_answer(dnslib.RR("web.weft.local", rdata=dnslib.A("10.32.0.1")))
    assert local_result(with_answer.pack()) == "answered"
    assert local_result(q.reply().pack()) == "nodata"
    for rcode, result in ((dnslib.RCODE.NXDOMAIN, "nxdomain"), (dnslib.RCODE.REFUSED, "refused"),
                          (dnslib.RCODE.FORMERR, "error"), (dnslib.RCODE.NOTIMP, "error")):
        r = q.reply()
        r.header.rcode = rcode
        assert local_result(r.pack()) == result


def test_dns_server_counts_queries_by_result(tmp_path: Path) -> None:
    store = load_records("web.weft.local 10.32.0.1\n", 1_700_000_000.0)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("options timeout:1\n")  # no upstream: what is not ours gets SERVFAIL

    async def ask(srv: DnsServer, data: bytes, reply: bool = True) -> None:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            await s.connect((srv.address, srv.port))
            await s.send(data)
            if reply:
                await s.recv(65535)

    async def main() -> dict[str, int]:
        async with trio.open_nursery() as nursery:
            srv: DnsServer = await nursery.start(lambda task_status: serve_dns(
                lambda: store, address="127.0.0.1", port=0, resolv_conf=resolv,
                task_status=task_status))
            for name, qtype in (("web.weft.local", "A"), ("web.weft.local", "A"),
                                ("web.weft.local", "AAAA"), ("nope.weft.local", "A"),
                                ("www.example.com", "A")):
                await ask(srv, dnslib.DNSRecord.question(name, qtype).pack())
            await ask(srv, b"\x12\x34\x01\x00\x00\x02" + b"\x00" * 6)   # two questions: FORMERR
            await ask(srv, b"\x01", reply=False)                         # not a query: dropped
            await trio.testing.wait_all_tasks_blocked()
            stats = srv.statistics()
            nursery.cancel_scope.cancel()
        assert stats.udp_queries == 7
        return stats.results

    assert trio.run(main) == {"answered": 2, "nodata": 1, "nxdomain": 1, "refused": 0,
                              "error": 1, "forwarded": 0, "servfail": 1, "dropped": 1}


def test_hole_punching_families() -> None:
    report = copy.deepcopy(REPORT)
    report["router"]["punch"] = {
        "mapping": "easy", "attempts": 3, "probes_sent": 120, "punched_connections": 1,
        "outcomes": {"direct": 2, "failed": 1},
        "drops": {"authentication": 4, "offer rate limited": 1},
        "relayed": {"02:00:00:00:00:04(h4)": {"via": "02:00:00:00:00:02(host2)"}},
    }
    samples, types = parse(exposition(Snapshot(report)))
    assert value(samples, "weft_punch_attempts_total") == 3
    assert value(samples, "weft_punch_probes_sent_total") == 120
    assert value(samples, "weft_punch_outcomes_total", outcome="direct") == 2
    assert value(samples, "weft_punch_outcomes_total", outcome="failed") == 1
    assert value(samples, "weft_punch_drops_total", reason="authentication") == 4
    assert value(samples, "weft_punch_relayed_peers") == 1
    assert value(samples, "weft_punch_connections") == 1
    assert types["weft_punch_outcomes"] == "counter" and types["weft_punch_relayed_peers"] == "gauge"
    # without hole punching (no discovery) the families are absent
    samples, _ = parse(exposition(Snapshot(REPORT)))
    assert not any(name.startswith("weft_punch") for name, _ in samples)
