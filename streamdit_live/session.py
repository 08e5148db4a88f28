"""A live session: source -> engine -> pacer -> sinks, with OSC, metrics and a stop condition.

This is the wiring that `streamdit-live run`, `bench` and the default command share: open
everything (failing early with one sentence on a user mistake), stream until the frame or
time limit, a stop request (Ctrl-C), the last output closed by the user or an engine
failure, then close everything in reverse order so recordings are finalized and playable.
On a clean end the frames still in the pacer's buffer are written out first, so a recording
keeps its last fraction of a second; a run that fails removes the recordings it left empty.

What the user gave is tried before the model loads, so a mistake costs seconds, not a
model load: the source must deliver a first frame (`sources.start_problem`), an OSC port
given with --osc-port must be free and at least one output must open. Those, and outputs
that all fail later, are a `SetupError` (the CLI's exit status 2).

Front ends plug in as objects: controllers (OSC from the plan, any others given) drive the
engine through one `ControlHub`; `SessionHooks` get the state, notices (data, worded by
each front end) and frame taps for previews. `runner.SessionRunner` starts, restarts and
stops sessions on a thread of their own for a GUI.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from streamdit_live.controls import Controls, Size, prompt_mix
from streamdit_live.engine import Engine, check_fits
from streamdit_live.events import Notice, NoticeKind, SessionHooks, SessionState, Tap
from streamdit_live.hub import ControlHub, Controller, ControllerUnavailable, OscController
from streamdit_live.metrics import (
    MetricsWriter,
    StageTimes,
    StreamStatus,
    stream_status,
    summarize,
)
from streamdit_live.models import Models, build_models, cpu_threads, pick_device
from streamdit_live.osc import OscConfig, OscServer
from streamdit_live.output_tap import OutputTap as _OutputTap
from streamdit_live.pacer import CLOSE_TIMEOUT_S, PacedOutput, PacerConfig, hold_seconds
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
    start_problem,
)

log = logging.getLogger(__name__)

FIRST_FRAME_TIMEOUT_S = 180.0  # model load + first chunk on a slow CPU, generously


class SessionError(RuntimeError):
    """The session could not go on (the engine died, no frame in time); one sentence."""


class SetupError(ValueError):
    """What the user gave does not work here: a source with no first frame, a busy OSC port
    they asked for, outputs that all failed; one sentence, and the CLI's exit status 2."""


@dataclass(frozen=True)
class SessionPlan:
    controls: Controls
    source: str | None  # a source spec; None: no source (text mode only)
    outputs: tuple[str, ...]
    device: str | None = None  # None: cuda when present, else cpu
    threads: int | None = None  # CPU threads for torch; None: all cores but one
    weights: tuple[Path, ...] = ()
    model_explicit: bool = False  # the user typed --model: the weights must be that size
    frames: int | None = None  # stop after this many output frames
    seconds: float | None = None  # stop this long after the first output frame
    metrics: Path | None = None
    osc: OscConfig | None = None
    osc_required: bool = False  # the user asked for this port: busy is an error, not a warning
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


def _open_source(plan: SessionPlan, controls: Controls, notify) -> Source | None:
    if plan.source is None:
        return None
    spec = plan.source
    if plan.fallback_source is not None:
        problem = _webcam_problem(spec, controls)
        if problem is not None:
            text = f"{problem} Using the {plan.fallback_source} source instead."
            notify(Notice(NoticeKind.SOURCE_FALLBACK, text, plan.fallback_source))
            spec = plan.fallback_source
    return open_source(spec, controls.size.width, controls.size.height, controls.fps)


class _TappedSource:
    """The source as the engine sees it, showing each new frame to the input taps."""

    def __init__(self, source: Source, taps: tuple[Tap, ...]) -> None:
        self._source, self._taps = source, taps
        self._seen: float | None = None

    def read(self, timeout: float = 1.0):
        item = self._source.read(timeout)
        if item is not None and item.t_capture != self._seen:
            self._seen = item.t_capture
            for tap in self._taps:
                tap(item.frame)
        return item

    def __getattr__(self, name: str):
        return getattr(self._source, name)


# What OSC drove before controllers were objects; the hub is the same thing and more.
_ControlRelay = ControlHub


class Session:
    """Runs one plan; `run()` blocks until it ends and returns the summary."""

    def __init__(
        self,
        plan: SessionPlan,
        library: PresetLibrary,
        models: Models | None = None,
        *,
        controllers: tuple[Controller, ...] = (),
        hooks: SessionHooks | None = None,
    ) -> None:
        plan.check()
        self.plan = plan
        self.library = library
        self.hooks = hooks or SessionHooks()
        self.hub = ControlHub()
        self.controllers: list[Controller] = list(controllers)
        if plan.osc is not None:
            self.controllers.insert(
                0, OscController(plan.osc, self._preset_values, plan.osc_required)
            )
        self.state = SessionState.IDLE
        self.notices: list[Notice] = []
        self.stage_times = StageTimes()
        self.stop_requested = threading.Event()
        self._models = models
        self._engine: Engine | None = None
        self._tap: _OutputTap | None = None
        self._paced: PacedOutput | None = None
        self._source: Source | None = None
        self._sinks: SinkSet | None = None
        self.osc: OscServer | None = None

    def stop(self) -> None:
        """Ask `run()` to finish cleanly (safe from a signal handler or another thread)."""
        self.stop_requested.set()

    @property
    def outputs(self) -> list:
        """The outputs open now (a sink has `.name`, the MJPEG one also `.url`)."""
        return self._sinks.sinks if self._sinks is not None else []

    @property
    def models(self) -> Models | None:
        """The models once loaded (a restart with the same model can reuse them)."""
        return self._models

    def _preset_values(self, name: str) -> Mapping[str, object]:
        return self.library.get(name, allow_path=False).values

    def _set_state(self, state: SessionState) -> None:
        self.state = state
        if self.hooks.on_state is not None:
            self.hooks.on_state(state)

    def _notify(self, notice: Notice, logged: bool = False) -> None:
        """Log a notice (the CLI's wording) unless `logged` already, and hand it on."""
        self.notices.append(notice)
        if not logged:
            log.warning("%s", notice.text)
        if self.hooks.on_notice is not None:
            self.hooks.on_notice(notice)

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
        status = stream_status(
            list(tap.tally.recent),
            tap.tally.last_latency_ms,
            prompt,
            time.monotonic(),
            paused=controls.pause,
        )
        return dataclasses.replace(
            status, calls_per_frame=engine.calls_per_frame if engine else None
        )

    def run(self) -> dict:
        """Stream until the end (see the module's text); the state goes STARTING, LOADING,
        RUNNING, then STOPPED, or FAILED with a notice saying why (and the error raised)."""
        try:
            summary = self._run()
        except SetupError as exc:
            self._fail(NoticeKind.SETUP_FAILED, exc)
            raise
        except (ValueError, RuntimeError) as exc:
            kind = (
                NoticeKind.SETUP_FAILED
                if isinstance(exc, ValueError)
                else NoticeKind.SESSION_FAILED
            )
            self._fail(kind, exc)
            raise
        self._set_state(SessionState.STOPPED)
        return summary

    def _fail(self, kind: NoticeKind, exc: BaseException) -> None:
        notice = Notice(kind, str(exc))
        self.notices.append(notice)  # the caller says it (the CLI prints it once)
        if self.hooks.on_notice is not None:
            self.hooks.on_notice(notice)
        self._set_state(SessionState.FAILED)

    def _run(self) -> dict:
        plan = self.plan
        done = threading.Event()
        metrics: MetricsWriter | None = None
        summary: dict | None = None
        self._set_state(SessionState.STARTING)
        try:
            with ExitStack() as stack:
                # What the user gave first, each in seconds; the model load comes after.
                self._source = self._start_source(stack)
                self._start_controllers(stack)
                self._sinks = self._open_sinks(stack)
                self._set_state(SessionState.LOADING)
                models = self._load_models()
                metrics = MetricsWriter(plan.metrics) if plan.metrics else None
                self._stream(stack, models, metrics, done)
                self._set_state(SessionState.STOPPING)
            # Everything is closed now (pacer before sinks), so the counts are final.
            summary = self._summary(models)
            self._check_outputs_left()
        finally:
            if metrics is not None:
                metrics.close(summary)
        return summary

    def _start_source(self, stack: ExitStack) -> Source | None:
        """Open the source and wait for its first frame: one that gives none within seconds
        is a SetupError now (reconnecting is for a source that worked and then failed)."""
        source = _open_source(self.plan, self.plan.controls, self._notify)
        if source is None:
            return None
        stack.callback(source.close)
        problem = start_problem(source.wait_first_frame())
        if problem is not None:
            raise SetupError(problem)
        if self.hooks.input_taps:
            return _TappedSource(source, tuple(self.hooks.input_taps))  # type: ignore[return-value]
        return source

    def _load_models(self) -> Models:
        plan, controls = self.plan, self.plan.controls
        models = self._models
        if models is None:
            device = pick_device(plan.device)
            if device.type == "cpu":
                torch.set_num_threads(cpu_threads(plan.threads, os.cpu_count()))
            models = build_models(
                controls.model,
                device,
                plan.weights,
                explicit_model=plan.model_explicit,
                size=controls.size,
            )
            self._models = models
        check_fits(controls, models)  # a chunking or size the model cannot take: fail now
        models.text.encode(prompt_mix(controls).a)  # load the text encoder before streaming
        return models

    def _check_outputs_left(self) -> None:
        """After the run: the last output gone is the end of a clean run when the user closed
        it (the preview window), a SetupError when it failed."""
        sinks = self._sinks
        if sinks is None or sinks.ended is None:
            return
        if sinks.all_failed:
            raise SetupError(sinks.ended)
        log.info("%s", sinks.ended)

    def _open_sinks(self, stack: ExitStack) -> SinkSet:
        """Open the outputs; none that works (when one is required) is a SetupError, said
        once. A run that fails later closes them with `failed`, removing empty recordings."""
        plan, controls = self.plan, self.plan.controls
        out = plan.output_size()
        sinks = open_sinks(plan.outputs, out.width, out.height, controls.fps, plan.out_fit)
        stack.push(lambda kind, *_: self._close_sinks(sinks, failed=kind is not None))
        if len(sinks) == 0:
            if plan.require_output:
                reasons = "; ".join(m.rstrip(".") for m in sinks.failed)
                raise SetupError(
                    f"{reasons}; add an output that works here, e.g. --out file:out.mp4 or "
                    "--out mjpeg:8090."
                )
            for message in sinks.failed:  # bench and the GUI: they run without them
                self._notify_output(message)
            return sinks
        for message in sinks.failed:  # open_sinks logged them
            self._notify_output(message, logged=True)
        how = "" if out == controls.size else f", {plan.out_fit.value} from {controls.size}"
        log.info("Streaming to %s at %s%s.", ", ".join(_describe(s) for s in sinks.sinks), out, how)
        return sinks

    def _notify_output(self, message: str, logged: bool = False) -> None:
        """An output that could not open (`sinks.failed` wording): a notice about it."""
        subject = message.removeprefix("Output ").split(" ", 1)[0]
        self._notify(Notice(NoticeKind.OUTPUT_UNAVAILABLE, message, subject), logged)

    def _stream(
        self,
        stack: ExitStack,
        models: Models,
        metrics: MetricsWriter | None,
        done: threading.Event,
    ) -> None:
        """Start pacer and engine onto `stack`, hand the hub the engine, wait for the end."""
        plan, controls = self.plan, self.plan.controls
        assert self._sinks is not None
        self._tap = _OutputTap(
            self._sinks,
            metrics,
            plan.frames,
            self.stage_times,
            done,
            tuple(self.hooks.output_taps),
        )
        self._paced = PacedOutput(self._tap, PacerConfig(fps=controls.fps))
        # Closed before the sinks (draining its buffer into them on a clean end).
        stack.enter_context(self._paced)
        stack.callback(self._tap.end_timing)  # the engine has stopped; the drain comes next
        self._engine = Engine(controls, models, self._paced, self._source, self.stage_times)
        if not models.trained:  # the engine logged it in the CLI's words
            text = "No trained weights given: the output will look like noise."
            self._notify(Notice(NoticeKind.RANDOM_WEIGHTS, text, controls.model), logged=True)
        stack.enter_context(self._engine)
        self.hub.engine = self._engine
        stack.callback(setattr, self.hub, "engine", None)
        self._set_state(SessionState.RUNNING)
        self._wait(done)

    def _close_sinks(self, sinks: SinkSet, failed: bool = False) -> None:
        """Close the outputs (`failed`: removing empty recordings), unless the pacer's
        thread is still inside a write to them."""
        if self._paced is not None and self._paced.alive:
            log.warning(
                "An output is still busy writing a frame after %.0f s, so the outputs are "
                "left open (a recording may be unfinished).",
                CLOSE_TIMEOUT_S,
            )
            return
        if failed:
            sinks.close(failed=True)
        else:
            sinks.close()

    def _start_controllers(self, stack: ExitStack) -> None:
        """Start every controller; one that cannot start is a SetupError when the user asked
        for it (a --osc-port), else a notice (the stream goes on without it)."""
        for controller in self.controllers:
            try:
                controller.start(self.hub.target(controller.name), self.status)
            except ControllerUnavailable as exc:
                if controller.required:
                    raise SetupError(str(exc)) from None
                text = f"{exc} The stream goes on without {controller.name.upper()}."
                self._notify(Notice(NoticeKind.CONTROLLER_UNAVAILABLE, text, controller.name))
                continue
            stack.callback(controller.stop)
            if isinstance(controller, OscController):
                self.osc = controller.server

    def _wait(self, done: threading.Event) -> None:
        """Block until the limit, a stop request or an engine failure (checked twice a second)."""
        assert self._engine is not None and self._tap is not None
        started = time.monotonic()
        told = len(self._sinks.failed) if self._sinks is not None else 0
        while not done.is_set() and not self.stop_requested.is_set():
            done.wait(0.5)
            failed = self._sinks.failed if self._sinks is not None else []
            for message in failed[told:]:  # an output that failed mid-run; the rest go on
                self.notices.append(Notice(NoticeKind.OUTPUT_DROPPED, message))
                if self.hooks.on_notice is not None:
                    self.hooks.on_notice(self.notices[-1])
            told = len(failed)
            if self._engine.error is not None:
                raise SessionError(f"the engine stopped: {self._engine.error}")
            first = self._tap.tally.first
            now = time.monotonic()
            if first is None and now - started > FIRST_FRAME_TIMEOUT_S:
                raise SessionError(self._no_frame_reason())
            if first is not None and self.plan.seconds and now - first >= self.plan.seconds:
                return

    def _no_frame_reason(self) -> str:
        """Why nothing came out in time (the source gave its first frame before the model
        loaded, so it is the model's speed)."""
        return (
            f"no frame came out within {FIRST_FRAME_TIMEOUT_S:.0f} s; try a smaller model "
            "(--model tiny) or size."
        )

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
                "model": models.name or controls.model,
                "trained_weights": models.trained,
                "device": str(models.device),
                "torch_threads": torch.get_num_threads(),
                "size": str(controls.size),
                "out_size": str(self.plan.output_size()),
                "out_fit": self.plan.out_fit.value,
                "target_fps": controls.fps,
                "mode": controls.mode.value,
                "chunk_size": controls.chunk_size,
                "chunk_frames": self._engine.chunk_frames,
                "steps": controls.steps,
                "strength": controls.strength,
                "levels": controls.levels,
                "stages": self._engine.stages,
                "pacer_hold_ms": round(hold_seconds(state) * 1000.0, 2),
                "stages_ms": self.stage_times.snapshot(),
            },
        )
