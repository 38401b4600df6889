"""ADDR arguments of attach/detach: what is accepted, and the one-line refusals."""

from __future__ import annotations

import ipaddress

import pytest

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.attachments import parse_cidrs


def test_addresses_with_prefix_lengths_are_taken_as_given() -> None:
    assert parse_cidrs(["10.2.1.1/24", "10.3.0.7/16"]) == [
        ipaddress.IPv4Interface("10.2.1.1/24"), ipaddress.IPv4Interface("10.3.0.7/16")]
    assert parse_cidrs(["192.168.9.0/31"]) == [ipaddress.IPv4Interface("192.168.9.0/31")]


@pytest.mark.parametrize("text, words", [
    ("10.2.1.1", "prefix length"),
    ("10.2.1.0/24", "network address"),
    ("10.2.1.255/24", "broadcast address"),
    ("127.0.0.5/8", "not a usable"),
    ("224.0.0.9/24", "not a usable"),
    ("banana/24", "not an IPv4"),
    ("10.2.1.1/33", "not an IPv4"),
    ("net:10.2.0.0/16", "needs IPAM"),
    ("net:default", "needs IPAM"),
])
def test_bad_addresses_are_refused_in_one_line(text: str, words: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_cidrs(["10.9.9.9/24", text])
    assert words in info.value.reason and "\n" not in info.value.reason
    assert info.value.reason.startswith(text)
