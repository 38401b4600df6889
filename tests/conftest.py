"""Shared test configuration.

Hypothesis runs derandomized in CI (every run checks the same examples, so a red CI
is reproducible); locally it explores. Tests that build real hosts are marked
``netns`` and skip themselves when not root.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (soak and 1000-peer scale runs) run only with WEFT_SOAK=1;
    their bounded versions run always."""
    if os.environ.get("WEFT_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="slow soak/scale run: set WEFT_SOAK=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
