"""The pacer's writer: each paced frame to the outputs, the metrics, the frame limit and the
preview taps, counted in a tally that stays bounded however long the stream runs."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from streamdit_live.engine import EmittedFrame
from streamdit_live.events import Tap
from streamdit_live.metrics import FrameRecord, MetricsWriter, StageTimes
from streamdit_live.sinks import SinkSet

# The summary's latency percentiles cover this many of the newest frames (over an hour at
# 24 fps, ~3 MB): a stream runs for days, so nothing here may grow with every frame.
LATENCY_SAMPLES = 100_000


@dataclass
class Tally:
    """What the output tap has seen; touched only on the pacer's thread, read after it stops."""

    written: int = 0
    new: int = 0
    rated: int = 0  # new frames shown on the pacer's clock, the final drain excluded: the fps
    repeated: int = 0
    first: float | None = None
    first_new_t: float | None = None  # run time (s) of the first rated new frame
    last_new_t: float = 0.0  # and of the newest
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=64))  # new-frame times
    last_latency_ms: float | None = None


class OutputTap:
    """The pacer's writer: sinks, metrics and the frame limit, one paced frame at a time."""

    def __init__(
        self,
        sinks: SinkSet,
        metrics: MetricsWriter | None,
        limit: int | None,
        stage_times: StageTimes,
        done: threading.Event,
        taps: tuple[Tap, ...] = (),
    ) -> None:
        self.sinks, self.metrics, self.limit = sinks, metrics, limit
        self.stage_times, self.done = stage_times, done
        self.taps = taps
        self.tally = Tally()
        # False once the stream has ended: the pacer's final drain writes its frames at once,
        # which would inflate the measured rate.
        self.timing = True
        self._last: EmittedFrame | None = None
        self._scaled: np.ndarray | None = None  # self._last's frame at the output size

    def end_timing(self) -> None:
        self.timing = False

    def write(self, item: EmittedFrame) -> None:
        tally = self.tally
        if self.limit is not None and tally.written >= self.limit:
            self.done.set()
            return
        repeat = item is self._last
        self._last = item
        if not repeat:  # scaled once per new frame, for all sinks; a repeat reuses it
            for tap in self.taps:
                tap(item.frame)
            start = time.perf_counter()
            self._scaled = self.sinks.prepare(item.frame)
            self.stage_times.add("scale", time.perf_counter() - start)
        start = time.perf_counter()
        self.sinks.write(self._scaled)
        self.stage_times.add("sink", time.perf_counter() - start)
        if self.sinks.ended is not None:  # the last output failed or was closed: the end
            self.done.set()
            return
        now = time.monotonic()
        if tally.first is None:
            tally.first = now
            # Steady-state timings only: forget model loading and the stream's start-up.
            self.stage_times.clear()
        latency = None if item.t_capture is None else (now - item.t_capture) * 1000.0
        record = FrameRecord(
            tally.written, now - tally.first, latency, item.prompt, item.mode.value, item.strength
        )
        tally.written += 1
        if repeat:
            tally.repeated += 1
        else:
            tally.new += 1
            tally.recent.append(now)
            tally.last_latency_ms = latency
            if self.timing:
                tally.rated += 1
                if tally.first_new_t is None:
                    tally.first_new_t = record.t
                tally.last_new_t = record.t
            if latency is not None:
                tally.latencies.append(latency)
        if self.metrics is not None:
            self.metrics.write(record)
        if self.limit is not None and tally.written >= self.limit:
            self.done.set()
