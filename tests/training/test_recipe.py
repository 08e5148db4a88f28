"""training/recipe.py: the tiny recipe end to end (corpus -> autoencoder -> cache -> DiT ->
distillation -> bundle -> evaluation), its resume, its wiring and its failures."""

from __future__ import annotations

import contextlib
import io
import json
import time

import pytest
import torch

from model.autoencoder import AE_CONFIGS, VideoAutoencoder
from model.bundle import main as bundle_main
from model.bundle import read_bundle_info
from model.checkpoint import read_metadata
from streamdit_live.models import build_models
from training.config import ConfigError
from training.recipe import PROFILES, Step, main, parse_sets, plan, plan_paths


def recipe(*argv: str) -> tuple[int, str, str, float]:
    """`python -m training.recipe ARGV`: (exit code, stdout, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - start


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One run of the tiny recipe into a fresh folder: (runs folder, stdout, seconds)."""
    runs = tmp_path_factory.mktemp("recipe")
    code, out, err, seconds = recipe("tiny", "--runs", str(runs))
    assert code == 0, err[-3000:]
    return runs, out, seconds


def test_the_tiny_recipe_prints_each_step_as_a_command_and_times_it(tiny):
    runs, out, _ = tiny
    headers = [line for line in out.splitlines() if line.startswith("[")]
    assert [h.split(":")[0] for h in headers] == [
        "[1/7] autoencoder",
        "[2/7] latent cache",
        "[3/7] mix cache",
        "[4/7] DiT teacher",
        "[5/7] distillation",
        "[6/7] bundle",
        "[7/7] evaluation",
    ]
    assert "DiT teacher: python -m training.train " in headers[3]
    assert "training/configs/tiny.toml --set " in headers[3]
    assert f"data.latent_cache={runs / 'tiny' / 'latents.safetensors'}" in headers[3]
    assert f"stages.1.mix_cache={runs / 'tiny' / 'latents-mix.safetensors'}" in headers[3]
    assert f"distill.teacher={runs / 'tiny' / 'streamdit_ema.safetensors'}" in headers[4]
    table = out[out.index("wall time per step") :]
    for title in ("autoencoder", "latent cache", "mix cache", "DiT teacher", "total"):
        assert title in table


def test_the_bundle_runs_in_the_app_with_the_autoencoder_the_recipe_trained(tiny):
    runs, _, _ = tiny
    bundle = runs / "streamdit-tiny.safetensors"
    models = build_models("tiny", torch.device("cpu"), [bundle])
    assert models.trained and models.name == "tiny"
    ae = VideoAutoencoder.load(runs / "autoencoder-tiny" / "autoencoder.safetensors")
    mine = models.ae.state_dict()
    for name, want in ae.state_dict().items():  # encoder and decoder alike
        torch.testing.assert_close(mine[name], want.to(mine[name].dtype), msg=name)
    # Footage made at 64 px and cut to 32 px crops; the app defaults to the footage's size.
    assert read_bundle_info(bundle).trained_sizes == ((64, 64), (32, 32))
    # The DiT learned in that autoencoder's latents (its cache), and the student is the
    # recipe's DiT's, distilled on the same cache.
    cache = str(runs / "tiny" / "latents.safetensors")
    student = read_metadata(runs / "distill-tiny" / "streamdit_ema.safetensors")
    assert student["distilled_from"] == str(runs / "tiny" / "streamdit_ema.safetensors")
    teacher = read_metadata(runs / "tiny" / "streamdit_ema.safetensors")
    assert teacher["autoencoder"] == str(runs / "autoencoder-tiny" / "autoencoder.safetensors")
    for run in ("tiny", "distill-tiny"):
        config = json.loads((runs / run / "config.json").read_text())
        assert config["data"]["latent_cache"] == cache, run


def test_the_evaluation_report_holds_text_and_video_to_video_scores(tiny):
    runs, _, _ = tiny
    report = json.loads((runs / "eval-tiny" / "report.json").read_text())
    assert {"color_accuracy", "direction_accuracy", "prompts"} <= set(report["text"])
    assert {"structure_by_strength", "runs", "looks_ok"} <= set(report["video"])
    assert {"latent_mse", "psnr"} <= set(report["agreement"])  # against the recipe's teacher
    assert (runs / "eval-tiny" / "contact_sheet.png").is_file()


def test_a_second_run_resumes_without_redoing_work(tiny):
    runs, _, first_seconds = tiny
    outputs = [
        runs / "autoencoder-tiny" / "autoencoder.safetensors",
        runs / "tiny" / "latents.safetensors",
        runs / "tiny" / "streamdit_ema.safetensors",
        runs / "distill-tiny" / "streamdit_ema.safetensors",
        runs / "streamdit-tiny.safetensors",
        runs / "eval-tiny" / "report.json",
    ]
    before = [p.stat().st_mtime_ns for p in outputs]
    code, out, err, seconds = recipe("tiny", "--runs", str(runs))
    assert code == 0, err[-3000:]
    assert out.count("skipped: up to date") == 4  # both caches, bundle, evaluation
    assert out.count("resumed from") == 2  # the DiT and the student: nothing left to train
    assert [p.stat().st_mtime_ns for p in outputs] == before
    assert seconds < first_seconds / 2


def test_a_dit_packed_with_another_runs_autoencoder_is_refused(tiny, tmp_path, capsys):
    runs, _, _ = tiny
    other = tmp_path / "autoencoder.safetensors"
    VideoAutoencoder(AE_CONFIGS["tiny"]).save(other)
    code = bundle_main(
        [
            "pack",
            "--dit",
            str(runs / "distill-tiny" / "streamdit_ema.safetensors"),
            "--autoencoder",
            str(other),
            "--out",
            str(tmp_path / "bundle.safetensors"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and not (tmp_path / "bundle.safetensors").exists()
    assert "was trained with autoencoder" in err and len(err.splitlines()) == 1


def test_a_failing_step_stops_the_chain_with_its_exit_code(tmp_path):
    argv = ("tiny", "--runs", str(tmp_path), "--set", "autoencoder:optim.bogus=1")
    code, out, err, _ = recipe(*argv)
    assert code == 2
    assert "unknown config key 'optim.bogus'" in err
    assert "step 1/7 (autoencoder) failed with exit code 2" in err
    assert "[2/7]" not in out and not (tmp_path / "tiny").exists()


def test_only_runs_the_named_steps(tmp_path):
    code, out, err, _ = recipe("tiny", "--runs", str(tmp_path), "--only", "pack")
    assert [line[:5] for line in out.splitlines() if line.startswith("[")] == ["[6/7]"]
    assert code == 2 and "does not exist" in err and "step 6/7 (bundle)" in err


def test_the_cpu_recipe_wires_the_shipped_paths():
    profile = PROFILES["cpu"]
    commands = {c.step: c.text for c in plan(profile, plan_paths(profile, None))}
    assert "--clips=5000 --out=runs/cpu/latents.safetensors" in commands[Step.CACHE]
    assert "--set data.latent_cache= " in commands[Step.CACHE] + " "
    for step in (Step.CACHE, Step.DIT, Step.DISTILL):
        assert (
            "autoencoder.checkpoint=runs/autoencoder-cpu/autoencoder.safetensors"
            in (commands[step])
        )
    assert "data.latent_cache=runs/cpu/latents.safetensors" in commands[Step.DIT]
    assert "distill.teacher=runs/cpu/streamdit_ema.safetensors" in commands[Step.DISTILL]
    assert "data.latent_cache=runs/cpu/latents.safetensors" in commands[Step.DISTILL]
    # The 64 px scenes cpu.toml's last stage mixes in: the bench's data, the recipe's path.
    assert (
        "cpu_scenes64.toml --clips=4000 --out=runs/cpu/latents-mix.safetensors"
        in (commands[Step.MIX_CACHE])
    )
    assert "stages.3.mix_cache=runs/cpu/latents-mix.safetensors" in commands[Step.DIT]
    assert (
        "model.init=runs/autoencoder-cpu/autoencoder.safetensors "
        "--set run.out_dir=runs/autoencoder-cpu-decoder" in commands[Step.DECODER]
    )
    assert commands[Step.PACK].endswith(
        "--dit=runs/distill-cpu/streamdit_ema.safetensors "
        "--autoencoder=runs/autoencoder-cpu-decoder/autoencoder.safetensors "
        "--out=model/weights/streamdit-cpu.safetensors --half"
    )
    assert list(commands) == [
        Step.AUTOENCODER,
        Step.CACHE,
        Step.MIX_CACHE,
        Step.DIT,
        Step.DECODER,
        Step.DISTILL,
        Step.PACK,
        Step.EVALUATE,
    ]


def test_runs_moves_every_output_under_the_folder(tmp_path):
    paths = plan_paths(PROFILES["cpu"], tmp_path)
    for path in (paths.autoencoder, paths.cache, paths.dit, paths.student, paths.bundle):
        assert tmp_path in path.parents


@pytest.mark.parametrize("item", ["pack:x=1", "nothing:x=1", "dit", "dit:"])
def test_a_set_must_name_a_configurable_step(item):
    with pytest.raises(ConfigError, match="STEP:key=value"):
        parse_sets([item])
