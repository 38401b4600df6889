"""Scale on real (simulated) hosts: many routers in namespace hosts of one machine.

16 routers, each in its own namespace host on one LAN, launched one after the other with
a sparse set of initial peers: host i is told only about host i // 2 (a binary tree),
and every third host also about host i - 1, so the routers must find the rest by
gossip (discovery)::

    h1 ── h2 ── h4 ── h8 ── h16          h3 is told about h1 and h2,
     │     └─── h5 ── h10 ...            h6 about h3 and h5, h9 about h4 and h8, ...
     └─── h3 ── h6 ── h12
           └─── h7 ── h14 ...

Every router seeds IPAM by consensus (``--ipalloc-init consensus=N``, N = 16: nobody
owns any space until all N agree, which the first attach triggers) and runs weftDNS; a
container ``cI`` with ``--name cI`` is attached on each host hI without an address. The
test shows:

* the topology converges: every router knows all N peers, each with N - 1 established
  connections (discovery makes a full mesh: the default --conn-limit is far above N),
  every connection on the overlay of the mode; the time from the return of the last
  ``weft launch`` is printed;
* every container got a unique address in the default range, and every router's IPAM
  is ready with the whole range owned and every peer reachable;
* c1 pings every other container, and a seeded sample of other pairs ping each other;
* every container resolves every container's name (glibc, through its router's DNS),
  and every router's DNS holds all N names;
* figures: per-router RSS and CPU seconds (``/proc/<pid>``), CPU while idle, the gossip
  the routers sent (``GET /metrics``) and the bytes on the control port (nftables
  counters in each host), printed as ``scale figure: ...`` lines (run with ``-s``).

Two modes: ``fastdp`` (no password: kernel VXLAN between hosts, what a user gets by
default) and ``sleeve`` (a password: encrypted, every frame crosses the Python routers).
Each takes about 50 s on a 2-core machine (16 launches one after the other are half of
it), so both run in CI.

The routers are observed through their HTTP API (``/report``, ``/metrics``, what the
CLI itself calls) by one small helper process per poll that enters each host's network
namespace in turn, instead of one CLI process per host per poll: 2 cores are shared by N
routers. Every wait is a bounded liveness check; no time is asserted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import PASSWORD, attach, established, launch, router_pid, wait_for

RANGE = ipaddress.IPv4Network("10.32.0.0/12")
COUNT_TABLE = "weftscale"
SAMPLE_PAIRS = 12           # ping pairs besides c1 -> everyone
# seconds of idle CPU measured after everything converged (WEFT_SCALE_IDLE: longer, to measure)
IDLE_WINDOW = float(os.environ.get("WEFT_SCALE_IDLE", "10"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

# One process reads /report and /metrics of every router: it enters each host's network
# namespace (setns) before opening its socket to that host's 127.0.0.1:6784.
PROBE = textwrap.dedent("""
    import ctypes, http.client, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNET = 0x40000000
    paths = sys.argv[1].split(",")
    out = {}
    for ns in sys.argv[2:]:
        fd = os.open("/var/run/netns/" + ns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns " + ns)
        finally:
            os.close(fd)
        got = {}
        for path in paths:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", 6784, timeout=30)
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read().decode()
                conn.close()
                got[path] = body if resp.status == 200 else None
            except (OSError, http.client.HTTPException) as exc:
                got[path] = None
                got["error"] = f"{path}: {exc!r}"
        out[ns] = got
    print(json.dumps(out))
""")


def tree_peers(i: int) -> list[int]:
    """The hosts (1-based) host ``i`` is told about at launch: one or two earlier ones."""
    if i == 1:
        return []
    peers = [i // 2]
    if i % 3 == 0 and i - 1 != i // 2:
        peers.append(i - 1)
    return peers


@dataclass
class Scale:
    tb: Testbed
    hosts: tuple[str, ...]
    password: str | None

    def probe(self, *paths: str) -> dict[str, dict[str, Any]]:
        """host -> {path: body or None} for every router, read in one helper process."""
        argv = [sys.executable, "-c", PROBE, ",".join(paths), *(self.tb.ns(h) for h in self.hosts)]
        raw = json.loads(self.tb.run(self.hosts[0], argv, timeout=120).stdout)
        return {h: raw[self.tb.ns(h)] for h in self.hosts}

    def reports(self) -> dict[str, dict[str, Any] | None]:
        return {h: (json.loads(got["/report"]) if got.get("/report") else None)
                for h, got in self.probe("/report").items()}


def converged(reports: dict[str, dict[str, Any] | None], hosts: tuple[str, ...]) -> str | None:
    """None when every router knows every peer, each with N - 1 established connections
    (the full mesh discovery makes), else what is still missing (for the timeout message)."""
    everyone = set(hosts)
    for host, rep in reports.items():
        if rep is None:
            return f"{host}: no report"
        router = rep["router"]
        mine = established(rep)
        if mine != everyone - {host}:
            return f"{host}: established to {len(mine)}, missing {sorted(everyone - {host} - mine)}"
        peers = {p["nickname"]: p for p in router["peers"]}
        if set(peers) != everyone:
            return f"{host}: knows {len(peers)} peers, missing {sorted(everyone - set(peers))}"
        for name, p in peers.items():
            links = {c["nickname"] for c in p["connections"] if c["established"]}
            if links != everyone - {name}:
                return f"{host}: sees {name} with {len(links)} established connections"
    return None


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` in Prometheus text, 0 when absent."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def proc_figures(pid: int) -> tuple[float, float, float]:
    """(RSS MiB, peak RSS MiB, CPU seconds user + system) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)}
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime, stime (fields 14, 15)
    return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024, cpu


def count_control(tb: Testbed, host: str) -> None:
    """nftables counters on ``host``'s underlay: control TCP and UDP (6783), VXLAN (6784)."""
    dev = "{ " + ", ".join(f'"{i}"' for i in tb.interfaces(host)) + " }"
    tb.run(host, ["nft", "-f", "-"], input=(
        f"table inet {COUNT_TABLE} {{\n"
        "  chain output { type filter hook output priority -10;\n"
        f'    oifname {dev} tcp sport 6783 counter comment "tcp"\n'
        f'    oifname {dev} tcp dport 6783 counter comment "tcp"\n'
        f'    oifname {dev} udp dport 6783 counter comment "udp"\n'
        f'    oifname {dev} udp dport 6784 counter comment "vxlan"\n'
        "  }\n"
        "}\n"))


def control_bytes(tb: Testbed, host: str) -> dict[str, int]:
    listing = json.loads(tb.run(host, ["nft", "-j", "list", "table", "inet", COUNT_TABLE]).stdout)
    out: dict[str, int] = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule:
            counted = next(e["counter"]["bytes"] for e in rule["expr"] if "counter" in e)
            out[rule["comment"]] = out.get(rule["comment"], 0) + counted
    return out


def figure(line: str) -> None:
    print(f"scale figure: {line}")


def timed(what: str, check: Callable[[], bool], *, timeout: float, since: float | None = None,
          why: Callable[[], object] = str, show: bool = True) -> float:
    """Wait (bounded) for ``check``; return (and print, with ``show``) the seconds since
    ``since`` (or now). On a timeout the error ends with ``why()``: what was still missing."""
    start = time.monotonic() if since is None else since
    try:
        wait_for(what, check, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {why()}") from None
    took = time.monotonic() - start
    if show:
        figure(f"{what}: {took:.1f} s")
    return took


MODES = {
    "fastdp": None,          # no password: the kernel's VXLAN between hosts
    "sleeve": PASSWORD,      # encrypted: every frame through the routers
}
# WEFT_SCALE_N=8,16 measures other sizes (the idle cost per router against the mesh size)
SIZES = [int(n) for n in os.environ.get("WEFT_SCALE_N", "16").split(",")]
CASES = [pytest.param(n, mode, id=f"{n}-{mode}") for n in SIZES for mode in MODES]


@pytest.mark.parametrize(("n", "mode"), CASES)
def test_routers_converge_allocate_reach_and_resolve(testbed_factory: Any, n: int,
                                                     mode: str) -> None:
    hosts = tuple(f"h{i}" for i in range(1, n + 1))
    tb: Testbed = testbed_factory(hosts=hosts)
    m = Scale(tb, hosts, MODES[mode])
    nft = shutil.which("nft") is not None
    for i, host in enumerate(hosts):
        # names that are not ours would go to the host's resolver: make it one inside the
        # testbed where nothing answers (the testbed removes /etc/netns/<its namespaces>)
        etc = Path("/etc/netns") / tb.ns(host)
        etc.mkdir(parents=True, exist_ok=True)
        upstream = tb.address(hosts[(i + 1) % n])
        (etc / "resolv.conf").write_text(f"nameserver {upstream}\noptions timeout:1\n")
        if nft:
            count_control(tb, host)
    figure(f"{n} routers, mode {mode} ({'encrypted sleeve' if m.password else 'fastdp'})")

    # -- launch, one after the other, each with one or two initial peers -------------------
    init = ("--ipalloc-init", f"consensus={n}")
    first = last_start = time.monotonic()
    for i, host in enumerate(hosts, start=1):
        peers = [tb.address(f"h{p}") for p in tree_peers(i)]
        last_start = time.monotonic()
        launch(tb, host, *peers, password=m.password, extra=init)
    last = time.monotonic()
    figure(f"launching {n} routers one after the other: {last - first:.1f} s "
           f"(the last `weft launch` took {last - last_start:.1f} s)")
    cpu_at_launch = {h: proc_figures(router_pid(tb, h))[2] for h in hosts}

    state: dict[str, Any] = {}

    def mesh_done() -> bool:
        state["reports"] = m.reports()
        state["why"] = converged(state["reports"], hosts)
        return state["why"] is None

    def why() -> object:
        return state.get("why")

    timed(f"full mesh of {n} ({n * (n - 1) // 2} connections) after the last launch",
          mesh_done, since=last, timeout=180, why=why)
    reports: dict[str, dict[str, Any]] = state["reports"]
    for host, rep in reports.items():
        conns = rep["router"]["connections"]
        assert all(c["state"] == "established" for c in conns), (host, conns)
        assert rep["router"]["encryption"] is (m.password is not None)
        assert all(c["encrypted"] is (m.password is not None) for c in conns)
        assert rep["ipam"]["status"].startswith("awaiting consensus"), rep["ipam"]["status"]
    overlay = "sleeve" if m.password else "fastdp"

    def on_overlay() -> bool:
        for host, rep in m.reports().items():
            if rep is None:
                state["why"] = f"{host}: no report"
                return False
            wrong = [(c["peer"] or {}).get("nickname") for c in rep["router"]["connections"]
                     if c["overlay"] != overlay]
            if wrong:
                state["why"] = f"{host}: not on {overlay} to {wrong}"
                return False
        return True

    timed(f"every connection on {overlay}", on_overlay, since=last, timeout=60, why=why)
    status = tb.weft("h1", "status").stdout
    assert re.search(rf"\bPeers: {n}\b", status), status

    # -- a container on every host, addresses from IPAM, a DNS name each --------------------
    attached = time.monotonic()
    addrs: dict[str, ipaddress.IPv4Interface] = {}
    for i, host in enumerate(hosts, start=1):
        addrs[f"c{i}"] = attach(tb, host, f"c{i}", "--name", f"c{i}", timeout=120)
    last_attach = time.monotonic()
    figure(f"attaching {n} containers (the first one seeds the ring by consensus): "
           f"{last_attach - attached:.1f} s")
    ips = [a.ip for a in addrs.values()]
    assert len(set(ips)) == n, addrs
    assert all(a.network == RANGE for a in addrs.values()), addrs

    def ipam_settled() -> bool:
        for host, rep in m.reports().items():
            ipam = rep["ipam"] if rep else None
            if (ipam is None or ipam["status"] != "ready" or len(ipam["peers"]) != n
                    or not all(p["reachable"] for p in ipam["peers"])
                    or sum(p["addresses"] for p in ipam["peers"]) != RANGE.num_addresses):
                state["why"] = f"{host}: {ipam and ipam['status']}"
                return False
        return True

    timed("IPAM ready everywhere, the whole range owned", ipam_settled, timeout=60, why=why,
          show=False)

    # -- reachability: c1 to everyone, then a seeded sample of other pairs -----------------
    names = sorted(addrs, key=lambda c: int(c[1:]))
    rng = random.Random(n)
    others = [(a, b) for a in names[1:] for b in names if a != b]
    pairs = [("c1", b) for b in names[1:]] + rng.sample(others, min(SAMPLE_PAIRS, len(others)))
    pending = set(pairs)

    def everyone_reached() -> bool:
        for src, dst in sorted(pending):
            if tb.ping(src, str(addrs[dst].ip), timeout=2):
                pending.discard((src, dst))
        return not pending

    timed(f"{len(pairs)} container pairs reachable after the last attach", everyone_reached,
          since=last_attach, timeout=120, why=lambda: f"unreachable {sorted(pending)}")

    # -- names: every router holds all N, every container resolves all N ------------------
    want = {f"{c}.weft.local.": str(a.ip) for c, a in addrs.items()}

    def dns_everywhere() -> bool:
        for host, rep in m.reports().items():
            entries = rep["dns"]["entries"] if rep and rep["dns"] else []
            held = {e["hostname"]: e["address"] for e in entries}
            if held != want:
                state["why"] = f"{host} holds {len(held)} names"
                return False
        return True

    timed("every router holding every name", dns_everywhere, timeout=60, why=why, show=False)
    lookups = " ".join(want)
    script = f'for n in {lookups}; do getent ahostsv4 "$n" | head -n1; echo "=$n"; done'
    for c in names:
        answers = tb.run(c, ["sh", "-c", script], timeout=60).stdout
        got: dict[str, str] = {}
        ip = ""
        for line in answers.splitlines():
            if line.startswith("="):
                got[line[1:]], ip = ip, ""
            elif line.split():
                ip = line.split()[0]
        assert got == want, f"{c} resolved {got}"
    assert tb.weft("h1", "dns-lookup", f"c{n}").stdout == f"{addrs[f'c{n}'].ip}\n"
    figure(f"{n} containers each resolved all {n} names")

    # -- figures: memory, CPU, control traffic -------------------------------------------------
    # cumulative since launch, then what an idle mesh costs over IDLE_WINDOW seconds
    def gossip_sent() -> dict[str, tuple[float, float]]:
        return {h: (metric(got["/metrics"] or "", "weft_mesh_gossip_messages_sent_total"),
                    metric(got["/metrics"] or "", "weft_mesh_gossip_bytes_sent_total"))
                for h, got in m.probe("/metrics").items()}

    busy = {h: proc_figures(router_pid(tb, h)) for h in hosts}
    wire_busy = {h: control_bytes(tb, h) for h in hosts} if nft else {}
    gossip_busy = gossip_sent()
    start = time.monotonic()
    time.sleep(IDLE_WINDOW)
    idle = {h: proc_figures(router_pid(tb, h)) for h in hosts}
    wire = {h: control_bytes(tb, h) for h in hosts} if nft else {}
    gossip = gossip_sent()
    window = time.monotonic() - start
    figure("per router, since launch: RSS and peak RSS (MiB), CPU seconds (all, and when "
           "the last launch returned), gossip sent (/metrics), bytes sent on the underlay "
           "(nftables); then, idle: CPU % of one core, gossip messages/s, control TCP bytes/s")
    figure(f"{'host':>4} {'RSS':>5} {'peak':>5} {'CPU s':>6} {'at launch':>9} "
           f"{'gossip msgs':>11} {'gossip B':>9} {'tcp:6783 B':>10} {'udp:6783 B':>10} "
           f"{'udp:6784 B':>10} {'idle CPU%':>9} {'gossip/s':>8} {'tcp B/s':>7}")

    def per_s(now: float, then: float) -> float:
        return (now - then) / window

    for h in hosts:
        rss, peak, cpu = idle[h]
        (gmsgs, gbytes), w = gossip[h], wire.get(h, {})
        figure(f"{h:>4} {rss:5.1f} {peak:5.1f} {cpu:6.2f} {cpu_at_launch[h]:9.2f} "
               f"{gmsgs:11.0f} {gbytes:9.0f} {w.get('tcp', 0):10d} {w.get('udp', 0):10d} "
               f"{w.get('vxlan', 0):10d} {100 * per_s(cpu, busy[h][2]):9.1f} "
               f"{per_s(gmsgs, gossip_busy[h][0]):8.1f} "
               f"{per_s(w.get('tcp', 0), wire_busy.get(h, {}).get('tcp', 0)):7.0f}")
        assert gbytes > 0 and gmsgs > 0, f"{h}: no gossip counted in /metrics"
    tcp = sum(w.get("tcp", 0) for w in wire.values())
    figure(f"all {n}: RSS {sum(f[0] for f in idle.values()):.0f} MiB, "
           f"CPU {sum(f[2] for f in idle.values()):.1f} s, "
           f"gossip {sum(g[1] for g in gossip.values()) / 1024:.0f} KiB, "
           f"control TCP {tcp / 1024:.0f} KiB; idle: "
           f"{100 * sum(per_s(idle[h][2], busy[h][2]) for h in hosts):.1f} % of one core, "
           f"{sum(per_s(gossip[h][0], gossip_busy[h][0]) for h in hosts):.1f} gossip messages/s, "
           f"control TCP {per_s(tcp, sum(w.get('tcp', 0) for w in wire_busy.values())) / 1024:.1f}"
           " KiB/s")
    # nothing flapped while we attached, pinged, resolved and idled
    assert converged(m.reports(), hosts) is None
