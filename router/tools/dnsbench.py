"""Queries per second of weftDNS against dnsmasq, serving the same names (for `weft bench dns`).

How it measures. Inside one network namespace of its own (``wdnsb`` + random hex,
deleted afterwards, with everything started in it), weftDNS (``python3 -m
weftnet.router.daemon.dns_server``) and dnsmasq (``--addn-hosts``, no upstream, no /etc/hosts) serve
the same ``names`` A records on the namespace's loopback, on two ports. ``dnsperf``
then queries each for ``seconds`` with the same query file (every name once, in
order, repeated), ``clients`` sockets and ``outstanding`` queries in flight. Nothing
leaves the namespace. Needs root, iproute2, dnsmasq and dnsperf
(``apt-get install dnsmasq-base dnsperf``).

``run_dns_bench`` is ``weft bench dns OPTIONS`` (``bench.SUITES``): it checks the options,
runs ``bench_dns`` and prints the table (or JSON) with the ratio to the target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weftnet.router.tools.benchresults import UsageError, UsageParser, machine_info
from weftnet.router.tools.namespaces import end_process, one_line, sigterm_as_interrupt

WEFT_PORT, DNSMASQ_PORT = 5300, 5301


class BenchUnavailable(RuntimeError):
    """The machine lacks something the benchmark needs; the message says what."""


def _check() -> None:
    if os.geteuid() != 0:
        raise BenchUnavailable("the DNS benchmark needs root (it creates a network namespace)")
    for tool, package in (("ip", "iproute2"), ("dnsmasq", "dnsmasq-base"), ("dnsperf", "dnsperf")):
        if shutil.which(tool) is None:
            raise BenchUnavailable(f"the DNS benchmark needs `{tool}` (apt-get install {package})")


def _write_inputs(d: Path, names: int) -> None:
    records, hosts, queries = [], [], []
    for i in range(names):
        address = f"10.{32 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
        records.append(f"c{i}.weft.local {address} c{i}\n")
        hosts.append(f"{address} c{i}.weft.local\n")
        queries.append(f"c{i}.weft.local A\n")
    (d / "records").write_text("".join(records))
    (d / "hosts").write_text("".join(hosts))
    (d / "queries").write_text("".join(queries))


def _dnsperf(ns: str, d: Path, port: int, seconds: float, clients: int,
             outstanding: int) -> dict[str, float]:
    argv = ["ip", "netns", "exec", ns, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
            "-d", str(d / "queries"), "-l", f"{seconds:g}", "-c", str(clients),
            "-q", str(outstanding), "-t", "2"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    completed = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not (qps and completed and lost):
        raise RuntimeError(f"could not read dnsperf's output:\n{out}")
    return {"qps": float(qps.group(1)), "completed": int(completed.group(1)),
            "lost": int(lost.group(1))}


def _wait_ready(ns: str, d: Path, port: int, deadline: float) -> None:
    while True:
        try:
            if _dnsperf(ns, d, port, 0.2, 1, 1)["completed"] > 0:
                return
        except RuntimeError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no DNS server answered on port {port} in the bench namespace")
        time.sleep(0.1)


def bench_dns(*, names: int = 1000, seconds: float = 10.0, clients: int = 4,
              outstanding: int = 100) -> dict[str, Any]:
    """Run both servers and dnsperf; return {"weftdns": {...}, "dnsmasq": {...}, "ratio"}."""
    _check()
    ns = "wdnsb" + secrets.token_hex(3)
    d = Path(tempfile.mkdtemp(prefix="weft-dnsbench-"))
    os.chmod(d, 0o755)       # dnsmasq reads its hosts file after dropping privileges
    procs: list[subprocess.Popen[str]] = []
    created = False
    try:
        _write_inputs(d, names)
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        created = True
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "weftnet.router.daemon.dns_server",
             "--address", "127.0.0.1", "--port", str(WEFT_PORT), "--records", str(d / "records"),
             "--resolv-conf", str(d / "no-resolv.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", f"--port={DNSMASQ_PORT}",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             f"--addn-hosts={d / 'hosts'}", "--cache-size=10000", f"--pid-file={d / 'dnsmasq.pid'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
        deadline = time.monotonic() + 20
        result: dict[str, Any] = {"names": names, "seconds": seconds, "clients": clients,
                                  "outstanding": outstanding}
        for label, port in (("weftdns", WEFT_PORT), ("dnsmasq", DNSMASQ_PORT)):
            _wait_ready(ns, d, port, deadline)
            result[label] = _dnsperf(ns, d, port, seconds, clients, outstanding)
        result["ratio"] = result["weftdns"]["qps"] / max(result["dnsmasq"]["qps"], 1e-9)
        return result
    finally:
        for proc in procs:
            end_process(proc)
        if created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


# --- `weft bench dns` ------------------------------------------------------------------------

DNS_TARGET_RATIO = 0.25


def _dns_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="weft bench dns",
        description="Queries per second of weftDNS against dnsmasq serving the same names, "
        "both driven by dnsperf in one run, inside a network namespace of its own. Needs "
        "root, iproute2, dnsmasq and dnsperf.",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--names", type=int, default=1000, metavar="N",
                   help="A records served by both (default 1000)")
    p.add_argument("--seconds", type=float, default=10.0, metavar="S",
                   help="dnsperf run per server (default 10)")
    p.add_argument("--clients", type=int, default=4, metavar="N",
                   help="dnsperf client sockets (default 4)")
    p.add_argument("--outstanding", type=int, default=100, metavar="N",
                   help="queries in flight (default 100)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 s per server")
    return p


def format_dns_table(result: dict[str, Any]) -> str:
    """The human-readable result of ``bench_dns``."""
    lines = [
        f"weft bench dns: {result['names']} names, {result['seconds']:g} s per server, "
        f"dnsperf -c {result['clients']} -q {result['outstanding']}",
        "",
        f"{'server':<10} {'queries/s':>12} {'completed':>11} {'lost':>7}",
    ]
    for label in ("weftdns", "dnsmasq"):
        r = result[label]
        lines.append(f"{label:<10} {r['qps']:>12.1f} {r['completed']:>11} {r['lost']:>7}")
    ratio = result["ratio"]
    verdict = "meets" if ratio >= DNS_TARGET_RATIO else "BELOW"
    lines += ["", f"weftdns / dnsmasq: {ratio:.2f} ({verdict} the target of "
                  f"{DNS_TARGET_RATIO:.2f})"]
    return "\n".join(lines) + "\n"


def run_dns_bench(argv: Sequence[str]) -> int:
    """``weft bench dns OPTIONS``: 0 when measured, 1 when it could not run, 2 for bad args."""
    try:
        ns = _dns_parser().parse_args(list(argv))
        seconds = 2.0 if ns.quick else ns.seconds
        if not 1 <= ns.names <= 100_000:
            raise UsageError(f"--names must be 1..100000, not {ns.names}")
        if not 0 < seconds <= 3600:
            raise UsageError(f"--seconds must be more than 0 and at most 3600, not {seconds:g}")
        if not 1 <= ns.clients <= 256 or not 1 <= ns.outstanding <= 65535:
            raise UsageError("--clients must be 1..256 and --outstanding 1..65535")
    except UsageError as exc:
        print(f"weft bench dns: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        with sigterm_as_interrupt():
            result = bench_dns(names=ns.names, seconds=seconds, clients=ns.clients,
                               outstanding=ns.outstanding)
    except KeyboardInterrupt:
        print("weft bench dns: interrupted", file=sys.stderr)
        return 130
    except (BenchUnavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"weft bench dns: {one_line(exc)}", file=sys.stderr)
        return 1
    result["target_ratio"] = DNS_TARGET_RATIO
    result["machine"] = machine_info()
    if ns.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_dns_table(result), end="")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(run_dns_bench(sys.argv[1:]))
