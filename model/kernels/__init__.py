"""Hand-written CPU kernels, compiled on first use by torch's C++ extension builder.

`window_attention` is StreamDiT's window self-attention in bf16 for CPUs with AVX-512 BF16
(AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and later). Per window and head
it keeps the scores of four query rows at a time in the L1 cache, from the dot products
through the softmax to the weighted values (window_attention.cpp); SDPA's CPU kernel cuts
each small window into blocks and spends most of its time between them. On the `cpu` model
it is 2.5-3x faster than SDPA per layer (docs/PERFORMANCE.md).

Building takes ~10 s once and needs a C++ compiler and ninja; torch keeps the library in
its extensions cache (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR) and rebuilds it
only when the source changes. Where it cannot build, on other CPUs, and with
STREAMDIT_KERNELS=0 in the environment the model keeps torch's SDPA path, with the same
numbers up to bf16 rounding. `python -m model.kernels` builds it ahead of time and says
whether it runs here.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ENV = "STREAMDIT_KERNELS"  # "0" keeps torch's ops
SOURCE = Path(__file__).with_name("window_attention.cpp")
FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
FLAGS += ["-mavx512bf16", "-mfma"]
# The kernel's tiles: windows of a multiple of 64 tokens, heads of a multiple of 32 channels.
WINDOW_MULTIPLE, HEAD_MULTIPLE = 64, 32


def unavailable() -> str | None:
    """Why the kernels cannot run in this process, or None when they can be built."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0 in the environment"
    if not getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "this CPU has no AVX-512 BF16"
    return None


@functools.cache
def load() -> Callable[..., Tensor] | None:
    """torch.ops.streamdit.window_attention, built the first time; None when it cannot run
    here (the reason is logged once)."""
    reason = unavailable()
    if reason is not None:
        log.info("CPU attention kernel off: %s.", reason)
        return None
    from torch.utils.cpp_extension import load as build

    start = time.perf_counter()
    try:
        _find_ninja()
        build(
            name="streamdit_kernels",
            sources=[str(SOURCE)],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: keep torch's path
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("CPU attention kernel unavailable (%s); attention runs on torch's SDPA.", first)
        return None
    log.info("CPU attention kernel ready in %.1f s.", time.perf_counter() - start)
    return torch.ops.streamdit.window_attention


def fits(device: torch.device, dtype: torch.dtype, window_tokens: int, head_dim: int) -> bool:
    """Whether windows of `window_tokens` and heads of `head_dim` in `dtype` on `device` are
    the kernel's kind (bf16 on a CPU, windows of a multiple of 64 tokens, heads of 32)."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and window_tokens % WINDOW_MULTIPLE == 0
        and head_dim % HEAD_MULTIPLE == 0
    )


def _find_ninja() -> None:
    """torch runs `ninja` from PATH; a venv that was not activated has the ninja package's
    binary off PATH, so put it there."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def window_attention(
    qk: Tensor, v: Tensor, mask: Tensor | None, window_tokens: int
) -> Tensor | None:
    """Window attention by the compiled kernel, or None where it does not apply (then the
    caller takes torch's path): bf16 CPU inference outside autograd, autocast and
    torch.compile, windows of a multiple of 64 tokens and heads of a multiple of 32.

    qk (B, nW*Lw, 2*Nh, Dh) the rotated queries then keys in window order (contiguous),
    v (B, nW*Lw, Nh*Dh) (rows may be strided), mask (B*nW, 1, Lw, Lw) additive or None
    -> (B, nW*Lw, Nh*Dh) in window order.
    """
    dh = qk.shape[-1]
    applies = (
        fits(qk.device, qk.dtype, window_tokens, dh)
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and qk.is_contiguous()
    )
    kernel = load() if applies else None
    if kernel is None:
        return None
    return kernel(qk, v, qk.new_empty(0) if mask is None else mask, window_tokens, dh**-0.5)


def main() -> int:
    """Build the kernels now and say whether they run here (`make install` calls this)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # a failed build's error
    start = time.perf_counter()
    if load() is None:
        print(f"CPU attention kernel: off ({unavailable() or 'did not build'}); torch's path runs.")
    else:
        print(f"CPU attention kernel: ready ({time.perf_counter() - start:.1f} s).")
    return 0
