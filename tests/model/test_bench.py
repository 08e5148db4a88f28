import math

from model.bench import count_flops, main
from model.config import CONFIGS


def test_flops_scale_with_tokens_and_include_attention():
    cfg = CONFIGS["tiny"]
    small, large = count_flops(cfg, 2), count_flops(cfg, 4)
    assert 1.9 < large / small < 2.3  # linear layers dominate; attention grows a bit faster
    full = count_flops(cfg.replace(window=(99, 99, 99)), 4)
    assert full > large  # one window over the grid costs more attention


def test_bench_prints_a_row_for_tiny(capsys):
    row = main(["--config", "tiny", "--repeats", "1", "--json"])
    assert row["params"] == 173_776
    assert row["ms_per_call"] > 0 and math.isfinite(row["window_over_full_time"])
    assert '"config": "tiny"' in capsys.readouterr().out


def test_4b_is_counted_without_being_built_on_the_cpu():
    row = main(["--config", "4b", "--device", "cpu"])
    assert 3.6e9 <= row["params"] <= 4.4e9
    assert 1e5 < row["gflops_per_call"] < 2e5
    assert "not timed" in row["note"]
