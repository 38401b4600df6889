"""Fixtures for tests on real (simulated) hosts: network namespaces built by ``Testbed``.

Every test in this directory is marked ``netns`` and is skipped unless we run as root with
iproute2's ``ip`` installed. Before the first of them runs, namespaces left by crashed
earlier runs (whose owning process is gone) are swept; live runs of other sessions are
left alone. ``testbed_factory`` builds testbeds and closes each one at teardown, whatever
the test did.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from weftnet.router.tools.testbed import DEFAULT_PATTERN, Testbed, sweep_stale

HERE = Path(__file__).resolve().parent


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "netns tests need root (they create network namespaces)"
    if shutil.which("ip") is None:
        return "netns tests need iproute2's `ip`"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _why_not_runnable()
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.netns)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _sweep_stale_testbeds() -> None:
    """Remove what crashed earlier runs left behind (only prefixes whose owner is dead)."""
    removed = sweep_stale(DEFAULT_PATTERN)
    if removed:
        print(f"swept stale testbed namespaces: {' '.join(removed)}")


TestbedFactory = Callable[..., Testbed]


@pytest.fixture
def testbed_factory() -> Iterator[TestbedFactory]:
    """``testbed_factory(**Testbed kwargs) -> Testbed``; all are closed at teardown."""
    made: list[Testbed] = []

    def make(**kwargs: Any) -> Testbed:
        tb = Testbed(**kwargs)
        made.append(tb)
        return tb

    try:
        yield make
    finally:
        errors = []
        for tb in reversed(made):
            try:
                tb.close()
            except Exception as exc:  # close the others before reporting
                errors.append(f"{tb.prefix}: {exc}")
        if errors:
            pytest.fail("testbed cleanup failed: " + "; ".join(errors))


@pytest.fixture
def testbed(testbed_factory: TestbedFactory) -> Testbed:
    """Three hosts h1, h2, h3 on one segment "lan"."""
    return testbed_factory()
