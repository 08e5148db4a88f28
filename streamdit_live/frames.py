"""Frames at module boundaries: checks, fitting to a size, and model tensor conversions.

Letters: F frames, H height, W width, C=3 RGB channels. In the app a frame is a uint8 RGB
array (H, W, C); in the model a clip is a float tensor (1, C, F, H, W) in [-1, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: sources, sinks and the preview helper never need it
    import torch


def _describe(frame: object) -> str:
    if isinstance(frame, np.ndarray):
        return f"a {frame.dtype} array shaped {frame.shape}"
    return f"a {type(frame).__name__}"


def check_frame(frame: object, where: str) -> np.ndarray:
    """Return `frame` as a C-contiguous uint8 (H, W, 3) array, or raise ValueError."""
    if (
        not isinstance(frame, np.ndarray)
        or frame.dtype != np.uint8
        or frame.ndim != 3
        or frame.shape[2] != 3
        or frame.shape[0] == 0
        or frame.shape[1] == 0
    ):
        raise ValueError(
            f"{where}: expected a uint8 RGB frame shaped (H, W, 3), got {_describe(frame)}."
        )
    return np.ascontiguousarray(frame)


def resize_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to exactly (width, height), ignoring the aspect ratio (the callers crop first)."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return np.ascontiguousarray(frame)
    # INTER_AREA averages when shrinking (no aliasing); INTER_LINEAR is cheap and smooth
    # when enlarging (INTER_AREA would be blocky there).
    shrinking = width <= w and height <= h
    return cv2.resize(
        frame, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )


def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cover (width, height) keeping the aspect ratio: crop the center to the target's shape,
    then resize once, so no pixel is scaled only to be thrown away."""
    frame = check_frame(frame, "fit_frame")
    if width <= 0 or height <= 0:
        raise ValueError(f"fit_frame: the size must be positive, got {width}x{height}.")
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    if w * height > h * width:  # source wider than the target: crop its sides
        crop_w, crop_h = max(1, round(h * width / height)), h
    else:  # source taller (or the same shape): crop top and bottom
        crop_w, crop_h = w, max(1, round(w * height / width))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return resize_frame(frame[top : top + crop_h, left : left + crop_w], width, height)


def frames_to_tensor(
    frames: list[np.ndarray], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Stack uint8 (H, W, 3) frames, all the same size, into a (1, 3, F, H, W) clip in [-1, 1]."""
    import torch

    if not frames:
        raise ValueError("frames_to_tensor: got no frames; pass at least one.")
    checked = [check_frame(f, f"frames_to_tensor frame {i}") for i, f in enumerate(frames)]
    if any(f.shape != checked[0].shape for f in checked):
        shapes = sorted({f.shape for f in checked})
        raise ValueError(f"frames_to_tensor: all frames must share one size, got {shapes}.")
    clip = torch.from_numpy(np.stack(checked))  # (F, H, W, C) uint8
    clip = clip.to(device=device).permute(3, 0, 1, 2).unsqueeze(0)  # (1, C, F, H, W)
    return clip.to(dtype or torch.float32) / 127.5 - 1.0


def tensor_to_frames(clip: torch.Tensor) -> list[np.ndarray]:
    """Turn a (1, 3, F, H, W) clip in [-1, 1] into F uint8 (H, W, 3) frames (clamped, rounded)."""
    import torch

    if clip.ndim != 5 or clip.shape[0] != 1 or clip.shape[1] != 3:
        raise ValueError(
            f"tensor_to_frames: expected a clip shaped (1, 3, F, H, W), got {tuple(clip.shape)}."
        )
    pixels = ((clip[0].detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()  # (C, F, H, W)
    pixels = pixels.to("cpu", dtype=torch.uint8).permute(1, 2, 3, 0)  # (F, H, W, C)
    return [np.ascontiguousarray(f) for f in pixels.numpy()]
