"""Run metrics: per-frame records, a summary, the JSONL writer behind `--metrics`, stage timers.

Everything here is plain data and pure functions except `MetricsWriter` (a file) and
`StageTimes` (a lock, since the engine thread writes and the OSC/CLI threads read).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# The stages a frame passes through, in order; `bench` reports them in this order.
STAGES = ("capture", "encode", "step", "decode", "sink")
# No new frame for this long and the stream counts as stalled: its status fps reads 0.
STALL_AFTER_S = 2.0


@dataclass(frozen=True)
class FrameRecord:
    """One emitted frame, as written to the metrics file."""

    frame: int
    t: float  # seconds since the run started
    latency_ms: float | None  # capture of the source frame -> emit; None in text mode
    prompt: str
    mode: str
    strength: float

    def to_json(self) -> str:
        latency = None if self.latency_ms is None else round(self.latency_ms, 2)
        return json.dumps(
            {
                "frame": self.frame,
                "t": round(self.t, 4),
                "latency_ms": latency,
                "prompt": self.prompt,
                "mode": self.mode,
                "strength": self.strength,
            },
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class StreamStatus:
    """What the OSC feedback and a GUI status bar show."""

    fps: float
    latency_ms: float | None
    prompt: str
    calls_per_frame: float | None = None  # model calls (NFEs) per new output frame


def stream_status(
    new_frame_times: Sequence[float],
    latency_ms: float | None,
    prompt: str,
    now: float,
    *,
    paused: bool = False,
    stall_after: float = STALL_AFTER_S,
) -> StreamStatus:
    """The status at `now` from the times of the recent new frames (oldest first) and the
    newest one's latency.

    While frames flow, fps is their rate and latency the newest one's. While paused, or
    once no new frame came for `stall_after` seconds, fps is 0 and latency is the age of
    the picture still on screen (the newest frame's latency plus the time since it came
    out), which keeps growing, so a status display never shows numbers the stream no longer
    has. A latency of None (text mode: no capture time) stays None.
    """
    if not new_frame_times:
        return StreamStatus(0.0, latency_ms, prompt)
    newest, span = new_frame_times[-1], new_frame_times[-1] - new_frame_times[0]
    since = max(0.0, now - newest)
    if paused or since >= stall_after:
        latency = None if latency_ms is None else latency_ms + since * 1000.0
        return StreamStatus(0.0, latency, prompt)
    fps = (len(new_frame_times) - 1) / span if len(new_frame_times) > 2 and span > 0 else 0.0
    return StreamStatus(fps, latency_ms, prompt)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(
    new_frames: int,
    span: float,
    latencies_ms: Sequence[float],
    *,
    output_frames: int,
    dropped: int,
    repeated: int,
    rated_frames: int | None = None,
    extra: dict | None = None,
) -> dict:
    """Summary of a run. `new_frames` counts the distinct frames the model made (repeats of
    a held frame excluded) and `span` is the seconds from the first to the last of them, so
    `fps` is the model's real rate; `latencies_ms` are theirs (a bounded recent window).
    `rated_frames` (default: all new frames) are those within `span`, when frames written
    after it (a final drain, all at once) must not count towards the rate."""
    rated = new_frames if rated_frames is None else rated_frames
    fps = (rated - 1) / span if span > 0 else 0.0
    p50, p95 = percentile(latencies_ms, 50), percentile(latencies_ms, 95)
    return {
        "frames": output_frames,
        "new_frames": new_frames,
        "seconds": round(span, 3),
        "fps": round(fps, 3),
        "latency_p50_ms": None if p50 is None else round(p50, 2),
        "latency_p95_ms": None if p95 is None else round(p95, 2),
        "dropped_frames": dropped,
        "repeated_frames": repeated,
        **(extra or {}),
    }


class MetricsWriter:
    """Writes one JSON line per emitted frame, then a summary line; flushed as it goes."""

    def __init__(self, path: Path | str) -> None:
        self._file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: FrameRecord) -> None:
        self._file.write(record.to_json() + "\n")
        # Line-flushed so a test (or `tail -f`) sees frames while the run goes on.
        self._file.flush()

    def close(self, summary: dict | None) -> None:
        """Write the summary line (None: the run failed, no summary) and close."""
        if summary is not None:
            self._file.write(json.dumps({"summary": summary}) + "\n")
        self._file.close()


class StageTimes:
    """Running per-stage timings (mean ms per call, exponentially weighted, and totals)."""

    def __init__(self, smoothing: float = 0.1) -> None:
        self._lock = threading.Lock()
        self._smoothing = smoothing
        self._ewma: dict[str, float] = {}
        self._total: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            ms = seconds * 1000.0
            old = self._ewma.get(stage)
            self._ewma[stage] = ms if old is None else old + self._smoothing * (ms - old)
            self._total[stage] = self._total.get(stage, 0.0) + ms
            self._count[stage] = self._count.get(stage, 0) + 1

    def clear(self) -> None:
        with self._lock:
            self._ewma.clear()
            self._total.clear()
            self._count.clear()

    def snapshot(self) -> dict[str, dict[str, float]]:
        """{stage: {"mean_ms", "recent_ms", "calls"}} for the stages seen so far."""
        with self._lock:
            return {
                stage: {
                    "mean_ms": round(self._total[stage] / self._count[stage], 3),
                    "recent_ms": round(self._ewma[stage], 3),
                    "calls": self._count[stage],
                }
                for stage in STAGES + tuple(sorted(set(self._count) - set(STAGES)))
                if stage in self._count
            }
