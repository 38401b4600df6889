"""Where a router is reached, as users write it: ``PEER`` (``host[:port]``, ``[v6]:port`` or
a bare IPv6 address) and the HTTP API's ``ADDR:PORT`` (``--http-addr``, env ``WEFT_HTTP_ADDR``,
default ``127.0.0.1:6784``).

Parsing checks and normalises (addresses in ``ipaddress`` form, host names lower-cased) and
raises ``LocalProtocolError`` with a one-line reason that quotes the text given. Formatting
puts an IPv6 address in brackets whenever a port follows it. IPv6 forms: ``[ADDR]:PORT``,
``[ADDR]``, a bare ``ADDR`` (no port: ``fd00::1:6783`` is an address, not a port); an
IPv4-mapped address (``::ffff:10.0.0.1``) becomes plain IPv4, the one form sockets and
status show; a link-local address (``fe80::/10``) means nothing without the interface it
lives on, so it needs a zone (``[fe80::1%eth0]:6783``), else it is refused. Shared by the programs (checking
arguments before any call), the API client and the daemon's launch configuration.
"""

from __future__ import annotations

import ipaddress
import os
import re

from weftnet.proto.errors import LocalProtocolError

DEFAULT_PORT = 6783  # the router's control port (`weft launch --port`): a PEER without one
DEFAULT_HTTP_ADDR: tuple[str, int] = ("127.0.0.1", 6784)

ZONE_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")  # an interface name or index (IFNAMSIZ)
HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (no brackets, no port)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _split_host_port(text: str, what: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise LocalProtocolError(f"invalid {what} {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if not host or ":" not in host or not is_ip(host):
            raise LocalProtocolError(f"invalid {what} {text!r}: [...] must hold an IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise LocalProtocolError(f"invalid {what} {text!r}: expected ':PORT' after ']'")
        return host, rest[1:]
    if text.count(":") > 1:  # a bare IPv6 literal, no port
        if not is_ip(text):
            raise LocalProtocolError(
                f"invalid {what} {text!r}: write IPv6 with a port as [ADDR]:PORT"
            )
        return text, None
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def _parse_port(text: str, what: str, original: str) -> int:
    if not text.isdigit():
        raise LocalProtocolError(f"invalid {what} {original!r}: port must be a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise LocalProtocolError(f"invalid {what} {original!r}: port must be 1..65535")
    return port


def _check_host(host: str, what: str, original: str, *, peer: bool = False) -> str:
    if not host:
        raise LocalProtocolError(f"invalid {what} {original!r}: missing host")
    if is_ip(host):
        return _normal_ip(host, what, original, peer=peer)
    # a last label of digits only (999.1.1.1, 1234) is a mistyped address, not a host name
    # (RFC 3696 section 2); a resolver would read "1234" as the address 0.0.4.210
    if (not HOSTNAME_RE.match(host) or host.rstrip(".").rsplit(".", 1)[-1].isdigit()
            or len(host.rstrip(".")) > 253):
        raise LocalProtocolError(f"invalid {what} {original!r}: not an IP address or host name")
    return host.lower()


def _normal_ip(host: str, what: str, original: str, *, peer: bool) -> str:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            if ip.scope_id:
                raise LocalProtocolError(f"invalid {what} {original!r}: an IPv4 address has no zone")
            return str(ip.ipv4_mapped)
        if ip.scope_id is not None and not ZONE_RE.match(ip.scope_id):
            raise LocalProtocolError(f"invalid {what} {original!r}: bad zone {ip.scope_id!r}")
        if peer and ip.is_link_local and not ip.scope_id:
            raise LocalProtocolError(
                f"invalid {what} {original!r}: a link-local IPv6 address needs a zone, "
                f"e.g. [{ip}%eth0]:{DEFAULT_PORT}")
    return str(ip)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_peer_address(text: str, default_port: int = DEFAULT_PORT) -> str:
    """Normalise ``host[:port]`` / ``[v6]:port`` to ``host:port`` (``[v6]:port``)."""
    original = text
    text = text.strip()
    if not text:
        raise LocalProtocolError("invalid peer address '': empty")
    host, port_text = _split_host_port(text, "peer address")
    host = _check_host(host, "peer address", original, peer=True)
    port = default_port if port_text is None else _parse_port(port_text, "peer address", original)
    return _join_host_port(host, port)


def parse_http_addr(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT``) of the HTTP API; the port is required."""
    original = text
    text = text.strip()
    if not text:
        raise LocalProtocolError("invalid HTTP address '': expected ADDR:PORT")
    host, port_text = _split_host_port(text, "HTTP address")
    if port_text is None:
        raise LocalProtocolError(f"invalid HTTP address {original!r}: expected ADDR:PORT")
    return _check_host(host, "HTTP address", original), _parse_port(
        port_text, "HTTP address", original
    )


def format_http_addr(addr: tuple[str, int]) -> str:
    """``ADDR:PORT``, ``[v6]:PORT`` for IPv6."""
    return _join_host_port(addr[0], addr[1])


def default_http_addr() -> tuple[str, int]:
    """``$WEFT_HTTP_ADDR`` parsed, else ``DEFAULT_HTTP_ADDR``."""
    env = os.environ.get("WEFT_HTTP_ADDR")
    if env:
        try:
            return parse_http_addr(env)
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"WEFT_HTTP_ADDR: {exc.reason}") from None
    return DEFAULT_HTTP_ADDR
