"""Convert a Wan2.1-architecture transformer into a StreamDiT checkpoint.

    python -m model.import_wan SRC DST [--heads N] [--fps 24] [--dtype keep]

SRC is a folder (a model's download, a diffusers repo with a `transformer/` folder, or the
transformer folder itself), a single .safetensors file, or a `*.safetensors.index.json` of a
sharded one. Both key layouts are read: the original Wan2.1 code's (`blocks.N.self_attn.q`,
also SkyReels-V2's) and diffusers' (`WanTransformer3DModel` / `SkyReelsV2Transformer3DModel`:
`blocks.N.attn1.to_q`, `condition_embedder...`, `scale_shift_table`). DST is a checkpoint in
model.checkpoint's format (kind "streamdit"): the config holds the Wan switches (see
docs/WEIGHTS.md) and the metadata key `origin` records what was converted, from where.

Tensors are renamed, the per-block tables reshaped (1, 6, D) -> (1, 1, 6, D), and nothing
else changes: our network then computes exactly Wan's function, in our time and sign
conventions (`net(x, t, text) == -wan(x, 1000 (1 - t), text)`). SkyReels-V2's frame-rate
embedding is a constant added to the time projection: it is folded into that projection's
bias for the frame rate `--fps` names (16, or anything else for the 24 fps embedding).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from model.checkpoint import CheckpointError, meta_module
from model.config import FULL_WINDOW, Prediction, StreamDiTConfig, TimeInput
from model.dit import StreamDiT

WAN_HEAD_DIM = 128  # every released Wan2.1 size; used when no config.json gives the heads
WAN_EPS = 1e-6
WAN_TEXT_LEN = 512  # umT5 tokens Wan pads its prompt to
# Wan's 480p grid through its 8x spatial / 4x temporal VAE: 81 frames of 480x832.
WAN_LATENT_FRAMES = 21
WAN_LATENT_SIZE = (60, 104)
PROGRESS_MIN_BYTES = 64 << 20  # show a bar only when the conversion is large
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WanImportError(CheckpointError):
    """A source that is missing, not a Wan2.1-architecture transformer, or not supported."""


class KeyLayout(str, Enum):
    ORIGINAL = "original"  # the Wan2.1 repository's WanModel (and SkyReels-V2's)
    DIFFUSERS = "diffusers"  # diffusers' WanTransformer3DModel / SkyReelsV2Transformer3DModel


# diffusers name -> original name, first match wins ("\1" is the block prefix).
_DIFFUSERS_RULES: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^(blocks\.\d+\.)attn1\.to_(q|k|v)\.", r"\1self_attn.\2."),
    (r"^(blocks\.\d+\.)attn1\.to_out\.0\.", r"\1self_attn.o."),
    (r"^(blocks\.\d+\.)attn1\.norm_(q|k)\.", r"\1self_attn.norm_\2."),
    (r"^(blocks\.\d+\.)attn2\.to_(q|k|v)\.", r"\1cross_attn.\2."),
    (r"^(blocks\.\d+\.)attn2\.to_out\.0\.", r"\1cross_attn.o."),
    (r"^(blocks\.\d+\.)attn2\.norm_(q|k)\.", r"\1cross_attn.norm_\2."),
    (r"^(blocks\.\d+\.)norm2\.", r"\1norm3."),  # diffusers' norm2 is the cross-attention's
    (r"^(blocks\.\d+\.)ffn\.net\.0\.proj\.", r"\1ffn.0."),
    (r"^(blocks\.\d+\.)ffn\.net\.2\.", r"\1ffn.2."),
    (r"^(blocks\.\d+\.)scale_shift_table$", r"\1modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^fps_projection\.net\.0\.proj\.", "fps_projection.0."),
    (r"^fps_projection\.net\.2\.", "fps_projection.2."),
)
_FPS = (
    "fps_embedding.weight",
    *(f"fps_projection.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")),
)


def original_name(name: str, layout: KeyLayout) -> str:
    """A tensor's name in the original Wan2.1 layout (unchanged when already there or when
    no rule knows it: the completeness check names it then)."""
    if layout is KeyLayout.DIFFUSERS:
        for pattern, repl in _DIFFUSERS_RULES:
            new, n = re.subn(pattern, repl, name)
            if n:
                return new
    return name


def detect_layout(names: Sequence[str], src: Path) -> KeyLayout:
    if "blocks.0.self_attn.q.weight" in names:
        return KeyLayout.ORIGINAL
    if "blocks.0.attn1.to_q.weight" in names:
        return KeyLayout.DIFFUSERS
    raise WanImportError(
        f"{src} does not hold a Wan2.1-architecture transformer: neither the original "
        "(blocks.0.self_attn.q.weight) nor the diffusers (blocks.0.attn1.to_q.weight) key "
        "layout is there."
    )


@dataclass(frozen=True)
class Source:
    """Where the tensors are: the shard files, each tensor's file, and any config.json."""

    path: Path
    files: tuple[Path, ...]
    where: dict[str, Path]  # stored tensor name -> file
    config: dict[str, Any]  # the source's config.json, {} when there is none


def _index_files(index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WanImportError(f"{index} is not a safetensors index (no weight_map): {e}.") from e
    where = {name: index.parent / file for name, file in weight_map.items()}
    missing = sorted({p for p in where.values() if not p.is_file()})
    if missing:
        raise WanImportError(f"{index} names shard {missing[0]} that is not there; fetch it.")
    return where


def _file_names(path: Path) -> dict[str, Path]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict.fromkeys(f.keys(), path)
    except Exception as e:  # safetensors raises its own types for bad headers
        raise WanImportError(f"{path} is not a readable safetensors file ({e}).") from e


def _weights_in(folder: Path) -> dict[str, Path]:
    """The tensors of the one model a folder holds (sharded or not)."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    files = sorted(folder.glob("*.safetensors"))
    if len(indexes) == 1:
        return _index_files(indexes[0])
    if len(indexes) > 1:
        raise WanImportError(f"{folder} has several safetensors indexes; give SRC as one of them.")
    if len(files) == 1:
        return _file_names(files[0])
    if files:
        raise WanImportError(
            f"{folder} has {len(files)} safetensors files and no index; give SRC as one file."
        )
    raise WanImportError(f"{folder} has no .safetensors weights; give the transformer's folder.")


def find_source(src: str | Path) -> Source:
    """Resolve SRC (folder, file or index) to its tensors and config, checking they exist."""
    path = Path(src)
    if not path.exists():
        raise WanImportError(f"{path} does not exist; give a folder or a .safetensors file.")
    if path.is_dir():
        folder = path
        if not any(path.glob("*.safetensors")) and (path / "transformer").is_dir():
            folder = path / "transformer"  # a whole diffusers pipeline folder
        where = _weights_in(folder)
    elif path.name.endswith(".safetensors.index.json"):
        folder, where = path.parent, _index_files(path)
    elif path.suffix == ".safetensors":
        folder, where = path.parent, _file_names(path)
    else:
        raise WanImportError(
            f"{path} is neither a folder, a .safetensors file nor a .safetensors.index.json."
        )
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except ValueError as e:
            raise WanImportError(f"{folder / 'config.json'} is not valid JSON ({e}).") from e
    files = tuple(sorted(set(where.values())))
    return Source(path=path, files=files, where=where, config=config)


def _strip_prefix(names: Sequence[str]) -> str:
    for prefix in _PREFIXES:
        if names and all(n.startswith(prefix) for n in names):
            return prefix
    return ""


def _config_heads(source: Source, dim: int, heads: int | None) -> int:
    cfg = source.config
    if heads is None:
        heads = cfg.get("num_attention_heads", cfg.get("num_heads"))
    if heads is None:
        if dim % WAN_HEAD_DIM:
            raise WanImportError(
                f"{source.path} has no config.json and width {dim} is not a multiple of Wan's "
                f"head width {WAN_HEAD_DIM}; give --heads."
            )
        heads = dim // WAN_HEAD_DIM
    heads = int(heads)
    if heads < 1 or dim % heads or (dim // heads) % 2:
        raise WanImportError(f"{heads} heads do not split width {dim} into even head widths.")
    head_dim = cfg.get("attention_head_dim")
    if head_dim is not None and int(head_dim) * heads != dim:
        raise WanImportError(
            f"{source.path}: config.json says {heads} heads of {head_dim} but the width is {dim}."
        )
    return heads


def _check_source_config(source: Source) -> None:
    cfg = source.config
    eps = cfg.get("eps", WAN_EPS)
    if not math.isclose(float(eps), WAN_EPS):
        raise WanImportError(
            f"{source.path} uses norm eps {eps}; only Wan's {WAN_EPS} is supported."
        )
    qk = cfg.get("qk_norm", True)
    if qk not in (True, False, None, "rms_norm_across_heads"):
        raise WanImportError(
            f"{source.path} uses qk_norm {qk!r}; only RMSNorm across heads (Wan's) is supported."
        )
    for key in ("image_dim", "added_kv_proj_dim"):
        if cfg.get(key) is not None:
            raise WanImportError(
                f"{source.path} is an image-to-video model ({key}); only text-to-video "
                "is supported."
            )


def infer_config(
    shapes: dict[str, tuple[int, ...]], source: Source, heads: int | None
) -> StreamDiTConfig:
    """The StreamDiT config of a Wan2.1-architecture transformer, from its tensor shapes
    (original names) and, for the head count and text length, its config.json."""
    _check_source_config(source)
    dim, channels, *patch = shapes["patch_embedding.weight"]
    depth = 1 + max(int(n.split(".")[1]) for n in shapes if n.startswith("blocks."))
    out = shapes["head.head.weight"][0]
    if out != channels * math.prod(patch):
        raise WanImportError(
            f"{source.path} outputs {out // math.prod(patch)} channels for {channels} in; "
            "StreamDiT needs them equal (image-to-video inputs are not supported)."
        )
    ffn_dim = shapes["blocks.0.ffn.0.weight"][0]
    return StreamDiTConfig(
        latent_channels=channels,
        patch_size=tuple(patch),
        dim=dim,
        depth=depth,
        heads=_config_heads(source, dim, heads),
        mlp_ratio=ffn_dim / dim,
        ffn_dim=ffn_dim,
        window=FULL_WINDOW,
        text_dim=shapes["text_embedding.0.weight"][1],
        text_len=int(source.config.get("text_len", WAN_TEXT_LEN)),
        sigma_min=0.0,  # Wan's path x = (1 - s) x_data + s eps ends exactly at the noise
        qk_norm="blocks.0.self_attn.norm_q.weight" in shapes,
        adaln_single=True,
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
        freq_dim=shapes["time_embedding.0.weight"][1],
        rope_theta=10000.0,
        latent_frames=WAN_LATENT_FRAMES,
        latent_size=WAN_LATENT_SIZE,
        head_table=True,
        time_input=TimeInput.NOISE_AT_ONE,
        prediction=Prediction.NOISE_MINUS_DATA,
    )


def _fold_fps(state: dict[str, torch.Tensor], fps: int) -> bool:
    """Add SkyReels-V2's frame-rate term (a constant) to the time projection's bias and drop
    its tensors. Returns whether the source had them."""
    if not any(k in state for k in _FPS):
        return False
    missing = [k for k in _FPS if k not in state]
    if missing:
        raise WanImportError(f"the frame-rate embedding lacks {missing[0]!r}; the file is damaged.")
    emb = state.pop("fps_embedding.weight").double()[0 if fps == 16 else 1]  # SkyReels' choice
    w0, b0 = state.pop("fps_projection.0.weight").double(), state.pop("fps_projection.0.bias")
    w2, b2 = state.pop("fps_projection.2.weight").double(), state.pop("fps_projection.2.bias")
    term = w2 @ torch.nn.functional.silu(w0 @ emb + b0.double()) + b2.double()
    bias = state["time_projection.1.bias"]
    state["time_projection.1.bias"] = (bias.double() + term).to(bias.dtype)
    return True


def _to_streamdit(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if re.fullmatch(r"blocks\.\d+\.modulation", name):
        return tensor.reshape(1, 1, *tensor.shape[-2:])  # (1, 6, D) -> (1, 1, 6, D)
    return tensor


def _check_complete(state: dict[str, torch.Tensor], cfg: StreamDiTConfig, src: Path) -> None:
    expected = meta_module(StreamDiT, cfg).state_dict()
    for name, ref in expected.items():
        if name not in state:
            raise WanImportError(f"{src} lacks tensor {name!r} (in our names); it is incomplete.")
        if tuple(state[name].shape) != tuple(ref.shape):
            raise WanImportError(
                f"{src}: tensor {name!r} has shape {tuple(state[name].shape)}, expected "
                f"{tuple(ref.shape)}; it is not a Wan2.1-architecture transformer."
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise WanImportError(
            f"{src} has tensor {extra[0]!r} that a Wan2.1 text-to-video transformer does not "
            "have; image-to-video and other variants are not supported."
        )


@dataclass(frozen=True)
class ImportResult:
    path: Path
    config: StreamDiTConfig
    layout: KeyLayout
    tensors: int
    fps_folded: bool


def convert(
    src: str | Path,
    dst: str | Path,
    heads: int | None = None,
    fps: int = 24,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> ImportResult:
    """Read SRC, write the StreamDiT checkpoint DST; `dtype` None keeps the stored dtypes."""
    source = find_source(src)
    prefix = _strip_prefix(list(source.where))
    stored = {n[len(prefix) :]: n for n in source.where}
    layout = detect_layout(list(stored), source.path)
    names = {original_name(n, layout): n for n in stored}  # original name -> ours w/o prefix

    sizes: dict[str, tuple[int, ...]] = {}
    nbytes = 0
    for path in source.files:
        with safe_open(str(path), framework="pt") as f:
            for n in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                sl = f.get_slice(n)
                sizes[n] = tuple(sl.get_shape())
                nbytes += math.prod(sizes[n]) * (2 if sl.get_dtype() in ("BF16", "F16") else 4)
    shapes = {o: sizes[stored[s]] for o, s in names.items()}
    for required in ("patch_embedding.weight", "head.head.weight", "text_embedding.0.weight",
                     "time_embedding.0.weight", "blocks.0.ffn.0.weight"):  # fmt: skip
        if required not in shapes:
            raise WanImportError(f"{source.path} lacks {required!r}; it is incomplete.")
    cfg = infer_config(shapes, source, heads)
    log(f"{source.path}: {layout.value} layout, {cfg.depth} blocks of width {cfg.dim}")

    state: dict[str, torch.Tensor] = {}
    bar = tqdm(
        total=nbytes, unit="B", unit_scale=True, desc="converting",
        disable=not progress or nbytes < PROGRESS_MIN_BYTES, file=sys.stderr,
    )  # fmt: skip
    with bar:
        for path in source.files:
            with safe_open(str(path), framework="pt") as f:
                for orig, name in names.items():
                    full = stored[name]
                    if source.where[full] != path:
                        continue
                    t = f.get_tensor(full)
                    bar.update(t.numel() * t.element_size())
                    state[orig] = t if dtype is None or not t.is_floating_point() else t.to(dtype)
    folded = _fold_fps(state, fps)
    state = {n: _to_streamdit(n, t).contiguous() for n, t in state.items()}
    _check_complete(state, cfg, source.path)

    origin = {
        "architecture": "wan2.1",
        "key_layout": layout.value,
        "source": str(source.path),
        "files": [p.name for p in source.files],
        "source_class": source.config.get("_class_name", source.config.get("model_type", "")),
        "source_config": source.config,
        "fps_folded": fps if folded else None,
        "converted_by": "model.import_wan",
    }
    meta = {"kind": "streamdit", "config": json.dumps(cfg.to_dict()), "origin": json.dumps(origin)}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    log(f"writing {dst}")
    save_file(state, str(tmp), metadata=meta)  # no clone: a 14B model fits in memory once
    tmp.replace(dst)
    return ImportResult(dst, cfg, layout, len(state), folded)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.import_wan",
        description="Convert a Wan2.1-architecture transformer (original or diffusers keys) "
        "into a StreamDiT checkpoint.",
    )
    parser.add_argument("src", help="folder, .safetensors file or .safetensors.index.json")
    parser.add_argument("dst", help="the StreamDiT checkpoint to write (.safetensors)")
    parser.add_argument(
        "--heads",
        type=int,
        default=None,
        help="attention heads (default: config.json, else width/128)",
    )
    parser.add_argument(
        "--fps",
        type=int,
        choices=[16, 24],
        default=24,
        help="SkyReels-V2 checkpoints with a frame-rate embedding: the rate to fold in",
    )
    parser.add_argument(
        "--dtype", choices=["keep", *_DTYPES], default="keep", help="tensor dtype to store"
    )
    args = parser.parse_args(argv)
    try:
        result = convert(
            args.src,
            args.dst,
            heads=args.heads,
            fps=args.fps,
            dtype=None if args.dtype == "keep" else _DTYPES[args.dtype],
            progress=True,
            log=lambda line: print(line, file=sys.stderr),
        )
    except CheckpointError as e:
        parser.error(str(e))
    cfg = result.config
    print(
        f"wrote {result.path}: {result.tensors} tensors, {cfg.depth} blocks, width {cfg.dim}, "
        f"{cfg.heads} heads, from the {result.layout.value} layout"
        + (f", frame rate {args.fps} folded in" if result.fps_folded else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
