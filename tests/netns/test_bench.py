"""``weft bench`` on real namespace hosts, and the testbed's containers it is built on.

The bench runs are short (1 s of iperf3) and check that figures exist and make sense (a
positive throughput and RTT, loss that really costs retransmissions), never how large
they are: speed depends on the machine and its load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from weftnet.router.tools import bench
from weftnet.router.tools.testbed import DEFAULT_PATTERN, CommandFailed, list_namespaces, sweep_stale

from .conftest import TestbedFactory

pytestmark = pytest.mark.netns


def ours(prefix: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(f"{prefix}-")]


def prefix_of(progress: str) -> str:
    found = re.search(r"^testbed (wt[0-9a-f]{4}):", progress, re.M)
    assert found, progress
    return found.group(1)


def need_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed")


# --- testbed containers -------------------------------------------------------------------


def test_containers_belong_to_the_testbed(testbed_factory: TestbedFactory) -> None:
    tb = testbed_factory(hosts=("h1", "h2"))
    ns = tb.add_container("c1")
    assert ns == f"{tb.prefix}-c1" and re.match(DEFAULT_PATTERN, ns)
    assert tb.containers == ("c1",) and tb.ns("c1") == ns and ns in tb.namespaces
    assert ns in list_namespaces()
    links = tb.run("c1", ["ip", "-o", "link", "show"]).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]
    assert "UP" in tb.run("c1", ["ip", "-br", "link", "show", "lo"]).stdout
    assert tb.ping("c1", "127.0.0.1")
    assert not tb.ping("c1", tb.address("h1")), "a bare container reaches nothing"
    # Containers run commands like hosts, but without a router data dir.
    assert "WEFT_DATA_DIR" not in tb.env("c1")
    out = tb.popen("c1", ["ip", "-o", "link", "show"], stdout=subprocess.PIPE, text=True)
    assert out.communicate(timeout=10)[0] == links
    with pytest.raises(CommandFailed) as failed:
        tb.run("c1", ["false"])
    assert failed.value.host == "c1"
    for bad in ("h1", "c1", "sw0", "-x", ""):
        with pytest.raises(ValueError):
            tb.add_container(bad)
    # A router on a host wires a container like this: a veth made in the host, one end moved.
    tb.run("h1", ["ip", "link", "add", "vc1", "type", "veth", "peer", "name", "ethwe", "netns", ns])
    tb.run("h1", ["ip", "addr", "add", "10.9.0.1/24", "dev", "vc1"])
    tb.run("h1", ["ip", "link", "set", "vc1", "up"])
    tb.run("c1", ["ip", "addr", "add", "10.9.0.2/24", "dev", "ethwe"])
    tb.run("c1", ["ip", "link", "set", "ethwe", "up"])
    assert any(tb.ping("c1", "10.9.0.1") for _ in range(5))
    tb.remove_container("c1")
    assert not tb.containers and ns not in list_namespaces()
    assert "vc1" not in tb.run("h1", ["ip", "-o", "link", "show"]).stdout, "the pair went with it"
    with pytest.raises(KeyError):
        tb.ns("c1")
    assert tb.add_container("c1") == ns  # the name is free again
    tb.add_container("c2")
    sleeper = tb.popen("c2", ["sleep", "600"])
    names = tb.namespaces
    tb.close()
    assert sleeper.poll() is not None
    assert not set(names) & set(list_namespaces())


def test_env_none_unsets_a_variable(testbed_factory: TestbedFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEFT_PASSWORD", "from-the-caller")
    tb = testbed_factory(hosts=("h1",))
    show = ["sh", "-c", 'echo "${WEFT_PASSWORD-unset}"']
    assert tb.run("h1", show).stdout.strip() == "from-the-caller"
    assert tb.run("h1", show, env={"WEFT_PASSWORD": None}).stdout.strip() == "unset"
    assert tb.run("h1", show, env={"WEFT_PASSWORD": "x"}).stdout.strip() == "x"


def test_sweep_removes_containers_of_a_crashed_run() -> None:
    crash = (
        "import os, signal\n"
        "from weftnet.router.tools.testbed import Testbed\n"
        "tb = Testbed(hosts=('h1',))\n"
        "tb.add_container('c1')\n"
        "print(tb.prefix, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    prefix = proc.stdout.strip()
    try:
        assert f"{prefix}-c1" in ours(prefix)
        removed = sweep_stale(f"^{prefix}-")
        assert f"{prefix}-c1" in removed
        assert ours(prefix) == []
    finally:
        sweep_stale(f"^{prefix}-")


# --- the bench ----------------------------------------------------------------------------


def run_bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = bench.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert ours(prefix_of(err)) == [], "the bench left namespaces behind"
    return status, out, err


@pytest.mark.timeout(300)
def test_baseline_measures_throughput_and_rtt(capsys: pytest.CaptureFixture[str]) -> None:
    need_tools("iperf3", "ping")
    status, out, err = run_bench(
        ["--paths", "kernel-vxlan", "--duration", "1", "--json", "--no-loss"], capsys
    )
    assert status == 0, err
    doc = json.loads(out)
    assert list(doc["paths"]) == ["kernel-vxlan"]
    base = doc["paths"]["kernel-vxlan"]
    assert base["status"] == "ok", base["reason"]
    assert base["tcp_gbps"] > 0 and base["tcp_bytes"] > 0
    assert base["ratio"] == 1.0
    ping = base["ping_ms"]
    assert ping["received"] > 0 and 0 < ping["min"] <= ping["median"] <= ping["max"]
    assert ping["min"] <= ping["avg"] <= ping["max"]
    assert base["loss"] is None and doc["loss_percent"] is None
    assert doc["duration_s"] == 1 and doc["machine"]["cpus"] == os.cpu_count()


@pytest.mark.timeout(300)
def test_baseline_with_underlay_loss(capsys: pytest.CaptureFixture[str]) -> None:
    need_tools("iperf3", "ping", "nft")
    status, out, err = run_bench(["--paths", "kernel-vxlan", "--duration", "1", "--quick"], capsys)
    assert status == 0, err
    rows = [ln for ln in out.splitlines() if ln.startswith("kernel-vxlan")]
    assert len(rows) == 1, out
    cells = rows[0].split()
    # path, Gbit/s, x baseline, x row, ping, RTT x baseline, Gbit/s at 1% loss, x baseline@loss
    assert float(cells[1]) > 0 and float(cells[6]) > 0, out  # TCP Gbit/s clean and at 1% loss
    assert cells[2] == cells[3] == cells[5] == cells[7] == "1.00"
    assert "@1% loss" in out


@pytest.mark.timeout(300)
def test_loss_really_drops_packets(capsys: pytest.CaptureFixture[str]) -> None:
    need_tools("iperf3", "ping", "nft")
    status, out, err = run_bench(["--paths", "kernel-vxlan", "--duration", "1", "--quick", "--json"], capsys)
    assert status == 0, err
    base = json.loads(out)["paths"]["kernel-vxlan"]
    # Thousands of segments cross the underlay in a second; at 1% some are lost and resent.
    assert base["loss"]["status"] == "ok" and base["loss"]["tcp_gbps"] > 0
    assert base["loss"]["tcp_retransmits"] > 0


@pytest.mark.timeout(300)
def test_a_failing_path_does_not_stop_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    """The weft paths come and go with the data plane; whatever they do, the baseline after
    them is measured and a failure is one line, never a traceback."""
    need_tools("iperf3", "ping")
    argv = ["--paths", "sleeve-plain,kernel-vxlan", "--duration", "2", "--no-loss", "--json", "--wait", "15"]
    status, out, err = run_bench(argv, capsys)
    doc = json.loads(out)
    assert list(doc["paths"]) == ["sleeve-plain", "kernel-vxlan"]
    assert doc["paths"]["kernel-vxlan"]["status"] == "ok"
    plain = doc["paths"]["sleeve-plain"]
    if plain["status"] == "ok":
        assert status == 0 and plain["tcp_gbps"] > 0 and plain["ratio"] > 0
        # its RTT was measured in turns with a kernel VXLAN pair built beside it
        beside = plain["ping_baseline_beside_ms"]
        assert beside["received"] > 0 and plain["rtt_ratio"] > 0
        # and its throughput in turns with that pair's (2 turns of 1 s each)
        base = plain["tcp_baseline_beside_gbps"]
        assert base > 0 and plain["ratio"] == pytest.approx(plain["tcp_gbps"] / base, rel=1e-3)
        row = doc["paths"]["kernel-vxlan"]["tcp_gbps"]
        assert plain["row_ratio"] == pytest.approx(plain["tcp_gbps"] / row, rel=1e-3)
    else:
        assert status == 1 and plain["status"] == "failed"
        assert plain["reason"] and "\n" not in plain["reason"]
        assert plain["tcp_gbps"] is None and plain["ratio"] is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_cleans_up(sig: signal.Signals) -> None:
    need_tools("iperf3", "ping")
    argv = [sys.executable, "-m", "weftnet.router.tools.bench", "--paths", "kernel-vxlan", "--duration", "60"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "iperf3 TCP 60 s" in line:
                break
        prefix = prefix_of("".join(seen))
        assert ours(prefix), "the bench is running"
        proc.send_signal(sig)
        out, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert ours(prefix) == []
    assert not Path(f"/run/weft-testbed/{prefix}.json").exists()
    assert "interrupted" in out  # the (empty) table says so
