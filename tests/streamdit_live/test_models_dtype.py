import copy
import math
from pathlib import Path

import pytest
import torch

import model
import streamdit_live.models as models_module
from model import CONFIGS
from model.bundle import load_bundle
from model.checkpoint import CheckpointError, read_metadata
from model.codec_bench import moving_clip
from model.dit import BF16_CPU_MIN_DIM, fast_bf16_cpu
from streamdit_live.frames import frames_to_tensor, tensor_to_frames
from streamdit_live.models import build_models, pick_codec_dtype, pick_dtype

CPU = torch.device("cpu")


def test_the_cpu_model_runs_in_bf16_where_the_cpu_has_it_and_it_is_wide_enough():
    wide = CONFIGS["cpu"].dim >= BF16_CPU_MIN_DIM  # the 1.6 M cpu model (dim 128) is not
    fast = torch.bfloat16 if fast_bf16_cpu() and wide else torch.float32
    models = build_models("cpu", CPU)
    assert next(models.dit.parameters()).dtype == fast == pick_dtype(CPU, models.config)
    assert models.ae.compute_dtype == pick_codec_dtype(CPU)
    assert models.ae.dtype == torch.float32  # frames and latents stay fp32
    tiny = build_models("tiny", CPU)
    assert next(tiny.dit.parameters()).dtype == torch.float32


def test_an_explicit_dtype_wins():
    models = build_models("cpu", CPU, dtype=torch.float32, codec_dtype=torch.float32)
    assert next(models.dit.parameters()).dtype == torch.float32
    assert models.ae.compute_dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_the_codec_computes_in_bf16_only_on_cpus_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(models_module, "fast_bf16_cpu", lambda: native)
    want = torch.bfloat16 if native else torch.float32  # emulated bf16 is slower than fp32
    assert pick_codec_dtype(CPU) == want
    models = build_models("tiny", CPU)
    assert (models.ae.compute_dtype, models.ae.dtype) == (want, torch.float32)
    assert pick_codec_dtype(torch.device("cuda")) == torch.float32  # not measured there


def test_the_shipped_codec_in_bf16_stays_within_40_db_of_float32():
    """The quality gate of the bf16 codec on the shipped weights, through the app's path:
    uint8 frames in 4-frame chunks, stream encode and decode, uint8 frames out."""
    path = Path(model.__file__).parent / "weights" / "streamdit-cpu.safetensors"
    try:
        read_metadata(path)
    except CheckpointError:  # not in this checkout, or a Git LFS pointer
        pytest.skip(f"{path} is not in this checkout")
    clip = moving_clip(12, 64)  # three chunks, two stream boundaries
    frames = tensor_to_frames(clip)
    shipped, out = load_bundle(path).autoencoder.eval(), {}
    for dtype in (torch.float32, torch.bfloat16):
        ae = copy.deepcopy(shipped).set_compute_dtype(dtype)
        enc, dec = ae.stream_encoder(), ae.stream_decoder()
        chunks = [frames_to_tensor(frames[i : i + 4]) for i in range(0, 12, 4)]
        out[dtype] = torch.cat([dec.decode(enc.encode(c)) for c in chunks], dim=2)
    a, b = (((out[d].clamp(-1, 1) + 1) * 127.5).round() for d in out)
    mse = (a - b).square().mean().item()
    assert mse > 0  # bf16 did run
    assert 10 * math.log10(255**2 / mse) >= 40  # 53 dB measured
