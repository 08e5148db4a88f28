"""umT5 prompt encoding for Wan2.1-architecture models, from a local folder only.

`UMT5TextEncoder` runs transformers' `UMT5EncoderModel` and its tokenizer from files the user
downloaded (never the network) and gives what Wan's own pipeline gives its DiT: the prompt
cleaned as Wan cleans it (HTML entities, whitespace, ftfy when installed), tokenized with the
closing `</s>`, encoded, and the states after the prompt's tokens set to zero up to a fixed
length (512 for Wan). Wan's DiT attends to all of those positions, zeros included, so the mask
is all True by default; `mask_padding=True` marks the prompt's tokens only, for a DiT that
masks its padding as ours do with MiniLM.

The folder is either a model's `-Diffusers` download (`text_encoder/` and `tokenizer/` inside)
or one folder holding both the model (`config.json` and its weights) and the tokenizer
(`tokenizer.json` or `spiece.model`). The cache, batching and blending are MiniLM's
(model/text.py); `identity` names the encoder for model bundles.

Letters in shape comments: B prompts, L tokens (`max_length`), l the longest prompt, D width.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model.bundle import UMT5, TextEncoderId
from model.text import CachedTextEncoder, Row

WAN_TEXT_LEN = 512  # the length Wan pads its prompts to
INSTALL_HINT = 'pip install -e ".[wan]"'
MODEL_SUBFOLDER = "text_encoder"  # a diffusers pipeline folder's layout
TOKENIZER_SUBFOLDER = "tokenizer"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy's fixes when it is installed, HTML entities unescaped
    (twice, for doubly escaped text), runs of whitespace made one space, ends stripped."""
    try:
        import ftfy
    except ImportError:
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _require_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(
            f"the umT5 text encoder needs the package 'transformers', which is not installed; "
            f"run `{INSTALL_HINT}`"
        )


def _weights_missing(model_dir: Path, where: str) -> list[str]:
    """What the model folder lacks: the weights, or shards its index names."""
    present = [n for n in WEIGHT_FILES if (model_dir / n).is_file()]
    if not present:
        return [f"the weights {where}{WEIGHT_FILES[0]} (or {where}{WEIGHT_FILES[2]})"]
    index = next((n for n in present if n.endswith(".index.json")), None)
    if index is None or any(not n.endswith(".index.json") for n in present):
        return []
    try:
        shards = sorted(set(json.loads((model_dir / index).read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError):
        return [f"a readable {where}{index}"]
    return [f"the shard {where}{s}" for s in shards if not (model_dir / s).is_file()]


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in TOKENIZER_FILES)


def resolve_folders(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a umT5 download, or one sentence on what is missing."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"the umT5 folder {root} does not exist or is not a folder.")
    model_dir = root / MODEL_SUBFOLDER if (root / MODEL_SUBFOLDER).is_dir() else root
    tok_dir = root / TOKENIZER_SUBFOLDER
    if not tok_dir.is_dir() and (model_dir == root or _has_tokenizer(root)):
        tok_dir = root
    model_at = f"{MODEL_SUBFOLDER}/" if model_dir != root else ""
    tok_at = f"{TOKENIZER_SUBFOLDER}/" if tok_dir != root else ""
    missing: list[str] = []
    if not (model_dir / "config.json").is_file():
        missing.append(f"{model_at}config.json")
    missing += _weights_missing(model_dir, model_at)
    if not _has_tokenizer(tok_dir):
        missing.append(
            f"a tokenizer {tok_at}{TOKENIZER_FILES[0]} (or {tok_at}{TOKENIZER_FILES[1]})"
        )
    if missing:
        original = any(root.glob("models_t5_*.pth"))
        hint = (
            "the original Wan2.1 .pth format is not read, use the model's -Diffusers download"
            if original
            else f"give a -Diffusers download (with {MODEL_SUBFOLDER}/ and "
            f"{TOKENIZER_SUBFOLDER}/) or a folder holding the umT5 model and its tokenizer"
        )
        listed = ", ".join(missing[:-1]) + " and " * (len(missing) > 1) + missing[-1]
        raise FileNotFoundError(f"the umT5 folder {root} lacks {listed}; {hint}.")
    return model_dir, tok_dir


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable JSON model config ({e}).") from e
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind != "umt5" or not isinstance(config.get("d_model"), int):
        raise ValueError(
            f"{path} describes a {kind!r} model, not umT5 (model_type 'umt5' with a d_model); "
            "give the umT5 text encoder's folder."
        )
    return config


def umt5_version(config: dict[str, Any]) -> str:
    """The architecture a umT5 config describes, as a bundle records it: width, layers and
    vocabulary (umt5-xxl, Wan's: d4096-l24-v256384)."""
    return f"d{config['d_model']}-l{config.get('num_layers', '?')}-v{config.get('vocab_size', '?')}"


class UMT5TextEncoder(CachedTextEncoder):
    """umT5 encoder states for a Wan2.1-architecture DiT, with MiniLM's cache and blending.

    `encode(prompt | prompts)` -> TextEmbedding with states (B, max_length, d_model) in
    float32, zero after each prompt's tokens; mask all True (Wan's DiT attends to every
    position) or, with `mask_padding`, True on the prompt's tokens; pooled the L2-normalized
    mean over the prompt's tokens (Wan does not use it; blending and comparisons do).
    `dtype` is the network's (None: bfloat16 on CUDA, as Wan runs it, else float32).
    The folder and transformers are checked at construction; weights load on first use.
    """

    def __init__(
        self,
        path: str | Path,
        max_length: int = WAN_TEXT_LEN,
        device: torch.device | str = "cpu",
        cache_size: int = 256,
        *,
        dtype: torch.dtype | None = None,
        mask_padding: bool = False,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1 (the closing </s>), got {max_length}")
        super().__init__(max_length, device, cache_size)
        self.model_dir, self.tokenizer_dir = resolve_folders(path)
        self._config = _read_config(self.model_dir)
        _require_transformers()
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.mask_padding = mask_padding
        self._tokenizer: Any = None

    @property
    def dim(self) -> int:
        return int(self._config["d_model"])

    @property
    def identity(self) -> TextEncoderId:
        """What a bundle records for this encoder (model.bundle.text_encoder_id reads it)."""
        return TextEncoderId(UMT5, umt5_version(self._config))

    @property
    def model(self) -> Any:
        """The loaded `UMT5EncoderModel`, or None before the first encode()/load()."""
        return self._model

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        # As model.text: offline unless the user chose otherwise; local_files_only either way.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as e:
            raise ImportError(
                f"the umT5 text encoder could not import transformers ({e}); run `{INSTALL_HINT}`"
            ) from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"the umT5 tokenizer in {self.tokenizer_dir} could not be loaded ({first})."
            ) from e
        model = UMT5EncoderModel.from_pretrained(
            self.model_dir, local_files_only=True, dtype=self.dtype
        )
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval()

    @torch.no_grad()  # not inference_mode: its tensors could not feed a training graph
    def _run(self, prompts: list[str]) -> list[Row]:
        # Pad to the longest prompt: umT5's attention gives padded keys no weight, so the
        # prompt's states equal Wan's run over all 512 positions; zeros are added below.
        tok = self._tokenizer(
            [clean_prompt(p) for p in prompts],
            padding=True,
            truncation=True,
            max_length=self._max_length,
            add_special_tokens=True,
            return_tensors="pt",
        ).to(self.device)
        ids, real = tok["input_ids"], tok["attention_mask"].bool()  # (B, l)
        hidden = self._model(input_ids=ids, attention_mask=real.long()).last_hidden_state
        hidden = hidden.float() * real.unsqueeze(-1)  # zero after each prompt, as Wan does
        count = real.sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
        pooled = F.normalize(hidden.sum(dim=1) / count, dim=-1)  # (B, D)
        pad = self._max_length - hidden.shape[1]
        states = F.pad(hidden, (0, 0, 0, pad))  # (B, L, D)
        if self.mask_padding:
            mask = F.pad(real, (0, pad), value=False)  # (B, L)
        else:
            mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        # Cloned per row so cached rows do not pin the whole batch's storage.
        return [
            (states[i].clone(), mask[i].clone(), pooled[i].clone()) for i in range(len(prompts))
        ]
