"""The session: plan checks and the output tally without a model; then whole runs with the
tiny model, a real source, real outputs (files read back by OpenCV, the Qt preview
offscreen), real sockets: start-up mistakes fail in seconds, outputs never stall."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from support import read_video, wait_for

from streamdit_live.controls import Controls
from streamdit_live.osc import OscConfig
from streamdit_live.presets import PresetLibrary
from streamdit_live.session import Session, SessionPlan, SetupError


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

    from streamdit_live import output_tap, session
    from streamdit_live.controls import Mode
    from streamdit_live.engine import EmittedFrame
    from streamdit_live.metrics import StageTimes
    from streamdit_live.sinks import SinkSet

    monkeypatch.setattr(output_tap, "LATENCY_SAMPLES", 4)
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


def test_a_source_that_never_delivers_fails_in_seconds_before_the_model_loads(tmp_path):
    """An explicit webcam that is not there used to be retried for 180 s, then exit 1. Now
    it is a SetupError (exit 2) within seconds, before any model loads (none is given here,
    so reaching the load would take far longer) and before any output file is created."""
    out = tmp_path / "out.mp4"
    run = Session(
        plan(source="webcam:/dev/video-none", outputs=(f"file:{out}",)), PresetLibrary([])
    )
    start = time.monotonic()
    with pytest.raises(SetupError, match=r"^No frame came from webcam:/dev/video-none at start"):
        run.run()
    assert time.monotonic() - start < 5.0
    assert not out.exists()


def test_a_busy_osc_port_the_user_asked_for_fails_before_the_model_loads(tmp_path):
    """It was a warning, and the run went on without control (a second instance)."""
    out = tmp_path / "out.mp4"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        busy = plan(outputs=(f"file:{out}",), osc=OscConfig(port=port), osc_required=True)
        start = time.monotonic()
        with pytest.raises(SetupError, match=f"cannot listen for OSC on 127.0.0.1:{port}"):
            Session(busy, PresetLibrary([])).run()
    assert time.monotonic() - start < 5.0 and not out.exists()


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


# --- whole runs with the tiny model ------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    import torch

    from streamdit_live.models import build_models

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    built = build_models("tiny", torch.device("cpu"))
    built.text.encode("a watercolor painting, soft morning light")
    yield built
    torch.set_num_threads(threads)


TEXT_24 = Controls().replace({"mode": "text", "size": "64x64", "fps": 24.0})


@contextmanager
def running(session: Session) -> Iterator[dict]:
    """Run `session` on a thread; on leaving, stop it and re-raise what `run` raised."""
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = session.run()
        except BaseException as exc:  # handed to the test below
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        session.stop()
        thread.join(30.0)
        assert not thread.is_alive(), "the session did not end"
    if "error" in result:
        raise result["error"]


def frames_out(session: Session) -> int:
    tap = session._tap
    return 0 if tap is None else tap.tally.written


def test_pause_then_reset_keeps_every_output_at_the_target_fps(models, tmp_path):
    """Pause, then reset: the outputs used to get nothing at all until unpause (a hole in
    the recording). Now they repeat the last frame at 24 fps, and the new stream follows."""
    out, metrics = tmp_path / "out.avi", tmp_path / "m.jsonl"
    session = Session(
        plan(controls=TEXT_24, source=None, outputs=(f"file:{out}",), metrics=metrics),
        PresetLibrary([]),
        models,
    )
    with running(session):
        assert wait_for(lambda: frames_out(session) >= 12, timeout=60.0)
        session.engine.apply({"pause": True})
        session.engine.reset()
        paused_at, written, new = time.monotonic(), frames_out(session), session._tap.tally.new
        assert wait_for(lambda: frames_out(session) >= written + 36, timeout=3.0), (
            f"{frames_out(session) - written} frames in 3 s while paused after a reset"
        )
        rate = 36 / (time.monotonic() - paused_at)
        assert session._tap.tally.new <= new + 4  # held: at most the rest of a chunk is new
        epoch = session.engine.epoch
        session.engine.apply({"pause": False})
        assert wait_for(lambda: session._tap.tally.new >= new + 12, timeout=30.0)
    assert rate > 0.8 * 24
    lines = [json.loads(line) for line in metrics.read_text().splitlines()[:-1]]
    times = [line["t"] for line in lines]
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) < 0.25  # never a hole
    assert len(read_video(out)) == len(lines)
    assert session.engine.epoch == epoch  # the reset ran once, while paused


def test_closing_the_only_output_window_ends_the_run_with_its_summary(models, monkeypatch, caplog):
    """It used to leave the app running invisibly, holding the OSC port."""
    import logging

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    session = Session(
        plan(controls=TEXT_24, source=None, outputs=("window",), osc=OscConfig(port=0)),
        PresetLibrary([]),
        models,
    )
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=session.run()), daemon=True)
    thread.start()
    assert wait_for(lambda: frames_out(session) >= 4, timeout=60.0)
    osc_port = session.osc.address[1]
    window = session._sinks.sinks[0]
    window.request_close()
    thread.join(10.0)
    assert not thread.is_alive(), "closing the only output did not end the run"
    assert result["summary"]["frames"] >= 4
    assert "The preview window was closed; the run ends." in caplog.messages
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", osc_port))  # the OSC port is free again


def test_closing_the_window_beside_a_recording_lets_the_run_go_on(
    models, monkeypatch, tmp_path, caplog
):
    import logging

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    out = tmp_path / "out.avi"
    session = Session(
        plan(controls=TEXT_24, source=None, outputs=("window", f"file:{out}"), frames=36),
        PresetLibrary([]),
        models,
    )
    with running(session) as result:
        assert wait_for(lambda: frames_out(session) >= 4, timeout=60.0)
        session._sinks.sinks[0].request_close()
        assert wait_for(lambda: "summary" in result, timeout=30.0)
    assert len(read_video(out)) == 36  # the run went on to its --frames limit
    assert f"The preview window was closed; the run goes on with file:{out}." in caplog.messages


def test_a_run_whose_every_output_fails_is_a_setup_error(models, monkeypatch, tmp_path):
    """The disk fills up under the only recording: the run ends (it used to stream on into
    nothing), with one sentence, and the frames already recorded stay playable."""
    from streamdit_live.sinks import FileSink

    send = FileSink._send

    def fails_after_six(self, frame):
        if self.frames_written >= 6:
            raise OSError("No space left on device")
        send(self, frame)

    monkeypatch.setattr(FileSink, "_send", fails_after_six)
    out = tmp_path / "out.avi"
    session = Session(
        plan(controls=TEXT_24, source=None, outputs=(f"file:{out}",)), PresetLibrary([]), models
    )
    with pytest.raises(SetupError) as failed:
        session.run()
    assert str(failed.value) == (
        f"Output file:{out} failed (No space left on device), and no output is left; the run ends."
    )
    assert len(read_video(out)) == 6


def test_osc_before_the_stream_runs_gets_an_error_reply_not_a_lost_change():
    """OSC listens from before the model loads (so a busy port fails fast); a change sent
    meanwhile is refused with a reason the sender sees, and a reset has nothing to do."""
    from streamdit_live.controls import ControlError
    from streamdit_live.session import _ControlRelay

    relay = _ControlRelay()
    with pytest.raises(ControlError, match="the stream is still starting; send it again"):
        relay.apply({"prompt": "fog"})
    relay.reset()

    class Engine:
        def __init__(self) -> None:
            self.calls: list[object] = []

        def apply(self, changes) -> None:
            self.calls.append(changes)

        def reset(self) -> None:
            self.calls.append("reset")

    relay.engine = engine = Engine()
    relay.apply({"prompt": "fog"})
    relay.reset()
    assert engine.calls == [{"prompt": "fog"}, "reset"]
