"""The status the OSC feedback and the GUI show, as a pure function of the frame times."""

import pytest

from streamdit_live.metrics import STALL_AFTER_S, stream_status, summarize

TIMES = [10.0 + i / 24 for i in range(48)]  # 48 new frames at 24 fps, the newest at ~11.96 s


def test_a_flowing_stream_reports_its_rate_and_newest_latency():
    status = stream_status(TIMES, 150.0, "fog", TIMES[-1] + 0.02)
    assert status.fps == pytest.approx(24.0)
    assert (status.latency_ms, status.prompt) == (150.0, "fog")


def test_a_stalled_stream_reads_zero_fps_and_an_ageing_picture():
    """The feedback used to repeat the last fps and latency forever once frames stopped."""
    late = TIMES[-1] + STALL_AFTER_S + 1.0
    status = stream_status(TIMES, 150.0, "fog", late)
    assert status.fps == 0.0
    assert status.latency_ms == pytest.approx(150.0 + (STALL_AFTER_S + 1.0) * 1000.0)
    assert stream_status(TIMES, None, "fog", late).latency_ms is None  # text mode


def test_a_paused_stream_reads_zero_fps_at_once():
    status = stream_status(TIMES, 150.0, "fog", TIMES[-1] + 0.5, paused=True)
    assert status.fps == 0.0
    assert status.latency_ms == pytest.approx(650.0)


def test_too_few_frames_have_no_rate():
    assert stream_status([], None, "fog", 1.0).fps == 0.0
    assert stream_status([1.0, 1.0, 1.0], 5.0, "fog", 1.0).fps == 0.0


def test_the_rate_counts_only_the_frames_within_the_span():
    common = {"output_frames": 60, "dropped": 0, "repeated": 0}
    assert summarize(49, 2.0, [], **common)["fps"] == 24.0
    summary = summarize(60, 2.0, [], rated_frames=49, **common)  # 11 drained at the end
    assert (summary["fps"], summary["new_frames"], summary["frames"]) == (24.0, 60, 60)
