"""The StreamDiT transformer: an adaLN-Zero DiT whose time conditioning is per latent frame.

Read top-down: `StreamDiT.forward` patches the latent video into tokens, embeds each frame's
own time, runs the blocks (window self-attention, text cross-attention, MLP) and unpatches.
Parameter names follow common video-DiT conventions (patch_embedding, text_embedding,
time_embedding, time_projection, blocks.N.{self_attn,cross_attn,ffn,norm3,modulation}, head)
so that public pretrained weights map onto them by name.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from model.attention import (
    RopeTables,
    WindowPlan,
    apply_rope,
    plan_windows,
    rope_tables,
    window_attention,
    window_mask,
)
from model.config import StreamDiTConfig

Windows = tuple[WindowPlan, Tensor | None]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, F, L/F, D) with per-frame shift/scale (B, F, 1, D)."""
    return x * (1 + scale) + shift


def timestep_features(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t (any shape, in [0, 1]) -> (*t.shape, dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[..., None] * 1000.0 * freqs  # scale to the 0..1000 range DiTs expect
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention projections with optional RMSNorm on queries and keys."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=1e-6) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=1e-6) if qk_norm else nn.Identity()

    def project(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q from x (B, L, D), k and v from context (B, Lc, D); each (B, L|Lc, Nh, Dh)."""
        split = "b l (n d) -> b l n d"
        q = rearrange(self.norm_q(self.q(x)), split, n=self.heads)
        k = rearrange(self.norm_k(self.k(context)), split, n=self.heads)
        return q, k, rearrange(self.v(context), split, n=self.heads)


class SelfAttention(Attention):
    def forward(self, x: Tensor, windows: Windows, rope: RopeTables) -> Tensor:
        q, k, v = self.project(x, x)
        return self.o(window_attention(apply_rope(q, rope), apply_rope(k, rope), v, *windows))


class CrossAttention(Attention):
    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        heads_first = "b l n d -> b n l d"  # (B, L, Nh, Dh) -> (B, Nh, L, Dh) for SDPA
        q, k, v = (rearrange(t, heads_first) for t in self.project(x, context))
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Lc)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.o(rearrange(out, "b n l d -> b l (n d)"))


class Block(nn.Module):
    """adaLN-Zero block: gated window self-attention, cross-attention, gated MLP."""

    def __init__(self, cfg: StreamDiTConfig, shifted: bool):
        super().__init__()
        self.shifted = shifted
        self.single = cfg.adaln_single
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(d, cfg.heads, cfg.qk_norm)
        self.norm3 = nn.LayerNorm(d, eps=1e-6) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(d, cfg.heads, cfg.qk_norm)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.mlp_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_dim, d)
        )
        if cfg.adaln_single:
            # Added to the shared projection of the time embedding (adaLN-single).
            self.modulation = nn.Parameter(torch.zeros(1, 1, 6, d))
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(
        self,
        x: Tensor,  # (B, L, D), L = F*H*W
        emb: Tensor,  # (B, F, D) per-frame time embedding, or (B, F, 6, D) shared projection
        context: Tensor,
        context_mask: Tensor | None,
        windows: tuple[Windows, Windows],
        rope: RopeTables,
    ) -> Tensor:
        if self.single:
            mod = emb + self.modulation  # (B, F, 6, D)
        else:
            mod = rearrange(self.adaLN_modulation(emb), "b f (six d) -> b f six d", six=6)
        # (B, F, 6, D) -> six tensors (B, F, 1, D): each frame's tokens get its own values.
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unsqueeze(2).unbind(dim=3)
        frames = mod.shape[1]
        per_frame = "b (f n) d -> b f n d"  # (B, L, D) -> (B, F, L/F, D)
        flat = "b f n d -> b (f n) d"

        h = modulate(rearrange(self.norm1(x), per_frame, f=frames), shift1, scale1)
        h = self.self_attn(rearrange(h, flat), windows[self.shifted], rope)
        x = x + rearrange(gate1 * rearrange(h, per_frame, f=frames), flat)

        x = x + self.cross_attn(self.norm3(x), context, context_mask)

        h = modulate(rearrange(self.norm2(x), per_frame, f=frames), shift2, scale2)
        h = self.ffn(rearrange(h, flat))
        return x + rearrange(gate2 * rearrange(h, per_frame, f=frames), flat)


class Head(nn.Module):
    """Final per-frame adaLN layer and the linear map back to patch values."""

    def __init__(self, cfg: StreamDiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.latent_channels)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift, scale = self.modulation(emb).unsqueeze(2).chunk(2, dim=-1)  # (B, F, 1, D) each
        h = modulate(rearrange(self.norm(x), "b (f n) d -> b f n d", f=emb.shape[1]), shift, scale)
        return self.head(rearrange(h, "b f n d -> b (f n) d"))


class StreamDiT(nn.Module):
    def __init__(self, cfg: StreamDiTConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch_size
        self.patch_embedding = nn.Conv3d(cfg.latent_channels, d, kernel_size=p, stride=p)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.adaln_single:
            self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg, shifted=i % 2 == 1) for i in range(cfg.depth))
        self.head = Head(cfg)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.patch_embedding.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embedding.bias)
        for m in self.time_embedding:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        # adaLN-Zero: every modulation starts at zero, so gates are closed and each block
        # starts as the identity. The cross-attention has no gate; its output starts at zero.
        zero = [self.head.modulation[-1], self.head.head]
        if self.cfg.adaln_single:
            zero.append(self.time_projection[-1])
        for block in self.blocks:
            zero.append(block.cross_attn.o)
            if not self.cfg.adaln_single:
                zero.append(block.adaLN_modulation[-1])
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def token_grid(self, x: Tensor) -> tuple[int, int, int]:
        if x.ndim != 5 or x.shape[1] != self.cfg.latent_channels:
            raise ValueError(
                f"latents must be (B, {self.cfg.latent_channels}, F, H, W), got {tuple(x.shape)}"
            )
        sizes = x.shape[2:]
        if any(n % p for n, p in zip(sizes, self.cfg.patch_size, strict=True)):
            raise ValueError(
                f"latent (F, H, W) {tuple(sizes)} must be divisible by the patch size "
                f"{self.cfg.patch_size}"
            )
        return tuple(n // p for n, p in zip(sizes, self.cfg.patch_size, strict=True))

    def forward(
        self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, C, F, H, W), t (B, F) or (B,) in [0, 1], text (B, Lt, Dt) -> velocity like x."""
        cfg = self.cfg
        b, _, frames = x.shape[:3]
        grid = self.token_grid(x)
        t = t.reshape(b, 1).expand(b, frames) if t.ndim == 1 else t
        if t.shape != (b, frames):
            raise ValueError(f"t must be (B, F) = {(b, frames)} or (B,), got {tuple(t.shape)}")
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
            raise ValueError(f"text must be ({b}, Lt, {cfg.text_dim}), got {tuple(text.shape)}")

        tokens = rearrange(self.patch_embedding(x), "b d f h w -> b (f h w) d")  # (B, L, D)
        # Frames sharing a temporal patch share a token frame: average their times.
        t_tok = rearrange(t, "b (f pt) -> b f pt", pt=cfg.patch_size[0]).mean(-1)  # (B, Ft)
        emb = self.time_embedding(timestep_features(t_tok, cfg.freq_dim).to(x.dtype))  # (B,Ft,D)
        block_emb = emb
        if cfg.adaln_single:
            block_emb = rearrange(self.time_projection(emb), "b f (six d) -> b f six d", six=6)

        context = self.text_embedding(text.to(x.dtype))  # (B, Lt, D)
        if text_mask is not None:
            # A row without any real token (should not happen) attends to all, not to nothing.
            text_mask = text_mask.bool() | ~text_mask.bool().any(dim=-1, keepdim=True)

        plans = [plan_windows(grid, cfg.window, shifted=s) for s in (False, True)]
        windows = tuple((p, window_mask(p, x.device)) for p in plans)
        rope = rope_tables(grid, cfg.head_dim, cfg.rope_theta, x.device)
        for block in self.blocks:
            tokens = block(tokens, block_emb, context, text_mask, windows, rope)

        out = self.head(tokens, emb)  # (B, L, pt*ph*pw*C)
        pt, ph, pw = cfg.patch_size
        f, h, w = grid
        return rearrange(
            out,
            "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
            f=f, h=h, w=w, pt=pt, ph=ph, pw=pw,
        )  # fmt: skip
