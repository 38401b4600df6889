"""Admission of inbound control connections, before any authentication (pure).

Theory of operation. Accepting a TCP connection is cheap for the caller and not for us:
each one costs a socket, two tasks, a handshake state machine (with a Diffie-Hellman
key pair) and a slot under ``conn_limit`` until the handshake deadline. So before any
byte is read, ``AcceptLimiter.admit`` decides, from the source IP alone::

    accepted ──▶ per-source token bucket empty?          ──yes──▶ refuse "rate"
             ──▶ source already has MAX_PENDING_PER_SOURCE
                 connections in handshake?                ──yes──▶ refuse "pending per source"
             ──▶ MAX_PENDING connections in handshake?    ──yes──▶ refuse "pending"
             ──▶ admit (the handshake deadline ends it if it never completes)

One flooding address thus holds at most ``MAX_PENDING_PER_SOURCE`` handshake slots, and
many addresses together at most ``MAX_PENDING``, below ``conn_limit``: a legitimate peer
from another address still gets in. The bucket table is bounded (``MAX_SOURCES``; the
least recently seen source goes first), so spoofed variety cannot grow memory.
The caller counts refusals by the reason returned (the mesh's stats); ``take_log(now)``
hands out a summary at most once per ``LOG_INTERVAL`` so a flood cannot flood the log
too. Time comes in as ``now``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

ACCEPT_RATE = 4.0            # new connections per second per source address, sustained
ACCEPT_BURST = 16.0          # ... and in a burst
MAX_PENDING_PER_SOURCE = 8   # connections in handshake from one source address
MAX_PENDING = 64             # connections in handshake altogether (conn_limit is 200)
MAX_SOURCES = 4096           # token buckets remembered
LOG_INTERVAL = 10.0          # seconds between two log lines about refusals

REFUSED_RATE = "rate"
REFUSED_SOURCE = "pending per source"
REFUSED_PENDING = "pending"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class AcceptLimiter:
    rate: float = ACCEPT_RATE
    burst: float = ACCEPT_BURST
    max_pending_per_source: int = MAX_PENDING_PER_SOURCE
    max_pending: int = MAX_PENDING
    max_sources: int = MAX_SOURCES
    log_interval: float = LOG_INTERVAL
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _unlogged: dict[str, int] = field(default_factory=dict)
    _last_source: str = ""
    _last_log: float = float("-inf")

    def admit(self, source: str, now: float, *, pending: int, pending_from_source: int) -> str | None:
        """None to admit a connection from ``source``, else why it is refused."""
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[source] = bucket
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            bucket.tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)
            bucket.stamp = now
        reason: str | None = None
        if bucket.tokens < 1.0:
            reason = REFUSED_RATE
        elif pending_from_source >= self.max_pending_per_source:
            reason = REFUSED_SOURCE
        elif pending >= self.max_pending:
            reason = REFUSED_PENDING
        if reason is None:
            bucket.tokens -= 1.0
            return None
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        self._last_source = source
        return reason

    @property
    def sources(self) -> int:
        return len(self._buckets)

    def take_log(self, now: float) -> str | None:
        """A one-line summary of the refusals not yet logged, at most once per interval."""
        if not self._unlogged or now < self._last_log + self.log_interval:
            return None
        parts = ", ".join(f"{n} over the {reason} limit" for reason, n in sorted(self._unlogged.items()))
        total = sum(self._unlogged.values())
        self._unlogged.clear()
        self._last_log = now
        return (f"refused {total} inbound connection(s) before authentication ({parts}); "
                f"last from {self._last_source}")
