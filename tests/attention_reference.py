"""The window attention and rotary embedding as they were before the fused rewrite, kept
frozen as the reference the fast path must equal (float32, 1e-5): pad, roll and einops cut
per tensor, and the rotation computed in float32 on split channel pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from model.attention import RopeTables, WindowPlan, window_mask


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


def apply_rope(x: Tensor, rope: RopeTables) -> Tensor:
    """Rotate channel pairs of x (B, L, Nh, Dh) by the token's angles."""
    cos, sin = (t[None, :, None, :] for t in rope)  # (1, L, 1, Dh/2)
    x2 = rearrange(x.float(), "b l n (d two) -> b l n d two", two=2)
    a, b = x2[..., 0], x2[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rearrange(out, "b l n d two -> b l n (d two)").type_as(x)


def self_attention(attn, x: Tensor, plan: WindowPlan, rope: RopeTables) -> Tensor:
    """`model.dit.SelfAttention` as it was: separate q, k, v layers, nn.RMSNorm, the roll."""
    split = "b l (n d) -> b l n d"
    q = rearrange(attn.norm_q(attn.q(x)), split, n=attn.heads)
    k = rearrange(attn.norm_k(attn.k(x)), split, n=attn.heads)
    v = rearrange(attn.v(x), split, n=attn.heads)
    mask = window_mask(plan, x.device)
    return attn.o(window_attention(apply_rope(q, rope), apply_rope(k, rope), v, plan, mask))
