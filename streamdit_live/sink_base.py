"""The base every frame sink builds on, the error a sink raises when it cannot run here, and
the one it raises when the user closed it (the preview window).

Kept apart from `streamdit_live.sinks` so the sink modules (`mjpeg`, `window`) can import it
while `sinks` imports them in turn, without a cycle.
"""

from __future__ import annotations

import numpy as np

from streamdit_live.frames import check_frame, fit_frame


class SinkUnavailable(RuntimeError):
    """A sink cannot run here; the message says in one sentence how to get it."""


class SinkClosed(RuntimeError):
    """The user closed this output (the preview window): not a failure."""


class Sink:
    """Base: `write(frame)` checks the frame and fits it to (width, height); idempotent close."""

    def __init__(self, name: str, width: int, height: int, fps: float) -> None:
        if width <= 0 or height <= 0 or not fps > 0:
            raise ValueError(
                f"Output {name}: size and fps must be positive, got {width}x{height} at {fps} fps."
            )
        self.name, self.width, self.height, self.fps = name, width, height, fps
        self.frames_written = 0
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        if self._closed:
            raise RuntimeError(f"Output {self.name} is closed.")
        self._send(fit_frame(check_frame(frame, f"output {self.name}"), self.width, self.height))
        self.frames_written += 1

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def abandon(self) -> None:
        """Close after a run that failed: an output that got no frame leaves nothing behind
        (a recording deletes its empty file); one that got frames is closed as usual."""
        self.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        pass
