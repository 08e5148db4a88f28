import gc
import math
from pathlib import Path

import attention_reference as reference
import pytest
import torch
from torch import nn

import model.dit as dit_module
from model import CONFIGS, StreamDiT, kernels
from model.attention import plan_windows, rope_tables
from model.bundle import load_bundle, read_bundle_info
from model.config import FULL_WINDOW, Prediction, TimeInput
from model.dit import (
    CrossAttention,
    fast_bf16_cpu,
    few_keys_as_matmuls,
    inference_dtype,
    linear,
    packed_weight,
    qk_norm,
    qk_norm_pair,
    window_layouts,
)

SHIPPED = Path(__file__).parents[2] / "model" / "weights" / "streamdit-cpu.safetensors"


def _random_net(cfg, seed=0):
    """A network with every weight random (the real init zeroes the gates and the head)."""
    torch.manual_seed(seed)
    net = StreamDiT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


def _inputs(cfg, b, f, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.latent_channels, f, h, w, generator=g)
    t = torch.rand(b, f, generator=g)
    text = torch.randn(b, 5, cfg.text_dim, generator=g)
    return x, t, text


TINY = CONFIGS["tiny"]


@pytest.mark.parametrize("grid", [(4, 16, 16), (1, 8, 8), (3, 10, 14), (6, 16, 8)])
def test_output_shape_matches_input_for_several_grids(grid):
    net = _random_net(TINY)
    x, t, text = _inputs(TINY, 2, *grid)
    with torch.no_grad():
        v = net(x, t, text)
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()


def test_fresh_network_is_the_zero_map_adaln_zero():
    net = StreamDiT(TINY)
    x, t, text = _inputs(TINY, 1, 4, 16, 16)
    assert torch.count_nonzero(net(x, t, text)) == 0


def test_modulation_is_per_frame():
    # Windows one frame deep: no attention across frames, so frame f depends on t[f] only.
    cfg = TINY.replace(window=(1, 8, 8))
    net = _random_net(cfg)
    x, t, text = _inputs(cfg, 1, 4, 16, 16)
    t2 = t.clone()
    t2[0, 2] = 1.0 - t2[0, 2]
    with torch.no_grad():
        a, b = net(x, t, text), net(x, t2, text)
    changed = (a - b).abs().amax(dim=(0, 1, 3, 4))  # per frame
    assert changed[2] > 1e-3
    assert torch.all(changed[[0, 1, 3]] == 0)


def test_scalar_time_equals_constant_per_frame_time():
    net = _random_net(TINY)
    x, _, text = _inputs(TINY, 2, 4, 16, 16)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.allclose(net(x, t, text), net(x, t[:, None].expand(2, 4), text))


def test_batch_elements_are_independent():
    net = _random_net(TINY)
    x, t, text = _inputs(TINY, 2, 4, 16, 16)
    x2 = x.clone()
    x2[1] = torch.randn_like(x2[1])
    with torch.no_grad():
        assert torch.allclose(net(x, t, text)[0], net(x2, t, text)[0], atol=1e-5)


def test_text_mask_hides_padding_tokens():
    net = _random_net(TINY)
    x, t, text = _inputs(TINY, 1, 4, 16, 16)
    mask = torch.tensor([[True, True, True, False, False]])
    text2 = text.clone()
    text2[:, 3:] = 100.0
    with torch.no_grad():
        assert torch.allclose(net(x, t, text, mask), net(x, t, text2, mask), atol=1e-5)
        assert not torch.allclose(net(x, t, text), net(x, t, text2), atol=1e-3)


@pytest.mark.parametrize(
    "changes",
    [
        {"qk_norm": False},
        {"adaln_single": False},
        {"cross_attn_norm": False},
        {"patch_size": (2, 2, 2)},
        {"patch_size": (1, 1, 1), "window": (2, 8, 8)},
        {"head_table": True, "ffn_dim": 40, "window": FULL_WINDOW},
        {"time_input": TimeInput.NOISE_AT_ONE, "prediction": Prediction.NOISE_MINUS_DATA},
    ],
    ids=str,
)
def test_variants_are_config_switches(changes):
    cfg = TINY.replace(**changes)
    net = _random_net(cfg)
    x, t, text = _inputs(cfg, 1, 4, 16, 16)
    with torch.no_grad():
        v = net(x, t, text)
    assert v.shape == x.shape and torch.isfinite(v).all()
    names = set(dict(net.named_parameters()))
    assert ("blocks.0.modulation" in names) == cfg.adaln_single
    assert ("blocks.0.adaLN_modulation.1.weight" in names) == (not cfg.adaln_single)
    assert ("blocks.0.self_attn.norm_q.weight" in names) == cfg.qk_norm
    assert ("blocks.0.norm3.weight" in names) == cfg.cross_attn_norm
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    assert shapes["blocks.0.ffn.0.weight"] == (cfg.ffn_dim or int(cfg.dim * cfg.mlp_ratio), cfg.dim)
    assert (shapes.get("head.modulation") == (1, 2, cfg.dim)) == cfg.head_table
    assert ("head.modulation.1.weight" in shapes) == (not cfg.head_table)


# The tiny network's output before the Wan switches existed (torch 2.13, x86-64, one thread):
# out.flatten()[::16] and out.abs().sum() for _random_net(TINY) on
# _inputs(TINY, 1, 2, 4, 8). The switches' defaults must leave it unchanged (bit for bit on
# the machine that recorded it; the tolerance only absorbs other CPUs' rounding).
REFERENCE_SLICE = [
    0.649837, 0.863802, 2.235157, 2.440102, -6.327868, -6.52784, -4.202284, -4.10994,
    -0.606675, -0.702399, -0.677232, -0.666983, -1.194149, -1.361687, 0.295017, 0.332416,
]  # fmt: skip
REFERENCE_ABS_SUM = 754.0601806640625


def test_default_path_reproduces_the_output_recorded_before_the_wan_switches():
    net = _random_net(TINY)
    x, t, text = _inputs(TINY, 1, 2, 4, 8)
    with torch.no_grad():
        out = net(x, t, text)
    torch.testing.assert_close(
        out.flatten()[::16], torch.tensor(REFERENCE_SLICE), atol=2e-6, rtol=1e-6
    )
    assert out.abs().sum().item() == pytest.approx(REFERENCE_ABS_SUM, rel=1e-6)


def test_the_shipped_checkpoint_loads_with_every_wan_switch_off():
    """Its metadata predates the switches: they take their defaults (our architecture)."""
    cfg = read_bundle_info(SHIPPED).dit_config
    assert cfg == CONFIGS["cpu"]
    assert (cfg.ffn_dim, cfg.head_table) == (0, False)
    assert (cfg.time_input, cfg.prediction) == (TimeInput.DATA_AT_ONE, Prediction.VELOCITY)
    dit = load_bundle(SHIPPED).dit
    x, t, text = _inputs(cfg, 1, 2, 8, 8)
    with torch.no_grad():
        assert torch.isfinite(dit(x, t, text)).all()


def test_wan_time_and_sign_conventions():
    """Wan reads 1000 (1 - t) and predicts eps - x0: with the same weights, the Wan switches
    give minus the output of our network at time 1 - t."""
    ours = _random_net(TINY)
    wan = StreamDiT(
        TINY.replace(time_input=TimeInput.NOISE_AT_ONE, prediction=Prediction.NOISE_MINUS_DATA)
    ).eval()
    wan.load_state_dict(ours.state_dict())
    x, t, text = _inputs(TINY, 2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(wan(x, t, text), -ours(x, 1 - t, text), atol=1e-4, rtol=1e-4)


def test_head_table_adds_the_raw_time_embedding():
    cfg = TINY.replace(head_table=True)
    net = _random_net(cfg)
    x, t, text = _inputs(cfg, 1, 4, 8, 8)
    with torch.no_grad():
        a = net(x, t, text)
        net.head.modulation[0, 1] += 1.0  # scale + 1 on every frame: a different map
        b = net(x, t, text)
    assert (a - b).abs().max() > 1e-2


def test_bfloat16_forward_runs():
    net = _random_net(TINY).to(torch.bfloat16)
    x, t, text = _inputs(TINY, 1, 4, 16, 16)
    with torch.no_grad():
        v = net(x.bfloat16(), t, text)
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_query_and_key_norms_together_equal_them_apart_bit_for_bit(dtype, monkeypatch):
    monkeypatch.setattr(kernels, "load", lambda: None)  # torch's ops (the kernel: test_kernels)
    attn = _random_net(TINY).blocks[0].self_attn.to(dtype)
    d = TINY.dim
    qkv = torch.randn(2, 40, 3 * d, generator=torch.Generator().manual_seed(3)).to(dtype)
    qk = qkv[..., : 2 * d].unflatten(-1, (2, d))  # strided, as in the forward
    with torch.no_grad():
        pair = qk_norm_pair(qk, attn.norm_q, attn.norm_k)
        assert torch.equal(pair[..., 0, :], qk_norm(qk[..., 0, :], attn.norm_q))
        assert torch.equal(pair[..., 1, :], qk_norm(qk[..., 1, :], attn.norm_k))
    plain = StreamDiT(TINY.replace(qk_norm=False)).blocks[0].self_attn
    assert qk_norm_pair(qk, plain.norm_q, plain.norm_k) is qk  # no norms: no copy


def test_bf16_forward_stays_within_bf16_rounding_of_the_fp32_forward():
    """The shipped size in its CPU dtype (bf16 where the CPU has it) against float32, over
    shifted, masked windows: the fast paths may only round differently."""
    cfg = CONFIGS["cpu"]
    torch.manual_seed(0)
    net = StreamDiT(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)  # as model.bench: every path busy, activations O(1)
    x, t, text = _inputs(cfg, 1, 4, 32, 32)  # 4 x 16 x 16 tokens: 4 windows, a masked shift
    with torch.no_grad():
        full = net(x, t, text)
        half = net.to(torch.bfloat16)(x.bfloat16(), t, text.bfloat16()).float()
    # bf16's own rounding gives ~0.9 % here (eps 0.4 %, six blocks); a wrong op gives O(1).
    assert (half - full).abs().max() < 2e-2 * full.abs().max()


def test_cross_attention_in_bf16_takes_matmuls_and_matches_float32():
    """bf16 CPU inference attends to the text by two matmuls instead of SDPA: same map."""
    torch.manual_seed(0)
    attn = CrossAttention(64, 4, qk_norm=True).eval()  # default init: O(1) scores
    g = torch.Generator().manual_seed(7)
    x, context = torch.randn(2, 96, 64, generator=g), 3 * torch.randn(2, 9, 64, generator=g)
    keep = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    mask = torch.zeros(2, 1, 1, 9).masked_fill(~keep[:, None, None, :], float("-inf"))
    with torch.no_grad():
        assert few_keys_as_matmuls(x.bfloat16()) and not few_keys_as_matmuls(x)
        full = attn(x, context, mask)
        half = attn.bfloat16()(x.bfloat16(), context.bfloat16(), mask.bfloat16()).float()
    assert (half - full).abs().max() < 2e-2 * full.abs().max()


def test_packed_bf16_weights_give_the_same_numbers_and_follow_weight_updates():
    """oneDNN's blocked weights are made once per weight and version: bit-identical outputs,
    a new pack after an in-place update, and no entry left once the weight is gone."""
    layer = nn.Linear(64, 96).bfloat16()
    x = torch.randn(2, 50, 64).bfloat16()

    def unpacked(w, b):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    with torch.no_grad():
        assert torch.equal(linear(x, layer.weight, layer.bias), unpacked(layer.weight, layer.bias))
        assert packed_weight(layer.weight) is packed_weight(layer.weight)  # cached
        layer.weight.mul_(2)  # an in-place update bumps the version
        assert torch.equal(linear(x, layer.weight, layer.bias), unpacked(layer.weight, layer.bias))
        fused = packed_weight(layer.weight, layer.weight)  # stacked parts: an entry of its own
        assert fused.shape == (192, 64)
    entries = len(dit_module._PACKED)
    del layer, fused
    gc.collect()
    assert len(dit_module._PACKED) == entries - 2


def test_wrong_inputs_give_clear_errors():
    net = StreamDiT(TINY)
    x, t, text = _inputs(TINY, 1, 4, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, 4, F, H, W\)"):
        net(x[:, :3], t, text)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        net(x[..., :15], t, text)
    with pytest.raises(ValueError, match="t must be"):
        net(x, t[:, :3], text)
    with pytest.raises(ValueError, match="text must be"):
        net(x, t, text[..., :10])


def test_presets_build_and_the_4b_count_on_meta():
    counts = {}
    for name, cfg in CONFIGS.items():
        with torch.device("meta"):
            net = StreamDiT(cfg)
        counts[name] = sum(p.numel() for p in net.parameters())
    assert counts["tiny"] < 1e6
    assert 1e6 <= counts["cpu"] <= 3e6  # the shipped model: 1.63 M
    assert 3.6e9 <= counts["4b"] <= 4.4e9


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("grid", [(4, 8, 8), (3, 5, 6)])  # exact tiling, and padding
@pytest.mark.parametrize("grad", [False, True])  # oneDNN inference path, autograd path
def test_self_attention_equals_the_previous_implementation(grid, shifted, grad):
    """Fused qkv, window order by row gather, rotation with folded signs: same numbers as
    the frozen implementation (tests/attention_reference.py) in float32."""
    block = _random_net(TINY).blocks[int(shifted)]
    attn = block.self_attn
    b, d = 2, TINY.dim
    x = torch.randn(b, math.prod(grid), d, generator=torch.Generator().manual_seed(1))
    plan = plan_windows(grid, TINY.window, shifted)
    layouts = window_layouts(grid, TINY.window, TINY.head_dim, TINY.rope_theta, b,
                             torch.float32, x.device, False)  # fmt: skip
    rope = rope_tables(grid, TINY.head_dim, TINY.rope_theta, x.device)
    with torch.set_grad_enabled(grad):
        new = attn(x, layouts[shifted])
        old = reference.self_attention(attn, x, plan, rope)
    assert torch.allclose(new, old, atol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_full_window_skips_the_gathers_with_the_same_numbers(grad):
    """A window covering the grid is full attention: token order, no gather, same result."""
    grid = (3, 5, 6)
    attn = _random_net(TINY).blocks[1].self_attn
    x = torch.randn(2, math.prod(grid), TINY.dim, generator=torch.Generator().manual_seed(2))
    plan = plan_windows(grid, FULL_WINDOW, shifted=True)
    assert plan.num_windows == 1 and not plan.needs_mask
    layouts = window_layouts(grid, FULL_WINDOW, TINY.head_dim, TINY.rope_theta, 2,
                             torch.float32, x.device, False)  # fmt: skip
    rope = rope_tables(grid, TINY.head_dim, TINY.rope_theta, x.device)
    with torch.set_grad_enabled(grad):
        new = attn(x, layouts[1])
        old = reference.self_attention(attn, x, plan, rope)
    assert torch.allclose(new, old, atol=1e-5)


def test_inference_path_equals_the_autograd_path():
    """Under no_grad the linears take oneDNN's fused bias + GELU; same numbers in float32."""
    net = _random_net(CONFIGS["tiny"])
    x, t, text = _inputs(TINY, 2, 3, 10, 14)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        fast = net(x, t, text, mask)
    plain = net(x, t, text, mask).detach()
    assert torch.allclose(fast, plain, atol=1e-5)


def test_cached_layouts_from_inference_mode_do_not_break_training():
    net = _random_net(TINY)
    x, t, text = _inputs(TINY, 1, 4, 16, 16)
    with torch.inference_mode():
        net(x, t, text)
    net(x, t, text).square().mean().backward()  # would raise on an inference tensor
    assert net.blocks[0].self_attn.q.weight.grad.abs().sum() > 0


def test_a_frozen_teacher_runs_inside_bf16_autocast():
    """Distillation in bf16 calls the frozen teacher without gradients inside autocast: the
    fused oneDNN linear must step aside there (it would get bf16 inputs and fp32 weights)."""
    torch.manual_seed(0)
    net = StreamDiT(TINY)
    x, t, text = _inputs(TINY, 1, 4, 16, 16)
    with torch.no_grad():
        plain = net(x, t, text)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net(x, t, text)
    torch.testing.assert_close(mixed.float(), plain, atol=5e-2, rtol=5e-2)


def test_inference_dtype_is_bf16_only_where_it_is_fast():
    cpu = torch.device("cpu")
    fast = torch.bfloat16 if fast_bf16_cpu() else torch.float32
    assert inference_dtype(cpu, CONFIGS["cpu"]) == fast
    assert inference_dtype(cpu, TINY) == torch.float32  # too narrow to gain from bf16
    assert inference_dtype(torch.device("meta"), CONFIGS["cpu"]) == torch.float32
