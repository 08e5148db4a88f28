"""A live session: source -> engine -> pacer -> sinks, with OSC, metrics and a stop condition.

This is the wiring that `streamdit-live run`, `bench` and the default command share: open
everything (failing early with one sentence on a user mistake), stream until the frame or
time limit, a stop request (Ctrl-C) or an engine failure, then close everything in reverse
order so recordings are finalized and playable. On a clean end the frames still in the
pacer's buffer are written out first, so a recording keeps its last fraction of a second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from streamdit_live.controls import Controls, Size, prompt_mix
from streamdit_live.engine import EmittedFrame, Engine, check_fits
from streamdit_live.metrics import (
    FrameRecord,
    MetricsWriter,
    StageTimes,
    StreamStatus,
    stream_status,
    summarize,
)
from streamdit_live.models import Models, build_models, cpu_threads, pick_device
from streamdit_live.osc import OscConfig, OscServer
from streamdit_live.pacer import CLOSE_TIMEOUT_S, PacedOutput, PacerConfig
from streamdit_live.presets import PresetLibrary
from streamdit_live.sinks import (
    OutputFit,
    SinkKind,
    SinkSet,
    check_folder,
    check_out_size,
    default_out_size,
    open_sinks,
    parse_sink,
)
from streamdit_live.sources import (
    CaptureError,
    Source,
    SourceKind,
    WebcamCapture,
    open_source,
    parse_source,
)

log = logging.getLogger(__name__)

FIRST_FRAME_TIMEOUT_S = 180.0  # model load + first chunk on a slow CPU, generously
# The summary's latency percentiles cover this many of the newest frames (over an hour at
# 24 fps, ~3 MB): a stream runs for days, so nothing here may grow with every frame.
LATENCY_SAMPLES = 100_000


class SessionError(RuntimeError):
    """The session could not run (no output opened, the engine died); one sentence."""


@dataclass(frozen=True)
class SessionPlan:
    controls: Controls
    source: str | None  # a source spec; None: no source (text mode only)
    outputs: tuple[str, ...]
    device: str | None = None  # None: cuda when present, else cpu
    threads: int | None = None  # CPU threads for torch; None: all cores but one
    weights: tuple[Path, ...] = ()
    frames: int | None = None  # stop after this many output frames
    seconds: float | None = None  # stop this long after the first output frame
    metrics: Path | None = None
    osc: OscConfig | None = None
    require_output: bool = True  # bench runs without any output
    fallback_source: str | None = None  # used, with a notice, if the `source` webcam fails
    out_size: Size | None = None  # every output's size; None: see `output_size()`
    out_fit: OutputFit = OutputFit.COVER  # how a model frame of another shape fills it

    def output_size(self) -> Size:
        """The one size every output opens at: `out_size`, else 1280x720 when a virtual
        camera is among the outputs, else the model's size."""
        if self.out_size is not None:
            return self.out_size
        return default_out_size(self.outputs, self.controls.size)

    def check(self) -> None:
        """Check specs and paths now, so a typo fails before any model loads (ValueError)."""
        if self.source is not None:
            spec = parse_source(self.source)
            if spec.kind is SourceKind.FILE and not Path(spec.path).is_file():
                raise ValueError(f"Source file {spec.path!r} does not exist: check the path.")
        for path in self.weights:
            if not path.exists():
                raise ValueError(f"checkpoint {path} does not exist; check the --weights path.")
        for spec in map(parse_sink, self.outputs):
            if spec.kind is SinkKind.FILE:
                check_folder(spec.path, "Output file")
        if self.metrics is not None:
            check_folder(self.metrics, "Metrics file")
        if self.osc is not None and not 0 <= self.osc.port <= 65535:
            raise ValueError(f"--osc-port must be from 0 to 65535, got {self.osc.port}.")
        if self.out_size is not None:
            check_out_size(self.out_size)
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"--frames must be at least 1, got {self.frames}.")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"--seconds must be positive, got {self.seconds}.")


@dataclass
class _Tally:
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


class _OutputTap:
    """The pacer's writer: sinks, metrics and the frame limit, one paced frame at a time."""

    def __init__(
        self,
        sinks: SinkSet,
        metrics: MetricsWriter | None,
        limit: int | None,
        stage_times: StageTimes,
        done: threading.Event,
    ) -> None:
        self.sinks, self.metrics, self.limit = sinks, metrics, limit
        self.stage_times, self.done = stage_times, done
        self.tally = _Tally()
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
            start = time.perf_counter()
            self._scaled = self.sinks.prepare(item.frame)
            self.stage_times.add("scale", time.perf_counter() - start)
        start = time.perf_counter()
        self.sinks.write(self._scaled)
        self.stage_times.add("sink", time.perf_counter() - start)
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


def _describe(sink: object) -> str:
    url = getattr(sink, "url", None)  # the MJPEG sink: say where to point OBS or a browser
    return f"{sink.name} ({url})" if url else sink.name


def _webcam_problem(spec: str, controls: Controls) -> str | None:
    """Why the webcam in `spec` cannot open right now (one sentence), or None if it can.

    A direct, single try: the Source itself would keep retrying in the background, which
    is right for a camera that is replugged mid-show but wrong for picking a default.
    """
    parsed = parse_source(spec)
    if parsed.kind is not SourceKind.WEBCAM:
        return None
    size = controls.size
    try:
        WebcamCapture(parsed.device, size.width, size.height, controls.fps).close()
    except CaptureError as exc:
        return str(exc)
    return None


def _open_source(plan: SessionPlan, controls: Controls) -> Source | None:
    if plan.source is None:
        return None
    spec = plan.source
    if plan.fallback_source is not None:
        problem = _webcam_problem(spec, controls)
        if problem is not None:
            log.warning("%s Using the %s source instead.", problem, plan.fallback_source)
            spec = plan.fallback_source
    return open_source(spec, controls.size.width, controls.size.height, controls.fps)


class Session:
    """Runs one plan; `run()` blocks until it ends and returns the summary."""

    def __init__(
        self, plan: SessionPlan, library: PresetLibrary, models: Models | None = None
    ) -> None:
        plan.check()
        self.plan = plan
        self.library = library
        self.stage_times = StageTimes()
        self.stop_requested = threading.Event()
        self._models = models
        self._engine: Engine | None = None
        self._tap: _OutputTap | None = None
        self._paced: PacedOutput | None = None
        self._source: Source | None = None
        self.osc: OscServer | None = None

    def stop(self) -> None:
        """Ask `run()` to finish cleanly (safe from a signal handler or another thread)."""
        self.stop_requested.set()

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def status(self) -> StreamStatus:
        """Output fps over the recent new frames, the newest latency, the prompt; fps 0
        while paused or stalled (see `metrics.stream_status`)."""
        engine, tap = self._engine, self._tap
        controls = engine.controls if engine else self.plan.controls
        prompt = prompt_mix(controls).describe()
        if tap is None:
            return StreamStatus(0.0, None, prompt)
        return stream_status(
            list(tap.tally.recent),
            tap.tally.last_latency_ms,
            prompt,
            time.monotonic(),
            paused=controls.pause,
        )

    def run(self) -> dict:
        plan, controls = self.plan, self.plan.controls
        models = self._models
        if models is None:
            device = pick_device(plan.device)
            if device.type == "cpu":
                torch.set_num_threads(cpu_threads(plan.threads, os.cpu_count()))
            models = build_models(controls.model, device, plan.weights)
        check_fits(controls, models)  # a chunking or size the model cannot take: fail now
        models.text.encode(prompt_mix(controls).a)  # load the text encoder before streaming
        done = threading.Event()
        metrics = MetricsWriter(plan.metrics) if plan.metrics else None
        summary: dict | None = None
        try:
            with ExitStack() as stack:
                self._stream(stack, models, metrics, done)
            # Everything is closed now (pacer before sinks), so the counts are final.
            summary = self._summary(models)
        finally:
            if metrics is not None:
                metrics.close(summary)
        return summary

    def _stream(
        self, stack: ExitStack, models: Models, metrics: MetricsWriter | None, done: threading.Event
    ) -> None:
        """Open source, sinks, pacer, engine and OSC onto `stack`, then wait for the end."""
        plan, controls = self.plan, self.plan.controls
        source = self._source = _open_source(plan, controls)
        if source is not None:
            stack.callback(source.close)
        out = plan.output_size()
        sinks = open_sinks(plan.outputs, out.width, out.height, controls.fps, plan.out_fit)
        stack.callback(self._close_sinks, sinks)
        if len(sinks):
            how = "" if out == controls.size else f", {plan.out_fit.value} from {controls.size}"
            log.info(
                "Streaming to %s at %s%s.",
                ", ".join(_describe(sink) for sink in sinks.sinks),
                out,
                how,
            )
        if plan.require_output and len(sinks) == 0:
            raise SessionError(
                "No output could be opened (" + " ".join(sinks.failed) + "); "
                "add one that works here, e.g. --out file:out.mp4 or --out mjpeg:8090."
            )
        self._tap = _OutputTap(sinks, metrics, plan.frames, self.stage_times, done)
        self._paced = PacedOutput(self._tap, PacerConfig(fps=controls.fps))
        # Closed before the sinks (draining its buffer into them on a clean end).
        stack.enter_context(self._paced)
        stack.callback(self._tap.end_timing)  # the engine has stopped; the drain comes next
        self._engine = Engine(controls, models, self._paced, source, self.stage_times)
        stack.enter_context(self._engine)
        if plan.osc is not None:
            self.osc = self._start_osc(plan.osc)
            if self.osc is not None:
                stack.callback(self.osc.stop)
        self._wait(done)

    def _close_sinks(self, sinks: SinkSet) -> None:
        """Close the outputs, unless the pacer's thread is still inside a write to them."""
        if self._paced is not None and self._paced.alive:
            log.warning(
                "An output is still busy writing a frame after %.0f s, so the outputs are "
                "left open (a recording may be unfinished).",
                CLOSE_TIMEOUT_S,
            )
            return
        sinks.close()

    def _start_osc(self, config: OscConfig) -> OscServer | None:
        assert self._engine is not None
        server = OscServer(
            config,
            self._engine,
            lambda name: self.library.get(name, allow_path=False).values,
            self.status,
        )
        try:
            return server.start()
        except OSError as exc:
            log.warning("%s The stream goes on without OSC.", exc)
            return None

    def _wait(self, done: threading.Event) -> None:
        """Block until the limit, a stop request or an engine failure (checked twice a second)."""
        assert self._engine is not None and self._tap is not None
        started = time.monotonic()
        while not done.is_set() and not self.stop_requested.is_set():
            done.wait(0.5)
            if self._engine.error is not None:
                raise SessionError(f"the engine stopped: {self._engine.error}")
            first = self._tap.tally.first
            now = time.monotonic()
            if first is None and now - started > FIRST_FRAME_TIMEOUT_S:
                raise SessionError(self._no_frame_reason())
            if first is not None and self.plan.seconds and now - first >= self.plan.seconds:
                return

    def _no_frame_reason(self) -> str:
        """Why nothing came out in time: a source that never delivered, else the model."""
        waited = f"within {FIRST_FRAME_TIMEOUT_S:.0f} s"
        health = None if self._source is None else self._source.health()
        if health is not None and health.frames == 0:
            why = f" ({health.last_error})" if health.last_error else ""
            return (
                f"no frame came from {health.name} {waited}{why}; check it or pick another "
                "source with --source."
            )
        return f"no frame came out {waited}; try a smaller model (--model tiny) or size."

    def _summary(self, models: Models) -> dict:
        assert self._tap is not None and self._engine is not None
        tally, state, controls = self._tap.tally, self._paced.state, self._engine.controls
        return summarize(
            tally.new,
            tally.last_new_t - (tally.first_new_t or 0.0),
            tally.latencies,
            output_frames=tally.written,
            rated_frames=tally.rated,
            dropped=state.dropped,
            repeated=tally.repeated,
            extra={
                "input_frames_dropped": self._engine.dropped_inputs,
                "model": controls.model,
                "trained_weights": models.trained,
                "device": str(models.device),
                "torch_threads": torch.get_num_threads(),
                "size": str(controls.size),
                "out_size": str(self.plan.output_size()),
                "out_fit": self.plan.out_fit.value,
                "target_fps": controls.fps,
                "mode": controls.mode.value,
                "chunk_size": controls.chunk_size,
                "steps": controls.steps,
                "stages_ms": self.stage_times.snapshot(),
            },
        )
