"""Small helpers for driving routers in a Testbed through the CLI, as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from weftnet.router.datadir import DataDir
from weftnet.router.testbed import Testbed

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


def launch(tb: Testbed, host: str, *peers: str, password: str | None = PASSWORD,
           extra: tuple[str, ...] = ()) -> str:
    env = {"WEFT_PASSWORD": password} if password is not None else {}
    out = tb.weft(host, "launch", "--nickname", host, *extra, *peers, env=env)
    return out.stdout.strip()


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


# --- router processes: pid, memory, descriptors, kill -9 (used by test_churn.py) -----------


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
