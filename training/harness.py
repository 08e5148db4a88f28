"""The training harness shared by every trainer (`train`, `train_autoencoder`, `distill`).

What a trainer does is its own: the model, the batch, the loss, the log record. Everything
around it lives here, once: the distributed session, the run directory and its
``config.json``, exact resume from the latest ``checkpoints/state-*.safetensors`` (with the
``log.jsonl`` rewound to it), the log and checkpoint cadence, learning-rate warm-up and decay,
bf16 autocast, the optimizer step, and the progress bar.

A trainer's loop reads::

    with session(cfg.run) as env:
        run = Harness(out_dir, env, to_dict(cfg), Cadence.of(cfg.run))
        step = run.resume(net, opt, ema)
        run.start(end)
        while run.step < end:
            ...one optimizer step...
            run.tick()
            if run.log_due():
                run.write({"step": run.step, ...})
            if run.checkpoint_due():
                run.checkpoint(net, opt, ema, export=...)
        run.close()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from training import distributed
from training.config import ConfigError, Precision
from training.ema import EMA
from training.state import latest_state, load_state, save_state, state_path, state_step


class JsonlLog:
    """One JSON object per logged step; only the main process writes."""

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


@dataclass(frozen=True)
class Cadence:
    """When to log and checkpoint, and what the user sees."""

    log_every: int
    ckpt_every: int
    keep_checkpoints: int = 2
    progress: bool = True

    @classmethod
    def of(cls, run: Any) -> Cadence:
        """From a trainer's [run] section (any dataclass with these four fields)."""
        return cls(run.log_every, run.ckpt_every, run.keep_checkpoints, run.progress)


@contextlib.contextmanager
def session(run: Any) -> Iterator[distributed.DistEnv]:
    """The distributed session of a [run] section (device, threads); see `distributed`."""
    with distributed.session(run.device, run.threads) as env:
        yield env


def per_rank_batch(batch_size: int, env: distributed.DistEnv) -> int:
    if batch_size % env.world:
        raise ConfigError(
            f"optim.batch_size {batch_size} must divide evenly over {env.world} processes"
        )
    return batch_size // env.world


def warmup_lr(lr: float, local_step: int, warmup: int) -> float:
    """Linear warm-up over the first `warmup` steps (counted from 0), then `lr`."""
    return lr * min(1.0, (local_step + 1) / warmup) if warmup > 0 else lr


def cosine_lr(lr: float, step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up, then a half cosine from `lr` down to `floor * lr` at step `total`."""
    if step < warmup:
        return warmup_lr(lr, step, warmup)
    done = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done)))


def use_bf16(precision: Precision, device: torch.device) -> bool:
    return precision is Precision.BF16 or (precision is Precision.AUTO and device.type == "cuda")


def autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device`, or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def optimizer_step(
    loss: Tensor,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    lr: float,
    grad_clip: float,
    average_over: distributed.DistEnv | None = None,
) -> float:
    """Backward, clip and step at learning rate `lr`; returns the gradient norm before
    clipping. `average_over` all-reduces the gradients by hand, for a model that DDP does
    not wrap (the autoencoder trainer calls its encoder and decoder directly)."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if average_over is not None:
        distributed.average_gradients(net, average_over)
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    opt.step()
    return float(grad_norm)


def weights_digest(net: nn.Module) -> str:
    """sha256 over this process's parameter bytes, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(net.named_parameters()):
        local = p.detach()
        local = local.to_local() if hasattr(local, "to_local") else local
        h.update(name.encode())
        h.update(local.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Harness:
    """One run's directory, resume, cadence, log and progress bar."""

    def __init__(
        self, out_dir: str | Path, env: distributed.DistEnv, config: dict, cadence: Cadence
    ):
        self.out, self.env, self.config, self.cadence = Path(out_dir), env, config, cadence
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(config, indent=2))
        self.log = JsonlLog(self.out / "log.jsonl", env.is_main)
        self.step, self.end = 0, 0
        self.resumed_from: Path | None = None
        self._bar: tqdm | None = None
        self._window_start, self.window_steps = time.perf_counter(), 0

    def resume(self, net: nn.Module, opt: torch.optim.Optimizer, ema: EMA | None) -> int:
        """Load the latest training state if there is one (collective); returns the step."""
        path = latest_state(self.out)
        # Before loading, which is collective under FSDP: a rank that sees no checkpoint (an
        # out_dir not shared between nodes) would start over and hang or silently diverge.
        distributed.check_same(state_step(path), "the checkpoint step to resume from", self.env)
        if path is not None:
            self.step = load_state(path, net, opt, ema)
        self.resumed_from = path
        self.log.rewind(self.step)
        return self.step

    @property
    def origin(self) -> str:
        return f"resumed from {self.resumed_from}" if self.resumed_from else "fresh start"

    def start(self, end: int) -> None:
        """Open the progress bar and the throughput window for steps `self.step` -> `end`."""
        self.end = end
        self._bar = tqdm(
            total=end,
            initial=self.step,
            disable=not (self.env.is_main and self.cadence.progress),
            dynamic_ncols=True,
        )
        self._window_start, self.window_steps = time.perf_counter(), 0

    def tick(self) -> None:
        """One optimizer step done."""
        self.step += 1
        self.window_steps += 1
        if self._bar is not None:
            self._bar.update(1)

    def log_due(self) -> bool:
        return self.step % self.cadence.log_every == 0 or self.step == self.end

    def checkpoint_due(self) -> bool:
        return self.step % self.cadence.ckpt_every == 0 or self.step == self.end

    def window(self) -> tuple[float, int]:
        """(seconds, steps) since the last logged record (checkpoint time excluded)."""
        return time.perf_counter() - self._window_start, max(self.window_steps, 1)

    def write(self, record: dict, **postfix: Any) -> None:
        """Log `record`, show `postfix` on the bar, start a new throughput window."""
        self.log.write(record)
        if self._bar is not None and postfix:
            self._bar.set_postfix(**postfix)
        self._window_start, self.window_steps = time.perf_counter(), 0

    def checkpoint(
        self,
        net: nn.Module,
        opt: torch.optim.Optimizer,
        ema: EMA | None,
        export: Callable[[], None] | None = None,
    ) -> None:
        """Save the training state, then `export` (called on every rank: it may gather)."""
        save_state(
            state_path(self.out, self.step),
            net,
            opt,
            ema,
            self.step,
            self.config,
            self.env.is_main,
            self.cadence.keep_checkpoints,
        )
        if export is not None:
            export()
        distributed.barrier(self.env)
        if self.window_steps == 0:  # keep checkpoint time out of the next throughput figure
            self._window_start = time.perf_counter()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
