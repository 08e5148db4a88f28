import json
import math

import pytest
import torch

from model import AE_CONFIGS, CONFIGS, StreamDiT, VideoAutoencoder, save_checkpoint
from model.bundle import minilm_id, save_bundle
from training.eval_autoencoder import (
    BASELINE,
    BicubicBaseline,
    clip_mse,
    evaluate,
    is_video,
    load_autoencoder,
    main,
    psnr_of,
)
from training.footage import PACKAGED_PHOTOS, PACKAGED_VIDEOS
from training.train_autoencoder import psnr

KEYS = {"psnr", "psnr_video", "psnr_photo", "flat_colour_error", "ms_per_frame"}


def _tiny_ae(seed: int = 0) -> VideoAutoencoder:
    torch.manual_seed(seed)
    return VideoAutoencoder(AE_CONFIGS["tiny"]).eval()


def test_cli_scores_an_autoencoder_and_the_baseline_on_held_out_footage(tmp_path, capsys):
    path = _tiny_ae().save(tmp_path / "autoencoder.safetensors")
    out = tmp_path / "scores.json"
    args = [str(path), "--size", "64", "--clips", "2", "--json", str(out), "--no-progress"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["clips"] == 2 and report["videos"] == 1  # items alternate video / photo
    assert set(report["results"]) == {str(path), BASELINE}
    for scores in report["results"].values():
        assert set(scores) == KEYS
        assert all(math.isfinite(v) for v in scores.values())
    # An untrained autoencoder is worse than the classic baseline on real footage.
    assert report["results"][BASELINE]["psnr"] > report["results"][str(path)]["psnr"]
    table = capsys.readouterr().out
    assert "PSNR photos (dB)" in table and BASELINE in table


def test_bicubic_baseline_is_near_perfect_on_flat_colour_and_poor_on_noise():
    flat = torch.full((3, 8, 64, 64), 0.3)
    flat[1] = -0.6
    noise = torch.rand(3, 8, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    base = BicubicBaseline()
    assert evaluate(base, [(flat, True)]).psnr > 40
    scores = evaluate(base, [(noise, False)])
    # Uniform noise has variance 1/3: predicting its mean alone scores 10*log10(12) = 10.8 dB.
    assert scores.psnr < 11.5 and math.isnan(scores.psnr_video)
    assert scores.flat_colour_error < 0.5


def test_baseline_keeps_three_numbers_per_8x8x4_block():
    base = BicubicBaseline()
    x = torch.rand(2, 3, 8, 64, 32) * 2 - 1
    z = base.encode(x)
    assert z.shape == (2, 3, 2, 8, 4)
    assert base.decode(z).shape == x.shape
    # Frames 0-3 share one latent frame, so they decode identically.
    y = base.decode(z)
    torch.testing.assert_close(y[:, :, 0], y[:, :, 3])
    assert not torch.allclose(y[:, :, 3], y[:, :, 4])


def test_pooled_psnr_matches_the_trainers_psnr_and_kinds_come_from_captions():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 4, 8, 8, generator=gen), torch.rand(3, 4, 8, 8, generator=gen) * 1.5
    assert psnr_of([clip_mse(b, a)]) == pytest.approx(psnr(b, a))
    assert math.isnan(psnr_of([]))
    assert all(is_video(c) for c in PACKAGED_VIDEOS.values())
    assert not any(is_video(f"{c}, camera zooming in") for c in PACKAGED_PHOTOS.values())


def test_a_bundle_gives_its_autoencoder(tmp_path):
    ae = _tiny_ae(3)
    dit = StreamDiT(CONFIGS["tiny"]).eval()
    path = save_bundle(
        tmp_path / "b.safetensors", dit, ae, text_encoder=minilm_id(), trained_sizes=[(64, 64)]
    )
    loaded = load_autoencoder(path)
    x = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), ae.decode(ae.encode(x)))


@pytest.mark.parametrize("case", ["missing", "dit", "size", "frames"])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, case):
    ae_path = _tiny_ae().save(tmp_path / "autoencoder.safetensors")
    args = {
        "missing": [str(tmp_path / "nope.safetensors")],
        "size": [str(ae_path), "--size", "60"],
        "frames": [str(ae_path), "--frames", "6"],
    }.get(case)
    if case == "dit":
        dit = StreamDiT(CONFIGS["tiny"])
        args = [str(save_checkpoint(tmp_path / "dit.safetensors", dit, dit.cfg, "streamdit"))]
    assert main([*args, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err
