"""``weft demo``: a narrated tour of a three-host mesh on this one machine.

Theory of operation
-------------------
The hosts are network namespaces built by ``Testbed`` (prefix ``weftdemo``; see
``testbed.py`` for the layout), all on one segment, 172.31.1.0/24, that exists only inside
them. Each runs its own router, started with the real CLI::

    1. launch      h1: weft launch --ipalloc-init consensus=3              (knows no one)
                   h2: weft launch --ipalloc-init consensus=3 172.31.1.1   (knows h1)
                   h3: weft launch --ipalloc-init consensus=3 172.31.1.2   (knows h2)
                                                                    a chain: h1 - h2 - h3
    2. discovery   gossip tells h3 about h1; it connects            a triangle
    3. status      weft status / status peers / status connections on each host
    4. containers  one container per host (a bare namespace), attached with a name and
                   no address: weft attach --name cN ... (IPAM: the three routers agree
                   on a ring over 10.32.0.0/12 at the first attach, each allocates from
                   its own share); pings across hosts; names resolved inside containers
                   with getent and dig (weftDNS on 127.0.0.11 in each); weft ps,
                   weft status ipam, weft status dns
    5. resilience  weft stop on h2; h1 and h3 keep their direct connection
    6. cleanup     containers detached (their names and resolv.conf go), weft stop
                   everywhere, namespaces deleted                  (unless --keep)

All routers share one random password (env ``WEFT_PASSWORD``), so every connection is
encrypted. Waits are bounded (``WAIT`` seconds) and judged from ``weft report`` JSON only:
``router.connections[].state`` for a router's own links and
``router.peers[].connections[].established`` for what it knows of the others' links.
Whatever happens (an error, Ctrl-C, SIGTERM) the routers are stopped and the hosts removed,
unless ``--keep`` asked to leave them up; ``weft demo --cleanup`` removes them later.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from weftnet.router.tools.namespaces import one_line
from weftnet.router.tools.testbed import (
    CommandFailed,
    Testbed,
    TestbedError,
    list_namespaces,
    owner_of,
    sigterm_as_interrupt,
    sweep_stale,
)

__all__ = ["DEMO_PATTERN", "DEMO_PREFIX", "WAIT", "DemoError", "run_demo"]

DEMO_PREFIX = "weftdemo"
DEMO_PATTERN = rf"^{DEMO_PREFIX}-"
HOSTS = ("h1", "h2", "h3")
CONTAINERS = {"h1": "c1", "h2": "c2", "h3": "c3"}
IPALLOC_INIT = ("--ipalloc-init", f"consensus={len(CONTAINERS)}")
NETNS_ETC = Path("/etc/netns")
WAIT = 30.0  # seconds for the mesh to form, and again for it to heal
POLL = 0.5
Report = dict[str, Any]


class DemoError(Exception):
    """The demo cannot go on; the message is the one line shown to the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise DemoError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="weft demo",
        description="A tour of weft on this machine: three simulated hosts (network "
        "namespaces), one router each, an encrypted mesh that forms and heals.",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--keep", action="store_true", help="leave the hosts and routers up at the end"
    )
    group.add_argument(
        "--cleanup", action="store_true", help="remove hosts a kept (or crashed) demo left up"
    )
    return p


def nickname(host: str) -> str:
    return "host" + host.removeprefix("h")


# --- reading `weft report` ------------------------------------------------------------------


def established_with(report: Report) -> set[str]:
    """Nicknames of the peers this router has an established connection with."""
    return {
        str(c["peer"]["nickname"])
        for c in report["router"]["connections"]
        if c.get("state") == "established" and c.get("peer")
    }


def sees_link(report: Report, a: str, b: str) -> bool:
    """True when this router's topology holds an established connection from ``a`` to ``b``."""
    return any(
        p.get("nickname") == a
        and any(c.get("nickname") == b and c.get("established") for c in p.get("connections", []))
        for p in report["router"]["peers"]
    )


def mesh_complete(reports: dict[str, Report]) -> str | None:
    """None when every router knows all peers and is connected to all others; else why not."""
    lacking = []
    for host, report in sorted(reports.items()):
        peers = len(report["router"]["peers"])
        conns = len(established_with(report))
        if peers < len(HOSTS) or conns < len(HOSTS) - 1:
            lacking.append(f"{host} knows {peers} peers, has {conns} established connections")
    return "; ".join(lacking) or None


def survivors_linked(reports: dict[str, Report], gone: str) -> str | None:
    """None when the routers left see each other directly and no longer ``gone``; else why."""
    lacking = []
    for host, report in sorted(reports.items()):
        me = nickname(host)
        others = {nickname(h) for h in reports} - {me}
        have = established_with(report)
        if have != others:
            lacking.append(f"{host} is connected to {sorted(have) or 'no one'}")
        for other in sorted(others):
            if not (sees_link(report, me, other) and sees_link(report, other, me)):
                lacking.append(f"{host} does not yet see {me} <-> {other} established")
        if sees_link(report, me, nickname(gone)):
            lacking.append(f"{host} still lists its connection to {nickname(gone)}")
    return "; ".join(lacking) or None


# --- the tour -------------------------------------------------------------------------------


class _Tour:
    def __init__(self, tb: Testbed, password: str, keep: bool = False) -> None:
        self.tb = tb
        self.password = password
        self.keep = keep
        self.running: list[str] = []

    def weft(self, host: str, *args: str, show: bool = True) -> str:
        if show:
            say(f"  [{host}] $ weft {' '.join(args)}")
        out = self.tb.weft(host, *args, env={"WEFT_PASSWORD": self.password}).stdout
        if show:
            for line in out.rstrip("\n").splitlines():
                say(f"      {line}".rstrip())
        return out

    def report(self, host: str) -> Report:
        report: Report = json.loads(self.weft(host, "report", show=False))
        return report

    def wait(self, hosts: Sequence[str], judge: Callable[[dict[str, Report]], str | None]) -> float:
        """Poll reports of ``hosts`` until ``judge`` finds nothing lacking; seconds taken."""
        start = time.monotonic()
        why = "no report yet"
        while time.monotonic() - start < WAIT:
            try:
                verdict = judge({h: self.report(h) for h in hosts})
            except (CommandFailed, ValueError, KeyError, TypeError) as exc:
                verdict = f"weft report: {one_line(exc)}"
            if verdict is None:
                return time.monotonic() - start
            why = verdict
            time.sleep(POLL)
        raise DemoError(f"gave up after {WAIT:.0f} s: {why}")

    def launch(self, host: str, peers: Sequence[str]) -> None:
        self.running.append(host)
        self.weft(host, "launch", "--nickname", nickname(host), *IPALLOC_INIT, *peers)

    def stop(self, host: str) -> None:
        self.weft(host, "stop")
        self.running.remove(host)

    def inside(self, container: str, *argv: str) -> str:
        """Run ``argv`` in a container and show it; its output (a failure is an error)."""
        say(f"  [{container}] $ {' '.join(argv)}")
        proc = self.tb.run(container, list(argv), check=False, timeout=30)
        out = proc.stdout.rstrip("\n")
        for line in out.splitlines():
            say(f"      {line}".rstrip())
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise DemoError(f"in {container}: `{' '.join(argv)}` failed: {detail}")
        return out

    def until(self, what: str, check: Callable[[], bool]) -> float:
        """Wait (at most WAIT seconds) until ``check()``; seconds taken."""
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > WAIT:
                raise DemoError(f"gave up after {WAIT:.0f} s waiting for {what}")
            time.sleep(0.1)
        return time.monotonic() - start

    def containers(self) -> None:
        tb = self.tb
        say("No addresses are given: the routers agreed at launch to seed their address ring")
        say("once all three know each other (--ipalloc-init consensus=3); the first attach")
        say("runs that agreement, then each router hands out addresses from its own share of")
        say("10.32.0.0/12, with no database anywhere.")
        ips: dict[str, str] = {}
        for host, name in CONTAINERS.items():
            ns = tb.add_container(name)
            out = self.weft(host, "attach", "--name", name, ns)
            ips[name] = out.split()[0].split("/")[0]
        if len(set(ips.values())) != len(ips):
            raise DemoError(f"IPAM handed out an address twice: {ips}")
        say("Each container got an interface ethwe on the weft bridge of its host, and a")
        say(f"resolv.conf ({NETNS_ETC}/<container>/resolv.conf, which `ip netns exec` uses)")
        say("pointing at 127.0.0.11, where its host's router answers DNS inside the container.")
        took = self.until("c1 to reach c2 and c3", lambda: tb.ping("c1", ips["c2"])
                          and tb.ping("c1", ips["c3"]))
        say(f"  c1 reaches c2 (on h2) and c3 (on h3) after {took:.1f} s:")
        self.inside("c1", "ping", "-n", "-c", "2", "-i", "0.2", "c2")
        say("")
        say("Names spread through the mesh; any container resolves any other, the short name")
        say("through the search domain weft.local:")
        self.inside("c1", "getent", "hosts", "c2")
        self.inside("c3", "getent", "hosts", "c1.weft.local")
        if shutil.which("dig") is not None:
            self.inside("c2", "dig", "+short", "c3.weft.local")
            self.inside("c3", "dig", "+short", "-x", ips["c2"])
        say("")
        self.weft("h1", "ps")
        say("")
        say("Every router sees the whole ring: who owns how much, how much is in use:")
        self.weft("h2", "status", "ipam")
        say("")
        self.weft("h2", "status", "dns")

    def detach_all(self) -> None:
        for host, name in CONTAINERS.items():
            if host in self.running:
                self.weft(host, "detach", self.tb.ns(name))

    def stop_all_quietly(self) -> None:
        for host in reversed(self.running):
            try:
                self.tb.weft(host, "stop", check=False, timeout=30)
            except Exception:  # noqa: BLE001 - the testbed's close() kills what is left
                pass
        self.running.clear()

    def run(self) -> None:
        tb = self.tb
        heading("1. Three hosts")
        say("Each host is a network namespace with its own interfaces, routes and ports; a")
        say("bridge in a fourth namespace plays the switch of their LAN, 172.31.1.0/24.")
        for host in HOSTS:
            say(f"  {host}  namespace {tb.ns(host):12}  eth0 {tb.address(host)}")

        heading("2. One router per host, started as a chain: h1 <- h2 <- h3")
        say("h1 is told about no one, h2 about h1, h3 only about h2. All three get the same")
        say("password in WEFT_PASSWORD, so the mesh is encrypted: peers prove they know it")
        say("and seal all control and data traffic with keys derived from it.")
        self.launch("h1", [])
        self.launch("h2", [tb.address("h1")])
        self.launch("h3", [tb.address("h2")])

        heading("3. Discovery turns the chain into a triangle")
        say("Peers gossip about who they are connected to: h1 and h3 learn of each other")
        say("through h2, and one of them connects to the other directly. Waiting until every")
        say("router has 3 peers and 2 established connections ...")
        took = self.wait(HOSTS, mesh_complete)
        say(f"  done after {took:.1f} s: h1, h2 and h3 are all directly connected.")
        encrypted = all(self.report(h)["router"]["encryption"] for h in HOSTS)
        say(f"  encryption on every router: {'yes' if encrypted else 'NO'}")
        if not encrypted:
            raise DemoError("a router reports encryption off although a password was given")

        heading("4. What the routers report")
        self.weft("h1", "status")
        for host in HOSTS:
            say("")
            self.weft(host, "status", "peers")
            self.weft(host, "status", "connections")

        heading("5. Containers on every host, found by name")
        self.containers()

        heading("6. Resilience: h2 goes away")
        say("Stopping h2's router. h3 first reached h1 through h2, but since discovery it has")
        say("its own connection to h1, which does not depend on h2 at all.")
        self.stop("h2")
        took = self.wait(("h1", "h3"), lambda reports: survivors_linked(reports, "h2"))
        say(f"  after {took:.1f} s h1 and h3 no longer list h2 and still reach each other:")
        for host in ("h1", "h3"):
            self.weft(host, "status", "connections")
        say("c1 still reaches c3 by name:")
        self.inside("c1", "ping", "-n", "-c", "1", "c3")

        if not self.keep:
            heading("7. Cleaning up")
            say("Detaching a container removes its names everywhere and its resolv.conf:")
            self.detach_all()


def run_demo(argv: list[str]) -> int:
    """``weft demo [--keep | --cleanup]``; 0 on success, 1 with a one-line error otherwise."""
    try:
        args = _parser().parse_args(argv)
        _preflight()
        if args.cleanup:
            return _cleanup()
        return _tour(keep=args.keep)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (DemoError, TestbedError, OSError) as exc:
        print(f"weft demo: {one_line(exc)}", file=sys.stderr)
        return 1


def _tour(keep: bool) -> int:
    existing = [ns for ns in list_namespaces() if ns.startswith(f"{DEMO_PREFIX}-")]
    owner = owner_of(DEMO_PREFIX)
    if owner is not None:
        raise DemoError(f"another demo is running (pid {owner})")
    if existing:
        raise DemoError("hosts of an earlier demo are still up; remove them: weft demo --cleanup")
    tb: Testbed | None = None
    tour: _Tour | None = None
    ok = interrupted = False
    try:
        with sigterm_as_interrupt():
            tb = Testbed(HOSTS, prefix=DEMO_PREFIX)
            tour = _Tour(tb, secrets.token_urlsafe(16), keep)
            tour.run()
            ok = True
    except KeyboardInterrupt:
        interrupted = True
        print("weft demo: interrupted, cleaning up", file=sys.stderr)
    except (DemoError, TestbedError) as exc:
        print(f"weft demo: {one_line(exc)}", file=sys.stderr)
    finally:
        if tb is not None and keep and not interrupted:
            tb.release()
            _explain_keep(tb)
        elif tb is not None:
            if tour is not None:
                tour.stop_all_quietly()
            try:
                tb.close()
            finally:
                _remove_resolv_confs()
            if ok:
                heading("Done")
                say("Routers stopped, hosts removed. Keep them up next time with: weft demo --keep")
    return 0 if ok else 1


def _cleanup() -> int:
    owner = owner_of(DEMO_PREFIX)
    if owner is not None:
        raise DemoError(f"a demo is running (pid {owner}); it removes its hosts when it ends")
    removed = sweep_stale(DEMO_PATTERN)
    removed += [f"{NETNS_ETC}/{name}" for name in _remove_resolv_confs()]
    say(f"removed {' '.join(removed)}" if removed else "no demo hosts to remove")
    return 0


def _remove_resolv_confs() -> list[str]:
    """Remove what routers wrote for demo containers under /etc/netns (ours by prefix)."""
    gone = []
    for path in sorted(NETNS_ETC.glob(f"{DEMO_PREFIX}-*")):
        shutil.rmtree(path, ignore_errors=True)
        gone.append(path.name)
    return gone


def _preflight() -> None:
    if os.geteuid() != 0:
        raise DemoError("needs root: it creates network namespaces (try: sudo weft demo)")
    if shutil.which("ip") is None:
        raise DemoError("needs the `ip` command (iproute2)")


def _explain_keep(tb: Testbed) -> None:
    heading("The hosts stay up (--keep)")
    say("Run commands on a host, e.g.:")
    for host in HOSTS:
        say(f"  ip netns exec {tb.ns(host)} env WEFT_DATA_DIR={tb.data_dir(host)} weft status")
    say(f"A shell on h1:  ip netns exec {tb.ns('h1')} env WEFT_DATA_DIR={tb.data_dir('h1')} bash")
    say(f"A shell in c1:  ip netns exec {tb.ns('c1')} bash    (try: getent hosts c3)")
    say(f"Router logs:    {tb.tmpdir}/hosts/*/")
    say(f"h2's router was stopped in step 6; start it again with: ... weft launch "
        f"--nickname host2 {tb.address('h1')}")
    say("Remove everything (routers, hosts, files):  weft demo --cleanup")


def say(line: str = "") -> None:
    print(line, flush=True)


def heading(title: str) -> None:
    say()
    say(f"== {title}")
