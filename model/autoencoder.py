"""A causal video autoencoder that streams without seams.

Design, chosen for speed on a 2-core CPU:
- Time and space are folded into channels at the very first layer ("space-to-depth"):
  `tc` frames and a 2x2 pixel patch become one position with 3*tc*4 channels. Every later
  layer therefore runs once per *latent* frame at half resolution or less; no layer ever
  touches full-resolution pixels.
- Frames live in the batch dimension, `(B*F, C, H, W)` in channels-last memory, so every
  layer after the stem is a plain Conv2d (oneDNN's fast path; a 3x3x3 Conv3d is ~10x slower
  on CPU). The stem, a patch embedding, reads channels-last video directly as a Conv3d with
  stride = kernel, and the decoder writes channels-last video: no strided gathers.
- Inference may run the convs in bf16 (`set_compute_dtype`): on a CPU with AVX-512 BF16,
  2x faster streaming at 256x256 and 54 dB PSNR from fp32 on real footage. Frames, latents
  and their normalization stay in the model's dtype (float32).
- Temporal mixing is causal: `CausalConv` adds 3x3 convolutions of the previous kt-1
  latent frames. Its cache (the last kt-1 frames of those taps) is all the state a stream
  needs, so a stream encoded or decoded chunk by chunk equals the whole, with no seams.
- No normalization layers: a per-frame GroupNorm would be legal but costs time, and any
  norm across time would break streaming.
- Parameter-free shortcuts around every resolution change (as in DC-AE's residual
  autoencoding): a 2x downsample adds space-to-depth followed by averaging channel groups,
  the bottleneck adds the deepest features averaged down to the latent channels, and the
  decoder mirrors both with channel repeats and depth-to-space. The stem's shortcut puts
  each colour's mean over the tc x 2 x 2 patch into the level-0 channels that this chain
  carries into latent channel 0, 1 or 2, and the head reads it back the same way. The
  shortcuts alone are a codec of the block-mean colour (nearest upsampling); the convs
  learn residuals on top (the encoder's last conv and the head start at zero). Shortcuts
  that are linear maps of a conv's own input are added to its weights (`add_shortcuts`):
  the same function and gradients, no cost per frame. Without shortcuts the deep,
  unnormalized chain of convs learns like a deep linear net: luma first, colour hundreds
  of steps later (a red patch decodes gray), in plateaus.

Letters in shape comments: B batch, F frames (video or latent, said where it matters),
C channels, H/W height/width, tc temporal factor, s spatial factor, kt temporal taps.
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

_TEMPORAL_FACTORS = (1, 2, 4)
_SPATIAL_FACTORS = (4, 8, 16)
_PATCH = 2  # the stem's space-to-depth; further 2x downsamples reach the spatial factor

_State = dict[nn.Module, torch.Tensor]  # per-CausalConv cache of a stream


@dataclass(frozen=True)
class AutoencoderConfig(ConfigDict):
    """Everything that fixes the shapes of a `VideoAutoencoder`.

    Level i runs at resolution H / 2**(i+1) with `min(channels * 2**i, max_channels)`
    channels; there are log2(spatial_factor) levels.
    """

    latent_channels: int = 8
    temporal_factor: int = 4
    spatial_factor: int = 8
    channels: int = 32
    max_channels: int = 128
    encoder_blocks: int = 1  # residual blocks per level
    decoder_blocks: int = 1
    temporal_kernel: int = 2  # kt: latent frames each causal conv sees (1 = none)
    shortcuts: bool = True  # parameter-free shortcuts around resolution changes (see top)

    def __post_init__(self) -> None:
        for name in ("latent_channels", "channels", "max_channels", "temporal_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("encoder_blocks", "decoder_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temporal_factor not in _TEMPORAL_FACTORS:
            raise ValueError(
                f"temporal_factor must be one of {_TEMPORAL_FACTORS}, got {self.temporal_factor}"
            )
        if self.spatial_factor not in _SPATIAL_FACTORS:
            raise ValueError(
                f"spatial_factor must be one of {_SPATIAL_FACTORS}, got {self.spatial_factor}"
            )
        if self.max_channels < self.channels:
            raise ValueError(
                f"max_channels ({self.max_channels}) must be >= channels ({self.channels})"
            )

    @property
    def levels(self) -> int:
        return int(math.log2(self.spatial_factor))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(min(self.channels * 2**i, self.max_channels) for i in range(self.levels))

    @property
    def decode_trim(self) -> int:
        """Video frames a fresh decode drops from its start (`model.codec`): none here."""
        return 0


AE_CONFIGS: dict[str, AutoencoderConfig] = {
    # Beside CONFIGS["tiny"] (the tests' model): ~40K parameters,
    # runs in milliseconds. Latent channels match CONFIGS["tiny"].
    "tiny": AutoencoderConfig(latent_channels=4, channels=8, max_channels=16, temporal_kernel=2),
    # Beside CONFIGS["cpu"], the shipped model: 256x256 -> 32x32 latents, 8 channels.
    # Widths (32, 64, 128) at 128/64/32 px: ~6 ms encode+decode per 256x256 frame on 2 CPU
    # cores; 48 or 64 channels at the top level cost 4x (see docs/PERFORMANCE.md).
    "cpu": AutoencoderConfig(
        latent_channels=8,
        channels=32,
        max_channels=128,
        encoder_blocks=1,
        decoder_blocks=2,
        temporal_kernel=2,
    ),
    # Paper-scale (4x temporal, 8x spatial, 8 channels) for GPUs, beside CONFIGS["4b"].
    "4b": AutoencoderConfig(
        latent_channels=8,
        channels=128,
        max_channels=512,
        encoder_blocks=2,
        decoder_blocks=3,
        temporal_kernel=3,
    ),
}


def _down_weight(cin: int, cout: int) -> torch.Tensor:
    """(cout, cin, 2, 2) weight of a stride-2 conv doing space-to-depth (channel c, pixel
    (i, j) -> channel 4c + 2i + j), then the mean of each group of 4cin/cout channels."""
    weight, group = torch.zeros(cout, cin, 2, 2), 4 * cin // cout
    for u in range(4 * cin):
        c, i, j = u // 4, u % 4 // 2, u % 2
        weight[u // group, c, i, j] += 1.0 / group
    return weight


def _channel_weight(cin: int, cout: int) -> torch.Tensor:
    """(cout, cin) linear map: mean over groups of consecutive channels (cout <= cin), or
    each channel repeated cout/cin times (cout > cin)."""
    weight, o = torch.zeros(cout, cin), torch.arange(cout)
    if cout <= cin:
        group = cin // cout
        for k in range(group):
            weight[o, o * group + k] = 1.0 / group
    else:
        weight[o, o // (cout // cin)] = 1.0
    return weight


def _colour_weight(colours_in: int, cout: int, group: int, to_colour: bool) -> torch.Tensor:
    """The stem's and head's colour shortcut as a (out, in) linear map.

    to_colour=False (stem): ``colours_in`` = 3*k input channels, k per colour (the (c t p q)
    order), each colour's mean written to ``group`` consecutive channels of ``cout``.
    to_colour=True (head): the mean of those ``group`` channels per colour, written to the
    ``cout`` = 3*k output channels of that colour.
    """
    k = (colours_in if not to_colour else cout) // 3
    weight = torch.zeros(3 * group, 3 * k)  # (colour channels, pixel channels)
    for c in range(3):
        weight[c * group : (c + 1) * group, c * k : (c + 1) * k] = 1.0
    if not to_colour:
        out = torch.zeros(cout, colours_in)
        out[: 3 * group] = weight / k
        return out
    out = torch.zeros(cout, colours_in)
    out[:, : 3 * group] = weight.T / group
    return out


def _colour_group(cfg: AutoencoderConfig) -> int:
    """Level-0 channels per latent channel along the shortcut chain; 0 = no colour shortcut.

    The down shortcuts keep channel order, so level-0 channel j reaches latent channel
    j // group: colour c rides in channels [c*group, (c+1)*group) into latent channel c.
    """
    w0, lat = cfg.widths[0], cfg.latent_channels
    pairs = zip(cfg.widths[:-1], cfg.widths[1:], strict=True)
    chain = all(_fits(4 * a, b) for a, b in pairs) and _fits(cfg.widths[-1], lat)
    if not cfg.shortcuts or not chain or lat < 3 or w0 % lat:
        return 0
    return w0 // lat


def _fits(cin: int, cout: int) -> bool:
    """Whether a channel shortcut between these widths is a whole number of groups."""
    return (cin % cout == 0) if cout <= cin else (cout % cin == 0)


class CausalConv(nn.Module):
    """A 3x3 conv over the current latent frame plus the previous kt-1, causal in time.

    One Conv2d computes all kt taps per frame at once (kt*Cout channels); tap j is then
    shifted j frames later and summed. Caching the last kt-1 frames of tap outputs (not
    inputs) makes a streamed call cost the same as a whole one. The first frame of a stream
    sees itself repeated as its past, as if the video had been still before it started.
    """

    def __init__(self, cin: int, cout: int, kt: int) -> None:
        super().__init__()
        self.kt, self.cout = kt, cout
        self.conv = nn.Conv2d(cin, cout * kt, 3, padding=1)

    def forward(self, x: torch.Tensor, batch: int, state: _State | None) -> torch.Tensor:
        z = self.conv(x)  # (B*F, kt*C, H, W), channels-last
        if self.kt == 1:
            return z
        # Physically B F H W C (channels-last), so frame slices and channel slices are views.
        z = rearrange(z, "(b f) c h w -> b f h w c", b=batch)
        frames, past_len, c = z.shape[1], self.kt - 1, self.cout
        taps = z[..., c:]  # (B, F, H, W, (kt-1)*C): taps 1.., all later frames read of these
        past = None if state is None else state.get(self)
        if past is None:  # a still past: the first frame's taps, repeated
            past = taps[:, :1].expand(-1, past_len, -1, -1, -1)
        out = z[..., :c]  # tap 0: the current frame
        for j in range(1, self.kt):  # tap j: frame t-j, from the past for the first j frames
            ch = slice((j - 1) * c, j * c)
            early = past[:, past_len - j : past_len - j + min(j, frames), ..., ch]
            if j < frames:  # a cat only when a chunk spans more than j latent frames
                early = torch.cat([early, taps[:, : frames - j, ..., ch]], dim=1)
            out = out + early
        if state is not None:  # views of this call's conv output, which nothing writes to
            keep = taps if frames >= past_len else torch.cat([past, taps], dim=1)
            state[self] = keep[:, -past_len:].detach()
        return rearrange(out, "b f h w c -> (b f) c h w")  # (B*F, C, H, W), channels-last


class ResBlock(nn.Module):
    """x + conv(silu(causal_conv(silu(x)))); the last conv starts at zero (identity block)."""

    def __init__(self, ch: int, kt: int) -> None:
        super().__init__()
        self.conv1 = CausalConv(ch, ch, kt)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, batch: int, state: _State | None) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x), batch, state)))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, kt = cfg.widths, cfg.temporal_kernel
        # 1x1: a linear patch embedding; the 3x3 convs after it supply spatial context.
        self.stem = nn.Conv2d(3 * cfg.temporal_factor * _PATCH**2, w[0], 1)
        self.group = _colour_group(cfg)
        self.blocks = nn.ModuleList(
            nn.ModuleList(ResBlock(w[i], kt) for _ in range(cfg.encoder_blocks))
            for i in range(cfg.levels)
        )
        # Strided 2x2 conv = space-to-depth + 1x1: learned, cheap, no overlap.
        self.down = nn.ModuleList(
            nn.Conv2d(w[i], w[i + 1], 2, stride=2) for i in range(cfg.levels - 1)
        )
        self.out = nn.Conv2d(w[-1], cfg.latent_channels, 3, padding=1)
        # The bottleneck's shortcut reads the features before the SiLU, so it stays its own
        # fixed 1x1 conv (derived from the config, not saved).
        out_short = cfg.shortcuts and _fits(w[-1], cfg.latent_channels)
        weight = _channel_weight(w[-1], cfg.latent_channels)[..., None, None] if out_short else None
        self.register_buffer("out_short", weight, persistent=False)
        if out_short:  # start as the shortcut's codec; the conv learns the residual
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.add_shortcuts()

    @torch.no_grad()
    def add_shortcuts(self) -> None:
        """Add the linear shortcuts of the stem and the downsamples to their conv weights.

        Each is a fixed linear map of the conv's own input, so ``conv(x) + shortcut(x)`` is
        one conv with the shortcut added to its weight: the same function and the same
        gradients, at no cost per frame.
        """
        cfg, w = self.cfg, self.cfg.widths
        if self.group:
            stem = _colour_weight(self.stem.in_channels, w[0], self.group, to_colour=False)
            self.stem.weight[:, :, 0, 0] += stem
        for i, down in enumerate(self.down):
            if cfg.shortcuts and _fits(4 * w[i], w[i + 1]):
                down.weight += _down_weight(w[i], w[i + 1])

    def forward(self, frames: torch.Tensor, state: _State | None) -> torch.Tensor:
        b, tc = frames.shape[0], self.cfg.temporal_factor
        # The stem, a 1x1 conv over (c t p q) patches, as a Conv3d with kernel = stride: it
        # reads channels-last video in place (gathering patches first costs more than it).
        x = frames.to(self.stem.weight.dtype, memory_format=torch.channels_last_3d)
        weight = self.stem.weight.view(self.stem.out_channels, 3, tc, _PATCH, _PATCH)
        x = F.conv3d(x, weight, self.stem.bias, stride=(tc, _PATCH, _PATCH))
        # (B, C, F, H/2, W/2) channels-last -> (B*F, C, H/2, W/2) channels-last: a view.
        x = rearrange(x, "b c f h w -> (b f) c h w")
        for i, blocks in enumerate(self.blocks):
            for block in blocks:
                x = block(x, b, state)
            if i < len(self.down):
                x = self.down[i](x)
        y = self.out(F.silu(x))  # (B*F, C, H/s, W/s)
        if self.out_short is not None:
            y = y + F.conv2d(x, self.out_short)
        y = rearrange(y, "(b f) c h w -> b c f h w", b=b)
        return y.to(frames.dtype, memory_format=torch.contiguous_format)


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, kt = cfg.widths, cfg.temporal_kernel
        self.inp = nn.Conv2d(cfg.latent_channels, w[-1], 3, padding=1)
        # Deepest level first.
        self.blocks = nn.ModuleList(
            nn.ModuleList(ResBlock(w[i], kt) for _ in range(cfg.decoder_blocks))
            for i in reversed(range(cfg.levels))
        )
        # 1x1 conv to 4x channels + pixel shuffle: a 2x upsample that never runs a 3x3 conv
        # at the higher resolution just to upsample.
        self.up = nn.ModuleList(
            nn.Conv2d(w[i], 4 * w[i - 1], 1) for i in reversed(range(1, cfg.levels))
        )
        self.head = nn.Conv2d(w[0], 3 * cfg.temporal_factor * _PATCH**2, 3, padding=1)
        self.group = _colour_group(cfg)
        # The head's colour shortcut reads the features before the SiLU: its own fixed 1x1.
        head = self.head
        weight = None
        if self.group:
            weight = _colour_weight(w[0], head.out_channels, self.group, to_colour=True)
            weight = weight[..., None, None]
            nn.init.zeros_(head.weight)  # start as the shortcut's codec
            nn.init.zeros_(head.bias)
        self.register_buffer("head_short", weight, persistent=False)
        self.add_shortcuts()

    @torch.no_grad()
    def add_shortcuts(self) -> None:
        """Add the input's and the upsamples' linear shortcuts (channel repeats before
        depth-to-space) to their conv weights: see `Encoder.add_shortcuts`."""
        cfg, w = self.cfg, self.cfg.widths
        if cfg.shortcuts and _fits(cfg.latent_channels, w[-1]):
            self.inp.weight[:, :, 1, 1] += _channel_weight(cfg.latent_channels, w[-1])
        for up, i in zip(self.up, reversed(range(1, cfg.levels)), strict=True):
            if cfg.shortcuts and _fits(w[i], 4 * w[i - 1]):
                up.weight[:, :, 0, 0] += _channel_weight(w[i], 4 * w[i - 1])

    def forward(self, latents: torch.Tensor, state: _State | None) -> torch.Tensor:
        b = latents.shape[0]
        x = rearrange(latents, "b c f h w -> (b f) c h w")  # (B*F, C, H/s, W/s)
        x = self.inp(x.to(self.inp.weight.dtype, memory_format=torch.channels_last))
        for i, blocks in enumerate(self.blocks):
            for block in blocks:
                x = block(x, b, state)
            if i < len(self.up):
                x = F.pixel_shuffle(self.up[i](x), 2)  # (B*F, C', 2H, 2W)
        y = self.head(F.silu(x))  # (B*F, 3*tc*2*2, H/2, W/2)
        if self.head_short is not None:
            y = y + F.conv2d(x, self.head_short)  # each colour's mean, at every t, p, q
        # -> (B, 3, F*tc, H, W): each latent frame unfolds into tc video frames. The pixel
        # shuffle (channels-last) and one copy into channels-last video in the latents' dtype:
        # (F, H, W, 3) frames in memory, what tensor_to_frames reads.
        tc = self.cfg.temporal_factor
        x = F.pixel_shuffle(y, _PATCH)  # (B*F, 3*tc, H, W)
        x = rearrange(x, "(b f) (c t) h w -> b f t h w c", b=b, t=tc)
        out = torch.empty(x.shape, dtype=latents.dtype, device=latents.device)
        return rearrange(out.copy_(x), "b f t h w c -> b c (f t) h w")


def _check(x: Any, what: str, channels: int, t_div: int, s_div: int, dtype: torch.dtype) -> None:
    """Raise one clear sentence if `x` is not a (B, channels, F, H, W) tensor that fits."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(
            f"{what} must be 5-D (B, C, F, H, W), got {x.ndim}-D with shape {tuple(x.shape)}"
        )
    if x.dtype != dtype:
        raise ValueError(
            f"{what} have dtype {x.dtype} but the autoencoder runs in {dtype}; "
            f"convert with .to({dtype})"
        )
    _, c, f, h, w = x.shape
    if c != channels:
        raise ValueError(f"{what} must have {channels} channels, got {c} (shape {tuple(x.shape)})")
    if f == 0 or f % t_div:
        raise ValueError(f"{what} frame count {f} must be a positive multiple of {t_div}")
    if h == 0 or w == 0 or h % s_div or w % s_div:
        raise ValueError(f"{what} size {h}x{w} must be positive multiples of {s_div}")


class VideoAutoencoder(nn.Module):
    """Frames (B,3,F,H,W) in [-1,1] <-> normalized latents (B,C,F/tc,H/s,W/s).

    `latent_shift` and `latent_scale` (per channel) are buffers saved with the weights:
    encode returns (z - shift) / scale so the DiT sees roughly unit-variance latents;
    `calibrate()` sets them from data after training.
    """

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latent_shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_scale", torch.ones(cfg.latent_channels))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of frames and latents in and out (float32 unless converted)."""
        return self.latent_scale.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the convolutions run in (`set_compute_dtype`)."""
        return self.encoder.stem.weight.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> VideoAutoencoder:
        """Run the convolutions in `dtype`, weights channels-last, for inference; frames and
        latents stay in `self.dtype`. Returns self. bf16 is for CPUs with native bf16
        (`model.dit.fast_bf16_cpu`): elsewhere it is emulated and slower than float32."""
        if not dtype.is_floating_point:
            raise ValueError(f"the autoencoder computes in a float dtype, got {dtype}")
        self.encoder.to(dtype, memory_format=torch.channels_last)
        self.decoder.to(dtype, memory_format=torch.channels_last)
        return self

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_shift.view(1, -1, 1, 1, 1)) / self.latent_scale.view(1, -1, 1, 1, 1)

    def _denorm(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_scale.view(1, -1, 1, 1, 1) + self.latent_shift.view(1, -1, 1, 1, 1)

    def check_frames(self, frames: Any) -> None:
        cfg = self.cfg
        _check(frames, "frames", 3, cfg.temporal_factor, cfg.spatial_factor, self.dtype)

    def check_latents(self, latents: Any) -> None:
        # Latent H, W need only be multiples of 1: every level is a whole number of pixels.
        _check(latents, "latents", self.cfg.latent_channels, 1, 1, self.dtype)

    def encode(self, frames: torch.Tensor, state: _State | None = None) -> torch.Tensor:
        """(B,3,F,H,W) in [-1,1] -> normalized latents (B,C,F/tc,H/s,W/s).

        `state` is the causal cache a stream carries; leave it None (use `stream_encoder()`
        to encode a stream chunk by chunk).
        """
        self.check_frames(frames)
        return self._norm(self.encoder(frames, state))

    def decode(self, latents: torch.Tensor, state: _State | None = None) -> torch.Tensor:
        """Normalized latents (B,C,F,H,W) -> frames (B,3,F*tc,H*s,W*s), about [-1,1].

        Not clamped, so training sees true errors; clamp before converting to uint8.
        `state`: as in `encode`; use `stream_decoder()` for chunk-by-chunk decoding.
        """
        self.check_latents(latents)
        return self.decoder(self._denorm(latents), state)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Reconstruction, for training."""
        return self.decode(self.encode(frames))

    @torch.no_grad()
    def calibrate(self, frames: torch.Tensor) -> None:
        """Set latent shift/scale so that `frames` encode to zero mean, unit variance.

        Call once after training, on a representative batch (a few hundred latent frames).
        """
        self.latent_shift.zero_()
        self.latent_scale.fill_(1.0)
        z = self.encode(frames)  # (B, C, F, H, W), raw since shift=0, scale=1
        self.latent_shift.copy_(z.mean(dim=(0, 2, 3, 4)))
        self.latent_scale.copy_(z.std(dim=(0, 2, 3, 4)).clamp_min(1e-6))

    def stream_encoder(self) -> StreamEncoder:
        return StreamEncoder(self)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        from model.checkpoint import save_checkpoint

        return save_checkpoint(path, self, self.cfg, "autoencoder", metadata)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> VideoAutoencoder:
        from model.checkpoint import load_checkpoint

        return load_checkpoint(path, cls, AutoencoderConfig, "autoencoder", device)


class StreamEncoder(CodecStream):
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """The next (B,3,F,H,W) frames, F a multiple of tc -> their (B,C,F/tc,H/s,W/s)."""
        self.ae.check_frames(frames)
        self._step(frames, "frames")
        return self.ae.encode(frames, self.state)


class StreamDecoder(CodecStream):
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The next (B,C,F,h,w) latents -> their (B,3,F*tc,h*s,w*s) frames."""
        self.ae.check_latents(latents)
        self._step(latents, "latents")
        return self.ae.decode(latents, self.state)
