"""Benchmark the autoencoder presets and the text encoder.

    python -m model.codec_bench [--presets tiny cpu 4b] [--size 256] [--frames 8]
                                [--repeats 5] [--device cpu] [--dtypes float32 bfloat16]
                                [--weights BUNDLE] [--no-text]

Autoencoder: one stream chunk of `--frames` video frames per call through the stream
encoder/decoder, as the live loop runs them, once per compute dtype of the convolutions
(`VideoAutoencoder.set_compute_dtype`; by default float32, and bfloat16 on a CPU with native
bf16, which the app then runs): the calls of all dtypes alternate, so a burst of load on
shared cores hits them alike. Untrained weights (speed does not depend on their values), or
`--weights`, a model bundle's autoencoder. The best and the median call time are divided by
the frame count: other processes on the cores only ever slow a run down, so the best is the
machine's speed. `PSNR vs float32`: a smooth moving clip streamed through each dtype
against the first (float32), in 8-bit pixels; it means most with trained weights.
Text: load time, then ms per prompt for prompts never seen (cold: one network pass each),
all of them in one batch, and seen (cached).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.autoencoder import AE_CONFIGS, VideoAutoencoder
from model.dit import fast_bf16_cpu

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def default_dtypes(device: str) -> list[str]:
    """float32, and bfloat16 where the app runs the codec in it (a CPU with native bf16)."""
    native = torch.device(device).type == "cpu" and fast_bf16_cpu()
    return ["float32", "bfloat16"] if native else ["float32"]


def _timed_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def moving_clip(frames: int, size: int, device: str = "cpu") -> torch.Tensor:
    """(1, 3, frames, size, size) in [-1, 1]: smooth colour waves and a disc drifting across,
    channels-last in memory as the app's frames are; content a codec can reproduce."""
    t = torch.arange(frames, device=device).view(-1, 1, 1) / max(frames, 1)
    y = torch.linspace(-1, 1, size, device=device).view(1, -1, 1)
    x = torch.linspace(-1, 1, size, device=device).view(1, 1, -1)
    disc = ((x - t + 0.5).square() + y.square() < 0.2).float() * 1.4 - 0.7
    rgb = torch.broadcast_tensors(
        0.8 * torch.sin(3 * x + 2 * t), 0.7 * torch.cos(2 * y - 3 * t), disc
    )
    return torch.stack(rgb, dim=-1).permute(3, 0, 1, 2).unsqueeze(0)  # memory (F, H, W, 3)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two clips in [-1, 1] after clamping and rounding to 8 bits."""
    a8, b8 = (((c.float().clamp(-1, 1) + 1) * 127.5).round() for c in (a, b))
    mse = (a8 - b8).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _stream(ae: VideoAutoencoder, clip: torch.Tensor, frames: int) -> torch.Tensor:
    enc, dec = ae.stream_encoder(), ae.stream_decoder()
    chunks = clip.split(frames, dim=2)
    return torch.cat([dec.decode(enc.encode(c)) for c in chunks], dim=2)


@torch.inference_mode()
def bench_autoencoder(
    name: str,
    size: int,
    frames: int,
    repeats: int,
    device: str,
    dtypes: list[str] | None = None,
    ae: VideoAutoencoder | None = None,
) -> list[dict[str, float | str]]:
    """One row per compute dtype; `ae` replaces the untrained preset `name` when given."""
    base = (ae or VideoAutoencoder(AE_CONFIGS[name])).to(device).eval()
    dtypes = dtypes or default_dtypes(device)
    codecs = [copy.deepcopy(base).set_compute_dtype(DTYPES[d]) for d in dtypes]
    clip = moving_clip(2 * frames, size, device)  # two chunks: one stream boundary
    x = clip[:, :, :frames]  # (B, 3, F, H, W)
    outs = [_stream(codec, clip, frames) for codec in codecs]
    streams = [(codec.stream_encoder(), codec.stream_decoder()) for codec in codecs]
    latents = [enc.encode(x) for enc, _ in streams]
    for _ in range(2):  # warm-up: the first calls build oneDNN kernels for these shapes
        for (enc, dec), z in zip(streams, latents, strict=True):
            enc.encode(x)
            dec.decode(z)
    # Alternate encode and decode, as the live loop does, and the dtypes.
    enc_ms: list[list[float]] = [[] for _ in codecs]
    dec_ms: list[list[float]] = [[] for _ in codecs]
    for _ in range(repeats):
        for i, ((enc, dec), z) in enumerate(zip(streams, latents, strict=True)):
            enc_ms[i].append(_timed_ms(lambda enc=enc: enc.encode(x)))
            dec_ms[i].append(_timed_ms(lambda dec=dec, z=z: dec.decode(z)))
    rows: list[dict[str, float | str]] = []
    for i, dtype in enumerate(dtypes):
        both = [e + d for e, d in zip(enc_ms[i], dec_ms[i], strict=True)]
        # Best-of-N is the machine's speed; the median shows what sharing the cores costs.
        rows.append(
            {
                "preset": name,
                "dtype": dtype,
                "params": f"{sum(p.numel() for p in base.parameters()) / 1e6:.2f}M",
                "latent": "x".join(str(d) for d in latents[i].shape[1:]),
                "encode ms/frame": min(enc_ms[i]) / frames,
                "decode ms/frame": min(dec_ms[i]) / frames,
                "enc+dec ms/frame": min(both) / frames,
                "enc+dec median": statistics.median(both) / frames,
                f"PSNR vs {dtypes[0]}": f"{_psnr(outs[i], outs[0]):.1f}" if i else "-",
            }
        )
    return rows


def bench_text(prompts: int, device: str) -> dict[str, float | str]:
    from model.text import TextEncoder

    t0 = time.perf_counter()
    te = TextEncoder(device=device).load()
    load_s = time.perf_counter() - t0
    te.encode("warm up the kernels")
    texts = [
        f"a neon kaleidoscope number {i} drifting over a city at night" for i in range(prompts)
    ]

    def each_ms() -> list[float]:
        times = []
        for p in texts:
            t0 = time.perf_counter()
            te.encode(p)
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    cold, cached = each_ms(), each_ms()  # never seen, then all cache hits
    te.clear_cache()
    t0 = time.perf_counter()
    te.encode(texts)
    batched = (time.perf_counter() - t0) * 1e3 / prompts
    return {
        "text encoder": f"MiniLM-L6, L={te.max_length}",
        "load s": load_s,
        "cold ms/prompt": statistics.median(cold),
        f"batch of {prompts} ms/prompt": batched,
        "cached ms/prompt": statistics.median(cached),
    }


def _table(rows: list[dict[str, float | str]]) -> str:
    cols = list(rows[0])
    cells = [[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cols), sep, *(line(row) for row in cells)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(AE_CONFIGS), choices=list(AE_CONFIGS))
    ap.add_argument("--size", type=int, default=256, help="frame height and width in pixels")
    ap.add_argument("--frames", type=int, default=8, help="video frames per stream call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(DTYPES),
        help="compute dtypes of the convolutions (default: float32, and bfloat16 on a CPU "
        "with native bf16); the first is the PSNR reference",
    )
    ap.add_argument(
        "--weights", type=Path, help="a model bundle: time its autoencoder instead of presets"
    )
    ap.add_argument("--prompts", type=int, default=8, help="distinct prompts for the text bench")
    ap.add_argument("--no-text", action="store_true", help="skip the text encoder")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{args.size}x{args.size}, {args.frames} frames per call, best and median of {args.repeats}"
    )
    if args.weights is not None:
        from model.bundle import load_bundle

        ae = load_bundle(args.weights, args.device).autoencoder
        runs = [(args.weights.name, ae)]
    else:
        runs = [(name, None) for name in args.presets]
    rows = [
        row
        for name, ae in runs
        for row in bench_autoencoder(
            name, args.size, args.frames, args.repeats, args.device, args.dtypes, ae
        )
    ]
    print(_table(rows))
    if not args.no_text:
        print()
        print(_table([bench_text(args.prompts, args.device)]))


if __name__ == "__main__":
    main()
