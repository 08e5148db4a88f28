"""Buffered flow matching (docs/DESIGN.md §1.4) as pure functions of their inputs.

One training example is a buffer of B latent frames: K clean reference frames, then N chunks
of c frames. Chunk i (1..N, counted from the noisy end) draws one time t_i ~ U[(i-1)/N, i/N)
shared by its frames; c is drawn per example from the mixture of chunk sizes, so one model
learns every partition from uniform diffusion (c = B) to the diagonal scheme (c = 1).

Paired examples teach video to video: where a clip has a source (the plain footage a look
was made from), a share of examples (`flow.paired`) draws an entry time t_e, as the app's
strength sets it, and every frame at or after t_e lies on the straight path from the source
noised to t_e to the styled clip (`model.flow.bridge`). The model so learns to turn noised
camera frames into the look, not only to denoise clips that already have it.

Letters: B batch, C latent channels, F buffer frames, H W latent size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model import flow
from model.partition import chunk_size_choices, sample_mixed_times
from training.config import ConfigError


@dataclass(frozen=True)
class NoiseDraw:
    """Everything random about one step, drawn up front from one seeded generator."""

    times: Tensor  # (B, F) in [0, 1], 1 = data; reference frames at 1
    chunk_sizes: Tensor  # (B,) chunk size used per example
    noise: Tensor  # (B, C, F, H, W) standard normal
    drop_text: Tensor  # (B,) bool: caption replaced by the empty prompt
    paired: Tensor  # (B,) bool: trained on the path from its source (when it has one)
    entry: Tensor  # (B,) entry time t_e of a paired example, as video to video enters


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, rank): exact resume, no RNG state
    to save, and the same draws on a CPU or a GPU."""
    # Large odd multipliers keep (seed, step, rank) triples from colliding.
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2**63)


def resolve_chunk_sizes(buffer_frames: int, ref_frames: int, sizes: list[int]) -> list[int]:
    """The configured mixture, or every size from 1 to B - K (uniform c = B included)."""
    if not 0 <= ref_frames < buffer_frames:
        raise ConfigError(
            f"flow.ref_frames must be in [0, {buffer_frames}) for a buffer of {buffer_frames} "
            f"latent frames, got {ref_frames}"
        )
    choices = chunk_size_choices(buffer_frames, ref_frames)
    if not sizes:
        return choices
    bad = [c for c in sizes if c not in choices]
    if bad:
        raise ConfigError(
            f"flow.chunk_sizes {bad} do not split the {buffer_frames - ref_frames} "
            f"non-reference frames; choose from {choices}"
        )
    return list(sizes)


def draw_noise(
    latent_shape: tuple[int, ...],
    chunk_sizes: list[int],
    ref_frames: int,
    text_dropout: float,
    generator: torch.Generator,
    paired: float = 0.0,
    entry: tuple[float, float] = (0.1, 0.75),
) -> NoiseDraw:
    """Per-chunk times, Gaussian noise, text-dropout flags and the paired draws (share
    `paired` of the examples, entry times uniform in `entry`) for one batch."""
    batch, _, frames = latent_shape[:3]
    times, sizes = sample_mixed_times(frames, batch, chunk_sizes, ref_frames, generator)
    noise = torch.randn(latent_shape, generator=generator)
    drop = torch.rand(batch, generator=generator) < text_dropout
    pair = torch.rand(batch, generator=generator) < paired
    lo, hi = entry
    t_entry = lo + (hi - lo) * torch.rand(batch, generator=generator)
    return NoiseDraw(times, sizes, noise, drop, pair, t_entry)


def noised(
    x0: Tensor,
    x1: Tensor,
    times: Tensor,
    sigma_min: float,
    sources: Tensor | None = None,
    paired: Tensor | None = None,
    entry: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The training points x_t and their velocity targets, (B, C, F, H, W) each.

    `times` is (B, F). Without sources, the plain flow-matching path from noise x0 to data x1.
    With sources (B, C, F, H, W), frames of a `paired` example at or after its `entry` time
    take the bridge from the source noised to t_e to x1 instead; the rest stay plain.
    """
    t5 = times[:, None, :, None, None].to(x1.dtype)  # (B, 1, F, 1, 1): broadcast per frame
    x_t = flow.interpolate(x0, x1, t5, sigma_min)
    target = flow.velocity_target(x0, x1, sigma_min)
    if sources is None or paired is None or entry is None or not bool(paired.any()):
        return x_t, target
    e5 = entry.to(x1.device, x1.dtype)[:, None, None, None, None]  # (B, 1, 1, 1, 1)
    start = flow.bridge_start(x0, sources.to(x1.dtype), e5, sigma_min)
    on_bridge, v = flow.bridge(start, x1, t5, e5)
    use = paired.to(x1.device)[:, None] & (times >= entry.to(times.device)[:, None])  # (B, F)
    use5 = use[:, None, :, None, None]
    return torch.where(use5, on_bridge, x_t), torch.where(use5, v, target)


def flow_matching_loss(
    net: nn.Module,
    latents: Tensor,
    draw: NoiseDraw,
    text: Tensor,
    text_mask: Tensor | None,
    sigma_min: float,
    ref_frames: int,
    sources: Tensor | None = None,
    motion_weight: float = 0.0,
) -> Tensor:
    """Mean squared velocity error over the noised frames (reference frames excluded).

    Reference frames go in clean (t = 1) as context; the model's output there is not
    trained, since at inference they are never updated. `sources` (B, C, F, H, W), when
    given, are the latents each example's paired path starts from (see `noised`).
    `motion_weight` > 0 weighs each latent pixel by how much the clip changes there
    (`motion_weights`), so the few pixels a moving object covers count as much as the
    static background that fills the rest of the frame.
    """
    x1 = latents
    x0 = draw.noise.to(x1.device, x1.dtype)
    t = draw.times.to(x1.device)
    x_t, target = noised(x0, x1, t, sigma_min, sources, draw.paired, draw.entry)
    pred = net(x_t, t, text, text_mask)
    sq = (pred.float() - target.float()).pow(2).mean(dim=1)  # (B, F, H, W)
    err = (sq * motion_weights(x1, motion_weight)).mean(dim=(2, 3))  # (B, F)
    active = (torch.arange(x1.shape[2], device=x1.device) >= ref_frames).float()  # (F,)
    return (err * active).sum() / (active.sum() * err.shape[0])


def motion_weights(latents: Tensor, strength: float, eps: float = 1e-3) -> Tensor:
    """(B, F, H, W) loss weights, mean 1 over each frame: 1 + `strength` times the latent
    change from the frame before (frame 0 takes frame 1's), relative to the frame's mean
    change. All ones when `strength` is 0 or nothing moves."""
    x = latents.float()
    if strength == 0.0 or x.shape[2] < 2:
        return torch.ones_like(x[:, 0])
    change = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=1)  # (B, F-1, H, W)
    change = torch.cat([change[:, :1], change], dim=1)  # (B, F, H, W)
    scale = change.mean(dim=(2, 3), keepdim=True)
    w = 1.0 + strength * change / scale.clamp_min(eps)
    return w / w.mean(dim=(2, 3), keepdim=True)
