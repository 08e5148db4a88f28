"""Window self-attention over a 3D token grid, shifted windows, and 3D rotary embeddings.

Tokens are laid out (f, h, w) row-major: L = F*H*W for a grid (F, H, W). Every layer splits
the grid into non-overlapping windows; odd layers first roll the grid by half a window
(cyclically, as Swin does) and mask pairs of tokens that the roll brought together across
an edge. A grid that is not a multiple of the window is padded; padded keys are masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

Grid = tuple[int, int, int]
RopeTables = tuple[Tensor, Tensor]  # cos, sin: (L, Dh/2) each


@dataclass(frozen=True)
class WindowPlan:
    """How one layer cuts a token grid into windows. Pure geometry, cheap to build."""

    grid: Grid  # (F, H, W) tokens
    window: Grid  # clamped to the grid
    shift: Grid  # roll per axis (0 where the window covers the axis)
    padded: Grid  # grid rounded up to a multiple of the window

    @property
    def num_windows(self) -> int:
        return math.prod(p // w for p, w in zip(self.padded, self.window, strict=True))

    @property
    def window_tokens(self) -> int:
        return math.prod(self.window)

    @property
    def needs_mask(self) -> bool:
        return any(self.shift) or self.padded != self.grid


def plan_windows(grid: Grid, window: Grid, shifted: bool) -> WindowPlan:
    win = tuple(min(w, g) for w, g in zip(window, grid, strict=True))
    padded = tuple(math.ceil(g / w) * w for g, w in zip(grid, win, strict=True))
    # Shifting an axis that one window covers whole would only rotate tokens within it.
    shift = tuple(w // 2 if shifted and w < p else 0 for w, p in zip(win, padded, strict=True))
    return WindowPlan(grid=grid, window=win, shift=shift, padded=padded)


def window_mask(plan: WindowPlan, device: torch.device) -> Tensor | None:
    """(nW, Lw, Lw) bool, True = may attend; None when every pair may attend."""
    if not plan.needs_mask:
        return None
    labels, valid = [], []
    for g, p, s in zip(plan.grid, plan.padded, plan.shift, strict=True):
        i = torch.arange(p, device=device)
        labels.append((i + s >= p).long())  # 1 where the roll wrapped this position around
        valid.append((i + s) % p < g)  # False on padding
    fl, hl, wl = torch.meshgrid(*labels, indexing="ij")
    label = fl * 4 + hl * 2 + wl  # (Fp, Hp, Wp): one id per wrapped region
    fv, hv, wv = torch.meshgrid(*valid, indexing="ij")
    ok = fv & hv & wv
    (wf, wh, ww) = plan.window
    pattern = "(nf wf) (nh wh) (nw ww) -> (nf nh nw) (wf wh ww)"
    label = rearrange(label, pattern, wf=wf, wh=wh, ww=ww)  # (nW, Lw)
    ok = rearrange(ok, pattern, wf=wf, wh=wh, ww=ww)  # (nW, Lw)
    mask = (label[:, :, None] == label[:, None, :]) & ok[:, None, :]
    # A padded query could otherwise see no key at all (NaN); its output is dropped anyway.
    return mask | torch.eye(plan.window_tokens, dtype=torch.bool, device=device)


def to_windows(x: Tensor, plan: WindowPlan) -> Tensor:
    """(B, L, Nh, Dh) tokens -> (B*nW, Nh, Lw, Dh) windows: pad, roll, cut."""
    f, h, w = plan.grid
    x = rearrange(x, "b (f h w) n d -> b f h w n d", f=f, h=h, w=w)
    pf, ph, pw = (p - g for p, g in zip(plan.padded, plan.grid, strict=True))
    if pf or ph or pw:
        x = F.pad(x, (0, 0, 0, 0, 0, pw, 0, ph, 0, pf))
    if any(plan.shift):
        x = torch.roll(x, shifts=tuple(-s for s in plan.shift), dims=(1, 2, 3))
    wf, wh, ww = plan.window
    return rearrange(
        x, "b (nf wf) (nh wh) (nw ww) n d -> (b nf nh nw) n (wf wh ww) d", wf=wf, wh=wh, ww=ww
    )


def from_windows(x: Tensor, plan: WindowPlan, batch: int) -> Tensor:
    """Inverse of `to_windows`: (B*nW, Nh, Lw, Dh) -> (B, L, Nh*Dh)."""
    wf, wh, ww = plan.window
    fp, hp, wp = plan.padded
    x = rearrange(
        x,
        "(b nf nh nw) n (wf wh ww) d -> b (nf wf) (nh wh) (nw ww) n d",
        b=batch, nf=fp // wf, nh=hp // wh, wf=wf, wh=wh, ww=ww,
    )  # fmt: skip
    if any(plan.shift):
        x = torch.roll(x, shifts=plan.shift, dims=(1, 2, 3))
    f, h, w = plan.grid
    return rearrange(x[:, :f, :h, :w], "b f h w n d -> b (f h w) (n d)")


def window_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: WindowPlan, mask: Tensor | None
) -> Tensor:
    """Attention within windows. q, k, v: (B, L, Nh, Dh); mask from `window_mask`.

    Returns (B, L, Nh*Dh). Without a mask SDPA may pick its fused (flash) kernels.
    """
    batch = q.shape[0]
    qw, kw, vw = (to_windows(t, plan) for t in (q, k, v))  # (B*nW, Nh, Lw, Dh)
    if mask is not None:
        # (nW, Lw, Lw) -> (B*nW, 1, Lw, Lw); window index varies fastest, as in to_windows.
        mask = mask.repeat(batch, 1, 1).unsqueeze(1)
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask)
    return from_windows(out, plan, batch)


# --- 3D rotary position embedding --------------------------------------------------------


def rope_split(head_dim: int) -> Grid:
    """Channels of a head given to (f, h, w): h and w equal, f takes the rest (all even)."""
    hw = 2 * (head_dim // 6)
    return (head_dim - 2 * hw, hw, hw)


def rope_tables(grid: Grid, head_dim: int, theta: float, device: torch.device) -> RopeTables:
    """cos and sin, each (L, Dh/2) float32, of every token's rotation angles."""
    parts = []
    for n, d in zip(grid, rope_split(head_dim), strict=True):
        inv_freq = theta ** (-torch.arange(0, d, 2, device=device, dtype=torch.float64) / d)
        parts.append(torch.arange(n, device=device, dtype=torch.float64)[:, None] * inv_freq)
    f, h, w = grid
    af, ah, aw = parts  # (F, df/2), (H, dh/2), (W, dw/2)
    angles = torch.cat(
        [
            af[:, None, None, :].expand(f, h, w, -1),
            ah[None, :, None, :].expand(f, h, w, -1),
            aw[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    )  # (F, H, W, Dh/2)
    angles = rearrange(angles, "f h w d -> (f h w) d")
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, rope: RopeTables) -> Tensor:
    """Rotate channel pairs of x (B, L, Nh, Dh) by the token's angles."""
    cos, sin = (t[None, :, None, :] for t in rope)  # (1, L, 1, Dh/2)
    x2 = rearrange(x.float(), "b l n (d two) -> b l n d two", two=2)
    a, b = x2[..., 0], x2[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rearrange(out, "b l n d two -> b l n (d two)").type_as(x)
