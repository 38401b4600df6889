"""ADDR parsing of attach and expose/hide over both families, under hypothesis, against
``ipaddress`` as the oracle: every ``IP/LEN`` either comes back as exactly that interface
or is refused with one line that starts with the text given, and only for the documented
reasons; ``net:CIDR`` is a subnet with its host bits zero; hide selects by IP, IP/LEN or
subnet whatever the family."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.host.attachments import parse_address_specs, parse_cidrs
from weftnet.router.host.expose import select

v4 = st.builds(lambda a, n: ipaddress.IPv4Interface((a, n)), st.integers(0, 2**32 - 1), st.integers(0, 32))
v6 = st.builds(lambda a, n: ipaddress.IPv6Interface((a, n)), st.integers(0, 2**128 - 1), st.integers(0, 128))
# addresses near interesting places: ULA, link-local, multicast, mapped, subnet edges
special6 = st.builds(lambda base, off, n: ipaddress.IPv6Interface((int(ipaddress.IPv6Address(base)) + off,
                                                                  n)),
                     st.sampled_from(["fd32::", "fe80::", "ff02::", "::ffff:0:0", "::", "2001:db8::"]),
                     st.integers(0, 3), st.sampled_from([64, 127, 128]))
ifaces = st.one_of(v4, v6, special6)


def expected_refusal(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bool:
    ip, net = iface.ip, iface.network
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        return True
    if isinstance(ip, ipaddress.IPv4Address):
        return net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address)
    return (ip.is_link_local or ip.ipv4_mapped is not None
            or (net.prefixlen < 127 and ip == net.network_address))


@given(ifaces)
def test_ip_len_is_taken_as_given_or_refused_in_one_line(iface: ipaddress.IPv4Interface
                                                          | ipaddress.IPv6Interface) -> None:
    text = str(iface)
    try:
        got = parse_cidrs([text])
    except LocalProtocolError as exc:
        assert expected_refusal(iface), (text, exc.reason)
        assert exc.reason.startswith(text) and "\n" not in exc.reason
        return
    assert not expected_refusal(iface), text
    assert got == [iface] and str(got[0]) == text
    assert parse_address_specs([text]) == [iface]


@given(st.one_of(v4, v6))
def test_net_cidr_is_a_subnet_with_host_bits_zero(iface: ipaddress.IPv4Interface
                                                  | ipaddress.IPv6Interface) -> None:
    text = f"net:{iface.ip}/{iface.network.prefixlen}"
    try:
        (got,) = parse_address_specs([text])
    except LocalProtocolError as exc:
        assert iface.ip != iface.network.network_address
        assert "not a subnet" in exc.reason and "\n" not in exc.reason
        return
    assert got == iface.network


@given(st.lists(st.one_of(v4, v6).filter(lambda i: not expected_refusal(i)), min_size=1, max_size=6,
                unique_by=lambda i: i.ip), st.integers(0, 5), st.sampled_from(["ip", "cidr", "net"]))
def test_hide_selects_by_ip_cidr_or_subnet_in_either_family(exposed: list[ipaddress.IPv4Interface
                                                                          | ipaddress.IPv6Interface],
                                                           pick: int, how: str) -> None:
    target = exposed[pick % len(exposed)]
    word = {"ip": str(target.ip), "cidr": str(target), "net": f"net:{target.network}"}[how]
    chosen = select(exposed, [word], None)
    assert target in chosen
    if how == "net":
        assert chosen == [c for c in exposed if c.network == target.network]
    else:
        assert all(c.ip == target.ip for c in chosen)
