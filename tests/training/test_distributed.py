"""training/distributed.py: checks that keep the ranks of a run in step."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.config import ConfigError
from training.distributed import DistEnv, check_same


def _worker(rank: int, port: int, values: list[int], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        check_same(
            values[rank], "the step to resume from", DistEnv(rank, 2, rank, torch.device("cpu"))
        )
        results.put((rank, "ok"))
    except ConfigError as e:
        results.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


def _run(values: list[int]) -> dict[int, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    mp.start_processes(_worker, args=(port, values, results), nprocs=2, start_method="spawn")
    return dict(results.get(timeout=60) for _ in range(2))


@pytest.mark.slow
def test_ranks_that_see_different_checkpoints_all_stop_with_one_sentence():
    assert _run([3, 3]) == {0: "ok", 1: "ok"}
    out = _run([500, 0])  # e.g. a node whose run.out_dir is not the shared one
    assert all("disagree on the step to resume from (0 to 500)" in m for m in out.values())
