"""Sinks with real parts: files read back by OpenCV, MJPEG over real HTTP, pyvirtualcam's
Camera up to a registered fake backend, a Qt preview process, Xvfb for a real window."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import pyvirtualcam

from streamdit_live.sinks import (
    FileSink,
    MjpegSink,
    Sink,
    SinkKind,
    SinkSpec,
    SinkUnavailable,
    WindowSink,
    open_sink,
    open_sinks,
    parse_sink,
    virtualcam_help,
)
from streamdit_live.sources import demo_frame, open_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a condition until a deadline (tests only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


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


class Feeder:
    """Writes demo frames to a sink at about 60 fps on a thread, like a paced output."""

    def __init__(self, sink: Sink) -> None:
        self.sink, self.stop, self.count = sink, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() and self.count < 5000:
            self.sink.write(demo_frame(self.count, self.sink.width, self.sink.height))
            self.count += 1
            self.stop.wait(1 / 60)

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5.0)


def test_mjpeg_stream_reads_back_over_http_with_several_clients():
    with open_sink("mjpeg:127.0.0.1:0", width=96, height=64, fps=30.0) as sink, Feeder(sink):
        assert isinstance(sink, MjpegSink) and sink.port > 0
        assert sink.url == f"http://127.0.0.1:{sink.port}/stream.mjpg"
        index = urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/", timeout=5).read()
        assert b"/stream.mjpg" in index
        first, second = cv2.VideoCapture(sink.url), cv2.VideoCapture(sink.url)
        try:
            assert first.isOpened() and second.isOpened()
            got = []
            for _ in range(8):
                for cap in (first, second):
                    ok, frame = cap.read()
                    assert ok and frame.shape == (64, 96, 3)
                    got.append(frame)
            assert wait_for(lambda: sink.clients == 2)
        finally:
            first.release()
            second.release()
        assert got[0].std() > 10  # not blank
        assert np.abs(got[0].astype(int) - got[-1].astype(int)).mean() > 3  # it moves
        snapshot = urllib.request.urlopen(
            f"http://127.0.0.1:{sink.port}/snapshot.jpg", timeout=5
        ).read()
        image = cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (64, 96, 3)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/nothing", timeout=5)


def test_a_stalled_mjpeg_client_never_blocks_writes():
    frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # ~200 kB
    with MjpegSink(256, 256, 30.0, port=0) as sink:
        stalled = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # then never reads
            sink.write(frame)
            assert wait_for(lambda: sink.clients == 1)
            start = time.monotonic()
            for _ in range(60):  # ~12 MB of JPEG the client never takes
                sink.write(frame)
            assert time.monotonic() - start < 5.0
            cap = cv2.VideoCapture(sink.url)  # a healthy client still gets frames
            with Feeder(sink):
                ok, got = cap.read()
            cap.release()
            assert ok and got.shape == (256, 256, 3)
        finally:
            stalled.close()


def test_mjpeg_port_in_use_is_unavailable_not_a_crash():
    with MjpegSink(32, 32, 30.0, port=0) as first:
        taken = f"127.0.0.1:{first.port}.*mjpeg:PORT"
        with pytest.raises(SinkUnavailable, match=taken):
            MjpegSink(32, 32, 30.0, port=first.port)


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


def test_window_preview_runs_in_its_own_process(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    with WindowSink(64, 48, 30.0) as window, Feeder(window):
        assert wait_for(lambda: window.frames_shown >= 3, timeout=10.0)
        pid = window._process.pid
    assert not window._process.is_alive(), f"preview process {pid} outlived close()"


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
