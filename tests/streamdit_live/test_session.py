"""The session's plan checks and output tally, without loading a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamdit_live.controls import Controls
from streamdit_live.osc import OscConfig
from streamdit_live.session import SessionPlan


def plan(**changes) -> SessionPlan:
    base = {"controls": Controls(), "source": "demo", "outputs": ("mjpeg:0",)}
    return SessionPlan(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"osc": OscConfig(port=70000)}, "--osc-port must be from 0 to 65535, got 70000"),
        ({"osc": OscConfig(port=-1)}, "--osc-port must be from 0 to 65535, got -1"),
        ({"metrics": Path("/no/such/dir/run.jsonl")}, "folder /no/such/dir does not exist"),
        ({"outputs": ("file:/no/such/dir/x.mp4",)}, "folder /no/such/dir does not exist"),
    ],
)
def test_mistakes_fail_before_any_model_loads(changes, message):
    """Each of these used to surface only after the model had loaded, some as a traceback
    (OverflowError from bind, FileNotFoundError from the metrics file)."""
    with pytest.raises(ValueError, match=message):
        plan(**changes).check()


def test_the_output_tally_stays_bounded_over_a_long_run(monkeypatch):
    """A stream runs for hours: the tally must not keep a record per frame (it did, ~250
    bytes each, ~200 MB over ten hours at 24 fps). Latency percentiles come from a bounded
    window of the newest frames; the counts and the span cover the whole run."""
    import threading

    from streamdit_live import session
    from streamdit_live.controls import Mode
    from streamdit_live.engine import EmittedFrame
    from streamdit_live.metrics import StageTimes
    from streamdit_live.sinks import SinkSet

    monkeypatch.setattr(session, "LATENCY_SAMPLES", 4)
    tap = session._OutputTap(SinkSet(), None, None, StageTimes(), threading.Event())
    frame = np.zeros((2, 2, 3), np.uint8)
    items = [EmittedFrame(frame, 0.0, "p", Mode.VIDEO, 0.5, 1) for _ in range(50)]
    for item in items:
        tap.write(item)
        tap.write(item)  # a repeat: counted, not a new frame
    tally = tap.tally
    assert (tally.written, tally.new, tally.repeated) == (100, 50, 50)
    assert len(tally.latencies) == 4
    assert tally.last_new_t >= tally.first_new_t == 0.0


def test_a_source_that_never_delivers_is_named_not_blamed_on_the_model(monkeypatch):
    """An explicit webcam that is not there: the source retries in the background and no
    frame ever comes out. The sentence must point at the source, not at the model size."""
    import torch

    from streamdit_live import session
    from streamdit_live.models import build_models
    from streamdit_live.presets import PresetLibrary

    monkeypatch.setattr(session, "FIRST_FRAME_TIMEOUT_S", 0.5)
    threads = torch.get_num_threads()
    try:
        models = build_models("tiny", torch.device("cpu"))
        controls = Controls().replace({"size": "64x64"})
        run = session.Session(
            plan(controls=controls, source="webcam:/dev/video-none"), PresetLibrary([]), models
        )
        with pytest.raises(session.SessionError, match=r"no frame came from webcam:/dev/video"):
            run.run()
    finally:
        torch.set_num_threads(threads)


def make_tap(limit=None):
    import threading

    from streamdit_live import session
    from streamdit_live.metrics import StageTimes
    from streamdit_live.sinks import SinkSet

    return session._OutputTap(SinkSet(), None, limit, StageTimes(), threading.Event())


@pytest.mark.parametrize(("limit", "written"), [(None, 8), (5, 5), (1, 1)])
def test_a_clean_stop_writes_the_buffered_frames_and_keeps_the_frame_limit(limit, written):
    """What the pacer still holds at a clean stop reaches the outputs, yet --frames N still
    writes exactly N frames."""
    from streamdit_live.controls import Mode
    from streamdit_live.engine import EmittedFrame
    from streamdit_live.pacer import PacedOutput, PacerConfig

    tap = make_tap(limit)
    frame = np.zeros((2, 2, 3), np.uint8)
    items = [EmittedFrame(frame, None, "p", Mode.TEXT, 0.5, 1) for _ in range(8)]
    # A clock that never moves: only the first tick is ever due; the rest is the drain.
    with PacedOutput(tap, PacerConfig(fps=0.001), clock=lambda: 0.0) as paced:
        paced.push(items)
    assert (tap.tally.written, tap.tally.new) == (written, written)
    assert tap.done.is_set() == (limit is not None)


def test_outputs_still_being_written_are_left_open_with_a_warning(caplog):
    from streamdit_live.presets import PresetLibrary
    from streamdit_live.session import Session

    class Paced:
        alive = True

    class Sinks:
        closed = 0

        def close(self) -> None:
            self.closed += 1

    run, sinks = Session(plan(), PresetLibrary([])), Sinks()
    run._paced = Paced()
    run._close_sinks(sinks)
    assert sinks.closed == 0 and "left open" in caplog.text
    Paced.alive = False
    run._close_sinks(sinks)
    assert sinks.closed == 1


def test_status_reads_zero_fps_while_stalled_or_paused():
    """The OSC feedback used to keep the last fps and latency while nothing came out."""
    import time

    from streamdit_live.presets import PresetLibrary
    from streamdit_live.session import Session

    def status(controls, newest_age):
        run = Session(plan(controls=controls), PresetLibrary([]))
        run._tap = make_tap()
        now = time.monotonic()
        run._tap.tally.recent.extend(now - newest_age - (9 - i) / 24 for i in range(10))
        run._tap.tally.last_latency_ms = 100.0
        return run.status()

    flowing = status(Controls(), 0.0)
    assert flowing.fps == pytest.approx(24.0) and flowing.latency_ms == 100.0
    stalled = status(Controls(), 10.0)
    assert stalled.fps == 0.0 and stalled.latency_ms >= 10_100.0
    assert status(Controls().replace({"pause": True}), 0.0).fps == 0.0


def test_the_final_drain_does_not_inflate_the_measured_rate():
    """The drain writes its frames all at once: counted as frames, not towards the fps."""
    from streamdit_live.controls import Mode
    from streamdit_live.engine import EmittedFrame

    tap = make_tap()
    frame = np.zeros((2, 2, 3), np.uint8)
    items = [EmittedFrame(frame, None, "p", Mode.TEXT, 0.5, 1) for _ in range(5)]
    for item in items[:3]:
        tap.write(item)
    span = tap.tally.last_new_t
    tap.end_timing()
    for item in items[3:]:
        tap.write(item)
    tally = tap.tally
    assert (tally.written, tally.new, tally.rated, tally.last_new_t) == (5, 5, 3, span)
