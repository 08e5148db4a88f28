"""StreamDiT training: buffered flow matching with mixed partitions (DESIGN §2).

    python -m training.train training/configs/tiny.toml [--set key=value ...]
    torchrun --nproc-per-node N -m training.train training/configs/4b.toml

The DiT learns on autoencoder latents conditioned on text-encoder states. Every random draw
of a step (data items, noise, times, text dropout) is a function of (seed, step, rank), so
a run resumed from a checkpoint continues exactly as if it had never stopped.

Outputs under ``run.out_dir``: ``checkpoints/state-*.safetensors`` (resumable training
state), ``streamdit_ema.safetensors`` (the EMA weights, for `model.checkpoint.load_streamdit`),
``log.jsonl`` (one line per logged step) and ``config.json``.

Letters: B batch, C channels, F frames, H W height/width.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.autoencoder import AE_CONFIGS, VideoAutoencoder
from model.checkpoint import save_checkpoint
from model.config import CONFIGS, StreamDiTConfig
from model.dit import StreamDiT
from training import distributed
from training.config import (
    AutoencoderSource,
    ConfigError,
    Precision,
    TextSource,
    TrainConfig,
    run_cli,
    to_dict,
)
from training.data import LatentCache, StepSampler, build_dataset
from training.ema import EMA
from training.objective import draw_noise, flow_matching_loss, resolve_chunk_sizes, step_generator
from training.state import latest_state, load_state, save_state, state_path, state_step


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The stage's learning rate with a linear warmup at the start of every stage."""
    stage, local = cfg.stage_at(step)
    warm = cfg.optim.warmup
    return stage.lr * min(1.0, (local + 1) / warm) if warm > 0 else stage.lr


def model_config(cfg: TrainConfig) -> StreamDiTConfig:
    if cfg.model.preset not in CONFIGS:
        raise ConfigError(f"model.preset {cfg.model.preset!r} is not one of {sorted(CONFIGS)}")
    base = CONFIGS[cfg.model.preset]
    return base.replace(
        text_dim=cfg.model.text_dim or base.text_dim, text_len=cfg.model.text_len or base.text_len
    )


def build_autoencoder(cfg: TrainConfig, device: torch.device) -> VideoAutoencoder:
    """The frozen encoder. A random one (seeded, same on every rank) is for smoke runs."""
    section = cfg.autoencoder
    if section.source is AutoencoderSource.CHECKPOINT:
        if not Path(section.checkpoint).is_file():
            raise ConfigError(
                f"autoencoder checkpoint {section.checkpoint} does not exist; train one with "
                "`python -m training.train_autoencoder training/configs/autoencoder_cpu.toml` "
                "or set autoencoder.checkpoint"
            )
        ae = VideoAutoencoder.load(section.checkpoint, device)
    else:
        if section.preset not in AE_CONFIGS:
            raise ConfigError(f"autoencoder.preset {section.preset!r} not in {sorted(AE_CONFIGS)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed + 1)
            ae = VideoAutoencoder(AE_CONFIGS[section.preset])
        ae = ae.to(device)
    if ae.cfg.latent_channels != model_config(cfg).latent_channels:
        raise ConfigError(
            f"the autoencoder makes {ae.cfg.latent_channels}-channel latents but model "
            f"{cfg.model.preset!r} expects {model_config(cfg).latent_channels}; "
            "pair matching presets"
        )
    return ae.eval().requires_grad_(False)


def build_text_encoder(cfg: TrainConfig, device: torch.device):
    net_cfg = model_config(cfg)
    if cfg.text.encoder is TextSource.HASH:
        from training.textstub import HashTextEncoder

        return HashTextEncoder(net_cfg.text_dim, net_cfg.text_len)
    from model.text import TextEncoder

    encoder = TextEncoder(max_length=net_cfg.text_len, device=device, cache_size=4096)
    if encoder.dim != net_cfg.text_dim:
        raise ConfigError(
            f"model {cfg.model.preset!r} expects {net_cfg.text_dim}-d text but MiniLM gives "
            f"{encoder.dim}; use a model preset with text_dim = {encoder.dim}"
        )
    return encoder


def autoencoder_tag(cfg: TrainConfig) -> str:
    """Names the latent space: the autoencoder checkpoint, or the random preset."""
    return cfg.autoencoder.checkpoint or f"random:{cfg.autoencoder.preset}"


def calibrate_random(cfg: TrainConfig, ae: VideoAutoencoder, geo: Geometry, device) -> None:
    """An untrained encoder's latents have arbitrary scale: normalize them on a fixed batch
    (items 0..7 of the first stage's data, identical on every rank and in `cache_latents`)."""
    if cfg.autoencoder.source is AutoencoderSource.RANDOM:
        probe = build_dataset(
            cfg.data, geo.video_frames, geo.size, cfg.run.seed, cfg.stages[0].folder_path
        )
        ae.calibrate(torch.stack([probe[i][0] for i in range(8)]).to(device))


def check_latent_cache(cfg: TrainConfig, cache: LatentCache) -> None:
    """A cache trains the DiT in the latent space it was encoded in: refuse any other."""
    net_cfg = model_config(cfg)
    want, got = autoencoder_tag(cfg), cache.autoencoder

    def same(a: str, b: str) -> bool:
        return a == b or not a.startswith("random:") and os.path.realpath(a) == os.path.realpath(b)

    if not same(want, got):
        raise ConfigError(
            f"data.latent_cache {cfg.data.latent_cache} was encoded by {got or 'unknown'} but "
            f"this run's autoencoder is {want}; rebuild it with `python -m training.cache_latents`"
        )
    shape = tuple(cache.latents.shape[1:3])
    if shape != (net_cfg.latent_channels, net_cfg.latent_frames):
        raise ConfigError(
            f"data.latent_cache {cfg.data.latent_cache} holds (channels, frames) {shape} but "
            f"model {cfg.model.preset!r} needs {(net_cfg.latent_channels, net_cfg.latent_frames)}"
        )


@dataclass
class Geometry:
    video_frames: int
    size: int
    tokens_per_sample: int


def geometry(cfg: TrainConfig, ae: VideoAutoencoder) -> Geometry:
    net_cfg = model_config(cfg)
    size = cfg.data.size or net_cfg.latent_size[0] * ae.cfg.spatial_factor
    if size % ae.cfg.spatial_factor:
        raise ConfigError(f"data.size {size} must be a multiple of {ae.cfg.spatial_factor}")
    latent = size // ae.cfg.spatial_factor
    pt, ph, pw = net_cfg.patch_size
    if latent % ph or latent % pw:
        step = ae.cfg.spatial_factor * math.lcm(ph, pw)
        raise ConfigError(
            f"data.size {size} gives {latent}x{latent} latents, which the model's patch size "
            f"{ph}x{pw} does not divide; use a multiple of {step}"
        )
    tokens = (net_cfg.latent_frames // pt) * (latent // ph) * (latent // pw)
    return Geometry(net_cfg.latent_frames * ae.cfg.temporal_factor, size, tokens)


def weights_digest(net: nn.Module) -> str:
    """sha256 over this process's parameter bytes, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(net.named_parameters()):
        local = p.detach()
        local = local.to_local() if hasattr(local, "to_local") else local
        h.update(name.encode())
        h.update(local.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class JsonlLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def rewind(self, step: int) -> None:
        """Drop records past `step`: after a crash they are replayed by the resumed run."""
        if not (self.enabled and self.path.is_file()):
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line cut short by the crash
        if len(kept) < len(lines):
            self.path.write_text("".join(kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _export(cfg: TrainConfig, ema: EMA, net_cfg: StreamDiTConfig, step: int, is_main: bool):
    state = ema.full_state()  # collective under FSDP
    if not is_main:
        return
    export = StreamDiT(net_cfg)
    # EMA covers parameters only; buffers (none today) keep their deterministic init values.
    missing, unexpected = export.load_state_dict(state, strict=False)
    if unexpected or any(name in dict(export.named_parameters()) for name in missing):
        raise RuntimeError(f"EMA does not match the model: missing {missing}, extra {unexpected}")
    meta = {
        "step": str(step),
        "text_encoder": cfg.text.encoder.value,
        "autoencoder": autoencoder_tag(cfg),
    }
    save_checkpoint(
        Path(cfg.run.out_dir) / "streamdit_ema.safetensors", export, net_cfg, "streamdit", meta
    )


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns a summary of the last logged step."""
    with distributed.session(cfg.run.device, cfg.run.threads) as env:
        return _train(cfg, env)


def _train(cfg: TrainConfig, env: distributed.DistEnv) -> dict:
    out = Path(cfg.run.out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    if cfg.optim.batch_size % env.world:
        raise ConfigError(
            f"optim.batch_size {cfg.optim.batch_size} must divide evenly over {env.world} processes"
        )
    per_rank = cfg.optim.batch_size // env.world
    device = env.device
    bf16 = cfg.run.precision is Precision.BF16 or (
        cfg.run.precision is Precision.AUTO and device.type == "cuda"
    )

    net_cfg = model_config(cfg)
    ae = build_autoencoder(cfg, device)
    text_encoder = build_text_encoder(cfg, device)
    geo = geometry(cfg, ae)
    chunk_sizes = resolve_chunk_sizes(
        net_cfg.latent_frames, cfg.flow.ref_frames, cfg.flow.chunk_sizes
    )
    if not cfg.data.latent_cache:
        calibrate_random(cfg, ae, geo, device)

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    with torch.device(device):
        net = StreamDiT(net_cfg)
    model = distributed.wrap(net, cfg.run.strategy, env)
    opt = torch.optim.AdamW(
        net.parameters(),
        lr=cfg.stages[0].lr,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
    )
    ema = EMA(net, cfg.optim.ema_decay)

    step = 0
    resume = latest_state(out)
    # Before loading, which is collective under FSDP: a rank that sees no checkpoint (an
    # out_dir not shared between nodes) would start over and hang or silently diverge.
    distributed.check_same(state_step(resume), "the checkpoint step to resume from", env)
    if resume is not None:
        step = load_state(resume, net, opt, ema)
    end = min(cfg.total_steps, cfg.run.max_steps or cfg.total_steps)
    log = JsonlLog(out / "log.jsonl", env.is_main)
    log.rewind(step)
    if env.is_main:
        params = sum(p.numel() for p in net.parameters())
        origin = f"resumed from {resume}" if resume else "fresh start"
        print(
            f"StreamDiT {cfg.model.preset}: {params / 1e6:.2f}M parameters, {env.world} "
            f"process(es) on {device.type}, steps {step} -> {end}, {origin}",
            flush=True,
        )

    bar = tqdm(
        total=end, initial=step, disable=not (env.is_main and cfg.run.progress), dynamic_ncols=True
    )
    last: dict = {"step": step}
    window_start, window_steps, loss_sum = time.perf_counter(), 0, 0.0
    while step < end:
        stage, _ = cfg.stage_at(step)
        stage_end = min(end, step - cfg.stage_at(step)[1] + stage.steps)
        data = build_dataset(cfg.data, geo.video_frames, geo.size, cfg.run.seed, stage.folder_path)
        if isinstance(data, LatentCache):
            check_latent_cache(cfg, data)
        loader = DataLoader(
            data,
            batch_size=per_rank,
            num_workers=cfg.data.workers,
            sampler=StepSampler(per_rank, env.rank, env.world, start_step=step),
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        batches = iter(loader)
        while step < stage_end:
            clips, captions = next(batches)
            lr = lr_at(cfg, step)
            loss, grad_norm = _step(
                cfg,
                model,
                net,
                opt,
                ae,
                text_encoder,
                clips,
                captions,
                step,
                env,
                chunk_sizes,
                lr,
                bf16,
            )
            ema.update(net, step)
            step += 1
            window_steps += 1
            loss_sum += loss
            bar.update(1)

            if step % cfg.run.log_every == 0 or step == end:
                elapsed = time.perf_counter() - window_start
                samples_s = window_steps * cfg.optim.batch_size / elapsed
                last = {
                    "step": step,
                    "stage": stage.name,
                    "loss": distributed.all_mean(loss_sum / window_steps, env),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": samples_s,
                    "tokens_per_s": samples_s * geo.tokens_per_sample,
                    "step_s": elapsed / window_steps,
                    "time": time.time(),
                }
                if device.type == "cuda":
                    last["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                log.write(last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", sps=f"{samples_s:.2f}")
                if not math.isfinite(last["loss"]):
                    raise RuntimeError(f"training diverged: loss {last['loss']} at step {step}")
                window_start, window_steps, loss_sum = time.perf_counter(), 0, 0.0
            if step % cfg.run.ckpt_every == 0 or step == end:
                save_state(
                    state_path(out, step),
                    net,
                    opt,
                    ema,
                    step,
                    to_dict(cfg),
                    env.is_main,
                    cfg.run.keep_checkpoints,
                )
                _export(cfg, ema, net_cfg, step, env.is_main)
                distributed.barrier(env)
                if window_steps == 0:  # keep checkpoint time out of the next throughput figure
                    window_start = time.perf_counter()
        del batches  # stops loader workers before the next stage builds its own
    bar.close()
    if cfg.run.checksum:
        (out / f"weights_rank{env.rank}.sha256").write_text(weights_digest(net) + "\n")
    return last


def _step(
    cfg, model, net, opt, ae, text_encoder, clips, captions, step, env, chunk_sizes, lr, bf16
) -> tuple[float, float]:
    """One optimizer step on one batch; returns (loss, gradient norm before clipping)."""
    device = env.device
    gen = step_generator(cfg.run.seed, step, env.rank)
    with torch.no_grad():
        clips = clips.to(device, non_blocking=True)
        latents = clips if cfg.data.latent_cache else ae.encode(clips)  # (B, C, F, H, W)
    draw = draw_noise(
        tuple(latents.shape), chunk_sizes, cfg.flow.ref_frames, cfg.flow.text_dropout, gen
    )
    prompts = ["" if drop else c for c, drop in zip(captions, draw.drop_text.tolist(), strict=True)]
    text = text_encoder.encode(prompts).to(device)
    for group in opt.param_groups:
        group["lr"] = lr
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    with autocast:
        loss = flow_matching_loss(
            model,
            latents,
            draw,
            text.states,
            text.mask,
            model_config(cfg).sigma_min,
            cfg.flow.ref_frames,
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
    opt.step()
    return float(loss.detach()), float(grad_norm)


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv, "python -m training.train", "training/configs/tiny.toml", TrainConfig, train
    )


if __name__ == "__main__":
    sys.exit(main())
