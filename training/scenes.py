"""Procedural captioned video: coloured shapes moving over simple backgrounds.

Every clip is a pure function of ``(seed, index)``: the scene is planned first (a
``Scene`` of ``SceneObject`` values), its caption is written from the same words, and only then
is it drawn, so the caption cannot drift from the pixels. Drawing uses OpenCV primitives on
a uint8 canvas, a few tens of microseconds per frame at 256x256.

Letters: F frames, H W pixels.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

# Saturated, well separated RGB values: a pixel can be read back to its colour word by
# nearest neighbour, which the caption test relies on.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 40),
    "green": (30, 200, 60),
    "cyan": (0, 220, 230),
    "blue": (30, 60, 235),
    "purple": (150, 40, 210),
    "pink": (255, 120, 200),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "ring", "stripes", "star", "cross", "diamond")
# Round shapes look the same when rotated, so "spinning" would be a lie for them.
_ROUND = frozenset({"circle", "ring"})


class Direction(Enum):
    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"

    @property
    def vector(self) -> tuple[float, float]:
        """(dx, dy) in image coordinates (y grows downwards)."""
        return {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}[
            self.value
        ]

    @property
    def horizontal(self) -> bool:
        return self.vector[1] == 0.0


class Motion(Enum):
    PLAIN = ""
    SPINNING = "spinning"
    PULSING = "pulsing"


class Background(Enum):
    # Neutral (grey-level) backgrounds only, darker than every shape colour, so a shape
    # never disappears into its background.
    BLACK = "black"
    GRADIENT = "gradient"
    NOISE = "noise texture"
    CHECKERBOARD = "checkerboard"
    GRID = "grid"


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    direction: Direction
    motion: Motion
    start: tuple[float, float]  # centre at frame 0, fractions of (W, H)
    speed: float  # fraction of the frame size travelled per frame
    size: float  # radius as a fraction of min(H, W)
    phase: float  # spin / pulse phase in radians

    def phrase(self) -> str:
        adjective = f"{self.motion.value} " if self.motion is not Motion.PLAIN else ""
        noun = f"{adjective}{self.color} {self.shape}"
        article = "" if self.shape == "stripes" else "an " if noun[0] in "aeiou" else "a "
        return f"{article}{noun} moving {self.direction.value}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background
    bg_seed: int

    @property
    def caption(self) -> str:
        things = " and ".join(o.phrase() for o in self.objects)
        return f"{things} on a {self.background.value} background"


def held_out_shape(color: str, direction: Direction) -> str:
    """The one shape held out of training for each (colour, direction), fixed by a hash so
    the 36 combinations never change: `plan_scene` never draws them, and the evaluation's
    text prompts (training/eval_runs.py) use only them, so they measure generalisation."""
    digest = hashlib.sha1(f"{color} {direction.value}".encode()).digest()
    return SHAPES[digest[0] % len(SHAPES)]


def plan_scene(rng: np.random.Generator, frames: int, max_objects: int = 3) -> Scene:
    """Choose the objects and background of one clip of ``frames`` frames."""
    count = int(rng.integers(1, max_objects + 1))
    colors = rng.choice(list(COLORS), size=count, replace=False)  # distinct: readable back
    # Total travel stays under ~0.55 of the frame so objects remain in view all clip long;
    # short clips still move visibly (up to 4% of the frame per frame).
    max_speed = min(0.55 / max(frames - 1, 1), 0.04)
    objects = []
    for color in colors:
        shape = str(rng.choice(SHAPES))
        direction = Direction(str(rng.choice([d.value for d in Direction])))
        if shape == held_out_shape(str(color), direction):  # the next shape: same draws
            shape = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]
        motions = [Motion.PLAIN, Motion.PULSING] + ([] if shape in _ROUND else [Motion.SPINNING])
        motion = motions[int(rng.integers(len(motions)))]
        speed = float(rng.uniform(0.5, 1.0)) * max_speed
        travel = speed * (frames - 1)
        dx, dy = direction.vector
        # Start so that start + travel stays inside [0.2, 0.8] along the motion axis.
        along_lo, along_hi = (0.2, 0.8 - travel) if dx + dy > 0 else (0.2 + travel, 0.8)
        along = float(rng.uniform(along_lo, max(along_lo, along_hi)))
        across = float(rng.uniform(0.2, 0.8))
        start = (along, across) if dx != 0 else (across, along)
        objects.append(
            SceneObject(
                shape=shape,
                color=str(color),
                direction=direction,
                motion=motion,
                start=start,
                speed=speed,
                size=float(rng.uniform(0.14, 0.24)),
                phase=float(rng.uniform(0, 2 * math.pi)),
            )
        )
    background = Background(str(rng.choice([b.value for b in Background])))
    return Scene(tuple(objects), background, int(rng.integers(2**31)))


def _background(kind: Background, height: int, width: int, seed: int) -> np.ndarray:
    """A static (H, W, 3) uint8 background, values kept below 110 (see Background)."""
    rng = np.random.default_rng(seed)
    if kind is Background.BLACK:
        return np.zeros((height, width, 3), np.uint8)
    if kind is Background.GRADIENT:
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = np.cos(angle) * xs / width + np.sin(angle) * ys / height
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)  # to [0, 1]
        gray = (10 + 90 * ramp).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if kind is Background.NOISE:
        # Smooth value noise: a coarse random grid upsampled, plus a little fine grain.
        cells = int(rng.integers(4, 12))
        coarse = rng.uniform(0, 80, size=(cells, cells)).astype(np.float32)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        grain = rng.uniform(0, 20, size=(height, width)).astype(np.float32)
        gray = np.clip(smooth + grain, 0, 105).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    cell = max(4, int(min(height, width) * rng.uniform(0.08, 0.2)))
    ys, xs = np.mgrid[0:height, 0:width]
    if kind is Background.CHECKERBOARD:
        gray = np.where(((ys // cell) + (xs // cell)) % 2 == 0, 25, 75).astype(np.uint8)
    else:  # GRID: thin lines on dark grey
        lines = (ys % cell < max(1, cell // 10)) | (xs % cell < max(1, cell // 10))
        gray = np.where(lines, 90, 20).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _polygon(shape: str, radius: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) around the origin for polygonal shapes."""
    if shape == "triangle":
        k, radii = 3, [radius]
    elif shape in ("square", "stripes"):
        k, radii, angle = 4, [radius], angle + math.pi / 4
    elif shape == "diamond":
        k, radii = 4, [radius * 1.1]
    elif shape == "star":
        k, radii = 5, [radius * 1.15, radius * 0.5]
    else:  # cross: 12 vertices of a plus sign
        a, b = radius, radius * 0.35
        pts = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a)]
        pts += [(-x, -y) for x, y in pts]
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        return np.asarray(pts) @ rot.T
    steps = k * len(radii)
    theta = angle - math.pi / 2 + np.arange(steps) * 2 * math.pi / steps
    r = np.resize(np.asarray(radii), steps)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _draw(canvas: np.ndarray, obj: SceneObject, frame: int) -> None:
    height, width = canvas.shape[:2]
    dx, dy = obj.direction.vector
    cx = (obj.start[0] + dx * obj.speed * frame) * width
    cy = (obj.start[1] + dy * obj.speed * frame) * height
    radius = obj.size * min(height, width)
    angle = 0.0  # upright unless spinning, so a square never reads as a diamond
    if obj.motion is Motion.PULSING:
        radius *= 1.0 + 0.3 * math.sin(obj.phase + 0.6 * frame)
    elif obj.motion is Motion.SPINNING:
        angle = obj.phase + 0.25 * frame
    color = COLORS[obj.color]
    shift = 4  # sub-pixel precision for cv2 drawing (coordinates scaled by 2**shift)
    scale = 1 << shift
    centre = (int(cx * scale), int(cy * scale))
    if obj.shape == "circle":
        cv2.circle(canvas, centre, int(radius * scale), color, -1, cv2.LINE_AA, shift)
        return
    if obj.shape == "ring":
        thick = max(2, int(radius * 0.35))
        cv2.circle(
            canvas, centre, int((radius - thick / 2) * scale), color, thick, cv2.LINE_AA, shift
        )
        return
    pts = _polygon(obj.shape, radius, angle) + (cx, cy)
    if obj.shape != "stripes":
        cv2.fillPoly(canvas, [(pts * scale).astype(np.int32)], color, cv2.LINE_AA, shift)
        return
    # Stripes: four parallel bars inside the (rotating) square, drawn as thin quads.
    c, s = math.cos(angle), math.sin(angle)
    along, across = np.array([c, s]), np.array([-s, c])
    half = radius * 0.8
    for i in range(4):
        off = -half + (i + 0.25) * (2 * half / 4)
        w = half / 4
        quad = [
            (cx, cy) + across * off + along * half,
            (cx, cy) + across * (off + w) + along * half,
            (cx, cy) + across * (off + w) - along * half,
            (cx, cy) + across * off - along * half,
        ]
        cv2.fillPoly(
            canvas, [(np.asarray(quad) * scale).astype(np.int32)], color, cv2.LINE_AA, shift
        )


def render_scene(scene: Scene, frames: int, height: int, width: int) -> np.ndarray:
    """Draw a planned scene: uint8 (F, H, W, 3) RGB."""
    background = _background(scene.background, height, width, scene.bg_seed)
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        out[f] = background
        for obj in scene.objects:
            _draw(out[f], obj, f)
    return out
