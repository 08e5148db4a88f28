"""What the app says, in its own words: notices, the stream's numbers, OSC's state.

Pure functions of the session's data (no Qt), so every sentence is tested without a window.
The CLI words the same notices for a terminal (flags); here they point at the app's fields.
"""

from __future__ import annotations

from streamdit_live.controls import SHIPPED_MODEL
from streamdit_live.events import Notice, NoticeKind, SessionState
from streamdit_live.hub import LastChange
from streamdit_live.metrics import StreamStatus
from streamdit_live.osc import control_address

STATE_WORDS = {
    SessionState.IDLE: "Stopped",
    SessionState.STARTING: "Opening the source and outputs…",
    SessionState.LOADING: "Loading the model…",
    SessionState.RUNNING: "Running",
    SessionState.STOPPING: "Stopping…",
    SessionState.STOPPED: "Stopped",
    SessionState.FAILED: "Stopped by an error",
}
_OUTPUT_WORDS = {"virtualcam": "The virtual camera", "mjpeg": "The MJPEG stream"}


def word_notice(notice: Notice, osc_port: int | None) -> str:
    if notice.kind is NoticeKind.OUTPUT_UNAVAILABLE:
        reason = notice.text.split(" is unavailable: ", 1)[-1]
        what = _OUTPUT_WORDS.get(notice.subject.split(":")[0], f"Output {notice.subject}")
        return f"{what} is off. {reason}"
    if notice.kind is NoticeKind.CONTROLLER_UNAVAILABLE:
        return (
            f"OSC is off: port {osc_port} is in use by another program; start the app with "
            "--osc-port to pick another."
        )
    if notice.kind is NoticeKind.RANDOM_WEIGHTS:
        if notice.subject == SHIPPED_MODEL:
            return (
                f"The {notice.subject} model runs random weights (its shipped weights in "
                "model/weights/ are missing, or --random-weights was given), so the output "
                "looks like noise: reinstall the app or start it with --weights and a bundle."
            )
        return (
            f"The {notice.subject} model has random weights, so the output looks like noise: "
            f"pick the {SHIPPED_MODEL} model, which ships trained, or start the app with "
            "--weights and a trained bundle."
        )
    if notice.kind in (NoticeKind.SETUP_FAILED, NoticeKind.SESSION_FAILED):
        return f"The stream stopped: {notice.text}"
    return notice.text


def stats_line(state: SessionState, status: StreamStatus | None, weights: str | None = None) -> str:
    """The state and the stream's numbers; `weights` (`Models.describe_weights`) says which
    model runs, once it is loaded."""
    model = "" if weights is None else f" · {weights}"
    if status is None:
        return STATE_WORDS[state] + model
    latency = "—" if status.latency_ms is None else f"{status.latency_ms:.0f} ms"
    calls = "—" if status.calls_per_frame is None else f"{status.calls_per_frame:.2f}"
    return (
        f"{STATE_WORDS[state]}{model} · {status.fps:.1f} fps · latency {latency} · "
        f"{calls} model calls per frame"
    )


def osc_line(
    port: int | None, address: tuple[str, int] | None, last: LastChange | None, now: float
) -> str:
    """`port`: the one asked for (None: OSC off); `address`: where it listens, if it does."""
    if port is None:
        return "OSC: off"
    if address is None:
        return f"OSC: port {port} (not listening)"
    host, bound = address
    if last is None:
        return f"OSC: listening on {host}:{bound}; no message yet"
    what = ", ".join(control_address(n) for n in last.changes) or "/streamdit/reset"
    return f"OSC: listening on {host}:{bound}; last {what}, {now - last.at:.0f} s ago"
