import numpy as np
import pytest
import torch

from streamdit_live.frames import check_frame, fit_frame, frames_to_tensor, tensor_to_frames


def test_check_frame_accepts_rgb_uint8_and_makes_it_contiguous():
    frame = np.zeros((8, 12, 3), np.uint8)
    assert check_frame(frame, "test") is frame
    view = np.zeros((8, 24, 3), np.uint8)[:, ::2]  # a strided view, not C-contiguous
    out = check_frame(view, "test")
    assert out.flags.c_contiguous and out.shape == (8, 12, 3)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((0, 8, 3), np.uint8),
        [[0, 0, 0]],
    ],
)
def test_check_frame_rejects_with_one_sentence_naming_the_place(bad):
    with pytest.raises(ValueError, match=r"^webcam: expected a uint8 RGB frame .*, got .*\.$"):
        check_frame(bad, "webcam")


def test_fit_frame_scales_to_cover_then_crops_the_center():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :50] = (255, 0, 0)  # outer quarter left: cropped away
    frame[:, 50:100] = (0, 255, 0)
    frame[:, 100:150] = (0, 0, 255)
    frame[:, 150:] = (255, 255, 255)  # outer quarter right: cropped away
    out = fit_frame(frame, 40, 40)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert (out[:, :18] == (0, 255, 0)).all()
    assert (out[:, 22:] == (0, 0, 255)).all()


def test_fit_frame_enlarges_and_keeps_exact_size_untouched():
    small = np.full((10, 10, 3), 77, np.uint8)
    out = fit_frame(small, 40, 20)
    assert out.shape == (20, 40, 3) and (out == 77).all()
    assert fit_frame(small, 10, 10) is small
    with pytest.raises(ValueError, match="positive"):
        fit_frame(small, 0, 10)


def test_tensor_round_trip_is_exact_and_in_range():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(4)]
    clip = frames_to_tensor(frames)
    assert clip.shape == (1, 3, 4, 6, 5) and clip.dtype == torch.float32
    assert clip.min() >= -1.0 and clip.max() <= 1.0
    # Channel 0 of frame 2 at pixel (1, 3) is the red value there.
    assert clip[0, 0, 2, 1, 3].item() == pytest.approx(frames[2][1, 3, 0] / 127.5 - 1)
    back = tensor_to_frames(clip)
    assert len(back) == 4 and all(np.array_equal(a, b) for a, b in zip(frames, back, strict=True))


def test_tensor_to_frames_clamps_and_rounds():
    clip = torch.tensor([2.0, -3.0, 0.0]).view(1, 3, 1, 1, 1)
    (frame,) = tensor_to_frames(clip)
    assert frame.dtype == np.uint8 and frame.tolist() == [[[255, 0, 128]]]


def test_conversions_refuse_bad_shapes():
    with pytest.raises(ValueError, match="at least one"):
        frames_to_tensor([])
    with pytest.raises(ValueError, match="one size"):
        frames_to_tensor([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"\(1, 3, F, H, W\)"):
        tensor_to_frames(torch.zeros(3, 2, 4, 4))
