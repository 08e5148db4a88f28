"""model/codec_bench.py: the autoencoder's compute dtypes side by side."""

from __future__ import annotations

import pytest
import torch

from model.codec_bench import bench_autoencoder, main, moving_clip


def test_each_dtype_gets_a_row_with_its_psnr_against_the_first() -> None:
    rows = bench_autoencoder("tiny", 32, 4, 1, "cpu", ["float32", "bfloat16"])
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16"]
    assert rows[0]["PSNR vs float32"] == "-"
    assert float(rows[1]["PSNR vs float32"]) >= 40  # bf16 rounding, not a broken path
    assert all(r["latent"] == "4x1x4x4" and r["encode ms/frame"] > 0 for r in rows)


def test_the_moving_clip_is_channels_last_video_in_range() -> None:
    clip = moving_clip(8, 16)
    assert clip.shape == (1, 3, 8, 16, 16)
    assert clip.is_contiguous(memory_format=torch.channels_last_3d)
    assert clip.min() >= -1 and clip.max() <= 1
    assert (clip[:, :, 1:] - clip[:, :, :-1]).abs().max() > 0.01  # it moves


def test_main_prints_one_row_per_preset_and_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        ["--presets", "tiny", "--size", "32", "--frames", "4", "--repeats", "1"]
        + ["--dtypes", "float32", "bfloat16", "--no-text"]
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|  ")]
    assert [r.split("|")[2].strip() for r in rows] == ["float32", "bfloat16"]
