"""The engine with the real tiny model, codec and text encoder: text and video modes, live
control changes, and resets that leave no stale frame behind."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch

from model.config import CONFIGS
from streamdit_live.controls import ControlError, Controls, Mode
from streamdit_live.engine import (
    EmittedFrame,
    Engine,
    FrameGatherer,
    build_models,
    cpu_threads,
    make_scheme,
    pick_device,
)
from streamdit_live.sources import open_source

TIMEOUT = 60.0
SIZE = "64x64"


class Collector:
    """A FrameOutput that records pushes and flushes in order, and lets a test wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[EmittedFrame | str] = []
        self.kept_last: list[bool] = []  # each flush's keep_last

    def push(self, frames):
        with self._cond:
            self.events.extend(frames)
            self._cond.notify_all()

    def flush(self, keep_last: bool = False) -> None:
        with self._cond:
            self.events.append("flush")
            self.kept_last.append(keep_last)
            self._cond.notify_all()

    def frames(self, after: int = 0) -> list[EmittedFrame]:
        with self._cond:
            return [e for e in self.events[after:] if isinstance(e, EmittedFrame)]

    def wait_for(self, predicate, timeout: float = TIMEOUT) -> list[EmittedFrame]:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.frames()), timeout)
        assert ok, "the engine did not produce the expected frames in time"
        return self.frames()


@pytest.fixture(scope="module")
def models():
    # One thread, as the app picks on 2 cores (see engine.cpu_threads): two stall badly
    # when other jobs share the cores. Restored for the modules that run after this one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    built = build_models("tiny", torch.device("cpu"))
    built.text.encode("fog")  # load the text encoder here, not inside the first test's timing
    yield built
    torch.set_num_threads(threads)


def text_controls(**changes) -> Controls:
    base = {"mode": "text", "size": SIZE, "fps": 120.0, "prompt": "fog"}
    return Controls().replace({**base, **changes})


def test_cpu_threads_leave_a_core_free():
    assert cpu_threads(None, 2) == 1
    assert cpu_threads(None, 16) == 15
    assert cpu_threads(None, None) == 1
    assert cpu_threads(3, 2) == 3
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        cpu_threads(0, 2)


def test_pick_device_prefers_what_is_there():
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pick_device("gpu0")


def test_text_mode_streams_frames_that_change(models):
    out = Collector()
    with Engine(text_controls(), models, out):
        frames = out.wait_for(lambda f: len(f) >= 12)
    first = frames[0]
    assert first.frame.dtype == np.uint8 and first.frame.shape == (64, 64, 3)
    assert first.t_capture is None and first.mode is Mode.TEXT and first.prompt == "fog"
    assert frames[0].frame.std() > 1.0  # not blank
    assert not np.array_equal(frames[0].frame, frames[11].frame)  # changing over time


def test_reset_flushes_and_restarts_the_same_stream(models):
    """After a reset the output is flushed and the stream starts over: with the same seed
    its first chunk equals the very first chunk, so nothing from before survived."""
    out = Collector()
    with Engine(text_controls(seed=7), models, out) as engine:
        before = out.wait_for(lambda f: len(f) >= 8)
        start_epoch = before[0].epoch
        engine.reset()
        after = out.wait_for(lambda f: any(x.epoch > start_epoch for x in f) and len(f) >= 12)
    last_flush = max(i for i, e in enumerate(out.events) if e == "flush")
    fresh = out.frames(last_flush)
    assert fresh and all(f.epoch == start_epoch + 1 for f in fresh)  # nothing stale follows
    chunk = len(before) and 4  # the tiny codec decodes 4 frames per latent frame
    for a, b in zip(before[:chunk], fresh[:chunk], strict=True):
        np.testing.assert_array_equal(a.frame, b.frame)
    assert len(after) > len(before) - 1


def test_a_storm_of_restarts_is_coalesced_and_each_new_stream_shows_frames(models):
    """Resets, seeds and strengths asked for every 10 ms (an OSC storm, a strength fader):
    each used to restart the stream at the next step, so no chunk came out while it lasted.
    Now they merge into at most one restart per chunk period, each new stream emits before
    the next restart, and the outputs keep the last frame meanwhile."""
    out = Collector()
    with Engine(text_controls(fps=24.0), models, out) as engine:
        out.wait_for(lambda f: len(f) >= 4)
        before = engine.epoch
        requests = [
            engine.reset,
            lambda: engine.apply({"seed": len(out.events) % 1000}),
            lambda: engine.apply({"strength": 0.2 + 0.1 * (len(out.events) % 7)}),
        ]
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < 2.0:
            requests[sent % 3]()
            sent += 1
            time.sleep(0.01)  # the storm's own pace, not a handshake
        elapsed = time.monotonic() - start
        restarts = engine.restarts
        # After the storm the last request still runs, and its stream comes out.
        out.wait_for(lambda f: f[-1].epoch > before and f[-1].epoch == engine.epoch)
    chunk_period = 4 / 24  # the tiny codec: 4 frames per latent frame, at 24 fps
    assert 2 <= restarts <= elapsed / chunk_period + 1 < sent
    shown = {f.epoch for f in out.frames() if f.epoch > before}
    assert len(shown) >= restarts - 1  # (almost) every new stream emitted before the next
    assert all(out.kept_last[1:])  # every restart keeps the last frame on the outputs


def test_prompt_and_crossfade_apply_between_steps(models):
    out = Collector()
    with Engine(text_controls(), models, out) as engine:
        out.wait_for(lambda f: len(f) >= 4)
        engine.apply({"prompt_b": "fire", "crossfade": 0.5})
        out.wait_for(lambda f: f[-1].prompt == "fog -> fire @0.50")
        engine.apply({"prompt": "ice", "prompt_b": "", "crossfade": 0})
        frames = out.wait_for(lambda f: f[-1].prompt == "ice")
    # A prompt change does not restart the stream: no flush, one epoch throughout.
    assert "flush" not in out.events[1:]
    assert len({f.epoch for f in frames}) == 1


def test_seed_change_restarts_and_a_new_seed_gives_a_new_stream(models):
    out = Collector()
    with Engine(text_controls(seed=1), models, out) as engine:
        first = out.wait_for(lambda f: len(f) >= 4)[0]
        engine.apply({"seed": 2})
        frames = out.wait_for(lambda f: f[-1].epoch > first.epoch)
    new = [f for f in frames if f.epoch > first.epoch][0]
    assert not np.array_equal(first.frame, new.frame)


def test_pause_holds_and_resume_goes_on(models):
    out = Collector()
    with Engine(text_controls(), models, out) as engine:
        out.wait_for(lambda f: len(f) >= 4)
        engine.apply({"pause": True})
        assert engine.controls.pause
        engine.apply({"pause": False})
        count = len(out.frames())
        out.wait_for(lambda f: len(f) >= count + 8)


def test_bad_changes_are_refused_with_a_sentence_and_startup_ones_ignored(models):
    out = Collector()
    engine = Engine(text_controls(), models, out)  # not started: apply only checks and queues
    with pytest.raises(ControlError, match="chunk_size must divide the model's 4-frame buffer"):
        engine.apply({"chunk_size": 3})
    with pytest.raises(ControlError, match="mode video needs a source"):
        engine.apply({"mode": "video"})
    with pytest.raises(ControlError, match="strength must be a number from 0 to 1"):
        engine.apply({"strength": 7})
    engine.apply({"size": "512x512", "seed": 5})  # size needs a restart of the app
    assert str(engine.controls.size) == SIZE and engine.controls.seed == 5
    with pytest.raises(ControlError, match="needs a source"):
        Engine(text_controls(mode="video"), models, out)


def write_clip(path, frames: int = 24, size: int = 64) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (size, size))
    for i in range(frames):
        img = np.zeros((size, size, 3), np.uint8)
        img[:, :, 1] = 40
        cv2.circle(img, (8 + 2 * i, size // 2), 10, (255, 255, 255), -1)  # a moving disc
        writer.write(img)
    writer.release()


def test_video_mode_from_a_file_has_latency_and_follows_the_input(models, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    out = Collector()
    controls = text_controls(mode="video", fps=60.0, strength=0.5)
    source = open_source(f"file:{clip}", 64, 64, 60.0)
    with source, Engine(controls, models, out, source) as engine:
        frames = out.wait_for(lambda f: len(f) >= 16)
        requested = time.monotonic()
        engine.reset()
        after = out.wait_for(lambda f: f[-1].epoch > frames[0].epoch and len(f) >= 20)
    captures = [f.t_capture for f in frames]
    assert all(t is not None for t in captures)
    assert captures == sorted(captures)  # frames come out in capture order
    assert all(f.mode is Mode.VIDEO for f in frames)
    fresh = [f for f in after if f.epoch > frames[0].epoch]
    # No input captured before the reset reaches the output after it.
    assert fresh and all(f.t_capture >= requested for f in fresh)
    stages = engine.stage_times.snapshot()
    assert {"capture", "encode", "step", "decode"} <= set(stages)


def test_gatherer_pads_with_the_last_frame_when_the_source_stalls():
    class OneFrame:
        def __init__(self):
            self.sent = False

        def read(self, timeout: float = 1.0):
            from streamdit_live.sources import Captured

            if self.sent:
                return None
            self.sent = True
            return Captured(np.zeros((8, 8, 3), np.uint8), 1.0)

    gatherer = FrameGatherer(OneFrame(), capacity=8).start()
    try:
        frames = gatherer.take(4, timeout=0.5)
        assert frames is not None and [f.t_capture for f in frames] == [1.0] * 4
        again = gatherer.take(2, timeout=0.05)  # nothing new: the stream goes on from the last
        assert again is not None and [f.t_capture for f in again] == [1.0, 1.0]
        gatherer.clear(now=2.0)
        assert gatherer.take(1, timeout=0.05) is None  # a reset forgets even the last frame
    finally:
        gatherer.stop()


def test_video_mode_with_bigger_chunks_and_micro_steps(models):
    """chunk_size 2 and steps 2: an input is pushed only before the step after each emit,
    so the capture times stay aligned with the chunks that come out (8 frames per chunk)."""
    out = Collector()
    controls = text_controls(mode="video", fps=120.0, chunk_size=2, steps=2, strength=1.0)
    source = open_source("demo", 64, 64, 120.0)
    with source, Engine(controls, models, out, source):
        frames = out.wait_for(lambda f: len(f) >= 24)
    captures = [f.t_capture for f in frames]
    assert None not in captures and captures == sorted(captures)
    assert len(frames) % 8 == 0


@pytest.mark.parametrize(
    ("mode", "chunk_size", "levels", "chunks"),
    [
        ("video", 1, 4, 4),  # the default: coarser than the buffer's 8
        ("video", 1, 0, 8),  # 0: one level per chunk of the buffer
        ("video", 1, 16, 8),  # more than the buffer holds: the buffer's
        ("video", 2, 4, 4),  # 2-frame chunks: the buffer holds 4 anyway
        ("video", 2, 2, 2),
        ("text", 1, 4, 8),  # text mode always fills the buffer
    ],
)
def test_levels_set_the_schemes_noise_levels_in_video_mode(mode, chunk_size, levels, chunks):
    controls = Controls().replace({"mode": mode, "chunk_size": chunk_size, "levels": levels})
    scheme = make_scheme(controls, CONFIGS["cpu"])
    assert (scheme.chunks, scheme.chunk_size) == (chunks, chunk_size)


def test_fewer_levels_take_fewer_stages_and_changing_them_restarts(models):
    """tiny's buffer holds 4 chunks: at strength 0.5 that is 2 stages, with 2 levels 1;
    the change applies live (a rebuilt buffer), frames keep coming in both."""
    out = Collector()
    controls = text_controls(mode="video", strength=0.5, levels=0)
    source = open_source("demo", 64, 64, 120.0)
    with source, Engine(controls, models, out, source) as engine:
        first = out.wait_for(lambda f: len(f) >= 8)
        assert engine.stages == 2
        engine.apply({"levels": 2})
        out.wait_for(lambda f: f[-1].epoch > first[-1].epoch and len(f) >= len(first) + 8)
        assert engine.stages == 1
