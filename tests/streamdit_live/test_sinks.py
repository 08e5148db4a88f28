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
from support import read_video

from streamdit_live import mjpeg, sink_base, window
from streamdit_live.controls import Size
from streamdit_live.sinks import (
    VIRTUALCAM_SIZE,
    FileSink,
    OutputFit,
    Sink,
    SinkKind,
    SinkSet,
    SinkSpec,
    SinkUnavailable,
    default_out_size,
    open_sink,
    open_sinks,
    parse_out_size,
    parse_sink,
    scale_frame,
    virtualcam_help,
)
from streamdit_live.sources import demo_frame

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    help_text = virtualcam_help(platform.system())
    assert len(outputs) == 1 and outputs.failed == [
        f"Output virtualcam is unavailable: {help_text}"
    ]
    outputs.add(BrokenSink())
    with outputs:
        for i in range(10):
            outputs.write(demo_frame(i, 32, 32))
        assert [s.name for s in outputs.sinks] == [f"file:{path}"]
    assert outputs.failed[-1] == "Output broken failed (device gone)."
    assert outputs.ended is None
    assert len(read_video(path)) == 10
    messages = [r.getMessage() for r in caplog.records]
    assert f"Output broken failed (device gone); the run goes on with file:{path}." in messages
    assert any(m.endswith("The others go on.") for m in messages)  # virtualcam, at opening


def test_when_the_only_output_fails_nothing_says_the_others_go_on(tmp_path, no_backends, caplog):
    """It said "The others go on" with no other, and the run printed it twice. Now the set
    logs nothing and says, once, in `ended`, why the run ends; the caller prints it."""
    outputs = open_sinks(["virtualcam"], width=32, height=32, fps=30.0)
    assert len(outputs) == 0 and outputs.failed[0].startswith("Output virtualcam is unavailable")
    assert not caplog.records  # the caller says it, once
    outputs = SinkSet([BrokenSink()])
    outputs.write(demo_frame(0, 8, 8))
    assert len(outputs) == 0 and outputs.all_failed
    assert outputs.ended == (
        "Output broken failed (device gone), and no output is left; the run ends."
    )
    assert not caplog.records


def test_a_failed_run_removes_empty_recordings_and_keeps_the_others(tmp_path):
    empty, recorded, kept = (str(tmp_path / name) for name in ("e.mp4", "r.mp4", "k.mp4"))
    outputs = open_sinks([f"file:{empty}", f"file:{recorded}"], 32, 32, 30.0)
    assert os.path.exists(empty)  # the writer creates the file when it opens
    outputs.sinks[1].write(demo_frame(0, 32, 32))
    outputs.close(failed=True)
    assert not os.path.exists(empty)  # a failed run leaves no empty .mp4 behind
    assert len(read_video(recorded)) == 1  # frames already recorded are never thrown away
    with open_sinks([f"file:{kept}"], 32, 32, 30.0):
        pass  # a clean stop, even before the first frame: the recording is the user's
    assert os.path.exists(kept)
    with (
        pytest.raises(RuntimeError, match="the engine stopped"),
        SinkSet([FileSink(empty, 32, 32, 30.0)]),
    ):
        raise RuntimeError("the engine stopped")
    assert not os.path.exists(empty)


def test_open_sinks_checks_every_spec_before_opening_any(tmp_path):
    with pytest.raises(ValueError, match="Unknown output"):
        open_sinks([f"file:{tmp_path / 'a.mp4'}", "nonsense"])
    assert not (tmp_path / "a.mp4").exists()


def test_open_sinks_closes_what_it_opened_when_a_later_output_fails(tmp_path):
    """A recording into a missing folder fails after the MJPEG server is up: the server must
    not be left listening (its port stays taken until the process exits otherwise)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    missing = tmp_path / "missing" / "x.mp4"
    with pytest.raises(ValueError, match="does not exist"):
        open_sinks([f"mjpeg:127.0.0.1:{port}", f"file:{missing}"], 32, 32, 30.0)
    with open_sink(f"mjpeg:127.0.0.1:{port}", 32, 32, 30.0):  # SinkUnavailable if it leaked
        pass


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


def banded_square(side: int = 100) -> np.ndarray:
    """A square frame: a red band on top, blue at the bottom, green between (all 20 % high)."""
    frame = np.zeros((side, side, 3), np.uint8)
    frame[:, :] = (0, 200, 0)
    frame[: side // 5] = (200, 0, 0)
    frame[-side // 5 :] = (0, 0, 200)
    return frame


def test_scale_frame_cover_fills_16_9_by_cropping_top_and_bottom():
    out = scale_frame(banded_square(), 160, 90, OutputFit.COVER)
    assert out.shape == (90, 160, 3) and out.dtype == np.uint8
    # The middle 56 % of the height survives: the 20 % bands at top and bottom are gone,
    # the picture fills the frame edge to edge (no bars) and nothing is squashed.
    assert (np.abs(out.astype(int) - (0, 200, 0)).max(axis=2) <= 1).all()


def test_scale_frame_cover_of_a_wide_frame_crops_the_sides_symmetrically():
    wide = np.zeros((50, 200, 3), np.uint8)
    wide[:, :75] = 255  # left 75 columns white: the centered 50-column crop is all black
    wide[:, 125:] = 255
    out = scale_frame(wide, 64, 64, OutputFit.COVER)
    assert out.shape == (64, 64, 3) and out.max() == 0


def test_scale_frame_letterbox_keeps_the_whole_frame_between_black_bars():
    out = scale_frame(banded_square(), 160, 90, OutputFit.LETTERBOX)
    assert out.shape == (90, 160, 3)
    assert out[:, :35].max() == 0 and out[:, 125:].max() == 0  # 35-pixel pillars each side
    inner = out[:, 35:125].astype(int)  # 90x90: the square, scaled, aspect kept
    assert (np.abs(inner[:15, 10:-10] - (200, 0, 0)).max(axis=2) <= 1).all()  # red on top
    assert (np.abs(inner[-15:, 10:-10] - (0, 0, 200)).max(axis=2) <= 1).all()  # blue below
    tall = scale_frame(banded_square(), 90, 160, OutputFit.LETTERBOX)
    assert tall[:35].max() == 0 and tall[125:].max() == 0  # bars top and bottom instead


def test_scale_frame_enlarges_smoothly_and_leaves_a_fitting_frame_alone():
    ramp = np.repeat(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], 9, axis=0)
    ramp = np.ascontiguousarray(np.repeat(ramp, 3, axis=2))  # 16x9, dark left, bright right
    out = scale_frame(ramp, 1280, 720)
    row = out[360, :, 0].astype(int)
    assert out.shape == (720, 1280, 3) and (np.diff(row) >= 0).all()  # bilinear: no steps back
    assert len(np.unique(row)) > 100  # interpolated, not 16 blocks
    assert scale_frame(ramp, 16, 9) is ramp
    with pytest.raises(ValueError, match="uint8 RGB"):
        scale_frame(np.zeros((9, 16), np.uint8), 32, 18)


@pytest.mark.parametrize("text", ["1281x720", "1280x721", "16x16", "8192x4320", "big", "0x0"])
def test_bad_output_sizes_are_refused_in_one_sentence(text):
    with pytest.raises(ValueError, match="even sides from 32 to 4096") as caught:
        parse_out_size(text)
    assert str(caught.value).count(". ") == 0 and repr(text) in str(caught.value)


def test_output_size_defaults_to_1280x720_only_with_a_virtual_camera():
    assert parse_out_size(" 1920x1080 ") == Size(1920, 1080)
    model = Size(256, 256)
    assert default_out_size(["file:a.mp4", "mjpeg:8090", "window"], model) == model
    assert default_out_size(["file:a.mp4", "virtualcam"], model) == VIRTUALCAM_SIZE
    assert str(VIRTUALCAM_SIZE) == "1280x720"


class RecordingSink(Sink):
    def __init__(self, name: str, width: int, height: int) -> None:
        super().__init__(name, width, height, 30.0)
        self.sent: list[np.ndarray] = []

    def _send(self, frame: np.ndarray) -> None:
        self.sent.append(frame)


def test_sink_set_scales_each_frame_once_for_every_sink():
    a, b = RecordingSink("a", 320, 180), RecordingSink("b", 320, 180)
    with SinkSet([a, b], size=Size(320, 180), fit=OutputFit.LETTERBOX) as outputs:
        outputs.write(banded_square(64))
    assert a.sent[0].shape == (180, 320, 3)
    assert a.sent[0] is b.sent[0]  # one scaled array shared by both sinks


def test_open_sinks_opens_a_virtual_camera_at_the_common_size(no_backends):
    pyvirtualcam.register_backend("fake", FakeCamBackend)
    size = default_out_size(["virtualcam"], Size(64, 64))
    with open_sinks(["virtualcam"], size.width, size.height, 30.0) as outputs:
        outputs.write(demo_frame(0, 64, 64))
    backend = FakeCamBackend.last
    assert backend.size == (1280, 720)
    assert backend.frames[0].reshape(720, 1280, 3).std() > 5  # the frame, filling the picture


def test_a_new_output_is_one_registry_entry(monkeypatch, tmp_path):
    """NDI, Spout or Syphon: one `OutputType` and one line in OUTPUT_TYPES, and the spec
    parses, opens in a SinkSet beside the others and shows in the error for a typo."""
    from streamdit_live.sinks import OUTPUT_TYPES, OutputType, SinkSpec, open_sinks, parse_sink

    written = []

    class NullSink(Sink):
        def _send(self, frame):
            written.append(frame.shape)

    def parse(arg, spec):
        return SinkSpec("null", path=arg)

    entry = OutputType(
        "null", ("null:NAME",), parse, lambda s, w, h, fps: NullSink(f"null:{s.path}", w, h, fps)
    )
    monkeypatch.setitem(OUTPUT_TYPES, "null", entry)
    assert parse_sink("null:studio") == SinkSpec("null", path="studio")
    with open_sinks(["null:studio", f"file:{tmp_path / 'a.avi'}"], 64, 48, 24.0) as sinks:
        assert [s.name for s in sinks.sinks] == ["null:studio", f"file:{tmp_path / 'a.avi'}"]
        sinks.write(np.zeros((48, 64, 3), np.uint8))
    assert written == [(48, 64, 3)]
    with pytest.raises(ValueError, match="null:NAME"):
        parse_sink("nul:studio")
