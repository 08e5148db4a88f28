"""A DiT run that starts from a checkpoint (`model.init`, e.g. a Wan2.1-architecture model
converted by `model.import_wan`), with the parts such models come with: umT5 text
(`text.encoder = "umt5"`, `text.path`) and the TAEHV codec (`autoencoder.source = "taehv"`).
`training.train` builds every run through these when its config names them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from model.bundle import model_name
from model.checkpoint import CheckpointError, load_module, parse_config, read_metadata
from model.codec import VideoCodec
from model.config import CONFIGS, StreamDiTConfig
from model.dit import StreamDiT
from training.config import DEFAULT_PRESET, ConfigError, TrainConfig

# umT5 rows are (text_len, 4096) float32 on the device, 8 MiB each at Wan's 512 tokens.
UMT5_CACHE = 64
# The names of the public Wan2.1 widths, for the record of a model started from an import.
_WAN_SIZES = {1536: "1.3b", 5120: "14b"}


@functools.lru_cache(maxsize=4)
def _read_init(path: str, _stamp: int) -> tuple[StreamDiTConfig, dict[str, str]]:
    meta = read_metadata(path)
    if meta.get("kind") != "streamdit":
        raise CheckpointError(
            f"{path} holds a {meta.get('kind')!r} checkpoint, not a StreamDiT one; pick the "
            "right file."
        )
    return parse_config(path, meta, "config", StreamDiTConfig), meta


def init_checkpoint(cfg: TrainConfig) -> tuple[StreamDiTConfig, dict[str, str]]:
    """The config and metadata of model.init (read once per file version)."""
    path = Path(cfg.model.init)
    if not path.is_file():
        raise ConfigError(
            f"model.init {path} does not exist; convert a Wan2.1-architecture model with "
            f"`python -m model.import_wan SRC {path}` or point model.init at a StreamDiT checkpoint"
        )
    try:
        return _read_init(str(path.resolve()), path.stat().st_mtime_ns)
    except CheckpointError as e:
        raise ConfigError(f"model.init: {str(e).rstrip('.')}") from e


def model_label(cfg: TrainConfig) -> str:
    """The model in messages: its preset, or the file it starts from."""
    return cfg.model.preset or Path(cfg.model.init).name or DEFAULT_PRESET


def check_against_init(cfg: TrainConfig, net_cfg: StreamDiTConfig) -> None:
    """model.init fixes the model: a model.* setting may only repeat what it says."""
    m = cfg.model
    if m.preset and CONFIGS.get(m.preset) != net_cfg:
        raise ConfigError(
            f"model.preset {m.preset!r} contradicts model.init {m.init} (width {net_cfg.dim}, "
            f"depth {net_cfg.depth}), which gives the model's config; leave model.preset unset"
        )
    for key in ("text_dim", "text_len"):
        given, have = getattr(m, key), getattr(net_cfg, key)
        if given and given != have:
            raise ConfigError(
                f"model.{key} = {given} contradicts model.init {m.init}, whose {key} is {have}; "
                f"leave model.{key} at 0"
            )


def init_model_name(cfg: TrainConfig, net_cfg: StreamDiTConfig) -> str:
    """What the record calls the model: the preset, model.init's own name, or for an
    imported Wan its family and size (e.g. "wan2.1-1.3b"), else "custom"."""
    if not cfg.model.init:
        return cfg.model.preset or DEFAULT_PRESET
    _, meta = init_checkpoint(cfg)
    if meta.get("model"):
        return meta["model"]
    try:
        origin = json.loads(meta.get("origin") or "{}")
    except ValueError:
        origin = {}
    if isinstance(origin, dict) and origin.get("architecture"):
        source = str(origin.get("source_class", ""))
        family = "skyreels-v2" if source.startswith("SkyReels") else origin["architecture"]
        return f"{family}-{_WAN_SIZES.get(net_cfg.dim, f'd{net_cfg.dim}')}"
    return model_name(net_cfg)


def load_init(
    cfg: TrainConfig, net_cfg: StreamDiTConfig, record: dict[str, str], device: torch.device
) -> StreamDiT:
    """The network with model.init's weights (float32, train mode), after checking that a
    model.init trained by us learned this run's latent space and text encoder."""
    _, meta = init_checkpoint(cfg)
    for key in ("autoencoder_digest", "text_encoder"):
        if meta.get(key) and meta[key] != record[key]:
            raise ConfigError(
                f"model.init {cfg.model.init} was trained with {key} {meta[key][:16]} but this "
                f"run has {record[key][:16]}; use that run's [autoencoder] and [text] settings"
            )
    try:
        net = load_module(cfg.model.init, StreamDiT, net_cfg, device)
    except CheckpointError as e:
        raise ConfigError(f"model.init: {str(e).rstrip('.')}") from e
    return net.float().train()


def load_taehv(path: str, device: torch.device) -> VideoCodec:
    if not Path(path).is_file():
        raise ConfigError(
            f"autoencoder.checkpoint {path} does not exist; download the TAEHV file with "
            "`streamdit-live download taew2_1 --to DIR` and point autoencoder.checkpoint at "
            "DIR/taew2_1.pth"
        )
    from model.taehv import TAEHV

    try:
        return TAEHV.load(path, device)  # float32: its latents as TAEHV gives them
    except Exception as e:  # a damaged file: safetensors, pickle or shape errors
        raise ConfigError(
            f"autoencoder.checkpoint {path} is not a TAEHV weight file ({str(e).rstrip('.')})"
        ) from e


def load_umt5(cfg: TrainConfig, net_cfg: StreamDiTConfig, device: torch.device):
    """umT5 from text.path, padded to the DiT's text_len with every position attended (as
    Wan and the app run it); bfloat16 on CUDA, frozen."""
    from model.text_umt5 import UMT5TextEncoder

    try:
        encoder = UMT5TextEncoder(
            cfg.text.path, max_length=net_cfg.text_len, device=device, cache_size=UMT5_CACHE
        )
    except (OSError, ValueError, ImportError) as e:
        raise ConfigError(f"text.path: {str(e).rstrip('.')}") from e
    if encoder.dim != net_cfg.text_dim:
        raise ConfigError(
            f"model {model_label(cfg)!r} takes {net_cfg.text_dim}-d text but the umT5 in "
            f"{cfg.text.path} gives {encoder.dim}-d; give the text encoder of the model's download"
        )
    return encoder
