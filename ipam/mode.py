"""How a peer takes part in seeding the ring (``--ipalloc-init``).

    consensus[=N]   Paxos among the first peers, once the first address is wanted;
                    N (default: the number of initial peers, this one included) sets
                    the quorum N // 2 + 1
    seed=NAME,...   the ring is divided among exactly these peer names, no agreement needed:
                    every peer listed seeds the same ring on its own
    observer        never owns space at seeding and never votes; asks others for space
"""

from __future__ import annotations

from dataclasses import dataclass

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.peername import PeerName, parse_peer_name


@dataclass(frozen=True, slots=True)
class ConsensusInit:
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise LocalProtocolError("--ipalloc-init consensus=N needs N >= 1")

    @property
    def quorum(self) -> int:
        return self.count // 2 + 1


@dataclass(frozen=True, slots=True)
class SeedInit:
    names: tuple[PeerName, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise LocalProtocolError("--ipalloc-init seed= needs at least one peer name")


@dataclass(frozen=True, slots=True)
class ObserverInit:
    pass


InitMode = ConsensusInit | SeedInit | ObserverInit


def parse_init_mode(text: str | None, initial_peers: int) -> InitMode:
    """Parse ``--ipalloc-init``; ``initial_peers`` counts this peer plus the PEER arguments.
    Raises LocalProtocolError with a one-line reason."""
    if text is None or text == "consensus":
        return ConsensusInit(max(1, initial_peers))
    if text.startswith("consensus="):
        raw = text.removeprefix("consensus=")
        if not raw.isdigit() or int(raw) < 1:
            raise LocalProtocolError(f"invalid --ipalloc-init {text!r}: consensus=N needs a count >= 1")
        return ConsensusInit(int(raw))
    if text.startswith("seed="):
        parts = [p for p in text.removeprefix("seed=").split(",") if p.strip()]
        names = tuple(sorted({parse_peer_name(p) for p in parts}))
        return SeedInit(names)
    if text == "observer":
        return ObserverInit()
    raise LocalProtocolError(f"invalid --ipalloc-init {text!r}: "
                             "expected consensus[=N], seed=NAME,... or observer")
