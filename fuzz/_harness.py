"""What every harness does when run as a script under atheris (see README.md).

``fuzz(test_one_input, SEEDS)`` writes the harness's seeds into every corpus folder named
on the command line, so mutation starts from valid inputs rather than from nothing, then
hands over to atheris. Coverage instrumentation stays with each harness: it has to happen
around (or after) the harness's own imports.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable


def fuzz(test_one_input: Callable[[bytes], None], seeds: Iterable[bytes] = ()) -> None:
    import atheris

    seeds = list(seeds)
    for arg in sys.argv[1:]:
        if not arg.startswith("-") and os.path.isdir(arg):
            for i, seed in enumerate(seeds):
                with open(os.path.join(arg, f"seed-{i}"), "wb") as f:
                    f.write(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
