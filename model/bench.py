"""Model benchmark: parameters, FLOPs per call, time per call, tokens/s, window vs full attention.

    python -m model.bench --config cpu
    python -m model.bench --config 4b --device cuda --dtype bfloat16

FLOPs are counted on the `meta` device (no memory, no time), so `4b` is counted on any
machine; it is only timed when the device can hold it. Prints a table and, with --json, a
machine-readable line.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.config import CONFIGS, StreamDiTConfig
from model.dit import StreamDiT

PEAK_BF16_FLOPS = 800e12  # the reference GPU throughput for the upper bound
TEMPORAL_FACTOR = 4  # video frames per latent frame (the autoencoder's default)


def _inputs(cfg: StreamDiTConfig, device, dtype, frames: int):
    h, w = cfg.latent_size
    x = torch.randn(1, cfg.latent_channels, frames, h, w, device=device, dtype=dtype)
    t = torch.rand(1, frames, device=device)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    return x, t, text


def count_flops(cfg: StreamDiTConfig, frames: int) -> int:
    """FLOPs of one model call (batch 1) over `frames` latent frames, counted on meta."""
    with torch.device("meta"):
        net = StreamDiT(cfg)
        x, t, text = _inputs(cfg, "meta", torch.float32, frames)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, t, text)
    return counter.get_total_flops()


def time_call(net: StreamDiT, frames: int, device, dtype, repeats: int) -> float:
    """Median seconds per model call."""
    x, t, text = _inputs(net.cfg, device, dtype, frames)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            sync()
            start = time.perf_counter()
            net(x, t, text)
            sync()
            if i:  # the first call warms up kernels and allocators
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def fits_on(cfg: StreamDiTConfig, device: str, dtype: torch.dtype) -> bool:
    with torch.device("meta"):
        params = sum(p.numel() for p in StreamDiT(cfg).parameters())
    need = params * torch.finfo(dtype).bits // 8 * 1.5  # weights + activations, roughly
    if torch.device(device).type == "cuda":
        return need < torch.cuda.get_device_properties(device).total_memory
    return need < 8e9  # keep CPU runs of large presets off a laptop


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="cpu", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bf16 on GPU)")
    parser.add_argument("--frames", type=int, default=None, help="latent frames per call")
    parser.add_argument("--chunk", type=int, default=2, help="latent frames emitted per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's choice)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    is_cuda = torch.device(args.device).type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if is_cuda else "float32"))
    frames = args.frames or cfg.latent_frames
    h, w = cfg.latent_size
    grid = (frames // cfg.patch_size[0], h // cfg.patch_size[1], w // cfg.patch_size[2])
    tokens = math.prod(grid)
    with torch.device("meta"):
        params = sum(p.numel() for p in StreamDiT(cfg).parameters())
    flops = count_flops(cfg, frames)
    video_frames_per_call = args.chunk * TEMPORAL_FACTOR
    row: dict = {
        "config": args.config,
        "params": params,
        "latent": [cfg.latent_channels, frames, h, w],
        "tokens": tokens,
        "gflops_per_call": flops / 1e9,
        "max_fps_at_800_tflops": PEAK_BF16_FLOPS / flops * video_frames_per_call,
        "device": args.device,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if fits_on(cfg, args.device, dtype):
        with torch.device(args.device):  # built in place: 4b would not fit in host RAM twice
            net = StreamDiT(cfg).to(dtype).eval()
        with torch.no_grad():
            for p in net.parameters():  # real init zeroes gates; random keeps every path busy
                p.normal_(0, 0.02)
        sec = time_call(net, frames, args.device, dtype, args.repeats)
        # Full attention: the same weights with one window over the whole grid.
        net.cfg = cfg.replace(window=(10**6,) * 3)
        sec_full = time_call(net, frames, args.device, dtype, args.repeats)
        net.cfg = cfg
        row |= {
            "ms_per_call": sec * 1e3,
            "tokens_per_s": tokens / sec,
            "video_fps": video_frames_per_call / sec,
            "achieved_tflops": flops / sec / 1e12,
            "window_over_full_time": sec / sec_full,
        }
    else:
        row["note"] = f"not timed: {args.config} does not fit on {args.device}"

    print(f"StreamDiT bench: {args.config} on {args.device} ({row['dtype']})")
    for key, value in row.items():
        shown = (
            f"{value:,.3f}"
            if isinstance(value, float)
            else f"{value:,}"
            if isinstance(value, int)
            else value
        )
        print(f"  {key:24s} {shown}")
    if args.json:
        print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
