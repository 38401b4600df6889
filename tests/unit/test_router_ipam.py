"""The router's IPAM glue that needs no namespaces: ADDR parsing for attach and the
mapping of ``--ipalloc-init`` to the core's InitMode."""

from __future__ import annotations

import argparse
from ipaddress import IPv4Interface, IPv4Network

import pytest

from weftnet.ipam.mode import ConsensusInit, ObserverInit, SeedInit
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.daemon.config import add_launch_arguments, config_from_args, ipalloc_init_mode
from weftnet.router.daemon.ipam_driver import ipam_grace
from weftnet.router.host.attachments import parse_address_specs


def launch_ns(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    return parser.parse_args(list(args))


def test_address_specs() -> None:
    assert parse_address_specs([]) == [None]
    assert parse_address_specs(["net:default", "net:10.40.1.0/24", "10.2.1.1/24"]) == [
        None, IPv4Network("10.40.1.0/24"), IPv4Interface("10.2.1.1/24")]


@pytest.mark.parametrize(("text", "message"), [
    ("net:10.40.1.1/24", "not an IPv4 subnet"),
    ("net:nonsense", "not an IPv4 subnet"),
    ("10.2.1.1", "prefix length"),
    ("10.2.1.0/24", "network address"),
])
def test_bad_address_specs(text: str, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        parse_address_specs([text])


def test_init_mode_defaults_to_consensus_of_the_initial_peers() -> None:
    assert ipalloc_init_mode(None, 0) == ConsensusInit(1)
    assert ipalloc_init_mode(None, 2) == ConsensusInit(3)
    assert ipalloc_init_mode("consensus", 1) == ConsensusInit(2)
    assert ipalloc_init_mode("consensus=5", 1) == ConsensusInit(5)
    assert ipalloc_init_mode("observer", 3) == ObserverInit()
    seeds = ipalloc_init_mode("seed=02:00:00:00:00:02,02:00:00:00:00:01", 0)
    assert seeds == SeedInit((0x020000000001, 0x020000000002))


def test_init_mode_from_launch_options() -> None:
    cfg = config_from_args(launch_ns("--ipalloc-init", "consensus=3", "10.0.0.2"))
    assert ipalloc_init_mode(cfg.ipalloc_init, len(cfg.peers)) == ConsensusInit(3)
    cfg = config_from_args(launch_ns("10.0.0.2", "10.0.0.3"))
    assert ipalloc_init_mode(cfg.ipalloc_init, len(cfg.peers)) == ConsensusInit(3)


def test_grace_period_from_the_environment() -> None:
    assert ipam_grace({}) == 30.0  # Weave's containerDiedTimeout
    assert ipam_grace({"WEFT_IPAM_GRACE": " 2.5 "}) == 2.5
    assert ipam_grace({"WEFT_IPAM_GRACE": "0"}) == 0.0
    for bad in ("-1", "soon", "nan", "1e9"):
        with pytest.raises(LocalProtocolError, match=r"invalid WEFT_IPAM_GRACE=.*0 to 604800"):
            ipam_grace({"WEFT_IPAM_GRACE": bad})
