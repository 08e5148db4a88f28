"""Pre-encode training clips with the (frozen) autoencoder, so DiT steps skip decoding
video and running the encoder:

    python -m training.cache_latents training/configs/cpu.toml --clips 2000 \
        --out runs/cpu/latents.safetensors
    python -m training.train training/configs/cpu.toml \
        --set data.latent_cache=runs/cpu/latents.safetensors

The cache holds items 0..clips-1 of the configured data (first stage), a fixed set: it
trades the endless variety of the live sources for speed, so size it generously.
"""

from __future__ import annotations

import argparse
import sys

from training.config import ConfigError, load_config
from training.data import LatentCache, build_dataset
from training.distributed import pick_device
from training.train import autoencoder_tag, build_autoencoder, calibrate_random, geometry


def _build(cfg, args: argparse.Namespace):
    if cfg.data.latent_cache:
        raise ConfigError("data.latent_cache is set; unset it to encode from the sources")
    device = pick_device(cfg.run.device, 0)
    ae = build_autoencoder(cfg, device)
    geo = geometry(cfg, ae)
    data = build_dataset(
        cfg.data, geo.video_frames, geo.size, cfg.run.seed, cfg.stages[0].folder_path
    )
    calibrate_random(cfg, ae, geo, device)
    return LatentCache.build(
        args.out,
        data,
        lambda x: ae.encode(x.to(device)),
        args.clips,
        args.batch,
        autoencoder_tag(cfg),
        progress=cfg.run.progress,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.cache_latents")
    parser.add_argument("config")
    parser.add_argument("--clips", type=int, required=True, help="how many clips to encode")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        path = _build(load_config(args.config, args.overrides), args)
    except ConfigError as e:  # a mistake in the config: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.clips} latent clips to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
