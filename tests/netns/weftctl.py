"""Small helpers for driving routers in a Testbed through the CLI, as a user would."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from weftnet.router.host.datadir import DataDir
from weftnet.router.tools.testbed import Testbed

PASSWORD = "correct horse battery staple"


def report(tb: Testbed, host: str) -> dict[str, Any]:
    out = tb.weft(host, "report").stdout
    return json.loads(out)  # type: ignore[no-any-return]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def established(rep: dict[str, Any]) -> set[str]:
    return {c["peer"]["nickname"] for c in rep["router"]["connections"]
            if c["state"] == "established" and c["peer"]}


def meshed(tb: Testbed, hosts: tuple[str, ...]) -> bool:
    """Whether each of ``hosts`` has an established connection to every other."""
    return all(established(report(tb, h)) == set(hosts) - {h} for h in hosts)


def launch(tb: Testbed, host: str, *peers: str, password: str | None = PASSWORD,
           extra: tuple[str, ...] = (), env: Mapping[str, str] | None = None,
           nickname: str | None = None, clock: str | None = None) -> str:
    """``weft launch --nickname HOST EXTRA PEERS`` in ``host``; returns the peer name it
    prints. ``env`` adds variables (``WEFT_IPAM_GRACE``, ...). ``clock`` runs it under
    ``faketime -f CLOCK`` (the CLI and the router it starts). libfaketime shifts the
    monotonic clock by the same offset, which only ever measures intervals inside one
    process; with FAKETIME_DONT_FAKE_MONOTONIC=1 its clock_nanosleep wrapper makes Python's
    ``time.sleep`` fail with EINVAL, so that is not used."""
    argv = [sys.executable, "-m", "weftnet.router.programs.cli", "launch", "--nickname",
            nickname or host, *extra, *peers]
    if clock is not None:
        argv = ["faketime", "-f", clock, *argv]
    over = {**({"WEFT_PASSWORD": password} if password is not None else {}), **(env or {})}
    return tb.run(host, argv, env=over).stdout.strip()


def attach(tb: Testbed, host: str, container: str, *args: str,
           timeout: float = 90) -> ipaddress.IPv4Interface:
    """``weft attach ARGS CONTAINER`` on ``host`` (the container's namespace is made on
    first use); the one address it prints."""
    ns = tb.ns(container) if container in tb.containers else tb.add_container(container)
    out = tb.weft(host, "attach", *args, ns, timeout=timeout).stdout.split()
    assert len(out) == 1, out
    return ipaddress.IPv4Interface(out[0])


def ipam(tb: Testbed, host: str) -> dict[str, Any]:
    """The ``ipam`` part of ``host``'s report (IPAM must be on)."""
    rep = report(tb, host)["ipam"]
    assert rep is not None
    return rep  # type: ignore[no-any-return]


# --- router logs ---------------------------------------------------------------------------


def log_of(tb: Testbed, host: str) -> str:
    """``host``'s router log (empty before the first launch)."""
    path = tb.data_dir(host) / "weft.log"
    return path.read_text() if path.exists() else ""


def no_tracebacks(tb: Testbed, hosts: tuple[str, ...]) -> None:
    for h in hosts:
        log = log_of(tb, h)
        assert "Traceback" not in log, f"{h} logged a traceback:\n{log[-4000:]}"


@contextmanager
def logs_on_failure(tb: Testbed, hosts: tuple[str, ...]) -> Iterator[None]:
    """Print the end of every router's log when the block fails (pytest shows it with the
    error), and also when it passes if WEFT_TEST_LOGS is set (run with -s to see it)."""
    try:
        yield
    except BaseException:
        _print_logs(tb, hosts)
        raise
    if os.environ.get("WEFT_TEST_LOGS"):
        _print_logs(tb, hosts)


def _print_logs(tb: Testbed, hosts: tuple[str, ...]) -> None:
    for h in hosts:
        print(f"--- {h}'s log ---\n{log_of(tb, h)[-4000:]}")


# --- bulk TCP between containers: every byte arrives, in order (sha256 at both ends) ----------

TCP_SINK = """\
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
c.close()
print(n, h.hexdigest(), flush=True)
"""

TCP_SOURCE = """\
import hashlib, random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)  # returns when the sink has read everything and closed
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def bulk_tcp(tb: Testbed, server: str, server_ip: str, client: str, size: int, *,
             seed: int = 7, port: int = 5001, timeout: float = 120.0) -> None:
    """Send ``size`` seeded random bytes over one TCP connection from ``client`` to
    ``server_ip`` (an address of ``server``) and assert that exactly those bytes arrived."""
    sink = tb.popen(server, [sys.executable, "-c", TCP_SINK, server_ip, str(port)],
                    stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        sent = tb.run(client, [sys.executable, "-c", TCP_SOURCE, server_ip, str(port), str(seed),
                               str(size)], timeout=timeout).stdout.split()
        got = sink.stdout.readline().split()
        assert got == sent, f"sent {sent} (seed {seed}), received {got}: the bytes differ"
        assert int(got[0]) == size
    finally:
        sink.kill()
        sink.wait()


# --- UDP datagrams between containers: how many arrive -------------------------------------

UDP_COUNTER = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
got = 0
try:
    while True:
        s.recv(65536)
        got += 1
except socket.timeout:
    pass
print(got, flush=True)
"""

UDP_SEND = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""


def udp_listen(tb: Testbed, host: str, address: str, port: int, *,
               quiet: float) -> subprocess.Popen[str]:
    """Count the datagrams ``host`` receives on ``address:port`` until none has come for
    ``quiet`` seconds; returns once the socket is bound. ``udp_count`` reads the count."""
    proc = tb.popen(host, [sys.executable, "-c", UDP_COUNTER, address, str(port), str(quiet)],
                    stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def udp_count(listener: subprocess.Popen[str], timeout: float = 60) -> int:
    try:
        return int(listener.communicate(timeout=timeout)[0])
    finally:
        listener.kill()


def udp_send(tb: Testbed, host: str, address: str, port: int, payload: str = "hello") -> None:
    """One datagram from ``host`` (broadcast addresses allowed)."""
    tb.run(host, [sys.executable, "-c", UDP_SEND, address, str(port), payload])


# --- router processes: pid, memory, descriptors, kill -9 -----------------------------------


def router_pid(tb: Testbed, host: str) -> int:
    """The pid of ``host``'s router, from the pid file in its data dir."""
    return int((tb.data_dir(host) / "weft.pid").read_text())


def process_usage(pid: int) -> tuple[int, int]:
    """(resident memory in KiB from ``/proc/PID/status`` VmRSS, open file descriptors)."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def kill9(tb: Testbed, host: str) -> int:
    """SIGKILL ``host``'s router, wait until it is gone and its data dir lock with it, and
    return the pid it had.

    The lock, not the process state, says when a relaunch can start: the main thread of a
    killed process shows as a zombie while its other threads are still exiting, and the
    lock's file stays open until the last of them is gone."""
    pid = router_pid(tb, host)
    os.kill(pid, signal.SIGKILL)
    datadir = DataDir(tb.data_dir(host))

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return False
        except OSError:
            pass
        return not datadir.is_locked()
    wait_for(f"{host}'s router (pid {pid}) to die and release its data dir", gone, timeout=10)
    return pid


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """A refused CLI call: exit 1, nothing on stdout, one ``weft: ...`` line on stderr."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", proc.stdout
    assert proc.stderr.startswith("weft: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr
