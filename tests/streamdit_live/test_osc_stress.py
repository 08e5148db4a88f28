"""OSC under a bounded fuzz against a real running session (issue 8).

`streamdit-live run` streams the demo source through the tiny model into a file, with
`--metrics` (one line per output frame, flushed as it goes) and OSC feedback to a socket of
the test's own. Thousands of packets then arrive over real UDP for `FUZZ_S` seconds: junk,
wrong, missing and extra type tags, cut-off floats, stray bytes, bundles nested hundreds
deep, oversized packets, and in the second test storms of valid restarts (reset, seed,
strength). Afterwards the process must still be running, the output must have kept its
frame rate within 10 %, stderr must be small, and a prompt sent then must take effect.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage

from streamdit_live.controls import CONTROLS
from streamdit_live.osc import build_message

FPS = 24.0
FUZZ_S = 10.0
PACKETS_PER_S = 600
STDERR_LIMIT = 64 * 1024  # start-up lines and a few summaries; 100,000 bad packets wrote 70 MB
START_PROMPT = "a quiet harbour at dusk"
STARTUP_TIMEOUT_S = 120.0
ENV = {
    **os.environ,
    "QT_QPA_PLATFORM": "offscreen",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}


def pad(text: bytes) -> bytes:
    return text + b"\0" * (4 - len(text) % 4)


def raw(address: str, tags: str, payload: bytes = b"") -> bytes:
    return pad(address.encode()) + pad(tags.encode()) + payload


def nested(depth: int) -> bytes:
    packet = build_message("/streamdit/seed", 3)
    for _ in range(depth):
        packet = b"#bundle\0" + struct.pack(">Qi", 1, len(packet)) + packet
    return packet


def bad_packets(rng: random.Random) -> Iterator[bytes]:
    """Endless packets that must all be refused, of the kinds issue 8 found applied or
    logged in full."""
    controls = ["/streamdit/strength", "/streamdit/seed", "/streamdit/pause", "/streamdit/prompt"]
    deep = [nested(depth) for depth in (9, 64, 400, 700)]
    while True:
        address = rng.choice(controls)
        yield rng.randbytes(rng.randrange(1, 64))  # junk
        yield raw("/streamdit/pause", ",ST", b"\x13\x37junk")
        yield raw("/streamdit/strength", ",f", rng.randbytes(rng.randrange(0, 4)))  # cut off
        tags = rng.choices("ifsTFhd", k=rng.randrange(0, 3))
        tags.insert(rng.randrange(len(tags) + 1), rng.choice("bSNcm[]"))  # one we never take
        yield raw(address, "," + "".join(tags), rng.randbytes(4 * rng.randrange(0, 3)))
        yield raw("/streamdit/seed", ",i", struct.pack(">i", 7) + rng.randbytes(4))  # extra
        yield pad(address.encode()) + struct.pack(">f", 0.5)  # no type tags
        yield build_message("/streamdit/reset", rng.randrange(2))  # reset takes no arguments
        yield build_message("/streamdit/pause", "on")
        yield build_message("/streamdit/strength", 1.5 + rng.random())
        yield build_message("/streamdit/crossfade", rng.uniform(0.1, 1))  # no B: does nothing
        yield build_message(f"/streamdit/{rng.randbytes(6).hex()}", 1)
        yield rng.choice(deep)
        yield b"/streamdit/prompt\0\0\0,s\0\0" + b"x" * 20000  # oversized


def restart_storm(rng: random.Random) -> Iterator[bytes]:
    """Valid restarts, as fast as a fader or a runaway script sends them, with bad ones."""
    bad = bad_packets(rng)
    while True:
        yield build_message("/streamdit/reset")
        yield build_message("/streamdit/seed", rng.randrange(1000))
        yield build_message("/streamdit/strength", round(rng.uniform(0.2, 0.8), 3))
        yield next(bad)


class LiveRun:
    """A `streamdit-live run` subprocess with metrics, a file output and OSC feedback."""

    def __init__(self, tmp_path: Path) -> None:
        self.metrics = tmp_path / "run.jsonl"
        self.stderr_path = tmp_path / "stderr.txt"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.feedback = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.feedback.bind(("127.0.0.1", 0))
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.bind(("127.0.0.1", 0))
        self.sender.setblocking(False)  # error replies pile up unread; sends never wait
        cmd = [
            sys.executable, "-m", "streamdit_live", "run", "--source", "demo",
            "--model", "tiny", "--size", "64x64", "--fps", str(FPS), "--threads", "1",
            "--prompt", START_PROMPT, "--out", f"file:{tmp_path / 'out.mp4'}",
            "--metrics", str(self.metrics), "--osc-port", str(self.port),
            "--osc-feedback", f"127.0.0.1:{self.feedback.getsockname()[1]}",
        ]  # fmt: skip
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.feedback.close()
        self.sender.close()

    def send(self, packet: bytes) -> None:
        # A full send buffer loses the packet, as UDP would anyway.
        with contextlib.suppress(BlockingIOError):
            self.sender.sendto(packet, ("127.0.0.1", self.port))

    def status(self, address: str, accept: Callable[[object], bool], timeout: float) -> None:
        """Wait for the feedback to send `address` with a value `accept` likes."""
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            self.feedback.settimeout(left)
            try:
                message = OscMessage(self.feedback.recvfrom(65536)[0])
            except TimeoutError:
                break
            if message.address == address:
                seen.append(message.params[0])
                if accept(message.params[0]):
                    return
        assert self.proc.poll() is None, f"the run ended: {self.stderr()[-2000:]!r}"
        raise AssertionError(
            f"{address} never matched within {timeout} s; saw {seen[-5:]}; "
            f"stderr ends {self.stderr()[-1500:]!r}"
        )

    def frames(self) -> list[dict]:
        """The metrics records written so far (a partial last line is left out)."""
        text = self.metrics.read_text(encoding="utf-8") if self.metrics.exists() else ""
        return [json.loads(line) for line in text.splitlines(keepends=True) if line[-1] == "\n"]

    def fuzz(self, packets: Iterator[bytes], seconds: float) -> tuple[int, float, list[dict]]:
        """Send `PACKETS_PER_S` for `seconds`; (packets sent, output fps, frames meanwhile)."""
        before = len(self.frames())
        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < seconds:
            for _ in range(int(elapsed * PACKETS_PER_S) - sent):
                self.send(next(packets))
                sent += 1
            time.sleep(0.005)  # pacing the sender, not waiting for the app
        frames = self.frames()[before:]
        return sent, len(frames) / (time.monotonic() - start), frames

    def stop(self) -> tuple[int, bytes]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        return self.proc.returncode, self.stderr()

    def stderr(self) -> bytes:
        return self.stderr_path.read_bytes()


def streaming(run: LiveRun) -> None:
    run.status("/streamdit/status/fps", lambda fps: fps > 0, STARTUP_TIMEOUT_S)


def a_prompt_takes_effect(run: LiveRun, prompt: str) -> None:
    """Sent after the fuzz: reported by the feedback and drawn into the output's frames."""
    run.send(build_message("/streamdit/prompt", prompt))
    run.status("/streamdit/status/prompt", lambda text: text == prompt, timeout=10.0)
    deadline = time.monotonic() + 10.0
    while not any(r["prompt"] == prompt for r in run.frames()[-48:]):
        assert time.monotonic() < deadline, "no output frame was made with the new prompt"
        time.sleep(0.05)


def check_stderr(stderr: bytes) -> None:
    assert len(stderr) < STDERR_LIMIT, f"{len(stderr)} bytes of stderr: {stderr[-1500:]!r}"
    assert b"Traceback" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_a_fuzz_of_bad_packets_changes_nothing_and_the_stream_goes_on(tmp_path):
    with LiveRun(tmp_path) as run:
        streaming(run)
        sent, fps, frames = run.fuzz(bad_packets(random.Random(8)), FUZZ_S)
        assert sent >= FUZZ_S * PACKETS_PER_S * 0.9
        assert run.proc.poll() is None, run.stderr()[-2000:]
        assert fps == pytest.approx(FPS, rel=0.10), f"{fps:.1f} fps while {sent} packets came"
        # Not one of them was applied: every frame kept the prompt and strength it started with.
        start = (START_PROMPT, CONTROLS["strength"].default)
        assert {(r["prompt"], r["strength"]) for r in frames} == {start}
        # Issue 8: after the A/B preset, plain prompts used to change nothing.
        run.send(build_message("/streamdit/preset", "vj-crossfade"))
        run.status("/streamdit/status/prompt", lambda text: text.startswith("a cyan"), 10.0)
        a_prompt_takes_effect(run, "after the fuzz, a lighthouse")
        code, stderr = run.stop()
    assert code == 0, stderr[-2000:]
    check_stderr(stderr)
    # The refusals were counted, not logged one by one.
    assert b"more malformed packets" in stderr and b"more bundles nested too deep" in stderr


@pytest.mark.slow
def test_a_restart_storm_keeps_the_output_rate_and_control(tmp_path):
    with LiveRun(tmp_path) as run:
        streaming(run)
        sent, fps, frames = run.fuzz(restart_storm(random.Random(9)), FUZZ_S)
        assert run.proc.poll() is None, run.stderr()[-2000:]
        assert len({r["strength"] for r in frames}) > 1  # the restarts were applied
        a_prompt_takes_effect(run, "after the storm, a desert road")
        code, stderr = run.stop()
        assert code == 0, stderr[-2000:]
        check_stderr(stderr)
        assert fps == pytest.approx(FPS, rel=0.10), f"{fps:.1f} fps while {sent} packets came"
