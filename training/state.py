"""Training checkpoints: model, EMA, optimizer and step in one safetensors file.

Tensors go under prefixes ``model.``, ``ema.`` and ``optim.<param>.<key>``; the step, the
optimizer's parameter groups and the config travel as JSON metadata. Nothing is pickled.
Full (gathered) state dicts are written, so a run saved under FSDP on 128 GPUs resumes on
any number of processes, and vice versa. The inference export (EMA weights only, loadable
with `model.checkpoint.load_streamdit`) is written beside it by the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from training.ema import EMA

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def state_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"state-{step:08d}.safetensors"


def state_step(path: Path | None) -> int:
    """The step in a `state_path` name; 0 for None (no checkpoint)."""
    return int(path.stem.rsplit("-", 1)[1]) if path is not None else 0


def latest_state(out_dir: str | Path) -> Path | None:
    files = sorted((Path(out_dir) / "checkpoints").glob("state-*.safetensors"))
    return files[-1] if files else None


def save_state(
    path: Path,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    ema: EMA | None,
    step: int,
    config: dict[str, Any],
    is_main: bool,
    keep: int = 2,
) -> None:
    """Collective (every rank must call it); rank 0 writes."""
    model_sd = get_model_state_dict(net, options=_FULL)
    optim_sd = get_optimizer_state_dict(net, opt, options=_FULL)
    ema_sd = ema.full_state() if ema is not None else {}
    if not is_main:
        return
    tensors = {f"model.{k}": v for k, v in model_sd.items()}
    tensors |= {f"ema.{k}": v for k, v in ema_sd.items()}
    for name, slots in optim_sd["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{name}.{key}"] = torch.as_tensor(value)
    meta = {
        "kind": "train-state",
        "step": str(step),
        "optim_groups": json.dumps(optim_sd["param_groups"]),
        "train_config": json.dumps(config),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a truncated checkpoint
    old = sorted(path.parent.glob("state-*.safetensors"))[:-keep] if keep > 0 else []
    for stale in old:
        stale.unlink(missing_ok=True)


def load_state(path: Path, net: nn.Module, opt: torch.optim.Optimizer, ema: EMA | None) -> int:
    """Restore everything `save_state` wrote; returns the step to continue from."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("kind") != "train-state":
            raise ValueError(f"{path} is not a training state (kind={meta.get('kind')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    groups = json.loads(meta["optim_groups"])
    names = {n for g in groups for n in g["params"]}
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            # Parameter names contain dots, the slot name ("exp_avg") does not.
            name, slot = key[6:].rsplit(".", 1)
            if name not in names:
                raise ValueError(f"{path}: optimizer state for unknown parameter {name!r}")
            state.setdefault(name, {})[slot] = value
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(net, model_sd, options=full)
    set_optimizer_state_dict(net, opt, {"state": state, "param_groups": groups}, options=full)
    if ema is not None:
        ema.load_full_state(ema_sd)
    return int(meta["step"])
