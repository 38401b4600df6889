"""Host plumbing over netlink: the ``weft`` bridge, veth pairs into containers, namespaces.

Theory of operation
-------------------
The router runs inside its host's network namespace. There it owns one Linux bridge,
``weft``, whose ports are its TAP device (``weft-tap``, see ``router/dataplane/tap.py``), later a VXLAN
device, and one veth end per attached container::

     host namespace (the router's)                  container namespace (CONTAINER)
    ┌──────────────────────────────────────┐        ┌────────────────────────────┐
    │  weft-tap ─┐                         │        │                            │
    │            ├── weft (bridge, MTU m)  │        │   ethwe  MTU m, MAC random │
    │ vethwepl…──┘          ▲              │  veth  │   10.32.0.5/12 ...         │
    │     └────────────────────────────────┼────────┼──┘   lo up                 │
    └──────────────────────────────────────┘        └────────────────────────────┘

``attach`` creates the pair in one netlink request with its peer end born inside the
container namespace (``IFLA_NET_NS_FD``), so no half-made interface ever shows up in a
namespace it does not belong to. The host end's name, ``vethwepl`` + 7 hex digits of a
hash of the namespace identity (st_dev/st_ino of its nsfs file), is stable: attaching the
same namespace again, under a name, a PID or a path, finds the same pair and only adds the
missing addresses. The container end's MAC (locally administered, unicast) is random, not
derived from that identity: the kernel reuses a freed namespace's inode number and every
host numbers its own namespaces alike, so a derived MAC would repeat across a mesh.
Deleting a namespace destroys the pair with it.

Every function works on "our" namespace: the current one of this process unless a
``netns`` argument names another. Another namespace is entered by a short-lived thread
(``run_in_netns``): ``setns(2)`` with ``CLONE_NEWNET`` changes only the calling thread,
and a socket (netlink, UDP, a TUN file) stays in the namespace it was created in, so the
thread creates it and hands it back; the process itself never moves. Nothing here shells
out to ``ip``.

Errors are ``NetdevError`` with a one-line message meant for users (the CLI prints it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

__all__ = [
    "BRIDGE",
    "CONTAINER_IFNAME",
    "DEFAULT_MTU",
    "TAP",
    "VETH_PREFIX",
    "VXLAN",
    "VXLAN6",
    "Attached",
    "NetdevError",
    "NetnsRef",
    "attach",
    "detach",
    "enslave",
    "ensure_bridge",
    "link_exists",
    "list_attached",
    "netns_name",
    "random_mac",
    "remove_all",
    "resolve_netns",
    "run_in_netns",
    "set_mtu",
    "veth_name",
]

BRIDGE = "weft"
TAP = "weft-tap"
VXLAN = "weft-vxlan"
VXLAN6 = "weft-vxlan6"  # the fast path's VXLAN over an IPv6 underlay (one device per family)
CONTAINER_IFNAME = "ethwe"
IFA_F_NODAD = 0x02   # linux/if_addr.h: no duplicate address detection for this address
Cidr = ipaddress.IPv4Interface | ipaddress.IPv6Interface
VETH_PREFIX = "vethwepl"
DEFAULT_MTU = 1376
NETNS_RUN_DIR = Path("/var/run/netns")
BRIDGE_AGEING_TIME_S = 300
IFNAMSIZ = 16  # including the terminating NUL: names have at most 15 characters

_CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace (linux/nsfs.h)
_VETH_HASH_DIGITS = IFNAMSIZ - 1 - len(VETH_PREFIX)  # 7: "vethwepl" + 7 = 15 characters

T = TypeVar("T")
Key = tuple[int, int]


class NetdevError(RuntimeError):
    """Setting up a bridge, veth, TAP or socket failed; the message is one line for users."""


@dataclass(frozen=True, slots=True)
class NetnsRef:
    """A network namespace: ``path`` to its nsfs file, display ``name``, identity ``key``.

    ``name`` is what users and ``weft ps`` see: the name under /var/run/netns, ``pid:N``,
    or the path. ``key`` is (st_dev, st_ino) of the namespace, equal for every way of
    naming the same namespace.
    """

    path: str
    name: str
    key: Key


@dataclass(frozen=True, slots=True)
class Attached:
    """A container attached to the bridge: what ``attach``/``list_attached`` report.

    ``netns_path`` and ``key`` let a caller that persisted the record find the namespace
    again (``list_attached(known=...)``); both are empty for records built by hand.
    """

    container: str
    ifname: str
    host_ifname: str
    mac: str
    cidrs: tuple[Cidr, ...]
    netns_path: str = ""
    key: Key | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "ifname": self.ifname,
            "host_ifname": self.host_ifname,
            "mac": self.mac,
            "cidrs": [str(c) for c in self.cidrs],
            "netns_path": self.netns_path,
            "key": list(self.key) if self.key is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attached:
        key = data.get("key")
        return cls(
            container=str(data["container"]),
            ifname=str(data["ifname"]),
            host_ifname=str(data["host_ifname"]),
            mac=str(data["mac"]),
            cidrs=tuple(ipaddress.ip_interface(c) for c in data.get("cidrs", [])),
            netns_path=str(data.get("netns_path", "")),
            key=(int(key[0]), int(key[1])) if key else None,
        )


# What this process attached, by host-side veth name: a hint for list_attached().
_known: dict[str, NetnsRef] = {}
_known_lock = threading.Lock()


# --- namespaces -------------------------------------------------------------------------


def _ns_key(path: str) -> Key:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def netns_name(spec: str) -> str:
    """The name ``resolve_netns(spec)`` gives its namespace (``pid:N`` for a PID, else
    ``spec``), without looking: how records of a namespace that is gone are found."""
    spec = spec.strip()
    if spec.startswith("pid:") and spec[4:].isdigit():
        spec = spec[4:]  # our own display form of a PID (what ps shows) resolves too
    return f"pid:{int(spec)}" if spec.isdigit() else spec


def resolve_netns(spec: str) -> NetnsRef:
    """Find the network namespace ``spec`` names: a name under /var/run/netns, a PID, a path.

    Raises ``NetdevError`` (one line) when there is no such namespace, or the file is not a
    network namespace.
    """
    spec = spec.strip() if isinstance(spec, str) else spec
    if not isinstance(spec, str) or not spec:
        raise NetdevError(f"no network namespace {spec!r}: give a name, a PID or a path")
    name = netns_name(spec)
    if name.startswith("pid:") and name[4:].isdigit():
        spec = name[4:]
        path, what = f"/proc/{spec}/ns/net", f"process {spec}"
    elif "/" in spec:
        path, what = spec, spec
    elif spec in (".", ".."):
        raise NetdevError(f"no network namespace named {spec!r}")
    else:
        path, what = str(NETNS_RUN_DIR / spec), f"{NETNS_RUN_DIR}/{spec}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetdevError(f"no network namespace {spec!r} ({what} does not exist)") from None
    except OSError as exc:
        raise NetdevError(f"cannot open network namespace {spec!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        try:
            nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            raise NetdevError(f"{spec!r} is not a network namespace ({what})") from None
        if nstype != _CLONE_NEWNET:
            raise NetdevError(f"{spec!r} is a namespace, but not a network namespace")
        return NetnsRef(path=path, name=name, key=(st.st_dev, st.st_ino))
    finally:
        os.close(fd)


def _ns_path(netns: str | NetnsRef | None) -> str | None:
    if netns is None or isinstance(netns, NetnsRef):
        return None if netns is None else netns.path
    return resolve_netns(netns).path


_libc: ctypes.CDLL | None = None


def _setns(path: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str | NetnsRef | None, fn: Callable[[], T]) -> T:
    """Call ``fn()`` inside the network namespace ``netns`` and return its result.

    ``None`` means here: ``fn`` runs directly. Otherwise a fresh thread joins the
    namespace, runs ``fn`` and ends; its exception is re-raised here. Sockets and TUN files
    ``fn`` creates stay in that namespace wherever they are used afterwards.
    """
    path = _ns_path(netns)
    if path is None:
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            _setns(path)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"netns:{path}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@contextlib.contextmanager
def _ipr(netns: str | NetnsRef | None = None) -> Iterator[IPRoute]:
    """An rtnetlink handle bound to ``netns`` (here when None), closed on exit."""
    path = _ns_path(netns)
    if path is None:
        ipr = IPRoute(groups=0)
    else:
        sock = run_in_netns(
            path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
        )
        ipr = IPRoute(fileno=sock.detach(), groups=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _fail(what: str, exc: NetlinkError | OSError) -> NetdevError:
    code = exc.code if isinstance(exc, NetlinkError) else exc.errno
    reason = os.strerror(code) if code else str(exc)
    return NetdevError(f"{what}: {reason}")


# --- names ------------------------------------------------------------------------------


def _identity(key: Key, ifname: str) -> bytes:
    extra = b"" if ifname == CONTAINER_IFNAME else b"/" + ifname.encode()
    return b"%d:%d" % key + extra


def veth_name(key: Key, ifname: str = CONTAINER_IFNAME) -> str:
    """The host-side veth name for a namespace: ``vethwepl`` + 7 hex digits (15 chars)."""
    digest = hashlib.sha256(b"weft-veth:" + _identity(key, ifname)).hexdigest()
    return VETH_PREFIX + digest[:_VETH_HASH_DIGITS]


def random_mac() -> str:
    """A random MAC, locally administered and unicast: 46 random bits, unique across the
    mesh, like the kernel's own choice for a new veth."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def _check_ifname(name: str) -> None:
    if not name or len(name) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise NetdevError(f"bad interface name {name!r} (1-15 characters, no '/' or spaces)")


def _check_mtu(mtu: int) -> None:
    if not 68 <= mtu <= 65535:
        raise NetdevError(f"bad MTU {mtu} (68..65535)")


# --- small netlink helpers --------------------------------------------------------------


def _lookup(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _link(ipr: IPRoute, index: int) -> Any:
    return ipr.get_links(index)[0]


def _kind(link: Any) -> str | None:
    kind = link.get(("linkinfo", "kind"))
    return str(kind) if kind is not None else None


def _addrs(ipr: IPRoute, index: int) -> list[Cidr]:
    """The interface's IPv4 addresses and its IPv6 ones but the kernel's own link-local
    (scope link): the addresses attach gives and detach takes away, IPv4 first."""
    out: list[Cidr] = []
    for msg in ipr.get_addr(family=socket.AF_INET, index=index):
        out.append(ipaddress.IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}"))
    for msg in ipr.get_addr(family=socket.AF_INET6, index=index):
        if msg.get("scope") == 0:  # RT_SCOPE_UNIVERSE: not fe80::/10
            out.append(ipaddress.IPv6Interface(f"{msg.get('address')}/{msg['prefixlen']}"))
    return sorted(out, key=lambda c: (c.version, int(c.ip), c.network.prefixlen))


def host_addresses(*, netns: str | NetnsRef | None = None, family: int | None = None) -> list[str]:
    """This host's own addresses a peer might reach it at (hole punching's host candidates):
    global scope (IPv6 ULAs included), on interfaces that are up, neither loopback nor ours
    (the bridge and everything enslaved to it carry the overlay, not the underlay). IPv4
    first, then IPv6; ``family`` (AF_INET or AF_INET6) limits them to one."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        with _ipr(netns) as ipr:
            links = {int(link["index"]): link for link in ipr.get_links()}
            for fam in (socket.AF_INET, socket.AF_INET6):
                if family is not None and fam != family:
                    continue
                for msg in ipr.get_addr(family=fam):
                    link = links.get(int(msg["index"]))
                    if link is None or msg["scope"] != 0 or not link["flags"] & 1:  # IFF_UP
                        continue
                    name = link.get("IFLA_IFNAME")
                    master = link.get("IFLA_MASTER")
                    bridge = links.get(int(master)) if master else None
                    if name in (BRIDGE, TAP, VXLAN, VXLAN6) or (
                            bridge is not None and bridge.get("IFLA_IFNAME") == BRIDGE):
                        continue
                    if fam == socket.AF_INET6 and msg.get("IFA_FLAGS", msg["flags"]) & 0x40:
                        continue  # IFA_F_TENTATIVE: not usable yet (duplicate address check)
                    addr = ipaddress.ip_address(msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL"))
                    if not addr.is_loopback and not addr.is_link_local:
                        found.append(addr)
    except (NetlinkError, OSError) as exc:
        raise _fail("cannot list the host's addresses", exc) from None
    return [str(a) for a in sorted(set(found), key=lambda a: (a.version, int(a)))]


def link_exists(ifname: str, *, netns: str | NetnsRef | None = None) -> bool:
    """True when an interface ``ifname`` exists in ``netns`` (here when None)."""
    with _ipr(netns) as ipr:
        return _lookup(ipr, ifname) is not None


def set_mtu(ifname: str, mtu: int, *, netns: str | NetnsRef | None = None) -> None:
    """Set the MTU of ``ifname``; ``NetdevError`` when it is missing or refuses."""
    _check_mtu(mtu)
    with _ipr(netns) as ipr:
        index = _lookup(ipr, ifname)
        if index is None:
            raise NetdevError(f"cannot set the MTU of {ifname}: no such interface")
        try:
            ipr.link("set", index=index, mtu=mtu)
        except NetlinkError as exc:
            raise _fail(f"cannot set the MTU of {ifname} to {mtu}", exc) from None


def enslave(
    ifname: str,
    bridge: str = BRIDGE,
    *,
    mtu: int | None = None,
    netns: str | NetnsRef | None = None,
) -> int:
    """Make ``ifname`` a port of ``bridge`` (MTU first when given), set it up; its ifindex."""
    with _ipr(netns) as ipr:
        index, br = _lookup(ipr, ifname), _lookup(ipr, bridge)
        if index is None:
            raise NetdevError(f"no interface {ifname}")
        if br is None:
            raise NetdevError(f"no bridge {bridge} (the router creates it on launch)")
        try:
            if mtu is not None:
                _check_mtu(mtu)
                ipr.link("set", index=index, mtu=mtu)
            ipr.link("set", index=index, master=br, state="up")
        except NetlinkError as exc:
            raise _fail(f"cannot make {ifname} a port of {bridge}", exc) from None
        return index


# --- the bridge -------------------------------------------------------------------------


def ensure_bridge(
    mtu: int,
    *,
    mac: str | None = None,
    gso_max_size: int | None = None,
    gso_max_segs: int | None = None,
    netns: str | NetnsRef | None = None,
) -> int:
    """Create bridge ``weft`` if missing and (re)apply its settings; return its ifindex.

    No STP, forward delay 0 (ports forward at once), MAC ageing 300 s, multicast
    snooping off (multicast from remote peers arrives through the TAP and must reach every
    container), MTU ``mtu``, up. The bridge MAC is pinned: ``mac`` when given, otherwise
    the one it has, so adding or removing ports never changes it. ``gso_max_size`` /
    ``gso_max_segs`` cap the super-frames the bridge hands on (kernel defaults 65536 and
    65535 otherwise; lower them on lossy underlays). Idempotent.
    """
    _check_mtu(mtu)
    br_opts: dict[str, Any] = {
        "br_stp_state": 0,
        "br_forward_delay": 0,
        "br_ageing_time": BRIDGE_AGEING_TIME_S * 100,  # centiseconds
        "br_mcast_snooping": 0,
    }
    with _ipr(netns) as ipr:
        index = _lookup(ipr, BRIDGE)
        try:
            if index is None:
                ipr.link("add", ifname=BRIDGE, kind="bridge", mtu=mtu, **br_opts)
                index = _lookup(ipr, BRIDGE)
                if index is None:
                    raise NetdevError(f"bridge {BRIDGE} vanished right after it was created")
            else:
                kind = _kind(_link(ipr, index))
                if kind != "bridge":
                    raise NetdevError(f"{BRIDGE} exists but is a {kind or 'plain'} device, not a bridge")
                ipr.link("set", index=index, kind="bridge", **br_opts)
            link = _link(ipr, index)
            settings: dict[str, Any] = {"mtu": mtu, "address": mac or link.get("address")}
            if gso_max_size is not None:
                settings["gso_max_size"] = gso_max_size
            if gso_max_segs is not None:
                settings["gso_max_segs"] = gso_max_segs
            ipr.link("set", index=index, **settings)
            ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise _fail(f"cannot set up bridge {BRIDGE}", exc) from None
        return index


# --- containers -------------------------------------------------------------------------


def _check_same(ref: NetnsRef) -> None:
    try:
        key = _ns_key(ref.path)
    except OSError:
        raise NetdevError(f"container {ref.name} is gone ({ref.path} does not exist)") from None
    if key != ref.key:
        raise NetdevError(f"container {ref.name}: {ref.path} now names another namespace")


def _remember(host_ifname: str, ref: NetnsRef | None) -> None:
    """Note (or forget) which namespace a veth leads to; the first name given stays."""
    with _known_lock:
        if ref is None:
            _known.pop(host_ifname, None)
        elif host_ifname not in _known or _known[host_ifname].key != ref.key:
            _known[host_ifname] = ref


def attach(
    ref: NetnsRef,
    cidrs: list[Cidr],
    *,
    mtu: int,
    mac: str | None = None,
    ifname: str = CONTAINER_IFNAME,
    gso_max_size: int | None = None,
    netns: str | NetnsRef | None = None,
) -> Attached:
    """Connect container ``ref`` to the bridge as ``ifname`` and give it ``cidrs``.

    The first time: a veth pair whose host end (``veth_name``) becomes an up port of
    ``weft`` and whose other end lives in the container as ``ifname`` with ``mtu``, ``mac``
    (default ``random_mac()``) and ``gso_max_size`` (kernel default when None), up, with a
    multicast route (224.0.0.0/4) through it, and the container's ``lo`` up. Again: only
    the missing addresses are added (and the host end re-joined to the bridge if a restart
    recreated it). Returns the record with every address now on ``ifname``. IPv6 addresses
    are added without duplicate address detection (IFA_F_NODAD): IPAM or the user already
    vouched for them, and DAD would keep one unusable ("tentative") for a second or more.
    """
    _check_ifname(ifname)
    _check_mtu(mtu)
    for c in cidrs:
        if not isinstance(c, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
            raise NetdevError(f"not an IP address with prefix length: {c!r}")
    _check_same(ref)
    host_ifname = veth_name(ref.key, ifname)
    with _ipr(netns) as host, _ipr(ref) as cont:
        br = _lookup(host, BRIDGE)
        if br is None:
            raise NetdevError(f"no bridge {BRIDGE} (the router creates it on launch)")
        hidx, cidx = _lookup(host, host_ifname), _lookup(cont, ifname)
        try:
            if hidx is None:
                if cidx is not None:
                    raise NetdevError(
                        f"container {ref.name} already has an interface {ifname} that is not ours"
                    )
                cidx = _create_pair(host, cont, ref, host_ifname, ifname, mtu, mac, gso_max_size)
                hidx = _lookup(host, host_ifname)
                if hidx is None:
                    raise NetdevError(f"veth {host_ifname} vanished right after it was created")
            elif cidx is None or int(_link(host, hidx).get("link") or 0) != cidx:
                raise NetdevError(
                    f"{host_ifname} exists but its peer is not {ifname} in container {ref.name}"
                )
            if _link(host, hidx).get("master") != br:
                host.link("set", index=hidx, master=br)
            host.link("set", index=hidx, state="up")
            have = _addrs(cont, cidx)
            for c in cidrs:
                if c not in have:
                    extra = {"flags": IFA_F_NODAD} if c.version == 6 else {}
                    cont.addr("add", index=cidx, address=str(c.ip), prefixlen=c.network.prefixlen,
                              **extra)
            done = _addrs(cont, cidx)
            link = _link(cont, cidx)
        except NetlinkError as exc:
            raise _fail(f"cannot attach container {ref.name}", exc) from None
    _remember(host_ifname, ref)
    return Attached(
        container=ref.name,
        ifname=ifname,
        host_ifname=host_ifname,
        mac=str(link.get("address")),
        cidrs=tuple(done),
        netns_path=ref.path,
        key=ref.key,
    )


def _create_pair(
    host: IPRoute,
    cont: IPRoute,
    ref: NetnsRef,
    host_ifname: str,
    ifname: str,
    mtu: int,
    mac: str | None,
    gso_max_size: int | None,
) -> int:
    """Create the veth pair, the peer born inside ``ref``; configure the container side."""
    nsfd = os.open(ref.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": nsfd, "mtu": mtu}
        peer["address"] = mac or random_mac()
        host.link("add", ifname=host_ifname, kind="veth", mtu=mtu, peer=peer)
    finally:
        os.close(nsfd)
    cidx = _lookup(cont, ifname)
    if cidx is None:
        raise NetdevError(f"{ifname} did not appear in container {ref.name}")
    if gso_max_size is not None:
        cont.link("set", index=cidx, gso_max_size=gso_max_size)
    cont.link("set", index=cidx, state="up")
    lo = _lookup(cont, "lo")
    if lo is not None:
        cont.link("set", index=lo, state="up")
    # Without a default route, multicast (and 255.255.255.255 via it) has nowhere to go;
    # Weave points 224.0.0.0/4 at ethwe for the same reason.
    with contextlib.suppress(NetlinkError):
        cont.route("add", dst="224.0.0.0/4", oif=cidx)
    return cidx


def detach(
    ref: NetnsRef,
    cidrs: list[Cidr] | None = None,
    *,
    ifname: str = CONTAINER_IFNAME,
    netns: str | NetnsRef | None = None,
) -> list[Cidr]:
    """Remove ``cidrs`` (matched by IP) from the container, or everything when None.

    Returns the addresses removed. When no address is left, the veth pair goes too.
    Idempotent: a container (or namespace) that is not attached, or an address it does
    not have, is not an error.
    """
    host_ifname = veth_name(ref.key, ifname)
    try:
        _check_same(ref)
    except NetdevError:
        # ``ref`` no longer leads to the namespace (its process exited): what remains
        # reachable is our end, and deleting it deletes the pair.
        _delete_link(host_ifname, netns)
        _remember(host_ifname, None)
        return []
    with _ipr(netns) as host, _ipr(ref) as cont:
        hidx, cidx = _lookup(host, host_ifname), _lookup(cont, ifname)
        if hidx is None or cidx is None or int(_link(host, hidx).get("link") or 0) != cidx:
            return []  # not attached (or someone else's interface of that name)
        have = _addrs(cont, cidx)
        if cidrs is None:
            removed = have
        else:
            wanted = {c.ip for c in cidrs}
            removed = [c for c in have if c.ip in wanted]
        try:
            for c in removed:
                cont.addr("del", index=cidx, address=str(c.ip), prefixlen=c.network.prefixlen)
            if cidrs is None or not _addrs(cont, cidx):
                host.link("del", index=hidx)
                _remember(host_ifname, None)
        except NetlinkError as exc:
            raise _fail(f"cannot detach container {ref.name}", exc) from None
    return removed


def _delete_link(ifname: str, netns: str | NetnsRef | None) -> bool:
    with _ipr(netns) as ipr:
        index = _lookup(ipr, ifname)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise _fail(f"cannot delete {ifname}", exc) from None
            return False
        return True


def _candidates(known: Iterable[Attached | NetnsRef]) -> Iterator[tuple[str, str]]:
    """(path, display name) of namespaces that may hold a container, best names first."""
    with _known_lock:
        hints = list(_known.values())
    for item in [*known, *hints]:
        if isinstance(item, NetnsRef):
            yield item.path, item.name
        elif item.netns_path:
            yield item.netns_path, item.container
    if NETNS_RUN_DIR.is_dir():
        for entry in sorted(NETNS_RUN_DIR.iterdir()):
            yield str(entry), entry.name
    pids = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    for pid in pids:
        yield f"/proc/{pid}/ns/net", f"pid:{pid}"


def _resolve_nsids(
    host: IPRoute, wanted: set[int], known: Iterable[Attached | NetnsRef]
) -> dict[int, NetnsRef]:
    """Map netnsids (as our namespace numbers its peers) to namespace files."""
    found: dict[int, NetnsRef] = {}
    seen: set[Key] = set()
    for path, name in _candidates(known):
        if not wanted - found.keys():
            break
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            try:
                reply = host.get_netnsid(fd=fd)
            except NetlinkError:
                continue
        finally:
            os.close(fd)
        nsid = reply.get("nsid") if isinstance(reply, dict) else None
        if isinstance(nsid, int) and nsid in wanted and nsid not in found:
            found[nsid] = NetnsRef(path=path, name=name, key=key)
    return found


def list_attached(
    known: Iterable[Attached | NetnsRef] = (), *, netns: str | NetnsRef | None = None
) -> list[Attached]:
    """Every container with a ``vethwepl…`` port on the bridge, sorted by container name.

    Each port's peer namespace is found by its link-netnsid: first among ``known``
    records and what this process attached, then /var/run/netns, then every process's
    namespace. A peer whose namespace no file or process holds is left out.
    """
    known = list(known)
    with _ipr(netns) as host:
        br = _lookup(host, BRIDGE)
        if br is None:
            return []
        ports = [
            link
            for link in host.get_links()
            if link.get("master") == br
            and _kind(link) == "veth"
            and str(link.get("ifname")).startswith(VETH_PREFIX)
        ]
        nsids = {int(p.get("link_netnsid")) for p in ports if p.get("link_netnsid") is not None}
        where = _resolve_nsids(host, nsids, known)
    out = []
    for port in ports:
        nsid = port.get("link_netnsid")
        ref = where.get(int(nsid)) if nsid is not None else None
        if ref is None:
            continue
        try:
            with _ipr(ref) as cont:
                peer = _link(cont, int(port.get("link")))
                cidrs = _addrs(cont, int(peer["index"]))
        except (NetlinkError, OSError):
            continue  # the container went away while we looked
        out.append(
            Attached(
                container=ref.name,
                ifname=str(peer.get("ifname")),
                host_ifname=str(port.get("ifname")),
                mac=str(peer.get("address")),
                cidrs=tuple(cidrs),
                netns_path=ref.path,
                key=ref.key,
            )
        )
    return sorted(out, key=lambda a: (a.container, a.ifname))


def remove_all(*, netns: str | NetnsRef | None = None) -> list[str]:
    """Delete every ``vethwepl…`` pair, the TAP and the bridge (``weft reset``); their names."""
    removed = []
    with _ipr(netns) as ipr:
        names = sorted(
            str(link.get("ifname"))
            for link in ipr.get_links()
            if str(link.get("ifname")).startswith(VETH_PREFIX)
        )
    for name in [*names, TAP, VXLAN, VXLAN6, BRIDGE]:
        if _delete_link(name, netns):
            removed.append(name)
        _remember(name, None)
    return removed
