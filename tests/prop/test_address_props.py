"""Properties of underlay addresses as users write them and the router prints them (IPv4,
IPv6 with and without brackets, zones, IPv4-mapped): parsing what we print gives it back,
every form of one address parses to the same text, mapped IPv4 is always plain IPv4, and the
socket forms (mapped out, plain in) are inverse."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto.connmaker import join_host_port, split_host
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.address import DEFAULT_PORT, parse_peer_address
from weftnet.router.dataplane.udpsock import normal_address, socket_address

ports = st.integers(1, 65535)
v4s = st.ip_addresses(v=4)
v6s = st.ip_addresses(v=6)
zones = st.from_regex(r"\A[a-z][a-z0-9]{0,6}\Z") | st.integers(1, 9999).map(str)


def expected(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str = "") -> str:
    """The text the router writes for ``ip``: mapped IPv4 as IPv4, IPv6 compressed."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ip}%{zone}" if zone else str(ip)


@given(v6s, ports)
def test_ipv6_forms_agree_and_round_trip(ip: ipaddress.IPv6Address, port: int) -> None:
    forms = [f"[{ip}]:{port}", f"[{ip.exploded}]:{port}", f"[{str(ip).upper()}]:{port}"]
    if ip.is_link_local and ip.ipv4_mapped is None:
        for text in forms:
            try:
                parse_peer_address(text)
            except LocalProtocolError as exc:
                assert "zone" in exc.reason and "\n" not in exc.reason
            else:
                raise AssertionError(f"{text} accepted without a zone")
        return
    want = join_host_port(expected(ip), port)
    assert {parse_peer_address(t) for t in forms} == {want}
    assert parse_peer_address(want) == want
    assert split_host(want) == expected(ip)
    assert parse_peer_address(str(ip)) == join_host_port(expected(ip), DEFAULT_PORT)


@given(v6s.filter(lambda ip: ip.ipv4_mapped is None), zones, ports)
def test_zones_are_kept(ip: ipaddress.IPv6Address, zone: str, port: int) -> None:
    want = f"[{ip}%{zone}]:{port}"
    assert parse_peer_address(f"[{ip}%{zone}]:{port}") == want
    assert parse_peer_address(want) == want
    assert parse_peer_address(f"{ip}%{zone}") == f"[{ip}%{zone}]:{DEFAULT_PORT}"


@given(v4s, ports)
def test_ipv4_plain_or_mapped_is_one_text(ip: ipaddress.IPv4Address, port: int) -> None:
    want = f"{ip}:{port}"
    assert parse_peer_address(want) == want
    assert parse_peer_address(f"[::ffff:{ip}]:{port}") == want
    assert parse_peer_address(f"::ffff:{ip}") == f"{ip}:{DEFAULT_PORT}"


@given(v4s | v6s.filter(lambda ip: ip.ipv4_mapped is None), ports)
def test_socket_forms_are_inverse(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                  port: int) -> None:
    plain = (str(ip), port)
    mapped = socket_address(socket.AF_INET6, plain)
    assert ipaddress.ip_address(mapped[0]).version == 6
    assert normal_address((*mapped, 0, 0)) == plain
    assert socket_address(socket.AF_INET6, normal_address((*mapped, 0, 0))) == mapped
