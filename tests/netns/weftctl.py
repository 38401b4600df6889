"""Small helpers for driving routers in a Testbed through the CLI, as a user would."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

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
