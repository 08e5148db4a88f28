"""The engine: StreamDiT, its autoencoder and text encoder, stepping on a worker thread.

Video mode: frames from a `Source` -> stream encoder -> `StreamBuffer.push` -> `step` ->
stream decoder -> frames. Text mode: `step` alone (no source needed). Finished frames go
to a `FrameOutput` (the pacer) in bursts of one chunk.

Control changes from any thread (`apply`, `reset`) are checked at once, so the caller gets
the error, then merged into one pending change that the worker applies between two model
calls: a burst of OSC messages costs one re-encode of the prompt, not fifty. A change that
restarts the stream (seed, mode, strength, chunking), and `reset`, flush the buffer, the
input frames, the codec states and the output's queue, so no stale frame follows; the output
repeats the last frame until the new stream's first one, so it never stalls. Restarts are
coalesced (`pacer.restart_due`): at most one per chunk period, and a new stream gets to emit
before the next, so a storm of them (a strength fader swept) still shows new frames.

No Qt here; the GUI and the CLI both drive this class.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from model import PartitionScheme, StreamBuffer, StreamDiTConfig, StreamMode, blend
from model.memory import keep_freed_memory
from model.partition import stream_scheme
from streamdit_live.controls import (
    CONTROLS,
    ControlError,
    Controls,
    Mode,
    Scope,
    check_changes,
    check_prompt_effect,
    prompt_mix,
)
from streamdit_live.frames import frames_to_tensor, tensor_to_frames
from streamdit_live.metrics import StageTimes
from streamdit_live.models import Models
from streamdit_live.models import build_models as build_models  # re-exported
from streamdit_live.models import cpu_threads as cpu_threads  # re-exported
from streamdit_live.models import pick_device as pick_device  # re-exported
from streamdit_live.pacer import restart_due
from streamdit_live.sources import Captured, Source

log = logging.getLogger(__name__)

# StreamBuffer needs strength > 0; anything below one stage's worth behaves the same.
MIN_STRENGTH = 1e-3
_PROMPT_CONTROLS = frozenset({"prompt", "prompt_a", "prompt_b", "crossfade"})
_REBUILD_CONTROLS = frozenset({"chunk_size", "steps", "guidance", "levels", "mode"})
_STREAM_MODES = {Mode.VIDEO: StreamMode.VIDEO, Mode.TEXT: StreamMode.TEXT}
# How long a restarted stream may take to emit its first chunk before a further restart
# runs anyway (video mode first gathers a buffer's worth of input: ~1 s at 24 fps).
RESTART_HOLD_S = 3.0


@dataclass(frozen=True)
class EmittedFrame:
    """One output frame and what made it; `epoch` counts resets, so stale frames are visible."""

    frame: np.ndarray  # uint8 (H, W, 3)
    t_capture: float | None  # clock time the source frame was captured; None in text mode
    prompt: str
    mode: Mode
    strength: float
    epoch: int


class FrameOutput(Protocol):
    """Where frames go: `pacer.PacedOutput` in the app, a list in tests."""

    def push(self, frames: Sequence[EmittedFrame]) -> None: ...

    def flush(self, keep_last: bool = False) -> None: ...


def check_fits(controls: Controls, models: Models) -> None:
    """Raise ControlError if the chunking or the size does not fit the loaded model."""
    buffer = models.config.latent_frames
    if buffer % controls.chunk_size:
        sizes = [c for c in range(1, buffer + 1) if buffer % c == 0]
        raise ControlError(
            f"chunk_size must divide the model's {buffer}-frame buffer, one of "
            f"{', '.join(map(str, sizes))}, got {controls.chunk_size}."
        )
    step = models.ae.cfg.spatial_factor * models.config.patch_size[1]
    if controls.size.width % step or controls.size.height % step:
        raise ControlError(
            f"size must have sides that are multiples of {step}, got {controls.size}."
        )


def make_scheme(controls: Controls, config: StreamDiTConfig) -> PartitionScheme:
    """The partition (K=0, N, c, s) for the model's buffer, the chunking and, in video mode,
    the noise levels asked for (`model.partition.stream_scheme`)."""
    video = controls.mode is Mode.VIDEO
    return stream_scheme(
        config.latent_frames, controls.chunk_size, controls.steps, controls.levels, video
    )


class FrameGatherer:
    """Keeps the newest unread source frames on its own thread, so the engine gets a whole
    chunk of consecutive frames although the source only holds its latest one."""

    def __init__(self, source: Source, capacity: int) -> None:
        self._source = source
        self._cond = threading.Condition()
        self._frames: deque[Captured] = deque(maxlen=capacity)
        self._last: Captured | None = None  # the newest frame handed out
        self._not_before = -math.inf  # frames captured before the last clear() are stale
        self._stop = threading.Event()
        self.dropped = 0  # frames never used because the engine was busy
        self._thread = threading.Thread(target=self._run, name="frame-gatherer", daemon=True)

    def start(self) -> FrameGatherer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        seen: float | None = None
        while not self._stop.is_set():
            item = self._source.read(timeout=0.5)
            # The source repeats its last frame while its device is down; skip the repeats.
            if item is None or item.t_capture == seen:
                continue
            seen = item.t_capture
            with self._cond:
                if item.t_capture < self._not_before:
                    continue  # still in the source's slot when a reset happened
                if len(self._frames) == self._frames.maxlen:
                    self.dropped += 1
                self._frames.append(item)
                self._cond.notify_all()

    def take(self, count: int, timeout: float) -> list[Captured] | None:
        """The newest `count` frames, oldest first, waiting up to `timeout` for them.

        When the source stalls, what there is is padded with the last frame so the stream
        goes on; None only before any frame arrived.
        """
        with self._cond:
            self._cond.wait_for(lambda: len(self._frames) >= count or self._stop.is_set(), timeout)
            frames = list(self._frames)[-count:]
            self.dropped += len(self._frames) - len(frames)
            self._frames.clear()
            if not frames:
                frames = [self._last] if self._last is not None else []
            if not frames:
                return None
            frames = [frames[0]] * (count - len(frames)) + frames
            self._last = frames[-1]
            return frames

    def clear(self, now: float) -> None:
        """Forget every frame captured before `now` (a reset), including any still on its
        way from the source. `now` is on the source's clock (time.monotonic)."""
        with self._cond:
            self.dropped += len(self._frames)
            self._frames.clear()
            self._last = None
            self._not_before = now


class Engine:
    """Runs the stream on a worker thread; a context manager. Thread-safe `apply`/`reset`."""

    def __init__(
        self,
        controls: Controls,
        models: Models,
        output: FrameOutput,
        source: Source | None = None,
        stage_times: StageTimes | None = None,
    ) -> None:
        check_fits(controls, models)
        if controls.mode is Mode.VIDEO and source is None:
            raise ControlError("mode video needs a source; give --source or use mode text.")
        self.models = models
        self.stage_times = stage_times or StageTimes()
        self._output = output
        self._source = source
        self._controls = controls  # the worker's view; replaced only by the worker
        self._requested = controls  # what callers asked for, already checked
        self._lock = threading.Condition()
        self._reset_requested = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._gatherer: FrameGatherer | None = None
        self.error: BaseException | None = None
        self.epoch = 0
        self.chunks = 0  # chunks emitted
        self.model_calls = 0  # model calls (NFEs) run, CFG's second call included
        self.frames_out = 0  # frames emitted
        self.restarts = 0  # restarts run (the first start excluded); requests merge into them
        # The worker's restart coalescing (see pacer.restart_due), on time.monotonic.
        self._restarted_at: float | None = None
        self._first_out_at: float | None = None  # the current stream's first chunk
        self._held_until: float | None = None  # a restart is waiting until then
        if not models.trained:
            log.warning(
                "No trained weights given (--weights): running the %s model with random "
                "weights, so the output will look like noise.",
                controls.model,
            )

    # --- the caller's side ---------------------------------------------------------------

    @property
    def controls(self) -> Controls:
        """The latest requested controls (applied at the next step)."""
        with self._lock:
            return self._requested

    def apply(self, changes: Mapping[str, object]) -> None:
        """Check `changes` now (ControlError on a bad one) and apply them between steps.

        Startup-only controls (model, size, fps) that differ are logged and ignored.
        """
        checked = check_changes(changes)
        with self._lock:
            current = self._requested
            for name in [n for n in checked if CONTROLS[n].scope is Scope.STARTUP]:
                if checked[name] != getattr(current, name):
                    log.warning("%s takes effect at the next start; ignored while running.", name)
                del checked[name]
            wanted = current.replace(checked)
            check_prompt_effect(wanted, checked)  # a crossfade with nothing to blend: refused
            check_fits(wanted, self.models)
            if wanted.mode is Mode.VIDEO and self._source is None:
                raise ControlError("mode video needs a source; start with --source.")
            self._requested = wanted
            self._lock.notify_all()

    def reset(self) -> None:
        """Restart the stream between steps, dropping every frame made or captured so far."""
        with self._lock:
            self._reset_requested = True
            self._lock.notify_all()

    def start(self) -> Engine:
        if self.models.device.type == "cpu":
            keep_freed_memory()  # no page faults for each call's activations
        if self._source is not None:
            # Room for the largest chunk any chunk_size can ask for.
            biggest = self.models.config.latent_frames * self.models.ae.cfg.temporal_factor
            self._gatherer = FrameGatherer(self._source, capacity=biggest).start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._gatherer is not None:
            self._gatherer.stop()  # first: it wakes a worker waiting for input frames
        if self._thread.is_alive():
            self._thread.join(timeout=30.0)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def calls_per_frame(self) -> float | None:
        """Model calls per emitted frame so far; None before the first frame."""
        return self.model_calls / self.frames_out if self.frames_out else None

    @property
    def dropped_inputs(self) -> int:
        return 0 if self._gatherer is None else self._gatherer.dropped

    @property
    def stages(self) -> int | None:
        """Noise stages a chunk passes through in the buffer; None before the first start."""
        buffer = getattr(self, "_buffer", None)
        return None if buffer is None else buffer.stages

    @property
    def chunk_frames(self) -> int:
        """Video frames per chunk: gathered per input chunk, emitted per output chunk."""
        return self._controls.chunk_size * self.models.ae.cfg.temporal_factor

    # --- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            # Denormal floats (tiny values, common in random or zero-initialized layers) can
            # make x86 math many times slower; the flag is per thread: set it where we step.
            torch.set_flush_denormal(True)
            with torch.inference_mode():
                self._restart(self._controls, rebuild=True)
                while not self._stop.is_set():
                    self._apply_pending()
                    if self._controls.pause:
                        with self._lock:
                            self._lock.wait_for(self._has_news, timeout=self._until_held(1.0))
                        continue
                    if self._controls.mode is Mode.VIDEO:
                        if not self._feed():
                            continue
                    elif not self._wait_for_output():
                        continue
                    self._step()
        except BaseException as exc:
            self.error = exc
            log.exception("The engine stopped")

    def _wait_for_output(self) -> bool:
        """Text mode has no source to set the pace: keep to the output rate instead of
        racing ahead into frames the pacer would drop. False if woken by a change."""
        delay = self._next_due - time.monotonic()
        if delay > 0:
            with self._lock:
                if self._lock.wait_for(self._has_news, timeout=self._until_held(delay)):
                    return False
        return True

    def _until_held(self, timeout: float) -> float:
        """`timeout`, shortened to wake when a held restart comes due."""
        if self._held_until is None:
            return timeout
        return max(0.0, min(timeout, self._held_until - time.monotonic()))

    def _has_news(self) -> bool:
        """A change to apply now: a held restart is news only once it is due."""
        if self._stop.is_set():
            return True
        held = self._held_until is not None and time.monotonic() < self._held_until
        changed = self._requested.changed(self._controls)
        if held:
            return any(CONTROLS[n].scope is not Scope.RESTART for n in changed)
        return self._reset_requested or bool(changed)

    def _apply_pending(self) -> None:
        with self._lock:
            wanted, reset = self._requested, self._reset_requested
            self._reset_requested = False
        changed = wanted.changed(self._controls)
        restarting = {n for n in changed if CONTROLS[n].scope is Scope.RESTART}
        self._held_until = None
        if reset or restarting:
            period = self._controls.chunk_size * self.models.ae.cfg.temporal_factor
            period /= self._controls.fps
            due = restart_due(self._restarted_at, self._first_out_at, period, RESTART_HOLD_S)
            if time.monotonic() < due:
                # Coalesce: the restart (and any further request) waits until `due`; the
                # live changes (prompt, crossfade, pause) apply to the running stream now.
                self._held_until = due
                if reset:
                    with self._lock:
                        self._reset_requested = True
                keep = {n: getattr(self._controls, n) for n in restarting}
                wanted = dataclasses.replace(wanted, **keep)
                changed, restarting, reset = changed - restarting, set(), False
        if not changed and not reset:
            return
        if reset or restarting:
            self.restarts += 1
            self._restart(wanted, rebuild=bool(changed & _REBUILD_CONTROLS))
        elif changed & _PROMPT_CONTROLS:
            self._controls = wanted
            text, mask = self._encode_prompt()
            self._buffer.set_prompt(text, mask)
        else:
            self._controls = wanted

    def _encode_prompt(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L, D) states and (1, L) mask for the current prompt mix; timed as 'text'."""
        start = time.perf_counter()
        mix = prompt_mix(self._controls)
        emb = self.models.text.encode(mix.a)
        if mix.is_blend:
            emb = blend(emb, self.models.text.encode(mix.b), mix.weight)
        self._prompt = mix.describe()
        self.stage_times.add("text", time.perf_counter() - start)
        return emb.states, emb.mask

    def _restart(self, controls: Controls, rebuild: bool) -> None:
        """Flush everything and start a fresh stream under `controls`."""
        self._controls = controls
        text, mask = self._encode_prompt()
        strength = max(controls.strength, MIN_STRENGTH)
        mode = _STREAM_MODES[controls.mode]
        if rebuild:
            cfg = self.models.config
            null = None
            if controls.guidance != 1.0:  # the empty prompt, as text dropout trained it
                null = self.models.text.encode("")
            h = controls.size.height // self.models.ae.cfg.spatial_factor
            w = controls.size.width // self.models.ae.cfg.spatial_factor
            self._buffer = StreamBuffer(
                self.models.dit,
                make_scheme(controls, cfg),
                (cfg.latent_channels, h, w),
                text,
                mask,
                seed=controls.seed,
                mode=mode,
                strength=strength,
                guidance=controls.guidance,
                null_text=None if null is None else null.states,
                null_mask=None if null is None else null.mask,
                shift=self.models.flow_shift,  # imported models sample on their own shift
            )
        else:
            self._buffer.set_prompt(text, mask)
            self._buffer.reset(seed=controls.seed, mode=mode, strength=strength)
        self._encoder = self.models.ae.stream_encoder()
        self._decoder = self.models.ae.stream_decoder()
        self._timeline: deque[list[float]] = deque()  # capture times of pushed chunks, FIFO
        if self._gatherer is not None:
            self._gatherer.clear(time.monotonic())
        # The outputs repeat the last frame until the new stream's first: never a stall.
        self._output.flush(keep_last=True)
        self._next_due = self._restarted_at = time.monotonic()
        self._first_out_at = None
        self.epoch += 1

    def _feed(self) -> bool:
        """Video mode: push input chunks until the next step has what it needs.

        The buffer starts once `stages` chunks are queued and takes one more in the step
        after each emit (`StreamBuffer.inputs_needed`), so exactly that many are pushed: none
        is dropped or repeated inside the buffer, the FIFO of capture times stays aligned with
        the chunks that come out, and a chunk is emitted without waiting for the next input.
        """
        buffer = self._buffer
        frames_per_chunk = buffer.chunk_frames * self.models.ae.cfg.temporal_factor
        timeout = 2.0 * frames_per_chunk / self._controls.fps + 0.5
        while buffer.inputs_needed() > 0:
            if self._has_news():
                return False
            assert self._gatherer is not None
            start = time.perf_counter()
            captured = self._gatherer.take(frames_per_chunk, timeout)
            self.stage_times.add("capture", time.perf_counter() - start)
            if captured is None:
                return False  # no frame yet: the source is still opening
            start = time.perf_counter()
            clip = frames_to_tensor([c.frame for c in captured], self.models.device)
            buffer.push(self._encoder.encode(clip))
            self.stage_times.add("encode", time.perf_counter() - start)
            self._timeline.append([c.t_capture for c in captured])
        return True

    def _step(self) -> None:
        start = time.perf_counter()
        calls = self._buffer.model_calls
        latents = self._buffer.step()
        self.model_calls += self._buffer.model_calls - calls
        self.stage_times.add("step", time.perf_counter() - start)
        if latents is None:
            return
        start = time.perf_counter()
        frames = tensor_to_frames(self._decoder.decode(latents.to(self.models.device)))
        self.stage_times.add("decode", time.perf_counter() - start)
        controls = self._controls
        captures: list[float | None] = [None] * len(frames)
        if controls.mode is Mode.VIDEO and self._timeline:
            # A codec that trims its first decoded frames (TAEHV) emits the chunk's last ones.
            captures = list(self._timeline.popleft())[-len(frames) :]
        # The next chunk is due when this one has played out; a late step never catches up.
        now = time.monotonic()
        self._next_due = max(self._next_due + len(frames) / controls.fps, now - 0.25)
        if self._first_out_at is None:
            self._first_out_at = now
        self._output.push(
            [
                EmittedFrame(f, t, self._prompt, controls.mode, controls.strength, self.epoch)
                for f, t in zip(frames, captures, strict=True)
            ]
        )
        self.chunks += 1
        self.frames_out += len(frames)
