"""``weft bench``: the data paths measured side by side, in one run, on this machine.

Theory of operation
-------------------
The bench builds its own ``Testbed``: two hosts ``h1`` and ``h2`` on one underlay segment
(172.31.1.0/24) and, for each path, two fresh containers ``c1`` and ``c2`` (bare
namespaces). Every path puts ``c1`` (10.2.1.1/24) and ``c2`` (10.2.1.2/24) on one virtual
Ethernet spanning the two hosts, then the same measurements run container to container::

      c1 10.2.1.1 ──┐                                   ┌── c2 10.2.1.2   (iperf3 server)
                    │ h1                            h2  │
                    └─ path ══ eth0 ── switch ── eth0 ══ path ─┘

    kernel-vxlan      the BASELINE, built by hand in each host: a bridge, a kernel VXLAN
                      device (VNI 42, UDP 4789, remote = the other host) and a veth (MTU 1450)
    sleeve-plain      weft launch --no-fastdp (no password); weft attach
    sleeve-encrypted  the same with WEFT_PASSWORD set on both routers
    fastdp            weft launch with the fast path allowed; skipped (with the router's
                      reason) when the connection's overlay is not "fastdp"

With ``--ipv6`` the hosts are dual-stack (``fd00:150::N/64`` beside 172.31.1.N) and the same
paths run once more over the IPv6 underlay, as rows of their own in the same table:
``kernel-vxlan-v6`` (the hand-built VXLAN with IPv6 ``local``/``remote``, MTU 1430: IPv6's
header is 20 bytes longer), ``sleeve-plain-v6``, ``sleeve-encrypted-v6`` (routers dialled at
``[fd00:150::1]``) and ``fastdp-v6`` (``--mtu 1430``, what VXLAN over IPv6 carries in a 1500
underlay). Their ratios are to the same IPv4 baseline, so the rows compare directly; naming
an ``-v6`` path in ``--paths`` makes the hosts dual-stack too.

Per path: set it up; wait until ``c1`` gets an answer from ``c2``; ping (``PING_COUNT``
pings ``PING_INTERVAL`` s apart: average and median RTT); iperf3 TCP, one stream, for
``--duration`` s (throughput as received by the server, which must be more than zero
bytes); then, unless ``--no-loss``, the same iperf3 run again with ``LOSS_PERCENT``% of
the UDP datagrams arriving on each host's underlay dropped at random (``Testbed.set_loss``
on both hosts, so each direction loses 1%; both the VXLAN and the sleeve carry the
containers' traffic in UDP). Per datagram, as on a wire, and with GRO behind it, as from a
NIC (router/tools/wireloss.py: an XDP program on each host's underlay interface drops them
one by one, its peer sending datagram by datagram, and GRO merges what is left; without
the first, one drop took a whole 64 KiB send of either path at once; without the second,
the receiver read every datagram on its own, which no NIC makes it do). Then the path is
torn down (routers stopped, containers deleted, every link the testbed did not make
removed from the hosts) before the next one starts, so paths cannot disturb each other.

Ratios are to the baseline of the same run: absolute figures vary from machine to machine
and from minute to minute, ratios much less. Round-trip times of ~0.1 ms drift by more
than 10% between two moments on a shared machine, so for RTT the baseline is measured
*beside* every other path: while a path is up, a second, hand-built kernel VXLAN pair
(containers ``k1`` 10.3.1.1 and ``k2`` 10.3.1.2, the same recipe) is up too, and the pings
alternate between the two in ``PING_ROUNDS`` rounds; the path's RTT ratio is its median
over that interleaved baseline's median (``RTT x baseline``). Throughput swings as much
(a path's Gbit/s moved by 25% between runs an hour apart on the shared machine), so the
iperf3 run is cut in ``TCP_ROUNDS`` turns too, alternating with runs through the baseline
beside it (path, baseline, baseline, path: a steady drift favours neither), and ``x
baseline`` is the path's Gbit/s over that interleaved baseline's (``x row`` is the ratio to
the baseline's own row, for comparison; the lossy run uses the row). A path that fails is
one row in the table with a one-line reason; the other paths still run. Everything is
removed at the end, on errors and on Ctrl-C or SIGTERM too (``Testbed.close``).

``--peers``: after the paths, the userspace tunnels a user could install instead
(wireguard-go, nebula, tinc in switch mode) run between the same two hosts, two rows
each: container to container as our paths, then host to host
(``weftnet.router.tools.benchpeers``; a peer not installed is skipped with the command
that installs it), and every row gets the CPU seconds per GB of the path's
own processes: the two routers on our paths, the tunnel daemons on the peers'.

Suites: ``weft bench [data] [OPTIONS]`` runs the data paths (the default suite);
``weft bench dns [OPTIONS]`` measures weftDNS against dnsmasq serving the same names, both
driven by dnsperf in one run (``weftnet.router.tools.dnsbench``; the issue asks for at least
``DNS_TARGET_RATIO`` of dnsmasq's queries per second). A suite is one entry in ``SUITES``:
a name and a function ``(argv) -> exit status`` with its own parser. This module runs the
paths; what they yield, how tools' output is read and the table are in ``benchresults``.

Exit status: 0 when every path was measured (or skipped), 1 when one failed or the bench
could not run, 2 for bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weftnet.router.tools.benchpeers import PEERS, PeerOptions, PeerRunner, cpu_per_gb, cpu_seconds
from weftnet.router.tools.benchresults import (
    BASELINE,
    PING_COUNT,
    PING_INTERVAL,
    PING_ROUNDS,
    TCP_ROUNDS,
    BenchResult,
    Measurement,
    MeasurementFailed,
    PathResult,
    PathSkipped,
    PingResult,
    TcpResult,
    UsageError,
    UsageParser,
    first_line,
    format_table,
    machine_info,
    parse_iperf3,
    parse_ping,
)
from weftnet.router.tools.dnsbench import run_dns_bench
from weftnet.router.tools.namespaces import end_process, one_line
from weftnet.router.tools.testbed import CommandFailed, Testbed, TestbedError, sigterm_as_interrupt

__all__ = [
    "IPV6_PATHS",
    "LOSS_PERCENT",
    "PATHS",
    "SUITES",
    "DataOptions",
    "check_overlay",
    "main",
    "parse_data_args",
    "run_data_bench",
]

PATHS = ("kernel-vxlan", "sleeve-plain", "sleeve-encrypted", "fastdp")
V6 = "-v6"  # the same path over the IPv6 underlay (--ipv6)
IPV6_PATHS = tuple(p + V6 for p in PATHS)
BASELINE_MTU6 = 1430  # 1500 underlay - 70 bytes of VXLAN/UDP/IPv6/Ethernet headers
LOSS_PERCENT = 1
HOSTS = ("h1", "h2")
CONTAINERS = ("c1", "c2")  # c1 lives on h1, c2 on h2
ADDRESSES = ("10.2.1.1", "10.2.1.2")
PREFIX_LEN = 24
VXLAN_ID = 42
VXLAN_PORT = 4789
BASELINE_MTU = 1450  # 1500 underlay - 50 bytes of VXLAN/UDP/IP/Ethernet headers
IPERF_PORT = 5201
PING_COUNT_QUICK = 12
DEFAULT_DURATION = 5
QUICK_DURATION = 1
DEFAULT_WAIT = 30.0  # seconds a path may take to come up (routers connected, first ping)
POLL = 0.25
# Links of the baseline, inside each host (veth end "benchve" peers with "eth0" in the container).
_BRIDGE, _VXLAN, _VETH = "benchbr", "benchvx", "benchve"
_BESIDE_LINKS = ("benchbr2", "benchvx2", "benchve2")  # beside kernel-vxlan-v6 too
# The baseline measured beside another path, for RTT: its own containers and subnet.
BESIDE_CONTAINERS = ("k1", "k2")
BESIDE_ADDRESSES = ("10.3.1.1", "10.3.1.2")

Progress = Callable[[str], None]


# --- arguments --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataOptions:
    paths: tuple[str, ...]
    duration: int
    loss: bool
    json: bool
    ping_count: int
    wait: float
    ipv6: bool = False  # the hosts are dual-stack (an -v6 path is among the paths)
    peers: tuple[str, ...] = ()  # --peers: these userspace tunnels too, and CPU seconds per GB


def _data_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="weft bench [data]",
        description="Measure the data paths side by side, container to container, on two "
        "simulated hosts (network namespaces) built for the purpose: TCP throughput "
        "(iperf3) and ping RTT, with and without 1%% underlay loss; ratios to the kernel "
        "VXLAN baseline of the same run. Needs root, iproute2, iperf3 and ping.",
        epilog=f"paths: {', '.join(PATHS + IPV6_PATHS)} (baseline: {BASELINE}). Other "
        "suites: dns (weft bench dns --help).",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--duration", type=int, metavar="S",
        help=f"seconds per iperf3 run (default {DEFAULT_DURATION}; {QUICK_DURATION} with --quick)",
    )  # fmt: skip
    p.add_argument(
        "--paths", metavar="LIST", default=",".join(PATHS),
        help=f"comma-separated paths to measure, in order (default: {','.join(PATHS)})",
    )  # fmt: skip
    p.add_argument("--no-loss", action="store_true", help="skip the runs with 1%% underlay loss")
    p.add_argument(
        "--ipv6", action="store_true",
        help="dual-stack hosts; after the paths, the same paths over the IPv6 underlay "
        f"({','.join(IPV6_PATHS)})",
    )  # fmt: skip
    p.add_argument(
        "--peers", nargs="?", const=",".join(PEERS), default="", metavar="LIST",
        help=f"also measure userspace tunnels, container to container and host to host "
        f"(default all: {','.join(PEERS)}; "
        "tinc in switch mode), and CPU seconds per GB of every path's own processes",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true",
        help=f"a smoke run: {QUICK_DURATION} s per iperf3 run (unless --duration), "
        f"{PING_COUNT_QUICK} pings",
    )  # fmt: skip
    p.add_argument(
        "--wait", type=float, metavar="S", default=DEFAULT_WAIT,
        help=f"seconds a path may take to come up (default {DEFAULT_WAIT:.0f})",
    )  # fmt: skip
    return p


def parse_data_args(argv: Sequence[str]) -> DataOptions:
    """The options of ``weft bench [data]``; UsageError for bad ones (SystemExit for --help)."""
    ns = _data_parser().parse_args(list(argv))
    paths: list[str] = []
    for name in (s.strip() for s in ns.paths.split(",")):
        if not name:
            continue
        if name not in PATHS + IPV6_PATHS:
            raise UsageError(f"unknown path {name!r} (paths: {', '.join(PATHS + IPV6_PATHS)})")
        if name not in paths:
            paths.append(name)
    if not paths:
        raise UsageError("--paths names no path")
    if ns.ipv6:
        paths += [p + V6 for p in paths if not p.endswith(V6) and p + V6 not in paths]
    peers = tuple(dict.fromkeys(p.strip() for p in ns.peers.split(",") if p.strip()))
    for name in peers:
        if name not in PEERS:
            raise UsageError(f"unknown peer {name!r} (peers: {', '.join(PEERS)})")
    if ns.peers and not peers:
        raise UsageError("--peers names no peer")
    duration = ns.duration
    if duration is None:
        duration = QUICK_DURATION if ns.quick else DEFAULT_DURATION
    if not 1 <= duration <= 3600:
        raise UsageError(f"--duration must be 1..3600 seconds, not {duration}")
    if not 0 < ns.wait <= 600:
        raise UsageError(f"--wait must be more than 0 and at most 600 seconds, not {ns.wait}")
    return DataOptions(
        paths=tuple(paths),
        duration=duration,
        loss=not ns.no_loss,
        json=ns.json,
        ping_count=PING_COUNT_QUICK if ns.quick else PING_COUNT,
        wait=ns.wait,
        ipv6=any(p.endswith(V6) for p in paths),
        peers=peers,
    )


# --- running the paths ------------------------------------------------------------------------


class _Runner:
    """Measures paths one after another on one testbed."""

    def __init__(self, tb: Testbed, opts: DataOptions, progress: Progress) -> None:
        self.tb = tb
        self.opts = opts
        self.progress = progress
        self.cpu_pids: Callable[[], list[int]] | None = None  # the path's processes (--peers)

    # -- one path --

    def run_path(self, path: str) -> PathResult:
        setups: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
            "kernel-vxlan": lambda: self._kernel_vxlan(CONTAINERS, ADDRESSES),
            "sleeve-plain": lambda: self._weft(path, password=None, fastdp=False),
            "sleeve-encrypted": lambda: self._weft(path, password=secrets.token_hex(16), fastdp=False),
            "fastdp": lambda: self._weft(path, password=None, fastdp=True),
            "kernel-vxlan-v6": lambda: self._kernel_vxlan(CONTAINERS, ADDRESSES, ipv6=True),
            "sleeve-plain-v6": lambda: self._weft(path, password=None, fastdp=False, ipv6=True),
            "sleeve-encrypted-v6": lambda: self._weft(path, password=secrets.token_hex(16),
                                                      fastdp=False, ipv6=True),
            "fastdp-v6": lambda: self._weft(path, password=None, fastdp=True, ipv6=True),
        }
        say = self._say(path)
        lossy: Measurement | None = None
        try:
            for c in CONTAINERS:
                self.tb.add_container(c)
            say("setting up")
            with setups[path]():
                clean = self._measure(say, path)
                if self.opts.loss:
                    lossy = self._measure_lossy(say)
        except PathSkipped as exc:
            clean = Measurement.skipped(one_line(exc))
        except (MeasurementFailed, TestbedError, OSError, subprocess.SubprocessError) as exc:
            clean = Measurement.failed(one_line(exc))
        finally:
            self._clean_up(say)
        if self.opts.loss and lossy is None:
            lossy = Measurement(clean.status if clean.status != "ok" else "failed",
                                clean.reason or "not measured")  # fmt: skip
        say(_summary(clean, lossy))
        return PathResult(path, clean, lossy)

    def _say(self, path: str) -> Progress:
        return lambda text: self.progress(f"[{path}] {text}")

    def _measure(self, say: Progress, path: str) -> Measurement:
        say(f"waiting until c1 reaches c2 ({ADDRESSES[1]})")
        self._wait_reachable(CONTAINERS[0], ADDRESSES[1])
        pids = self.cpu_pids() if self.cpu_pids is not None and self.opts.peers else []
        if path == BASELINE:
            say(f"ping x{self.opts.ping_count}")
            ping = self._ping(CONTAINERS[0], ADDRESSES[1], self.opts.ping_count)
            say(f"iperf3 TCP {self.opts.duration} s")
            before = cpu_seconds(pids)
            tcp = self._iperf3(CONTAINERS, ADDRESSES[1], self.opts.duration)
            cpu = cpu_per_gb(cpu_seconds(pids) - before, tcp.bytes) if pids else None
            return Measurement("ok", tcp=tcp, ping=ping, cpu_s_per_gb=cpu)
        for c in BESIDE_CONTAINERS:
            self.tb.add_container(c)
        with self._kernel_vxlan(BESIDE_CONTAINERS, BESIDE_ADDRESSES, links=_BESIDE_LINKS):
            self._wait_reachable(BESIDE_CONTAINERS[0], BESIDE_ADDRESSES[1])
            say(f"ping x{self.opts.ping_count}, in turns with the baseline beside it")
            per_round = max(1, self.opts.ping_count // PING_ROUNDS)
            pings: list[PingResult] = []
            pings_beside: list[PingResult] = []
            for _ in range(PING_ROUNDS):
                pings.append(self._ping(CONTAINERS[0], ADDRESSES[1], per_round))
                pings_beside.append(self._ping(BESIDE_CONTAINERS[0], BESIDE_ADDRESSES[1], per_round))
            rounds = max(1, min(TCP_ROUNDS, self.opts.duration))
            turn = self.opts.duration / rounds
            say(f"iperf3 TCP {self.opts.duration} s, in {rounds} turns with the baseline beside it")
            runs: list[TcpResult] = []
            runs_beside: list[TcpResult] = []
            cpu_s = 0.0
            for i in range(rounds):
                if i % 2:  # path, baseline, baseline, path...: a drift favours neither
                    runs_beside.append(self._iperf3(BESIDE_CONTAINERS, BESIDE_ADDRESSES[1], turn))
                before = cpu_seconds(pids)
                runs.append(self._iperf3(CONTAINERS, ADDRESSES[1], turn))
                cpu_s += cpu_seconds(pids) - before
                if not i % 2:
                    runs_beside.append(self._iperf3(BESIDE_CONTAINERS, BESIDE_ADDRESSES[1], turn))
        tcp, tcp_beside = TcpResult.combine(runs), TcpResult.combine(runs_beside)
        return Measurement("ok", tcp=tcp, ping=PingResult.combine(pings),
                           ping_beside=PingResult.combine(pings_beside), tcp_beside=tcp_beside,
                           cpu_s_per_gb=cpu_per_gb(cpu_s, tcp.bytes) if pids else None)

    def _measure_lossy(self, say: Progress) -> Measurement:
        try:
            for host in HOSTS:
                self.tb.set_loss(host, LOSS_PERCENT)
            say(f"iperf3 TCP {self.opts.duration} s with {LOSS_PERCENT}% underlay loss")
            return Measurement("ok", tcp=self._iperf3(CONTAINERS, ADDRESSES[1], self.opts.duration))
        except (MeasurementFailed, TestbedError, OSError, subprocess.SubprocessError) as exc:
            return Measurement.failed(one_line(exc))
        finally:
            for host in HOSTS:
                with contextlib.suppress(TestbedError):
                    self.tb.set_loss(host, 0)

    def _clean_up(self, say: Progress) -> None:
        """Delete the containers and every link the testbed did not make in the hosts."""
        for c in (*CONTAINERS, *BESIDE_CONTAINERS):
            if c in self.tb.containers:
                try:
                    self.tb.remove_container(c)
                except TestbedError as exc:
                    say(f"warning: removing {c}: {one_line(exc)}")
        for host in HOSTS:
            keep = {"lo", *self.tb.interfaces(host)}
            listing = self.tb.run(host, ["ip", "-o", "link", "show"], check=False).stdout
            for line in listing.splitlines():
                name = line.split(":", 2)[1].strip().split("@", 1)[0]
                if name not in keep:
                    self.tb.run(host, ["ip", "link", "del", name], check=False)

    # -- measurements --

    def _wait_reachable(self, container: str, address: str) -> None:
        deadline = time.monotonic() + self.opts.wait
        while not self.tb.ping(container, address):
            if time.monotonic() > deadline:
                raise MeasurementFailed(
                    f"{container} got no answer from {address} within {self.opts.wait:.0f} s")
            time.sleep(POLL)

    def _ping(self, container: str, address: str, n: int) -> PingResult:
        argv = ["ping", "-n", "-c", str(n), "-i", str(PING_INTERVAL), "-W", "1", address]
        proc = self.tb.run(container, argv, check=False, timeout=n * PING_INTERVAL + 30)
        return parse_ping(proc.stdout + proc.stderr)

    def _iperf3(self, containers: Sequence[str], address: str, seconds: float) -> TcpResult:
        """One TCP stream from ``containers[0]`` to ``address`` of ``containers[1]``."""
        port = str(IPERF_PORT)
        server = self.tb.popen(
            containers[1], ["iperf3", "-s", "-1", "-B", address, "-p", port],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_listening(self.tb, containers[1], server, IPERF_PORT, timeout=15)
            client = [
                "iperf3", "-c", address, "-p", port, "-t", f"{seconds:g}",
                "-P", "1", "-J", "--connect-timeout", "5000",
            ]  # fmt: skip
            proc = self.tb.run(containers[0], client, check=False, timeout=seconds + 60)
            return parse_iperf3(proc.stdout)
        finally:
            end_process(server)
            if server.stdout is not None:
                server.stdout.close()

    # -- the paths --

    @contextlib.contextmanager
    def _kernel_vxlan(self, containers: Sequence[str], addresses: Sequence[str], *,
                      ipv6: bool = False,
                      links: tuple[str, str, str] = (_BRIDGE, _VXLAN, _VETH)) -> Iterator[None]:
        tb = self.tb
        bridge, vx, veth = links
        at = tb.address6 if ipv6 else tb.address
        mtu = str(BASELINE_MTU6 if ipv6 else BASELINE_MTU)
        try:
            for i, host in enumerate(HOSTS):
                other = HOSTS[1 - i]
                container_ns = tb.ns(containers[i])
                for argv in (
                    ["ip", "link", "add", bridge, "type", "bridge", "stp_state", "0"],
                    ["ip", "link", "set", bridge, "up"],
                    ["ip", "link", "add", vx, "type", "vxlan", "id", str(VXLAN_ID),
                     "dstport", str(VXLAN_PORT), "local", at(host),
                     "remote", at(other), "dev", tb.interfaces(host)[0]],
                    ["ip", "link", "set", vx, "mtu", mtu, "master", bridge, "up"],
                    ["ip", "link", "add", veth, "mtu", mtu, "type", "veth",
                     "peer", "name", "eth0", "netns", container_ns],
                    ["ip", "link", "set", veth, "master", bridge, "up"],
                ):  # fmt: skip
                    tb.run(host, argv)
                for argv in (
                    ["ip", "link", "set", "eth0", "mtu", mtu],
                    ["ip", "addr", "add", f"{addresses[i]}/{PREFIX_LEN}", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"],
                ):
                    tb.run(containers[i], argv)
            yield
        finally:
            for host in HOSTS:
                for link in (veth, vx, bridge):
                    tb.run(host, ["ip", "link", "del", link], check=False)

    @contextlib.contextmanager
    def _weft(self, path: str, *, password: str | None, fastdp: bool,
              ipv6: bool = False) -> Iterator[None]:
        tb = self.tb
        # A data dir per path and host: no state (peer names, IPAM) carries over between paths.
        envs = {}
        for host in HOSTS:
            data_dir = tb.tmpdir / "bench" / path / host
            data_dir.mkdir(parents=True, exist_ok=True)
            envs[host] = {"WEFT_DATA_DIR": str(data_dir), "WEFT_PASSWORD": password}
        launched: list[str] = []
        attached: list[tuple[str, str]] = []
        try:
            for i, host in enumerate(HOSTS):
                args = ["launch"] + ([] if fastdp else ["--no-fastdp"])
                if fastdp and ipv6:  # the hosts have IPv4 too: sized for VXLAN over IPv4
                    args += ["--mtu", str(BASELINE_MTU6)]
                args += [f"[{tb.address6(h)}]:6783" if ipv6 else tb.address(h) for h in HOSTS[:i]]
                launched.append(host)
                tb.weft(host, *args, env=envs[host], timeout=60)
            self.cpu_pids = lambda: [int((tb.tmpdir / "bench" / path / h / "weft.pid").read_text())
                                     for h in HOSTS]
            conns = self._wait_established(envs, "fastdp" if fastdp else None)
            for host, conn in conns.items():
                check_overlay(host, conn, password=password, fastdp=fastdp)
                if ipv6 and not str(conn.get("address", "")).startswith("["):
                    raise MeasurementFailed(f"{host} is not connected over IPv6: {_conn_text(conn)}")
            for i, host in enumerate(HOSTS):
                target = tb.ns(CONTAINERS[i])
                tb.weft(host, "attach", f"{ADDRESSES[i]}/{PREFIX_LEN}", target,
                        env=envs[host], timeout=60)  # fmt: skip
                attached.append((host, target))
            if fastdp:
                self._wait_reachable(CONTAINERS[0], ADDRESSES[1])
                self._wait_programmed(envs)
            yield
        finally:
            self.cpu_pids = None
            for host, target in reversed(attached):
                with contextlib.suppress(subprocess.SubprocessError):
                    tb.weft(host, "detach", target, env=envs[host], check=False, timeout=30)
            for host in reversed(launched):
                stopped = False
                with contextlib.suppress(subprocess.SubprocessError):
                    stopped = tb.weft(host, "stop", env=envs[host], check=False, timeout=30).returncode == 0
                if not stopped:
                    tb.kill_processes(host)

    def _report(self, host: str, envs: dict[str, dict[str, str | None]]) -> Any:
        """``weft report`` on ``host``, parsed (ValueError when it is not JSON)."""
        try:
            return json.loads(self.tb.weft(host, "report", env=envs[host], timeout=30).stdout)
        except CommandFailed as exc:
            # `launch` returned once the API answered: the router has died since.
            last = _last_line(Path(str(envs[host]["WEFT_DATA_DIR"])) / "weft.log")
            raise MeasurementFailed(f"{host}'s router stopped answering: {last or one_line(exc)}") from None

    def _wait_programmed(self, envs: dict[str, dict[str, str | None]]) -> None:
        """Wait until each host's VXLAN table holds the other container's MAC (with the
        peer's bridge MAC: two entries), so the measurement sees the fast path, not the
        first frames that took sleeve while the MACs were being announced."""
        deadline = time.monotonic() + self.opts.wait
        while True:
            entries: dict[str, int | str] = {}
            for host in HOSTS:
                try:
                    report = self._report(host, envs)
                    entries[host] = int(report["router"]["dataplane"]["fastdp"]["forwarding_entries"])
                except (ValueError, KeyError, TypeError) as exc:
                    entries[host] = f"weft report: {one_line(exc)}"
            if all(isinstance(n, int) and n >= 2 for n in entries.values()):
                return
            if time.monotonic() > deadline:
                raise MeasurementFailed(f"the containers' MACs did not reach the VXLAN tables "
                                        f"within {self.opts.wait:.0f} s (entries: {entries})")
            time.sleep(POLL)

    def _wait_established(self, envs: dict[str, dict[str, str | None]],
                          overlay: str | None = None) -> dict[str, dict[str, Any]]:
        """Poll ``weft report`` on both hosts until each has an established connection
        (over ``overlay`` when given); return it per host."""
        deadline = time.monotonic() + self.opts.wait
        why = "no report yet"
        while True:
            found: dict[str, dict[str, Any]] = {}
            lacking = []
            for host in HOSTS:
                try:
                    conns = self._report(host, envs)["router"]["connections"]
                except (ValueError, KeyError, TypeError) as exc:
                    lacking.append(f"{host}: weft report: {one_line(exc)}")
                    continue
                up = [c for c in conns if isinstance(c, dict) and c.get("state") == "established"
                      and overlay in (None, c.get("overlay"))]
                if up:
                    found[host] = up[0]
                else:
                    shown = ", ".join(_conn_text(c) for c in conns) or "no connections"
                    lacking.append(f"{host}: {shown}")
            if len(found) == len(HOSTS):
                return found
            why = "; ".join(lacking)
            if time.monotonic() > deadline:
                raise MeasurementFailed(f"routers not connected after {self.opts.wait:.0f} s: {why}")
            time.sleep(POLL)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _conn_text(conn: Any) -> str:
    if not isinstance(conn, dict):
        return "?"
    text = f"{conn.get('address', '?')} {conn.get('state', '?')}"
    if conn.get("overlay"):
        text += f" over {conn['overlay']} ({conn.get('overlay_reason') or 'no reason given'})"
    return f"{text} ({conn['info']})" if conn.get("info") else text


def check_overlay(host: str, conn: dict[str, Any], *, password: str | None, fastdp: bool) -> None:
    """Make sure the connection is the path we claim to measure."""
    overlay, reason = conn.get("overlay"), conn.get("overlay_reason") or "no reason given"
    if fastdp and overlay != "fastdp":
        raise PathSkipped(f"{host}'s connection runs over {overlay or 'no overlay'}: {reason}")
    if not fastdp and overlay != "sleeve":
        raise MeasurementFailed(f"{host}'s connection runs over {overlay or 'no overlay'}, not sleeve")
    if bool(conn.get("encrypted")) != (password is not None):
        state = "encrypted" if conn.get("encrypted") else "not encrypted"
        raise MeasurementFailed(f"{host}'s connection is {state}")


def _wait_listening(
    tb: Testbed, where: str, proc: subprocess.Popen[bytes], port: int, timeout: float
) -> None:
    """Wait until a TCP socket listens on ``port`` in ``where``; MeasurementFailed if
    ``proc`` (the server) exits first or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        listing = tb.run(where, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if listing.strip():
            return
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise MeasurementFailed(f"iperf3 server exited: {first_line(out) or 'no output'}")
        if time.monotonic() > deadline:
            raise MeasurementFailed(f"iperf3 server not listening after {timeout:.0f} s")
        time.sleep(0.05)


def _summary(clean: Measurement, lossy: Measurement | None) -> str:
    if clean.status != "ok" or clean.tcp is None or clean.ping is None:
        return f"{clean.status}: {clean.reason}"
    text = f"{clean.tcp.gbps:.2f} Gbit/s, ping {clean.ping.avg_ms:.3f} ms"
    if clean.ping_beside is not None and clean.tcp_beside is not None:
        text += (f" (baseline beside it {clean.tcp_beside.gbps:.2f} Gbit/s,"
                 f" {clean.ping_beside.avg_ms:.3f} ms)")
    if lossy is not None:
        text += f"; at {LOSS_PERCENT}% loss: " + (
            f"{lossy.tcp.gbps:.2f} Gbit/s" if lossy.tcp else f"{lossy.status}: {lossy.reason}"
        )
    return text


# --- entry points -----------------------------------------------------------------------------


def _preflight() -> None:
    if os.geteuid() != 0:
        raise MeasurementFailed("needs root: it creates network namespaces (try: sudo weft bench)")
    missing = [tool for tool in ("ip", "iperf3", "ping") if shutil.which(tool) is None]
    if missing:
        raise MeasurementFailed(f"needs {', '.join(missing)} (apt-get install iproute2 iperf3 "
                                "iputils-ping)")


def run_data_bench(argv: Sequence[str], *, progress: Progress | None = None) -> int:
    """``weft bench [data] OPTIONS``: measure, print the table (or JSON), return the status."""
    try:
        opts = parse_data_args(argv)
    except UsageError as exc:
        print(f"weft bench: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        _preflight()
    except MeasurementFailed as exc:
        print(f"weft bench: {exc}", file=sys.stderr)
        return 1
    result = BenchResult(
        duration=opts.duration,
        loss_percent=LOSS_PERCENT if opts.loss else None,
        machine=machine_info(),
        ping_count=opts.ping_count,
    )
    tb: Testbed | None = None
    error: str | None = None
    try:
        with sigterm_as_interrupt():
            tb = Testbed(hosts=HOSTS, underlay="dual" if opts.ipv6 else "ipv4")
            say(f"testbed {tb.prefix}: hosts {', '.join(tb.ns(h) for h in HOSTS)}")
            runner = _Runner(tb, opts, say)
            for path in opts.paths:
                result.paths.append(runner.run_path(path))
            if opts.peers:
                peer_opts = PeerOptions(opts.duration, opts.ping_count, opts.wait, opts.loss)
                result.paths += PeerRunner(tb, peer_opts, say).run(opts.peers)
    except KeyboardInterrupt:
        result.interrupted = True
        say("interrupted, cleaning up")
    except (TestbedError, OSError) as exc:
        error = one_line(exc)
    finally:
        if tb is not None:
            try:
                tb.close()
            except TestbedError as exc:
                error = error or one_line(exc)
    if error is not None:
        print(f"weft bench: {error}", file=sys.stderr)
    if opts.json:
        print(json.dumps(result.to_json(), indent=2))
    elif result.paths or not error:
        print(format_table(result), end="")
    sys.stdout.flush()
    if result.interrupted:
        return 130
    return 0 if result.ok and error is None else 1


SUITES: dict[str, Callable[[Sequence[str]], int]] = {"data": run_data_bench,
                                                      "dns": run_dns_bench}


def main(argv: list[str]) -> int:
    """``weft bench [SUITE] [OPTIONS]``; SUITE is one of ``SUITES`` (default ``data``)."""
    if argv and argv[0] in SUITES:
        return SUITES[argv[0]](argv[1:])
    return SUITES["data"](argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
