"""Sources with real parts: a clip written by OpenCV, the demo, Xvfb for the screen."""

from __future__ import annotations

import logging
import os
import threading
import time

import cv2
import numpy as np
import pytest
from support import wait_for

from streamdit_live.sources import (
    Backoff,
    CaptureError,
    Source,
    SourceKind,
    SourceSpec,
    backoff_delay,
    demo_frame,
    open_source,
    parse_source,
    start_problem,
)

FAST = Backoff(initial_s=0.02, factor=2.0, max_s=0.1)


def write_clip(path: str, frames: int = 12, fps: float = 60.0, size=(64, 48)) -> None:
    """Frame i is a flat gray of level 20 * i + 10, so a reader can tell frames apart."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 20 * i + 10, np.uint8))
    writer.release()


def level(frame: np.ndarray) -> int:
    return round((float(frame.mean()) - 10) / 20)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("webcam", SourceSpec(SourceKind.WEBCAM, device=0)),
        ("webcam:2", SourceSpec(SourceKind.WEBCAM, device=2)),
        ("webcam:/dev/video2", SourceSpec(SourceKind.WEBCAM, device="/dev/video2")),
        ("screen", SourceSpec(SourceKind.SCREEN, monitor=1)),
        ("screen:0", SourceSpec(SourceKind.SCREEN, monitor=0)),
        ("screen:10,-20,300,200", SourceSpec(SourceKind.SCREEN, region=(10, -20, 300, 200))),
        ("file:/tmp/a b.mp4", SourceSpec(SourceKind.FILE, path="/tmp/a b.mp4")),
        ("file:C:\\clips\\x.mp4", SourceSpec(SourceKind.FILE, path="C:\\clips\\x.mp4")),
        (" demo ", SourceSpec(SourceKind.DEMO)),
    ],
)
def test_parse_source_accepts_every_form(text, spec):
    assert parse_source(text) == spec
    assert parse_source(str(spec)) == spec  # str() gives back a spec that parses the same


@pytest.mark.parametrize(
    "text", ["", "cam", "webcam:", "file:", "screen:1,2,3", "screen:a", "demo:1", "http://x"]
)
def test_parse_source_refuses_with_the_valid_forms(text):
    with pytest.raises(ValueError, match=r"use webcam, .* file:PATH or demo\.$"):
        parse_source(text)


def test_parse_source_refuses_an_empty_region():
    with pytest.raises(ValueError, match="positive"):
        parse_source("screen:0,0,0,10")


def test_backoff_grows_exponentially_up_to_its_cap():
    policy = Backoff(initial_s=0.5, factor=2.0, max_s=10.0)
    assert [backoff_delay(n, policy) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff_delay(10_000, policy) == 10.0  # no float overflow after days of failures


def test_demo_frames_are_deterministic_colorful_and_moving():
    a, b = demo_frame(0, 64, 48), demo_frame(15, 64, 48)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, demo_frame(0, 64, 48))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    assert a.std() > 20 and len({tuple(p) for p in a.reshape(-1, 3)[::37]}) > 20


def test_demo_source_delivers_fitted_frames_that_change():
    with open_source("demo", width=40, height=30, fps=60.0) as source:
        first = source.read(timeout=2.0)
        assert first is not None
        later = first
        for _ in range(20):
            later = source.read(timeout=2.0)
        assert later is not None
        assert later.frame.shape == (30, 40, 3) and later.frame.dtype == np.uint8
        assert later.t_capture > first.t_capture
        assert not np.array_equal(first.frame, later.frame)
        health = source.health()
        assert health.frames >= 21 and health.failures == 0 and health.connected


def test_read_repeats_the_last_frame_when_nothing_new_arrives():
    with open_source("demo", width=16, height=16, fps=5.0) as source:
        got = source.read(timeout=2.0)
        assert got is not None
        again = source.read(timeout=0)  # 5 fps: nothing new yet
        assert again is not None and again.t_capture == got.t_capture


def test_file_source_reads_the_clip_and_loops_past_the_end(tmp_path):
    path = str(tmp_path / "clip.avi")
    write_clip(path)
    with open_source(f"file:{path}", width=32, height=24, fps=30.0) as source:
        levels = []
        deadline = time.monotonic() + 5.0
        # Read until the clip has wrapped around twice (12 frames at the file's 60 fps).
        while sum(b < a for a, b in zip(levels, levels[1:], strict=False)) < 2:
            assert time.monotonic() < deadline, f"the clip did not loop: {levels}"
            got = source.read(timeout=1.0)
            assert got is not None and got.frame.shape == (24, 32, 3)
            levels.append(level(got.frame))
        assert set(levels) <= set(range(12)) and max(levels) >= 10
        health = source.health()
        assert health.frames > 12 and health.failures == 0 and health.last_error is None


def test_missing_file_is_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        open_source(f"file:{tmp_path / 'nope.mp4'}")


def test_file_deleted_mid_run_is_reported_and_reopened(tmp_path, caplog):
    path = str(tmp_path / "clip.avi")
    write_clip(path, frames=6)
    caplog.set_level(logging.WARNING, logger="streamdit_live.sources")
    with open_source(f"file:{path}", 32, 24, 30.0, backoff=FAST) as source:
        assert source.read(timeout=2.0) is not None
        os.remove(path)
        assert wait_for(lambda: source.health().failures >= 1), source.health()
        health = source.health()
        assert "could not be opened" in health.last_error and not health.connected
        last = source.read(timeout=0.05)  # the stream goes on from the last good frame
        assert last is not None and last.frame.shape == (24, 32, 3)
        frames_before = source.health().frames
        write_clip(path, frames=6)  # the file comes back: the source picks it up again
        assert wait_for(lambda: source.health().reopens >= 1), source.health()
        assert wait_for(lambda: source.health().frames > frames_before + 3)
        assert source.health().connected
    assert any("could not be opened" in r.getMessage() for r in caplog.records)


class FlakyCapture:
    """A fake device that fails after a few frames: the seam is the Source's opener."""

    paced = False
    fps = 200.0

    def __init__(self, frames_before_failing: int, value: int) -> None:
        self.left, self.value = frames_before_failing, value

    def grab(self) -> np.ndarray:
        if self.left == 0:
            raise CaptureError("fake camera stopped sending frames: was it unplugged?")
        self.left -= 1
        return np.full((10, 20, 3), self.value, np.uint8)

    def close(self) -> None:
        pass


def test_a_failing_device_is_reopened_with_backoff_and_frames_keep_coming(caplog):
    opens = []

    def opener() -> FlakyCapture:
        opens.append(len(opens))
        if len(opens) == 2:
            raise CaptureError("fake camera could not be opened: is it plugged in?")
        return FlakyCapture(frames_before_failing=3, value=len(opens))

    caplog.set_level(logging.WARNING, logger="streamdit_live.sources")
    with Source(opener, name="fake", width=8, height=8, fps=200.0, backoff=FAST) as source:
        values = set()
        deadline = time.monotonic() + 5.0
        while len(values) < 4:
            assert time.monotonic() < deadline, (values, source.health())
            got = source.read(timeout=1.0)
            assert got is not None and got.frame.shape == (8, 8, 3)
            values.add(int(got.frame[0, 0, 0]))
        health = source.health()
    assert health.reopens >= 3 and health.failures >= 4
    assert 2 not in values  # the second open failed and never produced frames
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("fake camera stopped sending frames") for m in messages)
    assert any("could not be opened: is it plugged in? Reopening in" in m for m in messages)


def test_a_webcam_that_does_not_exist_is_reported_in_one_sentence():
    with open_source("webcam:/dev/video99", 32, 32, 30.0, backoff=FAST) as source:
        assert wait_for(lambda: source.health().failures >= 2)
        health = source.health()
        assert health.last_error == (
            "webcam /dev/video99 could not be opened: is it plugged in and not used by another app?"
        )
        assert source.read(timeout=0.05) is None and not health.connected


def test_screen_source_under_xvfb(xvfb_display, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb_display)
    with open_source("screen", width=64, height=48, fps=30.0) as source:
        got = source.read(timeout=5.0)
        assert got is not None, source.health()
        assert got.frame.shape == (48, 64, 3) and got.frame.dtype == np.uint8
    with open_source("screen:100,50,320,240", width=32, height=24) as region:
        got = region.read(timeout=5.0)
        assert got is not None and got.frame.shape == (24, 32, 3)
    with open_source("screen:7", backoff=FAST) as missing:
        assert wait_for(lambda: missing.health().failures >= 1)
        assert missing.health().last_error == (
            "screen 7 does not exist: this display has monitors 1 to 1 "
            "(0 captures all of them together)."
        )


def test_screen_source_without_a_display_says_so(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with open_source("screen", backoff=FAST) as source:
        assert wait_for(lambda: source.health().failures >= 1)
        assert "is a display available" in source.health().last_error


def test_a_file_that_is_not_a_video_fails_at_start_up_in_seconds(tmp_path, caplog):
    """It used to be retried with backoff for 180 s before the run gave up (exit 1)."""
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(os.urandom(4096))
    caplog.set_level(logging.DEBUG, logger="streamdit_live.sources")
    start = time.monotonic()
    with open_source(f"file:{junk}", 32, 32, 30.0) as source:  # the default backoff
        health = source.wait_first_frame(timeout=10.0)
    waited = time.monotonic() - start
    assert health.frames == 0 and health.failures >= 3
    assert waited < 4.0, f"took {waited:.1f} s to give up"
    assert start_problem(health) == (
        f"No frame came from file:{junk} at start-up (file {junk} could not be opened: does it "
        "exist and is it a video?); check it or pick another source with --source."
    )
    # Until a first frame, the retries are not the user's news: that one sentence is.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_working_source_starts_at_once_and_a_silent_one_times_out():
    with open_source("demo", 16, 16, 30.0) as source:
        start = time.monotonic()
        health = source.wait_first_frame(timeout=10.0)
        assert health.frames >= 1 and time.monotonic() - start < 2.0
        assert start_problem(health) is None

    class Silent:  # opens, then never delivers: the device hangs in grab()
        paced, fps = True, None

        def __init__(self) -> None:
            self.released = threading.Event()

        def grab(self) -> np.ndarray:
            self.released.wait(10.0)
            raise CaptureError("silent camera closed.")

        def close(self) -> None:
            self.released.set()

    device = Silent()
    with Source(lambda: device, name="silent", width=8, height=8) as source:
        health = source.wait_first_frame(timeout=0.3)
        device.released.set()
    assert health.frames == 0 and health.failures == 0 and health.connected
    assert start_problem(health) == (
        "No frame came from silent at start-up; check it or pick another source with --source."
    )


def test_a_new_source_is_one_registry_entry(monkeypatch):
    """A new kind of source: one `SourceType` and one line in SOURCE_TYPES."""
    from streamdit_live.sources import SOURCE_TYPES, SourceType, open_source

    class Gray:
        paced, fps = False, None

        def grab(self):
            return np.full((10, 20, 3), 128, np.uint8)

        def close(self):
            pass

    entry = SourceType(
        "gray", ("gray",), lambda arg, spec: SourceSpec("gray"), lambda s, w, h, fps: Gray
    )
    monkeypatch.setitem(SOURCE_TYPES, "gray", entry)
    assert parse_source("gray") == SourceSpec("gray") and str(SourceSpec("gray")) == "gray"
    with open_source("gray", 32, 16, 30.0) as source:
        captured = source.read(timeout=5.0)
    assert captured is not None and captured.frame.shape == (16, 32, 3)
    with pytest.raises(ValueError, match="demo or gray"):
        parse_source("grey")
