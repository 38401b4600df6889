"""``weft status`` rendering from literal reports, compared with exact text."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.render import render_ps, render_status

REPORT: dict[str, Any] = {
    "version": "0.1.0",
    "router": {
        "name": "02:00:00:00:00:01",
        "nickname": "host1",
        "encryption": True,
        "discovery": True,
        "trusted_subnets": [],
        "peers": [
            {
                "name": "02:00:00:00:00:01",
                "nickname": "host1",
                "connections": [
                    {
                        "name": "02:00:00:00:00:02",
                        "nickname": "host2",
                        "address": "10.0.0.2:6783",
                        "outbound": True,
                        "established": True,
                    },
                    {
                        "name": "02:00:00:00:00:03",
                        "nickname": "host3",
                        "address": "10.0.0.3:41234",
                        "outbound": False,
                        "established": False,
                    },
                ],
            },
            {
                "name": "02:00:00:00:00:02",
                "nickname": "host2",
                "connections": [
                    {
                        "name": "02:00:00:00:00:01",
                        "nickname": "host1",
                        "address": "10.0.0.1:45678",
                        "outbound": False,
                        "established": True,
                    }
                ],
            },
        ],
        "connections": [
            {
                "address": "10.0.0.2:6783",
                "outbound": True,
                "state": "established",
                "info": "",
                "peer": {"name": "02:00:00:00:00:02", "nickname": "host2"},
                "encrypted": True,
                "overlay": "sleeve",
                "overlay_reason": "encryption",
                "mtu": 1376,
            },
            {
                "address": "10.0.0.3:41234",
                "outbound": False,
                "state": "pending",
                "info": "",
                "peer": {"name": "02:00:00:00:00:03", "nickname": "host3"},
                "encrypted": True,
                "overlay": None,
                "overlay_reason": "",
                "mtu": None,
            },
            {
                "address": "10.0.0.9:6783",
                "outbound": True,
                "state": "failed",
                "info": "connection refused, retry: 2026-11-23 10:00:00",
                "peer": None,
                "encrypted": False,
                "overlay": None,
                "overlay_reason": "",
                "mtu": None,
            },
        ],
        "targets": ["10.0.0.2:6783", "10.0.0.9:6783"],
    },
    "ipam": {
        "range": "10.32.0.0/12",
        "default_subnet": "10.32.0.0/12",
        "status": "ready",
        "peers": [
            {
                "name": "02:00:00:00:00:01",
                "nickname": "host1",
                "addresses": 524288,
                "reachable": True,
            },
            {
                "name": "02:00:00:00:00:02",
                "nickname": "host2",
                "addresses": 524288,
                "reachable": False,
            },
        ],
    },
    "dns": {
        "domain": "weft.local.",
        "address": "172.17.0.1:53",
        "entries": [
            {
                "hostname": "web.weft.local.",
                "address": "10.32.0.1",
                "container": "c1",
                "origin": "02:00:00:00:00:01",
            }
        ],
    },
}


def test_summary() -> None:
    assert render_status(REPORT, None) == (
        "        Version: 0.1.0\n"
        "\n"
        "        Service: router\n"
        "       Protocol: weft 1..1\n"
        "           Name: 02:00:00:00:00:01(host1)\n"
        "     Encryption: enabled\n"
        "  PeerDiscovery: enabled\n"
        "        Targets: 2\n"
        "    Connections: 3 (1 established, 1 pending, 1 failed)\n"
        "          Peers: 2 (with 2 established, 1 pending connections)\n"
        " TrustedSubnets: none\n"
        "\n"
        "        Service: ipam\n"
        "         Status: ready\n"
        "          Range: 10.32.0.0/12\n"
        "  DefaultSubnet: 10.32.0.0/12\n"
        "\n"
        "        Service: dns\n"
        "         Domain: weft.local.\n"
        "        Address: 172.17.0.1:53\n"
        "        Entries: 1\n"
    )


def test_summary_of_a_lone_router_without_ipam_and_dns() -> None:
    report = {
        "version": "0.1.0",
        "router": {
            "name": "02:00:00:00:00:01",
            "nickname": "host1",
            "encryption": False,
            "discovery": False,
            "trusted_subnets": ["10.0.0.0/8", "192.168.0.0/16"],
            "peers": [{"name": "02:00:00:00:00:01", "nickname": "host1", "connections": []}],
            "connections": [],
            "targets": [],
        },
        "ipam": None,
        "dns": None,
    }
    assert render_status(report) == (
        "        Version: 0.1.0\n"
        "\n"
        "        Service: router\n"
        "       Protocol: weft 1..1\n"
        "           Name: 02:00:00:00:00:01(host1)\n"
        "     Encryption: disabled\n"
        "  PeerDiscovery: disabled\n"
        "        Targets: 0\n"
        "    Connections: 0\n"
        "          Peers: 1\n"
        " TrustedSubnets: 10.0.0.0/8, 192.168.0.0/16\n"
    )


def test_connections() -> None:
    assert render_status(REPORT, "connections") == (
        "-> 10.0.0.2:6783         established sleeve 02:00:00:00:00:02(host2) encrypted mtu=1376"
        " (encryption)\n"
        "<- 10.0.0.3:41234        pending     02:00:00:00:00:03(host3)\n"
        "-> 10.0.0.9:6783         failed      connection refused, retry: 2026-11-23 10:00:00\n"
    )


def _conn(address: str, state: str, **kw: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {"address": address, "outbound": True, "state": state, "info": "",
                            "peer": None, "encrypted": False, "overlay": None,
                            "overlay_reason": "", "mtu": None}
    conn.update(kw)
    return conn


def test_connections_show_overlay_and_why_aligned() -> None:
    report = copy.deepcopy(REPORT)
    report["router"]["connections"] = [
        _conn("10.0.0.2:6783", "established", peer={"name": "02:00:00:00:00:02", "nickname": "h2"},
              overlay="fastdp", overlay_reason="fast path: VXLAN probes answered", mtu=1410),
        _conn("[fd00::1234:5678:9abc]:6783", "established", outbound=False,
              peer={"name": "02:00:00:00:00:03", "nickname": "host-three"}, encrypted=True,
              overlay="sleeve", overlay_reason="encrypted sleeve; the fast path carries only "
              "unencrypted traffic", mtu=1376),
        _conn("10.0.0.4:6783", "established", peer={"name": "02:00:00:00:00:04", "nickname": "h4"},
              encrypted=True, overlay="sleeve", mtu=1376,
              overlay_reason="sleeve in the clear: both ends trust each other's subnet",
              sleeve={"encrypted_data": False}),
        _conn("10.0.0.5:6783", "pending", peer={"name": "02:00:00:00:00:05", "nickname": "h5"},
              info="no answer to UDP heartbeats yet"),
        _conn("10.0.0.6:6783", "retrying", info="connection refused; retry in 4s"),
        _conn("10.0.0.7:6783", "connecting"),
    ]
    assert render_status(report, "connections") == (
        "-> 10.0.0.2:6783               established fastdp 02:00:00:00:00:02(h2)         "
        "unencrypted mtu=1410 (fast path: VXLAN probes answered)\n"
        "<- [fd00::1234:5678:9abc]:6783 established sleeve 02:00:00:00:00:03(host-three) "
        "encrypted   mtu=1376 (encrypted sleeve; the fast path carries only unencrypted traffic)\n"
        "-> 10.0.0.4:6783               established sleeve 02:00:00:00:00:04(h4)         "
        "unencrypted mtu=1376 (sleeve in the clear: both ends trust each other's subnet)\n"
        "-> 10.0.0.5:6783               pending     02:00:00:00:00:05(h5) "
        "no answer to UDP heartbeats yet\n"
        "-> 10.0.0.6:6783               retrying    connection refused; retry in 4s\n"
        "-> 10.0.0.7:6783               connecting\n"
    )
    report["router"]["connections"] = []
    assert render_status(report, "connections") == ""


def test_peers() -> None:
    assert render_status(REPORT, "peers") == (
        "02:00:00:00:00:01(host1)\n"
        "   -> 10.0.0.2:6783         02:00:00:00:00:02(host2)         established\n"
        "   <- 10.0.0.3:41234        02:00:00:00:00:03(host3)         pending\n"
        "02:00:00:00:00:02(host2)\n"
        "   <- 10.0.0.1:45678        02:00:00:00:00:01(host1)         established\n"
    )


def test_targets() -> None:
    assert render_status(REPORT, "targets") == "10.0.0.2:6783\n10.0.0.9:6783\n"
    empty = copy.deepcopy(REPORT)
    empty["router"]["targets"] = []
    assert render_status(empty, "targets") == ""


def test_ipam() -> None:
    ipam = REPORT["ipam"] | {"init": "consensus=2", "problems": ["host2 is unreachable"],
                             "warnings": []}
    ipam["peers"] = [p | {"share": 50.0, "free": 524000 - i} for i, p in enumerate(ipam["peers"])]
    report = REPORT | {"ipam": ipam}
    assert render_status(report, "ipam") == (
        "        Status: ready\n"
        "         Range: 10.32.0.0/12\n"
        " DefaultSubnet: 10.32.0.0/12\n"
        "          Init: consensus=2\n"
        "\n"
        "02:00:00:00:00:01(host1)                    524288 IPs (50.0% of total) (524000 free)\n"
        "02:00:00:00:00:02(host2)                    524288 IPs (50.0% of total) (523999 free)"
        " - unreachable!\n"
        "problem: host2 is unreachable\n"
    )


def test_ipam_of_a_live_allocator_waiting_for_consensus() -> None:
    import random
    from ipaddress import IPv4Network

    from weftnet.ipam.allocator import Allocator
    from weftnet.ipam.mode import ConsensusInit

    alloc = Allocator(0x020000000001, "host1", IPv4Network("10.32.0.0/12"), None,
                      ConsensusInit(3), 0.0, random.Random(1))
    alloc.allocate(1, "c1", None, 0.0)
    text = render_status(REPORT | {"ipam": alloc.status()}, "ipam")
    assert "Status: awaiting consensus: 1 of 3 peers known" in text
    assert "02:00:00:00:00:01(host1)" in text and "Init: consensus=3" in text


def test_ipam_report_missing_keys_is_a_one_line_error() -> None:
    with pytest.raises(LocalProtocolError, match="malformed"):
        render_status(REPORT, "ipam")  # no init / share / free: an older router's report


def test_dns() -> None:
    assert render_status(REPORT, "dns") == (
        "web.weft.local. 10.32.0.1       c1           02:00:00:00:00:01\n"
    )


def test_dns_columns_widen_for_long_entries() -> None:
    report = copy.deepcopy(REPORT)
    report["dns"]["entries"].append({
        "hostname": "a-rather-long-name.weft.local.", "address": "10.32.0.2",
        "container": "wt12ab-container", "origin": "02:00:00:00:00:02"})
    assert render_status(report, "dns") == (
        "web.weft.local.                10.32.0.1       c1               02:00:00:00:00:01\n"
        "a-rather-long-name.weft.local. 10.32.0.2       wt12ab-container 02:00:00:00:00:02\n"
    )


@pytest.mark.parametrize(
    ("view", "message"), [("ipam", "IPAM is disabled"), ("dns", "DNS is disabled")]
)
def test_disabled_services_are_one_line_errors(view: str, message: str) -> None:
    report = copy.deepcopy(REPORT)
    report[view] = None
    with pytest.raises(LocalProtocolError) as info:
        render_status(report, view)
    assert info.value.reason == message
    assert f"Service: {view}" not in render_status(report)


def test_malformed_report_is_a_one_line_error() -> None:
    report = copy.deepcopy(REPORT)
    del report["router"]["connections"]
    with pytest.raises(LocalProtocolError, match="report is malformed: missing 'connections'"):
        render_status(report)
    with pytest.raises(LocalProtocolError, match="unknown status view"):
        render_status(REPORT, "bogus")


def test_ps_is_aligned_on_the_longest_container_name() -> None:
    containers = [
        {"container": "c1", "mac": "aa:bb:cc:00:00:01", "cidrs": ["10.32.0.1/12"]},
        {"container": "wt12ab-web-frontend", "mac": "aa:bb:cc:00:00:02",
         "cidrs": ["10.32.0.2/12", "10.40.0.1/24"]},
        {"container": "db", "mac": "aa:bb:cc:00:00:03", "cidrs": []},
    ]
    assert render_ps(containers) == (
        "c1                  aa:bb:cc:00:00:01 10.32.0.1/12\n"
        "wt12ab-web-frontend aa:bb:cc:00:00:02 10.32.0.2/12 10.40.0.1/24\n"
        "db                  aa:bb:cc:00:00:03\n"
    )
    # still CONTAINER MAC CIDR... for scripts that split on whitespace
    assert [line.split() for line in render_ps(containers).splitlines()][1] == [
        "wt12ab-web-frontend", "aa:bb:cc:00:00:02", "10.32.0.2/12", "10.40.0.1/24"]
    assert render_ps([]) == ""
    with pytest.raises(LocalProtocolError, match="container list is malformed: missing 'mac'"):
        render_ps([{"container": "c1", "cidrs": []}])


PUNCH = {
    "candidates": {"host": ["172.20.2.2:6783"], "reflexive": {"02:00:00:00:00:01": "203.0.113.2:6783"}},
    "mapping": "easy", "attempts": 2, "outcomes": {"direct": 1, "failed": 1}, "drops": {},
    "probes_sent": 12, "punched_connections": 1,
    "relayed": {"02:00:00:00:00:04(h4)": {"via": "02:00:00:00:00:01(host1)", "state": "relayed",
                                          "reason": "both behind symmetric NATs", "retry_in": 39.6}},
}


def test_connections_show_punched_paths_and_relayed_peers() -> None:
    report = copy.deepcopy(REPORT)
    report["router"]["connections"] = [
        _conn("203.0.113.3:6783", "established", how="punched (reflexive candidate)",
              peer={"name": "02:00:00:00:00:03", "nickname": "h3"}, encrypted=True,
              overlay="sleeve", overlay_reason="encrypted sleeve", mtu=1376),
        _conn("10.0.0.1:6783", "established", how="dialled",
              peer={"name": "02:00:00:00:00:01", "nickname": "host1"}, encrypted=True,
              overlay="sleeve", overlay_reason="encrypted sleeve", mtu=1376),
    ]
    report["router"]["punch"] = PUNCH
    assert render_status(report, "connections") == (
        "-> 203.0.113.3:6783      established sleeve 02:00:00:00:00:03(h3)    encrypted mtu=1376 "
        "punched (reflexive candidate) (encrypted sleeve)\n"
        "-> 10.0.0.1:6783         established sleeve 02:00:00:00:00:01(host1) encrypted mtu=1376 "
        "(encrypted sleeve)\n"
        ".. 02:00:00:00:00:04(h4) relayed     via 02:00:00:00:00:01(host1); both behind "
        "symmetric NATs; next try in 40s\n"
    )
    assert "   NATTraversal: enabled, mapping easy, 1 punched, 1 relayed\n" in render_status(
        report, None)


def test_ipam_with_the_ipv6_ring() -> None:
    v6 = {"range": "fd32::/48", "default_subnet": "fd32:0:0:1::/64", "status": "ready",
          "init": "consensus=1", "problems": [], "warnings": [],
          "peers": [{"name": "02:00:00:00:00:01", "nickname": "host1", "addresses": 1 << 80,
                     "share": 100.0, "free": (1 << 80) - 1, "reachable": True}]}
    ipam = REPORT["ipam"] | {"init": "consensus=2", "problems": [], "warnings": [], "ipv6": v6}
    ipam["peers"] = [p | {"share": 50.0, "free": 1} for p in ipam["peers"]]
    report = REPORT | {"ipam": ipam}
    text = render_status(report, "ipam")
    assert text.endswith(
        "\nIPv6:\n"
        "        Status: ready\n"
        "         Range: fd32::/48\n"
        " DefaultSubnet: fd32:0:0:1::/64\n"
        "          Init: consensus=1\n"
        "\n"
        "02:00:00:00:00:01(host1)                 1208925819614629174706176 IPs (100.0% of total) "
        "(1208925819614629174706175 free)\n"), text
    summary = render_status(report)
    assert "      Range6: fd32::/48\n" in summary and "DefaultSubnet6: fd32:0:0:1::/64\n" in summary
