"""TAEHV, the Tiny AutoEncoder for Hunyuan Video family, as a `model.codec.VideoCodec`.

TAEHV (by madebyollin, MIT licence) is a small convolutional video autoencoder trained to
stand in for the big video VAEs. Its `taew2_1` weights approximate the Wan2.1 VAE: 16 latent
channels, 8x spatial and 4x temporal compression, and latents in the scale Wan's transformer
works in (no mean/std to apply). This module is our own implementation of its published
architecture; the module tree and the parameter names follow the released files
(`taew2_1.pth`, `safetensors/taew2_1.safetensors`: 128 tensors), so those load by name.

Architecture. Every layer is a 2-D convolution applied frame by frame; time enters in
three ways only:
- `MemBlock`: three 3x3 convs (ReLU between) over the frame concatenated with the block's
  input one frame earlier (zeros before the first frame), plus the frame itself, then ReLU.
- `TPool` (encoder): consecutive groups of `stride` frames are stacked along channels and
  mixed by a 1x1 conv into one frame.
- `TGrow` (decoder): a 1x1 conv makes `stride` frames out of each frame.
The encoder is a 3x3 conv to 64 channels, then three stages of [TPool, stride-2 3x3 conv,
3 MemBlocks] with time strides 2, 2, 1, then a 3x3 conv to the latent channels. The decoder
is a soft clamp (3 tanh(z / 3)), a 3x3 conv to 256 channels, then three stages of
[3 MemBlocks, 2x nearest upsample, TGrow, 3x3 conv] at widths 256, 128, 64 with time strides
1, 2, 2, then a 3x3 conv to RGB. TAEHV's own pixels are [0, 1]; ours are [-1, 1], converted
at the edges, and decoded frames are clamped to [-1, 1].

Frame-count rule (`model.codec`: temporal factor 4, `decode_trim` 3):
- Encoding T frames gives ceil(T / 4) latent frames: latent j comes from frames 4j..4j+3
  (and, through the memory blocks, all earlier ones). A whole clip whose length is not a
  multiple of 4 is padded at its end with copies of its last frame, as TAEHV does.
- Decoding f latent frames gives 4f - 3 frames: latent j makes 4 frames, and the first 3
  of a clip or stream are warm-up frames that are dropped. So a Wan-style clip of 4k + 1
  frames gives k + 1 latent frames, which decode to 4k + 1 frames again.
- Streams: `stream_encoder().encode` takes any number of frames and returns the latent
  frames completed so far (frames left over wait in the pooling state); chunks of 4c
  frames give c latent frames each. `stream_decoder().decode` of f latent frames returns
  4f frames, less 3 on the stream's first call. Concatenated, a stream equals the whole
  clip encoded or decoded at once, to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.codec import CodecStream
from model.config import ConfigDict

_TIME_FACTOR = 4  # encoder pools time 2, 2, 1; decoder grows it 1, 2, 2
_ENCODER_TIME = (2, 2, 1)
_DECODER_TIME = (1, 2, 2)
_STAGES = 3  # stride-2 convs / 2x upsamples: 8x spatial before the pixel patch
_ERR_NAMES = 4  # tensor names listed in an error before "and N more"

_State = dict[int, torch.Tensor]  # per layer index of one stream: memory or pending frames


@dataclass(frozen=True)
class TAEHVConfig(ConfigDict):
    """The shapes of a TAEHV; the defaults are `taew2_1`'s (also Hunyuan Video's `taehv`)."""

    latent_channels: int = 16
    patch_size: int = 1  # pixel (un)shuffle at the edges: 2 for taew2_2's 16x spatial
    encoder_width: int = 64
    decoder_widths: tuple[int, int, int, int] = (256, 128, 64, 64)

    def __post_init__(self) -> None:
        for name in ("latent_channels", "patch_size", "encoder_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.decoder_widths) != 4 or min(self.decoder_widths) < 1:
            raise ValueError(
                f"decoder_widths must be 4 positive widths, got {tuple(self.decoder_widths)}"
            )

    @property
    def temporal_factor(self) -> int:
        return _TIME_FACTOR

    @property
    def spatial_factor(self) -> int:
        return 2**_STAGES * self.patch_size

    @property
    def decode_trim(self) -> int:
        """The decoder's first tc - 1 frames are warm-up: Wan's one-frame first latent."""
        return _TIME_FACTOR - 1


TAEHV_CONFIGS: dict[str, TAEHVConfig] = {
    "taew2_1": TAEHVConfig(),
    # The same layers at a fraction of the width, for tests.
    "tiny": TAEHVConfig(encoder_width=8, decoder_widths=(16, 8, 8, 8)),
}


def _conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """A soft clamp of the latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """relu(convs(cat(x, x one frame earlier)) + x); `past` is that earlier input."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(2 * ch, ch), nn.ReLU(), _conv(ch, ch), nn.ReLU(), _conv(ch, ch)
        )

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TPool(nn.Module):
    """`stride` consecutive frames, stacked along channels, -> one frame (1x1 conv)."""

    def __init__(self, ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(ch * stride, ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape  # (B*F, C, H, W), F a multiple of stride
        return self.conv(x.reshape(n // self.stride, self.stride * c, h, w))


class TGrow(nn.Module):
    """One frame -> `stride` consecutive frames (a 1x1 conv to stride x the channels)."""

    def __init__(self, ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(ch, ch * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


def _encoder(cfg: TAEHVConfig) -> nn.Sequential:
    w = cfg.encoder_width
    layers: list[nn.Module] = [_conv(3 * cfg.patch_size**2, w), nn.ReLU()]
    for stride in _ENCODER_TIME:
        layers += [TPool(w, stride), _conv(w, w, stride=2, bias=False)]
        layers += [MemBlock(w) for _ in range(3)]
    layers.append(_conv(w, cfg.latent_channels))
    return nn.Sequential(*layers)


def _decoder(cfg: TAEHVConfig) -> nn.Sequential:
    n = cfg.decoder_widths
    layers: list[nn.Module] = [Clamp(), _conv(cfg.latent_channels, n[0]), nn.ReLU()]
    for i, stride in enumerate(_DECODER_TIME):
        layers += [MemBlock(n[i]) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), TGrow(n[i], stride)]
        layers.append(_conv(n[i], n[i + 1], bias=False))
    layers += [nn.ReLU(), _conv(n[3], 3 * cfg.patch_size**2)]
    return nn.Sequential(*layers)


def _run(layers: nn.Sequential, x: torch.Tensor, batch: int, state: _State) -> torch.Tensor:
    """Apply `layers` to (B*F, C, H, W) frames (each item's F frames consecutive), all frames
    of a layer at once, carrying each MemBlock's last input and each TPool's leftover frames
    in `state`. Returns (B*F', C', H', W'); F' is 0 when a TPool is still waiting."""
    for i, layer in enumerate(layers):
        if isinstance(layer, MemBlock):
            xs = x.unflatten(0, (batch, -1))  # (B, F, C, H, W)
            before = state.get(i)
            if before is None:  # the stream's first frame: an empty memory
                before = torch.zeros_like(xs[:, :1])
            state[i] = xs[:, -1:]
            past = torch.cat([before, xs[:, :-1]], dim=1).flatten(0, 1)
            x = layer(x, past)
        elif isinstance(layer, TPool) and layer.stride > 1:
            xs = x.unflatten(0, (batch, -1))
            waiting = state.pop(i, None)
            if waiting is not None:
                xs = torch.cat([waiting, xs], dim=1)
            whole = xs.shape[1] // layer.stride * layer.stride
            if whole < xs.shape[1]:
                state[i] = xs[:, whole:]
            if whole == 0:  # no whole group yet: no frames out of this call
                return xs[:, :0].flatten(0, 1)
            x = layer(xs[:, :whole].flatten(0, 1))
        else:
            x = layer(x)
    return x


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_ERR_NAMES])
    return shown + (f" and {len(keys) - _ERR_NAMES} more" if len(keys) > _ERR_NAMES else "")


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> TAEHVConfig:
    """The TAEHVConfig whose tensors have these shapes (one sentence if it is no TAEHV)."""
    keys = ["encoder.0.weight", "encoder.17.weight"]
    keys += [f"decoder.{i}.weight" for i in (1, 8, 14, 20)]
    missing = [k for k in keys if k not in sd]
    if missing:
        raise ValueError(f"this is not a TAEHV state dict: it lacks {_names(missing)}")
    patch = math.isqrt(sd["encoder.0.weight"].shape[1] // 3)
    return TAEHVConfig(
        latent_channels=sd["encoder.17.weight"].shape[0],
        patch_size=max(patch, 1),
        encoder_width=sd["encoder.0.weight"].shape[0],
        decoder_widths=tuple(sd[f"decoder.{i}.weight"].shape[0] for i in (1, 8, 14, 20)),
    )


class TAEHV(nn.Module):
    """Frames (B,3,T,H,W) in [-1,1] <-> latents (B,16,ceil(T/4),H/8,W/8) for `taew2_1`.

    A `model.codec.VideoCodec`; see the module docstring for the frame-count rule.
    """

    def __init__(self, cfg: TAEHVConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or TAEHVConfig()
        self.encoder = _encoder(self.cfg)
        self.decoder = _decoder(self.cfg)
        # Not saved: follows .to(), and tells the dtype of frames and latents.
        self.register_buffer("io_marker", torch.zeros(()), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of frames and latents in and out (float32 unless converted)."""
        return self.io_marker.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.encoder[0].weight.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> TAEHV:
        """Run the convolutions in `dtype`; frames and latents stay in `self.dtype`."""
        if not dtype.is_floating_point:
            raise ValueError(f"the autoencoder computes in a float dtype, got {dtype}")
        self.encoder.to(dtype)
        self.decoder.to(dtype)
        return self

    def load_weights(self, sd: dict[str, torch.Tensor]) -> TAEHV:
        """Load a TAEHV state dict by name, or say in one sentence what does not fit."""
        own = self.state_dict()
        missing = [k for k in own if k not in sd]
        extra = [k for k in sd if k not in own]
        if missing or extra:
            parts = [f"lacks {len(missing)} tensors ({_names(missing)})"] if missing else []
            parts += [f"has {len(extra)} unknown ones ({_names(extra)})"] if extra else []
            raise ValueError(f"the TAEHV state dict {' and '.join(parts)}")
        wrong = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise ValueError(
                f"the TAEHV state dict's {k} has shape {tuple(sd[k].shape)} where this "
                f"{self.cfg} expects {tuple(own[k].shape)} ({len(wrong)} tensors differ)"
            )
        self.load_state_dict(sd, strict=True)
        return self

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> TAEHV:
        """A TAEHV from a released weight file (`.pth` or `.safetensors`), in eval mode."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no TAEHV weight file at {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(sd, dict):
            raise ValueError(f"{path} holds a {type(sd).__name__}, not a TAEHV state dict")
        model = cls(config_from_state_dict(sd)).load_weights(sd)
        return model.to(device).eval()

    def _check(self, x: Any, what: str, channels: int, divisor: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 5 or x.shape[1] != channels:
            raise ValueError(f"{what} must be (B, {channels}, F, H, W), got shape {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(
                f"{what} have dtype {x.dtype} but the autoencoder runs in {self.dtype}; "
                f"convert with .to({self.dtype})"
            )
        _, _, f, h, w = x.shape
        if f == 0 or h == 0 or w == 0 or h % divisor or w % divisor:
            raise ValueError(
                f"{what} of {f} frames of {h}x{w} must have frames and a size in positive "
                f"multiples of {divisor}"
            )

    def check_frames(self, frames: Any) -> None:
        self._check(frames, "frames", 3, self.cfg.spatial_factor)

    def check_latents(self, latents: Any) -> None:
        self._check(latents, "latents", self.cfg.latent_channels, 1)

    def _encode(self, frames: torch.Tensor, state: _State) -> torch.Tensor:
        b, _, _, h, w = frames.shape
        x = rearrange((frames + 1) / 2, "b c f h w -> (b f) c h w")  # TAEHV reads [0, 1]
        x = x.to(self.compute_dtype)
        if self.cfg.patch_size > 1:
            x = F.pixel_unshuffle(x, self.cfg.patch_size)
        y = _run(self.encoder, x, b, state)
        if y.shape[0] == 0:  # a stream still filling its first 4 frames
            s = self.cfg.spatial_factor
            return frames.new_zeros(b, self.cfg.latent_channels, 0, h // s, w // s)
        return rearrange(y.to(self.dtype), "(b f) c h w -> b c f h w", b=b)

    def _decode(self, latents: torch.Tensor, state: _State) -> torch.Tensor:
        """All 4 frames of every latent frame: no warm-up frames dropped."""
        b = latents.shape[0]
        x = rearrange(latents, "b c f h w -> (b f) c h w").to(self.compute_dtype)
        y = _run(self.decoder, x, b, state)
        if self.cfg.patch_size > 1:
            y = F.pixel_shuffle(y, self.cfg.patch_size)
        y = y.to(self.dtype).clamp(0, 1) * 2 - 1
        return rearrange(y, "(b f) c h w -> b c f h w", b=b)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B,3,T,H,W) in [-1,1] -> (B,C,ceil(T/4),H/s,W/s); a clip that is not a multiple
        of 4 frames long is padded with its last frame."""
        self.check_frames(frames)
        pad = -frames.shape[2] % _TIME_FACTOR
        if pad:
            frames = torch.cat([frames, frames[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        return self._encode(frames, {})

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B,C,f,h,w) -> (B,3,4f-3,h*s,w*s) in [-1,1]: the first 3 frames are warm-up."""
        self.check_latents(latents)
        return self._decode(latents, {})[:, :, self.cfg.decode_trim :]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Reconstruction of a clip of 4k frames: its last 4k - 3 frames."""
        return self.decode(self.encode(frames))

    def stream_encoder(self) -> TAEHVStreamEncoder:
        return TAEHVStreamEncoder(self)

    def stream_decoder(self) -> TAEHVStreamDecoder:
        return TAEHVStreamDecoder(self)


class TAEHVStreamEncoder(CodecStream):
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """The next (B,3,F,H,W) frames, any F -> the latent frames they complete (F / 4
        when every chunk is a multiple of 4 frames; frames left over wait)."""
        self.ae.check_frames(frames)
        self._step(frames, "frames")
        return self.ae._encode(frames, self.state)


class TAEHVStreamDecoder(CodecStream):
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The next (B,C,f,h,w) latents -> their (B,3,4f,h*s,w*s) frames, less the 3
        warm-up frames on the stream's first call."""
        self.ae.check_latents(latents)
        first = self.calls == 0
        self._step(latents, "latents")
        frames = self.ae._decode(latents, self.state)
        return frames[:, :, self.ae.cfg.decode_trim :] if first else frames
