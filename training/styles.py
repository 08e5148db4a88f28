"""The captioned style corpus: real footage rendered in named looks, for video to video.

In video to video the app feeds the camera's frames, noised, to the DiT with a prompt that
names a look ("a pencil sketch"). The DiT learns what that prompt means from this corpus:
each item is a real clip (`training.footage.PackagedFootage`, or any source of real clips)
either filtered frame by frame in one `training.looks.Look`, captioned with exactly that
look's prompt, or left as it is and captioned `PLAIN_CAPTION` ("a video"). The caption is
the look alone, not the clip's content, because the look alone is what a streamer types.
Each choice (a look or plain) is equally likely.

Item ``i`` is a pure function of ``(seed, i)`` and the source's item ``i``, like every
dataset in `training.data`; `StyleCorpus.source_clip` gives the plain clip behind a look, the
start of paired training (training/objective.py).

Letters: F frames, H W pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data import NOMINAL_LENGTH, to_clip_tensor
from training.looks import PLAIN_CAPTION, Look, apply_look_clip


def to_uint8_frames(clip: torch.Tensor) -> np.ndarray:
    """float (3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3); exact inverse of `to_clip_tensor`."""
    frames = clip.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return frames.permute(1, 2, 3, 0).numpy()  # C F H W -> F H W C


class StyleCorpus(Dataset):
    """Clips of ``source`` in a look named by the caption, or plain ("a video").

    ``looks`` limits the looks drawn (all of them by default); ``plain`` is the weight of
    unfiltered clips relative to one look (1 = as often as each look).
    """

    def __init__(
        self,
        source: Dataset,
        seed: int = 0,
        looks: Sequence[Look] = tuple(Look),
        plain: float = 1.0,
    ):
        if not looks:
            raise ValueError("a style corpus needs at least one look")
        if plain < 0:
            raise ValueError(f"plain must be >= 0, got {plain}")
        self.source, self.seed, self.looks = source, seed, tuple(looks)
        weights = np.array([plain] + [1.0] * len(self.looks), np.float64)
        self.probabilities = weights / weights.sum()  # [plain, look 0, look 1, ...]

    def __len__(self) -> int:
        return NOMINAL_LENGTH

    def look(self, index: int) -> Look | None:
        """The look of item ``index`` (None = plain)."""
        rng = np.random.default_rng([self.seed, index, 5])
        choice = int(rng.choice(len(self.probabilities), p=self.probabilities))
        return None if choice == 0 else self.looks[choice - 1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        clip, _ = self.source[index]
        look = self.look(index)
        if look is None:
            return clip, PLAIN_CAPTION
        frames = apply_look_clip(to_uint8_frames(clip), look)
        return to_clip_tensor(frames), look.caption

    def source_clip(self, index: int) -> torch.Tensor | None:
        """The plain clip a look was made from (None for a plain item: it is its own)."""
        return None if self.look(index) is None else self.source[index][0]
