"""training/harness.py: the run directory, resume, cadence and optimizer step all trainers share."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from training.config import ConfigError
from training.distributed import DistEnv
from training.ema import EMA
from training.harness import (
    Cadence,
    Harness,
    JsonlLog,
    optimizer_step,
    per_rank_batch,
    warmup_lr,
)

ALONE = DistEnv(0, 1, 0, torch.device("cpu"))
CADENCE = Cadence(log_every=2, ckpt_every=3, keep_checkpoints=2, progress=False)


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    return net, opt, EMA(net, 0.9)


def _train_steps(run: Harness, net, opt, ema, end: int) -> None:
    """A toy loop shaped like the trainers': step, log, checkpoint."""
    run.start(end)
    while run.step < end:
        x = torch.full((4, 3), float(run.step))  # data as a function of the step
        loss = net(x).pow(2).mean()
        optimizer_step(loss, net, opt, warmup_lr(0.1, run.step, 2), grad_clip=1.0)
        ema.update(net, run.step)
        run.tick()
        if run.log_due():
            run.write({"step": run.step, "loss": loss.item()})
        if run.checkpoint_due():
            run.checkpoint(net, opt, ema)
    run.close()


def test_resume_continues_exactly_and_rewinds_the_log(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    net, opt, ema = _parts()
    _train_steps(Harness(straight, ALONE, {"a": 1}, CADENCE), net, opt, ema, 7)

    first = Harness(split, ALONE, {"a": 1}, CADENCE)
    _train_steps(first, *_parts(), 5)  # checkpoints at 3 and 5, logs at 2, 4, 5
    (split / "checkpoints" / "state-00000005.safetensors").unlink()  # as if it died after 4
    net2, opt2, ema2 = _parts(seed=9)  # fresh weights: resume must overwrite them
    run = Harness(split, ALONE, {"a": 1}, CADENCE)
    assert run.resume(net2, opt2, ema2) == 3 and "resumed from" in run.origin
    _train_steps(run, net2, opt2, ema2, 7)

    def log(out):
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    assert [r["step"] for r in log(split)] == [2, 4, 6, 7]
    assert log(split) == log(straight)
    assert torch.equal(net.weight, net2.weight) and ema.shadow[0].equal(ema2.shadow[0])
    assert json.loads((split / "config.json").read_text()) == {"a": 1}
    kept = sorted(p.name for p in (split / "checkpoints").iterdir())
    assert kept == ["state-00000006.safetensors", "state-00000007.safetensors"]


def test_a_fresh_directory_starts_at_zero(tmp_path):
    run = Harness(tmp_path / "new", ALONE, {}, CADENCE)
    assert run.resume(*_parts()) == 0 and run.origin == "fresh start"


def test_log_rewind_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    JsonlLog(path, True).rewind(2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    JsonlLog(path, False).write({"step": 9})  # not the main process: writes nothing
    assert path.read_text().count("\n") == 2


def test_cadence_logs_and_checkpoints_on_schedule_and_at_the_end(tmp_path):
    run = Harness(tmp_path, ALONE, {}, CADENCE)
    run.start(7)
    due = []
    for _ in range(7):
        run.tick()
        due.append((run.step, run.log_due(), run.checkpoint_due()))
    run.close()
    assert [s for s, log, _ in due if log] == [2, 4, 6, 7]
    assert [s for s, _, ckpt in due if ckpt] == [3, 6, 7]


def test_warmup_and_batch_split():
    assert [warmup_lr(1.0, s, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_lr(0.3, 0, 0) == 0.3
    assert per_rank_batch(8, DistEnv(0, 4, 0, torch.device("cpu"))) == 2
    with pytest.raises(ConfigError, match="must divide evenly over 3 processes"):
        per_rank_batch(8, DistEnv(0, 3, 0, torch.device("cpu")))


def test_optimizer_step_sets_the_rate_and_reports_the_unclipped_norm():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    opt = torch.optim.SGD(net.parameters(), lr=99.0)
    loss = (net(torch.ones(1, 1)) * 10).sum()  # gradient 10
    norm = optimizer_step(loss, net, opt, lr=0.5, grad_clip=1.0)
    assert norm == pytest.approx(10.0)
    assert net.weight.item() == pytest.approx(1.0 - 0.5 * 1.0)  # clipped to 1, then lr 0.5
