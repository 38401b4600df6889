"""Churn soak: five routers under a seeded random schedule of everything users do to them.

    h1  h2  h3  h4  h5   five hosts on one LAN; h2..h5 launched with h1 as their target,
    └───┴───┴───┴───┘    discovery completes the mesh; IPAM by consensus=5, weftDNS, encrypted

For a duration (50 s here; ten minutes with ``WEFT_SOAK=1``; ``WEFT_CHURN_SECONDS`` and
``WEFT_CHURN_SEED`` override) one operation follows another, drawn from a seeded rng:

    attach      a new namespace ``cN`` on a random live router, ``--name cN``, no address
    detach      ``weft detach`` of a live container, then its namespace goes
    vanish      a container's namespace just disappears (its router may be down): IPAM
                keeps the address for the grace period (WEFT_IPAM_GRACE, 3 s here)
    connect     ``weft connect`` from one host to another
    forget      ``weft forget`` of such a target (h2..h5 never forget h1: the hub)
    stop        ``weft stop`` of h3, h4 or h5; relaunched (targets persisted) 1 to 6 ops later
    kill9       ``kill -9`` of h3, h4 or h5; relaunched the same way

h1 and h2 are never restarted: they live through the whole run, so their memory and
descriptor figures are the ones that show a leak. Invariants:

    after every op      an attach never hands out an address a live container has, nor one
                        of a vanished container before its grace period can have ended;
                        targets in ``weft report`` are exactly those connected and not
                        forgotten (and survive restarts); a relaunch keeps the peer name
    every 10 ops        across every running router, no address twice in ``weft ps`` plus
                        the addresses waiting out their grace, no MAC twice; on every router
                        the space it owns = its allocated + its free
    checkpoints         (every third of the run; every minute in the soak) every router is
                        relaunched, then, once settled (bounded wait, timed): a full mesh;
                        IPAM ready, every peer reachable, the same ring everywhere covering
                        the whole range, nothing releasing, no problem; per router owned =
                        allocated + free, its ``ps`` = its live containers, allocated = that
                        count; in every router's ring the space in use (owned - free) adds
                        up to every live container; every host's DNS holds exactly the names
                        of live containers; then a sample of containers ping each other,
                        resolve each other with ``dig`` inside them, and removed names do not
                        resolve; RSS and open fds of every router are recorded
    at the end          RSS and fds of every router run compared between its first checkpoint
                        after warm-up (a third of the run, at most 5 min) and its last (fds
                        net of the 2 sockets per DNS listener, which come and go with
                        containers), within a stated slack; no router logged a traceback

Figures printed (run with ``-s``): RSS and fds per router at start / baseline / end, ops by
kind, allocations, convergence time after the last op of each phase.

What the churn found has a test of its own below: container MACs derived from namespace
inode numbers, which repeat.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import (
    attach,
    established,
    kill9,
    launch,
    logs_on_failure,
    no_tracebacks,
    process_usage,
    report,
    router_pid,
    wait_for,
)

HOSTS = ("h1", "h2", "h3", "h4", "h5")
HUB = "h1"
STABLE = ("h1", "h2")            # never restarted
RESTARTABLE = ("h3", "h4", "h5")
MAX_DOWN = 2                     # at most this many routers down at once
RANGE = ipaddress.IPv4Network("10.32.0.0/12")
DOMAIN = "weft.local."
GRACE = 3.0                      # WEFT_IPAM_GRACE: seconds a vanished container keeps its address
PORT = 6783

SOAK = os.environ.get("WEFT_SOAK") == "1"
CHURN_SECONDS = float(os.environ.get("WEFT_CHURN_SECONDS") or (600 if SOAK else 50))
SEED = int(os.environ.get("WEFT_CHURN_SEED") or 8)
CHECK_EVERY = 60.0 if CHURN_SECONDS >= 300 else CHURN_SECONDS / 3
SETTLE_TIMEOUT = 90.0
# A router warms up for a while: allocator arenas and caches fill, DNS tombstones (kept
# 30 min) pile up. Measured in the 10 min soak (~170 ops/min): RSS 58 -> 71 MiB over the
# first 4 minutes, then +4 to +6 MiB over the last 6, while live Python blocks stay within
# 1.5% and glibc's in-use bytes flat: what still grows is free space the allocators keep
# (fragmentation). The baseline is a run's first checkpoint once it has churned WARMUP
# seconds; growth from there to the end may be at most RSS_SLACK_KIB + RSS_SLACK_SHARE of
# the baseline (~9.5 MiB): over the soak's ~1100 ops after warm-up, a leak of more than
# ~4 KiB per op shows.
WARMUP = min(CHURN_SECONDS / 3, 300.0)
RSS_SLACK_KIB = 6 * 1024
RSS_SLACK_SHARE = 0.05
FD_SLACK = 3                     # a connection attempt in flight at the moment of sampling


# --- the model: what the test did, hence what the routers must say --------------------------


@dataclass
class Container:
    name: str
    host: str
    ns: str
    iface: ipaddress.IPv4Interface
    state: str = "live"          # live | detached | vanished
    gone_at: float = 0.0         # vanished: the earliest moment its grace period can have begun
    unseen: bool = False         # vanished while its router was down (its grace starts at launch)

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{DOMAIN}"


@dataclass
class Sample:
    label: str
    at: float                    # seconds of churn when taken
    rss_kib: int
    fds: int
    listeners: int
    fd_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def net_fds(self) -> int:
        """Descriptors net of the DNS listeners (a UDP and a TCP socket for the host and for
        each attached container), which come and go with containers."""
        return self.fds - 2 * self.listeners


@dataclass
class Run:
    """One process of a router, from launch to stop, kill or the end of the test."""
    host: str
    pid: int
    born: float                  # seconds of churn when launched
    how_ended: str = "running"
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Router:
    host: str
    name: str = ""
    up: bool = False
    targets: set[str] = field(default_factory=set)
    relaunch_after: int = 0      # while down: relaunch once this many more ops are done
    runs: list[Run] = field(default_factory=list)


class Unsettled(Exception):
    """Not converged yet; the message says what differs."""


class Churn:
    def __init__(self, tb: Testbed, seed: int) -> None:
        self.tb = tb
        self.rng = random.Random(seed)
        self.routers = {h: Router(h) for h in HOSTS}
        self.containers: dict[str, Container] = {}
        self.counter = 0
        self.ops: collections.Counter[str] = collections.Counter()
        self.n_ops = 0
        self.allocated: list[ipaddress.IPv4Address] = []   # every address attach handed out
        self.convergence: list[tuple[str, float]] = []
        self.churned = 0.0           # seconds spent in ops (the clock stops at checkpoints)
        self.last_op_at = time.monotonic()

    # -- helpers --

    def target(self, host: str) -> str:
        return f"{self.tb.address(host)}:{PORT}"

    def up(self) -> list[str]:
        return [h for h in HOSTS if self.routers[h].up]

    def live(self, host: str | None = None) -> list[Container]:
        return [c for c in self.containers.values()
                if c.state == "live" and (host is None or c.host == host)]

    def log(self, text: str) -> None:
        print(f"[{self.n_ops:5d}] {text}")

    # -- routers --

    def launch(self, host: str, *peers: str) -> None:
        r = self.routers[host]
        started = time.monotonic()   # the router may begin a grace period before we return
        name = launch(self.tb, host, *peers, extra=("--ipalloc-init", f"consensus={len(HOSTS)}"),
                      env={"WEFT_IPAM_GRACE": str(GRACE)})
        if r.name:
            assert name == r.name, f"{host} came back as {name}, not {r.name}"
        r.name, r.up = name, True
        r.targets |= {p if ":" in p else f"{p}:{PORT}" for p in peers}
        r.runs.append(Run(host, router_pid(self.tb, host), self.churned))
        for c in self.containers.values():   # gone while the router was away: grace starts now
            if c.host == host and c.state == "vanished" and c.unseen:
                c.gone_at, c.unseen = started, False
        self.check_targets(host)

    def check_targets(self, host: str) -> None:
        got = set(report(self.tb, host)["router"]["targets"])
        want = self.routers[host].targets
        assert got == want, f"{host}'s targets are {sorted(got)}, expected {sorted(want)}"

    def start_all(self) -> None:
        self.launch(HUB)
        for h in HOSTS[1:]:
            self.launch(h, self.tb.address(HUB))

    def relaunch_due(self, force: bool = False) -> None:
        for h in RESTARTABLE:
            r = self.routers[h]
            if not r.up:
                r.relaunch_after -= 1
                if force or r.relaunch_after <= 0:
                    self.launch(h)
                    self.log(f"relaunch {h} (pid {r.runs[-1].pid})")

    # -- operations --

    def op_attach(self, host: str | None = None) -> None:
        host = host or self.rng.choice(self.up())
        self.counter += 1
        name = f"c{self.counter}"
        iface = attach(self.tb, host, name, "--name", name)
        assert iface.network == RANGE, f"{name} got {iface}, outside {RANGE}"
        now = time.monotonic()
        for c in self.containers.values():
            if c.iface.ip != iface.ip:
                continue
            assert c.state != "live", (
                f"{iface.ip} handed out twice: to {name} on {host}, and to live {c.name} on {c.host}")
            assert c.state != "vanished" or now >= c.gone_at + GRACE, (
                f"{iface.ip} of {c.name} (vanished {now - c.gone_at:.1f} s ago) handed to {name} "
                f"on {host} before its {GRACE} s grace period could end")
        self.containers[name] = Container(name, host, self.tb.ns(name), iface)
        self.allocated.append(iface.ip)
        self.log(f"attach {name} {iface} on {host}")

    def op_detach(self) -> None:
        c = self.rng.choice([c for c in self.live() if self.routers[c.host].up])
        self.tb.weft(c.host, "detach", c.ns)
        self.tb.remove_container(c.name)
        c.state = "detached"
        self.log(f"detach {c.name} {c.iface.ip} on {c.host}")

    def op_vanish(self) -> None:
        c = self.rng.choice(self.live())
        c.state, c.gone_at = "vanished", time.monotonic()
        c.unseen = not self.routers[c.host].up
        self.tb.remove_container(c.name)
        up = "" if self.routers[c.host].up else " (its router is down)"
        self.log(f"vanish {c.name} {c.iface.ip} on {c.host}{up}")

    def op_connect(self) -> None:
        host = self.rng.choice(self.up())
        peer = self.rng.choice([h for h in HOSTS if h != host])
        self.tb.weft(host, "connect", self.tb.address(peer))
        self.routers[host].targets.add(self.target(peer))
        self.check_targets(host)
        self.log(f"connect {host} -> {peer}")

    def forgettable(self, host: str) -> list[str]:
        hub = set() if host == HUB else {self.target(HUB)}
        return sorted(self.routers[host].targets - hub)

    def op_forget(self) -> None:
        host = self.rng.choice([h for h in self.up() if self.forgettable(h)])
        addr = self.rng.choice(self.forgettable(host))
        self.tb.weft(host, "forget", addr.rsplit(":", 1)[0])
        self.routers[host].targets.discard(addr)
        self.check_targets(host)
        self.log(f"forget {host} -> {addr}")

    def stoppable(self) -> list[str]:
        if len(self.up()) <= len(HOSTS) - MAX_DOWN:
            return []
        return [h for h in RESTARTABLE if self.routers[h].up]

    def _down(self, host: str, how: str) -> None:
        r = self.routers[host]
        r.up = False
        r.relaunch_after = self.rng.randint(1, 6)
        r.runs[-1].how_ended = how

    def op_stop(self) -> None:
        host = self.rng.choice(self.stoppable())
        self.tb.weft(host, "stop")
        self._down(host, "stop")
        self.log(f"stop {host}")

    def op_kill9(self) -> None:
        host = self.rng.choice(self.stoppable())
        pid = kill9(self.tb, host)
        self._down(host, "kill -9")
        self.log(f"kill -9 {host} (pid {pid})")

    def step(self) -> None:
        n_live = len(self.live())
        detachable = any(self.routers[c.host].up for c in self.live())
        choices: list[tuple[str, Callable[[], None], int]] = [
            ("attach", self.op_attach, 30 if n_live < 25 else 4),
            ("detach", self.op_detach, (15 if n_live > 5 else 2) if detachable else 0),
            ("vanish", self.op_vanish, (8 if n_live > 5 else 1) if n_live else 0),
            ("connect", self.op_connect, 6),
            ("forget", self.op_forget, 6 if any(self.forgettable(h) for h in self.up()) else 0),
            ("stop", self.op_stop, 3 if self.stoppable() else 0),
            ("kill9", self.op_kill9, 2 if self.stoppable() else 0),
        ]
        kinds = [c for c in choices if c[2] > 0]
        kind, run, _ = self.rng.choices(kinds, weights=[c[2] for c in kinds])[0]
        run()
        self.ops[kind] += 1
        self.n_ops += 1
        self.last_op_at = time.monotonic()
        self.relaunch_due()
        if self.n_ops % 10 == 0:
            self.check_unique_and_accounted()

    # -- invariants that hold at any moment --

    def check_unique_and_accounted(self) -> None:
        """No address twice across the running routers (attached, or waiting out its grace
        period), no MAC twice; every router's own space = allocated + free."""
        # a container may be noticed gone between its router's `ps` and `report`: it is
        # then in both, which is one holder, not two
        holders: dict[ipaddress.IPv4Address, set[str]] = {}
        macs: dict[str, set[str]] = {}
        for h in self.up():
            for line in self.tb.weft(h, "ps").stdout.splitlines():
                container, mac, *cidrs = line.split()
                macs.setdefault(mac, set()).add(f"{container}@{h}")
                for cidr in cidrs:
                    holders.setdefault(ipaddress.IPv4Interface(cidr).ip, set()).add(f"{container}@{h}")
            ipam = report(self.tb, h)["ipam"]
            for rel in ipam["releasing"]:
                for cidr in rel["addresses"]:
                    holders.setdefault(ipaddress.IPv4Interface(cidr).ip, set()).add(
                        f"{rel['container']}@{h}")
            mine = [p for p in ipam["peers"] if p["nickname"] == h]
            if mine and ipam["status"] == "ready":
                p = mine[0]
                assert p["addresses"] == ipam["allocated"] + p["free"], (
                    f"{h} owns {p['addresses']} addresses but has {ipam['allocated']} allocated "
                    f"and {p['free']} free: {json.dumps(ipam)}")
        twice = {str(ip): sorted(who) for ip, who in holders.items() if len(who) > 1}
        assert not twice, f"addresses held twice: {twice}"
        twice = {mac: sorted(who) for mac, who in macs.items() if len(who) > 1}
        assert not twice, f"MACs used twice: {twice}"

    # -- checkpoints: everything back up, wait for convergence, check all --

    def settled(self) -> dict[str, dict[str, Any]]:
        """The reports of every router once the whole state is converged; raises Unsettled
        naming the first difference."""
        reps = {h: report(self.tb, h) for h in HOSTS}
        owners: dict[str, dict[str, int]] = {}
        for h, rep in reps.items():
            others = set(HOSTS) - {h}
            if established(rep) != others:
                raise Unsettled(f"{h} connected to {sorted(established(rep))}")
            ipam = rep["ipam"]
            if ipam["status"] != "ready" or not all(p["reachable"] for p in ipam["peers"]):
                raise Unsettled(f"{h}'s IPAM: {ipam['status']}, peers {ipam['peers']}")
            if ipam["releasing"] or ipam["problems"] or ipam["pending"]:
                raise Unsettled(f"{h}'s IPAM releasing {ipam['releasing']}, problems "
                                f"{ipam['problems']}, pending {ipam['pending']}")
            owners[h] = {p["nickname"]: p["addresses"] for p in ipam["peers"]}
            if sum(owners[h].values()) != RANGE.num_addresses:
                raise Unsettled(f"{h}'s ring covers {sum(owners[h].values())} addresses")
            mine = next(p for p in ipam["peers"] if p["nickname"] == h)
            live = self.live(h)
            if ipam["allocated"] != len(live) or mine["addresses"] != ipam["allocated"] + mine["free"]:
                raise Unsettled(f"{h}: {ipam['allocated']} allocated, {len(live)} live containers, "
                                f"owns {mine['addresses']}, {mine['free']} free")
            in_use = sum(p["addresses"] - p["free"] for p in ipam["peers"])
            if in_use != len(self.live()):
                raise Unsettled(f"{h}'s ring has {in_use} addresses in use (owned - free), "
                                f"{len(self.live())} containers live")
            want = {(c.fqdn, str(c.iface.ip)) for c in self.live()}
            got = {(e["hostname"], e["address"]) for e in rep["dns"]["entries"]}
            if got != want:
                raise Unsettled(f"{h}'s DNS: extra {sorted(got - want)}, missing {sorted(want - got)}")
        if len({json.dumps(o, sort_keys=True) for o in owners.values()}) != 1:
            raise Unsettled(f"the rings differ: {owners}")
        for h in HOSTS:
            ps = {}
            for line in self.tb.weft(h, "ps").stdout.splitlines():
                container, _mac, *cidrs = line.split()
                ps[container] = cidrs
            want_ps = {c.ns: [str(c.iface)] for c in self.live(h)}
            if ps != want_ps:
                raise Unsettled(f"{h}'s ps: {ps}, expected {want_ps}")
        return reps

    def checkpoint(self, label: str) -> None:
        self.relaunch_due(force=True)
        since = self.last_op_at
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                reps = self.settled()
                break
            except Unsettled as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{label}: not settled {SETTLE_TIMEOUT:.0f} s after the "
                                         f"last op: {exc}") from None
            time.sleep(0.3)
        took = time.monotonic() - since
        self.convergence.append((label, took))
        self.check_unique_and_accounted()
        self.check_reachability_and_names()
        runs = {h: self.routers[h].runs[-1] for h in HOSTS}
        for h, run in runs.items():
            assert router_pid(self.tb, h) == run.pid, f"{h}'s router changed pid by itself"
        rss = {h: process_usage(run.pid)[0] for h, run in runs.items()}
        # the fewest of a few looks: a netlink operation in flight holds 4 descriptors (its
        # socket, an epoll and a socket pair) for a moment; a leak stays
        kinds = {h: fd_kinds(run.pid) for h, run in runs.items()}
        for _ in range(4):
            time.sleep(0.2)
            for h, run in runs.items():
                again = fd_kinds(run.pid)
                if sum(again.values()) < sum(kinds[h].values()):
                    kinds[h] = again
        for h, run in runs.items():
            run.samples.append(Sample(label, self.churned, rss[h], sum(kinds[h].values()),
                                      reps[h]["dns"]["listeners"], kinds[h]))
        live = self.live()
        print(f"churn checkpoint {label}: settled {took:.1f} s after the last op; {self.n_ops} ops, "
              f"{len(live)} live containers, "
              + ", ".join(f"{h} {r.runs[-1].samples[-1].rss_kib // 1024} MiB "
                          f"{r.runs[-1].samples[-1].fds} fds" for h, r in self.routers.items()))

    def check_reachability_and_names(self) -> None:
        live = self.live()
        if len(live) < 2:
            return
        removed = [c for c in self.containers.values() if c.state != "live"]
        for _ in range(4):
            a, b = self.rng.sample(live, 2)
            wait_for(f"{a.name} ({a.host}) pinging {b.name} {b.iface.ip} ({b.host})",
                     functools.partial(self.tb.ping, a.name, str(b.iface.ip), timeout=1), timeout=30)
            got = self.tb.run(a.name, ["dig", "+short", "+tries=2", "+time=2", b.fqdn],
                              check=False).stdout.split()
            assert got == [str(b.iface.ip)], f"dig {b.fqdn} inside {a.name}: {got}"
        for h in HOSTS:
            c = self.rng.choice(live)
            assert self.tb.weft(h, "dns-lookup", c.fqdn).stdout.split() == [str(c.iface.ip)]
            if removed:
                gone = self.rng.choice(removed)
                proc = self.tb.weft(h, "dns-lookup", gone.fqdn, check=False)
                assert proc.returncode != 0 or not proc.stdout.split(), (
                    f"{h} still resolves removed {gone.fqdn} ({gone.state}): {proc.stdout}")
        if removed:
            gone, a = self.rng.choice(removed), self.rng.choice(live)
            got = self.tb.run(a.name, ["dig", "+short", "+tries=2", "+time=2", gone.fqdn],
                              check=False).stdout.split()
            assert got == [], f"dig of removed {gone.fqdn} inside {a.name}: {got}"


# --- figures -------------------------------------------------------------------------------


TCP_STATES = {"01": "established", "02": "syn-sent", "03": "syn-recv", "04": "fin-wait1",
              "05": "fin-wait2", "06": "time-wait", "07": "close", "08": "close-wait",
              "09": "last-ack", "0A": "listen", "0B": "closing"}


def fd_kinds(pid: int) -> dict[str, int]:
    """What a process's descriptors are: ``tcp:PORT:STATE`` / ``udp:PORT`` for sockets of
    its own namespace (local port), ``socket`` for others (netlink, sockets it holds in
    container namespaces), else the link's kind (``pipe``, ``anon_inode``) or path."""
    sockets: dict[str, str] = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = open(f"/proc/{pid}/net/{proto}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            port = int(f[1].rsplit(":", 1)[1], 16)
            state = f":{TCP_STATES.get(f[3], f[3])}" if proto.startswith("tcp") else ""
            sockets[f[9]] = f"{proto.rstrip('6')}:{port}{state}"
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            kinds[sockets.get(target[8:-1], "socket")] += 1
        else:
            kinds[target.split(":[", 1)[0] if ":[" in target else target] += 1
    return dict(sorted(kinds.items()))


def growth_problems(run: Run, baseline: Sample, end: Sample) -> list[str]:
    slack = RSS_SLACK_KIB + int(RSS_SLACK_SHARE * baseline.rss_kib)
    problems = []
    if end.rss_kib - baseline.rss_kib > slack:
        problems.append(f"{run.host} (pid {run.pid}) RSS grew {baseline.rss_kib} -> {end.rss_kib} KiB "
                        f"({baseline.label} -> {end.label}), more than {slack} KiB")
    if end.net_fds - baseline.net_fds > FD_SLACK:
        problems.append(f"{run.host} (pid {run.pid}) fds grew {baseline.net_fds} -> {end.net_fds} "
                        f"(net of DNS listeners; {baseline.label} -> {end.label}): "
                        f"{baseline.fd_kinds} -> {end.fd_kinds}")
    return problems


def print_figures(ch: Churn, churned: float) -> list[str]:
    """Print the figures; return the resource problems found."""
    problems: list[str] = []
    print(f"churn figures: seed {SEED}, {churned:.0f} s of churn, {ch.n_ops} ops: "
          + ", ".join(f"{k} {n}" for k, n in sorted(ch.ops.items())))
    print(f"churn figures: {len(ch.allocated)} addresses handed out ({len(set(ch.allocated))} "
          f"distinct), {len(ch.live())} containers live at the end, "
          f"{sum(c.state == 'vanished' for c in ch.containers.values())} vanished, "
          f"{sum(c.state == 'detached' for c in ch.containers.values())} detached")
    print("churn figures: convergence after the last op: "
          + ", ".join(f"{label} {took:.1f} s" for label, took in ch.convergence))
    print("churn figures: router runs (RSS MiB / fds, net fds = fds - 2 x DNS listeners):")
    for h in HOSTS:
        for run in ch.routers[h].runs:
            series = " ".join(f"{s.label}={s.rss_kib / 1024:.1f}/{s.fds}({s.net_fds})"
                              for s in run.samples)
            print(f"  {h} pid {run.pid:>7} ({run.how_ended}): {series or 'no checkpoint'}")
            after_warmup = [s for s in run.samples if s.at - run.born >= WARMUP]
            if len(after_warmup) >= 2:
                base, end = after_warmup[0], after_warmup[-1]
                print(f"  {h} pid {run.pid:>7}: baseline {base.label} -> {end.label}: RSS "
                      f"{base.rss_kib / 1024:.1f} -> {end.rss_kib / 1024:.1f} MiB "
                      f"({(end.rss_kib - base.rss_kib) / 1024:+.1f}), net fds {base.net_fds} -> "
                      f"{end.net_fds}")
                problems += growth_problems(run, base, end)
    return problems


# --- the test ------------------------------------------------------------------------------


@pytest.mark.timeout(CHURN_SECONDS + 8 * SETTLE_TIMEOUT + 300)
def test_churn_soak(testbed_factory: Any) -> None:
    print(f"churn: seed {SEED} (WEFT_CHURN_SEED), {CHURN_SECONDS:.0f} s (WEFT_CHURN_SECONDS), "
          f"checkpoints every {CHECK_EVERY:.0f} s")
    tb: Testbed = testbed_factory(hosts=HOSTS)
    ch = Churn(tb, SEED)
    with logs_on_failure(tb, HOSTS):
        ch.start_all()
        for h in HOSTS:   # one container per host: consensus, and something to ping at once
            ch.op_attach(h)
        ch.checkpoint("start")

        # churn; the clock stops while a checkpoint settles and checks
        next_check, n_check = CHECK_EVERY, 0
        while ch.churned < CHURN_SECONDS:
            t = time.monotonic()
            ch.step()
            ch.churned += time.monotonic() - t
            if ch.churned >= next_check and ch.churned < CHURN_SECONDS:
                n_check += 1
                ch.checkpoint(f"t{n_check}")
                next_check += CHECK_EVERY
        ch.checkpoint("end")

        problems = print_figures(ch, ch.churned)
        no_tracebacks(tb, HOSTS)
        for h in STABLE:   # lived through it all, and were compared after warm-up
            runs = ch.routers[h].runs
            assert len(runs) == 1 and len([s for s in runs[0].samples if s.at >= WARMUP]) >= 2
        assert ch.ops["attach"] and ch.ops["detach"] and ch.ops["vanish"], ch.ops
        assert not problems, "\n".join(problems)



# --- found by the churn: a namespace inode number used again, on another host -------------


def test_a_namespace_identity_seen_again_on_another_host_gets_its_own_mac(
        testbed_factory: Any) -> None:
    """The kernel gives a new namespace the inode number of one freed a moment ago, and on
    separate machines every host numbers its namespaces alike. A container MAC derived from
    that number (as attach once did) repeats: in the churn, h1 still held the MAC of its
    detached container as local, so its containers could not reach h2's new container that
    got the same MAC, for the 300 s a local MAC is kept. Whether the kernel hands the same
    number out again here depends on what else runs on the machine; attaching the very
    same namespace to h2 after h1 makes the identity repeat every time."""
    tb: Testbed = testbed_factory(hosts=("h1", "h2"))
    init = ("--ipalloc-init", "consensus=2")
    launch(tb, "h1", extra=init)
    launch(tb, "h2", tb.address("h1"), extra=init)
    wait_for("h1-h2 established", lambda: established(report(tb, "h1")) == {"h2"})
    tb.weft("h1", "attach", tb.add_container("x"))

    def mac_of(host: str, container: str) -> str:
        ps = {line.split()[0]: line.split()[1] for line in tb.weft(host, "ps").stdout.splitlines()}
        return ps[tb.ns(container)]

    ns = tb.add_container("c")
    tb.weft("h1", "attach", ns)
    first = mac_of("h1", "c")
    tb.weft("h1", "detach", ns)
    ip = tb.weft("h2", "attach", ns).stdout.split()[0].split("/")[0]
    assert mac_of("h2", "c") != first, "the same namespace identity gave the same MAC again"
    wait_for(f"x (h1) pinging c {ip} (h2)", functools.partial(tb.ping, "x", ip, timeout=1),
             timeout=20)
