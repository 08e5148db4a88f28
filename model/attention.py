"""Window self-attention over a 3D token grid, shifted windows, and 3D rotary embeddings.

Tokens are laid out (f, h, w) row-major: L = F*H*W for a grid (F, H, W). Every layer splits
the grid into non-overlapping windows; odd layers first roll the grid by half a window
(cyclically, as Swin does) and mask pairs of tokens that the roll brought together across
an edge. A grid that is not a multiple of the window is padded; padded keys are masked.

The fast path never moves the grid itself: `window_layout` applies the pad, roll and cut
once to the token indices, and each layer cuts its windows with one row gather of the fused
q/k/v projection (`to_window_order`), runs SDPA with one batch entry per window, and puts
the tokens back with one more (`to_token_order`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from model import kernels

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


@dataclass(frozen=True)
class WindowLayout:
    """One layer's windows as row indices, built once per token grid and batch size (model.dit
    caches them) and shared by every block with that shift.

    Window order lists the padded grid's slots window by window (window-major, Lw slots
    each), after the roll. `to_window_order` cuts every window of a (B, L, C) tensor in one
    row gather and `to_token_order` puts them back, instead of pad + roll + two rearranges.
    """

    plan: WindowPlan
    gather: Tensor  # (B*nW*Lw,) long: the row of (B*L, C) in each slot (padding: token 0)
    scatter: Tensor  # (B*L,) long: the row of (B*nW*Lw, C) holding each token
    mask: Tensor | None  # (B*nW, 1, Lw, Lw) additive (0 / -inf) in the model dtype, or None
    cos: Tensor  # (nW*Lw, 1, Dh) rotary tables in window order (see `rope_rotation`)
    sin: Tensor  # (nW*Lw, 1, Dh), the pair's sign folded in


def window_order(plan: WindowPlan, device: torch.device) -> tuple[Tensor, Tensor]:
    """(gather (nW*Lw,), valid (nW*Lw,) bool): each window slot's token, pad, roll and cut
    applied to the token indices (the geometry `window_mask` assumes)."""
    f, h, w = plan.grid
    index = torch.arange(f * h * w, device=device).view(f, h, w)
    valid = torch.ones(f, h, w, dtype=torch.bool, device=device)
    pf, ph, pw = (p - g for p, g in zip(plan.padded, plan.grid, strict=True))
    index = F.pad(index, (0, pw, 0, ph, 0, pf))  # padding slots point at token 0 ...
    valid = F.pad(valid, (0, pw, 0, ph, 0, pf))  # ... and are masked as keys
    if any(plan.shift):
        shifts = tuple(-s for s in plan.shift)
        index, valid = (torch.roll(t, shifts=shifts, dims=(0, 1, 2)) for t in (index, valid))
    wf, wh, ww = plan.window
    pattern = "(nf wf) (nh wh) (nw ww) -> (nf nh nw wf wh ww)"
    return (
        rearrange(index, pattern, wf=wf, wh=wh, ww=ww),
        rearrange(valid, pattern, wf=wf, wh=wh, ww=ww),
    )


def window_layout(
    plan: WindowPlan, rope: RopeTables, batch: int, dtype: torch.dtype
) -> WindowLayout:
    """Row indices, additive mask and rotary tables for `plan` at this batch size and dtype."""
    device = rope[0].device
    gather, valid = window_order(plan, device)  # (nW*Lw,) each
    tokens, slots = math.prod(plan.grid), gather.numel()
    # Each token's one real slot: sort the slots by token, padding slots last (no boolean
    # indexing, so it also runs on the meta device that counts FLOPs).
    scatter = torch.argsort(gather + (~valid) * tokens, stable=True)[:tokens]
    rows = torch.arange(batch, device=device)[:, None]  # (B, 1): offsets of each sample
    allowed = window_mask(plan, device)  # (nW, Lw, Lw) bool or None
    mask = None
    if allowed is not None:
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask = mask.masked_fill(~allowed, float("-inf"))
        # (nW, Lw, Lw) -> (B*nW, 1, Lw, Lw); window index varies fastest, as in the slots.
        mask = mask.repeat(batch, 1, 1).unsqueeze(1)
    cos, sin = (t[gather].to(dtype) for t in rope_rotation(rope))
    return WindowLayout(
        plan,
        gather=(gather + rows * tokens).flatten(),
        scatter=(scatter + rows * slots).flatten(),
        mask=mask,
        cos=cos,
        sin=sin,
    )


def to_window_order(x: Tensor, layout: WindowLayout) -> Tensor:
    """(B, L, C) tokens -> (B, nW*Lw, C) window slots: one row gather (a copy)."""
    b, _, c = x.shape
    return x.reshape(-1, c).index_select(0, layout.gather).view(b, -1, c)


def to_token_order(x: Tensor, layout: WindowLayout) -> Tensor:
    """(B, nW*Lw, C) window slots -> (B, L, C) tokens, padding slots dropped."""
    b, _, c = x.shape
    return x.reshape(-1, c).index_select(0, layout.scatter).view(b, -1, c)


def window_attention(q: Tensor, k: Tensor, v: Tensor, layout: WindowLayout) -> Tensor:
    """Attention within windows on q, k, v (B, nW*Lw, Nh, Dh) already in window order.

    Returns (B, nW*Lw, Nh*Dh), still in window order. The inputs may be strided views (slices
    of a fused qkv projection); each window is one SDPA batch entry, so no (L, L) mask is ever
    built, and unmasked layers take SDPA's fused kernel without any mask.
    """
    b, slots, nh, dh = q.shape
    nw, lw = layout.plan.num_windows, layout.plan.window_tokens

    def windows(t: Tensor) -> Tensor:  # (B, nW*Lw, Nh, Dh) -> (B*nW, Nh, Lw, Dh), a view
        return t.reshape(b * nw, lw, nh, dh).transpose(1, 2)

    out = F.scaled_dot_product_attention(windows(q), windows(k), windows(v), attn_mask=layout.mask)
    return out.transpose(1, 2).reshape(b, slots, nh * dh)  # (B*nW, Nh, Lw, Dh) -> (B, nW*Lw, D)


def window_attention_kernel(qk: Tensor, v: Tensor, layout: WindowLayout) -> Tensor | None:
    """Window attention by the compiled CPU kernel (`model.kernels`), or None where it does
    not apply (then `window_attention` runs). qk (B, nW*Lw, 2*Nh, Dh) the rotated queries
    then keys, v (B, nW*Lw, Nh*Dh), both in window order -> (B, nW*Lw, Nh*Dh), window order.
    """
    b, _, nh2, dh = qk.shape
    nw, lw = layout.plan.num_windows, layout.plan.window_tokens
    q, k = qk.view(b * nw, lw, nh2, dh).chunk(2, dim=2)  # (B*nW, Lw, Nh, Dh) views
    v = v.view(b * nw, lw, nh2 // 2, dh)  # a view: v's rows may be strided, channels not
    mask = None if layout.mask is None else layout.mask.view(b * nw, lw, lw)
    out = kernels.attention(q, k, v, mask)  # (B*nW, Lw, Nh*Dh)
    return None if out is None else out.view(b, nw * lw, -1)


def attention_as_matmuls(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(Dh) + mask) v as two batched matmuls, q (B, Nh, L, Dh), k and v
    (B, Nh, Lk, Dh), mask additive and broadcastable to (B, Nh, L, Lk) -> (B, Nh, L, Dh).

    For a few dozen keys (the text) in bf16 on CPUs this is ~10 % faster than SDPA's flash
    kernel, whose blocks are then tiny; it rounds like any bf16 path (the scale is applied to
    k in k's dtype, the softmax computes in float32 inside)."""
    scores = q @ (k * k.shape[-1] ** -0.5).transpose(-1, -2)  # (B, Nh, L, Lk)
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1) @ v


def attend_windows(q: Tensor, k: Tensor, v: Tensor, layout: WindowLayout) -> Tensor:
    """Window attention on q, k, v (B, L, Nh, Dh) in token order -> (B, L, Nh*Dh)."""
    q, k, v = (to_window_order(t.flatten(2), layout).unflatten(-1, t.shape[2:]) for t in (q, k, v))
    return to_token_order(window_attention(q, k, v, layout), layout)


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


def rope_rotation(rope: RopeTables) -> tuple[Tensor, Tensor]:
    """(cos, sin) (L, Dh/2) -> (L, 1, Dh) each, repeated per channel pair, with the pair's
    sign folded into sin, so that `rotate` is two multiplies and an add."""
    cos, sin = rope
    cos = cos.repeat_interleave(2, dim=-1)  # (L, Dh): c0 c0 c1 c1 ...
    sin = torch.stack((-sin, sin), dim=-1).flatten(-2)  # (L, Dh): -s0 s0 -s1 s1 ...
    return cos[:, None, :], sin[:, None, :]


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the channel pairs (a, b) of x (B, L, N, Dh) to (a c - b s, b c + a s), in x's
    dtype, for any N (heads, or the heads of q and k stacked); cos and sin (L, 1, Dh) from
    `rope_rotation`."""
    pairs = x.unflatten(-1, (-1, 2))
    # (b0, a0, b1, a1, ...): two strided copies, ~1.4x faster than flip on a size-2 dim.
    swapped = torch.stack((pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin)


def apply_rope(x: Tensor, rope: RopeTables) -> Tensor:
    """Rotate channel pairs of x (B, L, Nh, Dh) by the token's angles, in float32."""
    return rotate(x.float(), *rope_rotation(rope)).type_as(x)
