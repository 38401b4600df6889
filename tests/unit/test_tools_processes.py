"""The testbed's process helpers that need no namespace (``router/tools/namespaces.py``):
ending a server the bench or the DNS bench started, and the one-line reasons the tools print."""

from __future__ import annotations

import signal
import subprocess
import sys

from weftnet.router.tools.namespaces import CommandFailed, end_process, one_line, output_text

STUBBORN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")


def test_end_process_terminates_a_running_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    end_process(proc)
    assert proc.returncode == -signal.SIGTERM


def test_end_process_kills_one_that_ignores_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    end_process(proc, grace=0.2)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()


def test_end_process_of_a_process_that_exited_is_harmless() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    end_process(proc)
    assert proc.returncode == 3


def test_one_line_of_a_failed_command_prefers_stderr_then_stdout_then_status() -> None:
    weft = [sys.executable, "-m", "weftnet.router.programs.cli", "ps"]
    err = CommandFailed("h2", weft, 1, "out 1\n  out 2  \n", "\n  weft: no router is running \n")
    assert one_line(err) == "on h2: `weft ps` failed: weft: no router is running"
    assert one_line(CommandFailed("h2", ["true"], 1, "only\nstdout\n", "")) == (
        "on h2: `true` failed: stdout")
    assert one_line(CommandFailed("h2", ["true"], 7, "", "", "")) == (
        "on h2: `true` failed: exit status 7")
    assert one_line(ValueError("\n first \n second")) == "first"
    assert one_line(KeyError()) == "KeyError"


def test_output_text_of_what_a_timeout_caught() -> None:
    assert output_text(None) == "" and output_text("x") == "x"
    assert output_text(b"caf\xc3\xa9 \xff") == "café \ufffd"
