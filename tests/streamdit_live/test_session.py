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
