"""Checkpoints as safetensors files with the config in the metadata. Never unpickles.

Metadata keys: `kind` (what the file holds, e.g. "streamdit" or "autoencoder"), `config`
(the config dataclass as JSON), and any extra string metadata the caller adds.

Loading checks before it allocates: the module is first built on the `meta` device (shapes,
no memory), every tensor's name, shape and dtype in the file header is compared with it,
and safetensors itself refuses a header whose tensors the file's bytes do not cover. Only
then are the weights read, straight into the module (`assign=True`, no random init and no
second copy). A tiny file whose header claims a 4B-parameter config fails in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.overrides import TorchFunctionMode


class _Config(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


M = TypeVar("M", bound=nn.Module)

# safetensors dtype names (as `get_slice(name).get_dtype()` gives them) -> torch dtypes.
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


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
    meta = {"kind": kind, "config": json.dumps(config.to_dict()), **(metadata or {})}
    return save_tensors(path, module.state_dict(), meta)


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str]
) -> Path:
    """Write `tensors` and string metadata atomically: a crash mid-save never leaves a
    truncated file under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage; clone to be safe and portable.
    state = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(
            f"{path} is not a safetensors checkpoint or is truncated ({e}); give a complete "
            ".safetensors file."
        ) from e


def parse_config(path: str | Path, meta: Mapping[str, str], key: str, config_cls: Any) -> Any:
    """The config dataclass stored as JSON under metadata `key`, or one CheckpointError."""
    if key not in meta:
        raise CheckpointError(f"{path} has no {key!r} in its metadata; it was not saved by us.")
    try:
        return config_cls.from_dict(json.loads(meta[key]))
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} has an invalid {key!r} ({e}); re-export the file.") from e


def _header_dtype(f: Any, name: str) -> torch.dtype | None:
    return _DTYPES.get(f.get_slice(name).get_dtype())


def _check_header(path: Path, f: Any, expected: Mapping[str, torch.Tensor], prefix: str) -> None:
    """Names, shapes and dtypes in the header against `expected` (meta tensors); no data read."""
    names = {n[len(prefix) :] for n in list(f.keys()) if n.startswith(prefix)}
    for name, ref in expected.items():
        if name not in names:
            raise CheckpointError(
                f"{path} lacks tensor {prefix + name!r} that its config requires; re-export it."
            )
        shape = tuple(f.get_slice(prefix + name).get_shape())
        if shape != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: tensor {prefix + name!r} has shape {shape} but its config needs "
                f"{tuple(ref.shape)}; the file and its config disagree, re-export it."
            )
        dtype = _header_dtype(f, prefix + name)
        ok = dtype == ref.dtype or (
            dtype is not None and dtype.is_floating_point and ref.dtype.is_floating_point
        )
        if not ok:
            raise CheckpointError(
                f"{path}: tensor {prefix + name!r} is stored as "
                f"{f.get_slice(prefix + name).get_dtype()} but the model needs {ref.dtype}; "
                "re-export it."
            )
    extra = sorted(names - set(expected))
    if extra:
        raise CheckpointError(
            f"{path} has tensor {prefix + extra[0]!r} that its config does not use; re-export it."
        )


class _NoInitOnMeta(TorchFunctionMode):
    """Skips in-place ops (`normal_`, `zero_`, ...) on meta tensors: they have no data, and
    the first random init on `meta` routes through torch._refs, whose import of
    torch._dynamo costs ~1.3 s on a 2-core CPU, longer than the whole check."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # nn.init passes `tensor=`
        in_place = name.endswith("_") and not name.endswith("__")
        if in_place and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def meta_module(module_cls: type[M], config: Any) -> M:
    """`module_cls(config)` on the `meta` device: every shape, no memory, no init."""
    with torch.device("meta"), _NoInitOnMeta():
        return module_cls(config)


def load_module(
    path: str | Path,
    module_cls: type[M],
    config: Any,
    device: torch.device | str = "cpu",
    prefix: str = "",
) -> M:
    """Build `module_cls(config)` from the tensors named `prefix + name` in `path`.

    The module is built on `meta` and checked against the header first, so nothing large is
    allocated for a file that does not hold what its config says. Floating tensors stored in
    another precision (a float16 bundle) are converted to the module's own.
    """
    path = Path(path)
    module = meta_module(module_cls, config)
    expected = module.state_dict()
    try:
        f_ctx = safe_open(str(path), framework="pt", device=str(device))
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a safetensors checkpoint or is truncated ({e}); give a complete "
            ".safetensors file."
        ) from e
    with f_ctx as f:
        _check_header(path, f, expected, prefix)
        state = {n: f.get_tensor(prefix + n).to(ref.dtype) for n, ref in expected.items()}
    module.load_state_dict(state, assign=True)
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        # A non-persistent buffer is not in the file: build for real and copy the weights.
        with torch.device(device):
            module = module_cls(config)
        module.load_state_dict(state)
    return module.eval()


def load_checkpoint(
    path: str | Path,
    module_cls: type[M],
    config_cls: Any,
    kind: str,
    device: torch.device | str = "cpu",
) -> M:
    """Rebuild the module from the config in the file and load its weights (checked first)."""
    meta = read_metadata(path)
    if meta.get("kind") != kind:
        raise CheckpointError(
            f"{path} holds a {meta.get('kind')!r} checkpoint, expected {kind!r}; "
            "pick the right file."
        )
    config = parse_config(path, meta, "config", config_cls)
    return load_module(path, module_cls, config, device)


def _digest_update(h: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, in name order.

    Names the exact weights: the digest of a module's `state_dict()` equals the digest of
    the checkpoint it was saved to or loaded from (same dtype), whatever the file's metadata.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        _digest_update(h, name, tensors[name])
    return h.hexdigest()


def state_digest(module: nn.Module) -> str:
    """`tensor_digest` of a module's parameters and buffers."""
    return tensor_digest(module.state_dict())


def file_digest(path: str | Path, prefix: str = "", skip: str | None = None) -> str:
    """`tensor_digest` of the tensors under `prefix` in a file (prefix stripped from the
    names), leaving out names (after the prefix) that start with `skip`; read one at a time."""
    read_metadata(path)  # one sentence for a missing or damaged file
    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(n for n in list(f.keys()) if n.startswith(prefix)):
            if skip is None or not name[len(prefix) :].startswith(skip):
                _digest_update(h, name[len(prefix) :], f.get_tensor(name))
    return h.hexdigest()


def load_streamdit(path: str | Path, device: torch.device | str = "cpu"):
    """Load a StreamDiT checkpoint saved with kind "streamdit"."""
    from model.config import StreamDiTConfig
    from model.dit import StreamDiT

    return load_checkpoint(path, StreamDiT, StreamDiTConfig, "streamdit", device)
