import math

import pytest
import torch

from model.bench import count_flops, main
from model.config import CONFIGS
from model.dit import inference_dtype


def test_flops_scale_with_tokens_and_include_attention():
    cfg = CONFIGS["tiny"]
    small, large = count_flops(cfg, 2), count_flops(cfg, 4)
    assert 1.9 < large / small < 2.3  # linear layers dominate; attention grows a bit faster
    full = count_flops(cfg.replace(window=(99, 99, 99)), 4)
    assert full > large  # one window over the grid costs more attention


def test_bench_prints_a_row_for_tiny(capsys):
    row = main(["--config", "tiny", "--repeats", "1", "--json", "--dtype", "fp32"])
    assert row["params"] == 173_776
    assert row["ms_per_call"] > 0 and math.isfinite(row["window_over_full_time"])
    out = capsys.readouterr().out
    assert '"config": "tiny"' in out and '"dtype": "float32"' in out


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_achieved_over_peak_is_the_model_rate_over_a_matmul_in_the_same_dtype(dtype):
    row = main(["--config", "tiny", "--repeats", "2", "--dtype", dtype, "--peak-size", "512"])
    assert row["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    rate = row["gflops_per_call"] * 1e9 / (row["ms_per_call"] / 1e3)
    assert row["achieved_over_peak"] == pytest.approx(rate / (row["matmul_peak_tflops"] * 1e12))
    # A 0.05 GFLOP model of many small ops runs far below a large matmul, never above it.
    assert 0 < row["achieved_over_peak"] < 1


def test_default_dtype_is_the_apps():
    row = main(["--config", "4b", "--device", "cpu"])
    expected = inference_dtype(torch.device("cpu"), CONFIGS["4b"])
    assert row["dtype"] == str(expected).removeprefix("torch.")


def test_4b_is_counted_without_being_built_on_the_cpu():
    row = main(["--config", "4b", "--device", "cpu"])
    assert 3.6e9 <= row["params"] <= 4.4e9
    assert 1e5 < row["gflops_per_call"] < 2e5
    assert "not timed" in row["note"]
