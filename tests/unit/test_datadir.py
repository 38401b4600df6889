"""The data dir: exclusive lock, pid file, atomic state, reset's removal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.host.datadir import DataDir


def test_lock_creates_private_dir_and_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "weft"
    dd = DataDir(path)
    assert not dd.is_locked()
    assert dd.running_pid() is None
    assert not path.exists()  # is_locked() never creates anything
    dd.lock()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert dd.pid_path.read_text() == f"{os.getpid()}\n"
        assert dd.held and dd.is_locked()
        assert dd.log_path == path / "weft.log"
    finally:
        dd.release()
    assert not dd.pid_path.exists()
    assert dd.lock_path.exists()  # never unlinked: see the module docstring


def test_second_lock_on_same_path_conflicts_even_in_one_process(tmp_path: Path) -> None:
    first, second = DataDir(tmp_path), DataDir(tmp_path)
    first.lock()
    try:
        assert second.is_locked()
        assert second.running_pid() == os.getpid()
        with pytest.raises(LocalProtocolError) as info:
            second.lock()
        assert info.value.reason == (
            f"another router is already running with data dir {tmp_path} (pid {os.getpid()})"
        )
        assert not second.held
    finally:
        first.release()
    assert not second.is_locked()
    second.lock()  # free again
    second.release()
    second.release()  # idempotent


def test_context_manager(tmp_path: Path) -> None:
    with DataDir(tmp_path) as dd:
        assert DataDir(tmp_path).is_locked()
        assert dd.held
    assert not DataDir(tmp_path).is_locked()


def test_state_missing_is_empty(tmp_path: Path) -> None:
    assert DataDir(tmp_path / "nothing").load_state() == {}


def test_state_round_trip_is_atomic_and_leaves_no_temporaries(tmp_path: Path) -> None:
    dd = DataDir(tmp_path / "d")
    state = {"name": "02:00:00:00:00:01", "targets": ["h2:6783"], "ipam": {"ring": [1, 2]}}
    dd.save_state(state)
    assert dd.load_state() == state
    dd.save_state({"name": "02:00:00:00:00:01"})
    assert dd.load_state() == {"name": "02:00:00:00:00:01"}
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["state.json"]
    assert stat.S_IMODE(dd.state_path.stat().st_mode) == 0o600


def test_unserialisable_state_leaves_old_file_untouched(tmp_path: Path) -> None:
    dd = DataDir(tmp_path)
    dd.save_state({"a": 1})
    with pytest.raises(TypeError):
        dd.save_state({"a": object()})
    assert dd.load_state() == {"a": 1}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"name": "02:00', "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"", "not valid JSON"),
    ],
)
def test_corrupt_state_is_a_clear_error(tmp_path: Path, content: bytes, why: str) -> None:
    dd = DataDir(tmp_path)
    dd.state_path.write_bytes(content)
    with pytest.raises(LocalProtocolError) as info:
        dd.load_state()
    message = info.value.reason
    assert message.startswith(f"corrupt state file {dd.state_path}: {why}")
    assert "move it away" in message and "\n" not in message


def test_remove_deletes_only_our_files(tmp_path: Path) -> None:
    path = tmp_path / "weft"
    dd = DataDir(path)
    dd.lock()
    dd.save_state({"x": 1})
    dd.log_path.write_text("log\n")
    with pytest.raises(LocalProtocolError, match="already running"):
        DataDir(path).remove()
    dd.release()
    (path / "keep.me").write_text("not ours")
    DataDir(path).remove()
    assert sorted(p.name for p in path.iterdir()) == ["keep.me"]
    (path / "keep.me").unlink()
    dd.save_state({"x": 1})
    DataDir(path).remove()
    assert not path.exists()
    DataDir(path).remove()  # nothing left: still fine


def test_unusable_path_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LocalProtocolError) as info:
        DataDir(blocker / "sub").lock()
    assert info.value.reason.startswith(f"cannot create {blocker / 'sub'}: ")


def test_garbage_pid_file_is_ignored(tmp_path: Path) -> None:
    with DataDir(tmp_path) as dd:
        dd.pid_path.write_text("garbage")
        other = DataDir(tmp_path)
        assert other.running_pid() is None
        with pytest.raises(LocalProtocolError) as info:
            other.lock()
        assert info.value.reason == f"another router is already running with data dir {tmp_path}"
    assert json.dumps(DataDir(tmp_path).load_state()) == "{}"
