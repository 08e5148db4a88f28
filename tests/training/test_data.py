"""training/data.py: video folders, packaged footage, mixtures, samplers, latent cache."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from training.config import DataSection
from training.data import (
    CROP_MULTIPLE,
    Crops,
    LatentCache,
    Mixture,
    StepSampler,
    SyntheticScenes,
    VideoFolder,
    build_dataset,
    resize_center_crop,
)
from training.footage import PackagedFootage


def write_video(path, frames=20, size=(40, 30), color=(0, 0, 255)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for i in range(frames):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:] = color
        img[:, : i % size[0]] = 255
        writer.write(img)
    writer.release()


def test_video_folder_reads_captions_and_skips_unreadable(tmp_path):
    write_video(tmp_path / "a.avi", color=(0, 0, 255))  # BGR red
    (tmp_path / "sub").mkdir()
    write_video(tmp_path / "sub" / "b.avi", color=(255, 0, 0))  # BGR blue
    (tmp_path / "sub" / "b.txt").write_text("a blue clip\n")
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "a.avi", "caption": "red"}) + "\n")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        data = VideoFolder(tmp_path, frames=6, size=16, fps=5, seed=0)
    assert [p.name for p in data.skipped] == ["broken.mp4"]
    assert len(data.videos) == 2
    seen = {}
    for i in range(4):
        clip, caption = data[i]
        assert clip.shape == (3, 6, 16, 16)
        seen[caption] = clip
    assert set(seen) == {"red", "a blue clip"}
    # Colour channels arrive as RGB: the red video is red.
    red = seen["red"][:, 0, :, -1]  # right column of the first frame, (3, H)
    assert red[0].mean() > 0.5 and red[2].mean() < -0.5


def test_video_folder_survives_a_file_that_breaks_after_probing(tmp_path):
    write_video(tmp_path / "a.avi")
    write_video(tmp_path / "b.avi")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    data = VideoFolder(tmp_path, frames=4, size=16, seed=0)
    (tmp_path / "a.avi").write_bytes(b"corrupted later")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        captions = [data[i][1] for i in range(4)]
    assert captions == ["b"] * 4 and data.failures > 0


def test_video_folder_refuses_an_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no readable videos"):
        VideoFolder(tmp_path, frames=4, size=16)


def test_resize_center_crop_covers_and_centres():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # a centred white band, as wide as the crop will be
    out = resize_center_crop(img, 32, 32)
    assert out.shape == (32, 32, 3) and out.min() > 200


def test_packaged_footage_offline():
    pytest.importorskip("skimage")
    data = PackagedFootage(frames=6, size=32, fps=8, seed=0)
    captions = set()
    for i in range(6):
        clip, caption = data[i]
        assert clip.shape == (3, 6, 32, 32) and clip.min() >= -1 and clip.max() <= 1
        assert clip.std() > 0.02  # real pixels, not a blank
        captions.add(caption)
    assert any("camera" in c for c in captions)  # photo clips say how the camera moves
    assert len(captions) > 2


def test_mixture_is_deterministic_and_respects_weights():
    a = SyntheticScenes(frames=4, size=16, seed=1)
    b = SyntheticScenes(frames=4, size=16, seed=2)
    mix = Mixture([(a, 3.0), (b, 1.0)], seed=0)
    picks = [mix[i][1] == a[i][1] for i in range(200)]
    assert 0.6 < np.mean(picks) < 0.9
    assert mix[17][1] == Mixture([(a, 3.0), (b, 1.0)], seed=0)[17][1]


def test_step_sampler_splits_ranks_and_resumes():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    r0 = take(StepSampler(2, rank=0, world=2), 6)
    r1 = take(StepSampler(2, rank=1, world=2), 6)
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(12))
    assert take(StepSampler(2, rank=0, world=2, start_step=2), 2) == r0[4:6]


def test_latent_cache_round_trip(tmp_path):
    data = SyntheticScenes(frames=4, size=16, seed=0)
    path = LatentCache.build(tmp_path / "c.safetensors", data, lambda x: x[:, :2, ::2] * 0.5, 5, 2)
    cache = LatentCache(path)
    latents, caption = cache[7]  # wraps around: entry 2
    assert latents.shape == (2, 2, 16, 16) and caption == data[2][1]
    assert torch.allclose(latents, data[2][0][:2, ::2] * 0.5, atol=1e-3)


def test_build_dataset_mixes_configured_sources():
    section = DataSection(synthetic=1.0, packaged=0.0)
    assert isinstance(build_dataset(section, 4, 16, 0), SyntheticScenes)
    pytest.importorskip("skimage")
    mixed = build_dataset(DataSection(synthetic=1.0, packaged=1.0), 4, 16, 0)
    assert isinstance(mixed, Mixture)


# --- crops (data.crop) ----------------------------------------------------------------------


def coordinate_clips(n=3, size=64, frames=2):
    """Clips whose every pixel holds its own position (1000 * row + column), captioned."""
    rows = torch.arange(size, dtype=torch.float32)[:, None] * 1000
    grid = (rows + torch.arange(size, dtype=torch.float32)).expand(3, frames, size, size)
    return [(grid + i * 10**6, f"clip {i}") for i in range(n)]


def test_crops_are_aligned_squares_chosen_per_index_with_captions_kept():
    source = coordinate_clips()
    crops = Crops(source, 32, CROP_MULTIPLE, seed=0)
    assert CROP_MULTIPLE == 16 and len(crops) == len(source)
    corners = set()
    for i in range(len(source)):
        clip, caption = crops[i]
        assert clip.shape == (3, 2, 32, 32) and caption == source[i][1]
        top, left = divmod(int(clip[0, 0, 0, 0]) - i * 10**6, 1000)
        assert top % 16 == 0 and left % 16 == 0 and top + 32 <= 64 and left + 32 <= 64
        assert torch.equal(clip, source[i][0][..., top : top + 32, left : left + 32])
        assert torch.equal(clip, Crops(source, 32, CROP_MULTIPLE, seed=0)[i][0])  # same again
        corners.add((top, left))
    many = Crops(coordinate_clips(n=40), 32, CROP_MULTIPLE, seed=0)
    corners |= {tuple(divmod(int(many[i][0][0, 0, 0, 0]) % 10**6, 1000)) for i in range(40)}
    assert corners == {(t, left) for t in (0, 16, 32) for left in (0, 16, 32)}  # all nine


def test_crops_never_exceed_a_smaller_source():
    clip, _ = Crops(coordinate_clips(size=16), 32, CROP_MULTIPLE)[0]
    assert clip.shape[-2:] == (16, 16)


def test_build_dataset_draws_scenes_at_the_crop_and_crops_footage_made_at_the_size(tmp_path):
    write_video(tmp_path / "a.avi", frames=30, size=(96, 80))
    (tmp_path / "a.txt").write_text("stripes")
    section = DataSection(synthetic=1.0, folder=1.0, folder_path=str(tmp_path), crop=32)
    mix = build_dataset(section, 4, 64, seed=3)
    scenes, footage = mix.datasets
    for i in range(4):
        clip, caption = scenes[i]
        assert clip.shape == (3, 4, 32, 32)  # drawn whole at the crop size, not cut
        want = SyntheticScenes(4, 32, 3, section.max_objects)[i]
        assert torch.equal(clip, want[0]) and caption == want[1]
    whole = VideoFolder(tmp_path, 4, 64, section.fps, 3)  # the footage at data.size
    for i in range(4):
        clip, caption = footage[i]
        full, _ = whole[i]
        assert clip.shape == (3, 4, 32, 32) and caption == "stripes"
        found = [
            (t, left)
            for t in (0, 16, 32)
            for left in (0, 16, 32)
            if torch.equal(clip, full[..., t : t + 32, left : left + 32])
        ]
        assert found, "a crop is a piece of the footage at its own scale, not a resize"
    assert all(mix[i][0].shape == (3, 4, 32, 32) for i in range(8))
    # Without a crop (or a crop of the whole frame) footage stays whole.
    plain = build_dataset(
        DataSection(synthetic=0.0, folder=1.0, folder_path=str(tmp_path)), 4, 64, 3
    )
    assert isinstance(plain, VideoFolder) and plain[0][0].shape == (3, 4, 64, 64)


class _Sourced(torch.utils.data.Dataset):
    """Every third item has a source: the item negated."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i):
        return torch.full((3, 4, 8, 8), float(i)), f"item {i}"

    def source_clip(self, i):
        return -self[i][0] if i % 3 == 0 else None


def test_latent_cache_keeps_the_sources_of_the_items_that_have_one(tmp_path):
    path = LatentCache.build(tmp_path / "c.safetensors", _Sourced(), lambda x: x[:, :2] * 0.5, 7, 3)
    cache = LatentCache(path)
    assert cache.sources is not None and len(cache.sources) == 3  # items 0, 3, 6
    for i in range(9):
        latents, caption = cache[i]
        j = i % 7
        assert caption == f"item {j}" and torch.allclose(latents, torch.full_like(latents, j / 2))
        source = cache.source_clip(i)
        if j % 3:
            assert source is None
        else:
            assert torch.allclose(source, -latents)
    scenes = SyntheticScenes(2, 8)
    plain = LatentCache(LatentCache.build(tmp_path / "p.safetensors", scenes, lambda x: x, 2))
    assert plain.sources is None and plain.source_clip(1) is None
