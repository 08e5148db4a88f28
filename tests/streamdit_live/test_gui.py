"""The control app, driven like a user would (pytest-qt, offscreen): the demo streams into
both previews, the prompt editor and OSC (real UDP) meet in the engine and the fields,
presets round-trip on disk, a missing virtual camera is said while the preview goes on,
the source switches, and closing the window leaves no thread or process behind. Then the
whole app in a subprocess under a real X server (Xvfb), taking its screenshot.

The tiny model with random weights at 64x64, loaded once per module, keeps each test to
seconds."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the app

from PyQt6.QtCore import QSettings, Qt  # noqa: E402
from pythonosc.udp_client import SimpleUDPClient  # noqa: E402

from streamdit_live.controls import Controls, Size  # noqa: E402
from streamdit_live.events import SessionState  # noqa: E402
from streamdit_live.gui.main_window import MainWindow  # noqa: E402
from streamdit_live.presets import PresetLibrary, shipped_dir  # noqa: E402

WAIT_MS = 60_000
SMALL = Controls(model="tiny", size=Size(64, 64))


@pytest.fixture(scope="module")
def models():
    import torch

    from streamdit_live.models import build_models

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    built = build_models("tiny", torch.device("cpu"))
    built.text.encode(SMALL.prompt)
    yield built
    torch.set_num_threads(threads)


@pytest.fixture
def make_window(qtbot, models, tmp_path):
    """A window on a fresh config dir; `make_window(**options)`; closed by qtbot."""
    library = PresetLibrary([("shipped", shipped_dir()), ("user", tmp_path / "presets")])

    def make(**options) -> MainWindow:
        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        options = {"source": "demo", "osc_port": 0, "models": models, **options}
        window = MainWindow(SMALL, library, settings, **options)
        qtbot.addWidget(window)
        window.show()
        return window

    return make


def streaming(qtbot, window: MainWindow, frames: int = 3) -> None:
    """Wait until both previews showed `frames` more frames than now."""
    seen_in = window.input_preview.frames_shown
    seen_out = window.output_preview.frames_shown
    qtbot.waitUntil(
        lambda: (
            window.input_preview.frames_shown >= seen_in + frames
            and window.output_preview.frames_shown >= seen_out + frames
        ),
        timeout=WAIT_MS,
    )


def running(qtbot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: window.state is SessionState.RUNNING, timeout=WAIT_MS)


def test_the_app_starts_with_the_demo_and_streams_into_both_previews(qtbot, make_window):
    window = make_window()
    streaming(qtbot, window, frames=5)
    assert window.input_preview.last_frame.shape == (64, 64, 3)
    assert window.output_preview.last_frame.shape == (64, 64, 3)
    assert not window.output_preview.pixmap().isNull()
    assert window.source_panel.start.text() == "Stop"
    qtbot.waitUntil(lambda: "fps" in window.stats.text(), timeout=5_000)
    assert "model calls per frame" in window.stats.text()
    assert "random tiny weights" in window.stats.text()  # which weights run, in words


def test_a_prompt_typed_into_the_editor_reaches_the_engine(qtbot, make_window):
    window = make_window()
    running(qtbot, window)
    editor = window.prompt_panel.prompt
    editor.clear()
    qtbot.keyClicks(editor, "a neon city at night")
    engine = window.bridge.session.engine
    assert engine.controls.prompt != "a neon city at night"  # not before Enter
    qtbot.keyClick(editor, Qt.Key.Key_Return)
    assert engine.controls.prompt == "a neon city at night"
    # The worker encodes it between two steps; the frames after that carry it.
    qtbot.waitUntil(lambda: engine._prompt == "a neon city at night", timeout=WAIT_MS)


def test_an_osc_message_updates_the_prompt_field(qtbot, make_window):
    window = make_window()
    running(qtbot, window)
    port = window.bridge.session.osc.address[1]
    SimpleUDPClient("127.0.0.1", port).send_message("/streamdit/prompt", "fog over a harbour")
    qtbot.waitUntil(
        lambda: window.prompt_panel.prompt.text() == "fog over a harbour", timeout=10_000
    )
    assert window.controls.prompt == "fog over a harbour"
    SimpleUDPClient("127.0.0.1", port).send_message("/streamdit/strength", 0.8)
    qtbot.waitUntil(lambda: window.prompt_panel.strength.value() == 80, timeout=10_000)
    window._tick()
    assert "last /streamdit/strength" in window.output_panel.osc.text()


def test_saving_and_loading_a_preset_round_trips(qtbot, make_window, tmp_path):
    window = make_window(autostart=False)
    window.change({"prompt": "ink and paper", "strength": 0.3, "seed": 42})
    window.save_preset_as("my look")
    assert (tmp_path / "presets" / "my look.toml").is_file()
    window.change({"prompt": "something else", "strength": 0.9, "seed": 1})
    window.load_preset("my look")
    c = window.controls
    assert (c.prompt, c.strength, c.seed) == ("ink and paper", 0.3, 42)
    assert window.prompt_panel.prompt.text() == "ink and paper"
    assert window.prompt_panel.strength.value() == 30
    assert window.settings.value("preset") == "my look"

    window.rename_preset("my look", "mine")
    assert window.store.names().count("mine") == 1 and "my look" not in window.store.names()
    window.delete_preset("mine")
    assert "mine" not in window.store.names()
    window.delete_preset("dream")  # shipped: refused, in words
    assert "shipped preset" in window.statusBar().currentMessage()
    window.save_preset_as("dream")  # a copy of one's own shadows the shipped one
    assert window.store.origin("dream") == "user"
    window.restore_presets()
    assert window.store.origin("dream") == "shipped"


def test_a_missing_virtual_camera_is_said_while_the_preview_keeps_running(
    qtbot, make_window, monkeypatch
):
    import pyvirtualcam

    def no_device(*args, **kwargs):
        raise RuntimeError("no virtual camera device")

    monkeypatch.setattr(pyvirtualcam, "Camera", no_device)
    window = make_window()
    streaming(qtbot, window)
    window.output_panel.virtualcam.setChecked(True)  # restarts with the virtual camera
    qtbot.waitUntil(
        lambda: "virtual camera is off" in window.statusBar().currentMessage(), timeout=WAIT_MS
    )
    message = window.statusBar().currentMessage()
    assert "install" in message  # what to do, not only what went wrong
    assert not window.output_panel.virtualcam.isChecked()  # checking it again tries again
    streaming(qtbot, window, frames=5)  # the previews go on
    assert window.state is SessionState.RUNNING


def write_clip(path: Path, rgb=(90, 60, 30), frames: int = 48, size: int = 96) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (size, size))
    for _ in range(frames):
        writer.write(np.full((size, size, 3), rgb[::-1], np.uint8))
    writer.release()


def test_restarting_with_another_source_works(qtbot, make_window, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    window = make_window()
    streaming(qtbot, window)
    window.set_source(f"file:{clip}")
    qtbot.waitUntil(
        lambda: (
            window.bridge.session.plan.source == f"file:{clip}"
            and window.state is SessionState.RUNNING
        ),
        timeout=WAIT_MS,
    )
    streaming(qtbot, window)
    pixel = np.median(window.input_preview.last_frame.reshape(-1, 3), axis=0)
    assert np.abs(pixel - (90, 60, 30)).max() < 12, pixel  # the clip's colour, not the demo
    assert window.settings.value("source") == f"file:{clip}"


def test_closing_the_window_stops_every_thread_and_process(qtbot, make_window, tmp_path):
    before = set(threading.enumerate())
    window = make_window()
    window.output_panel.record_path.setText(str(tmp_path / "rec.mp4"))
    window.output_panel.record.setChecked(True)
    window.output_panel.mjpeg_port.setValue(free_tcp_port())
    window.output_panel.mjpeg.setChecked(True)
    streaming(qtbot, window)
    qtbot.waitUntil(lambda: len(window.bridge.session.outputs) == 2, timeout=WAIT_MS)
    osc_port = window.bridge.session.osc.address[1]
    window.close()
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == [], left
    assert multiprocessing.active_children() == []
    assert (tmp_path / "rec.mp4").stat().st_size > 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", osc_port))  # OSC let go of its port


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_whether_the_app_can_open_is_said_in_one_sentence(monkeypatch):
    from streamdit_live.cli import display_problem

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert display_problem().startswith("No display was found")
    monkeypatch.setenv("DISPLAY", ":7")
    assert display_problem() is None
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert "asks for no display" in display_problem()


def test_the_app_runs_and_takes_its_screenshot_under_a_real_x_server(xvfb_display, tmp_path):
    shot = tmp_path / "app.png"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env.update(DISPLAY=xvfb_display, HF_HUB_OFFLINE="1", XDG_CONFIG_HOME=str(tmp_path))
    args = ["--screenshot", str(shot), "--source", "demo", "--model", "tiny"]
    args += ["--size", "64x64", "--osc-port", "0", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "streamdit_live.gui", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] >= 800, result.stderr
    assert image.std() > 20  # widgets and pictures, not an empty window


def test_without_a_display_no_arguments_say_so_and_run_the_live_defaults(tmp_path):
    """`streamdit-live` alone where no window can open: one sentence, then the headless
    live defaults (the demo when no webcam opens), ended cleanly by Ctrl-C."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamdit_live"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        first = proc.stderr.readline()
        lines = [first]
        while not lines[-1].startswith("streamdit-live: Streaming to") and lines[-1]:
            lines.append(proc.stderr.readline())
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first == (
        "streamdit-live: QT_QPA_PLATFORM asks for no display, so the control app does not "
        "open; running headless with the live defaults.\n"
    )
    assert lines[-1].startswith("streamdit-live: Streaming to"), "".join(lines) + rest
    assert proc.returncode == 0, "".join(lines) + rest
