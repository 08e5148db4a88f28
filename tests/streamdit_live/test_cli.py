"""End to end through the real CLI in a subprocess: files in and out, OSC over real UDP
(python-osc and oscsend) changing the prompt mid-run as seen in --metrics, Ctrl-C, bench,
and one-sentence errors with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient
from support import read_video

from streamdit_live.cli import build_parser, main

ENV = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
CMD = [sys.executable, "-m", "streamdit_live"]
FAST = ["--model", "tiny", "--size", "128x128"]
TIMEOUT = 120


def cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CMD, *args], env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_main(args: list[str]) -> int | str | None:
    """`main` in this process; argparse's own errors arrive as SystemExit. A run that got
    as far as loading the model set torch's thread count: put it back for other tests."""
    threads = torch.get_num_threads()
    try:
        return main(args)
    except SystemExit as exc:
        return exc.code
    finally:
        torch.set_num_threads(threads)


def read_metrics(path: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert "summary" in lines[-1], "the last line must be the summary"
    return lines[:-1], lines[-1]["summary"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_clip(path: Path, frames: int = 30, size: int = 96) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (size, size))
    for i in range(frames):
        img = np.full((size, size, 3), (30, 60, 90), np.uint8)
        cv2.rectangle(img, (2 * i, 20), (2 * i + 30, 60), (250, 250, 250), -1)
        writer.write(img)
    writer.release()


def test_demo_to_mp4_for_some_seconds_is_playable(tmp_path):
    out = tmp_path / "out.mp4"
    result = cli("run", "--source", "demo", "--out", f"file:{out}", "--seconds", "2", *FAST)
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert len(frames) >= 10  # 2 s at 24 fps, less whatever the CPU could not keep up with
    assert frames[0].shape == (128, 128, 3)
    assert "random weights" in result.stderr  # warned once that there are no trained weights
    assert result.stderr.count("random weights") == 1


def test_file_source_to_file_sink_with_metrics(tmp_path):
    clip, out, metrics = tmp_path / "in.mp4", tmp_path / "out.mp4", tmp_path / "m.jsonl"
    write_clip(clip)
    result = cli(
        "run", "--source", f"file:{clip}", "--out", f"file:{out}", "--frames", "40",
        "--metrics", str(metrics), "--no-osc", *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert len(frames) == 40
    assert all(f.shape == (128, 128, 3) for f in frames)
    assert min(f.std() for f in frames) > 1.0  # not blank
    # A latent frame decodes to 4 video frames, which a random model's decoder may repeat:
    # compare frames 4 apart (one latent frame) to see the stream move, not freeze.
    steps = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames, frames[4:], strict=False)]
    assert np.median(steps) > 1.0
    records, summary = read_metrics(metrics)
    assert len(records) == 40 == summary["frames"]
    assert [r["frame"] for r in records] == list(range(40))
    assert set(records[0]) >= {"frame", "t", "latency_ms", "prompt", "mode", "strength"}
    assert all(r["mode"] == "video" and r["latency_ms"] > 0 for r in records)
    assert summary["latency_p50_ms"] > 0 and summary["fps"] > 0
    assert "dropped_frames" in summary and summary["stages_ms"]["step"]["calls"] > 0


def test_out_size_scales_the_model_frames_once_to_a_letterboxed_file(tmp_path):
    out, metrics = tmp_path / "wide.mp4", tmp_path / "m.jsonl"
    result = cli(
        "-q", "run", "--source", "demo", "--out", f"file:{out}", "--out-size", "320x180",
        "--out-fit", "letterbox", "--frames", "4", "--metrics", str(metrics), "--no-osc", *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert len(frames) == 4
    for frame in frames:
        assert frame.shape == (180, 320, 3)  # the 128x128 model frame scaled up to 180x180
        # 70-px pillars, less a 16-px macroblock at the picture's edge (the codec's bleed)
        bars = np.concatenate([frame[:, :54], frame[:, 266:]], axis=1)
        assert bars.max() < 24, bars.max()  # black, give or take the codec
        content = frame[4:-4, 74:246]
        assert content.mean() > 40 and content.std() > 1.0  # the picture, not blank
    _, summary = read_metrics(metrics)
    assert summary["out_size"] == "320x180" and summary["size"] == "128x128"
    assert summary["out_fit"] == "letterbox" and "scale" in summary["stages_ms"]


def _status_prompts(sock: socket.socket, want: str, limit: int = 40) -> None:
    """Read feedback until /streamdit/status/prompt says `want` (it comes once a second)."""
    for _ in range(limit):
        message = OscMessage(sock.recvfrom(65536)[0])
        if message.address == "/streamdit/status/prompt" and message.params == [want]:
            return
    raise AssertionError(f"the status never reported the prompt {want!r}")


def _wait_status(sock: socket.socket, address: str, count: int = 1) -> list[OscMessage]:
    seen = []
    while len(seen) < count:
        message = OscMessage(sock.recvfrom(65536)[0])
        if message.address == address:
            seen.append(message)
    return seen


def test_osc_changes_the_prompt_mid_run_and_ctrl_c_ends_cleanly(tmp_path):
    out, metrics = tmp_path / "live.mp4", tmp_path / "live.jsonl"
    port = free_udp_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(60)
    feedback = f"127.0.0.1:{listener.getsockname()[1]}"
    proc = subprocess.Popen(
        [*CMD, "run", "--source", "demo", "--out", f"file:{out}", "--metrics", str(metrics),
         "--osc-port", str(port), "--osc-feedback", feedback, "--prompt", "start", *FAST],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Frames are flowing once the feedback reports a non-zero fps.
        while _wait_status(listener, "/streamdit/status/fps")[0].params[0] <= 0:
            pass
        sent_at = len(metrics.read_text().splitlines())
        SimpleUDPClient("127.0.0.1", port).send_message("/streamdit/prompt", "from python-osc")
        _status_prompts(listener, "from python-osc")
        if shutil.which("oscsend"):
            subprocess.run(
                ["oscsend", "127.0.0.1", str(port), "/streamdit/prompt", "s", "from oscsend"],
                check=True,
                timeout=10,
            )
            _status_prompts(listener, "from oscsend")
        # Garbage from the listener's own socket: answered with an error, the run goes on.
        listener.sendto(b"\x00garbage", ("127.0.0.1", port))
        errors = _wait_status(listener, "/streamdit/error")
        assert "not a valid OSC packet" in errors[0].params[0]
        _wait_status(listener, "/streamdit/status/fps", count=2)  # two more seconds of frames
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    records, summary = read_metrics(metrics)
    prompts = [r["prompt"] for r in records]
    assert prompts[0] == "start"
    first = prompts.index("from python-osc")
    # Applied at the next model step: within a second or so of frames, never much later.
    assert first - sent_at <= 48, (sent_at, first)
    if shutil.which("oscsend"):
        assert "from oscsend" in prompts[first:]
    assert len(read_video(out)) == summary["frames"] == len(records)  # finalized on Ctrl-C


@pytest.mark.slow
def test_bench_reports_stages_as_a_table_and_json(tmp_path):
    report = tmp_path / "bench.json"
    result = cli("bench", "--source", "demo", "--seconds", "2", "--json", str(report), *FAST)
    assert result.returncode == 0, result.stderr
    for stage in ("capture", "encode", "step", "decode"):
        assert stage in result.stdout
    data = json.loads(report.read_text())
    assert data["fps"] > 0 and data["model"] == "tiny" and data["source"] == "demo"
    assert {"capture", "encode", "step", "decode"} <= set(data["stages_ms"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--source", "bogus", "--out", "file:x.mp4"], "Unknown source 'bogus'"),
        (["run", "--source", "demo", "--out", "file:x.txt"], "must end in .mp4 or .avi"),
        (["run", "--source", "demo", "--out", "nowhere"], "Unknown output 'nowhere'"),
        (["run", "--preset", "nope", "--out", "file:x.mp4"], "unknown preset 'nope'"),
        (["run", "--strength", "5"], "strength must be a number from 0 to 1, got '5'"),
        (["run", "--mode", "image"], "mode must be one of video, text"),
        (["run", "--size", "100x7"], "size must be WxH"),
        (["run", "--out-size", "1281x720"], "output size must be WxH with even sides"),
        (["--out-size", "wide"], "output size must be WxH with even sides"),
        (["run", "--out-fit", "zoom"], "fit must be cover or letterbox, got 'zoom'"),
        (["run", "--frames", "3", "--seconds", "2"], "not allowed with argument"),
        (["run", "--osc-feedback", "nohost"], "HOST:PORT"),
        (["presets", "show", "nope"], "unknown preset 'nope'"),
        (["run", "--source", "file:/no/such.mp4", "--out", "file:x.mp4"], "does not exist"),
        (
            ["run", "--mode", "text", "--out", "file:x.mp4", "--weights", "/no/such.safetensors"],
            "does not exist",
        ),
        (["run", "--mode", "text", "--chunk-size", "3", "--out", "file:x.mp4"], "chunk_size"),
        (
            ["run", "--mode", "text", "--out", "file:x.mp4", "--metrics", "/no/such/m.jsonl"],
            "the folder /no/such does not exist",
        ),
        (["run", "--mode", "text", "--out", "file:/no/such/x.mp4"], "folder /no/such does not"),
        (["bench", "--mode", "text", "--json", "/no/such/b.json"], "folder /no/such does not"),
    ],
)
def test_user_mistakes_are_one_sentence_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)  # any stray output file lands in the test's folder
    assert run_main([*args, "--no-osc"] if args[0] == "run" else args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # A failed run leaves no empty recording (chunk_size fails after the outputs opened).
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.parametrize("kind", ["not-a-video", "missing-webcam", "screen-without-display"])
def test_a_source_that_gives_no_first_frame_is_exit_2_in_seconds(tmp_path, kind):
    """Each used to be retried for 195 s and then exit 1, leaving an empty .mp4 behind."""
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(os.urandom(4096))
    source = {
        "not-a-video": f"file:{junk}",
        "missing-webcam": "webcam:/dev/video-none",
        "screen-without-display": "screen",
    }[kind]
    env = {k: v for k, v in ENV.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = tmp_path / "out.mp4"
    start = time.monotonic()
    result = subprocess.run(
        [*CMD, "run", "--source", source, "--out", f"file:{out}", "--no-osc", *FAST],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    took = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"streamdit-live: No frame came from {source.split(':')[0]}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no FFmpeg chatter
    assert took < 20.0, f"{took:.1f} s"  # the start of Python and torch included
    assert not out.exists()


def test_a_busy_osc_port_given_on_the_command_line_is_exit_2(tmp_path):
    out = tmp_path / "out.mp4"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        result = cli("run", "--source", "demo", "--out", f"file:{out}", "--osc-port", port,
                     "--frames", "3", *FAST)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"streamdit-live: cannot listen for OSC on 127.0.0.1:{port} (Address already in use); "
        "pick another port with --osc-port.\n"
    )
    assert not out.exists()


def test_presets_commands(capsys):
    assert main(["presets", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("realtime", "text-stream", "dream", "subtle", "morph", "vj-crossfade"):
        assert name in listing
    assert main(["presets", "show", "text-stream"]) == 0
    shown = capsys.readouterr().out
    assert 'mode = "text"' in shown and "chunk_size = 1" in shown


def test_help_explains_with_examples():
    text = build_parser().format_help()
    for word in ("run", "bench", "presets", "examples:", "--source demo --out file:out.mp4"):
        assert word in text
    result = cli("run", "--help", timeout=60)
    assert result.returncode == 0
    for flag in ("--source", "--out", "--preset", "--prompt", "--strength", "--seed", "--mode",
                 "--osc-port", "--osc-host", "--osc-feedback", "--frames", "--seconds",
                 "--metrics", "--weights", "--device", "--size", "--fps", "--out-size",
                 "--out-fit", "--random-weights"):  # fmt: skip
        assert flag in result.stdout
    words = " ".join(result.stdout.split())
    assert "Default: 1280x720 when a virtualcam is among" in words
    # One story about the model sizes and their weights, in --model's and --weights' help.
    for said in ("tiny (0.17 M), for tests, random weights only", "cpu (1.6 M parameters)",
                 "trained weights in model/weights/", "4b (the paper's scale",
                 "loads the trained weights shipped in model/weights/"):  # fmt: skip
        assert said in words, said


def test_no_output_that_can_open_is_a_clear_error(tmp_path):
    pytest.importorskip("pyvirtualcam")
    result = cli("run", "--source", "demo", "--out", "virtualcam", "--frames", "3", "--no-osc",
                 *FAST)  # fmt: skip
    if result.returncode == 0:
        pytest.skip("a virtual camera driver is installed here")
    # It said "The others go on" with no other, printed the reason twice and exited 1.
    assert result.returncode == 2
    assert result.stderr.startswith("streamdit-live: Output virtualcam is unavailable: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "others go on" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_live_defaults_fall_back_to_the_demo_without_a_webcam(tmp_path):
    out = tmp_path / "live.mp4"
    result = cli("--frames", "12", "--out", f"file:{out}", "--no-osc", *FAST)
    assert result.returncode == 0, result.stderr
    if "Using the demo source instead" not in result.stderr:
        pytest.skip("a webcam is attached here")
    assert len(read_video(out)) == 12


def test_a_second_ctrl_c_interrupts_a_shutdown_that_hangs():
    """The first Ctrl-C asks the run to end cleanly; while that hangs (a model still loading,
    an engine step that takes minutes) a second one must get through instead of being
    swallowed, or the user has only kill -9 left."""
    from streamdit_live.cli import _stop_on_signals

    stops = []
    with pytest.raises(KeyboardInterrupt), _stop_on_signals(lambda: stops.append(1)):
        signal.raise_signal(signal.SIGINT)
        assert stops == [1]
        signal.raise_signal(signal.SIGINT)
    assert stops == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_presets_show_says_what_a_gpu_preset_needs(capsys):
    assert main(["presets", "show", "wan-t2v"]) == 0
    out = capsys.readouterr().out
    assert "# needs a CUDA GPU and the wan2.1-t2v-1.3b weights (`streamdit-live download" in out
    assert 'size = "832x480"' in out and "steps = 2" in out
    assert main(["presets", "show", "realtime"]) == 0
    assert "# needs" not in capsys.readouterr().out
