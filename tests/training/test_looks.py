"""training/looks.py and training/styles.py: named looks on synthetic images, the style corpus."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from training.config import DataSection
from training.data import (
    CROP_MULTIPLE,
    Crops,
    Mixture,
    SyntheticScenes,
    WithSources,
    build_dataset,
    to_clip_tensor,
)
from training.looks import PLAIN_CAPTION, Look, apply_look, apply_look_clip
from training.styles import StyleCorpus, to_uint8_frames


def photo_like(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """A colourful synthetic image: gradients, coloured discs and a bar, plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 7)], axis=2)
    for _ in range(4):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, center, int(rng.integers(5, 15)), color, -1)
    img[h // 3 : h // 3 + 6] = (250, 30, 30)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def flat(value: int | tuple[int, int, int], h: int = 32, w: int = 32) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


@pytest.mark.parametrize("look", list(Look))
def test_every_look_keeps_shape_and_is_deterministic(look: Look) -> None:
    for h, w in [(64, 80), (8, 8), (33, 17)]:
        img = photo_like(h, w)
        out = apply_look(img, look)
        assert out.dtype == np.uint8 and out.shape == (h, w, 3)
        assert np.array_equal(out, apply_look(img.copy(), look))
    out = apply_look(photo_like(), look)
    assert out.std() > 3  # an image, not a blank
    assert not np.array_equal(out, photo_like())  # the look changed something


def test_captions_are_prompts_and_distinct() -> None:
    captions = [look.caption for look in Look]
    assert len(set(captions)) == len(captions) and PLAIN_CAPTION not in captions
    for required in (
        "a pencil sketch",
        "an old sepia photograph",
        "a blue neon glow",
        "a thermal camera image",
    ):
        assert required in captions


def test_pencil_sketch_has_no_saturation_and_is_paper_white_where_flat() -> None:
    out = apply_look(photo_like(), Look.PENCIL_SKETCH).astype(int)
    assert (out.max(axis=2) - out.min(axis=2)).max() == 0  # gray in every pixel
    # Flat areas are white paper whatever their colour; strokes only where edges are.
    for value in [(200, 40, 40), (30, 30, 90)]:
        assert apply_look(flat(value), Look.PENCIL_SKETCH).min() > 200


def test_sepia_is_warm_in_every_pixel() -> None:
    for img in [photo_like(), flat(0), flat(255), flat((0, 0, 255))]:
        out = apply_look(img, Look.SEPIA).astype(int)
        r, g, b = out[..., 0], out[..., 1], out[..., 2]
        assert (r > g).all() and (g > b).all()
    # Desaturated: the hue is the same whatever the input colour.
    red = apply_look(flat((230, 30, 30)), Look.SEPIA)
    blue = apply_look(flat((30, 30, 230)), Look.SEPIA)
    assert np.abs(red.astype(int) - blue.astype(int)).max() < 40


def test_blue_neon_is_blue_dominant_and_glows_at_edges() -> None:
    img = photo_like()
    out = apply_look(img, Look.BLUE_NEON).astype(int)
    assert (out[..., 2] >= out[..., 1]).all() and (out[..., 1] >= out[..., 0]).all()
    assert out[..., 2].mean() > 1.5 * out[..., 0].mean()
    square = flat(20, 64, 64)
    square[16:48, 16:48] = 230
    lit = apply_look(square, Look.BLUE_NEON).astype(int)
    assert lit[16, 32, 2] > 150 and lit[32, 32, 2] < 80  # bright outline, dark interior


def test_thermal_maps_dark_to_blue_and_bright_to_red_or_yellow() -> None:
    cold = apply_look(flat(10), Look.THERMAL).astype(int)[16, 16]
    hot = apply_look(flat(245), Look.THERMAL).astype(int)[16, 16]
    warm = apply_look(flat(170), Look.THERMAL).astype(int)[16, 16]
    assert cold[2] > cold[0] and cold[2] > cold[1]  # blue
    assert hot[0] > 200 and hot[1] > 150 and hot[0] > hot[2]  # yellow-white
    assert warm[0] > warm[1] and warm[0] > warm[2]  # red/orange
    # Only brightness matters: equal-luma colours read as the same temperature.
    gray = cv2.cvtColor(photo_like(), cv2.COLOR_RGB2GRAY)
    assert np.array_equal(
        apply_look(photo_like(), Look.THERMAL), apply_look(np.dstack([gray] * 3), Look.THERMAL)
    )


def test_black_and_white_and_pixel_art() -> None:
    bw = apply_look(photo_like(), Look.BLACK_AND_WHITE).astype(int)
    assert (bw.max(axis=2) == bw.min(axis=2)).all()
    px = apply_look(photo_like(64, 64), Look.PIXEL_ART)
    assert np.array_equal(px[::2, ::2].repeat(2, 0).repeat(2, 1), px)  # 2x2 blocks at 64 px
    assert len(np.unique(px.reshape(-1, 3), axis=0)) <= 64


def test_looks_are_temporally_stable() -> None:
    """A still clip stays still; a small shift moves the look by the same shift."""
    img = photo_like(64, 64)
    clip = np.stack([img, img, np.roll(img, 2, axis=1)])
    for look in Look:
        out = apply_look_clip(clip, look)
        assert out.shape == clip.shape and np.array_equal(out[0], out[1])
        moved = np.abs(out[2, :, 12:-12].astype(int) - np.roll(out[0], 2, axis=1)[:, 12:-12])
        if look is not Look.PIXEL_ART:  # pixel grids snap, by design
            assert moved.mean() < 8, look


def test_apply_look_rejects_wrong_frames() -> None:
    with pytest.raises(ValueError, match="uint8"):
        apply_look(np.zeros((8, 8, 3), np.float32), Look.SEPIA)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        apply_look_clip(np.zeros((8, 8, 3), np.uint8), Look.SEPIA)


class _Clips(torch.utils.data.Dataset):
    """Real-looking clips of a given size with a content caption."""

    def __init__(self, frames: int, size: int):
        self.frames, self.size = frames, size

    def __len__(self) -> int:
        return 1000

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        img = photo_like(self.size, self.size, seed=i)
        clip = np.stack([np.roll(img, f, axis=1) for f in range(self.frames)])
        return to_clip_tensor(clip), "a colourful test card"


def test_style_corpus_yields_captioned_clips_in_their_look() -> None:
    source = _Clips(frames=4, size=32)
    corpus = StyleCorpus(source, seed=3)
    captions = {look.caption: look for look in Look}
    seen = set()
    for i in range(60):
        clip, caption = corpus[i]
        assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32
        assert clip.min() >= -1 and clip.max() <= 1
        seen.add(caption)
        raw = to_uint8_frames(source[i][0])
        if caption == PLAIN_CAPTION:
            assert torch.equal(clip, source[i][0])
        else:
            assert torch.equal(clip, to_clip_tensor(apply_look_clip(raw, captions[caption])))
        assert corpus[i][1] == caption  # a pure function of (seed, i)
    assert seen == set(captions) | {PLAIN_CAPTION}
    only = StyleCorpus(source, seed=3, looks=[Look.SEPIA], plain=0.0)
    assert {only[i][1] for i in range(10)} == {Look.SEPIA.caption}


def test_uint8_round_trip_is_exact() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8_frames(to_clip_tensor(frames)), frames)


def test_build_dataset_mixes_styles_with_scenes() -> None:
    pytest.importorskip("skimage")
    data = build_dataset(DataSection(synthetic=1.0, styles=1.0), 4, 32, 0)
    assert isinstance(data, Mixture)
    looks = {look.caption for look in Look} | {PLAIN_CAPTION}
    captions = [data[i][1] for i in range(40)]
    assert all(data[i][0].shape == (3, 4, 32, 32) for i in range(4))
    styled = [c for c in captions if c in looks]
    assert 8 < len(styled) < 32  # about half from each source
    assert any("moving" in c for c in captions)  # synthetic scene captions


def test_a_look_knows_the_plain_clip_it_was_made_from_through_crops_and_mixtures() -> None:
    source = _Clips(frames=2, size=64)
    corpus = StyleCorpus(source, seed=3)
    styled = [i for i in range(20) if corpus.look(i) is not None]
    plain = [i for i in range(20) if corpus.look(i) is None]
    assert styled and plain
    for i in styled:
        assert torch.equal(corpus.source_clip(i), source[i][0])
    assert all(corpus.source_clip(i) is None for i in plain)  # a plain clip is its own source
    crops = Crops(corpus, 32, CROP_MULTIPLE, seed=1)
    mixed = Mixture([(crops, 1.0), (SyntheticScenes(2, 32), 1.0)], seed=2)
    pairs = WithSources(mixed)
    seen = 0
    for i in range(40):
        clip, caption, src = pairs[i]
        if caption in {look.caption for look in Look}:
            # The same window of the plain clip the styled one was cut from.
            assert torch.equal(clip, crops[i][0])
            assert torch.equal(src, Crops(source, 32, CROP_MULTIPLE, seed=1)[i][0])
            assert not torch.equal(src, clip)
            seen += 1
        else:
            assert torch.equal(src, clip)  # scenes and plain footage: no source
    assert seen > 5
