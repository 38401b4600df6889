"""Metrics and status on real (simulated) hosts: two routers, a container each.

    h1 ── h2   (one LAN; encrypted, so the sleeve carries the traffic)
    c1 on h1, c2 on h2, addresses from IPAM (consensus=2), DNS names c1 / c2

``GET /metrics`` is scraped over the API inside each host's namespace (127.0.0.1:6784, as
Prometheus next to the router would) and read with the Prometheus text parser: the sleeve
counters move with a ping, the connection gauges show the one established encrypted
sleeve connection, the DNS query counters move with a lookup in a container, IPAM shows
the address in use. ``weft status`` and ``weft ps`` are read on the same mesh. Names are looked up
absolute (no search domains) and each host's resolv.conf names a resolver inside the
testbed, so no query ever leaves it. Waits are bounded liveness checks only.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from weftnet.router.tools.testbed import Testbed

from .weftctl import attach, established, launch, report, wait_for

INIT = ("--ipalloc-init", "consensus=2")
PINGS = 5

SCRAPE = textwrap.dedent("""
    import json, time, urllib.request
    start = time.perf_counter()
    with urllib.request.urlopen("http://127.0.0.1:6784/metrics", timeout=10) as r:
        body = r.read().decode()
        print(json.dumps({"status": r.status, "type": r.headers["Content-Type"], "body": body,
                          "took": time.perf_counter() - start}))
""")

KNOCK = textwrap.dedent("""
    import socket, sys
    with socket.create_connection((sys.argv[1], 6783), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: weft\\r\\n\\r\\n" * 8)
        s.settimeout(10)
        try:
            while s.recv(4096):  # until the router hangs up on us
                pass
        except ConnectionResetError:
            pass
""")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(tb: Testbed, host: str) -> Samples:
    out = json.loads(tb.run(host, [sys.executable, "-c", SCRAPE]).stdout)
    assert out["status"] == 200 and out["type"].startswith("text/plain; version=0.0.4")
    print(f"scrape of {host}: {len(out['body'])} bytes in {out['took'] * 1000:.1f} ms")
    samples: Samples = {}
    for fam in text_string_to_metric_families(out["body"]):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def v(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


@pytest.fixture
def pair(testbed_factory: Any) -> Testbed:
    tb: Testbed = testbed_factory(hosts=("h1", "h2"))
    for host, other in (("h1", "h2"), ("h2", "h1")):
        # upstream resolver inside the testbed (nothing answers there): a forward never
        # leaves our namespaces; the testbed removes /etc/netns/<its namespaces>
        etc = Path("/etc/netns") / tb.ns(host)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {tb.address(other)}\noptions timeout:1\n")
    launch(tb, "h1", extra=INIT)
    launch(tb, "h2", tb.address("h1"), extra=INIT)
    wait_for("h1-h2 established", lambda: established(report(tb, "h1")) == {"h2"}
             and established(report(tb, "h2")) == {"h1"})
    return tb


def test_metrics_move_with_traffic_and_lookups(pair: Testbed) -> None:
    tb = pair
    c1 = attach(tb, "h1", "c1", "--name", "c1")
    c2 = attach(tb, "h2", "c2", "--name", "c2")
    wait_for("c1 reaching c2", lambda: tb.ping("c1", str(c2.ip), timeout=2))

    before = {h: scrape(tb, h) for h in ("h1", "h2")}
    tb.run("c1", ["ping", "-n", "-q", "-c", str(PINGS), "-i", "0.2", "-W", "3", str(c2.ip)])
    after = {h: scrape(tb, h) for h in ("h1", "h2")}
    for host in ("h1", "h2"):
        for base in ("packets", "bytes"):
            for direction in ("in", "out"):
                moved = (v(after[host], f"weft_{base}_total", overlay="sleeve", direction=direction)
                         - v(before[host], f"weft_{base}_total", overlay="sleeve",
                             direction=direction))
                least = PINGS if base == "packets" else PINGS * 98  # ICMP echo: 98-byte frames
                assert moved >= least, f"{host} weft_{base}_total{{direction={direction}}} +{moved}"
        s = after[host]
        assert v(s, "weft_connections", state="established") == 1
        assert v(s, "weft_connections", state="failed") == 0
        assert v(s, "weft_connections_by_overlay", overlay="sleeve", encryption="encrypted") == 1
        assert v(s, "weft_connections_by_overlay", overlay="none", encryption="encrypted") == 0
        assert v(s, "weft_peers") == 2
        assert v(s, "weft_ipam_addresses_used") == 1
        assert v(s, "weft_ipam_ready") == 1 and v(s, "weft_ipam_unreachable_ratio") == 0
        assert v(s, "weft_ipam_addresses_owned") > 0
        assert v(s, "weft_build_info", version=report(tb, host)["version"]) == 1

    # a lookup inside c1 is answered by h1's weftDNS (c2's name came by gossip from h2)
    h1 = scrape(tb, "h1")
    wait_for("c2's name visible in c1", lambda: tb.run(
        "c1", ["getent", "ahostsv4", "c2.weft.local."], check=False).stdout.split()[:1]
        == [str(c2.ip)])
    later = scrape(tb, "h1")
    assert (v(later, "weft_dns_queries_total", result="answered")
            > v(h1, "weft_dns_queries_total", result="answered"))
    assert v(later, "weft_dns_queries_total", result="dropped") == 0
    nx = v(later, "weft_dns_queries_total", result="nxdomain")
    tb.run("c1", ["getent", "ahostsv4", "nobody.weft.local."], check=False)
    assert v(scrape(tb, "h1"), "weft_dns_queries_total", result="nxdomain") > nx
    assert v(later, "weft_dns_entries", origin="local") == 1
    assert v(later, "weft_dns_entries", origin="remote") == 1

    # something that is not a weft peer knocks on h1's control port
    failures = sum(value for (name, _), value in later.items()
                   if name == "weft_handshake_failures_total")
    tb.run("h2", [sys.executable, "-c", KNOCK, tb.address("h1")])
    wait_for("h1 counting the failed handshake", lambda: v(
        scrape(tb, "h1"), "weft_handshake_failures_total", reason="not a weft peer") >= 1)
    assert failures == 0

    # the same mesh through `weft status` and `weft ps`
    status = tb.weft("h1", "status").stdout
    assert "    Connections: 1 (1 established)\n" in status
    assert "        Service: ipam\n" in status and "        Service: dns\n" in status
    print(status + tb.weft("h1", "status", "connections").stdout)
    (line,) = tb.weft("h2", "status", "connections").stdout.splitlines()  # h2 dialled h1
    assert line.startswith(f"-> {tb.address('h1')}:6783 ")
    words = line.split()
    assert words[2:4] == ["established", "sleeve"] and "(h1)" in words[4] and words[5] == "encrypted"
    conn = report(tb, "h2")["router"]["connections"][0]
    assert line.endswith(f"({conn['overlay_reason']})") and conn["overlay_reason"]
    (ps,) = tb.weft("h1", "ps").stdout.splitlines()
    assert ps.split()[0] == tb.ns("c1") and ps.split()[2] == str(c1)
