"""Fine-tuning and distilling an imported Wan2.1-architecture model with training/ (CPU, tiny).

A tiny random diffusers `WanTransformer3DModel` is imported with model.import_wan; a tiny
random umT5 folder and a tiny TAEHV file stand in for the real ones. The shipped GPU configs
(training/configs/wan_*.toml) run with CPU overrides, so they are exercised too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import support
import torch
from safetensors.torch import load_file
from wan_parts import random_wan, save_taehv, save_text_parts

from model.bundle import UMT5, latent_space_digest
from model.checkpoint import load_streamdit, read_metadata
from model.config import Prediction, TimeInput
from model.import_wan import convert
from model.taehv import TAEHV
from training.config import ConfigError, load_config
from training.distill import DistillConfig, distill
from training.train import train

diffusers = pytest.importorskip("diffusers", reason="the Wan tests need diffusers ([wan] extra)")
pytest.importorskip("transformers", reason="umT5 needs transformers (the [wan] extra)")

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = ROOT / "training" / "configs" / "wan_finetune.toml"
DISTILL = ROOT / "training" / "configs" / "wan_distill.toml"
# The GPU configs on a CPU, at 32x32 (21 latent frames of 4x4: 84 tokens) and 2 clips.
CPU = [
    "run.device=cpu",
    "run.precision=fp32",
    "run.threads=1",
    "run.progress=false",
    "run.log_every=1",
    "run.max_steps=2",
    "data.synthetic=1.0",
    "data.folder=0.0",
    "data.size=32",
    "data.crop=0",
    "data.workers=0",
    "data.max_objects=1",
    "optim.batch_size=2",
    "optim.warmup=0",
    "stages.0.lr=1e-3",
]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An imported tiny Wan, its umT5 folder and a TAEHV file (4 latent channels)."""
    root = tmp_path_factory.mktemp("wan-parts")
    random_wan(diffusers.WanTransformer3DModel, std=0.1).save_pretrained(root / "diffusers")
    convert(root / "diffusers", root / "wan.safetensors")
    return {
        "init": root / "wan.safetensors",
        "text": save_text_parts(root / "umt5", words=(), layers=1),  # umT5 d16-l1-v30
        "taehv": save_taehv(root / "taew2_1.safetensors", latent_channels=4, std=0.1, seed=1),
    }


def _paths(parts: dict[str, Path], init: Path | None = None) -> list[str]:
    return [
        f"model.init={init or parts['init']}",
        f"text.path={parts['text']}",
        f"autoencoder.checkpoint={parts['taehv']}",
    ]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finetuned(parts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finetune")
    train(load_config(FINETUNE, [*CPU, *_paths(parts), f"run.out_dir={out}"]))
    return out


def test_the_gpu_configs_are_marked_and_load():
    for path, cls in ((FINETUNE, None), (DISTILL, DistillConfig)):
        assert path.read_text().startswith("# GPU CONFIG")
        cfg = load_config(path, cls=cls) if cls else load_config(path)
        assert cfg.run.device == "cuda" and cfg.run.strategy.value == "fsdp"
        assert cfg.model.init and cfg.model.preset == "" and cfg.text.encoder.value == "umt5"


def test_finetune_steps_change_the_imported_weights(parts, finetuned):
    losses = _losses(finetuned)
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    start = load_file(str(parts["init"]))
    end = load_file(str(finetuned / "streamdit_ema.safetensors"))
    assert start.keys() == end.keys()
    changed = [n for n in start if not torch.equal(start[n].float(), end[n])]
    # Started from the import: two AdamW steps at lr 1e-3 move a weight by about 2e-3 at most
    # (a fresh random init would be ~0.1 away).
    assert max(float((end[n] - start[n].float()).abs().max()) for n in start) < 1e-2
    assert len(changed) > 0.9 * len(start), sorted(set(start) - set(changed))


def test_the_export_keeps_the_wan_switches_and_records_umt5_and_taehv(parts, finetuned):
    export = finetuned / "streamdit_ema.safetensors"
    net, imported = load_streamdit(export), load_streamdit(parts["init"])
    assert net.cfg == imported.cfg and net.cfg.latent_frames == 21
    assert net.cfg.head_table and net.cfg.time_input is TimeInput.NOISE_AT_ONE
    assert net.cfg.prediction is Prediction.NOISE_MINUS_DATA
    meta = read_metadata(export)
    assert meta["text_encoder"] == UMT5 and meta["text_encoder_version"].startswith("d16-l1-")
    assert meta["codec"] == "taehv" and meta["autoencoder"] == str(parts["taehv"])
    assert meta["autoencoder_digest"] == latent_space_digest(TAEHV.load(parts["taehv"]))
    assert meta["init"] == str(parts["init"]) and meta["model"] == "wan2.1-d16"
    assert json.loads(meta["origin"])["converted_by"] == "model.import_wan"
    assert meta["frame_sizes"] == "32x32"


def test_distillation_starts_from_the_finetuned_model(parts, finetuned, tmp_path):
    out = tmp_path / "student"
    teacher = finetuned / "streamdit_ema.safetensors"
    overrides = [*CPU, *_paths(parts), f"distill.teacher={teacher}", "distill.teacher_steps=2"]
    last = distill(load_config(DISTILL, [*overrides, f"run.out_dir={out}"], cls=DistillConfig))
    assert last["step"] == 2 and math.isfinite(last["loss"])
    meta = read_metadata(out / "streamdit_ema.safetensors")
    assert meta["distilled_from"] == str(teacher) and meta["micro_steps"] == "1"
    assert meta["text_encoder"] == UMT5 and meta["codec"] == "taehv"
    assert load_streamdit(out / "streamdit_ema.safetensors").cfg == load_streamdit(teacher).cfg


def test_a_model_setting_that_contradicts_the_init_is_refused(parts, tmp_path):
    for setting, says in (
        ("model.preset=tiny", "model.preset 'tiny' contradicts model.init"),
        ("model.text_len=77", "model.text_len = 77 contradicts model.init"),
    ):
        cfg = load_config(FINETUNE, [*CPU, *_paths(parts), setting, f"run.out_dir={tmp_path}"])
        with pytest.raises(ConfigError, match=says):
            train(cfg)


@pytest.mark.parametrize(
    "part, says",
    [
        ("init", r"^model\.init \S+ does not exist; convert .* with `python -m model\.import_wan"),
        ("text", r"^text\.path: the umT5 folder \S+ does not exist or is not a folder$"),
        ("taehv", r"^autoencoder\.checkpoint \S+ does not exist; download the TAEHV file"),
    ],
)
def test_a_missing_part_is_refused_in_one_sentence(parts, tmp_path, part, says):
    paths = {**parts, part: tmp_path / "missing"}
    cfg = load_config(FINETUNE, [*CPU, *_paths(paths), f"run.out_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=says) as e:
        train(cfg)
    assert "\n" not in str(e.value) and str(e.value).count(". ") == 0


@pytest.mark.slow
def test_torchrun_fsdp_finetunes_the_imported_model(parts, tmp_path):
    out = tmp_path / "fsdp"
    sets = [*CPU, *_paths(parts), "run.strategy=fsdp", f"run.out_dir={out}"]
    args = [str(FINETUNE)] + [a for s in sets for a in ("--set", s)]
    stdout = support.torchrun("training.train", args, ROOT, timeout=120)
    assert "2 process(es) on cpu" in stdout
    losses = _losses(out)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    meta = read_metadata(out / "streamdit_ema.safetensors")
    assert meta["codec"] == "taehv" and meta["text_encoder"] == UMT5
    exported = load_streamdit(out / "streamdit_ema.safetensors")
    assert exported.cfg == load_streamdit(parts["init"]).cfg
    start = load_file(str(parts["init"]))
    assert not torch.equal(
        exported.state_dict()["blocks.0.ffn.0.weight"], start["blocks.0.ffn.0.weight"]
    )


@pytest.mark.slow
def test_torchrun_fsdp_distils_the_finetuned_model(parts, finetuned, tmp_path):
    out, teacher = tmp_path / "fsdp-student", finetuned / "streamdit_ema.safetensors"
    sets = [*CPU, *_paths(parts), f"distill.teacher={teacher}", "distill.teacher_steps=2"]
    sets += ["run.strategy=fsdp", f"run.out_dir={out}"]
    args = [str(DISTILL)] + [a for s in sets for a in ("--set", s)]
    support.torchrun("training.distill", args, ROOT, timeout=120)
    losses = _losses(out)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert read_metadata(out / "streamdit_ema.safetensors")["distilled_from"] == str(teacher)
