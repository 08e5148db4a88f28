"""Helpers shared by several test modules (on the path through pytest's `pythonpath`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from streamdit_live.sink_base import Sink
from streamdit_live.sources import demo_frame


def torchrun(module: str, args: list[str], cwd: Path, timeout: float = 180.0) -> str:
    """`python -m <module> ARGS` under `torchrun --standalone --nproc-per-node 2` (one thread
    each); its stdout. Started in its own session, so a hang is killed whole, workers and
    all (killing torchrun alone would orphan them)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.Popen(
        [*cmd, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"torchrun did not finish within {timeout:.0f} s") from None
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a condition until a deadline (tests only; the code under test never polls)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def read_video(path: str | Path) -> list[np.ndarray]:
    """Every frame of a video file, BGR as OpenCV reads it; asserts the file opens."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} is not a playable video"
    frames = []
    while len(frames) < 10_000:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


class Feeder:
    """Writes demo frames to a sink at about 60 fps on a thread, like a paced output."""

    def __init__(self, sink: Sink) -> None:
        self.sink, self.stop, self.count = sink, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() and self.count < 5000:
            self.sink.write(demo_frame(self.count, self.sink.width, self.sink.height))
            self.count += 1
            self.stop.wait(1 / 60)

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5.0)
