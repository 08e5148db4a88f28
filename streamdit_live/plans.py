"""One way to turn command-line arguments into a `SessionPlan`, for `run`, `bench` and
the GUI's start-up options: the same flags mean the same thing everywhere."""

from __future__ import annotations

import argparse
import enum
from typing import TYPE_CHECKING

from streamdit_live.controls import Controls, Mode
from streamdit_live.osc import DEFAULT_PORT, OscConfig

if TYPE_CHECKING:  # the session imports torch: only the commands that stream pay for it
    from streamdit_live.session import SessionPlan

LIVE_SOURCE, FALLBACK_SOURCE = "webcam:0", "demo"
LIVE_OUTPUTS = ("virtualcam", "window", "mjpeg:8090")
OUT_SIZE_MODEL = "model"  # --out-size model: the outputs open at the model's size


class PlanKind(enum.Enum):
    RUN = "run"  # live defaults: a webcam (or the demo), every live output, OSC
    BENCH = "bench"  # the demo, no outputs unless asked, no OSC, a fixed time


def plan_from_args(args: argparse.Namespace, controls: Controls, kind: PlanKind) -> SessionPlan:
    """The plan the parsed flags of `run` or `bench` ask for, with that command's defaults."""
    from streamdit_live.models import resolve_weights
    from streamdit_live.session import SessionPlan

    bench = kind is PlanKind.BENCH
    source = args.source
    if source is None and controls.mode is Mode.VIDEO:
        source = FALLBACK_SOURCE if bench else LIVE_SOURCE
    out_size = controls.size if args.out_size == OUT_SIZE_MODEL else args.out_size
    osc = None
    if not bench and not args.no_osc:
        port = DEFAULT_PORT if args.osc_port is None else args.osc_port
        osc = OscConfig(host=args.osc_host, port=port, feedback=args.osc_feedback)
    return SessionPlan(
        controls=controls,
        source=source,
        outputs=tuple(args.out) if bench else tuple(args.out or LIVE_OUTPUTS),
        device=args.device,
        threads=args.threads,
        weights=resolve_weights(controls.model, args.weights, args.random_weights),
        model_explicit=args.model is not None,
        frames=None if bench else args.frames,
        seconds=args.seconds,
        metrics=None if bench else args.metrics,
        osc=osc,
        osc_required=not bench and args.osc_port is not None,  # a port asked for must be free
        require_output=not bench,
        fallback_source=FALLBACK_SOURCE if not bench and args.source is None else None,
        out_size=out_size,
        out_fit=args.out_fit,
    )
