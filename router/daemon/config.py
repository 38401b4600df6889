"""Launch configuration: the options of ``weft launch`` turned into one validated object.

Theory of operation
-------------------
``add_launch_arguments`` declares every option of the contract on an argparse parser
with *raw* values (strings, ``None`` when not given); ``config_from_args`` then checks each
one and builds a ``LaunchConfig``, raising ``LocalProtocolError`` with a one-line reason
(``--port: expected 1..65534, got 70000``) for the first bad value. Validation lives here
rather than in argparse ``type=`` callables so the messages are ours and the same checks
serve the daemon, the CLI and tests.

``config_to_args`` is the inverse: the background ``launch`` re-executes itself as
``launch --foreground`` with the options of an already validated config, so
``config_from_args(parse(config_to_args(c)))`` reproduces ``c`` (a password from
``WEFT_PASSWORD`` travels in the environment, never on a command line other users can read
in ``ps``; a password file is passed by its absolute path, so the daemon can re-read it).

Passwords: ``WEFT_PASSWORD`` is one password. ``--password-file FILE`` holds one password a
line, the first preferred and every one accepted from peers; surrounding whitespace is
stripped, blank lines and lines starting with ``#`` are ignored, a repeated line counts
once, and at most MAX_CANDIDATES (4) remain (``parse_password_file``, which keeps each
password's line number: status names passwords by their line). A file without any
password is refused at launch; the daemon re-reads the file when it changes
(router/daemon/password_file.py).

Defaults that depend on where we run:

* data dir: ``$WEFT_DATA_DIR``; else, when this process lives in a *named* network
  namespace (``ip netns add NAME``), ``/var/lib/weft-netns/NAME``, so several routers on one
  machine (the demo, the netns tests) never share state by accident; else ``/var/lib/weft``.
  The namespace is recognised by comparing ``(st_dev, st_ino)`` of ``/proc/self/ns/net``
  with the bind-mounted files in ``/var/run/netns``.
* HTTP API address: ``$WEFT_HTTP_ADDR`` (``ADDR:PORT``), else ``127.0.0.1:6784``; this and the
  parsing of PEER and ADDR:PORT live in ``router/api/address.py``, shared with the programs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from weftnet.ipam.mode import ConsensusInit, InitMode, ObserverInit, SeedInit
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.handshake import MAX_CANDIDATES
from weftnet.proto.peername import format_peer_name, parse_peer_name
from weftnet.router.api.address import (
    DEFAULT_HTTP_ADDR,
    DEFAULT_PORT,
    HOSTNAME_RE,
    default_http_addr,
    format_http_addr,
    is_ip,
    parse_http_addr,
)
from weftnet.router.api.address import parse_peer_address as parse_peer_address  # the daemon's too

DEFAULT_DATA_DIR = Path("/var/lib/weft")
NETNS_DATA_ROOT = Path("/var/lib/weft-netns")
NETNS_RUN_DIR = Path("/var/run/netns")
DEFAULT_IPALLOC_RANGE = "10.32.0.0/12"
DEFAULT_DNS_DOMAIN = "weft.local."
DEFAULT_CONN_LIMIT = 200
LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_MTU = 576
MAX_MTU = 65535
MAX_DNS_TTL = 2**31 - 1

_NICKNAME = re.compile(r"^[^\s\x00-\x1f\x7f]{1,255}$")


@dataclass
class LaunchConfig:
    """Everything ``weft launch`` was told. ``password`` is kept out of ``repr``."""

    peers: list[str] = field(default_factory=list)
    name: int | None = None
    nickname: str = field(default_factory=socket.gethostname)
    password: bytes | None = field(default=None, repr=False)  # the preferred one
    passwords: tuple[bytes, ...] = field(default=(), repr=False)  # all, preferred first
    password_lines: tuple[int, ...] = ()  # the file line of each (() without a file)
    password_file: Path | None = None  # re-read when it changes (absolute)
    trusted_subnets: list[str] = field(default_factory=list)
    port: int = DEFAULT_PORT
    host: str = ""
    fastdp: bool = True
    mtu: int | None = None
    conn_limit: int = DEFAULT_CONN_LIMIT
    discovery: bool = True
    ipalloc_range: str = DEFAULT_IPALLOC_RANGE  # "" turns IPAM off (report["ipam"] is null)
    ipalloc_default_subnet: str | None = None  # None: the whole range
    ipalloc_init: str | None = None  # normalised; see parse_ipalloc_init
    ipalloc_range_v6: str = ""  # "" (the default): no IPv6 IPAM (see _ipam_v6_options)
    ipalloc_default_subnet_v6: str | None = None  # None: the whole IPv6 range
    dns: bool = True
    dns_domain: str = DEFAULT_DNS_DOMAIN
    dns_ttl: int = 1
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    http_addr: tuple[str, int] = DEFAULT_HTTP_ADDR
    foreground: bool = False
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class IpallocInit:
    """``--ipalloc-init`` parsed: ``consensus[=N]``, ``seed=NAME,...`` or ``observer``."""

    mode: str  # "consensus" | "seed" | "observer"
    quorum: int | None = None  # consensus=N
    seeds: tuple[int, ...] = ()  # seed=NAME,...

    def __str__(self) -> str:
        if self.mode == "consensus":
            return "consensus" if self.quorum is None else f"consensus={self.quorum}"
        if self.mode == "seed":
            return "seed=" + ",".join(format_peer_name(s) for s in self.seeds)
        return self.mode


# ---------------------------------------------------------------------------------------
# Environment-dependent defaults


def current_netns_name(run_dir: Path | None = None) -> str | None:
    """The ``ip netns`` name of this process's network namespace, if it has one."""
    run_dir = NETNS_RUN_DIR if run_dir is None else run_dir
    try:
        ours = os.stat("/proc/self/ns/net")
        entries = sorted(os.listdir(run_dir))
    except OSError:
        return None
    for entry in entries:
        try:
            st = os.stat(run_dir / entry)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
            return entry
    return None


def default_data_dir() -> Path:
    env = os.environ.get("WEFT_DATA_DIR")
    if env:
        return Path(env)
    name = current_netns_name()
    if name is not None:
        return NETNS_DATA_ROOT / name
    return DEFAULT_DATA_DIR


# ---------------------------------------------------------------------------------------
# Option checks (each raises LocalProtocolError naming the option)


def _int_option(option: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise LocalProtocolError(f"{option}: expected a number, got {text!r}") from None
    if not low <= value <= high:
        raise LocalProtocolError(f"{option}: expected {low}..{high}, got {value}")
    return value


def _cidr_option(
    option: str, text: str, *, ipv4_only: bool = False
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = text.strip()
    if "/" not in text:
        raise LocalProtocolError(f"{option}: {text!r} is not a CIDR (expected ADDR/LEN)")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise LocalProtocolError(f"{option}: {text!r} is not a valid CIDR ({exc})") from None
        raise LocalProtocolError(
            f"{option}: {text} has host bits set; did you mean {loose}?"
        ) from None
    if ipv4_only and net.version != 4:
        raise LocalProtocolError(f"{option}: {text} is not an IPv4 range (IPv6 IPAM: "
                                 f"{option}-v6)")
    return net


def parse_ipalloc_init(text: str) -> IpallocInit:
    """``consensus[=N]`` | ``seed=NAME,...`` | ``observer``."""
    text = text.strip()
    usage = "expected consensus[=N], seed=NAME,... or observer"
    mode, sep, arg = text.partition("=")
    if mode == "observer" and not sep:
        return IpallocInit("observer")
    if mode == "consensus":
        if not sep:
            return IpallocInit("consensus")
        quorum = _int_option("--ipalloc-init consensus=N", arg, 1, 1_000_000)
        return IpallocInit("consensus", quorum=quorum)
    if mode == "seed" and sep:
        names = [n for n in arg.split(",")]
        if not all(n.strip() for n in names):
            raise LocalProtocolError(f"--ipalloc-init: {text!r}: empty peer name in seed list")
        seeds: list[int] = []
        for n in names:
            try:
                seeds.append(parse_peer_name(n))
            except LocalProtocolError as exc:
                raise LocalProtocolError(f"--ipalloc-init: {exc.reason}") from None
        if len(set(seeds)) != len(seeds):
            raise LocalProtocolError(f"--ipalloc-init: {text!r}: duplicate peer name")
        return IpallocInit("seed", seeds=tuple(seeds))
    raise LocalProtocolError(f"--ipalloc-init: invalid value {text!r}: {usage}")




def ipalloc_init_mode(text: str | None, peer_args: int) -> InitMode:
    """The IPAM core's InitMode for ``--ipalloc-init`` (normalised text or None);
    ``consensus`` without N means 1 + the number of PEER arguments given to launch."""
    init = parse_ipalloc_init(text) if text is not None else IpallocInit("consensus")
    if init.mode == "consensus":
        return ConsensusInit(init.quorum if init.quorum is not None else 1 + peer_args)
    if init.mode == "seed":
        return SeedInit(tuple(sorted(init.seeds)))
    return ObserverInit()


def _dns_domain_option(text: str) -> str:
    domain = text.strip().lower()
    if not domain.endswith("."):
        domain += "."
    if domain == "." or not HOSTNAME_RE.match(domain) or len(domain) > 254:
        raise LocalProtocolError(f"--dns-domain: {text!r} is not a valid domain")
    return domain


def parse_password_file(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """``(line number, password)`` of each password of a password file's contents,
    preferred first: one a line, whitespace stripped, blank and ``#`` lines ignored, a
    repeat dropped; () when none. Raises LocalProtocolError when more than MAX_CANDIDATES
    remain."""
    found: list[tuple[int, bytes]] = []
    for number, line in enumerate(data.splitlines(), start=1):
        pw = line.strip()
        if pw and not pw.startswith(b"#") and all(pw != p for _, p in found):
            found.append((number, pw))
    if len(found) > MAX_CANDIDATES:
        raise LocalProtocolError(
            f"{len(found)} passwords; at most {MAX_CANDIDATES} are allowed")
    return tuple(found)


def read_password_file(path: Path) -> tuple[tuple[int, bytes], ...]:
    """``parse_password_file`` of the file at ``path``; LocalProtocolError naming the
    file when it cannot be read or holds no usable password."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LocalProtocolError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        found = parse_password_file(data)
    except LocalProtocolError as exc:
        raise LocalProtocolError(f"{path}: {exc.reason}") from None
    if not found:
        raise LocalProtocolError(f"{path}: no password (empty, or only comments)")
    return found


def _read_passwords(password_file: str | None) -> tuple[tuple[int, bytes], ...]:
    env = os.environb.get(b"WEFT_PASSWORD")
    if env is not None and password_file is not None:
        raise LocalProtocolError(
            "a password is given both in WEFT_PASSWORD and with --password-file; use one"
        )
    if password_file is not None:
        try:
            data = Path(password_file).read_bytes()
        except OSError as exc:
            raise LocalProtocolError(
                f"--password-file: cannot read {password_file}: {exc.strerror or exc}"
            ) from None
        try:
            passwords = parse_password_file(data)
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"--password-file: {password_file}: {exc.reason}") from None
    else:
        passwords = () if env is None else ((1, env),)
    if env is not None and not env or password_file is not None and not passwords:
        raise LocalProtocolError("empty password")
    return passwords


# ---------------------------------------------------------------------------------------
# argparse glue


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``weft launch``; values stay raw until config_from_args."""
    add = parser.add_argument
    add("peers", nargs="*", metavar="PEER", help="host[:port] of a peer to connect to")
    add("--name", metavar="MAC", help="peer name (default: persisted, else derived or random)")
    add("--nickname", metavar="NAME", help="nickname shown in status (default: hostname)")
    add("--password-file", metavar="FILE",
        help="encrypt with the passwords in FILE: one a line, the first preferred, every "
             "one accepted; re-read when it changes and on SIGHUP")
    add("--trusted-subnets", metavar="CIDR,...", help="skip encryption towards these subnets")
    add("--port", metavar="N", help=f"control TCP and sleeve UDP port (default {DEFAULT_PORT})")
    add("--host", metavar="ADDR", help="bind address for the control port (default: all)")
    add("--no-fastdp", action="store_true", help="never use the kernel VXLAN fast path")
    add("--mtu", metavar="N", help="overlay MTU (default: derived from the path)")
    add("--conn-limit", metavar="N", help=f"connection limit (default {DEFAULT_CONN_LIMIT})")
    add("--no-discovery", action="store_true", help="do not connect to peers learned by gossip")
    add(
        "--ipalloc-range",
        metavar="CIDR",
        help=f"IPAM range (default {DEFAULT_IPALLOC_RANGE}; '' turns IPAM off)",
    )
    add("--ipalloc-default-subnet", metavar="CIDR", help="default subnet (default: the range)")
    add("--ipalloc-init", metavar="MODE", help="consensus[=N] | seed=NAME,... | observer")
    add("--ipalloc-range-v6", metavar="CIDR",
        help="IPv6 IPAM range, e.g. a ULA /48 (default: off; containers then get an IPv6 "
             "address only when given one)")
    add("--ipalloc-default-subnet-v6", metavar="CIDR",
        help="default IPv6 subnet (default: the IPv6 range)")
    add("--no-dns", action="store_true", help="no DNS server")
    add("--dns-domain", metavar="D", help=f"DNS domain (default {DEFAULT_DNS_DOMAIN})")
    add("--dns-ttl", metavar="S", help="TTL of DNS answers in seconds (default 1)")
    add("--data-dir", metavar="DIR", help="state, pid file and log (env WEFT_DATA_DIR)")
    add("--http-addr", metavar="ADDR:PORT", help="HTTP API address (env WEFT_HTTP_ADDR)")
    add("--foreground", action="store_true", help="run in this process (for service managers)")
    add("--log-level", metavar="LEVEL", help="debug, info (default), warning or error")


def config_from_args(ns: argparse.Namespace) -> LaunchConfig:
    """Validate the raw options; raise LocalProtocolError with a one-line reason."""
    cfg = LaunchConfig(data_dir=DEFAULT_DATA_DIR)
    if ns.port is not None:
        # The fast path listens on port + 1, which must itself be a port.
        cfg.port = _int_option("--port", ns.port, 1, 65534)
    # A peer without a port gets ours: a mesh normally uses one port everywhere.
    cfg.peers = [parse_peer_address(p, cfg.port) for p in ns.peers]
    if ns.name is not None:
        try:
            cfg.name = parse_peer_name(ns.name)
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"--name: {exc.reason}") from None
    if ns.nickname is not None:
        if not _NICKNAME.match(ns.nickname):
            raise LocalProtocolError(
                f"--nickname: {ns.nickname!r} must be 1..255 characters without spaces"
            )
        cfg.nickname = ns.nickname
    found = _read_passwords(ns.password_file)
    cfg.passwords = tuple(pw for _, pw in found)
    cfg.password = cfg.passwords[0] if cfg.passwords else None
    if ns.password_file is not None:
        cfg.password_lines = tuple(line for line, _ in found)
        cfg.password_file = Path(ns.password_file).absolute()
    if ns.trusted_subnets is not None:
        items = [s.strip() for s in ns.trusted_subnets.split(",") if s.strip()]
        cfg.trusted_subnets = [str(_cidr_option("--trusted-subnets", s)) for s in items]
    if ns.host is not None and ns.host.strip():
        host = ns.host.strip().strip("[]")
        if not is_ip(host):
            raise LocalProtocolError(f"--host: {ns.host!r} is not an IP address")
        ip = ipaddress.ip_address(host)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        cfg.host = str(mapped or ip)  # one form: sockets, status and peers see plain IPv4
    cfg.fastdp = not ns.no_fastdp
    if ns.mtu is not None:
        cfg.mtu = _int_option("--mtu", ns.mtu, MIN_MTU, MAX_MTU)
    if ns.conn_limit is not None:
        cfg.conn_limit = _int_option("--conn-limit", ns.conn_limit, 1, 1_000_000)
    cfg.discovery = not ns.no_discovery
    _ipam_options(cfg, ns)
    _ipam_v6_options(cfg, ns)
    cfg.dns = not ns.no_dns
    if ns.dns_domain is not None:
        cfg.dns_domain = _dns_domain_option(ns.dns_domain)
    if ns.dns_ttl is not None:
        cfg.dns_ttl = _int_option("--dns-ttl", ns.dns_ttl, 0, MAX_DNS_TTL)
    if ns.data_dir is not None:
        if not ns.data_dir.strip():
            raise LocalProtocolError("--data-dir: empty path")
        cfg.data_dir = Path(ns.data_dir).absolute()
    else:
        cfg.data_dir = default_data_dir().absolute()
    if ns.http_addr is not None:
        try:
            cfg.http_addr = parse_http_addr(ns.http_addr)
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"--http-addr: {exc.reason}") from None
    else:
        cfg.http_addr = default_http_addr()
    cfg.foreground = bool(ns.foreground)
    if ns.log_level is not None:
        level = ns.log_level.strip().lower()
        if level not in LOG_LEVELS:
            raise LocalProtocolError(
                f"--log-level: {ns.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )
        cfg.log_level = level
    return cfg


def _ipam_options(cfg: LaunchConfig, ns: argparse.Namespace) -> None:
    if ns.ipalloc_range is not None and not ns.ipalloc_range.strip():
        cfg.ipalloc_range = ""
        if ns.ipalloc_default_subnet is not None or ns.ipalloc_init is not None:
            raise LocalProtocolError(
                "--ipalloc-default-subnet and --ipalloc-init need IPAM, "
                "which an empty --ipalloc-range turns off"
            )
        return
    range_text = ns.ipalloc_range if ns.ipalloc_range is not None else DEFAULT_IPALLOC_RANGE
    net = _cidr_option("--ipalloc-range", range_text, ipv4_only=True)
    if net.prefixlen > 30:
        raise LocalProtocolError(f"--ipalloc-range: {net} is too small (at most /30)")
    cfg.ipalloc_range = str(net)
    if ns.ipalloc_default_subnet is not None:
        sub = _cidr_option("--ipalloc-default-subnet", ns.ipalloc_default_subnet, ipv4_only=True)
        assert isinstance(sub, ipaddress.IPv4Network) and isinstance(net, ipaddress.IPv4Network)
        if not sub.subnet_of(net):
            raise LocalProtocolError(
                f"--ipalloc-default-subnet: {sub} is not inside the range {net}"
            )
        cfg.ipalloc_default_subnet = str(sub)
    if ns.ipalloc_init is not None:
        cfg.ipalloc_init = str(parse_ipalloc_init(ns.ipalloc_init))


def _ipam_v6_options(cfg: LaunchConfig, ns: argparse.Namespace) -> None:
    """IPv6 IPAM is off unless asked for: turning it on by default would give every
    existing container a second address it never had, and a built-in ULA prefix would be
    the same on every mesh (RFC 4193 wants a random one, so that networks can meet)."""
    range_text = (getattr(ns, "ipalloc_range_v6", None) or "").strip()
    sub_text = getattr(ns, "ipalloc_default_subnet_v6", None)
    if not range_text:
        if sub_text is not None:
            raise LocalProtocolError("--ipalloc-default-subnet-v6 needs --ipalloc-range-v6")
        return
    if not cfg.ipalloc_range:
        raise LocalProtocolError("--ipalloc-range-v6 needs IPv4 IPAM too, which an empty "
                                 "--ipalloc-range turns off")
    net = _cidr_option("--ipalloc-range-v6", range_text)
    if net.version != 6:
        raise LocalProtocolError(f"--ipalloc-range-v6: {net} is not an IPv6 range "
                                 "(the IPv4 one is --ipalloc-range)")
    if net.prefixlen > 126:
        raise LocalProtocolError(f"--ipalloc-range-v6: {net} is too small (at most /126)")
    if net.is_multicast or net.is_link_local or net.is_loopback or int(net.network_address) < 1 << 32:
        raise LocalProtocolError(f"--ipalloc-range-v6: {net} is not a unicast range for "
                                 "containers (use a ULA such as fdXX:XXXX:XXXX::/48, or a global prefix)")
    cfg.ipalloc_range_v6 = str(net)
    if sub_text is not None:
        sub = _cidr_option("--ipalloc-default-subnet-v6", sub_text)
        if sub.version != 6 or not sub.subnet_of(net):
            raise LocalProtocolError(
                f"--ipalloc-default-subnet-v6: {sub} is not inside the range {net}")
        cfg.ipalloc_default_subnet_v6 = str(sub)


def config_to_args(cfg: LaunchConfig) -> list[str]:
    """Options that make config_from_args rebuild ``cfg``, except ``--foreground`` and a
    password from the environment (the caller passes it in ``WEFT_PASSWORD``)."""
    args: list[str] = []
    if cfg.password_file is not None:
        args += ["--password-file", str(cfg.password_file)]
    if cfg.name is not None:
        args += ["--name", format_peer_name(cfg.name)]
    args += ["--nickname", cfg.nickname]
    if cfg.trusted_subnets:
        args += ["--trusted-subnets", ",".join(cfg.trusted_subnets)]
    args += ["--port", str(cfg.port)]
    if cfg.host:
        args += ["--host", cfg.host]
    if not cfg.fastdp:
        args.append("--no-fastdp")
    if cfg.mtu is not None:
        args += ["--mtu", str(cfg.mtu)]
    args += ["--conn-limit", str(cfg.conn_limit)]
    if not cfg.discovery:
        args.append("--no-discovery")
    args += ["--ipalloc-range", cfg.ipalloc_range]
    if cfg.ipalloc_default_subnet is not None:
        args += ["--ipalloc-default-subnet", cfg.ipalloc_default_subnet]
    if cfg.ipalloc_init is not None:
        args += ["--ipalloc-init", cfg.ipalloc_init]
    if cfg.ipalloc_range_v6:
        args += ["--ipalloc-range-v6", cfg.ipalloc_range_v6]
    if cfg.ipalloc_default_subnet_v6 is not None:
        args += ["--ipalloc-default-subnet-v6", cfg.ipalloc_default_subnet_v6]
    if not cfg.dns:
        args.append("--no-dns")
    args += ["--dns-domain", cfg.dns_domain, "--dns-ttl", str(cfg.dns_ttl)]
    args += ["--data-dir", str(cfg.data_dir), "--http-addr", format_http_addr(cfg.http_addr)]
    args += ["--log-level", cfg.log_level]
    # "--" so that a peer can never be taken for an option.
    return [*args, "--", *cfg.peers]

