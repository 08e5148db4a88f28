import itertools
import math

import attention_reference as reference
import pytest
import torch
import torch.nn.functional as F

from model.attention import (
    apply_rope,
    attend_windows,
    attention_as_matmuls,
    plan_windows,
    rope_rotation,
    rope_tables,
    rotate,
    window_layout,
    window_mask,
)


def _attend(q, k, v, plan):
    """The fast path on token-order q, k, v (B, L, Nh, Dh): layout, gather, SDPA, scatter."""
    rope = rope_tables(plan.grid, q.shape[-1], 10000.0, q.device)
    return attend_windows(q, k, v, window_layout(plan, rope, q.shape[0], q.dtype))


def _naive_mask(grid, window, shifted):
    """L x L allowed-pairs mask built from token coordinates alone, independently of the
    roll/pad/einops implementation: same window after the cyclic shift, and never across the
    wrap-around seam."""
    plan = plan_windows(grid, window, shifted)
    coords = list(itertools.product(*(range(g) for g in grid)))
    L = len(coords)
    mask = torch.zeros(L, L, dtype=torch.bool)
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            ok = True
            for ax in range(3):
                p, w, s = plan.padded[ax], plan.window[ax], plan.shift[ax]
                ra, rb = (a[ax] - s) % p, (b[ax] - s) % p  # rolled positions
                wrap_a, wrap_b = a[ax] < s, b[ax] < s  # came round from the start
                ok &= ra // w == rb // w and wrap_a == wrap_b
            mask[i, j] = ok
    return mask


def _reference(q, k, v, mask):
    """Full attention in float64 with an explicit mask. q, k, v: (B, L, Nh, Dh)."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))  # (B, Nh, L, Dh)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v  # (B, Nh, L, Dh)
    return out.transpose(1, 2).flatten(2)


def _qkv(grid, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = math.prod(grid)
    return [torch.randn(2, L, 2, 8, generator=g) for _ in range(3)]


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("grid", [(2, 4, 4), (3, 5, 6), (4, 8, 8)])
def test_window_covering_the_grid_is_full_attention(grid, shifted):
    q, k, v = _qkv(grid)
    plan = plan_windows(grid, (64, 64, 64), shifted)
    assert plan.num_windows == 1 and plan.shift == (0, 0, 0)
    out = _attend(q, k, v, plan)
    assert torch.allclose(out.double(), _reference(q, k, v, None), atol=1e-5)


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize(
    "grid,window", [((4, 8, 8), (2, 4, 4)), ((3, 6, 10), (2, 4, 4)), ((5, 4, 7), (4, 2, 3))]
)
def test_windows_equal_masked_full_attention(grid, window, shifted):
    """Covers exact tiling, padding (grid not a multiple of the window) and the shift."""
    q, k, v = _qkv(grid, seed=1)
    plan = plan_windows(grid, window, shifted)
    out = _attend(q, k, v, plan)
    expected = _reference(q, k, v, _naive_mask(grid, window, shifted))
    assert torch.allclose(out.double(), expected, atol=1e-5)


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize(
    "grid,window",
    [
        ((4, 8, 8), (2, 4, 4)),
        ((3, 6, 10), (2, 4, 4)),
        ((5, 4, 7), (4, 2, 3)),
        ((8, 16, 16), (4, 8, 8)),
    ],
)
def test_fast_window_attention_equals_the_previous_implementation(grid, window, shifted):
    """The row-gather layout against the frozen pad/roll/einops version, float32, 1e-5."""
    q, k, v = (t * 3 for t in _qkv(grid, seed=3))  # sharper softmax than unit scores
    plan = plan_windows(grid, window, shifted)
    old = reference.window_attention(q, k, v, plan, window_mask(plan, q.device))
    assert torch.allclose(_attend(q, k, v, plan), old, atol=1e-5)


def test_shifted_windows_never_mix_tokens_wrapped_around_an_edge():
    grid, window = (2, 8, 8), (2, 4, 4)
    plan = plan_windows(grid, window, shifted=True)
    assert plan.shift == (0, 2, 2)
    q, k, v = _qkv(grid, seed=2)
    out = _attend(q, k, v, plan)
    # Token (0, 0, 3) is rolled next to (0, 7, 3): same window, opposite edges of the grid.
    first, last = 0 * 64 + 0 * 8 + 3, 0 * 64 + 7 * 8 + 3
    k2, v2 = k.clone(), v.clone()
    k2[:, first] += 5.0
    v2[:, first] += 5.0
    out2 = _attend(q, k2, v2, plan)
    assert torch.equal(out[:, last], out2[:, last])  # the seam holds
    assert not torch.allclose(out[:, first], out2[:, first])  # the change is real
    # Without the mask they would have mixed: same rolled window.
    assert _naive_mask(grid, (2, 8, 8), False)[first, last]


def test_unshifted_exact_tiling_needs_no_mask():
    plan = plan_windows((4, 8, 8), (2, 4, 4), shifted=False)
    assert window_mask(plan, torch.device("cpu")) is None
    assert plan.num_windows == 8 and plan.window_tokens == 32


def test_rope_is_relative_dot_products_depend_on_offsets_only():
    grid, dh = (4, 6, 6), 24
    rope = rope_tables(grid, dh, 10000.0, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    base_q, base_k = torch.randn(dh, generator=g), torch.randn(dh, generator=g)
    L = math.prod(grid)
    q = apply_rope(base_q.expand(1, L, 1, dh), rope)[0, :, 0]  # same vector at every token
    k = apply_rope(base_k.expand(1, L, 1, dh), rope)[0, :, 0]

    def idx(f, h, w):
        return (f * 6 + h) * 6 + w

    # Same offset (1, 2, -1) at two places gives the same score.
    s1 = q[idx(0, 0, 3)] @ k[idx(1, 2, 2)]
    s2 = q[idx(2, 3, 4)] @ k[idx(3, 5, 3)]
    assert torch.allclose(s1, s2, atol=1e-4)
    assert torch.allclose(q.norm(dim=-1), base_q.norm().expand(L), atol=1e-4)


def test_rope_equals_the_previous_implementation():
    grid, dh = (3, 5, 6), 24
    rope = rope_tables(grid, dh, 10000.0, torch.device("cpu"))
    x = torch.randn(2, math.prod(grid), 3, dh, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(apply_rope(x, rope), reference.apply_rope(x, rope), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_swaps_pairs_exactly_as_the_flip_it_replaced(dtype):
    """The pair swap by two strided copies (faster than flip on a size-2 dim) gives the same
    numbers bit for bit, also with q and k stacked as extra heads."""
    grid, dh = (2, 4, 6), 16
    cos, sin = (t.to(dtype) for t in rope_rotation(rope_tables(grid, dh, 10000.0, "cpu")))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, math.prod(grid), 2 * 3, dh, generator=g).to(dtype)
    flipped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    assert torch.equal(rotate(x, cos, sin), torch.addcmul(x * cos, flipped, sin))


def test_attention_as_matmuls_equals_sdpa_with_and_without_a_mask():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 3, 50, 8, generator=g)
    k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(2))
    hidden = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])  # padding of sample 1
    mask = torch.zeros(2, 1, 1, 7).masked_fill(hidden[:, None, None, :], float("-inf"))
    for m in (None, mask):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        torch.testing.assert_close(attention_as_matmuls(q, k, v, m), expected)
    v_pad = v.clone()
    v_pad[1, :, 4:] = 100.0  # masked keys' values never reach the output
    torch.testing.assert_close(
        attention_as_matmuls(q, k, v_pad, mask), attention_as_matmuls(q, k, v, mask)
    )


def test_layout_mask_is_additive_in_the_model_dtype_and_only_where_needed():
    rope = rope_tables((4, 8, 8), 16, 10000.0, torch.device("cpu"))
    plain = window_layout(plan_windows((4, 8, 8), (2, 4, 4), False), rope, 2, torch.bfloat16)
    assert plain.mask is None  # exact tiling, no shift: SDPA runs without a mask
    shifted = window_layout(plan_windows((4, 8, 8), (2, 4, 4), True), rope, 2, torch.bfloat16)
    assert shifted.mask.dtype == torch.bfloat16 and shifted.mask.shape == (16, 1, 32, 32)
    assert set(shifted.mask.unique().tolist()) == {0.0, float("-inf")}
    assert sorted(shifted.scatter.tolist()) == sorted(set(shifted.scatter.tolist()))
