import math

import attention_reference as reference
import pytest
import torch

from model import CONFIGS, StreamDiT, kernels
from model.attention import (
    plan_windows,
    rope_tables,
    to_token_order,
    to_window_order,
    window_layout,
    window_mask,
)


@pytest.fixture(scope="module")
def kernel():
    """The compiled kernel; the tests skip on machines where it cannot run (no AVX-512 BF16
    or no C++ compiler), as the model then keeps torch's path."""
    if kernels.load() is None:
        pytest.skip(f"CPU attention kernel unavailable: {kernels.unavailable() or 'no build'}")
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
        out = kernels.window_attention(qk, v_rows, layout.mask, plan.window_tokens)
        got = to_token_order(out, layout).float()
    want = reference.window_attention(
        q.float(), k.float(), v.float(), plan, window_mask(plan, "cpu")
    )
    # bf16 inputs in both; the kernel rounds its softmax weights and output to bf16 (~0.2 %).
    assert (got - want).norm() < 1e-2 * want.norm()
    assert (got - want).abs().max() < 3e-2 * want.abs().max()


def test_window_kernel_applies_only_where_it_can(kernel, monkeypatch):
    _, plan, layout, qk, v_rows = _windows((4, 8, 16), (2, 4, 8), False, 1, 4, 32)
    lw = plan.window_tokens
    with torch.inference_mode():
        assert kernels.window_attention(qk, v_rows, None, lw) is not None
        assert kernels.window_attention(qk.float(), v_rows.float(), None, lw) is None  # fp32
        assert kernels.window_attention(qk[:, :32], v_rows[:, :32], None, 32) is None  # 32 tokens
    assert kernels.window_attention(qk, v_rows, None, lw) is None  # autograd on: torch's path
    monkeypatch.setenv(kernels.ENV, "0")
    assert kernels.unavailable() == f"{kernels.ENV}=0 in the environment"


def test_model_in_bf16_runs_the_kernel_and_matches_torchs_path(kernel, monkeypatch):
    """The `cpu` size in bf16 takes the kernel in every block, and its output matches the
    SDPA path's (same weights and inputs) to bf16 rounding."""
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

    def counted(*args):
        calls.append(args[3])
        return kernel(*args)

    monkeypatch.setattr(kernels, "load", lambda: counted)
    with torch.inference_mode():
        fused = net(x, t, text.bfloat16()).float()
    assert calls == [math.prod(cfg.window)] * cfg.depth
    monkeypatch.setattr(kernels, "load", lambda: None)
    with torch.inference_mode():
        sdpa = net(x, t, text.bfloat16()).float()
    assert (fused - sdpa).norm() < 2e-2 * sdpa.norm()
