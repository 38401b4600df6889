"""The CNI protocol, pure: parsing what a runtime passes (environment, network
configuration), building results and error objects, per spec version (0.4.0, 1.0.0,
1.1.0). No I/O: ``weftnet.router.programs.cni`` (the ``weft-net`` plugin) does that.

Error codes are the spec's well-known ones (1..99); 999 is ours: the router refused or
failed, or CHECK found a difference (its reason is the message).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from weftnet.router.api.text import ifname_ok

PLUGIN = "weft-net"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
FALLBACK_VERSION = "1.0.0"        # of error objects when the config names none we know
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Well-known error codes (CNI spec, "Error codes")
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
# ours (100+ are the plugin's): the router refused, failed, or CHECK found a difference
ERR_ROUTER = 999

DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")
DEFAULT_ROUTE6 = ipaddress.IPv6Network("::/0")

Json = dict[str, Any]
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address
Route = tuple[Net, Addr | None]


class CniError(Exception):
    """An error the runtime gets as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = " ".join(msg.split())
        self.details = details


def error_object(version: str, code: int, msg: str, details: str = "") -> Json:
    out: Json = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        out["details"] = details
    return out


# --- parsing (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """What the environment says: the command and the container it is about."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: str = ""


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V`` (``IgnoreUnknown=1;K8S_POD_NAME=web``)."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {pair[:60]!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_invocation(environ: Mapping[str, str]) -> Invocation:
    """The CNI_* variables; which of them a command needs is checked by ``require``."""
    command = environ.get("CNI_COMMAND", "").strip()
    if not command:
        raise CniError(ERR_INVALID_ENV, "CNI_COMMAND is not set: weft-net is a CNI plugin, "
                       "run by a container runtime (see weft-net --help)")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND {command[:40]!r} is not one of "
                       + ", ".join(COMMANDS))
    return Invocation(command=command,
                      container_id=environ.get("CNI_CONTAINERID", "").strip(),
                      netns=environ.get("CNI_NETNS", "").strip(),
                      ifname=environ.get("CNI_IFNAME", "").strip(),
                      args=parse_cni_args(environ.get("CNI_ARGS", "")),
                      path=environ.get("CNI_PATH", ""))


def require(inv: Invocation, *, netns: bool) -> None:
    """ADD and CHECK need a container, a namespace and an interface name; DEL all but the
    namespace (the spec lets it be empty when the namespace is gone)."""
    missing = [name for name, value in (("CNI_CONTAINERID", inv.container_id),
                                        ("CNI_IFNAME", inv.ifname)) if not value]
    if netns and not inv.netns:
        missing.append("CNI_NETNS")
    if missing:
        raise CniError(ERR_INVALID_ENV, f"{inv.command} needs {', '.join(missing)} (not set)")
    if inv.netns and not inv.netns.startswith("/"):
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {inv.netns[:80]!r} is not a path to a "
                       "network namespace")
    if not ifname_ok(inv.ifname):
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {inv.ifname[:40]!r}: not an interface name "
                       "(1-15 characters, no '/', ':' or spaces)")


def parse_netconf(raw: bytes) -> Json:
    """The network configuration on stdin: a JSON object."""
    try:
        conf = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(ERR_DECODE, f"the network configuration on stdin is not JSON: {exc}") from None
    except RecursionError:
        raise CniError(ERR_DECODE, "the network configuration on stdin is nested too deeply") from None
    if not isinstance(conf, dict):
        raise CniError(ERR_DECODE, "the network configuration on stdin is not a JSON object")
    return conf


def config_version(conf: Json) -> str:
    """The spec version to answer in; code 1 when we do not speak it."""
    version = conf.get("cniVersion")
    if version is None or version == "":
        raise CniError(ERR_INVALID_CONFIG, "the network configuration has no cniVersion")
    if not isinstance(version, str):
        raise CniError(ERR_INVALID_CONFIG, "cniVersion must be a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION,
                       f"CNI version {version[:20]} is not supported (weft-net speaks "
                       + ", ".join(SUPPORTED_VERSIONS) + ")")
    return version


def reply_version(conf: Json | None) -> str:
    """The version of an error object: the config's when we speak it."""
    version = conf.get("cniVersion") if conf is not None else None
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else FALLBACK_VERSION


def _object(conf: Json, key: str) -> Json:
    value = conf.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CniError(ERR_INVALID_CONFIG, f"{key} must be a JSON object")
    return value


def _dicts(container: Json, key: str, what: str) -> list[Json]:
    """The objects of the list ``container[key]`` (absent: none); other list items are not
    ours to understand and are skipped, but a value that is not a list is an error."""
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise CniError(ERR_INVALID_CONFIG, f"{what}.{key} must be a list")
    return [item for item in value if isinstance(item, dict)]


def check_prev_result(conf: Json) -> Json:
    """``prevResult`` (absent: {}): an object whose interfaces, ips and routes are lists."""
    prev = _object(conf, "prevResult")
    for key in ("interfaces", "ips", "routes"):
        _dicts(prev, key, "prevResult")
    return prev


def _cni_args(conf: Json) -> Json:
    """``args.cni`` (the conventions' place for ips, mac, name); ``args`` that are not
    objects are not ours to understand, so they count as absent."""
    args = conf.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    return cni if isinstance(cni, dict) else {}


def _strings(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise CniError(ERR_INVALID_CONFIG, f"{what} must be a list of addresses")
    out = []
    for item in value:
        if isinstance(item, dict):
            item = item.get("address")
        if not isinstance(item, str) or not item.strip():
            raise CniError(ERR_INVALID_CONFIG, f"{what}: expected IP/LEN strings")
        out.append(item.strip())
    return out


def check_ipam(conf: Json) -> Json:
    """``ipam``: our keys only; another IPAM plugin is not ours to call."""
    ipam = _object(conf, "ipam")
    kind = ipam.get("type")
    if kind is not None and kind not in ("weft", "weft-net", "weft-ipam"):
        raise CniError(ERR_UNSUPPORTED_FIELD,
                       f"ipam.type={str(kind)[:40]}: weft-net allocates addresses with the "
                       "router's IPAM; drop ipam.type and give ipam.subnet or ipam.addresses")
    return ipam


def address_specs(conf: Json, args: Mapping[str, str],
                  subnets: Sequence[Net] = ()) -> list[str]:
    """The ADDR specs to attach with (``IP/LEN``, ``net:CIDR``; empty: the default subnet).
    ``subnets`` give the length of a bare ``IP`` (after ``ipam.subnet``)."""
    ipam = check_ipam(conf)
    runtime = _object(conf, "runtimeConfig")
    cni_args = _cni_args(conf)
    subnet: Net | None = None
    if ipam.get("subnet") is not None:
        text = ipam["subnet"]
        try:
            subnet = ipaddress.ip_network(text) if isinstance(text, str) else None
        except ValueError:
            subnet = None
        if subnet is None:
            raise CniError(ERR_INVALID_CONFIG, f"ipam.subnet {str(text)[:40]!r} is not a "
                           "subnet (CIDR with the host bits zero, e.g. 10.32.1.0/24 or "
                           "fd00:1:2:3::/64)")
    wanted: list[str] = []
    for value, what in ((runtime.get("ips"), "runtimeConfig.ips"), (cni_args.get("ips"), "args.cni.ips"),
                        (args.get("IP"), "CNI_ARGS IP"), (ipam.get("addresses"), "ipam.addresses")):
        if value is not None and value != [] and value != "":
            wanted = _strings(value, what)
            break
    if not wanted:
        return [] if subnet is None else [f"net:{subnet}"]
    known = ([subnet] if subnet is not None else []) + list(subnets)
    return [_with_length(text, known) for text in wanted]


def _with_length(text: str, subnets: Sequence[Net]) -> str:
    if "/" in text:
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            raise CniError(ERR_INVALID_CONFIG, f"{text[:40]!r} is not an IP address with "
                           "prefix length") from None
        return str(iface)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise CniError(ERR_INVALID_CONFIG, f"{text[:40]!r} is not an IP address") from None
    for net in subnets:
        if ip.version == net.version and ip in net:
            return f"{ip}/{net.prefixlen}"
    raise CniError(ERR_INVALID_CONFIG, f"{ip}: give it with a prefix length (IP/LEN); it is in "
                   "no subnet weft-net knows")


def unsupported_args(conf: Json, args: Mapping[str, str]) -> None:
    """A fixed MAC cannot be honoured (interfaces get a stable MAC of their own): refuse
    rather than ignore it."""
    runtime = _object(conf, "runtimeConfig")
    cni_args = _cni_args(conf)
    for value, what in ((runtime.get("mac"), "runtimeConfig.mac"), (cni_args.get("mac"), "args.cni.mac"),
                        (args.get("MAC"), "CNI_ARGS MAC")):
        if value:
            raise CniError(ERR_UNSUPPORTED_FIELD, f"{what}={str(value)[:40]}: weft-net gives each "
                           "interface a stable MAC of its own; a fixed MAC is not supported")


def dns_names(conf: Json, args: Mapping[str, str]) -> list[str]:
    """The container's DNS names, the main one first (where each comes from: the
    docstring of ``weftnet.router.programs.cni``)."""
    runtime = _object(conf, "runtimeConfig")
    raw_args = conf.get("args")
    conf_args: Json = raw_args if isinstance(raw_args, dict) else {}
    cni_args = _cni_args(conf)
    names: list[str] = []
    for value, what in ((cni_args.get("name"), "args.cni.name"), (conf_args.get("name"), "args.name"),
                        (runtime.get("name"), "runtimeConfig.name")):
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise CniError(ERR_INVALID_CONFIG, f"{what} must be a non-empty string")
            names.append(value.strip())
            break
    else:
        pod = args.get("K8S_POD_NAME", "").strip()
        if pod and _label_ok(pod):   # a pod name that cannot be a host name gets none
            names.append(pod)
    aliases = runtime.get("aliases")
    if isinstance(aliases, dict):
        network = conf.get("name")
        mine = aliases.get(network) if isinstance(network, str) else None
        if isinstance(mine, list):
            names += [a.strip() for a in mine if isinstance(a, str) and a.strip()]
    return list(dict.fromkeys(names))


def _label_ok(text: str) -> bool:
    return 0 < len(text) <= 63 and all(c.isalnum() and c.isascii() or c in "-_" for c in text)


# --- results (pure) -----------------------------------------------------------------------


def dns_of_report(report: Json) -> Json:
    """The result's ``dns``: the router's server and domain (nothing with --no-dns)."""
    dns = report.get("dns")
    if not isinstance(dns, dict) or not isinstance(dns.get("address"), str):
        return {}
    out: Json = {"nameservers": [dns["address"]]}
    domain = dns.get("domain")
    if isinstance(domain, str) and domain.strip("."):
        out["domain"] = domain.rstrip(".")
        out["search"] = [domain.rstrip(".")]
    return out


def build_result(version: str, *, ifname: str, mac: str, sandbox: str, cidrs: Sequence[str],
                 gateways: Mapping[str, str] | None = None,
                 routes: Sequence[tuple[str, str | None]] = (), dns: Json | None = None,
                 prev: Json | None = None) -> Json:
    """A CNI result: ours appended to ``prev`` (the previous plugin's in a chain), in the
    form of ``version`` (0.4.0 ips carry ``"version": "4"`` or ``"6"``)."""
    prev = prev if isinstance(prev, dict) else {}
    interfaces = _dicts(prev, "interfaces", "prevResult")
    ips = _dicts(prev, "ips", "prevResult")
    out_routes = _dicts(prev, "routes", "prevResult")
    index = len(interfaces)
    interfaces.append({"name": ifname, "mac": mac, "sandbox": sandbox})
    for cidr in cidrs:
        entry: Json = {"address": cidr, "interface": index}
        if version == "0.4.0":
            entry = {"version": "6" if ":" in cidr else "4", **entry}
        gateway = (gateways or {}).get(cidr)
        if gateway is not None:
            entry["gateway"] = gateway
        ips.append(entry)
    for dst, gw in routes:
        out_routes.append({"dst": dst} if gw is None else {"dst": dst, "gw": gw})
    result: Json = {"cniVersion": version, "interfaces": interfaces, "ips": ips}
    if out_routes:
        result["routes"] = out_routes
    prev_dns = prev.get("dns")
    if isinstance(prev_dns, dict) and prev_dns:
        result["dns"] = prev_dns
    elif dns:
        result["dns"] = dns
    return result


def version_info(version: str) -> Json:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def prev_sandbox(conf: Json, ifname: str) -> str:
    """The namespace path of our interface in ``prevResult`` ("" when there is none)."""
    prev = conf.get("prevResult")
    if not isinstance(prev, dict):
        return ""
    interfaces = prev.get("interfaces")  # DEL is lenient: garbage here names nothing
    for iface in interfaces if isinstance(interfaces, list) else []:
        if (isinstance(iface, dict) and iface.get("name") == ifname
                and isinstance(iface.get("sandbox"), str)):
            return str(iface["sandbox"])
    return ""


def expected_of_prev(conf: Json, ifname: str, netns: str) -> tuple[str | None, list[str],
                                                                   list[tuple[str, str | None]]]:
    """What CHECK verifies, from ``prevResult``: our interface's MAC, its addresses, routes."""
    prev = conf.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "CHECK needs prevResult (the result of ADD)")
    interfaces = prev.get("interfaces")
    index = None
    mac = None
    for i, iface in enumerate(interfaces if isinstance(interfaces, list) else []):
        if isinstance(iface, dict) and iface.get("name") == ifname and iface.get("sandbox") in (netns, None):
            index, mac = i, iface.get("mac") if isinstance(iface.get("mac"), str) else None
    if index is None:
        raise CniError(ERR_ROUTER, f"prevResult has no interface {ifname} in {netns}")
    addrs = [str(ip.get("address")) for ip in _dicts(prev, "ips", "prevResult")
             if ip.get("interface") == index]
    routes: list[tuple[str, str | None]] = []
    for r in _dicts(prev, "routes", "prevResult"):
        if isinstance(r.get("dst"), str):
            gw = r.get("gw")
            routes.append((r["dst"], gw if isinstance(gw, str) else None))
    return mac, addrs, routes


def ipam_routes(conf: Json) -> list[Route]:
    """``ipam.routes``: ``[{"dst": CIDR, "gw"?: IP}]``."""
    routes = check_ipam(conf).get("routes")
    if routes is None:
        return []
    if not isinstance(routes, list):
        raise CniError(ERR_INVALID_CONFIG, 'ipam.routes: expected [{"dst": CIDR, "gw": IP}, ...]')
    return [route_of(entry) for entry in routes]


def route_of(entry: Any) -> Route:
    if (not isinstance(entry, dict) or not isinstance(entry.get("dst"), str)
            or not isinstance(entry.get("gw"), (str, type(None)))):
        raise CniError(ERR_INVALID_CONFIG, 'ipam.routes: expected [{"dst": CIDR, "gw": IP}, ...]')
    try:
        dst = ipaddress.ip_network(entry["dst"])
        gw = entry.get("gw")
        via = None if gw is None else ipaddress.ip_address(gw)
        if via is not None and via.version != dst.version:
            raise ValueError("gateway of the other family")
        return dst, via
    except (ValueError, TypeError):
        raise CniError(ERR_INVALID_CONFIG, f"ipam.routes: bad route {json.dumps(entry)[:80]}") from None


def report_subnets(report: Json) -> list[Net]:
    """The subnets a bare IP may lie in: the default subnet and range of IPAM, of each
    family (``ipam.ipv6``: the IPv6 allocator's, with --ipalloc-range-v6)."""
    ipam = report.get("ipam")
    v6 = ipam.get("ipv6") if isinstance(ipam, dict) else None
    out: list[Net] = []
    for section in (ipam, v6):
        for key in ("default_subnet", "range"):
            try:
                out.append(ipaddress.ip_network(section[key]))  # type: ignore[index]
            except (KeyError, TypeError, ValueError):
                continue
    return out
