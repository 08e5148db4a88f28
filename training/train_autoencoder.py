"""Train the causal video autoencoder the DiT works in.

    python -m training.train_autoencoder training/configs/autoencoder_cpu.toml [--set k=v]

Loss: L1 on pixels, plus a gradient term (spatial and temporal finite differences, which
keeps edges and motion sharp where plain L1 blurs) and an SSIM term (local structure),
with no downloaded perceptual network. The latent regularizer is a small L2 penalty on the
raw latents, keeping their scale bounded, plus Gaussian noise on the latents during training
so the decoder tolerates the DiT's imperfect samples. PSNR is measured on held-out clips (a
different data seed). Each checkpoint is calibrated first (latent shift/scale from training
clips), so the DiT sees roughly unit-variance latents.

Outputs under ``run.out_dir``: ``autoencoder.safetensors`` (`VideoAutoencoder.load`),
``checkpoints/state-*.safetensors`` (resume), ``log.jsonl``.

Letters: B batch, F frames, H W pixels.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.data import DataLoader

from model.autoencoder import AE_CONFIGS, VideoAutoencoder
from training import distributed
from training.config import ConfigError, DataSection, run_cli, to_dict
from training.data import StepSampler, build_dataset
from training.harness import (
    Cadence,
    Harness,
    cosine_lr,
    optimizer_step,
    per_rank_batch,
    session,
)
from training.objective import step_generator


@dataclass
class AEModelSection:
    preset: str = "tiny"  # a key of model.autoencoder.AE_CONFIGS
    # Start from these weights (an `autoencoder.safetensors`) instead of a fresh init; a
    # resumed run starts from its own checkpoint instead.
    init: str = ""


@dataclass
class AELossSection:
    l1: float = 1.0
    gradient: float = 0.5
    ssim: float = 0.2
    latent_l2: float = 1e-4
    latent_noise: float = 0.05  # std of noise added to raw latents before decoding
    # Train on random crops of this many pixels (0 = whole clips): clips keep the scale of
    # data.size (the size the app runs at) while steps cost what the crop costs.
    crop: int = 0


@dataclass
class AEOptimSection:
    batch_size: int = 4
    lr: float = 3e-4
    warmup: int = 100
    steps: int = 2000
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    # After warm-up the rate follows a half cosine down to lr * lr_floor at `steps`
    # (1.0 keeps it constant).
    lr_floor: float = 1.0
    # False: train the decoder alone, the encoder and latent calibration stay those of
    # model.init. The latent space does not move, so a DiT trained on it keeps pairing.
    train_encoder: bool = True


@dataclass
class AERunSection:
    out_dir: str = "runs/autoencoder-tiny"
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    frames: int = 8  # video frames per training clip (a multiple of the temporal factor)
    log_every: int = 10
    eval_every: int = 250
    eval_clips: int = 8
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    max_steps: int = 0
    progress: bool = True


@dataclass
class AETrainConfig:
    model: AEModelSection = field(default_factory=AEModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(size=64))
    loss: AELossSection = field(default_factory=AELossSection)
    optim: AEOptimSection = field(default_factory=AEOptimSection)
    run: AERunSection = field(default_factory=AERunSection)


def ssim(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Mean SSIM of frame stacks (N, 3, H, W) in [-1, 1], box-filtered local statistics."""
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2  # the usual constants for a range of 2

    def pool(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)

    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a**2
    var_b = pool(b * b) - mu_b**2
    cov = pool(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean()


def gradient_l1(a: Tensor, b: Tensor) -> Tensor:
    """L1 between finite differences along W, H and F of (B, 3, F, H, W) clips."""
    loss = a.new_zeros(())
    for dim in (4, 3, 2):
        if a.shape[dim] > 1:
            loss = loss + (a.diff(dim=dim) - b.diff(dim=dim)).abs().mean()
    return loss


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB for clips in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1).float(), b.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def random_crops(clips: Tensor, size: int, multiple: int, generator: torch.Generator) -> Tensor:
    """(B, 3, F, H, W) -> (B, 3, F, size, size), one crop per clip at a multiple of
    ``multiple`` pixels (so latents of a crop line up with those of the whole clip)."""
    h, w = clips.shape[-2:]
    size = min(size, h, w)
    tops = torch.randint(0, (h - size) // multiple + 1, (len(clips),), generator=generator)
    lefts = torch.randint(0, (w - size) // multiple + 1, (len(clips),), generator=generator)
    crops = [
        c[..., t * multiple : t * multiple + size, x * multiple : x * multiple + size]
        for c, t, x in zip(clips, tops.tolist(), lefts.tolist(), strict=True)
    ]
    return torch.stack(crops)  # (B, 3, F, size, size)


def reconstruction_loss(
    ae: VideoAutoencoder, clips: Tensor, cfg: AELossSection, generator: torch.Generator
) -> tuple[Tensor, dict[str, float]]:
    """The training objective on one batch; returns the loss and its parts for the log."""
    if cfg.crop and cfg.crop < max(clips.shape[-2:]):
        clips = random_crops(clips, cfg.crop, ae.cfg.spatial_factor, generator)
    with torch.set_grad_enabled(next(ae.encoder.parameters()).requires_grad):
        z = ae.encoder(clips, None)  # raw latents (B, C, F/tc, H/s, W/s), before normalization
    noise = torch.randn(z.shape, generator=generator).to(z.device)
    recon = ae.decoder(z + cfg.latent_noise * noise, None)  # (B, 3, F, H, W)
    l1 = (recon - clips).abs().mean()
    grad = gradient_l1(recon, clips)
    frames = "b c f h w -> (b f) c h w"
    s = ssim(rearrange(recon, frames), rearrange(clips, frames))
    reg = z.pow(2).mean()
    total = cfg.l1 * l1 + cfg.gradient * grad + cfg.ssim * (1 - s) + cfg.latent_l2 * reg
    parts = {
        "l1": l1.item(),
        "gradient": grad.item(),
        "ssim": s.item(),
        "latent_rms": reg.sqrt().item(),
    }
    return total, parts


@torch.no_grad()
def evaluate(ae: VideoAutoencoder, clips: Tensor, batch: int) -> float:
    """Mean PSNR (dB) of full encode/decode round trips over held-out clips."""
    scores = [psnr(ae.decode(ae.encode(c)), c) for c in clips.split(batch)]
    return sum(scores) / len(scores)


@torch.no_grad()
def flat_colour_error(ae: VideoAutoencoder, size: int = 64, frames: int = 8) -> float:
    """Worst colour shift, in 8-bit levels, of a flat patch after a round trip.

    Patches of every `training.scenes.COLORS` colour and five grays; the error is the
    per-channel mean over the patch's centre (away from borders), worst channel and colour.
    """
    from training.scenes import COLORS

    values = [*COLORS.values(), *[(g, g, g) for g in (0, 64, 128, 192, 255)]]
    tc = ae.cfg.temporal_factor
    x = torch.tensor(values, dtype=ae.dtype, device=ae.latent_scale.device) / 127.5 - 1
    x = x.view(-1, 3, 1, 1, 1).expand(-1, 3, -(-frames // tc) * tc, size, size).contiguous()
    y = ae.decode(ae.encode(x)).clamp(-1, 1)
    q = size // 4
    shift = (y - x)[..., q:-q, q:-q].mean(dim=(2, 3, 4))  # (colours, 3)
    return shift.abs().max().item() * 127.5


def train_autoencoder(cfg: AETrainConfig) -> dict:
    with session(cfg.run) as env:
        return _train(cfg, env)


def _train(cfg: AETrainConfig, env: distributed.DistEnv) -> dict:
    if cfg.model.preset not in AE_CONFIGS:
        raise ConfigError(f"model.preset {cfg.model.preset!r} is not one of {sorted(AE_CONFIGS)}")
    ae_cfg = AE_CONFIGS[cfg.model.preset]
    if cfg.run.frames % ae_cfg.temporal_factor or cfg.data.size % ae_cfg.spatial_factor:
        raise ConfigError(
            f"run.frames ({cfg.run.frames}) and data.size ({cfg.data.size}) must be multiples of "
            f"{ae_cfg.temporal_factor} and {ae_cfg.spatial_factor}"
        )
    per_rank = per_rank_batch(cfg.optim.batch_size, env)
    run = Harness(cfg.run.out_dir, env, to_dict(cfg), Cadence.of(cfg.run))
    device = env.device

    torch.manual_seed(cfg.run.seed)
    with torch.device(device):
        ae = VideoAutoencoder(ae_cfg)
    if cfg.model.init:
        start = VideoAutoencoder.load(cfg.model.init)
        if start.cfg != ae_cfg:
            raise ConfigError(
                f"model.init {cfg.model.init} is not a {cfg.model.preset!r} autoencoder"
            )
        ae.load_state_dict(start.state_dict())
    if not cfg.optim.train_encoder:
        if not cfg.model.init:
            raise ConfigError("optim.train_encoder = false needs model.init, the encoder to keep")
        ae.encoder.requires_grad_(False)
    trained = [p for p in ae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    step = run.resume(ae, opt, None)
    end = min(cfg.optim.steps, cfg.run.max_steps or cfg.optim.steps)

    data = build_dataset(cfg.data, cfg.run.frames, cfg.data.size, cfg.run.seed)
    held_out = build_dataset(cfg.data, cfg.run.frames, cfg.data.size, cfg.run.seed + 104_729)
    eval_clips = torch.stack([held_out[i][0] for i in range(cfg.run.eval_clips)]).to(device)
    calib_clips = torch.stack([data[10**9 + i][0] for i in range(16)]).to(device)
    loader = DataLoader(
        data,
        batch_size=per_rank,
        num_workers=cfg.data.workers,
        sampler=StepSampler(per_rank, env.rank, env.world, start_step=step),
    )
    batches = iter(loader)
    run.start(end)
    last: dict = {"step": step}
    while run.step < end:
        clips, _ = next(batches)
        clips = clips.to(device, non_blocking=True)
        gen = step_generator(cfg.run.seed, run.step, env.rank)
        lr = cosine_lr(
            cfg.optim.lr, run.step, cfg.optim.warmup, cfg.optim.steps, cfg.optim.lr_floor
        )
        loss, parts = reconstruction_loss(ae, clips, cfg.loss, gen)
        # Gradients averaged by hand rather than DDP: the loss calls the encoder and decoder
        # directly (raw latents), which DDP's forward hook would not see.
        optimizer_step(loss, ae, opt, lr, cfg.optim.grad_clip, average_over=env)
        run.tick()
        if run.log_due():
            elapsed, count = run.window()
            last = {
                "step": run.step,
                "loss": distributed.all_mean(loss.item(), env),
                "lr": lr,
                **parts,
                "clips_per_s": count * cfg.optim.batch_size / elapsed,
            }
            if run.step % cfg.run.eval_every == 0 or run.step == end:
                last["psnr_heldout"] = evaluate(ae, eval_clips, per_rank)
                last["flat_colour_error"] = flat_colour_error(ae)
            run.write(last, loss=f"{last['loss']:.4f}", psnr=last.get("psnr_heldout", ""))
        if run.checkpoint_due():
            if cfg.optim.train_encoder:
                ae.calibrate(calib_clips)  # deterministic: the same clips on every rank

            def export() -> None:
                if env.is_main:
                    ae.save(run.out / "autoencoder.safetensors", {"step": str(run.step)})

            run.checkpoint(ae, opt, None, export)
    del batches
    run.close()
    return last


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv,
        "python -m training.train_autoencoder",
        "training/configs/autoencoder_tiny.toml",
        AETrainConfig,
        train_autoencoder,
    )


if __name__ == "__main__":
    sys.exit(main())
