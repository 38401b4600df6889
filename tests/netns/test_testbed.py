"""The testbed itself: hosts reach each other only over shared segments, nothing leaks into
the machine's own network namespace, and everything goes away again, even after failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from weftnet.router.tools import testbed as testbed_mod
from weftnet.router.tools.ownership import record_path
from weftnet.router.tools.testbed import (
    DEFAULT_PATTERN,
    CommandFailed,
    NftablesMissing,
    Testbed,
    TestbedError,
    list_namespaces,
    sweep_stale,
)

from .conftest import TestbedFactory


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":", 2)[1].strip() for line in out.splitlines())


def ours(prefix: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(f"{prefix}-")]


def assert_gone(tb: Testbed) -> None:
    assert tb.closed
    assert ours(tb.prefix) == []
    assert not tb.tmpdir.exists()
    assert not record_path(tb.prefix).exists()


def test_hosts_ping_each_other(testbed: Testbed) -> None:
    assert [testbed.address(h) for h in testbed.hosts] == ["172.31.1.1", "172.31.1.2", "172.31.1.3"]
    for src in testbed.hosts:
        for dst in testbed.hosts:
            assert testbed.ping(src, testbed.address(dst)), f"{src} cannot ping {dst}"
    # The plain form the brief names, too.
    testbed.run("h1", ["ping", "-c1", "-W1", testbed.address("h3")])


def test_two_segments_reach_only_their_neighbours(testbed_factory: TestbedFactory) -> None:
    tb = testbed_factory(segments={"a": ["h1", "h2"], "b": ["h2", "h3"]})
    assert tb.address("h2") == tb.address("h2", "a") == "172.31.1.2"
    assert tb.address("h2", "b") == "172.31.2.2"
    assert tb.address("h3") == "172.31.2.3"
    assert tb.interfaces("h2") == ["eth0", "eth1"]
    brief = tb.run("h2", ["ip", "-br", "-4", "addr", "show", "dev", "eth1"]).stdout
    assert "172.31.2.2/24" in brief
    assert tb.ping("h1", tb.address("h2", "a"))
    assert tb.ping("h3", tb.address("h2", "b"))
    assert tb.ping("h2", tb.address("h1")) and tb.ping("h2", tb.address("h3"))
    # h2 does not forward and h1 has no route to 172.31.2.0/24: h3 is out of reach.
    assert not tb.ping("h1", tb.address("h3"))
    assert not tb.ping("h3", tb.address("h1"))
    with pytest.raises(KeyError):
        tb.address("h1", "b")


def test_close_removes_everything_and_root_namespace_is_untouched() -> None:
    before = root_links()
    # Any link created, changed or deleted in the root namespace, even for a moment, shows here.
    monitor = subprocess.Popen(["ip", "-o", "monitor", "link"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        tb = Testbed(hosts=("a", "b", "c", "d"), segments={"x": ["a", "b", "c"], "y": ["c", "d"]})
        names = tb.namespaces
        assert set(names) <= set(list_namespaces())
        assert tb.data_dir("a").is_dir()
        tb.close()
        tb.close()  # idempotent
        time.sleep(0.2)
    finally:
        monitor.terminate()
        events, _ = monitor.communicate(timeout=5)
    assert_gone(tb)
    assert not set(names) & set(list_namespaces())
    assert events.strip() == ""
    assert root_links() == before
    with pytest.raises(TestbedError):
        tb.run("a", ["true"])


def test_exception_in_with_block_cleans_up() -> None:
    with pytest.raises(RuntimeError, match="boom"), Testbed(hosts=("h1", "h2")) as tb:
        assert len(ours(tb.prefix)) == 3
        raise RuntimeError("boom")
    assert_gone(tb)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_setup_failing_midway_cleans_up(
    monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    real_ip: Callable[..., subprocess.CompletedProcess[str]] = testbed_mod.run_ip
    added: list[str] = []
    veths: list[tuple[str, ...]] = []

    def flaky_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("netns", "add"):
            added.append(args[2])
        if "veth" in args:
            veths.append(args)
            if len(veths) == 2:  # hosts and switch exist, one veth pair is made
                raise error("injected failure")
        return real_ip(*args, check=check)

    monkeypatch.setattr(testbed_mod, "run_ip", flaky_ip)
    before = root_links()
    with pytest.raises(error, match="injected"):
        Testbed(hosts=("h1", "h2"))
    assert len(added) == 3
    prefix = added[0].split("-")[0]
    assert ours(prefix) == []
    assert not record_path(prefix).exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"weft-testbed-{prefix}-*"))
    assert root_links() == before


def test_run_env_and_errors(testbed: Testbed) -> None:
    out = testbed.run("h2", ["sh", "-c", 'echo "$WEFT_DATA_DIR $X"'], env={"X": "extra"}).stdout
    assert out.split() == [str(testbed.data_dir("h2")), "extra"]
    assert testbed.data_dir("h1") != testbed.data_dir("h2")
    assert testbed.run("h1", ["cat"], input="piped").stdout == "piped"
    with pytest.raises(CommandFailed) as failed:
        testbed.run("h1", ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"])
    assert failed.value.returncode == 3
    assert "to-out" in str(failed.value) and "to-err" in str(failed.value)
    assert testbed.run("h1", ["false"], check=False).returncode == 1
    with pytest.raises(CommandFailed, match="timed out"):
        testbed.run("h1", ["sleep", "5"], timeout=0.5)
    with pytest.raises(KeyError):
        testbed.ns("nope")
    weft = testbed.weft("h1", "--help", check=False)
    assert weft.args[:3] == [sys.executable, "-m", "weftnet.router.programs.cli"]


def test_close_kills_every_process_in_the_namespaces(testbed_factory: TestbedFactory) -> None:
    tb = testbed_factory(hosts=("h1",))
    child = tb.popen("h1", ["sleep", "600"])
    # A daemon that detaches from us, like `weft launch` leaves behind.
    out = tb.run("h1", ["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!"]).stdout
    daemon = int(out.strip())
    # One that ignores SIGTERM and must be killed.
    stubborn = tb.popen("h1", ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"])
    time.sleep(0.2)
    started = time.monotonic()
    tb.close()
    assert time.monotonic() - started < 10
    assert child.poll() is not None and stubborn.poll() is not None
    assert not Path(f"/proc/{daemon}").exists() or "Z" in Path(f"/proc/{daemon}/stat").read_text()
    assert_gone(tb)


def test_sweep_removes_crashed_runs_only(testbed_factory: TestbedFactory) -> None:
    live = testbed_factory(hosts=("h1",))
    crash = (
        "import os, signal\n"
        "from weftnet.router.tools.testbed import Testbed\n"
        "tb = Testbed(hosts=('h1', 'h2'))\n"
        "tb.popen('h1', ['sleep', '600'], stdout=-3, stderr=-3)  # DEVNULL\n"
        "print(tb.prefix, tb.tmpdir, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    prefix, tmpdir = proc.stdout.split()
    left = ours(prefix)
    assert len(left) == 3 and Path(tmpdir).is_dir()
    try:
        with pytest.raises(TestbedError, match="earlier run"):
            Testbed(hosts=("h1",), prefix=prefix)
        removed = sweep_stale(DEFAULT_PATTERN)
        assert set(left) <= set(removed)
        assert not set(live.namespaces) & set(removed)
        assert ours(prefix) == [] and not Path(tmpdir).exists()
        assert live.ping("h1", live.address("h1"))
    finally:
        sweep_stale(f"^{prefix}-")


_RECEIVE = """\
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", 5000))
s.settimeout(1)
n = 0
print("ready", flush=True)
try:
    while True:
        s.recv(100)
        n += 1
except TimeoutError:
    print(n)
"""
_SEND = """\
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"x", (sys.argv[1], 5000))
    time.sleep(0.0005)
"""


_RECEIVE_GRO = """\
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 104, 1)  # UDP_GRO
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
s.bind(("", 5000))
s.settimeout(1)
reads = size = 0
print("ready", flush=True)
try:
    while True:
        size += len(s.recv(65536))
        reads += 1
except TimeoutError:
    print(reads, size)
"""
_SEND_GSO = """\
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendmsg([bytes(1000 * 40)], [(17, 103, (1000).to_bytes(2, "little"))], 0,
              (sys.argv[1], 5000))  # UDP_SEGMENT: 40 datagrams of 1000 bytes in one send
    time.sleep(0.002)
"""


def exchange(tb: Testbed, src: str, dst: str, receive: str, send: str, count: int) -> str:
    """Start the ``receive`` script on ``dst``, run ``send`` on ``src`` (to ``dst``'s
    address, ``count`` times); what the receiver printed when the datagrams stopped."""
    receiver = tb.popen(dst, [sys.executable, "-c", receive], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready"
    tb.run(src, [sys.executable, "-c", send, tb.address(dst), str(count)])
    out, _ = receiver.communicate(timeout=30)
    return out


def gso_received(tb: Testbed, src: str, dst: str, sends: int) -> tuple[int, int]:
    """(reads, datagrams) of a UDP_GRO reader on ``dst`` after ``sends`` GSO sends of 40."""
    reads, size = map(int, exchange(tb, src, dst, _RECEIVE_GRO, _SEND_GSO, sends).split())
    return reads, size // 1000


def test_loss_is_per_datagram_on_the_wire_and_gro_merges_the_rest(
        testbed_factory: TestbedFactory) -> None:
    """A GSO send loses single datagrams, not all of itself at once, and the survivors reach
    a UDP_GRO reader in trains, as from a NIC with GRO (an nftables drop after GRO would
    take whole trains; one without GRO leaves one read per datagram)."""
    tb = testbed_factory(hosts=("h1", "h2"))
    tb.set_loss("h2", 10)
    reads, got = gso_received(tb, "h1", "h2", 200)  # 8000 datagrams
    assert 8000 * 0.85 < got < 8000 * 0.95, got  # ~10 % dropped, > 9 sigma of slack
    assert reads < got / 3, (reads, got)  # trains: ~9 datagrams on average between drops
    tb.set_loss("h2", 0)
    reads, got = gso_received(tb, "h1", "h2", 50)
    assert got == 2000 and reads <= 100, (reads, got)


def udp_received(tb: Testbed, src: str, dst: str, count: int) -> int:
    return int(exchange(tb, src, dst, _RECEIVE, _SEND, count))


def test_block_udp_port_and_loss(testbed_factory: TestbedFactory) -> None:
    tb = testbed_factory(hosts=("h1", "h2"))
    try:
        tb.block_udp_port("h2", 5000)
    except NftablesMissing as exc:
        pytest.skip(str(exc))
    tb.block_udp_port("h2", 5000)  # idempotent
    assert udp_received(tb, "h1", "h2", 50) == 0
    assert tb.ping("h1", tb.address("h2")), "only UDP is blocked"
    tb.unblock("h2", 5000)
    assert udp_received(tb, "h1", "h2", 50) == 50

    tb.set_loss("h2", 30)
    got = udp_received(tb, "h1", "h2", 400)
    assert 400 * 0.55 < got < 400 * 0.85, got  # ~30 % dropped, more than 6 sigma of slack
    tb.set_loss("h2", 100)
    assert udp_received(tb, "h1", "h2", 20) == 0
    tb.set_loss("h2", 0)
    assert udp_received(tb, "h1", "h2", 50) == 50
    with pytest.raises(ValueError):
        tb.set_loss("h2", 101)


def _launch_available() -> bool:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "weftnet.router.programs.cli", "launch", "--help"],
            capture_output=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


@pytest.mark.timeout(240)
def test_demo_runs() -> None:
    if not _launch_available():
        pytest.skip("the router CLI has no `launch` yet")
    before = root_links()
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from weftnet.router.tools.demo import run_demo; "
         "sys.exit(run_demo([]))"],
        capture_output=True,
        text=True,
        timeout=200,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "encrypted" in proc.stdout
    assert not [ns for ns in list_namespaces() if ns.startswith("weftdemo-")]
    assert root_links() == before


UDP_ECHO_SOURCE = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.settimeout(5)
for dst in sys.argv[3:]:
    s.sendto(b"x", (dst, int(sys.argv[1])))
    print(s.recvfrom(64)[0].decode(), flush=True)
"""

UDP_REFLECT = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    _, (ip, port) = s.recvfrom(64)
    s.sendto(f"{ip}:{port}".encode(), (ip, port))
"""


def test_nat_gateways_masquerade_and_drop_the_unasked(testbed_factory: TestbedFactory) -> None:
    """h2 behind a port-preserving gateway, h3 behind a symmetric one, h1 and h4 public."""
    before = root_links()
    tb = testbed_factory(hosts=("h1", "h2", "h3", "h4"),
                         nat={"h2": testbed_mod.Nat(), "h3": testbed_mod.Nat(symmetric=True)})
    assert [tb.address(h) for h in tb.hosts] == ["172.31.1.1", "172.20.2.2", "172.20.3.2",
                                                 "172.31.1.4"]
    assert tb.public_address("h2") == "172.31.1.2" and tb.public_address("h1") == "172.31.1.1"
    assert sorted(ours(tb.prefix)) == sorted(tb.namespaces)
    assert {tb.ns(tb.gateway(h)) for h in ("h2", "h3")} == {f"{tb.prefix}-gw2", f"{tb.prefix}-gw3"}
    with pytest.raises(KeyError):
        tb.gateway("h1")
    # out through the gateways works; nothing gets in unasked, not even a ping to a gateway
    assert tb.ping("h2", tb.address("h1")) and tb.ping("h3", tb.address("h4"))
    assert not tb.ping("h1", tb.public_address("h2"))
    assert not tb.ping("h1", tb.address("h2"))  # no route to the private side at all
    assert not tb.ping("h2", tb.public_address("h3"))
    # forwarding is on in the gateways only
    for ns in ("h1", "h2", tb.gateway("h2")):
        fwd = tb.run(ns, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
        assert fwd == ("1" if ns.startswith("gw") else "0"), ns

    # what h1 and h4 see as the source: the gateway's address; the easy NAT keeps the port
    # for every destination, the symmetric one picks one per destination
    for h in ("h1", "h4"):
        r = tb.popen(h, [sys.executable, "-c", UDP_REFLECT, "7000"], stdout=subprocess.PIPE,
                     text=True)
        assert r.stdout is not None and r.stdout.readline().strip() == "ready"
    dsts = [tb.address("h1"), tb.address("h4")]
    easy = tb.run("h2", [sys.executable, "-c", UDP_ECHO_SOURCE, "7000", "40000", *dsts])
    assert easy.stdout.split() == ["172.31.1.2:40000"] * 2
    hard = tb.run("h3", [sys.executable, "-c", UDP_ECHO_SOURCE, "7000", "40000", *dsts])
    seen = hard.stdout.split()
    assert [s.split(":")[0] for s in seen] == ["172.31.1.3"] * 2
    assert len(set(seen)) == 2, f"the symmetric NAT reused a mapping: {seen}"

    # a flush forgets the mapping (the drop rule then refuses the return traffic of the old
    # one); timeouts are set in the gateway's own namespace
    tb.nat_flush("h2")
    tb.nat_timeouts("h2", udp=3, udp_stream=4)
    got = tb.run(tb.gateway("h2"), ["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout",
                                    "net.netfilter.nf_conntrack_udp_timeout_stream"]).stdout
    assert got.split() == ["3", "4"]
    assert tb.run("h1", ["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout"],
                  check=False).stdout.strip() != "3"

    # counting what crosses a host's underlay
    tb.count_underlay("h1")
    assert tb.underlay_bytes("h1") == 0
    assert tb.ping("h2", tb.address("h1"))
    assert tb.underlay_bytes("h1") >= 2 * 84  # an echo request and its reply, IP and up

    tb.close()
    assert_gone(tb)
    assert root_links() == before


def test_nat_validation(testbed_factory: TestbedFactory) -> None:
    with pytest.raises(ValueError, match="unknown host"):
        Testbed(hosts=("h1",), nat={"h9": testbed_mod.Nat()})
    with pytest.raises(ValueError, match="exactly one segment"):
        Testbed(hosts=("h1", "h2"), segments={"a": ["h1", "h2"], "b": ["h2"]},
                nat={"h2": testbed_mod.Nat()})
    with pytest.raises(ValueError, match="bad host name"):
        Testbed(hosts=("h1", "gw2"))
