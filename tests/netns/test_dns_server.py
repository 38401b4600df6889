"""weftDNS on real (simulated) hosts: queried with dig and getent from another namespace.

Three hosts on one segment, in namespaces with a prefix of their own ("wdns..."):

    cli 172.31.1.3  ──▶  srv 172.31.1.1:53 (weftDNS, fixed records)  ──▶  up 172.31.1.2:53
    resolv.conf:         resolv.conf: nameserver 172.31.1.2               (a second weftDNS,
    nameserver srv,                                                       authoritative for
    search weft.local                                                     example.com: the
                                                                          "outside world")

``getent`` inside a namespace reads ``/etc/netns/NAME/resolv.conf`` (``ip netns exec``
bind-mounts it), which the fixture writes and removes.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from weftnet.router.tools.dnsbench import bench_dns
from weftnet.router.tools.testbed import Testbed

SRV, UP = "172.31.1.1", "172.31.1.2"
BIG = [f"10.40.0.{i}" for i in range(1, 51)]
RECORDS = "".join([
    "web.weft.local 10.32.0.1 c1\n",
    "multi.weft.local 10.32.0.11 c2\n", "multi.weft.local 10.32.0.12 c3\n",
    "multi.weft.local 10.32.0.13 c4\n",
    *(f"big.weft.local {a} big\n" for a in BIG),
])

pytestmark = pytest.mark.skipif(shutil.which("dig") is None,
                                reason="needs dig (apt-get install bind9-dnsutils)")


@dataclass
class Net:
    tb: Testbed
    upstream: subprocess.Popen[str]


def _serve(tb: Testbed, host: str, address: str, records: str, *extra: str) -> subprocess.Popen[str]:
    path = tb.tmpdir / f"{host}.records"
    path.write_text(records)
    proc = tb.popen(host, [sys.executable, "-m", "weftnet.router.daemon.dns_server", "--address", address,
                           "--records", str(path), *extra],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("weftdns ready"), f"{line!r} {proc.stderr.read() if proc.stderr else ''}"
    return proc


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    tb = Testbed(hosts=("srv", "up", "cli"), prefix="wdns" + secrets.token_hex(3))
    netns_dirs: list[Path] = []
    try:
        resolv = tb.tmpdir / "srv-resolv.conf"
        resolv.write_text(f"nameserver {UP}\noptions timeout:1\n")
        upstream = _serve(tb, "up", UP, "www.example.com 192.0.2.80\n", "--domain", "example.com")
        _serve(tb, "srv", SRV, RECORDS, "--resolv-conf", str(resolv), "--upstream-timeout", "1")
        for host in ("cli", "srv"):
            d = Path("/etc/netns") / tb.ns(host)
            netns_dirs.append(d)
            d.mkdir(parents=True)
            (d / "resolv.conf").write_text(f"nameserver {SRV}\nsearch weft.local\noptions timeout:2\n")
        yield Net(tb, upstream)
    finally:
        try:
            tb.close()
        finally:
            for d in netns_dirs:
                shutil.rmtree(d, ignore_errors=True)


@dataclass
class Dig:
    status: str
    flags: set[str]
    answers: list[tuple[str, str, str]]   # (name, type, data)


def dig(net: Net, *args: str) -> Dig:
    out = net.tb.run("cli", ["dig", f"@{SRV}", "+noall", "+comments", "+answer", "+tries=1",
                             "+time=5", *args]).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([a-z ]*);", out)
    assert status and flags, out
    answers = []
    for line in out.splitlines():
        if line and not line.startswith(";"):
            words = line.split()
            answers.append((words[0], words[3], words[4]))
    return Dig(status.group(1), set(flags.group(1).split()), answers)


def getent(net: Net, name: str) -> list[str]:
    proc = net.tb.run("cli", ["getent", "ahostsv4", name], check=False)
    return sorted({line.split()[0] for line in proc.stdout.splitlines()})


def test_dig_a_record(net: Net) -> None:
    d = dig(net, "Web.Weft.Local", "A")
    assert d.status == "NOERROR" and "aa" in d.flags
    assert d.answers == [("Web.Weft.Local.", "A", "10.32.0.1")]


def test_getent_by_full_name_and_by_search_domain(net: Net) -> None:
    assert getent(net, "web.weft.local") == ["10.32.0.1"]
    assert getent(net, "web") == ["10.32.0.1"]
    assert getent(net, "multi") == ["10.32.0.11", "10.32.0.12", "10.32.0.13"]
    assert getent(net, "nope.weft.local") == []


def test_reverse_lookup(net: Net) -> None:
    d = dig(net, "-x", "10.32.0.1")
    assert d.answers == [("1.0.32.10.in-addr.arpa.", "PTR", "web.weft.local.")]
    proc = net.tb.run("cli", ["getent", "hosts", "10.32.0.12"])
    assert proc.stdout.split()[:2] == ["10.32.0.12", "multi.weft.local"]


def test_missing_names_and_other_types(net: Net) -> None:
    assert dig(net, "nope.weft.local").status == "NXDOMAIN"
    d = dig(net, "web.weft.local", "AAAA")
    assert d.status == "NOERROR" and d.answers == []


def test_fifty_addresses_truncated_over_udp_complete_over_tcp(net: Net) -> None:
    d = dig(net, "+ignore", "+noedns", "big.weft.local")
    assert "tc" in d.flags and 0 < len(d.answers) < 50
    d = dig(net, "+tcp", "big.weft.local")
    assert "tc" not in d.flags and sorted(a[2] for a in d.answers) == sorted(BIG)
    d = dig(net, "big.weft.local")          # UDP, falls back to TCP by itself on TC
    assert sorted(a[2] for a in d.answers) == sorted(BIG)
    assert getent(net, "big.weft.local") == sorted(BIG)


def test_outside_names_are_forwarded_upstream(net: Net) -> None:
    d = dig(net, "www.example.com")
    assert d.status == "NOERROR" and d.answers == [("www.example.com.", "A", "192.0.2.80")]
    assert dig(net, "+tcp", "www.example.com").answers == d.answers
    assert dig(net, "nope.example.com").status == "NXDOMAIN"
    assert getent(net, "www.example.com") == ["192.0.2.80"]


def test_servfail_when_the_upstream_is_down(net: Net) -> None:
    net.upstream.terminate()
    net.upstream.wait(timeout=10)
    assert dig(net, "www.example.com").status == "SERVFAIL"
    assert dig(net, "+tcp", "www.example.com").status == "SERVFAIL"
    assert dig(net, "web.weft.local").answers == [("web.weft.local.", "A", "10.32.0.1")]


@pytest.mark.skipif(shutil.which("dnsmasq") is None or shutil.which("dnsperf") is None,
                    reason="needs dnsmasq and dnsperf (apt-get install dnsmasq-base dnsperf)")
def test_bench_measures_both_servers_on_the_same_names() -> None:
    result = bench_dns(names=50, seconds=1, clients=1, outstanding=10)
    for server in ("weftdns", "dnsmasq"):
        assert result[server]["completed"] > 0 and result[server]["qps"] > 0
    assert result["ratio"] == result["weftdns"]["qps"] / result["dnsmasq"]["qps"]
