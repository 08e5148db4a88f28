"""Exponential moving average of the trained weights: the weights we ship.

Kept as one float32 tensor per parameter, aligned with ``net.named_parameters()``. Under
FSDP the parameters are DTensor shards and so are these: each process averages its own
shard, and `full_state` gathers them only when a checkpoint is written.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, _ in net.named_parameters()]
        self.shadow = [p.detach().float().clone() for _, p in net.named_parameters()]

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        # Warm up the decay (as in many DiT codebases) so early, poor weights fade fast:
        # decay_eff = min(decay, (1 + step) / (10 + step)).
        decay = min(self.decay, (1 + step) / (10 + step))
        params = [p.detach().float() for p in net.parameters()]
        torch._foreach_lerp_(self.shadow, params, 1.0 - decay)

    def full_state(self) -> dict[str, torch.Tensor]:
        """name -> full (gathered) CPU tensor; collective under FSDP, so call on all ranks."""
        out = {}
        for name, t in zip(self.names, self.shadow, strict=True):
            full = t.full_tensor() if hasattr(t, "full_tensor") else t
            out[name] = full.detach().cpu()
        return out

    @torch.no_grad()
    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, t in zip(self.names, self.shadow, strict=True):
            if name not in state:
                raise KeyError(f"EMA state lacks {name!r}; the checkpoint is from another model")
            full = state[name].to(t.device, torch.float32)
            if hasattr(t, "device_mesh"):  # a DTensor shard: cut our piece out of the full one
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full, t.device_mesh, t.placements)
            t.copy_(full)

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into an (unwrapped, unsharded) module of the same kind."""
        state = self.full_state()
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)
