"""Named network namespaces and the commands run in them, for the testbed's hosts.

Everything goes through iproute2 from this (the machine's own) namespace, always with
``ip -n NS`` or an ``ip netns`` subcommand, so nothing is ever configured here: list and
delete namespaces, find and kill the processes inside, wait for links. ``TestbedError`` (and
``CommandFailed``, a command inside a host that failed, with its output) is what every part
of the testbed raises. ``sigint_deferred`` holds Ctrl-C while cleanup runs;
``sigterm_as_interrupt`` makes SIGTERM clean up like Ctrl-C (the demo and the bench).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL, and after SIGKILL
_IP_TIMEOUT = 30.0


class TestbedError(RuntimeError):
    """Setting up, using or tearing down the testbed failed; the message says what and why."""

    __test__ = False  # not a pytest test class, despite the name


class NftablesMissing(TestbedError):
    """The ``nft`` command is not installed; packet filter helpers cannot work."""


class CommandFailed(TestbedError, subprocess.CalledProcessError):
    """A command run inside a host exited non-zero (or timed out); carries its output."""

    def __init__(
        self,
        host: str,
        argv: Sequence[str],
        returncode: int,
        stdout: str,
        stderr: str,
        reason: str = "",
    ) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, list(argv), stdout, stderr)
        self.host = host
        self.reason = reason or f"exit status {returncode}"

    def __str__(self) -> str:
        out = (self.stdout or "").rstrip()
        err = (self.stderr or "").rstrip()
        return (
            f"on {self.host}: {_show(self.cmd)} failed ({self.reason})\n"
            f"--- stdout ---\n{out}\n--- stderr ---\n{err}"
        )


def _show(argv: Sequence[str] | str) -> str:
    return argv if isinstance(argv, str) else " ".join(argv)


def one_line(exc: BaseException) -> str:
    """A one-line reason for ``exc``; a failed command shows as ``on HOST: `cmd` failed: why``
    (its last line of stderr, else of stdout, else its exit status)."""
    if isinstance(exc, CommandFailed):
        detail = [ln.strip() for ln in (exc.stderr or "").splitlines() if ln.strip()]
        if not detail:
            detail = [ln.strip() for ln in (exc.stdout or "").splitlines() if ln.strip()]
        cmd = " ".join(str(a) for a in exc.cmd)
        cmd = cmd.replace(f"{sys.executable} -m weftnet.router.programs.cli", "weft")
        return f"on {exc.host}: `{cmd}` failed: {detail[-1] if detail else exc.reason}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def end_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM ``proc`` if it still runs; SIGKILL it when it has not exited after ``grace`` s."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` from here; every caller passes ``-n NS`` or a ``netns`` subcommand."""
    argv = ["ip", *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_IP_TIMEOUT)
    except FileNotFoundError as exc:
        raise TestbedError("the `ip` command (iproute2) is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{_show(argv)} did not finish in {_IP_TIMEOUT:.0f} s") from exc
    if check and proc.returncode != 0:
        raise TestbedError(f"{_show(argv)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc




def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``), sorted."""
    out = run_ip("netns", "list").stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def _netns_pids(ns: str) -> list[int]:
    proc = run_ip("netns", "pids", ns, check=False)
    if proc.returncode != 0:
        return []
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def kill_namespace_processes(namespaces: Sequence[str], grace: float = KILL_GRACE) -> None:
    """SIGTERM every process in these namespaces, wait up to ``grace`` s, then SIGKILL."""
    me = os.getpid()

    def alive() -> list[int]:
        return sorted({p for ns in namespaces for p in _netns_pids(ns) if p != me})

    def send(pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    pids = alive()
    if not pids:
        return
    send(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = alive()
    if pids:
        send(pids, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = alive()


def delete_namespaces(namespaces: Sequence[str]) -> list[str]:
    """Delete the namespaces that exist; return one error line per failure."""
    existing = set(list_namespaces())
    errors = []
    for ns in namespaces:
        if ns in existing:
            proc = run_ip("netns", "delete", ns, check=False)
            if proc.returncode != 0:
                errors.append(f"ip netns delete {ns}: {proc.stderr.strip()}")
        # per-namespace config a router wrote (resolv.conf for `ip netns exec`) goes too
        shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
    return errors


def links_up(ns: str) -> bool:
    """True when every link but loopback in ``ns`` is in operational state UP."""
    for line in run_ip("-n", ns, "-o", "link", "show").stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        if name != "lo" and " state UP " not in line:
            return False
    return True


def output_text(data: str | bytes | None) -> str:
    """What a process wrote, as text (``TimeoutExpired`` gives bytes, or None)."""
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C while cleaning up (main thread only), then deliver it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum: int, frame: object) -> None:
        pending.append(signum)

    old = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending and callable(old):
            old(signal.SIGINT, None)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM clean up like Ctrl-C does (main thread only): the demo and the bench
    run their teardown on KeyboardInterrupt, so a `kill` leaves no namespace behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
