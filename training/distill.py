"""Multistep distillation: a student that crosses each stage of the stream in one call.

    python -m training.distill training/configs/distill_tiny.toml [--set key=value ...]
    torchrun --nproc-per-node N -m training.distill training/configs/distill_cpu.toml

The teacher is a trained StreamDiT (``streamdit_ema.safetensors`` of a `training.train`
run) streaming with N chunks and ``distill.teacher_steps`` (s) guided micro steps per stage;
the student starts as a copy of it and learns to stream with s = 1 and no guidance, as in
StreamDiT §4 (N = 8, c = 2, s = 16 -> 1).

Per-segment sampling distillation: one training example is a buffer laid out as in the
stream at the start of a stage, every chunk at its own level (chunk position p at time
p/N), its chunk size drawn from the mixed set (``flow.chunk_sizes``). The buffer is made
from real data latents (the same data pipeline as `training.train`), noised per frame to
those times. The teacher takes its s guided Euler steps over the stage on the schedule
`model.partition.step_times` gives (the same function `model.stream.StreamBuffer` steps
by); the student takes one step ``x + u * dt`` over the whole stage and regresses its
endpoint onto the teacher's, per frame. The loss divides each frame's squared error by
dt^2, so it reads as a velocity error (the teacher's mean velocity over the stage) and its
scale does not depend on N.

Every random draw is a function of (seed, step, rank) and the teacher is fixed, so a
resumed run continues exactly. Outputs under ``run.out_dir`` as for `training.train`:
``streamdit_ema.safetensors`` (the student's EMA weights; metadata adds ``distilled_from``,
``micro_steps = 1`` and ``guidance = 1.0``), ``checkpoints/``, ``log.jsonl``, ``config.json``.

Letters: B batch, C latent channels, F buffer frames, H W latent size, L text tokens.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from model import flow
from model.checkpoint import CheckpointError, load_streamdit, read_metadata
from model.config import StreamDiTConfig
from model.dit import StreamDiT
from model.partition import PartitionScheme, step_times
from model.stream import guided_velocity
from training import distributed
from training.config import ConfigError, RunSection, TrainConfig, run_cli
from training.harness import (
    autocast,
    optimizer_step,
    session,
    weights_digest,
)
from training.objective import noised, step_generator
from training.train import (
    export_streamdit,
    lr_at,
    optimizer_and_ema,
    setup,
    stage_batches,
    to_latents,
)


@dataclass
class DistillSection:
    teacher: str = "runs/tiny/streamdit_ema.safetensors"  # a training.train export
    teacher_steps: int = 16  # s: the teacher's micro steps per stage (the student takes 1)
    guidance: float = 4.0  # the teacher's classifier-free guidance (the student has none)


@dataclass
class DistillConfig(TrainConfig):
    """A `TrainConfig` (model, autoencoder, text, data, flow, optim, stages, run) plus the
    teacher. The latent space and text encoder must be the teacher's; flow.text_dropout
    is not used (the student is always conditioned)."""

    run: RunSection = field(default_factory=lambda: RunSection(out_dir="runs/distill-tiny"))
    distill: DistillSection = field(default_factory=DistillSection)


@dataclass(frozen=True)
class StageBatch:
    """Buffers at the start of a stage, laid out as in the stream."""

    x: Tensor  # (B, C, F, H, W) data latents noised per frame to t_start
    schemes: tuple[PartitionScheme, ...]  # per example: (K, N, c, s_teacher)
    t_start: Tensor  # (B, F) float64 times at the start of the stage; reference frames at 1
    t_end: Tensor  # (B, F) float64 times at its end


def scheme_times(schemes: tuple[PartitionScheme, ...], micro_step: int) -> tuple[Tensor, Tensor]:
    """(B, F) times before and after `micro_step` of the stage, one row per example."""
    pairs = [step_times(scheme, micro_step) for scheme in schemes]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def draw_stage_batch(
    latents: Tensor,
    chunk_sizes: list[int],
    ref_frames: int,
    teacher_steps: int,
    sigma_min: float,
    generator: torch.Generator,
    sources: Tensor | None = None,
    paired: float = 0.0,
    entry: tuple[float, float] = (0.1, 0.75),
) -> StageBatch:
    """Pick a chunk size per example and noise `latents` (B, C, F, H, W) to its stream layout;
    a share `paired` of the examples with `sources` start from them as the teacher learned
    (`training.objective.noised`), so the student learns video to video too."""
    batch, _, frames = latents.shape[:3]
    free = frames - ref_frames
    pick = torch.randint(len(chunk_sizes), (batch,), generator=generator).tolist()
    schemes = tuple(
        PartitionScheme(ref_frames, free // chunk_sizes[j], chunk_sizes[j], teacher_steps)
        for j in pick
    )
    t_start, _ = scheme_times(schemes, 0)
    _, t_end = scheme_times(schemes, teacher_steps - 1)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    pair = torch.rand(batch, generator=generator) < paired
    lo, hi = entry
    t_entry = lo + (hi - lo) * torch.rand(batch, generator=generator)
    times = t_start.to(latents.device, latents.dtype)
    x, _ = noised(noise, latents, times, sigma_min, sources, pair, t_entry)
    return StageBatch(x, schemes, t_start, t_end)


@dataclass(frozen=True)
class Prompts:
    """Text conditioning of a batch and the empty prompt for the guided teacher."""

    states: Tensor  # (B, L, D)
    mask: Tensor | None  # (B, L)
    null_states: Tensor  # (1, L, D)
    null_mask: Tensor | None  # (1, L)


@torch.no_grad()
def teacher_endpoint(
    teacher: nn.Module, stage: StageBatch, prompts: Prompts, guidance: float
) -> Tensor:
    """Where the teacher's s guided Euler micro steps over the stage end: (B, C, F, H, W)."""
    x = stage.x
    for j in range(stage.schemes[0].micro_steps):
        t, t_next = scheme_times(stage.schemes, j)
        v = guided_velocity(
            teacher,
            x,
            t.float().to(x.device),
            prompts.states,
            prompts.mask,
            guidance,
            prompts.null_states,
            prompts.null_mask,
        )
        dt = (t_next - t).to(x.device, torch.float32)[:, None, :, None, None]  # (B, 1, F, 1, 1)
        x = flow.euler_step(x, v.float(), dt)
    return x


def distill_loss(
    student: nn.Module, stage: StageBatch, target: Tensor, prompts: Prompts, ref_frames: int
) -> tuple[Tensor, Tensor]:
    """(loss, gap): the per-frame endpoint error of the student's one step over the stage,
    divided by dt^2 (a velocity error) for the loss, raw for the gap; reference frames out."""
    x = stage.x
    dt = (stage.t_end - stage.t_start).to(x.device, torch.float32)  # (B, F)
    u = student(x, stage.t_start.float().to(x.device), prompts.states, prompts.mask)
    landed = x + u.float() * dt[:, None, :, None, None]
    err = (landed - target.float()).pow(2).mean(dim=(1, 3, 4))  # (B, F)
    active = torch.arange(x.shape[2], device=x.device) >= ref_frames  # (F,)
    weight = torch.where(active, dt.clamp_min(1e-12).pow(-2), torch.zeros_like(dt))
    count = active.sum() * err.shape[0]
    return (err * weight).sum() / count, (err * active).sum() / count


def encode_prompts(text_encoder, captions: list[str], device: torch.device) -> Prompts:
    text = text_encoder.encode(captions).to(device)
    null = text_encoder.encode([""]).to(device)
    return Prompts(text.states, text.mask, null.states, null.mask)


def load_teacher(
    cfg: DistillConfig, net_cfg: StreamDiTConfig, record: dict[str, str], device: torch.device
) -> StreamDiT:
    """The teacher, checked against this run's model and its `pairing_record` (the text
    encoder and the digest of the autoencoder whose latents it learned)."""
    path = Path(cfg.distill.teacher)
    if not path.is_file():
        raise ConfigError(
            f"distill.teacher {path} does not exist; train one with "
            "`python -m training.train training/configs/tiny.toml` or set distill.teacher"
        )
    try:
        meta = read_metadata(path)
        teacher = load_streamdit(path, device)
    except CheckpointError as e:
        raise ConfigError(f"distill.teacher: {e}") from e
    if teacher.cfg != net_cfg:
        raise ConfigError(
            f"distill.teacher {path} is not a {cfg.model.preset!r} model (text_dim "
            f"{teacher.cfg.text_dim}, width {teacher.cfg.dim}); set model.* to the "
            "teacher's run config"
        )
    keys = ("autoencoder_digest", "text_encoder")
    if any(meta.get(k) != record[k] for k in keys):
        got = ", ".join(f"{k} {meta.get(k, 'unknown')}" for k in keys)
        want = ", ".join(f"{k} {record[k]}" for k in keys)
        raise ConfigError(
            f"distill.teacher {path} was trained with {got} but this run has {want}; use the "
            "teacher's [autoencoder] and [text] settings"
        )
    return teacher.eval()


def _validate(cfg: DistillConfig) -> None:
    if cfg.distill.teacher_steps < 1:
        raise ConfigError(f"distill.teacher_steps must be >= 1, got {cfg.distill.teacher_steps}")
    if cfg.distill.guidance <= 0:
        raise ConfigError(f"distill.guidance must be > 0, got {cfg.distill.guidance}")
    if Path(cfg.run.out_dir).resolve() == Path(cfg.distill.teacher).resolve().parent:
        raise ConfigError(
            f"run.out_dir {cfg.run.out_dir} is the teacher's run directory and its export "
            "would overwrite the teacher; set run.out_dir to a directory of its own"
        )


def distill(cfg: DistillConfig) -> dict:
    """Run (or resume) distillation; returns a summary of the last logged step."""
    _validate(cfg)
    with session(cfg.run) as env:
        return _distill(cfg, env)


def _distill(cfg: DistillConfig, env: distributed.DistEnv) -> dict:
    run, per_rank, device, bf16, net_cfg, ae, text_encoder, geo, chunk_sizes, record = setup(
        cfg, env
    )
    teacher = load_teacher(cfg, net_cfg, record, device)

    with torch.device(device):
        net = StreamDiT(net_cfg)
    net.load_state_dict(teacher.state_dict())  # the student starts as the teacher
    teacher = distributed.wrap_frozen(teacher, cfg.run.strategy, env)
    student = distributed.wrap(net, cfg.run.strategy, env)
    opt, ema = optimizer_and_ema(cfg, net)

    step = run.resume(net, opt, ema)
    end = min(cfg.total_steps, cfg.run.max_steps or cfg.total_steps)
    s, g = cfg.distill.teacher_steps, cfg.distill.guidance
    if env.is_main:
        print(
            f"distilling {cfg.distill.teacher} (s = {s}, guidance {g}) into s = 1: {env.world} "
            f"process(es) on {device.type}, steps {step} -> {end}, {run.origin}",
            flush=True,
        )
    meta = {
        **record,
        "distilled_from": cfg.distill.teacher,
        "micro_steps": "1",
        "guidance": "1.0",
        "teacher_micro_steps": str(s),
        "teacher_guidance": str(g),
    }

    run.start(end)
    last: dict = {"step": step}
    loss_sum = gap_sum = 0.0
    for batch in stage_batches(cfg, geo, per_rank, env, step, end):
        lr = lr_at(cfg, run.step)
        latents, sources = to_latents(ae, batch, device)
        gen = step_generator(cfg.run.seed, run.step, env.rank)
        stage = draw_stage_batch(
            latents,
            chunk_sizes,
            cfg.flow.ref_frames,
            s,
            net_cfg.sigma_min,
            gen,
            sources,
            cfg.flow.paired,
            tuple(cfg.flow.entry),
        )
        prompts = encode_prompts(text_encoder, batch.captions, device)
        with autocast(bf16, device):
            target = teacher_endpoint(teacher, stage, prompts, g)
            loss, gap = distill_loss(student, stage, target, prompts, cfg.flow.ref_frames)
        grad_norm = optimizer_step(loss, net, opt, lr, cfg.optim.grad_clip)
        ema.update(net, run.step)
        run.tick()
        loss_sum, gap_sum = loss_sum + float(loss.detach()), gap_sum + float(gap.detach())

        if run.log_due():
            elapsed, steps = run.window()
            last = {
                "step": run.step,
                "stage": batch.stage.name,
                "loss": distributed.all_mean(loss_sum / steps, env),
                "gap": distributed.all_mean(gap_sum / steps, env),
                "lr": lr,
                "grad_norm": grad_norm,
                "samples_per_s": steps * cfg.optim.batch_size / elapsed,
                "step_s": elapsed / steps,
                "time": time.time(),
            }
            run.write(last, loss=f"{last['loss']:.4f}", gap=f"{last['gap']:.2e}")
            if not math.isfinite(last["loss"]):
                raise RuntimeError(f"distillation diverged: loss {last['loss']} at {run.step}")
            loss_sum = gap_sum = 0.0
        if run.checkpoint_due():
            run.checkpoint(
                net,
                opt,
                ema,
                lambda: export_streamdit(cfg, ema, net_cfg, run.step, env.is_main, meta),
            )
    run.close()
    if cfg.run.checksum:
        (run.out / f"weights_rank{env.rank}.sha256").write_text(weights_digest(net) + "\n")
    return last


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv,
        "python -m training.distill",
        "training/configs/distill_tiny.toml",
        DistillConfig,
        distill,
    )


if __name__ == "__main__":
    sys.exit(main())
