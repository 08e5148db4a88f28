"""training/distill.py: per-segment distillation of a guided s-step teacher into s = 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import support
import torch
from torch import nn

from model import CONFIGS, PartitionScheme, StreamBuffer, StreamDiT
from model.checkpoint import load_streamdit, read_metadata
from model.partition import step_times
from training.config import load_config
from training.distill import (
    DistillConfig,
    Prompts,
    distill,
    distill_loss,
    draw_stage_batch,
    main,
    teacher_endpoint,
)
from training.textstub import HashTextEncoder
from training.train import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "training" / "configs" / "tiny.toml"
DISTILL = ROOT / "training" / "configs" / "distill_tiny.toml"
QUIET = ["run.progress=false", "run.log_every=1", "run.threads=1"]
CFG = CONFIGS["tiny"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny teacher, as `training.train` exports it (a few steps: shapes, not quality)."""
    out = tmp_path_factory.mktemp("teacher")
    train(load_config(TINY, [*QUIET, "run.max_steps=3", f"run.out_dir={out}"]))
    return out / "streamdit_ema.safetensors"


def _config(teacher: Path, out: Path, *overrides: str) -> DistillConfig:
    sets = [*QUIET, f"distill.teacher={teacher}", f"run.out_dir={out}", *overrides]
    return load_config(DISTILL, sets, cls=DistillConfig)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _random_net(seed: int) -> StreamDiT:
    """A teacher whose guided many-step path is far from its own single step."""
    torch.manual_seed(seed)
    net = StreamDiT(CFG)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


def _prompts(captions: list[str]) -> Prompts:
    enc = HashTextEncoder(CFG.text_dim, CFG.text_len)
    text, null = enc.encode(captions), enc.encode([""])
    return Prompts(text.states, text.mask, null.states, null.mask)


class TimeRecorder(nn.Module):
    """Velocity 1; records the per-frame times of every call."""

    def __init__(self):
        super().__init__()
        self.cfg = CFG
        self.anchor = nn.Parameter(torch.zeros(()))
        self.times: list[torch.Tensor] = []

    def forward(self, x, t, text, text_mask=None):
        self.times.append(t[0].clone())
        return torch.ones_like(x)


@pytest.mark.parametrize("scheme", [PartitionScheme(0, 4, 1, 3), PartitionScheme(1, 3, 1, 2)])
def test_the_stream_steps_on_the_shared_schedule(scheme):
    net = TimeRecorder()
    buf = StreamBuffer(net, scheme, (CFG.latent_channels, 4, 4), torch.zeros(1, 2, CFG.text_dim))
    for _ in range(3 * scheme.total_steps):
        buf.step()
    steady = net.times[buf.startup_calls :]
    for i, t in enumerate(steady):
        assert torch.equal(t, step_times(scheme, i % scheme.micro_steps)[0].float())
    # A distillation buffer starts where the stream's stage starts and ends where it ends.
    latents = torch.zeros(2, CFG.latent_channels, scheme.buffer_frames, 4, 4)
    stage = draw_stage_batch(
        latents, [scheme.chunk_size], scheme.ref_frames, scheme.micro_steps, 1e-5,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    student = PartitionScheme(scheme.ref_frames, scheme.chunks, scheme.chunk_size, 1)
    assert torch.equal(stage.t_start[0], step_times(scheme, 0)[0])
    assert torch.equal(stage.t_end[0], step_times(scheme, scheme.micro_steps - 1)[1])
    assert torch.allclose(stage.t_end[1], step_times(student, 0)[1])


def test_teacher_rollout_is_the_guided_streams_stage():
    """The teacher's s micro steps over a stage equal s steps of a guided StreamBuffer."""
    net = _random_net(0)
    scheme = PartitionScheme(0, 2, 2, 3)
    latents = torch.randn(1, CFG.latent_channels, 4, 8, 8)
    stage = draw_stage_batch(latents, [2], 0, 3, CFG.sigma_min, torch.Generator().manual_seed(1))
    prompts = _prompts(["a red circle"])
    end = teacher_endpoint(net, stage, prompts, guidance=3.0)
    buf = StreamBuffer(
        net, scheme, (CFG.latent_channels, 8, 8), prompts.states, prompts.mask,
        guidance=3.0, null_text=prompts.null_states, null_mask=prompts.null_mask,
    )  # fmt: skip
    buf.x = stage.x.clone()
    out = [buf.step() for _ in range(3)][-1]
    assert buf.model_calls == 3
    assert torch.allclose(out, end[:, :, :2], atol=1e-5)  # the oldest chunk left clean
    assert torch.allclose(buf.x[:, :, :2], end[:, :, 2:], atol=1e-5)  # the rest moved along


def test_a_few_steps_shrink_the_student_teacher_gap_on_a_fixed_batch():
    teacher = _random_net(0)
    student = _random_net(0)
    latents = torch.randn(
        4, CFG.latent_channels, 4, 8, 8, generator=torch.Generator().manual_seed(2)
    )
    stage = draw_stage_batch(latents, [1, 2, 4], 0, 4, CFG.sigma_min, torch.Generator())
    prompts = _prompts(["a red circle", "a blue ring", "a green square", "a white dot"])
    target = teacher_endpoint(teacher, stage, prompts, guidance=4.0)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    gaps = []
    for _ in range(20):
        loss, gap = distill_loss(student, stage, target, prompts, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        gaps.append(gap.item())
    assert gaps[-1] < 0.5 * gaps[0], gaps[::5]


def test_the_distilled_student_streams_one_call_per_chunk_without_guidance(teacher, tmp_path):
    out = tmp_path / "student"
    distill(_config(teacher, out, "run.max_steps=2"))
    path = out / "streamdit_ema.safetensors"
    meta, teacher_meta = read_metadata(path), read_metadata(teacher)
    assert meta["distilled_from"] == str(teacher)
    assert (meta["micro_steps"], meta["guidance"], meta["step"]) == ("1", "1.0", "2")
    for key in ("text_encoder", "autoencoder", "autoencoder_digest", "frame_sizes"):
        assert meta[key] == teacher_meta[key]
    student = load_streamdit(path)
    assert student.cfg == CFG
    assert any(  # trained: no longer the teacher
        not torch.equal(a, b)
        for a, b in zip(student.parameters(), load_streamdit(teacher).parameters(), strict=True)
    )
    scheme = PartitionScheme(0, 4, 1, int(meta["micro_steps"]))
    text = _prompts(["a red circle"])
    buf = StreamBuffer(
        student, scheme, (CFG.latent_channels, 8, 8), text.states, text.mask,
        guidance=float(meta["guidance"]),
    )  # fmt: skip
    calls = []
    for _ in range(8):
        before = buf.model_calls - buf.startup_calls if buf.x is not None else 0
        chunk = buf.step()
        assert chunk is not None and chunk.shape[2] == 1  # a chunk out of every call
        calls.append(buf.model_calls - buf.startup_calls - before)
    assert calls == [1] * 8


def test_resume_replays_the_uninterrupted_run(teacher, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    distill(_config(teacher, straight, "run.max_steps=4"))
    distill(_config(teacher, split, "run.max_steps=2"))
    assert len(_log(split)) == 2
    distill(_config(teacher, split, "run.max_steps=4"))
    strip = ("time", "samples_per_s", "step_s")
    a = [{k: v for k, v in r.items() if k not in strip} for r in _log(straight)]
    b = [{k: v for k, v in r.items() if k not in strip} for r in _log(split)]
    assert a == b  # bit-identical losses, gaps and gradient norms
    x, y = (load_streamdit(d / "streamdit_ema.safetensors") for d in (straight, split))
    assert all(torch.equal(p, q) for p, q in zip(x.parameters(), y.parameters(), strict=True))


def test_a_wrong_or_missing_teacher_is_one_sentence(teacher, tmp_path, capsys):
    base = [str(DISTILL), *[a for o in QUIET for a in ("--set", o)]]
    out = ["--set", f"run.out_dir={tmp_path / 'a'}"]
    assert main([*base, *out, "--set", f"distill.teacher={tmp_path / 'none.safetensors'}"]) == 2
    assert "distill.teacher" in capsys.readouterr().err
    hashed = ["--set", f"distill.teacher={teacher}", "--set", "text.encoder=minilm"]
    assert main([*base, *out, *hashed]) == 2
    assert "use the teacher's [autoencoder] and [text]" in capsys.readouterr().err
    own = ["--set", f"distill.teacher={teacher}", "--set", f"run.out_dir={teacher.parent}"]
    assert main([*base, *own]) == 2
    assert "would overwrite the teacher" in capsys.readouterr().err


def _torchrun(teacher: Path, out: Path, *overrides: str) -> str:
    """`python -m training.distill` under `torchrun --nproc-per-node 2` (gloo); its stdout."""
    sets = [*QUIET, f"distill.teacher={teacher}", f"run.out_dir={out}", *overrides]
    args = [str(DISTILL), *[a for o in sets for a in ("--set", o)]]
    return support.torchrun("training.distill", args, ROOT)


@pytest.mark.slow
def test_torchrun_ddp_students_agree_and_fsdp_resumed_midway_matches(teacher, tmp_path):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    stdout = _torchrun(teacher, ddp, "run.max_steps=2", "run.checksum=true")
    assert "2 process(es)" in stdout
    digests = [(ddp / f"weights_rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    _torchrun(teacher, fsdp, "run.max_steps=1", "run.strategy=fsdp")
    _torchrun(teacher, fsdp, "run.max_steps=2", "run.strategy=fsdp")
    losses = [[r["loss"] for r in _log(d)] for d in (ddp, fsdp)]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize(("name", "teacher_config"), [("tiny", "tiny"), ("cpu", "cpu")])
def test_shipped_configs_pair_with_their_teachers_run(name, teacher_config):
    cfg = load_config(ROOT / "training" / "configs" / f"distill_{name}.toml", cls=DistillConfig)
    teacher = load_config(ROOT / "training" / "configs" / f"{teacher_config}.toml")
    assert cfg.distill.teacher == f"{teacher.run.out_dir}/streamdit_ema.safetensors"
    for section in ("model", "autoencoder", "text"):
        assert getattr(cfg, section) == getattr(teacher, section), section
    assert cfg.run.seed == teacher.run.seed and cfg.run.out_dir != teacher.run.out_dir
    assert cfg.distill.teacher_steps > 1 and cfg.distill.guidance > 1


def test_paired_stage_buffers_start_from_the_source_as_the_teacher_learned():
    g = torch.Generator().manual_seed(3)
    latents, sources = torch.randn(4, 2, 8, 2, 2, generator=g), torch.randn(4, 2, 8, 2, 2)
    plain = draw_stage_batch(latents, [1], 0, 2, 0.0, torch.Generator().manual_seed(5))
    same = draw_stage_batch(latents, [1], 0, 2, 0.0, torch.Generator().manual_seed(5), sources)
    assert torch.equal(plain.x, same.x)  # paired = 0: sources unused
    stage = draw_stage_batch(
        latents, [1], 0, 2, 0.0, torch.Generator().manual_seed(5), sources, 1.0, (0.5, 0.5)
    )
    late = stage.t_start[0] >= 0.5  # frames at or after the entry level lie on the bridge
    assert late.any() and (~late).any()
    assert torch.equal(stage.x[:, :, ~late], plain.x[:, :, ~late])
    assert not torch.allclose(stage.x[:, :, late], plain.x[:, :, late])
    # With the data as its own source the bridge is the plain path.
    own = draw_stage_batch(
        latents, [1], 0, 2, 0.0, torch.Generator().manual_seed(5), latents, 1.0, (0.5, 0.5)
    )
    assert torch.allclose(own.x, plain.x, atol=1e-5)
