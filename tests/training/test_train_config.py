"""training/config.py: typed TOML configs and --set overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.config import (
    ConfigError,
    Precision,
    Strategy,
    TrainConfig,
    load_config,
    parse_override,
)
from training.train import main
from training.train_autoencoder import AETrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize("name", ["tiny", "cpu", "4b"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert isinstance(cfg, TrainConfig) and cfg.model.preset == name


def test_scenes64_is_a_scene_only_bench_of_the_cpu_model():
    cfg = load_config(CONFIGS / "cpu_scenes64.toml")
    data = cfg.data
    assert cfg.model.preset == "cpu" and cfg.text.encoder.value == "minilm"
    assert (data.synthetic, data.styles, data.packaged, data.size) == (1.0, 0.0, 0.0, 64)
    assert data.max_objects == 1 and cfg.flow.paired == 0.0
    assert [(s.steps, s.motion_weight) for s in cfg.stages] == [(6000, 2.0)]


def test_4b_is_the_paper_recipe():
    cfg = load_config(CONFIGS / "4b.toml")
    assert [(s.steps, s.lr) for s in cfg.stages] == [(10_000, 1e-4), (10_000, 1e-5), (10_000, 1e-5)]
    assert cfg.run.strategy is Strategy.FSDP and cfg.run.precision is Precision.BF16
    assert cfg.optim.batch_size == 128 and cfg.flow.chunk_sizes == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("name", ["autoencoder_tiny", "autoencoder_cpu"])
def test_autoencoder_configs_load(name):
    assert isinstance(load_config(CONFIGS / f"{name}.toml", cls=AETrainConfig), AETrainConfig)


def test_overrides_are_typed():
    cfg = load_config(
        CONFIGS / "tiny.toml",
        [
            "optim.batch_size=2",
            "stages.0.lr=3e-4",
            "run.out_dir=runs/x",
            "flow.chunk_sizes=[1, 4]",
            "run.precision=bf16",
            "optim.ema_decay=0",
        ],
    )
    assert cfg.optim.batch_size == 2 and cfg.stages[0].lr == 3e-4
    assert cfg.run.out_dir == "runs/x" and cfg.flow.chunk_sizes == [1, 4]
    assert cfg.run.precision is Precision.BF16
    assert isinstance(cfg.optim.ema_decay, float)  # an int where a float goes is fine


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-3", r"unknown config key 'optim.lrr'"),
        ("optim.batchsize=4", r"did you mean 'batch_size'"),
        ("nosuch.key=1", r"unknown config key 'nosuch'"),
        ("optim.batch_size=four", r"optim.batch_size must be a int, got 'four' \(str\)"),
        ("optim.batch_size=2.5", r"optim.batch_size must be a int"),
        ("run.progress=1", r"run.progress must be a bool"),
        ("run.strategy=zero3", r"run.strategy must be one of 'auto', 'ddp', 'fsdp'"),
        ("flow.chunk_sizes=3", r"flow.chunk_sizes must be a list of int"),
        ("stages.5.lr=1", r"no list entry '5'"),
        ("optim.batch_size", r"--set expects key=value"),
    ],
)
def test_bad_overrides_are_refused_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "tiny.toml", [override])


def test_bad_key_in_a_file_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nlearning_rate = 1e-4\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rate'.*known in"):
        load_config(path)


def test_cli_prints_one_clear_error(capsys):
    assert main([str(CONFIGS / "tiny.toml"), "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'optim.lrr'") and "Traceback" not in err


def test_override_values_parse_as_toml():
    assert parse_override("a.b=1e-4") == (["a", "b"], 1e-4)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=path/to/x") == (["a"], "path/to/x")
    assert parse_override('a="quoted"') == (["a"], "quoted")


def test_missing_autoencoder_checkpoint_says_how_to_make_one(capsys, tmp_path):
    missing = tmp_path / "none.safetensors"
    args = [str(CONFIGS / "cpu.toml"), "--set", f"autoencoder.checkpoint={missing}"]
    assert main([*args, "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "python -m training.train_autoencoder" in capsys.readouterr().err


def test_every_stage_needs_a_folder_when_folder_data_is_mixed_in():
    # A stage without a folder (and no data.folder_path) would scan the working directory.
    stages = "stages=[{steps=1, folder_path='data/a'}, {steps=1}]"
    with pytest.raises(ConfigError, match="data.folder_path"):
        load_config(CONFIGS / "tiny.toml", ["data.folder=1.0", stages])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.log_every=0", r"run.log_every must be >= 1"),
        ("run.ckpt_every=0", r"run.ckpt_every must be >= 1"),
        ("stages.0.motion_weight=-1", r"stages.0.motion_weight must be >= 0, got -1"),
    ],
)
def test_intervals_and_weights_out_of_range_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "tiny.toml", [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("flow.chunk_sizes=[3]", r"error: flow.chunk_sizes \[3\]"),
        ("flow.ref_frames=4", r"error: flow.ref_frames"),
        ("data.folder=1.0", r"error: .*data.folder_path"),
        ("run.device=tpu", r"error: run.device"),
        ("data.size=72", r"error: data.size 72 must be a multiple of 16"),
    ],
)
def test_cli_errors_the_user_can_fix_are_one_line(capsys, tmp_path, override, message):
    folder = "data.folder_path=" + str(tmp_path / "missing")
    args = [str(CONFIGS / "tiny.toml"), "--set", f"run.out_dir={tmp_path}", "--set", override]
    if override.startswith("data.folder"):
        args += ["--set", "data.synthetic=0", "--set", folder]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.match(message, err) and "Traceback" not in err and err.count("\n") == 1


def test_no_data_source_is_a_config_error(capsys, tmp_path):
    args = [str(CONFIGS / "tiny.toml"), "--set", f"run.out_dir={tmp_path}"]
    assert main([*args, "--set", "data.synthetic=0"]) == 2
    assert capsys.readouterr().err.startswith("error: data.synthetic, data.packaged")
