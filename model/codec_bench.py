"""Benchmark the autoencoder presets and the text encoder.

    python -m model.codec_bench [--presets tiny cpu 4b] [--size 256] [--frames 8]
                                [--repeats 5] [--device cpu] [--no-text]

Autoencoder: untrained weights (speed does not depend on their values), one stream chunk
of `--frames` video frames per call through the stream encoder/decoder, as the live loop
runs them. The best and the median call time are divided by the frame count: other
processes on the cores only ever slow a run down, so the best is the machine's speed.
Text: load time, then ms per prompt for prompts never seen (cold: one network pass each),
all of them in one batch, and seen (cached).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from model.autoencoder import AE_CONFIGS, VideoAutoencoder


def _timed_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


@torch.inference_mode()
def bench_autoencoder(
    name: str, size: int, frames: int, repeats: int, device: str
) -> dict[str, float | str]:
    cfg = AE_CONFIGS[name]
    ae = VideoAutoencoder(cfg).to(device).eval()
    x = torch.rand(1, 3, frames, size, size, device=device) * 2 - 1  # (B, 3, F, H, W)
    enc, dec = ae.stream_encoder(), ae.stream_decoder()
    z = enc.encode(x)
    for _ in range(2):  # warm-up: the first calls build oneDNN kernels for these shapes
        enc.encode(x)
        dec.decode(z)
    # Alternate the two, as the live loop does, so a burst of load on the shared cores
    # hits both alike instead of one whole series.
    enc_ms, dec_ms = [], []
    for _ in range(repeats):
        enc_ms.append(_timed_ms(lambda: enc.encode(x)))
        dec_ms.append(_timed_ms(lambda: dec.decode(z)))
    both = [e + d for e, d in zip(enc_ms, dec_ms, strict=True)]
    # Best-of-N is the machine's speed; the median shows what sharing the cores costs.
    return {
        "preset": name,
        "params": f"{sum(p.numel() for p in ae.parameters()) / 1e6:.2f}M",
        "latent": "x".join(str(d) for d in z.shape[1:]),
        "encode ms/frame": min(enc_ms) / frames,
        "decode ms/frame": min(dec_ms) / frames,
        "enc+dec ms/frame": min(both) / frames,
        "enc+dec median": statistics.median(both) / frames,
    }


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
    ap.add_argument("--prompts", type=int, default=8, help="distinct prompts for the text bench")
    ap.add_argument("--no-text", action="store_true", help="skip the text encoder")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{args.size}x{args.size}, {args.frames} frames per call, best and median of {args.repeats}"
    )
    rows = [
        bench_autoencoder(n, args.size, args.frames, args.repeats, args.device)
        for n in args.presets
    ]
    print(_table(rows))
    if not args.no_text:
        print()
        print(_table([bench_text(args.prompts, args.device)]))


if __name__ == "__main__":
    main()
