"""The app's sentences for the session's data (no window needed)."""

from __future__ import annotations

from streamdit_live.events import Notice, NoticeKind, SessionState
from streamdit_live.gui.wording import osc_line, stats_line, word_notice
from streamdit_live.hub import LastChange
from streamdit_live.metrics import StreamStatus
from streamdit_live.sinks import virtualcam_help


def test_notices_point_at_the_app_not_at_command_line_flags():
    text = f"Output virtualcam is unavailable: {virtualcam_help('Linux')}"
    said = word_notice(Notice(NoticeKind.OUTPUT_UNAVAILABLE, text, "virtualcam"), 9000)
    assert said.startswith("The virtual camera is off. No virtual camera device was found")
    busy = Notice(NoticeKind.CONTROLLER_UNAVAILABLE, "cannot listen ... --osc-port.", "osc")
    assert word_notice(busy, 9000).startswith("OSC is off: port 9000 is in use")
    failed = Notice(NoticeKind.SETUP_FAILED, "Source file 'x.mp4' does not exist.")
    assert word_notice(failed, 9000) == "The stream stopped: Source file 'x.mp4' does not exist."


def test_the_numbers_line_and_the_osc_line():
    assert stats_line(SessionState.LOADING, None) == "Loading the model…"
    line = stats_line(SessionState.RUNNING, StreamStatus(23.96, 412.4, "fog", 0.25))
    assert line == "Running · 24.0 fps · latency 412 ms · 0.25 model calls per frame"
    assert "latency —" in stats_line(SessionState.RUNNING, StreamStatus(24.0, None, "fog"))
    assert osc_line(None, None, None, 0.0) == "OSC: off"
    assert osc_line(9000, None, None, 0.0) == "OSC: port 9000 (not listening)"
    last = LastChange(10.0, {"prompt_a": "x", "crossfade": 0.5})
    assert osc_line(9000, ("127.0.0.1", 9000), last, 13.2) == (
        "OSC: listening on 127.0.0.1:9000; last /streamdit/prompt/a, /streamdit/crossfade, 3 s ago"
    )


def test_the_status_says_which_weights_run_and_random_ones_say_what_to_do():
    line = stats_line(SessionState.RUNNING, StreamStatus(24.0, 400.0, "fog"), "shipped cpu model")
    assert line.startswith("Running · shipped cpu model · 24.0 fps")
    assert stats_line(SessionState.LOADING, None, None) == "Loading the model…"
    cpu = word_notice(Notice(NoticeKind.RANDOM_WEIGHTS, "No trained weights given.", "cpu"), 0)
    assert "shipped weights in model/weights/ are missing" in cpu
    tiny = word_notice(Notice(NoticeKind.RANDOM_WEIGHTS, "No trained weights given.", "tiny"), 0)
    assert "random weights" in tiny and "pick the cpu model, which ships trained" in tiny
