"""``weft bench`` without networking: parsing iperf3 and ping output, ratios, the table,
the JSON shape, arguments and refusals. Results here are built by hand (fakes); the real
measurements are in tests/netns/test_bench.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.router.tools import bench
from weftnet.router.tools.bench import check_overlay, main, parse_data_args
from weftnet.router.tools.benchresults import (
    BASELINE,
    BenchResult,
    Measurement,
    MeasurementFailed,
    PathResult,
    PathSkipped,
    PingResult,
    TcpResult,
    format_table,
    parse_iperf3,
    parse_ping,
)
from weftnet.router.tools.namespaces import one_line
from weftnet.router.tools.testbed import CommandFailed

MACHINE = {"kernel": "6.1.0-test", "cpus": 2, "python": "3.11.2", "cpu_model": None, "iperf3": None}


def iperf3_doc(bps: float, nbytes: int, retransmits: int = 7) -> dict[str, Any]:
    """The parts of ``iperf3 -c -J`` output the bench reads (the real one has many more)."""
    return {
        "start": {"test_start": {"protocol": "TCP", "num_streams": 1, "duration": 1}},
        "intervals": [],
        "end": {
            "sum_sent": {"bytes": nbytes + 4096, "bits_per_second": bps * 1.01,
                         "retransmits": retransmits},
            "sum_received": {"bytes": nbytes, "bits_per_second": bps},
        },
    }  # fmt: skip


def ok(gbps: float, ping_ms: float = 0.1, beside_ms: float | None = None,
       beside_gbps: float | None = None) -> Measurement:
    ping = PingResult(20, 20, ping_ms, ping_ms, ping_ms, ping_ms)
    beside = None if beside_ms is None else PingResult(20, 20, beside_ms, beside_ms, beside_ms, beside_ms)
    tcp_beside = None if beside_gbps is None else TcpResult(beside_gbps, int(beside_gbps * 1e9 / 8))
    return Measurement("ok", tcp=TcpResult(gbps, int(gbps * 1e9 / 8)), ping=ping, ping_beside=beside,
                       tcp_beside=tcp_beside)


def lossy_ok(gbps: float) -> Measurement:
    return Measurement("ok", tcp=TcpResult(gbps, int(gbps * 1e9 / 8), retransmits=100))


def result(*paths: PathResult, loss: int | None = 1) -> BenchResult:
    return BenchResult(duration=5, loss_percent=loss, machine=MACHINE, paths=list(paths))


# --- iperf3 -------------------------------------------------------------------------------


def test_iperf3_reports_what_the_server_received() -> None:
    tcp = parse_iperf3(json.dumps(iperf3_doc(12.5e9, 7_812_500_000, retransmits=3)))
    assert tcp == TcpResult(gbps=12.5, bytes=7_812_500_000, retransmits=3)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no JSON: no output"),
        ("iperf3: error - unable to connect to server\n", "no JSON: iperf3: error - unable"),
        ("[1, 2]", "not an object"),
        (json.dumps({"start": {}, "error": "unable to connect to server: Connection refused"}),
         "iperf3: unable to connect to server: Connection refused"),
        (json.dumps({"start": {}, "end": {}}), "no end.sum_received"),
        (json.dumps({"end": {"sum_received": {"bytes": "12"}}}), "lacks bytes"),
        (json.dumps(iperf3_doc(0.0, 0)), "no data reached the server"),
    ],
)  # fmt: skip
def test_iperf3_failures_have_reasons(text: str, reason: str) -> None:
    with pytest.raises(MeasurementFailed, match=re.escape(reason)):
        parse_iperf3(text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["end", "sum_received", "sum_sent", "bytes",
                                       "bits_per_second", "retransmits", "error"]), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@given(JSON)
def test_iperf3_any_json_parses_or_fails_with_a_reason(doc: Any) -> None:
    try:
        tcp = parse_iperf3(json.dumps(doc))
    except MeasurementFailed as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert tcp.gbps > 0 and tcp.bytes > 0


# --- ping ---------------------------------------------------------------------------------


def ping_output(rtts: list[float], sent: int, extra: str = "") -> str:
    lines = ["PING 10.2.1.2 (10.2.1.2) 56(84) bytes of data."]
    lines += [f"64 bytes from 10.2.1.2: icmp_seq={i + 1} ttl=64 time={r} ms" for i, r in enumerate(rtts)]
    lines += [extra] if extra else []
    lines += [
        "",
        "--- 10.2.1.2 ping statistics ---",
        f"{sent} packets transmitted, {len(rtts)} received, "
        f"{100 * (sent - len(rtts)) // sent}% packet loss, time 951ms",
    ]
    if rtts:
        lines.append("rtt min/avg/max/mdev = 0.1/0.2/0.3/0.01 ms")
    return "\n".join(lines) + "\n"


def test_ping_average_and_median_of_the_replies() -> None:
    dup = "64 bytes from 10.2.1.2: icmp_seq=2 ttl=64 time=9.99 ms (DUP!)"
    stats = parse_ping(ping_output([0.1, 0.3, 0.2, 1.0], sent=5, extra=dup))
    assert (stats.sent, stats.received) == (5, 4)
    assert stats.median_ms == pytest.approx(0.25)
    assert stats.avg_ms == pytest.approx(0.4)
    assert (stats.min_ms, stats.max_ms) == (0.1, 1.0)


@given(st.lists(st.floats(min_value=0.001, max_value=5000).map(lambda x: round(x, 3)), min_size=1))
def test_ping_stats_match_the_replies(rtts: list[float]) -> None:
    stats = parse_ping(ping_output(rtts, sent=len(rtts) + 1))
    assert stats.median_ms == pytest.approx(statistics.median(rtts))
    assert stats.min_ms <= stats.median_ms <= stats.max_ms
    slack = 1e-9 * stats.max_ms  # the mean of equal floats may differ in the last bit
    assert stats.min_ms - slack <= stats.avg_ms <= stats.max_ms + slack


def test_rounds_combine_into_one_result() -> None:
    a = parse_ping(ping_output([0.1, 0.3], sent=2))
    b = parse_ping(ping_output([0.2, 0.4, 0.5], sent=4))
    both = PingResult.combine([a, b])
    assert (both.sent, both.received) == (6, 5)
    assert both.median_ms == 0.3 and both.min_ms == 0.1 and both.max_ms == 0.5
    assert both.avg_ms == pytest.approx(0.3)
    with pytest.raises(MeasurementFailed):
        PingResult.combine([])


def test_ping_without_answers_fails() -> None:
    with pytest.raises(MeasurementFailed, match="none of 3 pings was answered"):
        parse_ping(ping_output([], sent=3))
    with pytest.raises(MeasurementFailed, match="Network is unreachable"):
        parse_ping("ping: connect: Network is unreachable\n")


# --- ratios, table, JSON ------------------------------------------------------------------


def test_ratios_are_to_the_baseline_of_the_same_run_and_condition() -> None:
    r = result(
        PathResult(BASELINE, ok(10.0), lossy_ok(5.0)),
        PathResult("sleeve-plain", ok(3.5), lossy_ok(2.0)),
        PathResult("sleeve-encrypted", ok(2.5), Measurement.failed("boom")),
    )
    assert r.ratio(BASELINE) == 1.0
    assert r.ratio("sleeve-plain") == pytest.approx(0.35)
    assert r.ratio("sleeve-plain", lossy=True) == pytest.approx(0.4)
    assert r.ratio("sleeve-encrypted") == pytest.approx(0.25)
    assert r.ratio("sleeve-encrypted", lossy=True) is None
    assert r.ratio("fastdp") is None


def test_the_clean_ratio_is_to_the_baseline_measured_in_turns_with_the_path() -> None:
    r = result(
        PathResult(BASELINE, ok(10.0), lossy_ok(5.0)),
        PathResult("sleeve-plain", ok(3.5, beside_gbps=14.0), lossy_ok(2.0)),
    )
    assert r.ratio("sleeve-plain") == pytest.approx(0.25)   # 3.5 / 14, not / 10
    assert r.row_ratio("sleeve-plain") == pytest.approx(0.35)
    assert r.ratio("sleeve-plain", lossy=True) == pytest.approx(0.4)  # the lossy run: the row
    doc = r.to_json()["paths"]["sleeve-plain"]
    assert doc["ratio"] == 0.25 and doc["row_ratio"] == 0.35
    assert doc["tcp_baseline_beside_gbps"] == 14.0
    assert r.to_json()["tcp_rounds"] == bench.TCP_ROUNDS


def test_tcp_runs_combine_as_all_bytes_over_all_time() -> None:
    # 1 GB at 8 Gbit/s (1 s) and 1 GB at 2 Gbit/s (4 s): 2 GB in 5 s
    both = TcpResult.combine([TcpResult(8.0, 10**9, 3), TcpResult(2.0, 10**9, 4)])
    assert both.bytes == 2 * 10**9 and both.gbps == pytest.approx(3.2) and both.retransmits == 7
    assert TcpResult.combine([TcpResult(8.0, 10**9, 3), TcpResult(2.0, 10**9)]).retransmits is None
    with pytest.raises(MeasurementFailed):
        TcpResult.combine([])


def test_no_ratio_without_a_working_baseline() -> None:
    alone = result(PathResult("sleeve-plain", ok(3.5)), loss=None)
    assert alone.ratio("sleeve-plain") is None
    broken = result(PathResult(BASELINE, Measurement.failed("x")), PathResult("fastdp", ok(3.0)), loss=None)
    assert broken.ratio("fastdp") is None
    assert "no ratios: the baseline" in format_table(alone)


def test_ok_means_nothing_failed() -> None:
    skipped = Measurement.skipped("no fast path")
    assert result(PathResult(BASELINE, ok(1), lossy_ok(1)), PathResult("fastdp", skipped, skipped)).ok
    assert not result(PathResult(BASELINE, ok(1), Measurement.failed("nft missing"))).ok
    interrupted = result(PathResult(BASELINE, ok(1), lossy_ok(1)))
    interrupted.interrupted = True
    assert not interrupted.ok


def table_rows(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("path "))
    return lines[start:]


def test_table_rows_columns_and_reasons() -> None:
    r = result(
        PathResult(BASELINE, ok(14.8, 0.061), lossy_ok(9.1)),
        PathResult("sleeve-plain", ok(5.18, 0.25, beside_ms=0.1, beside_gbps=12.95),
                   Measurement.failed("iperf3: no data reached the server")),
        PathResult("sleeve-encrypted", Measurement.failed("on h1: `weft attach` failed: no such command"),
                   Measurement.failed("on h1: `weft attach` failed: no such command")),
        PathResult("fastdp", Measurement.skipped("h1's connection runs over sleeve: no fast path yet"),
                   Measurement.skipped("h1's connection runs over sleeve: no fast path yet")),
    )  # fmt: skip
    text = format_table(r)
    assert "kernel 6.1.0-test, 2 CPUs, Python 3.11.2" in text.splitlines()[0]
    rows = table_rows(text)
    header = rows[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == [
        "path", "TCP Gbit/s", "x baseline", "x row", "ping ms avg/med", "RTT x baseline",
        "TCP Gbit/s @1% loss", "x baseline@loss",
    ]  # fmt: skip
    assert rows[2].split() == ["kernel-vxlan", "14.80", "1.00", "1.00", "0.061/0.061", "1.00", "9.10", "1.00"]
    # the RTT ratio is to the baseline pinged beside the path (0.1 ms), not to its row (0.061)
    # the TCP ratio too, to the baseline's iperf3 in turns with the path's (12.95 Gbit/s)
    assert rows[3].split() == ["sleeve-plain", "5.18", "0.40", "0.35", "0.250/0.250", "2.50", "failed", "-"]
    assert rows[4] == "    @1% loss failed: iperf3: no data reached the server"
    assert rows[5].split() == ["sleeve-encrypted", "failed", "-", "-", "-", "-", "failed", "-"]
    # The same reason twice is shown once.
    assert rows[6] == "    failed: on h1: `weft attach` failed: no such command"
    assert rows[7].split() == ["fastdp", "skipped", "-", "-", "-", "-", "skipped", "-"]
    assert rows[8] == "    skipped: h1's connection runs over sleeve: no fast path yet"
    assert len(rows) == 9
    # Columns line up: after the (left-aligned) path, every cell ends where its dashes end.
    for row in (rows[2], rows[3], rows[5], rows[7]):
        assert cell_ends(row)[-7:] == cell_ends(rows[1])[1:]


def cell_ends(line: str) -> list[int]:
    return [i for i, ch in enumerate(line) if ch != " " and (i + 1 == len(line) or line[i + 1] == " ")]


def test_table_without_loss_has_no_loss_columns() -> None:
    rows = table_rows(format_table(result(PathResult(BASELINE, ok(9.0)), loss=None)))
    assert "loss" not in rows[0]
    assert rows[2].split() == ["kernel-vxlan", "9.00", "1.00", "1.00", "0.100/0.100", "1.00"]


def test_json_shape() -> None:
    r = result(
        PathResult(BASELINE, ok(10.0, 0.05), lossy_ok(6.0)),
        PathResult("sleeve-plain", Measurement.failed("why"), Measurement.failed("why")),
        PathResult("fastdp", ok(9.0, 0.11, beside_ms=0.1), lossy_ok(6.0)),
    )
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["bench"] == "data" and doc["baseline"] == BASELINE
    assert doc["duration_s"] == 5 and doc["loss_percent"] == 1 and doc["interrupted"] is False
    assert set(doc["machine"]) >= {"kernel", "cpus", "python"}
    assert list(doc["paths"]) == [BASELINE, "sleeve-plain", "fastdp"]
    fast = doc["paths"]["fastdp"]
    assert fast["rtt_ratio"] == 1.1 and fast["ping_baseline_beside_ms"]["median"] == 0.1
    assert doc["paths"][BASELINE]["rtt_ratio"] == 1.0 and doc["ping_rounds"] == bench.PING_ROUNDS
    base = doc["paths"][BASELINE]
    assert base["status"] == "ok" and base["tcp_gbps"] == 10.0 and base["ratio"] == 1.0
    assert base["ping_ms"]["avg"] == 0.05 and base["ping_ms"]["median"] == 0.05
    assert base["loss"]["tcp_gbps"] == 6.0 and base["loss"]["ratio"] == 1.0
    assert base["loss"]["tcp_retransmits"] == 100
    failed = doc["paths"]["sleeve-plain"]
    assert failed["status"] == "failed" and failed["reason"] == "why"
    assert failed["tcp_gbps"] is None and failed["ratio"] is None and failed["ping_ms"] is None
    assert failed["rtt_ratio"] is None and failed["ping_baseline_beside_ms"] is None
    assert failed["loss"]["status"] == "failed"
    no_loss = result(PathResult(BASELINE, ok(1.0)), loss=None).to_json()
    assert no_loss["loss_percent"] is None and no_loss["paths"][BASELINE]["loss"] is None


# --- overlay check ------------------------------------------------------------------------


def conn(overlay: str | None, encrypted: bool, reason: str = "") -> dict[str, Any]:
    return {"state": "established", "overlay": overlay, "encrypted": encrypted, "overlay_reason": reason}


def test_overlay_must_be_the_path_we_claim() -> None:
    check_overlay("h1", conn("sleeve", False), password=None, fastdp=False)
    check_overlay("h1", conn("sleeve", True), password="pw", fastdp=False)
    check_overlay("h1", conn("fastdp", False), password=None, fastdp=True)
    with pytest.raises(PathSkipped, match="h1's connection runs over sleeve: vxlan refused"):
        check_overlay("h1", conn("sleeve", False, "vxlan refused"), password=None, fastdp=True)
    with pytest.raises(MeasurementFailed, match="over fastdp, not sleeve"):
        check_overlay("h2", conn("fastdp", False), password=None, fastdp=False)
    with pytest.raises(MeasurementFailed, match="h2's connection is not encrypted"):
        check_overlay("h2", conn("sleeve", False), password="pw", fastdp=False)
    with pytest.raises(MeasurementFailed, match="h1's connection is encrypted"):
        check_overlay("h1", conn("sleeve", True), password=None, fastdp=False)


def test_one_line_of_a_failed_weft_command() -> None:
    exc = CommandFailed("h1", [sys.executable, "-m", "weftnet.router.programs.cli", "attach", "c1"], 2,
                        "", "usage: weft ...\nweft: error: invalid choice: 'attach'\n")  # fmt: skip
    assert one_line(exc) == "on h1: `weft attach c1` failed: weft: error: invalid choice: 'attach'"
    assert one_line(RuntimeError("first\nsecond")) == "first"


# --- arguments and refusals ---------------------------------------------------------------


def test_arguments() -> None:
    opts = parse_data_args([])
    assert opts.paths == bench.PATHS and opts.duration == 5 and opts.loss and not opts.json
    assert opts.ping_count == bench.PING_COUNT
    quick = parse_data_args(["--quick", "--no-loss", "--json", "--paths", "fastdp, kernel-vxlan,fastdp"])
    assert quick.paths == ("fastdp", "kernel-vxlan")
    assert (quick.duration, quick.loss, quick.json) == (1, False, True)
    assert quick.ping_count == bench.PING_COUNT_QUICK
    assert parse_data_args(["--quick", "--duration", "3"]).duration == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--paths", "kernel-vxlan,warp"], "unknown path 'warp'"),
        (["--paths", ","], "names no path"),
        (["--duration", "0"], "--duration must be"),
        (["--duration", "x"], "invalid int value"),
        (["data", "--wait", "0"], "--wait must be"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_testbed(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a testbed was built despite bad arguments")

    monkeypatch.setattr(bench, "Testbed", no_testbed)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("weft bench: ") and message in err and err.count("\n") == 1


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "kernel-vxlan" in capsys.readouterr().out


def test_refuses_without_root(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["--no-loss"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "weft bench: needs root: it creates network namespaces (try: sudo weft bench)\n"


def test_names_missing_tools(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "iperf3" else real_which(name))
    for tool in ("ip", "ping"):
        if real_which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err == "weft bench: needs iperf3 (apt-get install iproute2 iperf3 iputils-ping)\n"


# --- the dns suite ----------------------------------------------------------------------------

DNS_RESULT = {"names": 1000, "seconds": 10.0, "clients": 4, "outstanding": 100,
              "weftdns": {"qps": 30000.5, "completed": 300005, "lost": 0},
              "dnsmasq": {"qps": 90000.0, "completed": 900000, "lost": 2}}


def fake_bench_dns(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> list[dict[str, Any]]:
    from weftnet.router.tools import dnsbench as dns_bench

    calls: list[dict[str, Any]] = []

    def fake(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        if isinstance(outcome, Exception):
            raise outcome
        result = json.loads(json.dumps(outcome))
        result["ratio"] = result["weftdns"]["qps"] / result["dnsmasq"]["qps"]
        return result  # type: ignore[no-any-return]

    monkeypatch.setattr(dns_bench, "bench_dns", fake)
    return calls


def test_dns_suite_table_and_json(capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_bench_dns(monkeypatch, DNS_RESULT)
    assert main(["dns"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "weft bench dns: 1000 names, 10 s per server, dnsperf -c 4 -q 100"
    assert re.search(r"^weftdns +30000\.5 +300005 +0$", out, re.M)
    assert re.search(r"^dnsmasq +90000\.0 +900000 +2$", out, re.M)
    assert out.rstrip().endswith("weftdns / dnsmasq: 0.33 (meets the target of 0.25)")
    assert main(["dns", "--json", "--quick", "--names", "50"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ratio"] == pytest.approx(30000.5 / 90000.0) and doc["target_ratio"] == 0.25
    assert set(doc["machine"]) >= {"kernel", "cpus"}
    assert calls == [{"names": 1000, "seconds": 10.0, "clients": 4, "outstanding": 100},
                     {"names": 50, "seconds": 2.0, "clients": 4, "outstanding": 100}]
    slow = json.loads(json.dumps(DNS_RESULT))
    slow["weftdns"]["qps"] = 1000.0
    fake_bench_dns(monkeypatch, slow)
    assert main(["dns"]) == 0
    assert "BELOW the target of 0.25" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["dns", "--names", "0"], 2, "--names must be 1..100000"),
    (["dns", "--seconds", "-1"], 2, "--seconds must be more than 0"),
    (["dns", "--clients", "0"], 2, "--clients must be 1..256"),
    (["dns", "--bogus"], 2, "unrecognized arguments"),
])
def test_dns_suite_bad_arguments(argv: list[str], status: int, message: str,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_bench_dns(monkeypatch, DNS_RESULT)
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("weft bench dns: ") and message in err and err.count("\n") == 1
    assert calls == []


def test_dns_suite_says_what_is_missing(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from weftnet.router.tools.dnsbench import BenchUnavailable

    missing = "the DNS benchmark needs `dnsperf` (apt-get install dnsperf)"
    fake_bench_dns(monkeypatch, BenchUnavailable(missing))
    assert main(["dns"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"weft bench dns: {missing}\n"
