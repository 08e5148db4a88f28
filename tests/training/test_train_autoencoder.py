"""training/train_autoencoder.py: losses, PSNR, calibrated checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.autoencoder import VideoAutoencoder
from model.bundle import latent_space_digest
from training.config import ConfigError, load_config
from training.train_autoencoder import AETrainConfig, gradient_l1, psnr, ssim, train_autoencoder

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "autoencoder_tiny.toml"


def test_loss_terms():
    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    frames = x.flatten(1, 2).view(-1, 3, 16, 16)
    assert torch.allclose(ssim(frames, frames), torch.tensor(1.0), atol=1e-4)
    assert ssim(frames, torch.zeros_like(frames)) < 0.5
    assert gradient_l1(x, x) == 0 and gradient_l1(x, x + 0.3) < 1e-6  # offsets have no edges
    assert math.isclose(psnr(x, x + 0.02), 10 * math.log10(4 / 0.0004), rel_tol=1e-3)


def test_trains_logs_psnr_and_saves_a_calibrated_autoencoder(tmp_path):
    overrides = [f"run.out_dir={tmp_path}", "run.max_steps=6", "run.progress=false"]
    overrides += ["run.log_every=3", "run.eval_every=3", "run.eval_clips=2", "run.threads=1"]
    cfg = load_config(CONFIG, overrides, cls=AETrainConfig)
    train_autoencoder(cfg)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6] and all("psnr_heldout" in r for r in log)
    assert log[-1]["loss"] < log[0]["loss"] * 1.5
    ae = VideoAutoencoder.load(tmp_path / "autoencoder.safetensors")
    assert not torch.all(ae.latent_scale == 1) and not torch.all(ae.latent_shift == 0)
    # Calibrated: training-like clips encode to roughly unit variance.
    from training.data import SyntheticScenes

    clips = torch.stack([SyntheticScenes(8, 64, seed=5)[i][0] for i in range(4)])
    z = ae.encode(clips)
    assert 0.3 < z.std().item() < 3.0


def test_a_decoder_only_run_keeps_the_latent_space_and_improves_the_decoder(tmp_path):
    base = [
        "run.progress=false",
        "run.log_every=3",
        "run.eval_every=3",
        "run.eval_clips=2",
        "run.threads=1",
    ]
    first = tmp_path / "first"
    train_autoencoder(
        load_config(CONFIG, [*base, f"run.out_dir={first}", "run.max_steps=3"], cls=AETrainConfig)
    )
    start = VideoAutoencoder.load(first / "autoencoder.safetensors")
    tuned_dir = tmp_path / "decoder"
    sets = [f"model.init={first / 'autoencoder.safetensors'}", "optim.train_encoder=false"]
    sets += [f"run.out_dir={tuned_dir}", "run.max_steps=6", "optim.lr=1e-3"]
    train_autoencoder(load_config(CONFIG, [*base, *sets], cls=AETrainConfig))
    tuned = VideoAutoencoder.load(tuned_dir / "autoencoder.safetensors")
    assert latent_space_digest(tuned) == latent_space_digest(start)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(tuned.decoder.parameters(), start.decoder.parameters(), strict=True)
    ]
    assert any(moved)


def test_decoder_only_needs_the_encoder_to_keep(tmp_path):
    sets = [f"run.out_dir={tmp_path}", "optim.train_encoder=false", "run.progress=false"]
    with pytest.raises(ConfigError, match="needs model.init"):
        train_autoencoder(load_config(CONFIG, sets, cls=AETrainConfig))


def test_random_crops_are_aligned_and_deterministic():
    from training.train_autoencoder import random_crops

    clips = torch.arange(2 * 3 * 4 * 32 * 48, dtype=torch.float32).view(2, 3, 4, 32, 48)
    crops = random_crops(clips, 16, 8, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 4, 16, 16)
    again = random_crops(clips, 16, 8, torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)
    for clip, crop in zip(clips, crops, strict=True):
        flat = clip[0, 0].flatten().tolist()
        top, left = divmod(flat.index(crop[0, 0, 0, 0].item()), 48)
        assert top % 8 == 0 and left % 8 == 0  # on the latent grid
        assert torch.equal(crop, clip[..., top : top + 16, left : left + 16])


def test_flat_colour_error_reads_a_colour_shift_in_levels():
    from model.autoencoder import AE_CONFIGS
    from training.train_autoencoder import flat_colour_error

    ae = VideoAutoencoder(AE_CONFIGS["tiny"]).eval()
    with torch.no_grad():
        for p in ae.parameters():
            p.zero_()
        ae.encoder.add_shortcuts()
        ae.decoder.add_shortcuts()
    assert flat_colour_error(ae) < 0.01  # the shortcut codec keeps flat colours exactly
    with torch.no_grad():
        ae.decoder.head.bias.fill_(10 / 127.5)  # every pixel 10 levels brighter
    assert math.isclose(flat_colour_error(ae), 10.0, abs_tol=0.01)
