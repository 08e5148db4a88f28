"""Checkpoints as safetensors files with the config in the metadata. Never unpickles.

Metadata keys: `kind` (what the file holds, e.g. "streamdit" or "autoencoder"), `config`
(the config dataclass as JSON), and any extra string metadata the caller adds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn


class _Config(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


M = TypeVar("M", bound=nn.Module)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, of another kind, or doesn't fit its config."""


def save_checkpoint(
    path: str | Path,
    module: nn.Module,
    config: _Config,
    kind: str,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `module`'s state (parameters and buffers) and `config` to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "config": json.dumps(config.to_dict()), **(metadata or {})}
    # safetensors refuses shared or non-contiguous storage; clone to be safe and portable.
    state = {k: v.detach().contiguous().cpu().clone() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a truncated checkpoint
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({e})") from e


def load_checkpoint(
    path: str | Path,
    module_cls: type[M],
    config_cls: Any,
    kind: str,
    device: torch.device | str = "cpu",
) -> M:
    """Rebuild the module from the config in the file and load its weights."""
    meta = read_metadata(path)
    if meta.get("kind") != kind:
        raise CheckpointError(
            f"{path} holds a {meta.get('kind')!r} checkpoint, expected {kind!r}; "
            "pick the right file"
        )
    if "config" not in meta:
        raise CheckpointError(f"{path} has no config in its metadata; it was not saved by us")
    config = config_cls.from_dict(json.loads(meta["config"]))
    # Built on the target device (not `meta`) so non-persistent buffers get real values.
    with torch.device(device):
        module = module_cls(config)
    expected = module.state_dict()
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        names = set(f.keys())
        for name, ref in expected.items():
            if name not in names:
                raise CheckpointError(f"{path} lacks tensor {name!r} that its config requires")
            shape = tuple(f.get_slice(name).get_shape())
            if shape != tuple(ref.shape):
                raise CheckpointError(
                    f"{path}: tensor {name!r} has shape {shape} but its config needs "
                    f"{tuple(ref.shape)}"
                )
        extra = sorted(names - set(expected))
        if extra:
            raise CheckpointError(f"{path} has tensor {extra[0]!r} that its config does not use")
        state = {name: f.get_tensor(name) for name in expected}
    module.load_state_dict(state)
    return module.eval()


def load_streamdit(path: str | Path, device: torch.device | str = "cpu"):
    """Load a StreamDiT checkpoint saved with kind "streamdit"."""
    from model.config import StreamDiTConfig
    from model.dit import StreamDiT

    return load_checkpoint(path, StreamDiT, StreamDiTConfig, "streamdit", device)
