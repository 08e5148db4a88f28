"""Sinks with real parts: spec parsing, files read back by OpenCV, pyvirtualcam's Camera up
to a registered fake backend, SinkSet's failure handling and the re-exports of every sink.
The MJPEG and window sinks have their own tests (test_mjpeg.py, test_window.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import cv2
import numpy as np
import pytest
import pyvirtualcam

from streamdit_live import mjpeg, sink_base, window
from streamdit_live.sinks import (
    FileSink,
    Sink,
    SinkKind,
    SinkSpec,
    SinkUnavailable,
    open_sink,
    open_sinks,
    parse_sink,
    virtualcam_help,
)
from streamdit_live.sources import demo_frame

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_video(path: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    assert cap.isOpened(), f"{path} is not a playable video"
    frames = []
    while len(frames) < 10_000:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("virtualcam", SinkSpec(SinkKind.VIRTUALCAM)),
        ("virtualcam:/dev/video10", SinkSpec(SinkKind.VIRTUALCAM, device="/dev/video10")),
        ("file:out.mp4", SinkSpec(SinkKind.FILE, path="out.mp4")),
        ("file:/tmp/rec.AVI", SinkSpec(SinkKind.FILE, path="/tmp/rec.AVI")),
        ("window", SinkSpec(SinkKind.WINDOW)),
        ("mjpeg", SinkSpec(SinkKind.MJPEG, port=8080)),
        ("mjpeg:9000", SinkSpec(SinkKind.MJPEG, port=9000)),
        ("mjpeg:0.0.0.0:9000", SinkSpec(SinkKind.MJPEG, host="0.0.0.0", port=9000)),
    ],
)
def test_parse_sink_accepts_every_form(text, spec):
    assert parse_sink(text) == spec
    assert parse_sink(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("obs", "use virtualcam, .* mjpeg:HOST:PORT"),
        ("window:big", "use virtualcam"),
        ("file:", "use virtualcam"),
        ("file:out.mkv", "must end in .mp4 or .avi"),
        ("mjpeg:http", "port must be a number"),
        ("mjpeg:70000", "port must be a number"),
    ],
)
def test_parse_sink_refuses_in_one_sentence(text, match):
    with pytest.raises(ValueError, match=match):
        parse_sink(text)


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_file_sink_recording_reads_back(tmp_path, ext):
    path = str(tmp_path / f"out{ext}")
    with open_sink(f"file:{path}", width=64, height=48, fps=24.0) as sink:
        for i in range(30):
            sink.write(demo_frame(i * 2, 96, 64))  # another size: the sink fits it
    frames = read_video(path)
    assert len(frames) == 30
    assert all(f.shape == (48, 64, 3) for f in frames)
    assert all(f.std() > 10 for f in frames)  # not blank
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 5  # it moves
    cap = cv2.VideoCapture(path)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(24.0, abs=0.01)
    cap.release()


def test_file_sink_refuses_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=r"\.mp4 or \.avi"):
        FileSink(str(tmp_path / "out.mov"), 32, 32, 30.0)
    with pytest.raises(ValueError, match="does not exist"):
        FileSink(str(tmp_path / "missing" / "out.mp4"), 32, 32, 30.0)


def test_a_closed_sink_refuses_writes(tmp_path):
    sink = FileSink(str(tmp_path / "x.mp4"), 16, 16, 30.0)
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        sink.write(np.zeros((16, 16, 3), np.uint8))


RECORDER = """
import signal, sys
from streamdit_live.sinks import open_sink
from streamdit_live.sources import demo_frame
path, how = sys.argv[1], sys.argv[2]
if how == "ctrl-c":
    with open_sink("file:" + path, 64, 48, 30.0) as sink:
        for i in range(20):
            sink.write(demo_frame(i, 64, 48))
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: KeyboardInterrupt here
else:  # never closed: the finalizer must still finish the file at interpreter exit
    sink = open_sink("file:" + path, 64, 48, 30.0)
    for i in range(20):
        sink.write(demo_frame(i, 64, 48))
    sys.exit(0)
"""


@pytest.mark.parametrize("how", ["ctrl-c", "exit-without-close"])
def test_recording_stays_playable_when_the_run_is_interrupted(tmp_path, how):
    path = str(tmp_path / "rec.mp4")
    proc = subprocess.run(
        [sys.executable, "-c", RECORDER, path, how], cwd=REPO, capture_output=True, timeout=60
    )
    if how == "ctrl-c":
        assert proc.returncode != 0 and b"KeyboardInterrupt" in proc.stderr
    frames = read_video(path)
    assert len(frames) == 20 and frames[0].shape == (48, 64, 3)


class FakeCamBackend:
    """A pyvirtualcam backend that records what reaches the device boundary."""

    def __init__(self, *, width, height, fps, fourcc, device, **kw) -> None:
        self.size, self.fps, self.fourcc = (width, height), fps, fourcc
        self.frames: list[np.ndarray] = []
        self.closed = False
        FakeCamBackend.last = self

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return "Fake Camera"

    def native_fourcc(self):
        return None


class NoDriverBackend:
    def __init__(self, **kw) -> None:
        raise RuntimeError("No v4l2 loopback device found at /dev/video[0-99].")


@pytest.fixture
def no_backends(monkeypatch):
    """Only the backends a test registers exist (never a real device of the machine)."""
    monkeypatch.setattr(pyvirtualcam.camera, "BACKENDS", {})


def test_virtualcam_sends_rgb_frames_through_pyvirtualcam(no_backends):
    pyvirtualcam.register_backend("fake", FakeCamBackend)
    frames = [demo_frame(i, 80, 60) for i in range(5)]
    with open_sink("virtualcam", width=40, height=30, fps=30.0) as sink:
        assert sink.device == "Fake Camera"
        for frame in frames:
            sink.write(frame)
    backend = FakeCamBackend.last
    assert backend.closed and backend.size == (40, 30) and backend.fps == 30.0
    assert backend.fourcc == pyvirtualcam.util.encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
    sent = [f.reshape(30, 40, 3) for f in backend.frames]  # pyvirtualcam sends them flat
    expected = [cv2.resize(f, (40, 30), interpolation=cv2.INTER_AREA) for f in frames]
    assert len(sent) == 5 and all(np.array_equal(a, b) for a, b in zip(sent, expected, strict=True))


@pytest.mark.parametrize("backend", [None, NoDriverBackend])
def test_virtualcam_without_a_driver_says_how_to_get_one(no_backends, backend):
    if backend is not None:
        pyvirtualcam.register_backend("missing", backend)
    with pytest.raises(SinkUnavailable) as caught:
        open_sink("virtualcam", 64, 64, 30.0)
    assert str(caught.value) == virtualcam_help(platform.system())


def test_virtualcam_help_names_the_driver_for_each_os():
    assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1" in virtualcam_help("Linux")
    for system in ("Windows", "Darwin"):
        assert "OBS Studio 30 or newer" in virtualcam_help(system)
    for system in ("Linux", "Windows", "Darwin", "Plan9"):
        text = virtualcam_help(system)
        assert text.count(". ") == 0 and text.endswith(".")  # one sentence


class BrokenSink(Sink):
    def __init__(self) -> None:
        super().__init__("broken", 8, 8, 30.0)

    def _send(self, frame: np.ndarray) -> None:
        raise OSError("device gone")


def test_sink_set_drops_a_failing_sink_and_keeps_the_others(tmp_path, no_backends, caplog):
    path = str(tmp_path / "out.avi")
    outputs = open_sinks(["virtualcam", f"file:{path}"], width=32, height=32, fps=30.0)
    assert len(outputs) == 1 and outputs.failed == [virtualcam_help(platform.system())]
    outputs.add(BrokenSink())
    with outputs:
        for i in range(10):
            outputs.write(demo_frame(i, 32, 32))
        assert [s.name for s in outputs.sinks] == [f"file:{path}"]
    assert "Output broken failed (device gone) and was dropped" in outputs.failed[-1]
    assert len(read_video(path)) == 10
    assert any("was dropped" in r.getMessage() for r in caplog.records)


def test_open_sinks_checks_every_spec_before_opening_any(tmp_path):
    with pytest.raises(ValueError, match="Unknown output"):
        open_sinks([f"file:{tmp_path / 'a.mp4'}", "nonsense"])
    assert not (tmp_path / "a.mp4").exists()


def test_every_sink_is_still_importable_from_sinks():
    from streamdit_live import sinks

    assert sinks.MjpegSink is mjpeg.MjpegSink
    assert sinks.DEFAULT_MJPEG_PORT == mjpeg.DEFAULT_MJPEG_PORT == 8080
    assert sinks.WindowSink is window.WindowSink
    assert sinks.Sink is sink_base.Sink
    assert sinks.SinkUnavailable is sink_base.SinkUnavailable
    for sink in (mjpeg.MjpegSink, window.WindowSink, sinks.FileSink, sinks.VirtualCamSink):
        assert issubclass(sink, sinks.Sink)


def test_importing_the_sinks_never_loads_qt():
    code = (
        "import sys, streamdit_live.sinks, streamdit_live.window, streamdit_live.mjpeg; "
        "sys.exit('PyQt6' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
