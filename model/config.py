"""Typed, validated StreamDiT configuration and the named presets.

Letters used in shape comments across `model/`: B batch, C latent channels, F latent frames,
H/W latent height/width, L tokens, D width, Nh heads, Dh head width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

C = TypeVar("C", bound="ConfigDict")


class ConfigDict:
    """Dict round trip (for checkpoint metadata) and `replace` for frozen config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        # JSON turns tuples into lists; restore them so configs compare equal.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


class TimeInput(str, Enum):
    """Which time the network's sinusoidal features read (the API's t is always ours)."""

    DATA_AT_ONE = "data_at_one"  # ours: features of 1000 t, t = 1 is data (float32)
    NOISE_AT_ONE = "noise_at_one"  # Wan: features of 1000 (1 - t), in float64 as Wan does


class Prediction(str, Enum):
    """What the head's raw output is; `StreamDiT.forward` always returns our velocity."""

    VELOCITY = "velocity"  # ours: x1 - x0 (data minus noise)
    NOISE_MINUS_DATA = "noise_minus_data"  # Wan's flow target eps - x0: negated on output


# A window this large is clamped to any token grid: full attention (Wan's).
FULL_WINDOW = (1 << 16, 1 << 16, 1 << 16)


@dataclass(frozen=True)
class StreamDiTConfig(ConfigDict):
    """Everything that fixes the shapes of a StreamDiT network.

    `window` is in *tokens* (after patching), per (F, H, W). A window larger than the token
    grid is clamped to it, so a huge window (`FULL_WINDOW`) means full attention, which then
    runs without the window gather.

    The last group of switches exists for imported Wan2.1-architecture weights
    (model.import_wan, docs/WEIGHTS.md); their defaults are our own architecture, so configs
    and checkpoints saved before they existed load unchanged.
    """

    latent_channels: int = 8
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw)
    dim: int = 256
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    window: tuple[int, int, int] = (4, 8, 8)
    text_dim: int = 384
    text_len: int = 77
    sigma_min: float = 1e-5
    qk_norm: bool = True
    adaln_single: bool = True  # one shared time projection + a learned per-block table
    cross_attn_norm: bool = True  # LayerNorm (affine) on the cross-attention's query input
    freq_dim: int = 256  # sinusoidal timestep features
    rope_theta: float = 10000.0
    # The grid the model is sized for: used by benchmarks and the app's defaults, not a
    # limit (any F, H, W divisible by the patch size works).
    latent_frames: int = 8
    latent_size: tuple[int, int] = (32, 32)
    # Wan2.1 compatibility (defaults: ours).
    ffn_dim: int = 0  # MLP width; 0 means int(dim * mlp_ratio)
    head_table: bool = False  # head: a learned (1, 2, D) table + the raw time embedding
    time_input: TimeInput = TimeInput.DATA_AT_ONE
    prediction: Prediction = Prediction.VELOCITY

    def __post_init__(self) -> None:
        # JSON (checkpoint metadata) gives the enums back as their string values.
        for name, enum in (("time_input", TimeInput), ("prediction", Prediction)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                known = [m.value for m in enum]
                raise ValueError(f"{name} must be one of {known}, got {value!r}") from None
        if self.ffn_dim < 0:
            raise ValueError(f"ffn_dim must be >= 0 (0: from mlp_ratio), got {self.ffn_dim}")
        for name in ("latent_channels", "dim", "depth", "heads", "text_dim", "text_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(
                f"patch_size must be 3 positive ints (pt, ph, pw), got {self.patch_size}"
            )
        if len(self.window) != 3 or min(self.window) < 1:
            raise ValueError(f"window must be 3 positive ints (F, H, W), got {self.window}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.head_dim % 2:
            raise ValueError(f"head width dim/heads must be even for RoPE, got {self.head_dim}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {self.sigma_min}")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def mlp_dim(self) -> int:
        return self.ffn_dim or int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        return {k: v.value if isinstance(v, Enum) else v for k, v in d.items()}


CONFIGS: dict[str, StreamDiTConfig] = {
    # The tests' model (random weights only): 0.17 M parameters, 2.8 ms per call on one core
    # at its 4x16x16 grid.
    "tiny": StreamDiTConfig(
        latent_channels=4,
        patch_size=(1, 2, 2),
        dim=64,
        depth=2,
        heads=4,
        mlp_ratio=2.0,
        window=(2, 4, 4),
        text_len=16,
        freq_dim=64,
        latent_frames=4,
        latent_size=(16, 16),
    ),
    # The shipped model (the default `--model` and every shipped preset): 1.63 M parameters.
    # 256x256 through the 8x spatial / 4x temporal autoencoder gives a 32x32 latent, 16x16
    # tokens per latent frame; a full buffer of 8 latent frames (32 video frames) is 2048
    # tokens per call. Sized for what 2 CPU cores can train in hours (about compute-optimal
    # for that budget) and stream in real time (PERFORMANCE.md).
    "cpu": StreamDiTConfig(
        latent_channels=8,
        patch_size=(1, 2, 2),
        dim=128,
        depth=6,
        heads=4,
        mlp_ratio=3.0,
        window=(4, 8, 8),
        text_len=32,
        freq_dim=128,
        latent_frames=8,
        latent_size=(32, 32),
    ),
    # The paper's scale, for GPUs: 4.04 B parameters (counted on the meta device). 512p video
    # through the same autoencoder family is a 16x64x64 latent with 8 channels; patch 1x2x2
    # gives 16x32x32 = 16384 tokens per call. text_dim is the paper's text encoder width;
    # training/configs/4b.toml sets MiniLM's 384 instead, so the app can run what it trains.
    "4b": StreamDiTConfig(
        latent_channels=8,
        patch_size=(1, 2, 2),
        dim=3072,
        depth=26,
        heads=24,
        mlp_ratio=4.0,
        window=(8, 16, 16),
        text_dim=4096,
        text_len=256,
        latent_frames=16,
        latent_size=(64, 64),
    ),
}
