"""Rotating the mesh password on real hosts without downtime (issue 18).

Three encrypted hosts, each launched with ``--password-file``; containers on them ping
each other every 0.1 s (c1 -> c2, c2 -> c3, c3 -> c1: every link, both ways) while the
operator rotates A -> [A, B] -> [B, A] -> [B], host by host, by atomically replacing each
host's file (one host per step by editing in place and sending SIGHUP instead). Checked:
every connection ends on the shared new password and no connection was lost on the way
(the router logs say so), pings keep being answered; the figures (pings lost, longest
gap between answers) are printed, not asserted against a time. Then: an empty or
missing file changes nothing (and says so in ``weft status``), a router with only A is
refused, and one with B joins.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from weftnet.router.host.datadir import DataDir
from weftnet.router.tools.testbed import Testbed

from .weftctl import established, launch, log_of, logs_on_failure, meshed, no_tracebacks, report, wait_for

HOSTS = ("h1", "h2", "h3")
A, B = "alpha rotation secret", "bravo rotation secret"
ADDRESSES = {"c1": "10.2.1.1", "c2": "10.2.1.2", "c3": "10.2.1.3"}
PINGS = (("c1", "c2"), ("c2", "c3"), ("c3", "c1"))
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(\d+)")


def pw_file(tb: Testbed, host: str) -> Path:
    return tb.tmpdir / f"{host}.pw"


def write_atomically(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# weft mesh passwords, preferred first\n" + "".join(f"{x}\n" for x in lines))
    os.replace(tmp, path)


def launch_with_file(tb: Testbed, host: str, lines: list[str], *peers: str) -> None:
    write_atomically(pw_file(tb, host), lines)
    launch(tb, host, *peers, password=None, extra=("--password-file", str(pw_file(tb, host))))


def conn_passwords(tb: Testbed, host: str) -> list[Any]:
    return [c["password"] for c in report(tb, host)["router"]["connections"]
            if c["state"] == "established"]


def password_file(tb: Testbed, host: str) -> dict[str, Any]:
    return report(tb, host)["router"]["password_file"]  # type: ignore[no-any-return]


def reaches(tb: Testbed, src: str, dst: str) -> Callable[[], bool]:
    return lambda: tb.ping(src, ADDRESSES[dst])


def reloaded(tb: Testbed, host: str, before: int) -> Callable[[], bool]:
    return lambda: int(password_file(tb, host)["reloads"]) > before


def start_pings(tb: Testbed) -> list[subprocess.Popen[str]]:
    return [tb.popen(src, ["ping", "-n", "-D", "-i", "0.1", "-W", "1", ADDRESSES[dst]],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for src, dst in PINGS]


Figures = tuple[int, int, float]  # answered, lost, longest gap between two answers (s)


def stop_pings(procs: list[subprocess.Popen[str]], split: float) -> list[tuple[Figures, Figures]]:
    """Per ping: its figures before ``split`` (a wall-clock time: ping -D's clock) and
    from then on."""
    figures = []
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        replies = [(float(m.group(1)), int(m.group(2)))
                   for m in map(REPLY.match, out.splitlines()) if m]
        assert replies, out[-2000:]
        figures.append((_figures([r for r in replies if r[0] < split]),
                        _figures([r for r in replies if r[0] >= split])))
    return figures


def _figures(replies: list[tuple[float, int]]) -> Figures:
    if not replies:
        return (0, 0, 0.0)
    seqs = {seq for _, seq in replies}
    lost = len(set(range(min(seqs), max(seqs) + 1)) - seqs)
    times = [t for t, _ in replies]
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    return (len(seqs), lost, round(gap, 3))


def lost_lines(tb: Testbed) -> list[str]:
    return [line for h in HOSTS for line in log_of(tb, h).splitlines()
            if "lost:" in line or "password retired" in line]


@pytest.mark.timeout(240)
def test_rotation_host_by_host_keeps_containers_talking(testbed_factory: Any) -> None:
    tb: Testbed = testbed_factory(hosts=HOSTS)
    with logs_on_failure(tb, HOSTS):
        launch_with_file(tb, "h1", [A])
        launch_with_file(tb, "h2", [A], tb.address("h1"))
        launch_with_file(tb, "h3", [A], tb.address("h1"), tb.address("h2"))
        wait_for("a full mesh", lambda: meshed(tb, HOSTS))
        for host, container in zip(HOSTS, ("c1", "c2", "c3"), strict=True):
            ns = tb.add_container(container)
            tb.weft(host, "attach", f"{ADDRESSES[container]}/24", ns)
        for src, dst in PINGS:
            wait_for(f"{src} reaches {dst}", reaches(tb, src, dst))
        assert all(conn_passwords(tb, h) == [2, 2] for h in HOSTS)  # line 1 is a comment

        pings = start_pings(tb)
        # a baseline for comparison: the same pings while the test polls the routers'
        # reports as it does during the rotation (each poll is a CLI process), no rotation
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            password_file(tb, HOSTS[int(deadline - time.monotonic()) % 3])
            time.sleep(0.2)
        split, started = time.time(), time.monotonic()
        for lines in ([A, B], [B, A], [B]):
            for host in HOSTS:
                before = password_file(tb, host)["reloads"]
                if lines == [B, A] and host == "h2":  # in place, then SIGHUP
                    pw_file(tb, host).write_text(f"{B}\n{A}\n")
                    pid = DataDir(tb.data_dir(host)).running_pid()
                    assert pid is not None
                    os.kill(pid, signal.SIGHUP)
                else:
                    write_atomically(pw_file(tb, host), lines)
                wait_for(f"{host} reads {lines}", reloaded(tb, host, before), timeout=6)
                time.sleep(0.5)
        wait_for("every connection on the new password",
                 lambda: all(conn_passwords(tb, h) == [2, 2] for h in HOSTS), timeout=10)
        time.sleep(1)
        both = stop_pings(pings, split)
        elapsed = time.monotonic() - started
        print(f"\npings (answered, lost, longest gap s): baseline: {[q for q, _ in both]}; "
              f"through the rotation ({elapsed:.1f} s): {[r for _, r in both]}")
        figures = [r for _, r in both]
        assert meshed(tb, HOSTS)
        assert lost_lines(tb) == []  # no connection ended on the way
        assert "SIGHUP: re-reading the password file" in log_of(tb, "h2")
        for answered, _, _ in figures:
            assert answered > 0.5 * elapsed / 0.1  # the pings kept being answered
        for host in HOSTS:
            assert password_file(tb, host) == {"path": str(pw_file(tb, host)), "passwords": 1,
                                               "lines": [2], "problem": None, "reloads": 3}

        # an empty or missing file changes nothing, and weft status says why
        for breakage in ("empty", "missing"):
            path = pw_file(tb, "h1")
            if breakage == "empty":
                path.write_text("# nothing here\n")
            else:
                path.unlink()
            wait_for(f"h1 notices the {breakage} file",
                     lambda: password_file(tb, "h1")["problem"] is not None, timeout=6)
            status = tb.weft("h1", "status").stdout
            (line,) = [x for x in status.splitlines() if "PasswordFile:" in x]
            assert "keeping the 1 password in use" in line, line
            assert tb.ping("c1", ADDRESSES["c2"]) and meshed(tb, HOSTS)
            assert conn_passwords(tb, "h1") == [2, 2]
            write_atomically(path, [B])
            wait_for("h1 reads its file again",
                     lambda: password_file(tb, "h1")["problem"] is None, timeout=6)
        assert lost_lines(tb) == []

        # a router with only the old password is refused; with the new one it joins
        tb.weft("h3", "stop")
        launch_with_file(tb, "h3", [A])
        wait_for("h3 refused", lambda: any(
            "wrong password" in c["info"] for c in report(tb, "h3")["router"]["connections"]))
        assert established(report(tb, "h3")) == set()
        tb.weft("h3", "stop")
        launch_with_file(tb, "h3", [B])
        wait_for("h3 joins", lambda: meshed(tb, HOSTS))
        assert tb.ping("c3", ADDRESSES["c1"], timeout=5)
        status = tb.weft("h1", "status", "connections").stdout
        assert status.count("password=2") == 2, status
        no_tracebacks(tb, HOSTS)
