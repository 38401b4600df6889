"""The testbed's NAT gateway recipe (``router/tools/natgw.py``): the nftables script and the
sysctls it sets, without a namespace (tests/netns/test_testbed.py runs them for real)."""

from __future__ import annotations

import ipaddress

import pytest

from weftnet.router.tools.natgw import (
    gateway_sysctls,
    nat_ruleset,
    private_net,
    timeout_sysctls,
)


def test_private_net_per_host_number() -> None:
    net = private_net(2)
    assert net == ipaddress.IPv4Network("172.20.2.0/24")
    assert (str(net[1]), str(net[2])) == ("172.20.2.1", "172.20.2.2")
    for bad in (0, 255):
        with pytest.raises(ValueError):
            private_net(bad)


def test_easy_nat_masquerades_port_preserving_and_drops_the_unasked() -> None:
    text = nat_ruleset(private_net(3))
    lines = [line.strip() for line in text.splitlines()]
    assert 'ip saddr 172.20.3.0/24 oifname "pub" masquerade' in lines
    assert "random" not in text  # Linux keeps the source port when it is free
    assert "type nat hook postrouting priority srcnat; policy accept;" in lines
    # forward and input each: established/related first, then drop, only on pub
    for hook in ("forward", "input"):
        chain = text.split(f"chain {hook} {{", 1)[1].split("}", 1)[0].strip().splitlines()
        assert [c.strip() for c in chain] == [
            f"type filter hook {hook} priority filter; policy accept;",
            'iifname "pub" ct state established,related accept',
            'iifname "pub" drop',
        ]
    assert text.count("{") == text.count("}")


def test_symmetric_nat_takes_a_random_port_per_destination() -> None:
    text = nat_ruleset(private_net(3), symmetric=True)
    assert 'oifname "pub" masquerade random,fully-random' in text


def test_a_rebinding_pins_the_routers_udp_port_and_ranges_the_rest() -> None:
    text = nat_ruleset(private_net(3), ports=(40000, 40999), pin={6783: 40000})
    lines = [line.strip() for line in text.splitlines() if "masquerade" in line]
    assert lines == [
        'ip saddr 172.20.3.0/24 oifname "pub" udp sport 6783 masquerade to :40000',
        'ip saddr 172.20.3.0/24 oifname "pub" meta l4proto { tcp, udp } masquerade to :40000-40999',
        'ip saddr 172.20.3.0/24 oifname "pub" masquerade',
    ]
    with pytest.raises(ValueError):
        nat_ruleset(private_net(3), pin={6783: 80})


def test_only_private_testbed_subnets() -> None:
    with pytest.raises(ValueError):
        nat_ruleset(ipaddress.IPv4Network("10.0.0.0/24"))


def test_sysctls() -> None:
    assert gateway_sysctls() == {"net.ipv4.ip_forward": "1"}
    assert timeout_sysctls(udp=5) == {"net.netfilter.nf_conntrack_udp_timeout": "5"}
    assert timeout_sysctls(udp=5, udp_stream=9) == {
        "net.netfilter.nf_conntrack_udp_timeout": "5",
        "net.netfilter.nf_conntrack_udp_timeout_stream": "9",
    }
    assert timeout_sysctls() == {}
    with pytest.raises(ValueError):
        timeout_sysctls(udp=0)
