"""How the Router wires its parts (router/daemon/router.py), on a router not started:
which timer sources the one timer task serves and whom the namespace watcher tells."""

from __future__ import annotations

import argparse
from pathlib import Path

import trio

from weftnet.router.daemon.config import add_launch_arguments, config_from_args
from weftnet.router.daemon.router import Router
from weftnet.router.host.datadir import DataDir

ME = 0x020000000001


def router(tmp_path: Path, *args: str) -> Router:
    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--data-dir", str(tmp_path), *args]))
    return Router(cfg, DataDir(cfg.data_dir), ME, [])


def test_every_core_is_a_timer_source_and_every_driver_hears_of_namespaces(tmp_path: Path) -> None:
    async def main() -> None:
        r = router(tmp_path)
        assert r.ipam is not None and r.dns is not None
        assert r.punch is not None  # hole punching comes with discovery
        assert r.timers.sources == [r.mesh, r.dataplane, r.punch, r.ipam, r.dns, r.policy]
        assert r.watcher.users == [r.dns, r.ipam, r.policy]
        # one wall-clock offset, taken at start, for DNS and IPAM alike
        assert r.dns.wall_offset == r.ipam.alloc.wall_offset

    trio.run(main)


def test_without_dns_ipam_and_discovery_only_the_mesh_and_data_plane_want_waking(tmp_path: Path) -> None:
    async def main() -> None:
        r = router(tmp_path, "--no-dns", "--ipalloc-range", "", "--no-discovery")
        assert r.ipam is None and r.dns is None and r.punch is None
        assert r.timers.sources == [r.mesh, r.dataplane, r.policy] and r.watcher.users == [r.policy]
        assert r.report()["ipam"] is None and r.report()["dns"] is None

    trio.run(main)
