"""The password file, watched: a changed file gives the mesh its new passwords.

Theory of operation
-------------------
``weft launch --password-file FILE`` reads FILE once at start (router/daemon/config.py
parses it: one password a line, the first preferred). While the router runs,
``PasswordFile`` is one of the timer loop's sources (router/daemon/timers.py): every
POLL_INTERVAL seconds it compares ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of FILE with
what it last read, so an edit in place and an atomic replace (write a new file, rename it
over FILE: a new inode) are both noticed within POLL_INTERVAL; SIGHUP re-reads at once
(``watch_sighup``). Each read that yields a list other than the current one is handed to
``on_change`` with the line each password is on (the router calls
``MeshNode.set_passwords``, which moves the connections over, make before break, and names
each password by its line in ``weft status``)::

    poll / SIGHUP ──stat changed?──▶ read + parse ──ok, new list──▶ on_change(passwords)
                                          │ unreadable, empty, too many lines
                                          ▼
                    nothing changes: ``problem`` set (weft status, weft report) and one
                    log line, once per distinct problem; cleared by the next good read

A bad file never touches the mesh: the passwords in use stay, so the mesh never drops.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.daemon.config import read_password_file

log = logging.getLogger("weft")

POLL_INTERVAL = 1.0  # seconds between two looks at the file (a change is seen within 5 s)

Stamp = tuple[int, int, int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # ctime too: a chmod making the file unreadable changes nothing else
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PasswordFile:
    """Watches one password file; a TimerSource (``get_timer`` / ``handle_timer``)."""

    def __init__(self, path: Path, passwords: tuple[bytes, ...], lines: tuple[int, ...],
                 on_change: Callable[[tuple[bytes, ...], tuple[int, ...]], None], *,
                 now: float) -> None:
        self.path = path
        self.passwords = passwords  # what the mesh uses now
        self.lines = lines  # the line each of them is on
        self.problem: str | None = None
        self.reloads = 0  # new lists handed to on_change
        self._on_change = on_change
        self._stamp = _stamp(path)  # of the contents read at launch (or the failure)
        self._next_poll = now + POLL_INTERVAL

    # --- TimerSource -------------------------------------------------------------------

    def get_timer(self) -> float | None:
        return self._next_poll

    def handle_timer(self, now: float) -> None:
        self._next_poll = now + POLL_INTERVAL
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            self.reload()

    # --- reading -----------------------------------------------------------------------

    def reload(self) -> bool:
        """Read the file now; True if the passwords changed. A file that cannot be used
        changes nothing (``problem`` says why)."""
        self._stamp = _stamp(self.path)
        try:
            found = read_password_file(self.path)
        except LocalProtocolError as exc:
            problem = f"{exc.reason}; keeping the {_count(self.passwords)} in use"
            if problem != self.problem:
                log.warning("password file: %s", problem)
            self.problem = problem
            return False
        if self.problem is not None:
            log.info("password file %s readable again", self.path)
        self.problem = None
        passwords = tuple(pw for _, pw in found)
        lines = tuple(line for line, _ in found)
        if passwords == self.passwords:
            if lines != self.lines:  # moved by a comment: only the labels change
                self.lines = lines
                self._on_change(passwords, lines)
            return False
        self.passwords, self.lines = passwords, lines
        self.reloads += 1
        log.info("password file %s changed: %s, moving connections over", self.path,
                 _count(passwords))
        self._on_change(passwords, lines)
        return True

    async def watch_sighup(self) -> None:
        """Re-read on every SIGHUP (run as a task; only in the main thread)."""
        try:
            receiver = trio.open_signal_receiver(signal.SIGHUP)
        except RuntimeError:  # not trio's main thread (tests): polling only
            return
        with receiver as signals:
            async for _ in signals:
                log.info("SIGHUP: re-reading the password file %s", self.path)
                self.reload()

    def report(self) -> dict[str, Any]:
        """``router.password_file`` of ``weft report``: nothing secret."""
        return {"path": str(self.path), "passwords": len(self.passwords),
                "lines": list(self.lines), "problem": self.problem, "reloads": self.reloads}


def _count(passwords: tuple[bytes, ...]) -> str:
    return f"{len(passwords)} password" + ("" if len(passwords) == 1 else "s")
