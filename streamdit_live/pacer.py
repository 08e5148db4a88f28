"""Turn bursts of frames into a steady stream at a target fps: a jitter buffer.

The engine emits a whole chunk of frames at once (c or 4c frames per model call), while a
virtual camera wants one frame every 1/fps seconds. The pacer buffers the bursts and plays
them out on a fixed tick:

- priming: playback (re)starts only once the cushion (below) is buffered and, after an
  underrun or a restart, the measured jitter has passed since the first burst was due;
- cushion: the frames the pacer keeps against late bursts. It adapts to the measured
  jitter of the arrivals (`jitter_hold`: a high percentile of how much later than
  expected each burst came, between a floor and a ceiling) once enough bursts have been
  seen, and is the fixed `target_depth` before that or with `adaptive=False`;
- spreading: when the input is slower than the output, new frames are shown at the measured
  input rate and held (repeated) in between, so a burst does not flash by and then freeze;
- underrun: an empty buffer repeats the last frame and primes again;
- latency: if the buffer never drained below the cushion during a window of `window_s`
  seconds, the surplus is stale latency and the oldest frames are dropped; `max_depth` is
  a hard bound enforced on push (oldest dropped).

`push`, `pull`, `flush` and `drain` are pure functions of (state, now): tests drive them with
a fake clock. `PacedOutput` is the thin threaded wrapper that runs them on the real clock.

The engine's side of a steady output is here too: `restart_due`, the pure rule that
coalesces a storm of restarts (reset, seed, strength, mode) so the stream gets to emit
between them, while the pacer repeats the last frame until the new stream's first one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from streamdit_live.metrics import percentile

log = logging.getLogger(__name__)

T = TypeVar("T")

SPREAD_BELOW = 0.9  # spread frames out only when the input runs below 90 % of the output fps
# Hold jitter only while the input keeps up with the frames played (within measurement
# noise): an input a little slower than the output runs the buffer dry on every chunk
# whatever is held, so a hold there would add latency and save no repeated frame.
KEEPS_UP = 0.98
CREDIT_SLACK = 1e-6  # float rounding must not turn a due frame into a repeat
DUE_SLACK_S = 1e-6  # nor a tick due now into a wait
# Pushes closer than this are one burst: rating the gap between them would measure an
# input rate of millions of frames a second that takes a hundred pushes to decay.
SAME_BURST_S = 1e-3
# How long `PacedOutput.close` waits for its thread (the drain plus a write in progress);
# an output stuck longer than this is reported by `close` returning False.
CLOSE_TIMEOUT_S = 10.0


class PacerEvent(Enum):
    WAIT = "wait"  # the next tick is not due yet; no frame
    EMPTY = "empty"  # a tick is due but there is nothing to show yet
    EMITTED = "emitted"  # a new frame
    REPEATED = "repeated"  # the previous frame again (priming, underrun, or holding slow input)
    DROPPED = "dropped"  # a new frame, shown after dropping stale ones to cut latency


@dataclass(frozen=True)
class PacerConfig:
    fps: float
    target_depth: int = 2
    max_depth: int = 64
    window_s: float = 2.0
    rate_smoothing: float = 0.25  # weight of the newest interval in the input-rate average
    adaptive: bool = True  # cushion from the measured jitter; False: always target_depth
    jitter_quantile: float = 95.0  # the lateness (percentile of bursts) the cushion absorbs
    min_hold_s: float = 0.01  # the floor: scheduling noise any desktop has
    max_hold_s: float = 0.25  # the ceiling: beyond this, repeat a frame rather than lag
    jitter_window: int = 48  # bursts measured: 8 s of 4-frame chunks at 24 fps
    min_jitter_samples: int = 8  # fewer measured bursts: target_depth, no time hold

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"PacerConfig: fps must be positive, got {self.fps}.")
        if not 1 <= self.target_depth <= self.max_depth:
            raise ValueError(
                "PacerConfig: need 1 <= target_depth <= max_depth, got "
                f"target_depth={self.target_depth}, max_depth={self.max_depth}."
            )
        if not self.window_s > 0 or not 0 < self.rate_smoothing <= 1:
            raise ValueError(
                "PacerConfig: window_s must be positive and rate_smoothing in (0, 1], got "
                f"window_s={self.window_s}, rate_smoothing={self.rate_smoothing}."
            )
        if not 0 <= self.min_hold_s <= self.max_hold_s or not 0 <= self.jitter_quantile <= 100:
            raise ValueError(
                "PacerConfig: need 0 <= min_hold_s <= max_hold_s and jitter_quantile in "
                f"[0, 100], got min_hold_s={self.min_hold_s}, max_hold_s={self.max_hold_s}, "
                f"jitter_quantile={self.jitter_quantile}."
            )
        if not 1 <= self.min_jitter_samples <= self.jitter_window:
            raise ValueError(
                "PacerConfig: need 1 <= min_jitter_samples <= jitter_window, got "
                f"min_jitter_samples={self.min_jitter_samples}, "
                f"jitter_window={self.jitter_window}."
            )


@dataclass(frozen=True)
class PacerState(Generic[T]):
    config: PacerConfig
    buffer: tuple[T, ...] = ()
    last: T | None = None  # the frame shown last, repeated on underrun
    next_due: float | None = None  # time of the next output tick; None until the first push
    priming: bool = True
    credit: float = 0.0  # fractional new frames owed to the output (spreading slow input)
    input_rate: float | None = None  # measured frames/s arriving, averaged over pushes
    last_push: float | None = None
    unrated: int = 0  # frames pushed at the same instant as the previous push, not yet rated
    gaps: tuple[tuple[float, int], ...] = ()  # newest bursts: (s since the last, frames)
    primed_from: float | None = None  # first push since priming began (the time hold's start)
    window_start: float | None = None
    window_min_depth: int | None = None
    emitted: int = 0
    repeated: int = 0
    dropped: int = 0
    underruns: int = 0

    @property
    def depth(self) -> int:
        return len(self.buffer)


def new_pacer(config: PacerConfig) -> PacerState[Any]:
    return PacerState(config=config)


def content_rate(state: PacerState[Any]) -> float:
    """Frames per second at which buffered frames are consumed.

    The measured input rate when it is clearly below fps (spreading slow input evenly);
    otherwise fps, since near-equal rates are better served by priming and trimming than by
    holds that would follow every wobble of the measurement.
    """
    fps, rate = state.config.fps, state.input_rate
    return fps if rate is None or rate >= SPREAD_BELOW * fps else rate


def buffered_seconds(state: PacerState[Any]) -> float:
    """How long the buffered frames take to play out: the pacer's share of the latency."""
    return state.depth / content_rate(state)


def lateness(gaps: Sequence[tuple[float, int]]) -> list[float]:
    """Per burst, how much later than expected it came (seconds; early is negative).

    `gaps` are (seconds since the previous burst, frames in this one). The expected gap is
    the frames times the median seconds per frame over all of them: a median, so a stall or
    the burst that follows it does not shift what counts as on time.
    """
    periods = [gap / frames for gap, frames in gaps if frames > 0]
    period = percentile(periods, 50)
    if period is None:
        return []
    return [gap - frames * period for gap, frames in gaps]


def jitter_hold(
    gaps: Sequence[tuple[float, int]], quantile: float, floor_s: float, ceiling_s: float
) -> float:
    """How long to hold frames back so that bursts arriving this late still play on time.

    The `quantile`-th percentile of the bursts' `lateness`, clamped to [floor_s, ceiling_s]:
    a steady input gets the floor, a jittery one what covers all but its rarest late
    bursts, and one that stalls now and then a repeated frame rather than the stall's
    length of delay on every frame after it.
    """
    late = percentile(lateness(gaps), quantile)
    return min(ceiling_s, max(floor_s, 0.0 if late is None else late))


def _measured(state: PacerState[Any]) -> bool:
    cfg = state.config
    return cfg.adaptive and len(state.gaps) >= cfg.min_jitter_samples


def _keeps_up(state: PacerState[Any]) -> bool:
    """Whether the input brings frames as fast as they are played: always when they are
    spread out at the input's rate; at the output's rate, when the input's median rate
    (steadier than the running average) is within KEEPS_UP of it."""
    fps = state.config.fps
    if content_rate(state) < fps:
        return True
    period = percentile([gap / n for gap, n in state.gaps if n > 0], 50)
    return period is not None and period * KEEPS_UP * fps <= 1.0


def hold_seconds(state: PacerState[Any]) -> float:
    """The time hold after an underrun or restart: the measured jitter; 0 until measured,
    and while the input is slower than the frames are played (see KEEPS_UP)."""
    cfg = state.config
    if not _measured(state) or not _keeps_up(state):
        return 0.0
    return jitter_hold(state.gaps, cfg.jitter_quantile, cfg.min_hold_s, cfg.max_hold_s)


def cushion_frames(state: PacerState[Any]) -> int:
    """Frames kept buffered against late bursts: the jitter hold at the rate frames are
    played (at least one), or the fixed `target_depth` until the jitter is measured."""
    cfg = state.config
    if not _measured(state):
        return cfg.target_depth
    frames = math.ceil(hold_seconds(state) * content_rate(state) - CREDIT_SLACK)
    return min(cfg.max_depth, max(1, frames))


def next_wakeup(state: PacerState[Any]) -> float | None:
    """When `pull` next has something to do; None until frames have been pushed."""
    return state.next_due


def push(state: PacerState[T], frames: Sequence[T], now: float) -> PacerState[T]:
    """Add a burst of frames (oldest first) that arrived at `now`."""
    cfg, n = state.config, len(frames)
    if n == 0:
        return state
    rate, last_push, unrated = state.input_rate, state.last_push, state.unrated
    gaps, late = state.gaps, 0.0
    if last_push is None:
        last_push = now
    elif now > last_push + SAME_BURST_S:
        gaps = (*gaps, (now - last_push, unrated + n))[-cfg.jitter_window :]
        late = lateness(gaps)[-1]
        instant = (unrated + n) / (now - last_push)
        rate = instant if rate is None else rate + cfg.rate_smoothing * (instant - rate)
        last_push, unrated = now, 0
    else:  # same burst (or a clock that went backwards): rate these frames with the next push
        unrated += n
    buffer = state.buffer + tuple(frames)
    overflow = max(0, len(buffer) - cfg.max_depth)
    return dataclasses.replace(
        state,
        buffer=buffer[overflow:],
        next_due=now if state.next_due is None else state.next_due,
        input_rate=rate,
        last_push=last_push,
        unrated=unrated,
        gaps=gaps,
        # The time hold counts from when this burst was due, not from when it came: a late
        # burst has already used up that much of the hold.
        primed_from=(
            now - max(0.0, late)
            if state.priming and state.primed_from is None
            else state.primed_from
        ),
        dropped=state.dropped + overflow,
    )


def pull(state: PacerState[T], now: float) -> tuple[PacerState[T], T | None, PacerEvent]:
    """Advance to `now`: at most one output tick, returning the frame to show and why."""
    cfg = state.config
    if state.next_due is None or now < state.next_due - DUE_SLACK_S:
        return state, None, PacerEvent.WAIT
    period = 1.0 / cfg.fps
    next_due = state.next_due + period
    if next_due <= now:  # the caller stalled for more than a tick: skip the missed ticks
        next_due = now + period
    buffer, credit, priming = list(state.buffer), state.credit, state.priming
    window_start, window_min = state.window_start, state.window_min_depth
    dropped, underruns, primed_from = 0, state.underruns, state.primed_from
    cushion = cushion_frames(state)

    if priming:
        held = primed_from is None or now >= primed_from + hold_seconds(state) - DUE_SLACK_S
        if len(buffer) >= cushion and held:
            priming, credit, primed_from = False, 1.0, None  # show the first frame right away
            window_start, window_min = now, None
    else:
        credit = min(credit + content_rate(state) / cfg.fps, 2.0)
        if window_start is not None and now - window_start >= cfg.window_s:
            # The buffer never drained below window_min: that many frames beyond the target
            # are pure latency, so drop the oldest of them.
            surplus = 0 if window_min is None else window_min - cushion
            if 0 < surplus < len(buffer):
                del buffer[:surplus]
                dropped = surplus
            window_start, window_min = now, None

    frame, event = state.last, PacerEvent.REPEATED
    if not priming and credit >= 1.0 - CREDIT_SLACK:
        if buffer:
            frame = buffer.pop(0)
            credit -= 1.0
            event = PacerEvent.DROPPED if dropped else PacerEvent.EMITTED
        else:  # underrun: hold the last frame and buffer up again before resuming
            priming, credit, underruns = True, 0.0, underruns + 1
            window_start, window_min = None, None
    if not priming:
        window_min = len(buffer) if window_min is None else min(window_min, len(buffer))
    if frame is None:
        event = PacerEvent.EMPTY
    new_frame = event in (PacerEvent.EMITTED, PacerEvent.DROPPED)
    state = dataclasses.replace(
        state,
        buffer=tuple(buffer),
        last=frame,
        next_due=next_due,
        priming=priming,
        credit=credit,
        window_start=window_start,
        window_min_depth=window_min,
        primed_from=primed_from,
        emitted=state.emitted + int(new_frame),
        repeated=state.repeated + int(event is PacerEvent.REPEATED),
        dropped=state.dropped + dropped,
        underruns=underruns,
    )
    return state, frame, event


def flush(state: PacerState[T], keep_last: bool = False) -> PacerState[T]:
    """Drop every buffered frame (a reset: no stale frame may follow) and prime again.

    With keep_last=True (a restart) the last shown frame is repeated on every tick until
    the new stream's first frame, so the outputs never stall; with keep_last=False it is
    forgotten and nothing is shown until new frames arrive. The counters and the measured
    input rate survive; the time of the last push does not, so the gap until the new
    stream's first burst is not taken for slow input.
    """
    return dataclasses.replace(
        state,
        buffer=(),
        last=state.last if keep_last else None,
        priming=True,
        credit=0.0,
        last_push=None,
        unrated=0,
        primed_from=None,
        window_start=None,
        window_min_depth=None,
        dropped=state.dropped + state.depth,
    )


def drain(state: PacerState[T]) -> tuple[PacerState[T], tuple[T, ...]]:
    """Take every buffered frame at once, oldest first (a clean end: the frames already made
    are written out without waiting for their ticks); they count as emitted."""
    frames = state.buffer
    if not frames:
        return state, ()
    state = dataclasses.replace(
        state,
        buffer=(),
        last=frames[-1],
        priming=True,
        credit=0.0,
        primed_from=None,
        window_start=None,
        window_min_depth=None,
        emitted=state.emitted + len(frames),
    )
    return state, frames


def restart_due(
    last_restart: float | None, first_frame: float | None, period_s: float, hold_s: float
) -> float:
    """When a requested restart of the stream may run, on the clock of the arguments.

    `last_restart` is when the current stream started (None: never) and `first_frame` when
    it emitted its first chunk (None: not yet). A stream that has emitted runs for one
    `period_s` (a chunk's play time) after its first chunk, so that chunk is shown; one that
    has not emitted yet gets up to `hold_s` to do so. So at most one restart runs per chunk
    period, and a storm of restarts (a strength fader swept over OSC) still shows new frames
    instead of restarting, over and over, a stream that never gets to show one. Requests
    that arrive meanwhile are merged into one restart at the returned time.
    """
    if last_restart is None:
        return -math.inf
    if first_frame is None:
        return last_restart + max(period_s, hold_s)
    return max(last_restart, first_frame) + period_s


class FrameWriter(Protocol):
    def write(self, frame: np.ndarray) -> None: ...


class PacedOutput(Generic[T]):
    """Runs the pacer on a thread with a real clock and writes each tick's frame to `output`.

    The engine calls `push(frames)` from its own thread. Items may be frames or anything
    carrying one (give `frame_of`); `on_emit(item, event, now)` sees every written tick, e.g.
    for metrics. Errors from `output` or `on_emit` are logged and the ticks go on. Leaving the
    `with` block normally drains the buffer into `output`; leaving it on an error does not.
    """

    def __init__(
        self,
        output: FrameWriter,
        config: PacerConfig,
        *,
        frame_of: Callable[[T], np.ndarray] | None = None,
        on_emit: Callable[[T, PacerEvent, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._output = output
        self._frame_of = frame_of
        self._on_emit = on_emit
        self._clock = clock
        self._cond = threading.Condition()
        self._state: PacerState[T] = PacerState(config=config)
        self._closed = False
        self._drain = False
        self._errors = 0
        self._thread = threading.Thread(target=self._run, name="paced-output", daemon=True)

    def start(self) -> PacedOutput[T]:
        self._thread.start()
        return self

    def push(self, frames: Sequence[T]) -> None:
        with self._cond:
            self._state = push(self._state, frames, self._clock())
            self._cond.notify_all()

    def flush(self, keep_last: bool = False) -> None:
        with self._cond:
            self._state = flush(self._state, keep_last)
            self._cond.notify_all()

    @property
    def state(self) -> PacerState[T]:
        """A snapshot (immutable) of the pacer: depth, counters, input rate."""
        with self._cond:
            return self._state

    @property
    def alive(self) -> bool:
        """True while the thread runs, e.g. still inside a write after `close` gave up."""
        return self._thread.is_alive()

    def close(self, drain: bool = False, timeout: float | None = CLOSE_TIMEOUT_S) -> bool:
        """Stop ticking; with `drain`, first write every buffered frame at once.

        Returns True once the thread has ended, so `output` may be closed; False if it is
        still inside a write after `timeout` seconds (None: wait as long as it takes).
        """
        with self._cond:
            self._closed = True
            self._drain = self._drain or drain
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> PacedOutput[T]:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(drain=exc_type is None)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    rest: tuple[T, ...] = ()
                    if self._drain:
                        self._state, rest = drain(self._state)
                    now = self._clock()
                    break
                now = self._clock()
                self._state, item, event = pull(self._state, now)
                if item is None:
                    wake = next_wakeup(self._state)
                    # Woken early by push/flush/close; the timeout is the next tick, not a poll.
                    timeout = 1.0 if wake is None else max(0.0, wake - self._clock())
                    if timeout > 0:
                        self._cond.wait(timeout)
                    continue
            self._write(item, event, now)
        for item in rest:  # on this thread, so `output` never sees two writers at once
            self._write(item, PacerEvent.EMITTED, now)

    def _write(self, item: T, event: PacerEvent, now: float) -> None:
        try:
            frame = item if self._frame_of is None else self._frame_of(item)
            self._output.write(frame)  # type: ignore[arg-type]
            if self._on_emit is not None:
                self._on_emit(item, event, now)
        except Exception:
            self._errors += 1
            if self._errors == 1 or self._errors % 1000 == 0:  # do not flood the log at 30 fps
                log.exception("paced output: writing a frame failed (%d so far)", self._errors)
