"""Queries per second of weftDNS against dnsmasq, serving the same names (for `weft bench dns`).

How it measures. Inside one network namespace of its own (``wdnsb`` + random hex,
deleted afterwards, with everything started in it), weftDNS (``python3 -m
weftnet.router.daemon.dns_server``) and dnsmasq (``--addn-hosts``, no upstream, no /etc/hosts) serve
the same ``names`` A records on the namespace's loopback, on two ports. ``dnsperf``
then queries each for ``seconds`` with the same query file (every name once, in
order, repeated), ``clients`` sockets and ``outstanding`` queries in flight. Nothing
leaves the namespace. Needs root, iproute2, dnsmasq and dnsperf
(``apt-get install dnsmasq-base dnsperf``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    try:
        print(json.dumps(bench_dns(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 10.0),
                         indent=2))
    except BenchUnavailable as exc:
        print(f"weft bench dns: {exc}", file=sys.stderr)
        sys.exit(1)
