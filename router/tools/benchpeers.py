"""``weft bench --peers``: the userspace tunnels a user could install instead, measured
beside our paths on the bench's own two namespace hosts.

Theory of operation
-------------------
Each peer is one tunnel between the hosts ``h1`` and ``h2`` of the bench's testbed,
carrying IP between two addresses, ``TUNNEL_ADDRESSES``, on its own interface in each host,
measured twice: host to host (row ``<peer> host-to-host``), then container to container
like our paths (row ``<peer>``): a container per host (``PEER_CONTAINERS``, a veth to its
host, ``10.6.N.2/24`` routed by its host ``10.6.N.1``, which forwards), and the tunnel
carries the other container's subnet (wireguard-go: in the peer's allowed IPs; nebula: an
``unsafe_routes`` entry and the subnet in the other host's certificate; tinc: a route by
the other host's tunnel address)::

    pc1 10.6.1.2 ─ veth ─ h1 10.4.1.1 (tunnel interface) ══ tunnel over eth0 ── switch
        ── eth0 ══ h2 10.4.1.2 (tunnel interface) ─ veth ─ pc2 10.6.2.2

    wireguard-go  wireguard-go -f on an interface per host (its UAPI socket is named after
                  the interface, so the two hosts' names differ); keys by ``wg genkey``;
                  ``wg set`` gives each the other as its one peer (endpoint, allowed IP)
    nebula        a CA and a certificate per host (``nebula-cert``), no lighthouse: each
                  host's static_host_map names the other's underlay address; firewall open
    tinc          tinc 1.0 in switch mode (an Ethernet tunnel, as Weave's sleeve), RSA keys
                  by ``tincd -K``, aes-256-cbc with sha256 (tinc 1.0's strongest offer),
                  ``h1`` connects to ``h2``

Per peer: start the daemons (``Testbed.popen``: ``close()`` kills whatever is left); for
each of the two rows, wait until the source reaches the destination through the tunnel,
ping (``ping_count`` pings, no baseline beside it), iperf3 TCP one stream for the bench's
duration, and the CPU seconds the tunnel's processes on both hosts used meanwhile
(``/proc/PID/stat`` utime + stime) over the bytes the server received: CPU-seconds per GB
(10**9 bytes). Then the daemons are stopped, the containers removed and every link the
testbed did not make is removed (``_clean_up``), before the next peer. A peer whose
programs are not installed is skipped with the command that installs it; nothing outside
the bench's namespaces and its temporary directory is touched. Loss is not measured for
peers (``Measurement.skipped`` under ``--no-loss``'s column).

``cpu_seconds`` is also what the bench uses for the routers' CPU on our paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from weftnet.router.tools.benchresults import (
    Measurement,
    MeasurementFailed,
    PathResult,
    PathSkipped,
    PingResult,
    TcpResult,
    first_line,
    parse_iperf3,
    parse_ping,
)
from weftnet.router.tools.namespaces import end_process, one_line
from weftnet.router.tools.testbed import Testbed, TestbedError

PEERS = ("wireguard-go", "nebula", "tinc")
# what each peer needs on PATH, and the command that installs it (Debian)
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "wireguard-go": (("wireguard-go", "wg"), "apt-get install wireguard-go wireguard-tools"),
    "nebula": (("nebula", "nebula-cert"), "apt-get install nebula"),
    "tinc": (("tincd",), "apt-get install tinc"),
}
HOSTS = ("h1", "h2")
TUNNEL_ADDRESSES = ("10.4.1.1", "10.4.1.2")
TUNNEL_PREFIX = 24
PEER_CONTAINERS = ("pc1", "pc2")
CONTAINER_SUBNETS = ("10.6.1.0/24", "10.6.2.0/24")  # .1 the host, .2 the container
CONTAINER_ADDRESSES = ("10.6.1.2", "10.6.2.2")
HOST_VETH = "pcve"
HOST_TO_HOST = " host-to-host"  # the suffix of a peer's host-to-host row
WG_PORT = 51820
NEBULA_PORT = 4242
TINC_PORT = 655
IPERF_PORT = 5202
PING_INTERVAL = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL = 0.25

Progress = Callable[[str], None]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (all their threads) so far; a process
    that is gone counts 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def cpu_per_gb(seconds: float, nbytes: int) -> float | None:
    return None if nbytes <= 0 else seconds / (nbytes / 1e9)


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here (the command that installs it), or None."""
    programs, install = NEEDS[peer]
    absent = [p for p in programs if shutil.which(p) is None]
    if absent:
        return f"{', '.join(absent)} not installed (install: {install})"
    return None


@dataclass(frozen=True, slots=True)
class PeerOptions:
    duration: int
    ping_count: int
    wait: float
    loss: bool  # the bench measures loss: peers get a "skipped" lossy row


class PeerRunner:
    """Measures the peers one after the other on the bench's testbed."""

    def __init__(self, tb: Testbed, opts: PeerOptions, progress: Progress) -> None:
        self.tb = tb
        self.opts = opts
        self.progress = progress
        self.pids: list[int] = []
        # the tunnel's interface in host N (by index), when the containers' routes need it
        self.dev: Callable[[int], str] | None = None

    def run(self, peers: Sequence[str] = PEERS) -> list[PathResult]:
        return [row for p in peers for row in self.run_peer(p)]

    def run_peer(self, peer: str) -> list[PathResult]:
        """The peer's rows: container to container, then host to host (one row, skipped,
        when the peer is not installed)."""
        say: Progress = lambda text: self.progress(f"[{peer}] {text}")  # noqa: E731
        setups: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
            "wireguard-go": self._wireguard, "nebula": self._nebula, "tinc": self._tinc,
        }
        lossy = Measurement.skipped("loss is not measured for peers") if self.opts.loss else None
        why = missing(peer)
        if why is not None:
            say(f"skipped: {why}")
            return [PathResult(peer, Measurement.skipped(why), lossy)]
        hosts = containers = Measurement.failed("not measured")
        try:
            say("setting up")
            with setups[peer]():
                hosts = self._measure(say, (HOSTS[0], HOSTS[1]), TUNNEL_ADDRESSES[1])
                say("containers on both hosts, routed through the tunnel")
                self._containers()
                containers = self._measure(say, PEER_CONTAINERS, CONTAINER_ADDRESSES[1])
        except PathSkipped as exc:
            hosts = containers = Measurement.skipped(one_line(exc))
        except (MeasurementFailed, TestbedError, OSError, subprocess.SubprocessError) as exc:
            failed = Measurement.failed(one_line(exc))
            if hosts.status == "ok":
                containers = failed
            else:
                hosts = containers = failed
        finally:
            self._clean_up()
        for what, m in (("container to container", containers), ("host to host", hosts)):
            if m.status == "ok" and m.tcp is not None and m.ping is not None:
                cpu = "-" if m.cpu_s_per_gb is None else f"{m.cpu_s_per_gb:.1f}"
                say(f"{what}: {m.tcp.gbps:.2f} Gbit/s, ping {m.ping.avg_ms:.3f} ms, "
                    f"{cpu} CPU s/GB")
            else:
                say(f"{what}: {m.status}: {m.reason}")
        return [PathResult(peer, containers, lossy),
                PathResult(peer + HOST_TO_HOST, hosts, lossy)]

    # -- measuring --

    def _measure(self, say: Progress, ends: tuple[str, str], dst: str) -> Measurement:
        src, sink = ends
        say(f"waiting until {src} reaches {dst} through the tunnel")
        deadline = time.monotonic() + self.opts.wait
        while not self.tb.ping(src, dst):
            if time.monotonic() > deadline:
                raise MeasurementFailed(
                    f"{src} got no answer from {dst} within {self.opts.wait:.0f} s")
            time.sleep(POLL)
        say(f"ping x{self.opts.ping_count}")
        ping = self._ping(src, dst, self.opts.ping_count)
        say(f"iperf3 TCP {self.opts.duration} s")
        before = cpu_seconds(self.pids)
        tcp = self._iperf3(src, sink, dst)
        used = cpu_seconds(self.pids) - before
        return Measurement("ok", tcp=tcp, ping=ping, cpu_s_per_gb=cpu_per_gb(used, tcp.bytes))

    def _ping(self, src: str, dst: str, n: int) -> PingResult:
        argv = ["ping", "-n", "-c", str(n), "-i", str(PING_INTERVAL), "-W", "1", dst]
        proc = self.tb.run(src, argv, check=False, timeout=n * PING_INTERVAL + 30)
        return parse_ping(proc.stdout + proc.stderr)

    def _iperf3(self, src: str, sink: str, dst: str) -> TcpResult:
        port = str(IPERF_PORT)
        server = self.tb.popen(sink, ["iperf3", "-s", "-1", "-B", dst, "-p", port],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while not self.tb.run(sink, ["ss", "-Hltn", f"sport = :{port}"],
                                  check=False).stdout.strip():
                if server.poll() is not None or time.monotonic() > deadline:
                    out = server.stdout.read().decode(errors="replace") if server.stdout else ""
                    raise MeasurementFailed(
                        f"iperf3 server not listening: {first_line(out) or 'no output'}")
                time.sleep(0.05)
            client = ["iperf3", "-c", dst, "-p", port,
                      "-t", str(self.opts.duration), "-P", "1", "-J", "--connect-timeout", "5000"]
            proc = self.tb.run(src, client, check=False, timeout=self.opts.duration + 60)
            return parse_iperf3(proc.stdout)
        finally:
            end_process(server)
            if server.stdout is not None:
                server.stdout.close()

    def _start(self, host: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        out = open(log, "wb")  # noqa: SIM115 (the daemon writes it until it is stopped)
        try:
            proc = self.tb.popen(host, argv, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        self.pids.append(proc.pid)
        return proc

    def _check_running(self, procs: Sequence[tuple[subprocess.Popen[bytes], Path]]) -> None:
        for proc, log in procs:
            if proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise MeasurementFailed(
                    f"{log.stem}'s tunnel daemon exited: {_last_line(text) or 'no output'}")

    def _address(self, host: str, dev: str) -> None:
        i = HOSTS.index(host)
        self.tb.run(host, ["ip", "addr", "add", f"{TUNNEL_ADDRESSES[i]}/{TUNNEL_PREFIX}",
                           "dev", dev])
        self.tb.run(host, ["ip", "link", "set", dev, "up"])

    def _containers(self) -> None:
        """A container per host behind a veth, its host forwarding between it and the
        tunnel (whose own configuration carries the other container's subnet)."""
        tb = self.tb
        for i, host in enumerate(HOSTS):
            ns = tb.add_container(PEER_CONTAINERS[i])
            gateway = CONTAINER_SUBNETS[i].replace(".0/", ".1/")
            tb.run(host, ["ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", "eth0",
                          "netns", ns])
            tb.run(host, ["ip", "addr", "add", gateway, "dev", HOST_VETH])
            tb.run(host, ["ip", "link", "set", HOST_VETH, "up"])
            tb.run(host, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            c = PEER_CONTAINERS[i]
            tb.run(c, ["ip", "addr", "add", f"{CONTAINER_ADDRESSES[i]}/24", "dev", "eth0"])
            tb.run(c, ["ip", "link", "set", "eth0", "up"])
            tb.run(c, ["ip", "route", "add", "default", "via", gateway.split("/")[0]])
        for i, host in enumerate(HOSTS):
            dev, other = self.dev, 1 - i
            if dev is not None:  # (nebula routes its unsafe_routes itself)
                tb.run(host, ["ip", "route", "replace", CONTAINER_SUBNETS[other], "via",
                              TUNNEL_ADDRESSES[other], "dev", dev(i)])

    def _clean_up(self) -> None:
        self.pids = []
        self.dev = None
        for c in PEER_CONTAINERS:
            if c in self.tb.containers:
                with contextlib.suppress(TestbedError, OSError):
                    self.tb.remove_container(c)
        for host in HOSTS:
            with contextlib.suppress(TestbedError):
                self.tb.run(host, ["sysctl", "-qw", "net.ipv4.ip_forward=0"], check=False)
            with contextlib.suppress(TestbedError):
                self.tb.kill_processes(host)
            keep = {"lo", *self.tb.interfaces(host)}
            listing = self.tb.run(host, ["ip", "-o", "link", "show"], check=False).stdout
            for line in listing.splitlines():
                name = line.split(":", 2)[1].strip().split("@", 1)[0]
                if name not in keep:
                    self.tb.run(host, ["ip", "link", "del", name], check=False)

    def _dir(self, name: str) -> Path:
        d = self.tb.tmpdir / "peers" / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    # -- the peers --

    @contextlib.contextmanager
    def _wireguard(self) -> Iterator[None]:
        tb, d = self.tb, self._dir("wireguard-go")
        keys = []
        for host in HOSTS:
            private = tb.run(host, ["wg", "genkey"]).stdout.strip()
            public = tb.run(host, ["wg", "pubkey"], input=private + "\n").stdout.strip()
            (d / f"{host}.key").write_text(private + "\n")
            (d / f"{host}.key").chmod(0o600)
            keys.append(public)
        procs = []
        for i, host in enumerate(HOSTS):
            dev = f"wgbench{i + 1}"  # the UAPI socket in /var/run/wireguard is named by it
            log = d / f"{host}.log"
            procs.append((self._start(host, ["wireguard-go", "-f", dev], log), log))
        deadline = time.monotonic() + 10
        for i, host in enumerate(HOSTS):
            dev = f"wgbench{i + 1}"
            while "state" not in tb.run(host, ["ip", "-o", "link", "show", dev],
                                        check=False).stdout:
                self._check_running(procs)
                if time.monotonic() > deadline:
                    raise MeasurementFailed(f"wireguard-go made no {dev} in {host}")
                time.sleep(0.1)
        for i, host in enumerate(HOSTS):
            other = 1 - i
            dev = f"wgbench{i + 1}"
            tb.run(host, ["wg", "set", dev, "listen-port", str(WG_PORT),
                          "private-key", str(d / f"{host}.key"),
                          "peer", keys[other],
                          "allowed-ips", f"{TUNNEL_ADDRESSES[other]}/32,{CONTAINER_SUBNETS[other]}",
                          "endpoint", f"{tb.address(HOSTS[other])}:{WG_PORT}"])
            self._address(host, dev)
        self._check_running(procs)
        self.dev = lambda i: f"wgbench{i + 1}"
        yield

    @contextlib.contextmanager
    def _nebula(self) -> Iterator[None]:
        tb, d = self.tb, self._dir("nebula")
        tb.run(HOSTS[0], ["nebula-cert", "ca", "-name", "weft bench",
                          "-out-crt", str(d / "ca.crt"), "-out-key", str(d / "ca.key")])
        procs = []
        for i, host in enumerate(HOSTS):
            tb.run(host, ["nebula-cert", "sign", "-name", host,
                          "-ip", f"{TUNNEL_ADDRESSES[i]}/{TUNNEL_PREFIX}",
                          "-subnets", CONTAINER_SUBNETS[i],
                          "-ca-crt", str(d / "ca.crt"), "-ca-key", str(d / "ca.key"),
                          "-out-crt", str(d / f"{host}.crt"), "-out-key", str(d / f"{host}.key")])
            other = 1 - i
            any_rule = [{"port": "any", "proto": "any", "host": "any"}]
            config = {  # JSON is YAML
                "pki": {"ca": str(d / "ca.crt"), "cert": str(d / f"{host}.crt"),
                        "key": str(d / f"{host}.key")},
                "static_host_map": {TUNNEL_ADDRESSES[other]:
                                    [f"{tb.address(HOSTS[other])}:{NEBULA_PORT}"]},
                "lighthouse": {"am_lighthouse": False, "interval": 60, "hosts": []},
                "listen": {"host": tb.address(host), "port": NEBULA_PORT},
                "punchy": {"punch": False},
                "tun": {"disabled": False, "dev": f"nebbench{i + 1}", "mtu": 1300,
                        "unsafe_routes": [{"route": CONTAINER_SUBNETS[other],
                                           "via": TUNNEL_ADDRESSES[other]}]},
                "logging": {"level": "warning", "format": "text"},
                "firewall": {"outbound": any_rule, "inbound": any_rule},
            }
            path = d / f"{host}.yml"
            path.write_text(json.dumps(config, indent=1))
            log = d / f"{host}.log"
            procs.append((self._start(host, ["nebula", "-config", str(path)], log), log))
        deadline = time.monotonic() + 10
        for i, host in enumerate(HOSTS):
            dev = f"nebbench{i + 1}"
            while TUNNEL_ADDRESSES[i] not in tb.run(host, ["ip", "-o", "addr", "show", "dev", dev],
                                                    check=False).stdout:
                self._check_running(procs)
                if time.monotonic() > deadline:
                    raise MeasurementFailed(f"nebula made no {dev} in {host}")
                time.sleep(0.1)
        yield

    @contextlib.contextmanager
    def _tinc(self) -> Iterator[None]:
        tb, d = self.tb, self._dir("tinc")
        publics = {}
        for i, host in enumerate(HOSTS):
            conf = d / host
            (conf / "hosts").mkdir(parents=True)
            lines = [f"Name = {host}", "Mode = switch", f"Interface = tincbench{i + 1}",
                     "AddressFamily = ipv4", f"BindToAddress = {tb.address(host)}",
                     f"Port = {TINC_PORT}"]
            if i == 0:
                lines.append(f"ConnectTo = {HOSTS[1]}")
            (conf / "tinc.conf").write_text("\n".join(lines) + "\n")
            (conf / "hosts" / host).write_text(
                f"Address = {tb.address(host)}\nPort = {TINC_PORT}\n"
                "Cipher = aes-256-cbc\nDigest = sha256\n")
            # tincd -K asks where to put the keys; the defaults (Enter) are in the config dir
            tb.run(host, ["tincd", "-c", str(conf), "-K2048"], input="\n\n")
            publics[host] = (conf / "hosts" / host).read_text()
        procs = []
        for i, host in enumerate(HOSTS):
            other = HOSTS[1 - i]
            (d / host / "hosts" / other).write_text(publics[other])
            log = d / f"{host}.log"
            procs.append((self._start(host, ["tincd", "-c", str(d / host), "-D",
                                             "--pidfile", str(d / f"{host}.pid"),
                                             "--logfile", str(log)], log), log))
        deadline = time.monotonic() + 10
        for i, host in enumerate(HOSTS):
            dev = f"tincbench{i + 1}"
            while "state" not in tb.run(host, ["ip", "-o", "link", "show", dev],
                                        check=False).stdout:
                self._check_running(procs)
                if time.monotonic() > deadline:
                    raise MeasurementFailed(f"tincd made no {dev} in {host}")
                time.sleep(0.1)
            self._address(host, dev)
        self.dev = lambda i: f"tincbench{i + 1}"
        yield


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
