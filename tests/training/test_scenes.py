"""training/scenes.py + SyntheticScenes: captions say what the pixels show."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from training.data import SyntheticScenes
from training.scenes import COLORS, Direction, held_out_shape, plan_scene

PALETTE = np.array(list(COLORS.values()), np.float32)  # (K, 3)
NAMES = list(COLORS)


def color_masks(frames: np.ndarray) -> np.ndarray:
    """(F, H, W) index of the palette colour each pixel is close to, -1 for background."""
    dist = np.linalg.norm(frames[..., None, :].astype(np.float32) - PALETTE, axis=-1)
    nearest = dist.argmin(-1)
    return np.where(dist.min(-1) < 40, nearest, -1)


def parse_caption(caption: str) -> list[tuple[str, str]]:
    """[(colour, direction)] for every object the caption names."""
    colors = "|".join(NAMES)
    return re.findall(rf"\b({colors}) \w+ moving (left|right|up|down)", caption)


@pytest.mark.parametrize("max_objects", [1, 3])
def test_caption_colors_and_directions_read_back_from_pixels(max_objects):
    data = SyntheticScenes(frames=12, size=96, seed=7, max_objects=max_objects)
    for index in range(25):
        frames, caption = data.render(index)
        named = parse_caption(caption)
        assert named, caption
        masks = color_masks(frames)
        # The colours on screen are exactly the colours named (a few anti-aliased edge
        # pixels may blend into other palette entries, hence the area threshold).
        counts = np.bincount(masks[masks >= 0].ravel(), minlength=len(NAMES))
        seen = {NAMES[k] for k in np.flatnonzero(counts > 0.002 * masks.size)}
        assert seen == {c for c, _ in named}, (caption, seen)
        for color, direction in named:
            ys, xs = [], []
            for f in (0, len(frames) - 1):
                yy, xx = np.nonzero(masks[f] == NAMES.index(color))
                ys.append(yy.mean())
                xs.append(xx.mean())
            dx, dy = xs[1] - xs[0], ys[1] - ys[0]
            ex, ey = Direction(direction).vector
            along = dx * ex + dy * ey
            # Moves at least a few pixels the named way, and more along than across.
            assert along > 3 and along > abs(dx * ey + dy * ex), (caption, color, dx, dy)


def test_caption_wording():
    _, caption = SyntheticScenes(frames=8, size=64, seed=3, max_objects=1).render(0)
    assert re.fullmatch(
        r"(a )?[a-z ]+ moving (left|right|up|down) on a [a-z ]+ background", caption
    )


def test_deterministic_per_seed_and_index():
    a = SyntheticScenes(frames=8, size=64, seed=1)
    b = SyntheticScenes(frames=8, size=64, seed=1)
    clip, caption = a[5]
    clip2, caption2 = b[5]
    assert caption == caption2 and torch.equal(clip, clip2)
    assert not torch.equal(a[6][0], clip)
    assert not torch.equal(SyntheticScenes(frames=8, size=64, seed=2)[5][0], clip)


def test_clip_format():
    clip, caption = SyntheticScenes(frames=8, size=(48, 64), seed=0)[0]
    assert clip.shape == (3, 8, 48, 64) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1 and isinstance(caption, str)


def test_faster_than_1000_frames_per_second_at_256():
    data = SyntheticScenes(frames=16, size=256, seed=0, max_objects=3)
    data.render(0)  # warm up
    start, frames = time.perf_counter(), 0
    for index in range(1, 31):
        frames += len(data.render(index)[0])
    rate = frames / (time.perf_counter() - start)
    assert rate > 1000, f"{rate:.0f} frames/s"


def test_caption_articles_agree_with_the_next_word():
    data = SyntheticScenes(frames=8, size=32, seed=0, max_objects=3)
    captions = [data.scene(i).caption for i in range(300)]
    assert any(" orange " in c for c in captions)
    for caption in captions:
        assert not re.search(r"\ba [aeiou]", caption), caption


def test_training_never_draws_a_held_out_shape():
    rng = np.random.default_rng(0)
    drawn = set()
    for _ in range(2000):
        for obj in plan_scene(rng, frames=16).objects:
            assert obj.shape != held_out_shape(obj.color, obj.direction), obj
            drawn.add((obj.color, obj.direction, obj.shape))
    # Everything else still appears: 9 colours x 4 directions x 7 remaining shapes.
    assert len(drawn) == len(COLORS) * len(Direction) * 7
