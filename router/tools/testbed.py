"""Simulated hosts on one machine: network namespaces joined by bridges.

Theory of operation
-------------------
A testbed is a handful of network namespaces. Each *host* namespace stands for one machine
that runs a weft router; each *segment* (an L2 network, a LAN) is a Linux bridge ``br0`` that
lives in a *switch* namespace of its own. A host on a segment gets one veth pair: one end,
``ethN``, inside the host (N counts the host's segments in segment order), the other end,
``v<host index + 1>``, enslaved to the segment's bridge::

      segment "a" (index 0)                   segment "b" (index 1)
      172.31.1.0/24                           172.31.2.0/24
    ┌──────── PREFIX-sw0 ────────┐          ┌──────── PREFIX-sw1 ────────┐
    │          br0               │          │          br0               │
    │    v1 ─────┴───── v2       │          │    v2 ─────┴───── v3       │
    └────│──────────────│────────┘          └────│──────────────│────────┘
         │              │                        │              │
    ┌────│────┐   ┌─────│───────────────────────│─────┐   ┌────│────┐
    │  eth0   │   │   eth0                     eth1   │   │  eth0   │
    │172.31.1.1   │ 172.31.1.2            172.31.2.2  │   │172.31.2.3
    │ PREFIX-h1   │                PREFIX-h2          │   │ PREFIX-h3
    └─────────┘   └───────────────────────────────────┘   └─────────┘

Host number i (1-based, in ``hosts`` order) on segment number s (1-based, in ``segments``
order) has the address ``172.31.<s>.<i>/24``. These addresses exist only inside namespaces
the testbed creates; nothing is ever routed to or from the machine's own network.

Safety rules the code keeps:

* Nothing is configured in the machine's own (root) network namespace, not even for a moment:
  each veth pair is created inside its switch namespace with its peer end placed straight
  into the host namespace (``ip -n SW link add vX type veth peer name ethN netns HOST``).
  Deleting a namespace destroys the veth ends in it, and so the whole pair.
* Everything is removed again by ``close()``: on leaving the ``with`` block, on a failure in
  the middle of the constructor, on Ctrl-C and at interpreter exit (``atexit``). A process
  that dies by SIGKILL cannot clean up; ``sweep_stale()`` removes what it left behind.
* A sweep must never take another live run's hosts. Before it creates anything, a testbed
  claims its prefix by creating ``STATE_DIR/<prefix>.json`` exclusively and writing its pid
  and process start time there. ``sweep_stale()`` skips every prefix whose owner still runs.

*Containers* are bare namespaces of the same testbed, ``PREFIX-<name>`` with only ``lo`` (up):
``add_container("c1")``. They are not wired to anything; a router on a host attaches one
(``weft attach 10.2.1.1/24 PREFIX-c1`` creates a veth in the host and moves its other end into
the container), or a test wires it by hand. ``run``/``popen``/``ping`` accept container names
wherever they accept host names. Containers share the prefix, so ``close()`` and
``sweep_stale()`` remove them with the rest; ``remove_container`` removes one earlier.

*IPv6 underlays*: ``Testbed(..., underlay="ipv6")`` gives each host ``fd00:<149+s>::<i>/64``
(segment 1 is ``fd00:150::/64``) instead of its IPv4 address, ``underlay="dual"`` both; the
addresses carry ``nodad`` (usable at once, not "tentative" for a second). ``address(host)``
is the IPv6 one on an IPv6-only underlay; ``address6(host)`` always. ``mtu={"h2": 1280}``
sets a host's underlay interfaces' MTU (1280, IPv6's minimum, makes a path MTU test).
Hosts behind NAT keep IPv4, and ``partition`` matches IPv4 and IPv6 addresses.

*NAT gateways*: ``Testbed(..., nat={"h2": Nat(), "h3": Nat(symmetric=True)})`` puts each
named host behind a gateway namespace ``PREFIX-gw<i>`` (``i`` = the host's number) of its own,
as a cloud would (``natgw.py`` says how it behaves). The gateway takes the host's place on its
one segment (leg ``pub``, address ``172.31.<s>.<i>``: ``public_address(host)``); the host's only
underlay interface ``eth0`` is on a veth to the gateway's ``priv`` leg, address
``172.20.<i>.2/24`` (``address(host)``), default route via ``172.20.<i>.1``. ``gateway(host)``
names the gateway for ``run``/``ping``; ``nat_flush`` and ``nat_timeouts`` simulate rebinding.
``count_underlay(host)`` and ``underlay_bytes(host)`` count what crosses a host's underlay.

Extra commands for tests: ``block_udp_port``/``unblock`` add nftables rules (table ``inet
weft_testbed``) inside one host namespace, matching only its underlay interfaces, so loopback
(the router's HTTP API) is never affected; ``set_loss`` drops datagrams on the wire into a
host (``wireloss.py``: XDP on its underlay interfaces). ``partition(a, b)``,
``isolate(host)`` and ``heal(a[, b])`` drop (and stop dropping) everything between hosts'
underlay addresses, the same way.

Parts: ``namespaces`` runs iproute2 and kills what runs in a namespace (and holds the
errors), ``ownership`` keeps the prefix records and ``sweep_stale``; this module is the
``Testbed`` itself and the names callers import.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from weftnet.router.tools import wireloss
from weftnet.router.tools.namespaces import (
    KILL_GRACE,
    CommandFailed,
    NftablesMissing,
    TestbedError,
    delete_namespaces,
    kill_namespace_processes,
    links_up,
    list_namespaces,
    output_text,
    run_ip,
    sigint_deferred,
    sigterm_as_interrupt,
)
from weftnet.router.tools.natgw import (
    FLUSH_CONNTRACK_PY,
    NAT_TABLE,
    Nat,
    gateway_sysctls,
    nat_ruleset,
    private_net,
    timeout_sysctls,
)
from weftnet.router.tools.ownership import (
    DEFAULT_PATTERN,
    STATE_DIR,
    claim,
    owner_of,
    record_path,
    rewrite_record,
    sweep_stale,
)

__all__ = [
    "DEFAULT_PATTERN",
    "NFT_TABLE",
    "Nat",
    "STATE_DIR",
    "CommandFailed",
    "NftablesMissing",
    "Testbed",
    "TestbedError",
    "list_namespaces",
    "owner_of",
    "sigterm_as_interrupt",
    "sweep_stale",
]

NFT_TABLE = "weft_testbed"

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_SWITCH_RE = re.compile(r"^(sw|gw)[0-9]+$")  # names of the testbed's own namespaces


class Testbed:
    """Hosts (network namespaces) on segments (bridges in switch namespaces); see module doc.

    The constructor builds everything; use it as a context manager (or call ``close()``).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        hosts: Sequence[str] = ("h1", "h2", "h3"),
        segments: Mapping[str, Sequence[str]] | None = None,
        prefix: str | None = None,
        nat: Mapping[str, Nat] | None = None,
        underlay: str = "ipv4",
        mtu: Mapping[str, int] | None = None,
    ) -> None:
        self.hosts: tuple[str, ...] = tuple(hosts)
        if underlay not in ("ipv4", "ipv6", "dual"):
            raise ValueError(f"underlay must be ipv4, ipv6 or dual, not {underlay!r}")
        self.underlay = underlay
        self.mtu: dict[str, int] = dict(mtu or {})
        if segments is None:
            segments = {"lan": self.hosts}
        self.segments: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in segments.items()}
        self.nat: dict[str, Nat] = dict(nat or {})
        self._gateways: dict[str, str] = {}  # gateway name -> namespace, filled by _build
        self._validate()
        self._closed = False
        self._released = False
        self._lock = threading.Lock()
        self._created: list[str] = []
        self._containers: dict[str, str] = {}  # container name -> namespace
        self._popens: list[subprocess.Popen[Any]] = []
        self._tmpdir: Path | None = None
        self._claimed = False
        self.prefix = self._claim_prefix(prefix)
        atexit.register(self.close)
        try:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f"weft-testbed-{self.prefix}-"))
            rewrite_record(self.prefix, self._tmpdir)
            self._build()
        except BaseException:
            self.close()
            raise

    # -- construction --

    def _validate(self) -> None:
        if not self.hosts:
            raise ValueError("a testbed needs at least one host")
        if len(self.hosts) > 254:
            raise ValueError("at most 254 hosts")
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"duplicate host names in {self.hosts}")
        for host in self.hosts:
            if not _HOST_RE.match(host) or _SWITCH_RE.match(host):
                raise ValueError(f"bad host name {host!r} (letters, digits, _.-; not swN, gwN)")
        if not 1 <= len(self.segments) <= 254:
            raise ValueError("need between 1 and 254 segments")
        for seg, members in self.segments.items():
            unknown = sorted(set(members) - set(self.hosts))
            if unknown:
                raise ValueError(f"segment {seg!r} names unknown hosts {unknown}")
            if len(set(members)) != len(members):
                raise ValueError(f"segment {seg!r} lists a host twice")
        for host, how in self.nat.items():
            if host not in self.hosts:
                raise ValueError(f"nat names the unknown host {host!r}")
            if not isinstance(how, Nat):
                raise TypeError(f"nat[{host!r}] must be a Nat, not {how!r}")
            on = [seg for seg, members in self.segments.items() if host in members]
            if len(on) != 1:
                raise ValueError(f"a host behind NAT must be on exactly one segment, "
                                 f"{host!r} is on {on}")

    def _claim_prefix(self, prefix: str | None) -> str:
        existing = {ns.split("-", 1)[0] for ns in list_namespaces()}
        if prefix is not None:
            if not _PREFIX_RE.match(prefix):
                raise ValueError(f"bad prefix {prefix!r} (a lowercase letter, then a-z0-9, ≤12)")
            if prefix in existing or not claim(prefix, None):
                owner = owner_of(prefix)
                who = f"the running process {owner}" if owner else "an earlier run"
                raise TestbedError(
                    f"namespaces with prefix {prefix!r} belong to {who}; "
                    f"remove leftovers with sweep_stale({('^' + prefix + '-')!r})"
                )
            self._claimed = True
            return prefix
        for _ in range(100):
            candidate = "wt" + secrets.token_hex(2)
            if candidate not in existing and claim(candidate, None):
                self._claimed = True
                return candidate
        raise TestbedError("could not find a free random prefix")

    def _add_ns(self, ns: str) -> None:
        # Record before creating, so an interrupted `ip netns add` is still cleaned up; the
        # prefix is claimed exclusively, so no one else has a namespace under it.
        self._created.append(ns)
        run_ip("netns", "add", ns)
        run_ip("-n", ns, "link", "set", "lo", "up")

    def _build(self) -> None:
        assert self._tmpdir is not None
        for host in self.hosts:
            self.data_dir(host).mkdir(parents=True)
            self._add_ns(self.ns(host))
        for s, (seg, members) in enumerate(self.segments.items()):
            sw = self._switch_ns(s)
            self._add_ns(sw)
            run_ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0")
            run_ip("-n", sw, "link", "set", "br0", "up")
            for host in members:
                hns, ifname = self.ns(host), self._ifname(host, seg)
                port = f"v{self.hosts.index(host) + 1}"
                if host in self.nat:
                    self._build_gateway(sw, port, host, seg)
                    continue
                run_ip("-n", sw, "link", "add", port, "type", "veth",
                    "peer", "name", ifname, "netns", hns)  # fmt: skip
                run_ip("-n", sw, "link", "set", port, "master", "br0", "up")
                if self.underlay != "ipv6":
                    run_ip("-n", hns, "addr", "add", f"{self._segment_address(host, seg)}/24",
                           "dev", ifname)
                if self.underlay != "ipv4":
                    run_ip("-n", hns, "addr", "add", f"{self.address6(host, seg)}/64", "dev",
                           ifname, "nodad")
                if host in self.mtu:
                    run_ip("-n", hns, "link", "set", ifname, "mtu", str(self.mtu[host]))
                run_ip("-n", hns, "link", "set", ifname, "up")
        self._wait_links_up()

    def _build_gateway(self, sw: str, port: str, host: str, seg: str) -> None:
        """``host``'s NAT gateway on segment ``seg`` (bridge port ``port`` in ``sw``)."""
        number = self.hosts.index(host) + 1
        name = self.gateway(host)
        gns = f"{self.prefix}-{name}"
        self._gateways[name] = gns
        self._add_ns(gns)
        net = private_net(number)
        run_ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", "pub", "netns", gns)
        run_ip("-n", sw, "link", "set", port, "master", "br0", "up")
        run_ip("-n", gns, "addr", "add", f"{self.public_address(host)}/24", "dev", "pub")
        run_ip("-n", gns, "link", "set", "pub", "up")
        hns = self.ns(host)
        run_ip("-n", gns, "link", "add", "priv", "type", "veth", "peer", "name", "eth0",
               "netns", hns)
        run_ip("-n", gns, "addr", "add", f"{net[1]}/24", "dev", "priv")
        run_ip("-n", gns, "link", "set", "priv", "up")
        run_ip("-n", hns, "addr", "add", f"{net[2]}/24", "dev", "eth0")
        run_ip("-n", hns, "link", "set", "eth0", "up")
        run_ip("-n", hns, "route", "add", "default", "via", str(net[1]))
        self._sysctl(name, gateway_sysctls())
        self._nft(name, script=nat_ruleset(net, symmetric=self.nat[host].symmetric))

    def _sysctl(self, name: str, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self.run(name, ["sysctl", "-q", "-w", f"{key}={value}"], timeout=30)

    def _wait_links_up(self, timeout: float = 10.0) -> None:
        """Wait until the kernel reports every underlay link operationally up.

        A veth only carries traffic once the link watcher has run (up to a second after
        ``ip link set up``); before that, the first pings of a test are silently dropped.
        """
        deadline = time.monotonic() + timeout
        pending = list(self.namespaces)
        while True:
            pending = [ns for ns in pending if not links_up(ns)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"links in {', '.join(pending)} not up after {timeout:.0f} s")
            time.sleep(0.02)

    # -- naming --

    def ns(self, host: str) -> str:
        """The network namespace name of ``host`` (or of a container of that name)."""
        if host in self._containers:
            return self._containers[host]
        if host in self._gateways:
            return self._gateways[host]
        self._check_host(host)
        return f"{self.prefix}-{host}"

    def _switch_ns(self, index: int) -> str:
        return f"{self.prefix}-sw{index}"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this testbed: hosts first, then switches, NAT gateways, then
        containers."""
        return (
            [self.ns(h) for h in self.hosts]
            + [self._switch_ns(i) for i in range(len(self.segments))]
            + list(self._gateways.values())
            + list(self._containers.values())
        )

    @property
    def containers(self) -> tuple[str, ...]:
        """Names of the containers made by ``add_container`` (and not removed), in order."""
        return tuple(self._containers)

    def _check_host(self, host: str) -> None:
        if host not in self.hosts:
            raise KeyError(f"no host {host!r} in this testbed (hosts: {', '.join(self.hosts)})")

    def host_segments(self, host: str) -> list[str]:
        """The segments ``host`` is on, in segment order (``eth0`` is on the first)."""
        self._check_host(host)
        return [seg for seg, members in self.segments.items() if host in members]

    def _ifname(self, host: str, segment: str) -> str:
        return f"eth{self.host_segments(host).index(segment)}"

    def interfaces(self, host: str) -> list[str]:
        """The underlay interface names of ``host`` (``eth0``, ``eth1``, ...)."""
        return [f"eth{i}" for i in range(len(self.host_segments(host)))]

    def address(self, host: str, segment: str | None = None) -> str:
        """``host``'s IPv4 address (no prefix length) on ``segment`` (default: its first).

        Behind NAT: its private address (behind the gateway on that segment)."""
        on = self.host_segments(host)
        if not on:
            raise KeyError(f"host {host!r} is on no segment")
        seg = on[0] if segment is None else segment
        if seg not in on:
            raise KeyError(f"host {host!r} is not on segment {seg!r} (it is on {on})")
        if host in self.nat:
            return str(private_net(self.hosts.index(host) + 1)[2])
        if self.underlay == "ipv6":
            return self.address6(host, seg)
        return self._segment_address(host, seg)

    def address6(self, host: str, segment: str | None = None) -> str:
        """``host``'s IPv6 address (no prefix length) on ``segment`` (default: its first), on
        an IPv6 or dual-stack underlay."""
        on = self.host_segments(host)
        seg = on[0] if segment is None else segment
        if self.underlay == "ipv4" or seg not in on or host in self.nat:
            raise KeyError(f"host {host!r} has no IPv6 address on segment {seg!r}")
        return f"fd00:{150 + list(self.segments).index(seg)}::{self.hosts.index(host) + 1}"

    def public_address(self, host: str) -> str:
        """The address others see ``host``'s packets come from on its (first) segment: its
        NAT gateway's ``pub`` address, or its own when it is not behind NAT."""
        if host not in self.nat:
            return self.address(host)
        return self._segment_address(host, self.host_segments(host)[0])

    def _segment_address(self, host: str, segment: str) -> str:
        """``host``'s place on ``segment``: its own address there, or its gateway's ``pub``."""
        return f"172.31.{list(self.segments).index(segment) + 1}.{self.hosts.index(host) + 1}"

    def gateway(self, host: str) -> str:
        """The name (for ``run``, ``ping``, ``popen``) of ``host``'s NAT gateway."""
        self._check_host(host)
        if host not in self.nat:
            raise KeyError(f"host {host!r} is not behind NAT")
        return f"gw{self.hosts.index(host) + 1}"

    @property
    def tmpdir(self) -> Path:
        """The temp dir the testbed owns (removed by ``close()``)."""
        if self._tmpdir is None:
            raise TestbedError("the testbed has no temp dir (setup failed early)")
        return self._tmpdir

    def data_dir(self, host: str) -> Path:
        """A private directory for ``host`` (its router's ``WEFT_DATA_DIR``)."""
        self._check_host(host)
        return self.tmpdir / "hosts" / host

    def env(self, host: str) -> dict[str, str]:
        """This process's environment plus ``WEFT_DATA_DIR=data_dir(host)``.

        For a container: this process's environment as it is (no router runs there).
        """
        if host in self._containers or host in self._gateways:
            return dict(os.environ)
        return {**os.environ, "WEFT_DATA_DIR": str(self.data_dir(host))}

    def _env_over(self, host: str, env: Mapping[str, str | None] | None) -> dict[str, str]:
        """``self.env(host)`` with ``env`` laid over it; a None value removes that variable."""
        merged = self.env(host)
        for key, value in (env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    # -- containers --

    def add_container(self, name: str) -> str:
        """Create the bare namespace ``PREFIX-<name>`` (``lo`` up) and return its name.

        ``name`` must not be a host's or another container's name, nor ``swN``.
        """
        self._check_open()
        if not _HOST_RE.match(name) or _SWITCH_RE.match(name):
            raise ValueError(f"bad container name {name!r} (letters, digits, _.-; not swN, gwN)")
        if name in self.hosts or name in self._containers:
            raise ValueError(f"the name {name!r} is taken in this testbed")
        ns = f"{self.prefix}-{name}"
        self._containers[name] = ns
        try:
            self._add_ns(ns)
        except BaseException:
            with contextlib.suppress(Exception):
                self.remove_container(name)
            raise
        return ns

    def remove_container(self, name: str) -> None:
        """Kill the processes in container ``name``, delete its links (a veth's peer in a
        host goes with it) and its namespace."""
        self._check_open()
        if name not in self._containers:
            raise KeyError(f"no container {name!r} in this testbed")
        ns = self._containers[name]
        kill_namespace_processes([ns])
        # Deleting a namespace frees its devices later, in the kernel's own time; deleting
        # them first makes the veth pairs (and their host ends) go away now.
        if ns in list_namespaces():
            for line in run_ip("-n", ns, "-o", "link", "show", check=False).stdout.splitlines():
                link = line.split(":", 2)[1].strip().split("@", 1)[0]
                if link != "lo":
                    run_ip("-n", ns, "link", "del", link, check=False)
        errors = delete_namespaces([ns])
        if errors:
            raise TestbedError("; ".join(errors))
        del self._containers[name]
        if ns in self._created:
            self._created.remove(ns)

    def kill_processes(self, host: str) -> None:
        """SIGTERM (then SIGKILL) every process inside ``host`` (or a container)."""
        self._check_open()
        kill_namespace_processes([self.ns(host)])

    # -- running commands --

    def _exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        self._check_open()
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` (or a container) and wait; text mode, output captured.

        ``env`` is laid over ``self.env(host)`` (a None value unsets that variable). With
        ``check`` (the default) a non-zero exit or a timeout raises ``CommandFailed`` whose
        message holds stdout and stderr.
        """
        full = self._exec_argv(host, argv)
        try:
            proc = subprocess.run(
                full,
                env=self._env_over(host, env),
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
            )
        except subprocess.TimeoutExpired as exc:
            if not check:
                raise
            raise CommandFailed(
                host, argv, -1, output_text(exc.stdout), output_text(exc.stderr),
                f"timed out after {timeout} s",
            ) from exc
        if check and proc.returncode != 0:
            raise CommandFailed(host, argv, proc.returncode, proc.stdout, proc.stderr)
        return subprocess.CompletedProcess(list(argv), proc.returncode, proc.stdout, proc.stderr)

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host`` (or a container) without waiting; keyword args go
        to ``Popen``.

        ``env`` defaults to ``self.env(host)``. ``close()`` kills it with the rest.
        """
        kw.setdefault("env", self.env(host))
        proc: subprocess.Popen[Any] = subprocess.Popen(self._exec_argv(host, argv), **kw)
        self._popens.append(proc)
        return proc

    def weft(self, host: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run the ``weft`` CLI of this checkout inside ``host`` (see ``run`` for ``kw``)."""
        return self.run(host, [sys.executable, "-m", "weftnet.router.programs.cli", *args], **kw)

    def ping(self, host: str, address: str, *, timeout: float = 1) -> bool:
        """One ``ping -c1`` from ``host`` to ``address``: True when answered, else False.

        "Network is unreachable" counts as not answered; a missing ``ping`` raises.
        """
        if shutil.which("ping") is None:
            raise TestbedError("the `ping` command is not installed (apt-get install iputils-ping)")
        argv = ["ping", "-n", "-q", "-c1", f"-W{max(1, round(timeout))}", address]
        return self.run(host, argv, check=False, timeout=timeout + 5).returncode == 0

    # -- packet filter (nftables) --

    def _nft(self, host: str, *args: str, script: str | None = None) -> str:
        if shutil.which("nft") is None:
            raise NftablesMissing("the `nft` command is not installed (apt-get install nftables)")
        argv = ["nft", *args] if script is None else ["nft", "-f", "-"]
        return self.run(host, argv, input=script, timeout=30).stdout

    def _ensure_table(self, host: str) -> None:
        t = f"inet {NFT_TABLE}"
        self._nft(host, script=(
            f"add table {t}\n"
            f"add chain {t} input {{ type filter hook input priority -5 ; policy accept ; }}\n"
            f"add chain {t} output {{ type filter hook output priority -5 ; policy accept ; }}\n"
        ))  # fmt: skip

    def _underlay(self, host: str) -> str:
        return "{ " + ", ".join(f'"{i}"' for i in self.interfaces(host)) + " }"

    def _delete_rules(self, host: str, comment: str | re.Pattern[str]) -> None:
        try:
            listing = json.loads(self._nft(host, "-j", "-a", "list", "table", "inet", NFT_TABLE))
        except CommandFailed:
            return  # no table: nothing to delete
        for item in listing.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            text = str(rule.get("comment", ""))
            hit = comment.match(text) if isinstance(comment, re.Pattern) else text == comment
            if hit:
                self._nft(
                    host, "delete", "rule", "inet", NFT_TABLE, rule["chain"],
                    "handle", str(rule["handle"]),
                )  # fmt: skip

    def block_udp_port(self, host: str, port: int) -> None:
        """Drop UDP from or to ``port`` on ``host``'s underlay interfaces, both directions."""
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        self.unblock(host, port)
        self._ensure_table(host)
        t, tag, dev = f"inet {NFT_TABLE}", f'comment "block-udp-{port}"', self._underlay(host)
        self._nft(host, script="".join(
            f"add rule {t} {chain} {io} {dev} udp {field} {port} drop {tag}\n"
            for chain, io in (("input", "iifname"), ("output", "oifname"))
            for field in ("dport", "sport")
        ))  # fmt: skip

    def unblock(self, host: str, port: int | None = None) -> None:
        """Undo ``block_udp_port`` for ``port``, or for every port when None."""
        self._check_host(host)
        tag: str | re.Pattern[str] = (
            re.compile(r"^block-udp-\d+$") if port is None else f"block-udp-{port}"
        )
        self._delete_rules(host, tag)

    def set_loss(self, host: str, percent: int) -> None:
        """Drop ``percent``% of the UDP datagrams arriving on ``host``'s underlay at random;
        0 ends it. Per datagram on the wire, before the host's GRO (router/tools/wireloss.py:
        an XDP program on its interfaces, whose peers then send datagram by datagram, and
        GRO on behind it, as a NIC does)."""
        wireloss.check_percent(percent)  # here, before anything runs in the host
        self.run(host, [sys.executable, "-m", "weftnet.router.tools.wireloss", str(percent),
                        *self.interfaces(host)])

    def count_underlay(self, host: str) -> None:
        """Count (from now on, from zero) the bytes crossing ``host``'s underlay interfaces,
        both directions; ``underlay_bytes`` reads the count."""
        self._check_host(host)
        self._delete_rules(host, "count")
        self._ensure_table(host)
        t, dev = f"inet {NFT_TABLE}", self._underlay(host)
        with contextlib.suppress(CommandFailed):
            self._nft(host, "delete", "counter", "inet", NFT_TABLE, "underlay")
        self._nft(host, script=(
            f"add counter {t} underlay\n"
            f'add rule {t} input iifname {dev} counter name "underlay" comment "count"\n'
            f'add rule {t} output oifname {dev} counter name "underlay" comment "count"\n'
        ))  # fmt: skip

    def underlay_bytes(self, host: str) -> int:
        """Bytes counted on ``host``'s underlay since ``count_underlay(host)``."""
        listing = json.loads(self._nft(host, "-j", "list", "counter", "inet", NFT_TABLE,
                                       "underlay"))
        for item in listing.get("nftables", []):
            if "counter" in item:
                return int(item["counter"]["bytes"])
        raise TestbedError(f"no underlay counter in {host}: call count_underlay first")

    # -- NAT gateways --

    def nat_flush(self, host: str) -> None:
        """Forget every mapping of ``host``'s NAT gateway (flush its conntrack table): the
        next datagram out gets a new mapping, as after a rebinding."""
        gw = self.gateway(host)
        if shutil.which("conntrack") is not None:
            self.run(gw, ["conntrack", "-F"], timeout=30)
        else:
            self.run(gw, [sys.executable, "-c", FLUSH_CONNTRACK_PY], timeout=30)

    def nat_rebind(self, host: str, ports: tuple[int, int], udp_port: int = 6783) -> None:
        """A NAT rebinding: ``host``'s gateway takes its public ports from ``ports`` from now
        on and forgets every mapping, so the host's flows reappear from other ports. A plain
        NAT stays what it was (endpoint-independent): UDP from ``udp_port`` (the router's)
        gets ``ports[0]`` for every destination; a symmetric one a random port per flow."""
        net = private_net(self.hosts.index(host) + 1)
        symmetric = self.nat[host].symmetric
        self._nft(self.gateway(host), script=(
            f"flush table ip {NAT_TABLE}\n"
            + nat_ruleset(net, symmetric=symmetric, ports=ports,
                          pin=None if symmetric else {udp_port: ports[0]})))
        self.nat_flush(host)

    def nat_timeouts(self, host: str, udp: int | None = None,
                     udp_stream: int | None = None) -> None:
        """Set conntrack's UDP timeouts (seconds) in ``host``'s NAT gateway only: an idle
        mapping expires after that long (``udp``: one-way flows, ``udp_stream``: two-way)."""
        self._sysctl(self.gateway(host), timeout_sysctls(udp, udp_stream))

    # -- partitions (faults tests) --

    def _all_addresses(self, host: str) -> list[str]:
        own = [self.address(host, seg) for seg in self.host_segments(host)]
        if self.underlay == "dual" and host not in self.nat:
            own += [self.address6(host, seg) for seg in self.host_segments(host)]
        return own + ([self.public_address(host)] if host in self.nat else [])

    def partition(self, a: str, b: str) -> None:
        """Cut hosts ``a`` and ``b`` apart: every packet between their underlay addresses is
        dropped (TCP and UDP alike, both directions, rules in both hosts) until ``heal``.
        Their traffic with other hosts, and loopback, is untouched."""
        if a == b:
            raise ValueError(f"cannot partition {a!r} from itself")
        for here, there in ((a, b), (b, a)):
            self._check_host(there)
            self._delete_rules(here, f"partition-{there}")
            self._ensure_table(here)
            t, dev = f"inet {NFT_TABLE}", self._underlay(here)
            tag = f'comment "partition-{there}"'
            addrs = self._all_addresses(there)
            for fam in ("ip", "ip6"):
                mine = [a for a in addrs if (":" in a) == (fam == "ip6")]
                if mine:
                    a = "{ " + ", ".join(mine) + " }"
                    self._nft(here, script=(
                        f"add rule {t} input iifname {dev} {fam} saddr {a} drop {tag}\n"
                        f"add rule {t} output oifname {dev} {fam} daddr {a} drop {tag}\n"))

    def isolate(self, host: str) -> None:
        """``partition`` ``host`` from every other host of the testbed."""
        for other in self.hosts:
            if other != host:
                self.partition(host, other)

    def heal(self, a: str, b: str | None = None) -> None:
        """Undo ``partition(a, b)``; with ``b`` None, every partition that involves ``a``."""
        others = [h for h in self.hosts if h != a] if b is None else [b]
        for other in others:
            self._check_host(other)
            self._delete_rules(a, f"partition-{other}")
            self._delete_rules(other, f"partition-{a}")

    # -- teardown --

    def _check_open(self) -> None:
        if self._closed:
            raise TestbedError("the testbed is closed")

    def release(self) -> None:
        """Stop owning the hosts: they stay up, ``close()`` does nothing from now on.

        The ownership record stays, naming this process; once it exits, ``sweep_stale``
        with a pattern matching the prefix removes the hosts.
        """
        with self._lock:
            self._released = self._closed = True
        atexit.unregister(self.close)

    def close(self) -> None:
        """Kill every process in the namespaces, delete them and the temp dir. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        with sigint_deferred():
            errors: list[str] = []
            try:
                kill_namespace_processes(self._created)
                for proc in self._popens:
                    if proc.poll() is None:
                        proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=KILL_GRACE)
                errors += delete_namespaces(self._created)
            except Exception as exc:  # keep going: the temp dir and record must still go
                errors.append(str(exc))
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            if self._claimed and not errors:
                with contextlib.suppress(FileNotFoundError):
                    record_path(self.prefix).unlink()
        if errors:
            raise TestbedError("cleanup incomplete: " + "; ".join(errors))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Testbed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "released" if self._released else "closed" if self._closed else "up"
        return f"<Testbed {self.prefix} hosts={list(self.hosts)} {state}>"
