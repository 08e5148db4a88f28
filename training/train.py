"""StreamDiT training: buffered flow matching with mixed partitions (docs/DESIGN.md §1.4).

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

import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from model.autoencoder import AE_CONFIGS, VideoAutoencoder
from model.bundle import (
    TEXT_STUB,
    TextEncoderId,
    minilm_id,
    text_encoder_id,
    training_record,
)
from model.checkpoint import save_checkpoint
from model.codec import VideoCodec
from model.config import CONFIGS, StreamDiTConfig
from model.dit import StreamDiT
from training import distributed
from training.config import (
    DEFAULT_PRESET,
    AutoencoderSource,
    ConfigError,
    Stage,
    TextSource,
    TrainConfig,
    run_cli,
    to_dict,
)
from training.data import LatentCache, StepSampler, WithSources, build_dataset
from training.ema import EMA
from training.harness import (
    Cadence,
    Harness,
    autocast,
    optimizer_step,
    per_rank_batch,
    session,
    use_bf16,
    warmup_lr,
    weights_digest,
)
from training.imported import (
    check_against_init,
    init_checkpoint,
    init_model_name,
    load_init,
    load_taehv,
    load_umt5,
    model_label,
)
from training.objective import draw_noise, flow_matching_loss, resolve_chunk_sizes, step_generator


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The stage's learning rate with a linear warmup at the start of every stage."""
    stage, local = cfg.stage_at(step)
    return warmup_lr(stage.lr, local, cfg.optim.warmup)


def model_config(cfg: TrainConfig) -> StreamDiTConfig:
    if cfg.model.init:
        net_cfg, _ = init_checkpoint(cfg)
        check_against_init(cfg, net_cfg)
        return net_cfg
    preset = cfg.model.preset or DEFAULT_PRESET
    if preset not in CONFIGS:
        raise ConfigError(f"model.preset {preset!r} is not one of {sorted(CONFIGS)}")
    base = CONFIGS[preset]
    return base.replace(
        text_dim=cfg.model.text_dim or base.text_dim, text_len=cfg.model.text_len or base.text_len
    )


def build_autoencoder(cfg: TrainConfig, device: torch.device) -> VideoCodec:
    """The frozen encoder. A random one (seeded, same on every rank) is for smoke runs."""
    section = cfg.autoencoder
    if section.source is AutoencoderSource.TAEHV:
        ae = load_taehv(section.checkpoint, device)
    elif section.source is AutoencoderSource.CHECKPOINT:
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
            f"{model_label(cfg)!r} expects {model_config(cfg).latent_channels}; "
            "pair a matching autoencoder"
        )
    return ae.eval().requires_grad_(False)


def build_text_encoder(cfg: TrainConfig, device: torch.device):
    net_cfg = model_config(cfg)
    if cfg.text.encoder is TextSource.HASH:
        from training.textstub import HashTextEncoder

        return HashTextEncoder(net_cfg.text_dim, net_cfg.text_len)
    if cfg.text.encoder is TextSource.UMT5:
        return load_umt5(cfg, net_cfg, device)
    from model.text import TextEncoder

    encoder = TextEncoder(max_length=net_cfg.text_len, device=device, cache_size=4096)
    if encoder.dim != net_cfg.text_dim:
        raise ConfigError(
            f"model {model_label(cfg)!r} expects {net_cfg.text_dim}-d text but MiniLM gives "
            f"{encoder.dim}; use a model preset with text_dim = {encoder.dim}"
        )
    return encoder


def autoencoder_tag(cfg: TrainConfig) -> str:
    """Names the latent space: the autoencoder checkpoint, or the random preset."""
    return cfg.autoencoder.checkpoint or f"random:{cfg.autoencoder.preset}"


def calibrate_random(cfg: TrainConfig, ae: VideoCodec, geo: Geometry, device) -> None:
    """An untrained encoder's latents have arbitrary scale: normalize them on a fixed batch
    (items 0..7 of the first stage's data, identical on every rank and in `cache_latents`)."""
    if cfg.autoencoder.source is AutoencoderSource.RANDOM:
        probe = build_dataset(
            cfg.data, geo.video_frames, geo.size, cfg.run.seed, cfg.stages[0].folder_path
        )
        ae.calibrate(torch.stack([probe[i][0] for i in range(8)]).to(device))


def check_latent_cache(cfg: TrainConfig, cache: LatentCache, path: str) -> None:
    """A cache trains the DiT in the latent space it was encoded in: refuse any other."""
    net_cfg = model_config(cfg)
    want, got = autoencoder_tag(cfg), cache.autoencoder

    def same(a: str, b: str) -> bool:
        return a == b or not a.startswith("random:") and os.path.realpath(a) == os.path.realpath(b)

    if not same(want, got):
        raise ConfigError(
            f"latent cache {path} was encoded by {got or 'unknown'} but "
            f"this run's autoencoder is {want}; rebuild it with `python -m training.cache_latents`"
        )
    shape = tuple(cache.latents.shape[1:3])
    if shape != (net_cfg.latent_channels, net_cfg.latent_frames):
        raise ConfigError(
            f"latent cache {path} holds (channels, frames) {shape} but "
            f"model {model_label(cfg)!r} needs {(net_cfg.latent_channels, net_cfg.latent_frames)}"
        )


@dataclass
class Geometry:
    video_frames: int
    size: int  # pixels the footage is made at
    clip: int  # pixels of the clips the DiT trains on: `size`, or the crop
    tokens_per_sample: int


def geometry(cfg: TrainConfig, ae: VideoCodec) -> Geometry:
    """Clip sizes. The frame rule: a clip has latent_frames x temporal_factor frames and
    encodes to latent_frames latents, each from its own group of frames. For TAEHV (4x in
    time) that is 4 F frames, never padded: the latents the app's stream encoder makes from
    4-frame chunks. (Wan's 4k + 1 clips would pad the last latent's group with copies of
    the last frame.) Footage is square: `data.size`, by default the model's latent height
    times the spatial factor (480 for an imported Wan)."""
    net_cfg = model_config(cfg)
    size = cfg.data.size or net_cfg.latent_size[0] * ae.cfg.spatial_factor
    clip = cfg.data.crop or size
    pt, ph, pw = net_cfg.patch_size
    step = ae.cfg.spatial_factor * math.lcm(ph, pw)
    for name, pixels in (("data.size", size), ("data.crop", clip)):
        if pixels % step:
            raise ConfigError(
                f"{name} {pixels} must be a multiple of {step}: the autoencoder's factor "
                f"{ae.cfg.spatial_factor} times the model's patch {ph}x{pw}"
            )
    if clip > size:
        raise ConfigError(f"data.crop {clip} must not exceed data.size {size}")
    latent = clip // ae.cfg.spatial_factor
    tokens = (net_cfg.latent_frames // pt) * (latent // ph) * (latent // pw)
    return Geometry(net_cfg.latent_frames * ae.cfg.temporal_factor, size, clip, tokens)


class Batch(NamedTuple):
    stage: Stage
    clips: Tensor  # (B, 3, F, H, W) clips, or (B, C, F, H, W) latents from a cache
    captions: list[str]
    sources: Tensor | None  # the same, for the source of each item; None unless flow.paired
    cached: bool  # clips and sources are latents from a cache


def mix_draws(local: int, share: float) -> int:
    """How many of a stage's first `local` steps take their batch from its mix cache: step
    l does when mix_draws(l + 1) > mix_draws(l), so any stretch of the stage holds its share
    and the count of draws from either source before a step is known (resume)."""
    return math.floor(local * share)


def _loader(
    cfg: TrainConfig, data: Dataset, per_rank: int, env: distributed.DistEnv, start_step: int
) -> Iterator:
    if cfg.flow.paired > 0:
        data = WithSources(data)
    return iter(
        DataLoader(
            data,
            batch_size=per_rank,
            num_workers=cfg.data.workers,
            sampler=StepSampler(per_rank, env.rank, env.world, start_step=start_step),
            pin_memory=env.device.type == "cuda",
            persistent_workers=False,
        )
    )


def stage_batches(
    cfg: TrainConfig, geo: Geometry, per_rank: int, env: distributed.DistEnv, step: int, end: int
) -> Iterator[Batch]:
    """The batches of steps `step`..`end`-1 of this rank: the data order is a function of
    (seed, step, rank), so a resumed run sees the same batches. A stage with a mix cache
    takes `mix_share` of its batches from it (`mix_draws`), whole, never mixing sizes."""
    while step < end:
        stage, local = cfg.stage_at(step)
        stage_end = min(end, step - local + stage.steps)
        data = build_dataset(cfg.data, geo.video_frames, geo.size, cfg.run.seed, stage.folder_path)
        if isinstance(data, LatentCache):
            check_latent_cache(cfg, data, cfg.data.latent_cache)
        share = stage.mix_share  # 0 without a mix cache (config validation)
        mixed = mix_draws(local, share)
        main = _loader(cfg, data, per_rank, env, step - mixed)
        mix = None
        if share > 0:
            mix_data = LatentCache(stage.mix_cache)
            check_latent_cache(cfg, mix_data, stage.mix_cache)
            mix = _loader(cfg, mix_data, per_rank, env, mixed)
        while step < stage_end:
            from_mix = mix_draws(local + 1, share) > mix_draws(local, share)
            clips, captions, *sources = next(mix if from_mix else main)
            cached = from_mix or bool(cfg.data.latent_cache)
            yield Batch(stage, clips, list(captions), sources[0] if sources else None, cached)
            step += 1
            local += 1
        del main, mix  # stops loader workers before the next stage builds its own


@torch.no_grad()
def to_latents(ae: VideoCodec, batch: Batch, device) -> tuple[Tensor, Tensor | None]:
    """A batch from `stage_batches` as latents (B, C, F, H, W) on `device`, its clips' and its
    sources' (None stays None): encoded, unless they come from a cache."""

    def latents(clips: Tensor | None) -> Tensor | None:
        if clips is None:
            return None
        clips = clips.to(device, non_blocking=True)
        return clips if batch.cached else ae.encode(clips)

    return latents(batch.clips), latents(batch.sources)


def pairing_record(
    cfg: TrainConfig, ae: VideoCodec, geo: Geometry, text_encoder: Any = None
) -> dict[str, str]:
    """What the DiT was trained with (autoencoder digest, text encoder, frame size): the
    record `python -m model.bundle pack` checks before it puts a DiT and an autoencoder
    together. Take it after `calibrate_random`, which changes a random autoencoder.

    With umT5 the encoder (`build_text_encoder`'s) names itself: umt5 and its architecture.
    A TAEHV adds ``codec = taehv`` (its digest covers the encoder's float32 weights); a run
    from model.init adds ``init`` and the import's ``origin``."""
    if cfg.text.encoder is TextSource.UMT5:
        text = text_encoder_id(text_encoder)
        if text is None:
            raise ValueError("pairing_record needs the umT5 encoder of build_text_encoder")
    elif cfg.text.encoder is TextSource.MINILM:
        text = minilm_id()
    else:
        text = TextEncoderId(TEXT_STUB, "")
    # The footage's size first (the app's default), then the crop size scenes were drawn at.
    sizes = [(geo.size, geo.size), (geo.clip, geo.clip)]
    record = training_record(ae, text, sizes, init_model_name(cfg, model_config(cfg)))
    if cfg.autoencoder.source is AutoencoderSource.TAEHV:
        record["codec"] = "taehv"
    if cfg.model.init:
        record["init"] = cfg.model.init
        origin = init_checkpoint(cfg)[1].get("origin")
        if origin:
            record["origin"] = origin
    return record


def save_random_autoencoder(cfg: TrainConfig, ae: VideoCodec, is_main: bool) -> None:
    """A smoke run's random (calibrated) autoencoder, saved so its DiT can still be packed."""
    if is_main and cfg.autoencoder.source is AutoencoderSource.RANDOM:
        ae.save(Path(cfg.run.out_dir) / "autoencoder.safetensors")


def export_streamdit(
    cfg: TrainConfig,
    ema: EMA,
    net_cfg: StreamDiTConfig,
    step: int,
    is_main: bool,
    record: dict[str, str],
) -> None:
    """Write the EMA weights as ``streamdit_ema.safetensors`` (collective under FSDP), with
    `record`: `pairing_record` plus whatever the caller adds (distillation's provenance)."""
    state = ema.full_state()
    if not is_main:
        return
    export = StreamDiT(net_cfg)
    # EMA covers parameters only; buffers (none today) keep their deterministic init values.
    missing, unexpected = export.load_state_dict(state, strict=False)
    if unexpected or any(name in dict(export.named_parameters()) for name in missing):
        raise RuntimeError(f"EMA does not match the model: missing {missing}, extra {unexpected}")
    meta = {"step": str(step), "autoencoder": autoencoder_tag(cfg), **record}
    save_checkpoint(
        Path(cfg.run.out_dir) / "streamdit_ema.safetensors", export, net_cfg, "streamdit", meta
    )


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns a summary of the last logged step."""
    with session(cfg.run) as env:
        return _train(cfg, env)


class Setup(NamedTuple):
    """What a DiT trainer (`train`, `distill`) sets up before its loop, the same way."""

    run: Harness
    per_rank: int  # batch size on this process
    device: torch.device
    bf16: bool
    net_cfg: StreamDiTConfig
    ae: VideoCodec  # frozen: ours (calibrated when random) or TAEHV
    text_encoder: Any
    geo: Geometry
    chunk_sizes: list[int]
    record: dict[str, str]  # `pairing_record`, written into every export


def setup(cfg: TrainConfig, env: distributed.DistEnv) -> Setup:
    run = Harness(cfg.run.out_dir, env, to_dict(cfg), Cadence.of(cfg.run))
    per_rank = per_rank_batch(cfg.optim.batch_size, env)
    device = env.device
    net_cfg = model_config(cfg)
    ae = build_autoencoder(cfg, device)
    text_encoder = build_text_encoder(cfg, device)
    geo = geometry(cfg, ae)
    chunk_sizes = resolve_chunk_sizes(
        net_cfg.latent_frames, cfg.flow.ref_frames, cfg.flow.chunk_sizes
    )
    for path in sorted({cfg.data.latent_cache, *(s.mix_cache for s in cfg.stages)} - {""}):
        if not Path(path).is_file():  # now, not when its stage starts hours from here
            raise ConfigError(
                f"latent cache {path} does not exist; build it with "
                "`python -m training.cache_latents`"
            )
    if not cfg.data.latent_cache:
        calibrate_random(cfg, ae, geo, device)
    record = pairing_record(cfg, ae, geo, text_encoder)
    save_random_autoencoder(cfg, ae, env.is_main)
    bf16 = use_bf16(cfg.run.precision, device)
    return Setup(run, per_rank, device, bf16, net_cfg, ae, text_encoder, geo, chunk_sizes, record)


def optimizer_and_ema(cfg: TrainConfig, net: nn.Module) -> tuple[torch.optim.AdamW, EMA]:
    """AdamW at the first stage's rate (the harness sets each step's rate) and the EMA."""
    opt = torch.optim.AdamW(
        net.parameters(),
        lr=cfg.stages[0].lr,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
    )
    return opt, EMA(net, cfg.optim.ema_decay)


def _train(cfg: TrainConfig, env: distributed.DistEnv) -> dict:
    run, per_rank, device, bf16, net_cfg, ae, text_encoder, geo, chunk_sizes, record = setup(
        cfg, env
    )

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    if cfg.model.init:
        net = load_init(cfg, net_cfg, record, device)  # every rank reads the same file
    else:
        with torch.device(device):
            net = StreamDiT(net_cfg)
    model = distributed.wrap(net, cfg.run.strategy, env)
    opt, ema = optimizer_and_ema(cfg, net)

    step = run.resume(net, opt, ema)
    end = min(cfg.total_steps, cfg.run.max_steps or cfg.total_steps)
    if env.is_main:
        params = sum(p.numel() for p in net.parameters())
        print(
            f"StreamDiT {model_label(cfg)}: {params / 1e6:.2f}M parameters, {env.world} "
            f"process(es) on {device.type}, steps {step} -> {end}, {run.origin}",
            flush=True,
        )

    run.start(end)
    last: dict = {"step": step}
    loss_sum = 0.0
    for batch in stage_batches(cfg, geo, per_rank, env, step, end):
        lr = lr_at(cfg, run.step)
        latents, sources = to_latents(ae, batch, device)
        loss, grad_norm = _step(
            cfg,
            model,
            net,
            opt,
            text_encoder,
            latents,
            sources,
            batch.captions,
            chunk_sizes,
            run,
            lr,
            bf16,
            batch.stage.motion_weight,
        )
        ema.update(net, run.step)
        run.tick()
        loss_sum += loss

        if run.log_due():
            elapsed, steps = run.window()
            samples_s = steps * cfg.optim.batch_size / elapsed
            last = {
                "step": run.step,
                "stage": batch.stage.name,
                "loss": distributed.all_mean(loss_sum / steps, env),
                "lr": lr,
                "grad_norm": grad_norm,
                "samples_per_s": samples_s,
                "tokens_per_s": samples_s * geo.tokens_per_sample,
                "step_s": elapsed / steps,
                "time": time.time(),
            }
            if device.type == "cuda":
                last["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            run.write(last, loss=f"{last['loss']:.4f}", sps=f"{samples_s:.2f}")
            if not math.isfinite(last["loss"]):
                raise RuntimeError(f"training diverged: loss {last['loss']} at step {run.step}")
            loss_sum = 0.0
        if run.checkpoint_due():
            run.checkpoint(
                net,
                opt,
                ema,
                lambda: export_streamdit(cfg, ema, net_cfg, run.step, env.is_main, record),
            )
    run.close()
    if cfg.run.checksum:
        (run.out / f"weights_rank{env.rank}.sha256").write_text(weights_digest(net) + "\n")
    return last


def _step(
    cfg: TrainConfig,
    model: nn.Module,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    text_encoder,
    latents: Tensor,
    sources: Tensor | None,
    captions: list[str],
    chunk_sizes: list[int],
    run: Harness,
    lr: float,
    bf16: bool,
    motion_weight: float = 0.0,
) -> tuple[float, float]:
    """One optimizer step on one batch; returns (loss, gradient norm before clipping)."""
    device = run.env.device
    gen = step_generator(cfg.run.seed, run.step, run.env.rank)
    draw = draw_noise(
        tuple(latents.shape),
        chunk_sizes,
        cfg.flow.ref_frames,
        cfg.flow.text_dropout,
        gen,
        cfg.flow.paired,
        tuple(cfg.flow.entry),
    )
    prompts = ["" if drop else c for c, drop in zip(captions, draw.drop_text.tolist(), strict=True)]
    text = text_encoder.encode(prompts).to(device)
    with autocast(bf16, device):
        loss = flow_matching_loss(
            model,
            latents,
            draw,
            text.states,
            text.mask,
            model_config(cfg).sigma_min,
            cfg.flow.ref_frames,
            sources,
            motion_weight,
        )
    grad_norm = optimizer_step(loss, net, opt, lr, cfg.optim.grad_clip)
    return float(loss.detach()), grad_norm


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv, "python -m training.train", "training/configs/tiny.toml", TrainConfig, train
    )


if __name__ == "__main__":
    sys.exit(main())
