"""The models a stream runs on: the DiT, its autoencoder and text encoder, on one device.

Loading (random weights or `--weights` checkpoints), the device choice and the CPU thread
count: everything the engine needs before its first step, kept apart from the stepping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model import (
    AE_CONFIGS,
    CONFIGS,
    StreamDiT,
    StreamDiTConfig,
    TextEncoder,
    TextEncoderProtocol,
    VideoAutoencoder,
    load_streamdit,
)
from model.checkpoint import CheckpointError, read_metadata


@dataclass
class Models:
    dit: StreamDiT
    ae: VideoAutoencoder
    text: TextEncoderProtocol
    device: torch.device
    trained: bool  # False: random weights, the output is noise-like

    @property
    def config(self) -> StreamDiTConfig:
        return self.dit.cfg


def cpu_threads(requested: int | None, cores: int | None) -> int:
    """Torch threads for CPU inference: all cores but one, unless asked otherwise.

    Measured on the 2-core machine: with another busy process (OBS, a training run) two
    OpenMP threads stall on each other at every parallel region and the tiny model's step
    goes from ~6 ms to ~1000 ms; one thread stays at ~6 ms. A spare core also keeps
    capture, the codec and the sinks moving.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}.")
        return requested
    return max(1, (cores or 1) - 1)


def pick_device(requested: str | None) -> torch.device:
    """The requested device, or cuda when present, else the CPU; one sentence if unusable."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown device {requested!r}; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for but this torch has no CUDA GPU.")
    return device


def _weight_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    return files


def build_models(
    model: str,
    device: torch.device,
    weights: Sequence[Path] = (),
    text: TextEncoderProtocol | None = None,
) -> Models:
    """The named model with random weights, or with the checkpoints in `weights` (files or
    folders of .safetensors; each file's metadata says whether it is the DiT or the codec)."""
    dit: StreamDiT | None = None
    ae: VideoAutoencoder | None = None
    for path in _weight_files(weights):
        kind = read_metadata(path).get("kind")
        if kind == "streamdit":
            dit = load_streamdit(path, device)
        elif kind == "autoencoder":
            ae = VideoAutoencoder.load(path, device)
        else:
            raise CheckpointError(
                f"{path} holds a {kind!r} checkpoint; --weights takes streamdit or "
                "autoencoder checkpoints."
            )
    trained = dit is not None
    if dit is None:
        with torch.device(device):
            dit = StreamDiT(CONFIGS[model])
    if ae is None:
        with torch.device(device):
            ae = VideoAutoencoder(AE_CONFIGS[model])
    if ae.cfg.latent_channels != dit.cfg.latent_channels:
        raise CheckpointError(
            f"the autoencoder makes {ae.cfg.latent_channels}-channel latents but the DiT takes "
            f"{dit.cfg.latent_channels}; give matching --weights."
        )
    text = text or TextEncoder(max_length=dit.cfg.text_len, device=device)
    if text.dim != dit.cfg.text_dim:
        raise ValueError(
            f"the text encoder gives {text.dim}-d states but the {model} model takes "
            f"{dit.cfg.text_dim}-d; this model needs its own text encoder."
        )
    return Models(dit.eval(), ae.eval(), text, device, trained)
