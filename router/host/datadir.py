"""The router's data dir: an exclusive lock, a pid file, persisted state and the log.

Theory of operation
-------------------
::

    DIR/                     (created 0700)
      weft.lock   flock(LOCK_EX|LOCK_NB) held for the router's lifetime; never deleted
      weft.pid    the holder's pid, for messages ("... (pid 4242)") and `weft stop`
      state.json  peer name, IPAM ring and owned addresses, targets (one JSON object)
      weft.log    stdout/stderr of a background router (appended by `weft launch`)

Exclusion rests on ``flock`` alone: the kernel drops the lock when the holder dies, so
a crashed router never leaves a stale lock behind, and the pid file is only a label.
``flock`` locks belong to an open file description, so two ``DataDir`` objects on one
path conflict even inside one process (which the tests rely on). The lock file itself
is never removed while anybody may use it: unlinking a lock file lets a second process
lock a fresh inode while the first still holds the old one.

``save_state`` is crash-safe: write a temporary file in the same directory, fsync it,
``rename`` it over ``state.json`` and fsync the directory, so a reader sees either the
old or the new state, never a torn one. A file that still does not parse is reported,
not silently replaced: it holds the peer name and IPAM ownership, which matter.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from weftnet.proto.errors import LocalProtocolError

LOCK_FILE = "weft.lock"
PID_FILE = "weft.pid"
STATE_FILE = "state.json"
LOG_FILE = "weft.log"
IPAM_FILE = "ipam.json"  # the allocator's persisted state
IPAM6_FILE = "ipam6.json"  # the IPv6 allocator's (--ipalloc-range-v6)
# What `weft reset` may delete: the files this module names, plus save_state's temporaries.
OWNED_FILES = (STATE_FILE, PID_FILE, LOCK_FILE, LOG_FILE, IPAM_FILE, IPAM6_FILE)
_TMP_PREFIX = ".state.json."


class DataDir:
    """One router's data directory. Not thread-safe; one object per user of the dir."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"DataDir({str(self.path)!r}, locked={self._lock_fd is not None})"

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def pid_path(self) -> Path:
        return self.path / PID_FILE

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock_fd is not None

    # -- the directory ------------------------------------------------------------------

    def create(self) -> None:
        """Create the directory (0700, parents as needed); an existing one is kept as is."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error("cannot create", self.path, exc) from None
        if not self.path.is_dir():
            raise LocalProtocolError(f"data dir {self.path} is not a directory")

    def remove(self) -> None:
        """Delete the files we own and the directory if that empties it (``weft reset``).
        Refuses while a router holds the lock."""
        if self.is_locked():
            raise LocalProtocolError(self._busy_message())
        if not self.path.exists():
            return
        names = list(OWNED_FILES)
        with contextlib.suppress(OSError):
            names += sorted(n for n in os.listdir(self.path) if n.startswith(_TMP_PREFIX))
        for name in names:
            try:
                (self.path / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._error("cannot remove", self.path / name, exc) from None
        try:
            self.path.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise self._error("cannot remove", self.path, exc) from None

    # -- the lock -----------------------------------------------------------------------

    def lock(self) -> None:
        """Take the lock without waiting and write our pid; LocalProtocolError if held."""
        if self._lock_fd is not None:
            return
        self.create()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._error("cannot open", self.lock_path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LocalProtocolError(self._busy_message()) from None
        except OSError as exc:
            os.close(fd)
            raise self._error("cannot lock", self.lock_path, exc) from None
        self._lock_fd = fd
        try:
            self._write_atomically(self.pid_path, f"{os.getpid()}\n".encode())
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the lock (and our pid file). Idempotent."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        if self._read_pid() == os.getpid():
            with contextlib.suppress(OSError):
                self.pid_path.unlink()
        os.close(fd)  # closing the description releases the flock

    def __enter__(self) -> DataDir:
        self.lock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def is_locked(self) -> bool:
        """Whether some router (possibly this object) holds the lock. Never creates files."""
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError:
            # Unreadable (another user's dir): we cannot tell; lock() will say why.
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # also drops the probe's shared lock
        return False

    def running_pid(self) -> int | None:
        """The pid of the router holding the lock, if one does and it wrote its pid."""
        if not self.is_locked():
            return None
        return self._read_pid()

    def _read_pid(self) -> int | None:
        try:
            text = self.pid_path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def _busy_message(self) -> str:
        pid = self._read_pid()
        suffix = f" (pid {pid})" if pid is not None else ""
        return f"another router is already running with data dir {self.path}{suffix}"

    # -- state --------------------------------------------------------------------------

    def load_state(self) -> dict[str, Any]:
        """The persisted state; ``{}`` when there is none yet."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._error("cannot read", self.state_path, exc) from None
        try:
            state = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LocalProtocolError(self._corrupt(f"not valid JSON ({exc})")) from None
        if not isinstance(state, dict):
            raise LocalProtocolError(self._corrupt("not a JSON object"))
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        """Replace the persisted state atomically (temp file, fsync, rename, fsync dir)."""
        data = json.dumps(state, sort_keys=True, indent=1).encode() + b"\n"
        self.create()
        self._write_atomically(self.state_path, data)

    def _corrupt(self, why: str) -> str:
        return (
            f"corrupt state file {self.state_path}: {why}; move it away to start afresh "
            "(this router then forgets its peer name, IP allocations and targets)"
        )

    def write_atomically(self, target: Path, data: bytes) -> None:
        """Write ``data`` to ``target`` in this dir: temp file, fsync, rename."""
        self._write_atomically(target, data)

    def _write_atomically(self, target: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=_TMP_PREFIX)
        except OSError as exc:
            raise self._error("cannot write in", self.path, exc) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error("cannot write", target, exc) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _error(what: str, path: Path, exc: OSError) -> LocalProtocolError:
        return LocalProtocolError(f"{what} {path}: {exc.strerror or exc}")
