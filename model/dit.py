"""The StreamDiT transformer: an adaLN-Zero DiT whose time conditioning is per latent frame.

Read top-down: `StreamDiT.forward` patches the latent video into tokens, embeds each frame's
own time, runs the blocks (window self-attention, text cross-attention, MLP) and unpatches.
Parameter names are those of the original Wan2.1 code (patch_embedding, text_embedding,
time_embedding, time_projection, blocks.N.{self_attn,cross_attn,ffn,norm3,modulation}, head).
With the Wan switches of `StreamDiTConfig` (head_table, time_input, prediction, ffn_dim and a
full window) a Wan2.1-architecture transformer maps onto this one tensor for tensor, up to the
shape of the per-block tables; `model.import_wan` converts such checkpoints (docs/WEIGHTS.md).
"""

from __future__ import annotations

import functools
import math
import weakref

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from model import kernels
from model.attention import (
    WindowLayout,
    attention_as_matmuls,
    plan_windows,
    rope_tables,
    rotate,
    to_token_order,
    to_window_order,
    window_attention,
    window_attention_kernel,
    window_layout,
)
from model.config import Prediction, StreamDiTConfig, TimeInput


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, F, L/F, D) with per-frame shift/scale (B, F, 1, D): x * (1 + scale) + shift."""
    return torch.addcmul(shift, x, 1 + scale)


def norm_modulate(norm: nn.LayerNorm, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """modulate(norm(x)) per frame: x (B, L, D), shift and scale (B, F, 1, D) -> (B, L, D).
    The compiled kernel's one pass where it applies (bf16 CPU inference), else torch's ops."""
    if not norm.elementwise_affine:
        fused = kernels.layer_norm_modulate(x, shift.squeeze(2), scale.squeeze(2), norm.eps)
        if fused is not None:
            return fused
    return modulate(per_frame(norm(x), shift.shape[1]), shift, scale).flatten(1, 2)


def per_frame(x: Tensor, frames: int) -> Tensor:
    """(B, L, D) -> (B, F, L/F, D), a view: each frame's tokens are contiguous."""
    return x.unflatten(1, (frames, -1))


def timestep_features(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t (any shape, in [0, 1]) -> (*t.shape, dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[..., None] * 1000.0 * freqs  # scale to the 0..1000 range DiTs expect
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def wan_timestep_features(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Wan's features of our t: timestep 1000 (1 - t) (1000 is noise), computed in float64 as
    Wan2.1 and SkyReels-V2 do (arguments reach 1000 rad) -> (*t.shape, dim), float32."""
    wide = torch.float32 if t.device.type == "mps" else torch.float64  # mps has no float64
    half = dim // 2
    freqs = max_period ** -(torch.arange(half, device=t.device, dtype=wide) / half)
    args = (1000.0 * (1.0 - t.to(wide)))[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).float()


def fast_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), so bf16 beats fp32.

    Without either, torch emulates bf16 matmuls and fp32 is faster. (The checks are
    torch.cpu's; a torch that lacks them answers False.)
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


# Below this width a CPU call is overhead-bound and bf16 only adds casts: on an AMX CPU
# `tiny` (width 64) runs no faster in bf16 (3.1 vs 2.9 ms); width 128 (`cpu`, one thread,
# 2048 tokens) 1.27x faster (83 vs 106 ms), width 256 2.3x.
BF16_CPU_MIN_DIM = 128


def inference_dtype(device: torch.device, cfg: StreamDiTConfig | None = None) -> torch.dtype:
    """The dtype StreamDiT runs in on `device`: bf16 on CUDA GPUs, and on CPUs with native bf16
    for models at least `BF16_CPU_MIN_DIM` wide (docs/PERFORMANCE.md); else fp32. The stream
    buffer stays fp32 either way (model.stream)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    wide = cfg is None or cfg.dim >= BF16_CPU_MIN_DIM
    if device.type == "cpu" and wide and fast_bf16_cpu():
        return torch.bfloat16
    return torch.float32


@functools.cache
def _onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def _onednn_packing() -> bool:
    return hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _onednn_path(x: Tensor, weight: Tensor) -> bool:
    """Whether `linear` takes oneDNN's op: CPU inference in float32 or bf16, outside autograd,
    autocast and torch.compile."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.bfloat16)
        and not torch.is_autocast_enabled("cpu")  # autocast casts for F.linear, not for this
        and _onednn_linear()
        and not torch.compiler.is_compiling()  # inductor fuses (and packs) on its own
    )


# oneDNN-blocked bf16 weights by (id of the first part, number of parts): (stamp, weight).
_PACKED: dict[tuple[int, int], tuple[tuple[tuple[int, int], ...], Tensor]] = {}


def packed_weight(*parts: Tensor) -> Tensor:
    """The weight `parts` (one Linear's, or several stacked along dim 0 for one fused matmul)
    in oneDNN's blocked layout, made once and reused until a part changes its storage or its
    version (any in-place update). A bf16 CPU inference call then neither concatenates nor
    reorders its weights: ~5 % of a `cpu` model call at 2 threads, the same numbers bit for
    bit. An entry goes when its first part does."""

    def whole() -> Tensor:  # made only on a cache miss
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    if not _onednn_packing():
        return whole()
    try:
        stamp = tuple((p.data_ptr(), p._version) for p in parts)
    except RuntimeError:  # inference tensors keep no version: pack on every call
        return torch.ops.mkldnn._reorder_linear_weight(whole())
    key = (id(parts[0]), len(parts))
    hit = _PACKED.get(key)
    if hit is None or hit[0] != stamp:
        if hit is None:
            weakref.finalize(parts[0], _PACKED.pop, key, None)
        hit = _PACKED[key] = (stamp, torch.ops.mkldnn._reorder_linear_weight(whole()))
    return hit[1]


def linear(x: Tensor, weight: Tensor, bias: Tensor, gelu: bool = False) -> Tensor:
    """F.linear(x, weight, bias), then GELU (tanh approximation) when `gelu`.

    CPU inference takes oneDNN's linear with the bias and GELU fused into the matmul (the op
    inductor uses). In bf16 on AVX-512/AMX it is ~20% faster than F.linear, which first
    copies the broadcast bias into the output, and torch's tanh GELU alone costs ~4x the
    matmul it follows; where the compiled kernels run (model.kernels) the GELU is theirs,
    cheaper still. bf16 weights go in oneDNN's blocked layout, made once (`packed_weight`).
    Training (autograd), autocast regions and other devices take the plain ops.
    """
    if _onednn_path(x, weight):
        if x.dtype == torch.bfloat16 and not weight.is_mkldnn:
            weight = packed_weight(weight)
        own_gelu = gelu and kernels.runs(x)  # the kernels' GELU, after a plain matmul
        attr, algorithm = ("gelu", "tanh") if gelu and not own_gelu else ("none", "")
        out = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, attr, [], algorithm)
        return kernels.gelu_tanh_(out) if own_gelu else out
    out = F.linear(x, weight, bias)
    return F.gelu(out, approximate="tanh") if gelu else out


def qk_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """RMSNorm over the last dim of x (any strides), its statistics in float32.

    `nn.RMSNorm` on bf16 CPU tensors runs unfused (about 3x slower than this) and this also
    accepts the strided q/k slices of a fused projection without a copy first. In bf16 on a
    CPU with AVX-512 BF16 the compiled kernel does it in one pass.
    """
    if not isinstance(norm, nn.RMSNorm):
        return norm(x)
    eps = torch.finfo(x.dtype).eps if norm.eps is None else norm.eps  # nn.RMSNorm's default
    if x.ndim == 3:  # (B, L, D) as (B, L, 1, D)
        fused = kernels.norm_rotate(x.unsqueeze(2), norm.weight[None], eps)
        if fused is not None:
            return fused.squeeze(2)
    sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square()
    inv = torch.rsqrt(sq / x.shape[-1] + eps)  # (..., 1) float32
    return (x * inv.to(x.dtype)).mul_(norm.weight)


def qk_norm_pair(qk: Tensor, norm_q: nn.Module, norm_k: nn.Module) -> Tensor:
    """`qk_norm` of queries and keys stacked as qk (..., 2, D): the same numbers, in half the
    ops (each pass covers both)."""
    if isinstance(norm_q, nn.Identity) and isinstance(norm_k, nn.Identity):
        return qk
    rms = isinstance(norm_q, nn.RMSNorm) and isinstance(norm_k, nn.RMSNorm)
    if not rms or norm_q.eps != norm_k.eps:
        q, k = qk.unbind(-2)
        return torch.stack((qk_norm(q, norm_q), qk_norm(k, norm_k)), dim=-2)
    sq = torch.linalg.vector_norm(qk, dim=-1, keepdim=True, dtype=torch.float32).square()
    eps = torch.finfo(qk.dtype).eps if norm_q.eps is None else norm_q.eps
    inv = torch.rsqrt(sq / qk.shape[-1] + eps)  # (..., 2, 1) float32
    return (qk * inv.to(qk.dtype)).mul_(torch.stack((norm_q.weight, norm_k.weight)))


def few_keys_as_matmuls(q: Tensor) -> bool:
    """Whether attention over a few keys (the text) runs as plain matmuls: bf16 inference on
    a CPU, where that beats SDPA's kernel (`attention_as_matmuls`); float32 keeps SDPA, which
    is as fast there, so float32 outputs stay as they were, bit for bit."""
    return kernels.bf16_cpu_inference(q)


class Attention(nn.Module):
    """Multi-head attention projections with optional RMSNorm on queries and keys.

    q, k, v and o stay separate Linear layers (the public checkpoints' names); the forward
    concatenates their weights so one matmul projects all that read the same input.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=1e-6) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=1e-6) if qk_norm else nn.Identity()

    def fused(self, x: Tensor, *layers: nn.Linear) -> Tensor:
        """x (B, L, D) through n `layers` in one matmul -> (B, L, n*D), the layers in order."""
        weights = [m.weight for m in layers]
        if _onednn_path(x, weights[0]) and x.dtype == torch.bfloat16:
            weight = packed_weight(*weights)  # concatenated once, not on every call
        else:
            weight = torch.cat(weights)  # (n*D, D)
        return linear(x, weight, torch.cat([m.bias for m in layers]))


class SelfAttention(Attention):
    def norm_rotate(self, qk: Tensor, layout: WindowLayout) -> Tensor:
        """q and k (B, nW*Lw, 2, D) RMS-normed, then rotated by `layout`'s tables -> (B,
        nW*Lw, 2*Nh, Dh): the compiled kernel's one pass where it applies, else torch's ops."""
        heads = (*qk.shape[:2], 2 * self.heads, qk.shape[-1] // self.heads)
        norms = (self.norm_q, self.norm_k)
        if all(isinstance(n, nn.RMSNorm) for n in norms) and norms[0].eps == norms[1].eps:
            eps = torch.finfo(qk.dtype).eps if norms[0].eps is None else norms[0].eps
            weight = torch.stack([n.weight for n in norms])  # (2, D)
            fused = kernels.norm_rotate(qk, weight, eps, layout.cos, layout.sin)
            if fused is not None:
                return fused.view(heads)
        qk = qk_norm_pair(qk, self.norm_q, self.norm_k)
        return rotate(qk.view(heads), layout.cos, layout.sin)

    def forward(self, x: Tensor, layout: WindowLayout) -> Tensor:
        """x (B, L, D) -> (B, L, D): attention within the windows of `layout`."""
        d = x.shape[-1]
        # One window over the whole grid, unmasked: window order is token order (full
        # attention, Wan's), so both gathers are skipped.
        full = layout.mask is None and layout.plan.num_windows == 1
        # Into window order once, before the projection (a third of the bytes of q, k, v):
        # (B, L, D) -> (B, nW*Lw, D), then (B, nW*Lw, 3D).
        qkv = self.fused(x if full else to_window_order(x, layout), self.q, self.k, self.v)
        qk, v = qkv.split((2 * d, d), dim=-1)
        heads = (self.heads, d // self.heads)  # D -> (Nh, Dh)
        # q and k together, (B, nW*Lw, 2, D): the norms see all heads at once (Wan's
        # "rms_norm_across_heads"), then heads split and both rotate in one pass.
        qk = self.norm_rotate(qk.unflatten(-1, (2, d)), layout)  # (B, nW*Lw, 2*Nh, Dh)
        # bf16 on a CPU with AVX-512 BF16: the compiled kernel; elsewhere None, and SDPA.
        fused = None if full else window_attention_kernel(qk, v, layout)  # (B, nW*Lw, D)
        if fused is not None:
            return linear(to_token_order(fused, layout), self.o.weight, self.o.bias)
        q, k = qk.unflatten(2, (2, heads[0])).unbind(2)  # (B, nW*Lw, Nh, Dh), strided views
        out = window_attention(q, k, v.unflatten(-1, heads), layout)  # (B, nW*Lw, D)
        return linear(out if full else to_token_order(out, layout), self.o.weight, self.o.bias)


class CrossAttention(Attention):
    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, L, D), context (B, Lc, D), mask (B, 1, 1, Lc) additive or None -> (B, L, D)."""
        b, d = x.shape[0], x.shape[-1]
        heads = (b, -1, self.heads, d // self.heads)  # (B, L, D) -> (B, L, Nh, Dh)
        q = qk_norm(linear(x, self.q.weight, self.q.bias), self.norm_q).view(heads)
        k, v = self.fused(context, self.k, self.v).chunk(2, dim=-1)  # (B, Lc, D) each
        k, v = qk_norm(k, self.norm_k).view(heads), v.view(heads)  # (B, Lc, Nh, Dh)
        # bf16 on a CPU with AVX-512 BF16: the compiled kernel; elsewhere None.
        fused = kernels.attention(q, k, v, None if mask is None else mask[:, 0])  # (B, L, D)
        if fused is not None:
            return linear(fused, self.o.weight, self.o.bias)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, Nh, L or Lc, Dh)
        if few_keys_as_matmuls(q):
            out = attention_as_matmuls(q, k, v, mask)  # (B, Nh, L, Dh)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return linear(out.transpose(1, 2).reshape(b, -1, d), self.o.weight, self.o.bias)


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
        context_mask: Tensor | None,  # (B, 1, 1, Lc) additive, or None
        layouts: tuple[WindowLayout, WindowLayout],  # unshifted, shifted
    ) -> Tensor:
        if self.single:
            mod = emb + self.modulation.to(emb.dtype)  # (B, F, 6, D)
        else:
            mod = self.adaLN_modulation(emb).unflatten(-1, (6, -1))  # (B, F, 6*D) -> (B, F, 6, D)
        # (B, F, 6, D) -> six tensors (B, F, 1, D): each frame's tokens get its own values.
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unsqueeze(2).unbind(dim=3)
        frames = mod.shape[1]

        h = norm_modulate(self.norm1, x, shift1, scale1)
        h = self.self_attn(h, layouts[self.shifted])
        x = torch.addcmul(per_frame(x, frames), gate1, per_frame(h, frames)).flatten(1, 2)

        x = x + self.cross_attn(self.norm3(x), context, context_mask)

        h = norm_modulate(self.norm2, x, shift2, scale2)
        up, down = self.ffn[0], self.ffn[2]  # the ffn's GELU (tanh) is fused into `up`
        h = linear(linear(h, up.weight, up.bias, gelu=True), down.weight, down.bias)
        return torch.addcmul(per_frame(x, frames), gate2, per_frame(h, frames)).flatten(1, 2)


class Head(nn.Module):
    """Final per-frame adaLN layer and the linear map back to patch values.

    Shift and scale come from SiLU + Linear of the time embedding, or (`head_table`, Wan's
    head) from a learned (1, 2, D) table added to the raw time embedding.
    """

    def __init__(self, cfg: StreamDiTConfig):
        super().__init__()
        self.table = cfg.head_table
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        if cfg.head_table:
            self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))
        else:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.latent_channels)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.table:  # (B, F, 1, D) + (1, 2, D) -> (B, F, 2, D) -> (B, F, 1, D) each
            mod = emb.unsqueeze(2) + self.modulation.to(emb.dtype)
            shift, scale = mod.chunk(2, dim=2)
        else:
            shift, scale = self.modulation(emb).unsqueeze(2).chunk(2, dim=-1)  # (B, F, 1, D)
        return self.head(norm_modulate(self.norm, x, shift, scale))


@functools.lru_cache(maxsize=8)  # a few grids x batch sizes (1, 2 with guidance)
def window_layouts(
    grid: tuple[int, int, int],
    window: tuple[int, int, int],
    head_dim: int,
    theta: float,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    inference: bool,  # inference tensors cannot enter autograd: cached apart
) -> tuple[WindowLayout, WindowLayout]:
    """The unshifted and shifted layouts of a token grid, built once per shape and reused by
    every call (constants: nothing in them depends on the weights or the input)."""
    rope = rope_tables(grid, head_dim, theta, device)
    return tuple(
        window_layout(plan_windows(grid, window, shifted=s), rope, batch, dtype)
        for s in (False, True)
    )


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
        zero = (
            [self.head.head] if self.cfg.head_table else [self.head.modulation[-1], self.head.head]
        )
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

        # The patch embedding is a strided Conv3d; as a matmul over gathered patches it is the
        # same sum without oneDNN's convolution setup. (B, C, F, H, W) -> (B, L, C*pt*ph*pw).
        pt, ph, pw = cfg.patch_size
        patches = rearrange(
            x, "b c (f pt) (h ph) (w pw) -> b (f h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw
        )
        conv = self.patch_embedding
        tokens = F.linear(patches, conv.weight.flatten(1), conv.bias)  # (B, L, D)
        # Frames sharing a temporal patch share a token frame: average their times.
        t_tok = rearrange(t, "b (f pt) -> b f pt", pt=pt).mean(-1)  # (B, Ft)
        features = (
            timestep_features if cfg.time_input is TimeInput.DATA_AT_ONE else wan_timestep_features
        )
        emb = self.time_embedding(features(t_tok, cfg.freq_dim).to(x.dtype))  # (B, Ft, D)
        block_emb = emb
        if cfg.adaln_single:
            block_emb = self.time_projection(emb).unflatten(-1, (6, -1))  # (B, Ft, 6, D)

        context = self.text_embedding(text.to(x.dtype))  # (B, Lt, D)
        context_mask = None
        if text_mask is not None:
            # A row without any real token (should not happen) attends to all, not to nothing.
            keep = text_mask.bool() | ~text_mask.bool().any(dim=-1, keepdim=True)  # (B, Lt)
            context_mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            context_mask = context_mask.masked_fill(~keep, float("-inf"))[:, None, None, :]

        layouts = window_layouts(
            grid, cfg.window, cfg.head_dim, cfg.rope_theta, b, x.dtype, x.device,
            torch.is_inference_mode_enabled(),
        )  # fmt: skip
        for block in self.blocks:
            tokens = block(tokens, block_emb, context, context_mask, layouts)

        out = self.head(tokens, emb)  # (B, L, pt*ph*pw*C)
        if cfg.prediction is Prediction.NOISE_MINUS_DATA:
            out = out.neg()  # eps - x0 is minus our velocity x1 - x0 (sigma_min = 0)
        f, h, w = grid
        return rearrange(
            out,
            "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
            f=f, h=h, w=w, pt=pt, ph=ph, pw=pw,
        )  # fmt: skip
