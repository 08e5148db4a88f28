"""A download-free stand-in for the MiniLM text encoder: hashed word embeddings.

Each word maps to a fixed random vector seeded by its hash, so equal captions embed equally
and different words differ; enough for tests and smoke runs to exercise conditioning and
text dropout. Never ship a model trained with it: the app encodes prompts with MiniLM.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import torch
from torch import Tensor

from model.text import TextEmbedding


class HashTextEncoder:
    """Implements model.text.TextEncoderProtocol."""

    def __init__(self, dim: int = 384, max_length: int = 16):
        self._dim, self._max_length = dim, max_length
        self._cache: dict[str, Tensor] = {}

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_length(self) -> int:
        return self._max_length

    def _word(self, word: str) -> Tensor:
        if word not in self._cache:
            seed = int.from_bytes(hashlib.sha1(word.encode()).digest()[:8], "little")
            gen = torch.Generator().manual_seed(seed % 2**63)
            self._cache[word] = torch.randn(self._dim, generator=gen)
        return self._cache[word]

    def encode(self, prompts: str | Sequence[str]) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        states = torch.zeros(len(prompts), self._max_length, self._dim)
        mask = torch.zeros(len(prompts), self._max_length, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            # "<empty>" gives the empty prompt one real token, as a tokenizer's [CLS] would.
            words = re.findall(r"[a-z0-9]+", prompt.lower())[: self._max_length] or ["<empty>"]
            for j, word in enumerate(words):
                states[i, j] = self._word(word)
            mask[i, : len(words)] = True
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return TextEmbedding(states, mask, pooled)
