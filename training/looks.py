"""Named image-processing looks for the video-to-video style corpus.

Each look is a pure function of one uint8 RGB frame ``(H, W, 3)`` to another of the same
shape: OpenCV and numpy only, no randomness, and no statistics taken from the frame (no
per-frame min/max or histogram stretch). So a clip filtered frame by frame stays as stable
in time as its input: a still camera gives a still look, and only what moves changes.
Filter sizes scale with the frame (``min(H, W)``), so a 64x64 training crop and a 256x256
stream get the same look.

`Look` names the looks; `Look.caption` is the prompt that asks for it ("a pencil sketch").
`PLAIN_CAPTION` captions unfiltered footage in the style corpus.

Letters: F frames, H W pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import cv2
import numpy as np

PLAIN_CAPTION = "a video"  # the unfiltered footage: "keep the input as it is"


class Look(Enum):
    """A style a prompt can ask for; the value is its caption (the prompt to use)."""

    PENCIL_SKETCH = "a pencil sketch"
    SEPIA = "an old sepia photograph"
    BLUE_NEON = "a blue neon glow"
    THERMAL = "a thermal camera image"
    COMIC = "a comic book drawing"
    WATERCOLOR = "a watercolor painting"
    PIXEL_ART = "a pixel art image"
    BLACK_AND_WHITE = "a black and white film"

    @property
    def caption(self) -> str:
        return self.value


def _odd(n: float) -> int:
    """The nearest odd integer >= 1 (OpenCV kernel sizes)."""
    return max(1, int(round(n)) // 2 * 2 + 1)


def _sigma(frame: np.ndarray, fraction: float) -> float:
    """A blur radius as a fraction of the frame's shorter side, at least 0.5 px."""
    return max(0.5, fraction * min(frame.shape[:2]))


def _luma(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W) Rec. 601 luma of an RGB frame."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _vignette(height: int, width: int, strength: float) -> np.ndarray:
    """float32 (H, W, 1) gain: 1 at the centre, 1 - strength in the corners."""
    y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    r2 = (x * x + y * y) / 2.0  # 0 at the centre, 1 in the corners
    return (1.0 - strength * r2)[..., None]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _edges(gray: np.ndarray, blur_fraction: float) -> np.ndarray:
    """float32 (H, W) soft edge strength in [0, 1]: Sobel magnitude of the blurred luma.

    Continuous (no Canny thresholds), so edges fade rather than flicker between frames.
    """
    smooth = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), _sigma(gray, blur_fraction))
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    return np.clip(np.sqrt(gx * gx + gy * gy) / 160.0, 0.0, 1.0)


def pencil_sketch(frame: np.ndarray) -> np.ndarray:
    """Graphite on white paper: a colour-dodge of the luma by its blurred negative."""
    gray = _luma(frame).astype(np.float32)
    blurred = cv2.GaussianBlur(gray, (0, 0), _sigma(frame, 0.03))
    dodge = np.minimum(255.0, gray * 255.0 / np.maximum(blurred, 1.0))  # 255 at flat areas
    # Darken the strokes a little (the dodge alone is faint) and keep some shading.
    sketch = 255.0 - 1.6 * (255.0 - dodge)
    sketch = 0.85 * sketch + 0.15 * gray
    return np.repeat(_to_uint8(sketch)[..., None], 3, axis=2)


def sepia(frame: np.ndarray) -> np.ndarray:
    """A faded warm-brown print: luma toned so R > G > B everywhere, lifted blacks, vignette."""
    gray = _luma(frame).astype(np.float32)[..., None]
    base = np.array([48.0, 34.0, 20.0], np.float32)  # faded blacks, already warm
    gain = np.array([0.80, 0.66, 0.48], np.float32)  # warm highlights: (252, 202, 142)
    toned = (base + gain * gray) * _vignette(*frame.shape[:2], 0.35)
    return _to_uint8(toned)


def blue_neon(frame: np.ndarray) -> np.ndarray:
    """Glowing blue-cyan outlines over a dark blue scene."""
    gray = _luma(frame)
    edges = _edges(gray, 0.01)[..., None]
    glow = cv2.GaussianBlur(edges, (0, 0), _sigma(frame, 0.025))
    if glow.ndim == 2:
        glow = glow[..., None]
    dark = gray.astype(np.float32)[..., None] / 255.0
    out = (
        dark * np.array([5.0, 15.0, 60.0], np.float32)  # the scene, dim and blue
        + edges * np.array([120.0, 220.0, 255.0], np.float32)  # cyan-white line cores
        + 2.5 * glow * np.array([20.0, 80.0, 255.0], np.float32)  # blue halo
    )
    # Keep blue on top wherever lines saturate: B >= G >= R holds in every pixel.
    out = _to_uint8(out)
    out[..., 1] = np.minimum(out[..., 1], out[..., 2])
    out[..., 0] = np.minimum(out[..., 0], out[..., 1])
    return out


# Ironbow-like palette of a thermal camera: cold dark blue -> purple -> red -> orange ->
# hot yellow-white. (position in [0, 1], RGB)
_THERMAL_STOPS = (
    (0.00, (0, 0, 70)),
    (0.20, (20, 10, 190)),
    (0.40, (140, 0, 170)),
    (0.60, (230, 40, 40)),
    (0.80, (255, 160, 0)),
    (1.00, (255, 250, 170)),
)


def _palette(stops: tuple[tuple[float, tuple[int, int, int]], ...]) -> np.ndarray:
    """uint8 (256, 3) lookup table interpolated between the stops."""
    pos = np.array([p for p, _ in stops], np.float32)
    rgb = np.array([c for _, c in stops], np.float32)
    x = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    return _to_uint8(np.stack([np.interp(x, pos, rgb[:, k]) for k in range(3)], axis=1))


_THERMAL_LUT = _palette(_THERMAL_STOPS)


def thermal(frame: np.ndarray) -> np.ndarray:
    """Brightness as heat: a soft, low-detail image through an ironbow palette."""
    gray = cv2.GaussianBlur(_luma(frame), (0, 0), _sigma(frame, 0.012))
    return _THERMAL_LUT[gray]


def comic(frame: np.ndarray) -> np.ndarray:
    """Flat, saturated, posterized colours with black ink outlines."""
    smooth = cv2.medianBlur(frame, _odd(min(frame.shape[:2]) / 64 + 2))
    hsv = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = np.minimum(255.0, hsv[..., 1] * 1.5 + 20.0)
    hsv[..., 2] = np.minimum(255.0, hsv[..., 2] * 1.15)
    vivid = cv2.cvtColor(_to_uint8(hsv), cv2.COLOR_HSV2RGB)
    levels = 4
    poster = (vivid // (256 // levels)) * (255 // (levels - 1))
    ink = _edges(_luma(smooth), 0.006)[..., None]
    ink = np.clip((ink - 0.15) * 3.0, 0.0, 1.0)  # soft threshold: lines, not texture
    return _to_uint8(poster.astype(np.float32) * (1.0 - ink))


def watercolor(frame: np.ndarray) -> np.ndarray:
    """Soft washes of lighter, bleeding colour on white paper with darker pigment edges."""
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    d = _odd(min(h, w) / 40 + 3)
    for _ in range(2):
        small = cv2.bilateralFilter(small, d, 40, 40)
    wash = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    wash = cv2.GaussianBlur(wash, (0, 0), _sigma(frame, 0.008))
    mean = wash.mean(axis=2, keepdims=True)
    wash = mean + 1.3 * (wash - mean)  # pigment: more saturated than the scene
    paper = 0.8 * wash + 0.2 * 250.0  # thin pigment: the paper shows through
    rim = _edges(_luma(frame), 0.015)[..., None]  # pigment pools at the wash borders
    return _to_uint8(paper * (1.0 - 0.35 * rim))


def pixel_art(frame: np.ndarray) -> np.ndarray:
    """Big square pixels (32 across the shorter side) in a 64-colour palette."""
    h, w = frame.shape[:2]
    block = max(1, min(h, w) // 32)
    small = cv2.resize(
        frame, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA
    )
    levels = 4  # per channel: 64 colours
    small = _to_uint8(
        np.rint(small.astype(np.float32) / 255.0 * (levels - 1)) * (255 / (levels - 1))
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def black_and_white(frame: np.ndarray) -> np.ndarray:
    """High-contrast monochrome film: an S-curve on the luma and a dark vignette."""
    gray = _luma(frame).astype(np.float32) / 255.0
    curve = gray * gray * (3.0 - 2.0 * gray)  # smoothstep: deeper blacks, brighter whites
    toned = 255.0 * (0.04 + 0.92 * curve)[..., None] * _vignette(*frame.shape[:2], 0.45)
    return np.repeat(_to_uint8(toned), 3, axis=2)


LOOK_FILTERS: dict[Look, Callable[[np.ndarray], np.ndarray]] = {
    Look.PENCIL_SKETCH: pencil_sketch,
    Look.SEPIA: sepia,
    Look.BLUE_NEON: blue_neon,
    Look.THERMAL: thermal,
    Look.COMIC: comic,
    Look.WATERCOLOR: watercolor,
    Look.PIXEL_ART: pixel_art,
    Look.BLACK_AND_WHITE: black_and_white,
}


def apply_look(frame: np.ndarray, look: Look) -> np.ndarray:
    """One uint8 RGB frame (H, W, 3) in ``look``, same shape and dtype."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {frame.dtype} {frame.shape}")
    return LOOK_FILTERS[look](np.ascontiguousarray(frame))


def apply_look_clip(frames: np.ndarray, look: Look) -> np.ndarray:
    """uint8 (F, H, W, 3) RGB frames -> the same clip in ``look``, frame by frame."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(
            f"expected uint8 (F, H, W, 3) RGB frames, got {frames.dtype} {frames.shape}"
        )
    return np.stack([apply_look(f, look) for f in frames])
