"""`streamdit-live bench`: the latency budget on hand-made numbers, and in a real report."""

from __future__ import annotations

import json

import pytest
import torch

from streamdit_live.bench import Bound, budget_of, format_report, latency_budget
from streamdit_live.cli import main


def test_a_compute_bound_chunk_period_sets_the_buffer_wait():
    """Today's default preset on an idle machine: encode 42 + step 55 + decode 81 ms is
    slower than 4 frames at 24 fps (167 ms), so the engine paces the buffer."""
    budget = latency_budget(
        encode_ms=42.0,
        step_ms=55.0,
        decode_ms=81.0,
        fps=24.0,
        chunk_frames=4,
        stages=4,
        pacer_hold_ms=10.0,
    )
    assert budget.bound is Bound.COMPUTE
    assert budget.gather_ms == pytest.approx(1000 * 4 / 24)
    assert budget.chunk_period_ms == pytest.approx(178.0)
    assert budget.buffer_ms == pytest.approx(3 * 178.0)  # the last stage starts 3 chunks on
    assert budget.compute_ms == pytest.approx(178.0)
    assert budget.pacer_ms == 10.0
    assert budget.total_ms == pytest.approx(166.667 + 534 + 178 + 10, abs=0.01)


def test_an_input_bound_chunk_period_is_the_sources_and_micro_steps_count_per_chunk():
    fast = latency_budget(
        encode_ms=10.0, step_ms=20.0, decode_ms=15.0, fps=24.0, chunk_frames=8, stages=2
    )
    assert fast.bound is Bound.INPUT
    assert fast.chunk_period_ms == pytest.approx(1000 * 8 / 24)  # the source's pace
    assert fast.buffer_ms == pytest.approx(1000 * 8 / 24)
    assert fast.compute_ms == pytest.approx(45.0)
    # Three model calls per stage: the engine needs 10 + 3 x 120 + 15 = 385 ms per chunk,
    # and the last stage's three calls run one after another before the chunk comes out.
    slow = latency_budget(
        encode_ms=10.0,
        step_ms=120.0,
        decode_ms=15.0,
        fps=24.0,
        chunk_frames=8,
        stages=2,
        micro_steps=3,
    )
    assert slow.bound is Bound.COMPUTE
    assert slow.chunk_period_ms == pytest.approx(385.0)
    assert slow.buffer_ms == pytest.approx(385.0)
    assert slow.compute_ms == pytest.approx(385.0)


def result_of(mode: str = "video", **changes) -> dict:
    stage = {"mean_ms": 0.0, "recent_ms": 0.0, "calls": 10}
    result = {
        "model": "cpu",
        "trained_weights": True,
        "device": "cpu",
        "size": "256x256",
        "mode": mode,
        "chunk_size": 1,
        "chunk_frames": 4,
        "steps": 1,
        "strength": 0.5,
        "levels": 0,
        "stages": 4,
        "source": "demo",
        "fps": 22.4,
        "target_fps": 24.0,
        "seconds": 15.0,
        "latency_p50_ms": 1060.0,
        "latency_p95_ms": 1185.0,
        "dropped_frames": 0,
        "repeated_frames": 3,
        "new_frames": 336,
        "pacer_hold_ms": 12.0,
        "stages_ms": {
            "encode": {**stage, "mean_ms": 42.0},
            "step": {**stage, "mean_ms": 55.0},
            "decode": {**stage, "mean_ms": 81.0},
        },
    }
    return {**result, **changes}


def test_the_report_shows_each_term_of_the_budget_beside_the_measured_latency():
    report = format_report(result_of())
    lines = report.splitlines()
    start = lines.index("latency budget (predicted from the stage times above):")
    gather, buffer, compute, pacer, total = lines[start + 1 : start + 6]
    assert gather.split()[:3] == ["gather", "167", "ms"] and "4 frames per chunk" in gather
    assert buffer.split()[:3] == ["buffer", "534", "ms"]
    assert "4 stages of 1 step, the last 3 chunks later" in buffer
    assert "every 178 ms (compute-bound)" in buffer
    assert compute.split()[:3] == ["compute", "178", "ms"] and "decode 81" in compute
    assert pacer.split()[:3] == ["pacer", "12", "ms"]
    assert total.split()[:3] == ["total", "891", "ms"]
    assert "measured p50 1060 ms, p95 1185 ms" in total


def test_the_header_names_the_video_settings():
    assert "video mode, strength 0.5 on the buffer's levels, chunk 1" in format_report(result_of())
    header = format_report(result_of(strength=0.25, levels=4)).splitlines()[0]
    assert "strength 0.25 on 4 levels" in header
    assert "strength" not in format_report(result_of(mode="text", latency_p50_ms=None))


def test_one_stage_has_no_buffer_wait():
    lines = format_report(result_of(stages=1)).splitlines()
    buffer = next(line for line in lines if line.split()[:1] == ["buffer"])
    assert buffer.split()[:3] == ["buffer", "0", "ms"]
    assert "1 stage of 1 step, all at once" in buffer


def test_no_budget_without_a_video_stream_or_its_stage_times():
    assert budget_of(result_of(mode="text")) is None
    assert "latency budget" not in format_report(result_of(mode="text", latency_p50_ms=None))
    assert budget_of(result_of(stages_ms={})) is None
    assert budget_of(result_of(stages=None)) is None
    assert budget_of(result_of()) is not None


@pytest.mark.slow
def test_bench_prints_the_budget_and_puts_it_in_the_json(tmp_path, capsys):
    threads = torch.get_num_threads()
    report = tmp_path / "bench.json"
    args = ["bench", "--source", "demo", "--seconds", "2", "--model", "tiny"]
    try:
        code = main([*args, "--size", "64x64", "--fps", "60", "--json", str(report)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    out = capsys.readouterr().out
    assert "latency budget (predicted from the stage times above):" in out
    data = json.loads(report.read_text())
    budget = data["latency_budget"]
    assert data["stages"] >= 1 and data["chunk_frames"] == 4 and data["pacer_hold_ms"] >= 0
    parts = ("gather_ms", "buffer_ms", "compute_ms", "pacer_ms")
    assert budget["total_ms"] == pytest.approx(sum(budget[k] for k in parts), abs=0.05)
    assert budget["bound"] in ("input", "compute")
    total = next(line.split() for line in out.splitlines() if line.strip().startswith("total"))
    # The same total, printed to the ms (the JSON keeps it to 0.01 ms: allow the rounding).
    assert abs(int(total[1]) - budget["total_ms"]) <= 0.51
