"""The codec interface: what the app and training need from a video autoencoder.

Any video autoencoder can sit under the DiT if it offers `VideoCodec`. Two do:
`model.autoencoder.VideoAutoencoder` (ours, trained on a CPU) and `model.taehv.TAEHV`
(the tiny autoencoder whose `taew2_1` weights approximate the Wan2.1 VAE).

Conventions every codec keeps:
- Frames are (B, 3, F, H, W) in [-1, 1]; latents are (B, C, f, H/s, W/s), already in the
  scale the DiT works in (a codec normalizes its own latents).
- Frames and latents are in `dtype` (float32 unless converted); the convolutions may run in
  `compute_dtype` (`set_compute_dtype`, e.g. bf16 on a CPU with native bf16).
- A stream encodes or decodes chunk by chunk, carrying state between calls, and the
  concatenated chunks equal the whole clip done in one call (to float rounding): no seams.

The frame-count rule. With tc = `temporal_factor`: a clip of T frames encodes to
ceil(T / tc) latent frames, and f latent frames decode to tc * f - `decode_trim` frames. A
stream drops those `decode_trim` frames once, at the start of its first decoded chunk;
every later chunk of f latent frames gives tc * f frames. Ours has `decode_trim` 0, so
tc * f frames make f latent frames and back. TAEHV follows Wan's causal first frame: the
first latent frame stands for a single video frame, so `decode_trim` is tc - 1 and a clip of
1 + tc * k frames (Wan's 81 = 1 + 4 * 20) makes 1 + k latent frames and comes back whole.
`latent_frames` and `video_frames` compute the rule.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class CodecShape(Protocol):
    """The numbers that fix a codec's latent shape; a codec's `cfg` has them."""

    @property
    def latent_channels(self) -> int: ...

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent position along height and along width."""
        ...

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame (after the first-frame rule, `decode_trim`)."""
        ...

    @property
    def decode_trim(self) -> int:
        """Video frames a fresh decode drops from its start: 0, or tc - 1 for a causal
        first frame (Wan's rule)."""
        ...


@runtime_checkable
class StreamEncoderProtocol(Protocol):
    """Encodes a stream chunk by chunk; `reset()` starts a new stream."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...

    def reset(self) -> None: ...


@runtime_checkable
class StreamDecoderProtocol(Protocol):
    """Decodes a stream chunk by chunk; `reset()` starts a new stream."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def reset(self) -> None: ...


@runtime_checkable
class VideoCodec(Protocol):
    """A video autoencoder as the app and training see it (conventions: module docstring)."""

    @property
    def cfg(self) -> CodecShape: ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of frames and latents in and out."""
        ...

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the convolutions run in."""
        ...

    def set_compute_dtype(self, dtype: torch.dtype) -> VideoCodec: ...

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, C, ceil(T / tc), H / s, W / s)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, f, h, w) -> (B, 3, tc * f - decode_trim, h * s, w * s), about [-1, 1]."""
        ...

    def stream_encoder(self) -> StreamEncoderProtocol: ...

    def stream_decoder(self) -> StreamDecoderProtocol: ...


def latent_frames(shape: CodecShape, frames: int) -> int:
    """Latent frames a clip of `frames` video frames encodes to (a codec may also require
    `frames` to be a multiple of the temporal factor, as ours does)."""
    if frames < 1:
        raise ValueError(f"a clip has at least one frame, got {frames}")
    return math.ceil(frames / shape.temporal_factor)


def video_frames(shape: CodecShape, latents: int, first: bool = True) -> int:
    """Video frames `latents` latent frames decode to: as a whole clip or a stream's first
    chunk (`first`), or as a later chunk of a stream."""
    if latents < 1:
        raise ValueError(f"a latent clip has at least one frame, got {latents}")
    return shape.temporal_factor * latents - (shape.decode_trim if first else 0)


def latent_size(shape: CodecShape, height: int, width: int) -> tuple[int, int]:
    """The latent (h, w) of video frames of this size, or one sentence if it does not fit."""
    s = shape.spatial_factor
    if height < s or width < s or height % s or width % s:
        raise ValueError(f"video size {height}x{width} must be positive multiples of {s}")
    return height // s, width // s


class CodecStream:
    """What one stream of a codec carries between calls (its layers' caches in `state`),
    and the check that each call continues it; no gradients. Stream encoders and decoders
    of both codecs build on it."""

    def __init__(self, ae) -> None:
        self.ae = ae
        self.state: dict = {}
        self.calls = 0
        self._shape: tuple[int, int, int] | None = None  # (B, H, W) the stream started with

    def reset(self) -> None:
        """Forget the past: the next call starts a new stream (any batch and size)."""
        self.state.clear()
        self.calls = 0
        self._shape = None

    def _step(self, x: torch.Tensor, what: str) -> None:
        """Count a call on x (B, C, F, H, W), refusing one that does not continue the stream."""
        shape = (x.shape[0], x.shape[3], x.shape[4])
        if self._shape is not None and shape != self._shape:
            raise ValueError(
                f"{what} of batch {shape[0]} and size {shape[1]}x{shape[2]} do not continue "
                f"this stream of batch {self._shape[0]} and size "
                f"{self._shape[1]}x{self._shape[2]}; call reset() to start a new one"
            )
        self._shape = shape
        self.calls += 1
