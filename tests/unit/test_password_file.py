"""The password file: its format (router/daemon/config.py), launch options, and the
watcher that re-reads it (router/daemon/password_file.py), in virtual time."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.unit.test_cli import launch_ns
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.render import render_status
from weftnet.router.daemon.config import (
    config_from_args,
    config_to_args,
    parse_password_file,
    read_password_file,
)
from weftnet.router.daemon.password_file import POLL_INTERVAL, PasswordFile


@pytest.mark.parametrize(("text", "expected"), [
    (b"one\n", (b"one",)),
    (b"one", (b"one",)),
    (b"  new pass  \r\n\n# the old one, going:\nold\n", (b"new pass", b"old")),
    (b"#only a comment\n\n   \n", ()),
    (b"", ()),
    (b"a\nb\na\n", (b"a", b"b")),             # a repeat counts once
    (b"\t a\tb \n  #x\n c", (b"a\tb", b"c")),   # inner whitespace is the password's
    (b"a\nb\nc\nd\n", (b"a", b"b", b"c", b"d")),
])
def test_parse_password_file(text: bytes, expected: tuple[bytes, ...]) -> None:
    assert tuple(pw for _, pw in parse_password_file(text)) == expected


def test_each_password_keeps_its_line_number() -> None:
    assert parse_password_file(b"# head\n\nnew\n  # old, going\nold\nnew\n") == (
        (3, b"new"), (5, b"old"))


def test_more_than_four_passwords_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="5 passwords; at most 4"):
        parse_password_file(b"a\nb\nc\nd\ne\n")


def test_read_password_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    with pytest.raises(LocalProtocolError, match=f"cannot read {path}"):
        read_password_file(path)
    path.write_bytes(b"# nothing\n")
    with pytest.raises(LocalProtocolError, match=f"{path}: no password"):
        read_password_file(path)


def test_launch_reads_several_passwords_and_passes_the_file_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEFT_PASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pw").write_bytes(b"# rotation in progress\nnew\nold\n")
    cfg = config_from_args(launch_ns("--password-file", "pw"))
    assert cfg.passwords == (b"new", b"old") and cfg.password == b"new"
    assert cfg.password_lines == (2, 3)
    assert cfg.password_file == tmp_path / "pw"
    args = config_to_args(cfg)
    assert args[:2] == ["--password-file", str(tmp_path / "pw")]
    again = config_from_args(launch_ns(*args))
    assert (again.passwords, again.password_file) == (cfg.passwords, cfg.password_file)
    assert "new" not in repr(cfg) and b"new" not in repr(cfg).encode()
    (tmp_path / "pw").write_bytes(b"1\n2\n3\n4\n5\n")
    with pytest.raises(LocalProtocolError, match="--password-file: pw: 5 passwords"):
        config_from_args(launch_ns("--password-file", "pw"))
    monkeypatch.setenv("WEFT_PASSWORD", "one\ntwo")  # the environment is one password
    cfg = config_from_args(launch_ns())
    assert cfg.passwords == (b"one\ntwo",) and cfg.password_file is None
    assert "--password-file" not in config_to_args(cfg)


class Watched:
    def __init__(self, tmp_path: Path, text: bytes) -> None:
        self.path = tmp_path / "pw"
        self.path.write_bytes(text)
        self.changes: list[tuple[bytes, ...]] = []
        self.labels: list[tuple[int, ...]] = []
        self.now = 0.0
        found = read_password_file(self.path)
        self.watcher = PasswordFile(self.path, tuple(pw for _, pw in found),
                                    tuple(line for line, _ in found), self.changed, now=self.now)

    def changed(self, passwords: tuple[bytes, ...], lines: tuple[int, ...]) -> None:
        self.labels.append(lines)
        if not self.changes or self.changes[-1] != passwords:
            self.changes.append(passwords)

    def poll(self, seconds: float = 1.0) -> None:
        """Run the watcher's timer as the daemon's timer loop would."""
        end = self.now + seconds
        while (due := self.watcher.get_timer()) is not None and due <= end:
            self.now = due
            self.watcher.handle_timer(self.now)
        self.now = end

    def replace(self, text: bytes) -> None:
        """An atomic replace: a new file renamed over the old one."""
        tmp = self.path.with_suffix(".new")
        tmp.write_bytes(text)
        os.replace(tmp, self.path)


def test_a_change_is_noticed_within_one_poll(tmp_path: Path) -> None:
    w = Watched(tmp_path, b"a\n")
    w.poll(5)
    assert w.changes == []  # nothing changed: nothing happens
    due = w.watcher.get_timer()
    assert due is not None and w.now < due <= w.now + POLL_INTERVAL
    w.path.write_bytes(b"a\nb\n")  # in place
    w.poll(POLL_INTERVAL)
    assert w.changes == [(b"a", b"b")]
    w.replace(b"b\na\n")             # atomic replace, same size
    w.poll(POLL_INTERVAL)
    assert w.changes[-1] == (b"b", b"a")
    w.replace(b"# a comment moves the passwords, no more\nb\na\n")
    w.poll(POLL_INTERVAL)
    assert len(w.changes) == 2 and w.watcher.reloads == 2
    assert w.watcher.passwords == (b"b", b"a") and w.labels[-1] == (2, 3)


@pytest.mark.parametrize("breakage", ["empty", "missing", "directory", "too many"])
def test_a_bad_file_changes_nothing_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, breakage: str) -> None:
    w = Watched(tmp_path, b"a\nb\n")
    caplog.set_level(logging.INFO, logger="weft")
    if breakage == "empty":
        w.path.write_bytes(b"")
    elif breakage == "missing":
        w.path.unlink()
    elif breakage == "directory":
        w.path.unlink()
        w.path.mkdir()
    else:
        w.path.write_bytes(b"1\n2\n3\n4\n5\n")
    w.poll(10)
    assert w.changes == [] and w.watcher.passwords == (b"a", b"b")
    problem = w.watcher.problem
    assert problem is not None and problem.endswith("keeping the 2 passwords in use")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and problem in warnings[0].getMessage()
    w.watcher.reload()  # SIGHUP: the same problem is not logged again
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    report = {"version": "1", "router": {
        "name": "02:00:00:00:00:01", "nickname": "h1", "encryption": True, "peers": [],
        "connections": [], "targets": [], "password_file": w.watcher.report()}}
    status = render_status(report)
    (line,) = [x for x in status.splitlines() if "PasswordFile" in x]
    assert line.strip() == f"PasswordFile: {w.path} (2 passwords); {problem}"
    # repaired: the problem goes, and a new list is taken
    if breakage == "directory":
        w.path.rmdir()
    w.replace(b"b\n")
    w.poll(POLL_INTERVAL)
    assert w.watcher.problem is None and w.changes == [(b"b",)]


def test_sighup_reload_reads_at_once(tmp_path: Path) -> None:
    w = Watched(tmp_path, b"a\n")
    w.path.write_bytes(b"c\na\n")
    assert w.watcher.reload() is True and w.changes == [(b"c", b"a")]
    assert w.watcher.reload() is False  # the same list again: nothing to do
    assert w.watcher.report() == {"path": str(w.path), "passwords": 2, "lines": [1, 2],
                                  "problem": None, "reloads": 1}


def test_status_shows_which_password_each_connection_uses() -> None:
    conn = {"address": "10.0.0.2:6783", "outbound": True, "state": "established", "info": "",
            "peer": {"name": "02:00:00:00:00:02", "nickname": "h2"}, "encrypted": True,
            "overlay": "sleeve", "overlay_reason": "encrypted sleeve", "mtu": 1376,
            "password": 2}
    report = {"version": "1", "router": {
        "name": "02:00:00:00:00:01", "nickname": "h1", "encryption": True, "peers": [],
        "connections": [conn], "targets": [],
        "password_file": {"path": "/etc/weft/pw", "passwords": 2, "problem": None}}}
    assert render_status(report, "connections") == (
        "-> 10.0.0.2:6783         established sleeve 02:00:00:00:00:02(h2) encrypted "
        "password=2 mtu=1376 (encrypted sleeve)\n")
    assert "   PasswordFile: /etc/weft/pw (2 passwords)\n" in render_status(report)
