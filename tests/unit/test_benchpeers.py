"""``weft bench --peers``: options, CPU figures, the table's CPU column, skipped peers."""

from __future__ import annotations

import json
import os

import pytest

from weftnet.router.tools import benchpeers
from weftnet.router.tools.bench import parse_data_args
from weftnet.router.tools.benchpeers import PEERS, cpu_per_gb, cpu_seconds, missing
from weftnet.router.tools.benchresults import (
    BASELINE,
    BenchResult,
    Measurement,
    PathResult,
    PingResult,
    TcpResult,
    UsageError,
    format_table,
)

MACHINE = {"kernel": "6.1.0-test", "cpus": 2, "python": "3.11.2", "cpu_model": None, "iperf3": None}


def ok(gbps: float, cpu: float | None = None) -> Measurement:
    ping = PingResult(20, 20, 0.1, 0.1, 0.1, 0.1)
    return Measurement("ok", tcp=TcpResult(gbps, int(gbps * 1e9 / 8)), ping=ping, cpu_s_per_gb=cpu)


def test_peers_is_an_option_off_by_default() -> None:
    assert parse_data_args([]).peers == ()
    assert parse_data_args(["--peers", "--paths", "kernel-vxlan"]).peers == PEERS
    assert parse_data_args(["--peers=tinc,nebula,tinc"]).peers == ("tinc", "nebula")
    for bad in (["--peers=openvpn"], ["--peers=,"]):
        with pytest.raises(UsageError):
            parse_data_args(bad)


def test_cpu_seconds_of_this_process_and_of_none() -> None:
    spent = cpu_seconds([os.getpid()])
    sum(i * i for i in range(200_000))  # burn a little CPU
    assert cpu_seconds([os.getpid()]) >= spent > 0
    assert cpu_seconds([]) == 0 and cpu_seconds([2**22 + 12345]) == 0  # gone: counts 0
    assert cpu_per_gb(5.0, 2_000_000_000) == 2.5 and cpu_per_gb(1.0, 0) is None


def test_a_peer_not_installed_is_skipped_with_the_command_that_installs_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchpeers.shutil, "which", lambda name: None if name == "wg" else "/x")
    assert missing("wireguard-go") == (
        "wg not installed (install: apt-get install wireguard-go wireguard-tools)")
    assert missing("tinc") is None and set(PEERS) == set(benchpeers.NEEDS)
    class NoTestbed:  # a skipped peer touches no testbed
        tmpdir = None

    runner = benchpeers.PeerRunner(NoTestbed(), benchpeers.PeerOptions(1, 4, 1.0, True),  # type: ignore[arg-type]
                                   lambda s: None)
    (got,) = runner.run_peer("wireguard-go")  # one row: no host-to-host row to skip twice
    assert got.clean.status == "skipped" and "apt-get install wireguard-go" in got.clean.reason
    assert got.lossy is not None and got.lossy.status == "skipped"


def test_the_cpu_column_and_key_appear_only_with_cpu_figures() -> None:
    plain = BenchResult(5, None, MACHINE, [PathResult(BASELINE, ok(10.0))])
    assert "CPU s/GB" not in format_table(plain)
    assert "cpu_s_per_gb" not in json.dumps(plain.to_json())
    peers = BenchResult(5, None, MACHINE, [
        PathResult(BASELINE, ok(10.0)), PathResult("sleeve-encrypted", ok(2.5, 5.123)),
        PathResult("tinc", ok(0.5, 23.0)),
        PathResult("nebula", Measurement.skipped("nebula not installed (install: apt-get install nebula)")),
    ])
    rows = format_table(peers).splitlines()
    start = next(i for i, ln in enumerate(rows) if ln.startswith("path "))
    assert rows[start].split("  ")[-1].strip() == "CPU s/GB"
    assert rows[start + 2].split() == ["kernel-vxlan", "10.00", "1.00", "1.00", "0.100/0.100", "1.00", "-"]
    assert rows[start + 3].split()[-1] == "5.1" and rows[start + 4].split()[2] == "0.05"
    assert rows[start + 5].split() == ["nebula", "skipped", "-", "-", "-", "-", "-"]
    doc = peers.to_json()["paths"]
    assert doc["sleeve-encrypted"]["cpu_s_per_gb"] == 5.12 and "cpu_s_per_gb" not in doc[BASELINE]
