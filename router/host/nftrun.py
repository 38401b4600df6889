"""Running ``nft``: the one place that finds the command and turns its failures to start or
finish into a one-line error of the caller's kind (expose's NAT rules, policy's table)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

NFT_TIMEOUT = 30.0


def run_nft(command: str, args: list[str], data: str | None, *,
            fail: Callable[[str], Exception], needed_for: str) -> subprocess.CompletedProcess[str]:
    """``command args`` with ``data`` on stdin; its exit status is the caller's to judge.
    ``fail(reason)`` is raised when it is not installed, cannot start or does not finish."""
    path = shutil.which(command)
    if path is None:
        raise fail(f"the `{command}` command is not installed ({needed_for} with nftables: "
                   "apt-get install nftables)")
    try:
        return subprocess.run([path, *args], input=data, capture_output=True, text=True,
                              timeout=NFT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise fail(f"nft did not finish within {NFT_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise fail(f"cannot run nft: {exc.strerror or exc}") from None
