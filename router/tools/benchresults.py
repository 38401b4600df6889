"""What ``weft bench`` measured, and how it reads and shows it.

The results of a data-bench run (``TcpResult`` of iperf3, ``PingResult`` of ping, one
``Measurement`` per path and condition, a ``PathResult`` per path, the ``BenchResult`` of
the run with its ratios to the baseline), read from the tools' output (``parse_iperf3``,
``parse_ping``) and shown as the table (``format_table``) or JSON (``BenchResult.to_json``).
Also what both suites share: the machine the figures were measured on (``machine_info``)
and a command-line parser whose errors are one line (``UsageParser``, ``UsageError``).
Pure but for ``machine_info``: results are built by hand in the unit tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BASELINE = "kernel-vxlan"
PING_COUNT = 60
PING_ROUNDS = 6  # the pings of a path alternate with the beside-baseline's in this many rounds
PING_INTERVAL = 0.05
TCP_ROUNDS = 2  # a path's iperf3 run alternates with the beside-baseline's in this many turns

Status = Literal["ok", "failed", "skipped"]


class MeasurementFailed(Exception):
    """A path or one of its measurements did not work; the message is the one-line reason."""


class PathSkipped(Exception):
    """The path cannot be measured on this setup (not an error); the message says why."""


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpResult:
    """One iperf3 run: what the server received."""

    gbps: float
    bytes: int
    retransmits: int | None = None

    @classmethod
    def combine(cls, runs: Sequence[TcpResult]) -> TcpResult:
        """Several runs as one: all their bytes over all their time."""
        if not runs:
            raise MeasurementFailed("iperf3: no runs to combine")
        seconds = sum(run.bytes * 8 / (run.gbps * 1e9) for run in runs)
        nbytes = sum(run.bytes for run in runs)
        retransmits = [run.retransmits for run in runs]
        return cls(gbps=nbytes * 8 / seconds / 1e9, bytes=nbytes,
                   retransmits=None if None in retransmits else sum(r or 0 for r in retransmits))


@dataclass(frozen=True, slots=True)
class PingResult:
    """Round-trip times of one ping run, in milliseconds."""

    sent: int
    received: int
    avg_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    rtts: tuple[float, ...] = ()

    @classmethod
    def of(cls, sent: int, received: int, rtts: Sequence[float]) -> PingResult:
        """The statistics of ``rtts`` (at least one)."""
        return cls(
            sent=sent,
            received=received,
            avg_ms=statistics.fmean(rtts),
            median_ms=statistics.median(rtts),
            min_ms=min(rtts),
            max_ms=max(rtts),
            rtts=tuple(rtts),
        )

    @classmethod
    def combine(cls, runs: Sequence[PingResult]) -> PingResult:
        """One result for several runs (the rounds of an interleaved measurement)."""
        rtts = [r for run in runs for r in run.rtts]
        if not rtts:
            raise MeasurementFailed("ping: no round-trip times to combine")
        return cls.of(sum(run.sent for run in runs), sum(run.received for run in runs), rtts)


@dataclass(frozen=True, slots=True)
class Measurement:
    """The outcome of measuring one path under one condition (clean or lossy underlay)."""

    status: Status
    reason: str = ""
    tcp: TcpResult | None = None
    ping: PingResult | None = None
    ping_beside: PingResult | None = None  # the baseline, pinged in turns with this path
    tcp_beside: TcpResult | None = None  # the baseline's iperf3, in turns with this path's
    # CPU seconds per GB received of the path's own processes (routers, tunnel daemons),
    # measured with --peers only; None for the kernel's paths and otherwise
    cpu_s_per_gb: float | None = None

    @classmethod
    def failed(cls, reason: str) -> Measurement:
        return cls("failed", reason)

    @classmethod
    def skipped(cls, reason: str) -> Measurement:
        return cls("skipped", reason)


@dataclass(frozen=True, slots=True)
class PathResult:
    path: str
    clean: Measurement
    lossy: Measurement | None = None  # None when the bench ran with --no-loss


@dataclass(slots=True)
class BenchResult:
    """A whole run: every path's results and what they ran on."""

    duration: int
    loss_percent: int | None  # None: no lossy measurements (--no-loss)
    machine: dict[str, Any]
    paths: list[PathResult] = field(default_factory=list)
    ping_count: int = PING_COUNT
    interrupted: bool = False

    def _find(self, path: str) -> PathResult | None:
        return next((p for p in self.paths if p.path == path), None)

    def ratio(self, path: str, lossy: bool = False) -> float | None:
        """Throughput of ``path`` over the baseline's measured in turns with it (clean), or
        else over the baseline's row of the same run and condition; None when either is
        missing."""
        mine = self._find(path)
        beside = None if mine is None or lossy else mine.clean.tcp_beside
        if mine is not None and mine.clean.tcp is not None and beside is not None:
            return mine.clean.tcp.gbps / beside.gbps
        return self.row_ratio(path, lossy)

    def row_ratio(self, path: str, lossy: bool = False) -> float | None:
        """Throughput of ``path`` over the baseline row's, same run and condition."""
        mine, base = self._find(path), self._find(BASELINE)
        if mine is None or base is None:
            return None
        a, b = (mine.lossy, base.lossy) if lossy else (mine.clean, base.clean)
        if a is None or b is None or a.tcp is None or b.tcp is None or b.tcp.gbps <= 0:
            return None
        return a.tcp.gbps / b.tcp.gbps

    def rtt_ratio(self, path: str) -> float | None:
        """Median RTT of ``path`` over the baseline's, measured in turns with it (or, for
        the baseline itself, 1); None when either is missing."""
        mine = self._find(path)
        if mine is None or mine.clean.ping is None:
            return None
        if path == BASELINE:
            return 1.0
        base = mine.clean.ping_beside
        if base is None or base.median_ms <= 0:
            return None
        return mine.clean.ping.median_ms / base.median_ms

    @property
    def ok(self) -> bool:
        """True when nothing failed (skipped paths are fine) and the run was not cut short."""
        return not self.interrupted and all(
            m.status != "failed" for p in self.paths for m in (p.clean, p.lossy) if m is not None
        )

    def to_json(self) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        for p in self.paths:
            entry = _measurement_json(p.clean)
            entry["ratio"] = _round(self.ratio(p.path))
            entry["row_ratio"] = _round(self.row_ratio(p.path))
            tb = p.clean.tcp_beside
            entry["tcp_baseline_beside_gbps"] = None if tb is None else round(tb.gbps, 4)
            ping = p.clean.ping
            entry["ping_ms"] = None if ping is None else {
                "avg": round(ping.avg_ms, 4), "median": round(ping.median_ms, 4),
                "min": round(ping.min_ms, 4), "max": round(ping.max_ms, 4),
                "sent": ping.sent, "received": ping.received,
            }  # fmt: skip
            beside = p.clean.ping_beside
            entry["ping_baseline_beside_ms"] = None if beside is None else {
                "avg": round(beside.avg_ms, 4), "median": round(beside.median_ms, 4),
                "sent": beside.sent, "received": beside.received,
            }  # fmt: skip
            entry["rtt_ratio"] = _round(self.rtt_ratio(p.path))
            if p.lossy is not None:
                entry["loss"] = {**_measurement_json(p.lossy), "ratio": _round(self.ratio(p.path, True))}
            else:
                entry["loss"] = None
            paths[p.path] = entry
        return {
            "bench": "data",
            "baseline": BASELINE,
            "duration_s": self.duration,
            "loss_percent": self.loss_percent,
            "ping_count": self.ping_count,
            "ping_interval_s": PING_INTERVAL,
            "ping_rounds": PING_ROUNDS,
            "tcp_rounds": TCP_ROUNDS,
            "machine": self.machine,
            "paths": paths,
            "interrupted": self.interrupted,
        }


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def _measurement_json(m: Measurement) -> dict[str, Any]:
    doc = {
        "status": m.status,
        "reason": m.reason,
        "tcp_gbps": None if m.tcp is None else round(m.tcp.gbps, 4),
        "tcp_bytes": None if m.tcp is None else m.tcp.bytes,
        "tcp_retransmits": None if m.tcp is None else m.tcp.retransmits,
    }
    if m.cpu_s_per_gb is not None:  # only --peers measures it: the JSON is unchanged without
        doc["cpu_s_per_gb"] = round(m.cpu_s_per_gb, 2)
    return doc


# --- the table --------------------------------------------------------------------------------


def format_table(result: BenchResult) -> str:
    """The human-readable report: a title line, one row per path, and under a row that
    failed or was skipped, one indented line per reason. Newline-terminated."""
    loss = result.loss_percent
    header = ["path", "TCP Gbit/s", "x baseline", "x row", "ping ms avg/med", "RTT x baseline"]
    cpu = any(p.clean.cpu_s_per_gb is not None for p in result.paths)  # --peers
    if cpu:
        header.append("CPU s/GB")
    if loss is not None:
        header += [f"TCP Gbit/s @{loss}% loss", "x baseline@loss"]
    rows: list[list[str]] = []
    notes: list[list[str]] = []
    for p in result.paths:
        row = [p.path, _gbps_cell(p.clean), _ratio_cell(result.ratio(p.path)),
               _ratio_cell(result.row_ratio(p.path)), _ping_cell(p.clean),
               _ratio_cell(result.rtt_ratio(p.path))]
        if cpu:
            row.append("-" if p.clean.cpu_s_per_gb is None else f"{p.clean.cpu_s_per_gb:.1f}")
        why = []
        if p.clean.status != "ok":
            why.append(f"{p.clean.status}: {p.clean.reason}")
        if loss is not None:
            lossy = p.lossy or Measurement.failed("not measured")
            row += [_gbps_cell(lossy), _ratio_cell(result.ratio(p.path, True))]
            # A lossy run that did not happen because the clean one failed needs no second line.
            if lossy.status != "ok" and lossy.reason != p.clean.reason:
                why.append(f"@{loss}% loss {lossy.status}: {lossy.reason}")
        rows.append(row)
        notes.append(why)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    m = result.machine
    title = (
        f"weft bench: container to container across two namespace hosts; iperf3 TCP, "
        f"1 stream, {result.duration} s; {result.ping_count} pings; kernel {m.get('kernel')}, "
        f"{m.get('cpus')} CPUs, Python {m.get('python')}"
    )
    out = [title, "", line(header), line(["-" * w for w in widths])]
    for row, why in zip(rows, notes, strict=True):
        out.append(line(row))
        out += [f"    {w}" for w in why]
    if result.interrupted:
        out.append("(interrupted: the paths not listed were not measured)")
    if all(p.path != BASELINE for p in result.paths):
        out.append(f"(no ratios: the baseline {BASELINE} was not among the paths)")
    return "\n".join(out) + "\n"


def _gbps_cell(m: Measurement) -> str:
    if m.status != "ok":
        return m.status
    return "-" if m.tcp is None else f"{m.tcp.gbps:.2f}"


def _ratio_cell(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def _ping_cell(m: Measurement) -> str:
    if m.ping is None:
        return "-"
    return f"{m.ping.avg_ms:.3f}/{m.ping.median_ms:.3f}"


# --- parsing tool output ----------------------------------------------------------------------


def parse_iperf3(text: str) -> TcpResult:
    """The result of ``iperf3 -c ... -J``; MeasurementFailed when it reports an error or
    when no data reached the server."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise MeasurementFailed(f"iperf3 gave no JSON: {first_line(text) or 'no output'}") from None
    if not isinstance(doc, dict):
        raise MeasurementFailed("iperf3 gave JSON that is not an object")
    if doc.get("error"):
        raise MeasurementFailed(f"iperf3: {first_line(str(doc['error']))}")
    end = doc.get("end")
    received = end.get("sum_received") if isinstance(end, dict) else None
    sent = end.get("sum_sent") if isinstance(end, dict) else None
    if not isinstance(received, dict):
        raise MeasurementFailed("iperf3 JSON has no end.sum_received")
    bps, nbytes = received.get("bits_per_second"), received.get("bytes")
    if not isinstance(bps, int | float) or not isinstance(nbytes, int):
        raise MeasurementFailed("iperf3 JSON: end.sum_received lacks bytes or bits_per_second")
    if nbytes <= 0 or bps <= 0:
        raise MeasurementFailed("iperf3: no data reached the server")
    retransmits = sent.get("retransmits") if isinstance(sent, dict) else None
    return TcpResult(
        gbps=float(bps) / 1e9,
        bytes=nbytes,
        retransmits=retransmits if isinstance(retransmits, int) else None,
    )


_RTT_RE = re.compile(r"\btime[=<]([0-9.]+) ?ms\b")
_COUNTS_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def parse_ping(text: str) -> PingResult:
    """RTTs from iputils ``ping -n`` output (one ``time=X ms`` line per reply); duplicate
    replies are not counted. MeasurementFailed when nothing came back."""
    counts = _COUNTS_RE.search(text)
    if counts is None:
        raise MeasurementFailed(f"ping: no summary in its output: {first_line(text) or 'no output'}")
    sent, received = int(counts.group(1)), int(counts.group(2))
    rtts = [float(m.group(1)) for line in text.splitlines() if "DUP!" not in line
            for m in [_RTT_RE.search(line)] if m]  # fmt: skip
    if received == 0 or not rtts:
        raise MeasurementFailed(f"ping: none of {sent} pings was answered")
    return PingResult.of(sent, received, rtts)


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped ("" when there is none)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_model": None,
        "iperf3": None,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    if shutil.which("iperf3"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, timeout=10)
            info["iperf3"] = first_line(out.stdout) or None
    return info


# --- command lines ----------------------------------------------------------------------------


class UsageError(Exception):
    """Bad command line; the message is the one-line reason."""


class UsageParser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` instead of printing usage and exiting."""

    def error(self, message: str) -> Any:
        raise UsageError(message)
