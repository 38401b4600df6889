"""``weft-net``: the CNI plugin, a thin client of the router's HTTP API.

Theory of operation
-------------------
A container runtime executes the plugin once per operation: what to do and to which
container in environment variables, the network configuration as JSON on stdin, the
answer as JSON on stdout (CNI spec 1.0.0 and 1.1.0; results in the 0.4.0 form too)::

    runtime ─ CNI_COMMAND CNI_CONTAINERID CNI_NETNS CNI_IFNAME CNI_ARGS CNI_PATH, env
            └ stdin {"cniVersion", "name", "type": "weft-net", "ipam"?, "http_addr"?, ...}
    weft-net ─ parse (pure: Invocation, NetConf) ─ wait for the router (WEFT_CNI_TIMEOUT)
       ADD    GET /report (DNS, subnets) ─ POST /attach {container: CNI_NETNS, ifname,
              addresses, name} ─ GET /ps (its MAC) ─ routes ─ result on stdout
       DEL    POST /detach {container, ifname, missing_ok} (the router frees the addresses)
       CHECK  the namespace's interface (up, MAC, addresses, routes) and the router's record
       VERSION / STATUS (1.1: is the router up?) / GC (1.1: nothing to collect, see below)
    exit 0; or an error object {"cniVersion", "code", "msg", "details"} on stdout, exit 1

Identity. The router keys an attachment (and its IPAM addresses and DNS names) by the
namespace path the runtime gives, ``CNI_NETNS``; ADD and DEL of one container name the
same path. DEL without ``CNI_NETNS`` takes the sandbox of ``prevResult``; without either,
the namespace is gone already, and the router frees by itself the addresses of namespaces
that disappear (after its grace period; at its next launch if it was down), which is also
why GC has nothing to do. DEL frees at once and is idempotent: a namespace that no longer
exists, or an interface already detached, is success.

Addresses, first found wins: ``runtimeConfig.ips`` (capability "ips"), ``args.cni.ips``,
``CNI_ARGS`` ``IP=a,b``, ``ipam.addresses`` (``["IP/LEN"]`` or ``[{"address": "IP/LEN"}]``),
``ipam.subnet`` (one address allocated inside it, the CLI's ``net:CIDR``); else one from
the router's default subnet. An address without ``/LEN`` takes the length of the subnet
that holds it (``ipam.subnet``, the router's default subnet or range).

DNS name: ``args.cni.name``, ``args.name``, ``runtimeConfig.name``, else ``K8S_POD_NAME``
from ``CNI_ARGS`` (podman passes the container's name there), qualified with the
router's domain; extra names from ``runtimeConfig.aliases`` (podman's "aliases"
capability). No name: no DNS record. The result's ``dns`` points at the router's DNS
server (it listens on that address inside every attached namespace).

Labels for network policy: ``args.cni.labels``, ``args.labels``, ``CNI_ARGS`` ``LABELS=k=v,..``
(``router/programs/cnilabels.py``).

Gateway. When this host is on the network (``weft expose``: an address of the ``weft``
bridge inside the container's subnet), that address is the container's gateway and it
gets a default route through it, unless it has one already (another network's), as with
Weave Net's plugin. ``ipam.routes`` (``[{"dst": CIDR, "gw"?: IP}]``) are added too.

The protocol itself (parsing, results, error objects) is pure and lives in ``cnispec``;
this module adds the router, the machine and the command line.

Codes: the spec's (1 version, 2 unsupported field, 3 no such container, 4 environment,
6 decoding, 7 network config, 11 try again later: no router, 50 STATUS: not available);
999: the router refused or failed (its one-line reason is ``msg``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import weftnet
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.address import DEFAULT_HTTP_ADDR, parse_http_addr
from weftnet.router.api.client import ApiClient, Interrupted, NotRunning
from weftnet.router.programs.cnilabels import cni_labels
from weftnet.router.programs.cnispec import (
    DEFAULT_ROUTE,
    DEFAULT_ROUTE6,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_IO,
    ERR_NOT_AVAILABLE,
    ERR_ROUTER,
    ERR_TRY_AGAIN_LATER,
    ERR_UNKNOWN_CONTAINER,
    FALLBACK_VERSION,
    PLUGIN,
    SUPPORTED_VERSIONS,
    Addr,
    CniError,
    Invocation,
    Json,
    Net,
    Route,
    address_specs,
    build_result,
    check_prev_result,
    config_version,
    dns_names,
    dns_of_report,
    error_object,
    expected_of_prev,
    ipam_routes,
    parse_invocation,
    parse_netconf,
    prev_sandbox,
    reply_version,
    report_subnets,
    require,
    unsupported_args,
    version_info,
)

BRIDGE = "weft"                   # netdev.BRIDGE, without importing pyroute2 for it
ROUTER_TIMEOUT = 10.0             # default of WEFT_CNI_TIMEOUT: how long to wait for a router
STATUS_TIMEOUT = 2.0              # STATUS answers quickly
ATTACH_TIMEOUT = 90.0             # IPAM may have to reach consensus first
POLL_INTERVAL = 0.1

T = TypeVar("T")


# --- the host: namespaces, the bridge, routes -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    mac: str
    up: bool
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]


class Host(Protocol):
    """What the plugin needs of the machine besides the router (tests give a fake)."""

    def netns_exists(self, path: str) -> bool: ...

    def bridge_addresses(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]: ...

    def interface(self, netns: str, ifname: str) -> Interface | None: ...

    def routes(self, netns: str) -> list[Route]: ...

    def add_route(self, netns: str, ifname: str, dst: Net, gw: Addr | None) -> None: ...


class RealHost:
    """The machine: ``ip`` for the bridge's addresses (fast: no netlink library to import
    on every ADD), pyroute2 inside the container namespace when there is work there."""

    def netns_exists(self, path: str) -> bool:
        return os.path.exists(path)

    def bridge_addresses(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        ip = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip")
                                         if os.path.exists(p)), None)
        if ip is None:
            return []
        try:
            proc = subprocess.run([ip, "-j", "addr", "show", "dev", BRIDGE],
                                  capture_output=True, text=True, timeout=10, check=False)
            data = json.loads(proc.stdout or "[]")
        except (OSError, ValueError, subprocess.SubprocessError):
            return []
        out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        for link in data if isinstance(data, list) else []:
            for info in link.get("addr_info", []) if isinstance(link, dict) else []:
                if not isinstance(info, dict) or info.get("scope") not in (None, "global"):
                    continue   # the bridge's own fe80:: is no container's gateway
                try:
                    out.append(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
                except (KeyError, TypeError, ValueError):
                    continue
        return out

    def interface(self, netns: str, ifname: str) -> Interface | None:
        import socket

        def look() -> Interface | None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=ifname)
                if not found:
                    return None
                link = ipr.get_links(found[0])[0]
                addrs: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
                    ipaddress.ip_interface(f"{m.get('address')}/{m['prefixlen']}")
                    for family in (socket.AF_INET, socket.AF_INET6)
                    for m in ipr.get_addr(family=family, index=found[0])
                    if m.get("scope") == 0]   # not the kernel's fe80::
                return Interface(ifname, str(link.get("address")), link.get("state") == "up",
                                 tuple(addrs))

        return self._in(netns, look)

    def routes(self, netns: str) -> list[Route]:
        import socket

        def look() -> list[Route]:
            from pyroute2 import IPRoute

            out: list[Route] = []
            with IPRoute() as ipr:
                for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                    for r in ipr.get_routes(family=family, table=254):
                        dst = r.get("dst") or anywhere
                        gw = r.get("gateway")
                        out.append((ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False),
                                    ipaddress.ip_address(gw) if gw else None))
            return out

        return self._in(netns, look)

    def add_route(self, netns: str, ifname: str, dst: Net, gw: Addr | None) -> None:
        def add() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=ifname)
                if not found:
                    raise CniError(ERR_ROUTER, f"{ifname} vanished from {netns}")
                spec: dict[str, Any] = {"dst": str(dst), "oif": found[0]}
                if dst.version == 6:
                    import socket
                    spec["family"] = socket.AF_INET6
                if gw is not None:
                    spec["gateway"] = str(gw)
                ipr.route("replace", **spec)

        self._in(netns, add)

    @staticmethod
    def _in(netns: str, fn: Callable[[], T]) -> T:
        from pyroute2.netlink.exceptions import NetlinkError

        from weftnet.router.host.netdev import NetdevError, run_in_netns

        try:
            return run_in_netns(netns, fn)
        except NetlinkError as exc:
            raise CniError(ERR_ROUTER, f"netlink in {netns}: {os.strerror(exc.code)}") from None
        except NetdevError as exc:
            raise CniError(ERR_UNKNOWN_CONTAINER, str(exc)) from None
        except OSError as exc:
            raise CniError(ERR_IO, f"cannot enter {netns}: {exc.strerror or exc}") from None


# --- the plugin ----------------------------------------------------------------------------


class Client(Protocol):
    """``api.client.ApiClient``'s surface (tests give a fake)."""

    where: str

    def call(self, method: str, path: str, body: Any = None, *, timeout: float = ...) -> Any: ...


@dataclass
class Plugin:
    inv: Invocation
    conf: Json
    version: str
    client: Client
    host: Host
    timeout: float = ROUTER_TIMEOUT
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    # --- the router ---

    def _call(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        try:
            return self.client.call(method, path, body, timeout=timeout)
        except NotRunning as exc:
            raise CniError(ERR_TRY_AGAIN_LATER, exc.reason) from None
        except (LocalProtocolError, Interrupted) as exc:
            raise CniError(ERR_ROUTER, f"router: {exc.reason}") from None

    def router_up(self, timeout: float) -> str | None:
        """Wait up to ``timeout`` s for the router's API; None when it answers, else why not."""
        deadline = self.clock() + timeout
        while True:
            try:
                self.client.call("GET", "/version", timeout=max(0.5, min(2.0, timeout)))
                return None
            except (NotRunning, Interrupted, LocalProtocolError) as exc:
                reason = exc.reason
            if self.clock() + POLL_INTERVAL > deadline:
                return reason
            self.sleep(POLL_INTERVAL)

    def wait_router(self) -> None:
        reason = self.router_up(self.timeout)
        if reason is not None:
            raise CniError(ERR_TRY_AGAIN_LATER,
                           f"no weft router answers on {self.client.where} (waited "
                           f"{self.timeout:g} s): start it with `weft launch`", reason)

    # --- commands ---

    def add(self) -> Json:
        inv = self.inv
        require(inv, netns=True)
        unsupported_args(self.conf, inv.args)
        ipam_routes(self.conf)       # refuse a bad ipam config before attaching, not after
        check_prev_result(self.conf)
        names = dns_names(self.conf, inv.args)
        labels = cni_labels(self.conf, inv.args)   # network policy (router/programs/cnilabels.py)
        if not self.host.netns_exists(inv.netns):
            raise CniError(ERR_UNKNOWN_CONTAINER, f"no network namespace {inv.netns}")
        self.wait_router()
        report = self._call("GET", "/report")
        if not isinstance(report, dict):
            raise CniError(ERR_ROUTER, "the router's report is not a JSON object")
        specs = address_specs(self.conf, inv.args, report_subnets(report))
        dns = dns_of_report(report)
        if names and not dns:
            names = []  # the router runs with --no-dns: no names to give
        body: dict[str, Any] = {"container": inv.netns, "addresses": specs, "ifname": inv.ifname,
                                "name": names[0] if names else None, "without_dns": not names}
        if labels:
            body["labels"] = labels
        answer = self._call("POST", "/attach", body, timeout=ATTACH_TIMEOUT)
        cidrs = answer.get("cidrs") if isinstance(answer, dict) else None
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise CniError(ERR_ROUTER, "the router's answer to attach is not understood")
        try:
            return self._finish_add(cidrs, names, dns)
        except CniError:
            self._undo_add()
            raise

    def _finish_add(self, cidrs: list[str], names: list[str], dns: Json) -> Json:
        inv = self.inv
        for alias in names[1:]:
            self._call("POST", "/dns/add", {"addresses": [], "container": inv.netns, "name": alias})
        mac = self._recorded(inv.netns, inv.ifname)[0]
        gateways, routes = self._routes(cidrs)
        conf_dns = self.conf.get("dns")
        if isinstance(conf_dns, dict) and conf_dns:
            dns = conf_dns  # the administrator's word for this network
        return build_result(self.version, ifname=inv.ifname, mac=mac, sandbox=inv.netns,
                            cidrs=cidrs, gateways=gateways, routes=routes, dns=dns,
                            prev=self.conf.get("prevResult"))

    def _undo_add(self) -> None:
        try:
            self.client.call("POST", "/detach", {"container": self.inv.netns, "addresses": [],
                                                 "ifname": self.inv.ifname, "missing_ok": True},
                             timeout=ATTACH_TIMEOUT)
        except Exception as exc:  # the runtime will call DEL as well
            print(f"{PLUGIN}: undoing the failed ADD: {exc}", file=sys.stderr)

    def _recorded(self, netns: str, ifname: str) -> tuple[str, list[str]]:
        """The router's record of this container: (MAC, CIDRs)."""
        answer = self._call("GET", "/ps")
        for entry in answer.get("containers", []) if isinstance(answer, dict) else []:
            if (isinstance(entry, dict) and entry.get("container") == netns
                    and entry.get("ifname", "ethwe") == ifname):
                return str(entry.get("mac")), [str(c) for c in entry.get("cidrs", [])]
        raise CniError(ERR_ROUTER, f"the router has no record of {ifname} in {netns}")

    def _routes(self, cidrs: list[str]) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
        """Gateways (the host's bridge address in each subnet) and the routes added."""
        inv = self.inv
        bridge = self.host.bridge_addresses()
        gateways: dict[str, str] = {}
        first_gw: dict[int, Addr] = {}   # by IP version: the default route of each family
        for cidr in cidrs:
            iface = ipaddress.ip_interface(cidr)
            for addr in bridge:
                if addr.version == iface.version and addr.ip in iface.network and addr.ip != iface.ip:
                    gateways[cidr] = str(addr.ip)
                    first_gw.setdefault(iface.version, addr.ip)
                    break
        wanted = ipam_routes(self.conf)
        defaults: tuple[Net, ...] = (DEFAULT_ROUTE, DEFAULT_ROUTE6)
        for default in reversed(defaults):
            gw_of = first_gw.get(default.version)
            if gw_of is not None and not any(dst == default for dst, _ in wanted):
                wanted.insert(0, (default, gw_of))
        added: list[tuple[str, str | None]] = []
        if wanted:
            have = {dst for dst, _ in self.host.routes(inv.netns)}
            for dst, gw in wanted:
                gw = gw or first_gw.get(dst.version)
                if dst in defaults and dst in have:
                    continue  # another network's default route stays (the spec says skip)
                self.host.add_route(inv.netns, inv.ifname, dst, gw)
                added.append((str(dst), None if gw is None else str(gw)))
        return gateways, added

    def delete(self) -> None:
        inv = self.inv
        require(inv, netns=False)
        netns = inv.netns or prev_sandbox(self.conf, inv.ifname)
        if not netns:
            return  # nothing names the namespace: it is gone, and the router frees its addresses
        reason = self.router_up(self.timeout)
        if reason is not None:
            if not self.host.netns_exists(netns):
                return  # the router frees the addresses of vanished namespaces at its launch
            raise CniError(ERR_TRY_AGAIN_LATER,
                           f"no weft router answers on {self.client.where} to detach {netns} "
                           f"and free its addresses (waited {self.timeout:g} s)", reason)
        self._call("POST", "/detach", {"container": netns, "addresses": [],
                                       "ifname": inv.ifname, "missing_ok": True},
                   timeout=ATTACH_TIMEOUT)

    def check(self) -> None:
        inv = self.inv
        require(inv, netns=True)
        mac, addrs, routes = expected_of_prev(self.conf, inv.ifname, inv.netns)
        if not self.host.netns_exists(inv.netns):
            raise CniError(ERR_UNKNOWN_CONTAINER, f"no network namespace {inv.netns}")
        self.wait_router()
        _, recorded = self._recorded(inv.netns, inv.ifname)
        iface = self.host.interface(inv.netns, inv.ifname)
        if iface is None:
            raise CniError(ERR_ROUTER, f"{inv.netns} has no interface {inv.ifname}")
        if not iface.up:
            raise CniError(ERR_ROUTER, f"{inv.ifname} in {inv.netns} is down")
        if mac is not None and iface.mac.lower() != mac.lower():
            raise CniError(ERR_ROUTER, f"{inv.ifname} in {inv.netns} has MAC {iface.mac}, not {mac}")
        have = {str(a) for a in iface.addresses}
        for addr in addrs:
            if addr not in have:
                raise CniError(ERR_ROUTER, f"{inv.ifname} in {inv.netns} lacks address {addr}")
            if addr not in recorded:
                raise CniError(ERR_ROUTER, f"the router has no record of {addr} on {inv.netns}")
        if routes:
            table = self.host.routes(inv.netns)
            for dst, gw in routes:
                try:
                    want: Route = (ipaddress.ip_network(dst), ipaddress.ip_address(gw) if gw else None)
                except ValueError:
                    continue  # not a route we could have added
                if want not in table and not (want[1] is None and any(d == want[0] for d, _ in table)):
                    raise CniError(ERR_ROUTER, f"{inv.netns} lacks the route to {dst}"
                                   + (f" via {gw}" if gw else ""))

    def status(self) -> None:
        reason = self.router_up(min(self.timeout, STATUS_TIMEOUT))
        if reason is not None:
            raise CniError(ERR_NOT_AVAILABLE, f"no weft router answers on {self.client.where}",
                           reason)


# --- main ------------------------------------------------------------------------------------


USAGE = f"""usage: {PLUGIN} [--http-addr ADDR:PORT]

The weftnet CNI plugin (CNI {', '.join(SUPPORTED_VERSIONS)}): a container runtime runs it
with CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC and friends in the environment and the
network configuration on stdin, e.g.
  {{"cniVersion": "1.0.0", "name": "weft", "type": "weft-net"}}
Optional keys: "ipam": {{"subnet": CIDR}} or {{"addresses": ["IP/LEN"]}}, "ipam.routes",
"http_addr": "ADDR:PORT" (else --http-addr, env WEFT_HTTP_ADDR, 127.0.0.1:6784).
Env WEFT_CNI_TIMEOUT: seconds to wait for the router (default {ROUTER_TIMEOUT:g}).
"""


def _http_addr(argv: Sequence[str], conf: Json, environ: Mapping[str, str]) -> tuple[str, int]:
    given: list[tuple[str, str]] = []
    args = list(argv)
    while args:
        word = args.pop(0)
        if word == "--http-addr" and args:
            given.append(("--http-addr", args.pop(0)))
        elif word.startswith("--http-addr="):
            given.append(("--http-addr", word.split("=", 1)[1]))
        else:
            raise CniError(ERR_INVALID_ENV, f"unknown argument {word[:40]!r} (see {PLUGIN} --help)")
    if conf.get("http_addr") is not None:
        value = conf["http_addr"]
        if not isinstance(value, str):
            raise CniError(ERR_INVALID_CONFIG, "http_addr must be a string ADDR:PORT")
        given.append(("http_addr", value))
    if environ.get("WEFT_HTTP_ADDR"):
        given.append(("WEFT_HTTP_ADDR", environ["WEFT_HTTP_ADDR"]))
    if not given:
        return DEFAULT_HTTP_ADDR
    what, text = given[0]
    try:
        return parse_http_addr(text)
    except LocalProtocolError as exc:
        code = ERR_INVALID_CONFIG if what == "http_addr" else ERR_INVALID_ENV
        raise CniError(code, f"{what}: {exc.reason}") from None


def _timeout(environ: Mapping[str, str]) -> float:
    text = environ.get("WEFT_CNI_TIMEOUT", "").strip()
    if not text:
        return ROUTER_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise CniError(ERR_INVALID_ENV, f"WEFT_CNI_TIMEOUT {text[:20]!r}: expected seconds, 0..3600")
    return value


def run(argv: Sequence[str], environ: Mapping[str, str], stdin: bytes,
        make_client: Callable[[tuple[str, int]], Client] | None = None,
        host: Host | None = None) -> tuple[int, str]:
    """One invocation: (exit status, what goes to stdout)."""
    conf: Json | None = None
    try:
        inv = parse_invocation(environ)
        conf = parse_netconf(stdin) if stdin.strip() or inv.command != "VERSION" else {}
        if inv.command == "VERSION":
            asked = conf.get("cniVersion")
            return 0, json.dumps(version_info(asked if asked in SUPPORTED_VERSIONS
                                              else SUPPORTED_VERSIONS[-1]))
        version = config_version(conf)
        if inv.command == "GC":
            return 0, ""  # the router frees what vanished namespaces held (module docstring)
        if make_client is None:
            make_client = ApiClient
        plugin = Plugin(inv, conf, version, make_client(_http_addr(argv, conf, environ)),
                        host or RealHost(), timeout=_timeout(environ))
        if inv.command == "ADD":
            return 0, json.dumps(plugin.add())
        if inv.command == "DEL":
            plugin.delete()
        elif inv.command == "CHECK":
            plugin.check()
        else:
            plugin.status()
        return 0, ""
    except CniError as exc:
        return 1, json.dumps(error_object(reply_version(conf), exc.code, exc.msg, exc.details))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``weft-net``; never a traceback: every failure is an error object."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(USAGE)
        return 0
    if any(a in ("-V", "--version") for a in args):
        print(f"{PLUGIN} {weftnet.__version__} (CNI {', '.join(SUPPORTED_VERSIONS)})")
        return 0
    try:
        stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
        status, out = run(args, os.environ, stdin)
    except KeyboardInterrupt:
        status, out = 1, json.dumps(error_object(FALLBACK_VERSION, ERR_ROUTER, "interrupted"))
    except Exception as exc:  # a bug of ours: still an error object, the runtime reads stdout
        if os.environ.get("WEFT_DEBUG"):
            import traceback
            traceback.print_exc()
        status, out = 1, json.dumps(error_object(
            FALLBACK_VERSION, ERR_ROUTER, f"internal error: {type(exc).__name__}: {exc}"))
    if out:
        print(out)
    return status


if __name__ == "__main__":
    sys.exit(main())
