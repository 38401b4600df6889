"""Who owns which testbed prefix, and sweeping what crashed runs left behind.

A testbed claims its prefix before it creates anything, by creating
``STATE_DIR/<prefix>.json`` exclusively (``O_EXCL``) and writing its pid and the process's
start time there (pid and start time together: a pid alone may be reused). The owner is
alive while a process with that pid and that start time runs. ``sweep_stale`` removes the
namespaces, temp dir and record of every matching prefix whose owner is gone (a run killed
by SIGKILL cannot clean up after itself), and never touches a live run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from weftnet.router.tools.namespaces import (
    TestbedError,
    delete_namespaces,
    kill_namespace_processes,
    list_namespaces,
)

# Namespaces made by a testbed with a random prefix ("wt" + 4 hex digits, then "-").
DEFAULT_PATTERN = r"^wt[0-9a-f]{4}-"
# Who owns which prefix: one small JSON file per live (or crashed) testbed.
STATE_DIR = Path(os.environ.get("WEFT_TESTBED_STATE", "/run/weft-testbed"))


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so count after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def record_path(prefix: str) -> Path:
    """The ownership record of ``prefix``."""
    return STATE_DIR / f"{prefix}.json"


def _read_record(prefix: str) -> dict[str, Any] | None:
    try:
        data = json.loads(record_path(prefix).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _owner_alive(record: dict[str, Any] | None) -> int | None:
    """The owner's pid when the process that wrote ``record`` still runs, else None."""
    if record is None:
        return None
    pid = record.get("pid")
    if not isinstance(pid, int):
        return None
    start = _start_time(pid)
    return pid if start is not None and start == record.get("start") else None


def claim(prefix: str, tmpdir: Path | None) -> bool:
    """Create the prefix's ownership record; False when it is already taken."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(record_path(prefix), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    record = {"pid": os.getpid(), "start": _start_time(os.getpid()), "tmpdir": str(tmpdir)}
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


def rewrite_record(prefix: str, tmpdir: Path) -> None:
    """Note the temp dir in our record (``sweep_stale`` removes it too)."""
    record = {"pid": os.getpid(), "start": _start_time(os.getpid()), "tmpdir": str(tmpdir)}
    record_path(prefix).write_text(json.dumps(record))


def owner_of(prefix: str) -> int | None:
    """The pid of the live process owning testbed ``prefix``, or None (free, or stale)."""
    return _owner_alive(_read_record(prefix))


def sweep_stale(prefix_pattern: str | re.Pattern[str] = DEFAULT_PATTERN) -> list[str]:
    """Remove namespaces left behind by testbeds whose owning process is gone.

    Only namespaces whose name matches ``prefix_pattern`` (``re.match`` against the full
    name, e.g. ``wt1a2b-h1``) are candidates, and of those only the ones whose prefix (the
    part before the first ``-``) has no live owner. Their processes are killed, the
    namespaces deleted, and the owner record and temp dir removed. Returns the namespaces
    removed, sorted.
    """
    pattern = re.compile(prefix_pattern)
    by_prefix: dict[str, list[str]] = {}
    for ns in list_namespaces():
        if pattern.match(ns):
            by_prefix.setdefault(ns.split("-", 1)[0], []).append(ns)
    if STATE_DIR.is_dir():
        for path in sorted(STATE_DIR.glob("*.json")):
            if pattern.match(f"{path.stem}-"):
                by_prefix.setdefault(path.stem, [])
    removed: list[str] = []
    errors: list[str] = []
    for prefix in sorted(by_prefix):
        record = _read_record(prefix)
        if _owner_alive(record) is not None:
            continue
        namespaces = by_prefix[prefix]
        kill_namespace_processes(namespaces)
        errors += delete_namespaces(namespaces)
        removed += namespaces
        tmpdir = (record or {}).get("tmpdir")
        if isinstance(tmpdir, str) and Path(tmpdir).name.startswith(f"weft-testbed-{prefix}-"):
            shutil.rmtree(tmpdir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            record_path(prefix).unlink()
    if errors:
        raise TestbedError("; ".join(errors))
    return sorted(removed)
