"""training/objective.py: per-chunk noise levels, mixed chunk sizes, masked loss."""

from __future__ import annotations

import pytest
import torch

from model import flow
from model.partition import chunk_size_choices
from training.objective import (
    NoiseDraw,
    draw_noise,
    flow_matching_loss,
    motion_weights,
    noised,
    resolve_chunk_sizes,
    step_generator,
)


@pytest.mark.parametrize("ref_frames", [0, 2])
def test_each_chunk_draws_its_own_band(ref_frames):
    frames = 8 + ref_frames
    sizes = resolve_chunk_sizes(frames, ref_frames, [])
    assert sizes == chunk_size_choices(frames, ref_frames) and sizes[-1] == 8  # c = B included
    draw = draw_noise((400, 2, frames, 2, 2), sizes, ref_frames, 0.0, step_generator(0, 0, 0))
    assert set(draw.chunk_sizes.tolist()) == set(sizes)  # every size is trained
    for times, c in zip(draw.times, draw.chunk_sizes.tolist(), strict=True):
        assert torch.all(times[:ref_frames] == 1.0)  # reference frames stay clean
        chunks = times[ref_frames:].view(-1, c)  # (N, c): one time per chunk
        assert torch.all(chunks == chunks[:, :1])
        n = chunks.shape[0]
        # Oldest chunk first: chunk i counted from the noisy end lies in [(i-1)/N, i/N).
        for k, t in enumerate(chunks[:, 0].tolist()):
            i = n - k
            assert (i - 1) / n <= t < i / n + 1e-6


def test_configured_mixture_is_checked():
    assert resolve_chunk_sizes(8, 0, [1, 8]) == [1, 8]
    with pytest.raises(ValueError, match=r"flow.chunk_sizes \[3\]"):
        resolve_chunk_sizes(8, 0, [3])


def test_draws_depend_only_on_seed_step_rank():
    def draw(seed, step, rank):
        return draw_noise((2, 1, 4, 2, 2), [1, 2, 4], 0, 0.5, step_generator(seed, step, rank))

    a, b = draw(0, 3, 1), draw(0, 3, 1)
    assert torch.equal(a.times, b.times) and torch.equal(a.noise, b.noise)
    assert not torch.equal(draw(0, 4, 1).noise, a.noise)
    assert not torch.equal(draw(0, 3, 0).noise, a.noise)


def test_text_dropout_rate():
    draw = draw_noise((4000, 1, 2, 1, 1), [2], 0, 0.1, step_generator(1, 0, 0))
    assert 0.08 < draw.drop_text.float().mean() < 0.12


def test_loss_ignores_the_clean_reference_frames():
    torch.manual_seed(0)
    latents = torch.randn(2, 3, 6, 4, 4)
    draw = draw_noise(tuple(latents.shape), [2, 4], 2, 0.0, step_generator(0, 0, 0))
    text = torch.zeros(2, 1, 8)

    def net_with_ref_output(value):
        def net(x, t, text, mask):
            out = torch.zeros_like(x)
            out[:, :, :2] = value  # whatever the model says on the references
            return out

        return net

    a = flow_matching_loss(net_with_ref_output(0.0), latents, draw, text, None, 1e-5, 2)
    b = flow_matching_loss(net_with_ref_output(100.0), latents, draw, text, None, 1e-5, 2)
    assert torch.allclose(a, b)
    c = flow_matching_loss(net_with_ref_output(100.0), latents, draw, text, None, 1e-5, 0)
    assert c > a * 10


def test_perfect_velocity_gives_zero_loss():
    latents = torch.randn(2, 3, 4, 2, 2)
    draw = draw_noise(tuple(latents.shape), [1, 4], 0, 0.0, step_generator(0, 0, 0))
    assert isinstance(draw, NoiseDraw)

    def oracle(x, t, text, mask):
        return latents - (1 - 1e-5) * draw.noise

    loss = flow_matching_loss(oracle, latents, draw, torch.zeros(2, 1, 8), None, 1e-5, 0)
    assert loss < 1e-10


# --- paired examples (video to video) -------------------------------------------------------


def test_paired_draws_follow_the_share_and_the_entry_range():
    gen = step_generator(0, 3, 0)
    draw = draw_noise((2000, 2, 8, 2, 2), [1, 2], 0, 0.0, gen, paired=0.25, entry=(0.2, 0.6))
    assert 0.2 < draw.paired.float().mean() < 0.3
    assert draw.entry.min() >= 0.2 and draw.entry.max() <= 0.6
    plain = draw_noise((2000, 2, 8, 2, 2), [1, 2], 0, 0.0, step_generator(0, 3, 0))
    assert not plain.paired.any()
    # Paired draws come last: the times and noise of a step do not depend on them.
    assert torch.equal(plain.times, draw.times) and torch.equal(plain.noise, draw.noise)


def test_noised_puts_paired_frames_after_entry_on_the_bridge_and_leaves_the_rest_plain():
    g = torch.Generator().manual_seed(0)
    x0, x1, source = (torch.randn(2, 3, 4, 2, 2, generator=g) for _ in range(3))
    times = torch.tensor([[0.2, 0.5, 0.7, 1.0], [0.2, 0.5, 0.7, 1.0]])
    paired, entry = torch.tensor([True, False]), torch.tensor([0.5, 0.5])
    x_t, v = noised(x0, x1, times, 0.0, source, paired, entry)
    plain_x, plain_v = noised(x0, x1, times, 0.0)
    start = flow.bridge_start(x0[0], source[0], 0.5, 0.0)
    for f, t in enumerate(times[0].tolist()):
        if t < 0.5:  # before entry: the plain path, as for the unpaired example
            assert torch.equal(x_t[0, :, f], plain_x[0, :, f])
        else:
            want_x, want_v = flow.bridge(start, x1[0], t, 0.5)
            assert torch.allclose(x_t[0, :, f], want_x[:, f], atol=1e-6)
            assert torch.allclose(v[0, :, f], want_v[:, f], atol=1e-5)
    assert torch.equal(x_t[1], plain_x[1]) and torch.equal(v[1], plain_v[1])


def test_paired_loss_on_clips_without_a_source_is_the_plain_loss():
    def net(x, t, text, mask):  # any fixed function of the input point
        return 0.5 * x

    latents = torch.randn(3, 2, 8, 2, 2, generator=torch.Generator().manual_seed(4))
    gen = step_generator(1, 1, 0)
    draw = draw_noise(tuple(latents.shape), [1, 2, 4, 8], 0, 0.0, gen, paired=1.0)
    text = torch.zeros(3, 1, 4)
    plain = flow_matching_loss(net, latents, draw, text, None, 0.0, 0)
    paired = flow_matching_loss(net, latents, draw, text, None, 0.0, 0, sources=latents)
    assert draw.paired.all() and torch.allclose(plain, paired, rtol=1e-4)
    moved = flow_matching_loss(net, latents, draw, text, None, 0.0, 0, sources=-latents)
    assert not torch.allclose(plain, moved)


# --- motion-weighted loss -------------------------------------------------------------------


def moving_dot(frames: int = 4, size: int = 8) -> torch.Tensor:
    """(1, 2, F, H, W): a static background of 0.5 and a dot of 3 moving one pixel right
    per frame along row 4."""
    x = torch.full((1, 2, frames, size, size), 0.5)
    for f in range(frames):
        x[:, :, f, 4, 1 + f] = 3.0
    return x


def test_motion_weights_favour_where_the_clip_changes_and_keep_each_frames_mean():
    x = moving_dot()
    w = motion_weights(x, 2.0)
    assert w.shape == (1, 4, 8, 8)
    assert torch.allclose(w.mean(dim=(2, 3)), torch.ones(1, 4))
    # Frame 2: the dot left column 2 and reached column 3; both weigh ~17x the background.
    assert w[0, 2, 4, 2] > 10 * w[0, 2, 0, 0] and w[0, 2, 4, 3] > 10 * w[0, 2, 0, 0]
    assert torch.equal(motion_weights(x, 0.0), torch.ones(1, 4, 8, 8))
    static = torch.full((1, 2, 4, 8, 8), 0.5)
    assert torch.allclose(motion_weights(static, 2.0), torch.ones(1, 4, 8, 8))


def test_motion_weight_raises_the_loss_of_errors_on_moving_pixels_only():
    x = moving_dot()
    draw = draw_noise(tuple(x.shape), [4], 0, 0.0, step_generator(0, 0, 0))
    oracle = x - (1 - 1e-5) * draw.noise

    def net_off_at(rows):
        def net(x_t, t, text, mask):
            out = oracle.clone()
            out[:, :, :, rows] += 1.0  # wrong by 1 on these rows of every frame
            return out

        return net

    text = torch.zeros(1, 1, 8)

    def loss(net, weight):
        return flow_matching_loss(net, x, draw, text, None, 1e-5, 0, motion_weight=weight)

    on_dot, off_dot = net_off_at(4), net_off_at(0)
    assert loss(on_dot, 2.0) > 5 * loss(on_dot, 0.0)
    assert loss(off_dot, 2.0) < loss(off_dot, 0.0)
