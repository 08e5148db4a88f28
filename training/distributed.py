"""Process-group setup and model wrapping for `torchrun`, and the single-process case.

`torchrun --nproc-per-node N -m training.train CONFIG` sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address; a plain `python -m training.train` sets none and runs alone. GPUs
talk over NCCL, CPUs over gloo.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from training.config import ConfigError, Strategy


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("run.device = 'cuda' but no CUDA device is visible; use 'cpu'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"run.device must be auto, cpu or cuda, got {requested!r}")


def setup(requested_device: str) -> DistEnv:
    """Join the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return DistEnv(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(requested_device: str, threads: int) -> Iterator[DistEnv]:
    """Set threads (0 keeps torch's choice) and the process group for one training run;
    restores both after, so callers in the same process (tests) keep theirs."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield setup(requested_device)
    finally:
        teardown()
        torch.set_num_threads(before)


def wrap(net: nn.Module, strategy: Strategy, env: DistEnv) -> nn.Module:
    """The module the training step calls. ``net`` stays the unwrapped module (FSDP2
    shards it in place), which is what checkpoints and EMA read."""
    if strategy is Strategy.FSDP:
        if not env.distributed:
            return net  # one process: nothing to shard
        from torch.distributed.fsdp import fully_shard

        # Shard block by block, then the rest: each block's parameters are gathered only
        # while it runs, the point of FSDP for models that do not fit one device.
        for block in net.blocks:
            fully_shard(block)
        fully_shard(net)
        return net
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)
    return net


def wrap_frozen(net: nn.Module, strategy: Strategy, env: DistEnv) -> nn.Module:
    """A module that only runs forward (distillation's teacher): sharded under FSDP, else
    a full copy per process (DDP refuses a module without trainable parameters)."""
    net.requires_grad_(False)
    if strategy is Strategy.FSDP and env.distributed:
        return wrap(net, strategy, env)
    return net


def average_gradients(net: nn.Module, env: DistEnv) -> None:
    """All-reduce and average the gradients by hand, for a model DDP does not wrap."""
    if not env.distributed:
        return
    for p in net.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= env.world


def all_mean(value: float, env: DistEnv) -> float:
    """The mean of a scalar over all processes (for logging)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def check_same(value: int, what: str, env: DistEnv) -> None:
    """Raise on every rank unless all ranks hold the same integer (a collective)."""
    if not env.distributed:
        return
    t = torch.tensor([value, -value], dtype=torch.int64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    high, low = int(t[0]), -int(t[1])
    if high != low:
        raise ConfigError(
            f"the processes disagree on {what} ({low} to {high}); put run.out_dir on a "
            "filesystem every node shares"
        )
