"""`streamdit-live bench`: end-to-end fps, latency and per-stage times on this machine.

It runs the same `Session` as `run` (same source, engine, pacer, sinks), without outputs
unless asked, for a fixed time after the first frame, and reports the steady state: model
loading and the stream's start-up are excluded from the stage times.

In video mode it also prints the latency budget: each term of the road from capture to
output predicted from the measured stage times (`latency_budget`), beside the measured p50.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from enum import Enum

import torch

from streamdit_live.controls import Controls
from streamdit_live.metrics import STAGES
from streamdit_live.plans import PlanKind, plan_from_args
from streamdit_live.presets import PresetLibrary
from streamdit_live.session import Session
from streamdit_live.sinks import check_folder


class Bound(Enum):
    INPUT = "input"  # the engine waits for the source: a chunk every chunk_frames / fps
    COMPUTE = "compute"  # the source waits for the engine: a chunk every encode+steps+decode


@dataclass(frozen=True)
class LatencyBudget:
    """The road from a frame's capture to its output, term by term (ms)."""

    gather_ms: float  # a chunk's frames are gathered, then spread out again by the pacer
    buffer_ms: float  # the stages a chunk waits in the moving buffer, one chunk period each
    compute_ms: float  # encode + one step + decode of the chunk that comes out
    pacer_ms: float  # the pacer's jitter hold before it plays
    chunk_period_ms: float  # what paces the buffer: the source or the engine
    bound: Bound

    @property
    def total_ms(self) -> float:
        return self.gather_ms + self.buffer_ms + self.compute_ms + self.pacer_ms

    def to_json(self) -> dict:
        return {
            **{k: round(v, 2) for k, v in asdict(self).items() if isinstance(v, float)},
            "bound": self.bound.value,
            "total_ms": round(self.total_ms, 2),
        }


def latency_budget(
    *,
    encode_ms: float,
    step_ms: float,
    decode_ms: float,
    fps: float,
    chunk_frames: int,
    stages: int,
    micro_steps: int = 1,
    pacer_hold_ms: float = 0.0,
) -> LatencyBudget:
    """Predict each term of the capture-to-output latency of video mode (pure).

    The engine takes a chunk of `chunk_frames` frames, encodes it, and the next step takes
    it in (`StreamBuffer.inputs_needed`); after `stages` noise stages of `micro_steps` model
    calls each it comes out clean, is decoded and goes to the pacer. One chunk enters and
    one leaves per chunk period: the source's (chunk_frames / fps) or, when the engine is
    slower, its own time for a chunk (encode + micro_steps steps + decode, one after
    another). Its first stage starts as it arrives and each later one when the next chunk
    arrives, so its last stage starts stages - 1 periods after its own. So a frame waits:

    - gather: chunk_frames / fps. The oldest frame of a chunk waits (chunk_frames - 1)
      frames for the rest and the pacer spreads the chunk out over as long again, so every
      frame carries that once; plus, on average, half a frame for the engine to take the
      chunk and half for the pacer's next output tick;
    - buffer: stages - 1 chunk periods;
    - compute: encode, the micro_steps model calls of the last stage, and decode;
    - pacer: the jitter it holds before playing.
    """
    source_ms = 1000.0 * chunk_frames / fps
    engine_ms = encode_ms + micro_steps * step_ms + decode_ms
    bound = Bound.COMPUTE if engine_ms > source_ms else Bound.INPUT
    period = max(source_ms, engine_ms)
    return LatencyBudget(
        gather_ms=source_ms,
        buffer_ms=(stages - 1) * period,
        compute_ms=engine_ms,
        pacer_ms=pacer_hold_ms,
        chunk_period_ms=period,
        bound=bound,
    )


def budget_of(result: dict) -> LatencyBudget | None:
    """The latency budget of a bench result; None where there is none (text mode, or a run
    too short to time every stage)."""
    stages_ms, stages = result.get("stages_ms", {}), result.get("stages")
    if result.get("mode") != "video" or stages is None:
        return None
    if not {"encode", "step", "decode"} <= set(stages_ms):
        return None
    return latency_budget(
        encode_ms=stages_ms["encode"]["mean_ms"],
        step_ms=stages_ms["step"]["mean_ms"],
        decode_ms=stages_ms["decode"]["mean_ms"],
        fps=result["target_fps"],
        chunk_frames=result["chunk_frames"],
        stages=stages,
        micro_steps=result["steps"],
        pacer_hold_ms=result.get("pacer_hold_ms") or 0.0,
    )


def _video_settings(result: dict) -> str:
    """The header's words on a video stream (", strength 0.25 on 4 levels"); none in text mode."""
    if result["mode"] != "video" or "strength" not in result:
        return ""
    levels = result["levels"] or "the buffer's"
    return f", strength {result['strength']:g} on {levels} levels"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_budget(budget: LatencyBudget, result: dict) -> list[str]:
    """The budget's lines of the report, the measured latency beside the predicted sum."""
    stage_ms = result["stages_ms"]
    encode, step, decode = (stage_ms[k]["mean_ms"] for k in ("encode", "step", "decode"))
    p50, p95 = result["latency_p50_ms"], result["latency_p95_ms"]
    measured = "n/a" if p50 is None else f"p50 {p50:.0f} ms, p95 {p95:.0f} ms"
    calls, stages = result["steps"], result["stages"]
    later = f"the last {_count(stages - 1, 'chunk')} later" if stages > 1 else "all at once"
    return [
        "latency budget (predicted from the stage times above):",
        f"  {'gather':<8} {budget.gather_ms:>6.0f} ms  {result['chunk_frames']} frames per "
        f"chunk at {result['target_fps']:g} fps",
        f"  {'buffer':<8} {budget.buffer_ms:>6.0f} ms  {_count(stages, 'stage')} of "
        f"{_count(calls, 'step')}, {later}; a chunk every {budget.chunk_period_ms:.0f} ms "
        f"({budget.bound.value}-bound)",
        f"  {'compute':<8} {budget.compute_ms:>6.0f} ms  encode {encode:.0f} + "
        f"{f'{calls} x ' if calls > 1 else ''}step {step:.0f} + decode {decode:.0f}, "
        "one after another",
        f"  {'pacer':<8} {budget.pacer_ms:>6.0f} ms  jitter hold",
        f"  {'total':<8} {budget.total_ms:>6.0f} ms  measured {measured}",
    ]


def format_report(result: dict) -> str:
    """The human-readable table of a bench result (pure, for tests and the CLI)."""
    weights = "trained" if result["trained_weights"] else "random"
    p50, p95 = result["latency_p50_ms"], result["latency_p95_ms"]
    latency = "n/a (text mode)" if p50 is None else f"p50 {p50:.0f} ms, p95 {p95:.0f} ms"
    lines = [
        f"model {result['model']} ({weights} weights) on {result['device']}, {result['size']}, "
        f"{result['mode']} mode{_video_settings(result)}, chunk {result['chunk_size']}, "
        f"steps {result['steps']}, source {result['source']}",
        f"end-to-end: {result['fps']:.2f} fps of new frames (target {result['target_fps']:g}) "
        f"over {result['seconds']:.1f} s; latency {latency}; "
        f"{result['dropped_frames']} dropped, {result['repeated_frames']} repeated",
        "",
        f"{'stage':<8} {'ms/call':>9} {'calls':>7} {'ms/frame':>9}",
    ]
    frames = max(1, result["new_frames"])
    stages = result["stages_ms"]
    for stage in [*STAGES, *sorted(set(stages) - set(STAGES))]:
        if stage in stages:
            s = stages[stage]
            per_frame = s["mean_ms"] * s["calls"] / frames
            lines.append(f"{stage:<8} {s['mean_ms']:>9.1f} {s['calls']:>7d} {per_frame:>9.1f}")
    budget = budget_of(result)
    if budget is not None:
        lines += ["", *format_budget(budget, result)]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace, controls: Controls, library: PresetLibrary) -> int:
    if args.json is not None:  # fail now, not after the whole run
        check_folder(args.json, "--json file")
    plan = plan_from_args(args, controls, PlanKind.BENCH)
    source = plan.source
    result = Session(plan, library).run()
    result.update(
        source=source or "none",
        preset=args.preset,
        command=" ".join(["streamdit-live", *sys.argv[1:]]),
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        torch=torch.__version__,
    )
    budget = budget_of(result)
    if budget is not None:
        result["latency_budget"] = budget.to_json()
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
