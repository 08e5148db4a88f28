"""training/train.py: the StreamDiT trainer end to end on the tiny preset (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import support
import torch

from model.autoencoder import AE_CONFIGS, VideoAutoencoder
from model.bundle import load_bundle, pack
from model.checkpoint import CheckpointError, load_streamdit, read_metadata
from model.config import CONFIGS
from model.dit import StreamDiT
from training.config import ConfigError, load_config
from training.objective import draw_noise, flow_matching_loss, step_generator
from training.textstub import HashTextEncoder
from training.train import geometry, lr_at, pairing_record, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "training" / "configs" / "tiny.toml"
QUIET = ["run.progress=false", "run.log_every=1", "run.threads=1"]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    cfg = CONFIGS["tiny"]
    net = StreamDiT(cfg)
    latents = torch.randn(2, cfg.latent_channels, cfg.latent_frames, 8, 8)
    text = HashTextEncoder(cfg.text_dim, cfg.text_len).encode(["a red circle", "a blue ring"])
    draw = draw_noise(tuple(latents.shape), [1, 2, 4], 0, 0.0, step_generator(0, 0, 0))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        loss = flow_matching_loss(net, latents, draw, text.states, text.mask, cfg.sigma_min, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history[::10]


def test_resume_replays_the_uninterrupted_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(load_config(TINY, [*QUIET, "run.max_steps=6", f"run.out_dir={straight}"]))
    train(load_config(TINY, [*QUIET, "run.max_steps=3", f"run.out_dir={split}"]))
    assert len(losses(split)) == 3
    train(load_config(TINY, [*QUIET, "run.max_steps=6", f"run.out_dir={split}"]))
    assert losses(split) == losses(straight)  # bit-identical, data order included


def test_a_stages_motion_weight_reaches_its_loss(tmp_path):
    """Same data and draws; only the stage's weight on moving pixels differs."""
    runs = {}
    for weight in (0.0, 3.0):
        out = tmp_path / f"w{weight:g}"
        steps = ["run.max_steps=2", f"stages.0.motion_weight={weight}", f"run.out_dir={out}"]
        train(load_config(TINY, [*QUIET, *steps]))
        runs[weight] = losses(out)
    assert all(math.isfinite(x) for x in runs[3.0])
    assert all(a != b for a, b in zip(runs[0.0], runs[3.0], strict=True))


def test_outputs_log_and_loadable_export(tmp_path):
    out = tmp_path / "run"
    last = train(load_config(TINY, [*QUIET, "run.max_steps=2", f"run.out_dir={out}"]))
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "lr", "samples_per_s", "tokens_per_s", "step"):
        assert key in record
    assert record["tokens_per_s"] == pytest.approx(record["samples_per_s"] * 4 * 4 * 4)
    assert last["step"] == 2
    net = load_streamdit(out / "streamdit_ema.safetensors")
    assert (
        net.cfg == CONFIGS["tiny"]
        and read_metadata(out / "streamdit_ema.safetensors")["step"] == "2"
    )
    assert len(list((out / "checkpoints").glob("state-*.safetensors"))) == 1


def test_a_run_packs_into_a_bundle_with_the_autoencoder_it_trained_on(tmp_path):
    out = tmp_path / "run"
    train(load_config(TINY, [*QUIET, "run.max_steps=1", f"run.out_dir={out}"]))
    dit, ae = out / "streamdit_ema.safetensors", out / "autoencoder.safetensors"
    bundle = load_bundle(pack(dit, ae, tmp_path / "tiny.safetensors"))
    assert bundle.info.text_encoder.is_stub  # tiny.toml trains on the hash stub
    assert bundle.trained_sizes == ((64, 64),)  # data.size
    other = VideoAutoencoder(AE_CONFIGS["tiny"]).save(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="autoencoder"):
        pack(dit, other, tmp_path / "mixed.safetensors")


def test_learning_rate_schedule_is_per_stage_warmup():
    cfg = load_config(
        TINY,
        ["optim.warmup=2", "stages=[{steps=3, lr=1.0}, {steps=3, lr=0.5, name='b'}]"],
    )
    assert [lr_at(cfg, s) for s in range(6)] == [0.5, 1.0, 1.0, 0.25, 0.5, 0.5]
    assert cfg.stage_at(4)[0].name == "b"


def torchrun(out: Path, *overrides: str) -> str:
    """Run the tiny trainer under `torchrun --nproc-per-node 2` (gloo); returns stdout."""
    sets = [*QUIET, f"run.out_dir={out}", *overrides]
    args = [str(TINY), *[a for o in sets for a in ("--set", o)]]
    return support.torchrun("training.train", args, ROOT)


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    stdout = torchrun(out, "run.max_steps=3", "run.checksum=true")
    digests = [(out / f"weights_rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert "2 process(es)" in stdout
    assert len(losses(out)) == 3


@pytest.mark.slow
def test_fsdp_run_resumed_midway_matches_ddp(tmp_path):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(ddp, "run.max_steps=4")
    torchrun(fsdp, "run.max_steps=2", "run.strategy=fsdp")
    torchrun(fsdp, "run.max_steps=4", "run.strategy=fsdp")
    assert losses(fsdp) == pytest.approx(losses(ddp), rel=1e-5)


def test_training_from_a_latent_cache(tmp_path):
    from training.cache_latents import main as cache_main

    cache = tmp_path / "latents.safetensors"
    assert cache_main([str(TINY), "--clips", "4", "--out", str(cache), "--batch", "2"]) == 0
    out = tmp_path / "run"
    train(
        load_config(
            TINY, [*QUIET, "run.max_steps=2", f"run.out_dir={out}", f"data.latent_cache={cache}"]
        )
    )
    assert len(losses(out)) == 2


def test_a_latent_cache_from_another_autoencoder_or_shape_is_refused(tmp_path, capsys):
    from model.autoencoder import AE_CONFIGS, VideoAutoencoder
    from training.cache_latents import main as cache_main
    from training.data import LatentCache, SyntheticScenes
    from training.train import main as train_main

    cache = tmp_path / "latents.safetensors"
    assert cache_main([str(TINY), "--clips", "2", "--out", str(cache), "--batch", "2"]) == 0
    ae = tmp_path / "ae.safetensors"
    VideoAutoencoder(AE_CONFIGS["tiny"]).save(ae)
    base = [str(TINY), *[a for o in QUIET for a in ("--set", o)], "--set", "run.max_steps=1"]
    other_ae = ["--set", "autoencoder.source=checkpoint", "--set", f"autoencoder.checkpoint={ae}"]
    args = [*base, "--set", f"run.out_dir={tmp_path / 'a'}", "--set", f"data.latent_cache={cache}"]
    assert train_main([*args, *other_ae]) == 2
    assert "was encoded by random:tiny" in capsys.readouterr().err

    wrong = tmp_path / "wrong.safetensors"  # 2 latent frames where the tiny model has 4
    data = SyntheticScenes(frames=16, size=64)
    LatentCache.build(wrong, data, lambda x: torch.zeros(len(x), 4, 2, 8, 8), 2, tag="random:tiny")
    args = [*base, "--set", f"run.out_dir={tmp_path / 'b'}", "--set", f"data.latent_cache={wrong}"]
    assert train_main(args) == 2
    assert "error: latent cache" in capsys.readouterr().err


def test_resume_after_a_crash_does_not_duplicate_log_lines(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(load_config(TINY, [*QUIET, "run.max_steps=4", f"run.out_dir={straight}"]))
    every2 = [*QUIET, "run.ckpt_every=2", f"run.out_dir={crashed}"]
    train(load_config(TINY, [*every2, "run.max_steps=3"]))
    # As if the run had died after logging step 3 but before its checkpoint: resume from 2.
    (crashed / "checkpoints" / "state-00000003.safetensors").unlink()
    train(load_config(TINY, [*every2, "run.max_steps=4"]))
    steps = [json.loads(line)["step"] for line in (crashed / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and losses(crashed) == losses(straight)


# --- crops (data.crop) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        (80, r"data.crop 80 must not exceed data.size 64"),
        (24, r"data.crop 24 must be a multiple of 16"),
        (40, r"data.crop 40 must be a multiple of 16"),
    ],
)
def test_geometry_refuses_a_crop_larger_than_the_size_or_off_the_token_grid(crop, message):
    cfg = load_config(TINY, [f"data.crop={crop}"])
    with pytest.raises(ConfigError, match=message):
        geometry(cfg, VideoAutoencoder(AE_CONFIGS["tiny"]))


def test_a_crop_trains_on_its_own_tokens_and_the_record_lists_both_sizes():
    ae = VideoAutoencoder(AE_CONFIGS["tiny"])
    geo = geometry(load_config(TINY, ["data.crop=32"]), ae)
    assert (geo.size, geo.clip, geo.video_frames) == (64, 32, 16)
    assert geo.tokens_per_sample == 4 * 2 * 2  # 4 latent frames of 4x4 latents, 2x2 patches
    record = pairing_record(load_config(TINY, ["data.crop=32"]), ae, geo)
    # The footage's scale first (the size the app defaults to), then the crop scenes are drawn at.
    assert record["frame_sizes"] == "64x64,32x32"
    whole = load_config(TINY)
    assert pairing_record(whole, ae, geometry(whole, ae))["frame_sizes"] == "64x64"


def test_a_run_on_crops_packs_with_both_sizes(tmp_path):
    out = tmp_path / "run"
    train(load_config(TINY, [*QUIET, "run.max_steps=1", "data.crop=32", f"run.out_dir={out}"]))
    dit, ae = out / "streamdit_ema.safetensors", out / "autoencoder.safetensors"
    bundle = load_bundle(pack(dit, ae, tmp_path / "tiny.safetensors"))
    assert bundle.trained_sizes == ((64, 64), (32, 32))
    assert bundle.info.default_size == (64, 64)  # the app runs at the footage's scale


# --- paired training (flow.paired) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("flow.paired=1.5", r"flow.paired must be in \[0, 1\], got 1.5"),
        ("flow.entry=[0.6, 0.2]", r"flow.entry must be \[low, high\]"),
        ("flow.entry=[0.2, 1.0]", r"flow.entry must be \[low, high\]"),
    ],
)
def test_paired_settings_are_checked(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [setting])


def test_a_paired_run_on_styled_footage_trains(tmp_path):
    pytest.importorskip("skimage")
    sets = [
        *QUIET,
        "flow.paired=1.0",
        "data.synthetic=0.0",
        "data.styles=1.0",
        "data.size=32",
        "run.max_steps=2",
        f"run.out_dir={tmp_path}",
    ]
    last = train(load_config(TINY, sets))
    assert last["step"] == 2 and all(math.isfinite(x) for x in losses(tmp_path))


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_mix_draws_spread_a_stages_share_evenly(share):
    from training.train import mix_draws

    picks = [mix_draws(step + 1, share) > mix_draws(step, share) for step in range(40)]
    assert sum(picks) == 40 * share
    assert all(sum(picks[i : i + 4]) == 4 * share for i in range(0, 37))  # every stretch


def test_a_stage_mixes_whole_batches_from_a_cache_of_another_size(tmp_path):
    """Half of stage b's batches come from 32 px scenes beside the 64 px cache; a resumed
    run reads the same batches and reaches the same losses."""
    from training.cache_latents import main as cache_main
    from training.distributed import DistEnv
    from training.train import build_autoencoder, stage_batches

    main, small = tmp_path / "main.safetensors", tmp_path / "small.safetensors"
    assert cache_main([str(TINY), "--clips", "4", "--out", str(main), "--batch", "2"]) == 0
    args = ["--clips", "4", "--out", str(small), "--batch", "2", "--set", "data.size=32"]
    assert cache_main([str(TINY), *args]) == 0
    stages = (
        "stages=[{name='a', steps=2, lr=1e-3}, "
        f"{{name='b', steps=4, lr=1e-3, mix_cache='{small}', mix_share=0.5}}]"
    )
    sets = [*QUIET, stages, f"data.latent_cache={main}"]
    cfg = load_config(TINY, sets)
    geo = geometry(cfg, build_autoencoder(cfg, torch.device("cpu")))
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    batches = list(stage_batches(cfg, geo, 2, env, 0, 6))
    assert [b.clips.shape[-1] for b in batches] == [8, 8, 8, 4, 8, 4]  # latent pixels
    assert all(b.cached for b in batches)
    resumed = list(stage_batches(cfg, geo, 2, env, 3, 6))
    assert all(torch.equal(a.clips, b.clips) for a, b in zip(batches[3:], resumed, strict=True))

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(load_config(TINY, [*sets, f"run.out_dir={straight}"]))
    train(load_config(TINY, [*sets, "run.max_steps=3", f"run.out_dir={split}"]))
    train(load_config(TINY, [*sets, f"run.out_dir={split}"]))
    assert losses(split) == losses(straight)


@pytest.mark.parametrize(
    "stage",
    ["{name='a', mix_share=0.5}", "{name='a', mix_cache='x'}", "{mix_cache='x', mix_share=2}"],
)
def test_a_mix_needs_its_cache_and_a_share(stage):
    with pytest.raises(ConfigError, match="mix_cache and mix_share"):
        load_config(TINY, [f"stages=[{stage}]"])


def test_a_missing_mix_cache_is_refused_before_training(tmp_path, capsys):
    from training.train import main as train_main

    stages = (
        f"stages=[{{name='a', steps=2, mix_cache='{tmp_path / 'no.safetensors'}', mix_share=0.5}}]"
    )
    args = [str(TINY), "--set", "run.progress=false", "--set", stages]
    assert train_main([*args, "--set", f"run.out_dir={tmp_path / 'run'}"]) == 2
    assert "no.safetensors does not exist" in capsys.readouterr().err
