"""Every harness in fuzz/ runs under hypothesis in the normal suite, plus its seeds and corpus."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

FUZZ_DIR = pathlib.Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = sorted(FUZZ_DIR.glob("fuzz_*.py"))


def _load(path: pathlib.Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_harnesses_exist() -> None:
    assert HARNESSES, "fuzz/ holds no harnesses"


@pytest.mark.parametrize("path", HARNESSES, ids=lambda p: p.stem)
def test_harness_random_bytes(path: pathlib.Path) -> None:
    module = _load(path)
    seeds = getattr(module, "SEEDS", [])
    strategy = st.binary(max_size=4096)
    if seeds:
        # mutate valid inputs too, so decoding goes past the first check
        strategy = st.one_of(strategy, st.sampled_from(seeds).flatmap(
            lambda s: st.binary(max_size=64).map(lambda junk: s[: len(junk) % (len(s) + 1)] + junk)
        ), st.sampled_from(seeds))

    @given(strategy)
    def run(data: bytes) -> None:
        module.test_one_input(data)

    run()


@pytest.mark.parametrize("path", HARNESSES, ids=lambda p: p.stem)
def test_harness_seeds_and_corpus(path: pathlib.Path) -> None:
    """Every seed and every corpus file, each once: the inputs atheris starts from."""
    module = _load(path)
    corpus = FUZZ_DIR / "corpus" / path.stem.removeprefix("fuzz_")
    inputs = list(getattr(module, "SEEDS", []))
    inputs += [item.read_bytes() for item in sorted(corpus.glob("*"))]
    assert inputs, f"{path.name} has neither SEEDS nor files in {corpus}"
    for data in inputs:
        module.test_one_input(data)
