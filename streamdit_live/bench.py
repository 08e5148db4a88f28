"""`streamdit-live bench`: end-to-end fps, latency and per-stage times on this machine.

It runs the same `Session` as `run` (same source, engine, pacer, sinks), without outputs
unless asked, for a fixed time after the first frame, and reports the steady state: model
loading and the stream's start-up are excluded from the stage times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from streamdit_live.controls import Controls
from streamdit_live.metrics import STAGES
from streamdit_live.plans import PlanKind, plan_from_args
from streamdit_live.presets import PresetLibrary
from streamdit_live.session import Session
from streamdit_live.sinks import check_folder


def format_report(result: dict) -> str:
    """The human-readable table of a bench result (pure, for tests and the CLI)."""
    weights = "trained" if result["trained_weights"] else "random"
    p50, p95 = result["latency_p50_ms"], result["latency_p95_ms"]
    latency = "n/a (text mode)" if p50 is None else f"p50 {p50:.0f} ms, p95 {p95:.0f} ms"
    lines = [
        f"model {result['model']} ({weights} weights) on {result['device']}, {result['size']}, "
        f"{result['mode']} mode, chunk {result['chunk_size']}, steps {result['steps']}, "
        f"source {result['source']}",
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
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
