"""What a session tells its front ends: its state, notices and frames, as data.

The session never words anything for a particular front end: it hands over a `Notice`
(a kind, a one-sentence text that suits a log, and the subject it is about) and each front
end says it its own way: the CLI logs the text, the GUI puts its own words in the status
bar. Frame taps see every new input and output frame, uint8 (H, W, 3), on the thread that
made it; they must return at once (a GUI keeps the newest frame and paints it later).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class SessionState(enum.Enum):
    IDLE = "idle"  # nothing started yet
    STARTING = "starting"  # opening the source, the controllers and the outputs
    LOADING = "loading"  # loading the model (seconds to minutes)
    RUNNING = "running"  # the engine steps and frames flow
    STOPPING = "stopping"
    STOPPED = "stopped"  # ended cleanly (a limit, a stop request, the last output closed)
    FAILED = "failed"  # ended by an error; a Notice says why


class NoticeKind(enum.Enum):
    OUTPUT_UNAVAILABLE = "output-unavailable"  # an output could not open; the others run
    OUTPUT_DROPPED = "output-dropped"  # an output failed mid-run; the others go on
    CONTROLLER_UNAVAILABLE = "controller-unavailable"  # e.g. the OSC port is busy
    SOURCE_FALLBACK = "source-fallback"  # the webcam failed: another source runs instead
    RANDOM_WEIGHTS = "random-weights"  # no trained weights: the output will look like noise
    SETUP_FAILED = "setup-failed"  # what the user gave does not work here (SetupError)
    SESSION_FAILED = "session-failed"  # the run could not go on (engine died, no frame)


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    text: str  # one sentence, as the CLI logs it
    subject: str = ""  # what it is about: an output spec, "osc", a source spec


Tap = Callable[[np.ndarray], None]


@dataclass
class SessionHooks:
    """Callbacks a front end hands a session; each is called on the session's threads."""

    on_state: Callable[[SessionState], None] | None = None
    on_notice: Callable[[Notice], None] | None = None
    input_taps: list[Tap] = field(default_factory=list)  # each new source frame
    output_taps: list[Tap] = field(default_factory=list)  # each new model frame
