import math
from types import SimpleNamespace

import attention_reference as reference
import pytest
import torch

from model import CONFIGS, StreamDiT, kernels
from model.attention import (
    plan_windows,
    rope_rotation,
    rope_tables,
    rotate,
    to_token_order,
    to_window_order,
    window_attention_kernel,
    window_layout,
    window_mask,
)
from model.dit import modulate, per_frame, qk_norm_pair


@pytest.fixture(scope="module")
def kernel():
    """The compiled ops; the tests skip on machines where they cannot run (no AVX-512 BF16 or
    no C++ compiler), as the model then keeps torch's path."""
    if kernels.load() is None:
        pytest.skip(f"CPU kernels unavailable: {kernels.unavailable() or 'no build'}")
    return kernels.load()


def _windows(grid, window, shifted, batch, heads, head_dim, seed=0):
    """q, k, v (B, L, Nh, Dh) in bf16 and the layout, qk and v the kernel reads."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (3 * torch.randn(batch, math.prod(grid), heads, head_dim, generator=g) for _ in "qkv")
    q, k, v = (t.bfloat16() for t in (q, k, v))
    plan = plan_windows(grid, window, shifted)
    rope = rope_tables(grid, head_dim, 10000.0, torch.device("cpu"))
    layout = window_layout(plan, rope, batch, torch.bfloat16)
    qk = to_window_order(torch.cat((q, k), dim=2).flatten(2), layout)  # (B, S, 2*Nh*Dh)
    qk = qk.unflatten(-1, (2 * heads, head_dim))
    qkv = torch.cat((qk.flatten(2), to_window_order(v.flatten(2), layout)), dim=-1)
    v_rows = qkv[..., 2 * heads * head_dim :]  # strided rows, as the model's fused qkv
    return (q, k, v), plan, layout, qk, v_rows


@pytest.mark.parametrize(
    "grid,window,shifted,batch,heads,head_dim",
    [
        ((4, 8, 16), (2, 4, 8), False, 2, 4, 32),  # exact tiling, no mask, two samples
        ((4, 8, 16), (2, 4, 8), True, 2, 4, 32),  # the shift's mask
        ((3, 6, 10), (2, 4, 8), False, 1, 2, 64),  # padding masked, wider heads
        ((8, 16, 16), (4, 8, 8), True, 1, 4, 32),  # the shipped model's windows
    ],
)
def test_window_kernel_equals_the_reference_attention(
    kernel, grid, window, shifted, batch, heads, head_dim
):
    (q, k, v), plan, layout, qk, v_rows = _windows(grid, window, shifted, batch, heads, head_dim)
    with torch.inference_mode():
        got = to_token_order(window_attention_kernel(qk, v_rows, layout), layout).float()
    want = reference.window_attention(
        q.float(), k.float(), v.float(), plan, window_mask(plan, "cpu")
    )
    # bf16 inputs in both; the kernel rounds its softmax weights and output to bf16 (~0.2 %).
    assert (got - want).norm() < 1e-2 * want.norm()
    assert (got - want).abs().max() < 3e-2 * want.abs().max()


@pytest.mark.parametrize("keys", [7, 77, 64])  # padded inside to 16, 80; a whole tile
def test_kernel_attends_to_few_keys_with_a_padding_mask_as_sdpa(kernel, keys):
    """The text cross-attention: many queries, a few keys, one mask row per sample."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 96, 4, 32, generator=g).bfloat16()
    k, v = (3 * torch.randn(2, keys, 4, 32, generator=g).bfloat16() for _ in "kv")
    keep = torch.ones(2, keys, dtype=torch.bool)
    keep[1, keys // 2 :] = False  # sample 1 has padding
    mask = torch.zeros(2, 1, keys).masked_fill(~keep[:, None], float("-inf")).bfloat16()
    with torch.inference_mode():
        got = kernels.attention(q, k, v, mask).float()
    want = torch.nn.functional.scaled_dot_product_attention(
        *(t.float().transpose(1, 2) for t in (q, k, v)), attn_mask=mask.float()[:, None]
    )  # (B, Nh, Lq, Dh)
    want = want.transpose(1, 2).flatten(2)
    assert (got - want).norm() < 1e-2 * want.norm()
    v_pad = v.clone()
    v_pad[1, keys // 2 :] = 100.0  # masked keys' values never reach the output
    with torch.inference_mode():
        assert torch.equal(kernels.attention(q, k, v_pad, mask).float(), got)


def test_norm_rotate_equals_the_norms_then_the_rotation(kernel):
    """One pass over the strided q/k slice of the fused projection: RMS norm across heads,
    the weights, the rotary tables; torch's ops round after each step, the kernel once."""
    grid, heads, dh = (4, 8, 8), 4, 32
    d = heads * dh
    g = torch.Generator().manual_seed(3)
    qkv = (2 * torch.randn(2, math.prod(grid), 3 * d, generator=g)).bfloat16()
    qk = qkv[..., : 2 * d].unflatten(-1, (2, d))  # (B, S, 2, D), rows 3D apart
    norms = [torch.nn.RMSNorm(d, eps=1e-6) for _ in "qk"]
    with torch.no_grad():
        for n in norms:
            n.weight.copy_(1 + 0.3 * torch.randn(d, generator=g))
    norms = [n.bfloat16() for n in norms]
    cos, sin = (t.bfloat16() for t in rope_rotation(rope_tables(grid, dh, 1e4, "cpu")))
    weight = torch.stack([n.weight for n in norms])
    with torch.inference_mode():
        got = kernels.norm_rotate(qk, weight, 1e-6, cos, sin).float()
        want = rotate(qk_norm_pair(qk, *norms).flatten(-2).unflatten(-1, (2 * heads, dh)), cos, sin)
    want = want.float().flatten(-2).unflatten(-1, (2, d))
    assert got.shape == want.shape == (2, math.prod(grid), 2, d)
    assert (got - want).abs().max() < 2e-2 * want.abs().max()
    assert (got - want).norm() < 5e-3 * want.norm()  # torch's own bf16 roundings
    # Without tables it is the norm alone (the cross-attention's q), as model.dit.qk_norm.
    q = qk[:, :, 0]
    with torch.inference_mode():
        alone = kernels.norm_rotate(q.unsqueeze(2), norms[0].weight[None], 1e-6).squeeze(2)
        plain = qk_norm_pair(qk, *norms)[:, :, 0]
    assert (alone.float() - plain.float()).norm() < 5e-3 * plain.float().norm()


def test_layer_norm_modulate_equals_the_norm_then_each_frames_modulation(kernel):
    g = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(2, 6 * 40, 64, generator=g) + 1).bfloat16()  # 6 frames of 40 tokens
    mod = (0.5 * torch.randn(2, 6, 2, 64, generator=g)).bfloat16()
    shift, scale = mod.unbind(2)  # (B, F, D) each, strided like the model's
    norm = torch.nn.LayerNorm(64, elementwise_affine=False, eps=1e-6)
    with torch.inference_mode():
        got = kernels.layer_norm_modulate(x, shift, scale, 1e-6).float()
        want = modulate(
            per_frame(norm(x.float()), 6), shift[:, :, None].float(), scale[:, :, None].float()
        )
    want = want.flatten(1, 2)
    assert (got - want).abs().max() < 2e-2 * want.abs().max()
    assert (got - want).norm() < 5e-3 * want.norm()  # one bf16 rounding: ~0.2 %


def test_gelu_matches_torchs_tanh_gelu_in_place_with_a_tail(kernel):
    g = torch.Generator().manual_seed(5)
    x = torch.cat([4 * torch.randn(1000, generator=g), torch.tensor([-90.0, -8, 0, 8, 90])])
    x = x.bfloat16()  # 1005 values: the last 13 go through the masked tail
    want = torch.nn.functional.gelu(x.float(), approximate="tanh")
    y = x.clone()
    with torch.inference_mode():
        out = kernels.gelu_tanh_(y)
    assert out.data_ptr() == y.data_ptr()  # in place
    assert (y.float() - want).abs().max() <= 1e-2 * want.abs().max()  # bf16's step at 90
    assert torch.allclose(y.float(), want, rtol=1e-2, atol=1e-2)


def test_kernel_applies_only_where_it_can(kernel, monkeypatch):
    q = torch.randn(1, 64, 2, 32).bfloat16()
    with torch.inference_mode():
        assert kernels.attention(q, q, q, None) is not None
        assert kernels.attention(q.float(), q.float(), q.float(), None) is None  # fp32
        assert kernels.attention(q[:, :62], q, q, None) is None  # not a multiple of 4 queries
        narrow = q[..., :16]
        assert kernels.attention(narrow, narrow, narrow, None) is None  # heads of 16
    assert kernels.attention(q, q, q, None) is None  # autograd on: torch's path
    monkeypatch.setenv(kernels.ENV, "0")
    assert kernels.unavailable() == f"{kernels.ENV}=0 in the environment"


def test_model_in_bf16_runs_the_kernel_and_matches_torchs_path(kernel, monkeypatch):
    """The `cpu` size in bf16 takes the kernel for the windows and the text in every block,
    and its output matches torch's path (same weights and inputs) to bf16 rounding."""
    cfg = CONFIGS["cpu"]
    torch.manual_seed(0)
    net = StreamDiT(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    net = net.bfloat16()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.latent_channels, 4, 32, 32, generator=g).bfloat16()
    t, text = torch.rand(1, 4, generator=g), torch.randn(1, 7, cfg.text_dim, generator=g)
    calls = []

    def counted(q, k, v, mask, scale):
        calls.append((q.shape[1], k.shape[1]))  # (queries, keys) per group
        return kernel.attention(q, k, v, mask, scale)

    ops = SimpleNamespace(
        attention=counted,
        norm_rotate=kernel.norm_rotate,
        layer_norm_modulate=kernel.layer_norm_modulate,
        gelu_tanh_=kernel.gelu_tanh_,
    )
    monkeypatch.setattr(kernels, "load", lambda: ops)
    with torch.inference_mode():
        fused = net(x, t, text.bfloat16()).float()
    windows, cross = (math.prod(cfg.window),) * 2, (4 * 16 * 16, 7)
    assert calls == [windows, cross] * cfg.depth
    monkeypatch.setattr(kernels, "load", lambda: None)
    with torch.inference_mode():
        sdpa = net(x, t, text.bfloat16()).float()
    assert (fused - sdpa).norm() < 2e-2 * sdpa.norm()
