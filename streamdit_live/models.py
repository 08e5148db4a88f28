"""The models a stream runs on: the DiT, its autoencoder and text encoder, on one device.

Loading (random weights or a `--weights` bundle), the device choice and the CPU thread
count: everything the engine needs before its first step, kept apart from the stepping.

`--weights` takes a model bundle (model/bundle.py, docs/BUNDLES.md), a folder holding one,
a trained DiT and its autoencoder as two checkpoints whose recorded digest matches, or a
Wan2.1-architecture model's own `-Diffusers` download with a TAEHV file
(streamdit_live/wan_weights.py, docs/WEIGHTS.md). Any
other mix is refused with one sentence before a tensor is read: a DiT alone, an autoencoder
alone, parts whose digests differ, a text encoder other than the one the DiT was trained
with (the training stub included), a `--model` asked for that the weights are not, a frame
size the model was neither trained nor evaluated at, an empty folder.

Without `--weights` the model size that ships trained (`SHIPPED_MODEL`, `cpu`) loads its
shipped bundle from `model/weights/` (`shipped_weights`; the environment variable
`STREAMDIT_WEIGHTS` names another bundle or folder). A checkout without that file, another
size (`tiny`, `4b`) or `--random-weights` runs random weights, with the usual notice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import model as model_package
from model import (
    AE_CONFIGS,
    CONFIGS,
    StreamDiT,
    StreamDiTConfig,
    TextEncoder,
    TextEncoderProtocol,
    VideoAutoencoder,
    kernels,
)
from model.bundle import (
    BUNDLE_KIND,
    UMT5,
    Bundle,
    BundleError,
    BundleInfo,
    format_size,
    latent_space_digest,
    load_bundle,
    load_pair,
    minilm_id,
    pair_info,
    read_bundle_info,
    text_encoder_id,
)
from model.checkpoint import CheckpointError, load_streamdit, parse_config, read_metadata
from model.codec import VideoCodec
from model.dit import fast_bf16_cpu, inference_dtype
from streamdit_live import wan_weights
from streamdit_live.controls import Size
from streamdit_live.wan_weights import AvailableMemory, WanParts

log = logging.getLogger(__name__)

WEIGHTS_ENV = "STREAMDIT_WEIGHTS"  # a bundle or a folder to use instead of model/weights/


@dataclass
class Models:
    dit: StreamDiT
    ae: VideoCodec  # ours (VideoAutoencoder) or TAEHV for Wan downloads
    text: TextEncoderProtocol
    device: torch.device
    trained: bool  # False: random weights, the output is noise-like
    name: str = ""  # the model size: a CONFIGS name, or "custom" for a bundle's own config
    bundle: BundleInfo | None = None  # what the weights say about themselves; None: random
    path: Path | None = None  # the file the weights came from; None: random
    shipped: bool = False  # the weights that ship with the app (`shipped_weights`)
    wan: WanParts | None = None  # a Wan download's parts (`path` is its folder); None: ours
    # The time shift the model's own sampler uses (model.flow.shift_time): 1 for ours, 5 for
    # Wan2.1 at 480p, 8 for SkyReels-V2; for the engine's StreamBuffer(shift=...).
    flow_shift: float = 1.0

    def describe_weights(self) -> str:
        """Which weights run, in a few words: for the app's status and the logs."""
        if self.path is None:
            return f"random {self.name} weights"
        if self.wan is not None and self.wan.export is not None:
            return (
                f"{self.name} model {self.wan.export.name} with {self.path.name}'s umT5 and "
                f"{self.wan.taehv.name}"
            )
        if self.wan is not None:
            return f"{self.name} model from {self.path.name} with {self.wan.taehv.name}"
        if self.shipped:
            return f"shipped {self.name} model ({self.path.name})"
        return f"{self.name} model from {self.path.name}"

    @property
    def config(self) -> StreamDiTConfig:
        return self.dit.cfg

    @property
    def sizes(self) -> tuple[Size, ...]:
        """The frame sizes the weights may run at; empty for random weights (any size)."""
        if self.wan is not None:
            return tuple(Size(w, h) for w, h in self.wan.sizes)
        return tuple(Size(w, h) for w, h in self.bundle.sizes) if self.bundle else ()

    @property
    def default_size(self) -> Size | None:
        """The size to run at when the user asked for none; None for random weights."""
        return self.sizes[0] if self.sizes else None


def shipped_weights_path() -> Path:
    """Where the shipped weights live: $STREAMDIT_WEIGHTS (a bundle or a folder) when set,
    else the `weights` folder of the `model` package (model/weights/)."""
    override = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(override) if override else Path(model_package.__file__).parent / "weights"


def shipped_weights(model: str) -> Path | None:
    """The shipped bundle of the `model` size, or None when none ships for it (a checkout
    without the file, `tiny`, `4b`). A file that cannot be read (a Git LFS pointer, a broken
    download) is skipped with a warning: the app then runs random weights as it says."""
    where = shipped_weights_path()
    if where.is_dir():
        files = sorted(where.glob("*.safetensors"))
    else:
        files = [where] if where.is_file() else []
    for path in files:
        try:
            if read_metadata(path).get("kind") != BUNDLE_KIND:
                continue
            if read_bundle_info(path).model == model:
                return path
        except CheckpointError as exc:
            log.warning("The shipped weights %s cannot be read (%s); skipping them.", path, exc)
    return None


def resolve_weights(
    model: str, weights: Sequence[Path] = (), random_weights: bool = False
) -> tuple[Path, ...]:
    """The weights a run loads: `weights` when given, none (random) for `random_weights`,
    else the shipped bundle of `model` when one ships, else none (random)."""
    if weights and random_weights:
        raise ValueError("--random-weights and --weights contradict each other; give one of them.")
    if weights or random_weights:
        return tuple(weights)
    shipped = shipped_weights(model)
    return () if shipped is None else (shipped,)


def cpu_threads(requested: int | None, cores: int | None) -> int:
    """Torch threads for CPU inference: all cores but one, unless asked otherwise.

    Measured on the 2-core machine: with another busy process (OBS, a training run) two
    OpenMP threads stall on each other at every parallel region and the tiny model's step
    goes from ~6 ms to ~1000 ms; one thread stays at ~6 ms. A spare core also keeps
    capture, the codec and the sinks moving.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}.")
        return requested
    return max(1, (cores or 1) - 1)


def pick_device(requested: str | None) -> torch.device:
    """The requested device, or cuda when present, else the CPU; one sentence if unusable."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown device {requested!r}; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for but this torch has no CUDA GPU.")
    return device


def pick_dtype(device: torch.device, config: StreamDiTConfig) -> torch.dtype:
    """The dtype the DiT runs in: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16 or
    AMX) for models wide enough to gain (`model.dit.BF16_CPU_MIN_DIM`); else fp32 (narrow
    models are overhead-bound). The stream buffer stays fp32 either way; the autoencoder's
    convolutions follow `pick_codec_dtype`."""
    return inference_dtype(device, config)


def pick_codec_dtype(device: torch.device) -> torch.dtype:
    """The dtype the autoencoder's convolutions run in: bf16 on CPUs with native bf16 (AVX-512
    BF16 or AMX), where streaming encode and decode run ~2x faster at 256x256 and decode 54 dB
    from float32 on real footage (`python -m model.codec_bench`); else float32. Frames and
    latents stay float32 either way (`VideoAutoencoder.set_compute_dtype`)."""
    return torch.bfloat16 if device.type == "cpu" and fast_bf16_cpu() else torch.float32


def _weight_files(paths: Sequence[Path]) -> list[Path]:
    """The .safetensors files named by `--weights` (files or folders), each once."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.safetensors"))
            if not found:
                raise CheckpointError(
                    f"--weights folder {path} holds no .safetensors file; point --weights at a "
                    "model bundle, or leave it out to run random weights."
                )
        else:
            found = [path]  # a missing file gets read_metadata's sentence
        files += [f for f in found if f.resolve() not in {g.resolve() for g in files}]
    return files


def _plan(files: Sequence[Path]) -> tuple[BundleInfo, Path, Callable[[torch.device], Bundle]]:
    """What the files hold together, checked from their headers alone, and how to load it."""
    kinds: dict[str, list[Path]] = {}
    for path in files:
        kind = read_metadata(path).get("kind", "")
        if kind not in (BUNDLE_KIND, "streamdit", "autoencoder"):
            raise CheckpointError(
                f"{path} holds a {kind!r} checkpoint; --weights takes a model bundle (see "
                "docs/BUNDLES.md)."
            )
        kinds.setdefault(kind, []).append(path)
    bundles, dits, aes = (kinds.get(k, []) for k in (BUNDLE_KIND, "streamdit", "autoencoder"))
    if bundles:
        if len(files) > 1:
            others = ", ".join(str(p) for p in files if p != bundles[0])
            raise BundleError(
                f"{bundles[0]} is a whole model bundle but --weights also names {others}; give "
                "the bundle alone."
            )
        path = bundles[0]
        return read_bundle_info(path), path, lambda device: load_bundle(path, device)
    if len(dits) > 1 or len(aes) > 1:
        many = dits if len(dits) > 1 else aes
        raise BundleError(
            f"--weights names {len(many)} {read_metadata(many[0]).get('kind')} checkpoints "
            f"({', '.join(map(str, many))}); give one model bundle."
        )
    if not aes and read_metadata(dits[0]).get("codec") == "taehv":
        raise BundleError(
            f"the DiT {dits[0]} was trained with TAEHV and umT5, so it runs beside the Wan "
            "download it was trained from: give that folder as another --weights."
        )
    if not aes:
        raise BundleError(
            f"the DiT {dits[0]} comes without the autoencoder it was trained with; give its "
            "bundle (`python -m model.bundle pack` makes one)."
        )
    if not dits:
        raise BundleError(
            f"{aes[0]} is an autoencoder alone, which cannot make video without its DiT; give "
            "the model bundle that holds both."
        )
    dit, ae = dits[0], aes[0]
    return pair_info(dit, ae), dit, lambda device: load_pair(dit, ae, device)


def _check_text(info: BundleInfo, path: Path, text: TextEncoderProtocol | None) -> None:
    want = info.text_encoder
    if want.is_stub:
        raise BundleError(
            f"{path} was trained with the hash text stub (training/textstub.py), which is for "
            'tests only and cannot follow prompts; retrain it with text.encoder = "minilm".'
        )
    have = minilm_id() if text is None else text_encoder_id(text)
    if have is None:
        raise BundleError(
            f"{path} was trained with the text encoder {want} but the one given does not say "
            "what it is; use model.text.TextEncoder."
        )
    if have.name != want.name:
        raise BundleError(
            f"{path} was trained with the text encoder {want.name} but this app encodes prompts "
            f"with {have.name}; use weights trained with {have.name}."
        )
    if have.version != want.version and want.name == UMT5:
        raise BundleError(
            f"{path} was trained with umT5 {want.version} but the umT5 folder given is "
            f"{have.version}, a different model; give the text_encoder/ and tokenizer/ of the "
            "download the model was trained with."
        )
    if have.version != want.version:
        installed = str(have) if have.version else f"no {have.name}"
        raise BundleError(
            f"{path} was trained with {want} but {installed} is installed; run "
            f"`pip install {want.name}=={want.version}`."
        )


def _check_model(info: BundleInfo, path: Path, model: str, explicit: bool) -> None:
    if explicit and info.model != model:
        raise BundleError(
            f"--model {model} was asked for but {path} holds the {info.model} model; drop "
            f"--model or give {model} weights."
        )


def _check_size(info: BundleInfo, path: Path, size: Size | None) -> None:
    if size is not None and (size.width, size.height) not in info.sizes:
        raise BundleError(
            f"{path} was {info.describe_sizes()} but never at {size}; use --size "
            f"{format_size(info.default_size)} or weights evaluated at {size}."
        )


def build_models(
    model: str,
    device: torch.device,
    weights: Sequence[Path] | None = None,
    text: TextEncoderProtocol | None = None,
    *,
    explicit_model: bool = False,
    size: Size | None = None,
    dtype: torch.dtype | None = None,
    codec_dtype: torch.dtype | None = None,
    available_memory: AvailableMemory | None = None,
    taehv_dirs: Sequence[Path] | None = None,
) -> Models:
    """The model bundle in `weights`; random weights for `weights=()`; for None (the
    default) the shipped bundle of `model` when one ships (`resolve_weights`), else random.

    `model` sizes random weights; with weights it is checked only when `explicit_model`
    (the user typed --model), since presets name a size too. `size` is the frame size the
    run will use; None skips the check (then run at `Models.default_size`). `dtype` is the
    DiT's (None: `pick_dtype`), `codec_dtype` the autoencoder's convolutions' (None:
    `pick_codec_dtype`). Everything is checked from the files' headers before any
    weights are allocated. A Wan download among `weights` loads with `_build_wan`;
    `available_memory` (bytes free on a device; None: `wan_weights.available_memory`) is
    what its memory check compares against; `taehv_dirs` where its TAEHV file may be besides
    the folder (None: where `streamdit-live download taew2_1` puts it).
    """
    if weights is None:
        weights = resolve_weights(model)
    if any(wan_weights.is_wan_folder(Path(p)) for p in weights):
        return _build_wan(
            [Path(p) for p in weights],
            model,
            device,
            text,
            explicit_model=explicit_model,
            size=size,
            dtype=dtype,
            codec_dtype=codec_dtype,
            available=available_memory or wan_weights.available_memory,
            taehv_dirs=taehv_dirs,
        )
    files = _weight_files(weights)
    if files:
        info, path, load = _plan(files)
        _check_text(info, path, text)
        _check_model(info, path, model, explicit_model)
        _check_size(info, path, size)
        loaded = load(device)
        dit, ae, name, trained = loaded.dit, loaded.autoencoder, info.model, True
        shipped_path = shipped_weights(name)
        shipped = shipped_path is not None and shipped_path.resolve() == path.resolve()
    else:
        info, name, trained, path, shipped = None, model, False, None, False
        with torch.device(device):
            dit = StreamDiT(CONFIGS[model])
            ae = VideoAutoencoder(AE_CONFIGS[model])
    dit = dit.to(dtype or pick_dtype(device, dit.cfg))
    if device.type == "cpu" and next(dit.parameters()).dtype == torch.bfloat16:
        kernels.load()  # compiled the first time (~15 s): now, rather than at the first frame
    ae = ae.set_compute_dtype(codec_dtype or pick_codec_dtype(device))
    text = text or TextEncoder(max_length=dit.cfg.text_len, device=device)
    if text.dim != dit.cfg.text_dim:
        raise ValueError(
            f"the text encoder gives {text.dim}-d states but the {name} model takes "
            f"{dit.cfg.text_dim}-d; this model needs its own text encoder."
        )
    models = Models(dit.eval(), ae.eval(), text, device, trained, name, info, path, shipped)
    if trained:  # random weights: the engine says so, as a warning
        log.info("Running the %s.", models.describe_weights())
    return models


def _export_config(path: Path) -> StreamDiTConfig:
    """The config a StreamDiT checkpoint records, from its header."""
    return parse_config(path, read_metadata(path), "config", StreamDiTConfig)


def _build_wan(
    paths: Sequence[Path],
    model: str,
    device: torch.device,
    text: TextEncoderProtocol | None,
    *,
    explicit_model: bool,
    size: Size | None,
    dtype: torch.dtype | None,
    codec_dtype: torch.dtype | None,
    available: AvailableMemory,
    taehv_dirs: Sequence[Path] | None,
) -> Models:
    """A Wan download (streamdit_live/wan_weights.py): every part and the memory checked,
    then the DiT converted in memory, umT5 from the folder and TAEHV. With a StreamDiT
    checkpoint trained from the folder (training/'s export) among `paths`, that DiT runs
    instead of the folder's transformer, once its record names this umT5 and TAEHV."""
    from model.taehv import TAEHV
    from model.text_umt5 import UMT5TextEncoder

    parts = wan_weights.find_parts(paths, taehv_dirs)
    if explicit_model:
        raise BundleError(
            f"--model {model} was asked for but {parts.root} holds the {parts.name} model; "
            "drop --model."
        )
    if text is not None:
        have = text_encoder_id(text)
        if have is None or have.name != UMT5:
            raise BundleError(
                f"{parts.root} is a Wan2.1-architecture model that reads umT5 prompt states, but "
                f"the text encoder given is {have or 'unnamed'}; leave it out to use the folder's."
            )
    ae: VideoCodec | None = None
    name = parts.name
    if parts.export is not None:
        net_cfg = _export_config(parts.export)
        if text is None:  # its construction reads the folder's config, no weights
            text = UMT5TextEncoder(parts.root, max_length=net_cfg.text_len, device=device)
        have = text_encoder_id(text)
        assert have is not None  # a umT5 encoder, checked above
        ae = TAEHV.load(parts.taehv, torch.device("cpu"))  # float32, as training digested it
        meta = wan_weights.check_export(parts, have, latent_space_digest(ae))
        name = meta.get("model") or name
    dit_dtype = dtype or inference_dtype(device)  # a 1.3B model is wide: bf16 where it helps
    text_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # UMT5TextEncoder's
    latent_hw = None if size is None else (size.height // 8, size.width // 8)
    need = wan_weights.estimate_memory(parts, dit_dtype, text_dtype, latent_hw)
    wan_weights.check_memory(parts, need, device, available)
    log.info("Loading %s (about %s).", parts.export or parts.root, need.describe())
    ae = TAEHV.load(parts.taehv, device) if ae is None else ae.to(device)
    if parts.export is not None:
        # Read on the host, each tensor cast as it goes to the device: the device never holds
        # the stored float32 copy the estimate does not count.
        dit = load_streamdit(parts.export, "cpu").to(device=device, dtype=dit_dtype)
    else:
        dit = wan_weights.load_dit(parts.transformer, device, dit_dtype)
    if text is None:
        text = UMT5TextEncoder(parts.root, max_length=dit.cfg.text_len, device=device)
    if text.dim != dit.cfg.text_dim:
        raise BundleError(
            f"the umT5 text encoder gives {text.dim}-d states but {parts.root}'s transformer "
            f"takes {dit.cfg.text_dim}-d; the folder mixes two models."
        )
    # TAEHV is a GPU codec that runs in half precision there; on a CPU as ours does.
    ae = ae.set_compute_dtype(
        codec_dtype or (torch.bfloat16 if device.type == "cuda" else pick_codec_dtype(device))
    )
    models = Models(
        dit.eval(),
        ae.eval(),
        text,
        device,
        trained=True,
        name=name,
        path=parts.root,
        wan=parts,
        flow_shift=parts.flow_shift,
    )
    log.info("Running the %s.", models.describe_weights())
    return models
