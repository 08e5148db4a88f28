"""Pixel metrics for the evaluation: pure functions of uint8 RGB clips, no model involved.

A clip is a uint8 array (F, H, W, 3), RGB. Letters: F frames, H W pixels. Every function
here gives a known answer on a hand-made clip (tests/training/test_evaluate.py):

- colour: each pixel that is not background-like (dark and grey, as every `SyntheticScenes`
  background is) votes for the nearest palette colour; the dominant colour wins the vote.
- motion: the blobs of one colour, each followed from frame to frame to the nearest blob of
  the next frame; their travel, summed over the clip, gives the axis of the larger travel
  and its sign, if that travel exceeds `min_travel`. Following blobs, not the centroid of
  all the colour's pixels, reads an endless stream right: an object that leaves through
  one edge while the next enters through the other moves the centroid the wrong way.
- structure: Pearson correlation of two clips' grey frames at low resolution (layout of
  light and dark kept), of their edge strength at low resolution (outlines kept, even
  where a look inverts or darkens the tones, as a neon glow does), and SSIM.
- look: mean HSV saturation, channel means and the share of hues on a thermal palette's
  path; `LOOK_CHECKS` says what a named style must
  show (a sketch is nearly grey, sepia warm and desaturated, neon blue-dominant).
- temporal: mean absolute change between consecutive frames; the seam ratio compares the
  change across chunk borders with the change inside chunks (1 = no visible seams).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from training.scenes import COLORS

# Background-like: low chroma (max - min channel) and dark. Scene backgrounds are neutral
# greys below 110 and every palette colour is brighter or more saturated than that.
BACKGROUND_CHROMA = 48
BACKGROUND_VALUE = 150
MIN_COLOR_SHARE = 0.005  # a colour covering less of the clip is noise, not an object
PSNR_CAP = 100.0  # dB reported for identical signals (JSON has no infinity)
DIRECTIONS = {(1, 0): "right", (-1, 0): "left", (0, 1): "down", (0, -1): "up"}


def _check_clip(clip: np.ndarray, what: str = "clip") -> np.ndarray:
    if not isinstance(clip, np.ndarray) or clip.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 array (F, H, W, 3), got {type(clip).__name__}")
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.shape[0] < 1:
        raise ValueError(f"{what} must be shaped (F, H, W, 3), got {clip.shape}")
    return clip


# --- colour and motion -------------------------------------------------------------------


def color_labels(clip: np.ndarray, palette: Mapping[str, tuple[int, int, int]] = COLORS):
    """(F, H, W) int labels: -1 for background-like pixels, else the nearest palette index."""
    rgb = _check_clip(clip).astype(np.int32)
    chroma = rgb.max(-1) - rgb.min(-1)
    background = (chroma < BACKGROUND_CHROMA) & (rgb.max(-1) < BACKGROUND_VALUE)
    colors = np.asarray(list(palette.values()), np.int32)  # (P, 3)
    dist = ((rgb[..., None, :] - colors) ** 2).sum(-1)  # (F, H, W, P)
    return np.where(background, -1, dist.argmin(-1))


def color_votes(clip: np.ndarray, palette: Mapping[str, tuple[int, int, int]] = COLORS):
    """Salient pixels per palette colour, over the whole clip: {name: count}."""
    labels = color_labels(clip, palette)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(palette))
    return {name: int(n) for name, n in zip(palette, counts, strict=True)}


def dominant_color(clip: np.ndarray, palette: Mapping[str, tuple[int, int, int]] = COLORS):
    """The palette colour most salient pixels are nearest to, or None if (almost) none are."""
    votes = color_votes(clip, palette)
    best = max(votes, key=votes.__getitem__)
    if votes[best] < MIN_COLOR_SHARE * clip[..., 0].size:
        return None
    return best


def blobs(clip: np.ndarray, color: str, min_pixels: int = 4) -> list[np.ndarray]:
    """Per frame, the (N, 3) blobs of `color`'s pixels: centre x, y as fractions of (W, H),
    and area in pixels; blobs under `min_pixels` are noise and left out."""
    labels = color_labels(clip) == list(COLORS).index(color)
    _, height, width = labels.shape
    out = []
    for frame in labels.astype(np.uint8):
        count, _, stats, centres = cv2.connectedComponentsWithStats(frame)
        area = stats[1:count, cv2.CC_STAT_AREA]  # label 0 is everything else
        keep = area >= min_pixels
        centre = (centres[1:count][keep] + 0.5) / (width, height)
        out.append(np.column_stack([centre, area[keep]]))
    return out


def travel(clip: np.ndarray, color: str, reach: float = 0.15) -> np.ndarray:
    """(2,) how far `color`'s objects move over the clip, (x, y) in fractions of (W, H): per
    pair of frames, every blob steps to the nearest blob of the next frame (those further
    than `reach` have left or just entered, and do not count), the steps averaged weighted
    by area; the pairs' steps summed."""
    total = np.zeros(2)
    tracked = blobs(clip, color)
    for now, after in zip(tracked[:-1], tracked[1:], strict=True):
        if not len(now) or not len(after):
            continue
        steps = after[None, :, :2] - now[:, None, :2]  # (N now, N after, 2)
        nearest = np.linalg.norm(steps, axis=-1).argmin(1)  # (N now,)
        step = steps[np.arange(len(now)), nearest]  # (N now, 2)
        near = np.linalg.norm(step, axis=-1) < reach
        if near.any():
            total += np.average(step[near], axis=0, weights=now[near, 2])
    return total


def motion_direction(clip: np.ndarray, color: str | None = None, min_travel: float = 0.03):
    """Which way `color`'s objects (default: the dominant colour's) move over the clip:
    "left", "right", "up" or "down", the axis of their larger `travel` and its sign; None when
    they travel less than `min_travel` of the frame, or are not found in two frames."""
    color = color or dominant_color(clip)
    if color is None:
        return None
    moved = travel(clip, color)
    axis = int(abs(moved[1]) > abs(moved[0]))
    if abs(moved[axis]) < min_travel:
        return None
    sign = int(math.copysign(1, moved[axis]))
    return DIRECTIONS[(sign, 0) if axis == 0 else (0, sign)]


# --- structure -----------------------------------------------------------------------------


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    _check_clip(a, "a"), _check_clip(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"the clips must have the same frame count, got {a.shape} and {b.shape}")


def structure_correlation(a: np.ndarray, b: np.ndarray, size: int = 16) -> float:
    """Mean over frames of the Pearson correlation of the two clips' grey frames shrunk to
    size x size: 1 when the layout of light and dark is kept, about 0 when it is lost.
    A frame pair where a side is flat counts 1 if both are equal, else 0."""
    _check_pair(a, b)

    def small(frame: np.ndarray) -> np.ndarray:
        return cv2.resize(_gray(frame), (size, size), interpolation=cv2.INTER_AREA)

    return float(np.mean([_pearson(small(x), small(y)) for x, y in zip(a, b, strict=True)]))


def _edge_map(frame: np.ndarray, size: int, work: int) -> np.ndarray:
    """Sobel gradient magnitude of the grey frame at `work` px, pooled to size x size."""
    gray = cv2.resize(_gray(frame), (work, work), interpolation=cv2.INTER_AREA).astype(np.float32)
    magnitude = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return cv2.resize(magnitude, (size, size), interpolation=cv2.INTER_AREA)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Correlation of two equal-shaped arrays; 1 if both are flat and equal, else 0 if one is."""
    x, y = (v.astype(np.float64).ravel() for v in (x, y))
    dx, dy = x - x.mean(), y - y.mean()
    norm = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / norm if norm > 0 else float(np.array_equal(x, y))


def edge_correlation(a: np.ndarray, b: np.ndarray, size: int = 16, work: int = 64) -> float:
    """Mean over frames of the correlation of the two clips' edge strength maps (size x
    size, from Sobel at `work` px): 1 when the outlines stay where they were."""
    _check_pair(a, b)
    return float(
        np.mean(
            [
                _pearson(_edge_map(x, size, work), _edge_map(y, size, work))
                for x, y in zip(a, b, strict=True)
            ]
        )
    )


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the SSIM of the grey frames (1 = identical)."""
    _check_clip(a, "a"), _check_clip(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"the clips must have the same shape, got {a.shape} and {b.shape}")
    scores = [
        structural_similarity(_gray(fa), _gray(fb), data_range=255)
        for fa, fb in zip(a, b, strict=True)
    ]
    return float(np.mean(scores))


# --- look ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """What a clip looks like overall: mean HSV saturation in [0, 1]; channel means in
    levels (0-255); `ironbow`, the share of coloured pixels (saturation >= 0.25) whose hue
    lies on a thermal palette's path, blue through magenta and red to yellow (220-65
    degrees, i.e. not green or cyan): 1 for a thermal image, about 0.57 for noise."""

    saturation: float
    red: float
    green: float
    blue: float
    ironbow: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def look(clip: np.ndarray) -> Look:
    _check_clip(clip)
    hsv = cv2.cvtColor(clip.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV)  # (F*H*W, 1, 3), H in 0-179
    hue, saturation = hsv[..., 0].astype(np.int32) * 2, hsv[..., 1] / 255.0
    coloured = saturation >= 0.25
    on_path = coloured & ((hue >= 220) | (hue <= 65))
    ironbow = float(on_path.sum() / coloured.sum()) if coloured.any() else 0.0
    red, green, blue = clip.reshape(-1, 3).mean(0)
    return Look(float(saturation.mean()), float(red), float(green), float(blue), ironbow)


# A named style and what its pixels must show. Thresholds in saturation (0-1) and levels.
LOOK_CHECKS: dict[str, tuple[str, Callable[[Look], bool]]] = {
    "a pencil sketch": (
        "nearly grey, light like paper: saturation < 0.12, mean level >= 128",
        lambda k: k.saturation < 0.12 and (k.red + k.green + k.blue) / 3 >= 128,
    ),
    "an old sepia photograph": (
        "warm and toned: R > G > B, R - B >= 20, saturation <= 0.6",
        lambda k: k.red > k.green > k.blue and k.red - k.blue >= 20 and k.saturation <= 0.6,
    ),
    "a blue neon glow": (
        "blue-dominant: B > R + 10 and B > G + 10",
        lambda k: k.blue > k.red + 10 and k.blue > k.green + 10,
    ),
    "a thermal camera image": (
        "false colour: saturation >= 0.6, green the weakest channel, ironbow >= 0.9",
        lambda k: k.saturation >= 0.6 and k.green < min(k.red, k.blue) and k.ironbow >= 0.9,
    ),
}


def look_matches(prompt: str, clip_look: Look) -> bool | None:
    """Whether the look is what `prompt` names (see LOOK_CHECKS); None for other prompts."""
    check = LOOK_CHECKS.get(prompt)
    return None if check is None else bool(check[1](clip_look))


# --- temporal ------------------------------------------------------------------------------


def frame_changes(clip: np.ndarray) -> np.ndarray:
    """(F-1,) mean absolute change, in levels, from each frame to the next."""
    clip = _check_clip(clip).astype(np.float32)
    return np.abs(np.diff(clip, axis=0)).mean(axis=(1, 2, 3))


def seam_ratio(clip: np.ndarray, chunk_frames: int, eps: float = 1e-3) -> float:
    """Mean change across chunk borders / mean change inside chunks (frames k*c-1 -> k*c
    are borders). 1: borders are as smooth as the rest; above 1: visible seams."""
    changes = frame_changes(clip)
    border = (np.arange(len(changes)) + 1) % chunk_frames == 0
    if chunk_frames < 2 or not border.any() or border.all():
        raise ValueError(
            f"a seam ratio needs chunks of at least 2 frames and two chunks, got "
            f"{len(clip)} frames in chunks of {chunk_frames}"
        )
    return float((changes[border].mean() + eps) / (changes[~border].mean() + eps))


# --- agreement -----------------------------------------------------------------------------


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two equal-shaped arrays (uint8 clips compare in [0, 1])."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    return float(np.mean((a.astype(np.float64) / scale - b.astype(np.float64) / scale) ** 2))


def psnr(mean_squared_error: float, peak: float = 1.0) -> float:
    """PSNR in dB for a mean squared error at the given peak; PSNR_CAP for a zero error."""
    if mean_squared_error <= 0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(peak**2 / mean_squared_error))
