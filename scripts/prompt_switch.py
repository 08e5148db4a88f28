"""How long a prompt sent over OSC takes to change the look of the output, measured from
the pixels of a real run.

    python scripts/prompt_switch.py [--from "a blue neon glow"] [--to "a thermal camera image"]
                                    [--seconds 14] [--switch-after 6] [-- extra run flags]

Starts `streamdit-live run --source demo` with a recording and a metrics file, sends
`/streamdit/prompt` over UDP from a real OSC client once the stream has run
`--switch-after` seconds, and reads the recording back: the delay is the time from the send
to the first output frame from which on every half second of output has the new prompt's look
(`training.metrics.LOOK_CHECKS`), read on the run's own clock (the metrics file's `t`).
Prints one line of numbers; exit 1 when the look never changed.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pythonosc.udp_client import SimpleUDPClient

from training.metrics import LOOK_CHECKS, look, look_matches

WINDOW = 12  # frames whose look is read together: half a second at 24 fps


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [r for r in (json.loads(x) for x in lines if x.strip()) if "frame" in r]


def read_frames(path: Path) -> np.ndarray:
    """uint8 (F, H, W, 3) RGB."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def settled_from(matches: list[bool], start: int) -> int | None:
    """The first index >= start from which every later entry is True."""
    first = None
    for i in range(start, len(matches)):
        if matches[i] and first is None:
            first = i
        elif not matches[i]:
            first = None
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="before", default="a blue neon glow")
    parser.add_argument("--to", dest="after", default="a thermal camera image")
    parser.add_argument("--seconds", type=float, default=14.0)
    parser.add_argument("--switch-after", type=float, default=6.0)
    parser.add_argument("extra", nargs="*", help="more `streamdit-live run` flags (after --)")
    args = parser.parse_args(argv)
    if args.after not in LOOK_CHECKS:
        parser.error(f"--to must be a look with a check: {sorted(LOOK_CHECKS)}")
    with tempfile.TemporaryDirectory() as tmp:
        video, metrics, port = Path(tmp) / "out.mp4", Path(tmp) / "m.jsonl", free_port()
        command = [
            sys.executable, "-m", "streamdit_live", "run", "--source", "demo",
            "--out", f"file:{video}", "--metrics", str(metrics), "--osc-port", str(port),
            "--seconds", str(args.seconds), "--prompt", args.before, *args.extra,
        ]  # fmt: skip
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not records(metrics) and run.poll() is None:
            time.sleep(0.05)
        time.sleep(args.switch_after)
        # The newest frame out when the prompt leaves: its `t` is the send time on the run's
        # clock (late by at most the metrics file's buffering, which only lengthens the delay).
        sent = records(metrics)[-1]
        SimpleUDPClient("127.0.0.1", port).send_message("/streamdit/prompt", args.after)
        _, err = run.communicate(timeout=args.seconds + 120)
        if run.returncode != 0:
            print(err.decode()[-2000:], file=sys.stderr)
            return run.returncode
        rows, frames = records(metrics), read_frames(video)
    # The look of the half second of output from each frame on, as the evaluation reads a
    # clip (one frame alone flickers across a look's thresholds).
    count = min(len(rows), len(frames)) - WINDOW
    window = [frames[i : i + WINDOW] for i in range(count)]
    matches = [bool(look_matches(args.after, look(clip))) for clip in window]
    settled = settled_from(matches, sent["frame"] + 1)
    before = sum(matches[: sent["frame"] + 1]) / (sent["frame"] + 1)
    if settled is None:
        print(f"the look never became {args.after!r} ({sum(matches)} of {count} frames matched)")
        return 1
    delay = rows[settled]["t"] - sent["t"]
    print(
        f"{args.before!r} -> {args.after!r}: output look changed {delay:.2f} s after the OSC "
        f"message (frame {settled}; {count} frames; before the switch {before:.0%} of frames "
        f"already read as the new look)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
