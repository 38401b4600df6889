"""``weft bench --peers`` on real namespace hosts: every peer installed here is measured
(container to container and host to host through its tunnel, with the CPU seconds of its
daemons), every other one is skipped with the command that installs it. Figures are
checked to exist, not for size."""

from __future__ import annotations

import json

import pytest

from weftnet.router.tools.benchpeers import HOST_TO_HOST, PEERS, missing

from .test_bench import need_tools, run_bench

pytestmark = pytest.mark.netns


@pytest.mark.timeout(600)
def test_peers_are_measured_or_skipped_with_how_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    need_tools("iperf3", "ping")
    status, out, err = run_bench(["--paths", "kernel-vxlan", "--peers", "--duration", "1",
                                  "--quick", "--no-loss", "--json"], capsys)
    assert status == 0, err
    doc = json.loads(out)
    rows = [[p] if missing(p) else [p, p + HOST_TO_HOST] for p in PEERS]
    assert list(doc["paths"]) == ["kernel-vxlan", *(r for pair in rows for r in pair)]
    for peer in PEERS:
        why = missing(peer)
        if why is not None:
            row = doc["paths"][peer]
            assert row["status"] == "skipped" and "apt-get install" in row["reason"], row
            continue
        for name in (peer, peer + HOST_TO_HOST):  # container to container, host to host
            row = doc["paths"][name]
            assert row["status"] == "ok", (name, row["reason"])
            assert row["tcp_gbps"] > 0 and row["ratio"] > 0 and row["ping_ms"]["received"] > 0
            assert row["cpu_s_per_gb"] > 0
    assert "cpu_s_per_gb" not in doc["paths"]["kernel-vxlan"]
