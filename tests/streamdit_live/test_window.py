"""The preview window sink: a Qt preview process (offscreen), no display, a dead display,
and Xvfb for a real window read back by screen capture."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from support import Feeder, wait_for

from streamdit_live.sink_base import SinkClosed, SinkUnavailable
from streamdit_live.sinks import SinkSet, open_sink
from streamdit_live.sources import open_source
from streamdit_live.window import WindowSink


def test_window_preview_runs_in_its_own_process(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    with WindowSink(64, 48, 30.0) as window, Feeder(window):
        assert wait_for(lambda: window.frames_shown >= 3, timeout=10.0)
        pid = window._process.pid
    assert not window._process.is_alive(), f"preview process {pid} outlived close()"


def test_closing_the_window_is_a_close_not_a_failure(monkeypatch, tmp_path, caplog):
    """The user closes the preview: its next write says so (SinkClosed, not an error), and
    a set with other outputs goes on with them and says so."""
    import logging

    caplog.set_level(logging.INFO, logger="streamdit_live.sinks")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    recording = open_sink(f"file:{tmp_path / 'rec.avi'}", 64, 48, 30.0)
    window = WindowSink(64, 48, 30.0)
    with SinkSet([window, recording]) as outputs:
        frame = np.zeros((48, 64, 3), np.uint8)
        outputs.write(frame)
        assert wait_for(lambda: window.frames_shown >= 1, timeout=10.0)
        window.request_close()  # what the window's close button does
        window._process.join(10.0)
        assert window._process.exitcode == 0  # Qt quit because its last window closed
        with pytest.raises(SinkClosed, match="preview window was closed"):
            window.write(frame)
        outputs.write(frame)
        assert [s.name for s in outputs.sinks] == [recording.name] and outputs.ended is None
    assert outputs.failed == []  # closed by the user: nothing failed
    assert (
        f"The preview window was closed; the run goes on with {recording.name}." in caplog.messages
    )


def test_window_without_a_display_is_unavailable(monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("only Linux can lack a display")
    with pytest.raises(SinkUnavailable, match="No display is available.*mjpeg:PORT"):
        open_sink("window", 32, 32, 30.0)


def test_window_on_a_dead_display_is_unavailable(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setenv("DISPLAY", ":59999")  # no X server there
    with pytest.raises(SinkUnavailable, match="preview window could not open"):
        WindowSink(32, 32, 30.0)


def test_window_shows_frames_on_a_real_x_display(xvfb_display, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb_display)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    magenta = np.zeros((120, 160, 3), np.uint8)
    magenta[...] = (255, 0, 255)
    with WindowSink(160, 120, 30.0) as window, open_source("screen", 320, 240) as screen:
        window.write(magenta)

        def on_screen() -> bool:
            window.write(magenta)
            got = screen.read(timeout=0.5)
            hits = got is not None and ((got.frame == (255, 0, 255)).all(axis=-1)).sum()
            return bool(hits and hits > 500)

        assert wait_for(on_screen, timeout=10.0), "the preview never appeared on the X screen"
