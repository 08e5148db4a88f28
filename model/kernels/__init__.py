"""Hand-written CPU kernels (kernels.cpp), compiled on first use by torch's C++ extension
builder, for bf16 on CPUs with AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake and
Sapphire Rapids and later):

- `attention`: multi-head attention for StreamDiT's window self-attention and text
  cross-attention. Per group (window or sample) and head it keeps the scores of four query
  rows at a time in the L1 cache, from the dot products through the softmax to the weighted
  values; SDPA's CPU kernel cuts each small window into blocks and spends most of its time
  between them (2-2.5x faster per layer on the `cpu` model, docs/PERFORMANCE.md).
- `norm_rotate`: the q/k RMS norm and rotary rotation in one pass.
- `layer_norm_modulate`: adaLN's LayerNorm and per-frame scale and shift in one pass.
- `gelu_tanh_`: the MLP's GELU in place, at a fraction of the cost of oneDNN's fused one.

Building takes 10-16 s once and needs a C++ compiler and ninja; torch keeps the library in
its extensions cache (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR), one per Python
environment and torch version, and rebuilds it only when the source changes. Where it
cannot build, on other CPUs, and with STREAMDIT_KERNELS=0 in the environment the model keeps
torch's ops, with the same numbers up to bf16 rounding. `python -m model.kernels` builds it
ahead of time and says whether it runs here.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ENV = "STREAMDIT_KERNELS"  # "0" keeps torch's ops
SOURCE = Path(__file__).with_name("kernels.cpp")
FLAGS = ["-O3", "-fopenmp", "-mfma"] + [f"-mavx512{x}" for x in ("f", "bw", "vl", "dq", "bf16")]
# The kernel's tiles: queries by 4, head channels by 32 (keys are padded inside).
QUERY_MULTIPLE, HEAD_MULTIPLE = 4, 32


def unavailable() -> str | None:
    """Why the kernels cannot run in this process, or None when they can be built."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0 in the environment"
    if not getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "this CPU has no AVX-512 BF16"
    return None


@functools.cache
def load() -> Any:
    """The kernels' ops (torch.ops.streamdit: `attention`, `norm_rotate`,
    `layer_norm_modulate`, `gelu_tanh_`), built the first time; None when they cannot run
    here (the reason is logged once)."""
    reason = unavailable()
    if reason is not None:
        log.info("CPU kernels off: %s.", reason)
        return None
    from torch.utils.cpp_extension import load as build

    start = time.perf_counter()
    try:
        _find_ninja()
        build(
            name=_build_name(),
            sources=[str(SOURCE)],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: keep torch's path
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("CPU kernels unavailable (%s); the model runs torch's ops.", first)
        return None
    log.info("CPU kernels ready in %.1f s.", time.perf_counter() - start)
    return torch.ops.streamdit


def fits(device: torch.device, dtype: torch.dtype, queries: int, head_dim: int) -> bool:
    """Whether `queries` per group and heads of `head_dim` in `dtype` on `device` are the
    kernel's kind: bf16 on a CPU, a multiple of 4 queries, heads of a multiple of 32."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and queries % QUERY_MULTIPLE == 0
        and head_dim % HEAD_MULTIPLE == 0
    )


def _build_name() -> str:
    """The library's name in torch's extensions cache, one per Python environment and torch
    version: two checkouts would otherwise rebuild it each time the other one ran."""
    digest = hashlib.sha1(f"{sys.prefix}|{torch.__version__}".encode()).hexdigest()[:10]
    return f"streamdit_kernels_{digest}"


def _find_ninja() -> None:
    """torch runs `ninja` from PATH; a venv that was not activated has the ninja package's
    binary off PATH, so put it there."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def bf16_cpu_inference(x: Tensor) -> bool:
    """bf16 on a CPU outside autograd, autocast and torch.compile: where the kernels run (and
    where model.dit takes its other CPU fast paths)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor | None:
    """softmax(q k^T / sqrt(Dh) + mask) v by the compiled kernel, or None where it does not
    apply (then the caller takes torch's path): bf16 CPU inference, a multiple of 4 queries,
    heads of a multiple of 32.

    q (G, Lq, Nh, Dh), k and v (G, Lk, Nh, Dh) for G independent groups (windows, samples),
    strided views welcome but channels contiguous; mask (G, Lq or 1, Lk) additive or None
    -> (G, Lq, Nh*Dh).
    """
    ops = (
        load()
        if bf16_cpu_inference(q) and fits(q.device, q.dtype, q.shape[1], q.shape[-1])
        else None
    )
    if ops is None:
        return None
    return ops.attention(q, k, v, q.new_empty(0) if mask is None else mask, q.shape[-1] ** -0.5)


def norm_rotate(
    x: Tensor, weight: Tensor, eps: float, cos: Tensor | None = None, sin: Tensor | None = None
) -> Tensor | None:
    """RMS norm over the last dim, scaled by `weight`, then rotated by the rotary tables when
    given, in one pass (model.dit.qk_norm_pair, then model.attention.rotate), or None where
    the kernel does not apply: bf16 CPU inference, heads of a multiple of 16.

    x (B, S, N, D) (rows may be strided; N = 2 for q and k of the fused projection),
    weight (N, D), cos and sin (S, 1, Dh) from `rope_rotation` -> (B, S, N, D), rounded to
    bf16 once.
    """
    d, dh = x.shape[-1], x.shape[-1] if cos is None else cos.shape[-1]
    ops = load() if bf16_cpu_inference(x) and d % 16 == 0 and dh % 16 == 0 else None
    if ops is None:
        return None
    none = x.new_empty(0)
    return ops.norm_rotate(
        x, weight, eps, none if cos is None else cos, none if sin is None else sin
    )


def layer_norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor | None:
    """adaLN in one pass: LayerNorm without weights, then x * (1 + scale) + shift per frame
    (model.dit.modulate), or None where the kernel does not apply: bf16 CPU inference, a
    width of a multiple of 16.

    x (B, L, D), L = F * tokens per frame; shift and scale (B, F, D) -> (B, L, D).
    """
    ops = load() if bf16_cpu_inference(x) and x.shape[-1] % 16 == 0 else None
    if ops is None:
        return None
    return ops.layer_norm_modulate(x.contiguous(), shift, scale, eps)


def runs(x: Tensor) -> bool:
    """Whether the kernels run on x: bf16 CPU inference (outside autograd, autocast and
    torch.compile) on a machine where they built."""
    return bf16_cpu_inference(x) and load() is not None


def gelu_tanh_(x: Tensor) -> Tensor:
    """GELU (tanh approximation) in place on a contiguous x for which `runs(x)` holds."""
    return load().gelu_tanh_(x)


def main(argv: list[str] | None = None) -> int:
    """Build the kernels now and say whether they run here (`make install` calls this)."""
    argparse.ArgumentParser(
        prog="python -m model.kernels",
        description="Compile StreamDiT's CPU kernels (bf16, AVX-512 BF16) now, into torch's "
        "extension cache, and say whether they run on this machine. Where they cannot, the "
        f"model runs torch's ops; {ENV}=0 turns them off.",
    ).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # a failed build's error
    start = time.perf_counter()
    if load() is None:
        print(f"CPU kernels: off ({unavailable() or 'did not build'}); torch's ops run instead.")
    else:
        print(f"CPU kernels: ready ({time.perf_counter() - start:.1f} s).")
    return 0
