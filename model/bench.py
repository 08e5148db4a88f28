"""Model benchmark: parameters, FLOPs per call, time per call, tokens/s, window vs full attention.

    python -m model.bench --config cpu --threads 1 --dtype bf16 --json
    python -m model.bench --config 4b --device cuda --dtype bf16

FLOPs are counted on the `meta` device (no memory, no time), so `4b` is counted on any
machine; it is only timed when the device can hold it. `achieved_over_peak` divides the
model's FLOP rate by a square matmul's, measured in the same run with the same dtype and
threads, each model call alternating with one matmul (so load from other processes slows
both alike), so the ratio means the same on any machine. The default dtype is the one the app
runs the model in on this device (`inference_dtype`), and malloc keeps freed memory as in the
app (`model.memory`). Prints a table and, with --json, a machine-readable line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import kernels
from model.attention import plan_windows
from model.config import CONFIGS, StreamDiTConfig
from model.dit import StreamDiT, inference_dtype
from model.memory import keep_freed_memory

PEAK_BF16_FLOPS = 800e12  # the reference GPU throughput for the upper bound
TEMPORAL_FACTOR = 4  # video frames per latent frame (the autoencoder's default)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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


def _median_seconds(
    fns: Sequence[Callable[[], object]], device, repeats: int, warmup: int = 1
) -> list[float]:
    """Median seconds per call of each of `fns`, called in turn (round robin), so that a burst
    of load from other processes on shared cores hits all of them alike."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + repeats):
        for fn, series in zip(fns, times, strict=True):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:  # the first calls warm up kernels and allocators
                series.append(time.perf_counter() - start)
    return [statistics.median(series) for series in times]


def _matmul(size: int, device, dtype: torch.dtype) -> tuple[Callable[[], object], int]:
    """A (size x size) @ (size x size) matmul and its FLOPs: the practical peak of `dtype` on
    the current threads, against which the model's FLOP rate is read."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return (lambda: a @ b), 2 * size**3


def time_call(net: StreamDiT, frames: int, device, dtype, repeats: int) -> float:
    """Median seconds per model call."""
    x, t, text = _inputs(net.cfg, device, dtype, frames)
    with torch.no_grad():
        return _median_seconds([lambda: net(x, t, text)], device, repeats)[0]


def time_against_peak(
    net: StreamDiT, frames: int, device, dtype, repeats: int, peak_size: int
) -> tuple[float, float]:
    """(median seconds per model call, matmul peak FLOP/s), the two timed alternately."""
    x, t, text = _inputs(net.cfg, device, dtype, frames)
    matmul, matmul_flops = _matmul(peak_size, device, dtype)
    with torch.no_grad():
        sec, matmul_sec = _median_seconds(
            [lambda: net(x, t, text), matmul], device, repeats, warmup=2
        )
    return sec, matmul_flops / matmul_sec


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
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="model dtype (default: the app's for this device, see model.dit.inference_dtype)",
    )
    parser.add_argument("--frames", type=int, default=None, help="latent frames per call")
    parser.add_argument("--chunk", type=int, default=2, help="latent frames emitted per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's choice)")
    parser.add_argument(
        "--peak-size", type=int, default=2048, help="square matmul size for the peak FLOP/s"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the app does: no page faults for each call's activations
    cfg = CONFIGS[args.config]
    dtype = DTYPES[args.dtype] if args.dtype else inference_dtype(torch.device(args.device), cfg)
    frames = args.frames or cfg.latent_frames
    h, w = cfg.latent_size
    grid = (frames // cfg.patch_size[0], h // cfg.patch_size[1], w // cfg.patch_size[2])
    tokens = math.prod(grid)
    window = plan_windows(grid, cfg.window, shifted=False).window_tokens
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
        "threads": torch.get_num_threads(),
    }
    if fits_on(cfg, args.device, dtype):
        with torch.device(args.device):  # built in place: 4b would not fit in host RAM twice
            net = StreamDiT(cfg).to(dtype).eval()
        with torch.no_grad():
            for p in net.parameters():  # real init zeroes gates; random keeps every path busy
                p.normal_(0, 0.02)
        sec, peak = time_against_peak(net, frames, args.device, dtype, args.repeats, args.peak_size)
        # Full attention: the same weights with one window over the whole grid.
        net.cfg = cfg.replace(window=(10**6,) * 3)
        sec_full = time_call(net, frames, args.device, dtype, args.repeats)
        net.cfg = cfg
        row |= {
            "ms_per_call": sec * 1e3,
            "tokens_per_s": tokens / sec,
            "video_fps": video_frames_per_call / sec,
            "achieved_tflops": flops / sec / 1e12,
            "matmul_peak_tflops": peak / 1e12,
            "achieved_over_peak": flops / sec / peak,
            "window_over_full_time": sec / sec_full,
            # whether the attention ran the compiled kernels (model.kernels) rather than SDPA
            "cpu_attention_kernel": kernels.fits(
                torch.device(args.device), dtype, window, cfg.head_dim
            )
            and kernels.load() is not None,
        }
    else:
        row["note"] = f"not timed: {args.config} does not fit on {args.device}"

    print(f"StreamDiT bench: {args.config} on {args.device} ({row['dtype']})")
    for key, value in row.items():
        shown = (
            f"{value:,.3f}"
            if isinstance(value, float)
            else f"{value:,}"
            if isinstance(value, int) and not isinstance(value, bool)
            else value
        )
        print(f"  {key:24s} {shown}")
    if args.json:
        print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
