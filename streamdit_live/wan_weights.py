"""`--weights FOLDER` for a Wan2.1-architecture model as its own download lays it out.

A folder is a Wan download when it has `model_index.json` or a `transformer/` folder (a
diffusers `-Diffusers` repo: Wan2.1-T2V-1.3B, SkyReels-V2-DF-1.3B-540P). It runs with:

- the DiT: `transformer/` (config.json and safetensors, sharded or not), converted in memory
  the way `python -m model.import_wan` converts it (Wan's switches; nothing is written);
- the text encoder: `text_encoder/` and `tokenizer/` (umT5, `model.text_umt5`), padded to the
  DiT's text length;
- the codec: a TAEHV file (`taew2_1.pth` or `taew2_1.safetensors`) in the folder, given as a
  second `--weights` path, or where `streamdit-live download taew2_1` puts it;
- or, given as another `--weights` path, a StreamDiT checkpoint fine-tuned or distilled from
  the folder's model by `training/` (`streamdit_ema.safetensors`) in place of `transformer/`:
  its record must name the folder's umT5 (`text_encoder_version`) and this TAEHV's latent
  digest (`autoencoder_digest`, `model.bundle.latent_space_digest`), checked by
  `check_export` before the DiT or umT5 is loaded.

Everything is checked from file names and safetensors headers before a tensor is read: every
part present (one sentence names what is missing and how to get it), the text width the DiT
takes, and the memory the parts need in the dtypes they will run in against what the device
has free (`available_memory`, injectable for tests).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model import import_wan
from model.bundle import UMT5, BundleError, TextEncoderId
from model.checkpoint import CheckpointError, meta_module, read_metadata
from model.dit import StreamDiT

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
TRANSFORMER = "transformer"
TEXT_ENCODER = "text_encoder"
TOKENIZER = "tokenizer"
TAEHV_FILES = ("taew2_1.safetensors", "taew2_1.pth", "safetensors/taew2_1.safetensors")
TAEHV_DOWNLOAD = "taew2_1"  # the `streamdit-live download` name of the TAEHV file
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
# Working memory beyond the activations estimated from the token grid (allocator slack, the
# stream buffer, decoded frames).
WORKING_SLACK_BYTES = 256 << 20
# Preset-free names of the widths the public checkpoints come in.
_SIZE_NAMES = {1536: "1.3b", 5120: "14b"}

AvailableMemory = Callable[[torch.device], "int | None"]


class WanFolderError(BundleError):
    """A Wan download that lacks a part, or that this device cannot hold; one sentence."""


def is_wan_folder(path: Path) -> bool:
    """Whether `path` is laid out as a diffusers Wan download (not one of our bundles)."""
    return path.is_dir() and ((path / MODEL_INDEX).is_file() or (path / TRANSFORMER).is_dir())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WanFolderError(f"{path} is not readable JSON ({e}); download it again.") from e
    if not isinstance(data, dict):
        raise WanFolderError(f"{path} is not a JSON object; download it again.")
    return data


@dataclass(frozen=True)
class WanParts:
    """The parts of a Wan download, all present (checked by `find_parts`)."""

    root: Path
    taehv: Path
    transformer_config: dict
    family: str  # "wan2.1" or "skyreels-v2"
    export: Path | None = None  # a StreamDiT checkpoint trained from it, run in its place

    @property
    def transformer(self) -> Path:
        return self.root / TRANSFORMER

    @property
    def name(self) -> str:
        """The model in a few words, e.g. "wan2.1-1.3b" (for logs and the app's status)."""
        width = self.transformer_config.get("num_attention_heads", 0) * self.transformer_config.get(
            "attention_head_dim", 0
        )
        return f"{self.family}-{_SIZE_NAMES.get(width, f'd{width}')}"

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """The (width, height) frame sizes the model was trained at, the first the default."""
        if self.family == "skyreels-v2":
            return ((960, 544), (544, 960))
        return ((832, 480), (480, 832))

    @property
    def flow_shift(self) -> float:
        """The sampling-time shift the model's own pipeline uses (Wan 480p 5, SkyReels 8)."""
        return 8.0 if self.family == "skyreels-v2" else 5.0


def _shards_missing(folder: Path, where: str) -> list[str]:
    """What a folder of safetensors weights lacks: the weights, or shards its index names."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        return [] if any(folder.glob("*.safetensors")) else [f"the weights {where}*.safetensors"]
    try:
        shards = set(json.loads(indexes[0].read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError):
        return [f"a readable {where}{indexes[0].name}"]
    return [f"the shard {where}{s}" for s in sorted(shards) if not (folder / s).is_file()]


def _find_taehv(root: Path, given: Path | None, search: Sequence[Path]) -> Path | None:
    if given is not None:
        return given
    for folder in (root, *search):
        for name in TAEHV_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " and " * (len(items) > 1) + items[-1]


def _streamdit_kind(path: Path) -> bool:
    """Whether `path` is a StreamDiT checkpoint (an export of training/), from its header."""
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return read_metadata(path).get("kind") == "streamdit"
    except CheckpointError:
        return False  # not ours: left to the TAEHV loader's sentence


def _family(config: dict) -> str:
    return "skyreels-v2" if str(config.get("_class_name", "")).startswith("SkyReels") else "wan2.1"


def find_parts(paths: Sequence[Path], taehv_dirs: Sequence[Path] | None = None) -> WanParts:
    """The parts of the one Wan download among `paths` (plus an optional TAEHV file), or
    one sentence on what is missing and how to get it. `taehv_dirs` are searched for the
    TAEHV file after the folder (None: where `streamdit-live download taew2_1` puts it)."""
    from streamdit_live.download import name_for_family, target_dir

    if taehv_dirs is None:
        taehv_dirs = (target_dir(TAEHV_DOWNLOAD),)
    folders = [p for p in paths if is_wan_folder(p)]
    if len(folders) != 1:
        raise WanFolderError(
            f"--weights names {len(folders)} model folders ({', '.join(map(str, folders))}); "
            "give one, and its TAEHV file if it is elsewhere."
        )
    root = folders[0]
    given: Path | None = None
    export: Path | None = None
    for path in paths:
        if path == root:
            continue
        if _streamdit_kind(path) and export is None:
            export = path
            continue
        taehv_like = path.is_file() and path.suffix in (".pth", ".safetensors")
        if not taehv_like or _streamdit_kind(path) or given is not None:
            raise WanFolderError(
                f"{root} is a model download, so the only other --weights it takes are its TAEHV "
                f"decoder file ({TAEHV_FILES[0]}) and one StreamDiT checkpoint trained from it, "
                f"not {path}."
            )
        given = path
    missing: list[str] = []
    if not (root / MODEL_INDEX).is_file():
        missing.append(MODEL_INDEX)
    tdir, edir = root / TRANSFORMER, root / TEXT_ENCODER
    if not tdir.is_dir():
        missing.append(f"the {TRANSFORMER}/ folder")
    else:
        if not (tdir / "config.json").is_file():
            missing.append(f"{TRANSFORMER}/config.json")
        if export is None:  # an export replaces the transformer's weights (not its config)
            missing += _shards_missing(tdir, f"{TRANSFORMER}/")
    if not edir.is_dir():
        missing.append(f"the {TEXT_ENCODER}/ folder")
    else:
        if not (edir / "config.json").is_file():
            missing.append(f"{TEXT_ENCODER}/config.json")
        missing += _shards_missing(edir, f"{TEXT_ENCODER}/")
    if not any((root / TOKENIZER / n).is_file() for n in ("tokenizer.json", "spiece.model")):
        missing.append(f"the tokenizer ({TOKENIZER}/tokenizer.json or {TOKENIZER}/spiece.model)")
    download_name = None
    for described in (tdir / "config.json", root / MODEL_INDEX):  # the transformer's, else
        try:  # the pipeline's class (SkyReelsV2DiffusionForcingPipeline, WanPipeline)
            name = str(json.loads(described.read_text()).get("_class_name", ""))
        except (OSError, ValueError, AttributeError):
            continue
        download_name = name_for_family(_family({"_class_name": name}))
        break
    again = (
        f"`streamdit-live download {download_name} --to {root}` again (it resumes)"
        if download_name
        else "the model's -Diffusers download again"
    )
    taehv = _find_taehv(root, given, taehv_dirs)
    if taehv is None and not missing:
        raise WanFolderError(
            f"{root} has no TAEHV decoder: download {TAEHV_FILES[0]} (`streamdit-live download "
            f"{TAEHV_DOWNLOAD} --to {root}`) into it, or give its path as a second --weights."
        )
    if missing:
        also = f" and a TAEHV decoder ({TAEHV_FILES[0]})" if taehv is None else ""
        raise WanFolderError(f"{root} lacks {_listed(missing)}{also}: run {again}.")
    assert taehv is not None
    config = _read_json(tdir / "config.json")
    family = _family(config)
    text_cfg = _read_json(edir / "config.json")
    text_dim = config.get("text_dim")
    if text_dim is not None and text_cfg.get("d_model") not in (None, text_dim):
        raise WanFolderError(
            f"{root}: the transformer takes {text_dim}-d text states but {TEXT_ENCODER}/ gives "
            f"{text_cfg.get('d_model')}-d; the folder mixes two models, download it again."
        )
    return WanParts(root, taehv, config, family, export)


def check_export(parts: WanParts, text: TextEncoderId, taehv_digest: str) -> dict[str, str]:
    """The record of `parts.export` (training's `pairing_record`), after checking that it was
    trained with this folder's umT5 (`text`, e.g. `UMT5TextEncoder(root).identity`) and a
    TAEHV of latent digest `taehv_digest` (`model.bundle.latent_space_digest`); a mismatch
    is one sentence naming the part."""
    assert parts.export is not None
    path, meta = parts.export, read_metadata(parts.export)
    want = TextEncoderId(meta.get("text_encoder", ""), meta.get("text_encoder_version", ""))
    if want.name != UMT5:
        raise WanFolderError(
            f"{path} records the text encoder {want.name or '(none)'}, not umT5, so it cannot "
            f"run with {parts.root}'s; give a checkpoint trained from this download."
        )
    if want.version != text.version:
        raise WanFolderError(
            f"{path} was trained with umT5 {want.version} but {parts.root}'s text_encoder/ is "
            f"umT5 {text.version}, a different model; give the download it was trained from."
        )
    if meta.get("codec") != "taehv":
        raise WanFolderError(
            f"{path} was trained with its own autoencoder, not TAEHV, so it runs from its "
            "bundle (`python -m model.bundle pack`), not beside a Wan download."
        )
    recorded = meta.get("autoencoder_digest", "")
    if recorded != taehv_digest:
        raise WanFolderError(
            f"{path} was trained with a TAEHV of latent digest {recorded[:16] or 'unrecorded'} "
            f"but {parts.taehv} has {taehv_digest[:16]}; give the TAEHV file it was trained "
            "with as another --weights."
        )
    return meta


# --- memory --------------------------------------------------------------------------------


def header_params(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _folder_params(folder: Path) -> int:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return sum(header_params(f) for f in files)
    # No header to read (a .bin): count 2 bytes a parameter, an overestimate for float32.
    return sum(f.stat().st_size for f in folder.glob("*.bin")) // 2


def _file_params(path: Path) -> int:
    return header_params(path) if path.suffix == ".safetensors" else path.stat().st_size // 2


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


@dataclass(frozen=True)
class MemoryEstimate:
    dit: int
    text: int
    codec: int
    working: int  # activations of one model call (guided: two) plus slack

    @property
    def total(self) -> int:
        return self.dit + self.text + self.codec + self.working

    def describe(self) -> str:
        return (
            f"DiT {_gb(self.dit)}, umT5 {_gb(self.text)}, TAEHV {_gb(self.codec)}, "
            f"working memory {_gb(self.working)}"
        )


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def estimate_memory(
    parts: WanParts,
    dit_dtype: torch.dtype,
    text_dtype: torch.dtype,
    latent_hw: tuple[int, int] | None = None,
    latent_frames: int = import_wan.WAN_LATENT_FRAMES,
) -> MemoryEstimate:
    """What the parts need on the device in the dtypes they run in: parameter counts from the
    headers times the dtype's bytes, and one guided model call's largest activations over the
    buffer's tokens at `latent_hw` (None: Wan's 480p grid)."""
    cfg = parts.transformer_config
    h, w = latent_hw or import_wan.WAN_LATENT_SIZE
    patch = cfg.get("patch_size", (1, 2, 2))
    tokens = latent_frames * (h // patch[1]) * (w // patch[2])
    dim = cfg.get("num_attention_heads", 0) * cfg.get("attention_head_dim", 0)
    ffn = cfg.get("ffn_dim", 4 * dim)
    working = 2 * tokens * (ffn + 4 * dim) * _bytes(dit_dtype) + WORKING_SLACK_BYTES
    dit_params = header_params(parts.export) if parts.export else _folder_params(parts.transformer)
    return MemoryEstimate(
        dit=dit_params * _bytes(dit_dtype),
        text=_folder_params(parts.root / TEXT_ENCODER) * _bytes(text_dtype),
        codec=_file_params(parts.taehv) * 4,
        working=working,
    )


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device` (CUDA: the driver's free memory; CPU: available RAM), or None
    when this platform cannot tell."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    found = _meminfo_available()
    if found is not None:
        return found
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(
    parts: WanParts, need: MemoryEstimate, device: torch.device, available: AvailableMemory
) -> None:
    free = available(device)
    if free is None:
        log.warning(
            "cannot tell how much memory %s has free; loading %s anyway", device, parts.root
        )
        return
    if need.total > free:
        where = "GPU" if device.type == "cuda" else "RAM"
        raise WanFolderError(
            f"{parts.root} needs about {_gb(need.total)} of {where} on {device} "
            f"({need.describe()}) but only {_gb(free)} is free; close what else uses it, run "
            "at a smaller --size, or use a larger GPU."
        )


# --- loading -------------------------------------------------------------------------------

# Tensors kept in their stored precision until SkyReels' frame-rate term is folded in.
_FOLD_KEEP = frozenset({*import_wan._FPS, "time_projection.1.bias"})


def load_dit(folder: Path, device: torch.device, dtype: torch.dtype, fps: int = 24) -> StreamDiT:
    """The transformer in `folder` as a StreamDiT in `dtype` on `device`, converted in memory
    as `model.import_wan.convert` converts it to a file; each tensor goes to the device as it
    is read, so the host holds one tensor at a time."""
    source = import_wan.find_source(folder)
    prefix = import_wan._strip_prefix(list(source.where))
    stored = {n[len(prefix) :]: n for n in source.where}
    layout = import_wan.detect_layout(list(stored), source.path)
    names = {import_wan.original_name(n, layout): n for n in stored}
    from safetensors import safe_open

    sizes: dict[str, tuple[int, ...]] = {}
    for path in source.files:
        with safe_open(str(path), framework="pt") as f:
            for n in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                sizes[n] = tuple(f.get_slice(n).get_shape())
    shapes = {o: sizes[stored[s]] for o, s in names.items()}
    cfg = import_wan.infer_config(shapes, source, None)
    state: dict[str, torch.Tensor] = {}
    for path in source.files:
        with safe_open(str(path), framework="pt") as f:
            for orig, name in names.items():
                if source.where[stored[name]] == path:
                    t = f.get_tensor(stored[name]).to(device)
                    keep = orig in _FOLD_KEEP or not t.is_floating_point()
                    state[orig] = t if keep else t.to(dtype)
    import_wan._fold_fps(state, fps)
    state = {
        n: import_wan._to_streamdit(n, t if not t.is_floating_point() else t.to(dtype)).contiguous()
        for n, t in state.items()
    }
    import_wan._check_complete(state, cfg, source.path)
    dit = meta_module(StreamDiT, cfg)
    dit.load_state_dict(state, assign=True)
    return dit.eval()
